//! The FUSE kernel protocol (7.x, as `linux/fuse.h` lays it out), spoken directly on
//! `/dev/fuse` without libfuse: mount a filesystem this process serves, read its requests,
//! and write replies (from any thread: each reply is one write). It encodes what the shim's
//! fscheckpoint trigger (a small writable tree) and [`crate::lazy_layer`] (a read-only tree)
//! need: requests, attributes, entries, directory entries, opens, extended attributes (with
//! the kernel's size-probe rules), statfs and INIT. What each request means is the serving
//! filesystem's.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Request opcodes.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
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
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
}

/// The root directory's node id.
pub const ROOT: u64 = 1;
/// Reads ignore the page cache and the file size.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// The page cache of the file is kept across opens (its content does not change).
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// A directory's entries may be cached by the kernel (with [`FOPEN_KEEP_CACHE`]: across opens).
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
/// No seeking: reads and writes ignore the offset.
pub const FOPEN_NONSEEKABLE: u32 = 1 << 2;
/// A READ's flag: the read carries its lock owner, which only direct reads (read(2) on a
/// direct-I/O file) do; page-cache reads (readahead, splice) do not.
pub const READ_LOCKOWNER: u32 = 1 << 1;
/// INIT flags (`FUSE_*` of `fuse_init_in.flags`).
pub mod init {
    /// Reads may be sent in parallel and out of order.
    pub const ASYNC_READ: u32 = 1 << 0;
    /// O_TRUNC comes with OPEN instead of as a separate SETATTR.
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    /// Lookups and readdirs of one directory may run in parallel.
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    /// Symlink targets may be cached in the page cache.
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
}
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
        name_at(self.body, 0)
    }

    /// GETXATTR's arguments: the caller's buffer size (0: a size probe) and the name.
    pub fn getxattr(&self) -> Option<(u32, &[u8])> {
        Some((self.u32_at(0)?, name_at(self.body.get(8..)?, 0)))
    }

    /// BATCH_FORGET's node ids (FORGET's is the header's).
    pub fn batch_forget(&self) -> Vec<u64> {
        let count = self.u32_at(0).unwrap_or(0) as usize;
        (0..count).map_while(|i| self.u64_at(8 + 16 * i)).collect()
    }
}

/// The NUL-terminated name at `offset` of `b` (all of it if there is no NUL).
fn name_at(b: &[u8], offset: usize) -> &[u8] {
    let b = b.get(offset..).unwrap_or_default();
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    &b[..end]
}

/// Ops that never get a reply.
pub fn is_unanswered(opcode: u32) -> bool {
    matches!(opcode, op::FORGET | op::BATCH_FORGET | op::INTERRUPT)
}

/// Ops that would change a filesystem (answered EROFS by a read-only one).
pub fn is_write(opcode: u32) -> bool {
    matches!(
        opcode,
        op::SETATTR
            | op::SYMLINK
            | op::MKNOD
            | op::MKDIR
            | op::UNLINK
            | op::RMDIR
            | op::RENAME
            | op::RENAME2
            | op::LINK
            | op::WRITE
            | op::CREATE
            | op::TMPFILE
            | op::SETXATTR
            | op::REMOVEXATTR
            | op::FALLOCATE
            | op::COPY_FILE_RANGE
            | op::SETUPMAPPING
            | op::REMOVEMAPPING
    )
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

/// How a FUSE filesystem is mounted.
#[derive(Debug, Clone)]
pub struct MountOptions<'a> {
    /// The source column of the mount table (`fsname`).
    pub fsname: &'a str,
    /// The type's subtype: the mount's type is `fuse.<subtype>`.
    pub subtype: &'a str,
    /// `ro` (the kernel refuses writes before they reach the server).
    pub read_only: bool,
    /// `noexec`.
    pub noexec: bool,
    /// `default_permissions`: the kernel checks modes and owners itself.
    pub default_permissions: bool,
    /// The largest READ the kernel sends.
    pub max_read: u32,
}

/// What [`Channel::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Request,
    Timeout,
    Stop,
}

