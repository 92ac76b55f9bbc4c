//! The life every process of the shim shares, the container's init and its exec'd processes
//! alike: its exit as it becomes known (after its stdio drained), the lock that orders its
//! start before its exit, and the handle on its stdio.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics::TASK_EXIT_EVENT_TOPIC;
use log::info;
use tokio::sync::{oneshot, watch};

use crate::events::EventTx;
use crate::exits::Exit;
use crate::stdio::{Io, IoControl};

/// How long an exit waits for its stdio copies to drain.
const IO_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Who a process is, for its TaskExit event (whose pid is the exit's own: a restored PID 1
/// has none before Start).
pub struct ExitSubject {
    pub container_id: String,
    /// The exec id, or the container id for the init process (as runc's shim sends it).
    pub id: String,
}

/// A process's exit, start lock and stdio handle.
pub struct Lifecycle {
    exit: watch::Receiver<Option<Exit>>,
    /// Held while Start runs so that TaskExit never precedes TaskStart.
    start_lock: Arc<tokio::sync::Mutex<()>>,
    io: IoControl,
}

impl Lifecycle {
    /// Follow a process to its exit: run `on_reaped` (what must not wait for the output, e.g.
    /// killing what shares the process's stdio), drain its stdio, run `on_exit`, make the exit
    /// known, and send TaskExit (after TaskStart if a start is under way, after whatever
    /// `on_exit` sent).
    pub fn follow(
        exit_rx: oneshot::Receiver<Exit>,
        mut io: Io,
        events: EventTx,
        subject: ExitSubject,
        on_reaped: impl Future<Output = ()> + Send + 'static,
        on_exit: impl Future<Output = ()> + Send + 'static,
    ) -> Lifecycle {
        let (exit_tx, exit) = watch::channel(None);
        let start_lock = Arc::new(tokio::sync::Mutex::new(()));
        let control = io.control();
        let lock = start_lock.clone();
        tokio::spawn(async move {
            let Ok(exit) = exit_rx.await else { return };
            on_reaped.await;
            io.wait_outputs(IO_DRAIN_LIMIT).await;
            // Nothing reads stdin any more: release its FIFO and copy.
            io.control().stop_stdin();
            let _started = lock.lock().await;
            on_exit.await;
            let _ = exit_tx.send(Some(exit.clone()));
            info!("process {} exited with {}", subject.id, exit.status);
            events.send(
                TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: subject.container_id,
                    id: subject.id,
                    pid: exit.pid as u32,
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.at),
                    ..Default::default()
                }),
            );
        });
        Lifecycle {
            exit,
            start_lock,
            io: control,
        }
    }

    /// The exit, once known.
    pub fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Wait for the exit (known only after stdio drained).
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The exit path is gone without an exit: report what State would say.
                return Exit {
                    pid: 0,
                    status: 255,
                    at: containerd_shim::util::timestamp().unwrap_or_default(),
                };
            }
        }
    }

    /// The lock a Start holds (the exit is published only after it is released).
    pub async fn start_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.start_lock.lock().await
    }

    /// The handle for CloseIO and ResizePty.
    pub fn io(&self) -> &IoControl {
        &self.io
    }
}
