//! ctr cases: shim_hardening — what the shim answers and leaves behind when a start fails, when
//! execs come and go with every kind of stdin, when a spec names what does not exist, and when
//! a process is signalled after it is gone.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::{api, ttrpc};
use harness::Runtime;
use harness::ShimAddress;

use super::{Case, Suite};

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[];

pub const CASES: &[(&str, Case)] = &[
    ("failed_start_leaves_nothing", failed_start_leaves_nothing),
    (
        "execs_without_stdin_leak_nothing",
        execs_without_stdin_leak_nothing,
    ),
    (
        "execs_with_null_stdin_leak_nothing",
        execs_with_null_stdin_leak_nothing,
    ),
    (
        "execs_with_closed_pipe_stdin_leak_nothing",
        execs_with_closed_pipe_stdin_leak_nothing,
    ),
    ("bad_spec_values_are_named", bad_spec_values_are_named),
    (
        "kill_of_a_gone_process_is_not_found",
        kill_of_a_gone_process_is_not_found,
    ),
];

/// How many runs of a failing start.
const FAILED_STARTS: usize = 20;
/// How many execs of each kind of stdin.
const EXECS: usize = 300;
/// Timeout of a direct Task API call, in nanoseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A private copy of the busybox rootfs with `/bin/garbage`: executable, not a program.
fn rootfs_with_garbage(s: &Suite, id: &str) -> Result<PathBuf> {
    let dir = s.cd.dir.join(format!("{id}-rootfs"));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&s.rootfs)
        .arg(&dir)
        .output()?;
    ensure!(out.status.success(), "copy the rootfs: {out:?}");
    let garbage = dir.join("bin/garbage");
    std::fs::write(
        &garbage,
        b"\x7fNOT\x01an executable at all\n\x00\x00garbage",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// The shim socket containerd would use for `id` (both shims: sha256 of address/ns/id).
fn shim_socket(s: &Suite, id: &str) -> Result<PathBuf> {
    let key = format!("{}/{}/{id}", s.cd.address().display(), s.cd.namespace);
    let mut c = std::process::Command::new("sha256sum");
    let out = harness::cmd::run(&mut c, Some(key.as_bytes()), Duration::from_secs(5))?.ok()?;
    let hash = out.stdout.split_whitespace().next().context("sha256sum")?;
    Ok(PathBuf::from(format!("/run/containerd/s/{hash}")))
}

/// Everything of `id` that must be gone: task, container, shim process, shim socket, cgroups,
/// mounts.
fn leftovers_of(s: &Suite, id: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    for kind in ["task", "container"] {
        let listed = s.cd.ctr(&[kind, "ls", "-q"])?.stdout;
        if listed.lines().any(|l| l == id) {
            left.push(format!("{kind} {id}"));
        }
    }
    if let Some(pid) = super::find_shim(&s.cd.namespace, id) {
        left.push(format!("shim process {pid}"));
    }
    let socket = shim_socket(s, id)?;
    if socket.exists() {
        left.push(format!("shim socket {}", socket.display()));
    }
    for controller in ["memory", "pids", "cpu", "freezer", "devices", "unified"] {
        let cgroup = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&s.cd.namespace)
            .join(id);
        if cgroup.exists() {
            left.push(format!("cgroup {}", cgroup.display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = s.cd.dir.display().to_string();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(id) && l.contains(&dir))
            .map(|l| format!("mount {l}")),
    );
    Ok(left)
}

/// Wait (a little) for what goes away by itself (a shim leaving after its Shutdown).
fn settled_leftovers(s: &Suite, id: &str) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers_of(s, id)?;
        if left.is_empty() || Instant::now() > deadline {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 9 item 9: a workload that is not a program fails `ctr run` naming the cause, and each
/// of 20 runs leaves nothing (containerd's Delete works because Start left the task STOPPED).
fn failed_start_leaves_nothing(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let rootfs = rootfs_with_garbage(s, id)?;
    let result = (|| -> Result<()> {
        let spec = super::spec_file(s, id, |spec| {
            spec["root"]["path"] = rootfs.display().to_string().into();
            spec["process"]["args"] = serde_json::json!(["/bin/garbage"]);
        })?;
        let mut leaks = Vec::new();
        for run in 0..FAILED_STARTS {
            let out = super::run_spec(s, rt, id, &spec)?;
            ensure!(out.code != 0, "run {run}: garbage ran: {out:?}");
            ensure!(
                out.stderr.contains("exec format error"),
                "run {run}: the cause is not named: {:?}",
                out.stderr
            );
            let left = settled_leftovers(s, id)?;
            if !left.is_empty() {
                leaks.push(format!("run {run}: {left:?}"));
                super::cleanup_container(&s.cd, id);
            }
        }
        ensure!(
            leaks.is_empty(),
            "{} of {FAILED_STARTS} failed starts left something: {leaks:#?}",
            leaks.len()
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&rootfs);
    result
}

/// The shim's open descriptors and threads.
pub(super) fn shim_footprint(shim: i32) -> Result<(usize, usize)> {
    let count = |what: &str| -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{shim}/{what}"))
            .with_context(|| format!("/proc/{shim}/{what}"))?
            .count())
    };
    Ok((count("fd")?, count("task")?))
}

/// Run `exec` 300 times in a running container (after a warm-up) and check the shim's
/// descriptors and threads grow by at most 2 from where they were (runc's Go shim: 8).
fn execs_leak_nothing(
    s: &Suite,
    rt: Runtime,
    id: &str,
    mut exec: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    super::run_detached(s, rt, id, &[])?;
    let shim = super::find_shim(&s.cd.namespace, id).context("no shim process found")?;
    for i in 0..5 {
        exec(i)?;
    }
    let settle = || std::thread::sleep(Duration::from_millis(500));
    settle();
    let (fds, threads) = shim_footprint(shim)?;
    for i in 5..5 + EXECS {
        exec(i).with_context(|| format!("exec {i}"))?;
    }
    // runc's shim is Go: its runtime keeps the OS threads it once needed for blocking calls
    // (seen: 11 -> 14 under load), which is no leak; a leak grows with every exec (the finding:
    // +32 threads over 300 execs). Its descriptors move the same way with the connections
    // containerd 2.2.7 holds to it (seen: 33 -> 36). A leak grows by one or more per exec, +300
    // here: runc's shim gets 8 of slack for both; cryo's shim is held to 2.
    let slack = if rt == Runtime::Runc { 8 } else { 2 };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        settle();
        let (fds_after, threads_after) = shim_footprint(shim)?;
        // A leak is growth: fewer descriptors than after the warm-up (one of its copies
        // finished closing) is none (seen for runc's shim: 37 -> 34).
        let within = |before: usize, after: usize, slack: usize| after <= before + slack;
        if within(fds, fds_after, slack) && within(threads, threads_after, slack) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "after {EXECS} execs the shim has {fds_after} descriptors (was {fds}) and \
             {threads_after} threads (was {threads})"
        );
    }
}

/// A direct Task API client on the shim serving `id`, in whichever version it speaks
/// (containerd 1.6's shims serve v2; containerd 2.2's runc shim v3).
struct TaskClient(ShimAddress);

impl TaskClient {
    fn exec(&self, req: &api::ExecProcessRequest) -> Result<api::Empty> {
        self.0.call("Exec", req, CALL_TIMEOUT)
    }
    fn start(&self, req: &api::StartRequest) -> Result<api::StartResponse> {
        self.0.call("Start", req, CALL_TIMEOUT)
    }
    fn wait(&self, req: &api::WaitRequest) -> Result<api::WaitResponse> {
        self.0.call("Wait", req, CALL_TIMEOUT)
    }
    fn kill(&self, req: &api::KillRequest) -> Result<api::Empty> {
        self.0.call("Kill", req, CALL_TIMEOUT)
    }
    fn delete(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse> {
        self.0.call("Delete", req, CALL_TIMEOUT)
    }
}

fn task_client(s: &Suite, id: &str) -> Result<TaskClient> {
    let bundle =
        s.cd.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&s.cd.namespace)
            .join(id);
    Ok(TaskClient(ShimAddress::of_bundle(&bundle)?))
}

/// The ttrpc status code of a failed call (None when the failure was not the shim's answer).
fn status_code(e: &anyhow::Error) -> Option<ttrpc::Code> {
    match e.downcast_ref::<ttrpc::Error>() {
        Some(ttrpc::Error::RpcStatus(st)) => Some(st.code()),
        _ => None,
    }
}

/// An exec request for `args` with `output` as its stdout and stderr FIFO (empty: none).
pub(super) fn exec_request(
    id: &str,
    exec_id: &str,
    args: &[&str],
    output: &str,
) -> Result<api::ExecProcessRequest> {
    let process = serde_json::json!({
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
    });
    Ok(api::ExecProcessRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        stdout: output.to_string(),
        stderr: output.to_string(),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process)?,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Issue 9 item 10, no stdin at all (the Task API's Exec with no stdio).
fn execs_without_stdin_leak_nothing(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let mut client = None;
    execs_leak_nothing(s, rt, id, |i| {
        if client.is_none() {
            client = Some(task_client(s, id)?);
        }
        let c = client.as_ref().expect("connected");
        let exec_id = format!("n{i}");
        c.exec(&exec_request(id, &exec_id, &["true"], "")?)?;
        let (cid, eid) = (id.to_string(), exec_id);
        c.start(&api::StartRequest {
            id: cid.clone(),
            exec_id: eid.clone(),
            ..Default::default()
        })?;
        let exit = c.wait(&api::WaitRequest {
            id: cid.clone(),
            exec_id: eid.clone(),
            ..Default::default()
        })?;
        ensure!(
            exit.exit_status == 0,
            "exec {eid} exited {}",
            exit.exit_status
        );
        c.delete(&api::DeleteRequest {
            id: cid,
            exec_id: eid,
            ..Default::default()
        })?;
        Ok(())
    })
}

/// Issue 9 item 10, stdin from /dev/null (ctr's stdin is /dev/null).
fn execs_with_null_stdin_leak_nothing(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    execs_leak_nothing(s, rt, id, |i| {
        let exec_id = format!("d{i}");
        s.cd.ctr(&["task", "exec", "--exec-id", &exec_id, id, "true"])?
            .ok()?;
        Ok(())
    })
}

/// Issue 9 item 10, stdin a pipe closed at once (ctr fed nothing).
fn execs_with_closed_pipe_stdin_leak_nothing(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    execs_leak_nothing(s, rt, id, |i| {
        let exec_id = format!("p{i}");
        s.cd.ctr_stdin(&["task", "exec", "--exec-id", &exec_id, id, "true"], b"")?
            .ok()?;
        Ok(())
    })
}

/// Issue 9 item 12: a bad rlimit type, capability or seccomp action is refused with an error
/// that names the value (and, for cryo, the field's path in config.json). runc 1.1 runs a
/// spec with an unknown capability (it only logs a warning): that one is cryo's alone.
fn bad_spec_values_are_named(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit); 3] = [
        ("process.rlimits[0].type", "RLIMIT_FOO", |spec| {
            spec["process"]["rlimits"] =
                serde_json::json!([{"type": "RLIMIT_FOO", "hard": 1024, "soft": 1024}]);
        }),
        ("process.capabilities.bounding[0]", "CAP_FOO", |spec| {
            spec["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_FOO"]);
        }),
        ("linux.seccomp.defaultAction", "SCMP_ACT_FOO", |spec| {
            spec["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_FOO"});
        }),
    ];
    for (field, value, edit) in cases {
        if rt == Runtime::Runc && value == "CAP_FOO" {
            continue;
        }
        let spec = super::spec_file(s, id, |spec| {
            spec["process"]["args"] = serde_json::json!(["true"]);
            edit(spec);
        })?;
        let out = super::run_spec(s, rt, id, &spec)?;
        ensure!(out.code != 0, "{field} = {value} was accepted");
        ensure!(
            out.stderr.contains(value),
            "{field} = {value}: the error does not name the value: {:?}",
            out.stderr
        );
        if rt == Runtime::Cryo {
            ensure!(
                out.stderr.contains(field),
                "{field} = {value}: the error does not name the field: {:?}",
                out.stderr
            );
        }
        super::cleanup_container(&s.cd, id);
        super::assert_gone(s, id)?;
    }
    Ok(())
}

