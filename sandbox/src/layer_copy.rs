//! Copying a cached layer (`crate::layer_cache`) into a tmpfs volume of a created container,
//! for volumes that cannot take a layer (a tmpfs has no lower directory). The copy happens
//! after the container's mounts are made and before its workload starts.
//!
//! The source is the cache's own tree (trusted: extracted and verified by fsnap). The
//! destination is the container's: it is opened through `/proc/<pid>/root` with every name
//! resolved inside the container's root (`RESOLVE_IN_ROOT`, no magic links), must be a tmpfs
//! and empty, and everything below it is created relative to directory descriptors, never
//! following a symlink, so nothing is written outside it. Whiteouts (0/0 character devices)
//! are skipped (there is nothing below a tmpfs to hide) and `trusted.overlay.*` attributes are
//! not copied; owners, modes, other extended attributes, nanosecond mtimes, hard links and
//! holes are kept.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fchmodat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};

use crate::error::{Error, Result};

/// Copy the tree of `layer` into the tmpfs mounted at `dest` in the mount namespace and root
/// of process `pid` (a created container's PID 1). Returns the bytes copied. Blocking.
pub fn copy_into_container(layer: &Path, pid: i32, dest: &Path) -> Result<u64> {
    let fail = |reason: String| Error::Mount {
        target: dest.to_path_buf(),
        reason: format!("copy the restored layer {}: {reason}", layer.display()),
    };
    let root: OwnedFd = File::open(format!("/proc/{pid}/root"))
        .map_err(|e| fail(format!("open the container's root: {e}")))?
        .into();
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let target = openat2(root.as_fd(), dest, how).map_err(|e| fail(format!("open: {e}")))?;
    let fs = nix::sys::statfs::fstatfs(&target).map_err(|e| fail(format!("statfs: {e}")))?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(fail("is not a tmpfs".into()));
    }
    let mut entries =
        nix::dir::Dir::from_fd(target.try_clone().map_err(|e| fail(format!("dup: {e}")))?)
            .map_err(|e| fail(format!("read: {e}")))?;
    let busy = entries
        .iter()
        .filter_map(|e| e.ok())
        .any(|e| !matches!(e.file_name().to_bytes(), b"." | b".."));
    if busy {
        return Err(fail("is not empty".into()));
    }
    let mut copy = Copy::default();
    copy.dir(layer, target.as_fd())
        .and_then(|()| meta_fd(layer, target.as_fd()))
        .map_err(fail)?;
    Ok(copy.bytes)
}

type Res<T> = std::result::Result<T, String>;

/// The state of one copy: the first copy of each multiply-linked file (its parent directory
/// and name), and the bytes copied.
#[derive(Default)]
struct Copy {
    links: HashMap<(u64, u64), (std::sync::Arc<OwnedFd>, String)>,
    bytes: u64,
}

impl Copy {
    /// Copy the entries of directory `src` into the directory `dst`.
    fn dir(&mut self, src: &Path, dst: BorrowedFd) -> Res<()> {
        let dst_owned =
            std::sync::Arc::new(dst.try_clone_to_owned().map_err(|e| format!("dup: {e}"))?);
        let mut names: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| format!("read {}: {e}", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| format!("read {}: {e}", src.display()))?;
        names.sort();
        for name in names {
            let from = src.join(&name);
            let name = name
                .to_str()
                .ok_or_else(|| format!("{}: not UTF-8", from.display()))?
                .to_string();
            self.entry(&from, &dst_owned, &name)
                .map_err(|e| format!("{}: {e}", from.display()))?;
        }
        Ok(())
    }

    fn entry(&mut self, from: &Path, parent: &std::sync::Arc<OwnedFd>, name: &str) -> Res<()> {
        let p = parent.as_fd();
        let md = std::fs::symlink_metadata(from).map_err(|e| e.to_string())?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            return Ok(()); // a whiteout: nothing below a tmpfs to hide
        }
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some((lp, ln)) = self.links.get(&(md.dev(), md.ino())) {
                return linkat(lp.as_fd(), ln.as_str(), p, name, AtFlags::empty())
                    .map_err(|e| format!("link: {e}"));
            }
            self.links
                .insert((md.dev(), md.ino()), (parent.clone(), name.to_string()));
        }
        if ft.is_dir() {
            mkdirat(p, name, Mode::from_bits_truncate(0o700)).map_err(|e| format!("mkdir: {e}"))?;
            let fd = openat2(p, name, dir_how()).map_err(|e| format!("open: {e}"))?;
            self.dir(from, fd.as_fd())?;
            meta_fd(from, fd.as_fd())
        } else if ft.is_file() {
            let how = OpenHow::new()
                .flags(
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                )
                .mode(Mode::from_bits_truncate(0o600))
                .resolve(beneath());
            let out = File::from(openat2(p, name, how).map_err(|e| format!("create: {e}"))?);
            let src = File::open(from).map_err(|e| format!("open: {e}"))?;
            self.bytes += copy_data(&src, &out, md.len())?;
            meta_fd(from, out.as_fd())
        } else if ft.is_symlink() {
            let target = std::fs::read_link(from).map_err(|e| format!("readlink: {e}"))?;
            symlinkat(target.as_path(), p, name).map_err(|e| format!("symlink: {e}"))?;
            meta_at(from, p, name, false)
        } else if ft.is_fifo() {
            mknodat(p, name, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                .map_err(|e| format!("mkfifo: {e}"))?;
            meta_at(from, p, name, true)
        } else {
            Err("a device node or socket: refused".into())
        }
    }
}

