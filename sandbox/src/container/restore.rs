//! Restore of a container from a checkpoint directory, in two steps as containerd drives it:
//! [`Container::prepare_restore`] (Create) builds the container from the new spec — rootfs
//! mounted, cgroup created, the image's manifest and externals checked against the spec, the
//! private overlay volumes' files extracted (checksums verified) into the new upper
//! directories — and starts no process; [`Container::start`] then runs CRIU's restore into it:
//! CRIU in the container's cgroup, the rootfs as its root, external mounts (overlay volumes
//! mounted from the new spec for CRIU to bind) and joined namespaces mapped, the image's stdio
//! pipes reconnected to the new ones, and the restored PID 1 made a sibling of CRIU, i.e. the
//! embedder's child. A failed restore kills whatever it started.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxPids;
use rust_criu::rust_criu_protobuf::rpc;

use super::checkpoint::with_log;
use super::create::{apply_pids, Host};
use super::validate::validate;
use super::{start_time, Container};
use crate::config::{ContainerConfig, Stdio};
use crate::criu::manifest::{External, Manifest};
use crate::criu::swrk::{Opts, ReqType, Session, FIRST_EXTRA_FD};
use crate::criu::{creds, externals, volumes};
use crate::error::{Error, Result};
use crate::mount;
use crate::state::Status;

/// CRIU's log of a restore, in the work directory.
pub const RESTORE_LOG: &str = "restore.log";

/// Where the checkpoint is and how to run CRIU.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The CRIU binary (see [`crate::criu::locate`]).
    pub criu: PathBuf,
    /// The checkpoint directory (CRIU's images and `cryo-checkpoint.json`).
    pub image_dir: PathBuf,
    /// Where CRIU's log goes (created if missing; default: `<bundle>/criu`).
    pub work_dir: Option<PathBuf>,
}

/// A prepared restore, run by [`Container::start`].
#[derive(Debug)]
pub(super) struct Pending {
    options: RestoreOptions,
    /// The spec's pids limit, applied once CRIU (which runs in the cgroup) is done.
    pids: Option<LinuxPids>,
    manifest: Manifest,
    stdio: Stdio,
}

impl Container {
    /// Build the container from `config` for a restore of `options.image_dir`: checks the
    /// checkpoint (manifest, format, CRIU images, externals the spec must provide), mounts the
    /// rootfs and creates the cgroup; no process runs until [`Container::start`]. On any error
    /// nothing stays mounted or created. Blocking.
    pub fn prepare_restore(config: ContainerConfig, options: RestoreOptions) -> Result<Container> {
        let ContainerConfig {
            id,
            bundle,
            rootfs,
            rootfs_mounts,
            spec,
            stdio,
        } = config;
        validate(&spec, matches!(stdio, Stdio::Terminal))?;
        let manifest = Manifest::load(&options.image_dir)?;
        if manifest.options.shell_job {
            return Err(Error::Checkpoint {
                path: Manifest::path(&options.image_dir),
                reason: "dumped as a shell job (CheckpointOptions.terminal: a terminal outside \
                         the container), which cannot be restored into a new container"
                    .into(),
            });
        }
        let terminal = matches!(stdio, Stdio::Terminal);
        if manifest.terminal != terminal {
            let (image, asked) = if manifest.terminal {
                ("with", "without")
            } else {
                ("without", "with")
            };
            return Err(Error::InvalidSpec(format!(
                "process.terminal: the checkpoint's process ran {image} a terminal; it cannot \
                 be restored {asked} one"
            )));
        }
        // The same host side as Container::create (CRIU, too, counts against the pids limit
        // while it restores: the limit is applied once it is done).
        let Host {
            mut undo,
            cgroup,
            pids,
        } = Host::prepare(&id, &spec, &rootfs, &rootfs_mounts)?;
        // Everything external to the images must be there now, not only at Start.
        externals::for_restore(&manifest.externals, &spec, &bundle, cgroup.path())?;
        // The volumes' files go into the new upper directories before any process exists.
        let filled = volumes::restore(&manifest.volumes, &options.image_dir, &spec)?;

        let state = Host::record(id, bundle, rootfs, rootfs_mounts, 0, &cgroup, &spec);
        if let Err(e) = state.save() {
            filled.undo();
            return Err(e);
        }
        undo.disarm();
        log::info!(
            "prepared container {} for a restore of {} (checkpoint of {}, CRIU {})",
            state.id,
            options.image_dir.display(),
            manifest.container_id,
            manifest.criu_version
        );
        Ok(Container {
            state,
            spec,
            cgroup,
            init: None,
            console: None,
            restore: Some(Pending {
                options,
                pids,
                manifest,
                stdio,
            }),
        })
    }

