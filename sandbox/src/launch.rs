//! The host side of the init helper: check what can be checked on the host (namespaces, the
//! seccomp profile, the configuration's size), spawn the helper (the current binary
//! re-executed from its sealed view, [`crate::sealed_exe`]), place it in the container's
//! cgroup, send its configuration, and collect what it reports until the new process is
//! ready; later, tell it to exec. Used for a container's PID 1 and for exec'd processes alike.

use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cgroup::Cgroup;
use crate::config::Stdio;
use crate::error::{Error, Result};
use crate::init::protocol::{self, Channel, FromInit, InitConfig, ToInit, MAX_MESSAGE};
use crate::init::{namespaces, seccomp, INIT_ENV, INIT_FD};
use crate::sealed_exe;
use crate::spawn::Spawn;

/// How long the init helper may take to get a process ready, or to exec after Start.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A process set up by the helper, waiting for [`Launched::start`].
#[derive(Debug)]
pub struct Launched {
    /// Host pid of the process.
    pub pid: i32,
    /// The pty master when a terminal was asked for.
    pub console: Option<OwnedFd>,
    chan: Channel,
}

/// Spawn the helper for `config` in `cgroup` and wait until the process is ready. Nothing is
/// spawned for a spec whose namespaces are wrong, whose seccomp profile would not load, or
/// that is too large to send. On failure the helper and the process are killed.
pub fn launch(config: InitConfig, stdio: Stdio, cgroup: &Cgroup) -> Result<Launched> {
    let terminal = config.terminal;
    // An exec joins the container's namespaces and carries its seccomp profile, both checked
    // when the container was created.
    if config.join.is_none() {
        namespaces::validate(&config.spec)?;
        seccomp::validate(&config.spec)?;
    }
    let message = protocol::encode(&ToInit::Config(Box::new(config)))?;
    if message.len() > MAX_MESSAGE {
        return Err(Error::InvalidSpec(format!(
            "the spec is {} bytes as the init helper's configuration, over the limit of \
             {MAX_MESSAGE} bytes",
            message.len()
        )));
    }
    let (ours, theirs) = Channel::pair()?;
    ours.set_timeout(INIT_TIMEOUT)?;
    let mut spawned = Spawned(vec![spawn_helper(theirs, stdio)?]);
    cgroup.add(spawned.0[0])?;
    ours.send_encoded(&message, None)?;
    drop(message);
    // The helper reports the pid after its fork while the new process reports Ready: the two
    // may arrive in either order.
    let mut pid = None;
    let mut console = None;
    let mut ready = false;
    while !(ready && pid.is_some()) {
        match ours.recv::<FromInit>()? {
            Some((FromInit::Pid(p), _)) => {
                spawned.0.push(p);
                pid = Some(p);
            }
            Some((FromInit::Console, fd)) => console = fd,
            Some((FromInit::Ready, _)) => ready = true,
            Some((FromInit::Error(msg), _)) => return Err(Error::Setup(msg)),
            None => {
                return Err(Error::Init(
                    "the init helper exited before the process was ready".into(),
                ))
            }
        }
    }
    let pid = pid.ok_or_else(|| Error::Init("the process's pid was never reported".into()))?;
    if terminal && console.is_none() {
        return Err(Error::Init("no pty master was received".into()));
    }
    spawned.0.clear();
    Ok(Launched {
        pid,
        console,
        chan: ours,
    })
}

impl Launched {
    /// Let the process exec; returns once it did, or with the reason it could not.
    pub fn start(self) -> Result<()> {
        self.chan.send(&ToInit::Start)?;
        match self.chan.recv::<FromInit>()? {
            None => Ok(()),
            Some((FromInit::Error(msg), _)) => Err(Error::Setup(msg)),
            Some((other, _)) => Err(Error::Init(format!(
                "unexpected message {other:?} at start"
            ))),
        }
    }
}

/// Processes to SIGKILL if the launch fails half-way.
struct Spawned(Vec<i32>);

impl Drop for Spawned {
    fn drop(&mut self) {
        for pid in self.0.drain(..).rev() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Re-execute this binary, from its sealed view, as the init helper, with its end of the
/// channel as [`INIT_FD`] and the process's stdio as 0, 1, 2. The helper is never waited for
/// here: the embedding process's reaper collects it.
fn spawn_helper(chan: Channel, stdio: Stdio) -> Result<i32> {
    let sealed = sealed_exe::sealed_self()?;
    let chan = chan
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("duplicate the init helper's channel", e))?;
    // The view's descriptor stays open (close-on-exec) until the exec that goes through it.
    let mut spawn = Spawn::new(sealed_exe::exec_path(sealed))
        .arg0("cryo-init")
        .env(INIT_ENV, "1")
        .fd(chan, INIT_FD);
    if let Stdio::Fds {
        stdin,
        stdout,
        stderr,
    } = stdio
    {
        spawn = spawn
            .fd_or_null(stdin, 0)
            .fd_or_null(stdout, 1)
            .fd_or_null(stderr, 2);
    }
    spawn
        .spawn()
        .map_err(|e| Error::Init(format!("cannot start the init helper: {e}")))
}
