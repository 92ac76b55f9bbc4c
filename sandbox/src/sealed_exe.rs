//! The binary the init helper runs from: a read-only view of the embedding binary that
//! cannot be written or turned back into the host's file, so that a process in the container
//! that reaches a helper's `/proc/<pid>/exe` never gets a writable handle on the host's binary
//! (the class of runc's CVE-2019-5736; runc's `libcontainer/exeseal` is the reference). Two
//! ways, tried in order:
//!
//! - a private, detached, read-only overlayfs whose only layers are the binary's directory and
//!   an empty one (an overlay without an upper layer takes no write, and a detached mount is in
//!   no mount table to be remounted): no copy, no memory;
//! - a sealed memfd copy (`F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE`), where
//!   overlayfs or the new mount API is missing: one copy of the binary in memory.
//!
//! Made once per embedding process, on first use, and shared by every launch after it.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::{Error, Result};
use crate::fs_context::{self, FsContext};

/// The seals the memfd copy carries: no write, no resize, no change to the seals.
const SEALS: SealFlag = SealFlag::from_bits_truncate(
    SealFlag::F_SEAL_SEAL.bits()
        | SealFlag::F_SEAL_SHRINK.bits()
        | SealFlag::F_SEAL_GROW.bits()
        | SealFlag::F_SEAL_WRITE.bits(),
);

/// The lowest descriptor number the sealed binary may have: above stdio and the helper's
/// channel (`INIT_FD`), which are dup2'ed into place between fork and exec and would
/// replace it.
const MIN_FD: i32 = 10;

/// The sealed binary, made once (never changed after it is set).
static SEALED: OnceLock<OwnedFd> = OnceLock::new();

/// The sealed view of the running binary, made on the first call. The descriptor is
/// close-on-exec and numbered at least [`MIN_FD`].
pub fn sealed_self() -> Result<BorrowedFd<'static>> {
    if let Some(fd) = SEALED.get() {
        return Ok(fd.as_fd());
    }
    let running = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::metadata("/proc/self/exe"),
    );
    let fd = match running {
        (Ok(path), Ok(meta)) => overlay_view_of(&path, &meta, &std::env::temp_dir()).or_else(|e| {
            log::debug!("sealed binary: no overlayfs view ({e}); copying it into a memfd");
            copy_of_self()
        }),
        _ => copy_of_self(),
    }?;
    let fd = above_stdio(fd)?;
    // Two first launches at once: one wins, the other is dropped.
    let _ = SEALED.set(fd);
    Ok(SEALED.get().expect("set above").as_fd())
}

/// The path under which `fd` (ours) can be exec'd.
pub fn exec_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn copy_of_self() -> Result<OwnedFd> {
    let exe = File::open("/proc/self/exe").map_err(|e| {
        Error::io(
            "open /proc/self/exe to make the init helper's sealed copy",
            e,
        )
    })?;
    seal_copy_of(&exe)
}

/// `fd` moved to a number of at least [`MIN_FD`], close-on-exec.
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd> {
    let high = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(MIN_FD))
        .map_err(|e| Error::sys("sealed binary: move its descriptor", e))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// A sealed memfd holding the contents of `source`.
fn seal_copy_of(source: &File) -> Result<OwnedFd> {
    let err =
        |what: &str, e: nix::Error| Error::sys(format!("init helper's sealed copy: {what}"), e);
    let memfd = memfd_create(
        "cryo-init",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| err("memfd_create", e))?;
    let mut file = File::from(memfd);
    let mut reader = source;
    std::io::copy(&mut reader, &mut file)
        .map_err(|e| Error::io("init helper's sealed copy: copy the binary", e))?;
    fcntl(&file, FcntlArg::F_ADD_SEALS(SEALS)).map_err(|e| err("add seals", e))?;
    let got = fcntl(&file, FcntlArg::F_GET_SEALS).map_err(|e| err("read seals", e))?;
    if !SealFlag::from_bits_truncate(got).contains(SEALS) {
        return Err(Error::Init(format!(
            "the sealed copy of the binary carries seals {got:#x}, not {:#x}",
            SEALS.bits()
        )));
    }
    Ok(file.into())
}

