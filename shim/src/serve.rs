//! The shim's serving mode (the process `start` spawns, with `-socket`): the containerd-shim
//! crate's serving loop, with cryo's own socket ([`crate::socket`]: mode 0600, other users
//! refused) — the crate binds its listener itself with the umask's mode and serves any peer.
//! The log is cryo's ([`crate::logging`]).
//! Order as in the crate: signals and subreaper, the service, the logger, the publisher, the
//! Task service, the socket; then closing stdout tells `start` that the shim serves; SIGCHLD
//! reaps children into the crate's exit monitor until the service signals exit.

use std::sync::Arc;

use containerd_shim::asynchronous::monitor::monitor_notify_by_pid;
use containerd_shim::asynchronous::Shim;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags};
use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::r#async::Server;
use log::{debug, error, info, warn};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::signal::unix::{signal, SignalKind};

use crate::service::Service;
use crate::socket::{self, Bound};

/// Whether `flags` ask for serving mode (neither `start` nor `delete`).
pub fn requested(flags: &Flags) -> bool {
    !matches!(flags.action.as_str(), "start" | "delete")
}

/// Serve until the service signals exit.
pub async fn run(runtime_id: &str, flags: Flags) -> Result<(), Error> {
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|e| Error::InvalidArgument(format!("TTRPC_ADDRESS: {e}")))?;
    if flags.socket.is_empty() {
        return Err(Error::InvalidArgument("Shim socket cannot be empty".into()));
    }
    let signals = Signals::new().map_err(|e| Error::Other(format!("signal setup: {e}")))?;
    set_subreaper()?;
    let mut config = Config::default();
    let mut shim = Service::new(runtime_id, &flags, &mut config).await;
    if !config.no_setup_logger {
        crate::logging::init(flags.debug)
            .map_err(|e| Error::Other(format!("open the shim log: {e}")))?;
    }
    let publisher = RemotePublisher::new(&ttrpc_address).await?;
    let task = shim.create_task_service(publisher).await;
    let pod = task.pod();
    let task: Box<dyn Task + Send + Sync> = Box::new(task);
    let service = create_task(Arc::from(task));
    let socket_path = flags.socket.clone();
    let bound = tokio::task::spawn_blocking(move || socket::bind(&socket_path))
        .await
        .map_err(|e| Error::Other(format!("bind {}: {e}", flags.socket)))?
        .map_err(|e| Error::Other(format!("bind {}: {e}", flags.socket)))?;
    let listener = match bound {
        Bound::Listener(listener) => listener,
        Bound::Served => {
            // Another shim serves this pod's address: containerd talks to it.
            containerd_shim::asynchronous::util::write_str_to_file("address", &flags.socket)
                .await?;
            signal_server_started();
            return Ok(());
        }
    };
    let listener = socket::serve(listener)
        .map_err(|e| Error::Other(format!("serve {}: {e}", flags.socket)))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(service);
    server.start().await?;
    // The `cryo` CLI's socket (removed when `_control` drops, as the shim leaves).
    // A pod still runs without it (only `cryo` needs it): its failure is logged.
    let _control = crate::control::serve(&flags.id, pod)
        .inspect_err(|e| error!("serve the control socket: {e}"))
        .ok();
    signal_server_started();
    info!("Shim successfully started, waiting for exit signal...");
    tokio::spawn(signals.handle());
    shim.wait().await;
    info!("Shutting down shim instance");
    server.shutdown().await.unwrap_or_default();
    remove_socket(&flags.socket);
    Ok(())
}

/// The shim's own children (helpers, and orphans it adopts as subreaper) are its to reap.
fn set_subreaper() -> Result<(), Error> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes this process's reaping role.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(Error::Other(format!(
            "set child subreaper: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// `start` reads the spawned shim's stdout until it closes: pointing stdout at stderr (the
/// log) says the shim serves.
fn signal_server_started() {
    // SAFETY: dup2 on the process's own standard descriptors.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        error!("close the start pipe: {}", std::io::Error::last_os_error());
    }
}

/// The socket goes with the shim (only if it still is a socket).
fn remove_socket(address: &str) {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false);
    if is_socket {
        if let Err(e) = std::fs::remove_file(path) {
            warn!("failed to remove socket {path}: {e}");
        }
    }
}

/// The signals the serving shim handles: SIGTERM and SIGINT are logged (containerd stops a
/// shim through Shutdown), SIGPIPE is ignored, SIGCHLD reaps.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    pipe: tokio::signal::unix::Signal,
    child: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            pipe: signal(SignalKind::pipe())?,
            child: signal(SignalKind::child())?,
        })
    }

    async fn handle(mut self) {
        loop {
            tokio::select! {
                Some(()) = self.term.recv() => debug!("received SIGTERM"),
                Some(()) = self.int.recv() => debug!("received SIGINT"),
                Some(()) = self.pipe.recv() => {}
                Some(()) = self.child.recv() => reap().await,
                else => return,
            }
        }
    }
}

/// Reap every exited child and hand its status to the crate's exit monitor (which the Task
/// service and the engine's helpers subscribe to).
async fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) => {
                if let Err(e) = monitor_notify_by_pid(pid.as_raw(), status).await {
                    error!("failed to send exit event {e}");
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                debug!("child {pid} terminated({sig})");
                if let Err(e) = monitor_notify_by_pid(pid.as_raw(), 128 + sig as i32).await {
                    error!("failed to send signal event {e}");
                }
            }
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Err(e) => {
                warn!("reaping children: {e}");
                return;
            }
            Ok(_) => {}
        }
    }
}
