//! The in-container filesystem checkpoint trigger, `/run/cryo/fscheckpoint` (gVisor's
//! application-driven `/proc/gvisor/fscheckpoint`): in every app container of a pod created
//! with `dev.cryo.fscheckpoint.path` ([`config`]), `exec 3<>/run/cryo/fscheckpoint; echo 1 >&3;
//! cat <&3` checkpoints the pod's filesystems and prints `resume` (or `error`). Unlike gVisor's,
//! it is repeatable: round N goes to `<path>/N`, and `<path>/latest` points at the newest
//! ([`destination`]). Rounds cannot fill the node's checkpoint disk: after each one the
//! destination keeps only the newest `.keep` (default 5) of the trigger's checkpoints
//! ([`destination::prune`]); the admin's `cryo fscheckpoint` is not bounded.
//!
//! How: a FUSE filesystem the shim serves itself ([`cryo_sandbox::fuse`], [`server`], rules in [`fs`]) is
//! mounted once per pod at `<bundle of the pod's first container>/cryo-trigger`, with one
//! directory per container; each container's spec gets a bind of its own directory at
//! `/run/cryo` (read-only unless enabled). The server, not the mount flags, decides who may
//! write. A round is `crate::pod_checkpoint::save` (one checkpoint of the pod at a time, the
//! CLI's included). The filesystem is unmounted when its first container (the pod sandbox) is
//! deleted, or by the shim's `delete` after a crash ([`cleanup_bundle`]).

pub mod config;
pub(crate) mod destination;
mod fs;
mod server;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use log::{info, warn};
use oci_spec::runtime::{Mount, Spec};

use crate::annotations;
use crate::checkpoint_root::{CheckpointRoot, Tenant};
use crate::control::protocol::FscheckpointArgs;
use crate::error::{Error, Result};
use crate::pod::Pod;
use crate::process::Process;
use config::PodSettings;
use destination::Outcome;
use fs::TriggerFs;
use server::{Served, Server};

/// The FUSE mount point in the bundle of the pod's first container.
const MOUNT_DIR: &str = "cryo-trigger";
/// Where each container sees its directory.
pub const CONTAINER_DIR: &str = "/run/cryo";

/// The pod's trigger (nothing until a container enables it).
#[derive(Default)]
pub struct Trigger {
    active: Mutex<Option<Active>>,
}

/// A mounted, served trigger filesystem.
struct Active {
    /// The container that set it up (the pod sandbox, or the container of a pod of one).
    owner: String,
    settings: PodSettings,
    mountpoint: PathBuf,
    served: Served,
    server: Server,
}

impl Active {
    /// Unmount, stop serving (closing the channel ends the connection for any bind left).
    fn shut_down(self) {
        cryo_sandbox::fuse::detach(&self.mountpoint);
        self.server.stop();
        drop(self.served);
        let _ = std::fs::remove_dir(&self.mountpoint);
    }
}

impl Trigger {
    fn lock(&self) -> MutexGuard<'_, Option<Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A container is gone (deleted, or its create failed): its directory goes; when it set
    /// the trigger up, the filesystem is unmounted.
    pub async fn container_removed(&self, id: &str) {
        let teardown = {
            let mut active = self.lock();
            let Some(a) = active.as_ref() else { return };
            a.served.remove(id);
            if a.owner != id {
                return;
            }
            active.take()
        };
        if let Some(a) = teardown {
            let owner = a.owner.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || a.shut_down()).await {
                warn!("fscheckpoint trigger of {owner}: unmount: {e}");
            }
            info!("fscheckpoint trigger of {owner}: unmounted");
        }
    }
}

/// Before container `id` is created: check its trigger annotations against the pod's, set the
/// trigger up when this container enables it for the pod, and give an app container its
/// `/run/cryo` (a mount appended to `spec`). Refusals name the annotation and the value; a
/// failure leaves nothing mounted.
pub async fn prepare(pod: &Arc<Pod>, bundle: &Path, id: &str, spec: Spec) -> Result<Spec> {
    let runtime = tokio::runtime::Handle::current();
    let (pod, bundle, id) = (pod.clone(), bundle.to_path_buf(), id.to_string());
    tokio::task::spawn_blocking(move || prepare_blocking(&pod, &bundle, &id, spec, runtime)).await?
}

