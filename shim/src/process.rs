//! One task as the shim holds it: the engine's container, its stdio copies, its exit, and the
//! events of its life (TaskCreate, TaskStart, TaskExit, in that order).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskCreate, TaskExit, TaskIO, TaskOOM, TaskStart};
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim_protos::ttrpc;
use cryo_sandbox::state::Status as EngineStatus;
use cryo_sandbox::{Container, ContainerConfig, RootfsMount};
use log::{info, warn};
use oci_spec::runtime::Spec;
use tokio::sync::watch;

use crate::errors;
use crate::events::Events;
use crate::exec::ExecTask;
use crate::exits::{Exit, Exits};
use crate::metrics;
use crate::stdio::{self, Io, IoControl, StdioPaths};

/// How long an exit waits for its stdio copies to drain.
const IO_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The shim's record of one container: its init process and the processes exec'd into it.
pub struct Task {
    pub id: String,
    pub bundle: String,
    /// PID 1's host pid; 0 for a restore until Start ran it.
    pid: Pid,
    pub stdio: StdioPaths,
    /// The engine's container; `None` once destroyed.
    container: Arc<Mutex<Option<Container>>>,
    life: Life,
    execs: Mutex<HashMap<String, Arc<ExecTask>>>,
    /// For a restore: how Start connects the restored PID 1's exit to `life`.
    restored_exit: Mutex<Option<crate::checkpoint::RestoredExit>>,
}

/// A pid learnt once (at create, or at start for a restore) and read by requests and events.
pub type Pid = Arc<AtomicI32>;

/// What every process of a task (init or exec) shares: its exit as it becomes known, the lock
/// that orders its start before its exit, and the handle on its stdio.
pub struct Life {
    exit: watch::Receiver<Option<Exit>>,
    /// Held while Start runs so that TaskExit never precedes TaskStart.
    pub start_lock: Arc<tokio::sync::Mutex<()>>,
    pub io: IoControl,
}

/// Who a process is, for its TaskExit event.
pub struct ExitNames {
    pub container_id: String,
    /// The exec id, or the container id for the init process (as the runc shim sends it).
    pub id: String,
    pub pid: Pid,
}

impl Life {
    /// Follow a process to its exit: drain its stdio, run `on_exit`, make the exit known, and
    /// publish TaskExit (after TaskStart if a start is under way).
    pub fn follow(
        exit_rx: tokio::sync::oneshot::Receiver<Exit>,
        mut io: Io,
        events: Arc<Events>,
        names: ExitNames,
        on_exit: impl FnOnce() + Send + 'static,
    ) -> Life {
        let (exit_tx, exit) = watch::channel(None);
        let start_lock = Arc::new(tokio::sync::Mutex::new(()));
        let control = io.control();
        let lock = start_lock.clone();
        tokio::spawn(async move {
            let Ok(exit) = exit_rx.await else { return };
            io.wait_outputs(IO_DRAIN_LIMIT).await;
            let _started = lock.lock().await;
            on_exit();
            let _ = exit_tx.send(Some(exit.clone()));
            info!("process {} exited with {}", names.id, exit.status);
            events
                .publish(
                    TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: names.container_id,
                        id: names.id,
                        pid: names.pid.load(Ordering::Relaxed) as u32,
                        exit_status: exit.status,
                        exited_at: MessageField::some(exit.at),
                        ..Default::default()
                    }),
                )
                .await;
        });
        Life {
            exit,
            start_lock,
            io: control,
        }
    }

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
                    status: 255,
                    at: containerd_shim::util::timestamp().unwrap_or_default(),
                };
            }
        }
    }
}

type TtrpcResult<T> = Result<T, ttrpc::Error>;

