//! Create: validate the spec, mount the rootfs, create the cgroup, launch PID 1 (waiting for
//! start) and write the state record. A create that fails half-way undoes what it did.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::runtime::{LinuxPids, LinuxResources, Spec};

use super::validate::validate;
use super::{memory_limit_hit, Container};
use crate::cgroup::{with_default_devices, Cgroup};
use crate::config::{ContainerConfig, RootfsMount, Stdio};
use crate::error::{Error, Result};
use crate::init::protocol::InitConfig;
use crate::launch::launch;
use crate::mount;
use crate::state::{NamespaceRecord, State, Status};

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
        validate(&spec, matches!(stdio, Stdio::Terminal))?;
        let Host {
            mut undo,
            mut cgroup,
            pids,
        } = Host::prepare(&id, &spec, &rootfs, &rootfs_mounts)?;

        let oom_before = cgroup.oom_kills();
        let launched = launch(
            InitConfig {
                spec: spec.clone(),
                rootfs: rootfs.clone(),
                bundle: bundle.clone(),
                terminal: matches!(stdio, Stdio::Terminal),
                join: None,
            },
            stdio,
            &cgroup,
        );
        let mut launched = launched.map_err(|e| memory_limit_hit(&cgroup, &spec, oom_before, e))?;
        apply_pids(&mut cgroup, pids)?;
        let pid = launched.pid;
        let state = Host::record(id, bundle, rootfs, rootfs_mounts, pid, &cgroup, &spec);
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
}

/// What a new container needs on the host before any process runs in it, for a create and a
/// restore alike: the rootfs checked and mounted, the cgroup made from the spec's cgroupsPath
/// (default `/cryo/<id>`) with its resources — but for the pids limit, held back because the
/// init helper (or CRIU) counts in the cgroup next to the workload; [`apply_pids`] sets it
/// once that is done — and the undo of both for a later failure.
pub(super) struct Host {
    pub undo: Undo,
    pub cgroup: Cgroup,
    pub pids: Option<LinuxPids>,
}

impl Host {
    pub fn prepare(
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        rootfs_mounts: &[RootfsMount],
    ) -> Result<Host> {
        if !rootfs.is_dir() {
            return Err(Error::Rootfs {
                path: rootfs.to_path_buf(),
                reason: "does not exist or is not a directory".into(),
            });
        }
        let cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("/cryo/{id}"));
        let mut resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .map(with_default_devices);
        let pids = resources.as_mut().and_then(|r| {
            let pids = *r.pids();
            r.set_pids(None);
            pids
        });
        let mut undo = Undo::default();
        mount::mount_rootfs(rootfs, rootfs_mounts)?;
        undo.rootfs = Some((rootfs.to_path_buf(), rootfs_mounts.to_vec()));
        let cgroup = Cgroup::create(&cgroup_path, resources.as_ref())?;
        undo.cgroup = Some(Cgroup::open(&cgroup_path)?);
        Ok(Host { undo, cgroup, pids })
    }
}

impl Host {
    /// The state record of a container just made on this host, with PID 1 `pid` (0 for a
    /// restore, whose PID 1 exists only after Start).
    pub fn record(
        id: String,
        bundle: PathBuf,
        rootfs: PathBuf,
        rootfs_mounts: Vec<RootfsMount>,
        pid: i32,
        cgroup: &Cgroup,
        spec: &Spec,
    ) -> State {
        State {
            id,
            bundle,
            rootfs,
            rootfs_mounts,
            pid,
            pid_start_time: if pid > 0 {
                super::start_time(pid).unwrap_or(0)
            } else {
                0
            },
            cgroup_path: cgroup.path().to_string(),
            namespaces: namespace_records(spec),
            status: Status::Created,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// Set the pids limit [`Host::prepare`] held back.
pub(super) fn apply_pids(cgroup: &mut Cgroup, pids: Option<LinuxPids>) -> Result<()> {
    match pids {
        Some(pids) => {
            let mut only_pids = LinuxResources::default();
            only_pids.set_pids(Some(pids));
            cgroup.update(&only_pids)
        }
        None => Ok(()),
    }
}

/// What a create that failed half-way must undo (in reverse).
#[derive(Default)]
pub(super) struct Undo {
    pub(super) rootfs: Option<(PathBuf, Vec<RootfsMount>)>,
    /// Destroying it SIGKILLs every process the launch left in it.
    pub(super) cgroup: Option<Cgroup>,
}

impl Undo {
    pub(super) fn disarm(&mut self) {
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

/// Namespaces as the state records them.
pub(super) fn namespace_records(spec: &Spec) -> Vec<NamespaceRecord> {
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
