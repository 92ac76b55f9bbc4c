//! Leases on directories that something uses and something else may remove: a cached layer an
//! overlay stands on, a checkpoint a pod restores from. A user holds a SHARED `flock` on the
//! directory's descriptor for as long as it uses the directory; a remover takes an EXCLUSIVE
//! one without waiting, and a directory it cannot lock is in use: it stays. The remover renames
//! the directory away (or removes it) holding its lock, so a user that opened the directory by
//! its path just before finds, once it has its lock, that the path no longer names what it
//! locked: it has no lease (the directory is going), and looks again.
//!
//! The locks are the kernel's (`flock(2)`): they end with the holder's last descriptor, so a
//! holder that dies leaves no stale lease.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A lease on a directory (see the module's doc), held until dropped.
#[derive(Debug)]
pub struct Lease {
    /// Held for its lock.
    _dir: File,
    path: PathBuf,
}

impl Lease {
    /// A shared lease on `path`: `None` if it does not exist, is not a directory (a symlink is
    /// not followed), or is being removed (its exclusive lock is held — when `wait` is false —
    /// or it was moved away while this waited).
    pub fn shared(path: &Path, wait: bool) -> std::io::Result<Option<Lease>> {
        let op = match wait {
            true => libc::LOCK_SH,
            false => libc::LOCK_SH | libc::LOCK_NB,
        };
        Lease::take(path, op)
    }

    /// The exclusive lease of a remover, not waited for: `None` if someone holds a lease on
    /// `path` (it is in use), or it is gone.
    pub fn exclusive(path: &Path) -> std::io::Result<Option<Lease>> {
        Lease::take(path, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// The directory leased.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn take(path: &Path, op: libc::c_int) -> std::io::Result<Option<Lease>> {
        let dir = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(d) => d,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        // SAFETY: flock on a descriptor we own.
        while unsafe { libc::flock(dir.as_raw_fd(), op) } != 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(e),
            }
        }
        // Still the directory at `path` (a remover moves it away holding its lock).
        let held = dir.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.dev() == held.dev() && md.ino() == held.ino() => Ok(Some(Lease {
                _dir: dir,
                path: path.to_path_buf(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_lease_keeps_the_remover_out_until_dropped() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let a = Lease::shared(&d, false).unwrap().unwrap();
        let b = Lease::shared(&d, true).unwrap().unwrap();
        assert!(Lease::exclusive(&d).unwrap().is_none(), "two users hold it");
        drop(a);
        assert!(Lease::exclusive(&d).unwrap().is_none(), "one user holds it");
        drop(b);
        let removing = Lease::exclusive(&d).unwrap().unwrap();
        assert!(Lease::shared(&d, false).unwrap().is_none(), "being removed");
        assert_eq!(removing.path(), d);
    }

    #[test]
    fn a_user_waiting_on_a_directory_moved_away_gets_no_lease() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let removing = Lease::exclusive(&d).unwrap().unwrap();
        let waiter = std::thread::spawn({
            let d = d.clone();
            move || Lease::shared(&d, true).unwrap().is_none()
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::rename(&d, t.path().join(".d.going")).unwrap();
        // Another directory by the same name is not what the waiter opened.
        std::fs::create_dir(&d).unwrap();
        drop(removing);
        assert!(waiter.join().unwrap());
        assert!(Lease::shared(&d, false).unwrap().is_some());
    }

    #[test]
    fn no_lease_on_what_is_missing_or_not_a_directory() {
        let t = tempfile::tempdir().unwrap();
        assert!(Lease::shared(&t.path().join("none"), true)
            .unwrap()
            .is_none());
        std::fs::write(t.path().join("f"), b"").unwrap();
        assert!(Lease::shared(&t.path().join("f"), true).unwrap().is_none());
        std::os::unix::fs::symlink(t.path(), t.path().join("l")).unwrap();
        assert!(Lease::exclusive(&t.path().join("l")).unwrap().is_none());
    }
}
