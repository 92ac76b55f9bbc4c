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
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            needles
                .iter()
                .any(|n| cmdline.contains(n))
                .then(|| format!("process {pid}: {cmdline}"))
        })
        .collect()
}

/// cgroup directories of `namespace` (ctr puts containers in `/<namespace>/<id>`) that still
/// hold processes or sub-cgroups.
fn busy_cgroups(namespace: &str) -> Vec<String> {
    cgroup_dirs(namespace)
        .into_iter()
        .filter_map(|d| {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            let children = std::fs::read_dir(&d)
                .map(|r| r.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0);
            (!procs.trim().is_empty() || children > 0).then(|| {
                format!(
                    "cgroup {} (procs: {:?}, children: {children})",
                    d.display(),
                    procs.trim()
                )
            })
        })
        .collect()
}

/// Remove the namespace's (empty) cgroup directories, which containerd leaves.
pub fn remove_empty_cgroups(namespace: &str) {
    for d in cgroup_dirs(namespace) {
        let _ = std::fs::remove_dir(d);
    }
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
