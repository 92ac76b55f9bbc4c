//! cryo's embedded container engine (containers only: pods and containerd belong to the shim).
//!
//! Owns everything a container *is* on the host: the process tree in its own namespaces, the
//! rootfs mounts, the cgroup, stdio file descriptors and signals. It knows nothing of containerd:
//! the shim translates containerd's requests into calls on [`Container`].
//!
//! Process model (as `runc create`/`runc start`): [`Container::create`] re-executes the current
//! binary as a single-threaded init helper (see [`init`]); the embedding binary must call
//! [`init::run_if_requested`] first thing in `main`, before any thread or runtime starts. The
//! helper sets up namespaces and mounts, forks the container's PID 1, which pivots into the rootfs
//! and blocks until [`Container::start`] lets it exec the workload.
//!
//! Reaping: the engine never calls `wait()`. The embedding process is a child subreaper and reaps
//! every child (containerd-shim's reaper does); it learns exits by pid.
//!
//! A container's layout (rootfs mounts, namespaces, cgroup, pid) is kept in a [`state::State`]
//! record in its bundle so that a later process can find, clean up or rebuild it.

pub mod cgroup;
pub mod config;
pub mod container;
pub mod criu;
pub mod error;
pub mod exec;
mod fs_context;
pub mod fscheckpoint;
pub mod fuse;
pub mod init;
mod launch;
pub mod layer_cache;
pub mod layer_copy;
pub mod lazy_layer;
pub mod lease;
mod lsm;
pub mod mount;
mod sealed_exe;
pub mod spawn;
pub mod state;
pub mod volume;

pub use config::{ContainerConfig, RootfsMount, Stdio};
pub use container::{CheckpointOptions, Container, RestoreOptions};
pub use error::{Error, Result};
pub use exec::{ExecConfig, ExecProcess};
pub use state::State;
