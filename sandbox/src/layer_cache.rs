//! The layer cache: sections of filesystem checkpoints materialised once, on disk, as
//! read-only overlayfs lower layers, keyed by their checksum, so that a container (or volume)
//! restored from a checkpoint mounts the saved state as a layer instead of copying it, and a
//! second restore of the same section reuses the layer without reading the checkpoint again.
//!
//! Layout, under the cache root (`CRYO_LAYER_ROOT`, default `/var/lib/cryo/layers`; 0700,
//! root's):
//! - `<blake3 hex>/`: a complete layer, the section's tree extracted with whiteouts (0/0
//!   character devices) and opaque directories (`trusted.overlay.opaque=y`) as overlayfs reads
//!   them in a lower layer, and no other `trusted.overlay.*` attribute — every section alike,
//!   so that a section stacked above others (a restored pod's checkpoint) hides, in the
//!   overlay's lower stack, what it deleted or replaced in the sections below;
//! - `.<hex>.lock`: taken (flock) by whoever extracts or evicts that section, so concurrent
//!   restores of one section extract it once;
//! - `.<hex>.used`: its mtime is the layer's last use (its extraction, or a lease: [`evict`]);
//! - `.<hex>.partial-*` (and fsnap's own work directory beside it): an extraction in progress.
//!   It is checksum-verified, synced, then renamed to `<hex>` in one step: a layer directory
//!   exists only complete, and a crash leaves only partial directories, which the next
//!   extraction of that section removes under the lock.
//!
//! Two ways in: [`LayerCache::layer`] extracts a missing layer now and waits for it;
//! [`LayerCache::cached`] only looks, and [`LayerCache::fill_in_background`] extracts one on a
//! thread at idle priority (skipping a section whose lock another extraction holds), for a
//! caller that serves the section in place meanwhile (`fsnap::SectionIndex`) and wants the
//! next pod to find the layer; cancelling it removes its partial directory.
//!
//! A layer's name is the checksum of the section's bytes that were verified while extracting
//! it, so a hit serves exactly the content the checkpoint's manifest names. The cache is never
//! written through: overlays mount it as a lower layer. Leases (what keeps a layer while an
//! overlay uses it), the record of each layer's last use (`.<hex>.used`) and eviction are
//! [`evict`]'s.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fsnap::manifest::checksum_hex;
pub use fsnap::{Manifest, Section};

use crate::error::{Error, Result};

pub mod evict;
pub use evict::{parse_duration, parse_size, CachedLayer, Policy, Pruned, MAX_SIZE_ENV};

/// The environment variable naming the cache root.
pub const ROOT_ENV: &str = "CRYO_LAYER_ROOT";
/// The cache root when [`ROOT_ENV`] is unset.
pub const DEFAULT_ROOT: &str = "/var/lib/cryo/layers";

/// The layer cache at one root.
#[derive(Debug, Clone)]
pub struct LayerCache {
    root: PathBuf,
    /// After a background fill extracted a layer, evict least recently used unused layers
    /// until the cache uses at most this many bytes.
    max_bytes: Option<u64>,
}

/// One section as a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The layer directory (`<root>/<hex>`), to be used as an overlay lower directory.
    pub path: PathBuf,
    /// Whether this call extracted it (false: it was in the cache).
    pub extracted: bool,
}

impl LayerCache {
    pub fn new(root: impl Into<PathBuf>) -> LayerCache {
        LayerCache {
            root: root.into(),
            max_bytes: None,
        }
    }

    /// This cache, with background fills keeping it under `max_bytes` (see [`evict`]).
    pub fn with_max_size(mut self, max_bytes: Option<u64>) -> LayerCache {
        self.max_bytes = max_bytes;
        self
    }

