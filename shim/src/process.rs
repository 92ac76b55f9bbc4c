//! The one process model of the shim: a [`Process`] is a container's init process
//! ([`crate::init::InitProcess`]) or a process exec'd into it ([`crate::exec::ExecProcess`]).
//! The rules both follow live here once: start (and what a failed start leaves), kill of a
//! process that is gone, the exit Delete waits for, and the StateResponse.

use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api::{StateResponse, Status};
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use log::warn;

use crate::error::{Error, Result};
use crate::events::EventTx;
use crate::exits::Exit;
use crate::lifecycle::Lifecycle;
use crate::stdio::StdioPaths;

/// How long Delete waits for a killed process's exit; also how long a failed Start waits for
/// the process it leaves behind to be gone.
pub const EXIT_WAIT: Duration = Duration::from_secs(10);

/// What every process is: who, where its stdio goes, and its lifecycle.
pub struct ProcessBase {
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    /// Host pid.
    pub pid: i32,
    pub stdio: StdioPaths,
    pub lifecycle: Lifecycle,
}

/// What the Task service asks of any process.
#[async_trait]
pub trait Process: Send + Sync {
    fn base(&self) -> &ProcessBase;
    /// Where it is while its exit is not known.
    fn live_status(&self) -> Status;

    /// Refuse a Start that does not fit the process's state.
    fn check_startable(&self) -> Result<()>;
    /// Let the process exec (blocking engine work runs off the runtime).
    async fn exec_workload(&self) -> Result<()>;
    /// TaskStart or TaskExecStarted.
    fn started_event(&self) -> (&'static str, Box<dyn MessageDyn>);
    /// Send `signal` (to every process of the container when `all`, for init).
    async fn signal(&self, signal: u32, all: bool) -> Result<()>;

    /// The exec id; empty for the init process.
    fn exec_id(&self) -> &str {
        &self.base().exec_id
    }

    /// The container it belongs to.
    fn container_id(&self) -> &str {
        &self.base().container_id
    }

    /// Host pid.
    fn pid(&self) -> i32 {
        self.base().pid
    }

    fn stdio(&self) -> &StdioPaths {
        &self.base().stdio
    }

    fn lifecycle(&self) -> &Lifecycle {
        &self.base().lifecycle
    }

    /// Where it is in its life: STOPPED once its exit is known.
    fn status(&self) -> Status {
        if self.lifecycle().exited().is_some() {
            return Status::STOPPED;
        }
        self.live_status()
    }

    /// What containerd calls this process in messages.
    fn name(&self) -> String {
        if self.exec_id().is_empty() {
            format!("container {}", self.container_id())
        } else {
            format!("exec process {}", self.exec_id())
        }
    }

    /// Start the process and send its started event. A process that fails to start is killed
    /// and its exit is known before the error is returned: State says STOPPED, so Delete works
    /// and nothing is left running.
    async fn start(&self, events: &EventTx) -> Result<u32> {
        let guard = self.lifecycle().start_guard().await;
        self.check_startable()?;
        match self.exec_workload().await {
            Ok(()) => {
                let (topic, event) = self.started_event();
                events.send(topic, event);
                Ok(self.pid() as u32)
            }
            Err(e) => {
                // The exit is published only once the start lock is free.
                drop(guard);
                if let Err(k) = self.signal(libc::SIGKILL as u32, true).await {
                    warn!("{} failed to start; kill: {k}", self.name());
                }
                if tokio::time::timeout(EXIT_WAIT, self.lifecycle().wait())
                    .await
                    .is_err()
                {
                    warn!("{} failed to start and did not exit", self.name());
                }
                Err(e)
            }
        }
    }

    /// Signal the process; one already gone is NotFound (unless `all`, as runc's shim).
    async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        if self.lifecycle().exited().is_some() && !all {
            return Err(Error::NotFound(format!("{} already finished", self.name())));
        }
        self.signal(signal, all).await
    }

    /// The exit Delete reports: a running process is refused; one never started is killed.
    async fn exit_for_delete(&self) -> Result<Exit> {
        let status = self.status();
        if status == Status::RUNNING || status == Status::PAUSED {
            return Err(Error::FailedPrecondition(format!(
                "{} is running: kill it before delete",
                self.name()
            )));
        }
        if self.lifecycle().exited().is_none() {
            if let Err(e) = self.signal(libc::SIGKILL as u32, true).await {
                warn!("{}: kill before delete: {e}", self.name());
            }
        }
        let exit = tokio::time::timeout(EXIT_WAIT, self.lifecycle().wait())
            .await
            .map_err(|_| Error::Internal(format!("{} did not exit", self.name())))?;
        // A log URI's logger goes with the process, as in runc's shim.
        self.lifecycle().io().stop_logger().await;
        Ok(exit)
    }
}

/// The State answer for `process` of the container in `bundle`.
pub fn state_response(process: &dyn Process, bundle: &str) -> StateResponse {
    let exit = process.lifecycle().exited();
    let stdio = process.stdio();
    let id = if process.exec_id().is_empty() {
        process.container_id()
    } else {
        process.exec_id()
    };
    StateResponse {
        id: id.to_string(),
        bundle: bundle.to_string(),
        pid: process.pid() as u32,
        status: process.status().into(),
        stdin: stdio.stdin.clone(),
        stdout: stdio.stdout.clone(),
        stderr: stdio.stderr.clone(),
        terminal: stdio.terminal,
        exit_status: exit.as_ref().map_or(0, |e| e.status),
        exited_at: MessageField::from_option(exit.map(|e| e.at)),
        exec_id: process.exec_id().to_string(),
        ..Default::default()
    }
}
