//! A container: create (PID 1 waiting), start, signal, list pids, destroy; and cleanup of a
//! container whose owner died, from its state record.

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::config::ContainerConfig;
use crate::error::Result;
use crate::state::{State, Status};

/// A live container owned by this process.
#[derive(Debug)]
pub struct Container {
    state: State,
    /// Write end of the start pipe: one byte lets PID 1 exec the workload.
    start: Option<OwnedFd>,
    /// Read end of the sync pipe from PID 1: EOF on exec success, a message on failure.
    sync: Option<OwnedFd>,
    /// Master side of the container's pty when created with [`crate::Stdio::Terminal`].
    console: Option<OwnedFd>,
}

impl Container {
    /// Mount the rootfs, create the cgroup, spawn the init helper and PID 1; returns when PID 1
    /// is ready and waits for [`Container::start`]. The workload's executable is resolved here,
    /// so a missing command fails Create. On any error nothing stays mounted or running.
    /// Blocking: call it off the async runtime.
    pub fn create(config: ContainerConfig) -> Result<Container> {
        let _ = config;
        todo!("sandbox engine")
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Host pid of PID 1.
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn status(&self) -> Status {
        self.state.status
    }

    /// The pty master when the container was created with a terminal (taken once).
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Let PID 1 exec the workload; returns once exec happened (or with its error).
    /// Blocking.
    pub fn start(&mut self) -> Result<()> {
        let _ = (&self.start, &self.sync);
        todo!("sandbox engine")
    }

    /// Send `signal` to PID 1, or to every process of the container when `all`.
    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        let _ = (signal, all);
        todo!("sandbox engine")
    }

    /// Host pids of every process in the container (from its cgroup).
    pub fn pids(&self) -> Result<Vec<i32>> {
        todo!("sandbox engine")
    }

    /// The embedder observed PID 1's exit: record it.
    pub fn set_stopped(&mut self) {
        self.state.status = Status::Stopped;
        let _ = self.state.save();
    }

    /// Kill whatever remains, remove the cgroup, unmount the rootfs mounts cryo made, remove the
    /// state record. Blocking.
    pub fn destroy(self) -> Result<()> {
        todo!("sandbox engine")
    }
}

/// Clean up a container whose owner died, from the state record in `bundle`: SIGKILL what is
/// left in its cgroup, remove the cgroup, unmount, remove the record. Returns the record that
/// was found (`None` when there was nothing to clean). Blocking.
pub fn cleanup(bundle: &Path) -> Result<Option<State>> {
    let _ = bundle;
    todo!("sandbox engine")
}