    /// Run CRIU's restore into the prepared container; on success PID 1 is the restored init.
    pub(super) fn run_restore(&mut self, pending: Pending) -> Result<()> {
        let Pending {
            options,
            pids,
            manifest,
            stdio,
        } = pending;
        let work_dir = options
            .work_dir
            .clone()
            .unwrap_or_else(|| self.state.bundle.join("criu"));
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| Error::io(format!("create {}", work_dir.display()), e))?;
        let log = work_dir.join(RESTORE_LOG);
        let ext = externals::for_restore(
            &manifest.externals,
            &self.spec,
            &self.state.bundle,
            self.cgroup.path(),
        )?;
        // Overlay volumes are mounted from the new spec for CRIU to bind (unmounted here when
        // `staged` goes; the container keeps its copies).
        let mut staged = volumes::Staged::default();
        let mut mounts = ext.mounts.clone();
        for destination in &ext.overlays {
            let at = staged.mount(&self.spec, destination, &work_dir)?;
            mounts.push((destination.clone(), at.display().to_string()));
        }
        // Bind mounts and overlay volumes need their mount points in the new rootfs.
        for e in &manifest.externals {
            if let External::Bind { destination } | External::Overlay { destination } = e {
                if let Some((_, source)) = mounts.iter().find(|(d, _)| d == destination) {
                    mount_point(
                        &self.state.rootfs,
                        Path::new(destination),
                        Path::new(source),
                    )?;
                }
            }
        }

        let open = |dir: &Path| {
            File::open(dir).map_err(|e| Error::io(format!("open {}", dir.display()), e))
        };
        // CRIU opens these through /proc/<our pid>/fd: they stay open here during the call.
        let (images, work) = (open(&options.image_dir)?, open(&work_dir)?);
        let mut req = Opts::new();
        req.set_images_dir_fd(images.as_raw_fd());
        req.set_work_dir_fd(work.as_raw_fd());
        req.set_log_file(RESTORE_LOG.into());
        req.set_log_level(4);
        req.set_root(self.state.rootfs.display().to_string());
        req.set_rst_sibling(true);
        req.set_evasive_devices(true);
        // CRIU runs in the new cgroup: the restored processes are created in it.
        req.set_manage_cgroups_mode(rpc::Criu_cg_mode::IGNORE);
        req.set_tcp_established(manifest.options.tcp_established);
        req.set_ext_unix_sk(manifest.options.ext_unix_sk);
        req.set_file_locks(manifest.options.file_locks);
        // A terminal comes back as a new pty pair in the container's devpts; CRIU hands its
        // master over (notify `orphan-pts-master`) for the embedder, as a created one.
        // (CRIU restores an unpaired pty slave only as a shell job's, and sends the master only
        // to an RPC client that takes notifications.)
        req.set_orphan_pts_master(manifest.terminal);
        req.set_shell_job(manifest.terminal);
        // Notifications always: at `pre-resume` the restored tasks' credentials are checked
        // against the spec before any of them runs (crate::criu::creds).
        req.set_notify_scripts(true);
        for (key, val) in &mounts {
            req.ext_mnt.push(externals::ext_mnt(key, val));
        }
        // The image's stdio pipes become the new ones, which CRIU holds as its own 0, 1, 2.
        for (fd, what) in manifest.stdio.iter().enumerate() {
            if what.starts_with("pipe:") {
                req.inherit_fd.push(inherit(what, fd as i32));
            }
        }
        // Joined namespaces go to CRIU as its own descriptors, inherited under their keys.
        let mut fds: Vec<OwnedFd> = Vec::new();
        for (key, file) in ext.namespaces {
            req.inherit_fd
                .push(inherit(&key, FIRST_EXTRA_FD + fds.len() as i32));
            fds.push(file.into());
        }
        let stdio = match stdio {
            Stdio::Fds {
                stdin,
                stdout,
                stderr,
            } => [stdin, stdout, stderr],
            Stdio::Terminal => [None, None, None],
        };

