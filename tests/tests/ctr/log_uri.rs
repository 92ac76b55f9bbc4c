//! ctr cases: log URIs instead of output FIFOs (`ctr run --log-uri`): `file://` appends both
//! outputs to a file, `binary://` starts a logger with the outputs on its fds 3 and 4 and waits
//! for its ready signal on fd 5; bad URIs and loggers that cannot log fail Create and leave
//! nothing behind.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use harness::Runtime;

use super::{Case, Suite};

/// Cases runc's shim is not held to, and why.
/// Why runc's shim fails the file log cases now and then.
const RUNC_LOSES_FILE_LOG_TAIL: &str =
    "runc's shim can lose the tail of a process's output in a file log: its copy of the pipe is \
     cut short when the process is deleted (containerd logs `error copying stderr`) and the file \
     never gets the stderr (seen on containerd 1.6 and 2.2.7 on a loaded machine: the file held \
     only `to-stdout`)";

pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[
    (
        "logger_never_ready_fails_create_in_time",
        "runc's shim waits for the logger's ready signal without a limit: Create hangs until the \
         client gives up (`ctr --timeout 20s`: `context deadline exceeded`), and its shim stays \
         (seen on containerd 1.6)",
    ),
    (
        "failed_create_leaves_no_logger",
        "runc's shim leaves the logger running when the OCI runtime's create fails (it outlives \
         the shim; seen on containerd 1.6)",
    ),
    (
        "logger_that_exits_at_once_fails_create",
        "runc's shim takes the ready pipe's EOF of a logger that exited as its ready signal: \
         Create and Start succeed, the process's writes fail (nothing reads its pipes) and `ctr \
         run` exits 1 without an error (seen on containerd 1.6 and 2.2.7)",
    ),
    ("exec_log_uris", RUNC_LOSES_FILE_LOG_TAIL),
    ("file_log_uri_holds_both_outputs", RUNC_LOSES_FILE_LOG_TAIL),
];

pub const CASES: &[(&str, Case)] = &[
    (
        "file_log_uri_holds_both_outputs",
        file_log_uri_holds_both_outputs,
    ),
    (
        "binary_logger_gets_both_outputs_and_its_environment",
        binary_logger_gets_both_outputs_and_its_environment,
    ),
    (
        "logger_that_exits_at_once_fails_create",
        logger_that_exits_at_once_fails_create,
    ),
    ("bad_log_uris_are_refused", bad_log_uris_are_refused),
    (
        "failed_create_leaves_no_logger",
        failed_create_leaves_no_logger,
    ),
    ("exec_log_uris", exec_log_uris),
    (
        "logger_never_ready_fails_create_in_time",
        logger_never_ready_fails_create_in_time,
    ),
];

/// How long a logger's output or its end may take to show after the task is gone.
const SETTLE: Duration = Duration::from_secs(20);

/// What the processes write.
const WRITE_BOTH: &str = "echo to-stdout; echo to-stderr >&2";

fn temp_dir(s: &Suite) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("log-uri-")
        .tempdir_in(&s.cd.dir)?)
}

