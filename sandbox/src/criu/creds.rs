//! What a process restored from a checkpoint may hold. CRIU gives each restored task the
//! credentials and limits its images claim (core-*.img: capabilities, uids, gids, groups,
//! rlimits), whatever the new spec allows: a checkpoint dumped with (or crafted to claim)
//! `CAP_SYS_ADMIN` or uid 0 comes back with it in a container whose spec grants neither. A
//! checkpoint's images are its author's, so a restore must not hand out more than a create
//! would, or than a process started from the spec could reach by itself. Checked at CRIU's
//! `pre-resume` notification (every task restored, its credentials set, none resumed yet), for
//! every thread:
//!
//! - **Capabilities**, compared in the thread's own user namespace: in the container's, no
//!   capability in any set outside the spec's `process.capabilities.bounding`. A thread in a
//!   user namespace nested below the container's holds its capabilities there only: they are
//!   not compared when that namespace owns none of the thread's other namespaces (then they
//!   reach nothing of the container's or the host's), but what it maps is (below). When it owns
//!   some they are compared as in the container's: CRIU recreates the namespaces of a dumped
//!   user namespace under it, where the original's were the runtime's (and its mounts locked).
//!   A thread in any other user namespace is refused.
//! - **Confinement**: seccomp-filtered when the spec has a profile, no_new_privs when it asks.
//! - **Identity**: every uid (real, effective, saved, fs) is the spec's `process.user.uid`,
//!   every gid its `gid`, every supplementary group one of `gid` + `additionalGids` — unless
//!   the process could change them itself: `CAP_SETUID` for uids, `CAP_SETGID` for gids and
//!   groups. A nested user namespace may map only the spec's uid (gid), unless the same
//!   capability: a thread holding every capability in it could take any id it maps. Ids are
//!   read as the host sees them and compared as the container does (through the spec's
//!   `linux.uidMappings`/`gidMappings` when it has a user namespace).
//! - **Rlimits**: no hard limit above the spec's `process.rlimits` hard limit of that type,
//!   unless `CAP_SYS_RESOURCE` (which raising one needs).
//!
//! "Could reach by itself" is the spec's bounding set — a root process regains it at every
//! exec, any other through a setuid-root or file-capability binary — except when the spec sets
//! `process.noNewPrivileges`: then no exec grants more than the permitted set the runtime
//! hands over (a file-capability binary can still take back up to it).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

/// The notification CRIU sends before it lets the restored tasks run.
pub const PRE_RESUME: &str = "pre-resume";

const CAP_SETGID: u64 = 1 << 6;
const CAP_SETUID: u64 = 1 << 7;
const CAP_SYS_RESOURCE: u64 = 1 << 24;

/// `ioctl(NS_GET_USERNS)`: the user namespace owning a namespace, as a new descriptor.
const NS_GET_USERNS: libc::c_ulong = 0xb701;
/// `ioctl(NS_GET_PARENT)`: the parent of a user namespace, as a new descriptor (Linux 4.9+).
const NS_GET_PARENT: libc::c_ulong = 0xb702;
/// The namespaces other than user a thread has, by their `/proc/<pid>/ns` names.
const OWNED_NAMESPACES: [&str; 7] = ["mnt", "net", "pid", "ipc", "uts", "cgroup", "time"];
/// The kernel nests user namespaces at most 32 deep.
const MAX_USERNS_DEPTH: usize = 33;

/// The `/proc/<pid>/status` fields checked, with the capability sets named as in errors.
const CAP_SETS: [(&str, &str); 5] = [
    ("CapInh", "inheritable"),
    ("CapPrm", "permitted"),
    ("CapEff", "effective"),
    ("CapBnd", "bounding"),
    ("CapAmb", "ambient"),
];

/// The four ids of a `Uid:`/`Gid:` line, in order, as named in errors.
const ID_KINDS: [&str; 4] = ["real", "effective", "saved", "fs"];

/// `/proc/<pid>/limits` rows by their OCI rlimit names.
const LIMITS: [(&str, &str); 16] = [
    ("Max cpu time", "RLIMIT_CPU"),
    ("Max file size", "RLIMIT_FSIZE"),
    ("Max data size", "RLIMIT_DATA"),
    ("Max stack size", "RLIMIT_STACK"),
    ("Max core file size", "RLIMIT_CORE"),
    ("Max resident set", "RLIMIT_RSS"),
    ("Max processes", "RLIMIT_NPROC"),
    ("Max open files", "RLIMIT_NOFILE"),
    ("Max locked memory", "RLIMIT_MEMLOCK"),
    ("Max address space", "RLIMIT_AS"),
    ("Max file locks", "RLIMIT_LOCKS"),
    ("Max pending signals", "RLIMIT_SIGPENDING"),
    ("Max msgqueue size", "RLIMIT_MSGQUEUE"),
    ("Max nice priority", "RLIMIT_NICE"),
    ("Max realtime priority", "RLIMIT_RTPRIO"),
    ("Max realtime timeout", "RLIMIT_RTTIME"),
];