fn prepare_blocking(
    pod: &Arc<Pod>,
    bundle: &Path,
    id: &str,
    mut spec: Spec,
    runtime: tokio::runtime::Handle,
) -> Result<Spec> {
    let map = spec.annotations().clone().unwrap_or_default();
    let settings =
        config::parse(&map).map_err(|e| Error::InvalidArgument(format!("container {id}: {e}")))?;
    let pod_id = annotations::grouping(Some(&spec), id);
    let is_sandbox = annotations::get(&spec, annotations::CONTAINER_TYPE)
        == Some(annotations::CONTAINER_TYPE_SANDBOX);
    let trigger = &pod.trigger;
    let mut active = trigger.lock();
    if (active.is_some() || settings.pod.is_some())
        && (id.is_empty() || id.contains('/') || id == "." || id == "..")
    {
        return Err(Error::InvalidArgument(format!(
            "container id {id:?}: not usable as a trigger directory name"
        )));
    }
    match (active.as_ref(), &settings.pod) {
        (None, None) => return Ok(spec),
        (None, Some(wanted)) => {
            if !is_sandbox && pod_id != id {
                return Err(Error::InvalidArgument(format!(
                    "container {id}: {}path={:?} is a pod setting, but pod {pod_id} was \
                     created without it",
                    annotations::FSCHECKPOINT_PREFIX,
                    wanted.path.display().to_string()
                )));
            }
            let tenant = Tenant::of(&spec);
            CheckpointRoot::from_env()
                .check(&wanted.path)
                .and_then(|()| tenant.may_write(&wanted.path))
                .map_err(|why| {
                    Error::InvalidArgument(format!(
                        "container {id}: annotation {}path={:?}: {why}",
                        annotations::FSCHECKPOINT_PREFIX,
                        wanted.path.display().to_string()
                    ))
                })?;
            let settings = (wanted.clone(), tenant);
            *active = Some(set_up(pod, bundle, id, &pod_id, settings, runtime)?);
        }
        (Some(a), Some(wanted)) if *wanted != a.settings => {
            return Err(Error::InvalidArgument(format!(
                "container {id}: {}; these are pod settings, the pod sandbox's stand",
                config::differences(wanted, &a.settings).join(", ")
            )));
        }
        (Some(_), _) => {}
    }
    if is_sandbox {
        // The pause container runs no workload: no trigger in it.
        return Ok(spec);
    }
    let Some(a) = active.as_ref() else {
        return Ok(spec);
    };
    a.served.fs.add(id, settings.enable);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(trigger_mount(&a.mountpoint.join(id), settings.enable));
    spec.set_mounts(Some(mounts));
    info!(
        "container {id}: fscheckpoint trigger at {CONTAINER_DIR}/{} ({})",
        fs::FILE_NAME,
        if settings.enable {
            "writable"
        } else {
            "read-only"
        }
    );
    Ok(spec)
}

/// The bind of a container's trigger directory at `/run/cryo`.
fn trigger_mount(source: &Path, writable: bool) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(CONTAINER_DIR));
    m.set_typ(Some("bind".to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(
        [
            "bind",
            "nosuid",
            "nodev",
            "noexec",
            if writable { "rw" } else { "ro" },
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ));
    m
}

/// Mount and serve the pod's trigger filesystem in `bundle`.
fn set_up(
    pod: &Arc<Pod>,
    bundle: &Path,
    owner: &str,
    pod_id: &str,
    (settings, tenant): (PodSettings, Tenant),
    runtime: tokio::runtime::Handle,
) -> Result<Active> {
    let mountpoint = bundle.join(MOUNT_DIR);
    let fail = |what: &str, e: std::io::Error| {
        Error::Internal(format!(
            "fscheckpoint trigger of pod {pod_id}: {what} {}: {e}",
            mountpoint.display()
        ))
    };
    std::fs::create_dir(&mountpoint).map_err(|e| fail("create", e))?;
    let channel = match cryo_sandbox::fuse::Channel::mount(&mountpoint, "cryo-trigger") {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir(&mountpoint);
            return Err(fail("mount", e));
        }
    };
    let weak = Arc::downgrade(pod);
    let same_container: fs::SameContainer = Box::new(move |container: &str, pid: u32| {
        weak.upgrade()
            .and_then(|pod| pod.get(container).ok())
            .is_some_and(|c| same_mount_namespace(c.init.pid(), pid))
    });
    let is_shim: fs::IsShim = Box::new(|tid| Path::new(&format!("/proc/self/task/{tid}")).exists());
    let served = Served::new(channel, TriggerFs::new(same_container, is_shim));
    let start = {
        let (weak, served) = (Arc::downgrade(pod), served.clone());
        let owned = (settings.clone(), tenant);
        let pod_id = pod_id.to_string();
        move |round: u64| {
            runtime.spawn(run_round(
                weak.clone(),
                served.clone(),
                owned.clone(),
                pod_id.clone(),
                round,
            ));
        }
    };
    let server = match Server::spawn(served.clone(), start) {
        Ok(s) => s,
        Err(e) => {
            cryo_sandbox::fuse::detach(&mountpoint);
            let _ = std::fs::remove_dir(&mountpoint);
            return Err(fail("serve", e));
        }
    };
    info!(
        "pod {pod_id}: fscheckpoint trigger mounted at {}, checkpoints to {}",
        mountpoint.display(),
        settings.path.display()
    );
    Ok(Active {
        owner: owner.to_string(),
        settings,
        mountpoint,
        served,
        server,
    })
}

