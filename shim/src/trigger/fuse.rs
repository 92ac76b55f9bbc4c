//! The FUSE kernel protocol (7.x, as `linux/fuse.h` lays it out), spoken directly on
//! `/dev/fuse` without libfuse: mount a filesystem this process serves, read its requests,
//! and write replies (from any thread: each reply is one write). Only what the trigger's small
//! tree needs is encoded here; what each request means is [`super::fs`]'s.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Request opcodes.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const TMPFILE: u32 = 51;
}

/// The root directory's node id.
pub const ROOT: u64 = 1;
/// Reads ignore the page cache and the file size.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// No seeking: reads and writes ignore the offset.
pub const FOPEN_NONSEEKABLE: u32 = 1 << 2;
/// A READ's flag: the read carries its lock owner, which only direct reads (read(2) on a
/// direct-I/O file) do; page-cache reads (readahead, splice) do not.
pub const READ_LOCKOWNER: u32 = 1 << 1;
/// O_TRUNC comes with OPEN instead of as a separate SETATTR.
const FUSE_ATOMIC_O_TRUNC: u32 = 1 << 3;
/// The largest write the kernel sends us.
pub const MAX_WRITE: u32 = 4096;
/// The request buffer: a header, a write's arguments and [`MAX_WRITE`] bytes fit (the kernel
/// wants at least 8 KiB).
pub const BUFFER: usize = 16 * 1024;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const PROTOCOL_MINOR: u32 = 31;

/// One request, borrowed from the read buffer.
pub struct Request<'a> {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    /// The calling thread, in this process's pid namespace (0 if not visible).
    pub pid: u32,
    /// What follows the header.
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// Parse a request read from the channel; `None` if it is shorter than it says.
    pub fn parse(buf: &'a [u8]) -> Option<Request<'a>> {
        if buf.len() < IN_HEADER {
            return None;
        }
        let len = u32_at(buf, 0)? as usize;
        if len < IN_HEADER || len > buf.len() {
            return None;
        }
        Some(Request {
            opcode: u32_at(buf, 4)?,
            unique: u64_at(buf, 8)?,
            nodeid: u64_at(buf, 16)?,
            pid: u32_at(buf, 32)?,
            body: &buf[IN_HEADER..len],
        })
    }

    pub fn u32_at(&self, offset: usize) -> Option<u32> {
        u32_at(self.body, offset)
    }

    pub fn u64_at(&self, offset: usize) -> Option<u64> {
        u64_at(self.body, offset)
    }

    /// A name argument (LOOKUP): the body up to its NUL.
    pub fn name(&self) -> &[u8] {
        let end = self
            .body
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.body.len());
        &self.body[..end]
    }
}

