//! The spec's seccomp profile compiled with libseccomp and loaded into PID 1. With
//! no_new_privs the filter is loaded as the very last step before exec; without it, before
//! capabilities are dropped (loading then needs CAP_SYS_ADMIN), as runc does.

use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, Spec};

use crate::error::{Error, Result};

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

/// Compile the profile. Syscalls unknown to this libseccomp are skipped, as runc does.
fn build(p: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let err =
        |what: &str, e: &dyn std::fmt::Display| Error::InvalidSpec(format!("seccomp {what}: {e}"));
    let default = action(p.default_action(), p.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| err("init", &e))?;
    // no_new_privs is the spec's decision, not libseccomp's.
    ctx.set_ctl_nnp(false)
        .map_err(|e| err("nnp attribute", &e))?;
    for arch in p.architectures().as_deref().unwrap_or_default() {
        let name = json_name(arch);
        let a = ScmpArch::from_str(&name).map_err(|e| err(&format!("architecture {name}"), &e))?;
        ctx.add_arch(a)
            .map_err(|e| err(&format!("architecture {name}"), &e))?;
    }
    for rule in p.syscalls().as_deref().unwrap_or_default() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let mut conditions = Vec::new();
        for a in rule.args().as_deref().unwrap_or_default() {
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
                other => return Err(Error::InvalidSpec(format!("seccomp operator {other}"))),
            };
            conditions.push(ScmpArgCompare::new(a.index() as u32, op, datum));
        }
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            ctx.add_rule_conditional(act, sc, &conditions)
                .map_err(|e| err(&format!("rule for {name}"), &e))?;
        }
    }
    Ok(ctx)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    let errno = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    Ok(match json_name(&a).as_str() {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno),
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno as u16),
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        other => {
            return Err(Error::InvalidSpec(format!(
                "seccomp action {other} is not supported"
            )))
        }
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

    #[test]
    fn unsupported_actions_are_named() {
        let e = action(LinuxSeccompAction::ScmpActNotify, None).unwrap_err();
        assert!(e.to_string().contains("SCMP_ACT_NOTIFY"), "{e}");
    }
}
