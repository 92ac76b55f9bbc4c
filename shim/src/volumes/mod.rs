//! Pod volumes: the shim side of `dev.cryo.spec.mount.*` (and gVisor's `dev.gvisor.spec.mount.*`)
//! annotations. Before a container is created its spec's mounts are rewritten ([`prepare`]):
//! [`rules`] decides each annotated volume's shape once per pod, the engine
//! (`cryo_sandbox::volume`) places it, and [`rules::rewrite`] points the OCI mounts at it.
//!
//! Where things live:
//! - a `share=pod` volume's overlay is mounted ONCE per pod, in the shim's mount namespace, at
//!   `<sandbox bundle>/volumes/<volume>`; its filestore (upper and work dirs) is
//!   `<emptyDir>/.cryo-filestore/pod/`; each container gets a bind of the merged dir;
//! - a `share=container` overlay is mounted by the container's init in the container's own
//!   mount namespace (it goes with it), filestore `<emptyDir>/.cryo-filestore/<key>/`, the key
//!   chosen by [`private_key`];
//! - a private tmpfs is mounted in the container's mount namespace too.
//!
//! The pod overlays are unmounted when the sandbox container is deleted
//! ([`PodVolumes::container_removed`]), or by the shim's `delete` after a crash
//! ([`cleanup_bundle`], from the record `<sandbox bundle>/cryo-volumes.json` and the mount
//! table). The emptyDir itself is kubelet's: cryo leaves it (with its filestore) for kubelet to
//! delete.
//!
//! The pod owns its [`PodVolumes`] (`crate::pod::Pod`); their lock is never held across a
//! mount or unmount.

pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cryo_sandbox::volume;
use log::{info, warn};
use oci_spec::runtime::Spec;

use crate::annotations;
use crate::error::{Error, Result};
use crate::fs_restore::ContainerRestore;
use rules::{Decision, Medium, Placement, Shape};

/// The record of the pod overlays mounted, in the sandbox bundle.
pub const RECORD_FILE: &str = "cryo-volumes.json";
/// Pod overlays are mounted at `<sandbox bundle>/volumes/<volume>`.
pub const VOLUMES_DIR: &str = "volumes";
/// Filestore key of the pod-shared overlay.
const POD_KEY: &str = "pod";

/// What the pod knows of its volumes.
#[derive(Default)]
struct Known {
    sandbox_id: Option<String>,
    sandbox_bundle: Option<PathBuf>,
    /// Each volume's shape, decided once (by the first container that mounts it).
    decided: HashMap<String, Decision>,
    /// Pod overlays mounted: volume name -> mountpoint.
    mounted: BTreeMap<String, PathBuf>,
}

/// The pod's volumes.
#[derive(Default, Clone)]
pub struct PodVolumes {
    known: Arc<Mutex<Known>>,
}

/// The filestore key of a container's private (`share=container`) overlay volumes, as an
/// emptyDir behaves: a container restarted in its pod (same CRI name, new id) finds its files
/// again, and two containers never share one.
///
/// - A container created from a CRIU checkpoint: `restored-<id>`. Its volumes are filled from
///   the checkpoint into an upper directory that must be empty, so the key is its own. Its CRI
///   name cannot be the key: containerd 2.2's CRI restore (`CRImportCheckpoint`) builds the
///   spec with the package's version constant `containerName` ("containerd") as every
///   restored container's `io.kubernetes.cri.container-name`; and one checkpoint restored
///   twice into a pod would give the same name twice. (Kubelet restarts a restored container
///   by restoring it again, from the checkpoint.)
/// - Any other: `container-<CRI name>`; without a usable name (none, empty, holding `/` or
///   `..`), `container-<id>`.
fn private_key(cri_name: Option<&str>, id: &str, criu_restore: bool) -> String {
    if criu_restore {
        return format!("restored-{id}");
    }
    let name = cri_name
        .filter(|n| !n.contains('/') && !n.contains("..") && !n.is_empty())
        .unwrap_or(id);
    format!("container-{name}")
}

