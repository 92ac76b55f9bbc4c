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
//! - `.<hex>.lock`: taken (flock) by whoever extracts that section, so concurrent restores of
//!   one section extract it once;
//! - `.<hex>.partial-*` (and fsnap's own work directory beside it): an extraction in progress.
//!   It is checksum-verified, synced, then renamed to `<hex>` in one step: a layer directory
//!   exists only complete, and a crash leaves only partial directories, which the next
//!   extraction of that section removes under the lock.
//!
//! A layer's name is the checksum of the section's bytes that were verified while extracting
//! it, so a hit serves exactly the content the checkpoint's manifest names. The cache is never
//! written through: overlays mount it as a lower layer. Eviction is not done here (layers stay
//! until removed by hand).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use fsnap::manifest::checksum_hex;
pub use fsnap::{Manifest, Section};

use crate::error::{Error, Result};

/// The environment variable naming the cache root.
pub const ROOT_ENV: &str = "CRYO_LAYER_ROOT";
/// The cache root when [`ROOT_ENV`] is unset.
pub const DEFAULT_ROOT: &str = "/var/lib/cryo/layers";

/// The layer cache at one root.
#[derive(Debug, Clone)]
pub struct LayerCache {
    root: PathBuf,
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
        LayerCache { root: root.into() }
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
        let hex = checksum_hex(&section.checksum)
            .map_err(|reason| Error::Checkpoint {
                path: checkpoint.to_path_buf(),
                reason: format!("section {index}: {reason}"),
            })?
            .to_ascii_lowercase();
        self.make_root()?;
        let path = self.root.join(&hex);
        if is_layer(&path)? {
            return Ok(Layer {
                path,
                extracted: false,
            });
        }
        let _lock = self.lock(&hex)?;
        // Whoever held the lock before may have finished it.
        if is_layer(&path)? {
            return Ok(Layer {
                path,
                extracted: false,
            });
        }
        self.remove_partials(&hex);
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
            },
            &fsnap::Progress::default(),
        );
        if let Err(e) = extracted {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(Error::Checkpoint {
                path: checkpoint.to_path_buf(),
                reason: e.to_string(),
            });
        }
        // Durable before it is trusted: the layer's files, then its name.
        let done = crate::fscheckpoint::syncfs(&partial)
            .and_then(|()| {
                std::fs::rename(&partial, &path)
                    .map_err(|e| Error::io(format!("rename the layer into {}", path.display()), e))
            })
            .and_then(|()| fsync_dir(&self.root));
        if let Err(e) = done {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        Ok(Layer {
            path,
            extracted: true,
        })
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

    /// The extraction lock of one section (released when dropped).
    fn lock(&self, hex: &str) -> Result<File> {
        let path = self.root.join(format!(".{hex}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own.
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(format!("lock {}", path.display()), e));
            }
        }
        Ok(f)
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
        let ck = t.join("ck");
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
            vec![format!(".{hex}.lock"), hex.to_string()]
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
            2,
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
}
