//! ctr cases: checkpoint and restore with CRIU (`ctr container checkpoint --task --rw` then
//! `ctr container restore --live --rw` into a new container; `ctr task checkpoint`), for both
//! runtimes with the same assertions.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use harness::image::BUSYBOX_IMAGE;
use harness::Runtime;

use super::{
    assert_gone, cleanup_container, ctr_line, in_terminal, in_terminal_until, run_detached,
    wait_status, Case, Suite,
};
use harness::containerd::StartOptions;
use harness::Containerd;

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[
    (
        "restore_of_a_newer_format_is_refused",
        "cryo's own checkpoint manifest (cryo-checkpoint.json): runc's checkpoints have none",
    ),
    (
        "prepared_restore_is_killed_and_deleted_cleanly",
        "a second task created on a running container's shim: runc's shim serves one container",
    ),
    (
        "private_overlay_volume_comes_back",
        "cryo's volume annotations (dev.cryo.spec.mount.*): runc's shim binds the host directory, \
         whose content a new node does not have",
    ),
    (
        "a_corrupt_volume_section_fails_restore_cleanly",
        "cryo's own volume sections in the checkpoint: runc's checkpoints have none",
    ),
];

pub const CASES: &[(&str, Case)] = &[
    ("checkpoint_restore_continues", checkpoint_restore_continues),
    (
        "task_checkpoint_running_and_paused",
        task_checkpoint_running_and_paused,
    ),
    (
        "restore_of_a_corrupt_image_fails_cleanly",
        restore_of_a_corrupt_image_fails_cleanly,
    ),
    (
        "restore_of_a_newer_format_is_refused",
        restore_of_a_newer_format_is_refused,
    ),
    (
        "checkpoint_with_a_running_exec",
        checkpoint_with_a_running_exec,
    ),
    ("missing_criu_is_named", missing_criu_is_named),
    (
        "checkpoint_options_are_honoured",
        checkpoint_options_are_honoured,
    ),
    (
        "bind_and_tmpfs_mounts_come_back",
        bind_and_tmpfs_mounts_come_back,
    ),
    (
        "joined_network_namespace_is_rejoined",
        joined_network_namespace_is_rejoined,
    ),
    (
        "paused_checkpoint_with_exit_stops",
        paused_checkpoint_with_exit_stops,
    ),
    (
        "prepared_restore_is_killed_and_deleted_cleanly",
        prepared_restore_is_killed_and_deleted_cleanly,
    ),
    (
        "null_io_container_round_trips",
        null_io_container_round_trips,
    ),
    (
        "restored_task_exit_carries_its_pid",
        restored_task_exit_carries_its_pid,
    ),
    (
        "terminal_container_round_trips",
        terminal_container_round_trips,
    ),
    (
        "private_overlay_volume_comes_back",
        private_overlay_volume_comes_back,
    ),
    (
        "a_corrupt_volume_section_fails_restore_cleanly",
        a_corrupt_volume_section_fails_restore_cleanly,
    ),
];

/// PID 1 of the restore case: a counter loop, an open descriptor part-way into a file, a file
/// written into the rootfs, and a `tail -c 64MiB` holding 64 MiB of a 16-byte pattern read from
/// a FIFO whose writer stays until `/tmp/mem-check` appears; then tail's buffer goes through
/// md5sum into `/tmp/mem-verdict`.
const WORKLOAD: &str = r#"
seq 1 1000 > /tmp/lines
echo written-before > /marker
exec 3< /tmp/lines
read -r a <&3; read -r a <&3; read -r a <&3
mkfifo /tmp/mem-fifo
(tail -c 67108864 < /tmp/mem-fifo | md5sum > /tmp/mem-verdict) &
(yes 0123456789abcde | head -c 67108864; echo ready > /tmp/mem-ready
 while [ ! -e /tmp/mem-check ]; do sleep 0.2; done) > /tmp/mem-fifo &
i=0
while true; do
  i=$((i+1)); echo $i > /tmp/count
  if [ -e /tmp/fd-read ]; then read -r x <&3; echo $x > /tmp/fd-next; rm -f /tmp/fd-read; fi
  sleep 0.1
done
"#;

/// The same 64 MiB, summed afresh.
const MEM_EXPECTED: &str = "yes 0123456789abcde | head -c 67108864 | md5sum";

/// Resumes (a paused task ignores SIGKILL until thawed), kills and removes a container when
/// dropped (the suite only cleans the case's own id).
struct Cleanup<'a>(&'a Suite, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.cd.ctr(&["task", "resume", &self.1]);
        cleanup_container(&self.0.cd, &self.1);
    }
}

/// A checkpoint image name no other run or case uses (containerd refuses a second checkpoint
/// with the same content under one name).
pub(super) fn unique_ref(id: &str) -> String {
    format!("docker.io/cryo-tests/{id}:{}", nanos())
}

