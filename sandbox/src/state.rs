//! The state record: what a container is on the host (rootfs mounts, namespaces, cgroup, pid),
//! kept as JSON in its bundle (`cryo-state.json`) so that cleanup after a crash, and later
//! checkpoint/restore, can find and rebuild it. Written atomically (temp file + rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::RootfsMount;
use crate::error::{Error, Result};

/// File name of the state record inside the bundle.
pub const STATE_FILE: &str = "cryo-state.json";

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// PID 1 exists and waits for start.
    Created,
    /// The workload runs.
    Running,
    /// Frozen by the cgroup freezer.
    Paused,
    /// PID 1 has exited.
    Stopped,
}

/// Which operation each status allows: the one place these rules live (as youki's
/// `ContainerStatus`).
impl Status {
    /// Start: only a created container whose PID 1 waits.
    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    /// Exec a new process: only into a running container (not paused, not before start).
    pub fn can_exec(self) -> bool {
        self == Status::Running
    }

    /// Pause: only a running container.
    pub fn can_pause(self) -> bool {
        self == Status::Running
    }

    /// Resume: only a paused container.
    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }

    /// Update resources: while the cgroup is in use (created, running or paused).
    pub fn can_update(self) -> bool {
        self != Status::Stopped
    }

    /// Delete without force: once nothing runs (created, never started, or stopped).
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Created | Status::Stopped)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// One namespace of the container: its kind (`pid`, `mount`, `network`, ...) and, when it was
/// joined rather than created, the path it was joined from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub kind: String,
    pub path: Option<PathBuf>,
}

/// The record itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Mounts cryo applied onto `rootfs`, in order (unmounted in reverse).
    pub rootfs_mounts: Vec<RootfsMount>,
    /// PID 1 of the container, as seen from the host (0 before it exists).
    pub pid: i32,
    /// PID 1's start time (field 22 of /proc/PID/stat), to tell it from a recycled pid.
    pub pid_start_time: u64,
    /// Cgroup path relative to the hierarchy roots (e.g. `/default/ctr1`).
    pub cgroup_path: String,
    pub namespaces: Vec<NamespaceRecord>,
    pub status: Status,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
}

impl State {
    /// Path of the record inside `bundle`.
    pub fn path(bundle: &Path) -> PathBuf {
        bundle.join(STATE_FILE)
    }

    /// Load the record from `bundle`; `Ok(None)` when there is none.
    pub fn load(bundle: &Path) -> Result<Option<State>> {
        let path = Self::path(bundle);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::State {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::State {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Write the record atomically into its bundle.
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.bundle);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::State {
                path,
                reason: e.to_string(),
            })
    }

    /// Remove the record (missing is fine).
    pub fn remove(bundle: &Path) -> Result<()> {
        let path = Self::path(bundle);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::State {
                path,
                reason: e.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Status::{self, *};

    #[test]
    fn status_rules() {
        let all = [Created, Running, Paused, Stopped];
        let allowed = |rule: fn(Status) -> bool| -> Vec<Status> {
            all.iter().copied().filter(|s| rule(*s)).collect()
        };
        assert_eq!(allowed(Status::can_start), [Created]);
        assert_eq!(allowed(Status::can_exec), [Running]);
        assert_eq!(allowed(Status::can_pause), [Running]);
        assert_eq!(allowed(Status::can_resume), [Paused]);
        assert_eq!(allowed(Status::can_update), [Created, Running, Paused]);
        assert_eq!(allowed(Status::can_delete), [Created, Stopped]);
        assert_eq!(Paused.to_string(), "paused");
    }
}
