//! A lazy layer: a read-only tree (a verified section of a filesystem checkpoint, through its
//! index) served in place as a FUSE filesystem this process serves itself ([`crate::fuse`]),
//! so that it can be an overlayfs lower layer at once, before (or instead of) a copy of it
//! exists on disk.
//!
//! The mount is `ro,nosuid,nodev` with `allow_other` and `default_permissions` (the kernel
//! checks modes and owners from the attributes served), type `fuse.cryo-layer` and source
//! `cryo-layer:<name>`. The content never changes, so names and attributes are cached for a
//! day and file pages across opens (`FOPEN_KEEP_CACHE`). Overlayfs takes it as a lower layer:
//! whiteouts are the 0/0 character devices the tree holds (listed as `DT_CHR`), and extended
//! attributes — `trusted.overlay.opaque=y` among them, which overlayfs asks for as root — are
//! served as the tree has them. Every request that would write is answered EROFS.
//!
//! [`LazyLayer`] owns the mount: a few threads read requests and answer from the [`Tree`];
//! dropping it (or [`LazyLayer::unmount`]) detaches the mount, stops and joins the threads,
//! closes the connection (anything still using the filesystem then gets ENOTCONN) and removes
//! the mount point. [`cleanup`] removes what a process that died left.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use fsnap::tar::{Entry, Kind};

use crate::error::{Error, Result};
use crate::fuse::{self, op, Channel, Request};

/// The mount's type is `fuse.<SUBTYPE>`.
pub const SUBTYPE: &str = "cryo-layer";
/// How many threads serve one layer.
const THREADS: usize = 4;
/// How long the kernel may cache names and attributes (seconds): the tree never changes.
const VALID: u64 = 24 * 3600;
/// The largest READ asked of the server.
const MAX_READ: u32 = 128 * 1024;
/// Stack of a serving thread.
const STACK: usize = 256 * 1024;

/// The tree a lazy layer serves. Node ids are stable, `fuse::ROOT` (1) is the root
/// directory; hard links are one node.
pub trait Tree: Send + Sync + 'static {
    /// Node `id`.
    fn node(&self, id: u64) -> Option<NodeRef<'_>>;
    /// The child `name` of directory `parent`.
    fn lookup(&self, parent: u64, name: &str) -> Option<u64>;
    /// Bytes of regular file `id` from `offset` (holes read as zeros): how many were read,
    /// 0 at the end. Called from several threads at once.
    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
    /// How many nodes there are (ids `1..=nodes()`).
    fn nodes(&self) -> u64;
}

/// One node of a [`Tree`].
pub struct NodeRef<'a> {
    /// Its metadata (never a hard link: links share their node).
    pub entry: &'a Entry,
    pub nlink: u32,
    /// A directory's children, in name order.
    pub children: &'a [(String, u64)],
}

impl Tree for fsnap::index::SectionIndex {
    fn node(&self, id: u64) -> Option<NodeRef<'_>> {
        let n = fsnap::index::SectionIndex::node(self, id)?;
        Some(NodeRef {
            entry: &n.entry,
            nlink: n.nlink,
            children: &n.children,
        })
    }

    fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        fsnap::index::SectionIndex::lookup(self, parent, name)
    }

    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        fsnap::index::SectionIndex::read_at(self, id, offset, buf).map_err(std::io::Error::other)
    }

    fn nodes(&self) -> u64 {
        self.len() as u64
    }
}

/// A mounted, served lazy layer.
pub struct LazyLayer {
    mountpoint: PathBuf,
    channel: Option<Arc<Channel>>,
    stop: OwnedFd,
    threads: Vec<JoinHandle<()>>,
}

