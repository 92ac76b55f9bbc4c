//! The spec's seccomp profile compiled with libseccomp and loaded into PID 1. With
//! no_new_privs the filter is loaded as the very last step before exec; without it, before
//! capabilities are dropped (loading then needs CAP_SYS_ADMIN), as runc does. The engine
//! compiles the whole profile on the host first ([`validate`], before anything is spawned), so
//! a profile libseccomp or the kernel would refuse fails Create, not Start. Every error names
//! the field and the value (`linux.seccomp.syscalls[3].action: SCMP_ACT_NOTIFY ...`).

use std::os::fd::AsFd;
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, Spec};

use crate::error::{Error, Result};

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`): a longer filter is refused
/// with EINVAL when it is loaded.
const MAX_INSTRUCTIONS: u64 = 4096;

/// Size of one classic BPF instruction (`struct sock_filter`).
const INSTRUCTION_BYTES: u64 = 8;

/// The highest syscall argument index (syscalls take six arguments).
const MAX_ARG_INDEX: usize = 5;

/// Compile the spec's profile as PID 1 would load it and check that the kernel would take it;
/// nothing is loaded. Called by the engine on the host before it spawns anything.
pub fn validate(spec: &Spec) -> Result<()> {
    let Some(p) = profile(spec) else {
        return Ok(());
    };
    let ctx = build(p)?;
    let out =
        nix::sys::memfd::memfd_create("cryo-seccomp-check", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::sys("seccomp check: memfd_create", e))?;
    ctx.export_bpf(out.as_fd()).map_err(|e| {
        invalid(format!(
            "linux.seccomp: libseccomp cannot compile the profile: {e}"
        ))
    })?;
    let bytes = nix::sys::stat::fstat(&out)
        .map_err(|e| Error::sys("seccomp check: fstat", e))?
        .st_size as u64;
    let instructions = bytes / INSTRUCTION_BYTES;
    if instructions > MAX_INSTRUCTIONS {
        return Err(invalid(format!(
            "linux.seccomp: the profile compiles to {instructions} BPF instructions, over the \
             kernel's limit of {MAX_INSTRUCTIONS}"
        )));
    }
    Ok(())
}

/// Load the profile now (the early, no_new_privs-less case).
pub fn load(spec: &Spec) -> Result<()> {
    match profile(spec) {
        Some(p) => build(p)?
            .load()
            .map_err(|e| Error::Init(format!("load seccomp filter: {e}"))),
        None => Ok(()),
    }
}

/// Load the profile if the process runs with no_new_privs (the late case).
pub fn load_late(spec: &Spec) -> Result<()> {
    let nnp = spec
        .process()
        .as_ref()
        .and_then(|p| p.no_new_privileges())
        .unwrap_or(false);
    if nnp {
        load(spec)
    } else {
        Ok(())
    }
}

fn profile(spec: &Spec) -> Option<&LinuxSeccomp> {
    spec.linux().as_ref().and_then(|l| l.seccomp().as_ref())
}

fn invalid(msg: String) -> Error {
    Error::InvalidSpec(msg)
}

/// Compile the profile. Syscalls unknown to this libseccomp are skipped, as runc does.
fn build(p: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(
        "linux.seccomp.defaultAction",
        p.default_action(),
        p.default_errno_ret(),
    )?;
    let mut ctx = ScmpFilterContext::new(default)
        .map_err(|e| invalid(format!("linux.seccomp.defaultAction: libseccomp: {e}")))?;
    // no_new_privs is the spec's decision, not libseccomp's.
    ctx.set_ctl_nnp(false)
        .map_err(|e| Error::Init(format!("seccomp nnp attribute: {e}")))?;
    for (i, arch) in p.architectures().iter().flatten().enumerate() {
        let name = json_name(arch);
        let field = format!("linux.seccomp.architectures[{i}]");
        let a = ScmpArch::from_str(&name)
            .map_err(|e| invalid(format!("{field}: {name} is not supported: {e}")))?;
        ctx.add_arch(a)
            .map_err(|e| invalid(format!("{field}: {name}: libseccomp: {e}")))?;
    }
    for (i, rule) in p.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(&format!("{field}.action"), rule.action(), rule.errno_ret())?;
        let conditions = rule
            .args()
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, a)| condition(&format!("{field}.args[{j}]"), a))
            .collect::<Result<Vec<_>>>()?;
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            ctx.add_rule_conditional(act, sc, &conditions)
                .map_err(|e| {
                    invalid(format!(
                        "{field} ({name}): libseccomp refused the rule: {e}"
                    ))
                })?;
        }
    }
    Ok(ctx)
}

/// One argument comparison; `field` is its place in the spec.
fn condition(field: &str, a: &oci_spec::runtime::LinuxSeccompArg) -> Result<ScmpArgCompare> {
    if a.index() > MAX_ARG_INDEX {
        return Err(invalid(format!(
            "{field}.index: {} is out of range (a syscall has arguments 0 to {MAX_ARG_INDEX})",
            a.index()
        )));
    }
    let op = json_name(&a.op());
    let (op, datum) = match op.as_str() {
        "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, a.value()),
        "SCMP_CMP_LT" => (ScmpCompareOp::Less, a.value()),
        "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, a.value()),
        "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, a.value()),
        "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, a.value()),
        "SCMP_CMP_GT" => (ScmpCompareOp::Greater, a.value()),
        "SCMP_CMP_MASKED_EQ" => (
            ScmpCompareOp::MaskedEqual(a.value()),
            a.value_two().unwrap_or(0),
        ),
        other => {
            return Err(invalid(format!(
                "{field}.op: {other} is not a supported operator"
            )))
        }
    };
    Ok(ScmpArgCompare::new(a.index() as u32, op, datum))
}

/// A profile action; `field` is its place in the spec.
fn action(field: &str, a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    let errno = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    Ok(match json_name(&a).as_str() {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno),
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno as u16),
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        // runc refuses it without a listener; cryo has no seccomp agent support at all.
        "SCMP_ACT_NOTIFY" => {
            return Err(invalid(format!(
                "{field}: SCMP_ACT_NOTIFY is not supported (it needs a seccomp agent at \
                 linux.seccomp.listenerPath, which cryo does not support)"
            )))
        }
        other => return Err(invalid(format!("{field}: {other} is not supported"))),
    })
}

/// The name an OCI enum value has in JSON (`SCMP_ACT_ALLOW`, `SCMP_ARCH_X86_64`, ...).
fn json_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_compiles() {
        let p: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["read","write","no_such_syscall"],"action":"SCMP_ACT_ALLOW"},
                            {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                             "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        build(&p).unwrap();
    }

    fn spec_with(seccomp: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"seccomp": seccomp}
        }))
        .unwrap()
    }

    fn refusal(seccomp: serde_json::Value) -> String {
        validate(&spec_with(seccomp)).unwrap_err().to_string()
    }

    #[test]
    fn notify_is_refused_with_its_place() {
        let e = refusal(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                         {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(
            e.contains("linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY"),
            "{e}"
        );
        let e = refusal(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(
            e.contains("linux.seccomp.defaultAction: SCMP_ACT_NOTIFY"),
            "{e}"
        );
    }

    #[test]
    fn operators_and_indexes_are_named() {
        let e = refusal(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                                   {"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert!(
            e.contains("linux.seccomp.syscalls[0].args[1].index: 7"),
            "{e}"
        );
    }

    /// A profile libseccomp compiles but the kernel would refuse: about 6000 instructions,
    /// over BPF_MAXINSNS, in under 100 KB of JSON.
    fn too_long_for_the_kernel() -> serde_json::Value {
        let rules: Vec<serde_json::Value> = (0..250u64)
            .map(|v| {
                let args: Vec<serde_json::Value> = (0..6)
                    .map(|i| serde_json::json!({"index": i, "value": (v << 33) + i, "op": "SCMP_CMP_EQ"}))
                    .collect();
                serde_json::json!({"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": args})
            })
            .collect();
        serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
    }

    #[test]
    fn a_filter_over_the_kernel_limit_is_refused_before_loading() {
        let e = refusal(too_long_for_the_kernel());
        assert!(e.contains("BPF instructions") && e.contains("4096"), "{e}");
    }

    #[test]
    fn an_ordinary_profile_passes() {
        validate(&spec_with(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]
        })))
        .unwrap();
    }
}
