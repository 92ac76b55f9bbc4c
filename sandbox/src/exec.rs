//! A process exec'd into a running container: it joins every namespace of the container's
//! PID 1 and its cgroup, runs with its own process spec, and is signalled by pid. The embedder
//! reaps it like any other child (the engine never waits).

use std::os::fd::OwnedFd;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::Stdio;
use crate::error::{Error, Result};
use crate::launch::Launched;

/// What to run: the OCI process (args, env, cwd, user, capabilities, terminal) and its stdio.
#[derive(Debug)]
pub struct ExecConfig {
    pub process: oci_spec::runtime::Process,
    pub stdio: Stdio,
}

/// An exec'd process: created (waiting), then started.
#[derive(Debug)]
pub struct ExecProcess {
    pid: i32,
    init: Option<Launched>,
    console: Option<OwnedFd>,
}

impl ExecProcess {
    pub(crate) fn new(mut launched: Launched) -> ExecProcess {
        ExecProcess {
            pid: launched.pid,
            console: launched.console.take(),
            init: Some(launched),
        }
    }

    /// Host pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pty master when the process has a terminal (taken once).
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Exec the process; returns once it did. Blocking.
    pub fn start(&mut self) -> Result<()> {
        match self.init.take() {
            Some(init) => init.start(),
            None => Err(Error::WrongState {
                id: self.pid.to_string(),
                status: "started".into(),
                op: "start".into(),
            }),
        }
    }

    pub fn kill(&self, signal: i32) -> Result<()> {
        let sig =
            Signal::try_from(signal).map_err(|e| Error::sys(format!("signal {signal}"), e))?;
        kill(Pid::from_raw(self.pid), sig)
            .map_err(|e| Error::sys(format!("kill {sig} pid {}", self.pid), e))
    }
}