/// One line of a user namespace's id map: `count` ids from `inside` are `outside`.. in the
/// namespace it maps onto (for the spec's maps and as the host reads a map: the host's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

impl IdRange {
    fn from_spec(m: &LinuxIdMapping) -> Self {
        IdRange {
            inside: m.container_id(),
            outside: m.host_id(),
            count: m.size(),
        }
    }

    /// Parse a `/proc/<pid>/uid_map` (or `gid_map`).
    pub fn parse_map(text: &str) -> Result<Vec<IdRange>, String> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let n: Vec<u32> = l
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("id map line {l:?}: {e}"))?;
                match n[..] {
                    [inside, outside, count] => Ok(IdRange {
                        inside,
                        outside,
                        count,
                    }),
                    _ => Err(format!("id map line {l:?}: not three numbers")),
                }
            })
            .collect()
    }

    /// The id `outside` is inside this range, if it is in it.
    fn inward(&self, outside: u32) -> Option<u32> {
        let off = outside.checked_sub(self.outside)?;
        (off < self.count).then(|| self.inside + off)
    }
}

/// What the spec lets a restored process hold: the rule's whole input from the spec.
#[derive(Clone, Debug)]
pub struct Allowed {
    /// `process.capabilities.bounding`.
    bounding: u64,
    /// The capabilities a process of this spec could come to hold by itself.
    reachable: u64,
    /// Where `reachable` comes from, for errors.
    reachable_from: &'static str,
    seccomp: bool,
    no_new_privs: bool,
    uid: u32,
    gid: u32,
    /// `gid` and `additionalGids`.
    groups: BTreeSet<u32>,
    /// `process.rlimits` hard limits by type.
    rlimits: Vec<(String, u64)>,
    /// The spec's user namespace maps (container id ← host id), when it has one.
    uid_map: Option<Vec<IdRange>>,
    gid_map: Option<Vec<IdRange>>,
}

impl Allowed {
    pub fn from_spec(spec: &Spec) -> Self {
        let process = spec.process().as_ref();
        let caps = process.and_then(|p| p.capabilities().as_ref());
        let bounding = crate::init::capability_bits(caps.and_then(|c| c.bounding().as_ref()));
        let permitted = crate::init::capability_bits(caps.and_then(|c| c.permitted().as_ref()));
        let no_new_privs = process.and_then(|p| p.no_new_privileges()) == Some(true);
        let (reachable, reachable_from) = if no_new_privs {
            (
                permitted,
                "process.capabilities.permitted (process.noNewPrivileges is set)",
            )
        } else {
            (bounding, "process.capabilities.bounding")
        };
        let user = process.map(|p| p.user());
        let uid = user.map_or(0, |u| u.uid());
        let gid = user.map_or(0, |u| u.gid());
        let mut groups: BTreeSet<u32> = user
            .and_then(|u| u.additional_gids().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        groups.insert(gid);
        let rlimits = process
            .and_then(|p| p.rlimits().as_ref())
            .map(|r| r.iter().map(|l| (l.typ().to_string(), l.hard())).collect())
            .unwrap_or_default();
        let linux = spec.linux().as_ref();
        let userns = linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::User));
        let map = |m: Option<&Vec<LinuxIdMapping>>| {
            userns.then(|| m.map_or_else(Vec::new, |m| m.iter().map(IdRange::from_spec).collect()))
        };
        Allowed {
            bounding,
            reachable,
            reachable_from,
            seccomp: linux.is_some_and(|l| l.seccomp().is_some()),
            no_new_privs,
            uid,
            gid,
            groups,
            rlimits,
            uid_map: map(linux.and_then(|l| l.uid_mappings().as_ref())),
            gid_map: map(linux.and_then(|l| l.gid_mappings().as_ref())),
        }
    }

    fn can(&self, cap: u64) -> bool {
        self.reachable & cap != 0
    }

    /// Why the spec does not let the process have `cap`, for errors.
    fn lacks(&self, cap: u64) -> String {
        format!(
            "grants no {} in {}",
            crate::init::capability_names(cap).join(""),
            self.reachable_from
        )
    }
}