impl LazyLayer {
    /// Create `mountpoint` (it must not exist; its parent must), mount `tree` there and serve
    /// it. `name` names the layer in the mount table (`cryo-layer:<name>`; no `,`). Nothing is
    /// left on failure.
    pub fn mount(tree: Arc<dyn Tree>, mountpoint: &Path, name: &str) -> Result<LazyLayer> {
        let fail = |reason: String| Error::Mount {
            target: mountpoint.to_path_buf(),
            reason,
        };
        if name.contains([',', '\0']) {
            return Err(fail(format!("layer name {name:?} holds ',' or NUL")));
        }
        let root = tree
            .node(fuse::ROOT)
            .ok_or_else(|| fail("the tree has no root".into()))?;
        if root.entry.kind != Kind::Dir {
            return Err(fail("the tree's root is not a directory".into()));
        }
        // SAFETY: eventfd(2) creates a new descriptor, owned at once.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(fail(format!("eventfd: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: `raw` was just created and nothing else owns it.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(mountpoint)
            .map_err(|e| fail(format!("create the mount point: {e}")))?;
        let fsname = format!("{SUBTYPE}:{name}");
        let channel = match Channel::mount_with(
            mountpoint,
            &fuse::MountOptions {
                fsname: &fsname,
                subtype: SUBTYPE,
                read_only: true,
                noexec: false,
                default_permissions: true,
                max_read: MAX_READ,
            },
        ) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                let _ = std::fs::remove_dir(mountpoint);
                return Err(fail(e.to_string()));
            }
        };
        let mut layer = LazyLayer {
            mountpoint: mountpoint.to_path_buf(),
            channel: Some(channel.clone()),
            stop,
            threads: Vec::new(),
        };
        let stats = Arc::new(Stats::of(tree.as_ref()));
        for i in 0..THREADS {
            let (tree, channel, stats) = (tree.clone(), channel.clone(), stats.clone());
            let stop = layer.stop.as_raw_fd();
            let spawned = std::thread::Builder::new()
                .name(format!("lazy-layer-{i}"))
                .stack_size(STACK)
                .spawn(move || serve(tree.as_ref(), &channel, &stats, stop));
            match spawned {
                Ok(t) => layer.threads.push(t),
                // Dropping `layer` unmounts and joins what started.
                Err(e) => return Err(fail(format!("spawn a serving thread: {e}"))),
            }
        }
        log::info!("lazy layer {name} mounted at {}", mountpoint.display());
        Ok(layer)
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmount, stop serving, remove the mount point (as dropping it does).
    pub fn unmount(self) {}

    fn shut_down(&mut self) {
        detach(&self.mountpoint);
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes to our eventfd.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The last descriptor of the connection: closing it aborts the connection.
        self.channel.take();
        match std::fs::remove_dir(&self.mountpoint) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("lazy layer {}: remove: {e}", self.mountpoint.display()),
        }
        log::info!("lazy layer at {} unmounted", self.mountpoint.display());
    }
}

impl Drop for LazyLayer {
    fn drop(&mut self) {
        self.shut_down();
    }
}


/// Detach whatever is mounted at `mountpoint` (lazily: a dead server's mount cannot be looked
/// into), however many times it was mounted over.
fn detach(mountpoint: &Path) {
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

/// What a process that served lazy layers left at `mountpoint` (it died): the mount goes
/// (it only answers ENOTCONN), then the directory.
pub fn cleanup(mountpoint: &Path) {
    detach(mountpoint);
    match std::fs::remove_dir(mountpoint) {
        Ok(()) => log::info!("{}: removed a lazy layer mount point", mountpoint.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("{}: {e}", mountpoint.display()),
    }
}

/// Sizes for STATFS, counted once.
struct Stats {
    blocks: u64,
    files: u64,
}

impl Stats {
    fn of(tree: &dyn Tree) -> Stats {
        let files = tree.nodes();
        let bytes: u64 = (1..=files)
            .filter_map(|id| tree.node(id))
            .map(|n| n.entry.stored_bytes().div_ceil(4096) * 4096)
            .sum();
        Stats {
            blocks: bytes / 4096,
            files,
        }
    }
}

/// Read and answer requests until the mount goes or `stop` is signalled.
fn serve(tree: &dyn Tree, channel: &Channel, stats: &Stats, stop: i32) {
    let mut buf = vec![0u8; fuse::BUFFER];
    let mut data = vec![0u8; MAX_READ as usize];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: channel.raw(),
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
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            log::warn!("lazy layer: poll: {e}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0
            && fds[0].revents & libc::POLLIN == 0
        {
            return;
        }
        let len = match channel.read(&mut buf) {
            Ok(Some(len)) => len,
            // Another thread took it.
            Ok(None) => continue,
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENODEV) {
                    log::warn!("lazy layer: read a request: {e}");
                }
                return;
            }
        };
        let Some(req) = Request::parse(&buf[..len]) else {
            continue;
        };
        if fuse::is_unanswered(req.opcode) {
            continue;
        }
        match answer(tree, stats, &req, &mut data) {
            Ok(payload) => channel.reply(req.unique, 0, &payload),
            Err(errno) => channel.reply(req.unique, errno, &[]),
        }
    }
}

