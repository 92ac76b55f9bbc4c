//! One task as the shim holds it: the engine's container, its stdio copies, its exit, and the
//! events of its life (TaskCreate, TaskStart, TaskExit, in that order).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskCreate, TaskExit, TaskIO, TaskStart};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim_protos::ttrpc;
use cryo_sandbox::state::Status as EngineStatus;
use cryo_sandbox::{Container, ContainerConfig, RootfsMount};
use log::info;
use oci_spec::runtime::Spec;
use tokio::sync::watch;

use crate::errors;
use crate::events::Events;
use crate::exits::{Exit, Exits};
use crate::stdio::{self, StdioPaths};

/// How long an exit waits for its stdio copies to drain.
const IO_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The shim's record of one container (its init process).
pub struct Task {
    pub id: String,
    pub bundle: String,
    pub pid: i32,
    pub stdio: StdioPaths,
    /// The engine's container; `None` once destroyed.
    container: Arc<Mutex<Option<Container>>>,
    exit: watch::Receiver<Option<Exit>>,
    /// Held while Start runs so that TaskExit never precedes TaskStart.
    start_lock: Arc<tokio::sync::Mutex<()>>,
}

type TtrpcResult<T> = Result<T, ttrpc::Error>;

impl Task {
    /// Create the container (PID 1 waiting for Start) and publish TaskCreate.
    pub async fn create(
        req: &api::CreateTaskRequest,
        exits: &Exits,
        events: Arc<Events>,
    ) -> TtrpcResult<Arc<Task>> {
        if !req.checkpoint.is_empty() {
            return Err(errors::unimplemented(
                "restore from a checkpoint is not supported yet",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = load_spec(&bundle)?;
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
        let mut container = tokio::task::spawn_blocking(move || Container::create(config))
            .await
            .map_err(errors::internal)?
            .map_err(errors::engine)?;
        let pid = container.pid();
        let exit_rx = exits.watch(pid, mark);
        if let Some(master) = container.take_console() {
            io.attach_console(master, &paths)
                .map_err(|e| errors::internal(format!("console: {e}")))?;
        }
        info!("created container {} (pid {pid})", req.id);

        let (exit_tx, exit) = watch::channel(None);
        let task = Arc::new(Task {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            pid,
            stdio: paths,
            container: Arc::new(Mutex::new(Some(container))),
            exit,
            start_lock: Arc::new(tokio::sync::Mutex::new(())),
        });

        // The exit path: drain stdio, record, then publish (after TaskStart if one runs).
        let (container, start_lock, id, ev) = (
            task.container.clone(),
            task.start_lock.clone(),
            task.id.clone(),
            events.clone(),
        );
        tokio::spawn(async move {
            let Ok(exit) = exit_rx.await else { return };
            io.wait_outputs(IO_DRAIN_LIMIT).await;
            let _started = start_lock.lock().await;
            if let Some(c) = lock(&container).as_mut() {
                c.set_stopped();
            }
            let _ = exit_tx.send(Some(exit.clone()));
            info!("container {id} exited with {}", exit.status);
            ev.publish(
                TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id.clone(),
                    id,
                    pid: pid as u32,
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.at),
                    ..Default::default()
                }),
            )
            .await;
        });

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
                    pid: pid as u32,
                    ..Default::default()
                }),
            )
            .await;
        Ok(task)
    }

    /// Let PID 1 exec the workload and publish TaskStart.
    pub async fn start(&self, events: &Events) -> TtrpcResult<u32> {
        let _guard = self.start_lock.lock().await;
        match self.engine_status() {
            EngineStatus::Created => {}
            other => {
                return Err(errors::failed_precondition(format!(
                    "container {} is {other:?}: cannot start",
                    self.id
                )))
            }
        }
        let container = self.container.clone();
        tokio::task::spawn_blocking(move || with(&container, |c| c.start()))
            .await
            .map_err(errors::internal)??;
        events
            .publish(
                TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: self.id.clone(),
                    pid: self.pid as u32,
                    ..Default::default()
                }),
            )
            .await;
        Ok(self.pid as u32)
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
        self.exit.borrow().clone()
    }

    /// Wait for the exit (published only after stdio drained).
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

/// Run an engine call on a container that must still exist.
fn with<R>(
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
    Spec::load(&path).map_err(|e| errors::invalid_argument(format!("{}: {e}", path.display())))
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
