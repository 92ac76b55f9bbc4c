//! CRI cases: Kubernetes behaviours equal to runc's shim: mount propagation between host and
//! container, StopPodSandbox while a container's exit is not yet reported, and the failures of
//! kubelet's checkpoint/restore (no CRIU, an archive of a newer format). Where runc's shim can
//! run the same assertions, each case runs them on both runtime handlers (`cryo`, `runc`) in
//! the same containerd, so "equal to runc" is shown, not claimed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use harness::cri::{self, HANDLER, RUNC_HANDLER};
use k8s_cri::v1::{
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxSandboxSecurityContext,
    MountPropagation,
};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{Case, Pod, Suite};

pub(super) const CASES: &[(&str, Case)] = &[
    (
        "mount_propagation_between_host_and_container",
        mount_propagation_between_host_and_container,
    ),
    (
        "stop_pod_while_an_exit_is_unreported",
        stop_pod_while_an_exit_is_unreported,
    ),
    (
        "checkpoint_and_restore_without_criu_name_it",
        checkpoint_and_restore_without_criu_name_it,
    ),
    (
        "restore_of_a_newer_format_fails_cleanly",
        restore_of_a_newer_format_fails_cleanly,
    ),
];

/// Cases of this module that need containerd 2.x's CRI (ignored on 1.6 with the suite's reason).
pub(super) const NEEDS_V2: &[&str] = &[
    "checkpoint_and_restore_without_criu_name_it",
    "restore_of_a_newer_format_fails_cleanly",
];

/// The runtime handlers a comparing case runs on: cryo's, then runc's shim's.
const HANDLERS: [&str; 2] = [HANDLER, RUNC_HANDLER];

/// RunPodSandbox on `handler`; a privileged pod (kubelet asks it for a privileged container).
fn run_pod_on(s: &Suite, case: &str, handler: &str, privileged: bool) -> Result<Pod> {
    let uid = super::uid(case);
    let logs = s.logs.join(&uid);
    std::fs::create_dir_all(&logs)?;
    let name: String = case.chars().take(50).collect();
    let mut config = cri::pod_config(&name, &uid, &[], &s.cgroup_parent, &logs);
    if privileged {
        config
            .linux
            .get_or_insert_with(Default::default)
            .security_context = Some(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
    }
    let id = s
        .cri
        .run_pod_on(config.clone(), handler)
        .with_context(|| format!("on handler {handler}"))?;
    Ok(Pod { id, config })
}

/// Host directories made mount points of their own and shared (kubelet's volume directories
/// are under a shared mount on a Kubernetes node; this machine's `/` is private, and
/// containerd refuses HostToContainer and Bidirectional on a source that is not shared).
/// Dropping it detaches each with everything mounted beneath it, the host's mounts and those
/// a container propagated back.
struct SharedDirs(Vec<PathBuf>);

impl SharedDirs {
    fn make(root: &Path, names: &[&str]) -> Result<SharedDirs> {
        let mut made = SharedDirs(Vec::new());
        for name in names {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir)?;
            mount(
                Some(&dir),
                &dir,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind {} onto itself", dir.display()))?;
            made.0.push(dir.clone());
            mount(
                None::<&str>,
                &dir,
                None::<&str>,
                MsFlags::MS_SHARED,
                None::<&str>,
            )
            .with_context(|| format!("make {} shared", dir.display()))?;
        }
        Ok(made)
    }
}

impl Drop for SharedDirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            if let Err(e) = umount2(dir, MntFlags::MNT_DETACH) {
                eprintln!("detach {}: {e}", dir.display());
            }
        }
    }
}

/// A tmpfs mounted by the host at `dir/sub` holding `marker` (made after the containers
/// started: what propagation carries, or not).
fn host_mount(dir: &Path, marker: &str) -> Result<()> {
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub)?;
    mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .with_context(|| format!("mount a tmpfs at {}", sub.display()))?;
    std::fs::write(sub.join("marker"), marker)?;
    Ok(())
}

