//! Restoring a filesystem checkpoint into a new pod: the pod annotation
//! `dev.cryo.fs-restore.image-path=DIR` ([`annotations::FS_RESTORE_IMAGE_PATH`]).
//!
//! `DIR` is a checkpoint (it holds `fscheckpoint.json`), or a destination of repeated saves
//! whose `latest` symlink names one of its own entries (a plain name, or an absolute path
//! whose parent is `DIR`). It is resolved and its manifest validated once per pod, when the
//! pod's sandbox container is created (a bad value fails RunPodSandbox), so every container of
//! the pod restores the same checkpoint even if `latest` moves meanwhile. The pod holds a
//! lease on that checkpoint's directory (`cryo_sandbox::lease`) from then until it ends, so
//! that the fscheckpoint trigger's retention does not remove it under the pod.
//!
//! Each container whose label (its CRI container name, else its id — what `cryo fscheckpoint`
//! records) matches a `rootfs-upper` section at `/` starts with that state: the section's
//! layer becomes the TOP lower directory of the container's overlay rootfs, above the image's
//! layers; the container's own upper directory stays its own, so its writes never reach the
//! layer. A section's layer is:
//! - on a cache hit, its directory in the node's layer cache (`cryo_sandbox::layer_cache`),
//!   keyed by the section's checksum: nothing is read from the checkpoint; the layer's owner
//!   (the container, or the pod for a share=pod volume) holds a lease on it until its overlay
//!   is gone, so that the cache's eviction leaves it (`cryo_sandbox::layer_cache::evict`);
//! - on a miss (the first restore on the node), a LAZY layer: the section is verified in one
//!   read-only pass (structure and checksum, the same rules and errors as an extraction) that
//!   builds an index of its tree (`fsnap::index`), and that tree is served in place, read-only,
//!   over FUSE (`cryo_sandbox::lazy_layer`) at `<bundle>/cryo-lazy/<checksum hex>`, a mount of
//!   type `fuse.cryo-layer`: the container starts without a copy of the section. Meanwhile the
//!   cache is filled in the background, once per section and pod, so that the next pod on the
//!   node takes the cache path. A lazy layer lives as long as the overlay that uses it: a
//!   container's (rootfs, share=container volume, copies into tmpfs volumes) until the
//!   container is deleted, after its rootfs is unmounted, in the container's bundle; a
//!   share=pod volume's until the pod's volumes go, in the sandbox bundle. A shim that died
//!   leaves its lazy mounts to the shim's `delete` ([`cleanup_bundle`]). Unfinished fills are
//!   cancelled when the pod ends (no partial layer stays).
//!
//! A
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
//! cause, before anything of the container is mounted (its index is built before its lazy
//! mount); the cache keeps no partial layer.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim_protos::api;
use cryo_sandbox::fscheckpoint::{ResourceKind, MANIFEST_FILE};
use cryo_sandbox::layer_cache::{self, Filling, LayerCache, Manifest};
use cryo_sandbox::lazy_layer::{self, LazyLayer};
use cryo_sandbox::lease::Lease;
use log::{info, warn};
use oci_spec::runtime::Spec;
use std::os::unix::fs::DirBuilderExt;

use crate::annotations::{self, FS_RESTORE_IMAGE_PATH, FS_RESTORE_VERIFY};
use crate::checkpoint_root::{CheckpointRoot, Tenant};
use crate::error::{Error, Result};
use crate::trigger::destination::LATEST;

/// Longest annotation value taken (the kernel's PATH_MAX).
const MAX_PATH: usize = 4096;
/// How many times a checkpoint removed while it was resolved is resolved again.
const LEASE_TRIES: usize = 5;
/// Lazy layers are mounted at `<bundle>/cryo-lazy/<section checksum hex>`.
pub const LAZY_DIR: &str = "cryo-lazy";