    /// The cache at `$CRYO_LAYER_ROOT`, else at [`DEFAULT_ROOT`].
    pub fn from_env() -> LayerCache {
        LayerCache::new(
            std::env::var_os(ROOT_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Section `index` of the checkpoint in `checkpoint` (whose validated manifest is
    /// `manifest`) as a layer: from the cache, or extracted into it now (checksum checked in
    /// the same pass). A corrupt or hostile section fails naming the section and the cause,
    /// and leaves no layer. Blocking.
    pub fn layer(&self, checkpoint: &Path, manifest: &Manifest, index: usize) -> Result<Layer> {
        let hex = section_hex(checkpoint, manifest, index)?;
        self.make_root()?;
        let path = self.root.join(&hex);
        if is_layer(&path)? {
            return Ok(Layer {
                path,
                extracted: false,
            });
        }
        let _lock = self.lock(&hex, true)?;
        // Whoever held the lock before may have finished it.
        if is_layer(&path)? {
            return Ok(Layer {
                path,
                extracted: false,
            });
        }
        self.extract_locked(checkpoint, index, &hex, &fsnap::Progress::default())?;
        Ok(Layer {
            path,
            extracted: true,
        })
    }

    /// Section `index` of `manifest` as a layer if the cache holds it complete: no
    /// extraction, no waiting for one in progress.
    pub fn cached(&self, manifest: &Manifest, index: usize) -> Option<PathBuf> {
        let hex = checksum_hex(&manifest.sections.get(index)?.checksum).ok()?;
        let path = self.root.join(hex.to_ascii_lowercase());
        matches!(is_layer(&path), Ok(true)).then_some(path)
    }

    /// Extract section `index` of the checkpoint in `checkpoint` into the cache on a
    /// background thread at idle I/O priority and nice 19, as [`LayerCache::layer`] does (same
    /// lock, same partial/rename protocol) — unless the layer is already there or another
    /// extraction of it holds its lock (then it does nothing). Failures are logged naming the
    /// section. Dropping the returned handle, or [`Filling::cancel`], stops the extraction and
    /// removes what it wrote.
    pub fn fill_in_background(
        &self,
        checkpoint: &Path,
        manifest: &Manifest,
        index: usize,
    ) -> Filling {
        let progress = Arc::new(fsnap::Progress::default());
        let job = FillJob {
            cache: self.clone(),
            checkpoint: checkpoint.to_path_buf(),
            hex: section_hex(checkpoint, manifest, index),
            index,
            progress: progress.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("layer-fill-{index}"))
            .spawn(move || job.run());
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!(
                    "layer cache: section {index} of {}: cannot start the background fill: {e}",
                    checkpoint.display()
                );
                None
            }
        };
        Filling { progress, thread }
    }

    /// Extract section `index` into `<root>/<hex>` (the caller holds its lock): a partial
    /// directory, checksum-verified, synced, renamed into place; on failure nothing stays.
    fn extract_locked(
        &self,
        checkpoint: &Path,
        index: usize,
        hex: &str,
        progress: &fsnap::Progress,
    ) -> Result<PathBuf> {
        let path = self.root.join(hex);
        self.remove_partials(hex);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let partial = self
            .root
            .join(format!(".{hex}.partial-{}-{nanos}", std::process::id()));
        let extracted = fsnap::restore(
            checkpoint,
            &[(index, partial.clone())],
            &fsnap::RestoreOptions {
                allow_devices: false,
                overlay_layer: true,
                ..Default::default()
            },
            progress,
        );
        // The layer is named by the checksum the extraction verified, which is the one in the
        // manifest it read: that must be the caller's (the manifest may have been replaced
        // since the caller read it), or the layer would go under another section's name.
        let verified = extracted.map_err(|e| e.to_string()).and_then(|on_disk| {
            let sum = on_disk.sections.get(index).map(|s| s.checksum.as_str());
            match sum.and_then(|c| checksum_hex(c).ok()) {
                Some(h) if h.eq_ignore_ascii_case(hex) => Ok(()),
                _ => Err(format!(
                    "section {index}: the checkpoint changed since its manifest was read \
                     (its checksum is no longer blake3:{hex}); refused"
                )),
            }
        });
        if let Err(reason) = verified {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(Error::Checkpoint {
                path: checkpoint.to_path_buf(),
                reason,
            });
        }
        // Durable before it is trusted: the layer's files, then its name.
        let done = crate::fscheckpoint::syncfs(&partial)
            .and_then(|()| match progress.cancelled() {
                true => Err(Error::Checkpoint {
                    path: checkpoint.to_path_buf(),
                    reason: fsnap::Error::Cancelled.to_string(),
                }),
                false => Ok(()),
            })
            .and_then(|()| {
                std::fs::rename(&partial, &path)
                    .map_err(|e| Error::io(format!("rename the layer into {}", path.display()), e))
            })
            .and_then(|()| fsync_dir(&self.root));
        if let Err(e) = done {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        self.touch(hex);
        Ok(path)
    }

    /// Create the root (0700) if missing; it must be a real directory.
    fn make_root(&self) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| Error::io(format!("layer cache {}", self.root.display()), e))?;
        let md = std::fs::symlink_metadata(&self.root)
            .map_err(|e| Error::io(format!("layer cache {}", self.root.display()), e))?;
        if !md.is_dir() {
            return Err(Error::Io {
                context: format!("layer cache {}", self.root.display()),
                source: std::io::Error::other("not a directory (or a symlink)"),
            });
        }
        Ok(())
    }

    /// The extraction lock of one section (released when dropped); `None` when `wait` is
    /// false and someone else holds it. An eviction unlinks the lock file holding it: a lock
    /// taken on a file no longer at its path is let go and taken again on the new one.
    fn lock(&self, hex: &str, wait: bool) -> Result<Option<File>> {
        loop {
            if let Some(held) = self.lock_once(hex, wait)? {
                let path = self.root.join(format!(".{hex}.lock"));
                let ours = held
                    .metadata()
                    .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
                match std::fs::symlink_metadata(&path) {
                    Ok(md) if md.dev() == ours.dev() && md.ino() == ours.ino() => {
                        return Ok(Some(held))
                    }
                    _ => continue,
                }
            }
            return Ok(None);
        }
    }

    fn lock_once(&self, hex: &str, wait: bool) -> Result<Option<File>> {
        let path = self.root.join(format!(".{hex}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a descriptor we own.
        while unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) && !wait {
                return Ok(None);
            }
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(format!("lock {}", path.display()), e));
            }
        }
        Ok(Some(f))
    }

    /// Remove what an extraction of section `hex` that died left (called under its lock).
    fn remove_partials(&self, hex: &str) {
        let ours = format!(".{hex}.partial-");
        let fsnaps = format!("..{hex}.partial-");
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&ours) || name.starts_with(&fsnaps) {
                log::info!("layer cache: removing an unfinished extraction {name}");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The cache key of section `index`: its checksum's hex, lowercase.
fn section_hex(checkpoint: &Path, manifest: &Manifest, index: usize) -> Result<String> {
    let section = manifest
        .sections
        .get(index)
        .ok_or_else(|| Error::Checkpoint {
            path: checkpoint.to_path_buf(),
            reason: format!(
                "has {} sections; there is no section {index}",
                manifest.sections.len()
            ),
        })?;
    Ok(checksum_hex(&section.checksum)
        .map_err(|reason| Error::Checkpoint {
            path: checkpoint.to_path_buf(),
            reason: format!("section {index}: {reason}"),
        })?
        .to_ascii_lowercase())
}

/// How a background fill ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filled {
    /// This fill extracted the layer.
    Extracted(PathBuf),
    /// The layer was already in the cache.
    Cached(PathBuf),
    /// Another extraction of the section held its lock: nothing was done.
    Busy,
    /// Stopped by [`Filling::cancel`] (or a drop): nothing left behind.
    Cancelled,
    /// Failed (logged); nothing left behind.
    Failed(String),
}