impl Channel {
    /// Mount a FUSE filesystem at `mountpoint` (nosuid, nodev, noexec; other users allowed:
    /// container processes are not the shim's uid) served through the returned channel.
    pub fn mount(mountpoint: &Path, fsname: &str) -> std::io::Result<Channel> {
        Channel::mount_with(
            mountpoint,
            &MountOptions {
                fsname,
                subtype: "cryo",
                read_only: false,
                noexec: true,
                default_permissions: false,
                max_read: MAX_WRITE,
            },
        )
    }

    /// Mount a FUSE filesystem at `mountpoint` as `opts` say (always nosuid, nodev and
    /// allow_other: container processes are not the server's uid), served through the
    /// returned (non-blocking) channel.
    pub fn mount_with(mountpoint: &Path, opts: &MountOptions) -> std::io::Result<Channel> {
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
        let mut data = format!(
            "fd={},rootmode=40000,user_id={},group_id={},allow_other,max_read={}",
            fd.as_raw_fd(),
            nix::unistd::geteuid(),
            nix::unistd::getegid(),
            opts.max_read
        );
        if opts.default_permissions {
            data.push_str(",default_permissions");
        }
        use nix::mount::MsFlags;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if opts.noexec {
            flags |= MsFlags::MS_NOEXEC;
        }
        if opts.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        nix::mount::mount(
            Some(opts.fsname),
            mountpoint,
            Some(format!("fuse.{}", opts.subtype).as_str()),
            flags,
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

    /// Wait for a request, at most `timeout_ms` (-1: no limit), or until `stop` (a descriptor
    /// that becomes readable to stop the server) fires: [`Wait::Request`] when one may be
    /// read, [`Wait::Timeout`], or [`Wait::Stop`] when stopped, unmounted and drained, or
    /// when poll itself fails (logged, naming `what`).
    pub fn wait(&self, stop: RawFd, timeout_ms: i32, what: &str) -> Wait {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: poll(2) on two pollfds we own for the call's duration.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                log::warn!("{what}: poll: {e}");
                return Wait::Stop;
            }
            if n == 0 {
                return Wait::Timeout;
            }
            if fds[1].revents != 0 {
                return Wait::Stop;
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0
                && fds[0].revents & libc::POLLIN == 0
            {
                return Wait::Stop;
            }
            return Wait::Request;
        }
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

/// Detach whatever is mounted at `mountpoint`, however many times it was mounted over
/// (lazily: a dead server's mount cannot be looked into, and a mount still in use goes once
/// its users do).
pub fn detach(mountpoint: &Path) {
    for _ in 0..8 {
        match nix::mount::umount2(
            mountpoint,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        ) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return,
            Err(e) => {
                log::warn!("unmount {}: {e}", mountpoint.display());
                return;
            }
        }
    }
}

/// Attributes of a node (`struct fuse_attr`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// (seconds, nanoseconds) since the epoch.
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    /// File type and permission bits (`S_IF*` | mode).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// A device node's number (`makedev`'s encoding, as `st_rdev`).
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    /// The kernel's encoding.
    pub fn encode(&self) -> [u8; 88] {
        let mut a = [0u8; 88];
        a[0..8].copy_from_slice(&self.ino.to_ne_bytes());
        a[8..16].copy_from_slice(&self.size.to_ne_bytes());
        a[16..24].copy_from_slice(&self.blocks.to_ne_bytes());
        a[24..32].copy_from_slice(&self.atime.0.to_ne_bytes());
        a[32..40].copy_from_slice(&self.mtime.0.to_ne_bytes());
        a[40..48].copy_from_slice(&self.ctime.0.to_ne_bytes());
        a[48..52].copy_from_slice(&self.atime.1.to_ne_bytes());
        a[52..56].copy_from_slice(&self.mtime.1.to_ne_bytes());
        a[56..60].copy_from_slice(&self.ctime.1.to_ne_bytes());
        a[60..64].copy_from_slice(&self.mode.to_ne_bytes());
        a[64..68].copy_from_slice(&self.nlink.to_ne_bytes());
        a[68..72].copy_from_slice(&self.uid.to_ne_bytes());
        a[72..76].copy_from_slice(&self.gid.to_ne_bytes());
        a[76..80].copy_from_slice(&self.rdev.to_ne_bytes());
        a[80..84].copy_from_slice(&self.blksize.to_ne_bytes());
        a
    }
}

/// Attributes of a node of the trigger's tree: root's, `time` for every timestamp.
pub fn attr(ino: u64, mode: u32, size: u64, time: u64) -> [u8; 88] {
    let t = (time as i64, 0);
    Attr {
        ino,
        size,
        atime: t,
        mtime: t,
        ctime: t,
        mode,
        nlink: if mode & libc::S_IFDIR != 0 { 2 } else { 1 },
        blksize: 4096,
        ..Attr::default()
    }
    .encode()
}

/// How long the kernel may cache names and attributes by default (seconds).
const VALID: u64 = 1;

/// LOOKUP's answer (cached for a second).
pub fn entry_out(ino: u64, attr: &[u8; 88]) -> Vec<u8> {
    entry_out_valid(ino, attr, VALID)
}

/// LOOKUP's answer, which the kernel may cache for `valid` seconds.
pub fn entry_out_valid(ino: u64, attr: &[u8; 88], valid: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&ino.to_ne_bytes());
    out.extend_from_slice(&0u64.to_ne_bytes()); // generation
    out.extend_from_slice(&valid.to_ne_bytes()); // entry_valid
    out.extend_from_slice(&valid.to_ne_bytes()); // attr_valid
    out.extend_from_slice(&[0u8; 8]); // entry_valid_nsec, attr_valid_nsec
    out.extend_from_slice(attr);
    out
}

