//! Checkpoint of a running or paused container with CRIU into a directory: CRIU's images, the
//! files of its private overlay volumes (saved while the container is frozen, so that they
//! match the processes' state; see [`crate::criu::volumes`]) and the manifest
//! (`cryo-checkpoint.json`). The container keeps running (or stays paused) unless asked to
//! exit; CRIU's log stays in the work directory and a failure quotes it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Container;
use crate::criu::manifest::{spec_digest, DumpOptions, Format, Manifest};
use crate::criu::manifest::{FORMAT_MAJOR, FORMAT_MINOR};
use crate::criu::swrk::{Opts, ReqType, Session};
use crate::criu::{self, externals, volumes};
use crate::error::{Error, Result};
use crate::state::Status;

/// CRIU's log of a dump, in the work directory.
pub const DUMP_LOG: &str = "dump.log";

/// How to checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// The CRIU binary (see [`crate::criu::locate`]).
    pub criu: PathBuf,
    /// Where CRIU's images and the manifest go (created if missing).
    pub image_dir: PathBuf,
    /// Where CRIU's log goes (created if missing; default: `image_dir`).
    pub work_dir: Option<PathBuf>,
    /// Stop the container after the dump (its processes are killed) instead of leaving it.
    pub exit: bool,
    /// Dump established TCP connections.
    pub tcp_established: bool,
    /// Dump Unix sockets connected outside the container.
    pub ext_unix_sk: bool,
    /// Dump file locks.
    pub file_locks: bool,
    /// The container's terminal is outside it (a shell job).
    pub shell_job: bool,
}

impl Container {
    /// Dump the container with CRIU into `opts.image_dir` and write its manifest there.
    /// A paused container is dumped as it is and stays paused. Blocking.
    pub fn checkpoint(&mut self, opts: &CheckpointOptions) -> Result<Manifest> {
        let paused = match self.state.status {
            Status::Running => false,
            Status::Paused => true,
            _ => return Err(self.wrong_state("checkpoint")),
        };
        let work_dir = opts
            .work_dir
            .clone()
            .unwrap_or_else(|| opts.image_dir.clone());
        for dir in [&opts.image_dir, &work_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        let criu_version = criu::version(&opts.criu)?;
        let pid = self.state.pid;
        let stdio: Vec<String> = (0..3)
            .map(|fd| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            })
            .collect();
        let externals = externals::for_dump(&self.spec, pid)?;
        let options = DumpOptions {
            tcp_established: opts.tcp_established,
            ext_unix_sk: opts.ext_unix_sk,
            file_locks: opts.file_locks,
            shell_job: opts.shell_job,
        };

        let open = |dir: &PathBuf| {
            File::open(dir).map_err(|e| Error::io(format!("open {}", dir.display()), e))
        };
        // CRIU opens these through /proc/<our pid>/fd: they stay open here during the call.
        let (images, work) = (open(&opts.image_dir)?, open(&work_dir)?);
        let mut req = Opts::new();
        req.set_pid(pid);
        req.set_images_dir_fd(images.as_raw_fd());
        req.set_work_dir_fd(work.as_raw_fd());
        req.set_log_file(DUMP_LOG.into());
        req.set_log_level(4);
        req.set_leave_running(!opts.exit);
        req.set_manage_cgroups(true);
        if let Some(freezer) = externals::freezer_dir(self.cgroup.path())? {
            req.set_freeze_cgroup(freezer.display().to_string());
        }
        req.set_tcp_established(options.tcp_established);
        req.set_ext_unix_sk(options.ext_unix_sk);
        req.set_file_locks(options.file_locks);
        req.set_shell_job(options.shell_job);
        // A terminal's master is the embedder's, outside the dumped tree (as runc dumps it).
        req.set_orphan_pts_master(true);
        externals::fill_dump(&externals, pid, &mut req)?;
        let log = work_dir.join(DUMP_LOG);
        // The volumes' files are saved with the container frozen, and it stays frozen for the
        // dump: what they hold is what its processes saw.
        let overlays = volumes::overlays(&self.spec);
        if !overlays.is_empty() && !paused {
            self.cgroup.freeze()?;
        }
        let saved = volumes::save(&overlays, &opts.image_dir);
        let dumped = match &saved {
            Ok(_) => Session::spawn(&opts.criu, [None, None, None], Vec::new())
                .and_then(|mut session| session.call(ReqType::DUMP, Some(req))),
            Err(_) => Ok(Default::default()),
        };
        drop((images, work));
        // CRIU froze the cgroup for the dump; what it was before is what it is after (unless
        // the dump worked and was asked to end the container).
        if !opts.exit || saved.is_err() || dumped.is_err() {
            let _ = if paused {
                self.cgroup.freeze()
            } else {
                self.cgroup.thaw()
            };
        }
        let volumes = saved?;
        if let Err(e) = dumped {
            volumes::remove(&opts.image_dir);
            return Err(with_log(e, &log));
        }

        let manifest = Manifest {
            format: Format {
                major: FORMAT_MAJOR,
                minor: FORMAT_MINOR,
            },
            cryo_version: env!("CARGO_PKG_VERSION").to_string(),
            criu_version,
            container_id: self.state.id.clone(),
            spec_digest: spec_digest(&self.spec),
            paused,
            stdio,
            options,
            externals,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            volumes,
            terminal: self
                .spec
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false),
        };
        manifest.save(&opts.image_dir)?;
        log::info!(
            "checkpointed container {} into {}",
            self.state.id,
            opts.image_dir.display()
        );
        Ok(manifest)
    }
}

/// CRIU's failure with its log's last error line and the log's path.
pub(super) fn with_log(e: Error, log: &std::path::Path) -> Error {
    match e {
        Error::Criu { op, reason } => Error::Criu {
            op,
            reason: criu::log::explain(&reason, log),
        },
        other => other,
    }
}
