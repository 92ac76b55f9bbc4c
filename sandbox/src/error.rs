//! The engine's error type: every failure names what was wrong (path, mount, syscall, spec field).

use std::path::PathBuf;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OCI spec asks for something invalid or unsupported; the message names the field.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The rootfs directory is missing or unusable.
    #[error("rootfs {path}: {reason}")]
    Rootfs { path: PathBuf, reason: String },
    /// The workload's executable could not be found or executed (reported before Start returns).
    #[error("exec {cmd:?}: {reason}")]
    Exec { cmd: String, reason: String },
    /// The init helper could not be run or talked to.
    #[error("init helper: {0}")]
    Init(String),
    /// Setting up or exec'ing the process failed; the helper's message names the cause.
    #[error("{0}")]
    Setup(String),
    /// A mount or unmount failed.
    #[error("mount {target}: {reason}")]
    Mount { target: PathBuf, reason: String },
    /// Cgroup creation, placement or limit failed.
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: String, reason: String },
    /// The container's memory limit was hit while a process (PID 1 or an exec) was being set
    /// up: its cgroup's OOM killer killed a process of the launch.
    #[error(
        "the memory limit was hit while the process was set up: \
         linux.resources.memory.limit {limit} is too low (cgroup {cgroup}: {kills} OOM kill(s); \
         {cause})"
    )]
    MemoryLimit {
        limit: String,
        cgroup: String,
        kills: u64,
        cause: String,
    },
    /// The requested operation does not fit the container's current status.
    #[error("container {id} is {status}: cannot {op}")]
    WrongState {
        id: String,
        status: String,
        op: String,
    },
    /// The state record could not be read or written.
    #[error("state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    /// CRIU is not installed where cryo looks for it (or cannot be run).
    #[error("CRIU is missing or cannot be run: {0}")]
    CriuMissing(String),
    /// CRIU failed; the reason quotes CRIU's own last error and names its log.
    #[error("criu {op}: {reason}")]
    Criu { op: String, reason: String },
    /// A checkpoint directory that cannot be restored (no manifest, a newer format, no CRIU
    /// images); the reason says which.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wrap a nix error with what was being done.
    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
