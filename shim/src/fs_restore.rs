//! Restoring a filesystem checkpoint into a new pod: the pod annotation
//! `dev.cryo.fs-restore.image-path=DIR` ([`annotations::FS_RESTORE_IMAGE_PATH`]).
//!
//! `DIR` is a checkpoint (it holds `fscheckpoint.json`), or a destination of repeated saves
//! whose `latest` symlink names one of its own entries (a plain name, or an absolute path
//! whose parent is `DIR`). It is resolved and its manifest validated once per pod, when the
//! pod's sandbox container is created (a bad value fails RunPodSandbox), so every container of
//! the pod restores the same checkpoint even if `latest` moves meanwhile.
//!
//! Each container whose label (its CRI container name, else its id — what `cryo fscheckpoint`
//! records) matches a `rootfs-upper` section at `/` starts with that state: the section is
//! materialised once into the node's layer cache (`cryo_sandbox::layer_cache`) and becomes the
//! TOP lower directory of the container's overlay rootfs, above the image's layers; the
//! container's own upper directory stays its own, so its writes never reach the cache. A
//! volume (a share=pod or share=container overlay) mounted at a section's path gets the
//! section's layer as its overlay's lower directory (a share=pod volume's section may have been
//! recorded under any container of the saved pod, so it matches by path alone). A private
//! tmpfs volume has no lower layer: it gets a copy of the section's layer once the container's
//! mounts exist, before its workload starts (`cryo_sandbox::layer_copy`). Sections matching no
//! container are logged when the pod ends, and skipped.
//!
//! A corrupt or hostile section fails the container's creation naming the section and the
//! cause, before anything of the container is mounted; the cache keeps no partial layer.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim_protos::api;
use cryo_sandbox::fscheckpoint::{ResourceKind, MANIFEST_FILE};
use cryo_sandbox::layer_cache::{LayerCache, Manifest};
use log::info;
use oci_spec::runtime::Spec;

use crate::annotations::{self, FS_RESTORE_IMAGE_PATH};
use crate::checkpoint_root::CheckpointRoot;
use crate::error::{Error, Result};

/// The link a destination of repeated saves keeps to its newest checkpoint.
const LATEST: &str = "latest";
/// Longest annotation value taken (the kernel's PATH_MAX).
const MAX_PATH: usize = 4096;

/// A checkpoint named by the annotation: resolved, its manifest read and validated.
pub struct Checkpoint {
    /// The annotation's value, as given.
    value: String,
    /// The checkpoint directory it resolved to.
    dir: PathBuf,
    manifest: Manifest,
}

impl Checkpoint {
    /// Parse, resolve and load the annotation's `value`; a refusal names the annotation and
    /// the value. Blocking (reads the manifest).
    pub fn open(value: &str, root: &CheckpointRoot) -> Result<Checkpoint> {
        let refuse = |why: String| {
            Error::InvalidArgument(format!(
                "annotation {FS_RESTORE_IMAGE_PATH}={value:?}: {why}"
            ))
        };
        let dir = parse(value).map_err(&refuse)?;
        root.check(&dir).map_err(&refuse)?;
        let dir = resolve(&dir).map_err(&refuse)?;
        root.check(&dir).map_err(&refuse)?;
        let manifest = Manifest::load(&dir).map_err(|e| refuse(e.to_string()))?;
        Ok(Checkpoint {
            value: value.to_string(),
            dir,
            manifest,
        })
    }

    /// The section for `label`'s rootfs.
    fn rootfs_section(&self, label: &str) -> Option<usize> {
        self.manifest.sections.iter().position(|s| {
            s.resource.kind == ResourceKind::RootfsUpper
                && s.resource.container == label
                && s.resource.path == "/"
        })
    }

    /// The section for the volume `label` mounts at `dest`: its own, else (a pod-shared
    /// volume) the pod-volume section saved at that path under any container.
    fn volume_section(&self, label: &str, dest: &str, pod_shared: bool) -> Option<usize> {
        let sections = &self.manifest.sections;
        sections
            .iter()
            .position(|s| {
                s.resource.kind != ResourceKind::RootfsUpper
                    && s.resource.container == label
                    && s.resource.path == dest
            })
            .or_else(|| {
                pod_shared
                    .then(|| {
                        sections.iter().position(|s| {
                            s.resource.kind == ResourceKind::PodVolume && s.resource.path == dest
                        })
                    })
                    .flatten()
            })
    }
}