/// Copy `len` bytes of `src` into `dst`, data extents only (holes stay holes).
fn copy_data(src: &File, dst: &File, len: u64) -> Res<u64> {
    let mut copied = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = Errno::last();
            if e == Errno::ENXIO {
                break; // only a hole is left
            }
            return Err(format!("seek: {e}"));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        let mut at = data;
        while at < hole {
            let want = ((hole - at) as usize).min(buf.len());
            let n = src
                .read_at(&mut buf[..want], at as u64)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the layer's file shrank while copied".into());
            }
            dst.write_all_at(&buf[..n], at as u64)
                .map_err(|e| format!("write: {e}"))?;
            at += n as i64;
            copied += n as u64;
        }
        pos = hole;
    }
    dst.set_len(len).map_err(|e| format!("size: {e}"))?;
    Ok(copied)
}

/// The extended attributes of `from` a copy takes (not `trusted.overlay.*`).
fn xattrs_of(from: &Path) -> Res<Vec<(String, Vec<u8>)>> {
    Ok(fsnap::xattr::xattrs(from)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(k, _)| !k.starts_with("trusted.overlay."))
        .collect())
}

fn times(md: &std::fs::Metadata) -> TimeSpec {
    TimeSpec::new(md.mtime(), md.mtime_nsec())
}

/// Owner, mode, xattrs and mtime of `from` onto the open file or directory `fd`.
fn meta_fd(from: &Path, fd: BorrowedFd) -> Res<()> {
    let md = std::fs::symlink_metadata(from).map_err(|e| e.to_string())?;
    fchown(
        fd,
        Some(Uid::from_raw(md.uid())),
        Some(Gid::from_raw(md.gid())),
    )
    .map_err(|e| format!("chown: {e}"))?;
    fchmod(fd, Mode::from_bits_truncate(md.mode() & 0o7777)).map_err(|e| format!("chmod: {e}"))?;
    for (k, v) in xattrs_of(from)? {
        fsnap::xattr::set_fd(fd, &k, &v).map_err(|e| format!("xattr {k}: {e}"))?;
    }
    futimens(fd, &times(&md), &times(&md)).map_err(|e| format!("times: {e}"))
}

/// The same onto `name` in `parent` (a symlink or FIFO), never following it.
fn meta_at(from: &Path, parent: BorrowedFd, name: &str, chmod: bool) -> Res<()> {
    let md = std::fs::symlink_metadata(from).map_err(|e| e.to_string())?;
    fchownat(
        parent,
        name,
        Some(Uid::from_raw(md.uid())),
        Some(Gid::from_raw(md.gid())),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| format!("chown: {e}"))?;
    if chmod {
        // A FIFO: never a symlink.
        fchmodat(
            parent,
            name,
            Mode::from_bits_truncate(md.mode() & 0o7777),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| format!("chmod: {e}"))?;
    }
    for (k, v) in xattrs_of(from)? {
        fsnap::xattr::set_beneath(parent, name, &k, &v).map_err(|e| format!("xattr {k}: {e}"))?;
    }
    utimensat(
        parent,
        name,
        &times(&md),
        &times(&md),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| format!("times: {e}"))
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn dir_how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(beneath())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's own root and a tmpfs mounted in a private mount namespace of a child:
    /// the copy lands in the tmpfs with every kind of entry, and a non-empty or non-tmpfs
    /// target is refused.
    #[test]
    fn a_layer_is_copied_into_a_tmpfs_with_its_metadata() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (mounts, owners): run as root, as CI does"
        );
        let t = tempfile::tempdir().unwrap();
        let layer = t.path().join("layer");
        std::fs::create_dir_all(layer.join("d/e")).unwrap();
        std::fs::write(layer.join("d/f"), b"hello").unwrap();
        std::fs::hard_link(layer.join("d/f"), layer.join("hard")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", layer.join("abs")).unwrap();
        nix::sys::stat::mknod(
            &layer.join("gone"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        let sparse = File::create(layer.join("sparse")).unwrap();
        sparse.write_all_at(b"x", 8 << 20).unwrap();
        std::os::unix::fs::chown(layer.join("d/f"), Some(1234), Some(5678)).unwrap();
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let plain = t.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        // A child in its own mount namespace holds the tmpfs; the test copies through its
        // /proc/<pid>/root, as the shim does for a container.
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let child = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs none {} && echo ready && read x",
                mnt.display()
            ))
            .stdin(std::process::Stdio::from(r))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "ready\n");
        let pid = child.id() as i32;
        let in_child = format!("/proc/{pid}/root{}", mnt.display());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let bytes = copy_into_container(&layer, pid, &mnt).unwrap();
            assert_eq!(bytes, 6);
            let got = Path::new(&in_child);
            assert_eq!(std::fs::read(got.join("d/f")).unwrap(), b"hello");
            let f = std::fs::metadata(got.join("d/f")).unwrap();
            assert_eq!((f.uid(), f.gid(), f.nlink()), (1234, 5678, 2));
            assert_eq!(f.ino(), std::fs::metadata(got.join("hard")).unwrap().ino());
            assert_eq!(
                std::fs::read_link(got.join("abs")).unwrap(),
                Path::new("/etc/passwd")
            );
            assert!(!got.join("gone").exists());
            let s = std::fs::metadata(got.join("sparse")).unwrap();
            assert_eq!(s.len(), (8 << 20) + 1);
            assert!(
                s.blocks() < 64,
                "the hole was filled: {} blocks",
                s.blocks()
            );
            assert!(got.join("d/e").is_dir());
            // Again: not empty any more.
            let e = copy_into_container(&layer, pid, &mnt)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not empty"), "{e}");
            // Not a tmpfs.
            let e = copy_into_container(&layer, pid, &plain)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a tmpfs"), "{e}");
        }));
        drop(w);
        let _ = child.wait();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