/// Where a thread's user namespace is, relative to the container's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Userns {
    /// The container's own.
    Container,
    /// Nested below the container's, with these maps (as the host reads them); `owns`: the
    /// thread's other namespaces (`mnt`, `net`, ...) owned by a user namespace other than the
    /// container's (CRIU recreates the container's namespaces under a restored user namespace,
    /// where the original's were the runtime's).
    Nested {
        uid_map: Vec<IdRange>,
        gid_map: Vec<IdRange>,
        owns: Vec<String>,
    },
    /// Neither.
    Outside,
}

/// What the rule reads of one restored thread, as the host sees it.
#[derive(Clone, Debug)]
pub struct Thread {
    pub pid: i32,
    pub tid: i32,
    pub comm: String,
    /// Inheritable, permitted, effective, bounding, ambient (as [`CAP_SETS`]).
    pub caps: [u64; 5],
    pub seccomp: bool,
    pub no_new_privs: bool,
    /// Real, effective, saved, fs.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    /// Hard limits by OCI name; unlimited is `u64::MAX`.
    pub rlimits: Vec<(String, u64)>,
    pub userns: Userns,
}

impl Thread {
    /// Parse a thread's `/proc/<pid>/task/<tid>/status` and `limits`.
    pub fn parse(
        pid: i32,
        tid: i32,
        status: &str,
        limits: &str,
        userns: Userns,
    ) -> Result<Self, String> {
        let who = format!("restored process {pid} (thread {tid})");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .ok_or_else(|| format!("{who}: no {name} in its status"))
        };
        let mut caps = [0u64; 5];
        for (slot, (key, _)) in caps.iter_mut().zip(CAP_SETS) {
            *slot = u64::from_str_radix(field(key)?, 16)
                .map_err(|e| format!("{who}: {key} in its status: {e}"))?;
        }
        let ids = |key: &str| -> Result<[u32; 4], String> {
            let v: Vec<u32> = field(key)?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{who}: {key} in its status: {e}"))?;
            v.try_into()
                .map_err(|_| format!("{who}: {key} in its status is not four ids"))
        };
        let groups = field("Groups")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{who}: Groups in its status: {e}"))?;
        let mut rlimits = Vec::new();
        for line in limits.lines() {
            let Some((label, name)) = LIMITS
                .iter()
                .find(|(label, _)| line.strip_prefix(label).is_some_and(|r| r.starts_with(' ')))
            else {
                continue;
            };
            let hard = line[label.len()..]
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| format!("{who}: limits line {line:?}"))?;
            let hard = if hard == "unlimited" {
                u64::MAX
            } else {
                hard.parse()
                    .map_err(|e| format!("{who}: limits line {line:?}: {e}"))?
            };
            rlimits.push((name.to_string(), hard));
        }
        Ok(Thread {
            pid,
            tid,
            comm: field("Name").unwrap_or_default().to_string(),
            caps,
            seccomp: field("Seccomp")? == "2",
            no_new_privs: field("NoNewPrivs")? == "1",
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups,
            rlimits,
            userns,
        })
    }

    fn who(&self) -> String {
        format!(
            "restored process {} ({}, thread {})",
            self.pid, self.comm, self.tid
        )
    }
}

/// The rule (see the module's doc): `Ok` when `thread` holds nothing `allowed` withholds, else
/// the refusal naming the thread, the field, the value and what the spec allows.
pub fn judge(allowed: &Allowed, thread: &Thread) -> Result<(), String> {
    let who = thread.who();
    match &thread.userns {
        Userns::Outside => {
            return Err(format!(
                "{who} is in a user namespace that is neither the container's nor nested \
                 below it"
            ))
        }
        Userns::Container => bounded(allowed, &who, &thread.caps, "")?,
        Userns::Nested {
            uid_map,
            gid_map,
            owns,
        } => {
            nested_map(allowed, &who, "uid", uid_map)?;
            nested_map(allowed, &who, "gid", gid_map)?;
            if !owns.is_empty() {
                let note = format!(
                    " (held in a nested user namespace that owns its {} namespaces, which \
                     they reach)",
                    owns.join(", ")
                );
                bounded(allowed, &who, &thread.caps, &note)?;
            }
        }
    }
    if allowed.seccomp && !thread.seccomp {
        return Err(format!(
            "{who} is not seccomp-filtered, while the spec has a linux.seccomp profile"
        ));
    }
    if allowed.no_new_privs && !thread.no_new_privs {
        return Err(format!(
            "{who} lacks no_new_privs, while the spec sets process.noNewPrivileges"
        ));
    }
    ids(allowed, &who, "uid", &thread.uids)?;
    ids(allowed, &who, "gid", &thread.gids)?;
    if !allowed.can(CAP_SETGID) {
        for &host in &thread.groups {
            let group = container_id(allowed.gid_map.as_deref(), host);
            if !group.is_some_and(|g| allowed.groups.contains(&g)) {
                return Err(format!(
                    "{who} is in supplementary group {}: the spec's process.user.gid and \
                     additionalGids are {:?} and it {} to join others",
                    shown(group, host, "gid"),
                    allowed.groups,
                    allowed.lacks(CAP_SETGID)
                ));
            }
        }
    }
    if !allowed.can(CAP_SYS_RESOURCE) {
        for (name, limit) in &allowed.rlimits {
            let Some((_, hard)) = thread.rlimits.iter().find(|(n, _)| n == name) else {
                continue;
            };
            if hard > limit {
                return Err(format!(
                    "{who} has {name} hard limit {}, above the spec's process.rlimits \
                     hard limit {limit}; raising a hard limit needs CAP_SYS_RESOURCE and the \
                     spec {}",
                    shown_limit(*hard),
                    allowed.lacks(CAP_SYS_RESOURCE)
                ));
            }
        }
    }
    Ok(())
}