/// `sh -c script` run in the task; its stdout trimmed.
fn exec(s: &Suite, id: &str, script: &str) -> Result<String> {
    let exec_id = format!("x{}", nanos());
    let out =
        s.cd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            id,
            "sh",
            "-c",
            script,
        ])?
        .ok()
        .with_context(|| format!("exec {script:?} in {id}"))?;
    Ok(out.stdout.trim().to_string())
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Poll `script` in the task until `done` holds for its output.
fn exec_until(s: &Suite, id: &str, script: &str, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = exec(s, id, script).unwrap_or_default();
        if done(&out) {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("{script:?} in {id} never gave what was expected; last: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The counter (read until it is not caught half-written).
fn counter(s: &Suite, id: &str) -> Result<u64> {
    let text = exec_until(s, id, "cat /tmp/count", |o| o.parse::<u64>().is_ok())?;
    Ok(text.parse()?)
}

/// Kill the task with SIGKILL, remove it, and return `ctr task rm`'s warning (where ctr puts
/// the exit code).
pub(super) fn kill_and_remove_task(s: &Suite, id: &str) -> Result<String> {
    s.cd.ctr(&["task", "kill", "-s", "SIGKILL", id])?.ok()?;
    wait_status(s, id, "STOPPED")?;
    let out = s.cd.ctr(&["task", "rm", id])?.ok()?;
    Ok(out.stderr)
}

/// Checkpoint a busy container (with its rootfs changes), remove it, restore it live into a
/// new container: the counter goes on from where it was, the 64 MiB buffer checks out, the
/// file written into the rootfs is there, the open descriptor reads on from its offset, exec,
/// pause/resume, ps and metrics work, and SIGKILL gives 137.
fn checkpoint_restore_continues(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    s.cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        rt.id(),
        BUSYBOX_IMAGE,
        id,
        "sh",
        "-c",
        WORKLOAD,
    ])?
    .ok()?;
    wait_status(s, id, "RUNNING")?;
    exec_until(s, id, "cat /tmp/mem-ready", |o| o == "ready")?;
    exec_until(s, id, "cat /tmp/count", |o| {
        o.parse::<u64>().is_ok_and(|n| n >= 30)
    })?;
    let before = counter(s, id)?;

    let image = unique_ref(id);
    let started = Instant::now();
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint")?;
    let checkpoint_time = started.elapsed();
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;

    let started = Instant::now();
    s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &image])?
        .ok()
        .context("restore")?;
    let restore_time = started.elapsed();
    eprintln!(
        "{}: checkpoint {:.2}s, restore {:.2}s",
        rt.name(),
        checkpoint_time.as_secs_f64(),
        restore_time.as_secs_f64()
    );
    wait_status(s, &restored, "RUNNING")?;

    let after = counter(s, &restored)?;
    ensure!(
        after >= before,
        "the counter restarted: {after} after the restore, {before} before the checkpoint"
    );
    exec_until(s, &restored, "cat /tmp/count", |o| {
        o.parse::<u64>().is_ok_and(|n| n > after)
    })
    .context("the restored counter does not count")?;
    ensure!(
        exec(s, &restored, "cat /marker")? == "written-before",
        "the file written into the rootfs is not there"
    );
    exec(s, &restored, "touch /tmp/fd-read")?;
    let next = exec_until(s, &restored, "cat /tmp/fd-next 2>/dev/null", |o| {
        !o.is_empty()
    })?;
    ensure!(
        next == "4",
        "the open descriptor read {next:?} after the restore (its offset was after line 3)"
    );
    exec(s, &restored, "touch /tmp/mem-check")?;
    let verdict = exec_until(s, &restored, "cat /tmp/mem-verdict 2>/dev/null", |o| {
        !o.is_empty()
    })?;
    let expected = exec(s, &restored, MEM_EXPECTED)?;
    ensure!(
        verdict == expected,
        "the 64 MiB buffer sums to {verdict:?}, expected {expected:?}"
    );

    // Pause/Resume, Pids and Stats work on the restored task.
    s.cd.ctr(&["task", "pause", &restored])?.ok()?;
    wait_status(s, &restored, "PAUSED")?;
    s.cd.ctr(&["task", "resume", &restored])?.ok()?;
    wait_status(s, &restored, "RUNNING")?;
    let ps = s.cd.ctr(&["task", "ps", &restored])?.ok()?.stdout;
    ensure!(
        ps.lines().skip(1).any(|l| !l.trim().is_empty()),
        "ctr task ps of the restored task lists nothing:\n{ps}"
    );
    // containerd 2.2.7's runc shim answers no metrics for a restored task ("ctr: no metrics
    // received", every run here); cryo's shim is held to them on both releases.
    if !(rt == Runtime::Runc && s.cd.release.is_v2()) {
        s.cd.ctr(&["task", "metrics", &restored])?
            .ok()
            .context("metrics of the restored task")?;
    }

    let warning = kill_and_remove_task(s, &restored)?;
    ensure!(
        warning.contains("137"),
        "the restored task killed with SIGKILL did not exit 137: {warning:?}"
    );
    s.cd.ctr(&["container", "delete", &restored])?.ok()?;
    assert_gone(s, &restored)?;
    assert_gone(s, id)
}

/// `ctr task checkpoint` of a running task leaves it running and of a paused one leaves it
/// paused (two containers: ctr refuses a second checkpoint of one spec as "already exists").
fn task_checkpoint_running_and_paused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    run_detached(s, rt, id, &[])?;
    let out =
        s.cd.ctr(&["task", "checkpoint", id])?
            .ok()
            .context("checkpoint running")?;
    ensure!(
        !out.stdout.trim().is_empty(),
        "no checkpoint image named: {out:?}"
    );
    wait_status(s, id, "RUNNING")?;
    exec(s, id, "true").context("exec after a checkpoint")?;

    let paused = format!("{id}-paused");
    let _cleanup = Cleanup(s, paused.clone());
    run_detached(s, rt, &paused, &[])?;
    s.cd.ctr(&["task", "pause", &paused])?.ok()?;
    wait_status(s, &paused, "PAUSED")?;
    let out = s.cd.ctr(&["task", "checkpoint", &paused])?;
    eprintln!("{}: checkpoint of a paused task: {out:?}", rt.name());
    out.ok().context("checkpoint paused")?;
    wait_status(s, &paused, "PAUSED")?;
    s.cd.ctr(&["task", "resume", &paused])?.ok()?;
    wait_status(s, &paused, "RUNNING")?;
    Ok(())
}

/// A checkpoint of a sleeping container, the container removed; returns the image name.
fn checkpoint_of_sleeper(s: &Suite, rt: Runtime, id: &str) -> Result<String> {
    run_detached(s, rt, id, &[])?;
    let image = unique_ref(id);
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint")?;
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;
    Ok(image)
}

/// A copy of checkpoint image `image` under a new name whose CRIU directory `edit` changed
/// (the image's blobs fetched, the CRIU tar rebuilt, a new index, `ctr image import`).
fn doctored(s: &Suite, image: &str, edit: impl Fn(&Path) -> Result<()>) -> Result<String> {
    doctored_blobs(s, image, |media_type, blob, work| {
        criu_tar_edited(media_type, blob, work, &edit)
    })
}

