//! A process exec'd into a container as the shim holds it: the engine's process, its stdio
//! copies, its exit, and its events (TaskExecAdded, TaskExecStarted, TaskExit with its exec id).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics::{TASK_EXEC_ADDED_EVENT_TOPIC, TASK_EXEC_STARTED_EVENT_TOPIC};
use cryo_sandbox::ExecConfig;

use crate::engine::EngineExec;
use crate::error::{Error, Result};
use crate::events::EventTx;
use crate::exits::Exits;
use crate::init::EngineHandle;
use crate::lifecycle::{ExitSubject, Lifecycle};
use crate::log_binary::LoggerFor;
use crate::process::{Process, ProcessBase};
use crate::stdio::{self, StdioPaths};

/// One exec'd process.
pub struct ExecProcess {
    base: ProcessBase,
    /// The engine's process: locked only by calls on the blocking pool.
    engine: Arc<tokio::sync::Mutex<Box<dyn EngineExec>>>,
    started: AtomicBool,
}

impl ExecProcess {
    /// Prepare the process in the container (not yet exec'd) and send TaskExecAdded.
    pub async fn create(
        container_id: &str,
        req: &api::ExecProcessRequest,
        container: &EngineHandle,
        namespace: &str,
        exits: &Exits,
        events: &EventTx,
    ) -> Result<ExecProcess> {
        let process = crate::spec::process(&req.exec_id, &req.spec.value)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let owner = LoggerFor {
            container_id,
            namespace,
            exits,
        };
        let (engine_stdio, mut io) = stdio::prepare(&stdio, owner).await?;
        let mark = exits.mark();
        let mut proc = container
            .call(move |c| {
                c.exec(ExecConfig {
                    process,
                    stdio: engine_stdio,
                })
            })
            .await?;
        let pid = proc.pid();
        let exit_rx = exits.watch(pid, mark);
        if let Some(master) = proc.take_console() {
            if let Err(e) = io.attach_console(master, &stdio) {
                let _ = proc.kill(libc::SIGKILL);
                return Err(Error::Internal(format!(
                    "exec {}: console: {e}",
                    req.exec_id
                )));
            }
        }
        let subject = ExitSubject {
            container_id: container_id.to_string(),
            id: req.exec_id.clone(),
        };
        let lifecycle = Lifecycle::follow(exit_rx, io, events.clone(), subject, async {}, async {});
        events.send(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: container_id.to_string(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(ExecProcess {
            base: ProcessBase {
                container_id: container_id.to_string(),
                exec_id: req.exec_id.clone(),
                pid,
                stdio,
                lifecycle,
            },
            engine: Arc::new(tokio::sync::Mutex::new(proc)),
            started: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Process for ExecProcess {
    fn base(&self) -> &ProcessBase {
        &self.base
    }

    fn live_status(&self) -> Status {
        if self.started.load(Ordering::SeqCst) {
            Status::RUNNING
        } else {
            Status::CREATED
        }
    }

    fn check_startable(&self) -> Result<()> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(Error::FailedPrecondition(format!(
                "exec process {} was already started",
                self.base.exec_id
            )));
        }
        Ok(())
    }

    async fn exec_workload(&self) -> Result<()> {
        let mut engine = self.engine.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || engine.start().map_err(Error::from)).await?
    }

    fn started_event(&self) -> (&'static str, Box<dyn MessageDyn>) {
        let event = TaskExecStarted {
            container_id: self.base.container_id.clone(),
            exec_id: self.base.exec_id.clone(),
            pid: self.base.pid as u32,
            ..Default::default()
        };
        (TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event))
    }

    async fn signal(&self, signal: u32, _all: bool) -> Result<()> {
        let engine = self.engine.lock().await;
        engine.kill(signal as i32).map_err(Error::from)
    }
}
