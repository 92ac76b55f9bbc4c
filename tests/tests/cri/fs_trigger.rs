//! CRI cases: the in-container filesystem checkpoint trigger (`/run/cryo/fscheckpoint`),
//! gVisor's application-driven `/proc/gvisor/fscheckpoint` made repeatable: a pod annotated
//! `dev.cryo.fscheckpoint.path` gets the file in every app container; a container annotated
//! `dev.cryo.fscheckpoint.enable=true` may write `1` to it, which checkpoints the pod into
//! `<path>/N` (`latest` pointing at the newest); every reader gets `resume` or `error`. The
//! destination keeps the newest `dev.cryo.fscheckpoint.keep` (default 5) of the trigger's
//! checkpoints, and nothing else of its content goes.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use harness::cri;

use super::{
    create, cryo, eventually, run_pod, run_pod_with_uid, sandbox_bundle, uid, Annotations, Case,
    Pod, Suite,
};

pub(super) const CASES: &[(&str, Case)] = &[
    (
        "trigger_checkpoints_twice_and_links_latest",
        trigger_checkpoints_twice_and_links_latest,
    ),
    (
        "trigger_without_resume_stops_the_pod",
        trigger_without_resume_stops_the_pod,
    ),
    (
        "no_trigger_without_the_annotation",
        no_trigger_without_the_annotation,
    ),
    (
        "hostile_trigger_annotations_are_refused",
        hostile_trigger_annotations_are_refused,
    ),
    (
        "killed_shim_leaves_no_trigger_mounted",
        killed_shim_leaves_no_trigger_mounted,
    ),
    (
        "trigger_keeps_the_newest_rounds",
        trigger_keeps_the_newest_rounds,
    ),
    (
        "trigger_keeps_five_by_default",
        trigger_keeps_five_by_default,
    ),
    (
        "failed_round_leaves_nothing_and_removes_nothing",
        failed_round_leaves_nothing_and_removes_nothing,
    ),
];

/// Cases of this module that need containerd 2.x's CRI (ignored on 1.6 with the suite's reason).
pub(super) const NEEDS_V2: &[&str] = &[];

const TRIGGER: &str = "/run/cryo/fscheckpoint";
const ENABLE: &str = "dev.cryo.fscheckpoint.enable";

/// CreateContainer + StartContainer of `sh -c script` with container annotations.
fn start_annotated(
    s: &Suite,
    pod: &Pod,
    name: &str,
    script: &str,
    annotations: &[(&str, &str)],
) -> Result<String> {
    let mut config = cri::container_config(name, script, &[]);
    config.annotations = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let id = s.cri.create_container(&pod.id, config, &pod.config)?;
    s.cri.start_container(&id)?;
    Ok(id)
}

/// A destination directory for the pod's checkpoints (the temp dir goes with the guard).
fn destination() -> Result<(tempfile::TempDir, PathBuf)> {
    harness::containerd::checkpoint_destination("cryo-trigger-")
}

/// Whether the pod's trigger filesystem is in the host's mount table: a `fuse.cryo` mount in
/// the pod's sandbox bundle (also when containerd renamed the bundle `.<id>` to remove it).
fn trigger_mounted(s: &Suite, pod: &Pod) -> Result<bool> {
    let bundle = sandbox_bundle(s, pod);
    let parent = bundle
        .parent()
        .context("no bundle parent")?
        .display()
        .to_string();
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| {
            let point = l.split(' ').nth(4).unwrap_or_default();
            l.contains(" - fuse.cryo ") && point.starts_with(&parent) && point.contains(&pod.id)
        }))
}

