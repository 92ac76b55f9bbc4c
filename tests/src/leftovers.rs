//! What a test run must not leave behind: mounts under its temp dir, processes that mention it
//! or its namespace (shims carry `-namespace NS`), cgroups of its namespace with anything in
//! them.

use std::path::{Path, PathBuf};

/// Every leftover, described.
pub fn find(dir: &Path, namespace: &str) -> Vec<String> {
    let mut left: Vec<String> = mounts_under(dir)
        .into_iter()
        .map(|m| format!("mount {}", m.display()))
        .collect();
    left.extend(processes_mentioning(&[
        &dir.display().to_string(),
        namespace,
    ]));
    left.extend(busy_cgroups(namespace));
    left
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    // Deepest first, for unmounting.
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

/// Processes whose command line contains any of `needles`.
fn processes_mentioning(needles: &[&str]) -> Vec<String> {
    matching_processes(needles)
        .into_iter()
        .map(|(pid, cmdline)| format!("process {pid}: {cmdline}"))
        .collect()
}

/// SIGKILL the processes whose command line contains any of `needles` (after reporting them).
/// A killed shim's socket (`-socket unix:///run/containerd/s/...`) is removed too.
pub fn kill_processes_mentioning(needles: &[&str]) {
    for (pid, cmdline) in matching_processes(needles) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let mut words = cmdline.split(' ');
        while let Some(w) = words.next() {
            if w == "-socket" {
                if let Some(sock) = words.next().and_then(|a| a.strip_prefix("unix://")) {
                    let _ = std::fs::remove_file(sock);
                }
            }
        }
    }
}

/// (pid, command line) of every other process whose command line contains any of `needles`.
fn matching_processes(needles: &[&str]) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            needles
                .iter()
                .any(|n| cmdline.contains(n))
                .then_some((pid, cmdline))
        })
        .collect()
}

/// cgroups of `namespace` (ctr puts containers in `/<namespace>/<id>`) that still hold
/// processes, and container cgroups left behind empty (containerd itself leaves only
/// `/<namespace>`).
fn busy_cgroups(namespace: &str) -> Vec<String> {
    let mut left = Vec::new();
    for top in cgroup_dirs(namespace) {
        for d in tree(&top) {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            if !procs.trim().is_empty() {
                let procs: Vec<&str> = procs.split_whitespace().collect();
                left.push(format!("cgroup {} holds processes {procs:?}", d.display()));
            } else if d != top {
                left.push(format!("cgroup {} left behind", d.display()));
            }
        }
    }
    left
}

/// SIGKILL every process in the namespace's cgroups (thawing frozen ones so the signal lands),
/// then remove them: after a failed run the machine is clean again.
pub fn remove_cgroups(namespace: &str) {
    use std::time::{Duration, Instant};
    for top in cgroup_dirs(namespace) {
        let dirs = tree(&top);
        for d in &dirs {
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            kill_procs(d);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // Deepest first: a cgroup goes once its processes are gone.
        for d in dirs.iter().rev() {
            while std::fs::remove_dir(d).is_err()
                && d.exists()
                && Instant::now() < deadline
                && !std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
            {
                kill_procs(d);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn kill_procs(cgroup: &Path) {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `dir` and every directory below it, parents before children.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            let mut subs: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect();
            subs.sort();
            out.extend(subs);
        }
        i += 1;
    }
    out
}

fn cgroup_dirs(namespace: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return vec![];
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path().join(namespace))
        .filter(|p| p.is_dir())
        .collect();
    let unified = Path::new("/sys/fs/cgroup").join(namespace);
    if unified.is_dir() && !dirs.contains(&unified) {
        dirs.push(unified);
    }
    dirs
}
