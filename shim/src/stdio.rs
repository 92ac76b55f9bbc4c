//! The container's stdio: pipes (or the pty master) copied to and from the FIFOs containerd
//! hands over. Copies run on plain threads with blocking I/O (the kernel splices pipe to FIFO);
//! an output is done when its pipe reaches EOF, so no output is lost at exit.
//!
//! The stdin FIFO is opened `O_RDONLY|O_NONBLOCK` (as containerd's fifo package does), which
//! never waits for a writer: a client that already closed its end (stdin from /dev/null) must
//! not leave a thread blocked in `open` forever. Its copy then waits in `poll` for data, for the
//! writer to leave, or for [`IoControl::stop_stdin`] (the process exited, or CloseIO).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryo_sandbox::Stdio;
use log::{debug, warn};
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
    control: IoControl,
}

/// What requests act on while the copies run: stdin (CloseIO) and the pty (ResizePty).
#[derive(Clone, Default)]
pub struct IoControl {
    /// Where stdin's copy writes; taking it closes the process's stdin.
    stdin: Arc<Mutex<Option<File>>>,
    /// The pty master (a duplicate), when the process has a terminal.
    console: Arc<Mutex<Option<OwnedFd>>>,
    /// Dropping it ends stdin's copy (the write end of a pipe its `poll` watches).
    stdin_stop: Arc<Mutex<Option<OwnedFd>>>,
}

impl IoControl {
    /// Close the process's stdin: a pipe sees EOF; a terminal gets an end-of-file character.
    pub fn close_stdin(&self) {
        let writer = lock(&self.stdin).take();
        if let (Some(mut w), Some(_)) = (writer, lock(&self.console).as_ref()) {
            let _ = w.write_all(&[4]);
        }
        self.stop_stdin();
    }

    /// End stdin's copy, wherever it waits (its FIFO and thread are released).
    pub fn stop_stdin(&self) {
        lock(&self.stdin_stop).take();
    }

    /// Set the terminal's window size. A process without a terminal ignores it, as with the
    /// runc shim.
    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        let console = lock(&self.console);
        let Some(fd) = console.as_ref() else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on an open pty master.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        copy_in(&paths.stdin, w, &io.control)?;
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
        *lock(&self.control.console) = Some(master.try_clone()?);
        if !paths.stdin.is_empty() {
            copy_in(&paths.stdin, master.try_clone()?, &self.control)?;
        }
        if !paths.stdout.is_empty() {
            self.outputs.push(copy_out(master, paths.stdout.clone()));
        }
        Ok(())
    }

    /// A terminal whose master arrives only later (a restore's, at Start): its output is
    /// waited for from now on, as if attached; dropped unattached, it counts as done.
    pub fn console_later(&mut self, paths: &StdioPaths) -> PendingConsole {
        let (done, rx) = oneshot::channel();
        self.outputs.push(rx);
        PendingConsole {
            paths: paths.clone(),
            control: self.control.clone(),
            done,
        }
    }

    /// The handle for CloseIO and ResizePty.
    pub fn control(&self) -> IoControl {
        self.control.clone()
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

/// See [`Io::console_later`].
pub struct PendingConsole {
    paths: StdioPaths,
    control: IoControl,
    done: oneshot::Sender<()>,
}

impl PendingConsole {
    /// The master is here: copy it to stdout and stdin into it, as [`Io::attach_console`].
    pub fn attach(self, master: OwnedFd) -> io::Result<()> {
        *lock(&self.control.console) = Some(master.try_clone()?);
        if !self.paths.stdin.is_empty() {
            copy_in(&self.paths.stdin, master.try_clone()?, &self.control)?;
        }
        if !self.paths.stdout.is_empty() {
            copy_out_then(master, self.paths.stdout.clone(), self.done);
        }
        Ok(())
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

/// FIFO → container: ends (closing the container's stdin) when the FIFO's writer leaves,
/// CloseIO takes the container's end away, or [`IoControl::stop_stdin`] is called.
fn copy_in(fifo: &str, to: OwnedFd, control: &IoControl) -> io::Result<()> {
    let from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo)
        .map_err(|e| io::Error::new(e.kind(), format!("stdin {fifo}: {e}")))?;
    let (stop, stop_tx) = pipe()?;
    *lock(&control.stdin) = Some(File::from(to));
    *lock(&control.stdin_stop) = Some(stop_tx);
    let target = control.stdin.clone();
    spawn_thread(move || {
        let mut from = from;
        let mut buf = vec![0u8; 32 * 1024];
        while wait_readable(&from, &stop) {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut guard = lock(&target);
            let Some(to) = guard.as_mut() else { break };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        lock(&target).take();
    });
    Ok(())
}

/// Wait until `fifo` has data or its writer left (true), or `stop` was closed (false).
fn wait_readable(fifo: &File, stop: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return false;
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return true;
        }
    }
}

/// Container → FIFO: done when the container side is closed by every process.
fn copy_out(from: OwnedFd, fifo: String) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    copy_out_then(from, fifo, tx);
    rx
}

/// [`copy_out`], signalling `tx` when done.
fn copy_out_then(from: OwnedFd, fifo: String, tx: oneshot::Sender<()>) {
    spawn_thread(move || {
        let mut from = File::from(from);
        match OpenOptions::new().write(true).open(&fifo) {
            Ok(mut to) => {
                if let Err(e) = io::copy(&mut from, &mut to) {
                    if is_an_end(&e) {
                        debug!("copy to {fifo} ended: {e}");
                    } else {
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
}

/// An output copy's error that is a normal end, not a fault: EIO, the pty's last slave closed
/// (the end of a terminal); EPIPE, the FIFO's reader left (a finished or detached client; the
/// process's further writes fail as with runc's shim).
fn is_an_end(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EPIPE))
}

/// A copy thread with a small stack.
fn spawn_thread(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .stack_size(crate::THREAD_STACK)
        .spawn(f)
    {
        warn!("cannot start a stdio copy thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_left_or_a_closed_terminal_is_an_end_not_a_fault() {
        assert!(is_an_end(&io::Error::from_raw_os_error(libc::EPIPE)));
        assert!(is_an_end(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_an_end(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_an_end(&io::Error::from_raw_os_error(libc::EBADF)));
    }

    fn fifo_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        fifo
    }

    #[test]
    fn stdin_of_a_fifo_whose_writer_is_gone_never_blocks_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo_in(&dir);
        let control = IoControl::default();
        let (r, w) = pipe().unwrap();
        // No writer ever comes: the open returns at once, the copy waits.
        copy_in(fifo.to_str().unwrap(), w, &control).unwrap();
        control.stop_stdin();
        // The copy ends and closes the process's stdin: its reader sees EOF.
        let mut buf = Vec::new();
        File::from(r).read_to_end(&mut buf).unwrap();
        assert!(buf.is_empty());
    }

    #[test]
    fn stdin_data_reaches_the_process_and_the_writer_leaving_is_eof() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo_in(&dir);
        let control = IoControl::default();
        let (r, w) = pipe().unwrap();
        copy_in(fifo.to_str().unwrap(), w, &control).unwrap();
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(b"hello\n").unwrap();
        drop(writer);
        let mut buf = Vec::new();
        File::from(r).read_to_end(&mut buf).unwrap();
        assert_eq!(buf, b"hello\n");
    }
}