/// The shell sequence of gVisor's docs, twice on one descriptor, in the enabled container:
/// `resume` twice, two numbered checkpoints that verify, `latest` on the second, each holding
/// the rootfs as it was then. The other container cannot write (read-only, 0444) and its
/// reader, waiting from its start, gets the result of the round the first container started.
/// With `.resume=true` the pod keeps running; removing it leaves no mount.
fn trigger_checkpoints_twice_and_links_latest(s: &Suite, case: &str) -> Result<()> {
    let (_tmp, dest) = destination()?;
    let pod = run_pod(
        s,
        case,
        &[
            (
                "dev.cryo.fscheckpoint.path",
                dest.to_str().unwrap_or_default(),
            ),
            ("dev.gvisor.internal.fscheckpoint.resume", "true"),
        ],
    )?;
    let agent = start_annotated(
        s,
        &pod,
        "agent",
        "echo one > /one.txt; exec sleep 100000",
        &[(ENABLE, "true")],
    )?;
    let sidecar = start_annotated(
        s,
        &pod,
        "sidecar",
        &format!(
            "echo ready > /ready; cat {TRIGGER} > /seen.tmp; mv /seen.tmp /seen; exec sleep 100000"
        ),
        &[],
    )?;
    eventually("the containers are ready", || {
        Ok(s.cri.exec_sync(&agent, &["cat", "/one.txt"])?.0 == 0
            && s.cri.exec_sync(&sidecar, &["cat", "/ready"])?.0 == 0)
    })?;
    ensure!(trigger_mounted(s, &pod)?, "no trigger filesystem mounted");
    // Modes as the containers see them.
    ensure!(s.cri.sh(&agent, &format!("stat -c %a {TRIGGER}"))?.trim() == "666");
    ensure!(s.cri.sh(&sidecar, &format!("stat -c %a {TRIGGER}"))?.trim() == "444");
    // The sidecar cannot trigger: not by a write open, not by `<>`.
    for script in [
        format!("echo 1 > {TRIGGER}"),
        format!("exec 3<>{TRIGGER}; echo 1 >&3"),
    ] {
        let (code, _, err) = s.cri.exec_sync(&sidecar, &["sh", "-c", &script])?;
        ensure!(
            code != 0
                && (err.contains("Read-only file system") || err.contains("Permission denied")),
            "the sidecar wrote the trigger with {script:?}: exit {code}, {err:?}"
        );
    }
    // Nor through the agent's own (writable) view: the pod shares one pid namespace, so the
    // sidecar reaches the agent's root as /proc/<pid>/root; the shim refuses a write open by
    // a process outside the enabled container's mount namespace.
    let agent_pid = s.cri.container_pid(&agent)?;
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status"))?;
    let in_pod = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .context("no NSpid")?
        .to_string();
    let other_view = format!("/proc/{in_pod}/root{TRIGGER}");
    let (code, _, err) = s
        .cri
        .exec_sync(&sidecar, &["sh", "-c", &format!("test -e {other_view}")])?;
    ensure!(
        code == 0,
        "the sidecar does not see the agent's trigger at {other_view}: {err}"
    );
    for script in [
        format!("echo 1 > {other_view}"),
        format!("exec 3<>{other_view}; echo 1 >&3"),
    ] {
        let (code, _, err) = s.cri.exec_sync(&sidecar, &["sh", "-c", &script])?;
        ensure!(
            code != 0 && err.contains("Permission denied"),
            "the sidecar wrote the agent's trigger with {script:?}: exit {code}, {err:?}"
        );
    }
    ensure!(!dest.exists(), "a write from the sidecar made a checkpoint");
    let script =
        format!("exec 3<>{TRIGGER}; echo 1 >&3; cat <&3; echo two > /two.txt; echo 1 >&3; cat <&3");
    let (code, out, err) = s.cri.exec_sync_within(&agent, &["sh", "-c", &script], 60)?;
    ensure!(
        code == 0 && out == "resume\nresume\n",
        "the trigger sequence: exit {code}, stdout {out:?}, stderr {err:?}"
    );
    // The sidecar's reader got the first round's result.
    eventually("the sidecar's reader returned", || {
        Ok(s.cri.exec_sync(&sidecar, &["cat", "/seen"])?.1 == "resume\n")
    })?;
    ensure!(
        std::fs::read_link(dest.join("latest"))? == Path::new("2"),
        "latest does not point at 2"
    );
    for n in ["1", "2"] {
        let ck = dest.join(n);
        cryo(
            s,
            &[
                "fscheckpoint",
                "verify",
                "--image-path",
                ck.to_str().unwrap_or_default(),
            ],
        )?
        .ok()
        .with_context(|| format!("checkpoint {n} does not verify"))?;
    }
    // Each checkpoint holds the agent's rootfs as it was: two.txt only in the second.
    for (n, has_two) in [("1", false), ("latest", true)] {
        let ck = dest.join(n).display().to_string();
        let json = cryo(
            s,
            &["fscheckpoint", "inspect", "--json", "--image-path", &ck],
        )?
        .ok()?
        .stdout;
        let m: serde_json::Value = serde_json::from_str(&json)?;
        let index = m["sections"]
            .as_array()
            .context("no sections")?
            .iter()
            .position(|x| x["resource"]["container"] == "agent" && x["resource"]["path"] == "/")
            .with_context(|| format!("checkpoint {n}: no rootfs section of agent: {json}"))?;
        let target = dest.with_file_name(format!("restored-{n}"));
        cryo(
            s,
            &[
                "fscheckpoint",
                "restore",
                "--image-path",
                &ck,
                "--section",
                &index.to_string(),
                "--target",
                &target.display().to_string(),
            ],
        )?
        .ok()?;
        ensure!(std::fs::read_to_string(target.join("one.txt"))? == "one\n");
        ensure!(
            target.join("two.txt").exists() == has_two,
            "checkpoint {n}: two.txt present: {}",
            !has_two
        );
    }
    for id in [&agent, &sidecar] {
        let st = s.cri.container_status(id)?.status.context("no status")?;
        ensure!(
            st.state == 1,
            "container {id} not running after resume=true: {st:?}"
        );
    }
    s.cri.remove_pod_fully(&pod.id)?;
    ensure!(
        !trigger_mounted(s, &pod)?,
        "the trigger is still mounted after the pod was removed"
    );
    Ok(())
}

