//! ctr cases: stdio — what reaches a process through its stdin FIFO when the client closes it
//! (ctr sends CloseIO as soon as its own stdin ends, while its last bytes may still sit in the
//! FIFO), and what an output FIFO that nobody ever reads costs the shim.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use containerd_shim_protos::api;
use harness::image::BUSYBOX_IMAGE;
use harness::Runtime;

use super::shim_hardening::{exec_request, shim_footprint};
use super::{Case, Suite};

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[(
    "output_fifos_nobody_reads_hang_nothing",
    "runc's shim opens an output FIFO for writing with a blocking open bounded by the request's \
     deadline: Start waits for a reader and fails when the deadline passes (seen on containerd \
     1.6: `Start: ... timed out waiting on channel` after 10 s)",
)];

pub const CASES: &[(&str, Case)] = &[
    ("large_stdin_arrives_whole", large_stdin_arrives_whole),
    (
        "output_fifos_nobody_reads_hang_nothing",
        output_fifos_nobody_reads_hang_nothing,
    ),
];

/// The stdin fed to each process: far more than a FIFO holds (64 KiB).
const STDIN_SIZE: usize = 8 << 20;
/// Rounds per way in: the bytes left in the FIFO at CloseIO vary with scheduling.
const ROUNDS: usize = 3;
/// How long one Task API call may take: a call that does not return in it failed.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Execs whose output FIFO nobody reads.
const UNREAD_EXECS: usize = 5;

/// Every byte of a stdin larger than the FIFO reaches the process, through `ctr task exec` and
/// `ctr run`, for cryo as for runc (runc's shim reads the FIFO to its end before the process's
/// stdin closes; cryo dropped what was still in the FIFO when ctr's CloseIO arrived).
fn large_stdin_arrives_whole(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let input: Vec<u8> = (0..STDIN_SIZE).map(|i| (i % 251) as u8).collect();
    let want = STDIN_SIZE.to_string();
    super::run_detached(s, rt, id, &[])?;
    for round in 0..ROUNDS {
        let exec_id = format!("wc{round}");
        let out =
            s.cd.ctr_stdin(
                &["task", "exec", "--exec-id", &exec_id, id, "wc", "-c"],
                &input,
            )?
            .ok()?;
        ensure!(
            out.stdout.trim() == want,
            "exec round {round}: `wc -c` counted {:?} of {want} bytes",
            out.stdout.trim()
        );
    }
    super::cleanup_container(&s.cd, id);
    for round in 0..ROUNDS {
        let args = [
            "run",
            "--rm",
            "--runtime",
            rt.id(),
            BUSYBOX_IMAGE,
            id,
            "wc",
            "-c",
        ];
        let out = s.cd.ctr_stdin(&args, &input)?.ok()?;
        ensure!(
            out.stdout.trim() == want,
            "run round {round}: `wc -c` counted {:?} of {want} bytes",
            out.stdout.trim()
        );
    }
    Ok(())
}

/// Execs whose stdout and stderr are a FIFO nobody ever opens for reading: each Exec, Start,
/// Wait and Delete returns (within [`CALL_LIMIT`]), the shim still answers State, and it keeps
/// no thread or descriptor per such exec (cryo's copy threads stayed blocked in a blocking
/// `open` of the FIFO for good, and every exit waited 5 s for them). runc's shim falls short:
/// its Start waits for a reader until the request's deadline.
fn output_fifos_nobody_reads_hang_nothing(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    super::run_detached(s, rt, id, &[])?;
    let shim = super::find_shim(&s.cd.namespace, id).context("no shim process found")?;
    let client = s.cd.shim_address(id)?;
    let dir = tempfile::Builder::new()
        .prefix("unread-")
        .tempdir_in(&s.cd.dir)?;
    let exec = |i: usize| -> Result<()> {
        let fifo = dir.path().join(format!("out{i}"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        let exec_id = format!("unread{i}");
        let req = exec_request(
            id,
            &exec_id,
            &["sh", "-c", "echo out; echo err >&2"],
            &fifo.display().to_string(),
        )?;
        let _: api::Empty = client.call("Exec", &req, CALL_LIMIT).context("Exec")?;
        let (cid, eid) = (id.to_string(), exec_id.clone());
        let _: api::StartResponse = client
            .call(
                "Start",
                &api::StartRequest {
                    id: cid.clone(),
                    exec_id: eid.clone(),
                    ..Default::default()
                },
                CALL_LIMIT,
            )
            .context("Start")?;
        let exit: api::WaitResponse = client
            .call(
                "Wait",
                &api::WaitRequest {
                    id: cid.clone(),
                    exec_id: eid.clone(),
                    ..Default::default()
                },
                CALL_LIMIT,
            )
            .context("Wait")?;
        ensure!(
            exit.exit_status == 0,
            "exec {eid} exited {}",
            exit.exit_status
        );
        let _: api::DeleteResponse = client
            .call(
                "Delete",
                &api::DeleteRequest {
                    id: cid,
                    exec_id: eid,
                    ..Default::default()
                },
                CALL_LIMIT,
            )
            .context("Delete")?;
        Ok(())
    };
    // Warm-up: the shim's thread pools and descriptors as they stay.
    exec(0).context("exec 0")?;
    let settle = || std::thread::sleep(Duration::from_millis(500));
    settle();
    let (fds, threads) = shim_footprint(shim)?;
    for i in 1..=UNREAD_EXECS {
        exec(i).with_context(|| format!("exec {i}"))?;
    }
    let state: api::StateResponse = client
        .call(
            "State",
            &api::StateRequest {
                id: id.to_string(),
                ..Default::default()
            },
            CALL_LIMIT,
        )
        .context("State after the execs")?;
    ensure!(
        state.status == api::Status::RUNNING.into(),
        "State: {:?}",
        state.status
    );
    settle();
    let (fds_after, threads_after) = shim_footprint(shim)?;
    // runc's Go runtime keeps OS threads it once needed (see shim_hardening); a leak grows
    // with every exec.
    let thread_slack = if rt == Runtime::Runc { 8 } else { 2 };
    ensure!(
        fds_after <= fds + 2 && threads_after <= threads + thread_slack,
        "after {UNREAD_EXECS} execs with unread output FIFOs the shim has {fds_after} \
         descriptors (was {fds}) and {threads_after} threads (was {threads})"
    );
    Ok(())
}
