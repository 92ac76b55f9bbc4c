//! Starting a program as a child that is never waited for here: the one way the engine and
//! its embedder start processes at run time (CRIU's `swrk`, the init helper, a shim's
//! `binary://` logger).
//!
//! Why not `std::process::Command`: an embedder that reaps every child (a SIGCHLD loop calling
//! `waitpid(-1)`, as a containerd shim does) races std's own wait. When the exec fails, std
//! reads the errno from its close-on-exec pipe and then waits for the child itself, and panics
//! when the reaper took it first (under `panic = "abort"` the whole embedder dies). Here the
//! child is forked by hand; a failure before or at the exec comes back as a [`SpawnError`]
//! naming the program, the step and the errno, and the failed child is left to the reaper like
//! any other.
//!
//! The child gets exactly the descriptors asked for, at the numbers asked for (0, 1 and 2 are
//! /dev/null unless given); every other descriptor of the embedder is closed at the exec. Its
//! signal mask is empty and every signal's disposition is the default.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// An argument or an environment entry holds a NUL byte.
    #[error("{program}: {what} holds a NUL byte", program = .program.display())]
    Nul { program: PathBuf, what: String },
    /// A step before or at the exec failed (`exec` when the kernel refused the program).
    #[error("{step} {program}: {errno}", program = .program.display())]
    Sys {
        program: PathBuf,
        step: &'static str,
        errno: Errno,
    },
}

impl SpawnError {
    /// The errno of a failed step, if that is what failed.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            SpawnError::Sys { errno, .. } => Some(*errno),
            SpawnError::Nul { .. } => None,
        }
    }
}

/// A program to start: its path, argv, environment and descriptors.
pub struct Spawn {
    program: PathBuf,
    arg0: OsString,
    args: Vec<OsString>,
    /// `None`: the embedder's environment at [`Spawn::spawn`], plus `extra_env`.
    env: Option<Vec<(OsString, OsString)>>,
    extra_env: Vec<(OsString, OsString)>,
    fds: Vec<(OwnedFd, RawFd)>,
    process_group: bool,
}

/// Steps the child reports by number (with the errno) on its status pipe.
const STEPS: [&str; 3] = [
    "set up the descriptors of",
    "set the process group of",
    "exec",
];
const STEP_DUP: u32 = 0;
const STEP_PGID: u32 = 1;
const STEP_EXEC: u32 = 2;

impl Spawn {
    /// `program` (a path; it is not looked up on `PATH`), with itself as argv\[0\], the
    /// embedder's environment and /dev/null as its stdio.
    pub fn new(program: impl AsRef<Path>) -> Spawn {
        let program = program.as_ref().to_path_buf();
        Spawn {
            arg0: program.clone().into_os_string(),
            program,
            args: Vec::new(),
            env: None,
            extra_env: Vec::new(),
            fds: Vec::new(),
            process_group: false,
        }
    }