/// Without `.resume=true` a triggered checkpoint stops the pod (as `cryo fscheckpoint` without
/// `--leave-running`): it is saved, and every container exits, as containerd records.
fn trigger_without_resume_stops_the_pod(s: &Suite, case: &str) -> Result<()> {
    let (_tmp, dest) = destination()?;
    let pod = run_pod(
        s,
        case,
        &[(
            "dev.cryo.fscheckpoint.path",
            dest.to_str().unwrap_or_default(),
        )],
    )?;
    let other = start_annotated(s, &pod, "other", "exec sleep 100000", &[])?;
    let agent = start_annotated(
        s,
        &pod,
        "agent",
        &format!(
            "echo saved > /saved.txt; exec 3<>{TRIGGER}; echo 1 >&3; cat <&3; exec sleep 100000"
        ),
        &[(ENABLE, "true")],
    )?;
    for id in [&agent, &other] {
        eventually(&format!("container {id} EXITED"), || {
            let st = s.cri.container_status(id)?.status.context("no status")?;
            Ok(st.state == 2)
        })?;
    }
    ensure!(
        std::fs::read_link(dest.join("latest"))? == Path::new("1"),
        "latest does not point at 1"
    );
    cryo(
        s,
        &[
            "fscheckpoint",
            "verify",
            "--image-path",
            dest.join("1").to_str().unwrap_or_default(),
        ],
    )?
    .ok()
    .context("the checkpoint does not verify")?;
    s.cri.remove_pod_fully(&pod.id)?;
    ensure!(
        !trigger_mounted(s, &pod)?,
        "the trigger is still mounted after the pod was removed"
    );
    Ok(())
}

/// A pod without `dev.cryo.fscheckpoint.path` has no trigger: no file, no `/run/cryo`, no
/// FUSE mount.
fn no_trigger_without_the_annotation(s: &Suite, case: &str) -> Result<()> {
    let pod = run_pod(s, case, &[])?;
    let id = create(s, &pod, "app", "exec sleep 100000", &[])?;
    s.cri.start_container(&id)?;
    let (code, out, _) = s.cri.exec_sync(
        &id,
        &[
            "sh",
            "-c",
            "test -e /run/cryo || echo absent; grep -c fuse /proc/self/mountinfo",
        ],
    )?;
    ensure!(
        out.starts_with("absent\n0"),
        "the container without the annotation sees a trigger: exit {code}, {out:?}"
    );
    ensure!(
        !trigger_mounted(s, &pod)?,
        "a trigger is mounted for a pod without the annotation"
    );
    Ok(())
}

