//! Linux security modules as the engine meets them: whether AppArmor or SELinux is enabled on
//! the host (a spec that asks for a profile or label the host cannot apply is refused, as runc
//! refuses it), and AppArmor's change-on-exec, which PID 1 and exec'd processes request just
//! before their exec.

use std::path::Path;

use crate::error::{Error, Result};

/// Whether the kernel runs AppArmor (the module is loaded and enabled).
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim_start().starts_with('Y'))
}

/// Whether the kernel runs SELinux (selinuxfs is mounted).
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Ask AppArmor to confine this process with `profile` from its next exec on (runc's
/// `changeOnExec`): written to this thread's `attr/apparmor/exec`, or the older `attr/exec`.
pub fn apparmor_exec(profile: &str) -> Result<()> {
    let request = format!("exec {profile}");
    let mut last = None;
    for attr in [
        "/proc/thread-self/attr/apparmor/exec",
        "/proc/thread-self/attr/exec",
    ] {
        match std::fs::write(attr, &request) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::io(
        format!("process.apparmorProfile {profile:?}: apply the profile"),
        last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)),
    ))
}