    pub fn arg0(mut self, arg0: impl AsRef<OsStr>) -> Spawn {
        self.arg0 = arg0.as_ref().to_owned();
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Spawn {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Spawn {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Start from an empty environment instead of the embedder's.
    pub fn env_clear(mut self) -> Spawn {
        self.env = Some(Vec::new());
        self.extra_env.clear();
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Spawn {
        let entry = (key.as_ref().to_owned(), value.as_ref().to_owned());
        match &mut self.env {
            Some(env) => env.push(entry),
            None => self.extra_env.push(entry),
        }
        self
    }

    /// Give the child `fd` as descriptor `target` (the last one given for a number wins).
    pub fn fd(mut self, fd: OwnedFd, target: RawFd) -> Spawn {
        self.fds.retain(|(_, t)| *t != target);
        self.fds.push((fd, target));
        self
    }

    /// Give `fd` (or /dev/null) as descriptor `target`.
    pub fn fd_or_null(self, fd: Option<OwnedFd>, target: RawFd) -> Spawn {
        match fd {
            Some(fd) => self.fd(fd, target),
            None => self,
        }
    }

    /// Start the child in a process group of its own (it leads it).
    pub fn process_group(mut self) -> Spawn {
        self.process_group = true;
        self
    }

    /// The argv and the environment the child gets (`KEY=value` entries).
    pub fn command_line(&self) -> (Vec<OsString>, Vec<OsString>) {
        let mut argv = vec![self.arg0.clone()];
        argv.extend(self.args.iter().cloned());
        let env = match &self.env {
            Some(env) => env.clone(),
            None => {
                let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
                    .filter(|(k, _)| !self.extra_env.iter().any(|(e, _)| e == k))
                    .collect();
                env.extend(self.extra_env.iter().cloned());
                env
            }
        };
        let env = env
            .into_iter()
            .map(|(k, v)| {
                let mut e = k;
                e.push("=");
                e.push(v);
                e
            })
            .collect();
        (argv, env)
    }

    /// Fork and exec; returns the child's pid once the exec succeeded. The child is never
    /// waited for here, also when the exec failed (the embedder's reaper collects it).
    pub fn spawn(self) -> Result<i32, SpawnError> {
        let program = self.program.clone();
        let sys = |step: &'static str, errno: Errno| SpawnError::Sys {
            program: program.clone(),
            step,
            errno,
        };
        let nul = |what: &OsStr| SpawnError::Nul {
            program: program.clone(),
            what: format!("{what:?}"),
        };
        let cstring = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| nul(s));
        let (argv, env) = self.command_line();
        let path = cstring(self.program.as_os_str())?;
        let argv = argv
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env
            .iter()
            .map(|e| cstring(e))
            .collect::<Result<Vec<_>, _>>()?;
        let argv_ptrs = null_terminated(&argv);
        let env_ptrs = null_terminated(&env);

        // Every descriptor the child installs is first moved above every target number, so
        // that no installation clobbers another (or the status pipe).
        let mut fds = self.fds;
        let null = || -> Result<OwnedFd, SpawnError> {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| {
                    sys(
                        "open /dev/null for",
                        Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    )
                })
        };
        for target in 0..=2 {
            if !fds.iter().any(|(_, t)| *t == target) {
                fds.push((null()?, target));
            }
        }
        let above = fds.iter().map(|(_, t)| *t).max().unwrap_or(2) + 1;
        let high = |fd: &OwnedFd| -> Result<OwnedFd, SpawnError> {
            let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(above.max(16)))
                .map_err(|e| sys("duplicate a descriptor for", e))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        };
        let installs = fds
            .iter()
            .map(|(fd, t)| Ok((high(fd)?, *t)))
            .collect::<Result<Vec<_>, SpawnError>>()?;
        drop(fds);
        let (status_r, low_status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| sys("make the status pipe for", e))?;
        // The child writes to a copy above every target; no other write end may stay open in
        // the parent, or the exec's EOF would never come.
        let status_w = high(&low_status_w)?;
        drop(low_status_w);
        let raw_installs: Vec<(RawFd, RawFd)> =
            installs.iter().map(|(h, t)| (h.as_raw_fd(), *t)).collect();
        let child = Child {
            path: &path,
            argv: &argv_ptrs,
            env: &env_ptrs,
            installs: &raw_installs,
            status: status_w.as_raw_fd(),
            close_from: above,
            process_group: self.process_group,
        };
        // SAFETY: the child runs only async-signal-safe calls on data prepared before the
        // fork (`Child::run`) and never returns.
        let pid = match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => child.run(),
            Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
            Err(e) => return Err(sys("fork for", e)),
        };
        drop(status_w);
        drop(installs);
        if self.process_group {
            // Also here, so the group exists whichever of parent and child runs first (after
            // the child's exec this fails harmlessly).
            let _ = nix::unistd::setpgid(
                nix::unistd::Pid::from_raw(pid),
                nix::unistd::Pid::from_raw(pid),
            );
        }
        match read_status(&status_r) {
            None => Ok(pid),
            Some((step, errno)) => Err(sys(STEPS[step as usize % STEPS.len()], errno)),
        }
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    let mut p: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    p.push(std::ptr::null());
    p
}

/// The child's report: nothing (EOF: the exec closed the pipe) or a step and an errno.
fn read_status(status_r: &OwnedFd) -> Option<(u32, Errno)> {
    let mut buf = [0u8; 8];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(status_r, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Some((STEP_EXEC, e)),
        }
    }
    if len < buf.len() {
        return None;
    }
    let step = u32::from_ne_bytes(buf[..4].try_into().unwrap_or_default());
    let errno = i32::from_ne_bytes(buf[4..].try_into().unwrap_or_default());
    Some((step, Errno::from_raw(errno)))
}

/// What the forked child needs, all prepared before the fork (the child may not allocate).
struct Child<'a> {
    path: &'a CString,
    argv: &'a [*const libc::c_char],
    env: &'a [*const libc::c_char],
    installs: &'a [(RawFd, RawFd)],
    status: RawFd,
    close_from: RawFd,
    process_group: bool,
}

impl Child<'_> {
    /// Default signals, its own group if asked, the descriptors in place, exec. A failure is
    /// written to the status pipe as (step, errno) before `_exit(127)`.
    fn run(&self) -> ! {
        // SAFETY: async-signal-safe libc calls on valid descriptors and prebuilt C strings.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if self.process_group && libc::setpgid(0, 0) < 0 {
                self.fail(STEP_PGID);
            }
            for &(from, to) in self.installs {
                if libc::dup2(from, to) < 0 {
                    self.fail(STEP_DUP);
                }
            }
            // Nothing else of the embedder's reaches the program.
            libc::syscall(
                libc::SYS_close_range,
                self.close_from as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.env.as_ptr());
            self.fail(STEP_EXEC)
        }
    }

    /// Report `step` with errno on the status pipe and exit.
    unsafe fn fail(&self, step: u32) -> ! {
        let errno = *libc::__errno_location();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&step.to_ne_bytes());
        buf[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(self.status, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_the_one_asked_for() {
        let s = Spawn::new("/l")
            .args(["-k", "v"])
            .env_clear()
            .env("A", "1")
            .env("B", "2");
        let (argv, env) = s.command_line();
        assert_eq!(argv, ["/l", "-k", "v"]);
        assert_eq!(env, ["A=1", "B=2"]);
        let s = Spawn::new("/l").arg0("x").env("CRYO_SPAWN_TEST", "1");
        let (argv, env) = s.command_line();
        assert_eq!(argv, ["x"]);
        assert!(env.iter().any(|e| e == "CRYO_SPAWN_TEST=1"));
        assert!(env.iter().any(|e| e.as_bytes().starts_with(b"PATH=")));
    }

    #[test]
    fn a_nul_byte_is_named() {
        let err = Spawn::new("/bin/true").arg("a\0b").spawn().unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }
}