/// Bad values are refused naming the annotation and the value: at RunPodSandbox for pod
/// settings, at StartContainer (task creation) for a container's; nothing stays mounted and
/// no destination is created.
fn hostile_trigger_annotations_are_refused(s: &Suite, case: &str) -> Result<()> {
    let (_tmp, dest) = destination()?;
    let d = dest.to_str().unwrap_or_default();
    let p = "dev.cryo.fscheckpoint.path";
    let pod_level: &[(&str, Annotations, &str)] = &[
        (
            "relative",
            &[(p, "ck")],
            "annotation dev.cryo.fscheckpoint.path=\"ck\": not an absolute path",
        ),
        (
            "dotdot",
            &[(p, "/tmp/../etc")],
            "dev.cryo.fscheckpoint.path=\"/tmp/../etc\": not a clean path",
        ),
        ("proc", &[(p, "/proc/1/root/tmp")], "inside /proc"),
        (
            "outside-the-root",
            &[(p, "/var/lib/cryo-trigger-elsewhere")],
            "annotation dev.cryo.fscheckpoint.path=\"/var/lib/cryo-trigger-elsewhere\": not \
             beneath the node's checkpoint root /tmp (CRYO_CHECKPOINT_ROOT)",
        ),
        (
            "resume",
            &[(p, d), ("dev.gvisor.internal.fscheckpoint.resume", "yes")],
            "annotation dev.gvisor.internal.fscheckpoint.resume=\"yes\": not true or false",
        ),
        (
            "container-path",
            &[
                (p, d),
                ("dev.cryo.fscheckpoint.container-path", "/x/../etc"),
            ],
            "annotation dev.cryo.fscheckpoint.container-path=\"/x/../etc\"",
        ),
        (
            "unknown",
            &[(p, d), ("dev.cryo.fscheckpoint.resum", "true")],
            "annotation dev.cryo.fscheckpoint.resum=\"true\": unknown setting",
        ),
        (
            "alias",
            &[
                (p, d),
                ("dev.gvisor.internal.fscheckpoint.path", "/tmp/other"),
            ],
            "disagree",
        ),
        (
            "keep-zero",
            &[(p, d), ("dev.cryo.fscheckpoint.keep", "0")],
            "annotation dev.cryo.fscheckpoint.keep=\"0\": not an integer from 1 to 100",
        ),
        (
            "keep-too-many",
            &[(p, d), ("dev.gvisor.internal.fscheckpoint.keep", "101")],
            "annotation dev.gvisor.internal.fscheckpoint.keep=\"101\": not an integer from 1 to 100",
        ),
        (
            "keep-word",
            &[(p, d), ("dev.cryo.fscheckpoint.keep", "all")],
            "annotation dev.cryo.fscheckpoint.keep=\"all\": not an integer from 1 to 100",
        ),
    ];
    for (what, annotations, expected) in pod_level {
        let uid = uid(&format!("{case}-{what}"));
        let msg = match run_pod_with_uid(s, case, &uid, annotations) {
            Ok(pod) => bail!(
                "{what}: RunPodSandbox accepted {annotations:?} (pod {})",
                pod.id
            ),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            msg.contains("RunPodSandbox") && msg.contains(expected),
            "{what}: the error does not say {expected:?}: {msg}"
        );
        ensure!(s.cri.list_pods()?.is_empty(), "{what}: a pod is left");
    }
    // Container level: enable=true in a pod without the trigger; a bad enable value; a
    // container trying to move the pod's destination.
    let container_level: &[(&str, Annotations, Annotations, &str)] = &[
        (
            "enable-without-path",
            &[],
            &[(ENABLE, "true")],
            "annotation dev.cryo.fscheckpoint.enable=\"true\": the pod has no dev.cryo.fscheckpoint.path",
        ),
        (
            "enable-value",
            &[(p, d)],
            &[(ENABLE, "yes")],
            "annotation dev.cryo.fscheckpoint.enable=\"yes\": not true or false",
        ),
        (
            "other-path",
            &[(p, d)],
            &[(p, "/tmp/elsewhere")],
            "annotation dev.cryo.fscheckpoint.path=\"/tmp/elsewhere\" differs from the pod's",
        ),
    ];
    for (what, pod_annotations, annotations, expected) in container_level {
        let pod = run_pod(s, &format!("{case}-{what}"), pod_annotations)?;
        let msg = match start_annotated(s, &pod, "app", "exec sleep 100000", annotations) {
            Ok(id) => bail!("{what}: StartContainer accepted {annotations:?} ({id})"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            msg.contains("StartContainer") && msg.contains(expected),
            "{what}: the error does not say {expected:?}: {msg}"
        );
        s.cri.remove_pod_fully(&pod.id)?;
        ensure!(
            !trigger_mounted(s, &pod)?,
            "{what}: the trigger is still mounted"
        );
    }
    ensure!(!dest.exists(), "a refused pod created its destination");
    ensure!(
        !std::path::Path::new("/tmp/elsewhere").exists(),
        "a refused container created a destination"
    );
    ensure!(
        !std::path::Path::new("/var/lib/cryo-trigger-elsewhere").exists(),
        "a refused pod created a destination outside the checkpoint root"
    );
    Ok(())
}

/// The pod's shim dies (SIGKILL) with the trigger mounted: the shim's `delete` unmounts the
/// dead FUSE mount (which only answers ENOTCONN) before containerd removes the sandbox
/// bundle, so no mount is left.
fn killed_shim_leaves_no_trigger_mounted(s: &Suite, case: &str) -> Result<()> {
    let (_tmp, dest) = destination()?;
    let pod = run_pod(
        s,
        case,
        &[(
            "dev.cryo.fscheckpoint.path",
            dest.to_str().unwrap_or_default(),
        )],
    )?;
    // A reader waiting for a round when the shim dies.
    let app = start_annotated(
        s,
        &pod,
        "app",
        &format!("cat {TRIGGER} & exec sleep 100000"),
        &[(ENABLE, "true")],
    )?;
    eventually("the app runs", || {
        Ok(s.cri.exec_sync(&app, &["true"])?.0 == 0)
    })?;
    ensure!(trigger_mounted(s, &pod)?, "no trigger filesystem mounted");
    let shims = super::shim_pids(&pod.id);
    ensure!(shims.len() == 1, "shims serving the pod: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    eventually("the shim is gone", || {
        Ok(!Path::new(&format!("/proc/{}", shims[0])).exists())
    })?;
    let _ = s.cri.stop_container(&app, 1);
    s.cri.remove_pod_fully(&pod.id)?;
    ensure!(
        !trigger_mounted(s, &pod)?,
        "the dead trigger is still mounted"
    );
    ensure!(
        !sandbox_bundle(s, &pod).exists(),
        "the sandbox bundle is left: {}",
        sandbox_bundle(s, &pod).display()
    );
    Ok(())
}

