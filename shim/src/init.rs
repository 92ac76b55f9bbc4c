//! A container's init process as the shim holds it: the engine's container (behind
//! [`EngineHandle`]), PID 1's stdio copies, its exit, and its events (TaskCreate, TaskStart,
//! TaskOOM, TaskExit). A restore path builds one the same way, from a restored engine container
//! ([`InitProcess::adopt`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskCreate, TaskIO, TaskOOM, TaskStart};
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use cryo_sandbox::state::Status as EngineStatus;
use cryo_sandbox::{ContainerConfig, RestoreOptions, RootfsMount};
use log::{info, warn};
use oci_spec::runtime::Spec;

use crate::engine::{Engine, EngineContainer};
use crate::error::{Error, Result};
use crate::events::EventTx;
use crate::exits::{Exits, Mark};
use crate::lifecycle::{ExitSubject, Lifecycle};
use crate::log_binary::LoggerFor;
use crate::process::{Process, ProcessBase};
use crate::stdio::{self, Io, StdioPaths};

/// Work on a created container before it is reported (given PID 1's pid). Blocking.
pub type Prepared = Box<dyn FnOnce(i32) -> Result<()> + Send>;

/// How a container begins, besides its spec.
#[derive(Default)]
pub struct CreateOptions {
    /// Restore PID 1 from a CRIU checkpoint at Start instead of starting it.
    pub restore: Option<RestoreOptions>,
    /// Runs with PID 1's pid once the container's mounts exist, before TaskCreate.
    pub prepared: Option<Prepared>,
}

/// The engine's container, shared by the init process and the container's exec processes.
///
/// Its lock is a tokio mutex, taken asynchronously and held only by an engine call running on
/// the blocking pool: the runtime thread never waits on it. What State needs (the status) is a
/// snapshot updated after every call.
#[derive(Clone)]
pub struct EngineHandle {
    id: String,
    container: Arc<tokio::sync::Mutex<Option<Box<dyn EngineContainer>>>>,
    status: Arc<Mutex<EngineStatus>>,
}

impl EngineHandle {
    fn new(id: &str, container: Box<dyn EngineContainer>) -> EngineHandle {
        EngineHandle {
            id: id.to_string(),
            status: Arc::new(Mutex::new(container.status())),
            container: Arc::new(tokio::sync::Mutex::new(Some(container))),
        }
    }

    /// Run `f` on the container, off the runtime; NotFound once it was destroyed.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn EngineContainer) -> cryo_sandbox::Result<R> + Send + 'static,
    ) -> Result<R> {
        let mut guard = self.container.clone().lock_owned().await;
        let status = self.status.clone();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || {
            let Some(container) = guard.as_mut() else {
                return Err(Error::NotFound(format!("container {id} was deleted")));
            };
            let result = f(container.as_mut());
            *lock(&status) = container.status();
            result.map_err(Error::from)
        })
        .await?
    }

    /// The engine's status as of its last call.
    pub fn status(&self) -> EngineStatus {
        *lock(&self.status)
    }

    /// Tear the container down (once; later calls do nothing).
    pub async fn destroy(&self) -> Result<()> {
        let mut guard = self.container.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || match guard.take() {
            Some(c) => c.destroy().map_err(Error::from),
            None => Ok(()),
        })
        .await?
    }
}

/// Sends TaskOOM once for each rise of the container's OOM kill count, whoever sees it first:
/// the cgroup's watch, or PID 1's exit (which must not be reported before its OOM).
#[derive(Clone)]
struct OomReporter {
    container_id: String,
    events: EventTx,
    /// The kill count the TaskOOM events sent so far account for.
    covered: Arc<AtomicU64>,
}

