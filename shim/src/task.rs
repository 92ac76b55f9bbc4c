//! The Task ttrpc service: translates containerd's task requests into calls on the shim's
//! tasks ([`crate::process::Task`]) and answers with containerd's types and error codes.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api::{self, ProcessInfo};
use containerd_shim_protos::events::task::{TaskDelete, TaskPaused, TaskResumed};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task as TaskApi;
use containerd_shim_protos::topics::{
    TASK_DELETE_EVENT_TOPIC, TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC,
};
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use log::info;

use crate::errors;
use crate::events::Events;
use crate::exits::Exits;
use crate::pod::Pod;
use crate::process::Task;

pub struct TaskService {
    pod: Pod,
    exits: Arc<Exits>,
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(exits: Arc<Exits>, events: Events, exit: Arc<ExitSignal>) -> Self {
        TaskService {
            pod: Pod::default(),
            exits,
            events: Arc::new(events),
            exit,
        }
    }
}

#[async_trait]
impl TaskApi for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        info!("create {} (bundle {})", req.id, req.bundle);
        if self.pod.contains(&req.id) {
            return Err(errors::already_exists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let task = Task::create(&req, &self.exits, self.events.clone()).await?;
        let pid = task.pid() as u32;
        self.pod.insert(task)?;
        crate::release_memory();
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let task = self.pod.get(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            task.start(&self.events).await?
        } else {
            task.exec_process(&req.exec_id)?.start(&self.events).await?
        };
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let task = self.pod.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let exec = task.exec_process(&req.exec_id)?;
            let exit = exec.exited();
            return Ok(api::StateResponse {
                id: exec.exec_id.clone(),
                bundle: task.bundle.clone(),
                pid: exec.pid as u32,
                status: exec.status().into(),
                stdin: exec.stdio.stdin.clone(),
                stdout: exec.stdio.stdout.clone(),
                stderr: exec.stdio.stderr.clone(),
                terminal: exec.stdio.terminal,
                exit_status: exit.as_ref().map_or(0, |e| e.status),
                exited_at: MessageField::from_option(exit.map(|e| e.at)),
                exec_id: exec.exec_id.clone(),
                ..Default::default()
            });
        }
        let exit = task.exited();
        Ok(api::StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.clone(),
            pid: task.pid() as u32,
            status: task.status().into(),
            stdin: task.stdio.stdin.clone(),
            stdout: task.stdio.stdout.clone(),
            stderr: task.stdio.stderr.clone(),
            terminal: task.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.status),
            exited_at: MessageField::from_option(exit.map(|e| e.at)),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let task = self.pod.get(&req.id)?;
        if req.exec_id.is_empty() {
            task.kill(req.signal, req.all)?;
        } else {
            task.exec_process(&req.exec_id)?.kill(req.signal)?;
        }
        Ok(api::Empty::default())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let task = self.pod.get(&req.id)?;
        let exit = if req.exec_id.is_empty() {
            task.wait().await
        } else {
            task.exec_process(&req.exec_id)?.wait().await
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let pids = self.pod.get(&req.id)?.pids()?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let task = self.pod.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let exec = task.exec_process(&req.exec_id)?;
            let exit = exec.finish().await?;
            task.remove_exec(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid: exec.pid as u32,
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }
        let exit = task.destroy().await?;
        self.pod.remove(&req.id);
        crate::release_memory();
        info!("deleted container {}", req.id);
        self.events
            .publish(
                TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid: task.pid() as u32,
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.at.clone()),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::DeleteResponse {
            pid: task.pid() as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        info!("exec {} in {}", req.exec_id, req.id);
        let task = self.pod.get(&req.id)?;
        task.exec(&req, &self.exits, self.events.clone()).await?;
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let task = self.pod.get(&req.id)?;
        let (width, height) = (req.width as u16, req.height as u16);
        let result = if req.exec_id.is_empty() {
            task.io().resize(width, height)
        } else {
            task.exec_process(&req.exec_id)?.io().resize(width, height)
        };
        result.map_err(|e| errors::failed_precondition(format!("resize {}: {e}", req.id)))?;
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let task = self.pod.get(&req.id)?;
        if req.stdin {
            if req.exec_id.is_empty() {
                task.io().close_stdin();
            } else {
                task.exec_process(&req.exec_id)?.io().close_stdin();
            }
        }
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.pod.get(&req.id)?.pause()?;
        self.events
            .publish(
                TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::Empty::default())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.pod.get(&req.id)?.resume()?;
        self.events
            .publish(
                TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::Empty::default())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let task = self.pod.get(&req.id)?;
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(|e| {
                errors::invalid_argument(format!("update {}: resources: {e}", req.id))
            })?;
        task.update(&resources)?;
        Ok(api::Empty::default())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let metrics = self.pod.get(&req.id)?.metrics()?;
        let any = containerd_shim::util::convert_to_any(metrics)
            .map_err(|e| errors::internal(format!("stats {}: {e}", req.id)))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.pod.get(&req.id).map(|t| t.pid() as u32).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        info!("checkpoint {} into {}", req.id, req.path);
        let task = self.pod.get(&req.id)?;
        crate::checkpoint::checkpoint(&task, &req, &self.events).await?;
        Ok(api::Empty::default())
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // One shim serves a pod: it leaves only when its last task is gone.
        if self.pod.is_empty() {
            info!("last task deleted: shutting down");
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