/// The annotation's value as a directory: absolute, normalised, no `.`/`..` components, no
/// NUL, at most 4096 bytes.
fn parse(value: &str) -> std::result::Result<PathBuf, String> {
    if value.len() > MAX_PATH {
        return Err("longer than 4096 bytes".into());
    }
    if value.contains('\0') {
        return Err("holds a NUL byte".into());
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    if value.split('/').any(|c| c == "." || c == "..") {
        return Err("holds '.' or '..' components".into());
    }
    Ok(path.components().collect())
}

/// The checkpoint `dir` names: itself, or what its `latest` link names among its own entries.
/// The checkpoint directory itself must be a directory, not a symlink.
fn resolve(dir: &Path) -> std::result::Result<PathBuf, String> {
    let md = std::fs::symlink_metadata(dir).map_err(|e| format!("{e}"))?;
    if !md.is_dir() {
        return Err("not a directory (or a symlink)".into());
    }
    if std::fs::symlink_metadata(dir.join(MANIFEST_FILE)).is_ok() {
        return Ok(dir.to_path_buf());
    }
    let latest = dir.join(LATEST);
    let target = match std::fs::read_link(&latest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "holds neither a checkpoint ({MANIFEST_FILE}) nor a {LATEST:?} link"
            ))
        }
        Err(e) => return Err(format!("{LATEST}: {e} (it must be a symlink)")),
    };
    let name = if target.is_absolute() {
        (target.parent() == Some(dir))
            .then(|| target.file_name())
            .flatten()
    } else {
        let mut parts = target.components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(n)), None) => Some(n),
            _ => None,
        }
    };
    let Some(name) = name else {
        return Err(format!(
            "{LATEST} -> {}: must name an entry of the directory itself",
            target.display()
        ));
    };
    let checkpoint = dir.join(name);
    let md = std::fs::symlink_metadata(&checkpoint)
        .map_err(|e| format!("{LATEST} -> {}: {e}", target.display()))?;
    if !md.is_dir() {
        return Err(format!(
            "{LATEST} -> {}: not a directory (or a symlink)",
            target.display()
        ));
    }
    Ok(checkpoint)
}

/// For `cryo fscheckpoint`: refuse to save `what` (a rootfs or share=pod volume) through its
/// overlay's upper directory `upper` when the overlay's top lower directory is a layer of the
/// cache — a restored container's state lies beneath its upper, and a save of the upper alone
/// would silently keep only the changes made since the restore. (Saving the layer and the
/// upper merged, whiteouts included, is not built yet.) Reads the shim's own mount table.
pub fn refuse_resave(what: &str, upper: &Path) -> Result<()> {
    let cache = LayerCache::from_env();
    let mounts = cryo_sandbox::mount::mountinfo_self()
        .map_err(|e| Error::Internal(format!("read the shim's own mounts: {e}")))?;
    let upper = upper.to_string_lossy();
    for m in mounts.iter().filter(|m| m.fstype == "overlay") {
        let options: Vec<&str> = m.super_options.split(',').collect();
        if !options
            .iter()
            .any(|o| o.strip_prefix("upperdir=") == Some(upper.as_ref()))
        {
            continue;
        }
        let top = options
            .iter()
            .find_map(|o| {
                o.strip_prefix("lowerdir=")
                    .or_else(|| o.strip_prefix("lowerdir+="))
            })
            .and_then(|l| l.split(':').next());
        if let Some(top) = top.filter(|t| Path::new(t).starts_with(cache.root())) {
            return Err(Error::FailedPrecondition(format!(
                "{what}: restored from a filesystem checkpoint (layer {top}): saving it again \
                 would keep only the changes since the restore, not the restored state beneath \
                 them; not supported yet"
            )));
        }
    }
    Ok(())
}

