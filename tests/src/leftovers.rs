//! What a test run must not leave behind: mounts under its temp dir, processes that mention it
//! or its namespace (shims carry `-namespace NS`), cgroups in any mounted hierarchy (v1
//! controllers, named ones such as `systemd`, and the unified one) — below its namespace's
//! directory, that directory itself once teardown removed it, or anywhere else named for one
//! of its containers — and shim sockets in `/run/containerd/s` that appeared during the run,
//! belong to its containerd and have no listener.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where containerd's shims put their ttrpc sockets, whatever containerd's own paths.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

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
/// then remove them: after a failed run the machine is clean again. Every hierarchy is thawed
/// before any is killed: a process frozen by the v1 freezer ignores SIGKILL in every other
/// hierarchy it is in, and the hierarchies come in no useful order (`/sys/fs/cgroup` lists
/// `unified`, `systemd`, `pids` and `blkio` before `freezer`: a frozen leftover once kept
/// exactly those three for good).
pub fn remove_cgroups(namespace: &str) {
    use std::time::{Duration, Instant};
    let dirs: Vec<PathBuf> = cgroup_dirs(namespace)
        .iter()
        .flat_map(|t| tree(t))
        .collect();
    for d in &dirs {
        let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        let _ = std::fs::write(d.join("cgroup.freeze"), "0");
    }
    for d in &dirs {
        kill_procs(d);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    // Deepest first: a cgroup goes once its processes are gone, and rmdir says EBUSY for a
    // moment after the last one left (what is still there is reported by
    // [`remaining_cgroups`]).
    let mut deepest_first = dirs;
    deepest_first.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &deepest_first {
        while std::fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
            kill_procs(d);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The namespace's cgroups still there after [`remove_cgroups`], in any hierarchy: a normal
/// run leaves none (an empty directory is a leftover too).
pub fn remaining_cgroups(namespace: &str) -> Vec<String> {
    cgroup_dirs(namespace)
        .iter()
        .flat_map(|top| tree(top))
        .map(|d| format!("cgroup {} could not be removed", d.display()))
        .collect()
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

/// `namespace`'s directory in every mounted hierarchy that has one.
fn cgroup_dirs(namespace: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(namespace))
        .filter(|p| p.is_dir())
        .collect()
}

/// Every mounted cgroup hierarchy: each v1 controller's, named v1 ones (`name=systemd`) and the
/// unified one, wherever they are mounted (`/sys/fs/cgroup/<name>` on a hybrid host,
/// `/sys/fs/cgroup` itself on a pure v2 one).
pub fn hierarchies() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (mount, kind) = (f.get(1)?, f.get(2)?);
            matches!(*kind, "cgroup" | "cgroup2")
                .then(|| PathBuf::from(mount.replace("\\040", " ")))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// How deep below a hierarchy's root [`CgroupSnapshot`] looks: a container's cgroup is
/// `/<namespace>/<id>`, a stray one made for it elsewhere no deeper than this.
const CGROUP_DEPTH: usize = 3;

/// The cgroup directories of every hierarchy when a run began (to [`CGROUP_DEPTH`]): one the
/// run made outside its namespace's own directory (e.g. for a container at `/<id>`) is told
/// by its name.
#[derive(Debug, Clone, Default)]
pub struct CgroupSnapshot {
    before: BTreeSet<PathBuf>,
}

impl CgroupSnapshot {
    pub fn take() -> CgroupSnapshot {
        CgroupSnapshot {
            before: cgroup_dirs_to_depth().into_iter().map(|(_, d)| d).collect(),
        }
    }

    /// Directories that appeared since the snapshot with a part of their path among `ids`
    /// (the run's container and shim ids), outside the directories of test namespaces
    /// (the run's own are checked apart; parallel runs' are theirs): a run leaves none.
    pub fn strays<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<PathBuf> {
        let ids: BTreeSet<&str> = ids.into_iter().collect();
        let named = |p: &Path| {
            p.components()
                .any(|c| c.as_os_str().to_str().is_some_and(|c| ids.contains(c)))
        };
        cgroup_dirs_to_depth()
            .into_iter()
            .filter(|(_, d)| !self.before.contains(d))
            .filter(|(root, d)| {
                let below = d.strip_prefix(root).unwrap_or(d);
                let in_a_test_namespace = below
                    .components()
                    .next()
                    .and_then(|c| c.as_os_str().to_str())
                    .is_some_and(|c| c.starts_with(TEST_NAMESPACE_PREFIX));
                !in_a_test_namespace && named(below)
            })
            .map(|(_, d)| d)
            .collect()
    }
}

/// What every test namespace's name starts with (see [`crate::containerd`]).
pub const TEST_NAMESPACE_PREFIX: &str = "cryo-test-";

/// The directories of every hierarchy (with its root), the root excluded, to
/// [`CGROUP_DEPTH`].
fn cgroup_dirs_to_depth() -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for root in hierarchies() {
        let mut level = vec![root.clone()];
        for _ in 0..CGROUP_DEPTH {
            let mut next = Vec::new();
            for d in &level {
                let Ok(entries) = std::fs::read_dir(d) else {
                    continue;
                };
                next.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .map(|e| e.path()),
                );
            }
            out.extend(next.iter().map(|d| (root.clone(), d.clone())));
            level = next;
        }
    }
    out
}

/// Whether `word` looks like a container or shim id of a run: a ctr case's (`cryo-…`,
/// `runc-…`) or a CRI one (64 hex digits).
pub fn is_run_id(word: &str) -> bool {
    let hex = word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit());
    hex || word.starts_with("cryo-") || word.starts_with("runc-")
}

