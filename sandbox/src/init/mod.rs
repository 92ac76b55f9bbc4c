//! The init helper: the embedding binary re-executed as a single-threaded process that builds
//! the container (namespaces, mounts, pivot_root, hostname, rlimits, user, capabilities,
//! no_new_privs, seccomp) and finally execs the workload. It receives its configuration over a
//! socket inherited as fd [`INIT_FD`], never from argv, so nothing shows in `ps`.
//!
//! Sequence: the engine spawns the helper and puts it in the container's cgroup, then sends
//! [`protocol::ToInit::Config`]. The helper joins the namespaces the spec names by path,
//! unshares the new ones and forks: the child is the container's PID 1, the helper reports its
//! pid and exits (the embedding process, a subreaper, inherits PID 1). PID 1 sets up the rootfs
//! and the process, resolves the executable, reports `Ready` and waits for `Start`; then execs.
//!
//! The helper runs from a sealed view of the binary ([`crate::sealed_exe`]) and makes itself
//! non-dumpable before anything else, so that no process of the container can open its
//! `/proc/<pid>/exe` (nor its memory or descriptors) while it waits; the workload's own exec
//! gives it the dumpable flag its binary deserves. Nothing here sets it back.

mod in_root;
pub(crate) mod namespaces;
mod process;
pub mod protocol;
mod rootfs;

pub(crate) use rootfs::{own_cgroups, own_path};
pub(crate) mod seccomp;

use std::os::fd::AsFd;

use nix::unistd::{fork, ForkResult};

use crate::error::{Error, Result};
pub use process::{capability_bits, capability_names};
use protocol::{Channel, FromInit, InitConfig, ToInit};

/// Environment variable that marks a process as the init helper.
pub const INIT_ENV: &str = "_CRYO_INIT";

/// The descriptor on which the helper finds its end of the [`protocol::Channel`].
pub const INIT_FD: i32 = 3;

/// If this process was started as the init helper, run it and never return; otherwise return
/// at once. Call it first thing in `main`, before any thread or async runtime exists.
pub fn run_if_requested() {
    if std::env::var_os(INIT_ENV).is_none() {
        return;
    }
    // Before anything else, and long before entering the container's namespaces.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        // SAFETY: the engine passes its end of the pair as INIT_FD; nothing else owns it.
        let chan = unsafe { Channel::from_raw_fd(INIT_FD) };
        let _ = chan.send(&FromInit::Error(format!("PR_SET_DUMPABLE 0: {e}")));
        std::process::exit(1);
    }
    // Nothing of the embedding process may reach the container: keep stdio and the channel,
    // close every other inherited descriptor.
    // SAFETY: close_range on descriptors this fresh process does not use.
    unsafe {
        libc::syscall(libc::SYS_close_range, INIT_FD as u32 + 1, u32::MAX, 0u32);
    }
    // SAFETY: the engine passes its end of the pair as INIT_FD; nothing else owns it.
    let chan = unsafe { Channel::from_raw_fd(INIT_FD) };
    let code = match helper(&chan) {
        Ok(()) => 0,
        Err(e) => {
            let _ = chan.send(&FromInit::Error(e.to_string()));
            1
        }
    };
    std::process::exit(code);
}

/// The helper proper: returns in the helper after the fork; PID 1 never returns.
fn helper(chan: &Channel) -> Result<()> {
    // The inherited descriptor lost close-on-exec when it was dup'ed into place.
    nix::fcntl::fcntl(
        chan.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| Error::sys("set close-on-exec on the init socket", e))?;
    let config = match chan.recv::<ToInit>()? {
        Some((ToInit::Config(c), _)) => *c,
        Some((other, _)) => return Err(Error::Init(format!("expected Config, got {other:?}"))),
        None => return Err(Error::Init("engine closed the socket before Config".into())),
    };
    match config.join {
        Some(pid) => namespaces::join(pid)?,
        None => namespaces::enter(&config.spec)?,
    }
    // SAFETY: the helper is single-threaded (a fresh exec that started no threads).
    match unsafe { fork() }.map_err(|e| Error::sys("fork PID 1", e))? {
        ForkResult::Parent { child } => chan.send(&FromInit::Pid(child.as_raw())),
        ForkResult::Child => {
            let err = match config.join {
                Some(_) => exec_init(chan, config),
                None => container_init(chan, config),
            }
            .unwrap_err();
            let _ = chan.send(&FromInit::Error(err.to_string()));
            std::process::exit(1);
        }
    }
}

/// PID 1: build the container, report ready, wait for start, exec. Returns only on error.
fn container_init(chan: &Channel, config: InitConfig) -> Result<std::convert::Infallible> {
    let (spec, proc_spec) = new_session(&config)?;
    let console = rootfs::prepare(&config)?;
    if config.terminal {
        let master = console.ok_or_else(|| Error::Init("no pty was created".into()))?;
        chan.send_with_fd(&FromInit::Console, Some(master.as_fd()))?;
    }
    process::configure_container(spec)?;
    process::configure(spec)?;
    ready_then_exec(chan, spec, proc_spec)
}

/// An exec'd process, already in the container's namespaces (and so its root): a pty if asked
/// for, the process spec, ready, start, exec. Returns only on error.
fn exec_init(chan: &Channel, config: InitConfig) -> Result<std::convert::Infallible> {
    let (spec, proc_spec) = new_session(&config)?;
    if config.terminal {
        let master = rootfs::console()?;
        chan.send_with_fd(&FromInit::Console, Some(master.as_fd()))?;
    }
    process::configure(spec)?;
    ready_then_exec(chan, spec, proc_spec)
}

/// Start the process's own session; its spec and process spec.
fn new_session(
    config: &InitConfig,
) -> Result<(&oci_spec::runtime::Spec, &oci_spec::runtime::Process)> {
    nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    let spec = &config.spec;
    let proc_spec = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
    Ok((spec, proc_spec))
}

/// Resolve the executable, report ready, wait for Start, exec. Returns only on error.
fn ready_then_exec(
    chan: &Channel,
    spec: &oci_spec::runtime::Spec,
    proc_spec: &oci_spec::runtime::Process,
) -> Result<std::convert::Infallible> {
    let exec = process::prepare(proc_spec)?;
    chan.send(&FromInit::Ready)?;
    match chan.recv::<ToInit>()? {
        Some((ToInit::Start, _)) => {}
        // The engine went away or changed its mind: nothing to run.
        _ => std::process::exit(0),
    }
    seccomp::load_late(spec)?;
    Err(exec.exec())
}
