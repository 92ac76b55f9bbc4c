//! The trigger filesystem's rules, apart from any kernel: what each FUSE request gets. The
//! tree is `/<container id>/fscheckpoint`, one directory per container (each container sees
//! only its own, bind-mounted at `/run/cryo`). Nothing can be created, renamed, removed or
//! changed in it.
//!
//! Who may trigger is decided here, per open: any open succeeds only for a process in the
//! container's mount namespace (so another container reaching the file through
//! `/proc/<pid>/root` can neither trigger nor hold handles and parked reads against the
//! container's limits), and a write open only on the file of a container created with
//! `dev.cryo.fscheckpoint.enable=true`. Writing `1` starts a round (a checkpoint of the pod); while one
//! runs, a write gets EBUSY. A read returns the result of the round the handle waits for
//! (`resume\n` or `error\n`), then one end of file, after which the handle waits for the next
//! round; a read before its round finished is parked and answered when it does (reads ignore
//! the offset: the file is opened direct and non-seekable). A parked reader that is being
//! killed gets EINTR at once (the kernel cannot kill it while it waits for us).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use cryo_sandbox::fuse::{self, op, Request};

/// The trigger file in each container's directory.
pub const FILE_NAME: &str = "fscheckpoint";
/// Open handles at most per container (one cannot starve the others); more get EMFILE.
const MAX_HANDLES: usize = 1024;
/// Parked reads at most per container; more get EBUSY.
const MAX_PARKED: usize = 1024;
/// Results of past rounds kept for readers that lag behind.
const HISTORY: usize = 64;

/// A reply: a payload, or an errno.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Ok(Vec<u8>),
    Err(i32),
}

/// What a request led to.
#[derive(Default)]
pub struct Outcome {
    /// Replies to send (by request id); a request not answered here is parked, or needs none.
    pub replies: Vec<(u64, Reply)>,
    /// A round to start.
    pub start: Option<u64>,
    /// An interrupt came: look for readers being killed now.
    pub sweep: bool,
}

impl Outcome {
    fn reply(unique: u64, reply: Reply) -> Outcome {
        Outcome {
            replies: vec![(unique, reply)],
            ..Outcome::default()
        }
    }
}

/// Whether process `pid` is in container `id`'s mount namespace.
pub type SameContainer = Box<dyn Fn(&str, u32) -> bool + Send + Sync>;
/// Whether thread `pid` is one of the shim's own.
pub type IsShim = Box<dyn Fn(u32) -> bool + Send + Sync>;

struct Slot {
    /// The container id (its directory's name).
    name: String,
    writable: bool,
}

struct Handle {
    slot: usize,
    write: bool,
    /// The round whose result this handle reads.
    waiting_for: u64,
    /// Bytes of that result already read.
    sent: usize,
    /// The result and its end of file were read: the handle moves on to the next round.
    done: bool,
}

struct Parked {
    unique: u64,
    fh: u64,
    pid: u32,
    size: usize,
}

#[derive(Default)]
struct State {
    /// By slot number; a removed container's slot stays empty (inode numbers are never reused).
    slots: Vec<Option<Slot>>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    started: u64,
    completed: u64,
    running: bool,
    results: VecDeque<(u64, bool)>,
    parked: Vec<Parked>,
}

/// Inode numbers: 1 the root; slot k's directory `2 + 2k`, its file `3 + 2k`.
enum Node {
    Root,
    Dir(usize),
    File(usize),
}

fn node(ino: u64) -> Option<Node> {
    match ino {
        0 => None,
        fuse::ROOT => Some(Node::Root),
        n => {
            let k = usize::try_from((n - 2) / 2).ok()?;
            Some(if (n - 2) % 2 == 0 {
                Node::Dir(k)
            } else {
                Node::File(k)
            })
        }
    }
}

fn dir_ino(k: usize) -> u64 {
    2 + 2 * k as u64
}

fn file_ino(k: usize) -> u64 {
    3 + 2 * k as u64
}

pub struct TriggerFs {
    state: Mutex<State>,
    /// The nodes' times (the mount's).
    time: u64,
    same_container: SameContainer,
    is_shim: IsShim,
}