/// The shim sockets present when a run began: what is there at its end and was not is the
/// run's (or a parallel run's: [`ShimSockets::stale`] tells them apart).
#[derive(Debug, Clone, Default)]
pub struct ShimSockets {
    before: BTreeSet<String>,
}

/// A socket file in [`SHIM_SOCKET_DIR`] with no listener behind it, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleSocket {
    pub path: PathBuf,
    pub namespace: String,
    /// The shim's id (the task's, or the pod's that groups it).
    pub id: String,
}

impl ShimSockets {
    /// The socket files there now.
    pub fn snapshot() -> ShimSockets {
        ShimSockets {
            before: socket_files(Path::new(SHIM_SOCKET_DIR)),
        }
    }

    /// The socket files that appeared since the snapshot, have no listener, and were made for
    /// the containerd at `address`: containerd and the shims name a shim's socket
    /// `sha256(<containerd address>/<namespace>/<id>)`, so a file is this run's when that
    /// digest of one of `namespaces` and one of `ids` (every word the run's containerd logged
    /// or its ctr calls carried) is its name. Another containerd's sockets never match.
    pub fn stale<'a>(
        &self,
        address: &Path,
        namespaces: &[&str],
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<StaleSocket> {
        let dir = Path::new(SHIM_SOCKET_DIR);
        let new: BTreeSet<String> = socket_files(dir)
            .difference(&self.before)
            .cloned()
            .collect();
        if new.is_empty() {
            return vec![];
        }
        let listening = listening_paths();
        let mut found = Vec::new();
        for id in ids.into_iter().collect::<BTreeSet<_>>() {
            for ns in namespaces {
                let name = shim_socket_name(address, ns, id);
                let path = dir.join(&name);
                if new.contains(&name) && !listening.contains(&path) {
                    found.push(StaleSocket {
                        path,
                        namespace: ns.to_string(),
                        id: id.to_string(),
                    });
                }
            }
        }
        found
    }
}

