//! ctr cases: the in-container filesystem checkpoint trigger `/run/cryo/fscheckpoint` in a pod
//! of one (a plain `ctr run` container annotated `dev.cryo.fscheckpoint.*`). runc's shim has
//! no such thing: every case is cryo's only.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use harness::Runtime;

use super::{assert_gone, run, run_detached, Case, Suite};

const NO_TRIGGER: &str = "runc's shim has no fscheckpoint trigger (/run/cryo/fscheckpoint)";

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[
    ("trigger_in_a_pod_of_one", NO_TRIGGER),
    ("trigger_not_enabled_is_read_only", NO_TRIGGER),
    ("trigger_round_that_fails_reads_error", NO_TRIGGER),
    ("trigger_with_all_volumes_saves_run", NO_TRIGGER),
    ("trigger_container_checkpoints_with_criu", NO_TRIGGER),
    ("a_failed_create_leaves_no_trigger", NO_TRIGGER),
];

pub const CASES: &[(&str, Case)] = &[
    ("trigger_in_a_pod_of_one", trigger_in_a_pod_of_one),
    (
        "trigger_not_enabled_is_read_only",
        trigger_not_enabled_is_read_only,
    ),
    (
        "trigger_round_that_fails_reads_error",
        trigger_round_that_fails_reads_error,
    ),
    (
        "trigger_with_all_volumes_saves_run",
        trigger_with_all_volumes_saves_run,
    ),
    (
        "trigger_container_checkpoints_with_criu",
        trigger_container_checkpoints_with_criu,
    ),
    (
        "a_failed_create_leaves_no_trigger",
        a_failed_create_leaves_no_trigger,
    ),
];

const TRIGGER: &str = "/run/cryo/fscheckpoint";

/// The shell sequence twice in the container itself (ctr puts a tmpfs at /run: the trigger
/// is mounted over it): `resume` twice, checkpoints 1 and 2, `latest` on 2; nothing mounted
/// once the container is gone.
fn trigger_in_a_pod_of_one(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let (_tmp, dest) = harness::containerd::checkpoint_destination("cryo-trigger-")?;
    let path = format!("dev.cryo.fscheckpoint.path={}", dest.display());
    let out = run(
        s,
        rt,
        id,
        &[
            "--annotation",
            &path,
            "--annotation",
            "dev.gvisor.internal.fscheckpoint.resume=true",
            "--annotation",
            "dev.cryo.fscheckpoint.enable=true",
        ],
        &[
            "sh",
            "-c",
            &format!(
                "echo x > /x.txt; exec 3<>{TRIGGER}; echo 1 >&3; cat <&3; echo 1 >&3; cat <&3"
            ),
        ],
    )?
    .ok()?;
    ensure!(
        out.stdout == "resume\nresume\n",
        "stdout {:?}, stderr {:?}",
        out.stdout,
        out.stderr
    );
    ensure!(std::fs::read_link(dest.join("latest"))? == Path::new("2"));
    for n in ["1", "2"] {
        ensure!(
            dest.join(n).join("fscheckpoint.json").is_file(),
            "no checkpoint {n}"
        );
    }
    assert_gone(s, id)?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts
            .lines()
            .any(|l| l.contains(" - fuse.cryo ") && l.contains(id)),
        "the trigger of {id} is still mounted"
    );
    Ok(())
}

/// Without `.enable=true` the file is there, 0444, and no write reaches it (read-only bind);
/// no checkpoint is made.
fn trigger_not_enabled_is_read_only(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let (_tmp, dest) = harness::containerd::checkpoint_destination("cryo-trigger-")?;
    let path = format!("dev.cryo.fscheckpoint.path={}", dest.display());
    let out = run(
        s,
        rt,
        id,
        &["--annotation", &path],
        &[
            "sh",
            "-c",
            &format!("stat -c %a {TRIGGER}; echo 1 > {TRIGGER} || echo refused"),
        ],
    )?;
    ensure!(
        out.stdout == "444\nrefused\n" && out.stderr.contains("Read-only file system"),
        "stdout {:?}, stderr {:?}",
        out.stdout,
        out.stderr
    );
    ensure!(!dest.exists(), "a checkpoint was made");
    assert_gone(s, id).context("after the run")
}

