//! Restoring sections into directories. Each section is extracted into a fresh work directory
//! beside its target, every name resolved beneath that directory with openat2
//! (RESOLVE_BENEATH, no magic links) so no entry — `..`, absolute names, symlink or hard-link
//! tricks — can write outside it; device nodes other than overlay whiteouts need explicit
//! permission. The section's checksum is checked in the same pass; only a section that
//! verified is moved into its target, so a corrupt or truncated snapshot leaves the target as
//! it was.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::save::{parallel, require_absent_or_empty, temp_sibling, Progress};
use crate::section::{read_section, SectionReader};
use crate::tar::{Entry, Kind};

#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    /// Allow character and block device nodes other than whiteouts (0/0).
    pub allow_devices: bool,
}

/// Restore section `index` of the snapshot in `snapshot` into each target (which must not
/// exist or be empty), sections in parallel.
pub fn restore(
    snapshot: &Path,
    targets: &[(usize, PathBuf)],
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<Manifest> {
    let manifest = Manifest::load(snapshot)?;
    let data_path = snapshot.join(&manifest.data_file);
    let data = File::open(&data_path)
        .map_err(|e| Error::io(format!("open {}", data_path.display()), e))?;
    for (i, _) in targets {
        if *i >= manifest.sections.len() {
            return Err(Error::Target {
                path: snapshot.into(),
                reason: format!(
                    "has {} sections; there is no section {i}",
                    manifest.sections.len()
                ),
            });
        }
    }
    for (_, t) in targets {
        require_absent_or_empty(t, "is not empty; restore into an empty or new directory")?;
    }
    progress.total.store(
        targets
            .iter()
            .map(|(i, _)| manifest.sections[*i].stored_bytes)
            .sum(),
        Ordering::Relaxed,
    );
    // Extract every section into its work directory first; move into place only when all
    // verified.
    let staged: Vec<Result<PathBuf>> = targets
        .iter()
        .map(|(_, t)| temp_sibling(t, "restore"))
        .collect();
    let mut work = Vec::new();
    let mut failed = None;
    for s in staged {
        match s {
            Ok(p) => work.push(p),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    let result = match failed {
        Some(e) => Err(e),
        None => {
            let jobs: Vec<(usize, &PathBuf)> = targets.iter().map(|(i, _)| *i).zip(&work).collect();
            parallel(&jobs, |_, (i, dir)| {
                extract(&data, *i, &manifest, dir, opts, progress)
            })
            .map(|_| ())
        }
    };
    if let Err(e) = result {
        for w in &work {
            let _ = std::fs::remove_dir_all(w);
        }
        return Err(e);
    }
    for ((_, target), w) in targets.iter().zip(&work) {
        place(w, target)?;
    }
    Ok(manifest)
}

/// Move a verified work directory into place: rename when possible, else (a mount point or
/// another filesystem) move its entries and its root's metadata into the empty target.
fn place(work: &Path, target: &Path) -> Result<()> {
    let err = |e: std::io::Error| Error::Target {
        path: target.into(),
        reason: format!("move the restored tree into place: {e}"),
    };
    if target.exists() {
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(_) => {
                for entry in std::fs::read_dir(work).map_err(err)? {
                    let entry = entry.map_err(err)?;
                    std::fs::rename(entry.path(), target.join(entry.file_name())).map_err(err)?;
                }
                copy_root_metadata(work, target).map_err(err)?;
                return std::fs::remove_dir(work).map_err(err);
            }
        }
    }
    std::fs::rename(work, target).map_err(err)
}

fn copy_root_metadata(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(from)?;
    std::os::unix::fs::chown(to, Some(md.uid()), Some(md.gid()))?;
    std::fs::set_permissions(to, md.permissions())?;
    let dir = File::open(to)?;
    for (k, v) in crate::walk::xattrs(from).map_err(std::io::Error::other)? {
        set_xattr_fd(dir.as_fd(), &k, &v)?;
    }
    let times = [
        libc::timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        libc::timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    ];
    // SAFETY: valid fd and times.
    if unsafe { libc::futimens(dir.as_raw_fd(), times.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Extract section `index` into the empty directory `dir`.
fn extract(
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
    let writers = std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1);
    let pool = Writers::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(256);
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..writers {
            scope.spawn(|| pool.work(&rx, index));
        }
        let mut parent_cache: Option<(String, Arc<OwnedFd>)> = None;
        let result = read_section(data, index, &manifest.sections[index], |e, r| {
            let fail = |reason: String| Error::Entry {
                section: index,
                entry: e.path.clone(),
                reason,
            };
            pool.check()?;
            if e.kind == Kind::File && e.sparse.is_none() && e.size <= SMALL_FILE && e.path != "." {
                // Small files: read here, create on a writer thread.
                let mut bytes = Vec::with_capacity(e.size as usize);
                r.content(|_, b| {
                    bytes.extend_from_slice(b);
                    Ok(())
                })
                .map_err(&fail)?;
                let (dir, name) = e.path.rsplit_once('/').unwrap_or((".", e.path.as_str()));
                let parent = match &parent_cache {
                    Some((d, fd)) if d == dir => fd.clone(),
                    _ => {
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
                        parent,
                        name: name.to_string(),
                        entry: e.clone(),
                        bytes,
                    },
                );
                return Ok(());
            }
            // Anything else may name or replace a file still being written: let them land.
            if e.kind != Kind::Dir {
                pool.drain();
                pool.check()?;
            }
            apply(root.as_fd(), e, r, opts, progress).map_err(fail)?;
            if e.kind == Kind::Dir {
                dirs.push(e.clone());
            }
            Ok(())
        });
        drop(tx);
        pool.drain();
        result?;
        pool.check()
    })?;
    // Directory metadata last (creating entries changes mtimes), deepest first.
    for e in dirs.iter().rev() {
        finish_dir(root.as_fd(), e).map_err(|reason| Error::Entry {
            section: index,
            entry: e.path.clone(),
            reason,
        })?;
    }
    Ok(())
}

type Res<T> = std::result::Result<T, String>;

/// Files up to this size are read from the stream and written by the writer threads.
const SMALL_FILE: u64 = 1 << 20;

/// A small file for a writer thread.
struct Job {
    parent: Arc<OwnedFd>,
    name: String,
    entry: Entry,
    bytes: Vec<u8>,
}

/// Writer threads creating small files while the stream is parsed: jobs in flight, and the
/// first failure.
#[derive(Default)]
struct Writers {
    pending: Mutex<usize>,
    idle: Condvar,
    failed: Mutex<Option<Error>>,
}

impl Writers {
    fn submit(&self, tx: &SyncSender<Job>, job: Job) {
        *lock(&self.pending) += 1;
        if tx.send(job).is_err() {
            *lock(&self.pending) -= 1;
        }
    }

    fn work(&self, rx: &Mutex<Receiver<Job>>, section: usize) {
        loop {
            let job = match lock(rx).recv() {
                Ok(j) => j,
                Err(_) => return,
            };
            if lock(&self.failed).is_none() {
                if let Err(reason) =
                    write_small(job.parent.as_fd(), &job.name, &job.entry, &job.bytes)
                {
                    lock(&self.failed).get_or_insert(Error::Entry {
                        section,
                        entry: job.entry.path.clone(),
                        reason,
                    });
                }
            }
            let mut p = lock(&self.pending);
            *p -= 1;
            if *p == 0 {
                self.idle.notify_all();
            }
        }
    }

    /// Wait until every submitted file is written.
    fn drain(&self) {
        let mut p = lock(&self.pending);
        while *p > 0 {
            p = self.idle.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The first failure of a writer thread, if any.
    fn check(&self) -> Result<()> {
        match lock(&self.failed).take() {
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
        return match e.kind {
            Kind::Dir => Ok(()),
            _ => Err("the section's root must be a directory".into()),
        };
    }
    let (parent, name) = parent_of(root, &e.path)?;
    let p = parent.as_fd();
    let cname = cstring(&name)?;
    match &e.kind {
        Kind::Dir => {
            // SAFETY: valid fd and C string.
            let rc = unsafe { libc::mkdirat(p.as_raw_fd(), cname.as_ptr(), 0o700) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                let is_dir = openat2(p, name.as_str(), dir_how()).is_ok();
                if err.raw_os_error() != Some(libc::EEXIST) || !is_dir {
                    return Err(format!("mkdir: {err}"));
                }
            }
        }
        Kind::File => {
            let f = create_file(p, &name, &cname)?;
            r.content(|off, bytes| {
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
            remove_existing(p, &cname)?;
            let t = cstring(target)?;
            // SAFETY: valid fd and C strings.
            if unsafe { libc::symlinkat(t.as_ptr(), p.as_raw_fd(), cname.as_ptr()) } < 0 {
                return Err(format!("symlink: {}", std::io::Error::last_os_error()));
            }
            set_meta_at(p, &cname, e, false)?;
        }
        Kind::HardLink(target) => {
            remove_existing(p, &cname)?;
            let (tparent, tname) = parent_of(root, target)?;
            let tn = cstring(&tname)?;
            // Flags 0: a symlink target is linked itself, never followed.
            // SAFETY: valid fds and C strings.
            let rc = unsafe {
                libc::linkat(
                    tparent.as_raw_fd(),
                    tn.as_ptr(),
                    p.as_raw_fd(),
                    cname.as_ptr(),
                    0,
                )
            };
            if rc < 0 {
                return Err(format!(
                    "hard link to {target:?}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        Kind::Char { .. } | Kind::Block { .. } | Kind::Fifo => {
            let (kind, major, minor) = match e.kind {
                Kind::Char { major, minor } => (libc::S_IFCHR, major, minor),
                Kind::Block { major, minor } => (libc::S_IFBLK, major, minor),
                _ => (libc::S_IFIFO, 0, 0),
            };
            if kind != libc::S_IFIFO && !e.is_whiteout() && !opts.allow_devices {
                return Err(format!(
                    "device node {major}:{minor} refused (allow device nodes to restore it)"
                ));
            }
            remove_existing(p, &cname)?;
            let dev = libc::makedev(major, minor);
            // SAFETY: valid fd and C string.
            let rc = unsafe {
                libc::mknodat(p.as_raw_fd(), cname.as_ptr(), kind | (e.mode & 0o7777), dev)
            };
            if rc < 0 {
                return Err(format!("mknod: {}", std::io::Error::last_os_error()));
            }
            set_meta_at(p, &cname, e, true)?;
        }
    }
    Ok(())
}

/// Create a new regular file `name` in `parent` (replacing whatever is there, as tar does).
fn create_file(parent: BorrowedFd, name: &str, cname: &CString) -> Res<File> {
    let how = OpenHow::new()
        .flags(
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        )
        .mode(Mode::from_bits_truncate(0o600))
        .resolve(beneath());
    match openat2(parent, name, how) {
        Ok(fd) => Ok(File::from(fd)),
        Err(nix::Error::EEXIST) => {
            remove_existing(parent, cname)?;
            openat2(parent, name, how)
                .map(File::from)
                .map_err(|e| format!("create: {e}"))
        }
        Err(e) => Err(format!("create: {e}")),
    }
}

/// Write a small file read from the stream, on a writer thread.
fn write_small(parent: BorrowedFd, name: &str, e: &Entry, bytes: &[u8]) -> Res<()> {
    let f = create_file(parent, name, &cstring(name)?)?;
    f.write_all_at(bytes, 0)
        .map_err(|err| format!("write: {err}"))?;
    set_meta_fd(f.as_fd(), e)
}

/// Apply a directory's owner, mode, xattrs and times.
fn finish_dir(root: BorrowedFd, e: &Entry) -> Res<()> {
    let fd: OwnedFd = if e.path == "." {
        // SAFETY: dup of a valid fd.
        let d = unsafe { libc::fcntl(root.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if d < 0 {
            return Err(format!("dup: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        unsafe { OwnedFd::from_raw_fd(d) }
    } else {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(beneath());
        openat2(root, e.path.as_str(), how).map_err(|err| format!("open: {err}"))?
    };
    set_meta_fd(fd.as_fd(), e)
}

/// Owner, mode, xattrs, mtime on an open file or directory.
fn set_meta_fd(fd: BorrowedFd, e: &Entry) -> Res<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: valid fd for all three calls.
    if unsafe { libc::fchown(raw, e.uid, e.gid) } < 0 {
        return Err(format!("chown: {}", std::io::Error::last_os_error()));
    }
    if unsafe { libc::fchmod(raw, e.mode & 0o7777) } < 0 {
        return Err(format!("chmod: {}", std::io::Error::last_os_error()));
    }
    for (k, v) in &e.xattrs {
        set_xattr_fd(fd, k, v).map_err(|err| format!("xattr {k}: {err}"))?;
    }
    let t = times(e);
    if unsafe { libc::futimens(raw, t.as_ptr()) } < 0 {
        return Err(format!("times: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Owner, (mode), xattrs, mtime of `name` in `parent`, never following a symlink.
fn set_meta_at(parent: BorrowedFd, name: &CString, e: &Entry, chmod: bool) -> Res<()> {
    let p = parent.as_raw_fd();
    // SAFETY: valid fd and C string for each call.
    if unsafe { libc::fchownat(p, name.as_ptr(), e.uid, e.gid, libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(format!("chown: {}", std::io::Error::last_os_error()));
    }
    if chmod && unsafe { libc::fchmodat(p, name.as_ptr(), e.mode & 0o7777, 0) } < 0 {
        return Err(format!("chmod: {}", std::io::Error::last_os_error()));
    }
    if !e.xattrs.is_empty() {
        // Through the parent's descriptor: no path outside is ever resolved.
        let path = cstring(&format!("/proc/self/fd/{p}/{}", name.to_string_lossy()))?;
        for (k, v) in &e.xattrs {
            let key = cstring(k)?;
            // SAFETY: valid C strings and buffer.
            let rc = unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    key.as_ptr(),
                    v.as_ptr() as *const libc::c_void,
                    v.len(),
                    0,
                )
            };
            if rc < 0 {
                return Err(format!("xattr {k}: {}", std::io::Error::last_os_error()));
            }
        }
    }
    let t = times(e);
    if unsafe { libc::utimensat(p, name.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(format!("times: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_xattr_fd(fd: BorrowedFd, k: &str, v: &[u8]) -> std::io::Result<()> {
    let key = CString::new(k).map_err(std::io::Error::other)?;
    // SAFETY: valid fd, C string and buffer.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            v.as_ptr() as *const libc::c_void,
            v.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn times(e: &Entry) -> [libc::timespec; 2] {
    let mtime = libc::timespec {
        tv_sec: e.mtime_sec,
        tv_nsec: i64::from(e.mtime_nsec),
    };
    [mtime, mtime]
}

/// Remove whatever `name` is in `parent` (a later entry replaces an earlier one, as tar does);
/// directories stay.
fn remove_existing(parent: BorrowedFd, name: &CString) -> Res<()> {
    // SAFETY: valid fd and C string.
    let rc = unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(format!("replace existing entry: {err}"));
        }
    }
    Ok(())
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
        Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(escape_msg(dir, e)),
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
            Err(nix::Error::ENOENT) => {
                let (p, n) = parent_of(root, &current)?;
                let c = cstring(&n)?;
                // SAFETY: valid fd and C string.
                if unsafe { libc::mkdirat(p.as_raw_fd(), c.as_ptr(), 0o755) } < 0 {
                    return Err(format!(
                        "mkdir {current}: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
            Err(e) => return Err(escape_msg(&current, e)),
        }
    }
    let fd = openat2(root, dir, dir_how()).map_err(|e| escape_msg(dir, e))?;
    Ok((fd, name.to_string()))
}

fn escape_msg(dir: &str, e: nix::Error) -> String {
    match e {
        nix::Error::EXDEV | nix::Error::ELOOP => {
            format!("{dir:?} leads outside the target (through a symlink); refused")
        }
        nix::Error::ENOTDIR => format!("{dir:?} is not a directory"),
        other => format!("open {dir:?}: {other}"),
    }
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn dir_how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(beneath())
}

fn cstring(s: &str) -> Res<CString> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}
