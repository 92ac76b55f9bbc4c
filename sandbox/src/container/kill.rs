//! Signals and processes: kill PID 1 or all, list pids, and record PID 1's exit.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use oci_spec::runtime::LinuxNamespaceType;

use super::{own_namespace, Container};
use crate::error::{Error, Result};
use crate::state::Status;

impl Container {
    /// Send `signal` to PID 1, or to every process of the container when `all`.
    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        let sig =
            Signal::try_from(signal).map_err(|e| Error::sys(format!("signal {signal}"), e))?;
        if all {
            self.cgroup.signal_all(sig);
            return Ok(());
        }
        kill(Pid::from_raw(self.state.pid), sig)
            .map_err(|e| Error::sys(format!("kill {sig} pid {}", self.state.pid), e))
    }

    /// Host pids of every process in the container (from its cgroup).
    pub fn pids(&self) -> Result<Vec<i32>> {
        Ok(self.cgroup.procs())
    }

    /// The embedder observed PID 1's exit: record it. Without a pid namespace of its own, the
    /// container's other processes do not die with PID 1: they are killed here, as runc's shim
    /// does, so that the container is really stopped.
    pub fn set_stopped(&mut self) {
        if !own_namespace(&self.spec, LinuxNamespaceType::Pid) {
            self.cgroup.signal_all(Signal::SIGKILL);
        }
        self.state.status = Status::Stopped;
        self.init = None;
        let _ = self.state.save();
    }
}