/// `file:///DIR/logs/out.log` (its directory not there yet): both outputs are appended to it,
/// none reaches ctr, and the directory is made as runc's shim makes it.
fn file_log_uri_holds_both_outputs(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let dir = temp_dir(s)?;
    let log = dir.path().join("logs/out.log");
    let uri = format!("file://{}", log.display());
    let out = super::run(s, rt, id, &["--log-uri", &uri], &["sh", "-c", WRITE_BOTH])?.ok()?;
    ensure!(
        !out.stdout.contains("to-stdout"),
        "ctr got stdout: {:?}",
        out.stdout
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(|| text().contains("to-stdout\n") && text().contains("to-stderr\n"))
        .with_context(|| format!("{} holds {:?}", log.display(), text()))?;
    // A second run appends.
    let again = format!("{id}-2");
    let second = super::run(s, rt, &again, &["--log-uri", &uri], &["echo", "second"]);
    super::cleanup_container(&s.cd, &again);
    second?.ok()?;
    let text = std::fs::read_to_string(&log)?;
    ensure!(
        text.contains("to-stdout\n") && text.ends_with("second\n"),
        "after a second run {} holds {text:?}",
        log.display()
    );
    super::assert_gone(s, id)
}

/// A shell logger that copies fd 3 and 4 to files, records its environment and arguments,
/// closes fd 5 when ready, and stays until it is stopped: the files hold the outputs,
/// CONTAINER_ID and CONTAINER_NAMESPACE are the task's, the query gave its arguments, and once
/// the task is deleted nothing of the logger is left.
fn binary_logger_gets_both_outputs_and_its_environment(
    s: &Suite,
    rt: Runtime,
    id: &str,
) -> Result<()> {
    let dir = temp_dir(s)?;
    let d = dir.path().display().to_string();
    let logger = write_script(
        dir.path(),
        "logger.sh",
        &format!(
            "/usr/bin/env > {d}/env\n\
             for a in \"$@\"; do echo \"[$a]\"; done > {d}/args\n\
             /bin/cat <&3 > {d}/stdout 5>&- &\n\
             /bin/cat <&4 > {d}/stderr 5>&- &\n\
             exec 5>&-\n\
             wait\n\
             while :; do /bin/sleep 1; done\n"
        ),
    )?;
    let uri = format!("binary://{}?-tag=t1", logger.display());
    let out = super::run(s, rt, id, &["--log-uri", &uri], &["sh", "-c", WRITE_BOTH])?.ok()?;
    ensure!(
        !out.stdout.contains("to-stdout"),
        "ctr got stdout: {:?}",
        out.stdout
    );
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    eventually(|| read("stdout") == "to-stdout\n" && read("stderr") == "to-stderr\n")
        .with_context(|| {
            format!(
                "logged stdout {:?}, stderr {:?}",
                read("stdout"),
                read("stderr")
            )
        })?;
    let env = read("env");
    for want in [
        format!("CONTAINER_ID={id}"),
        format!("CONTAINER_NAMESPACE={}", s.cd.namespace),
    ] {
        ensure!(env.lines().any(|l| l == want), "{want} not in {env:?}");
    }
    ensure!(
        read("args") == "[-tag]\n[t1]\n",
        "logger args {:?}",
        read("args")
    );
    no_logger_left(id)?;
    super::assert_gone(s, id)
}

/// A logger that exits at once (before any output could reach it) fails Create with an error
/// naming it; no task, container process or logger is left.
fn logger_that_exits_at_once_fails_create(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let dir = temp_dir(s)?;
    let logger = write_script(dir.path(), "quits.sh", "exit 3\n")?;
    let uri = format!("binary://{}", logger.display());
    let out = super::run(s, rt, id, &["--log-uri", &uri], &["sh", "-c", WRITE_BOTH])?;
    ensure!(
        out.code != 0,
        "ctr run with a logger that exits at once succeeded: {out:?}"
    );
    ensure!(
        out.stderr.contains(&logger.display().to_string())
            && out.stderr.contains("exited with status 3"),
        "the error does not name the logger and its exit (ctr exited {}): {:?}",
        out.code,
        out.stderr
    );
    no_logger_left(id)?;
    super::assert_gone(s, id)
}

/// A Create that fails after the logger started (the command does not exist) leaves no
/// logger behind.
fn failed_create_leaves_no_logger(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let dir = temp_dir(s)?;
    let d = dir.path().display().to_string();
    let logger = write_script(
        dir.path(),
        "logger.sh",
        &format!(
            "/bin/cat <&3 > {d}/stdout 5>&- &\n\
             exec 5>&-\n\
             : > {d}/started\n\
             while :; do /bin/sleep 1; done\n"
        ),
    )?;
    let uri = format!("binary://{}", logger.display());
    let out = super::run(s, rt, id, &["--log-uri", &uri], &["/no/such/command"])?;
    ensure!(
        out.code != 0,
        "ctr run of a missing command succeeded: {out:?}"
    );
    // The case is about a logger that ran.
    eventually(|| dir.path().join("started").exists())
        .with_context(|| format!("the logger never started: {:?}", out.stderr))?;
    no_logger_left(id)?;
    super::assert_gone(s, id)
}

/// An unknown scheme and a logger that does not exist fail Create naming the URI's scheme or
/// the logger, and leave nothing.
fn bad_log_uris_are_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let dir = temp_dir(s)?;
    let missing = dir.path().join("no-such-logger");
    let cases = [
        ("syslog:///dev/log".to_string(), "unknown STDIO scheme"),
        (
            format!("binary://{}", missing.display()),
            &*missing.display().to_string(),
        ),
    ];
    for (i, (uri, want)) in cases.iter().enumerate() {
        let cid = format!("{id}-{i}");
        let out = super::run(s, rt, &cid, &["--log-uri", uri], &["echo", "never"]);
        super::cleanup_container(&s.cd, &cid);
        let out = out?;
        ensure!(out.code != 0, "ctr run --log-uri {uri} succeeded: {out:?}");
        ensure!(
            out.stderr.contains(want),
            "--log-uri {uri}: the error does not say {want:?}: {:?}",
            out.stderr
        );
        super::assert_gone(s, &cid)?;
    }
    Ok(())
}

