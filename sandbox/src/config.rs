//! What the caller hands the engine to create a container: the OCI spec, where the bundle and
//! rootfs are, which mounts make up the rootfs, and the stdio file descriptors.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One mount that builds the container's rootfs (e.g. the snapshotter's overlay), applied in
/// order onto [`ContainerConfig::rootfs`]. Recorded in the state so it can be undone or rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsMount {
    /// Filesystem type, e.g. `overlay`, `bind`.
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Options as `mount -o` takes them (flags like `ro`, `rbind` and data like `lowerdir=`).
    pub options: Vec<String>,
}

/// The container's standard streams.
#[derive(Debug)]
pub enum Stdio {
    /// File descriptors to install as 0, 1 and 2 in the workload (`None` means `/dev/null`).
    /// The caller keeps the other ends (typically pipes it copies to containerd's FIFOs).
    Fds {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// A pseudo-terminal: the engine creates it inside the container and hands the master to the
    /// caller through [`crate::Container::take_console`].
    Terminal,
}

/// Everything needed to create one container.
#[derive(Debug)]
pub struct ContainerConfig {
    /// Container id (unique within the embedding process).
    pub id: String,
    /// The bundle directory; the state record is written here.
    pub bundle: PathBuf,
    /// Absolute path of the rootfs directory (usually `<bundle>/rootfs`).
    pub rootfs: PathBuf,
    /// Mounts to apply onto `rootfs` before the container starts (empty: use it as given).
    pub rootfs_mounts: Vec<RootfsMount>,
    /// The OCI runtime spec.
    pub spec: oci_spec::runtime::Spec,
    /// Standard streams for the workload.
    pub stdio: Stdio,
}
