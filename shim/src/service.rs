//! The shim's start/delete protocol and the service containerd-shim runs: `start` finds or
//! spawns the shim that serves the container's pod and prints its address; `delete` cleans up
//! after a shim that died; serving creates the Task service.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::MessageField;
use log::{info, warn};
use oci_spec::runtime::Spec;

use crate::annotations;
use crate::bootstrap;
use crate::engine::SandboxEngine;
use crate::events::{self, Containerd};
use crate::exits::Exits;
use crate::task::TaskService;

/// Exit status reported for a container whose shim died (it was killed with it).
const KILLED_STATUS: u32 = 128 + libc::SIGKILL as u32;

pub struct Service {
    id: String,
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Service {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // Nothing may be printed during start: containerd reads our combined output.
        bootstrap::drain_stdin();
        let spec = Spec::load(self.bundle.join("config.json")).ok();
        let grouping = annotations::grouping(spec.as_ref(), &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file(
            self.bundle.join("address"),
            &address,
        )
        .await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = self.bundle.clone();
        let found = tokio::task::spawn_blocking(move || {
            // Pod overlays a dead shim left mounted in a sandbox bundle go first.
            crate::volumes::cleanup_bundle(&bundle);
            crate::trigger::cleanup_bundle(&bundle);
            let found = cryo_sandbox::container::cleanup(&bundle);
            // After the rootfs overlay that used them.
            crate::fs_restore::cleanup_bundle(&bundle);
            found
        })
        .await
        .map_err(|e| Error::Other(format!("cleanup of {}: {e}", self.id)))?
        .map_err(|e| Error::Other(format!("cleanup of {}: {e}", self.id)))?;
        remove_stale_socket(&self.bundle);
        crate::control::remove_stale(&self.id);
        Ok(DeleteResponse {
            pid: found.map_or(0, |s| s.pid as u32),
            exit_status: KILLED_STATUS,
            exited_at: MessageField::some(containerd_shim::util::timestamp()?),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        info!("serving {} in namespace {}", self.id, self.namespace);
        let exits = Exits::start().await;
        if self.namespace.is_empty() {
            warn!("no namespace given; events will not be routed");
        }
        let events = events::forward(Containerd {
            publisher,
            namespace: self.namespace.clone(),
        });
        TaskService::new(Arc::new(SandboxEngine), exits, events, self.exit.clone())
            .with_namespace(&self.namespace)
    }
}

/// The dead shim's socket (named by the bundle's `address` file) is removed once nothing
/// answers on it; a live shim serving the rest of the pod keeps its own.
fn remove_stale_socket(bundle: &std::path::Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let Some(path) = address.trim().strip_prefix("unix://") else {
        return;
    };
    if let Err(e) = std::os::unix::net::UnixStream::connect(path) {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            if let Err(e) = std::fs::remove_file(path) {
                warn!("remove stale shim socket {path}: {e}");
            }
        }
    }
}