/// GETATTR's answer (cached for a second).
pub fn attr_out(attr: &[u8; 88]) -> Vec<u8> {
    attr_out_valid(attr, VALID)
}

/// GETATTR's answer, which the kernel may cache for `valid` seconds.
pub fn attr_out_valid(attr: &[u8; 88], valid: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(104);
    out.extend_from_slice(&valid.to_ne_bytes());
    out.extend_from_slice(&[0u8; 8]); // attr_valid_nsec, dummy
    out.extend_from_slice(attr);
    out
}

/// GETXATTR's or LISTXATTR's answer for a caller whose buffer holds `asked` bytes: the size
/// alone for a size probe (`asked` 0), ERANGE when the value does not fit, else the value.
pub fn xattr_out(asked: u32, value: &[u8]) -> Result<Vec<u8>, i32> {
    if asked == 0 {
        let mut out = (value.len() as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&[0u8; 4]);
        return Ok(out);
    }
    if value.len() > asked as usize {
        return Err(libc::ERANGE);
    }
    Ok(value.to_vec())
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
    statfs_out_of(0, 0)
}

/// STATFS's answer for a full read-only filesystem of `blocks` 4 KiB blocks and `files`
/// inodes (none free).
pub fn statfs_out_of(blocks: u64, files: u64) -> Vec<u8> {
    let mut out = vec![0u8; 80];
    out[0..8].copy_from_slice(&blocks.to_ne_bytes());
    out[24..32].copy_from_slice(&files.to_ne_bytes());
    out[40..44].copy_from_slice(&4096u32.to_ne_bytes()); // bsize
    out[44..48].copy_from_slice(&255u32.to_ne_bytes()); // namelen
    out[48..52].copy_from_slice(&4096u32.to_ne_bytes()); // frsize
    out
}

/// INIT's answer to the kernel's INIT request (`None`: a protocol we do not speak).
pub fn init_out(req: &Request) -> Option<Vec<u8>> {
    init_out_with(req, init::ATOMIC_O_TRUNC)
}