/// A copy of checkpoint image `image` under a new name, each blob replaced by the file
/// `edit(media type, fetched blob, a work directory)` returns (`None`: kept), imported.
pub(super) fn doctored_blobs(
    s: &Suite,
    image: &str,
    edit: impl Fn(&str, &Path, &Path) -> Result<Option<std::path::PathBuf>>,
) -> Result<String> {
    let work = tempfile::tempdir_in(&s.cd.dir)?;
    let (tar, name) = rebuilt_tar(s, image, work.path(), edit)?;
    s.cd.ctr(&[
        "image",
        "import",
        "--all-platforms",
        "--no-unpack",
        &tar.display().to_string(),
    ])?
    .ok()
    .context("import the doctored checkpoint")?;
    Ok(name)
}

/// An OCI layout tar (in `work`) of checkpoint image `image` with its CRIU directory changed
/// by `edit`, under a new name: (the tar, the name).
fn checkpoint_tar(
    s: &Suite,
    image: &str,
    work: &Path,
    edit: impl Fn(&Path) -> Result<()>,
) -> Result<(std::path::PathBuf, String)> {
    rebuilt_tar(s, image, work, |media_type, blob, work| {
        criu_tar_edited(media_type, blob, work, &edit)
    })
}

/// For [`rebuilt_tar`]: the CRIU tar (`blob`, when of the CRIU media type) rebuilt after
/// `edit` changed its extracted directory.
fn criu_tar_edited(
    media_type: &str,
    blob: &Path,
    work: &Path,
    edit: &impl Fn(&Path) -> Result<()>,
) -> Result<Option<std::path::PathBuf>> {
    let criu_type = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
    if media_type != criu_type {
        return Ok(None);
    }
    let dir = work.join("criu");
    std::fs::create_dir_all(&dir)?;
    sh(Command::new("tar").arg("-xf").arg(blob).arg("-C").arg(&dir))?;
    edit(&dir)?;
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    let new = work.join("criu.tar");
    sh(Command::new("tar")
        .arg("-cf")
        .arg(&new)
        .arg("-C")
        .arg(&dir)
        .args(&names))?;
    Ok(Some(new))
}

/// An OCI layout tar (in `work`) of checkpoint image `image` with each blob replaced by what
/// `edit` returns for it, under a new name: (the tar, the name).
fn rebuilt_tar(
    s: &Suite,
    image: &str,
    work: &Path,
    edit: impl Fn(&str, &Path, &Path) -> Result<Option<std::path::PathBuf>>,
) -> Result<(std::path::PathBuf, String)> {
    let blobs = work.join("layout/blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let listing = s.cd.ctr(&["image", "ls"])?.ok()?.stdout;
    let index_digest = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(image))
        .and_then(|l| l.split_whitespace().nth(2))
        .with_context(|| format!("{image} not in image ls:\n{listing}"))?
        .to_string();
    let fetch = |digest: &str| -> Result<std::path::PathBuf> {
        let to = blobs.join(digest.trim_start_matches("sha256:"));
        let file = std::fs::File::create(&to)?;
        let status = Command::new("ctr")
            .arg("-a")
            .arg(s.cd.address())
            .args(["-n", &s.cd.namespace, "content", "get", digest])
            .stdout(file)
            .status()?;
        ensure!(status.success(), "ctr content get {digest}: {status}");
        Ok(to)
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fetch(&index_digest)?)?)?;
    for m in index["manifests"]
        .as_array_mut()
        .context("index has no manifests")?
    {
        let digest = m["digest"]
            .as_str()
            .context("descriptor digest")?
            .to_string();
        let blob = fetch(&digest)?;
        let media_type = m["mediaType"].as_str().unwrap_or_default().to_string();
        let Some(new) = edit(&media_type, &blob, work)? else {
            continue;
        };
        let (hex, size) = add_blob(&blobs, &new)?;
        m["digest"] = format!("sha256:{hex}").into();
        m["size"] = size.into();
    }
    let new_index = work.join("index.blob");
    std::fs::write(&new_index, serde_json::to_vec(&index)?)?;
    let (hex, size) = add_blob(&blobs, &new_index)?;
    let name = unique_ref("doctored");
    let layout = work.join("layout");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": format!("sha256:{hex}"),
                "size": size,
                "annotations": {"io.containerd.image.name": name},
            }],
        })
        .to_string(),
    )?;
    let tar = work.join("doctored.tar");
    sh(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .args(["oci-layout", "index.json", "blobs"]))?;
    Ok((tar, name))
}

/// Move `file` into the layout's blobs under its digest: (hex digest, size).
fn add_blob(blobs: &Path, file: &Path) -> Result<(String, u64)> {
    let out = Command::new("sha256sum").arg(file).output()?;
    ensure!(out.status.success(), "sha256sum {}", file.display());
    let hex = String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_string();
    let size = std::fs::metadata(file)?.len();
    std::fs::rename(file, blobs.join(&hex))?;
    Ok((hex, size))
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// After a failed restore of `id`: no process of it runs; removing what ctr left (task,
/// container) leaves nothing (no task, no mount).
pub(super) fn nothing_left_after_failed_restore(s: &Suite, id: &str) -> Result<()> {
    let ps = s.cd.ctr(&["task", "ps", id])?;
    let running: Vec<&str> = ps
        .stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    ensure!(
        running.is_empty(),
        "processes left by the failed restore: {running:?}"
    );
    let _ = s.cd.ctr(&["task", "rm", "-f", id]);
    s.cd.ctr(&["container", "delete", id])?.ok()?;
    assert_gone(s, id)
}

/// A checkpoint whose CRIU inventory is garbage: the restore fails naming CRIU's complaint, and
/// nothing of the new container is left.
fn restore_of_a_corrupt_image_fails_cleanly(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    let image = checkpoint_of_sleeper(s, rt, id)?;
    let bad = doctored(s, &image, |dir| {
        std::fs::write(
            dir.join("inventory.img"),
            b"this is not a CRIU image at all",
        )?;
        Ok(())
    })?;
    let out =
        s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &bad])?;
    eprintln!("{}: restore of a corrupt image: {out:?}", rt.name());
    ensure!(
        out.code != 0,
        "the corrupt checkpoint was restored: {out:?}"
    );
    ensure!(
        out.stderr.to_lowercase().contains("criu"),
        "the error does not name CRIU: {:?}",
        out.stderr
    );
    // cryo quotes CRIU's complaint (runc's shim only points to the log).
    ensure!(
        rt == Runtime::Runc || out.stderr.contains("inventory.img"),
        "the error does not quote CRIU's complaint about inventory.img: {:?}",
        out.stderr
    );
    nothing_left_after_failed_restore(s, &restored)
}

