//! `cryo_sandbox::spawn` under an embedder that reaps every child, as a containerd shim does:
//! a program the kernel cannot execute is an error naming it, every time, however the reaper
//! races the spawner. (Its own test binary: the reaper takes every child of the process.)

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cryo_sandbox::spawn::Spawn;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag};

const TRIES: usize = 500;

#[test]
fn a_failed_exec_is_an_error_while_a_reaper_takes_every_child() {
    let dir = tempfile::tempdir().unwrap();
    // No ELF and no `#!` (std's execvp would hand it to /bin/sh), and a script whose
    // interpreter is missing (std's spawn panicked in 461 of 500 tries under this reaper).
    let garbage = dir.path().join("not-a-program");
    std::fs::write(&garbage, "this is no program\n").unwrap();
    let orphan = dir.path().join("no-interpreter");
    std::fs::write(&orphan, "#!/nonexistent/interpreter\n").unwrap();
    for p in [&garbage, &orphan] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reaper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reaped = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(Errno::ECHILD) => {
                        std::thread::yield_now()
                    }
                    Ok(_) => reaped += 1,
                    Err(e) => panic!("waitpid: {e}"),
                }
            }
            reaped
        })
    };
    let mut started = 0;
    for n in 0..TRIES {
        let (bad, errno) = if n % 2 == 0 {
            (&garbage, Errno::ENOEXEC)
        } else {
            (&orphan, Errno::ENOENT)
        };
        let err = Spawn::new(bad).arg("x").spawn().unwrap_err();
        assert_eq!(err.errno(), Some(errno), "try {n}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(&bad.display().to_string()) && text.starts_with("exec "),
            "try {n}: {text}"
        );
        // A good program in between: its pid comes back and the reaper collects it.
        Spawn::new("/bin/true").spawn().unwrap();
        started += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let reaped = reaper.join().unwrap();
    assert!(reaped > 0, "the reaper never collected a child");
    assert_eq!(started, TRIES);
}

#[test]
fn descriptors_arrive_at_their_numbers_and_nothing_else_does() {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // A descriptor of ours that is not close-on-exec must not reach the child either.
    let leak = std::fs::File::open("/dev/null").unwrap();
    nix::fcntl::fcntl(
        &leak,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let (wr, ww) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let pid = Spawn::new("/bin/sh")
        .arg("-c")
        .arg("ls /proc/self/fd >&1; echo five >&5")
        .fd(ww, 1)
        .fd(w, 5)
        .spawn()
        .unwrap();
    let out = std::io::read_to_string(std::fs::File::from(wr)).unwrap();
    let five = std::io::read_to_string(std::fs::File::from(r)).unwrap();
    // The other case's reaper may have taken it already.
    let _ = waitpid(nix::unistd::Pid::from_raw(pid), None);
    assert_eq!(five, "five\n");
    // 0, 1, 2, 5 and the directory `ls` reads (3).
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3", "5"], "{out}");
}
