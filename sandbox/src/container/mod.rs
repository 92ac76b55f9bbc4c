//! A container owned by this process: the [`Container`] type, its accessors and the helpers
//! its operations share. Each operation lives in a file of its own: [`create`](create.rs),
//! [`start`](start.rs) (start and exec), [`pause`](pause.rs) (pause and resume),
//! [`update`](update.rs), [`kill`](kill.rs) (signals, pids, PID 1's exit) and
//! [`destroy`](destroy.rs) (destroy, and [`cleanup`] of a container whose owner died),
//! [`checkpoint`](checkpoint.rs) and [`restore`](restore.rs) (with CRIU). Which
//! operation a status allows is decided by [`Status`]'s rules in [`crate::state`].

mod checkpoint;
mod create;
mod destroy;
mod kill;
mod pause;
mod restore;
mod start;
mod update;
mod validate;

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::cgroup::Cgroup;
use crate::error::Error;
use crate::launch::Launched;
use crate::state::{State, Status};

pub use checkpoint::CheckpointOptions;
pub use destroy::cleanup;
pub use restore::RestoreOptions;

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

    /// The error for `op` refused in the current status.
    fn wrong_state(&self, op: &str) -> Error {
        Error::WrongState {
            id: self.state.id.clone(),
            status: self.state.status.to_string(),
            op: op.into(),
        }
    }
}

/// Whether the container has a namespace of `typ` that is not the host's: a new one, or one
/// joined by a path that is not the namespace this process (on the host) is in.
fn own_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    let Some(ns) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| nss.iter().find(|ns| ns.typ() == typ))
    else {
        return false;
    };
    let Some(path) = ns.path() else {
        return true;
    };
    let own = match typ {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        _ => return true,
    };
    same_file(path, &Path::new("/proc/self/ns").join(own)) == Some(false)
}

/// Whether two paths are the same file; `None` when either cannot be read.
fn same_file(a: &Path, b: &Path) -> Option<bool> {
    let (a, b) = (std::fs::metadata(a).ok()?, std::fs::metadata(b).ok()?);
    Some(a.dev() == b.dev() && a.ino() == b.ino())
}

/// A launch that failed while the cgroup's OOM killer was at work (its count went up from
/// `before`) failed because of the memory limit: say so rather than how the helper happened
/// to die.
fn memory_limit_hit(cgroup: &Cgroup, spec: &Spec, before: u64, cause: Error) -> Error {
    let kills = cgroup.oom_kills().saturating_sub(before);
    if kills == 0 {
        return cause;
    }
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .map_or_else(|| "(none set)".to_string(), |l| l.to_string());
    Error::MemoryLimit {
        limit,
        cgroup: cgroup.path().to_string(),
        kills,
        cause: cause.to_string(),
    }
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
}
