//! Namespaces of a new container: checked on the host before anything is spawned (each type
//! at most once, every path a namespace of its entry's type), then, in the helper before it
//! forks PID 1, joined where the spec names a path (all opened first, as joining a mount
//! namespace changes what paths mean) and unshared where it does not. A new pid namespace
//! takes effect for the forked child.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// `ioctl(NS_GET_NSTYPE)`: the CLONE_NEW* type of a namespace file (Linux 4.11+).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The types cryo can give a container, by their spec names (`network`, not `net`).
const KNOWN: [LinuxNamespaceType; 7] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Time,
];

/// Check the spec's namespaces on the host: no user namespace (not supported yet), each type
/// at most once (runc: "duplicated ns"), and every path a namespace of its entry's type. The
/// error names the entry and the value.
pub fn validate(spec: &Spec) -> Result<()> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut seen = CloneFlags::empty();
    for (i, ns) in namespaces.iter().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        let typ = ns.typ();
        let name = spec_name(typ);
        if typ == LinuxNamespaceType::User {
            return Err(Error::InvalidSpec(format!(
                "{field}: user namespaces are not supported yet"
            )));
        }
        if seen.contains(flag(typ)) {
            return Err(Error::InvalidSpec(format!(
                "{field}: a second {name} namespace (each type may appear once)"
            )));
        }
        seen |= flag(typ);
        if let Some(path) = ns.path() {
            check_path(&field, typ, path)?;
        }
    }
    Ok(())
}

/// `path` is a namespace of type `typ`.
fn check_path(field: &str, typ: LinuxNamespaceType, path: &Path) -> Result<()> {
    use nix::fcntl::OFlag;
    let shown = path.display();
    // Looked at through O_PATH first: opening a FIFO would block, a device could act.
    let handle = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::InvalidSpec(format!("{field}.path: {shown}: {}", e.desc())))?;
    let fs = nix::sys::statfs::fstatfs(&handle)
        .map_err(|e| Error::sys(format!("{field}.path: statfs {shown}"), e))?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(Error::InvalidSpec(format!(
            "{field}.path: {shown} is not a namespace (not a file of the nsfs filesystem)"
        )));
    }
    let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let file = std::fs::File::open(&reopen)
        .map_err(|e| Error::InvalidSpec(format!("{field}.path: {shown}: {e}")))?;
    // SAFETY: NS_GET_NSTYPE takes no argument; the descriptor is open.
    let got = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if got < 0 {
        return Err(Error::InvalidSpec(format!(
            "{field}.path: {shown} is not a namespace ({})",
            std::io::Error::last_os_error()
        )));
    }
    if got != typ as i32 {
        let is = KNOWN
            .into_iter()
            .find(|t| *t as i32 == got)
            .map_or_else(|| format!("{got:#x}"), spec_name);
        return Err(Error::InvalidSpec(format!(
            "{field}.path: {shown} is a {is} namespace, not a {} namespace",
            spec_name(typ)
        )));
    }
    Ok(())
}

/// The name a namespace type has in the spec (`network`, `mount`, `pid`, ...).
fn spec_name(typ: LinuxNamespaceType) -> String {
    serde_json::to_value(typ)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| typ.to_string())
}

/// Join and create the spec's namespaces (already [`validate`]d).
pub fn enter(spec: &Spec) -> Result<()> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut to_join: Vec<(OwnedFd, LinuxNamespaceType)> = Vec::new();
    let mut to_create = CloneFlags::empty();
    // The engine ran [`validate`] on the host: no user namespace, each type once.
    for ns in &namespaces {
        match ns.path() {
            Some(path) => {
                let fd = std::fs::File::open(path).map_err(|e| {
                    Error::io(format!("open {} namespace {}", ns.typ(), path.display()), e)
                })?;
                to_join.push((fd.into(), ns.typ()));
            }
            None => to_create |= flag(ns.typ()),
        }
    }
    for (fd, typ) in &to_join {
        setns(fd, flag(*typ)).map_err(|e| Error::sys(format!("join {typ} namespace"), e))?;
    }
    unshare(to_create).map_err(|e| Error::sys(format!("unshare {to_create:?}"), e))
}