/// A checkpoint named by the annotation: resolved, its manifest read and validated.
pub struct Checkpoint {
    /// The annotation's value, as given.
    value: String,
    /// The checkpoint directory it resolved to.
    dir: PathBuf,
    manifest: Manifest,
    /// The pod's lease on `dir` (so that the trigger's retention keeps it while the pod may
    /// restore from it); `None` only in tests.
    _lease: Option<Lease>,
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
        let named = parse(value).map_err(&refuse)?;
        root.check(&named).map_err(&refuse)?;
        // Leased before its manifest is read: a round the trigger's retention removes between
        // the resolution and the lease is not leased, and `latest` is resolved again.
        for _ in 0..LEASE_TRIES {
            let dir = resolve(&named).map_err(&refuse)?;
            root.check(&dir).map_err(&refuse)?;
            tenant.may_read(&dir).map_err(&refuse)?;
            let lease = Lease::shared(&dir, true)
                .map_err(|e| refuse(format!("lease {}: {e}", dir.display())))?;
            let Some(lease) = lease else {
                info!(
                    "{FS_RESTORE_IMAGE_PATH}={value:?}: {} was removed as it was resolved; resolving again",
                    dir.display()
                );
                continue;
            };
            let manifest = Manifest::load(&dir).map_err(|e| refuse(e.to_string()))?;
            return Ok(Checkpoint {
                value: value.to_string(),
                dir,
                manifest,
                _lease: Some(lease),
            });
        }
        Err(refuse(format!(
            "the checkpoint it names was removed {LEASE_TRIES} times as it was resolved"
        )))
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
/// its overlay's upper directory `upper`) stands on, bottom first — the section layers (of the
/// cache, or lazy layers: both named by the section's checksum) at the top of its overlay's
/// lower directories, each found among the sections of the checkpoint
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
    // A layer of the cache, or a lazy layer (its mount point is named by the checksum too).
    let cached = |l: &str| {
        Path::new(l).starts_with(cache.root())
            || mounts.iter().any(|m| {
                m.fstype == format!("fuse.{}", lazy_layer::SUBTYPE) && m.mount_point == Path::new(l)
            })
    };
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
    /// Held while a lazy layer is looked for and mounted, so that two containers racing for
    /// one (a share=pod volume's) mount it once. Never taken with `known`'s lock held.
    mounting: Mutex<()>,
}

