//! The seam between the shim and the sandbox engine: what the shim asks of a container and of
//! an exec'd process, as traits the engine's types implement ([`SandboxEngine`]). The Task service is
//! driven through them, so unit tests can run its state machine in-process on a test engine
//! (as runwasi's `Instance`); behaviour with the real engine is tested through containerd.
//!
//! Every call may block (it talks to the init helper, writes the state record, walks the
//! cgroup): callers run them off the async runtime.

use std::os::fd::OwnedFd;

use containerd_shim_protos::protobuf::MessageDyn;
use cryo_sandbox::state::Status;
use cryo_sandbox::{CheckpointOptions, ContainerConfig, ExecConfig, RestoreOptions, Result};
use oci_spec::runtime::LinuxResources;

use crate::metrics;

/// Creates containers.
pub trait Engine: Send + Sync + 'static {
    /// Mount the rootfs, create the cgroup, spawn PID 1 waiting for start. Nothing is left
    /// behind on error.
    fn create(&self, config: ContainerConfig) -> Result<Box<dyn EngineContainer>>;
    /// Build the container for a restore of a checkpoint (no process until start, which
    /// restores). Nothing is left behind on error.
    fn prepare_restore(
        &self,
        _config: ContainerConfig,
        _options: RestoreOptions,
    ) -> Result<Box<dyn EngineContainer>> {
        Err(cryo_sandbox::Error::Init(
            "this engine cannot restore checkpoints".into(),
        ))
    }
}

/// One container of the engine.
pub trait EngineContainer: Send + 'static {
    /// Host pid of PID 1.
    fn pid(&self) -> i32;
    fn status(&self) -> Status;
    /// The pty master when created with a terminal (taken once).
    fn take_console(&mut self) -> Option<OwnedFd>;
    /// Let PID 1 exec the workload.
    fn start(&mut self) -> Result<()>;
    /// Prepare a process in the running container; it execs on [`EngineExec::start`].
    fn exec(&self, config: ExecConfig) -> Result<Box<dyn EngineExec>>;
    fn pause(&mut self) -> Result<()>;
    fn resume(&mut self) -> Result<()>;
    fn update(&mut self, resources: &LinuxResources) -> Result<()>;
    /// Signal PID 1, or every process of the container when `all`.
    fn kill(&self, signal: i32, all: bool) -> Result<()>;
    fn pids(&self) -> Result<Vec<i32>>;
    /// The cgroup's figures as containerd's metrics message.
    fn metrics(&self) -> Box<dyn MessageDyn>;
    /// Call `f` on every OOM kill episode in the container, with the OOM kill count then.
    fn on_oom(&self, f: Box<dyn Fn(u64) + Send + 'static>) -> Result<()>;
    /// How many processes of the container the OOM killer has killed so far.
    fn oom_kills(&self) -> u64;
    /// PID 1 was reaped: kill what must not outlive it (before its output drains).
    fn pid1_exited(&self);
    /// PID 1 was seen to exit.
    fn set_stopped(&mut self);
    /// Kill what remains, remove the cgroup, unmount, forget.
    fn destroy(self: Box<Self>) -> Result<()>;
    /// Dump the container with CRIU (see [`cryo_sandbox::Container::checkpoint`]).
    fn checkpoint(&mut self, _options: &CheckpointOptions) -> Result<()> {
        Err(cryo_sandbox::Error::Init(
            "this engine cannot checkpoint".into(),
        ))
    }
    /// Whether start restores a checkpoint (PID 1 does not exist before).
    fn is_restore(&self) -> bool {
        false
    }
}

/// One process exec'd into a container.
pub trait EngineExec: Send + 'static {
    fn pid(&self) -> i32;
    fn take_console(&mut self) -> Option<OwnedFd>;
    fn start(&mut self) -> Result<()>;
    fn kill(&self, signal: i32) -> Result<()>;
}

/// The real engine: `cryo_sandbox`.
pub struct SandboxEngine;

impl Engine for SandboxEngine {
    fn create(&self, config: ContainerConfig) -> Result<Box<dyn EngineContainer>> {
        Ok(Box::new(cryo_sandbox::Container::create(config)?))
    }
    fn prepare_restore(
        &self,
        config: ContainerConfig,
        options: RestoreOptions,
    ) -> Result<Box<dyn EngineContainer>> {
        Ok(Box::new(cryo_sandbox::Container::prepare_restore(
            config, options,
        )?))
    }
}

impl EngineContainer for cryo_sandbox::Container {
    fn pid(&self) -> i32 {
        cryo_sandbox::Container::pid(self)
    }
    fn status(&self) -> Status {
        cryo_sandbox::Container::status(self)
    }
    fn take_console(&mut self) -> Option<OwnedFd> {
        cryo_sandbox::Container::take_console(self)
    }
    fn start(&mut self) -> Result<()> {
        cryo_sandbox::Container::start(self)
    }
    fn exec(&self, config: ExecConfig) -> Result<Box<dyn EngineExec>> {
        Ok(Box::new(cryo_sandbox::Container::exec(self, config)?))
    }
    fn pause(&mut self) -> Result<()> {
        cryo_sandbox::Container::pause(self)
    }
    fn resume(&mut self) -> Result<()> {
        cryo_sandbox::Container::resume(self)
    }
    fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        cryo_sandbox::Container::update(self, resources)
    }
    fn kill(&self, signal: i32, all: bool) -> Result<()> {
        cryo_sandbox::Container::kill(self, signal, all)
    }
    fn pids(&self) -> Result<Vec<i32>> {
        cryo_sandbox::Container::pids(self)
    }
    fn metrics(&self) -> Box<dyn MessageDyn> {
        metrics::to_metrics(&self.cgroup().stats(), self.cgroup().v2())
    }
    fn on_oom(&self, f: Box<dyn Fn(u64) + Send + 'static>) -> Result<()> {
        self.cgroup().on_oom(f)
    }
    fn oom_kills(&self) -> u64 {
        self.cgroup().oom_kills()
    }
    fn pid1_exited(&self) {
        cryo_sandbox::Container::pid1_exited(self)
    }
    fn set_stopped(&mut self) {
        cryo_sandbox::Container::set_stopped(self)
    }
    fn destroy(self: Box<Self>) -> Result<()> {
        cryo_sandbox::Container::destroy(*self)
    }
    fn checkpoint(&mut self, options: &CheckpointOptions) -> Result<()> {
        cryo_sandbox::Container::checkpoint(self, options).map(drop)
    }
    fn is_restore(&self) -> bool {
        cryo_sandbox::Container::is_restore(self)
    }
}

impl EngineExec for cryo_sandbox::ExecProcess {
    fn pid(&self) -> i32 {
        cryo_sandbox::ExecProcess::pid(self)
    }
    fn take_console(&mut self) -> Option<OwnedFd> {
        cryo_sandbox::ExecProcess::take_console(self)
    }
    fn start(&mut self) -> Result<()> {
        cryo_sandbox::ExecProcess::start(self)
    }
    fn kill(&self, signal: i32) -> Result<()> {
        cryo_sandbox::ExecProcess::kill(self, signal)
    }
}