/// No capability in any of `caps` outside the spec's bounding set.
fn bounded(allowed: &Allowed, who: &str, caps: &[u64; 5], note: &str) -> Result<(), String> {
    for ((_, set), value) in CAP_SETS.iter().zip(caps) {
        let extra = value & !allowed.bounding;
        if extra != 0 {
            return Err(format!(
                "{who} holds {} in its {set} capabilities{note}: the checkpoint claims more \
                 than the spec's process.capabilities.bounding allows",
                crate::init::capability_names(extra).join(", ")
            ));
        }
    }
    Ok(())
}

/// The uid or gid rule's spec id, the capability that lifts it, and the spec's map.
fn id_rule<'a>(allowed: &'a Allowed, kind: &str) -> (u32, u64, Option<&'a [IdRange]>) {
    if kind == "uid" {
        (allowed.uid, CAP_SETUID, allowed.uid_map.as_deref())
    } else {
        (allowed.gid, CAP_SETGID, allowed.gid_map.as_deref())
    }
}

/// Every one of a thread's uids (gids) is the spec's, unless it may change them.
fn ids(allowed: &Allowed, who: &str, kind: &str, host_ids: &[u32; 4]) -> Result<(), String> {
    let (want, cap, map) = id_rule(allowed, kind);
    if allowed.can(cap) {
        return Ok(());
    }
    for (which, &host) in ID_KINDS.iter().zip(host_ids) {
        let id = container_id(map, host);
        if id != Some(want) {
            return Err(format!(
                "{who} has {which} {}: the spec's process.user.{kind} is {want} and it {} to \
                 change it",
                shown(id, host, kind),
                allowed.lacks(cap)
            ));
        }
    }
    Ok(())
}

/// A nested user namespace maps only the spec's uid (gid), unless the spec lets the process
/// change it: whoever holds every capability in that namespace can take any id it maps.
fn nested_map(allowed: &Allowed, who: &str, kind: &str, map: &[IdRange]) -> Result<(), String> {
    let (want, cap, spec_map) = id_rule(allowed, kind);
    if allowed.can(cap) {
        return Ok(());
    }
    for range in map {
        let only_want = range.count == 1 && container_id(spec_map, range.outside) == Some(want);
        if !only_want {
            return Err(format!(
                "{who} is in a nested user namespace whose {kind}_map maps {} {kind}s from \
                 host {kind} {}: the spec's process.user.{kind} is {want} and it {} to \
                 change it",
                range.count,
                range.outside,
                allowed.lacks(cap)
            ));
        }
    }
    Ok(())
}

/// A host id as the container sees it: through the spec's map when it has a user namespace
/// (`None`: the map does not cover it), else as it is.
fn container_id(map: Option<&[IdRange]>, host: u32) -> Option<u32> {
    match map {
        None => Some(host),
        Some(map) => map.iter().find_map(|r| r.inward(host)),
    }
}

fn shown(id: Option<u32>, host: u32, kind: &str) -> String {
    match id {
        Some(id) => format!("{kind} {id}"),
        None => format!("host {kind} {host}, which the spec's user namespace does not map"),
    }
}

fn shown_limit(hard: u64) -> String {
    if hard == u64::MAX {
        "unlimited".into()
    } else {
        hard.to_string()
    }
}

