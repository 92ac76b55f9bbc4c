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