/// One round from the enabled container `id`: `script` first, then gVisor's shell sequence,
/// which must print `resume`.
fn round(s: &Suite, id: &str, script: &str) -> Result<()> {
    let script = format!("{script}; exec 3<>{TRIGGER}; echo 1 >&3; cat <&3");
    let (code, out, err) = s.cri.exec_sync_within(id, &["sh", "-c", &script], 60)?;
    ensure!(
        code == 0 && out == "resume\n",
        "a round: exit {code}, stdout {out:?}, stderr {err:?}"
    );
    Ok(())
}

/// The names in `dest`, sorted.
fn entries(dest: &Path) -> Result<Vec<String>> {
    let mut names = std::fs::read_dir(dest)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// A pod with the trigger (`.resume=true` and `extra`) and its enabled `agent`.
fn trigger_pod(
    s: &Suite,
    case: &str,
    dest: &Path,
    extra: &[(&str, &str)],
) -> Result<(Pod, String)> {
    let d = dest.to_str().unwrap_or_default();
    let mut annotations = vec![
        ("dev.cryo.fscheckpoint.path", d),
        ("dev.cryo.fscheckpoint.resume", "true"),
    ];
    annotations.extend_from_slice(extra);
    let pod = run_pod(s, case, &annotations)?;
    let agent = start_annotated(s, &pod, "agent", "exec sleep 100000", &[(ENABLE, "true")])?;
    eventually("the agent runs", || {
        Ok(s.cri.exec_sync(&agent, &["true"])?.0 == 0)
    })?;
    Ok((pod, agent))
}

/// With `keep=2`, four rounds leave the last two and `latest` on the newest; what the admin
/// put in the destination (a file, a round of its own `ctr` pod's trigger) stays.
/// A pod restored from `latest` (on a lazy layer: its first restore on the node) holds a lease
/// on that checkpoint from RunPodSandbox until it ends, and so does a pod that resolved
/// `latest` but creates its container only after later rounds: retention keeps both
/// checkpoints beyond `keep` (the late pod's container starts with its round's state, the
/// first pod reads a file it never read before), and the first round after both pods ended
/// removes them.
fn trigger_keeps_the_newest_rounds(s: &Suite, case: &str) -> Result<()> {
    let (_tmp, dest) = destination()?;
    std::fs::create_dir(&dest)?;
    std::fs::write(dest.join("admin-notes.txt"), "the admin's\n")?;
    // The admin's own round, numbered as the trigger numbers its rounds.
    let admins = dest.join("1");
    std::fs::create_dir(&admins)?;
    std::fs::write(admins.join("kept.txt"), "kept\n")?;
    // Marked as a round of the admin's `ctr` pod's trigger (no tenant), made before this
    // pod's tenant claimed the destination: not this tenant's to remove.
    std::fs::write(
        admins.join(".cryo-trigger"),
        "no tenant (a pod not made through CRI)\n",
    )?;
    let (pod, agent) = trigger_pod(s, case, &dest, &[("dev.cryo.fscheckpoint.keep", "2")])?;
    for r in 1..=4 {
        let big = if r == 4 {
            "; head -c 4194304 /dev/urandom > /big; md5sum /big > /big.md5"
        } else {
            ""
        };
        round(s, &agent, &format!("echo {r} > /round.txt{big}"))?;
    }
    // Rounds 1..4 went to 2..5 (1 is the admin's).
    ensure!(
        entries(&dest)? == [".cryo-owner", "1", "4", "5", "admin-notes.txt", "latest"],
        "after four rounds with keep=2: {:?}",
        entries(&dest)?
    );
    ensure!(std::fs::read_link(dest.join("latest"))? == Path::new("5"));
    ensure!(std::fs::read_to_string(admins.join("kept.txt"))? == "kept\n");
    ensure!(std::fs::read_to_string(dest.join("admin-notes.txt"))? == "the admin's\n");
    cryo(
        s,
        &[
            "fscheckpoint",
            "verify",
            "--image-path",
            dest.join("5").to_str().unwrap_or_default(),
        ],
    )?
    .ok()
    .context("the newest checkpoint does not verify")?;

    // A pod restored from `latest` (5), then 5 removed under it.
    let restored = run_pod(
        s,
        &format!("{case}-restored"),
        &[(
            "dev.cryo.fs-restore.image-path",
            dest.to_str().unwrap_or_default(),
        )],
    )?;
    let copy = create(s, &restored, "agent", "exec sleep 100000", &[])?;
    s.cri.start_container(&copy)?;
    ensure!(
        s.cri.sh(&copy, "cat /round.txt")?.trim() == "4",
        "the restored pod is not round 4's"
    );
    ensure!(
        rootfs_on_a_lazy_layer(s.cri.container_pid(&copy)?)?,
        "the restored container's rootfs is not on a lazy layer"
    );
    // A pod that resolved `latest` (6, never restored, so not in the node's layer cache) at
    // RunPodSandbox and creates its container only after two more rounds: 5 and 6 are beyond
    // keep=2, and both are leased (4 went at the round that made 6).
    round(s, &agent, "echo 5 > /round.txt")?;
    let late = run_pod(
        s,
        &format!("{case}-late"),
        &[(
            "dev.cryo.fs-restore.image-path",
            dest.to_str().unwrap_or_default(),
        )],
    )?;
    for r in 6..=7 {
        round(s, &agent, &format!("echo {r} > /round.txt"))?;
    }
    ensure!(
        entries(&dest)?
            == [
                ".cryo-owner",
                "1",
                "5",
                "6",
                "7",
                "8",
                "admin-notes.txt",
                "latest"
            ],
        "after seven rounds with keep=2 and pods restoring from 5 and 6: {:?}",
        entries(&dest)?
    );
    let late_agent = create(s, &late, "agent", "exec sleep 100000", &[])
        .and_then(|id| s.cri.start_container(&id).map(|_| id))
        .context("a container restored from a checkpoint retention would have removed")?;
    ensure!(
        s.cri.sh(&late_agent, "cat /round.txt")?.trim() == "5",
        "the late pod is not round 5's"
    );
    // /big was never read before: its data comes from 5's data file.
    let (code, out, err) = s.cri.exec_sync(&copy, &["md5sum", "-c", "/big.md5"])?;
    ensure!(
        code == 0 && out.contains("OK"),
        "the restored pod reading its checkpoint: exit {code}, {out:?}, {err:?}"
    );
    s.cri.remove_pod_fully(&late.id)?;
    s.cri.remove_pod_fully(&restored.id)?;
    ensure!(
        entries(&dest)?
            == [
                ".cryo-owner",
                "1",
                "5",
                "6",
                "7",
                "8",
                "admin-notes.txt",
                "latest"
            ],
        "removing the restoring pods changed the destination: {:?}",
        entries(&dest)?
    );
    // Their leases ended: the next round removes what is beyond keep=2.
    round(s, &agent, "echo 8 > /round.txt")?;
    ensure!(
        entries(&dest)? == [".cryo-owner", "1", "8", "9", "admin-notes.txt", "latest"],
        "after eight rounds with keep=2: {:?}",
        entries(&dest)?
    );
    ensure!(std::fs::read_link(dest.join("latest"))? == Path::new("9"));
    s.cri.remove_pod_fully(&pod.id)?;
    ensure!(
        entries(&dest)? == [".cryo-owner", "1", "8", "9", "admin-notes.txt", "latest"],
        "removing the pod changed the destination: {:?}",
        entries(&dest)?
    );
    Ok(())
}

/// Whether the top lower layer of the rootfs of the container whose PID 1 is `pid` is a
/// lazy layer (a `fuse.cryo-layer` mount, served from the checkpoint's data file).
fn rootfs_on_a_lazy_layer(pid: i32) -> Result<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let line = text
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .context("no rootfs in the container's mountinfo")?;
    let top = line
        .split_once(" - ")
        .and_then(|(_, r)| r.split(' ').nth(2))
        .and_then(|o| o.split(',').find_map(|o| o.strip_prefix("lowerdir=")))
        .and_then(|l| l.split(':').next())
        .with_context(|| format!("no lowerdir in {line}"))?
        .to_string();
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(top.as_str()) && l.contains(" - fuse.cryo-layer ")))
}

