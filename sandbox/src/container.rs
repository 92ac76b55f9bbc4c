//! A container: create (PID 1 waiting), start, signal, list pids, destroy; and cleanup of a
//! container whose owner died, from its state record. Checkpoint and restore with CRIU are in
//! the child modules `checkpoint` and `restore`.

mod checkpoint;
mod restore;

pub use checkpoint::CheckpointOptions;
pub use restore::RestoreOptions;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::cgroup::Cgroup;
use crate::config::{ContainerConfig, RootfsMount, Stdio};
use crate::error::{Error, Result};
use crate::exec::{ExecConfig, ExecProcess};
use crate::init::protocol::InitConfig;
use crate::launch::{launch, Launched};
use crate::mount;
use crate::state::{NamespaceRecord, State, Status};

/// A live container owned by this process.
#[derive(Debug)]
pub struct Container {
    state: State,
    /// The spec it was created from (exec'd processes inherit its seccomp profile).
    spec: Spec,
    cgroup: Cgroup,
    /// PID 1 until it exec'd the workload.
    init: Option<Launched>,
    /// Master side of the container's pty when created with [`crate::Stdio::Terminal`].
    console: Option<OwnedFd>,
    /// A checkpoint to restore at start instead of exec'ing the workload.
    restore: Option<restore::Pending>,
}

impl Container {
    /// Mount the rootfs, create the cgroup, spawn the init helper and PID 1; returns when PID 1
    /// is ready and waits for [`Container::start`]. The workload's executable is resolved here,
    /// so a missing command fails Create. On any error nothing stays mounted or running.
    /// Blocking: call it off the async runtime.
    pub fn create(config: ContainerConfig) -> Result<Container> {
        let ContainerConfig {
            id,
            bundle,
            rootfs,
            rootfs_mounts,
            spec,
            stdio,
        } = config;
        validate(&spec)?;
        if !rootfs.is_dir() {
            return Err(Error::Rootfs {
                path: rootfs,
                reason: "does not exist or is not a directory".into(),
            });
        }
        let cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("/cryo/{id}"));
        let resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .map(with_default_devices);

        let mut undo = Undo::default();
        mount::mount_rootfs(&rootfs, &rootfs_mounts)?;
        undo.rootfs = Some((rootfs.clone(), rootfs_mounts.clone()));
        let cgroup = Cgroup::create(&cgroup_path, resources.as_ref())?;
        undo.cgroup = Some(Cgroup::open(&cgroup_path)?);