/// A namespace's identity: (device, inode) of its nsfs file.
type NsId = (u64, u64);

/// Check every thread of `pids` against `spec` (see [`judge`]).
pub fn check(spec: &Spec, pids: &[i32]) -> Result<(), String> {
    let allowed = Allowed::from_spec(spec);
    let home = container_userns(spec)?;
    for &pid in pids {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("restored process {pid}: {e}"))?;
        for task in tasks.flatten() {
            let dir = task.path();
            let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let (Ok(status), Ok(limits)) = (
                std::fs::read_to_string(dir.join("status")),
                std::fs::read_to_string(dir.join("limits")),
            ) else {
                continue; // gone since the listing
            };
            let userns = userns_of(&dir, home)
                .map_err(|e| format!("restored process {pid} (thread {tid}): {e}"))?;
            judge(
                &allowed,
                &Thread::parse(pid, tid, &status, &limits, userns)?,
            )?;
        }
    }
    Ok(())
}

/// The container's user namespace: the one the spec joins, else the engine's own (a spec
/// that asks for a new one is refused at create: not supported yet).
fn container_userns(spec: &Spec) -> Result<NsId, String> {
    let entry = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|n| {
            n.iter()
                .find(|n| n.typ() == LinuxNamespaceType::User)
                .cloned()
        });
    let path = match entry {
        None => PathBuf::from("/proc/self/ns/user"),
        Some(ns) => ns.path().clone().ok_or_else(|| {
            "a restore into a new user namespace is not supported (linux.namespaces: user \
             without a path)"
                .to_string()
        })?,
    };
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("the container's user namespace {}: {e}", path.display()))?;
    Ok((meta.dev(), meta.ino()))
}

/// Where the user namespace of the thread at `dir` (`/proc/<pid>/task/<tid>`) is: the
/// container's `home`, nested below it (walked up with `NS_GET_PARENT`), or neither.
fn userns_of(dir: &Path, home: NsId) -> Result<Userns, String> {
    let file = File::open(dir.join("ns/user")).map_err(|e| format!("its user namespace: {e}"))?;
    if ns_id(&file)? == home {
        return Ok(Userns::Container);
    }
    let mut current = file;
    for _ in 0..MAX_USERNS_DEPTH {
        let Some(parent) = ns_ioctl(&current, NS_GET_PARENT) else {
            // EPERM: the parent is outside the engine's view; ENOENT: none.
            return Ok(Userns::Outside);
        };
        current = parent;
        if ns_id(&current)? == home {
            let map = |name: &str| {
                std::fs::read_to_string(dir.join(name))
                    .map_err(|e| format!("its {name}: {e}"))
                    .and_then(|t| IdRange::parse_map(&t))
            };
            let mut owns = Vec::new();
            for name in OWNED_NAMESPACES {
                let Ok(ns) = File::open(dir.join("ns").join(name)) else {
                    continue; // a kernel without this type
                };
                let owner = ns_ioctl(&ns, NS_GET_USERNS)
                    .ok_or_else(|| format!("the owner of its {name} namespace: unreadable"))?;
                if ns_id(&owner)? != home {
                    owns.push(name.to_string());
                }
            }
            return Ok(Userns::Nested {
                uid_map: map("uid_map")?,
                gid_map: map("gid_map")?,
                owns,
            });
        }
    }
    Ok(Userns::Outside)
}

fn ns_id(file: &File) -> Result<NsId, String> {
    file.metadata()
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| format!("a user namespace: {e}"))
}