        let mut session = Session::spawn(&options.criu, stdio, fds)?;
        if let Err(e) = self.cgroup.add(session.pid()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(session.pid()), Signal::SIGKILL);
            return Err(e);
        }
        let criu_pid = session.pid();
        let restored = session.call_with(ReqType::RESTORE, Some(req), |note| {
            if note.notify.script() != creds::PRE_RESUME {
                return Ok(());
            }
            let restored: Vec<i32> = self
                .cgroup
                .procs()
                .into_iter()
                .filter(|p| *p != criu_pid)
                .collect();
            creds::check(&self.spec, &restored).map_err(|reason| Error::Checkpoint {
                path: options.image_dir.clone(),
                reason,
            })
        });
        let console = session.take_pts_master();
        drop(session);
        drop((images, work, staged));
        let pid = match restored {
            Ok(resp) if resp.restore.pid() > 0 => resp.restore.pid(),
            Ok(_) => {
                self.cgroup.signal_all(Signal::SIGKILL);
                return Err(with_log(
                    Error::Criu {
                        op: "restore".into(),
                        reason: "CRIU reported no restored pid".into(),
                    },
                    &log,
                ));
            }
            Err(e) => {
                // Whatever CRIU started (and CRIU itself) goes.
                self.cgroup.signal_all(Signal::SIGKILL);
                return Err(with_log(e, &log));
            }
        };
        if manifest.terminal && console.is_none() {
            self.cgroup.signal_all(Signal::SIGKILL);
            return Err(with_log(
                Error::Criu {
                    op: "restore".into(),
                    reason: "CRIU sent no master for the restored terminal".into(),
                },
                &log,
            ));
        }
        if let Err(e) = apply_pids(&mut self.cgroup, pids) {
            self.cgroup.signal_all(Signal::SIGKILL);
            return Err(e);
        }
        self.console = console;
        self.state.pid = pid;
        self.state.pid_start_time = start_time(pid).unwrap_or(0);
        self.state.status = Status::Running;
        self.state.save()?;
        log::info!(
            "restored container {} (pid {pid}) from {}",
            self.state.id,
            options.image_dir.display()
        );
        Ok(())
    }

    /// Whether [`Container::start`] will restore a checkpoint rather than exec the workload.
    pub fn is_restore(&self) -> bool {
        self.restore.is_some()
    }
}

fn inherit(key: &str, fd: i32) -> rpc::Inherit_fd {
    let mut i = rpc::Inherit_fd::new();
    i.set_key(key.to_string());
    i.set_fd(fd);
    i
}

/// Create the mount point of a bind mount of `source` at `destination` beneath `rootfs` (a
/// directory or an empty file, like the source) when it is missing.
fn mount_point(rootfs: &Path, destination: &Path, source: &Path) -> Result<()> {
    let dest = mount::resolve_beneath(rootfs, destination)?;
    if dest.symlink_metadata().is_ok() {
        return Ok(());
    }
    let err = |e| Error::Mount {
        target: destination.to_path_buf(),
        reason: format!("create mount point: {e}"),
    };
    if std::fs::metadata(source)
        .map(|m| m.is_dir())
        .unwrap_or(true)
    {
        std::fs::create_dir_all(&dest).map_err(err)
    } else {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        std::fs::File::create(&dest).map(drop).map_err(err)
    }
}