#[derive(Default)]
struct Known {
    /// The pod (its sandbox id, or the container's own id outside CRI).
    pod: Option<String>,
    checkpoint: Option<Arc<Checkpoint>>,
    used: BTreeSet<usize>,
    /// Lazy layers mounted, by owner: a container's id, or the pod's (share=pod volumes).
    lazy: HashMap<String, Vec<LazyLayer>>,
    /// The cache fills this pod started, by section checksum hex (dropping one cancels it).
    fills: HashMap<String, Filling>,
    /// Leases on the cached layers in use, by owner (as `lazy`): they keep the layers from
    /// eviction while the owner's overlays stand on them.
    leases: HashMap<String, Vec<Lease>>,
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
        let verify_data_on_read = verify_on_read(annotations::get(spec, FS_RESTORE_VERIFY))?;
        // Checked where the cache is first used (a pod that restores: its RunPodSandbox), so
        // that a bad value fails the pods that would grow the cache, naming it, and no other.
        let max_size = layer_cache::evict::max_size_from_env().map_err(|why| {
            Error::InvalidArgument(format!(
                "{why} (the node's layer cache size limit, in containerd's environment)"
            ))
        })?;
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
            cache: LayerCache::from_env().with_max_size(max_size),
            tmpfs: Mutex::default(),
            verify_data_on_read,
        }))
    }

    fn mark_used(&self, index: usize) {
        self.lock().used.insert(index);
    }

    /// A container was deleted (after its rootfs was unmounted), or its creation failed: its
    /// lazy layers go; when it is the pod's own (after the pod's volumes were unmounted),
    /// every lazy layer left goes, unfinished cache fills are cancelled, and the sections no
    /// container used are logged.
    pub async fn container_removed(&self, id: &str) {
        let Some(gone) = self.take(id) else {
            return;
        };
        // Unmounting joins the serving threads; cancelling a fill waits for it.
        let id = id.to_string();
        if let Err(e) = tokio::task::spawn_blocking(move || gone.release()).await {
            warn!("container {id}: lazy layers: {e}");
        }
    }

    /// What goes with container `id` (see [`PodRestore::container_removed`]); the unused
    /// sections are logged here. `None`: nothing to unmount or cancel.
    fn take(&self, id: &str) -> Option<Gone> {
        let (lazies, ended) = {
            let mut known = self.lock();
            let lazies = known.lazy.remove(id).unwrap_or_default();
            // The owner's overlays are unmounted: its layers may be evicted.
            known.leases.remove(id);
            let ended = (known.pod.as_deref() == Some(id)).then(|| std::mem::take(&mut *known));
            (lazies, ended)
        };
        if let Some(k) = &ended {
            if let Some(c) = &k.checkpoint {
                for (i, s) in c.manifest.sections.iter().enumerate() {
                    if !k.used.contains(&i) {
                        info!(
                            "pod {id}: section {i} ({}) of {} matched no container of the pod: skipped",
                            s.resource,
                            c.dir.display()
                        );
                    }
                }
            }
        }
        let ended = ended.filter(|k| !k.lazy.is_empty() || !k.fills.is_empty());
        (!lazies.is_empty() || ended.is_some()).then(|| Gone {
            id: id.to_string(),
            lazies,
            ended,
        })
    }

    /// Until [`Creating::created`]: a failed creation of container `id` unmounts the lazy
    /// layers mounted for it (when dropped: before the failure is answered, so that the
    /// bundle containerd removes next holds no mount).
    pub fn creating(self: &Arc<Self>, id: &str) -> Creating {
        Creating {
            pod: Some(self.clone()),
            id: id.to_string(),
        }
    }

    /// Keep `lease` for `owner`.
    fn add_lease(&self, owner: &str, lease: Lease) {
        self.lock()
            .leases
            .entry(owner.to_string())
            .or_default()
            .push(lease);
    }

    /// Keep `layer` mounted for `owner`.
    fn add_lazy(&self, owner: &str, layer: LazyLayer) {
        self.lock()
            .lazy
            .entry(owner.to_string())
            .or_default()
            .push(layer);
    }

    /// Whether `owner` has a lazy layer mounted at `at` (a section of the same checksum).
    fn has_lazy(&self, owner: &str, at: &Path) -> bool {
        self.lock()
            .lazy
            .get(owner)
            .is_some_and(|v| v.iter().any(|l| l.mountpoint() == at))
    }

    /// Fill the cache with section `index` (checksum `hex`) in the background, unless this pod
    /// already does.
    fn fill(&self, cache: &LayerCache, c: &Checkpoint, index: usize, hex: &str) {
        if self.lock().fills.contains_key(hex) {
            return;
        }
        let filling = cache.fill_in_background(&c.dir, &c.manifest, index);
        self.lock().fills.entry(hex.to_string()).or_insert(filling);
    }

    /// The pod's id (its sandbox's), for what the pod owns.
    fn pod_id(&self) -> Option<String> {
        self.lock().pod.clone()
    }
}

/// What goes with a container (or the pod).
struct Gone {
    id: String,
    lazies: Vec<LazyLayer>,
    /// The pod's state, when the container was the pod's own.
    ended: Option<Known>,
}

impl Gone {
    /// Unmount the lazy layers, cancel the unfinished fills. Blocking.
    fn release(self) {
        drop(self.lazies);
        if let Some(mut k) = self.ended {
            drop(std::mem::take(&mut k.lazy));
            for (hex, filling) in k.fills.drain() {
                let unfinished = !filling.is_finished();
                let how = filling.cancel();
                if unfinished {
                    info!(
                        "pod {}: cache fill of layer {hex} stopped: {how:?}",
                        self.id
                    );
                }
            }
        }
    }
}