/// A background fill of one section (see [`LayerCache::fill_in_background`]). Dropping it
/// cancels the fill and waits (briefly: the extraction checks at each entry and each chunk of
/// a file) until what it wrote is removed.
#[derive(Debug)]
pub struct Filling {
    progress: Arc<fsnap::Progress>,
    thread: Option<std::thread::JoinHandle<Filled>>,
}

impl Filling {
    /// Stop the fill, remove what it wrote, and wait for that; how it ended (a fill that had
    /// already finished stays finished).
    pub fn cancel(mut self) -> Filled {
        self.progress.request_cancel();
        self.join()
    }

    /// Wait for the fill to end.
    pub fn wait(mut self) -> Filled {
        self.join()
    }

    /// Whether the fill has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn join(&mut self) -> Filled {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Filled::Failed("the fill thread panicked".into())),
            None => Filled::Failed("the fill thread could not be started".into()),
        }
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.progress.request_cancel();
            self.join();
        }
    }
}

/// What a fill thread needs.
struct FillJob {
    cache: LayerCache,
    checkpoint: PathBuf,
    hex: Result<String>,
    index: usize,
    progress: Arc<fsnap::Progress>,
}

impl FillJob {
    fn run(self) -> Filled {
        lower_priority();
        let index = self.index;
        let outcome = self.fill();
        if let (Filled::Extracted(_), Some(max), Ok(hex)) =
            (&outcome, self.cache.max_bytes, &self.hex)
        {
            self.evict_to(max, hex);
        }
        match &outcome {
            Filled::Failed(why) => log::warn!(
                "layer cache: section {index} of {}: background fill failed: {why}",
                self.checkpoint.display()
            ),
            Filled::Cancelled => log::info!(
                "layer cache: section {index} of {}: background fill cancelled",
                self.checkpoint.display()
            ),
            _ => {}
        }
        outcome
    }