/// Issue 9 item 14: Kill of a process that is gone is NotFound, also in the window where it has
/// been reaped but its exit is not reported yet (a child still holds its stdout).
fn kill_of_a_gone_process_is_not_found(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    super::run_detached(s, rt, id, &[])?;
    let client = task_client(s, id)?;
    let fifo = s.cd.dir.join(format!("{id}-stdout"));
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    // Our reader, so the shim's writer opens; nothing is read (the pipe holds a few bytes).
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)?;
    let result = (|| -> Result<()> {
        let req = exec_request(
            id,
            "gone",
            &["sh", "-c", "sleep 3 & exit 0"],
            &fifo.display().to_string(),
        )?;
        client.exec(&req)?;
        let start = api::StartRequest {
            id: id.to_string(),
            exec_id: "gone".into(),
            ..Default::default()
        };
        let pid = client.start(&start)?.pid;
        // sh has exited and been reaped; its `sleep` keeps stdout open for 3 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            ensure!(Instant::now() < deadline, "exec {pid} did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        let kill = |signal: u32| {
            client.kill(&api::KillRequest {
                id: id.to_string(),
                exec_id: "gone".into(),
                signal,
                ..Default::default()
            })
        };
        for signal in [15, 9] {
            match kill(signal) {
                Err(e) => ensure!(
                    status_code(&e) == Some(ttrpc::Code::NOT_FOUND),
                    "kill {signal} of a gone process: {e:#}"
                ),
                other => anyhow::bail!("kill {signal} of a gone process answered {other:?}"),
            }
        }
        // The same once its exit is known.
        let wait = api::WaitRequest {
            id: id.to_string(),
            exec_id: "gone".into(),
            ..Default::default()
        };
        client.wait(&wait)?;
        match kill(9) {
            Err(e) => ensure!(
                status_code(&e) == Some(ttrpc::Code::NOT_FOUND),
                "kill of an exited process: {e:#}"
            ),
            other => anyhow::bail!("kill of an exited process answered {other:?}"),
        }
        Ok(())
    })();
    drop(reader);
    let _ = std::fs::remove_file(&fifo);
    result
}
