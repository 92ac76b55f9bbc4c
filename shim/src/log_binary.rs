//! A `binary://` logger as runc's shim runs it: the shim's child, with the process's stdout
//! and stderr pipes as its fds 3 and 4 and a ready pipe as fd 5 (it writes a byte or closes it
//! when ready), /dev/null as 0-2, the shim's working directory (the bundle), and an environment
//! of `CONTAINER_ID`, `CONTAINER_NAMESPACE` and the URI's `env.` keys alone. An exec'd
//! process's logger is told the container's id (runc's shim passes the exec id there).
//!
//! Create waits for it to be ready ([`READY_LIMIT`]; runc's shim waits without a limit); a
//! logger that cannot be executed, is not ready in time, or is gone once ready (nothing reads
//! fd 3 or 4 any more) fails Create by its URI, and is killed. It runs in its own process
//! group, so what it starts goes with it: Delete sends it SIGTERM, waits for its exit
//! ([`STOP_LIMIT`], as runc's 12 s), lets what it started drain for a moment, then SIGKILLs
//! what is left of the group; a failed Create SIGKILLs the group at once. Its exit comes from
//! the shim's reaper through [`Exits`], matched by pid, so it never passes for a process of
//! the task. It is started with [`cryo_sandbox::spawn`], not with `std::process::Command`,
//! whose failed exec waits for the child itself and panics when the shim's reaper took it first.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use log::{info, warn};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::exits::{Exit, Exits};
use crate::log_uri::LoggerCommand;
use cryo_sandbox::spawn::{Spawn, SpawnError};

/// How long Create waits for the logger to be ready.
pub const READY_LIMIT: Duration = Duration::from_secs(10);
/// How long Delete waits for the logger to exit after SIGTERM (runc's shim: 12 s).
pub const STOP_LIMIT: Duration = Duration::from_secs(12);
/// How long what the logger started may go on draining its pipes after it exited.
const GROUP_DRAIN: Duration = Duration::from_secs(2);
/// How long a logger found gone at Create is waited for, for its exit status.
const GONE_STATUS_WAIT: Duration = Duration::from_secs(2);

/// The fds the logger finds its pipes on.
const STDOUT_FD: RawFd = 3;
const STDERR_FD: RawFd = 4;
const READY_FD: RawFd = 5;

/// Who the logger logs for (its environment).
pub struct LoggerFor<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
    pub exits: &'a Exits,
}

/// A running logger (its process group). Dropped without [`Logger::stop`], the group is
/// SIGKILLed.
pub struct Logger {
    uri: String,
    pid: i32,
    /// Its exit, until it is known.
    exit: Option<oneshot::Receiver<Exit>>,
    /// [`Logger::stop`] ran: nothing is left to kill.
    stopped: bool,
}

/// The logger and the write ends of its pipes (the process's stdout and stderr).
pub struct Started {
    pub logger: Logger,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Start the logger `cmd` names and wait until it is ready.
pub async fn start(cmd: &LoggerCommand, owner: LoggerFor<'_>) -> Result<Started> {
    let refused = |why: String| Error::FailedPrecondition(format!("log URI {:?}: {why}", cmd.uri));
    let Launched {
        pid,
        exit,
        ready_r,
        out_w,
        err_w,
    } = launch(cmd, &owner)?;
    let mut logger = Logger {
        uri: cmd.uri.clone(),
        pid,
        exit: Some(exit),
        stopped: false,
    };
    let waited = tokio::task::spawn_blocking(move || wait_ready(&ready_r)).await?;
    match waited {
        Ok(()) => {}
        Err(why) => {
            // Dropping `logger` kills what is left of it.
            return Err(refused(format!(
                "logger {} (pid {pid}) {why}",
                cmd.path.display()
            )));
        }
    }
    // Ready, but is anyone still reading? A logger that exited (or closed its pipes) left
    // them without a reader: the process's output would go nowhere. Its fd 5 may be released
    // before its fds 3 and 4 (an exit releases them in no set order): an exiting logger is
    // first waited for (its exit is reported once all its descriptors are released).
    let mut exited = None;
    if is_exiting(pid) {
        exited = logger.exit_within(GONE_STATUS_WAIT).await;
    }
    if let Some(fd) = [(&out_w, STDOUT_FD), (&err_w, STDERR_FD)]
        .into_iter()
        .find_map(|(w, fd)| (!has_reader(w.as_fd())).then_some(fd))
    {
        let status = match exited {
            Some(exit) => Some(exit),
            None => logger.exit_within(GONE_STATUS_WAIT).await,
        };
        let why = match status {
            Some(exit) => format!("exited with status {} at start", exit.status),
            None => format!("closed its fd {fd} at start"),
        };
        return Err(refused(format!(
            "logger {} (pid {pid}) {why}",
            cmd.path.display()
        )));
    }
    info!("logger {} started (pid {pid})", cmd.uri);
    Ok(Started {
        logger,
        stdout: out_w,
        stderr: err_w,
    })
}

/// A started logger: its exit to come, the parent's ends of its pipes.
struct Launched {
    pid: i32,
    exit: oneshot::Receiver<Exit>,
    ready_r: OwnedFd,
    out_w: OwnedFd,
    err_w: OwnedFd,
}

/// Start the logger in its own process group (not waiting for it to be ready).
fn launch(cmd: &LoggerCommand, owner: &LoggerFor<'_>) -> Result<Launched> {
    let refused = |why: String| Error::FailedPrecondition(format!("log URI {:?}: {why}", cmd.uri));
    check_executable(cmd).map_err(refused)?;
    let failed =
        |what: &str, e: nix::Error| Error::Internal(format!("log URI {:?}: {what}: {e}", cmd.uri));
    let (out_r, out_w) = pipe().map_err(|e| failed("stdout pipe", e))?;
    let (err_r, err_w) = pipe().map_err(|e| failed("stderr pipe", e))?;
    let (ready_r, ready_w) = pipe().map_err(|e| failed("ready pipe", e))?;
    let spawn = spawn_for(cmd, owner.container_id, owner.namespace)
        .fd(out_r, STDOUT_FD)
        .fd(err_r, STDERR_FD)
        .fd(ready_w, READY_FD)
        .process_group();
    let mark = owner.exits.mark();
    let pid = spawn.spawn().map_err(|e| match e {
        SpawnError::Sys {
            step: "exec",
            errno,
            ..
        } => refused(format!(
            "logger {} could not be executed: {errno}",
            cmd.path.display()
        )),
        other => refused(format!("logger: {other}")),
    })?;
    Ok(Launched {
        pid,
        exit: owner.exits.watch(pid, mark),
        ready_r,
        out_w,
        err_w,
    })
}

/// The logger's command line and environment: the container's id and namespace and the URI's
/// `env.` keys alone.
fn spawn_for(cmd: &LoggerCommand, container_id: &str, namespace: &str) -> Spawn {
    let mut spawn = Spawn::new(&cmd.path)
        .args(&cmd.args)
        .env_clear()
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace);
    for (k, v) in &cmd.env {
        spawn = spawn.env(k, v);
    }
    spawn
}

