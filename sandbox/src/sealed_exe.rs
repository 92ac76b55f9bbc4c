//! The binary the init helper runs from: a sealed, read-only in-memory copy of the embedding
//! binary (a memfd with `F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE`), so that a
//! process in the container that reaches a helper's `/proc/<pid>/exe` finds this copy, which
//! nobody can write, and never the host's binary (the class of runc's CVE-2019-5736; runc's
//! `libcontainer/exeseal` does the same). Made once per embedding process, on first use, and
//! shared by every launch after it: the copy costs one read of the binary, the launch nothing.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::{Error, Result};

/// The seals the copy carries: no write, no resize, no change to the seals.
const SEALS: SealFlag = SealFlag::from_bits_truncate(
    SealFlag::F_SEAL_SEAL.bits()
        | SealFlag::F_SEAL_SHRINK.bits()
        | SealFlag::F_SEAL_GROW.bits()
        | SealFlag::F_SEAL_WRITE.bits(),
);

/// The lowest descriptor number the copy may have: above stdio and the helper's channel
/// (`INIT_FD`), which are dup2'ed into place between fork and exec and would replace it.
const MIN_FD: i32 = 10;

/// The copy, written once (never changed after it is set).
static SEALED: OnceLock<OwnedFd> = OnceLock::new();

/// The sealed copy of the running binary, made on the first call. The descriptor is
/// close-on-exec and numbered at least [`MIN_FD`].
pub fn sealed_self() -> Result<BorrowedFd<'static>> {
    if let Some(fd) = SEALED.get() {
        return Ok(fd.as_fd());
    }
    let fd = seal_copy_of(&File::open("/proc/self/exe").map_err(|e| {
        Error::io(
            "open /proc/self/exe to make the init helper's sealed copy",
            e,
        )
    })?)?;
    // Two first launches at once: one copy wins, the other is dropped.
    let _ = SEALED.set(fd);
    Ok(SEALED.get().expect("set above").as_fd())
}

/// The path under which `fd` (ours) can be exec'd.
pub fn exec_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
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
    let high = fcntl(&file, FcntlArg::F_DUPFD_CLOEXEC(MIN_FD)).map_err(|e| err("move", e))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
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
        let fd = seal_copy_of(&source).unwrap();
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

    #[test]
    fn one_copy_per_process() {
        let a = sealed_self().unwrap().as_raw_fd();
        let b = sealed_self().unwrap().as_raw_fd();
        assert_eq!(a, b);
    }
}
