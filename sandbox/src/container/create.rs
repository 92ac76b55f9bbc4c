//! Create: validate the spec, mount the rootfs, create the cgroup, launch PID 1 (waiting for
//! start) and write the state record. A create that fails half-way undoes what it did.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::runtime::{LinuxResources, Spec};

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
        let mut resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .map(with_default_devices);
        // The pids limit counts the init helper next to PID 1 during the launch: applied once
        // the helper is done, so that pids.max=1 leaves room for exactly the workload.
        let pids = resources.as_mut().and_then(|r| {
            let pids = *r.pids();
            r.set_pids(None);
            pids
        });

        let mut undo = Undo::default();
        mount::mount_rootfs(&rootfs, &rootfs_mounts)?;
        undo.rootfs = Some((rootfs.clone(), rootfs_mounts.clone()));
        let mut cgroup = Cgroup::create(&cgroup_path, resources.as_ref())?;
        undo.cgroup = Some(Cgroup::open(&cgroup_path)?);

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
        if let Some(pids) = pids {
            let mut only_pids = LinuxResources::default();
            only_pids.set_pids(Some(pids));
            cgroup.update(&only_pids)?;
        }
        let pid = launched.pid;
        let state = State {
            id,
            bundle,
            rootfs,
            rootfs_mounts,
            pid,
            pid_start_time: super::start_time(pid).unwrap_or(0),
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