fn u32_at(b: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        b.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

/// An open `/dev/fuse` connection with its filesystem mounted.
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// Mount a FUSE filesystem at `mountpoint` (nosuid, nodev, noexec; other users allowed:
    /// container processes are not the shim's uid) served through the returned channel.
    pub fn mount(mountpoint: &Path, fsname: &str) -> std::io::Result<Channel> {
        // SAFETY: open(2) of a fixed path; the descriptor is owned at once.
        let raw = unsafe {
            libc::open(
                c"/dev/fuse".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::other(format!(
                "open /dev/fuse: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: `raw` is a descriptor this call just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let data = format!(
            "fd={},rootmode=40000,user_id={},group_id={},allow_other,max_read={MAX_WRITE}",
            fd.as_raw_fd(),
            nix::unistd::geteuid(),
            nix::unistd::getegid()
        );
        nix::mount::mount(
            Some(fsname),
            mountpoint,
            Some("fuse.cryo"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        )
        .map_err(|e| {
            std::io::Error::other(format!("mount fuse at {}: {e}", mountpoint.display()))
        })?;
        Ok(Channel { fd })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Read one request into `buf`: `Ok(Some(len))`, `Ok(None)` when none is waiting (or it
    /// was interrupted away), `Err` with ENODEV once the filesystem is unmounted.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        // SAFETY: read(2) into a buffer we own, at most its length.
        let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        }
    }

    /// Answer request `unique`: `error` is 0 or a positive errno; `payload` follows the header.
    pub fn reply(&self, unique: u64, error: i32, payload: &[u8]) {
        let payload = if error == 0 { payload } else { &[][..] };
        let mut header = [0u8; OUT_HEADER];
        header[0..4].copy_from_slice(&((OUT_HEADER + payload.len()) as u32).to_ne_bytes());
        header[4..8].copy_from_slice(&(-error).to_ne_bytes());
        header[8..16].copy_from_slice(&unique.to_ne_bytes());
        let iov = [
            libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            },
        ];
        // SAFETY: writev(2) of two buffers that outlive the call.
        let n = unsafe { libc::writev(self.raw(), iov.as_ptr(), 2) };
        if n < 0 {
            // ENOENT: the request was interrupted and is gone; ENODEV: unmounted.
            log::debug!("fuse reply {unique}: {}", std::io::Error::last_os_error());
        }
    }
}

/// Attributes of a node.
pub fn attr(ino: u64, mode: u32, size: u64, time: u64) -> [u8; 88] {
    let mut a = [0u8; 88];
    a[0..8].copy_from_slice(&ino.to_ne_bytes());
    a[8..16].copy_from_slice(&size.to_ne_bytes());
    // blocks 0; atime, mtime, ctime:
    for off in [24, 32, 40] {
        a[off..off + 8].copy_from_slice(&time.to_ne_bytes());
    }
    // atimensec, mtimensec, ctimensec 0; mode, nlink, uid 0, gid 0, rdev 0, blksize, flags 0
    a[60..64].copy_from_slice(&mode.to_ne_bytes());
    let nlink: u32 = if mode & libc::S_IFDIR != 0 { 2 } else { 1 };
    a[64..68].copy_from_slice(&nlink.to_ne_bytes());
    a[80..84].copy_from_slice(&4096u32.to_ne_bytes());
    a
}

/// How long the kernel may cache names and attributes (seconds).
const VALID: u64 = 1;

/// LOOKUP's answer.
pub fn entry_out(ino: u64, attr: &[u8; 88]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&ino.to_ne_bytes());
    out.extend_from_slice(&0u64.to_ne_bytes()); // generation
    out.extend_from_slice(&VALID.to_ne_bytes()); // entry_valid
    out.extend_from_slice(&VALID.to_ne_bytes()); // attr_valid
    out.extend_from_slice(&[0u8; 8]); // entry_valid_nsec, attr_valid_nsec
    out.extend_from_slice(attr);
    out
}

/// GETATTR's answer.
pub fn attr_out(attr: &[u8; 88]) -> Vec<u8> {
    let mut out = Vec::with_capacity(104);
    out.extend_from_slice(&VALID.to_ne_bytes());
    out.extend_from_slice(&[0u8; 8]); // attr_valid_nsec, dummy
    out.extend_from_slice(attr);
    out
}

/// OPEN's and OPENDIR's answer.
pub fn open_out(fh: u64, flags: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&fh.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out
}

/// WRITE's answer.
pub fn write_out(size: u32) -> Vec<u8> {
    let mut out = size.to_ne_bytes().to_vec();
    out.extend_from_slice(&[0u8; 4]);
    out
}

/// STATFS's answer: an empty filesystem.
pub fn statfs_out() -> Vec<u8> {
    let mut out = vec![0u8; 80];
    out[40..44].copy_from_slice(&4096u32.to_ne_bytes()); // bsize
    out[44..48].copy_from_slice(&255u32.to_ne_bytes()); // namelen
    out[48..52].copy_from_slice(&4096u32.to_ne_bytes()); // frsize
    out
}

/// INIT's answer to the kernel's INIT request (`None`: a protocol we do not speak).
pub fn init_out(req: &Request) -> Option<Vec<u8>> {
    let major = req.u32_at(0)?;
    let max_readahead = req.u32_at(8)?;
    if major < 7 {
        return None;
    }
    let mut out = vec![0u8; 64];
    out[0..4].copy_from_slice(&7u32.to_ne_bytes());
    out[4..8].copy_from_slice(&PROTOCOL_MINOR.to_ne_bytes());
    out[8..12].copy_from_slice(&max_readahead.to_ne_bytes());
    out[12..16].copy_from_slice(&FUSE_ATOMIC_O_TRUNC.to_ne_bytes());
    out[16..18].copy_from_slice(&16u16.to_ne_bytes()); // max_background
    out[18..20].copy_from_slice(&12u16.to_ne_bytes()); // congestion_threshold
    out[20..24].copy_from_slice(&MAX_WRITE.to_ne_bytes());
    out[24..28].copy_from_slice(&1u32.to_ne_bytes()); // time_gran
    out[28..30].copy_from_slice(&1u16.to_ne_bytes()); // max_pages
    Some(out)
}

/// One READDIR entry (`off`: where the next read starts), padded to 8 bytes.
pub fn dirent(ino: u64, off: u64, dir: bool, name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + name.len() + 8);
    out.extend_from_slice(&ino.to_ne_bytes());
    out.extend_from_slice(&off.to_ne_bytes());
    out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    let kind: u32 = if dir { libc::DT_DIR } else { libc::DT_REG }.into();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(name);
    while out.len() % 8 != 0 {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_short_ones_are_refused() {
        let mut buf = vec![0u8; 48];
        buf[0..4].copy_from_slice(&46u32.to_ne_bytes());
        buf[4..8].copy_from_slice(&op::LOOKUP.to_ne_bytes());
        buf[8..16].copy_from_slice(&7u64.to_ne_bytes());
        buf[16..24].copy_from_slice(&ROOT.to_ne_bytes());
        buf[32..36].copy_from_slice(&1234u32.to_ne_bytes());
        buf[40..46].copy_from_slice(b"abc\0zz");
        let r = Request::parse(&buf).unwrap();
        assert_eq!((r.opcode, r.unique, r.nodeid, r.pid), (1, 7, 1, 1234));
        assert_eq!(r.name(), b"abc");
        buf[0..4].copy_from_slice(&400u32.to_ne_bytes());
        assert!(Request::parse(&buf).is_none(), "longer than the buffer");
        assert!(Request::parse(&buf[..20]).is_none());
    }

    #[test]
    fn replies_have_the_kernels_sizes() {
        let a = attr(3, libc::S_IFREG | 0o444, 4096, 0);
        assert_eq!(entry_out(3, &a).len(), 128);
        assert_eq!(attr_out(&a).len(), 104);
        assert_eq!(open_out(1, 0).len(), 16);
        assert_eq!(write_out(2).len(), 8);
        assert_eq!(statfs_out().len(), 80);
        assert_eq!(dirent(2, 1, true, b"abc").len(), 32);
    }
}