    /// Evict least recently used unused layers (never `hex`, just filled) until the cache
    /// uses at most `max` bytes; logged.
    fn evict_to(&self, max: u64, hex: &str) {
        let policy = Policy {
            max_bytes: Some(max),
            spare: Some(hex.to_string()),
            ..Policy::default()
        };
        match self.cache.prune(&policy) {
            Ok(p) if p.bytes_after > max => log::warn!(
                "layer cache {}: {} bytes after evicting {} layers, above {MAX_SIZE_ENV}={max}: \
                 the rest is in use or was just filled",
                self.cache.root.display(),
                p.bytes_after,
                p.evicted.len()
            ),
            Ok(_) => {}
            Err(e) => log::warn!(
                "layer cache {}: evict to {MAX_SIZE_ENV}={max}: {e}",
                self.cache.root.display()
            ),
        }
    }

    fn fill(&self) -> Filled {
        // A failure after a cancel is the cancel's doing.
        let failed = |e: Error| match self.progress.cancelled() {
            true => Filled::Cancelled,
            false => Filled::Failed(e.to_string()),
        };
        let hex = match &self.hex {
            Ok(h) => h.as_str(),
            Err(e) => return Filled::Failed(e.to_string()),
        };
        let cache = &self.cache;
        let path = cache.root.join(hex);
        let present = cache.make_root().and_then(|()| is_layer(&path));
        match present {
            Ok(true) => return Filled::Cached(path),
            Ok(false) => {}
            Err(e) => return failed(e),
        }
        let _lock = match cache.lock(hex, false) {
            Ok(Some(l)) => l,
            Ok(None) => return Filled::Busy,
            Err(e) => return failed(e),
        };
        match is_layer(&path) {
            Ok(true) => return Filled::Cached(path),
            Ok(false) => {}
            Err(e) => return failed(e),
        }
        match cache.extract_locked(&self.checkpoint, self.index, hex, &self.progress) {
            Ok(p) => Filled::Extracted(p),
            Err(e) => failed(e),
        }
    }
}

