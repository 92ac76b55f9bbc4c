//! What a process restored from a checkpoint may hold. CRIU gives each restored task the
//! credentials its images claim, whatever the new spec allows: a checkpoint dumped with (or
//! crafted to claim) `CAP_SYS_ADMIN` comes back with it in a container whose spec grants
//! none. A checkpoint's images are its author's, so a restore must not hand out more than a
//! create would: checked at CRIU's `pre-resume` notification (every task restored, its
//! credentials set, none resumed yet), each task may hold no capability, in any of its sets,
//! outside the spec's `process.capabilities.bounding`; it must be seccomp-filtered when the
//! spec has a profile, and have no_new_privs when the spec asks for it.

use std::path::Path;

use oci_spec::runtime::Spec;

/// The notification CRIU sends before it lets the restored tasks run.
pub const PRE_RESUME: &str = "pre-resume";

/// The `/proc/<pid>/status` fields checked, with the capability sets named as in errors.
const CAP_SETS: [(&str, &str); 5] = [
    ("CapInh", "inheritable"),
    ("CapPrm", "permitted"),
    ("CapEff", "effective"),
    ("CapBnd", "bounding"),
    ("CapAmb", "ambient"),
];

/// Check every thread of `pids` against `spec`; the refusal names the process, the set and
/// the capabilities (or the missing confinement).
pub fn check(spec: &Spec, pids: &[i32]) -> Result<(), String> {
    let process = spec.process().as_ref();
    let bounding = crate::init::capability_bits(
        process
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().as_ref()),
    );
    let seccomp = spec.linux().as_ref().is_some_and(|l| l.seccomp().is_some());
    let no_new_privs = process.and_then(|p| p.no_new_privileges()) == Some(true);
    for &pid in pids {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("restored process {pid}: {e}"))?;
        for task in tasks.flatten() {
            let status = Path::new("/proc")
                .join(pid.to_string())
                .join("task")
                .join(task.file_name())
                .join("status");
            let Ok(text) = std::fs::read_to_string(&status) else {
                continue; // gone since the listing
            };
            let who = format!(
                "restored process {pid} (thread {})",
                task.file_name().to_string_lossy()
            );
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            for (key, set) in CAP_SETS {
                let value = field(key)
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
                    .ok_or_else(|| format!("{who}: no {key} in its status"))?;
                let extra = value & !bounding;
                if extra != 0 {
                    return Err(format!(
                        "{who} holds {} in its {set} capabilities: the checkpoint claims more \
                         than the spec's process.capabilities.bounding allows",
                        crate::init::capability_names(extra).join(", ")
                    ));
                }
            }
            if seccomp && field("Seccomp") != Some("2") {
                return Err(format!(
                    "{who} is not seccomp-filtered, while the spec has a linux.seccomp profile"
                ));
            }
            if no_new_privs && field("NoNewPrivs") != Some("1") {
                return Err(format!(
                    "{who} lacks no_new_privs, while the spec sets process.noNewPrivileges"
                ));
            }
        }
    }
    Ok(())
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
