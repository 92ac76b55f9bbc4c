//! The container's stdio: pipes (or the pty master) copied to and from the FIFOs containerd
//! hands over. Copies run on plain threads with blocking I/O (the kernel splices pipe to FIFO);
//! an output is done when its pipe reaches EOF, so no output is lost at exit.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use cryo_sandbox::Stdio;
use log::warn;
use tokio::sync::oneshot;

/// Where containerd wants the streams (empty: not wanted).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The shim's side of a process's stdio: copies in flight.
#[derive(Default)]
pub struct Io {
    outputs: Vec<oneshot::Receiver<()>>,
}

/// Make the pipes for a process: the engine gets the container's ends, the shim copies ours.
/// With a terminal the engine makes the pty; call [`Io::attach_console`] after create.
pub fn prepare(paths: &StdioPaths) -> io::Result<(Stdio, Io)> {
    if paths.terminal {
        return Ok((Stdio::Terminal, Io::default()));
    }
    let mut io = Io::default();
    let stdin = if paths.stdin.is_empty() {
        None
    } else {
        let (r, w) = pipe()?;
        copy_in(paths.stdin.clone(), w);
        Some(r)
    };
    let stdout = output(&paths.stdout, &mut io)?;
    let stderr = output(&paths.stderr, &mut io)?;
    Ok((
        Stdio::Fds {
            stdin,
            stdout,
            stderr,
        },
        io,
    ))
}

fn output(path: &str, io: &mut Io) -> io::Result<Option<OwnedFd>> {
    if path.is_empty() {
        return Ok(None);
    }
    let (r, w) = pipe()?;
    io.outputs.push(copy_out(r, path.to_string()));
    Ok(Some(w))
}

impl Io {
    /// Copy a terminal's master to stdout and stdin into it.
    pub fn attach_console(&mut self, master: OwnedFd, paths: &StdioPaths) -> io::Result<()> {
        if !paths.stdin.is_empty() {
            copy_in(paths.stdin.clone(), master.try_clone()?);
        }
        if !paths.stdout.is_empty() {
            self.outputs.push(copy_out(master, paths.stdout.clone()));
        }
        Ok(())
    }

    /// Wait until every output reached EOF, at most `limit` (a process that left a child
    /// holding its stdout must not block the exit forever).
    pub async fn wait_outputs(&mut self, limit: Duration) {
        let all = futures_join(std::mem::take(&mut self.outputs));
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("stdio copy still busy {limit:?} after exit; reporting the exit anyway");
        }
    }
}

async fn futures_join(rxs: Vec<oneshot::Receiver<()>>) {
    for rx in rxs {
        let _ = rx.await;
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// FIFO → container: ends (closing the container's stdin) when the writer closes the FIFO.
fn copy_in(fifo: String, to: OwnedFd) {
    std::thread::spawn(move || {
        let result =
            File::open(&fifo).and_then(|mut from| io::copy(&mut from, &mut File::from(to)));
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::BrokenPipe {
                warn!("stdin {fifo}: {e}");
            }
        }
    });
}

/// Container → FIFO: done when the container side is closed by every process.
fn copy_out(from: OwnedFd, fifo: String) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut from = File::from(from);
        match OpenOptions::new().write(true).open(&fifo) {
            Ok(mut to) => {
                if let Err(e) = io::copy(&mut from, &mut to) {
                    // EIO: the pty's last slave closed; that is the end of a terminal.
                    if e.raw_os_error() != Some(libc::EIO) {
                        warn!("copy to {fifo}: {e}");
                    }
                }
            }
            Err(e) => {
                warn!("open {fifo}: {e}; draining the output");
                let _ = io::copy(&mut from, &mut io::sink());
            }
        }
        let _ = tx.send(());
    });
    rx
}