/// A checkpoint whose manifest claims a newer format major: Create refuses it by name before
/// CRIU runs, and nothing is left.
fn restore_of_a_newer_format_is_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    let image = checkpoint_of_sleeper(s, rt, id)?;
    let bad = doctored(s, &image, |dir| {
        let path = dir.join("cryo-checkpoint.json");
        let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        manifest["format"] = serde_json::json!({"major": 99, "minor": 0});
        std::fs::write(&path, serde_json::to_vec(&manifest)?)?;
        Ok(())
    })?;
    let out =
        s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &bad])?;
    ensure!(
        out.code != 0,
        "a format 99 checkpoint was restored: {out:?}"
    );
    ensure!(
        out.stderr.contains("format 99.0"),
        "the error does not name the format: {:?}",
        out.stderr
    );
    nothing_left_after_failed_restore(s, &restored)
}

/// A container with an exec'd process running at checkpoint time: the checkpoint leaves both
/// running (the exec'd process keeps counting), and the restored container runs and takes
/// execs. The exec'd process itself is not in CRIU's images (it is not a descendant of PID 1,
/// whose tree CRIU dumps), with either runtime: the restored container has PID 1's tree only.
fn checkpoint_with_a_running_exec(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    run_detached(s, rt, id, &[])?;
    s.cd.ctr(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "counter",
        id,
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/ecount; sleep 0.1; done",
    ])?
    .ok()?;
    let read = |task: &str| -> Result<u64> {
        let text = exec_until(s, task, "cat /tmp/ecount", |o| o.parse::<u64>().is_ok())?;
        Ok(text.parse()?)
    };
    exec_until(s, id, "cat /tmp/ecount", |o| {
        o.parse::<u64>().is_ok_and(|n| n >= 5)
    })?;
    let image = unique_ref(id);
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint with a running exec")?;
    let after_checkpoint = read(id)?;
    exec_until(s, id, "cat /tmp/ecount", |o| {
        o.parse::<u64>().is_ok_and(|n| n > after_checkpoint)
    })
    .context("the exec'd process stopped counting after the checkpoint")?;
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;

    s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &image])?
        .ok()
        .context("restore")?;
    wait_status(s, &restored, "RUNNING")?;
    ensure!(
        exec(s, &restored, "cat /proc/1/cmdline | tr '\\0' ' '")?.starts_with("sleep"),
        "PID 1 of the restored container is not the sleeper"
    );
    let _ = kill_and_remove_task(s, &restored)?;
    s.cd.ctr(&["container", "delete", &restored])?.ok()?;
    assert_gone(s, &restored)
}

/// Where containerd (and the shims) look for binaries in the missing-CRIU case: the system's
/// directories, not /usr/local/sbin where scripts/setup installs CRIU.
const PATH_WITHOUT_CRIU: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// With no CRIU on containerd's PATH (a second private containerd): a checkpoint fails naming
/// CRIU and the task keeps running; a restore of a good checkpoint fails naming CRIU and leaves
/// nothing.
fn missing_criu_is_named(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    for dir in std::env::split_paths(PATH_WITHOUT_CRIU) {
        ensure!(
            !dir.join("criu").exists(),
            "precondition: {} holds a criu; this case needs a PATH without one",
            dir.display()
        );
    }
    let image = checkpoint_of_sleeper(s, rt, id)?;
    let work = tempfile::tempdir_in(&s.cd.dir)?;
    let (tar, name) = checkpoint_tar(s, &image, work.path(), |_| Ok(()))?;
    let options = StartOptions {
        path: Some(PATH_WITHOUT_CRIU.into()),
        ..Default::default()
    };
    let cd = Containerd::start_with(&harness::built_shim()?, &options)?;
    let result = without_criu(&cd, s, rt, id, &tar, &name);
    let teardown = cd.teardown(&[]);
    result?;
    teardown
}

fn without_criu(
    cd: &Containerd,
    s: &Suite,
    rt: Runtime,
    id: &str,
    tar: &Path,
    name: &str,
) -> Result<()> {
    let busybox = s.cd.dir.join("images/busybox.tar");
    ensure!(busybox.is_file(), "{} is missing", busybox.display());
    cd.ctr(&["image", "import", &busybox.display().to_string()])?
        .ok()?;
    cd.ctr(&[
        "image",
        "import",
        "--all-platforms",
        "--no-unpack",
        &tar.display().to_string(),
    ])?
    .ok()?;
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        rt.id(),
        BUSYBOX_IMAGE,
        id,
        "sleep",
        "100000",
    ])?
    .ok()?;
    let out = cd.ctr(&["task", "checkpoint", id])?;
    eprintln!("{}: checkpoint without CRIU: {out:?}", rt.name());
    ensure!(
        out.code != 0,
        "a checkpoint without CRIU succeeded: {out:?}"
    );
    ensure!(
        out.stderr.to_lowercase().contains("criu"),
        "the error does not name CRIU: {:?}",
        out.stderr
    );
    let ls = cd.ctr(&["task", "ls"])?.stdout;
    ensure!(
        ls.lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING")),
        "the task does not run after the failed checkpoint:\n{ls}"
    );

    let restored = format!("{id}-restored");
    let out = cd.ctr(&["container", "restore", "--live", "--rw", &restored, name])?;
    eprintln!("{}: restore without CRIU: {out:?}", rt.name());
    ensure!(out.code != 0, "a restore without CRIU succeeded: {out:?}");
    ensure!(
        out.stderr.to_lowercase().contains("criu"),
        "the error does not name CRIU: {:?}",
        out.stderr
    );
    let ps = cd.ctr(&["task", "ps", &restored])?;
    ensure!(
        ps.stdout.lines().skip(1).all(|l| l.trim().is_empty()),
        "processes left by the failed restore: {}",
        ps.stdout
    );
    Ok(())
}

