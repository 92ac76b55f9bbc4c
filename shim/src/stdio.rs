//! The container's stdio: pipes (or the pty master) copied to and from the FIFOs containerd
//! hands over, on plain threads; an output is done when its pipe reaches EOF, so no output is
//! lost at exit.
//!
//! Stdin: the FIFO is opened `O_RDONLY|O_NONBLOCK` (as containerd's fifo package does), which
//! never waits for a writer: a client that already closed its end (stdin from /dev/null) must
//! not leave a thread blocked in `open` forever. Its copy then waits in `poll` for data, for the
//! writer to leave (EOF), for CloseIO, or for [`IoControl::stop_stdin`] (the process exited).
//! CloseIO first copies what is still in the FIFO, as runc's shim does: ctr sends it as soon as
//! its own stdin ends, when its last bytes may not have left the FIFO yet.
//!
//! Outputs: the FIFO is opened at once, read-write and non-blocking (a FIFO opened for writing
//! alone waits for a reader, which a client may never bring), so an unread FIFO costs no
//! thread; the copy waits in `poll` while the FIFO is full, and ends at the pipe's EOF, or when
//! [`Io::wait_outputs`] gives up on it after the process exited.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryo_sandbox::Stdio;
use log::{debug, warn};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::log_binary::{self, Logger, LoggerFor};
use crate::log_uri::{self, LogUri};

/// Bytes one copy moves at a time.
const COPY_BUFFER: usize = 32 * 1024;

/// A copy's buffer, allocated when the first bytes come: a process that never writes (or
/// reads) costs its shim no buffer.
#[derive(Default)]
struct LazyBuffer(Vec<u8>);

impl LazyBuffer {
    fn get(&mut self) -> &mut [u8] {
        if self.0.is_empty() {
            self.0 = vec![0u8; COPY_BUFFER];
        }
        &mut self.0
    }
}

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
    /// Dropping it ends the output copies wherever they wait (the write end of a pipe their
    /// `poll` watches).
    outputs_stop: Option<OwnedFd>,
    /// The read end the output copies watch.
    outputs_stopped: Option<Arc<OwnedFd>>,
    control: IoControl,
    /// A `file://` log a terminal's output goes to (until [`Io::attach_console`]).
    log_file: Option<File>,
}

/// What requests act on while the copies run: stdin (CloseIO) and the pty (ResizePty).
#[derive(Clone, Default)]
pub struct IoControl {
    /// Dropping it asks stdin's copy to copy what is left in the FIFO and end (CloseIO).
    stdin_close: Arc<Mutex<Option<OwnedFd>>>,
    /// The pty master (a duplicate), when the process has a terminal.
    console: Arc<Mutex<Option<OwnedFd>>>,
    /// Dropping it ends stdin's copy (the write end of a pipe its `poll` watches).
    stdin_stop: Arc<Mutex<Option<OwnedFd>>>,
    /// A `binary://` log URI's logger: stopped at Delete ([`IoControl::stop_logger`]), killed
    /// when the last handle goes (a failed Create).
    logger: Arc<Mutex<Option<Logger>>>,
}

impl IoControl {
    /// CloseIO: stdin's copy copies what is still in the FIFO, then closes the process's
    /// stdin: a pipe sees EOF; a terminal gets an end-of-file character.
    pub fn close_stdin(&self) {
        lock(&self.stdin_close).take();
    }

    /// End stdin's copy at once, wherever it waits (its FIFO and thread are released).
    pub fn stop_stdin(&self) {
        lock(&self.stdin_stop).take();
    }