/// INIT's answer asking for `flags` ([`init`]; only those the kernel offers are taken).
pub fn init_out_with(req: &Request, flags: u32) -> Option<Vec<u8>> {
    let major = req.u32_at(0)?;
    let max_readahead = req.u32_at(8)?;
    let offered = req.u32_at(12).unwrap_or(0);
    if major < 7 {
        return None;
    }
    let mut out = vec![0u8; 64];
    out[0..4].copy_from_slice(&7u32.to_ne_bytes());
    out[4..8].copy_from_slice(&PROTOCOL_MINOR.to_ne_bytes());
    out[8..12].copy_from_slice(&max_readahead.to_ne_bytes());
    out[12..16].copy_from_slice(&(flags & offered).to_ne_bytes());
    out[16..18].copy_from_slice(&16u16.to_ne_bytes()); // max_background
    out[18..20].copy_from_slice(&12u16.to_ne_bytes()); // congestion_threshold
    out[20..24].copy_from_slice(&MAX_WRITE.to_ne_bytes());
    out[24..28].copy_from_slice(&1u32.to_ne_bytes()); // time_gran
    out[28..30].copy_from_slice(&1u16.to_ne_bytes()); // max_pages
    Some(out)
}

/// One READDIR entry (`off`: where the next read starts), padded to 8 bytes.
pub fn dirent(ino: u64, off: u64, dir: bool, name: &[u8]) -> Vec<u8> {
    dirent_typed(
        ino,
        off,
        if dir { libc::DT_DIR } else { libc::DT_REG },
        name,
    )
}

/// One READDIR entry of type `dtype` (`DT_*`; overlayfs reads DT_CHR to find whiteouts).
pub fn dirent_typed(ino: u64, off: u64, dtype: u8, name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + name.len() + 8);
    out.extend_from_slice(&ino.to_ne_bytes());
    out.extend_from_slice(&off.to_ne_bytes());
    out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    out.extend_from_slice(&u32::from(dtype).to_ne_bytes());
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
        assert_eq!(statfs_out_of(10, 3).len(), 80);
    }

    #[test]
    fn attrs_are_laid_out_as_fuse_attr() {
        let a = Attr {
            ino: 9,
            size: 5,
            blocks: 8,
            mtime: (1_700_000_000, 123),
            mode: libc::S_IFCHR,
            nlink: 3,
            uid: 1000,
            gid: 1001,
            rdev: 0x0103,
            blksize: 4096,
            ..Attr::default()
        }
        .encode();
        assert_eq!(u64_at(&a, 16), Some(8));
        assert_eq!(u64_at(&a, 32), Some(1_700_000_000));
        assert_eq!(u32_at(&a, 52), Some(123));
        assert_eq!(u32_at(&a, 60), Some(libc::S_IFCHR));
        assert_eq!(u32_at(&a, 64), Some(3));
        assert_eq!((u32_at(&a, 68), u32_at(&a, 72)), (Some(1000), Some(1001)));
        assert_eq!(u32_at(&a, 76), Some(0x0103));
    }

    #[test]
    fn xattr_size_probes_get_the_size_and_short_buffers_erange() {
        let probe = xattr_out(0, b"y").unwrap();
        assert_eq!(probe.len(), 8);
        assert_eq!(u32_at(&probe, 0), Some(1));
        assert_eq!(xattr_out(1, b"y").unwrap(), b"y");
        assert_eq!(xattr_out(1, b"yes"), Err(libc::ERANGE));
    }

    #[test]
    fn getxattr_and_batch_forget_arguments_parse() {
        let mut buf = vec![0u8; 40];
        buf[0..4].copy_from_slice(&71u32.to_ne_bytes());
        buf.extend_from_slice(&16u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(b"trusted.overlay.opaque\0");
        let r = Request::parse(&buf).unwrap();
        assert_eq!(r.getxattr(), Some((16, &b"trusted.overlay.opaque"[..])));
        let mut buf = vec![0u8; 40];
        buf[0..4].copy_from_slice(&80u32.to_ne_bytes());
        buf.extend_from_slice(&2u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        for (id, n) in [(5u64, 1u64), (6, 2)] {
            buf.extend_from_slice(&id.to_ne_bytes());
            buf.extend_from_slice(&n.to_ne_bytes());
        }
        assert_eq!(Request::parse(&buf).unwrap().batch_forget(), vec![5, 6]);
    }
}
