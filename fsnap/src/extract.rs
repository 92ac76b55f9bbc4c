//! Extracting one section into an empty work directory. Every name is resolved beneath that
//! directory with openat2 (RESOLVE_BENEATH, no magic links), so no entry — `..`, absolute
//! names, symlink or hard-link tricks — can write outside it; device nodes other than overlay
//! whiteouts need explicit permission. Small files are written by helper threads while the
//! stream is parsed; directory metadata is applied last, deepest first.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::pool::helpers;
use crate::progress::Progress;
use crate::rules::{self, check_name_bytes, Res};
use crate::section::{read_section, SectionReader};
use crate::tar::{Entry, Kind};
use crate::xattr;

/// What an extraction may create beyond files, directories, links and FIFOs.
#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    /// Allow character and block device nodes other than whiteouts (0/0).
    pub allow_devices: bool,
    /// The tree becomes a read-only overlayfs lower layer: whiteouts (0/0 character devices)
    /// and opaque directories (`trusted.overlay.opaque=y`) are kept, as overlayfs reads them in
    /// a lower layer; every other `trusted.overlay.*` attribute (redirect, metacopy, origin,
    /// ...) is dropped, so a checkpoint cannot steer overlayfs's lookups in the layers below.
    pub overlay_layer: bool,
    /// For an index ([`crate::index::SectionIndex::build`]) of a checkpoint that carries block
    /// hashes: read and verify only the blocks holding headers, and verify file data block by
    /// block when it is read (a changed data byte fails that read, not the build). Off (the
    /// default): the build reads the whole section and checks its checksum, so any corrupt
    /// byte fails the build.
    pub verify_data_on_read: bool,
}