/// The Task API's Checkpoint with options, as clients send them to runc's shim (ctr 1.6 sends
/// none to another runtime): an unknown options type is refused naming it and the task keeps
/// running; runc's `CheckpointOptions` with `exit`, `image_path` and `work_path` put the images
/// and CRIU's log where asked and stop the task.
fn checkpoint_options_are_honoured(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    use containerd_shim_protos::api;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
    use containerd_shim_protos::protobuf::{Message, MessageField};
    use containerd_shim_protos::shim::oci::CheckpointOptions;
    run_detached(s, rt, id, &[])?;
    // Task API v2, or v3 for containerd 2.x's runc shim.
    let shim = s.cd.shim_address(id)?;
    let work = tempfile::tempdir_in(&s.cd.dir)?;
    let (images, logs) = (work.path().join("images"), work.path().join("work"));
    let checkpoint = |options: Any| {
        // containerd passes image_path, when a client gives one, as the request's path too.
        let req = api::CheckpointTaskRequest {
            id: id.to_string(),
            path: images.display().to_string(),
            options: MessageField::some(options),
            ..Default::default()
        };
        shim.call::<_, Empty>("Checkpoint", &req, Duration::from_secs(60))
    };

    let bogus = checkpoint(Any {
        type_url: "example.com/bogus.CheckpointOptions".into(),
        value: vec![],
        ..Default::default()
    });
    let err = match bogus {
        Ok(_) => bail!("checkpoint options of an unknown type were accepted"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        rt == Runtime::Runc || err.contains("bogus.CheckpointOptions"),
        "the refusal does not name the type: {err}"
    );
    wait_status(s, id, "RUNNING")?;

    let options = CheckpointOptions {
        exit: true,
        image_path: images.display().to_string(),
        work_path: logs.display().to_string(),
        ..Default::default()
    };
    checkpoint(Any {
        type_url: "containerd.runc.v1.CheckpointOptions".into(),
        value: options.write_to_bytes()?,
        ..Default::default()
    })
    .context("checkpoint with runc's options")?;
    wait_status(s, id, "STOPPED").context("exit was asked for")?;
    ensure!(
        images.join("inventory.img").is_file(),
        "no CRIU images in image_path {}",
        images.display()
    );
    let logged = std::fs::read_dir(&logs)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .unwrap_or(false);
    ensure!(logged, "no CRIU log in work_path {}", logs.display());
    Ok(())
}

/// A container with a bind mount of a host directory (an external mount for CRIU, mapped onto
/// the new spec's source at restore) and a tmpfs (its files in CRIU's images), each holding a
/// file and an open descriptor: after the restore both files are there, the process still
/// holds both, and what it writes through the bind mount reaches the host directory.
fn bind_and_tmpfs_mounts_come_back(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    let host = tempfile::tempdir_in(&s.cd.dir)?;
    let bind = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        host.path().display()
    );
    let script = "echo on-tmpfs > /scratch/t; echo on-bind > /data/b; \
                  exec 4>>/data/log; exec 5</scratch/t; \
                  while true; do \
                    if [ -e /data/go ]; then rm /data/go; echo after-restore >&4; fi; sleep 0.1; \
                  done";
    s.cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        rt.id(),
        "--mount",
        &bind,
        "--mount",
        "type=tmpfs,src=tmpfs,dst=/scratch,options=size=16m",
        BUSYBOX_IMAGE,
        id,
        "sh",
        "-c",
        script,
    ])?
    .ok()?;
    wait_status(s, id, "RUNNING")?;
    exec_until(s, id, "cat /scratch/t", |o| o == "on-tmpfs")?;
    let image = unique_ref(id);
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint")?;
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;

    s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &image])?
        .ok()
        .context("restore")?;
    wait_status(s, &restored, "RUNNING")?;
    ensure!(
        exec(s, &restored, "cat /scratch/t")? == "on-tmpfs",
        "the tmpfs file is not there after the restore"
    );
    ensure!(
        exec(s, &restored, "cat /data/b")? == "on-bind",
        "the bind-mounted file is not there after the restore"
    );
    let fds = exec(s, &restored, "ls -l /proc/1/fd/4 /proc/1/fd/5")?;
    ensure!(
        fds.contains("/data/log") && fds.contains("/scratch/t"),
        "PID 1 lost its descriptors on the mounts: {fds}"
    );
    std::fs::write(host.path().join("go"), b"")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(host.path().join("log")).unwrap_or_default() != "after-restore\n"
    {
        ensure!(
            Instant::now() < deadline,
            "what the restored process wrote through the bind mount never reached the host"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_and_remove_task(s, &restored)?;
    s.cd.ctr(&["container", "delete", &restored])?.ok()?;
    assert_gone(s, &restored)
}

/// A container that joined another's network namespace (as a pod's containers join the
/// sandbox's): the namespace is external to CRIU's images, and the restored container is in
/// that same namespace again, not in a new one.
fn joined_network_namespace_is_rejoined(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let holder = format!("{id}-netns");
    let restored = format!("{id}-restored");
    let _cleanup = (Cleanup(s, restored.clone()), Cleanup(s, holder.clone()));
    run_detached(s, rt, &holder, &[])?;
    let ps = s.cd.ctr(&["task", "ls"])?.ok()?.stdout;
    let pid = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some(holder.as_str()))
        .and_then(|l| l.split_whitespace().nth(1))
        .with_context(|| format!("no pid for {holder} in:\n{ps}"))?
        .to_string();
    let netns = format!("/proc/{pid}/ns/net");
    let want = std::fs::read_link(&netns)?.display().to_string();
    s.cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        rt.id(),
        "--with-ns",
        &format!("network:{netns}"),
        BUSYBOX_IMAGE,
        id,
        "sleep",
        "100000",
    ])?
    .ok()?;
    wait_status(s, id, "RUNNING")?;
    let image = unique_ref(id);
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint")?;
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;
    s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &image])?
        .ok()
        .context("restore")?;
    wait_status(s, &restored, "RUNNING")?;
    let got = exec(s, &restored, "readlink /proc/1/ns/net")?;
    ensure!(
        got == want,
        "the restored container is in network namespace {got}, not the joined {want}"
    );
    kill_and_remove_task(s, &restored)?;
    s.cd.ctr(&["container", "delete", &restored])?.ok()?;
    assert_gone(s, &restored)
}