impl TriggerFs {
    pub fn new(same_container: SameContainer, is_shim: IsShim) -> TriggerFs {
        TriggerFs {
            state: Mutex::default(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            same_container,
            is_shim,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Give container `id` its directory and file (writable by it when `writable`).
    pub fn add(&self, id: &str, writable: bool) {
        let mut s = self.lock();
        s.slots.push(Some(Slot {
            name: id.to_string(),
            writable,
        }));
    }

    /// Container `id` is gone: its directory goes; reads parked on its file fail.
    pub fn remove(&self, id: &str) -> Vec<(u64, Reply)> {
        let mut s = self.lock();
        let Some(k) = s.slot_of(id.as_bytes()) else {
            return Vec::new();
        };
        s.slots[k] = None;
        let State {
            handles, parked, ..
        } = &mut *s;
        let mut replies = Vec::new();
        parked.retain(|p| {
            let gone = handles.get(&p.fh).is_some_and(|h| h.slot == k);
            if gone {
                replies.push((p.unique, Reply::Err(libc::ENOENT)));
            }
            !gone
        });
        replies
    }

    /// Answer one request.
    pub fn handle(&self, req: &Request) -> Outcome {
        let mut s = self.lock();
        let unique = req.unique;
        let answer = |r: std::result::Result<Vec<u8>, i32>| {
            Outcome::reply(
                unique,
                match r {
                    Ok(v) => Reply::Ok(v),
                    Err(e) => Reply::Err(e),
                },
            )
        };
        match req.opcode {
            op::INIT => answer(fuse::init_out(req).ok_or(libc::EPROTO)),
            op::LOOKUP => answer(s.lookup(req.nodeid, req.name(), self.time)),
            op::GETATTR => answer(s.attr(req.nodeid, self.time).map(|a| fuse::attr_out(&a))),
            op::OPEN => {
                let flags = req.u32_at(0).unwrap_or(0) as i32;
                answer(self.open(&mut s, req.nodeid, flags, req.pid))
            }
            op::OPENDIR => answer(match node(req.nodeid) {
                Some(Node::Root) => Ok(fuse::open_out(0, 0)),
                Some(Node::Dir(k)) if s.has(k) => Ok(fuse::open_out(0, 0)),
                Some(Node::File(k)) if s.has(k) => Err(libc::ENOTDIR),
                _ => Err(libc::ENOENT),
            }),
            op::READDIR => {
                let offset = req.u64_at(8).unwrap_or(0);
                let size = req.u32_at(16).unwrap_or(0) as usize;
                if (self.is_shim)(req.pid) {
                    // A checkpoint walking a volume that holds a container's /run/cryo (ctr's
                    // /run tmpfs, all-volumes) saves it as an empty directory: it must never
                    // read a trigger file (it would wait for its own end).
                    return answer(Ok(Vec::new()));
                }
                answer(s.readdir(req.nodeid, offset, size))
            }
            op::READ => {
                let fh = req.u64_at(0).unwrap_or(0);
                let size = req.u32_at(16).unwrap_or(0) as usize;
                let read_flags = req.u32_at(20).unwrap_or(0);
                if read_flags & fuse::READ_LOCKOWNER == 0 {
                    // A page-cache read (splice, sendfile): refused, so that the caller falls
                    // back to read(2), which comes direct (busybox's cat does so).
                    return Outcome::reply(unique, Reply::Err(libc::EIO));
                }
                s.read(unique, fh, size, req.pid)
            }
            op::WRITE => {
                let fh = req.u64_at(0).unwrap_or(0);
                let size = req.u32_at(16).unwrap_or(0) as usize;
                let data = req.body.get(40..40 + size).unwrap_or_default();
                match s.write(fh, data) {
                    Ok(round) => Outcome {
                        replies: vec![(unique, Reply::Ok(fuse::write_out(size as u32)))],
                        start: round,
                        sweep: false,
                    },
                    Err(e) => Outcome::reply(unique, Reply::Err(e)),
                }
            }
            op::RELEASE => {
                let fh = req.u64_at(0).unwrap_or(0);
                s.handles.remove(&fh);
                s.parked.retain(|p| p.fh != fh);
                answer(Ok(Vec::new()))
            }
            op::ACCESS => {
                let mask = req.u32_at(0).unwrap_or(0) as i32;
                let writable = match node(req.nodeid) {
                    Some(Node::File(k)) => s.slot(k).is_some_and(|slot| {
                        slot.writable && (self.same_container)(&slot.name, req.pid)
                    }),
                    _ => false,
                };
                answer(if mask & libc::W_OK != 0 && !writable {
                    Err(libc::EACCES)
                } else {
                    Ok(Vec::new())
                })
            }
            op::FLUSH | op::FSYNC | op::FSYNCDIR | op::RELEASEDIR => answer(Ok(Vec::new())),
            op::STATFS => answer(Ok(fuse::statfs_out())),
            op::SETATTR
            | op::SYMLINK
            | op::MKNOD
            | op::MKDIR
            | op::UNLINK
            | op::RMDIR
            | op::RENAME
            | op::RENAME2
            | op::LINK
            | op::CREATE
            | op::TMPFILE
            | op::SETXATTR
            | op::REMOVEXATTR
            | op::FALLOCATE => answer(Err(libc::EACCES)),
            op::INTERRUPT => Outcome {
                sweep: true,
                ..Outcome::default()
            },
            op::FORGET | op::BATCH_FORGET | op::DESTROY => Outcome::default(),
            _ => answer(Err(libc::ENOSYS)),
        }
    }

    fn open(&self, s: &mut State, ino: u64, flags: i32, pid: u32) -> Result<Vec<u8>, i32> {
        let k = match node(ino) {
            Some(Node::File(k)) if s.has(k) => k,
            Some(Node::Root) => return Err(libc::EISDIR),
            Some(Node::Dir(k)) if s.has(k) => return Err(libc::EISDIR),
            _ => return Err(libc::ENOENT),
        };
        if (self.is_shim)(pid) {
            return Err(libc::EACCES);
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        // Only the container's own processes open its file, for reading too: another
        // container's handles and parked reads would count against its limits, and its reads
        // would tell when it checkpoints.
        let slot = s.slot(k).ok_or(libc::ENOENT)?;
        if !(self.same_container)(&slot.name, pid) || (write && !slot.writable) {
            return Err(libc::EACCES);
        }
        if s.handles.values().filter(|h| h.slot == k).count() >= MAX_HANDLES {
            return Err(libc::EMFILE);
        }
        s.next_fh += 1;
        let fh = s.next_fh;
        let waiting_for = s.completed + 1;
        s.handles.insert(
            fh,
            Handle {
                slot: k,
                write,
                waiting_for,
                sent: 0,
                done: false,
            },
        );
        Ok(fuse::open_out(
            fh,
            fuse::FOPEN_DIRECT_IO | fuse::FOPEN_NONSEEKABLE,
        ))
    }

    /// Round `round` finished: every reader waiting for it gets its result.
    pub fn complete(&self, round: u64, ok: bool) -> Vec<(u64, Reply)> {
        let mut s = self.lock();
        s.completed = s.completed.max(round);
        s.running = false;
        s.results.push_back((round, ok));
        while s.results.len() > HISTORY {
            s.results.pop_front();
        }
        let parked = std::mem::take(&mut s.parked);
        let mut replies = Vec::new();
        for p in parked {
            let o = s.read(p.unique, p.fh, p.size, p.pid);
            replies.extend(o.replies);
        }
        replies
    }

    /// Parked readers for which `dying(pid)` holds get EINTR.
    pub fn sweep(&self, dying: impl Fn(u32) -> bool) -> Vec<(u64, Reply)> {
        let mut s = self.lock();
        let mut replies = Vec::new();
        s.parked.retain(|p| {
            let d = dying(p.pid);
            if d {
                replies.push((p.unique, Reply::Err(libc::EINTR)));
            }
            !d
        });
        replies
    }

    pub fn has_parked(&self) -> bool {
        !self.lock().parked.is_empty()
    }
}

impl State {
    fn slot(&self, k: usize) -> Option<&Slot> {
        self.slots.get(k).and_then(Option::as_ref)
    }

    fn has(&self, k: usize) -> bool {
        self.slot(k).is_some()
    }

    fn slot_of(&self, name: &[u8]) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.name.as_bytes() == name))
    }

    fn attr(&self, ino: u64, time: u64) -> Result<[u8; 88], i32> {
        let mode = match node(ino).ok_or(libc::ENOENT)? {
            Node::Root => libc::S_IFDIR | 0o555,
            Node::Dir(k) if self.has(k) => libc::S_IFDIR | 0o555,
            Node::File(k) => match self.slot(k) {
                Some(s) if s.writable => libc::S_IFREG | 0o666,
                Some(_) => libc::S_IFREG | 0o444,
                None => return Err(libc::ENOENT),
            },
            Node::Dir(_) => return Err(libc::ENOENT),
        };
        // A file of size 0 would make splice and sendfile (which read through the page cache,
        // direct I/O or not) end at once: with a page of size they ask, are refused, and the
        // caller falls back to read(2).
        let size = if mode & libc::S_IFREG != 0 { 4096 } else { 0 };
        Ok(fuse::attr(ino, mode, size, time))
    }

    fn lookup(&self, parent: u64, name: &[u8], time: u64) -> Result<Vec<u8>, i32> {
        let ino = match node(parent).ok_or(libc::ENOENT)? {
            Node::Root => dir_ino(self.slot_of(name).ok_or(libc::ENOENT)?),
            Node::Dir(k) if self.has(k) && name == FILE_NAME.as_bytes() => file_ino(k),
            Node::Dir(_) => return Err(libc::ENOENT),
            Node::File(_) => return Err(libc::ENOTDIR),
        };
        Ok(fuse::entry_out(ino, &self.attr(ino, time)?))
    }

    fn readdir(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>, i32> {
        let entries: Vec<(u64, bool, Vec<u8>)> = match node(ino).ok_or(libc::ENOENT)? {
            Node::Root => self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(k, s)| {
                    Some((dir_ino(k), true, s.as_ref()?.name.clone().into_bytes()))
                })
                .collect(),
            Node::Dir(k) if self.has(k) => {
                vec![(file_ino(k), false, FILE_NAME.as_bytes().to_vec())]
            }
            Node::Dir(_) => return Err(libc::ENOENT),
            Node::File(_) => return Err(libc::ENOTDIR),
        };
        let mut out = Vec::new();
        for (i, (ino, dir, name)) in entries.iter().enumerate().skip(offset as usize) {
            let e = fuse::dirent(*ino, i as u64 + 1, *dir, name);
            if out.len() + e.len() > size {
                break;
            }
            out.extend_from_slice(&e);
        }
        Ok(out)
    }

    /// Start a round for a write of `1` (EBUSY while one runs).
    fn write(&mut self, fh: u64, data: &[u8]) -> Result<Option<u64>, i32> {
        let write = self.handles.get(&fh).map(|h| h.write);
        match write {
            None => return Err(libc::EBADF),
            Some(false) => return Err(libc::EBADF),
            Some(true) => {}
        }
        if data.len() > 16 || std::str::from_utf8(data).map(str::trim) != Ok("1") {
            return Err(libc::EINVAL);
        }
        if self.running {
            return Err(libc::EBUSY);
        }
        self.running = true;
        self.started += 1;
        let round = self.started;
        if let Some(h) = self.handles.get_mut(&fh) {
            h.waiting_for = round;
            h.sent = 0;
            h.done = false;
        }
        Ok(Some(round))
    }

    fn read(&mut self, unique: u64, fh: u64, size: usize, pid: u32) -> Outcome {
        let completed = self.completed;
        let Some(h) = self.handles.get_mut(&fh) else {
            return Outcome::reply(unique, Reply::Err(libc::EBADF));
        };
        if h.done {
            // One end of file, then the handle waits for the next round.
            h.done = false;
            h.sent = 0;
            h.waiting_for = completed + 1;
            return Outcome::reply(unique, Reply::Ok(Vec::new()));
        }
        if h.waiting_for > completed {
            let slot = h.slot;
            let handles = &self.handles;
            let parked_here = self
                .parked
                .iter()
                .filter(|p| handles.get(&p.fh).is_some_and(|o| o.slot == slot))
                .count();
            if parked_here >= MAX_PARKED {
                return Outcome::reply(unique, Reply::Err(libc::EBUSY));
            }
            self.parked.push(Parked {
                unique,
                fh,
                pid,
                size,
            });
            return Outcome::default();
        }
        let ok = self
            .results
            .iter()
            .find(|(r, _)| *r == h.waiting_for)
            .or(self.results.back())
            .is_some_and(|(_, ok)| *ok);
        let text: &[u8] = if ok { b"resume\n" } else { b"error\n" };
        let from = h.sent.min(text.len());
        let to = (from + size).min(text.len());
        h.sent = to;
        if to == text.len() {
            h.done = true;
        }
        Outcome::reply(unique, Reply::Ok(text[from..to].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as the kernel sends it.
    fn req(opcode: u32, unique: u64, nodeid: u64, pid: u32, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 40];
        b[0..4].copy_from_slice(&((40 + body.len()) as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&opcode.to_ne_bytes());
        b[8..16].copy_from_slice(&unique.to_ne_bytes());
        b[16..24].copy_from_slice(&nodeid.to_ne_bytes());
        b[32..36].copy_from_slice(&pid.to_ne_bytes());
        b.extend_from_slice(body);
        b
    }

    fn run(
        fs: &TriggerFs,
        opcode: u32,
        unique: u64,
        nodeid: u64,
        pid: u32,
        body: &[u8],
    ) -> Outcome {
        let buf = req(opcode, unique, nodeid, pid, body);
        fs.handle(&Request::parse(&buf).unwrap())
    }

    fn open(fs: &TriggerFs, ino: u64, flags: i32, pid: u32) -> Result<u64, i32> {
        let o = run(fs, op::OPEN, 1, ino, pid, &(flags as u32).to_ne_bytes());
        match &o.replies[0].1 {
            Reply::Ok(v) => Ok(u64::from_ne_bytes(v[0..8].try_into().unwrap())),
            Reply::Err(e) => Err(*e),
        }
    }

    /// A READ's or WRITE's arguments (a direct read: with its lock owner, as the kernel sends).
    fn io_body(fh: u64, size: u32, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 40];
        b[0..8].copy_from_slice(&fh.to_ne_bytes());
        b[16..20].copy_from_slice(&size.to_ne_bytes());
        b[20..24].copy_from_slice(&fuse::READ_LOCKOWNER.to_ne_bytes());
        b.extend_from_slice(data);
        b
    }

    /// Two containers: `app` (enabled, pid 100 inside it) and `side` (not enabled, pid 200).
    fn pod() -> TriggerFs {
        let fs = TriggerFs::new(
            Box::new(|id, pid| (id == "app" && pid == 100) || (id == "side" && pid == 200)),
            Box::new(|pid| pid == 1),
        );
        fs.add("app", true);
        fs.add("side", false);
        fs
    }

    #[test]
    fn only_the_enabled_container_itself_may_open_for_writing() {
        let fs = pod();
        // app's file is 3, side's is 5.
        assert!(open(&fs, 3, libc::O_RDWR, 100).is_ok());
        assert_eq!(
            open(&fs, 3, libc::O_WRONLY, 200),
            Err(libc::EACCES),
            "another container"
        );
        assert_eq!(
            open(&fs, 5, libc::O_RDWR, 100),
            Err(libc::EACCES),
            "not enabled"
        );
        assert!(open(&fs, 5, libc::O_RDONLY, 200).is_ok());
        assert_eq!(
            open(&fs, 3, libc::O_RDONLY, 200),
            Err(libc::EACCES),
            "another container, to read"
        );
        assert_eq!(open(&fs, 2, libc::O_RDONLY, 100), Err(libc::EISDIR));
        assert_eq!(open(&fs, 7, libc::O_RDONLY, 100), Err(libc::ENOENT));
        let o = run(&fs, op::MKNOD, 9, 2, 100, b"x\0");
        assert_eq!(o.replies[0].1, Reply::Err(libc::EACCES));
    }

    #[test]
    fn a_write_starts_a_round_and_readers_get_its_result_then_eof() {
        let fs = pod();
        let w = open(&fs, 3, libc::O_RDWR, 100).unwrap();
        let r = open(&fs, 5, libc::O_RDONLY, 200).unwrap();
        let o = run(&fs, op::WRITE, 2, 3, 100, &io_body(w, 2, b"1\n"));
        assert_eq!(o.start, Some(1));
        assert_eq!(o.replies[0].1, Reply::Ok(fuse::write_out(2)));
        let busy = run(&fs, op::WRITE, 3, 3, 100, &io_body(w, 1, b"1"));
        assert_eq!(busy.replies[0].1, Reply::Err(libc::EBUSY));
        // Both readers park until the round is done.
        assert!(run(&fs, op::READ, 4, 3, 100, &io_body(w, 4096, b""))
            .replies
            .is_empty());
        assert!(run(&fs, op::READ, 5, 5, 200, &io_body(r, 4096, b""))
            .replies
            .is_empty());
        let done = fs.complete(1, true);
        assert_eq!(
            done,
            vec![
                (4, Reply::Ok(b"resume\n".to_vec())),
                (5, Reply::Ok(b"resume\n".to_vec()))
            ]
        );
        let eof = run(&fs, op::READ, 6, 3, 100, &io_body(w, 4096, b""));
        assert_eq!(eof.replies[0].1, Reply::Ok(Vec::new()));
        // A page-cache read (no lock owner: splice, sendfile) is refused.
        let mut body = io_body(w, 4096, b"");
        body[20..24].copy_from_slice(&0u32.to_ne_bytes());
        let paged = run(&fs, op::READ, 6, 3, 100, &body);
        assert_eq!(paged.replies[0].1, Reply::Err(libc::EIO));
        // After its end of file, a handle waits for the next round; a failed one says error.
        let eof = run(&fs, op::READ, 7, 5, 200, &io_body(r, 4096, b""));
        assert_eq!(eof.replies[0].1, Reply::Ok(Vec::new()));
        assert!(run(&fs, op::READ, 7, 5, 200, &io_body(r, 4096, b""))
            .replies
            .is_empty());
        let o = run(&fs, op::WRITE, 8, 3, 100, &io_body(w, 1, b"1"));
        assert_eq!(o.start, Some(2));
        assert_eq!(
            fs.complete(2, false),
            vec![(7, Reply::Ok(b"error\n".to_vec()))]
        );
    }

    #[test]
    fn one_container_cannot_use_up_the_handles_of_another() {
        let fs = pod();
        for _ in 0..MAX_HANDLES {
            open(&fs, 5, libc::O_RDONLY, 200).unwrap();
        }
        assert_eq!(open(&fs, 5, libc::O_RDONLY, 200), Err(libc::EMFILE));
        assert!(
            open(&fs, 3, libc::O_RDWR, 100).is_ok(),
            "the other container"
        );
    }

    #[test]
    fn the_shim_itself_sees_an_empty_tree_and_opens_nothing() {
        let fs = pod();
        let mut body = vec![0u8; 24];
        body[16..20].copy_from_slice(&4096u32.to_ne_bytes());
        let listed = |pid| match &run(&fs, op::READDIR, 2, fuse::ROOT, pid, &body).replies[0].1 {
            Reply::Ok(v) => v.len(),
            Reply::Err(e) => panic!("readdir: {e}"),
        };
        assert!(listed(100) > 0);
        assert_eq!(listed(1), 0, "the shim's own walk");
        assert_eq!(open(&fs, 5, libc::O_RDONLY, 1), Err(libc::EACCES));
    }

    #[test]
    fn bad_writes_are_refused() {
        let fs = pod();
        let r = open(&fs, 3, libc::O_RDONLY, 100).unwrap();
        let o = run(&fs, op::WRITE, 2, 3, 100, &io_body(r, 1, b"1"));
        assert_eq!(o.replies[0].1, Reply::Err(libc::EBADF), "read-only handle");
        let w = open(&fs, 3, libc::O_WRONLY, 100).unwrap();
        for bad in [&b"2"[..], b"", b"11", &[b'1'; 100]] {
            let o = run(
                &fs,
                op::WRITE,
                3,
                3,
                100,
                &io_body(w, bad.len() as u32, bad),
            );
            assert_eq!(o.replies[0].1, Reply::Err(libc::EINVAL), "{bad:?}");
            assert_eq!(o.start, None);
        }
    }

    #[test]
    fn a_dying_reader_is_let_go_and_a_removed_container_loses_its_tree() {
        let fs = pod();
        let r = open(&fs, 5, libc::O_RDONLY, 200).unwrap();
        assert!(run(&fs, op::READ, 4, 5, 200, &io_body(r, 10, b""))
            .replies
            .is_empty());
        assert!(run(&fs, op::INTERRUPT, 5, 0, 200, &4u64.to_ne_bytes()).sweep);
        assert!(fs.sweep(|_| false).is_empty());
        assert_eq!(
            fs.sweep(|pid| pid == 200),
            vec![(4, Reply::Err(libc::EINTR))]
        );
        assert!(!fs.has_parked());
        assert!(run(&fs, op::READ, 6, 5, 200, &io_body(r, 10, b""))
            .replies
            .is_empty());
        assert_eq!(fs.remove("side"), vec![(6, Reply::Err(libc::ENOENT))]);
        let o = run(&fs, op::LOOKUP, 7, fuse::ROOT, 1, b"side\0");
        assert_eq!(o.replies[0].1, Reply::Err(libc::ENOENT));
        let o = run(&fs, op::LOOKUP, 8, fuse::ROOT, 1, b"app\0");
        assert!(matches!(o.replies[0].1, Reply::Ok(_)));
    }
}
