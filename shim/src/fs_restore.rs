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
//! stacked resource (the checkpoint of a pod that was itself restored: several sections of one
//! container and path, fsnap's `layer` 0 at the bottom) gives each section its layer, and they
//! become the top lower directories in order, `top:...:bottom:<image layers>`, so that the
//! whiteouts and opaque directories of each layer hide what the layers below it hold. A
//! volume (a share=pod or share=container overlay) mounted at a section's path gets the
//! section's layer(s) as its overlay's lower directories (a share=pod volume's section may have been
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
use crate::checkpoint_root::{CheckpointRoot, Tenant};
use crate::error::{Error, Result};
use crate::trigger::destination::LATEST;

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
    /// `tenant`: the restoring pod's; a checkpoint another tenant claimed is refused.
    pub fn open(value: &str, root: &CheckpointRoot, tenant: &Tenant) -> Result<Checkpoint> {
        let refuse = |why: String| {
            Error::InvalidArgument(format!(
                "annotation {FS_RESTORE_IMAGE_PATH}={value:?}: {why}"
            ))
        };
        let dir = parse(value).map_err(&refuse)?;
        root.check(&dir).map_err(&refuse)?;
        let dir = resolve(&dir).map_err(&refuse)?;
        root.check(&dir).map_err(&refuse)?;
        tenant.may_read(&dir).map_err(&refuse)?;
        let manifest = Manifest::load(&dir).map_err(|e| refuse(e.to_string()))?;
        Ok(Checkpoint {
            value: value.to_string(),
            dir,
            manifest,
        })
    }

    /// The sections of `container`'s resource at `path` of a kind `kind_ok` accepts: its
    /// layers, bottom first (the manifest's validation keeps a resource's layers in order and
    /// of one kind).
    fn stack(
        &self,
        container: &str,
        path: &str,
        kind_ok: impl Fn(ResourceKind) -> bool,
    ) -> Vec<usize> {
        self.manifest
            .sections
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                kind_ok(s.resource.kind)
                    && s.resource.container == container
                    && s.resource.path == path
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The sections of `label`'s rootfs, bottom first (empty: none).
    fn rootfs_sections(&self, label: &str) -> Vec<usize> {
        self.stack(label, "/", |k| k == ResourceKind::RootfsUpper)
    }

    /// The sections of the volume `label` mounts at `dest`, bottom first: its own, else (a
    /// pod-shared volume) the pod-volume sections saved at that path under the first container
    /// that recorded one.
    fn volume_sections(&self, label: &str, dest: &str, pod_shared: bool) -> Vec<usize> {
        let own = self.stack(label, dest, |k| k != ResourceKind::RootfsUpper);
        if !own.is_empty() || !pod_shared {
            return own;
        }
        match self
            .manifest
            .sections
            .iter()
            .find(|s| s.resource.kind == ResourceKind::PodVolume && s.resource.path == dest)
        {
            Some(s) => self.stack(&s.resource.container, dest, |k| {
                k == ResourceKind::PodVolume
            }),
            None => Vec::new(),
        }
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

/// For `cryo fscheckpoint`: the sections `what` (a rootfs or share=pod volume, saved through
/// its overlay's upper directory `upper`) stands on, bottom first — the layers of the cache at
/// the top of its overlay's lower directories, each found among the sections of the checkpoint
/// the pod was restored from (`restore`), so that the save copies them beneath the upper
/// (empty when the overlay has no cached layer). What cannot be saved whole is refused by
/// name: a cached layer that is not a section of the pod's checkpoint, or one below a layer
/// that is not cached. Reads the shim's own mount table. Blocking.
pub fn restored_layers(
    what: &str,
    upper: &Path,
    restore: &PodRestore,
) -> Result<Vec<(PathBuf, usize)>> {
    let cache = LayerCache::from_env();
    let mounts = cryo_sandbox::mount::mountinfo_self()
        .map_err(|e| Error::Internal(format!("read the shim's own mounts: {e}")))?;
    let upper = upper.to_string_lossy();
    let Some(m) = mounts.iter().filter(|m| m.fstype == "overlay").find(|m| {
        m.super_options
            .split(',')
            .any(|o| o.strip_prefix("upperdir=") == Some(upper.as_ref()))
    }) else {
        return Ok(Vec::new());
    };
    // The lower directories, top first (`lowerdir=a:b`, or one `lowerdir+=` per layer).
    let lowers: Vec<&str> = m
        .super_options
        .split(',')
        .filter_map(|o| {
            o.strip_prefix("lowerdir=")
                .or_else(|| o.strip_prefix("lowerdir+="))
        })
        .flat_map(|l| l.split(':'))
        .collect();
    let cached = |l: &str| Path::new(l).starts_with(cache.root());
    let top = lowers.iter().take_while(|l| cached(l)).count();
    if let Some(l) = lowers[top..].iter().find(|l| cached(l)) {
        return Err(Error::FailedPrecondition(format!(
            "{what}: its overlay has the cached layer {l} below a layer that is not cached: \
             cannot be saved as stacked sections"
        )));
    }
    let known = restore.lock().checkpoint.clone();
    lowers[..top]
        .iter()
        .rev()
        .map(|l| {
            let hex = Path::new(l)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let found = known.as_ref().and_then(|c| {
                c.manifest
                    .sections
                    .iter()
                    .position(|s| {
                        fsnap_hex(&s.checksum).is_some_and(|h| h.eq_ignore_ascii_case(&hex))
                    })
                    .map(|i| (c.dir.clone(), i))
            });
            found.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "{what}: restored from layer {l}, which is not a section of the checkpoint \
                     this pod was restored from ({}): its restored state cannot be saved",
                    known
                        .as_ref()
                        .map_or("none".to_string(), |c| c.dir.display().to_string())
                ))
            })
        })
        .collect()
}

