//! Running a command with optional stdin and a time limit, capturing its output. A command
//! that overstays its limit is killed and reported, so a hung runtime cannot hang the suite.

use std::cell::Cell;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a finished command left.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; 128+signal when it was killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Fail with the command's output unless it exited 0.
    pub fn ok(self) -> Result<Output> {
        if self.code != 0 {
            bail!(
                "exit {}\nstdout: {}\nstderr: {}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

thread_local! {
    /// A deadline for every command this thread runs (see [`with_budget`]).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Run `f` with every command it runs on this thread cut off at `budget` from now (or at
/// its own limit, whichever comes first): a trial whose runtime hangs on every call still
/// ends within its budget.
pub fn with_budget<T>(budget: Duration, f: impl FnOnce() -> T) -> T {
    let outer = DEADLINE.with(|d| d.replace(Some(Instant::now() + budget)));
    let result = f();
    DEADLINE.with(|d| d.set(outer));
    result
}

/// Run `cmd`, feeding `stdin` (then closing it), for at most `limit`.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut deadline = Instant::now() + limit;
    if let Some(budget) = DEADLINE.with(Cell::get) {
        if budget <= Instant::now() {
            bail!("time budget spent before {what}");
        }
        deadline = deadline.min(budget);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish in time (limit {limit:?}, or the trial's budget)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(Output {
        code,
        stdout: String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
    })
}