/// Whether `pid` is in the mount namespace of `pid1` (a container's PID 1).
fn same_mount_namespace(pid1: i32, pid: u32) -> bool {
    if pid1 <= 0 || pid == 0 {
        return false;
    }
    let ns = |p: String| std::fs::metadata(format!("/proc/{p}/ns/mnt")).ok();
    match (ns(pid1.to_string()), ns(pid.to_string())) {
        (Some(a), Some(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// One round: a checkpoint of the pod into the next numbered directory, then `latest`.
async fn run_round(
    pod: Weak<Pod>,
    served: Served,
    (settings, tenant): (PodSettings, Tenant),
    pod_id: String,
    round: u64,
) {
    let ok = match pod.upgrade() {
        None => false,
        Some(pod) => match checkpoint(&pod, &settings, tenant, &pod_id).await {
            Ok(dir) => {
                info!(
                    "pod {pod_id}: triggered checkpoint {round} saved to {}",
                    dir.display()
                );
                true
            }
            Err(e) => {
                // The workload's request failed (the workload reads `error`): not the shim's.
                info!("pod {pod_id}: triggered checkpoint {round} failed: {e}");
                false
            }
        },
    };
    served.complete(round, ok);
}

async fn checkpoint(
    pod: &Pod,
    settings: &PodSettings,
    tenant: Tenant,
    pod_id: &str,
) -> Result<PathBuf> {
    let _one_at_a_time = pod.checkpoint_lock().lock().await;
    let dest = settings.path.clone();
    // Whose checkpoints the round's mark says they are: only those of the same tenant count
    // towards, and go by, its `keep`.
    let whose = tenant
        .record()
        .unwrap_or_else(|| destination::NO_TENANT.to_string());
    // Checked again at each save: a link planted beneath the root since the pod started must
    // not lead the save out of it; the destination is claimed for the pod's tenant (or found
    // to be its own) before anything is written into it.
    let dir = tokio::task::spawn_blocking(move || {
        CheckpointRoot::from_env()
            .check(&dest)
            .and_then(|()| tenant.claim(&dest))
            .map_err(std::io::Error::other)?;
        destination::claim_next(&dest)
    })
    .await?
    .map_err(|e| {
        Error::FailedPrecondition(format!("destination {}: {e}", settings.path.display()))
    })?;
    let args = FscheckpointArgs {
        id: pod_id.to_string(),
        image_path: dir.display().to_string(),
        paths: settings.paths.clone(),
        leave_running: settings.resume,
        direct: settings.direct,
    };
    if let Err(e) = crate::pod_checkpoint::save(pod, args).await {
        destination::release(&dir);
        return Err(e);
    }
    let (dest, saved, keep) = (settings.path.clone(), dir.clone(), settings.keep);
    let what = format!("fscheckpoint trigger of pod {pod_id}");
    tokio::task::spawn_blocking(move || publish(&dest, &saved, keep, &whose, &what)).await??;
    Ok(dir)
}

/// A round's checkpoint `saved` in `dest` becomes the trigger's (marked as `whose`), `latest`
/// points at it, and the destination keeps the newest `keep` of the trigger's checkpoints
/// marked `whose`; all under the destination's lock. When marking or linking fails, the round
/// fails and its checkpoint goes (a failed round leaves no directory); a removal that fails is
/// logged (a checkpoint it left half-removed stays under its hidden name), the round stands.
fn publish(dest: &Path, saved: &Path, keep: u32, whose: &str, what: &str) -> Result<()> {
    let fail = |step: &str, e: std::io::Error| {
        if let Err(e) = std::fs::remove_dir_all(saved) {
            warn!(
                "{what}: remove {} after a failed round: {e}",
                saved.display()
            );
        }
        Error::Internal(format!("{}: {step}: {e}", saved.display()))
    };
    let _locked = destination::lock(dest).map_err(|e| fail("lock the destination", e))?;
    destination::mark(saved, whose).map_err(|e| fail("mark it the trigger's", e))?;
    destination::link_latest(dest, saved)
        .map_err(|e| fail(&format!("link {}", destination::LATEST), e))?;
    match destination::prune(dest, keep, whose) {
        Ok(pruned) => {
            for p in pruned {
                match p.outcome {
                    Outcome::Removed => info!("{what}: removed {} (keep {keep})", p.dir.display()),
                    Outcome::InUse => info!(
                        "{what}: kept {} beyond keep {keep}: a pod restores from it (a later \
                         round removes it)",
                        p.dir.display()
                    ),
                    Outcome::Failed(e) => {
                        warn!("{what}: remove {} (keep {keep}): {e}", p.dir.display())
                    }
                }
            }
        }
        Err(e) => warn!("{what}: list {} to keep {keep}: {e}", dest.display()),
    }
    Ok(())
}

/// The shim's `delete` after a crash: the trigger filesystem a dead shim left in `bundle`
/// goes (its server died with the shim, so the mount only answers ENOTCONN).
pub fn cleanup_bundle(bundle: &Path) {
    let mountpoint = bundle.join(MOUNT_DIR);
    cryo_sandbox::fuse::detach(&mountpoint);
    match std::fs::remove_dir(&mountpoint) {
        Ok(()) => info!("{}: removed a trigger mount point", mountpoint.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("{}: {e}", mountpoint.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dest/<n>` as a save leaves it (a checkpoint's files, no mark yet).
    fn saved(dest: &Path, n: u32) -> PathBuf {
        let dir = dest.join(n.to_string());
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("fscheckpoint.json"), b"{}").unwrap();
        std::fs::write(dir.join("sub/data"), b"x").unwrap();
        dir
    }

    #[test]
    fn a_published_round_is_marked_linked_and_the_oldest_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path();
        std::fs::write(dest.join("admin.txt"), b"x").unwrap();
        for n in 1..=4 {
            publish(dest, &saved(dest, n), 2, "t\n", "round").unwrap();
            assert!(dest.join(n.to_string()).join(destination::MARK).is_file());
            assert_eq!(
                std::fs::read_link(dest.join(destination::LATEST)).unwrap(),
                PathBuf::from(n.to_string())
            );
        }
        let mut names: Vec<String> = std::fs::read_dir(dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["3", "4", "admin.txt", "latest"]);
    }

    #[test]
    fn a_round_that_cannot_be_published_leaves_no_directory_and_removes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path();
        for n in 1..=2 {
            publish(dest, &saved(dest, n), 1, "t\n", "round").unwrap();
        }
        assert!(dest.join("2").is_dir() && !dest.join("1").exists());
        // The mark cannot be made (something is in its place): the round fails, its
        // checkpoint goes, `latest` and the kept checkpoint stay.
        let third = saved(dest, 3);
        std::fs::create_dir(third.join(destination::MARK)).unwrap();
        let e = publish(dest, &third, 1, "t\n", "round").unwrap_err();
        assert!(e.to_string().contains("mark it the trigger's"), "{e}");
        assert!(!third.exists());
        assert!(dest.join("2").join("sub/data").exists());
        assert_eq!(
            std::fs::read_link(dest.join(destination::LATEST)).unwrap(),
            PathBuf::from("2")
        );
    }
}