/// The hex digest of a manifest's checksum (validated when the manifest was loaded).
fn fsnap_hex(checksum: &str) -> Option<&str> {
    cryo_sandbox::layer_cache::checksum_hex(checksum).ok()
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
                let (v, tenant) = (value.clone(), Tenant::of(spec));
                let c = Arc::new(
                    tokio::task::spawn_blocking(move || {
                        Checkpoint::open(&v, &CheckpointRoot::from_env(), &tenant)
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

    /// Sections `stack` (bottom first) as layers, as an overlay's lower directories: top
    /// first, `:`-joined. Blocking.
    fn lowerdir(&self, stack: &[usize]) -> Result<String> {
        let layers = stack
            .iter()
            .rev()
            .map(|i| self.layer(*i).map(|l| l.display().to_string()))
            .collect::<Result<Vec<_>>>()?;
        Ok(layers.join(":"))
    }

    /// The lower directories (the section's layers, top first, `:`-joined) for the volume this
    /// container mounts at `dest` (a pod-shared one, or its own), if sections match. Blocking.
    pub fn volume_layer(&self, dest: &Path, pod_shared: bool) -> Result<Option<PathBuf>> {
        let dest = dest.to_string_lossy();
        let stack = self
            .checkpoint
            .volume_sections(&self.label, &dest, pod_shared);
        if stack.is_empty() {
            return Ok(None);
        }
        self.lowerdir(&stack).map(|l| Some(PathBuf::from(l)))
    }

    /// The layer for the tmpfs volume at `dest`, if a section matches, noted for
    /// [`ContainerRestore::fill_tmpfs`] (a tmpfs has no lower layer: it gets a copy of one
    /// section; stacked sections are refused by name). Blocking.
    pub fn tmpfs_layer(&self, dest: &Path) -> Result<()> {
        let stack = self
            .checkpoint
            .volume_sections(&self.label, &dest.to_string_lossy(), false);
        match stack[..] {
            [] => Ok(()),
            [i] => {
                let layer = self.layer(i)?;
                lock(&self.tmpfs).push((dest.to_path_buf(), layer));
                Ok(())
            }
            _ => Err(Error::FailedPrecondition(format!(
                "container {}: {FS_RESTORE_IMAGE_PATH}={:?}: tmpfs volume {}: {} stacked sections \
                 (sections {stack:?}); a tmpfs volume restores from one section only",
                self.id,
                self.checkpoint.value,
                dest.display(),
                stack.len()
            ))),
        }
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

    /// `req` with the container's rootfs sections (if any) as the top lower layers of its
    /// overlay rootfs (the top section topmost). Blocking.
    pub fn rootfs(&self, req: &api::CreateTaskRequest) -> Result<Option<api::CreateTaskRequest>> {
        let stack = self.checkpoint.rootfs_sections(&self.label);
        let Some(&index) = stack.last() else {
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
        let layer = self.lowerdir(&stack)?;
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
        *lower = format!("lowerdir={layer}:{}", &lower["lowerdir=".len()..]);
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
            let e = Checkpoint::open(bad, &root, &Tenant::namespace("t"))
                .err()
                .expect(bad)
                .to_string();
            assert!(e.contains(FS_RESTORE_IMAGE_PATH), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        let t = tempfile::tempdir().unwrap();
        let value = t.path().display().to_string();
        let e = Checkpoint::open(
            &value,
            &CheckpointRoot::at(Path::new("/")),
            &Tenant::namespace("t"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("neither a checkpoint"), "{e}");
        // Outside the node's checkpoint root: refused before anything is read.
        let elsewhere = tempfile::tempdir().unwrap();
        let e = Checkpoint::open(
            &value,
            &CheckpointRoot::at(elsewhere.path()),
            &Tenant::namespace("t"),
        )
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
                layer: 0,
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
        assert_eq!(c.rootfs_sections("agent"), vec![0]);
        assert_eq!(c.rootfs_sections("sidecar"), vec![1]);
        assert!(c.rootfs_sections("other").is_empty());
        // A share=pod volume saved under the sidecar serves the agent too (by path) ...
        assert_eq!(c.volume_sections("agent", "/ws", true), vec![2]);
        // ... but a private one only its own container.
        assert!(c.volume_sections("agent", "/ws", false).is_empty());
        assert_eq!(c.volume_sections("agent", "/scratch", false), vec![3]);
        assert!(c.volume_sections("sidecar", "/scratch", false).is_empty());
        // A rootfs section is never a volume's.
        assert!(c.volume_sections("agent", "/", true).is_empty());
    }

    #[test]
    fn stacked_sections_match_as_one_stack_bottom_first() {
        use ResourceKind::*;
        let c = checkpoint_of(&[
            ("agent", "/", RootfsUpper),
            ("sidecar", "/ws", PodVolume),
            ("agent", "/", RootfsUpper),
            ("sidecar", "/ws", PodVolume),
            ("agent", "/", RootfsUpper),
        ]);
        assert_eq!(c.rootfs_sections("agent"), vec![0, 2, 4]);
        assert_eq!(c.volume_sections("agent", "/ws", true), vec![1, 3]);
        assert_eq!(c.volume_sections("sidecar", "/ws", false), vec![1, 3]);
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
