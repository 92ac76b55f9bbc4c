//! Start (PID 1 execs the workload) and exec (a new process in the running container).

use super::validate::validate;
use super::{memory_limit_hit, Container};
use crate::config::Stdio;
use crate::error::Result;
use crate::exec::{ExecConfig, ExecProcess};
use crate::init::protocol::InitConfig;
use crate::launch::launch;
use crate::state::Status;

impl Container {
    /// Let PID 1 exec the workload; returns once exec happened (or with its error).
    /// Blocking.
    pub fn start(&mut self) -> Result<()> {
        if !self.state.status.can_start() {
            return Err(self.wrong_state("start"));
        }
        if let Some(pending) = self.restore.take() {
            return self.run_restore(pending);
        }
        let Some(init) = self.init.take() else {
            return Err(self.wrong_state("start"));
        };
        init.start()?;
        self.state.status = Status::Running;
        self.state.save()
    }

    /// Prepare a new process in the running container (its namespaces, cgroup and the
    /// container's seccomp profile, with `config.process`'s args, env, cwd, user and
    /// capabilities); it execs on [`ExecProcess::start`]. Refused unless the container runs.
    /// Blocking.
    pub fn exec(&self, config: ExecConfig) -> Result<ExecProcess> {
        if !self.state.status.can_exec() {
            return Err(self.wrong_state("exec"));
        }
        let mut spec = self.spec.clone();
        spec.set_process(Some(config.process));
        validate(&spec, matches!(config.stdio, Stdio::Terminal))?;
        let oom_before = self.cgroup.oom_kills();
        let launched = launch(
            InitConfig {
                spec,
                rootfs: self.state.rootfs.clone(),
                bundle: self.state.bundle.clone(),
                terminal: matches!(config.stdio, Stdio::Terminal),
                join: Some(self.state.pid),
            },
            config.stdio,
            &self.cgroup,
        )
        .map_err(|e| memory_limit_hit(&self.cgroup, &self.spec, oom_before, e))?;
        Ok(ExecProcess::new(launched))
    }
}
