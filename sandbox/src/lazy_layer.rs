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
        fsnap::index::SectionIndex::read_at(self, id, offset, buf)
    }

    fn nodes(&self) -> u64 {
        self.len() as u64
    }
}

/// Section `index` of the checkpoint in `checkpoint` (whose validated manifest is
/// `manifest`) as a tree to serve as an overlay lower layer: verified in one read-only pass
/// (every entry by the extraction's rules, whiteouts and opaque directories kept as an overlay
/// lower layer has them, the checksum checked) that indexes it. A corrupt or hostile section
/// fails naming the section and the cause. With `verify_data_on_read` (and the checkpoint's
/// block hashes) only the blocks holding headers are read: a corrupt byte of a file's data
/// then fails that file's reads instead. Blocking.
pub fn index_section(
    checkpoint: &Path,
    manifest: &fsnap::Manifest,
    index: usize,
    verify_data_on_read: bool,
) -> Result<Arc<dyn Tree>> {
    let tree = fsnap::index::SectionIndex::build(
        checkpoint,
        manifest,
        index,
        &fsnap::RestoreOptions {
            allow_devices: false,
            overlay_layer: true,
            verify_data_on_read,
        },
    )
    .map_err(|e| Error::Checkpoint {
        path: checkpoint.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(tree))
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
            return Err(fail(format!(
                "eventfd: {}",
                std::io::Error::last_os_error()
            )));
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
        fuse::detach(&self.mountpoint);
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

/// What a process that served lazy layers left at `mountpoint` (it died): the mount goes
/// (it only answers ENOTCONN), then the directory.
pub fn cleanup(mountpoint: &Path) {
    fuse::detach(mountpoint);
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
        if channel.wait(stop, -1, "lazy layer") != fuse::Wait::Request {
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
                let dtype = tree
                    .node(*child)
                    .map_or(libc::DT_UNKNOWN, |c| dtype(c.entry));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// Root and /dev/fuse (CI has both): a FUSE mount and overlayfs need them.
    fn require_root_and_fuse() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (FUSE mounts, overlayfs): run as root, as CI does"
        );
        assert!(
            Path::new("/dev/fuse").exists(),
            "needs /dev/fuse (modprobe fuse)"
        );
    }

    fn setxattr(path: &Path, name: &str, value: &[u8]) {
        let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: lsetxattr(2) with NUL-terminated strings and a buffer that outlive the call.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }

    fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: lgetxattr(2) into a buffer we own, at most its length.
        let r =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (r >= 0).then(|| buf[..r as usize].to_vec())
    }

    fn mounted(at: &Path) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(at.to_str().unwrap()))
    }

    /// A checkpoint of an upper layer: a file, a sparse file, a hard link, a symlink, a
    /// whiteout, an opaque directory, a fifo, owners and modes.
    fn checkpoint(t: &Path) -> (PathBuf, fsnap::Manifest) {
        let src = t.join("src");
        std::fs::create_dir_all(src.join("opaque")).unwrap();
        std::fs::create_dir_all(src.join("dir/sub")).unwrap();
        std::fs::write(src.join("f"), b"hello").unwrap();
        std::fs::write(src.join("opaque/new"), b"new").unwrap();
        setxattr(&src.join("opaque"), "trusted.overlay.opaque", b"y");
        setxattr(&src.join("f"), "user.note", b"kept");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("dir/big"), &big).unwrap();
        let sparse = std::fs::File::create(src.join("sparse")).unwrap();
        sparse.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&sparse, b"tail", (1 << 20) - 4).unwrap();
        std::fs::hard_link(src.join("f"), src.join("dir/f-link")).unwrap();
        std::os::unix::fs::symlink("../f", src.join("dir/sym")).unwrap();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        nix::sys::stat::mknod(
            &src.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        std::fs::create_dir(src.join("many")).unwrap();
        for i in 0..2000 {
            std::fs::write(
                src.join(format!("many/file-with-a-longish-name-{i:05}")),
                b"",
            )
            .unwrap();
        }
        std::os::unix::fs::chown(src.join("dir/sub"), Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(
            src.join("dir/sub"),
            std::os::unix::fs::PermissionsExt::from_mode(0o751),
        )
        .unwrap();
        crate::layer_cache::save_dir(src, t.join("ck"))
    }

    fn index(ck: &Path, m: &fsnap::Manifest) -> Arc<fsnap::index::SectionIndex> {
        Arc::new(
            fsnap::index::SectionIndex::build(
                ck,
                m,
                0,
                &fsnap::RestoreOptions {
                    allow_devices: false,
                    overlay_layer: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_section_served_in_place_reads_as_extracted_and_goes_whole() {
        require_root_and_fuse();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let at = t.path().join("lazy");
        let layer = LazyLayer::mount(index(&ck, &m), &at, "test").unwrap();
        assert!(mounted(&at));
        let line = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(at.to_str().unwrap()))
            .unwrap()
            .to_string();
        assert!(line.contains(" fuse.cryo-layer cryo-layer:test "), "{line}");
        assert!(line.contains(" ro,nosuid,nodev"), "{line}");
        assert_eq!(std::fs::read(at.join("f")).unwrap(), b"hello");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(std::fs::read(at.join("dir/big")).unwrap(), big);
        let sparse = std::fs::read(at.join("sparse")).unwrap();
        assert_eq!(sparse.len(), 1 << 20);
        assert!(sparse[..(1 << 20) - 4].iter().all(|b| *b == 0));
        assert_eq!(&sparse[(1 << 20) - 4..], b"tail");
        let f = std::fs::metadata(at.join("f")).unwrap();
        let link = std::fs::metadata(at.join("dir/f-link")).unwrap();
        assert_eq!((f.ino(), f.nlink()), (link.ino(), 2));
        assert_eq!(
            std::fs::read_link(at.join("dir/sym")).unwrap(),
            Path::new("../f")
        );
        assert!(std::fs::symlink_metadata(at.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let gone = std::fs::symlink_metadata(at.join("gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        let sub = std::fs::metadata(at.join("dir/sub")).unwrap();
        assert_eq!(
            (sub.uid(), sub.gid(), sub.mode() & 0o7777),
            (1234, 5678, 0o751)
        );
        let src_f = std::fs::metadata(t.path().join("src/f")).unwrap();
        assert_eq!(
            (f.mtime(), f.mtime_nsec()),
            (src_f.mtime(), src_f.mtime_nsec())
        );
        assert_eq!(
            getxattr(&at.join("opaque"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            getxattr(&at.join("f"), "user.note").as_deref(),
            Some(&b"kept"[..])
        );
        let mut names: Vec<String> = std::fs::read_dir(&at)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["dir", "f", "fifo", "gone", "many", "opaque", "sparse"]
        );
        // A directory listed over many READDIR replies.
        let mut many: Vec<String> = std::fs::read_dir(at.join("many"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        many.sort();
        let want: Vec<String> = (0..2000)
            .map(|i| format!("file-with-a-longish-name-{i:05}"))
            .collect();
        assert_eq!(many, want);
        // Extended attributes: a size probe gets the size, a short buffer ERANGE, a missing
        // one ENODATA; the names are listed.
        let p = std::ffi::CString::new(at.join("opaque").as_os_str().as_encoded_bytes()).unwrap();
        let n = c"trusted.overlay.opaque";
        // SAFETY: lgetxattr(2) size probe (no buffer) with NUL-terminated strings.
        let size = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(size, 1);
        let pf = std::ffi::CString::new(at.join("f").as_os_str().as_encoded_bytes()).unwrap();
        let mut short = [0u8; 2];
        // SAFETY: lgetxattr(2) into a buffer we own, at most its length.
        let r = unsafe {
            libc::lgetxattr(
                pf.as_ptr(),
                c"user.note".as_ptr(),
                short.as_mut_ptr().cast(),
                2,
            )
        };
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ERANGE)
        );
        assert_eq!(getxattr(&at.join("f"), "user.none"), None);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
        let mut list = [0u8; 64];
        // SAFETY: llistxattr(2) into a buffer we own, at most its length.
        let r = unsafe { libc::llistxattr(pf.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
        assert_eq!(&list[..r as usize], b"user.note\0");
        // Read-only, whoever asks.
        let e = std::fs::write(at.join("f"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let e = std::fs::create_dir(at.join("new")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let st = nix::sys::statfs::statfs(&at).unwrap();
        assert!(st.blocks() > 0 && st.files() > 0);

        // As an overlay's lower layer above an image layer: whiteouts hide, opaque dirs hide.
        let base = t.path().join("base");
        std::fs::create_dir_all(base.join("opaque")).unwrap();
        std::fs::write(base.join("gone"), b"image").unwrap();
        std::fs::write(base.join("keep"), b"image").unwrap();
        std::fs::write(base.join("opaque/old"), b"image").unwrap();
        let (upper, work, merged) = (
            t.path().join("upper"),
            t.path().join("work"),
            t.path().join("merged"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let opts = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            at.display(),
            base.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .unwrap();
        let seen = (|| {
            let mut names: Vec<String> = std::fs::read_dir(&merged)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            let opaque: Vec<String> = std::fs::read_dir(merged.join("opaque"))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()?;
            std::fs::write(merged.join("f"), b"changed")?;
            Ok::<_, std::io::Error>((names, opaque, std::fs::read(merged.join("dir/big"))?))
        })();
        nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).unwrap();
        let (names, opaque, read_big) = seen.unwrap();
        assert_eq!(
            names,
            ["dir", "f", "fifo", "keep", "many", "opaque", "sparse"]
        );
        assert_eq!(opaque, ["new"]);
        assert_eq!(read_big, big);
        // The write went to the upper layer, not the section.
        assert_eq!(std::fs::read(upper.join("f")).unwrap(), b"changed");
        assert_eq!(std::fs::read(at.join("f")).unwrap(), b"hello");

        layer.unmount();
        assert!(!mounted(&at));
        assert!(!at.exists(), "the mount point goes with the layer");
    }

    #[test]
    fn a_layer_still_in_use_is_cut_off_when_dropped() {
        require_root_and_fuse();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let at = t.path().join("lazy");
        let layer = LazyLayer::mount(index(&ck, &m), &at, "busy").unwrap();
        let open = std::fs::File::open(at.join("f")).unwrap();
        drop(layer);
        assert!(!mounted(&at));
        assert!(!at.exists());
        // Nothing of it was read before: the aborted connection refuses it (never hangs).
        let mut buf = [0u8; 4];
        let e = std::os::unix::fs::FileExt::read_at(&open, &mut buf, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    }

    #[test]
    fn a_bad_mount_point_leaves_nothing() {
        require_root_and_fuse();
        let t = tempfile::tempdir().unwrap();
        let (ck, m) = checkpoint(t.path());
        let tree = index(&ck, &m);
        let e = LazyLayer::mount(tree.clone(), &t.path().join("no/such/parent"), "x")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no/such/parent"), "{e}");
        let e = LazyLayer::mount(tree, &t.path().join("y"), "a,b")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("\"a,b\""), "{e}");
        assert!(!t.path().join("y").exists());
    }

    /// A tree of a root directory holding one file.
    struct Tiny {
        root: Entry,
        file: Entry,
        children: Vec<(String, u64)>,
    }

    impl Tree for Tiny {
        fn node(&self, id: u64) -> Option<NodeRef<'_>> {
            match id {
                1 => Some(NodeRef {
                    entry: &self.root,
                    nlink: 2,
                    children: &self.children,
                }),
                2 => Some(NodeRef {
                    entry: &self.file,
                    nlink: 1,
                    children: &[],
                }),
                _ => None,
            }
        }
        fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
            (parent == 1 && name == "f").then_some(2)
        }
        fn read_at(&self, _: u64, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            let data = b"hello";
            let rest = data.get(offset as usize..).unwrap_or_default();
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            Ok(n)
        }
        fn nodes(&self) -> u64 {
            2
        }
    }

    fn tiny() -> Tiny {
        let entry = |path: &str, kind: Kind, size: u64| Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            size,
            xattrs: Vec::new(),
            sparse: None,
        };
        Tiny {
            root: entry(".", Kind::Dir, 0),
            file: entry("f", Kind::File, 5),
            children: vec![("f".into(), 2)],
        }
    }

    /// A request: header, then `body`.
    fn request(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 40];
        b[0..4].copy_from_slice(&((40 + body.len()) as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&opcode.to_ne_bytes());
        b[8..16].copy_from_slice(&9u64.to_ne_bytes());
        b[16..24].copy_from_slice(&nodeid.to_ne_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn every_write_is_refused_erofs_and_reads_are_answered() {
        let t = tiny();
        let stats = Stats::of(&t);
        let mut data = vec![0u8; MAX_READ as usize];
        let mut ask = |opcode: u32, nodeid: u64, body: &[u8]| {
            let b = request(opcode, nodeid, body);
            answer(&t, &stats, &Request::parse(&b).unwrap(), &mut data)
        };
        for o in [
            op::SETATTR,
            op::SYMLINK,
            op::MKNOD,
            op::MKDIR,
            op::UNLINK,
            op::RMDIR,
            op::RENAME,
            op::RENAME2,
            op::LINK,
            op::WRITE,
            op::CREATE,
            op::TMPFILE,
            op::SETXATTR,
            op::REMOVEXATTR,
            op::FALLOCATE,
            op::COPY_FILE_RANGE,
        ] {
            assert_eq!(ask(o, 1, &[0u8; 64]), Err(libc::EROFS), "opcode {o}");
        }
        let open = |flags: i32| {
            let mut b = flags.to_ne_bytes().to_vec();
            b.extend_from_slice(&[0u8; 4]);
            b
        };
        assert_eq!(ask(op::OPEN, 2, &open(libc::O_RDWR)), Err(libc::EROFS));
        assert_eq!(ask(op::OPEN, 2, &open(libc::O_WRONLY)), Err(libc::EROFS));
        assert!(ask(op::OPEN, 2, &open(libc::O_RDONLY)).is_ok());
        assert_eq!(ask(op::OPEN, 1, &open(libc::O_RDONLY)), Err(libc::EISDIR));
        assert_eq!(ask(op::OPENDIR, 2, &open(0)), Err(libc::ENOTDIR));
        assert_eq!(
            ask(op::ACCESS, 2, &(libc::W_OK as u32).to_ne_bytes()),
            Err(libc::EROFS)
        );
        assert_eq!(
            ask(op::ACCESS, 2, &(libc::R_OK as u32).to_ne_bytes()),
            Ok(Vec::new())
        );
        assert_eq!(ask(op::READLINK, 2, &[]), Err(libc::EINVAL));
        assert_eq!(ask(op::LOOKUP, 1, b"nope\0"), Err(libc::ENOENT));
        assert_eq!(ask(op::LOOKUP, 1, b"\xff\0"), Err(libc::ENOENT));
        assert_eq!(ask(op::GETATTR, 7, &[0u8; 16]), Err(libc::ENOENT));
        // READ: offset 3, 100 bytes asked: what is left of the file.
        let mut read = vec![0u8; 40];
        read[8..16].copy_from_slice(&3u64.to_ne_bytes());
        read[16..20].copy_from_slice(&100u32.to_ne_bytes());
        assert_eq!(ask(op::READ, 2, &read), Ok(b"lo".to_vec()));
        // READDIR in two replies: `.`, `..` (32 bytes each with padding) then `f`.
        let mut rd = vec![0u8; 40];
        rd[16..20].copy_from_slice(&64u32.to_ne_bytes());
        assert_eq!(ask(op::READDIR, 1, &rd).unwrap().len(), 64);
        rd[8..16].copy_from_slice(&2u64.to_ne_bytes());
        let rest = ask(op::READDIR, 1, &rd).unwrap();
        assert_eq!(&rest[24..25], b"f");
        rd[8..16].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(ask(op::READDIR, 1, &rd), Ok(Vec::new()));
        assert_eq!(ask(op::GETLK, 2, &[0u8; 64]), Err(libc::ENOSYS));
        assert!(fuse::is_unanswered(op::FORGET) && fuse::is_unanswered(op::BATCH_FORGET));
    }

    #[test]
    fn device_numbers_are_encoded_as_the_kernel_decodes_them() {
        assert_eq!(encode_dev(0, 0), 0);
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(8, 0x1234), 0x34 | (8 << 8) | (0x1200 << 12));
    }
}
