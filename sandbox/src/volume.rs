//! Disk-backed overlays for a volume directory (the engine side of pod volumes; it knows
//! nothing of Kubernetes).
//!
//! A directory `DIR` gets a **filestore** inside it, `DIR/.cryo-filestore/<key>/`, holding an
//! overlay's three layers:
//!
//! - `lower/`: empty, read-only base (the overlay shows only what was written through it);
//! - `upper/`: every file written through the overlay, on `DIR`'s filesystem (disk for a disk
//!   directory) — this is what filesystem snapshots capture;
//! - `work/`: overlayfs's scratch directory.
//!
//! [`mount_overlay`] mounts that overlay at a mountpoint the caller chooses (the shim uses one
//! per pod, bound into every container that shares it); [`unmount_overlay`] undoes it. Both are
//! idempotent, and a failed mount leaves nothing mounted. The filestore stays in `DIR`: a later
//! mount of the same key finds the files again; removing `DIR` removes it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::error::{Error, Result};
use crate::mount::{mountinfo_self, unmount};

/// Name of the filestore directory inside a volume directory.
pub const FILESTORE_DIR: &str = ".cryo-filestore";

/// The layers of one overlay's filestore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filestore {
    /// `DIR/.cryo-filestore/<key>`
    pub root: PathBuf,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Create (or find) the filestore `dir/.cryo-filestore/<key>/{lower,upper,work}`. `key` is one
/// path component. `upper` takes `dir`'s mode and owner (the overlay's root shows them).
/// Nothing on the way may be a symlink.
pub fn filestore(dir: &Path, key: &str) -> Result<Filestore> {
    if key.is_empty() || key.contains('/') || key == "." || key == ".." {
        return Err(Error::InvalidSpec(format!(
            "filestore key {key:?} must be one path component"
        )));
    }
    let md = real_dir(dir)?;
    let base = dir.join(FILESTORE_DIR);
    make_dir(&base, 0o700)?;
    let root = base.join(key);
    make_dir(&root, 0o700)?;
    let store = Filestore {
        lower: root.join("lower"),
        upper: root.join("upper"),
        work: root.join("work"),
        root,
    };
    make_dir(&store.lower, 0o755)?;
    let fresh = make_dir(&store.upper, 0o755)?;
    if fresh {
        std::fs::set_permissions(
            &store.upper,
            std::fs::Permissions::from_mode(md.mode() & 0o7777),
        )
        .map_err(|e| Error::io(format!("chmod {}", store.upper.display()), e))?;
        nix::unistd::chown(
            &store.upper,
            Some(nix::unistd::Uid::from_raw(md.uid())),
            Some(nix::unistd::Gid::from_raw(md.gid())),
        )
        .map_err(|e| Error::sys(format!("chown {}", store.upper.display()), e))?;
    }
    make_dir(&store.work, 0o700)?;
    Ok(store)
}

/// Mount the overlay of `dir`'s filestore `key` at `mountpoint` (created if missing). Already
/// mounted there: nothing to do. On failure nothing is left mounted.
pub fn mount_overlay(dir: &Path, key: &str, mountpoint: &Path) -> Result<Filestore> {
    mount_overlay_on(dir, key, mountpoint, None)
}

/// [`mount_overlay`] with `lower` (a read-only layer, e.g. a restored checkpoint's from
/// `crate::layer_cache`) in place of the filestore's empty lower directory when given.
pub fn mount_overlay_on(
    dir: &Path,
    key: &str,
    mountpoint: &Path,
    lower: Option<&Path>,
) -> Result<Filestore> {
    let mut store = filestore(dir, key)?;
    if let Some(lower) = lower {
        store.lower = lower.to_path_buf();
    }
    mount_store(&store, mountpoint)?;
    Ok(store)
}

/// Mount `store`'s overlay at `mountpoint` unless something is mounted there.
fn mount_store(store: &Filestore, mountpoint: &Path) -> Result<()> {
    if is_mounted(mountpoint)? {
        return Ok(());
    }
    let created = !mountpoint.exists();
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| Error::io(format!("create mountpoint {}", mountpoint.display()), e))?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        store.lower.display(),
        store.upper.display(),
        store.work.display()
    );
    if let Err(e) = mount(
        Some("overlay"),
        mountpoint,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(data.as_str()),
    ) {
        if created {
            let _ = std::fs::remove_dir(mountpoint);
        }
        return Err(Error::Mount {
            target: mountpoint.to_path_buf(),
            reason: format!("overlay of {}: {e}", store.root.display()),
        });
    }
    Ok(())
}