/// The checkpoint of one pod and which of its sections the pod's containers used.
#[derive(Default)]
pub struct PodRestore {
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    /// The pod (its sandbox id, or the container's own id outside CRI).
    pod: Option<String>,
    checkpoint: Option<Arc<Checkpoint>>,
    used: BTreeSet<usize>,
}

impl PodRestore {
    fn lock(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What container `id` (spec `spec`) restores: `None` without the annotation, and for the
    /// pod's sandbox container (whose creation only resolves and checks the checkpoint).
    pub async fn for_container(
        self: &Arc<Self>,
        id: &str,
        spec: &Spec,
    ) -> Result<Option<ContainerRestore>> {
        let Some(value) = annotations::get(spec, FS_RESTORE_IMAGE_PATH).map(str::to_string) else {
            return Ok(None);
        };
        let pod = annotations::grouping(Some(spec), id);
        let is_sandbox = annotations::get(spec, annotations::CONTAINER_TYPE)
            == Some(annotations::CONTAINER_TYPE_SANDBOX);
        let label = annotations::get(spec, annotations::CONTAINER_NAME)
            .unwrap_or(id)
            .to_string();
        let known = self.lock().checkpoint.clone();
        let checkpoint = match known {
            Some(c) if c.value == value => c,
            _ => {
                let v = value.clone();
                let c = Arc::new(
                    tokio::task::spawn_blocking(move || {
                        Checkpoint::open(&v, &CheckpointRoot::from_env())
                    })
                    .await??,
                );
                let mut known = self.lock();
                if known.checkpoint.is_none() {
                    info!(
                        "pod {pod}: restores filesystem checkpoint {} ({} sections)",
                        c.dir.display(),
                        c.manifest.sections.len()
                    );
                    known.pod = Some(pod.clone());
                    known.checkpoint = Some(c.clone());
                }
                c
            }
        };
        if is_sandbox {
            return Ok(None);
        }
        Ok(Some(ContainerRestore {
            pod: self.clone(),
            id: id.to_string(),
            label,
            checkpoint,
            cache: LayerCache::from_env(),
            tmpfs: Mutex::default(),
        }))
    }

    fn mark_used(&self, index: usize) {
        self.lock().used.insert(index);
    }

    /// A container was deleted: when it is the pod's own, log the sections no container used.
    pub fn container_removed(&self, id: &str) {
        let known = {
            let mut known = self.lock();
            if known.pod.as_deref() != Some(id) {
                return;
            }
            std::mem::take(&mut *known)
        };
        let Some(c) = known.checkpoint else {
            return;
        };
        for (i, s) in c.manifest.sections.iter().enumerate() {
            if !known.used.contains(&i) {
                info!(
                    "pod {id}: section {i} ({}) of {} matched no container of the pod: skipped",
                    s.resource,
                    c.dir.display()
                );
            }
        }
    }
}

/// What one container restores from its pod's checkpoint.
pub struct ContainerRestore {
    pod: Arc<PodRestore>,
    id: String,
    label: String,
    checkpoint: Arc<Checkpoint>,
    cache: LayerCache,
    /// Tmpfs volumes to fill once mounted: (mount path, layer).
    tmpfs: Mutex<Vec<(PathBuf, PathBuf)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ContainerRestore {
    /// Section `index` as a layer in the cache (extracted now if not there). Blocking.
    fn layer(&self, index: usize) -> Result<PathBuf> {
        let c = &self.checkpoint;
        let layer = self.cache.layer(&c.dir, &c.manifest, index).map_err(|e| {
            // The cache's error names the checkpoint and, for a bad section, the section.
            let named = format!(
                "section {index} ({}): ",
                c.manifest.sections[index].resource
            );
            let cause = e.to_string();
            let cause = match cause.split_once(&named) {
                Some((_, rest)) => rest.to_string(),
                None => cause,
            };
            Error::FailedPrecondition(format!(
                "container {}: {FS_RESTORE_IMAGE_PATH}={:?}: restore {named}{cause}",
                self.id, c.value
            ))
        })?;
        let text = layer.path.to_string_lossy();
        if text.contains([':', ',', '\\']) {
            return Err(Error::FailedPrecondition(format!(
                "layer cache {}: a path with ':', ',' or '\\' cannot be an overlay layer (set {})",
                self.cache.root().display(),
                cryo_sandbox::layer_cache::ROOT_ENV
            )));
        }
        info!(
            "container {}: section {index} ({}) {} layer {}",
            self.id,
            c.manifest.sections[index].resource,
            if layer.extracted {
                "extracted into"
            } else {
                "reused from the cache:"
            },
            layer.path.display()
        );
        self.pod.mark_used(index);
        Ok(layer.path)
    }

    /// The layer for the volume this container mounts at `dest` (a pod-shared one, or its
    /// own), if a section matches. Blocking.
    pub fn volume_layer(&self, dest: &Path, pod_shared: bool) -> Result<Option<PathBuf>> {
        let dest = dest.to_string_lossy();
        match self
            .checkpoint
            .volume_section(&self.label, &dest, pod_shared)
        {
            Some(i) => self.layer(i).map(Some),
            None => Ok(None),
        }
    }

    /// The layer for the tmpfs volume at `dest`, if a section matches, noted for
    /// [`ContainerRestore::fill_tmpfs`] (a tmpfs has no lower layer: it gets a copy). Blocking.
    pub fn tmpfs_layer(&self, dest: &Path) -> Result<()> {
        if let Some(layer) = self.volume_layer(dest, false)? {
            lock(&self.tmpfs).push((dest.to_path_buf(), layer));
        }
        Ok(())
    }

    /// Whether a tmpfs volume waits for its copy.
    pub fn has_tmpfs(&self) -> bool {
        !lock(&self.tmpfs).is_empty()
    }

    /// Copy each noted layer into its tmpfs volume of the created container whose PID 1 is
    /// `pid` (its mounts made, its workload not started). Blocking.
    pub fn fill_tmpfs(&self, pid: i32) -> Result<()> {
        if pid <= 0 {
            return Err(Error::FailedPrecondition(format!(
                "container {}: {FS_RESTORE_IMAGE_PATH}: a tmpfs volume cannot be filled in a CRIU restore",
                self.id
            )));
        }
        for (dest, layer) in lock(&self.tmpfs).iter() {
            let bytes =
                cryo_sandbox::layer_copy::copy_into_container(layer, pid, dest).map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "container {}: {FS_RESTORE_IMAGE_PATH}: tmpfs volume {}: {e}",
                        self.id,
                        dest.display()
                    ))
                })?;
            info!(
                "container {}: tmpfs volume {} filled from layer {} ({bytes} bytes)",
                self.id,
                dest.display(),
                layer.display()
            );
        }
        Ok(())
    }

    /// `req` with the container's rootfs section (if any) as the top lower layer of its
    /// overlay rootfs. Blocking.
    pub fn rootfs(&self, req: &api::CreateTaskRequest) -> Result<Option<api::CreateTaskRequest>> {
        let Some(index) = self.checkpoint.rootfs_section(&self.label) else {
            info!(
                "container {}: no rootfs section for {:?} in {}",
                self.id,
                self.label,
                self.checkpoint.dir.display()
            );
            return Ok(None);
        };
        let Some(overlay) = req.rootfs.iter().rposition(|m| m.type_ == "overlay") else {
            return Err(Error::FailedPrecondition(format!(
                "container {}: {FS_RESTORE_IMAGE_PATH}: section {index} ({}) needs an overlay rootfs to be a layer of; containerd gave {}",
                self.id,
                self.checkpoint.manifest.sections[index].resource,
                if req.rootfs.is_empty() {
                    "no rootfs mount".to_string()
                } else {
                    req.rootfs
                        .iter()
                        .map(|m| m.type_.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        };
        let layer = self.layer(index)?;
        let mut req = req.clone();
        let options = &mut req.rootfs[overlay].options;
        let lower = options
            .iter_mut()
            .find(|o| o.starts_with("lowerdir="))
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "container {}: the overlay rootfs has no lowerdir option",
                    self.id
                ))
            })?;
        *lower = format!(
            "lowerdir={}:{}",
            layer.display(),
            &lower["lowerdir=".len()..]
        );
        Ok(Some(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_refused_by_annotation_and_value() {
        for bad in [
            "relative/dir",
            "/a/../etc",
            "/a/./b",
            "/a\0b",
            &format!("/{}", "x".repeat(4096)),
        ] {
            let root = CheckpointRoot::at(Path::new("/"));
            let e = Checkpoint::open(bad, &root).err().expect(bad).to_string();
            assert!(e.contains(FS_RESTORE_IMAGE_PATH), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        let t = tempfile::tempdir().unwrap();
        let value = t.path().display().to_string();
        let e = Checkpoint::open(&value, &CheckpointRoot::at(Path::new("/")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("neither a checkpoint"), "{e}");
        // Outside the node's checkpoint root: refused before anything is read.
        let elsewhere = tempfile::tempdir().unwrap();
        let e = Checkpoint::open(&value, &CheckpointRoot::at(elsewhere.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not beneath the node's checkpoint root"), "{e}");
    }

    fn checkpoint_of(sections: &[(&str, &str, ResourceKind)]) -> Checkpoint {
        use cryo_sandbox::fscheckpoint::ResourceId;
        let sections = sections
            .iter()
            .map(|(c, p, kind)| cryo_sandbox::layer_cache::Section {
                resource: ResourceId {
                    container: c.to_string(),
                    path: p.to_string(),
                    kind: *kind,
                },
                tar_start: 0,
                tar_end: 0,
                checksum: format!("blake3:{}", "0".repeat(64)),
                files: 0,
                logical_bytes: 0,
                stored_bytes: 0,
            })
            .collect();
        Checkpoint {
            value: "/ck".into(),
            dir: "/ck".into(),
            manifest: Manifest::new(sections, 0),
        }
    }

    #[test]
    fn sections_match_by_label_and_path_and_pod_volumes_by_path() {
        use ResourceKind::*;
        let c = checkpoint_of(&[
            ("agent", "/", RootfsUpper),
            ("sidecar", "/", RootfsUpper),
            ("sidecar", "/ws", PodVolume),
            ("agent", "/scratch", Tmpfs),
        ]);
        assert_eq!(c.rootfs_section("agent"), Some(0));
        assert_eq!(c.rootfs_section("sidecar"), Some(1));
        assert_eq!(c.rootfs_section("other"), None);
        // A share=pod volume saved under the sidecar serves the agent too (by path) ...
        assert_eq!(c.volume_section("agent", "/ws", true), Some(2));
        // ... but a private one only its own container.
        assert_eq!(c.volume_section("agent", "/ws", false), None);
        assert_eq!(c.volume_section("agent", "/scratch", false), Some(3));
        assert_eq!(c.volume_section("sidecar", "/scratch", false), None);
        // A rootfs section is never a volume's.
        assert_eq!(c.volume_section("agent", "/", true), None);
    }

    #[test]
    fn latest_must_name_an_entry_of_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        std::fs::create_dir_all(dest.join("0001")).unwrap();
        std::os::unix::fs::symlink("0001", dest.join(LATEST)).unwrap();
        assert_eq!(resolve(&dest).unwrap(), dest.join("0001"));
        std::fs::remove_file(dest.join(LATEST)).unwrap();
        std::os::unix::fs::symlink(dest.join("0001"), dest.join(LATEST)).unwrap();
        assert_eq!(resolve(&dest).unwrap(), dest.join("0001"));
        for hostile in ["../other", "/etc", "0001/..", "a/b"] {
            std::fs::remove_file(dest.join(LATEST)).unwrap();
            std::os::unix::fs::symlink(hostile, dest.join(LATEST)).unwrap();
            let e = resolve(&dest).unwrap_err();
            assert!(e.contains(LATEST), "{hostile}: {e}");
        }
        // A symlinked checkpoint directory is refused.
        std::fs::remove_file(dest.join(LATEST)).unwrap();
        std::os::unix::fs::symlink(t.path(), dest.join("0002")).unwrap();
        std::os::unix::fs::symlink("0002", dest.join(LATEST)).unwrap();
        assert!(resolve(&dest).unwrap_err().contains("symlink"));
        // A symlinked DIR too.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&dest, &link).unwrap();
        assert!(resolve(&link).unwrap_err().contains("symlink"));
    }
}