/// An nsfs `ioctl` that answers with a new namespace descriptor (`None`: it failed).
fn ns_ioctl(ns: &File, request: libc::c_ulong) -> Option<File> {
    // SAFETY: NS_GET_PARENT and NS_GET_USERNS take no argument and return a new descriptor
    // or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), request as _) };
    // SAFETY: a new descriptor the ioctl returned, owned here.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bounding: &[&str], seccomp: bool) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "capabilities": {"bounding": bounding}},
        });
        if seccomp {
            v["linux"] = serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}});
        }
        serde_json::from_value(v).unwrap()
    }

    /// A spec from `process` (merged over uid 1000, gid 1000, no capabilities) and `linux`.
    fn spec_of(process: serde_json::Value, linux: serde_json::Value) -> Allowed {
        let mut p = serde_json::json!({
            "cwd": "/", "user": {"uid": 1000, "gid": 1000}, "capabilities": {"bounding": []},
        });
        for (k, v) in process.as_object().unwrap() {
            p[k] = v.clone();
        }
        let v = serde_json::json!({"ociVersion": "1.0.2", "process": p, "linux": linux});
        Allowed::from_spec(&serde_json::from_value(v).unwrap())
    }

    /// A thread as `/proc` would show it: no capabilities, these ids, NOFILE hard `nofile`.
    fn thread(uids: [u32; 4], gids: [u32; 4], groups: &[u32], nofile: &str) -> Thread {
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        let line = |ids: [u32; 4]| ids.map(|i| i.to_string()).join("\t");
        let status = format!(
            "Name:\tworker\nUid:\t{}\nGid:\t{}\nGroups:\t{} \nCapInh:\t0000000000000000\n\
             CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n\
             CapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n",
            line(uids),
            line(gids),
            groups.join(" ")
        );
        let limits = format!(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max cpu time              unlimited            unlimited            seconds   \n\
             Max open files            {nofile:<20} {nofile:<20} files     \n"
        );
        Thread::parse(41, 42, &status, &limits, Userns::Container).unwrap()
    }

    const ROOT: [u32; 4] = [0; 4];
    const U1000: [u32; 4] = [1000; 4];

    #[test]
    fn a_uid_the_spec_withholds_is_named_with_what_it_allows() {
        let allowed = spec_of(serde_json::json!({}), serde_json::json!({}));
        assert!(judge(&allowed, &thread(U1000, U1000, &[], "1024")).is_ok());
        let err = judge(&allowed, &thread(ROOT, U1000, &[], "1024")).unwrap_err();
        assert!(
            err.contains("restored process 41 (worker, thread 42)")
                && err.contains("real uid 0")
                && err.contains("process.user.uid is 1000")
                && err.contains("CAP_SETUID"),
            "{err}"
        );
        // Any one of the four: here the saved uid.
        let err = judge(&allowed, &thread([1000, 1000, 0, 1000], U1000, &[], "1")).unwrap_err();
        assert!(err.contains("saved uid 0"), "{err}");
        let err = judge(&allowed, &thread(U1000, [1000, 1000, 1000, 0], &[], "1")).unwrap_err();
        assert!(
            err.contains("fs gid 0") && err.contains("process.user.gid is 1000"),
            "{err}"
        );
        assert!(err.contains("CAP_SETGID"), "{err}");
    }

    #[test]
    fn setuid_lifts_the_uid_rule_where_the_process_could_reach_it() {
        let mut root = thread(ROOT, U1000, &[], "1024");
        // Without no_new_privs: the bounding set (a setuid-root binary reaches it).
        let bounded = serde_json::json!({"capabilities": {"bounding": ["CAP_SETUID"]}});
        assert!(judge(&spec_of(bounded.clone(), serde_json::json!({})), &root).is_ok());
        // With no_new_privs: only the permitted set.
        let mut nnp = bounded;
        nnp["noNewPrivileges"] = true.into();
        root.no_new_privs = true;
        let err = judge(&spec_of(nnp.clone(), serde_json::json!({})), &root).unwrap_err();
        assert!(
            err.contains("CAP_SETUID") && err.contains("permitted"),
            "{err}"
        );
        nnp["capabilities"]["permitted"] = serde_json::json!(["CAP_SETUID"]);
        assert!(judge(&spec_of(nnp, serde_json::json!({})), &root).is_ok());
        // CAP_SETUID lifts the uid rule only.
        let setuid = serde_json::json!({"capabilities": {"bounding": ["CAP_SETUID"]}});
        let err = judge(
            &spec_of(setuid, serde_json::json!({})),
            &thread(ROOT, ROOT, &[], "1"),
        )
        .unwrap_err();
        assert!(err.contains("real gid 0"), "{err}");
    }

    #[test]
    fn supplementary_groups_are_the_specs_unless_setgid() {
        let p = serde_json::json!({"user": {"uid": 1000, "gid": 1000, "additionalGids": [2000]}});
        let allowed = spec_of(p.clone(), serde_json::json!({}));
        assert!(judge(&allowed, &thread(U1000, U1000, &[1000, 2000], "1")).is_ok());
        let err = judge(&allowed, &thread(U1000, U1000, &[0, 2000], "1")).unwrap_err();
        assert!(
            err.contains("supplementary group gid 0")
                && err.contains("{1000, 2000}")
                && err.contains("CAP_SETGID"),
            "{err}"
        );
        let mut p = p;
        p["capabilities"] = serde_json::json!({"bounding": ["CAP_SETGID"]});
        let allowed = spec_of(p, serde_json::json!({}));
        assert!(judge(&allowed, &thread(U1000, [0; 4], &[0, 4], "1")).is_ok());
    }

    #[test]
    fn ids_are_compared_through_the_specs_user_namespace_maps() {
        let linux = serde_json::json!({
            "namespaces": [{"type": "user"}],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}],
        });
        let allowed = spec_of(serde_json::json!({}), linux);
        assert!(judge(&allowed, &thread([101000; 4], [201000; 4], &[], "1")).is_ok());
        // The container's root.
        let err = judge(&allowed, &thread([100000; 4], [201000; 4], &[], "1")).unwrap_err();
        assert!(err.contains("real uid 0"), "{err}");
        // The host's root: not even mapped.
        let err = judge(&allowed, &thread(U1000, [201000; 4], &[], "1")).unwrap_err();
        assert!(
            err.contains("host uid 1000, which the spec's user namespace does not map"),
            "{err}"
        );
    }

    #[test]
    fn a_hard_limit_above_the_specs_needs_sys_resource() {
        let p =
            serde_json::json!({"rlimits": [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 512}]});
        let allowed = spec_of(p.clone(), serde_json::json!({}));
        assert!(judge(&allowed, &thread(U1000, U1000, &[], "512")).is_ok());
        assert!(judge(&allowed, &thread(U1000, U1000, &[], "100")).is_ok());
        let err = judge(&allowed, &thread(U1000, U1000, &[], "1024")).unwrap_err();
        assert!(
            err.contains("RLIMIT_NOFILE hard limit 1024")
                && err.contains("hard limit 512")
                && err.contains("CAP_SYS_RESOURCE"),
            "{err}"
        );
        let err = judge(&allowed, &thread(U1000, U1000, &[], "unlimited")).unwrap_err();
        assert!(err.contains("hard limit unlimited"), "{err}");
        let mut p = p;
        p["capabilities"] = serde_json::json!({"bounding": ["CAP_SYS_RESOURCE"]});
        let allowed = spec_of(p, serde_json::json!({}));
        assert!(judge(&allowed, &thread(U1000, U1000, &[], "unlimited")).is_ok());
    }

    #[test]
    fn capabilities_count_in_the_threads_own_user_namespace() {
        let allowed = spec_of(serde_json::json!({}), serde_json::json!({}));
        let mut t = thread(U1000, U1000, &[], "1");
        t.caps = [0, !0 >> 23, !0 >> 23, !0 >> 23, 0];
        // In the container's namespace, they are the host's: refused.
        let err = judge(&allowed, &t).unwrap_err();
        assert!(
            err.contains("CAP_SYS_ADMIN") && err.contains("bounding"),
            "{err}"
        );
        // In a namespace nested below it that maps only the process's own ids (what `unshare
        // -r` as uid 1000 makes): they reach nothing outside it.
        let own = |id| {
            vec![IdRange {
                inside: 0,
                outside: id,
                count: 1,
            }]
        };
        t.userns = Userns::Nested {
            uid_map: own(1000),
            gid_map: own(1000),
            owns: vec![],
        };
        assert!(judge(&allowed, &t).is_ok(), "{:?}", judge(&allowed, &t));
        // ... unless that namespace owns the thread's others (as when CRIU recreated the
        // container's under it): there they reach the container's mounts, network, ...
        t.userns = Userns::Nested {
            uid_map: own(1000),
            gid_map: own(1000),
            owns: vec!["mnt".into(), "net".into()],
        };
        let err = judge(&allowed, &t).unwrap_err();
        assert!(
            err.contains("CAP_SYS_ADMIN") && err.contains("owns its mnt, net namespaces"),
            "{err}"
        );
        // A nested namespace mapping the host's root: its full capabilities could take uid 0.
        t.userns = Userns::Nested {
            uid_map: vec![IdRange {
                inside: 0,
                outside: 0,
                count: 65536,
            }],
            gid_map: own(1000),
            owns: vec![],
        };
        let err = judge(&allowed, &t).unwrap_err();
        assert!(
            err.contains("nested user namespace")
                && err.contains("maps 65536 uids from host uid 0")
                && err.contains("CAP_SETUID"),
            "{err}"
        );
        t.userns = Userns::Outside;
        assert!(judge(&allowed, &t).unwrap_err().contains("neither"));
    }

    #[test]
    fn this_process_parses_as_the_kernel_shows_it() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let me = Thread::parse(1, 1, &status, &limits, Userns::Container).unwrap();
        assert_eq!(me.uids[1], nix::unistd::geteuid().as_raw());
        assert_eq!(me.gids[1], nix::unistd::getegid().as_raw());
        let (_, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let nofile = me
            .rlimits
            .iter()
            .find(|(n, _)| n == "RLIMIT_NOFILE")
            .unwrap();
        assert_eq!(
            nofile.1,
            if hard == libc::RLIM_INFINITY {
                u64::MAX
            } else {
                hard
            }
        );
        assert_eq!(me.rlimits.len(), LIMITS.len(), "{:?}", me.rlimits);
        assert_eq!(
            IdRange::parse_map("         0          0 4294967295\n").unwrap(),
            [IdRange {
                inside: 0,
                outside: 0,
                count: u32::MAX
            }]
        );
    }

    /// A `sleep` in a new user namespace mapping this process's own ids (`unshare -r`, with
    /// `extra` flags), killed when dropped.
    struct Nested(std::process::Child);

    impl Nested {
        fn start(extra: &[&str]) -> (Self, i32) {
            let child = std::process::Command::new("unshare")
                .args(["-U", "-r"])
                .args(extra)
                .args(["sleep", "60"])
                .spawn()
                .expect("unshare (util-linux)");
            let pid = child.id() as i32;
            // Until unshare has exec'd sleep in the new namespace.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap() != "sleep\n" {
                assert!(
                    std::time::Instant::now() < deadline,
                    "unshare never ran sleep"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (Nested(child), pid)
        }
    }

    impl Drop for Nested {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_nested_user_namespace_is_found_with_its_maps_and_what_it_owns() {
        let home = container_userns(&spec(&[], false)).unwrap();
        let me = Path::new("/proc/self/task").join(std::process::id().to_string());
        assert_eq!(userns_of(&me, home).unwrap(), Userns::Container);
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let (_child, pid) = Nested::start(&[]);
        let dir = Path::new("/proc")
            .join(pid.to_string())
            .join("task")
            .join(pid.to_string());
        let own = |id| {
            vec![IdRange {
                inside: 0,
                outside: id,
                count: 1,
            }]
        };
        assert_eq!(
            userns_of(&dir, home).unwrap(),
            Userns::Nested {
                uid_map: own(uid),
                gid_map: own(gid),
                owns: vec![]
            }
        );
        let (_child, pid) = Nested::start(&["-m", "-n"]);
        let dir = Path::new("/proc")
            .join(pid.to_string())
            .join("task")
            .join(pid.to_string());
        let Userns::Nested { owns, .. } = userns_of(&dir, home).unwrap() else {
            panic!("not nested");
        };
        assert_eq!(owns, ["mnt", "net"]);
    }

    #[test]
    fn full_capabilities_inside_a_nested_user_namespace_are_not_the_containers() {
        // `unshare -r` as this (root) process: every capability, in a namespace mapping only
        // uid 0 and gid 0, whose other namespaces are the host's.
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(me, 0, "needs root (as CI runs)");
        let (_child, pid) = Nested::start(&[]);
        let none = spec(&[], false);
        assert!(check(&none, &[pid]).is_ok(), "{:?}", check(&none, &[pid]));
        // Owning its mount and network namespaces, they reach those.
        let (_child, pid) = Nested::start(&["-m", "-n"]);
        let err = check(&none, &[pid]).unwrap_err();
        assert!(err.contains("owns its mnt, net namespaces"), "{err}");
    }

    #[test]
    fn capabilities_beyond_the_bounding_set_are_named() {
        let me = std::process::id() as i32;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let bnd = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert!(
            bnd & (1 << 21) != 0,
            "needs CAP_SYS_ADMIN in the bounding set (run as root, as CI does)"
        );
        let err = check(&spec(&["CAP_CHOWN"], false), &[me]).unwrap_err();
        assert!(
            err.contains("CAP_SYS_ADMIN")
                && err.contains("bounding")
                && err.contains(&me.to_string()),
            "{err}"
        );
        let all: Vec<String> = crate::init::capability_names(bnd);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert!(check(&spec(&all, false), &[me]).is_ok());
        // The test runs without a seccomp filter.
        let err = check(&spec(&all, true), &[me]).unwrap_err();
        assert!(err.contains("seccomp"), "{err}");
    }

    #[test]
    fn capability_bits_and_names_agree() {
        let names = ["CAP_CHOWN", "CAP_SYS_ADMIN"];
        let s = spec(&names, false);
        let bits = crate::init::capability_bits(
            s.process()
                .as_ref()
                .and_then(|p| p.capabilities().as_ref())
                .and_then(|c| c.bounding().as_ref()),
        );
        assert_eq!(bits, 1 | (1 << 21));
        assert_eq!(crate::init::capability_names(bits), names);
    }
}