    /// Stop the process's logger, if it has one (Delete, as runc's shim).
    pub async fn stop_logger(&self) {
        let logger = lock(&self.logger).take();
        if let Some(logger) = logger {
            logger.stop().await;
        }
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
/// A stream whose path cannot be opened is an error naming the stream and the path; a log URI
/// instead of output paths ([`crate::log_uri`]) sends both outputs to its file or its logger
/// ([`crate::log_binary`], started here for `owner`).
pub async fn prepare(paths: &StdioPaths, owner: LoggerFor<'_>) -> Result<(Stdio, Io)> {
    let log = log_uri::from_outputs(&paths.stdout, &paths.stderr)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let mut io = Io::default();
    let (stdout, stderr) = match log {
        None if paths.terminal => return Ok((Stdio::Terminal, io)),
        None => (
            io.output("stdout", &paths.stdout).map_err(internal)?,
            io.output("stderr", &paths.stderr).map_err(internal)?,
        ),
        Some(LogUri::File(path)) => {
            let file = open_log_file(&paths.stdout, &path).map_err(internal)?;
            if paths.terminal {
                io.log_file = Some(file);
                return Ok((Stdio::Terminal, io));
            }
            let copy = file.try_clone().map_err(internal)?;
            (
                io.output_to(copy, &paths.stdout).map_err(internal)?,
                io.output_to(file, &paths.stdout).map_err(internal)?,
            )
        }
        Some(LogUri::Binary(cmd)) => {
            if paths.terminal {
                return Err(Error::InvalidArgument(format!(
                    "log URI {:?}: a binary logger cannot take a terminal's output",
                    cmd.uri
                )));
            }
            let started = log_binary::start(&cmd, owner).await?;
            *lock(&io.control.logger) = Some(started.logger);
            (Some(started.stdout), Some(started.stderr))
        }
    };
    let stdin = if paths.stdin.is_empty() {
        None
    } else {
        let (r, w) = pipe().map_err(internal)?;
        copy_in(&paths.stdin, w, &io.control, false).map_err(internal)?;
        Some(r)
    };
    Ok((
        Stdio::Fds {
            stdin,
            stdout,
            stderr,
        },
        io,
    ))
}

fn internal(e: io::Error) -> Error {
    Error::Internal(format!("stdio: {e}"))
}

/// A `file://` log: its directory made as runc's shim does (0755), the file opened for
/// appending, created 0644 if missing; it must be a regular file.
fn open_log_file(uri: &str, path: &Path) -> io::Result<File> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("log URI {uri:?}: {e}"));
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(named)?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(named)?;
    if !file.metadata().map_err(named)?.file_type().is_file() {
        return Err(named(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok(file)
}

impl Io {
    /// A pipe whose read end is copied to `path` (none if `path` is empty); the process gets
    /// the write end.
    fn output(&mut self, stream: &str, path: &str) -> io::Result<Option<OwnedFd>> {
        if path.is_empty() {
            return Ok(None);
        }
        self.output_to(open_output(stream, path)?, path)
    }

    /// A pipe whose read end is copied to `to` (`name` names it in messages); the process gets
    /// the write end.
    fn output_to(&mut self, to: File, name: &str) -> io::Result<Option<OwnedFd>> {
        let (r, w) = pipe()?;
        self.copy_out(r, to, name)?;
        Ok(Some(w))
    }

    /// Copy `from` to `to` until `from` ends or the outputs are stopped.
    fn copy_out(&mut self, from: OwnedFd, to: File, path: &str) -> io::Result<()> {
        let stopped = self.outputs_stopped()?;
        self.outputs
            .push(copy_out(from, to, path.to_string(), stopped));
        Ok(())
    }

    /// The read end the output copies watch: it reads EOF when [`Io::wait_outputs`] gives up.
    fn outputs_stopped(&mut self) -> io::Result<Arc<OwnedFd>> {
        if self.outputs_stopped.is_none() {
            let (stopped, stop) = pipe()?;
            self.outputs_stop = Some(stop);
            self.outputs_stopped = Some(Arc::new(stopped));
        }
        Ok(self.outputs_stopped.clone().expect("made above"))
    }

    /// Copy a terminal's master to stdout and stdin into it.
    pub fn attach_console(&mut self, master: OwnedFd, paths: &StdioPaths) -> io::Result<()> {
        *lock(&self.control.console) = Some(master.try_clone()?);
        if !paths.stdin.is_empty() {
            copy_in(&paths.stdin, master.try_clone()?, &self.control, true)?;
        }
        if let Some(to) = self.log_file.take() {
            self.copy_out(master, to, &paths.stdout)?;
        } else if !paths.stdout.is_empty() {
            let to = open_output("stdout", &paths.stdout)?;
            self.copy_out(master, to, &paths.stdout)?;
        }
        Ok(())
    }

    /// A terminal whose master arrives only later (a restore's, at Start): its output is
    /// waited for from now on, as if attached; dropped unattached, it counts as done.
    pub fn console_later(&mut self, paths: &StdioPaths) -> io::Result<PendingConsole> {
        let stopped = self.outputs_stopped()?;
        let (done, rx) = oneshot::channel();
        self.outputs.push(rx);
        Ok(PendingConsole {
            paths: paths.clone(),
            control: self.control.clone(),
            stopped,
            done,
        })
    }

    /// The handle for CloseIO and ResizePty.
    pub fn control(&self) -> IoControl {
        self.control.clone()
    }

    /// Wait until every output reached EOF, at most `limit` (a process that left a child
    /// holding its stdout, or an output FIFO nobody reads, must not block the exit forever);
    /// then the copies still running are ended.
    pub async fn wait_outputs(&mut self, limit: Duration) {
        let all = futures_join(std::mem::take(&mut self.outputs));
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("stdio copy still busy {limit:?} after exit; reporting the exit anyway");
        }
        self.outputs_stop.take();
    }
}

/// See [`Io::console_later`].
pub struct PendingConsole {
    paths: StdioPaths,
    control: IoControl,
    stopped: Arc<OwnedFd>,
    done: oneshot::Sender<()>,
}

impl PendingConsole {
    /// The master is here: copy it to stdout and stdin into it, as [`Io::attach_console`].
    pub fn attach(self, master: OwnedFd) -> io::Result<()> {
        *lock(&self.control.console) = Some(master.try_clone()?);
        if !self.paths.stdin.is_empty() {
            copy_in(&self.paths.stdin, master.try_clone()?, &self.control, true)?;
        }
        if !self.paths.stdout.is_empty() {
            let to = open_output("stdout", &self.paths.stdout)?;
            copy_out_then(
                master,
                to,
                self.paths.stdout.clone(),
                self.stopped,
                self.done,
            );
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

/// Open an output's destination without waiting for anyone: a FIFO read-write and
/// non-blocking (holding its read side, as runc's shim does, so writes never fail for want of
/// a reader and a late reader still finds what was written), a regular file for appending.
/// Anything else is refused by stream and path.
fn open_output(stream: &str, path: &str) -> io::Result<File> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{stream} {path}: {e}"));
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(named)?;
    let kind = file.metadata().map_err(named)?.file_type();
    if !(kind.is_fifo() || kind.is_file()) {
        return Err(named(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a FIFO or a regular file",
        )));
    }
    Ok(file)
}

/// FIFO → container: ends (closing the container's stdin) when the FIFO's writer leaves, at
/// CloseIO once the FIFO is empty (a terminal then gets an end-of-file character), or when
/// [`IoControl::stop_stdin`] is called.
fn copy_in(fifo: &str, to: OwnedFd, control: &IoControl, terminal: bool) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("stdin {fifo}: {e}"));
    let from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo)
        .map_err(named)?;
    if !from.metadata().map_err(named)?.file_type().is_fifo() {
        return Err(named(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a FIFO",
        )));
    }
    let (stop, stop_tx) = pipe()?;
    let (close, close_tx) = pipe()?;
    *lock(&control.stdin_stop) = Some(stop_tx);
    *lock(&control.stdin_close) = Some(close_tx);
    spawn_thread(move || {
        let mut from = from;
        let mut to = File::from(to);
        let mut buf = LazyBuffer::default();
        let mut closing = false;
        loop {
            if !closing {
                match wait_stdin(from.as_fd(), stop.as_fd(), close.as_fd()) {
                    StdinEvent::Readable => {}
                    StdinEvent::Stop => break,
                    StdinEvent::CloseIo => closing = true,
                }
            }
            let n = match from.read(buf.get()) {
                Ok(0) => break,
                Ok(n) => n,
                // Empty: after CloseIO, everything there was is copied.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && closing => {
                    if terminal {
                        let _ = to.write_all(&[4]);
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if to.write_all(&buf.get()[..n]).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// What stdin's copy woke up for.
enum StdinEvent {
    /// Data, or the writer left.
    Readable,
    /// [`IoControl::stop_stdin`].
    Stop,
    /// [`IoControl::close_stdin`].
    CloseIo,
}

/// Wait until `fifo` has data or its writer left, or `stop` or `close` was closed (stop first).
fn wait_stdin(fifo: BorrowedFd<'_>, stop: BorrowedFd<'_>, close: BorrowedFd<'_>) -> StdinEvent {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let fired = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
    loop {
        let mut fds = [
            PollFd::new(fifo, PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
            PollFd::new(close, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return StdinEvent::Stop,
        }
        if fired(&fds[1]) {
            return StdinEvent::Stop;
        }
        if fired(&fds[2]) {
            return StdinEvent::CloseIo;
        }
        if fired(&fds[0]) {
            return StdinEvent::Readable;
        }
    }
}

/// Wait until `fd` is ready for `events` (or hung up: true), or `stop` was closed (false).
fn wait_for(fd: BorrowedFd<'_>, events: libc::c_short, stop: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [
            PollFd::new(fd, PollFlags::from_bits_truncate(events)),
            PollFd::new(stop, PollFlags::POLLIN),
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

/// Container → FIFO (or file): done when the container side is closed by every process, or
/// when `stopped` reads EOF.
fn copy_out(from: OwnedFd, to: File, path: String, stopped: Arc<OwnedFd>) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    copy_out_then(from, to, path, stopped, tx);
    rx
}

/// [`copy_out`], signalling `tx` when done.
fn copy_out_then(
    from: OwnedFd,
    to: File,
    path: String,
    stopped: Arc<OwnedFd>,
    tx: oneshot::Sender<()>,
) {
    spawn_thread(move || {
        if let Err(e) = copy_until_stopped(File::from(from), to, stopped.as_fd()) {
            if is_an_end(&e) {
                debug!("copy to {path} ended: {e}");
            } else {
                warn!("copy to {path}: {e}");
            }
        }
        let _ = tx.send(());
    });
}

/// Copy `from` to the non-blocking `to` until `from` ends (`Ok`) or `stop` closes.
fn copy_until_stopped(mut from: File, mut to: File, stop: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = LazyBuffer::default();
    loop {
        if !wait_for(from.as_fd(), libc::POLLIN, stop) {
            return Ok(());
        }
        let buf = buf.get();
        let n = match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            match to.write(data) {
                Ok(w) => data = &data[w..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The FIFO is full: wait for its reader (or for the stop).
                    if !wait_for(to.as_fd(), libc::POLLOUT, stop) {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// An output copy's error that is a normal end, not a fault: EIO, the pty's last slave closed
/// (the end of a terminal); EPIPE, nothing reads the destination any more.
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
    fn stdin_of_a_fifo_whose_writer_never_came_never_blocks_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo_in(&dir);
        let control = IoControl::default();
        let (r, w) = pipe().unwrap();
        // No writer ever comes: the open returns at once, the copy waits.
        copy_in(fifo.to_str().unwrap(), w, &control, false).unwrap();
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
        copy_in(fifo.to_str().unwrap(), w, &control, false).unwrap();
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(b"hello\n").unwrap();
        drop(writer);
        let mut buf = Vec::new();
        File::from(r).read_to_end(&mut buf).unwrap();
        assert_eq!(buf, b"hello\n");
    }

    /// What ctr does: its stdin ends, it sends CloseIO, and only then closes its end of the
    /// FIFO, whose buffer may still be full.
    #[test]
    fn close_io_drops_nothing_still_in_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo_in(&dir);
        let control = IoControl::default();
        let (r, w) = pipe().unwrap();
        copy_in(fifo.to_str().unwrap(), w, &control, false).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let reader = std::thread::spawn(move || {
            // A process slow to start reading.
            std::thread::sleep(Duration::from_millis(100));
            let mut got = Vec::new();
            File::from(r).read_to_end(&mut got).unwrap();
            got
        });
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(&data).unwrap();
        // Everything is written (up to a FIFO's worth still in it); the writer is still there.
        control.close_stdin();
        std::thread::sleep(Duration::from_millis(200));
        drop(writer);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data);
    }

    #[test]
    fn an_output_fifo_nobody_reads_is_opened_at_once_and_its_copy_ends() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut io = Io::default();
        // Opened here, in the caller, without a reader: a blocking open would never return.
        let w = io
            .output("stdout", fifo.to_str().unwrap())
            .unwrap()
            .unwrap();
        File::from(w).write_all(b"nobody reads this\n").unwrap();
        // The copy ends at the pipe's EOF (the FIFO held the bytes).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let done = rt.block_on(async {
            let outputs = std::mem::take(&mut io.outputs);
            tokio::time::timeout(Duration::from_secs(5), futures_join(outputs))
                .await
                .is_ok()
        });
        assert!(done, "the copy to an unread FIFO did not end");
    }

    #[test]
    fn a_full_unread_output_fifo_is_let_go_at_the_drain_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut io = Io::default();
        let w = io
            .output("stdout", fifo.to_str().unwrap())
            .unwrap()
            .unwrap();
        // More than the FIFO holds, from a process that then exits.
        let mut w = File::from(w);
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&vec![b'x'; 256 * 1024]);
        });
        std::thread::sleep(Duration::from_millis(200));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(io.wait_outputs(Duration::from_millis(200)));
        // The copy let go of the pipe: the blocked writer gets EPIPE and ends.
        writer.join().unwrap();
    }

    #[test]
    fn a_file_log_uri_takes_both_outputs_and_makes_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a/b/out.log");
        let uri = format!("file://{}", log.display());
        let paths = StdioPaths {
            stdout: uri.clone(),
            stderr: uri,
            ..Default::default()
        };
        let exits = crate::exits::Exits::default();
        let owner = LoggerFor {
            container_id: "c",
            namespace: "n",
            exits: &exits,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stdio, mut io) = rt.block_on(prepare(&paths, owner)).unwrap();
        let Stdio::Fds {
            stdout: Some(out),
            stderr: Some(err),
            ..
        } = stdio
        else {
            panic!("no output pipes");
        };
        File::from(out).write_all(b"to-stdout\n").unwrap();
        File::from(err).write_all(b"to-stderr\n").unwrap();
        rt.block_on(io.wait_outputs(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("to-stdout\n") && text.contains("to-stderr\n"),
            "{text:?}"
        );
    }

    #[test]
    fn a_bad_log_uri_is_an_invalid_argument_naming_it() {
        let exits = crate::exits::Exits::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for uri in ["syslog:///dev/log", "file://host/x", "binary:///../x"] {
            let paths = StdioPaths {
                stdout: uri.into(),
                stderr: uri.into(),
                ..Default::default()
            };
            let owner = LoggerFor {
                container_id: "c",
                namespace: "n",
                exits: &exits,
            };
            match rt.block_on(prepare(&paths, owner)) {
                Err(e @ Error::InvalidArgument(_)) => {
                    assert!(e.to_string().contains(uri), "{e}")
                }
                Err(e) => panic!("{uri}: {e:?}"),
                Ok(_) => panic!("{uri} accepted"),
            }
        }
    }

    #[test]
    fn outputs_that_are_neither_fifo_nor_file_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_output("stdout", dir.path().to_str().unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("stdout "), "{e}");
        let e = open_output("stderr", "/dev/null/x").unwrap_err();
        assert!(e.to_string().contains("stderr /dev/null/x"), "{e}");
    }
}
