//! Signals and processes: kill PID 1 or all, list pids, and record PID 1's exit.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use oci_spec::runtime::LinuxNamespaceType;

use super::Container;
use crate::error::{Error, Result};
use crate::state::Status;

impl Container {
    /// Send `signal` to PID 1, or to every process of the container when `all`.
    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        let sig =
            Signal::try_from(signal).map_err(|e| Error::sys(format!("signal {signal}"), e))?;
        if all {
            self.cgroup.signal_all(sig);
            // A frozen process never acts on a SIGKILL: a paused container is thawed so that
            // its processes die, as runc does.
            if sig == Signal::SIGKILL && self.state.status == Status::Paused {
                self.cgroup.thaw()?;
            }
            return Ok(());
        }
        // No PID 1 yet (a restore before Start): pid 0 would signal our own process group.
        if self.state.pid <= 0 {
            return Err(self.wrong_state("signal PID 1 (it does not exist yet)"));
        }
        kill(Pid::from_raw(self.state.pid), sig)
            .map_err(|e| Error::sys(format!("kill {sig} pid {}", self.state.pid), e))
    }

    /// Host pids of every process in the container (from its cgroup).
    pub fn pids(&self) -> Result<Vec<i32>> {
        Ok(self.cgroup.procs())
    }

    /// The embedder saw PID 1 exit. Unless PID 1 was the init of a pid namespace the container
    /// created, the container's other processes do not die with it (the kernel kills a pid
    /// namespace's processes only with that namespace's init: a container with the host's pid
    /// namespace, or one that joined a pod's, keeps them): they are killed here, as runc's shim
    /// does, so that their stdio closes and the exit can be reported at once. Call it before
    /// waiting for the output to drain; idempotent.
    ///
    /// Whatever is left is also thawed: a frozen process never acts on the SIGKILL the kernel
    /// (or this) sent it, and would hold the container's stdio open (a container left frozen by
    /// a pause or a checkpoint's freeze).
    pub fn pid1_exited(&self) {
        if !creates_namespace(&self.spec, LinuxNamespaceType::Pid) {
            self.cgroup.signal_all(Signal::SIGKILL);
        }
        if let Err(e) = self.cgroup.thaw() {
            log::warn!("container {}: thaw after PID 1's exit: {e}", self.state.id);
        }
    }

    /// The embedder observed PID 1's exit: record it (after [`Container::pid1_exited`]'s kill,
    /// made here too for embedders that did not call it).
    pub fn set_stopped(&mut self) {
        self.pid1_exited();
        self.state.status = Status::Stopped;
        self.init = None;
        let _ = self.state.save();
    }
}

/// Whether the container creates a namespace of `typ` of its own (listed without a path).
fn creates_namespace(spec: &oci_spec::runtime::Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == typ && ns.path().is_none()))
}
