//! The checks a spec must pass before anything is created or exec'd, as runc makes them: each
//! refusal names the field and the value, and comes before any mount, cgroup or process exists.

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::own_namespace;
use crate::error::{Error, Result};
use crate::mount::propagation_flag;

/// The largest uid or gid a process may be given (runc's range: 0 to 2^31-1). `u32::MAX` in
/// particular means "unchanged" to setresuid/setresgid, which would leave the process root.
const MAX_ID: u32 = i32::MAX as u32;

/// Supplementary groups the kernel takes (NGROUPS_MAX).
const MAX_GROUPS: usize = 65_536;

/// cpu.shares the kernel accepts as given (it clamps others silently; runc refuses them).
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;

/// Check `spec` for a new container, or for a process exec'd into one (`spec.process` is then
/// the exec'd process). `terminal`: whether the caller asked for a pty.
pub(super) fn validate(spec: &Spec, terminal: bool) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    }
    let Some(linux) = spec.linux() else {
        return Err(Error::InvalidSpec("linux section is missing".into()));
    };
    if !process.cwd().is_absolute() {
        return Err(Error::InvalidSpec(format!(
            "process.cwd {:?}: the cwd property must be an absolute path",
            process.cwd()
        )));
    }
    if process.terminal().unwrap_or(false) && !terminal {
        return Err(Error::InvalidSpec(
            "process.terminal is true but no terminal was requested for the process's stdio \
             (cannot allocate a tty without a console to hand it to)"
                .into(),
        ));
    }
    let user = process.user();
    check_id("process.user.uid", user.uid())?;
    check_id("process.user.gid", user.gid())?;
    let groups = user.additional_gids().as_deref().unwrap_or_default();
    if groups.len() > MAX_GROUPS {
        return Err(Error::InvalidSpec(format!(
            "process.user.additionalGids has {} entries: at most {MAX_GROUPS} (the kernel's \
             NGROUPS_MAX)",
            groups.len()
        )));
    }
    for gid in groups {
        check_id("process.user.additionalGids", *gid)?;
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(Error::InvalidSpec(format!(
                "process.oomScoreAdj {adj}: must be in range -1000 to 1000"
            )));
        }
    }
    if let Some(p) = linux.rootfs_propagation().as_deref() {
        if !p.is_empty() && propagation_flag(p).is_none() {
            return Err(Error::InvalidSpec(format!(
                "linux.rootfsPropagation {p:?}: not a propagation (private, rprivate, shared, \
                 rshared, slave, rslave, unbindable, runbindable)"
            )));
        }
    }
    for (field, value) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            if !own_namespace(spec, LinuxNamespaceType::Uts) {
                return Err(Error::InvalidSpec(format!(
                    "{field} {v:?}: unable to set the {field} without a private UTS namespace"
                )));
            }
        }
    }
    if let Some(sysctl) = linux.sysctl() {
        for key in sysctl.keys() {
            check_sysctl(spec, key)?;
        }
    }
    if let Some(resources) = linux.resources() {
        check_resources(resources)?;
    }
    check_confinement(spec)?;
    check_unapplied(spec)
}

/// An AppArmor profile or SELinux label the host cannot apply is refused (runc refuses them
/// too): a container that asked for confinement never runs without it.
fn check_confinement(spec: &Spec) -> Result<()> {
    let process = spec.process().as_ref();
    if let Some(p) = process
        .and_then(|p| p.apparmor_profile().as_deref())
        .filter(|p| !p.is_empty())
    {
        if !crate::lsm::apparmor_enabled() {
            return Err(Error::InvalidSpec(format!(
                "process.apparmorProfile {p:?}: apparmor profile requested but AppArmor is not \
                 enabled on this host"
            )));
        }
    }
    let labels = [
        (
            "process.selinuxLabel",
            process.and_then(|p| p.selinux_label().as_deref()),
        ),
        (
            "linux.mountLabel",
            spec.linux()
                .as_ref()
                .and_then(|l| l.mount_label().as_deref()),
        ),
    ];
    for (field, label) in labels {
        if let Some(label) = label.filter(|l| !l.is_empty()) {
            let why = if crate::lsm::selinux_enabled() {
                "SELinux labels are not applied by cryo"
            } else {
                "selinux label is specified in config, but SELinux is disabled or not supported \
                 on this host"
            };
            return Err(Error::InvalidSpec(format!("{field} {label:?}: {why}")));
        }
    }
    Ok(())
}