/// A logger that never says it is ready fails Create within the shim's limit (10 s), naming
/// it; nothing of it is left.
fn logger_never_ready_fails_create_in_time(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let dir = temp_dir(s)?;
    // fd 5 stays open in the sleep.
    let logger = write_script(dir.path(), "mute.sh", "exec /bin/sleep 1000\n")?;
    let uri = format!("binary://{}", logger.display());
    let started = Instant::now();
    // ctr gives up before the harness's limit for one command.
    let out = s.cd.ctr(&[
        "--timeout",
        "20s",
        "run",
        "--rm",
        "--runtime",
        rt.id(),
        "--log-uri",
        &uri,
        harness::image::BUSYBOX_IMAGE,
        id,
        "echo",
        "never",
    ]);
    let took = started.elapsed();
    // Whatever happened, nothing of the logger may stay (runc's shim leaves it waiting).
    let left = no_logger_left(id);
    let out = out?;
    ensure!(
        out.code != 0,
        "ctr run with a mute logger succeeded: {out:?}"
    );
    ensure!(
        out.stderr.contains(&logger.display().to_string()) && out.stderr.contains("ready"),
        "the error does not name the logger and its readiness (after {took:?}): {:?}",
        out.stderr
    );
    ensure!(
        took < Duration::from_secs(15),
        "Create took {took:?} to fail"
    );
    left?;
    super::assert_gone(s, id)
}

/// `ctr task exec --log-uri` with a file and with a logger: each gets the exec'd process's
/// outputs, and the logger is gone once the exec is deleted.
fn exec_log_uris(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let dir = temp_dir(s)?;
    let d = dir.path().display().to_string();
    super::run_detached(s, rt, id, &[])?;
    let log = dir.path().join("exec.log");
    let uri = format!("file://{}", log.display());
    let exec = |exec_id: &str, uri: &str| -> Result<()> {
        s.cd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            exec_id,
            "--log-uri",
            uri,
            id,
            "sh",
            "-c",
            WRITE_BOTH,
        ])?
        .ok()?;
        Ok(())
    };
    exec("file", &uri)?;
    // The shim may still be copying when the exec's exit reaches ctr (runc's does).
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(|| text().contains("to-stdout\n") && text().contains("to-stderr\n"))
        .with_context(|| format!("{} holds {:?}", log.display(), text()))?;
    let logger = write_script(
        dir.path(),
        "exec-logger.sh",
        &format!(
            "/bin/cat <&3 > {d}/stdout 5>&- &\n\
             /bin/cat <&4 > {d}/stderr 5>&- &\n\
             printf r >&5\n\
             wait\n\
             while :; do /bin/sleep 1; done\n"
        ),
    )?;
    // This one says it is ready with a byte, and keeps fd 5 open.
    exec("binary", &format!("binary://{}", logger.display()))?;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    eventually(|| read("stdout") == "to-stdout\n" && read("stderr") == "to-stderr\n")
        .with_context(|| {
            format!(
                "logged stdout {:?}, stderr {:?}",
                read("stdout"),
                read("stderr")
            )
        })?;
    let left = || {
        let script = logger.display().to_string();
        procs_where(|_, cmd| cmd.contains(&script))
    };
    eventually(|| left().is_empty())
        .with_context(|| format!("exec's logger left: {:?}", left()))?;
    super::cleanup_container(&s.cd, id);
    super::assert_gone(s, id)
}

/// An executable `#!/bin/sh` script `name` in `dir` with `body`.
fn write_script(dir: &Path, name: &str, body: &str) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Nothing of `id`'s logger is left (within [`SETTLE`]); what is left is killed and named.
fn no_logger_left(id: &str) -> Result<()> {
    if eventually(|| logger_processes(id).is_empty()).is_ok() {
        return Ok(());
    }
    let left = logger_processes(id);
    for p in &left {
        if let Some(pid) = p.split(' ').next().and_then(|p| p.parse().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    bail!("logger processes left (killed now): {left:?}")
}

/// Processes whose environment says `CONTAINER_ID=<id>`: a logger of `id` and its children.
fn logger_processes(id: &str) -> Vec<String> {
    let want = format!("CONTAINER_ID={id}");
    procs_where(|env, _| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
}

/// "pid cmdline" of the processes whose environment and command line satisfy `f`.
fn procs_where(f: impl Fn(&[u8], &str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(env) = std::fs::read(p.path().join("environ")) else {
            continue;
        };
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if f(&env, &cmd) {
            found.push(format!("{} {cmd}", p.file_name().to_string_lossy()));
        }
    }
    found
}

/// Wait until `f` holds, at most [`SETTLE`].
fn eventually(mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    while !f() {
        if Instant::now() > deadline {
            bail!("not so after {SETTLE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
