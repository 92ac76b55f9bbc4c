//! The container's cgroup: created from the spec's `cgroupsPath` with its resources, joined by
//! the init helper before it forks PID 1, listed for pids and signals, frozen and thawed, and
//! removed once empty. cgroup v1 (every mounted controller) or v2, through `cgroups-rs`.

use std::time::{Duration, Instant};

use cgroups_rs::fs::hierarchies;
use cgroups_rs::manager::FsManager;
use cgroups_rs::{CgroupPid, FreezerState, Manager};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use crate::error::{Error, Result};

/// Stack size of the engine's watch threads.
const WATCH_STACK: usize = 64 * 1024;

/// OOM notifications closer together than this are one episode.
const OOM_BURST: Duration = Duration::from_millis(100);

/// How long [`Cgroup::destroy`] waits for killed processes to leave.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// A container's cgroup, addressed by its path below the hierarchy roots (e.g. `/default/c1`).
pub struct Cgroup {
    path: String,
    manager: FsManager,
    cgroup: cgroups_rs::fs::Cgroup,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup").field("path", &self.path).finish()
    }
}

impl Cgroup {
    /// Open the cgroup at `path` (it may or may not exist yet).
    pub fn open(path: &str) -> Result<Cgroup> {
        let path = normalize(path)?;
        // Both take the path relative to the hierarchy roots.
        let relative = path.trim_start_matches('/');
        let manager = FsManager::new(relative).map_err(|e| err(&path, "open", e))?;
        let cgroup = cgroups_rs::fs::Cgroup::load(hierarchies::auto(), relative);
        Ok(Cgroup {
            path,
            manager,
            cgroup,
        })
    }

    /// Create the cgroup and apply `resources`.
    /// The cgroup must be new or empty (as runc 1.2 requires): one that holds processes belongs
    /// to someone else (another container, the host's root), and joining it would put its
    /// processes under this container's limits and kill them at this container's delete.
    pub fn create(path: &str, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        let mut cg = Cgroup::open(path)?;
        if cg.path == "/" {
            return Err(err(
                &cg.path,
                "linux.cgroupsPath",
                "the host's root cgroup cannot be a container's cgroup",
            ));
        }
        let found = cg.procs().len();
        if found > 0 {
            return Err(err(
                &cg.path,
                "linux.cgroupsPath",
                format!("not empty ({found} process(es) found): a container's cgroup must be new or empty"),
            ));
        }
        cg.cgroup.create().map_err(|e| err(&cg.path, "create", e))?;
        if let Some(res) = resources {
            if let Err(e) = cg.update(res) {
                let _ = cg.cgroup.delete();
                return Err(e);
            }
        }
        Ok(cg)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.cgroup.exists()
    }