/// The answer to one request: its payload or an errno.
fn answer(
    tree: &dyn Tree,
    stats: &Stats,
    req: &Request,
    data: &mut [u8],
) -> std::result::Result<Vec<u8>, i32> {
    let node = || tree.node(req.nodeid).ok_or(libc::ENOENT);
    match req.opcode {
        op::INIT => fuse::init_out_with(
            req,
            fuse::init::ASYNC_READ
                | fuse::init::ATOMIC_O_TRUNC
                | fuse::init::PARALLEL_DIROPS
                | fuse::init::CACHE_SYMLINKS,
        )
        .ok_or(libc::EPROTO),
        op::DESTROY => Ok(Vec::new()),
        op::LOOKUP => {
            let name = std::str::from_utf8(req.name()).map_err(|_| libc::ENOENT)?;
            let id = tree.lookup(req.nodeid, name).ok_or(libc::ENOENT)?;
            let n = tree.node(id).ok_or(libc::ENOENT)?;
            Ok(fuse::entry_out_valid(id, &attr(id, &n).encode(), VALID))
        }
        op::GETATTR => Ok(fuse::attr_out_valid(
            &attr(req.nodeid, &node()?).encode(),
            VALID,
        )),
        op::READLINK => match &node()?.entry.kind {
            Kind::Symlink(target) => Ok(target.as_bytes().to_vec()),
            _ => Err(libc::EINVAL),
        },
        op::OPEN => {
            let flags = req.u32_at(0).unwrap_or(0) as i32;
            if flags & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(libc::EROFS);
            }
            match node()?.entry.kind {
                Kind::Dir => Err(libc::EISDIR),
                _ => Ok(fuse::open_out(0, fuse::FOPEN_KEEP_CACHE)),
            }
        }
        op::READ => {
            let offset = req.u64_at(8).unwrap_or(0);
            let size = (req.u32_at(16).unwrap_or(0) as usize).min(data.len());
            let n = node()?;
            if n.entry.kind != Kind::File {
                return Err(libc::EINVAL);
            }
            let want = n.entry.size.saturating_sub(offset).min(size as u64) as usize;
            let mut got = 0;
            while got < want {
                match tree.read_at(req.nodeid, offset + got as u64, &mut data[got..want]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) => {
                        log::warn!("lazy layer: read node {}: {e}", req.nodeid);
                        return Err(libc::EIO);
                    }
                }
            }
            Ok(data[..got].to_vec())
        }
        op::OPENDIR => match node()?.entry.kind {
            Kind::Dir => Ok(fuse::open_out(
                0,
                fuse::FOPEN_KEEP_CACHE | fuse::FOPEN_CACHE_DIR,
            )),
            _ => Err(libc::ENOTDIR),
        },
        op::READDIR => {
            let offset = req.u64_at(8).unwrap_or(0);
            let size = req.u32_at(16).unwrap_or(0) as usize;
            let n = node()?;
            if n.entry.kind != Kind::Dir {
                return Err(libc::ENOTDIR);
            }
            readdir(tree, req.nodeid, &n, offset, size)
        }
        op::GETXATTR => {
            let (asked, name) = req.getxattr().ok_or(libc::EINVAL)?;
            let n = node()?;
            let value = n
                .entry
                .xattrs
                .iter()
                .find(|(k, _)| k.as_bytes() == name)
                .map(|(_, v)| v)
                .ok_or(libc::ENODATA)?;
            fuse::xattr_out(asked, value)
        }
        op::LISTXATTR => {
            let asked = req.u32_at(0).ok_or(libc::EINVAL)?;
            let mut names = Vec::new();
            for (k, _) in &node()?.entry.xattrs {
                names.extend_from_slice(k.as_bytes());
                names.push(0);
            }
            fuse::xattr_out(asked, &names)
        }
        op::STATFS => Ok(fuse::statfs_out_of(stats.blocks, stats.files)),
        op::ACCESS => {
            node()?;
            let mask = req.u32_at(0).unwrap_or(0) as i32;
            if mask & libc::W_OK != 0 {
                Err(libc::EROFS)
            } else {
                Ok(Vec::new())
            }
        }
        op::RELEASE | op::RELEASEDIR | op::FLUSH | op::FSYNC | op::FSYNCDIR | op::SYNCFS => {
            Ok(Vec::new())
        }
        op::IOCTL => Err(libc::ENOTTY),
        o if fuse::is_write(o) => Err(libc::EROFS),
        _ => Err(libc::ENOSYS),
    }
}