/// A container being created (see [`PodRestore::creating`]).
pub struct Creating {
    pod: Option<Arc<PodRestore>>,
    id: String,
}

impl Creating {
    /// The container exists: its lazy layers stay until it is deleted.
    pub fn created(mut self) {
        self.pod = None;
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        // A failure path: unmounting a few layers is brief, and must be done before the
        // failure is answered.
        if let Some(gone) = self.pod.take().and_then(|pod| pod.take(&self.id)) {
            gone.release();
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
    /// [`FS_RESTORE_VERIFY`] is `on-read`.
    verify_data_on_read: bool,
}

/// The value of [`FS_RESTORE_VERIFY`]: whether file data is verified when read (`on-read`)
/// rather than before the container starts (`full`, the default). A refusal names the
/// annotation and the value.
fn verify_on_read(value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("full") => Ok(false),
        Some("on-read") => Ok(true),
        Some(other) => Err(Error::InvalidArgument(format!(
            "annotation {FS_RESTORE_VERIFY}={other:?}: not full or on-read"
        ))),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ContainerRestore {
    /// Section `index` as a layer for `owner` (a container, or the pod): its directory in the
    /// cache, else a lazy layer mounted in `bundle` (its index built first: a bad section
    /// fails here, before anything is mounted) while the cache is filled in the background.
    /// Blocking.
    fn layer(&self, index: usize, owner: &str, bundle: &Path) -> Result<PathBuf> {
        let c = &self.checkpoint;
        let section = &c.manifest.sections[index];
        let named = format!("section {index} ({}): ", section.resource);
        let refuse = |cause: String| {
            // fsnap's and the cache's errors name the section already: named once.
            let cause = match cause.split_once(&named) {
                Some((_, rest)) => rest.to_string(),
                None => cause,
            };
            Error::FailedPrecondition(format!(
                "container {}: {FS_RESTORE_IMAGE_PATH}={:?}: restore {named}{cause}",
                self.id, c.value
            ))
        };
        let hex = fsnap_hex(&section.checksum)
            .ok_or_else(|| refuse("no valid checksum".into()))?
            .to_ascii_lowercase();
        // A cached layer is leased for its owner (an eviction between the look and the lease
        // leaves none: then it is served lazily, as on a miss).
        let leased = match self.cache.cached(&c.manifest, index) {
            Some(path) => {
                check_layer_path(
                    &path,
                    &format!("layer cache {}", self.cache.root().display()),
                )?;
                self.cache
                    .lease(&hex)
                    .map_err(|e| refuse(e.to_string()))?
                    .map(|lease| (path, lease))
            }
            None => None,
        };
        let (path, how) = match leased {
            Some((path, lease)) => {
                self.pod.add_lease(owner, lease);
                (path, "reused from the cache:")
            }
            None => {
                let at = bundle.join(LAZY_DIR).join(&hex);
                check_layer_path(&at, &format!("bundle {}", bundle.display()))?;
                let _one_at_a_time = lock(&self.pod.mounting);
                if !self.pod.has_lazy(owner, &at) {
                    let lazy = self.lazy(index, &hex, &at).map_err(refuse)?;
                    self.pod.add_lazy(owner, lazy);
                    self.pod.fill(&self.cache, c, index, &hex);
                }
                (at, "served lazily (the cache fills in the background) at")
            }
        };
        info!(
            "container {}: section {index} ({}) {how} {}",
            self.id,
            section.resource,
            path.display()
        );
        self.pod.mark_used(index);
        Ok(path)
    }

    /// Verify section `index` into an index of its tree and mount it at `at` as a lazy layer.
    /// Blocking (reads the whole section once).
    fn lazy(&self, index: usize, hex: &str, at: &Path) -> std::result::Result<LazyLayer, String> {
        let c = &self.checkpoint;
        let started = std::time::Instant::now();
        let tree = lazy_layer::index_section(&c.dir, &c.manifest, index, self.verify_data_on_read)
            .map_err(|e| e.to_string())?;
        let parent = at.parent().unwrap_or(at);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(parent)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| format!("create {}: {e}", parent.display()))?;
        let layer = LazyLayer::mount(tree, at, hex).map_err(|e| e.to_string())?;
        info!(
            "container {}: section {index} checked and indexed in {} ms",
            self.id,
            started.elapsed().as_millis()
        );
        Ok(layer)
    }

    /// Sections `stack` (bottom first) as layers for `owner` (lazy ones mounted in `bundle`),
    /// as an overlay's lower directories: top first, `:`-joined. Blocking.
    fn lowerdir(&self, stack: &[usize], owner: &str, bundle: &Path) -> Result<String> {
        let layers = stack
            .iter()
            .rev()
            .map(|i| {
                self.layer(*i, owner, bundle)
                    .map(|l| l.display().to_string())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(layers.join(":"))
    }

    /// The lower directories (the section's layers, top first, `:`-joined) for the volume this
    /// container mounts at `dest` (a pod-shared one, or its own), if sections match; lazy
    /// layers are mounted in `bundle` (the sandbox's for a pod-shared volume: they are the
    /// pod's, and go with its volumes). Blocking.
    pub fn volume_layer(
        &self,
        dest: &Path,
        pod_shared: bool,
        bundle: &Path,
    ) -> Result<Option<PathBuf>> {
        let dest = dest.to_string_lossy();
        let stack = self
            .checkpoint
            .volume_sections(&self.label, &dest, pod_shared);
        if stack.is_empty() {
            return Ok(None);
        }
        let owner = match pod_shared {
            true => self.pod.pod_id().unwrap_or_else(|| self.id.clone()),
            false => self.id.clone(),
        };
        self.lowerdir(&stack, &owner, bundle)
            .map(|l| Some(PathBuf::from(l)))
    }

    /// The layer for the tmpfs volume at `dest`, if a section matches, noted for
    /// [`ContainerRestore::fill_tmpfs`] (a tmpfs has no lower layer: it gets a copy of one
    /// section; stacked sections are refused by name); a lazy layer is mounted in `bundle`
    /// (the container's). Blocking.
    pub fn tmpfs_layer(&self, dest: &Path, bundle: &Path) -> Result<()> {
        let stack = self
            .checkpoint
            .volume_sections(&self.label, &dest.to_string_lossy(), false);
        match stack[..] {
            [] => Ok(()),
            [i] => {
                let layer = self.layer(i, &self.id, bundle)?;
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
        let layer = self.lowerdir(&stack, &self.id, Path::new(&req.bundle))?;
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

/// A path that cannot be an overlay layer (`:`, `,` and `\\` are overlayfs's separators and
/// escapes) is refused, naming `what` holds it.
fn check_layer_path(path: &Path, what: &str) -> Result<()> {
    if path.to_string_lossy().contains([':', ',', '\\']) {
        return Err(Error::FailedPrecondition(format!(
            "{what}: a path with ':', ',' or '\\' cannot be an overlay layer ({}; set {})",
            path.display(),
            cryo_sandbox::layer_cache::ROOT_ENV
        )));
    }
    Ok(())
}

/// The shim's `delete` after a crash: the lazy layers a dead shim left mounted in `bundle`
/// go (their server died with the shim: they only answer ENOTCONN).
pub fn cleanup_bundle(bundle: &Path) {
    let dir = bundle.join(LAZY_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        lazy_layer::cleanup(&e.path());
    }
    if let Err(e) = std::fs::remove_dir(&dir) {
        warn!("{}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_is_full_unless_on_read_and_a_bad_value_is_named() {
        assert!(!verify_on_read(None).unwrap());
        assert!(!verify_on_read(Some("full")).unwrap());
        assert!(verify_on_read(Some("on-read")).unwrap());
        let e = verify_on_read(Some("On-Read")).unwrap_err().to_string();
        assert!(
            e.contains(FS_RESTORE_VERIFY) && e.contains("\"On-Read\""),
            "{e}"
        );
    }

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
            _lease: None,
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