    /// Apply new resource limits.
    pub fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        let mut resources = resources.clone();
        if let Some(rules) = resources.devices().clone() {
            resources.set_devices(Some(rules.into_iter().map(explicit).collect()));
        }
        self.manager
            .set(&resources)
            .map_err(|e| err(&self.path, "set resources", e))
    }

    /// Move process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        self.cgroup
            .add_task_by_tgid(CgroupPid::from(pid as u64))
            .map_err(|e| err(&self.path, &format!("add pid {pid}"), e))
    }

    /// Processes in the cgroup (thread group ids, host view).
    pub fn procs(&self) -> Vec<i32> {
        if !self.exists() {
            return Vec::new();
        }
        self.cgroup
            .procs()
            .into_iter()
            .map(|p| p.pid as i32)
            .collect()
    }

    /// Send `signal` to every process in the cgroup; processes already gone are skipped.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for pid in self.procs() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    pub fn freeze(&self) -> Result<()> {
        self.manager
            .freeze(FreezerState::Frozen)
            .map_err(|e| err(&self.path, "freeze", e))
    }

    pub fn thaw(&self) -> Result<()> {
        self.manager
            .freeze(FreezerState::Thawed)
            .map_err(|e| err(&self.path, "thaw", e))
    }

    /// Whether this is a cgroup v2 (unified) hierarchy.
    pub fn v2(&self) -> bool {
        self.cgroup.v2()
    }

    /// Call `on_oom` (from a thread of its own) once per OOM kill episode in the cgroup, until
    /// the cgroup is removed, with the cgroup's OOM kill count as of then (see
    /// [`Cgroup::oom_kills`]; an embedder that also reads it when the container exits can tell
    /// whether the episode was already reported). v1: the memory controller's eventfd, a burst
    /// of notifications counting as one; v2: memory.events' `oom_kill` count, polled.
    pub fn on_oom(&self, on_oom: impl Fn(u64) + Send + 'static) -> Result<()> {
        let spawn = |f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name("oom".into())
                .stack_size(WATCH_STACK)
                .spawn(f)
                .map(|_| ())
                .map_err(|e| Error::io("spawn the OOM watch thread", e))
        };
        let counter = self.oom_count_file();
        if self.v2() {
            return spawn(Box::new(move || {
                let mut seen = counter.as_deref().and_then(oom_kills).unwrap_or(0);
                while let Some(now) = counter.as_deref().and_then(oom_kills) {
                    if now > seen {
                        on_oom(now);
                    }
                    seen = now;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }));
        }
        let mem: &cgroups_rs::fs::memory::MemController = self
            .cgroup
            .controller_of()
            .ok_or_else(|| err(&self.path, "oom events", "no memory controller"))?;
        let events = mem
            .register_oom_event("oom")
            .map_err(|e| err(&self.path, "register for oom events", e))?;
        // The eventfd fires for every OOM condition of one episode (often dozens, before the
        // kill is even counted): report one per burst, with the count once the burst is over.
        spawn(Box::new(move || {
            while events.recv().is_ok() {
                while events.recv_timeout(OOM_BURST).is_ok() {}
                on_oom(counter.as_deref().and_then(oom_kills).unwrap_or(0));
            }
        }))
    }

    /// How many processes of the cgroup the OOM killer has killed so far (0 without a memory
    /// controller): tells a launch that died of the memory limit from other failures, and an
    /// exit whose OOM kill was not reported yet.
    pub fn oom_kills(&self) -> u64 {
        self.oom_count_file()
            .as_deref()
            .and_then(oom_kills)
            .unwrap_or(0)
    }

    /// The file with the cgroup's `oom_kill N` line: memory.events (v2) or memory.oom_control
    /// (v1's memory controller).
    fn oom_count_file(&self) -> Option<std::path::PathBuf> {
        if self.v2() {
            return Some(
                hierarchies::auto()
                    .root()
                    .join(self.path.trim_start_matches('/'))
                    .join("memory.events"),
            );
        }
        use cgroups_rs::fs::Controller;
        self.cgroup
            .controller_of::<cgroups_rs::fs::memory::MemController>()
            .map(|m| m.path().join("memory.oom_control"))
    }

    /// Resource usage figures.
    pub fn stats(&self) -> cgroups_rs::CgroupStats {
        self.manager.stats()
    }

    /// SIGKILL whatever is left (thawing it first), wait until the cgroup is empty, remove it.
    /// A cgroup that does not exist is fine.
    pub fn destroy(&self) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + EMPTY_TIMEOUT;
        loop {
            let procs = self.procs();
            if procs.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Cgroup {
                    path: self.path.clone(),
                    reason: format!("processes {procs:?} did not exit after SIGKILL"),
                });
            }
            let _ = self.thaw();
            self.signal_all(nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
        }
        // rmdir can report EBUSY for a moment while exited tasks are released.
        loop {
            match self.cgroup.delete() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(err(&self.path, "remove", e)),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// The device rules of `resources` followed by the devices every container may use, as runc
/// appends them (its `AllowedDevices`): mknod of any device (access to it stays denied), the
/// default /dev nodes, /dev/console, the pty devices and /dev/net/tun. A rule without a major or
/// minor means every one (`*`); without an access, `rwm` (spelled out by [`Cgroup::update`]).
pub(crate) fn with_default_devices(mut resources: LinuxResources) -> LinuxResources {
    use oci_spec::runtime::LinuxDeviceType::{B, C};
    let mut rules: Vec<LinuxDeviceCgroup> = resources.devices().clone().unwrap_or_default();
    for (typ, major, minor, access) in [
        (C, None, None, "m"),
        (B, None, None, "m"),
        (C, Some(1), Some(3), "rwm"),
        (C, Some(1), Some(8), "rwm"),
        (C, Some(1), Some(7), "rwm"),
        (C, Some(5), Some(0), "rwm"),
        (C, Some(1), Some(5), "rwm"),
        (C, Some(1), Some(9), "rwm"),
        (C, Some(5), Some(1), "rwm"),
        (C, Some(136), None, "rwm"),
        (C, Some(5), Some(2), "rwm"),
        (C, Some(10), Some(200), "rwm"),
    ] {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true)
            .set_typ(Some(typ))
            .set_major(major)
            .set_minor(minor)
            .set_access(Some(access.to_string()));
        rules.push(r);
    }
    resources.set_devices(Some(rules));
    resources
}