/// Fields cryo does not apply are refused by name rather than silently dropped: the process
/// would otherwise run without what its spec asked for.
fn check_unapplied(spec: &Spec) -> Result<()> {
    let process = spec.process().as_ref();
    let linux = spec.linux().as_ref();
    let hooks = spec.hooks().as_ref();
    let hook_lists = hooks.map(|h| {
        [
            ("hooks.prestart", h.prestart()),
            ("hooks.createRuntime", h.create_runtime()),
            ("hooks.createContainer", h.create_container()),
            ("hooks.startContainer", h.start_container()),
            ("hooks.poststart", h.poststart()),
            ("hooks.poststop", h.poststop()),
        ]
    });
    for (field, list) in hook_lists.iter().flatten() {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(unapplied(field, "OCI hooks are not run by cryo"));
        }
    }
    let set = [
        (
            "process.scheduler",
            process.is_some_and(|p| p.scheduler().is_some()),
        ),
        (
            "process.ioPriority",
            process.is_some_and(|p| p.io_priority().is_some()),
        ),
        (
            "linux.intelRdt",
            linux.is_some_and(|l| l.intel_rdt().is_some()),
        ),
        (
            "linux.personality",
            linux.is_some_and(|l| l.personality().is_some()),
        ),
        (
            "linux.timeOffsets",
            linux.is_some_and(|l| l.time_offsets().is_some()),
        ),
        (
            "linux.memoryPolicy",
            linux.is_some_and(|l| l.memory_policy().is_some()),
        ),
        (
            "linux.netDevices",
            linux.is_some_and(|l| l.net_devices().as_ref().is_some_and(|d| !d.is_empty())),
        ),
    ];
    match set.iter().find(|(_, present)| *present) {
        Some((field, _)) => Err(unapplied(field, "not supported by cryo")),
        None => Ok(()),
    }
}

fn unapplied(field: &str, why: &str) -> Error {
    Error::InvalidSpec(format!(
        "{field}: {why}; remove it from the spec (it would be ignored)"
    ))
}

/// Resources that the kernel would silently change or cgroups-rs would refuse without naming
/// them, refused as runc does (also on update).
pub(super) fn check_resources(resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
    for (i, rule) in resources.devices().iter().flatten().enumerate() {
        let field = format!("linux.resources.devices[{i}]");
        let typ = rule.typ().unwrap_or_default();
        if !matches!(typ.as_str(), "a" | "b" | "c") {
            return Err(Error::InvalidSpec(format!(
                "{field}.type {:?}: a device rule's type is a, b or c",
                typ.as_str()
            )));
        }
        if let Some(access) = rule.access().as_deref() {
            if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(Error::InvalidSpec(format!(
                    "{field}.access {access:?}: letters of \"rwm\" only"
                )));
            }
        }
        for (name, n) in [("major", rule.major()), ("minor", rule.minor())] {
            if n.is_some_and(|n| n < -1) {
                return Err(Error::InvalidSpec(format!(
                    "{field}.{name} {}: a device number (or -1 for any)",
                    n.unwrap_or_default()
                )));
            }
        }
    }
    if let Some(shares) = resources.cpu().as_ref().and_then(|c| c.shares()) {
        if shares != 0 && !(MIN_SHARES..=MAX_SHARES).contains(&shares) {
            return Err(Error::InvalidSpec(format!(
                "linux.resources.cpu.shares {shares}: the allowed cpu-shares are \
                 {MIN_SHARES} to {MAX_SHARES}"
            )));
        }
    }
    Ok(())
}

fn check_id(field: &str, id: u32) -> Result<()> {
    if id > MAX_ID {
        return Err(Error::InvalidSpec(format!(
            "{field} {id}: uids and gids must be in range 0-{MAX_ID}"
        )));
    }
    Ok(())
}