impl OomReporter {
    fn report(&self, kills: u64) {
        if self.covered.fetch_max(kills, Ordering::SeqCst) >= kills {
            return;
        }
        info!("container {}: OOM kill", self.container_id);
        self.events.send(
            TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: self.container_id.clone(),
                ..Default::default()
            }),
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// PID 1 of a container.
pub struct InitProcess {
    base: ProcessBase,
    engine: EngineHandle,
    /// For a restore: how Start connects the restored PID 1's exit to the lifecycle.
    restore: Mutex<Option<crate::exits::PendingExit>>,
    /// The restored PID 1 (0 until a restore's Start ran; `base.pid` is 0 then).
    restored_pid: AtomicI32,
    /// For a restore with a terminal: where Start connects the restored pty's master.
    restore_console: Mutex<Option<stdio::PendingConsole>>,
}

impl InitProcess {
    /// Create the container (PID 1 waiting for Start) and send TaskCreate. `prepared`, if
    /// given, runs with PID 1's pid once the container's mounts exist and before TaskCreate
    /// (e.g. filling a restored tmpfs volume); its failure fails the create. On error nothing
    /// of the container is left (mounts, cgroup, processes, state record).
    pub async fn create(
        req: &api::CreateTaskRequest,
        spec: Spec,
        options: CreateOptions,
        engine: Arc<dyn Engine>,
        namespace: &str,
        exits: &Arc<Exits>,
        events: &EventTx,
    ) -> Result<Arc<InitProcess>> {
        let CreateOptions { restore, prepared } = options;
        let bundle = PathBuf::from(&req.bundle);
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
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let owner = LoggerFor {
            container_id: &req.id,
            namespace,
            exits,
        };
        let (engine_stdio, io) = stdio::prepare(&stdio, owner).await?;
        let config = ContainerConfig {
            id: req.id.clone(),
            bundle,
            rootfs,
            rootfs_mounts,
            spec,
            stdio: engine_stdio,
        };
        let mark = exits.mark();
        let container = tokio::task::spawn_blocking(move || -> Result<_> {
            let container = match restore {
                Some(restore) => engine.prepare_restore(config, restore),
                None => engine.create(config),
            }?;
            if let Some(prepared) = prepared {
                if let Err(e) = prepared(container.pid()) {
                    if let Err(d) = container.destroy() {
                        warn!("undo create: {d}");
                    }
                    return Err(e);
                }
            }
            Ok(container)
        })
        .await??;
        let init = InitProcess::adopt(&req.id, container, stdio, io, exits, mark, events).await?;
        info!("created container {} (pid {})", req.id, init.pid());
        events.send(
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
                pid: init.pid() as u32,
                ..Default::default()
            }),
        );
        Ok(init)
    }

    /// Take over an engine container whose PID 1 exists (created, or restored), with the exit
    /// registry's mark from before it was spawned. On error the container is destroyed.
    pub async fn adopt(
        id: &str,
        mut container: Box<dyn EngineContainer>,
        stdio: StdioPaths,
        mut io: Io,
        exits: &Arc<Exits>,
        mark: Mark,
        events: &EventTx,
    ) -> Result<Arc<InitProcess>> {
        let pid = container.pid();
        // A restore's PID 1 exists only after Start: its exit is connected then, and its
        // terminal (the restored pty's master) too.
        let restore_console = (container.is_restore() && stdio.terminal)
            .then(|| io.console_later(&stdio))
            .transpose();
        let (exit_rx, restore) = if container.is_restore() {
            crate::exits::PendingExit::pending(exits)
        } else {
            (exits.watch(pid, mark), None)
        };
        let attached = match (restore_console, container.take_console()) {
            (Err(e), _) => Err(e),
            (Ok(pending), Some(master)) => io.attach_console(master, &stdio).map(|()| pending),
            (Ok(pending), None) => Ok(pending),
        };
        let restore_console = match attached {
            Ok(pending) => pending,
            Err(e) => {
                let destroyed = tokio::task::spawn_blocking(move || container.destroy()).await;
                if let Ok(Err(d)) = destroyed {
                    warn!("container {id}: undo create: {d}");
                }
                return Err(Error::Internal(format!("container {id}: console: {e}")));
            }
        };
        let engine = EngineHandle::new(id, container);
        let oom = OomReporter {
            container_id: id.to_string(),
            events: events.clone(),
            covered: Arc::default(),
        };
        let on_reaped = {
            let engine = engine.clone();
            async move {
                let _ = engine
                    .call(|c| {
                        c.pid1_exited();
                        Ok(())
                    })
                    .await;
            }
        };
        let on_exit = {
            let (engine, oom) = (engine.clone(), oom.clone());
            async move {
                let kills = engine
                    .call(|c| {
                        c.set_stopped();
                        Ok(c.oom_kills())
                    })
                    .await;
                // An OOM kill the watch has not reported yet (it may see it only later) is
                // reported now: TaskOOM comes before the TaskExit it explains.
                if let Ok(kills) = kills {
                    oom.report(kills);
                }
            }
        };
        let subject = ExitSubject {
            container_id: id.to_string(),
            id: id.to_string(),
        };
        let lifecycle = Lifecycle::follow(exit_rx, io, events.clone(), subject, on_reaped, on_exit);
        let init = Arc::new(InitProcess {
            base: ProcessBase {
                container_id: id.to_string(),
                exec_id: String::new(),
                pid,
                stdio,
                lifecycle,
            },
            engine,
            restore: Mutex::new(restore),
            restored_pid: AtomicI32::new(0),
            restore_console: Mutex::new(restore_console),
        });
        init.watch_oom(oom).await;
        Ok(init)
    }

    /// The engine's container (for exec, pause, update, metrics).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Send TaskOOM for every OOM kill episode in the container's cgroup.
    async fn watch_oom(&self, oom: OomReporter) {
        let on_oom = Box::new(move |kills| oom.report(kills));
        if let Err(e) = self.engine.call(move |c| c.on_oom(on_oom)).await {
            warn!("container {}: no OOM events: {e}", self.base.container_id);
        }
    }

    /// Tear the container down for Delete: refused while it runs; PID 1 of a container never
    /// started is killed first. Returns PID 1's exit.
    pub async fn destroy(&self) -> Result<crate::exits::Exit> {
        // A restore never started has no PID 1: its exit is known to be none, its terminal
        // never comes.
        drop(lock(&self.restore).take());
        drop(lock(&self.restore_console).take());
        let exit = self.exit_for_delete().await?;
        self.engine.destroy().await?;
        Ok(exit)
    }
}