/// An `O_PATH` descriptor of `binary` (the running binary, `running`) seen through a detached
/// read-only overlayfs whose layers are the binary's directory and an empty directory
/// (overlayfs needs two layers to run without an upper one). The empty directory is made in
/// `scratch` for the mount and removed at once.
fn overlay_view_of(binary: &Path, running: &std::fs::Metadata, scratch: &Path) -> Result<OwnedFd> {
    let (Some(dir), Some(name)) = (binary.parent(), binary.file_name()) else {
        return Err(Error::Init(format!(
            "{} has no directory",
            binary.display()
        )));
    };
    let fail = |what: &str, e: std::io::Error| {
        Error::Init(format!(
            "overlayfs view of {}: {what}: {e}",
            binary.display()
        ))
    };
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| Error::Init("a path has a NUL byte".into()));
    let empty = nix::unistd::mkdtemp(&scratch.join("cryo-exeseal-XXXXXX"))
        .map_err(|e| Error::sys("sealed binary: make an empty layer", e))?;
    let _remove = RemoveDir(&empty);
    let lower = format!("{}:{}", escape(dir), escape(&empty));

    let fs = FsContext::open("overlay").map_err(|e| fail("fsopen", e))?;
    fs.set_string("lowerdir", &lower)
        .map_err(|e| fail(&format!("lowerdir={lower}"), e))?;
    // Only to keep dmesg quiet where the layers are on different filesystems.
    let _ = fs.set_string("xino", "off");
    let mnt = fs
        .mount(fs_context::ATTR_RDONLY | fs_context::ATTR_NOSUID | fs_context::ATTR_NODEV)
        .map_err(|e| fail("create and fsmount", e))?;
    let name = cstr(name.as_bytes())?;
    // SAFETY: a valid directory descriptor and C string.
    let exe = unsafe {
        libc::openat(
            mnt.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if exe < 0 {
        return Err(fail("open the binary", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor from openat.
    let exe = unsafe { OwnedFd::from_raw_fd(exe) };
    // The view must show the running binary, not whatever has its name now (an upgrade):
    // without xino, overlayfs shows a lower file's own inode number.
    let view = nix::sys::stat::fstat(&exe).map_err(|e| Error::sys("sealed binary: fstat", e))?;
    use std::os::unix::fs::MetadataExt;
    if view.st_ino != running.ino() || view.st_size as u64 != running.size() {
        return Err(Error::Init(format!(
            "{} is no longer the running binary (inode {}, {} bytes; running: inode {}, {} bytes)",
            binary.display(),
            view.st_ino,
            view.st_size,
            running.ino(),
            running.size()
        )));
    }
    Ok(exe)
}

/// A path as overlayfs's `lowerdir` takes it (`:` separates layers, `\` escapes).
fn escape(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
}

/// Removes an empty directory when dropped.
struct RemoveDir<'a>(&'a Path);

impl Drop for RemoveDir<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn the_copy_is_identical_sealed_and_unwritable() {
        let mut source = tempfile::tempfile().unwrap();
        source.write_all(b"\x7fELF not really, but bytes").unwrap();
        source.rewind().unwrap();
        let fd = above_stdio(seal_copy_of(&source).unwrap()).unwrap();
        assert!(fd.as_raw_fd() >= MIN_FD);
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).unwrap();
        assert!(SealFlag::from_bits_truncate(seals).contains(SEALS));
        let path = exec_path(fd.as_fd());
        let mut text = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut text).unwrap();
        assert_eq!(text, b"\x7fELF not really, but bytes");
        // Reopened for writing through /proc (as a process in a container would try), the
        // copy refuses every write, and its size cannot change.
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_APPEND)
            .open(&path)
            .unwrap();
        assert!(w.write_all(b"x").is_err());
        assert!(w.set_len(0).is_err());
        assert!(fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::empty())).is_err());
    }

    /// Needs root (a mount); the test suite runs as root.
    #[test]
    fn the_overlay_view_runs_takes_no_write_and_leaves_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("tool");
        std::fs::copy("/bin/true", &binary).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(&binary).unwrap();
        let fd = above_stdio(overlay_view_of(&binary, &meta, scratch.path()).unwrap()).unwrap();
        let path = exec_path(fd.as_fd());
        let status = std::process::Command::new(&path).status().unwrap();
        assert!(status.success());
        let e = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_APPEND)
            .open(&path)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        // A detached mount: in no mount table; the empty layer is gone already.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains("cryo-exeseal"), "{mounts}");
        assert!(
            !mounts.contains(&dir.path().display().to_string()),
            "{mounts}"
        );
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    }

    /// A binary replaced under its name since it started (an upgrade) is not used.
    #[test]
    fn a_replaced_binary_is_not_viewed() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("tool");
        std::fs::write(&binary, b"old").unwrap();
        let old = std::fs::metadata(&binary).unwrap();
        let new = dir.path().join("tool.new");
        std::fs::write(&new, b"new").unwrap();
        std::fs::rename(&new, &binary).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let e = overlay_view_of(&binary, &old, scratch.path()).unwrap_err();
        assert!(
            e.to_string().contains("no longer the running binary"),
            "{e}"
        );
    }

    #[test]
    fn lower_dirs_are_escaped() {
        assert_eq!(escape(Path::new("/a:b\\c")), "/a\\:b\\\\c");
    }

    #[test]
    fn one_copy_per_process() {
        let a = sealed_self().unwrap().as_raw_fd();
        let b = sealed_self().unwrap().as_raw_fd();
        assert_eq!(a, b);
    }
}