/// A device rule with its defaults spelled out for cgroups-rs, which writes a missing major or
/// minor as 0 and takes -1 for `*`.
fn explicit(mut rule: LinuxDeviceCgroup) -> LinuxDeviceCgroup {
    let any = |n: Option<i64>| Some(n.unwrap_or(-1));
    let major = any(rule.major());
    let minor = any(rule.minor());
    let access = rule.access().clone().unwrap_or_else(|| "rwm".into());
    rule.set_major(major)
        .set_minor(minor)
        .set_access(Some(access));
    rule
}

/// The `oom_kill` count of a v2 memory.events file; `None` once it is gone.
fn oom_kills(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// Cgroup paths are absolute below the hierarchy roots; systemd's `slice:prefix:name` form is
/// not supported.
fn normalize(path: &str) -> Result<String> {
    if path.is_empty() || path.contains("..") || path.split(':').count() == 3 {
        return Err(Error::Cgroup {
            path: path.into(),
            reason: "expected an absolute cgroupfs path like /namespace/id (systemd cgroup paths are not supported)".into(),
        });
    }
    Ok(format!("/{}", path.trim_start_matches('/')))
}

fn err(path: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cgroup {
        path: path.into(),
        reason: format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn paths_are_made_absolute_and_checked() {
        assert_eq!(normalize("default/c1").unwrap(), "/default/c1");
        assert_eq!(normalize("/k8s.io/abc").unwrap(), "/k8s.io/abc");
        assert!(normalize("/a/../../etc").is_err());
        assert!(normalize("system.slice:cri-containerd:abc").is_err());
        assert!(normalize("").is_err());
    }
}

#[cfg(test)]
mod device_tests {
    use super::*;

    fn rule_text(r: &LinuxDeviceCgroup) -> String {
        let n = |v: Option<i64>| match v {
            Some(-1) | None => "*".to_string(),
            Some(v) => v.to_string(),
        };
        format!(
            "{} {}:{} {}",
            r.typ().unwrap_or_default().as_str(),
            n(r.major()),
            n(r.minor()),
            r.access().as_deref().unwrap_or("")
        )
    }

    #[test]
    fn default_devices_are_runcs_with_wildcards() {
        let spec: LinuxResources = serde_json::from_value(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 4}]
        }))
        .unwrap();
        let rules: Vec<_> = with_default_devices(spec)
            .devices()
            .clone()
            .unwrap()
            .into_iter()
            .map(explicit)
            .collect();
        let text: Vec<String> = rules.iter().map(rule_text).collect();
        assert_eq!(text[0], "a *:* rwm");
        assert_eq!(text[1], "c 4:* rwm");
        for want in [
            "c *:* m",
            "b *:* m",
            "c 136:* rwm",
            "c 10:200 rwm",
            "c 5:2 rwm",
        ] {
            assert!(
                text.iter().any(|t| t == want),
                "{want} missing from {text:?}"
            );
        }
        // Nothing is left for cgroups-rs to turn into 0.
        assert!(rules
            .iter()
            .all(|r| r.major().is_some() && r.minor().is_some()));
    }
}