/// The propagation fields (`shared:N`, `master:N`, ...) of the last mount at `dest` in process
/// `pid`'s mount table (mount points as the process sees them).
fn propagation_tags(pid: &str, dest: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let line = text
        .lines()
        .rfind(|l| l.split(' ').nth(4) == dest.to_str())
        .with_context(|| format!("{} is not a mount point of {pid}", dest.display()))?;
    let (left, _) = line.split_once(" - ").context("bad mountinfo line")?;
    Ok(left
        .split(' ')
        .skip(6)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect())
}

/// The host's peer group of its shared mount at `dir` (`N` of `shared:N`).
fn host_peer_group(dir: &Path) -> Result<String> {
    propagation_tags("self", dir)?
        .iter()
        .find_map(|t| t.strip_prefix("shared:").map(str::to_string))
        .with_context(|| format!("{} is not a shared mount on the host", dir.display()))
}

/// A busybox container config with `mounts` (container path, host path, propagation),
/// privileged if asked.
fn propagation_config(
    name: &str,
    mounts: &[(&str, &Path, MountPropagation)],
    privileged: bool,
) -> k8s_cri::v1::ContainerConfig {
    let mut config = cri::container_config(name, "exec sleep 100000", &[]);
    config.mounts = mounts
        .iter()
        .map(|(dest, host, propagation)| k8s_cri::v1::Mount {
            container_path: dest.to_string(),
            host_path: host.display().to_string(),
            propagation: *propagation as i32,
            ..Default::default()
        })
        .collect();
    if privileged {
        config.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    config
}

/// Mount propagation as kubelet asks it, on cryo and on runc's shim alike. Host directories
/// (shared mounts, as on a node) are mounted into two containers; after they started the host
/// mounts a tmpfs under each:
/// - `PROPAGATION_HOST_TO_CONTAINER` (rslave): the container sees the host's new mount;
/// - `PROPAGATION_BIDIRECTIONAL` (rshared, a privileged container): it sees the host's mount,
///   and a tmpfs the container mounts under it appears on the host;
/// - `PROPAGATION_PRIVATE` (rprivate): neither container sees the host's mount, and the
///   privileged container's own mount there does not reach the host.
///
/// Before the mounts, each volume's propagation fields in the container's mountinfo are read:
/// `master:N` of the source's host peer group, `shared:N` of that very group, none.
fn mount_propagation_between_host_and_container(s: &Suite, case: &str) -> Result<()> {
    for handler in HANDLERS {
        propagation_on(s, case, handler).with_context(|| format!("runtime handler {handler}"))?;
    }
    Ok(())
}

fn propagation_on(s: &Suite, case: &str, handler: &str) -> Result<()> {
    let root = s.kubelet.join(format!("propagation-{handler}"));
    let dirs = SharedDirs::make(&root, &["h2c", "bidi", "priv"])?;
    let (h2c, bidi, private) = (&dirs.0[0], &dirs.0[1], &dirs.0[2]);
    let result = (|| -> Result<()> {
        let pod = run_pod_on(s, &format!("{case}-{handler}"), handler, true)?;
        let slave = s.cri.create_container(
            &pod.id,
            propagation_config(
                "slave",
                &[
                    ("/h2c", h2c, MountPropagation::PropagationHostToContainer),
                    ("/priv", private, MountPropagation::PropagationPrivate),
                ],
                false,
            ),
            &pod.config,
        )?;
        s.cri.start_container(&slave)?;
        let shared = s.cri.create_container(
            &pod.id,
            propagation_config(
                "shared",
                &[
                    ("/bidi", bidi, MountPropagation::PropagationBidirectional),
                    ("/priv", private, MountPropagation::PropagationPrivate),
                ],
                true,
            ),
            &pod.config,
        )?;
        s.cri.start_container(&shared)?;

        // The volumes' places in the host's peer groups: a slave of the source's group
        // (HostToContainer), a peer in it (Bidirectional), in none (Private).
        let (h2c_group, bidi_group) = (host_peer_group(h2c)?, host_peer_group(bidi)?);
        let (slave_pid, shared_pid) = (
            s.cri.container_pid(&slave)?.to_string(),
            s.cri.container_pid(&shared)?.to_string(),
        );
        let tags = propagation_tags(&slave_pid, Path::new("/h2c"))?;
        ensure!(
            tags.contains(&format!("master:{h2c_group}"))
                && !tags.iter().any(|t| t.starts_with("shared:")),
            "HostToContainer: /h2c has {tags:?} (want master:{h2c_group}, not shared)"
        );
        let tags = propagation_tags(&shared_pid, Path::new("/bidi"))?;
        ensure!(
            tags.contains(&format!("shared:{bidi_group}")),
            "Bidirectional: /bidi has {tags:?} (want shared:{bidi_group}, the host's group)"
        );
        for pid in [&slave_pid, &shared_pid] {
            let tags = propagation_tags(pid, Path::new("/priv"))?;
            ensure!(
                tags.is_empty(),
                "Private: /priv of pid {pid} has {tags:?} (want none)"
            );
        }

        // The host mounts after the containers started.
        host_mount(h2c, "from-host-h2c")?;
        host_mount(bidi, "from-host-bidi")?;
        host_mount(private, "from-host-priv")?;
        let seen = |id: &str, path: &str| -> Result<Option<String>> {
            let (code, out, _) = s.cri.exec_sync(id, &["cat", path])?;
            Ok((code == 0).then_some(out))
        };
        let h = seen(&slave, "/h2c/sub/marker")?;
        ensure!(
            h.as_deref() == Some("from-host-h2c"),
            "HostToContainer: the host's mount under the source is not seen in the container \
             (/h2c/sub/marker: {h:?})"
        );
        let b = seen(&shared, "/bidi/sub/marker")?;
        ensure!(
            b.as_deref() == Some("from-host-bidi"),
            "Bidirectional: the host's mount under the source is not seen in the container \
             (/bidi/sub/marker: {b:?})"
        );
        for id in [&slave, &shared] {
            let p = seen(id, "/priv/sub/marker")?;
            ensure!(
                p.is_none(),
                "Private: the host's mount reached container {id}: /priv/sub/marker {p:?}"
            );
        }
        // The privileged container mounts under its Bidirectional and its Private volume.
        s.cri.sh(
            &shared,
            "mkdir -p /bidi/csub /priv/csub && mount -t tmpfs -o size=1m tmpfs /bidi/csub && \
             echo from-container > /bidi/csub/f && mount -t tmpfs -o size=1m tmpfs /priv/csub && \
             echo from-container > /priv/csub/f",
        )?;
        let back = std::fs::read_to_string(bidi.join("csub/f")).ok();
        ensure!(
            back.as_deref() == Some("from-container\n"),
            "Bidirectional: the container's mount did not reach the host ({}: {back:?})",
            bidi.join("csub/f").display()
        );
        ensure!(
            !private.join("csub/f").exists(),
            "Private: the container's mount reached the host at {}",
            private.join("csub").display()
        );
        s.cri.remove_pod_fully(&pod.id)?;
        Ok(())
    })();
    // The host's mounts (and what propagated back) go with the pod.
    let removed = super::remove_pods(s);
    drop(dirs);
    let cleaned = std::fs::remove_dir_all(&root);
    result?;
    removed?;
    cleaned.with_context(|| format!("remove {}", root.display()))
}

/// How many times the window is entered per runtime.
const ESRCH_ROUNDS: usize = 3;
/// How long the container's stdout stays held once StopPodSandbox was sent.
const HOLD_INTO_STOP: Duration = Duration::from_secs(1);

/// StopPodSandbox while a container's PID 1 is gone (reaped) but its exit is not reported
/// yet: containerd still counts the container as running and kills it, the kill finds no
/// process (ESRCH), and containerd goes on only if that answer is NotFound (as runc's shim
/// answers). The window is held open as long as the exit waits for the container's output to
/// drain: the test (as any process outside the container could) holds a write end of the
/// container's stdout pipe, so the drain lasts until it lets go (a second into the stop). On cryo the window is checked
/// to be hit each round (CRI still reads RUNNING after PID 1 was reaped); StopPodSandbox must
/// succeed, the container end EXITED, and the pod be removed with nothing left.
fn stop_pod_while_an_exit_is_unreported(s: &Suite, case: &str) -> Result<()> {
    for handler in HANDLERS {
        for round in 0..ESRCH_ROUNDS {
            stop_in_the_window(s, &format!("{case}-{handler}-{round}"), handler)
                .with_context(|| format!("runtime handler {handler}, round {round}"))?;
        }
    }
    Ok(())
}

fn stop_in_the_window(s: &Suite, case: &str, handler: &str) -> Result<()> {
    let pod = run_pod_on(s, case, handler, false)?;
    let app = super::start(s, &pod, "app", "exec sleep 100000", &[])?;
    let pause = s.cri.pod_pid(&pod.id)?;
    let pid = s.cri.container_pid(&app)?;
    let holder = OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/fd/1"))
        .with_context(|| format!("open the stdout of pid {pid}"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    super::eventually("PID 1 reaped", || {
        Ok(!Path::new(&format!("/proc/{pid}")).exists())
    })?;
    let state = s
        .cri
        .container_status(&app)?
        .status
        .context("no status")?
        .state;
    let in_window = state == 1;
    // The held stdout is let go a while into StopPodSandbox (its kill comes first), well
    // before the drain limit: an exit held back that long is logged as a warning.
    let release = std::thread::spawn(move || {
        std::thread::sleep(HOLD_INTO_STOP);
        drop(holder);
    });
    let started = Instant::now();
    let stopped = s.cri.stop_pod(&pod.id);
    let took = started.elapsed();
    let _ = release.join();
    // runc's shim on containerd 1.6 now and then (2 rounds in 24 here) closes its connection
    // as this kill arrives: containerd reads `ttrpc: closed`, marks the container exited, and
    // kubelet's retry of StopPodSandbox succeeds. cryo is held to the first call.
    let stopped = match stopped {
        Err(e) if handler == RUNC_HANDLER && format!("{e:#}").contains("ttrpc: closed") => {
            eprintln!(
                "runc: its shim closed the connection in the window ({e:#}); StopPodSandbox \
                 again, as kubelet retries"
            );
            s.cri.stop_pod(&pod.id)
        }
        other => other,
    };
    eprintln!(
        "{handler}: PID 1 reaped, CRI state {state} ({}); StopPodSandbox {} in {took:.2?}",
        if in_window {
            "exit unreported: in the window"
        } else {
            "exit already reported"
        },
        if stopped.is_ok() {
            "succeeded"
        } else {
            "failed"
        }
    );
    stopped.context("StopPodSandbox with PID 1 gone and its exit unreported")?;
    if handler == HANDLER {
        ensure!(
            in_window,
            "the window was not entered: CRI state {state} once PID 1 was reaped (want RUNNING=1)"
        );
    }
    let status = s.cri.container_status(&app)?.status.context("no status")?;
    ensure!(
        status.state == 2,
        "state {} after StopPodSandbox (want EXITED=2)",
        status.state
    );
    s.cri.remove_pod(&pod.id)?;
    ensure!(
        !s.cri.list_pods()?.contains(&pod.id),
        "the pod is still listed"
    );
    super::eventually("the pause process gone", || {
        Ok(!Path::new(&format!("/proc/{pause}")).exists())
    })?;
    Ok(())
}

/// CRIU taken away from the shims (the run's `CRYO_CRIU` switch, [`harness::Containerd::criu_switch`])
/// for as long as it lives; given back when dropped.
struct CriuOff {
    switch: PathBuf,
    hidden: PathBuf,
}

impl CriuOff {
    fn take(s: &Suite) -> Result<CriuOff> {
        let switch = s.cd.criu_switch();
        let hidden = switch.with_extension("off");
        std::fs::rename(&switch, &hidden)
            .with_context(|| format!("turn CRIU off: rename {}", switch.display()))?;
        Ok(CriuOff { switch, hidden })
    }
}

impl Drop for CriuOff {
    fn drop(&mut self) {
        if let Err(e) = std::fs::rename(&self.hidden, &self.switch) {
            eprintln!("turn CRIU back on: {e}");
        }
    }
}

/// The counter processes of the checkpoint cases running in this run's pods (their cgroups
/// are under the run's cgroup parent; other runs on the machine may count too).
fn counters_running(s: &Suite) -> Result<usize> {
    Ok(std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cgroup"))
                .is_ok_and(|c| c.contains(&s.cgroup_parent))
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.starts_with(b"sh\x00-c\x00echo started"))
        .count())
}

/// Restore of `archive` in a new pod through CreateContainer + StartContainer, which must
/// fail: the error. No counter process of this run may be running then (the checkpointed
/// pod is gone already); whatever CreateContainer made is removed, then the pod.
fn failed_restore(s: &Suite, case: &str, archive: &Path) -> Result<String> {
    let new = super::run_pod(s, case, &[])?;
    let result = s
        .cri
        .create_container(
            &new.id,
            super::restore_config("counter", archive),
            &new.config,
        )
        .and_then(|id| s.cri.start_container(&id));
    let err = match result {
        Ok(()) => bail!("{} was restored", archive.display()),
        Err(e) => format!("{e:#}"),
    };
    let left = counters_running(s)?;
    ensure!(
        left == 0,
        "{left} counter process(es) running after the failed restore"
    );
    for id in s.cri.list_containers(&new.id)? {
        s.cri.remove_container(&id)?;
    }
    s.cri.remove_pod_fully(&new.id)?;
    Ok(err)
}

/// kubelet's checkpoint and restore with no CRIU for the shim (`CRYO_CRIU` names a missing
/// file): CheckpointContainer fails naming CRIU and the path, and the container is left running
/// and counting (containerd paused it around the call); the restore of an archive made with
/// CRIU fails CreateContainer or StartContainer naming CRIU, with nothing left. With CRIU
/// back, the same container checkpoints.
fn checkpoint_and_restore_without_criu_name_it(s: &Suite, case: &str) -> Result<()> {
    let (pod, app, archive, _) = super::checkpointed_counter(s, case)?;
    let switch = s.cd.criu_switch();
    let again = archive.with_file_name(format!("{case}-again.tar"));
    let off = CriuOff::take(s)?;
    let err = match s.cri.checkpoint_container(&app, &again, 60) {
        Ok(()) => bail!("CheckpointContainer succeeded with no CRIU"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("CheckpointContainer without CRIU: {err}");
    let switch_text = switch.display().to_string();
    ensure!(
        err.contains("CRIU") && err.contains(&switch_text) && err.contains("CRYO_CRIU"),
        "the CheckpointContainer error does not name CRIU and {switch_text}: {err}"
    );
    ensure!(
        !again.exists(),
        "an archive was written by the failed checkpoint"
    );
    let status = s.cri.container_status(&app)?.status.context("no status")?;
    ensure!(
        status.state == 1,
        "state {} after the failed checkpoint (want RUNNING=1)",
        status.state
    );
    ensure!(
        counters_running(s)? == 1,
        "the counter process is not found in the run's cgroups"
    );
    let at = super::count(s, &app)?;
    super::eventually("the counter counts on after the failed checkpoint", || {
        Ok(super::count(s, &app)? > at)
    })?;
    s.cri.remove_pod_fully(&pod.id)?;
    let err = failed_restore(s, &format!("{case}-restored"), &archive)?;
    eprintln!("restore without CRIU: {err}");
    ensure!(
        err.contains("CRIU") && err.contains(&switch_text),
        "the restore error does not name CRIU and {switch_text}: {err}"
    );
    drop(off);
    std::fs::remove_file(&archive)?;
    Ok(())
}

/// Restore through CreateContainer of an archive whose `checkpoint/cryo-checkpoint.json` says
/// format 99.0 (a newer cryo wrote it): CreateContainer or StartContainer fails naming the
/// format, and nothing of the container is left.
fn restore_of_a_newer_format_fails_cleanly(s: &Suite, case: &str) -> Result<()> {
    let (pod, _app, archive, _) = super::checkpointed_counter(s, case)?;
    s.cri.remove_pod_fully(&pod.id)?;
    let newer = archive.with_file_name(format!("{case}-format-99.tar"));
    super::doctored_archive(&archive, &newer, |dir| {
        let path = dir.join("checkpoint/cryo-checkpoint.json");
        let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        manifest["format"] = serde_json::json!({"major": 99, "minor": 0});
        std::fs::write(&path, serde_json::to_vec(&manifest)?)?;
        Ok(())
    })?;
    let err = failed_restore(s, &format!("{case}-restored"), &newer)?;
    eprintln!("restore of format 99: {err}");
    ensure!(
        err.contains("format 99.0"),
        "the error does not name the format: {err}"
    );
    std::fs::remove_file(&newer)?;
    std::fs::remove_file(&archive)?;
    Ok(())
}
