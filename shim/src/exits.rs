//! Exits of the shim's children as containerd-shim's reaper reports them, matched to the
//! processes the shim owns by pid.
//!
//! The reaper may report a pid before the shim has learnt it (a process that dies as soon as it
//! is spawned). Such exits wait here, stamped with a sequence number; a watcher registered with
//! the mark taken *before* spawning claims them, and older ones (a recycled pid) are never
//! matched.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::oneshot;

/// How many unclaimed exits are kept (helpers and strays); older ones are dropped.
const UNCLAIMED_MAX: usize = 1024;

/// A process's end: whose (its pid), its status as containerd expects it (128+signal when
/// signalled) and when.
#[derive(Debug, Clone)]
pub struct Exit {
    pub pid: i32,
    pub status: u32,
    pub at: Timestamp,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    unclaimed: VecDeque<(u64, i32, Exit)>,
    watchers: HashMap<i32, oneshot::Sender<Exit>>,
}

/// The exit registry.
#[derive(Default)]
pub struct Exits {
    inner: Mutex<Inner>,
}

/// Mark taken before spawning: exits recorded after it may belong to the new process.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

impl Exits {
    /// Subscribe to the reaper now (before anything is spawned) and feed the registry.
    pub async fn start() -> Arc<Exits> {
        let exits = Arc::new(Exits::default());
        let mut sub = monitor_subscribe(Topic::Pid)
            .await
            .expect("subscribing to the process monitor cannot fail");
        let feed = exits.clone();
        tokio::spawn(async move {
            while let Some(event) = sub.rx.recv().await {
                if let Subject::Pid(pid) = event.subject {
                    feed.record(pid, event.exit_code);
                }
            }
        });
        exits
    }

    pub fn mark(&self) -> Mark {
        Mark(self.lock().seq)
    }

    /// Learn `pid`'s exit; `since` is the mark taken before it was spawned.
    pub fn watch(&self, pid: i32, since: Mark) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if let Some(i) = inner
            .unclaimed
            .iter()
            .position(|(seq, p, _)| *p == pid && *seq > since.0)
        {
            let (_, _, exit) = inner.unclaimed.remove(i).expect("index is valid");
            let _ = tx.send(exit);
        } else {
            inner.watchers.insert(pid, tx);
        }
        rx
    }

    /// Note `pid`'s exit (the reaper's report).
    pub(crate) fn record(&self, pid: i32, code: i32) {
        let exit = Exit {
            pid,
            status: code as u32,
            at: containerd_shim::util::timestamp().unwrap_or_default(),
        };
        let mut inner = self.lock();
        inner.seq += 1;
        if let Some(tx) = inner.watchers.remove(&pid) {
            let _ = tx.send(exit);
            return;
        }
        let seq = inner.seq;
        inner.unclaimed.push_back((seq, pid, exit));
        if inner.unclaimed.len() > UNCLAIMED_MAX {
            inner.unclaimed.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An exit to watch for a process that does not exist yet (a restored PID 1, whose pid is
/// known only once the restore ran at Start): the receiver is handed out now, the watch is
/// connected later.
pub struct PendingExit {
    exits: Arc<Exits>,
    tx: oneshot::Sender<Exit>,
}

impl PendingExit {
    /// The receiver to follow, and the connection still to make.
    pub fn pending(exits: &Arc<Exits>) -> (oneshot::Receiver<Exit>, Option<PendingExit>) {
        let (tx, rx) = oneshot::channel();
        (
            rx,
            Some(PendingExit {
                exits: exits.clone(),
                tx,
            }),
        )
    }

    /// Taken before the process is spawned: exits after it may be its.
    pub fn mark(&self) -> Mark {
        self.exits.mark()
    }

    /// The process is `pid`: its exit goes to the receiver.
    pub fn connect(self, pid: i32, mark: Mark) {
        let rx = self.exits.watch(pid, mark);
        let tx = self.tx;
        tokio::spawn(async move {
            if let Ok(exit) = rx.await {
                let _ = tx.send(exit);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_before_the_watch_is_claimed() {
        let exits = Exits::default();
        let mark = exits.mark();
        exits.record(42, 3);
        let mut rx = exits.watch(42, mark);
        assert_eq!(rx.try_recv().unwrap().status, 3);
    }

    #[test]
    fn an_exit_older_than_the_mark_is_not_claimed() {
        let exits = Exits::default();
        exits.record(42, 1);
        let mark = exits.mark();
        let mut rx = exits.watch(42, mark);
        assert!(rx.try_recv().is_err());
        exits.record(42, 137);
        assert_eq!(rx.try_recv().unwrap().status, 137);
    }
}