impl PodVolumes {
    /// Rewrite `spec`'s mounts for the pod's annotated volumes, mounting the pod overlays they
    /// need. Bad annotations fail with a message naming the key, before anything is mounted.
    /// With `restore`, overlay volumes matching a section of the pod's filesystem checkpoint
    /// get its layer as their lower directory (`crate::fs_restore`). `criu_restore`: the
    /// container is created from a CRIU checkpoint (its private volumes are filled from it).
    pub async fn prepare(
        &self,
        bundle: &Path,
        id: &str,
        spec: Spec,
        restore: Option<Arc<ContainerRestore>>,
        criu_restore: bool,
    ) -> Result<Spec> {
        let (this, bundle, id) = (self.clone(), bundle.to_path_buf(), id.to_string());
        tokio::task::spawn_blocking(move || {
            this.prepare_blocking(&bundle, &id, spec, restore.as_deref(), criu_restore)
        })
        .await?
    }

    fn lock(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prepare_blocking(
        &self,
        bundle: &Path,
        id: &str,
        mut spec: Spec,
        restore: Option<&ContainerRestore>,
        criu_restore: bool,
    ) -> Result<Spec> {
        let sandbox_id = annotations::grouping(Some(&spec), id);
        let is_sandbox = annotations::get(&spec, annotations::CONTAINER_TYPE)
            == Some(annotations::CONTAINER_TYPE_SANDBOX);
        let (decided, known_bundle) = {
            let mut known = self.lock();
            if is_sandbox || sandbox_id == id {
                known.sandbox_id = Some(id.to_string());
                known.sandbox_bundle = Some(bundle.to_path_buf());
            }
            (known.decided.clone(), known.sandbox_bundle.clone())
        };
        let annotations_map = spec.annotations().clone().unwrap_or_default();
        let uid = annotations::get(&spec, annotations::SANDBOX_UID);
        if is_sandbox {
            // The sandbox mounts no volumes, its app containers do; but bad hints fail the pod
            // now (RunPodSandbox), before anything of it runs.
            rules::validate_pod(&annotations_map, uid)
                .map_err(|e| Error::InvalidArgument(format!("pod sandbox {id}: {e}")))?;
            return Ok(spec);
        }
        let mounts = spec.mounts().clone().unwrap_or_default();
        let plan = rules::plan(&annotations_map, &mounts, uid, &decided, &medium_of)
            .map_err(|e| Error::InvalidArgument(format!("container {id}: {e}")))?;
        if plan.is_empty() {
            return Ok(spec);
        }
        let sandbox_bundle = known_bundle
            .unwrap_or_else(|| bundle.parent().unwrap_or(Path::new("/")).join(&sandbox_id));
        if plan.iter().any(|(d, _)| d.shape == Shape::PodOverlay) && !sandbox_bundle.is_dir() {
            return Err(Error::FailedPrecondition(format!(
                "container {id}: pod sandbox {sandbox_id} is gone ({} missing): no pod volume to join",
                sandbox_bundle.display()
            )));
        }
        let private = private_key(
            annotations::get(&spec, annotations::CONTAINER_NAME),
            id,
            criu_restore,
        );
        let layers = match restore {
            Some(r) => restored_layers(r, &plan, &mounts, bundle, &sandbox_bundle)?,
            None => HashMap::new(),
        };
        let mut placed = Vec::new();
        for (d, new) in plan {
            if new {
                info!(
                    "pod {sandbox_id}: volume {} ({}) is {:?}: {}",
                    d.volume,
                    d.source.display(),
                    d.shape,
                    d.reason
                );
            }
            let place = match d.shape {
                Shape::Bind | Shape::SharedBind => Placement::AsIs,
                Shape::Tmpfs => Placement::Tmpfs,
                Shape::PodOverlay => {
                    let mountpoint = sandbox_bundle.join(VOLUMES_DIR).join(&d.volume);
                    self.record_mounted(&sandbox_bundle, &d.volume, Some(&mountpoint));
                    // Mounting is idempotent: a container racing this one mounts it once.
                    let lower = layers.get(&d.volume).map(PathBuf::as_path);
                    if let Err(e) = volume::mount_overlay_on(&d.source, POD_KEY, &mountpoint, lower)
                    {
                        self.record_mounted(&sandbox_bundle, &d.volume, None);
                        return Err(e.into());
                    }
                    Placement::BindFrom(mountpoint)
                }
                Shape::ContainerOverlay => {
                    let store = volume::filestore(&d.source, &private)?;
                    Placement::Overlay {
                        lower: layers.get(&d.volume).cloned().unwrap_or(store.lower),
                        upper: store.upper,
                        work: store.work,
                    }
                }
            };
            placed.push((d, place));
        }
        let mut known = self.lock();
        for (d, _) in &placed {
            known
                .decided
                .entry(d.volume.clone())
                .or_insert_with(|| d.clone());
        }
        drop(known);
        spec.set_mounts(Some(rules::rewrite(&mounts, &placed)));
        Ok(spec)
    }

    /// Note a pod overlay as mounted at `mountpoint` (or no longer, with `None`), in memory
    /// and in the sandbox bundle's record, before the mount is tried (so a crash in between
    /// leaves it recorded).
    fn record_mounted(&self, sandbox_bundle: &Path, volume: &str, mountpoint: Option<&Path>) {
        let mut known = self.lock();
        match mountpoint {
            Some(m) => known.mounted.insert(volume.to_string(), m.to_path_buf()),
            None => known.mounted.remove(volume),
        };
        write_record(sandbox_bundle, &known.mounted);
    }

    /// A container was deleted: when it is the pod's sandbox, unmount every pod overlay.
    pub async fn container_removed(&self, id: &str) {
        let (this, id) = (self.clone(), id.to_string());
        if let Err(e) =
            tokio::task::spawn_blocking(move || this.container_removed_blocking(&id)).await
        {
            warn!("pod volumes: {e}");
        }
    }

    fn container_removed_blocking(&self, id: &str) {
        let known = {
            let mut known = self.lock();
            if known.sandbox_id.as_deref() != Some(id) {
                return;
            }
            std::mem::take(&mut *known)
        };
        for (name, mountpoint) in known.mounted {
            match volume::unmount_overlay(&mountpoint) {
                Ok(()) => info!("pod {id}: volume {name} unmounted"),
                Err(e) => warn!("pod {id}: volume {name}: {e}"),
            }
        }
        if let Some(bundle) = known.sandbox_bundle {
            cleanup_bundle(&bundle);
        }
    }
}

/// The layers of a restored checkpoint for the container's overlay volumes, by volume name,
/// all materialised before anything is mounted: a share=pod volume's when this container is
/// the first to mount it, a share=container volume's always. A tmpfs volume's is noted for the
/// copy into it once it is mounted (`ContainerRestore::fill_tmpfs`). Lazy layers are mounted
/// in the container's `bundle`, a share=pod volume's in the `sandbox_bundle`.
fn restored_layers(
    restore: &ContainerRestore,
    plan: &[(Decision, bool)],
    mounts: &[oci_spec::runtime::Mount],
    bundle: &Path,
    sandbox_bundle: &Path,
) -> Result<HashMap<String, PathBuf>> {
    let mut layers = HashMap::new();
    for (d, new) in plan {
        let Some(dest) = mounts
            .iter()
            .find(|m| rules::bind_source(m).as_deref() == Some(d.source.as_path()))
            .map(|m| m.destination().clone())
        else {
            continue;
        };
        let layer = match d.shape {
            Shape::PodOverlay if *new => restore.volume_layer(&dest, true, sandbox_bundle)?,
            Shape::ContainerOverlay => restore.volume_layer(&dest, false, bundle)?,
            Shape::Tmpfs => {
                restore.tmpfs_layer(&dest, bundle)?;
                None
            }
            _ => None,
        };
        if let Some(l) = layer {
            layers.insert(d.volume.clone(), l);
        }
    }
    Ok(layers)
}

/// The emptyDir medium: `Memory` when kubelet mounted a tmpfs there.
fn medium_of(dir: &Path) -> Medium {
    match volume::is_memory_backed(dir) {
        Ok(true) => Medium::Memory,
        Ok(false) => Medium::Disk,
        Err(e) => {
            warn!("{}: medium unknown, taken as disk: {e}", dir.display());
            Medium::Disk
        }
    }
}

/// Unmount every pod overlay under `bundle` (the shim's `delete` after a crash, and the end of
/// a sandbox): those its record names and any mount found under `<bundle>/volumes`.
pub fn cleanup_bundle(bundle: &Path) {
    let dir = bundle.join(VOLUMES_DIR);
    let mut targets: Vec<PathBuf> = std::fs::read(bundle.join(RECORD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.is_empty() && !n.contains('/') && !n.contains(".."))
        .map(|n| dir.join(n))
        .collect();
    if let Ok(mounts) = cryo_sandbox::mount::mountinfo_self() {
        targets.extend(
            mounts
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|m| m.starts_with(&dir) && m != &dir),
        );
    }
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    targets.dedup();
    for t in targets {
        if let Err(e) = volume::unmount_overlay(&t) {
            warn!("{}: {e}", t.display());
        }
    }
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_file(bundle.join(RECORD_FILE));
}

/// Record the mounted pod overlays' names in the sandbox bundle (best effort: the mount table
/// is the fallback).
fn write_record(bundle: &Path, mounted: &BTreeMap<String, PathBuf>) {
    let names: Vec<&String> = mounted.keys().collect();
    let path = bundle.join(RECORD_FILE);
    let tmp = bundle.join(format!(".{RECORD_FILE}.tmp"));
    let res = serde_json::to_vec(&names)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = res {
        warn!("{}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_volume_is_keyed_by_name_or_for_a_restore_by_id() {
        assert_eq!(private_key(Some("web"), "abc", false), "container-web");
        assert_eq!(private_key(Some("../x"), "abc", false), "container-abc");
        assert_eq!(private_key(Some(""), "abc", false), "container-abc");
        assert_eq!(private_key(None, "abc", false), "container-abc");
        // containerd 2.2.7 names every restored container "containerd".
        assert_eq!(private_key(Some("containerd"), "abc", true), "restored-abc");
    }

    #[test]
    fn cleanup_bundle_unmounts_recorded_and_found_overlays() {
        // Needs root (overlay mounts); CI is root. Without it this fails, it never passes.
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root: overlay mounts (run the shim's tests as root, as CI does)"
        );
        let tmp = std::env::temp_dir().join(format!("cryo-volumes-test-{}", std::process::id()));
        let bundle = tmp.join("bundle");
        let vol = tmp.join("vol");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(&vol).unwrap();
        let recorded = bundle.join(VOLUMES_DIR).join("ws");
        let unrecorded = bundle.join(VOLUMES_DIR).join("other");
        volume::mount_overlay(&vol, POD_KEY, &recorded).unwrap();
        volume::mount_overlay(&vol, "other", &unrecorded).unwrap();
        std::fs::write(recorded.join("f"), b"x").unwrap();
        let mut mounted = BTreeMap::new();
        mounted.insert("ws".to_string(), recorded.clone());
        write_record(&bundle, &mounted);
        cleanup_bundle(&bundle);
        let left =
            volume::is_mounted(&recorded).unwrap() || volume::is_mounted(&unrecorded).unwrap();
        assert!(!bundle.join(VOLUMES_DIR).exists());
        assert!(!bundle.join(RECORD_FILE).exists());
        // The files stay in the volume's filestore.
        assert!(vol.join(".cryo-filestore/pod/upper/f").is_file());
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(!left, "an overlay is still mounted");
    }
}
