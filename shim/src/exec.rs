//! One exec process of a task as the shim holds it: the engine's exec'd process, its stdio
//! copies, its exit, and its events (TaskExecAdded, TaskExecStarted, TaskExit with its exec id).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted};
use containerd_shim_protos::topics::{TASK_EXEC_ADDED_EVENT_TOPIC, TASK_EXEC_STARTED_EVENT_TOPIC};
use containerd_shim_protos::ttrpc;
use cryo_sandbox::{Container, ExecConfig, ExecProcess};

use crate::errors;
use crate::events::Events;
use crate::exits::{Exit, Exits};
use crate::process::{with, ExitNames, Life};
use crate::stdio::{self, IoControl, StdioPaths};

type TtrpcResult<T> = Result<T, ttrpc::Error>;

pub struct ExecTask {
    pub exec_id: String,
    pub container_id: String,
    pub pid: i32,
    pub stdio: StdioPaths,
    process: Arc<Mutex<ExecProcess>>,
    started: AtomicBool,
    life: Life,
}

impl ExecTask {
    /// Prepare the process in the container (not yet exec'd) and publish TaskExecAdded.
    pub async fn create(
        container_id: &str,
        req: &api::ExecProcessRequest,
        container: &Arc<Mutex<Option<Container>>>,
        exits: &Exits,
        events: Arc<Events>,
    ) -> TtrpcResult<Arc<ExecTask>> {
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                errors::invalid_argument(format!("exec {}: process spec: {e}", req.exec_id))
            })?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (engine_stdio, mut io) =
            stdio::prepare(&paths).map_err(|e| errors::internal(format!("stdio: {e}")))?;
        let mark = exits.mark();
        let c = container.clone();
        let mut proc = tokio::task::spawn_blocking(move || {
            with(&c, |c| {
                c.exec(ExecConfig {
                    process,
                    stdio: engine_stdio,
                })
            })
        })
        .await
        .map_err(errors::internal)??;
        let pid = proc.pid();
        let exit_rx = exits.watch(pid, mark);
        if let Some(master) = proc.take_console() {
            io.attach_console(master, &paths)
                .map_err(|e| errors::internal(format!("console: {e}")))?;
        }
        let names = ExitNames {
            container_id: container_id.to_string(),
            id: req.exec_id.clone(),
            pid: Arc::new(pid.into()),
        };
        let life = Life::follow(exit_rx, io, events.clone(), names, || {});
        events
            .publish(
                TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: container_id.to_string(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(Arc::new(ExecTask {
            exec_id: req.exec_id.clone(),
            container_id: container_id.to_string(),
            pid,
            stdio: paths,
            process: Arc::new(Mutex::new(proc)),
            started: AtomicBool::new(false),
            life,
        }))
    }

    /// Exec the process and publish TaskExecStarted.
    pub async fn start(&self, events: &Events) -> TtrpcResult<u32> {
        let _guard = self.life.start_lock.lock().await;
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(errors::failed_precondition(format!(
                "exec process {} was already started",
                self.exec_id
            )));
        }
        let process = self.process.clone();
        tokio::task::spawn_blocking(move || lock(&process).start())
            .await
            .map_err(errors::internal)?
            .map_err(errors::engine)?;
        events
            .publish(
                TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: self.container_id.clone(),
                    exec_id: self.exec_id.clone(),
                    pid: self.pid as u32,
                    ..Default::default()
                }),
            )
            .await;
        Ok(self.pid as u32)
    }

    pub fn kill(&self, signal: u32) -> TtrpcResult<()> {
        if self.exited().is_some() {
            return Err(errors::not_found(format!(
                "process {} already finished",
                self.exec_id
            )));
        }
        lock(&self.process)
            .kill(signal as i32)
            .map_err(errors::engine)
    }

    pub fn exited(&self) -> Option<Exit> {
        self.life.exited()
    }

    pub async fn wait(&self) -> Exit {
        self.life.wait().await
    }

    pub fn io(&self) -> &IoControl {
        &self.life.io
    }

    pub fn status(&self) -> Status {
        if self.exited().is_some() {
            Status::STOPPED
        } else if self.started.load(Ordering::SeqCst) {
            Status::RUNNING
        } else {
            Status::CREATED
        }
    }

    /// The exit, for Delete: a running process is refused; one never started is killed.
    pub async fn finish(&self) -> TtrpcResult<Exit> {
        if self.status() == Status::RUNNING {
            return Err(errors::failed_precondition(format!(
                "exec process {} is running: kill it before delete",
                self.exec_id
            )));
        }
        if self.exited().is_none() {
            let _ = lock(&self.process).kill(libc::SIGKILL);
        }
        tokio::time::timeout(Duration::from_secs(10), self.wait())
            .await
            .map_err(|_| errors::internal(format!("exec process {} did not exit", self.exec_id)))
    }
}

fn lock(p: &Mutex<ExecProcess>) -> std::sync::MutexGuard<'_, ExecProcess> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}