/// Without `.keep`, the destination keeps the trigger's five newest checkpoints.
fn trigger_keeps_five_by_default(s: &Suite, case: &str) -> Result<()> {
    let (_tmp, dest) = destination()?;
    let (pod, agent) = trigger_pod(s, case, &dest, &[])?;
    for r in 1..=6 {
        round(s, &agent, &format!("echo {r} > /round.txt"))?;
    }
    ensure!(
        entries(&dest)? == [".cryo-owner", "2", "3", "4", "5", "6", "latest"],
        "after six rounds by default: {:?}",
        entries(&dest)?
    );
    ensure!(std::fs::read_link(dest.join("latest"))? == Path::new("6"));
    s.cri.remove_pod_fully(&pod.id)?;
    Ok(())
}

/// A tmpfs mounted at a path for the guard's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()?;
        ensure!(
            status.success(),
            "mount a tmpfs at {}: {status}",
            at.display()
        );
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A round that fails (the destination, a 1 MiB tmpfs, fills up) prints `error`, leaves no
/// directory of its own (nor a temporary one), leaves `latest` where it was and removes no
/// checkpoint, even with `keep=1`; the next round that fits succeeds and prunes as usual.
fn failed_round_leaves_nothing_and_removes_nothing(s: &Suite, case: &str) -> Result<()> {
    let (_tmp, dest) = destination()?;
    let _tmpfs = Tmpfs::mount(&dest, "1m")?;
    let (pod, agent) = trigger_pod(s, case, &dest, &[("dev.cryo.fscheckpoint.keep", "1")])?;
    round(s, &agent, "echo 1 > /round.txt")?;
    ensure!(entries(&dest)? == [".cryo-owner", "1", "latest"]);
    let script =
        format!("head -c 3145728 /dev/urandom > /big; exec 3<>{TRIGGER}; echo 1 >&3; cat <&3");
    let (code, out, err) = s.cri.exec_sync_within(&agent, &["sh", "-c", &script], 60)?;
    ensure!(
        code == 0 && out == "error\n",
        "a round into a full destination: exit {code}, stdout {out:?}, stderr {err:?}"
    );
    ensure!(
        entries(&dest)? == [".cryo-owner", "1", "latest"],
        "after a failed round: {:?}",
        entries(&dest)?
    );
    ensure!(std::fs::read_link(dest.join("latest"))? == Path::new("1"));
    // The pod kept running (resume=true); a round that fits goes to the next number.
    round(s, &agent, "rm /big")?;
    ensure!(
        entries(&dest)? == [".cryo-owner", "2", "latest"],
        "after the round that fits: {:?}",
        entries(&dest)?
    );
    ensure!(std::fs::read_link(dest.join("latest"))? == Path::new("2"));
    s.cri.remove_pod_fully(&pod.id)?;
    Ok(())
}
