//! The Task ttrpc service: translates containerd's task requests into calls on the pod's
//! containers and their processes ([`crate::process::Process`]) and answers with containerd's
//! types; errors become ttrpc codes in one place ([`crate::error`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

use crate::container::Container;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::EventTx;
use crate::exits::Exits;
use crate::init::{CreateOptions, InitProcess};
use crate::pod::Pod;
use crate::process::{self, Process};

/// How long Shutdown waits for queued events (TaskDelete) to reach containerd.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

pub struct TaskService {
    pod: Arc<Pod>,
    engine: Arc<dyn Engine>,
    exits: Arc<Exits>,
    events: EventTx,
    /// Tells the shim's main loop to leave (after the last container's Shutdown).
    shutdown: Arc<ExitSignal>,
    /// The shim's containerd namespace (a log URI's logger is told it).
    namespace: String,
}

impl TaskService {
    pub fn new(
        engine: Arc<dyn Engine>,
        exits: Arc<Exits>,
        events: EventTx,
        shutdown: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            pod: Arc::default(),
            engine,
            exits,
            events,
            shutdown,
            namespace: String::new(),
        }
    }

    /// The containerd namespace the shim serves.
    pub fn with_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    /// The pod, shared with the control socket ([`crate::control`]).
    pub fn pod(&self) -> Arc<Pod> {
        self.pod.clone()
    }

    async fn create_container(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        info!("create {} (bundle {})", req.id, req.bundle);
        // The id is taken before anything is mounted or spawned; a failure below frees it.
        let reservation = self.pod.reserve(&req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = crate::spec::load(&bundle)?;
        // A filesystem checkpoint to start from (dev.cryo.fs-restore.image-path): the rootfs
        // section's layer goes on top of the image's before anything is mounted.
        let fs_restore = self.pod.fs_restore.for_container(&req.id, &spec).await?;
        let fs_restore = fs_restore.map(Arc::new);
        // A failure below unmounts the lazy layers mounted for this container.
        let creating = self.pod.fs_restore.creating(&req.id);
        let restored_req = match fs_restore.clone() {
            Some(r) => {
                let req = req.clone();
                tokio::task::spawn_blocking(move || r.rootfs(&req)).await??
            }
            None => None,
        };
        let req = restored_req.as_ref().unwrap_or(req);
        // Pod volumes (dev.cryo.spec.mount.* annotations): mounts rewritten, pod overlays mounted.
        let spec = self
            .pod
            .volumes
            .prepare(
                &bundle,
                &req.id,
                spec,
                fs_restore.clone(),
                !req.checkpoint.is_empty(),
            )
            .await?;
        // The fscheckpoint trigger (dev.cryo.fscheckpoint.* annotations): /run/cryo added.
        let spec = crate::trigger::prepare(&self.pod, &bundle, &req.id, spec).await?;
        let created = async {
            let restore = crate::checkpoint::restore_options(req)?;
            // Restored tmpfs volumes are filled once the container's mounts exist.
            let prepared = fs_restore
                .filter(|r| r.has_tmpfs())
                .map(|r| Box::new(move |pid| r.fill_tmpfs(pid)) as crate::init::Prepared);
            InitProcess::create(
                req,
                spec,
                CreateOptions { restore, prepared },
                self.engine.clone(),
                &self.namespace,
                &self.exits,
                &self.events,
            )
            .await
        }
        .await;
        let init = match created {
            Ok(init) => init,
            Err(e) => {
                // Nothing of the trigger stays for a container that was not created.
                self.pod.trigger.container_removed(&req.id).await;
                return Err(e);
            }
        };
        let pid = init.pid() as u32;
        creating.created();
        reservation.fill(Arc::new(Container::new(&req.id, &req.bundle, init)));
        crate::release_memory();
        Ok(pid)
    }

    async fn delete_container(&self, container: &Container) -> Result<api::DeleteResponse> {
        let exit = container.init.destroy().await?;
        self.pod.remove(&container.id).await;
        crate::release_memory();
        info!("deleted container {}", container.id);
        let pid = container.init.pid() as u32;
        self.events.send(
            TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: container.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at.clone()),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }
}

#[async_trait]
impl TaskApi for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.create_container(&req).await?;
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
        let process = self.pod.get(&req.id)?.get_process(&req.exec_id)?;
        let pid = process.start(&self.events).await?;
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
        let container = self.pod.get(&req.id)?;
        let process = container.get_process(&req.exec_id)?;
        Ok(process::state_response(process.as_ref(), &container.bundle))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let process = self.pod.get(&req.id)?.get_process(&req.exec_id)?;
        process.kill(req.signal, req.all).await?;
        Ok(api::Empty::default())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let process = self.pod.get(&req.id)?.get_process(&req.exec_id)?;
        let exit = process.lifecycle().wait().await;
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
        let container = self.pod.get(&req.id)?;
        let pids = container.init.engine().call(|c| c.pids()).await?;
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
        let container = self.pod.get(&req.id)?;
        if req.exec_id.is_empty() {
            return Ok(self.delete_container(&container).await?);
        }
        let (pid, exit) = container.delete_exec(&req.exec_id).await?;
        Ok(api::DeleteResponse {
            pid: pid as u32,
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
        let container = self.pod.get(&req.id)?;
        container
            .exec(&req, &self.namespace, &self.exits, &self.events)
            .await?;
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let process = self.pod.get(&req.id)?.get_process(&req.exec_id)?;
        let (width, height) = (req.width as u16, req.height as u16);
        process
            .lifecycle()
            .io()
            .resize(width, height)
            .map_err(|e| Error::FailedPrecondition(format!("resize {}: {e}", process.name())))?;
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let process = self.pod.get(&req.id)?.get_process(&req.exec_id)?;
        if req.stdin {
            process.lifecycle().io().close_stdin();
        }
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let container = self.pod.get(&req.id)?;
        container.init.engine().call(|c| c.pause()).await?;
        self.events.send(
            TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        let container = self.pod.get(&req.id)?;
        container.init.engine().call(|c| c.resume()).await?;
        self.events.send(
            TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let container = self.pod.get(&req.id)?;
        let resources = crate::spec::resources(&req.id, &req.resources.value)?;
        container
            .init
            .engine()
            .call(move |c| c.update(&resources))
            .await?;
        Ok(api::Empty::default())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let container = self.pod.get(&req.id)?;
        let metrics = container.init.engine().call(|c| Ok(c.metrics())).await?;
        let any = containerd_shim::util::convert_to_any(metrics)
            .map_err(|e| Error::Internal(format!("stats {}: {e}", req.id)))?;
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
        let task_pid = self.pod.get(&req.id).map_or(0, |c| c.init.pid() as u32);
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
        let container = self.pod.get(&req.id)?;
        crate::checkpoint::checkpoint(&container.init, &req, &self.events).await?;
        Ok(api::Empty::default())
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // One shim serves a pod: it leaves only when its last container is gone, once the
        // events queued before (TaskDelete) are out.
        if self.pod.is_empty() {
            info!("last container deleted: shutting down");
            self.events.flush(FLUSH_LIMIT).await;
            self.shutdown.signal();
        }
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