/// Extract section `index` of `data` into the empty directory `dir`.
pub(crate) fn extract(
    data: &File,
    index: usize,
    manifest: &Manifest,
    dir: &Path,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<()> {
    let root: OwnedFd = File::open(dir)
        .map_err(|e| Error::io(format!("open {}", dir.display()), e))?
        .into();
    let mut dirs: Vec<Entry> = Vec::new();
    let pool = Writers::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(256);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..helpers() {
            scope.spawn(|| pool.work(&rx, index));
        }
        let mut parent_cache: Option<(String, Arc<OwnedFd>)> = None;
        let mut seq = 0u64;
        let mut each = |e: &Entry, r: &mut SectionReader| -> Result<()> {
            seq += 1;
            let filtered = rules::filtered(e, opts);
            let e = filtered.as_ref().unwrap_or(e);
            let fail = |reason: String| Error::Entry {
                section: index,
                entry: e.path.clone(),
                reason,
            };
            pool.check()?;
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            if e.kind == Kind::File && e.sparse.is_none() && e.size <= SMALL_FILE && e.path != "." {
                // Small files: read here, create on a writer thread.
                let mut bytes = Vec::with_capacity(e.size as usize);
                r.content(|_, b| {
                    bytes.extend_from_slice(b);
                    Ok(())
                })
                .map_err(&fail)?;
                let (dir, name) = e.path.rsplit_once('/').unwrap_or((".", e.path.as_str()));
                if pool.is_pending(&e.path) {
                    // A later file of one name replaces the earlier: one at a time.
                    pool.drain();
                    pool.check()?;
                }
                let parent = match &parent_cache {
                    Some((d, fd)) if d == dir => fd.clone(),
                    _ => {
                        if openat2(root.as_fd(), dir, dir_how()).is_err() {
                            // Parents are about to be made (or refused): a small file of that
                            // name still being written must land first.
                            pool.drain();
                            pool.check()?;
                        }
                        let (fd, _) = parent_of(root.as_fd(), &e.path).map_err(&fail)?;
                        let fd = Arc::new(fd);
                        parent_cache = Some((dir.to_string(), fd.clone()));
                        fd
                    }
                };
                progress
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                pool.submit(
                    &tx,
                    Job {
                        seq,
                        parent,
                        name: name.to_string(),
                        entry: e.clone(),
                        bytes,
                    },
                );
                return Ok(());
            }
            // Anything else may name or replace a file still being written: let them land (for
            // a directory: when a file of its name is among them, or its parents are to be
            // made, which a file still being written may be in the way of).
            let parent_missing = || {
                e.path
                    .rsplit_once('/')
                    .is_some_and(|(dir, _)| openat2(root.as_fd(), dir, dir_how()).is_err())
            };
            if e.kind != Kind::Dir || pool.is_pending(&e.path) || parent_missing() {
                pool.drain();
                pool.check()?;
            }
            apply(root.as_fd(), e, r, opts, progress).map_err(|reason| {
                match progress.cancelled() {
                    true => Error::Cancelled,
                    false => fail(reason),
                }
            })?;
            if e.kind == Kind::Dir {
                dirs.push(e.clone());
            }
            Ok(())
        };
        let result = read_section(data, index, &manifest.sections[index], &mut each).map(|_| ());
        drop(tx);
        pool.drain();
        // A file still being written when a later entry failed failed first: its error wins.
        match (result, pool.check()) {
            (Err(Error::Cancelled), _) => Err(Error::Cancelled),
            (_, Err(earlier)) => Err(earlier),
            (result, Ok(())) => result,
        }
    })?;
    // Directory metadata last (creating entries changes mtimes), deepest first.
    let mut done = std::collections::HashSet::new();
    for e in dirs.iter().rev().filter(|e| done.insert(e.path.as_str())) {
        finish_dir(root.as_fd(), e).map_err(|reason| Error::Entry {
            section: index,
            entry: e.path.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Files up to this size are read from the stream and written by the writer threads.
const SMALL_FILE: u64 = 1 << 20;

/// A small file for a writer thread.
struct Job {
    /// The entry's place in the section (the earliest failure is the one reported).
    seq: u64,
    parent: Arc<OwnedFd>,
    name: String,
    entry: Entry,
    bytes: Vec<u8>,
}

/// Writer threads creating small files while the stream is parsed: the paths of the jobs in
/// flight (at most the channel's capacity and one per thread), and the first failure.
#[derive(Default)]
struct Writers {
    pending: Mutex<HashMap<String, usize>>,
    idle: Condvar,
    /// The earliest entry that failed, and its error until [`Writers::check`] hands it out
    /// (its place stays, so that later files are skipped and never reported instead).
    failed: Mutex<Option<(u64, Option<Error>)>>,
}

impl Writers {
    fn submit(&self, tx: &SyncSender<Job>, job: Job) {
        let path = job.entry.path.clone();
        *lock(&self.pending).entry(path.clone()).or_default() += 1;
        if tx.send(job).is_err() {
            self.done(&path);
        }
    }

    /// Job `path` is finished.
    fn done(&self, path: &str) {
        let mut p = lock(&self.pending);
        if let Some(n) = p.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                p.remove(path);
            }
        }
        if p.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Whether a file `path` is still to be written.
    fn is_pending(&self, path: &str) -> bool {
        lock(&self.pending).contains_key(path)
    }

    fn work(&self, rx: &Mutex<Receiver<Job>>, section: usize) {
        loop {
            let job = match lock(rx).recv() {
                Ok(j) => j,
                Err(_) => return,
            };
            let earlier_failed = lock(&self.failed)
                .as_ref()
                .is_some_and(|(seq, _)| *seq < job.seq);
            if !earlier_failed {
                if let Err(reason) =
                    write_small(job.parent.as_fd(), &job.name, &job.entry, &job.bytes)
                {
                    let mut failed = lock(&self.failed);
                    if failed.as_ref().is_none_or(|(seq, _)| job.seq < *seq) {
                        *failed = Some((
                            job.seq,
                            Some(Error::Entry {
                                section,
                                entry: job.entry.path.clone(),
                                reason,
                            }),
                        ));
                    }
                }
            }
            self.done(&job.entry.path);
        }
    }

    /// Wait until every submitted file is written.
    fn drain(&self) {
        let mut p = lock(&self.pending);
        while !p.is_empty() {
            p = self.idle.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The first failure of a writer thread, if any.
    fn check(&self) -> Result<()> {
        match lock(&self.failed).as_mut().and_then(|(_, e)| e.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Create one entry beneath `root`.
fn apply(
    root: BorrowedFd,
    e: &Entry,
    r: &mut SectionReader,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Res<()> {
    if e.path == "." {
        return rules::check_root(e);
    }
    check_name_bytes(&e.path)?;
    let (parent, name) = parent_of(root, &e.path)?;
    let p = parent.as_fd();
    let name = name.as_str();
    match &e.kind {
        Kind::Dir => {
            if let Err(err) = mkdirat(p, name, Mode::from_bits_truncate(0o700)) {
                if err != Errno::EEXIST {
                    return Err(format!("mkdir: {err}"));
                }
                let is_dir = openat2(p, name, dir_how()).is_ok();
                rules::check_replace(is_dir, true)?;
            }
        }
        Kind::File => {
            let f = create_file(p, name)?;
            r.content(|off, bytes| {
                if progress.cancelled() {
                    return Err(std::io::Error::other("cancelled"));
                }
                f.write_all_at(bytes, off)?;
                progress
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            })?;
            f.set_len(e.size).map_err(|err| format!("size: {err}"))?;
            set_meta_fd(f.as_fd(), e)?;
        }
        Kind::Symlink(target) => {
            check_name_bytes(target)?;
            remove_existing(p, name)?;
            symlinkat(target.as_str(), p, name).map_err(|err| format!("symlink: {err}"))?;
            set_meta_at(p, name, e, false)?;
        }
        Kind::HardLink(target) => {
            remove_existing(p, name)?;
            // Resolved as it is now (never creating a directory): a link names an earlier
            // entry, and not one beneath the name it replaces.
            let (tdir, tname) = target.rsplit_once('/').unwrap_or((".", target.as_str()));
            let tparent = match openat2(root, tdir, dir_how()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Err(rules::link_target_missing(target)),
                Err(err) => return Err(escape_msg(root, tdir, err)),
            };
            // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
            linkat(tparent.as_fd(), tname, p, name, AtFlags::empty()).map_err(|err| {
                if err == Errno::ENOENT {
                    rules::link_target_missing(target)
                } else if openat2(tparent.as_fd(), tname, dir_how()).is_ok() {
                    rules::link_target_dir(target)
                } else {
                    format!("hard link to {target:?}: {err}")
                }
            })?;
        }
        Kind::Char { .. } | Kind::Block { .. } | Kind::Fifo => {
            let (kind, major, minor) = match e.kind {
                Kind::Char { major, minor } => (SFlag::S_IFCHR, major, minor),
                Kind::Block { major, minor } => (SFlag::S_IFBLK, major, minor),
                _ => (SFlag::S_IFIFO, 0, 0),
            };
            rules::check_device(e, opts)?;
            remove_existing(p, name)?;
            let dev = nix::sys::stat::makedev(major.into(), minor.into());
            mknodat(p, name, kind, mode(e), dev).map_err(|err| format!("mknod: {err}"))?;
            set_meta_at(p, name, e, true)?;
        }
    }
    Ok(())
}

/// Create a new regular file `name` in `parent` (replacing whatever is there, as tar does).
fn create_file(parent: BorrowedFd, name: &str) -> Res<File> {
    let how = OpenHow::new()
        .flags(
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        )
        .mode(Mode::from_bits_truncate(0o600))
        .resolve(beneath());
    match openat2(parent, name, how) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::EEXIST) => {
            remove_existing(parent, name)?;
            openat2(parent, name, how)
                .map(File::from)
                .map_err(|e| format!("create: {e}"))
        }
        Err(e) => Err(format!("create: {e}")),
    }
}

/// Write a small file read from the stream, on a writer thread.
fn write_small(parent: BorrowedFd, name: &str, e: &Entry, bytes: &[u8]) -> Res<()> {
    check_name_bytes(name)?;
    let f = create_file(parent, name)?;
    f.write_all_at(bytes, 0)
        .map_err(|err| format!("write: {err}"))?;
    set_meta_fd(f.as_fd(), e)
}

/// Apply a directory's owner, mode, xattrs and times.
fn finish_dir(root: BorrowedFd, e: &Entry) -> Res<()> {
    let fd: OwnedFd = if e.path == "." {
        root.try_clone_to_owned()
            .map_err(|err| format!("dup: {err}"))?
    } else {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(beneath());
        openat2(root, e.path.as_str(), how).map_err(|err| format!("open: {err}"))?
    };
    set_meta_fd(fd.as_fd(), e)
}

fn owner(e: &Entry) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))
}

fn mode(e: &Entry) -> Mode {
    Mode::from_bits_truncate(e.mode & 0o7777)
}

/// Owner, mode, xattrs, mtime on an open file or directory.
fn set_meta_fd(fd: BorrowedFd, e: &Entry) -> Res<()> {
    let (uid, gid) = owner(e);
    fchown(fd, uid, gid).map_err(|err| format!("chown: {err}"))?;
    fchmod(fd, mode(e)).map_err(|err| format!("chmod: {err}"))?;
    for (k, v) in &e.xattrs {
        xattr::set_fd(fd, k, v).map_err(|err| format!("xattr {k}: {err}"))?;
    }
    let t = mtime(e);
    futimens(fd, &t, &t).map_err(|err| format!("times: {err}"))
}

/// Owner, (mode), xattrs, mtime of `name` in `parent`, never following a symlink.
fn set_meta_at(parent: BorrowedFd, name: &str, e: &Entry, chmod: bool) -> Res<()> {
    let (uid, gid) = owner(e);
    fchownat(parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|err| format!("chown: {err}"))?;
    if chmod {
        // Never a symlink here (device nodes and FIFOs only), so following is moot.
        fchmodat(parent, name, mode(e), FchmodatFlags::FollowSymlink)
            .map_err(|err| format!("chmod: {err}"))?;
    }
    for (k, v) in &e.xattrs {
        xattr::set_beneath(parent, name, k, v).map_err(|err| format!("xattr {k}: {err}"))?;
    }
    let t = mtime(e);
    utimensat(parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|err| format!("times: {err}"))
}

fn mtime(e: &Entry) -> TimeSpec {
    TimeSpec::new(e.mtime_sec, i64::from(e.mtime_nsec))
}

/// Remove whatever `name` is in `parent` (a later entry replaces an earlier one, as tar does);
/// directories stay.
fn remove_existing(parent: BorrowedFd, name: &str) -> Res<()> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => rules::check_replace(true, false),
        Err(err) => Err(format!("replace existing entry: {err}")),
    }
}

/// The directory holding `path` (resolved beneath `root`, created if missing) and the last
/// component.
fn parent_of(root: BorrowedFd, path: &str) -> Res<(OwnedFd, String)> {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => (".", path),
    };
    match openat2(root, dir, dir_how()) {
        Ok(fd) => return Ok((fd, name.to_string())),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(escape_msg(root, dir, e)),
    }
    // Create missing parents one component at a time, each beneath the root.
    let mut current = String::from(".");
    for comp in dir.split('/') {
        current = if current == "." {
            comp.to_string()
        } else {
            format!("{current}/{comp}")
        };
        match openat2(root, current.as_str(), dir_how()) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let (p, n) = parent_of(root, &current)?;
                mkdirat(p.as_fd(), n.as_str(), Mode::from_bits_truncate(0o755))
                    .map_err(|err| format!("mkdir {current}: {err}"))?;
            }
            Err(e) => return Err(escape_msg(root, &current, e)),
        }
    }
    let fd = openat2(root, dir, dir_how()).map_err(|e| escape_msg(root, dir, e))?;
    Ok((fd, name.to_string()))
}

/// Why `dir` could not be opened as a directory (`e`): the first of its components that is a
/// symlink or not a directory, named as [`rules`] names it.
fn escape_msg(root: BorrowedFd, dir: &str, e: Errno) -> String {
    if matches!(e, Errno::EXDEV | Errno::ELOOP | Errno::ENOTDIR) {
        let mut current = String::new();
        for comp in dir.split('/') {
            if !current.is_empty() {
                current.push('/');
            }
            current.push_str(comp);
            match openat2(root, current.as_str(), dir_how()) {
                Ok(_) => {}
                Err(Errno::EXDEV | Errno::ELOOP) => return rules::beneath_symlink(&current),
                Err(Errno::ENOTDIR) => return rules::beneath_non_dir(&current),
                Err(_) => break,
            }
        }
    }
    match e {
        Errno::EXDEV | Errno::ELOOP => rules::beneath_symlink(dir),
        Errno::ENOTDIR => rules::beneath_non_dir(dir),
        other => format!("open {dir:?}: {other}"),
    }
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Directories are resolved through directories only: an entry beneath a symlink is refused
/// (see [`rules::beneath_symlink`]), wherever the symlink points.
fn dir_how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(beneath() | ResolveFlag::RESOLVE_NO_SYMLINKS)
}