/// READDIR of directory `id` from entry `offset` (`.`, `..`, then the children in order),
/// as many entries as fit in `size` bytes.
fn readdir(
    tree: &dyn Tree,
    id: u64,
    n: &NodeRef,
    offset: u64,
    size: usize,
) -> std::result::Result<Vec<u8>, i32> {
    let mut out = Vec::new();
    let total = n.children.len() as u64 + 2;
    for i in offset..total {
        let e = match i {
            0 => fuse::dirent_typed(id, 1, libc::DT_DIR, b"."),
            1 => fuse::dirent_typed(id, 2, libc::DT_DIR, b".."),
            _ => {
                let (name, child) = &n.children[(i - 2) as usize];
                let dtype = tree.node(*child).map_or(libc::DT_UNKNOWN, |c| dtype(c.entry));
                fuse::dirent_typed(*child, i + 1, dtype, name.as_bytes())
            }
        };
        if out.len() + e.len() > size {
            break;
        }
        out.extend_from_slice(&e);
    }
    Ok(out)
}

/// The `S_IF*` type bits of an entry.
fn type_bits(e: &Entry) -> u32 {
    match e.kind {
        Kind::File | Kind::HardLink(_) => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
        Kind::Symlink(_) => libc::S_IFLNK,
        Kind::Char { .. } => libc::S_IFCHR,
        Kind::Block { .. } => libc::S_IFBLK,
        Kind::Fifo => libc::S_IFIFO,
    }
}

/// The `DT_*` type of an entry.
fn dtype(e: &Entry) -> u8 {
    match e.kind {
        Kind::File | Kind::HardLink(_) => libc::DT_REG,
        Kind::Dir => libc::DT_DIR,
        Kind::Symlink(_) => libc::DT_LNK,
        Kind::Char { .. } => libc::DT_CHR,
        Kind::Block { .. } => libc::DT_BLK,
        Kind::Fifo => libc::DT_FIFO,
    }
}

/// A device number as FUSE carries it (the kernel's `new_encode_dev`).
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The attributes of node `id`.
fn attr(id: u64, n: &NodeRef) -> fuse::Attr {
    let e = n.entry;
    let size = match &e.kind {
        Kind::File => e.size,
        Kind::Symlink(t) => t.len() as u64,
        Kind::Dir => 4096,
        _ => 0,
    };
    let rdev = match e.kind {
        Kind::Char { major, minor } | Kind::Block { major, minor } => encode_dev(major, minor),
        _ => 0,
    };
    let blocks = match e.kind {
        Kind::Dir => 8,
        _ => e.stored_bytes().div_ceil(4096) * 8,
    };
    let t = (e.mtime_sec, e.mtime_nsec);
    fuse::Attr {
        ino: id,
        size,
        blocks,
        atime: t,
        mtime: t,
        ctime: t,
        mode: type_bits(e) | (e.mode & 0o7777),
        nlink: n.nlink.max(1),
        uid: e.uid,
        gid: e.gid,
        rdev,
        blksize: 4096,
    }
}