/// Join every namespace of the running process `pid` that differs from ours (an exec into
/// its container). The mount namespace is joined last: after it, /proc paths change meaning.
pub fn join(pid: i32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut fds = Vec::new();
    for (name, typ) in [
        ("cgroup", LinuxNamespaceType::Cgroup),
        ("ipc", LinuxNamespaceType::Ipc),
        ("uts", LinuxNamespaceType::Uts),
        ("net", LinuxNamespaceType::Network),
        ("pid", LinuxNamespaceType::Pid),
        ("mnt", LinuxNamespaceType::Mount),
    ] {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            (Err(e), _) => return Err(Error::io(format!("container process {pid}: {theirs}"), e)),
            _ => false,
        };
        if !same {
            let fd =
                std::fs::File::open(&theirs).map_err(|e| Error::io(format!("open {theirs}"), e))?;
            fds.push((OwnedFd::from(fd), typ));
        }
    }
    for (fd, typ) in &fds {
        setns(fd, flag(*typ))
            .map_err(|e| Error::sys(format!("join {typ} namespace of pid {pid}"), e))?;
    }
    Ok(())
}

/// Whether the spec gives the container a namespace of `typ` (new or joined).
pub fn has(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == typ))
}

/// The clone flag of a namespace type (the enum's values are those flags).
fn flag(typ: LinuxNamespaceType) -> CloneFlags {
    CloneFlags::from_bits_truncate(typ as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    fn refusal(namespaces: serde_json::Value) -> String {
        validate(&spec_with(namespaces)).unwrap_err().to_string()
    }

    #[test]
    fn namespaces_are_checked_by_entry() {
        validate(&spec_with(serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/proc/self/ns/net"}
        ])))
        .unwrap();
        let e = refusal(serde_json::json!([
            {"type": "pid"}, {"type": "network", "path": "/proc/self/ns/pid"}
        ]));
        assert!(
            e.contains("linux.namespaces[1].path: /proc/self/ns/pid is a pid namespace, not a network namespace"),
            "{e}"
        );
        let e = refusal(serde_json::json!([{"type": "ipc", "path": "/proc/self/status"}]));
        assert!(
            e.contains("linux.namespaces[0].path: /proc/self/status is not a namespace"),
            "{e}"
        );
        // Neither blocks nor touches a device: a FIFO and /dev/null are merely not namespaces.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for path in [fifo.display().to_string(), "/dev/null".to_string()] {
            let e = refusal(serde_json::json!([{"type": "network", "path": path}]));
            assert!(
                e.contains(&format!(
                    "linux.namespaces[0].path: {path} is not a namespace"
                )),
                "{e}"
            );
        }
        let e = refusal(serde_json::json!([{"type": "uts", "path": "/no/such/ns"}]));
        assert!(e.contains("linux.namespaces[0].path: /no/such/ns"), "{e}");
        let e = refusal(serde_json::json!([
            {"type": "network"}, {"type": "pid"}, {"type": "network"}
        ]));
        assert!(
            e.contains("linux.namespaces[2]: a second network namespace"),
            "{e}"
        );
        let e = refusal(serde_json::json!([{"type": "user"}]));
        assert!(e.contains("linux.namespaces[0]: user namespaces"), "{e}");
    }

    #[test]
    fn namespace_types_map_to_clone_flags() {
        assert_eq!(flag(LinuxNamespaceType::Mount), CloneFlags::CLONE_NEWNS);
        assert_eq!(flag(LinuxNamespaceType::Pid), CloneFlags::CLONE_NEWPID);
        assert_eq!(flag(LinuxNamespaceType::Network), CloneFlags::CLONE_NEWNET);
        assert_eq!(flag(LinuxNamespaceType::Ipc), CloneFlags::CLONE_NEWIPC);
        assert_eq!(flag(LinuxNamespaceType::Uts), CloneFlags::CLONE_NEWUTS);
        assert_eq!(
            flag(LinuxNamespaceType::Cgroup),
            CloneFlags::CLONE_NEWCGROUP
        );
    }
}
