//! The thread that serves the trigger filesystem: reads requests from `/dev/fuse`, answers
//! them through [`TriggerFs`], starts rounds, and lets go of parked readers that are being
//! killed (looked for on every interrupt and twice a second while any reader is parked). It
//! never waits for a checkpoint: rounds run on the async runtime and answer their readers
//! through [`Served::complete`].

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::warn;

use super::fs::{Reply, TriggerFs};
use cryo_sandbox::fuse::{self, Channel, Request};

/// How often parked readers are checked for a pending kill (ms).
const SWEEP_MS: i32 = 500;

/// The channel and the filesystem, for answering from outside the thread.
#[derive(Clone)]
pub struct Served {
    channel: Arc<Channel>,
    pub fs: Arc<TriggerFs>,
}

impl Served {
    pub fn new(channel: Channel, fs: TriggerFs) -> Served {
        Served {
            channel: Arc::new(channel),
            fs: Arc::new(fs),
        }
    }

    /// Round `round` is over: its readers get the result.
    pub fn complete(&self, round: u64, ok: bool) {
        send(&self.channel, self.fs.complete(round, ok));
    }

    /// Container `id` is gone from the tree.
    pub fn remove(&self, id: &str) {
        send(&self.channel, self.fs.remove(id));
    }
}

fn send(channel: &Channel, replies: Vec<(u64, Reply)>) {
    for (unique, reply) in replies {
        match reply {
            Reply::Ok(payload) => channel.reply(unique, 0, &payload),
            Reply::Err(errno) => channel.reply(unique, errno, &[]),
        }
    }
}

/// The serving thread; stopped and joined by [`Server::stop`].
pub struct Server {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `served` on a thread of its own; `start(round)` is called for each new round.
    pub fn spawn(served: Served, start: impl Fn(u64) + Send + 'static) -> std::io::Result<Server> {
        // SAFETY: eventfd(2) creates a new descriptor, owned at once.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` was just created and nothing else owns it.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let stop_raw = stop.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("fscheckpoint-trigger".into())
            .stack_size(crate::THREAD_STACK)
            .spawn(move || serve(&served, stop_raw, &start))?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the thread and wait for it.
    pub fn stop(mut self) {
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes to our eventfd.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(served: &Served, stop: i32, start: &dyn Fn(u64)) {
    let channel = &served.channel;
    let fs = &served.fs;
    let mut buf = vec![0u8; fuse::BUFFER];
    loop {
        let timeout = if fs.has_parked() { SWEEP_MS } else { -1 };
        if channel.wait(stop, timeout, "fscheckpoint trigger") == fuse::Wait::Stop {
            // Stopped, or unmounted and drained.
            return;
        }
        let mut sweep = fs.has_parked();
        loop {
            let len = match channel.read(&mut buf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::ENODEV) {
                        warn!("fscheckpoint trigger: read a request: {e}");
                    }
                    return;
                }
            };
            let Some(req) = Request::parse(&buf[..len]) else {
                warn!("fscheckpoint trigger: a malformed request ({len} bytes)");
                continue;
            };
            let outcome = fs.handle(&req);
            send(channel, outcome.replies);
            if let Some(round) = outcome.start {
                start(round);
            }
            sweep |= outcome.sweep;
        }
        if sweep {
            send(channel, fs.sweep(being_killed));
        }
    }
}

/// Whether `pid` has a kill pending (a fatal signal became SIGKILL for every thread), or is
/// gone: it waits for a reply it will never use.
fn being_killed(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    status.lines().any(|l| {
        ["SigPnd:", "ShdPnd:"].iter().any(|k| {
            l.strip_prefix(k)
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .is_some_and(|mask| mask & sigkill != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real kernel: a FUSE mount served by [`Server`], the shell sequence of the issue,
    /// a write refused on a read-only file, and a reader killed while it waits.
    #[test]
    fn the_shell_sequence_works_through_the_kernel() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root: it mounts a FUSE filesystem (run the shim's tests as root, as CI does)"
        );
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let channel = Channel::mount(&mnt, "cryo-trigger-test").unwrap();
        // Unmounted however the test ends.
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                cryo_sandbox::fuse::detach(&self.0);
            }
        }
        let unmount = Unmount(mnt.clone());
        let fs = TriggerFs::new(Box::new(|id, _pid| id == "app"), Box::new(|_| false));
        fs.add("app", true);
        fs.add("side", false);
        let served = Served::new(channel, fs);
        let rounds = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = {
            let (served, rounds) = (served.clone(), rounds.clone());
            Server::spawn(served.clone(), move |round| {
                rounds.lock().unwrap().push(round);
                let served = served.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    served.complete(round, true);
                });
            })
            .unwrap()
        };
        let sh = |script: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&mnt)
                .output()
                .unwrap()
        };
        // coreutils' cat reads; busybox's (the containers') tries sendfile first.
        for cat in ["cat", "busybox cat"] {
            let out = sh(&format!(
                "exec 3<>app/fscheckpoint; echo 1 >&3; {cat} <&3; echo 1 >&3; {cat} <&3"
            ));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "resume\nresume\n",
                "{cat}: {out:?}"
            );
        }
        assert_eq!(*rounds.lock().unwrap(), vec![1, 2, 3, 4]);
        let out = sh("echo 1 > side/fscheckpoint");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{out:?}"
        );
        let out = sh("touch new; ls; stat -c %a app/fscheckpoint side/fscheckpoint");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "app\nside\n666\n444\n",
            "{out:?}"
        );
        // A reader waiting for a round that never comes dies of SIGKILL at once.
        let mut cat = std::process::Command::new("cat")
            .arg(mnt.join("side/fscheckpoint"))
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        cat.kill().unwrap();
        let t = std::time::Instant::now();
        while cat.try_wait().unwrap().is_none() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(3),
                "a killed reader still waits for the trigger"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(unmount);
        server.stop();
        drop(served);
    }

    #[test]
    fn a_live_process_is_not_being_killed_and_a_gone_one_is() {
        assert!(!being_killed(std::process::id()));
        assert!(being_killed(u32::MAX - 1));
    }
}