/// Task API Checkpoint of a paused task with runc's `exit` option (as a client sends it after
/// containerd paused the task): the frozen processes are killed after the dump and the task
/// stops, rather than staying frozen with a SIGKILL pending.
fn paused_checkpoint_with_exit_stops(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    use containerd_shim_protos::api;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
    use containerd_shim_protos::protobuf::{Message, MessageField};
    use containerd_shim_protos::shim::oci::CheckpointOptions;
    run_detached(s, rt, id, &[])?;
    s.cd.ctr(&["task", "pause", id])?.ok()?;
    wait_status(s, id, "PAUSED")?;
    let shim = s.cd.shim_address(id)?;
    let work = tempfile::tempdir_in(&s.cd.dir)?;
    let options = CheckpointOptions {
        exit: true,
        ..Default::default()
    };
    let req = api::CheckpointTaskRequest {
        id: id.to_string(),
        path: work.path().join("images").display().to_string(),
        options: MessageField::some(Any {
            type_url: "containerd.runc.v1.CheckpointOptions".into(),
            value: options.write_to_bytes()?,
            ..Default::default()
        }),
        ..Default::default()
    };
    shim.call::<_, Empty>("Checkpoint", &req, Duration::from_secs(60))
        .context("checkpoint of a paused task with exit")?;
    wait_status(s, id, "STOPPED").context("the paused task did not stop after an exit checkpoint")
}

/// A restore created but never started (Create with a checkpoint, then Kill and Delete, as
/// containerd does when something fails between the two): no process exists yet, so a Kill of
/// PID 1 is refused without signalling anything else (pid 0 would be the shim's own process
/// group), and Delete returns at once and leaves nothing.
fn prepared_restore_is_killed_and_deleted_cleanly(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    use containerd_shim_protos::api;
    use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
    run_detached(s, rt, id, &[])?;
    let shim = s.cd.shim_address(id)?;
    let bundle =
        s.cd.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&s.cd.namespace)
            .join(id);
    let work = tempfile::tempdir_in(&s.cd.dir)?;
    let images = work.path().join("images");
    let req = api::CheckpointTaskRequest {
        id: id.to_string(),
        path: images.display().to_string(),
        ..Default::default()
    };
    shim.call::<_, Empty>("Checkpoint", &req, Duration::from_secs(60))
        .context("checkpoint")?;

    // A second task on the same shim, restoring that checkpoint onto the busybox directory.
    let second = format!("{id}-prepared");
    let new_bundle = work.path().join("bundle");
    std::fs::create_dir_all(&new_bundle)?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    spec["root"]["path"] = s.rootfs.display().to_string().into();
    spec["linux"]["cgroupsPath"] = format!("/{}/{second}", s.cd.namespace).into();
    std::fs::write(new_bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let create = api::CreateTaskRequest {
        id: second.clone(),
        bundle: new_bundle.display().to_string(),
        checkpoint: images.display().to_string(),
        ..Default::default()
    };
    shim.call::<_, api::CreateTaskResponse>("Create", &create, Duration::from_secs(30))
        .context("create for a restore")?;
    let kill = api::KillRequest {
        id: second.clone(),
        signal: 9,
        ..Default::default()
    };
    let killed = shim.call::<_, Empty>("Kill", &kill, Duration::from_secs(10));
    ensure!(
        killed.is_err(),
        "Kill of a restore that has no process yet was accepted"
    );
    wait_status(s, id, "RUNNING").context("the first task after the Kill")?;
    let delete = api::DeleteRequest {
        id: second.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    shim.call::<_, api::DeleteResponse>("Delete", &delete, Duration::from_secs(30))
        .context("delete of the prepared restore")?;
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "Delete of a prepared restore took {:?}",
        started.elapsed()
    );
    let cgroup = Path::new("/sys/fs/cgroup/memory")
        .join(&s.cd.namespace)
        .join(&second);
    ensure!(!cgroup.exists(), "cgroup {} left", cgroup.display());
    assert_gone(s, &second)
}

/// A container without stdio (`ctr run --null-io`): its streams are /dev/null, which must be
/// the container's own for CRIU to dump them (the host's is on a mount outside the container).
fn null_io_container_round_trips(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    run_detached(s, rt, id, &["--null-io"])?;
    let image = unique_ref(id);
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint of a container with null stdio")?;
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;
    s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &image])?
        .ok()
        .context("restore")?;
    wait_status(s, &restored, "RUNNING")?;
    let fds = exec(
        s,
        &restored,
        "for f in 0 1 2; do readlink /proc/1/fd/$f; done",
    )?;
    ensure!(
        fds.lines().all(|l| l == "/dev/null"),
        "the restored PID 1's stdio: {fds:?}"
    );
    kill_and_remove_task(s, &restored)?;
    s.cd.ctr(&["container", "delete", &restored])?.ok()?;
    assert_gone(s, &restored)
}

/// The pid of task `id` as `ctr task ls` shows it.
pub(super) fn task_pid(s: &Suite, id: &str) -> Result<u32> {
    let ls = s.cd.ctr(&["task", "ls"])?.ok()?.stdout;
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no pid for {id} in:\n{ls}"))
}

