//! Namespaces of a new container, in the helper before it forks PID 1: join those the spec
//! names by path (all opened first, as joining a mount namespace changes what paths mean), then
//! unshare the ones to create. A new pid namespace takes effect for the forked child.

use std::os::fd::OwnedFd;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// Join and create the spec's namespaces.
pub fn enter(spec: &Spec) -> Result<()> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut to_join: Vec<(OwnedFd, LinuxNamespaceType)> = Vec::new();
    let mut to_create = CloneFlags::empty();
    for ns in &namespaces {
        if ns.typ() == LinuxNamespaceType::User {
            return Err(Error::InvalidSpec(
                "user namespaces are not supported yet".into(),
            ));
        }
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
