//! Reading small files ahead of a section's writer, on other threads: opening and reading
//! thousands of small files is dominated by per-file kernel work, which then overlaps with the
//! writer's hashing and writing. Reads stay within a memory budget ahead of the writer and are
//! handed over in entry order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use std::os::fd::BorrowedFd;

use crate::walk::{open_planned, Planned};

/// Files up to this size are read ahead whole; larger ones are streamed by the writer.
pub const SMALL: u64 = 1 << 20;
/// How many bytes may wait for the writer.
const AHEAD: usize = 64 << 20;

/// A read-ahead file: its bytes, and whether it had grown past its planned size.
pub type Read = std::io::Result<(Vec<u8>, bool)>;

pub struct Prefetch<'a> {
    root: BorrowedFd<'a>,
    entries: &'a [Planned],
    state: Mutex<State>,
    /// The writer waits here for its file.
    arrived: Condvar,
    /// Readers wait here for room in the budget.
    room: Condvar,
}

#[derive(Default)]
struct State {
    ready: HashMap<usize, Read>,
    bytes: usize,
    /// The entry the writer is at: its file may always be read, budget or not.
    writer_at: usize,
    /// The file the writer waits for, if it waits.
    writer_waits: Option<usize>,
    /// Readers waiting for room.
    readers_waiting: usize,
    stop: bool,
}

fn is_small(p: &Planned) -> bool {
    p.source.is_some() && p.entry.sparse.is_none() && p.entry.size <= SMALL
}

/// Run `body` with `threads` readers working ahead of it over `entries` (of the tree at
/// `root`).
pub fn with_prefetch<R>(
    root: BorrowedFd,
    entries: &[Planned],
    threads: usize,
    body: impl FnOnce(&Prefetch) -> R,
) -> R {
    let pf = Prefetch {
        root,
        entries,
        state: Mutex::new(State::default()),
        arrived: Condvar::new(),
        room: Condvar::new(),
    };
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| pf.worker(&next));
        }
        let r = body(&pf);
        pf.lock().stop = true;
        pf.room.notify_all();
        r
    })
}

impl Prefetch<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn worker(&self, next: &AtomicUsize) {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = self.entries.get(i) else { return };
            if !is_small(p) {
                continue;
            }
            {
                let mut st = self.lock();
                while !st.stop && st.bytes >= AHEAD && i > st.writer_at {
                    st.readers_waiting += 1;
                    st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.readers_waiting -= 1;
                }
                if st.stop {
                    return;
                }
            }
            let read = read_whole(self.root, p);
            let mut st = self.lock();
            if let Ok((bytes, _)) = &read {
                st.bytes += bytes.len();
            }
            st.ready.insert(i, read);
            if st.writer_waits == Some(i) {
                self.arrived.notify_one();
            }
        }
    }

    /// The writer moved to entry `i`; the file's bytes when it was read ahead.
    pub fn take(&self, i: usize) -> Option<Read> {
        let mut st = self.lock();
        st.writer_at = i;
        if !is_small(&self.entries[i]) {
            if st.readers_waiting > 0 {
                self.room.notify_all();
            }
            return None;
        }
        loop {
            if let Some(r) = st.ready.remove(&i) {
                st.writer_waits = None;
                if let Ok((bytes, _)) = &r {
                    st.bytes -= bytes.len();
                }
                if st.readers_waiting > 0 && st.bytes < AHEAD {
                    self.room.notify_all();
                }
                return Some(r);
            }
            st.writer_waits = Some(i);
            if st.readers_waiting > 0 {
                // The reader of this very file may be waiting for room.
                self.room.notify_all();
            }
            st = self.arrived.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Read a planned file whole (beneath `root`, the tree's root); `true` when it holds more
/// than planned.
fn read_whole(root: BorrowedFd, p: &Planned) -> Read {
    use std::io::Read as _;
    let mut f = open_planned(root, &p.entry.path, p.inode)?;
    // One byte more than planned: a file that grew shows it without another read.
    let want = p.entry.size as usize + 1;
    let mut bytes = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match f.read(&mut bytes[got..])? {
            0 => break,
            n => got += n,
        }
        if got == want - 1 {
            // Regular files return what they have in one read; probe only if it was short.
            break;
        }
    }
    let grew = got == want;
    bytes.truncate(got.min(want - 1));
    Ok((bytes, grew))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// `f` of 10 bytes planned, then replaced by `replace` before it is read: the read must
    /// refuse it, at once.
    fn replaced_before_the_read(replace: impl Fn(&std::path::Path)) -> String {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"0123456789").unwrap();
        std::fs::write(t.path().join("secret"), b"host secret").unwrap();
        let planned = crate::walk::plan(&src).unwrap();
        let f = planned
            .iter()
            .find(|p| p.entry.path == "f")
            .unwrap()
            .clone();
        std::fs::remove_file(src.join("f")).unwrap();
        replace(&src.join("f"));
        let (tx, rx) = std::sync::mpsc::channel();
        let root = std::fs::File::open(&src).unwrap();
        std::thread::spawn(move || {
            let _ = tx.send(read_whole(root.as_fd(), &f).map(|(b, _)| b));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(Ok(bytes)) => panic!("read {:?}", String::from_utf8_lossy(&bytes)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                // Unblock the reader before failing.
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(src.join("f"));
                panic!("the read hung");
            }
        }
    }

    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn a_file_replaced_by_a_fifo_is_refused_without_hanging() {
        let e = replaced_before_the_read(|p| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
        });
        assert!(e.contains("replaced"), "{e}");
    }

    #[test]
    fn a_file_replaced_by_a_symlink_is_not_followed() {
        let e = replaced_before_the_read(|p| {
            std::os::unix::fs::symlink(p.parent().unwrap().parent().unwrap().join("secret"), p)
                .unwrap()
        });
        assert!(e.contains("symlink") || e.contains("replaced"), "{e}");
    }
}