/// `ctr events` of the suite's namespace, subscribed (a probe container's events came
/// through); each line that mentions `needle` is sent on the channel. Killed when dropped.
struct Events {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Events {
    fn subscribe(s: &Suite, needle: &str) -> Result<Events> {
        use std::io::BufRead;
        let mut child = Command::new(s.cd.ctr_path())
            .arg("-a")
            .arg(s.cd.address())
            .args(["-n", &s.cd.namespace, "events"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("ctr events: no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        let probe = format!("{needle}-probe");
        let (needle, probe_needle) = (format!("\"{needle}\""), format!("\"{probe}\""));
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
            {
                if line.contains(&probe_needle) {
                    let _ = tx.send(String::new());
                } else if line.contains(&needle) {
                    let _ = tx.send(line);
                }
            }
        });
        let events = Events { child, lines };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let _ = s.cd.ctr(&["container", "create", BUSYBOX_IMAGE, &probe]);
            let _ = s.cd.ctr(&["container", "delete", &probe]);
            if events
                .lines
                .recv_timeout(Duration::from_millis(500))
                .is_ok()
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "ctr events showed nothing of a probe container"
            );
        }
        while events.lines.try_recv().is_ok() {}
        Ok(events)
    }

    /// The first line on `topic` within 20 s.
    fn wait_for(&self, topic: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if line.split_whitespace().any(|w| w == topic) {
                    return Ok(line);
                }
                seen.push(line);
            }
        }
        bail!("no {topic} event; seen: {seen:?}")
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TaskExit of a restored PID 1 names its pid (the one `ctr task ls` shows), as for any
/// task, not 0.
fn restored_task_exit_carries_its_pid(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    let image = checkpoint_of_sleeper(s, rt, id)?;
    s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &image])?
        .ok()
        .context("restore")?;
    wait_status(s, &restored, "RUNNING")?;
    let pid = task_pid(s, &restored)?;
    ensure!(pid > 0, "the restored task has pid {pid}");
    let events = Events::subscribe(s, &restored)?;
    s.cd.ctr(&["task", "kill", "-s", "SIGKILL", &restored])?
        .ok()?;
    let exit = events.wait_for("/tasks/exit")?;
    eprintln!("{}: {exit}", rt.name());
    ensure!(
        exit.contains(&format!("\"pid\":{pid},")),
        "the restored task's exit event does not carry its pid {pid}: {exit}"
    );
    wait_status(s, &restored, "STOPPED")?;
    s.cd.ctr(&["task", "rm", &restored])?.ok()?;
    s.cd.ctr(&["container", "delete", &restored])?.ok()?;
    assert_gone(s, &restored)
}

/// A kubelet-style emptyDir (`<dir>/pods/<uid>/volumes/kubernetes.io~empty-dir/ws`) under
/// `base`, and the `ctr run` arguments mounting it at `/ws` as a private overlay volume
/// (`dev.cryo.spec.mount.ws.type=bind`, share=container by default).
fn overlay_volume_args(base: &Path) -> Result<(std::path::PathBuf, Vec<String>)> {
    let dir = base.join("pods/uid-1/volumes/kubernetes.io~empty-dir/ws");
    std::fs::create_dir_all(&dir)?;
    let args = vec![
        "--annotation".to_string(),
        "dev.cryo.spec.mount.ws.type=bind".to_string(),
        "--annotation".to_string(),
        "dev.cryo.spec.mount.ws.share=container".to_string(),
        "--mount".to_string(),
        format!("type=bind,src={},dst=/ws,options=rbind:rw", dir.display()),
    ];
    Ok((dir, args))
}

/// What the overlay volume cases write: a file with its own mode, a directory, a symlink, 8 MiB
/// of random bytes, a sparse file with data at its end, and a log PID 1 keeps open and writes
/// to when `/ws/go` appears.
const VOLUME_WORKLOAD: &str = "echo hello > /ws/file; chmod 640 /ws/file; \
    mkdir -p /ws/dir/sub; echo deep > /ws/dir/sub/f; ln -s dir/sub/f /ws/link; \
    head -c 8388608 /dev/urandom > /ws/random; md5sum /ws/random > /ws/random.md5; \
    dd if=/dev/zero of=/ws/sparse bs=1 count=0 seek=104857600 2>/dev/null; \
    echo tail >> /ws/sparse; \
    exec 4>>/ws/log; echo before >&4; echo ready > /ws/ready; \
    while true; do if [ -e /ws/go ]; then rm /ws/go; echo after-restore >&4; fi; sleep 0.1; done";

/// Checkpoint the container running [`VOLUME_WORKLOAD`] on a private overlay volume, remove
/// it and empty the volume's directory (a new node has nothing of it): the checkpoint image.
fn checkpoint_volume_workload(s: &Suite, rt: Runtime, id: &str, base: &Path) -> Result<String> {
    let (dir, args) = overlay_volume_args(base)?;
    let mut run = vec!["run", "-d", "--runtime", rt.id()];
    run.extend(args.iter().map(String::as_str));
    run.extend([BUSYBOX_IMAGE, id, "sh", "-c", VOLUME_WORKLOAD]);
    s.cd.ctr(&run)?.ok()?;
    wait_status(s, id, "RUNNING")?;
    exec_until(s, id, "cat /ws/ready 2>/dev/null", |o| o == "ready")?;
    let image = unique_ref(id);
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint")?;
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;
    std::fs::remove_dir_all(&dir)?;
    std::fs::create_dir_all(&dir)?;
    Ok(image)
}

/// A container with a private overlay volume (`share=container`: its files are in an upper
/// directory only it sees) checkpointed, removed, its volume directory emptied as on a new
/// node, and restored: the files are back with their content, modes, symlink and holes, and
/// the process still writes through the descriptor it held on the volume.
fn private_overlay_volume_comes_back(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    let base = tempfile::tempdir_in(&s.cd.dir)?;
    let image = checkpoint_volume_workload(s, rt, id, base.path())?;
    s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &image])?
        .ok()
        .context("restore")?;
    wait_status(s, &restored, "RUNNING")?;
    let got = exec(
        s,
        &restored,
        "cat /ws/file; stat -c %a /ws/file; cat /ws/dir/sub/f; readlink /ws/link; cat /ws/link; \
         md5sum /ws/random | cmp - /ws/random.md5 && echo random-ok; \
         stat -c %s /ws/sparse; tail -c 5 /ws/sparse; du -k /ws/sparse | cut -f1",
    )?;
    let lines: Vec<&str> = got.lines().collect();
    ensure!(
        lines.len() == 9,
        "the volume after the restore (expected 9 lines):\n{got}"
    );
    ensure!(
        lines[..7]
            == [
                "hello",
                "640",
                "deep",
                "dir/sub/f",
                "deep",
                "random-ok",
                "104857605"
            ],
        "the volume after the restore:\n{got}"
    );
    ensure!(lines[7] == "tail", "the sparse file's end: {got}");
    let kib: u64 = lines[8].parse().context("du")?;
    ensure!(
        kib < 1024,
        "the sparse file takes {kib} KiB after the restore: its hole was filled"
    );
    exec(s, &restored, "touch /ws/go")?;
    exec_until(s, &restored, "cat /ws/log", |o| {
        o == "before\nafter-restore"
    })
    .context("the restored process's descriptor on the volume")?;
    kill_and_remove_task(s, &restored)?;
    s.cd.ctr(&["container", "delete", &restored])?.ok()?;
    assert_gone(s, &restored)
}

