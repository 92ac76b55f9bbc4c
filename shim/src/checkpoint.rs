//! The shim's side of checkpoint and restore: Task API `Checkpoint` (its options, the event)
//! and the restore a `CreateTaskRequest.checkpoint` asks for; the engine does the work
//! ([`cryo_sandbox::Container::checkpoint`], [`cryo_sandbox::Container::prepare_restore`]).
//!
//! CRIU is found through the environment variable [`CRIU_ENV`] (a path to the binary) or else
//! as `criu` on the shim's `PATH` (containerd's). Without it, Checkpoint and a restore answer
//! FailedPrecondition naming what is missing; nothing else needs it.

use std::path::PathBuf;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::TaskCheckpointed;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::CheckpointOptions as RuncCheckpointOptions;
use containerd_shim_protos::topics::TASK_CHECKPOINTED_EVENT_TOPIC;
use cryo_sandbox::{CheckpointOptions, RestoreOptions};
use log::info;

use crate::error::{Error, Result};
use crate::events::EventTx;
use crate::init::InitProcess;

/// Environment variable naming the CRIU binary (default: `criu` on `PATH`).
pub const CRIU_ENV: &str = "CRYO_CRIU";

/// The only checkpoint options type accepted (what containerd's clients send to runc).
const RUNC_CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";

/// The CRIU binary, or FailedPrecondition naming what is missing.
fn criu_binary() -> Result<PathBuf> {
    let configured = std::env::var_os(CRIU_ENV).map(PathBuf::from);
    let path = std::env::var("PATH").ok();
    cryo_sandbox::criu::locate(configured.as_deref(), path.as_deref()).map_err(|e| {
        let hint = if configured.is_some() {
            format!(" (set by {CRIU_ENV})")
        } else {
            format!(" (or name it with {CRIU_ENV})")
        };
        Error::FailedPrecondition(format!("{e}{hint}"))
    })
}

/// The engine's options from a Checkpoint request: none leaves the task running into
/// `req.path`; runc's `CheckpointOptions` is honoured field by field; any other type is refused
/// by name.
fn checkpoint_options(req: &api::CheckpointTaskRequest) -> Result<CheckpointOptions> {
    let mut opts = CheckpointOptions {
        image_dir: PathBuf::from(&req.path),
        ..Default::default()
    };
    if let Some(any) = req.options.as_ref() {
        let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
        if type_name != RUNC_CHECKPOINT_OPTIONS {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {}: options of type {:?} are not supported (only {RUNC_CHECKPOINT_OPTIONS})",
                req.id, any.type_url
            )));
        }
        let o = RuncCheckpointOptions::parse_from_bytes(&any.value)
            .map_err(|e| Error::InvalidArgument(format!("checkpoint {}: options: {e}", req.id)))?;
        if !o.empty_namespaces.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {}: options.empty_namespaces {:?}: not supported",
                req.id, o.empty_namespaces
            )));
        }
        if !o.cgroups_mode.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {}: options.cgroups_mode {:?}: not supported (cryo restores into the \
                 new container's cgroup)",
                req.id, o.cgroups_mode
            )));
        }
        opts.exit = o.exit;
        opts.tcp_established = o.open_tcp;
        opts.ext_unix_sk = o.external_unix_sockets;
        opts.shell_job = o.terminal;
        opts.file_locks = o.file_locks;
        if !o.image_path.is_empty() {
            opts.image_dir = PathBuf::from(o.image_path);
        }
        if !o.work_path.is_empty() {
            opts.work_dir = Some(PathBuf::from(o.work_path));
        }
    }
    if opts.image_dir.as_os_str().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {}: no path to write the checkpoint to",
            req.id
        )));
    }
    if !opts.image_dir.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {}: path {} is not absolute",
            req.id,
            opts.image_dir.display()
        )));
    }
    Ok(opts)
}

/// Task API Checkpoint: dump the task with CRIU, publish TaskCheckpointed. With `exit` the
/// task's processes are killed after the dump and its TaskExit follows as for any exit.
pub async fn checkpoint(
    init: &InitProcess,
    req: &api::CheckpointTaskRequest,
    events: &EventTx,
) -> Result<()> {
    let mut opts = checkpoint_options(req)?;
    opts.criu = criu_binary()?;
    let image_dir = opts.image_dir.display().to_string();
    let started = std::time::Instant::now();
    init.engine().call(move |c| c.checkpoint(&opts)).await?;
    info!(
        "checkpointed {} into {image_dir} in {:.2}s",
        req.id,
        started.elapsed().as_secs_f64()
    );
    events.send(
        TASK_CHECKPOINTED_EVENT_TOPIC,
        Box::new(TaskCheckpointed {
            container_id: req.id.clone(),
            checkpoint: image_dir,
            ..Default::default()
        }),
    );
    Ok(())
}

/// The restore a Create asks for (`checkpoint` names the directory containerd unpacked), or
/// `None` for a plain create.
pub fn restore_options(req: &api::CreateTaskRequest) -> Result<Option<RestoreOptions>> {
    if req.checkpoint.is_empty() {
        return Ok(None);
    }
    let image_dir = PathBuf::from(&req.checkpoint);
    if !image_dir.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "create {}: checkpoint {} is not an absolute path",
            req.id, req.checkpoint
        )));
    }
    Ok(Some(RestoreOptions {
        criu: criu_binary()?,
        image_dir,
        work_dir: None,
    }))
}