        let mut launched = launch(
            InitConfig {
                spec: spec.clone(),
                rootfs: rootfs.clone(),
                bundle: bundle.clone(),
                terminal: matches!(stdio, Stdio::Terminal),
                join: None,
            },
            stdio,
            &cgroup,
        )?;
        let pid = launched.pid;
        let state = State {
            id,
            bundle,
            rootfs,
            rootfs_mounts,
            pid,
            pid_start_time: start_time(pid).unwrap_or(0),
            cgroup_path: cgroup.path().to_string(),
            namespaces: namespace_records(&spec),
            status: Status::Created,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        state.save()?;
        undo.disarm();
        Ok(Container {
            state,
            spec,
            cgroup,
            console: launched.console.take(),
            init: Some(launched),
            restore: None,
        })
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

    /// The container's cgroup (for stats, freezing, updates).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The pty master when the container was created with a terminal (taken once).
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Let PID 1 exec the workload; returns once exec happened (or with its error).
    /// Blocking.
    pub fn start(&mut self) -> Result<()> {
        if let (Status::Created, Some(pending)) = (self.state.status, self.restore.take()) {
            return self.run_restore(pending);
        }
        let init = match (self.state.status, self.init.take()) {
            (Status::Created, Some(init)) => init,
            (status, _) => return Err(self.wrong_state(status, "start")),
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
        if self.state.status != Status::Running {
            return Err(self.wrong_state(self.state.status, "exec"));
        }
        let mut spec = self.spec.clone();
        spec.set_process(Some(config.process));
        validate(&spec)?;
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
        )?;
        Ok(ExecProcess::new(launched))
    }

    /// Freeze every process of the container.
    pub fn pause(&mut self) -> Result<()> {
        if self.state.status != Status::Running {
            return Err(self.wrong_state(self.state.status, "pause"));
        }
        self.cgroup.freeze()?;
        self.state.status = Status::Paused;
        self.state.save()
    }

    /// Thaw a paused container.
    pub fn resume(&mut self) -> Result<()> {
        if self.state.status != Status::Paused {
            return Err(self.wrong_state(self.state.status, "resume"));
        }
        self.cgroup.thaw()?;
        self.state.status = Status::Running;
        self.state.save()
    }

    /// Apply new cgroup resources to the running container.
    pub fn update(&mut self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        if self.state.status == Status::Stopped {
            return Err(self.wrong_state(self.state.status, "update"));
        }
        self.cgroup.update(resources)
    }

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

    /// The embedder observed PID 1's exit: record it.
    pub fn set_stopped(&mut self) {
        self.state.status = Status::Stopped;
        self.init = None;
        let _ = self.state.save();
    }

    /// Kill whatever remains, remove the cgroup, unmount the rootfs mounts cryo made, remove the
    /// state record. Blocking.
    pub fn destroy(self) -> Result<()> {
        teardown(&self.state, &self.cgroup)
    }

    fn wrong_state(&self, status: Status, op: &str) -> Error {
        Error::WrongState {
            id: self.state.id.clone(),
            status: format!("{status:?}").to_lowercase(),
            op: op.into(),
        }
    }
}

/// Clean up a container whose owner died, from the state record in `bundle`: SIGKILL what is
/// left in its cgroup, remove the cgroup, unmount, remove the record. Returns the record that
/// was found (`None` when there was nothing to clean). Blocking.
pub fn cleanup(bundle: &Path) -> Result<Option<State>> {
    let Some(state) = State::load(bundle)? else {
        return Ok(None);
    };
    // PID 1 outside its cgroup (should not happen) is still ours if its start time matches.
    if state.pid > 0 && start_time(state.pid) == Some(state.pid_start_time) {
        let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
    }
    let cgroup = Cgroup::open(&state.cgroup_path)?;
    teardown(&state, &cgroup)?;
    Ok(Some(state))
}

/// Kill, remove the cgroup, unmount, forget.
fn teardown(state: &State, cgroup: &Cgroup) -> Result<()> {
    cgroup.destroy()?;
    mount::unmount_rootfs(&state.rootfs, &state.rootfs_mounts)?;
    State::remove(&state.bundle)
}

/// What a create that failed half-way must undo (in reverse).
#[derive(Default)]
struct Undo {
    rootfs: Option<(PathBuf, Vec<RootfsMount>)>,
    /// Destroying it SIGKILLs every process the launch left in it.
    cgroup: Option<Cgroup>,
}

impl Undo {
    fn disarm(&mut self) {
        self.rootfs = None;
        self.cgroup = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy() {
                log::warn!("undo create: {e}");
            }
        }
        if let Some((rootfs, mounts)) = self.rootfs.take() {
            if let Err(e) = mount::unmount_rootfs(&rootfs, &mounts) {
                log::warn!("undo create: {e}");
            }
        }
    }
}

/// The spec must describe a Linux process to run.
fn validate(spec: &Spec) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    }
    if spec.linux().is_none() {
        return Err(Error::InvalidSpec("linux section is missing".into()));
    }
    Ok(())
}

/// The device rules of `resources` followed by the devices every container may use (as runc
/// appends them): the default /dev nodes, the pty devices, and mknod of any device (access to
/// it stays denied).
fn with_default_devices(
    mut resources: oci_spec::runtime::LinuxResources,
) -> oci_spec::runtime::LinuxResources {
    use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
    let rule = |typ, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true)
            .set_typ(Some(typ))
            .set_major(major)
            .set_minor(minor)
            .set_access(Some(access.to_string()));
        r
    };
    let mut rules = resources.devices().clone().unwrap_or_default();
    rules.push(rule(LinuxDeviceType::C, None, None, "m"));
    rules.push(rule(LinuxDeviceType::B, None, None, "m"));
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(rule(LinuxDeviceType::C, Some(major), Some(minor), "rwm"));
    }
    rules.push(rule(LinuxDeviceType::C, Some(136), None, "rwm"));
    resources.set_devices(Some(rules));
    resources
}

/// Namespaces as the state records them.
fn namespace_records(spec: &Spec) -> Vec<NamespaceRecord> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|nss| {
            nss.iter()
                .map(|ns| NamespaceRecord {
                    kind: ns.typ().to_string(),
                    path: ns.path().clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22() {
        let stat =
            "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 2";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert!(start_time(std::process::id() as i32).is_some());
    }

    #[test]
    fn specs_without_a_process_are_refused() {
        let spec: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2","linux":{}}"#).unwrap();
        assert!(validate(&spec).unwrap_err().to_string().contains("process"));
    }
}