/// The calling thread (and the threads it starts, which inherit both) at idle I/O priority
/// and the lowest CPU priority (nice 19), so a fill yields to the pods it serves. Not
/// SCHED_IDLE: a cancelled fill must still get the CPU to notice and clean up promptly, as
/// whoever cancels it waits for that. Best effort.
fn lower_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    const IOPRIO_CLASS_IDLE: libc::c_int = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
    // SAFETY: ioprio_set on the calling thread (who = 0) with a valid priority value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if rc != 0 {
        log::debug!(
            "layer cache: ioprio_set(idle): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: setpriority of the calling thread (its tid; on Linux a nice value is per thread).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if rc != 0 {
        log::debug!("layer cache: nice 19: {}", std::io::Error::last_os_error());
    }
}

/// Whether a complete layer is at `path` (a directory, not a symlink).
fn is_layer(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Ok(true),
        Ok(md) => Err(Error::Io {
            context: format!("layer {}", path.display()),
            source: std::io::Error::other(format!(
                "is not a directory (mode {:o}); remove it",
                md.mode()
            )),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("layer {}", path.display()), e)),
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

/// For tests: save `src` as the rootfs of container `c` into a checkpoint at `ck`.
#[cfg(test)]
pub(crate) fn save_dir(src: PathBuf, ck: PathBuf) -> (PathBuf, Manifest) {
    let m = fsnap::save(
        &[fsnap::Source {
            resource: fsnap::ResourceId {
                container: "c".into(),
                path: "/".into(),
                kind: fsnap::ResourceKind::RootfsUpper,
            },
            dir: src,
        }],
        &ck,
        &fsnap::SaveOptions::default(),
        &fsnap::Progress::default(),
    )
    .unwrap();
    (ck, m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (whiteouts, owners): run as root, as CI does"
        );
    }

    /// A checkpoint of one directory holding a file, a whiteout and an opaque directory.
    fn checkpoint(t: &Path) -> (PathBuf, Manifest) {
        let src = t.join("src");
        std::fs::create_dir_all(src.join("opaque")).unwrap();
        std::fs::write(src.join("f"), b"hello").unwrap();
        nix::sys::stat::mknod(
            &src.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        save_dir(src, t.join("ck"))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_section_is_extracted_once_and_then_reused() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let cache = LayerCache::new(t.path().join("layers"));
        let first = cache.layer(&ck, &m, 0).unwrap();
        assert!(first.extracted);
        assert_eq!(std::fs::read(first.path.join("f")).unwrap(), b"hello");
        let gone = std::fs::symlink_metadata(first.path.join("gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        let ino = std::fs::metadata(&first.path).unwrap().ino();
        let second = cache.layer(&ck, &m, 0).unwrap();
        assert_eq!(second.path, first.path);
        assert!(!second.extracted);
        assert_eq!(std::fs::metadata(&second.path).unwrap().ino(), ino);
        let hex = checksum_hex(&m.sections[0].checksum).unwrap();
        assert_eq!(
            entries(cache.root()),
            vec![
                format!(".{hex}.lock"),
                format!(".{hex}.used"),
                hex.to_string()
            ]
        );
        assert_eq!(
            std::fs::metadata(cache.root()).unwrap().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn concurrent_restores_of_one_section_extract_it_once() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let cache = LayerCache::new(t.path().join("layers"));
        let layers: Vec<Layer> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| cache.layer(&ck, &m, 0).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(layers.iter().filter(|l| l.extracted).count(), 1);
        assert!(layers.iter().all(|l| l.path == layers[0].path));
        assert_eq!(
            entries(cache.root()).len(),
            3,
            "{:?}",
            entries(cache.root())
        );
    }

    #[test]
    fn a_corrupt_section_leaves_no_layer_and_a_dead_extraction_is_cleared() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let cache = LayerCache::new(t.path().join("layers"));
        let hex = checksum_hex(&m.sections[0].checksum).unwrap().to_string();
        // What a crash mid-extraction leaves.
        std::fs::create_dir_all(cache.root().join(format!(".{hex}.partial-1-2/x"))).unwrap();
        // Flip one byte of the file's content in the data file.
        let data = ck.join(fsnap::manifest::DATA_FILE);
        let mut bytes = std::fs::read(&data).unwrap();
        let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
        bytes[at] = b'j';
        std::fs::write(&data, &bytes).unwrap();
        let e = cache.layer(&ck, &m, 0).unwrap_err().to_string();
        assert!(
            e.contains("section 0") && e.contains("checksum mismatch"),
            "{e}"
        );
        assert_eq!(entries(cache.root()), vec![format!(".{hex}.lock")]);
    }

    /// A checkpoint of one directory holding `n` files of `mib` MiB each (random-ish bytes).
    fn big_checkpoint(t: &Path, n: usize, mib: usize) -> (PathBuf, Manifest) {
        let src = t.join("big");
        std::fs::create_dir_all(&src).unwrap();
        let mut seed = 0x9E3779B97F4A7C15u64;
        let chunk: Vec<u8> = (0..mib << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        for i in 0..n {
            std::fs::write(src.join(format!("f{i}")), &chunk).unwrap();
        }
        save_dir(src, t.join("bigck"))
    }

    #[test]
    fn cached_sees_only_complete_layers() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let cache = LayerCache::new(t.path().join("layers"));
        assert_eq!(cache.cached(&m, 0), None, "no cache root yet");
        let hex = checksum_hex(&m.sections[0].checksum).unwrap().to_string();
        std::fs::create_dir_all(cache.root().join(format!(".{hex}.partial-1-2"))).unwrap();
        assert_eq!(cache.cached(&m, 0), None, "a partial directory is no layer");
        assert_eq!(cache.cached(&m, 7), None, "no such section");
        // Held by an extraction: cached() neither waits nor extracts.
        let lock = cache.lock(&hex, true).unwrap().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(cache.cached(&m, 0), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        drop(lock);
        let layer = cache.layer(&ck, &m, 0).unwrap();
        assert_eq!(cache.cached(&m, 0), Some(layer.path));
    }

    #[test]
    fn a_background_fill_extracts_the_layer_once() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let cache = LayerCache::new(t.path().join("layers"));
        let path = match cache.fill_in_background(&ck, &m, 0).wait() {
            Filled::Extracted(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(std::fs::read(path.join("f")).unwrap(), b"hello");
        assert!(std::fs::symlink_metadata(path.join("gone"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(cache.cached(&m, 0), Some(path.clone()));
        assert_eq!(
            cache.fill_in_background(&ck, &m, 0).wait(),
            Filled::Cached(path.clone())
        );
        let layer = cache.layer(&ck, &m, 0).unwrap();
        assert!(!layer.extracted && layer.path == path);
        let hex = checksum_hex(&m.sections[0].checksum).unwrap();
        assert_eq!(
            entries(cache.root()),
            vec![
                format!(".{hex}.lock"),
                format!(".{hex}.used"),
                hex.to_string()
            ]
        );
    }

    #[test]
    fn a_fill_does_nothing_while_another_extraction_holds_the_section() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let cache = LayerCache::new(t.path().join("layers"));
        cache.make_root().unwrap();
        let hex = checksum_hex(&m.sections[0].checksum).unwrap().to_string();
        let lock = cache.lock(&hex, true).unwrap().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(cache.fill_in_background(&ck, &m, 0).wait(), Filled::Busy);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(entries(cache.root()), vec![format!(".{hex}.lock")]);
        drop(lock);
        assert!(matches!(
            cache.fill_in_background(&ck, &m, 0).wait(),
            Filled::Extracted(_)
        ));
    }

    #[test]
    fn a_fill_and_a_restore_of_one_section_extract_it_once() {
        require_root();
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let (ck, m) = big_checkpoint(t.path(), 2, 16);
        let cache = LayerCache::new(t.path().join("layers"));
        let filling = cache.fill_in_background(&ck, &m, 0);
        let layer = cache.layer(&ck, &m, 0).unwrap();
        match filling.wait() {
            // The fill had the lock: the restore waited for it and found the layer.
            Filled::Extracted(p) => assert!(!layer.extracted && p == layer.path),
            // The restore had the lock (the fill skipped the section), or had finished.
            Filled::Busy => assert!(layer.extracted),
            Filled::Cached(p) => assert!(layer.extracted && p == layer.path),
            other => panic!("{other:?}"),
        }
        let hex = checksum_hex(&m.sections[0].checksum).unwrap();
        assert_eq!(
            entries(cache.root()),
            vec![
                format!(".{hex}.lock"),
                format!(".{hex}.used"),
                hex.to_string()
            ]
        );
    }

    #[test]
    fn a_layer_is_named_only_by_the_checksum_it_was_verified_against() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        // The manifest the caller holds names other bytes than the checkpoint now holds (it
        // was replaced since the caller read it).
        let other = t.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("f"), b"other").unwrap();
        let (_, held) = save_dir(other, t.path().join("otherck"));
        let cache = LayerCache::new(t.path().join("layers"));
        let e = cache.layer(&ck, &held, 0).unwrap_err().to_string();
        assert!(e.contains("section 0") && e.contains("changed"), "{e}");
        assert_eq!(cache.cached(&held, 0), None, "a layer under another's name");
        assert!(matches!(
            cache.fill_in_background(&ck, &held, 0).wait(),
            Filled::Failed(_)
        ));
        assert_eq!(cache.cached(&held, 0), None, "a layer under another's name");
        assert_eq!(cache.cached(&m, 0), None);
    }

    #[test]
    fn a_failed_fill_leaves_nothing_and_names_the_section() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let data = ck.join(fsnap::manifest::DATA_FILE);
        let mut bytes = std::fs::read(&data).unwrap();
        let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
        bytes[at] = b'j';
        std::fs::write(&data, &bytes).unwrap();
        let cache = LayerCache::new(t.path().join("layers"));
        match cache.fill_in_background(&ck, &m, 0).wait() {
            Filled::Failed(why) => assert!(
                why.contains("section 0") && why.contains("checksum mismatch"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let hex = checksum_hex(&m.sections[0].checksum).unwrap();
        assert_eq!(entries(cache.root()), vec![format!(".{hex}.lock")]);
        assert_eq!(cache.cached(&m, 0), None);
    }

    /// Cancel (or drop) a fill once it has written something: it stops and leaves only the
    /// lock file.
    fn cancel_mid_fill(by_drop: bool) {
        require_root();
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let (ck, m) = big_checkpoint(t.path(), 4, 64);
        let cache = LayerCache::new(t.path().join("layers"));
        let filling = cache.fill_in_background(&ck, &m, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while filling
            .progress
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the fill never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let started = std::time::Instant::now();
        if by_drop {
            drop(filling);
        } else {
            assert_eq!(filling.cancel(), Filled::Cancelled);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "cancelling took {:?}",
            started.elapsed()
        );
        let hex = checksum_hex(&m.sections[0].checksum).unwrap();
        assert_eq!(entries(cache.root()), vec![format!(".{hex}.lock")]);
        assert_eq!(cache.cached(&m, 0), None);
    }

    #[test]
    fn a_cancelled_fill_leaves_nothing() {
        cancel_mid_fill(false);
    }

    #[test]
    fn a_dropped_fill_leaves_nothing() {
        cancel_mid_fill(true);
    }

    #[test]
    fn a_fill_runs_at_idle_priority() {
        // The I/O class and nice value of the calling thread.
        fn priority() -> (i64, i32) {
            // SAFETY: ioprio_get and getpriority of the calling thread.
            unsafe {
                (
                    libc::syscall(libc::SYS_ioprio_get, 1, 0) >> 13,
                    libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
                )
            }
        }
        let (fill, helper) = std::thread::spawn(|| {
            lower_priority();
            let helper = std::thread::spawn(priority).join().unwrap();
            (priority(), helper)
        })
        .join()
        .unwrap();
        assert_eq!(fill, (3, 19), "the fill: I/O class idle, nice 19");
        assert_eq!(helper, (3, 19), "a thread the fill starts inherits both");
        assert_ne!(priority(), (3, 19), "only the fill's threads are lowered");
    }
}