/// A sysctl is allowed only when it belongs to a namespace the container has of its own
/// (runc's rules); anything else would be written to the host's kernel.
fn check_sysctl(spec: &Spec, key: &str) -> Result<()> {
    if key.is_empty()
        || key.contains('/')
        || key.split('.').any(|part| part.is_empty() || part == "..")
    {
        return Err(Error::InvalidSpec(format!(
            "linux.sysctl {key:?}: not a sysctl name (dot-separated, no slashes, no empty parts)"
        )));
    }
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let (namespace, name) = if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        (LinuxNamespaceType::Ipc, "ipc")
    } else if key.starts_with("net.") {
        (LinuxNamespaceType::Network, "network")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        (LinuxNamespaceType::Uts, "uts")
    } else {
        return Err(Error::InvalidSpec(format!(
            "linux.sysctl {key:?}: not in a separate kernel namespace (only namespaced sysctls \
             may be set: kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, net.*, \
             kernel.hostname, kernel.domainname)"
        )));
    };
    if !own_namespace(spec, namespace) {
        return Err(Error::InvalidSpec(format!(
            "linux.sysctl {key:?}: not allowed in the host's {name} namespace (the container \
             has no {name} namespace of its own)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "network"}
            ]}
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn refused(extra: serde_json::Value) -> String {
        validate(&spec(extra), false).unwrap_err().to_string()
    }

    #[test]
    fn specs_without_a_process_are_refused() {
        let spec: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2","linux":{}}"#).unwrap();
        assert!(validate(&spec, false)
            .unwrap_err()
            .to_string()
            .contains("process"));
    }

    #[test]
    fn a_plain_spec_passes() {
        validate(&spec(serde_json::json!({})), false).unwrap();
    }

    #[test]
    fn ids_out_of_range_are_refused_by_field() {
        let e = refused(serde_json::json!({"process": {"user": {"uid": 4294967295u32}}}));
        assert!(
            e.contains("process.user.uid 4294967295") && e.contains("range"),
            "{e}"
        );
        let e = refused(serde_json::json!({"process": {"user": {"gid": 2147483648u32}}}));
        assert!(e.contains("process.user.gid 2147483648"), "{e}");
        let e = refused(
            serde_json::json!({"process": {"user": {"additionalGids": [5, 4294967295u32]}}}),
        );
        assert!(e.contains("additionalGids 4294967295"), "{e}");
        validate(
            &spec(serde_json::json!({"process": {"user": {"uid": 2147483647u32}}})),
            false,
        )
        .unwrap();
    }

    #[test]
    fn sysctls_follow_runcs_namespace_rules() {
        let ok = serde_json::json!({"linux": {"sysctl": {
            "net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1",
            "fs.mqueue.msg_max": "20", "kernel.domainname": "x"
        }}});
        validate(&spec(ok), false).unwrap();
        let e = refused(serde_json::json!({"linux": {"sysctl": {"vm.swappiness": "1"}}}));
        assert!(
            e.contains("vm.swappiness") && e.contains("namespace"),
            "{e}"
        );
        let e = refused(serde_json::json!({"linux": {"sysctl": {"net.a/../../vm/x": "1"}}}));
        assert!(e.contains("net.a/../../vm/x"), "{e}");
        let e = refused(serde_json::json!({"linux": {"sysctl": {"net..x": "1"}}}));
        assert!(e.contains("net..x"), "{e}");
        let no_net = serde_json::json!({"linux": {
            "namespaces": [{"type": "mount"}],
            "sysctl": {"net.ipv4.ip_forward": "1"}
        }});
        let e = refused(no_net);
        assert!(
            e.contains("net.ipv4.ip_forward") && e.contains("network"),
            "{e}"
        );
        // Joining the host's own namespace by path is not private.
        let host_net = serde_json::json!({"linux": {
            "namespaces": [{"type": "mount"}, {"type": "network", "path": "/proc/self/ns/net"}],
            "sysctl": {"net.ipv4.ip_forward": "1"}
        }});
        assert!(refused(host_net).contains("net.ipv4.ip_forward"));
        let no_ipc = serde_json::json!({"linux": {
            "namespaces": [{"type": "mount"}],
            "sysctl": {"kernel.shm_rmid_forced": "1"}
        }});
        assert!(refused(no_ipc).contains("ipc"));
    }

    #[test]
    fn runcs_other_refusals() {
        let e = refused(serde_json::json!({"linux": {"resources": {"cpu": {"shares": 1}}}}));
        assert!(e.contains("cpu.shares 1"), "{e}");
        let e = refused(serde_json::json!({"linux": {"rootfsPropagation": "rsharedx"}}));
        assert!(e.contains("rootfsPropagation \"rsharedx\""), "{e}");
        let e = refused(serde_json::json!({"process": {"oomScoreAdj": 1001}}));
        assert!(e.contains("oomScoreAdj 1001"), "{e}");
        let many: Vec<u32> = (0..65_537).collect();
        let e = refused(serde_json::json!({"process": {"user": {"additionalGids": many}}}));
        assert!(e.contains("65537 entries"), "{e}");
        let e = refused(serde_json::json!({"linux": {"resources": {"devices": [
            {"allow": true, "type": "p", "access": "rwm"}
        ]}}}));
        assert!(e.contains("devices[0].type \"p\""), "{e}");
        let e = refused(serde_json::json!({"linux": {"resources": {"devices": [
            {"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "access": "rwx"}
        ]}}}));
        assert!(e.contains("devices[1].access \"rwx\""), "{e}");
        let e = refused(serde_json::json!({"linux": {"resources": {"devices": [
            {"allow": true, "type": "c", "major": -5, "access": "r"}
        ]}}}));
        assert!(e.contains("devices[0].major -5"), "{e}");
        let e = refused(serde_json::json!({"process": {"cwd": "tmp"}}));
        assert!(e.contains("process.cwd") && e.contains("absolute"), "{e}");
        let e = refused(serde_json::json!({"process": {"terminal": true}}));
        assert!(e.contains("process.terminal"), "{e}");
        validate(
            &spec(serde_json::json!({"process": {"terminal": true}})),
            true,
        )
        .unwrap();
        let e = refused(serde_json::json!({
            "hostname": "h", "linux": {"namespaces": [{"type": "mount"}]}
        }));
        assert!(e.contains("hostname \"h\"") && e.contains("UTS"), "{e}");
    }
}