/// Unmount whatever is mounted at `mountpoint` (lazily if busy) and remove the directory.
/// Not mounted, or gone: fine.
pub fn unmount_overlay(mountpoint: &Path) -> Result<()> {
    // Stacked mounts (a mount made twice by hand) go one by one.
    for _ in 0..8 {
        if !is_mounted(mountpoint)? {
            break;
        }
        unmount(mountpoint)?;
    }
    match std::fs::remove_dir(mountpoint) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("remove mountpoint {}", mountpoint.display()),
            e,
        )),
    }
}

/// Whether something is mounted exactly at `path` (in this mount namespace).
pub fn is_mounted(path: &Path) -> Result<bool> {
    Ok(mountinfo_self()?.iter().any(|m| m.mount_point == path))
}

/// Whether `dir` lives in memory (tmpfs or ramfs), as a `Memory` emptyDir does.
pub fn is_memory_backed(dir: &Path) -> Result<bool> {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    let fs = statfs(dir).map_err(|e| Error::sys(format!("statfs {}", dir.display()), e))?;
    // ramfs: 0x858458f6 (linux/magic.h).
    let ramfs = fs.filesystem_type().0 as i64 == 0x8584_58f6;
    Ok(fs.filesystem_type() == TMPFS_MAGIC || ramfs)
}

/// `path`'s metadata if it is a directory and not a symlink.
fn real_dir(path: &Path) -> Result<std::fs::Metadata> {
    let md = std::fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("volume directory {}", path.display()), e))?;
    if !md.file_type().is_dir() {
        return Err(Error::Mount {
            target: path.to_path_buf(),
            reason: "not a directory (or a symlink)".into(),
        });
    }
    Ok(md)
}

/// Create `path` with `mode` unless it exists; it must be a real directory. Returns whether it
/// was created.
fn make_dir(path: &Path, mode: u32) -> Result<bool> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => real_dir(path).map(|_| false),
        Err(e) => Err(Error::io(format!("mkdir {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn filestore_layout_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let fs = filestore(dir.path(), "pod").unwrap();
        assert_eq!(fs.root, dir.path().join(".cryo-filestore/pod"));
        for d in [&fs.lower, &fs.upper, &fs.work] {
            assert!(d.is_dir());
        }
        assert_eq!(std::fs::metadata(&fs.upper).unwrap().mode() & 0o7777, 0o777);
        // Again: the same dirs.
        assert_eq!(filestore(dir.path(), "pod").unwrap(), fs);
        assert!(filestore(dir.path(), "../x").is_err());
        assert!(filestore(dir.path(), "").is_err());
        // A symlinked filestore is refused.
        let other = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(other.path(), dir.path().join(".cryo-filestore/evil")).unwrap();
        assert!(filestore(dir.path(), "evil").is_err());
        assert!(filestore(&dir.path().join("missing"), "pod").is_err());
    }

    #[test]
    fn overlay_mounts_writes_to_upper_is_idempotent_and_unmounts() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let mp = dir.path().join("merged/ws");
        let fs = mount_overlay(&vol, "pod", &mp).unwrap();
        assert!(is_mounted(&mp).unwrap());
        // Idempotent: a second call mounts nothing more.
        mount_overlay(&vol, "pod", &mp).unwrap();
        let count = mountinfo_self()
            .unwrap()
            .iter()
            .filter(|m| m.mount_point == mp)
            .count();
        assert_eq!(count, 1);
        std::fs::write(mp.join("f"), b"hello").unwrap();
        assert_eq!(std::fs::read(fs.upper.join("f")).unwrap(), b"hello");
        // The filestore is not visible through the overlay.
        assert!(!mp.join(FILESTORE_DIR).exists());
        unmount_overlay(&mp).unwrap();
        assert!(!is_mounted(&mp).unwrap());
        assert!(!mp.exists());
        unmount_overlay(&mp).unwrap();
        // Mounted again, the files are back.
        mount_overlay(&vol, "pod", &mp).unwrap();
        assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"hello");
        unmount_overlay(&mp).unwrap();
        assert!(!is_memory_backed(&vol).unwrap() || std::env::temp_dir().starts_with("/dev/shm"));
    }

    #[test]
    fn failed_mount_leaves_nothing() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        // A layer that vanished: the mount fails.
        let mut fs = filestore(&vol, "pod").unwrap();
        fs.lower = vol.join("gone");
        let mp = dir.path().join("merged/ws");
        assert!(mount_store(&fs, &mp).is_err());
        assert!(!is_mounted(&mp).unwrap());
        assert!(!mp.exists());
    }
}