/// The file name containerd (and the shim crates) give the socket of shim `id` in `namespace`
/// of the containerd at `address` (its gRPC socket): the hex SHA-256 of the joined path.
pub fn shim_socket_name(address: &Path, namespace: &str, id: &str) -> String {
    let joined = address.join(namespace).join(id);
    Sha256::digest(joined.as_os_str().as_encoded_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The words of `text` that could be a namespace or a shim id (containerd allows letters,
/// digits, `.`, `_` and `-`).
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .filter(|w| !w.is_empty())
}

/// Names of the socket files in `dir`.
fn socket_files(dir: &Path) -> BTreeSet<String> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_socket()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Paths of the Unix sockets bound and listening in this network namespace (containerd's and
/// its shims', as the harness does not change namespaces): `/proc/net/unix` lines whose flags
/// carry `__SO_ACCEPTCON`.
fn listening_paths() -> BTreeSet<PathBuf> {
    const ACCEPTCON: u32 = 0x0001_0000;
    let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let path = fields.get(7)?;
            (flags & ACCEPTCON != 0).then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shim_socket_is_named_by_its_containerd_namespace_and_id() {
        // As containerd 2.2.7 logged it: `connecting to shim runc-task-checkpoint-running-and-
        // paused address=unix:///run/containerd/s/670ce5ed… namespace=cryo-test-22829-936751680`
        // for the containerd at /tmp/cryo-test-YVsESP/c.sock.
        assert_eq!(
            shim_socket_name(
                Path::new("/tmp/cryo-test-YVsESP/c.sock"),
                "cryo-test-22829-936751680",
                "runc-task-checkpoint-running-and-paused"
            ),
            "670ce5ed9e44d4931461689cf85cecc29414ba74acaf9018f1002de915334b22"
        );
    }

    #[test]
    fn a_new_socket_without_a_listener_is_found_only_for_its_own_containerd() {
        let address = Path::new("/tmp/cryo-leftovers-test/c.sock");
        let ns = format!("leftovers-{}", std::process::id());
        let before = ShimSockets::snapshot();
        let name = shim_socket_name(address, &ns, "c1");
        let path = Path::new(SHIM_SOCKET_DIR).join(&name);
        std::fs::create_dir_all(SHIM_SOCKET_DIR).unwrap();
        // A listener: not stale.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ids = ["x", "c1", &ns];
        assert!(before.stale(address, &[&ns], ids).is_empty());
        // Its process gone (the file stays): stale, and named.
        drop(listener);
        let found = before.stale(address, &[&ns], ids);
        // Another containerd's socket of the same namespace and id is not this run's.
        let other = before.stale(Path::new("/tmp/other/c.sock"), &[&ns], ids);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            found,
            vec![StaleSocket {
                path,
                namespace: ns.clone(),
                id: "c1".into()
            }]
        );
        assert!(other.is_empty());
    }

    /// A unique name for a test's cgroups.
    fn test_namespace(what: &str) -> String {
        format!("{TEST_NAMESPACE_PREFIX}{what}-{}", std::process::id())
    }

    #[test]
    fn cgroups_of_the_namespace_are_seen_in_every_hierarchy_and_removed() {
        assert!(nix::unistd::geteuid().is_root(), "needs root (cgroups)");
        let ns = test_namespace("hier");
        let all = hierarchies();
        for name in ["systemd", "pids", "blkio", "unified"] {
            let h = Path::new("/sys/fs/cgroup").join(name);
            if h.is_dir() {
                assert!(all.contains(&h), "{} missing from {all:?}", h.display());
            }
        }
        for h in &all {
            std::fs::create_dir_all(h.join(&ns).join("c1")).unwrap();
        }
        let found = find(Path::new("/nonexistent-dir-of-the-test"), &ns);
        for h in &all {
            let c1 = h.join(&ns).join("c1");
            assert!(
                found.iter().any(|l| l.contains(&c1.display().to_string())),
                "{} not reported in {found:?}",
                c1.display()
            );
        }
        remove_cgroups(&ns);
        assert_eq!(remaining_cgroups(&ns), Vec::<String>::new());
        assert!(all.iter().all(|h| !h.join(&ns).exists()));
    }

    #[test]
    fn a_cgroup_made_for_a_container_outside_its_namespace_is_a_stray() {
        assert!(nix::unistd::geteuid().is_root(), "needs root (cgroups)");
        let id = format!("cryo-stray-{}", std::process::id());
        let other = test_namespace("other");
        let before = CgroupSnapshot::take();
        let pids = hierarchies()
            .into_iter()
            .find(|h| h.ends_with("pids") || h == Path::new("/sys/fs/cgroup"))
            .expect("a pids or unified hierarchy");
        let stray = pids.join(&id);
        let parallel = pids.join(&other).join(&id);
        std::fs::create_dir_all(&stray).unwrap();
        std::fs::create_dir_all(&parallel).unwrap();
        let found = before.strays([id.as_str(), "runc-unrelated"]);
        let _ = std::fs::remove_dir(&stray);
        let _ = std::fs::remove_dir(&parallel);
        let _ = std::fs::remove_dir(pids.join(&other));
        // A parallel run's namespace holds the same case ids: not this run's.
        assert_eq!(found, vec![stray]);
    }

    #[test]
    fn run_ids_are_ctr_case_ids_and_cri_ids() {
        assert!(is_run_id("cryo-large-stdin-arrives-whole"));
        assert!(is_run_id("runc-killed-shim-is-cleaned-up"));
        assert!(is_run_id(&"ab".repeat(32)));
        assert!(!is_run_id("default"));
        assert!(!is_run_id("k8s.io"));
    }

    /// The processes of a run that failed can be frozen (a paused task): teardown's removal
    /// must thaw them before it can kill them, in whichever order it meets the hierarchies
    /// (`/sys/fs/cgroup` lists `unified`, `systemd`, `pids` and `blkio` before `freezer`).
    #[test]
    fn a_frozen_leftover_is_killed_and_its_cgroups_removed_in_every_hierarchy() {
        assert!(nix::unistd::geteuid().is_root(), "needs root (cgroups)");
        let ns = test_namespace("frozen");
        let all = hierarchies();
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let mut freezer = None;
        for h in &all {
            let c = h.join(&ns).join("c1");
            std::fs::create_dir_all(&c).unwrap();
            if std::fs::write(c.join("cgroup.procs"), &pid).is_err() {
                // A v2 hierarchy whose root holds controllers of a v1 one elsewhere.
                continue;
            }
            if c.join("freezer.state").exists() {
                freezer = Some(c.join("freezer.state"));
            }
        }
        let freezer = freezer.expect("a v1 freezer (this host's layout)");
        std::fs::write(&freezer, "FROZEN").unwrap();
        remove_cgroups(&ns);
        let left = remaining_cgroups(&ns);
        let died = matches!(child.try_wait(), Ok(Some(_)));
        if !died {
            let _ = std::fs::write(&freezer, "THAWED");
            let _ = child.kill();
        }
        let _ = child.wait();
        remove_cgroups(&ns);
        assert!(died, "the frozen process survived the removal");
        assert_eq!(left, Vec::<String>::new());
    }
}