/// A checkpoint whose volume section was tampered with (bytes of the data file changed): the
/// restore fails naming the section, no process of it runs, nothing of the section is left in
/// the new volume, and removing it leaves nothing.
fn a_corrupt_volume_section_fails_restore_cleanly(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    let base = tempfile::tempdir_in(&s.cd.dir)?;
    let image = checkpoint_volume_workload(s, rt, id, base.path())?;
    let bad = doctored(s, &image, |dir| {
        let data = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "multitar"))
            .context("no volume data (*.multitar) in the checkpoint")?;
        let mut bytes = std::fs::read(&data)?;
        // Inside the first file's content (after its tar header).
        ensure!(bytes.len() > 8192, "volume data of {} bytes", bytes.len());
        for b in &mut bytes[4096..4200] {
            *b ^= 0x5a;
        }
        std::fs::write(&data, bytes)?;
        Ok(())
    })?;
    let out =
        s.cd.ctr(&["container", "restore", "--live", "--rw", &restored, &bad])?;
    eprintln!(
        "{}: restore of a corrupt volume section: {out:?}",
        rt.name()
    );
    ensure!(out.code != 0, "the corrupt volume was restored: {out:?}");
    ensure!(
        out.stderr.contains("/ws") && out.stderr.contains("section"),
        "the error does not name the volume's section: {:?}",
        out.stderr
    );
    let volume = base
        .path()
        .join("pods/uid-1/volumes/kubernetes.io~empty-dir/ws/.cryo-filestore");
    let upper = volume.join(format!("container-{restored}/upper"));
    let left: Vec<_> = std::fs::read_dir(&upper)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(
        left.is_empty(),
        "the failed restore left files in {}: {left:?}",
        upper.display()
    );
    nothing_left_after_failed_restore(s, &restored)
}

/// A container with a terminal (`ctr run -t`): its process writes ticks to the tty and the
/// count into a file. Checkpointed, removed, restored: the restored process has a terminal
/// again (its stdio is a pty of the container), its count goes on, and what it writes to the
/// tty reaches the client (containerd 2.x's `ctr container restore` stays attached to the
/// terminal, and is stopped after a few seconds; containerd 1.6's asks for no terminal, which
/// both runtimes refuse, naming the cause, and leave nothing).
fn terminal_container_round_trips(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let restored = format!("{id}-restored");
    let _cleanup = Cleanup(s, restored.clone());
    let ctr = ctr_line(s);
    let fifo = s.cd.fifo_dir().display().to_string();
    let script =
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; echo tick-$i; sleep 0.2; done";
    let out = in_terminal(&format!(
        "{ctr} run --fifo-dir {fifo} -d -t --runtime {} {BUSYBOX_IMAGE} {id} sh -c '{script}'",
        rt.id()
    ))?;
    ensure!(out.code == 0, "run -d -t: {out:?}");
    wait_status(s, id, "RUNNING")?;
    exec_until(s, id, "cat /tmp/count", |o| {
        o.parse::<u64>().is_ok_and(|n| n >= 3)
    })?;
    let image = unique_ref(id);
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint of a container with a terminal")?;
    let before = counter(s, id)?;
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;

    let restore = format!("{ctr} container restore --live --rw {restored} {image}");
    let out = if s.cd.release.is_v2() {
        // Attached until a tick past the checkpoint's count arrives, then stopped.
        in_terminal_until(&restore, Duration::from_secs(90), |printed| {
            ticks(printed).iter().any(|&n| n > before + 1)
        })?
    } else {
        in_terminal(&restore)?
    };
    eprintln!("{}: restore of a terminal container: {out:?}", rt.name());
    if !s.cd.release.is_v2() {
        ensure!(
            out.code != 0 && out.code != 124,
            "ctr 1.6 restored a terminal container without a terminal: {out:?}"
        );
        ensure!(
            rt == Runtime::Runc || out.stdout.contains("terminal"),
            "the refusal does not name the terminal: {out:?}"
        );
        return nothing_left_after_failed_restore(s, &restored);
    }
    // Stopped by `timeout` while attached (124), or detached (0).
    ensure!(
        out.code == 124 || out.code == 0,
        "restore of a container with a terminal: {out:?}"
    );
    ensure!(
        ticks(&out.stdout).iter().any(|&n| n > before + 1),
        "no tick after {before} reached the client through the restored terminal: {out:?}"
    );
    wait_status(s, &restored, "RUNNING")?;
    let fds = exec(
        s,
        &restored,
        "for f in 0 1 2; do readlink /proc/1/fd/$f; done",
    )?;
    ensure!(
        fds.lines().all(|l| l.starts_with("/dev/pts/")),
        "the restored PID 1's stdio is not a terminal: {fds:?}"
    );
    let after = counter(s, &restored)?;
    ensure!(
        after > before,
        "the counter restarted: {after} after the restore, {before} at the checkpoint"
    );
    kill_and_remove_task(s, &restored)?;
    s.cd.ctr(&["container", "delete", &restored])?.ok()?;
    assert_gone(s, &restored)
}

/// The numbers of the `tick-N` lines in what a terminal printed.
fn ticks(printed: &str) -> Vec<u64> {
    printed
        .split_whitespace()
        .filter_map(|w| {
            w.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                .strip_prefix("tick-")
                .and_then(|n| n.parse().ok())
        })
        .collect()
}