impl Logger {
    /// Stop the logger as runc's shim does at Delete: SIGTERM, its exit awaited for
    /// [`STOP_LIMIT`] (then SIGKILL); what it started may finish draining its pipes for
    /// [`GROUP_DRAIN`], then whatever is left of its group is SIGKILLed.
    pub async fn stop(mut self) {
        let leader = Pid::from_raw(self.pid);
        if self.exit.is_some() {
            match nix::sys::signal::kill(leader, Signal::SIGTERM) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => warn!("logger {} (pid {}): SIGTERM: {e}", self.uri, self.pid),
            }
            if self.exit_within(STOP_LIMIT).await.is_none() {
                warn!(
                    "logger {} (pid {}) still running {STOP_LIMIT:?} after SIGTERM: killing it",
                    self.uri, self.pid
                );
                self.signal(Signal::SIGKILL);
            }
        }
        let deadline = tokio::time::Instant::now() + GROUP_DRAIN;
        while killpg(leader, None).is_ok() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.signal(Signal::SIGKILL);
        self.stopped = true;
    }

    /// The logger's exit, if it comes within `limit`.
    async fn exit_within(&mut self, limit: Duration) -> Option<Exit> {
        let rx = self.exit.as_mut()?;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(exit)) => {
                self.exit = None;
                Some(exit)
            }
            _ => None,
        }
    }

    fn signal(&self, signal: Signal) {
        match killpg(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => warn!("logger {} (pid {}): {signal}: {e}", self.uri, self.pid),
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        if !self.stopped {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// Refuse a logger path that is not an executable regular file, before forking for it.
fn check_executable(cmd: &LoggerCommand) -> std::result::Result<(), String> {
    let path = cmd.path.display();
    let meta = std::fs::metadata(&cmd.path).map_err(|e| format!("logger {path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("logger {path}: not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("logger {path}: not executable"));
    }
    Ok(())
}

/// Wait for the ready signal (a byte, or fd 5 closed).
fn wait_ready(ready_r: &OwnedFd) -> std::result::Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + READY_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => return Err(format!("was not ready within {READY_LIMIT:?}")),
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(format!("ready pipe: {e}")),
        }
    }
}

/// Whether `pid` is exiting or gone: its state is a zombie's or dead, or its flags have
/// `PF_EXITING`, which the kernel sets before it releases the process's descriptors.
fn is_exiting(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // After "pid (comm)": state ppid pgrp session tty_nr tpgid flags ...
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return true;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("X");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

/// Whether a pipe's read end is still open somewhere (a pipe's write end polls POLLERR once
/// every reader is gone).
fn has_reader(w: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(w, PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => !fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR)),
        Err(_) => true,
    }
}

fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_not_exiting_and_a_zombie_or_a_free_pid_is() {
        assert!(!is_exiting(std::process::id() as i32));
        let child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not waited for yet: a zombie once it exited.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_exiting(pid) {
            assert!(std::time::Instant::now() < deadline, "never seen exiting");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut child = child;
        child.wait().unwrap();
        assert!(is_exiting(pid));
    }

    #[test]
    fn a_pipe_without_a_reader_is_seen_from_its_write_end() {
        let (r, w) = pipe().unwrap();
        assert!(has_reader(w.as_fd()));
        drop(r);
        assert!(!has_reader(w.as_fd()));
    }

    #[test]
    fn the_environment_is_the_container_s_and_the_uri_s_alone() {
        let cmd = LoggerCommand {
            uri: "binary:///l".into(),
            path: "/l".into(),
            args: vec!["-k".into(), "v".into()],
            env: vec![("LEVEL".into(), "debug".into())],
        };
        let (argv, env) = spawn_for(&cmd, "c1", "ns1").command_line();
        assert_eq!(argv, ["/l", "-k", "v"]);
        assert_eq!(
            env,
            ["CONTAINER_ID=c1", "CONTAINER_NAMESPACE=ns1", "LEVEL=debug"]
        );
    }
}
