//! Paths beneath the container's rootfs, made and opened by descriptor. Every name is resolved
//! by the kernel with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` relative to a
//! descriptor of the rootfs — `..` and symlinks, absolute or relative, stay inside it — and
//! directories are created one component at a time with `mkdirat` in the directory just
//! opened. A mount is then made onto the opened inode through `/proc/self/fd/N`, never onto a
//! path string: a container that shares a volume with the one being built cannot swap a
//! component for a symlink between the check and the use and redirect a mount or a `mkdir` out
//! of the rootfs (runc's CVE-2021-30465 class).

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

use crate::error::{Error, Result};

/// A descriptor of the rootfs.
pub struct InRoot {
    fd: OwnedFd,
    path: PathBuf,
}

impl InRoot {
    pub fn open(rootfs: &Path) -> Result<InRoot> {
        let fd = nix::fcntl::open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("open rootfs {}", rootfs.display()), e))?;
        Ok(InRoot {
            fd,
            path: rootfs.to_path_buf(),
        })
    }

    /// `dest` (a path in the container) as a directory, made with its parents where missing:
    /// an `O_PATH` descriptor of it.
    ///
    /// Symlinks are first followed inside the root as the path reads now (so a dangling one
    /// inside it is created through); the walk that creates is then by descriptor, so a
    /// component swapped meanwhile still cannot lead out of the root.
    pub fn mkdir_all(&self, dest: &Path) -> Result<OwnedFd> {
        let resolved = crate::mount::resolve_beneath(&self.path, dest)?;
        let within = resolved.strip_prefix(&self.path).unwrap_or(&resolved);
        let mut at = self.open_dir(Path::new("."), dest)?;
        let mut walked = PathBuf::new();
        for part in parts(within) {
            walked.push(part);
            at = match self.open_dir(&walked, dest) {
                Ok(fd) => fd,
                Err(_) if part != ".." => {
                    match mkdirat(&at, part, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(self.error(dest, &format!("mkdir {}", walked.display()), e))
                        }
                    }
                    self.open_dir(&walked, dest)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(at)
    }

    /// `dest` as a file (a bind mount's target), made empty where missing with its parent
    /// directories; something already there is taken as it is (a directory included, which the
    /// mount then refuses). An `O_PATH` descriptor of it.
    pub fn touch(&self, dest: &Path) -> Result<OwnedFd> {
        if let Ok(fd) = self.open_any(dest) {
            return Ok(fd);
        }
        let (parent, name) = match (dest.parent(), dest.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => return Err(self.error(dest, "create", Errno::EINVAL)),
        };
        let dir = self.mkdir_all(parent)?;
        let how = OpenHow::new()
            .flags(OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(0o644))
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(&dir, name, how) {
            Ok(_) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.error(dest, "create", e)),
        }
        self.open_any(dest)
    }

    /// Whatever `dest` is now (after a mount: the mounted filesystem's root).
    pub fn open_any(&self, dest: &Path) -> Result<OwnedFd> {
        self.resolve(dest, OFlag::empty())
            .map_err(|e| self.error(dest, "open", e))
    }

    fn open_dir(&self, path: &Path, dest: &Path) -> Result<OwnedFd> {
        self.resolve(path, OFlag::O_DIRECTORY)
            .map_err(|e| self.error(dest, &format!("open {}", path.display()), e))
    }

    fn resolve(&self, path: &Path, extra: OFlag) -> nix::Result<OwnedFd> {
        let rel: PathBuf = parts(path).collect();
        let rel = if rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | extra)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.fd.as_fd(), &rel, how)
    }

    fn error(&self, dest: &Path, what: &str, e: Errno) -> Error {
        Error::Mount {
            target: self.path.join(dest.strip_prefix("/").unwrap_or(dest)),
            reason: format!("{what} beneath the rootfs: {e}"),
        }
    }
}

/// The path through which a mount reaches exactly the inode `fd` holds.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The mount id of the mount `fd` lies on (`mnt_id` in /proc/self/fdinfo).
pub fn mount_id(fd: &OwnedFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The components of `path` relative to the root (`.` and the root dropped, `..` kept for the
/// kernel to clamp at the root).
fn parts(path: &Path) -> impl Iterator<Item = &OsStr> {
    path.components().filter_map(|c| match c {
        Component::Normal(s) => Some(s),
        Component::ParentDir => Some(OsStr::new("..")),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dev_ino(p: &Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn directories_are_made_beneath_the_root_whatever_the_symlinks_say() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("abs")).unwrap();
        symlink("../../outside", root.join("rel")).unwrap();
        let r = InRoot::open(&root).unwrap();
        for (dest, made) in [
            (
                "/abs/a/b",
                root.join(outside.strip_prefix("/").unwrap()).join("a/b"),
            ),
            ("/rel/c", root.join("outside/c")),
            ("/../../d", root.join("d")),
        ] {
            let fd = r.mkdir_all(Path::new(dest)).unwrap();
            assert_eq!(dev_ino(&fd_path(&fd)), dev_ino(&made), "{dest}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let f = r.touch(Path::new("/abs/file")).unwrap();
        assert!(std::fs::metadata(fd_path(&f)).unwrap().is_file());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    /// The race a co-tenant could run: the target is swapped for a symlink out of the root
    /// after it was opened. A mount through the descriptor still lands on the opened inode.
    #[test]
    fn a_mount_lands_on_the_opened_inode_after_a_swap() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (it mounts)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("vol")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let r = InRoot::open(&root).unwrap();
        let target = r.mkdir_all(Path::new("/vol/x")).unwrap();
        // The swap: vol/x becomes a symlink to a directory outside the root.
        std::fs::rename(root.join("vol/x"), root.join("vol/x.moved")).unwrap();
        symlink(&outside, root.join("vol/x")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &fd_path(&target),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(root.join("vol/x.moved/written"), "in the mount").unwrap();
        let outside_entries = std::fs::read_dir(&outside).unwrap().count();
        nix::mount::umount2(&root.join("vol/x.moved"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!(
            outside_entries, 0,
            "the mount went through the swapped symlink"
        );
    }
}