/// A round that cannot be saved (`.container-path` names a mount the container does not have)
/// reads `error`; no numbered directory and no `latest` are left, and the container runs on
/// (a failed save stops nothing) and can try again.
fn trigger_round_that_fails_reads_error(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let (_tmp, dest) = harness::containerd::checkpoint_destination("cryo-trigger-")?;
    let path = format!("dev.cryo.fscheckpoint.path={}", dest.display());
    let out = run(
        s,
        rt,
        id,
        &[
            "--annotation",
            &path,
            "--annotation",
            "dev.cryo.fscheckpoint.container-path=/data",
            "--annotation",
            "dev.cryo.fscheckpoint.enable=true",
        ],
        &[
            "sh",
            "-c",
            &format!("exec 3<>{TRIGGER}; echo 1 >&3; cat <&3; echo 1 >&3; cat <&3; echo alive"),
        ],
    )?
    .ok()?;
    ensure!(
        out.stdout == "error\nerror\nalive\n",
        "stdout {:?}, stderr {:?}",
        out.stdout,
        out.stderr
    );
    let left: Vec<_> = std::fs::read_dir(&dest)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "left in the destination: {left:?}");
    assert_gone(s, id)
}

/// `.container-path=all-volumes` in a ctr container saves its `/run` tmpfs, which holds the
/// trigger's own mount point: the save walks over it (the shim sees the trigger tree empty)
/// instead of reading the trigger file and waiting for its own end.
fn trigger_with_all_volumes_saves_run(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let (_tmp, dest) = harness::containerd::checkpoint_destination("cryo-trigger-")?;
    let path = format!("dev.cryo.fscheckpoint.path={}", dest.display());
    let out = run(
        s,
        rt,
        id,
        &[
            "--annotation",
            &path,
            "--annotation",
            "dev.cryo.fscheckpoint.container-path=/,all-volumes",
            "--annotation",
            "dev.cryo.fscheckpoint.resume=true",
            "--annotation",
            "dev.cryo.fscheckpoint.enable=true",
        ],
        &[
            "sh",
            "-c",
            &format!("echo r > /run/r.txt; exec 3<>{TRIGGER}; echo 1 >&3; cat <&3"),
        ],
    )?
    .ok()?;
    ensure!(
        out.stdout == "resume\n",
        "stdout {:?}, stderr {:?}",
        out.stdout,
        out.stderr
    );
    let manifest = std::fs::read_to_string(dest.join("1/fscheckpoint.json"))?;
    ensure!(manifest.contains("\"/run\""), "no /run section: {manifest}");
    assert_gone(s, id)
}

/// A container with the trigger (a bind of the FUSE directory at /run/cryo) can still be
/// checkpointed with CRIU (`ctr task checkpoint`): the bind is one of the spec's, an external.
fn trigger_container_checkpoints_with_criu(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let (_tmp, dest) = harness::containerd::checkpoint_destination("cryo-trigger-")?;
    let path = format!("dev.cryo.fscheckpoint.path={}", dest.display());
    run_detached(
        s,
        rt,
        id,
        &[
            "--annotation",
            &path,
            "--annotation",
            "dev.cryo.fscheckpoint.enable=true",
        ],
    )?;
    s.cd.ctr(&["task", "checkpoint", id])?
        .ok()
        .context("ctr task checkpoint of a container with the trigger")?;
    Ok(())
}

/// A container whose create fails after its trigger was set up (the engine refuses its
/// oomScoreAdj) leaves no FUSE mount and no mount point behind.
fn a_failed_create_leaves_no_trigger(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let (_tmp, dest) = harness::containerd::checkpoint_destination("cryo-trigger-")?;
    let dest = dest.display().to_string();
    let spec = super::spec_file(s, id, |spec| {
        spec["annotations"] = serde_json::json!({"dev.cryo.fscheckpoint.path": dest});
        spec["process"]["oomScoreAdj"] = 5000.into();
        spec["process"]["args"] = serde_json::json!(["true"]);
    })?;
    let out = super::run_spec(s, rt, id, &spec)?;
    ensure!(
        out.code != 0 && out.stderr.contains("oomScoreAdj"),
        "the create did not fail on oomScoreAdj: {out:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(" - fuse.cryo ") && l.contains(id))
        .collect();
    ensure!(left.is_empty(), "trigger mounts left: {left:?}");
    super::cleanup_container(&s.cd, id);
    assert_gone(s, id)
}