#[async_trait]
impl Process for InitProcess {
    fn base(&self) -> &ProcessBase {
        &self.base
    }

    fn live_status(&self) -> Status {
        match self.engine.status() {
            EngineStatus::Created => Status::CREATED,
            EngineStatus::Running => Status::RUNNING,
            EngineStatus::Paused => Status::PAUSED,
            EngineStatus::Stopped => Status::STOPPED,
        }
    }

    fn check_startable(&self) -> Result<()> {
        match self.status() {
            Status::CREATED => Ok(()),
            other => Err(Error::FailedPrecondition(format!(
                "container {} is {other:?}: cannot start",
                self.base.container_id
            ))),
        }
    }

    fn pid(&self) -> i32 {
        match self.restored_pid.load(Ordering::Relaxed) {
            0 => self.base.pid,
            restored => restored,
        }
    }

    async fn exec_workload(&self) -> Result<()> {
        let restore = lock(&self.restore).take();
        let mark = restore.as_ref().map(|r| r.mark());
        self.engine.call(|c| c.start()).await?;
        if let (Some(restore), Some(mark)) = (restore, mark) {
            let (pid, master) = self
                .engine
                .call(|c| Ok((c.pid(), c.take_console())))
                .await?;
            self.restored_pid.store(pid, Ordering::Relaxed);
            restore.connect(pid, mark);
            let pending = lock(&self.restore_console).take();
            if let (Some(pending), Some(master)) = (pending, master) {
                // The restored process runs: a failure here fails Start, which kills it.
                pending.attach(master).map_err(|e| {
                    Error::Internal(format!(
                        "container {}: restored terminal: {e}",
                        self.base.container_id
                    ))
                })?;
            }
        }
        Ok(())
    }

    fn started_event(&self) -> (&'static str, Box<dyn MessageDyn>) {
        let event = TaskStart {
            container_id: self.base.container_id.clone(),
            pid: self.pid() as u32,
            ..Default::default()
        };
        (TASK_START_EVENT_TOPIC, Box::new(event))
    }

    async fn signal(&self, signal: u32, all: bool) -> Result<()> {
        self.engine.call(move |c| c.kill(signal as i32, all)).await
    }
}

/// Where the rootfs is: `<bundle>/rootfs` when containerd gave mounts, else the spec's root
/// path (relative to the bundle).
fn rootfs_path(bundle: &Path, spec: &Spec, has_mounts: bool) -> Result<PathBuf> {
    if has_mounts {
        return Ok(bundle.join("rootfs"));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("spec has no root".into()))?;
    let path = root.path();
    Ok(if path.is_absolute() {
        path.clone()
    } else {
        bundle.join(path)
    })
}