impl Task {
    /// Create the container (PID 1 waiting for Start) and publish TaskCreate.
    pub async fn create(
        req: &api::CreateTaskRequest,
        exits: &Arc<Exits>,
        events: Arc<Events>,
    ) -> TtrpcResult<Arc<Task>> {
        let restore = crate::checkpoint::restore_options(req)?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = load_spec(&bundle)?;
        // Pod volumes (dev.cryo.spec.mount.* annotations): mounts rewritten, pod overlays mounted.
        let spec = crate::volumes::prepare(&bundle, &req.id, spec).await?;
        let rootfs_mounts: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fstype: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let rootfs = rootfs_path(&bundle, &spec, !rootfs_mounts.is_empty())?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (engine_stdio, mut io) =
            stdio::prepare(&paths).map_err(|e| errors::internal(format!("stdio: {e}")))?;
        let config = ContainerConfig {
            id: req.id.clone(),
            bundle: bundle.clone(),
            rootfs,
            rootfs_mounts,
            spec,
            stdio: engine_stdio,
        };

        let mark = exits.mark();
        let mut container = tokio::task::spawn_blocking(move || match restore {
            Some(restore) => Container::prepare_restore(config, restore),
            None => Container::create(config),
        })
        .await
        .map_err(errors::internal)?
        .map_err(errors::engine)?;
        let pid = container.pid();
        let (exit_rx, restored_exit) = if container.is_restore() {
            crate::checkpoint::RestoredExit::pending(exits)
        } else {
            (exits.watch(pid, mark), None)
        };
        let pid: Pid = Arc::new(AtomicI32::new(pid));
        if let Some(master) = container.take_console() {
            io.attach_console(master, &paths)
                .map_err(|e| errors::internal(format!("console: {e}")))?;
        }
        info!("created container {} (pid {pid:?})", req.id);

        let container = Arc::new(Mutex::new(Some(container)));
        let on_exit = {
            let container = container.clone();
            move || {
                if let Some(c) = lock(&container).as_mut() {
                    c.set_stopped();
                }
            }
        };
        let names = ExitNames {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid: pid.clone(),
        };
        let life = Life::follow(exit_rx, io, events.clone(), names, on_exit);
        let task = Arc::new(Task {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            pid,
            stdio: paths,
            container,
            life,
            execs: Mutex::new(HashMap::new()),
            restored_exit: Mutex::new(restored_exit),
        });
        task.watch_oom(events.clone());

        events
            .publish(
                TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    checkpoint: req.checkpoint.clone(),
                    pid: task.pid() as u32,
                    ..Default::default()
                }),
            )
            .await;
        Ok(task)
    }

    /// Let PID 1 exec the workload and publish TaskStart.
    pub async fn start(&self, events: &Events) -> TtrpcResult<u32> {
        let _guard = self.life.start_lock.lock().await;
        match self.engine_status() {
            EngineStatus::Created => {}
            other => {
                return Err(errors::failed_precondition(format!(
                    "container {} is {other:?}: cannot start",
                    self.id
                )))
            }
        }
        let restored_exit = lock_restored(&self.restored_exit).take();
        let mark = restored_exit.as_ref().map(|r| r.mark());
        let container = self.container.clone();
        tokio::task::spawn_blocking(move || with(&container, |c| c.start()))
            .await
            .map_err(errors::internal)??;
        if let (Some(restored_exit), Some(mark)) = (restored_exit, mark) {
            let pid = with(&self.container, |c| Ok(c.pid()))?;
            self.pid.store(pid, Ordering::Relaxed);
            restored_exit.connect(pid, mark);
        }
        events
            .publish(
                TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: self.id.clone(),
                    pid: self.pid() as u32,
                    ..Default::default()
                }),
            )
            .await;
        Ok(self.pid() as u32)
    }

    /// PID 1's host pid (0 for a restore before Start).
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// The engine's container (checkpoint works on it directly).
    pub fn container(&self) -> &Arc<Mutex<Option<Container>>> {
        &self.container
    }

    pub fn kill(&self, signal: u32, all: bool) -> TtrpcResult<()> {
        if self.exited().is_some() && !all {
            return Err(errors::not_found(format!(
                "process {} already finished",
                self.id
            )));
        }
        with(&self.container, |c| c.kill(signal as i32, all))
    }

    pub fn pids(&self) -> TtrpcResult<Vec<i32>> {
        with(&self.container, |c| c.pids())
    }

    pub fn exited(&self) -> Option<Exit> {
        self.life.exited()
    }

    /// Wait for the exit (published only after stdio drained).
    pub async fn wait(&self) -> Exit {
        self.life.wait().await
    }

    pub fn io(&self) -> &IoControl {
        &self.life.io
    }

    /// Create an exec process in the running container (TaskExecAdded is published).
    pub async fn exec(
        &self,
        req: &api::ExecProcessRequest,
        exits: &Exits,
        events: Arc<Events>,
    ) -> TtrpcResult<()> {
        let taken =
            || errors::already_exists(format!("exec process {} already exists", req.exec_id));
        if lock_execs(&self.execs).contains_key(&req.exec_id) {
            return Err(taken());
        }
        let exec = ExecTask::create(&self.id, req, &self.container, exits, events).await?;
        let mut execs = lock_execs(&self.execs);
        if execs.contains_key(&req.exec_id) {
            return Err(taken());
        }
        execs.insert(req.exec_id.clone(), exec);
        Ok(())
    }

    /// An exec process by id.
    pub fn exec_process(&self, exec_id: &str) -> TtrpcResult<Arc<ExecTask>> {
        lock_execs(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| errors::not_found(format!("process {exec_id} not found")))
    }

    /// Forget an exec process (its Delete).
    pub fn remove_exec(&self, exec_id: &str) {
        lock_execs(&self.execs).remove(exec_id);
    }

    pub fn pause(&self) -> TtrpcResult<()> {
        with(&self.container, |c| c.pause())
    }

    pub fn resume(&self) -> TtrpcResult<()> {
        with(&self.container, |c| c.resume())
    }

    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> TtrpcResult<()> {
        with(&self.container, |c| c.update(resources))
    }

    /// The container's cgroup figures in containerd's metrics type.
    pub fn metrics(&self) -> TtrpcResult<Box<dyn MessageDyn>> {
        with(&self.container, |c| {
            Ok(metrics::to_metrics(&c.cgroup().stats(), c.cgroup().v2()))
        })
    }

    /// Publish TaskOOM for every OOM kill in the container's cgroup.
    fn watch_oom(&self, events: Arc<Events>) {
        let (tx, mut arx) = tokio::sync::mpsc::unbounded_channel();
        if let Err(e) = with(&self.container, |c| {
            c.cgroup().on_oom(move || {
                let _ = tx.send(());
            })
        }) {
            warn!("container {}: no OOM events: {e:?}", self.id);
            return;
        }
        let id = self.id.clone();
        tokio::spawn(async move {
            while arx.recv().await.is_some() {
                info!("container {id}: OOM kill");
                events
                    .publish(
                        TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id: id.clone(),
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        });
    }

    pub fn status(&self) -> Status {
        if self.exited().is_some() {
            return Status::STOPPED;
        }
        match self.engine_status() {
            EngineStatus::Created => Status::CREATED,
            EngineStatus::Running => Status::RUNNING,
            EngineStatus::Paused => Status::PAUSED,
            EngineStatus::Stopped => Status::STOPPED,
        }
    }

    fn engine_status(&self) -> EngineStatus {
        lock(&self.container)
            .as_ref()
            .map_or(EngineStatus::Stopped, |c| c.status())
    }

    /// Tear the container down. A running task is refused; a created one is killed first.
    pub async fn destroy(&self) -> TtrpcResult<Exit> {
        if self.status() == Status::RUNNING || self.status() == Status::PAUSED {
            return Err(errors::failed_precondition(format!(
                "container {} is running: kill it before delete",
                self.id
            )));
        }
        // A restore never started has no PID 1: its exit is known to be none.
        drop(lock_restored(&self.restored_exit).take());
        if self.exited().is_none() {
            // Created but never started: PID 1 waits; kill it and take its exit.
            self.kill(libc::SIGKILL as u32, true)?;
        }
        let exit = tokio::time::timeout(Duration::from_secs(10), self.wait())
            .await
            .map_err(|_| errors::internal(format!("container {} did not exit", self.id)))?;
        let container = self.container.clone();
        tokio::task::spawn_blocking(move || match lock(&container).take() {
            Some(c) => c.destroy(),
            None => Ok(()),
        })
        .await
        .map_err(errors::internal)?
        .map_err(errors::engine)?;
        Ok(exit)
    }
}

fn lock(c: &Mutex<Option<Container>>) -> std::sync::MutexGuard<'_, Option<Container>> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_restored(
    m: &Mutex<Option<crate::checkpoint::RestoredExit>>,
) -> std::sync::MutexGuard<'_, Option<crate::checkpoint::RestoredExit>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_execs(
    m: &Mutex<HashMap<String, Arc<ExecTask>>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ExecTask>>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run an engine call on a container that must still exist.
pub fn with<R>(
    c: &Mutex<Option<Container>>,
    f: impl FnOnce(&mut Container) -> cryo_sandbox::Result<R>,
) -> TtrpcResult<R> {
    match lock(c).as_mut() {
        Some(container) => f(container).map_err(errors::engine),
        None => Err(errors::not_found("container was deleted")),
    }
}

/// The bundle's config.json, or an error naming what is wrong with it.
fn load_spec(bundle: &Path) -> TtrpcResult<Spec> {
    let path = bundle.join("config.json");
    cryo_sandbox::spec::load(&path).map_err(|e| errors::invalid_argument(e.to_string()))
}

/// Where the rootfs is: `<bundle>/rootfs` when containerd gave mounts, else the spec's root
/// path (relative to the bundle).
fn rootfs_path(bundle: &Path, spec: &Spec, has_mounts: bool) -> TtrpcResult<PathBuf> {
    if has_mounts {
        return Ok(bundle.join("rootfs"));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| errors::invalid_argument("spec has no root"))?;
    let path = root.path();
    Ok(if path.is_absolute() {
        path.clone()
    } else {
        bundle.join(path)
    })
}
