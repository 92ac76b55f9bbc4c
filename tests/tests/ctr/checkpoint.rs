//! ctr cases: checkpoint and restore with CRIU (`ctr container checkpoint --task --rw` then
//! `ctr container restore --live --rw` into a new container; `ctr task checkpoint`), for both
//! runtimes with the same assertions.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use harness::image::BUSYBOX_IMAGE;
use harness::Runtime;

use super::{assert_gone, cleanup_container, run_detached, wait_status, Case, Suite};

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[];

pub const CASES: &[(&str, Case)] = &[
    ("checkpoint_restore_continues", checkpoint_restore_continues),
    (
        "task_checkpoint_running_and_paused",
        task_checkpoint_running_and_paused,
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
fn unique_ref(id: &str) -> String {
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
fn kill_and_remove_task(s: &Suite, id: &str) -> Result<String> {
    s.cd.ctr(&["task", "kill", "-s", "SIGKILL", id])?.ok()?;
    wait_status(s, id, "STOPPED")?;
    let out = s.cd.ctr(&["task", "rm", id])?.ok()?;
    Ok(out.stderr)
}

/// Checkpoint a busy container (with its rootfs changes), remove it, restore it live into a
/// new container: the counter goes on from where it was, the 64 MiB buffer checks out, the
/// file written into the rootfs is there, the open descriptor reads on from its offset, exec
/// works, and SIGKILL gives 137.
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
