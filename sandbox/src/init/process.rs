//! The workload process, inside the pivoted container: hostname, sysctls, oom_score_adj,
//! rlimits, the user (uid, gid, groups, umask), capabilities, no_new_privs, the working
//! directory, and the executable resolved through the container's PATH before `Ready` so that a
//! missing command fails Create. Finally the exec.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::{namespaces, seccomp};
use crate::error::{Error, Result};

/// What belongs to the whole container: hostname, domainname (PID 1 only).
pub fn configure_container(spec: &Spec) -> Result<()> {
    if namespaces::has(spec, LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(h).map_err(|e| Error::sys(format!("sethostname {h}"), e))?;
        }
        if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
            let c =
                CString::new(d).map_err(|_| Error::InvalidSpec("domainname has a NUL".into()))?;
            // SAFETY: a valid C string and its length.
            if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } < 0 {
                return Err(Error::sys("setdomainname", nix::Error::last()));
            }
        }
    }
    Ok(())
}

/// Write the spec's sysctls through the container's /proc (its own namespaces). Called while
/// /proc/sys is still writable; the names were checked at Create (namespaced ones only, in
/// namespaces the container has of its own).
pub fn apply_sysctls(spec: &Spec) -> Result<()> {
    if let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
        for (key, value) in sysctl {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|e| Error::io(format!("linux.sysctl {key}={value}"), e))?;
        }
    }
    Ok(())
}

/// Apply everything about the process but the exec itself. Runs as root, inside the
/// container's root.
pub fn configure(spec: &Spec) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| Error::io(format!("oom_score_adj {adj}"), e))?;
    }
    for rl in process.rlimits().as_deref().unwrap_or_default() {
        let name = serde_json::to_value(rl.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let resource = rlimit_resource(&name)
            .ok_or_else(|| Error::InvalidSpec(format!("unknown rlimit {name}")))?;
        let lim = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        // SAFETY: a valid resource number and a filled rlimit.
        if unsafe { libc::setrlimit(resource as _, &lim) } < 0 {
            return Err(Error::sys(
                format!("setrlimit {name} soft={} hard={}", rl.soft(), rl.hard()),
                nix::Error::last(),
            ));
        }
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    if !nnp {
        // Without no_new_privs the filter needs CAP_SYS_ADMIN: load it before dropping caps.
        seccomp::load(spec)?;
    }
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        // Checked at create: AppArmor is enabled. Takes effect at the exec.
        crate::lsm::apparmor_exec(profile)?;
    }
    drop_bounding(process)?;
    set_user(process)?;
    set_capabilities(process)?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(|e| Error::sys("no_new_privs", e))?;
    }
    Ok(())
}

/// The exec that [`prepare`] resolved.
pub struct Exec {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

impl Exec {
    /// execve; returns only the error.
    pub fn exec(self) -> Error {
        let e = nix::unistd::execve(&self.path, &self.args, &self.env).unwrap_err();
        Error::Exec {
            cmd: self.path.to_string_lossy().into_owned(),
            reason: e.desc().to_lowercase(),
        }
    }
}

/// Enter the working directory and resolve the executable as the container's user.
pub fn prepare(process: &Process) -> Result<Exec> {
    std::env::set_current_dir(process.cwd())
        .map_err(|e| Error::io(format!("chdir to cwd {}", process.cwd().display()), e))?;
    let args = process.args().as_deref().unwrap_or_default();
    let cmd = args
        .first()
        .ok_or_else(|| Error::InvalidSpec("process.args is empty".into()))?;
    let env = process.env().as_deref().unwrap_or_default();
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("");
    let path = lookup(cmd, path_var)?;
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| Error::InvalidSpec(format!("{s:?} contains a NUL byte")))
    };
    Ok(Exec {
        path: CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidSpec(format!("{cmd:?} contains a NUL byte")))?,
        args: args.iter().map(|a| cstr(a)).collect::<Result<_>>()?,
        env: env.iter().map(|a| cstr(a)).collect::<Result<_>>()?,
    })
}

/// Find `cmd` as execvp would: a name with a slash is taken as is, else searched in `path_var`.
fn lookup(cmd: &str, path_var: &str) -> Result<PathBuf> {
    let not_found = |reason: &str| Error::Exec {
        cmd: cmd.to_string(),
        reason: reason.to_string(),
    };
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if cmd.contains('/') {
        return match std::fs::metadata(cmd) {
            Err(_) => Err(not_found("no such file or directory in the container")),
            Ok(_) if !executable(Path::new(cmd)) => Err(not_found("permission denied")),
            Ok(_) => Ok(PathBuf::from(cmd)),
        };
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| executable(p))
        .ok_or_else(|| {
            not_found(&format!(
                "executable file not found in $PATH (PATH={path_var:?})"
            ))
        })
}

/// Drop from the bounding set every capability the spec does not list.
fn drop_bounding(process: &Process) -> Result<()> {
    let Some(c) = process.capabilities() else {
        return Ok(());
    };
    let keep = to_caps(c.bounding().as_ref());
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| Error::Init(format!("drop {cap} from the bounding set: {e}")))?;
        }
    }
    Ok(())
}

/// Switch to the spec's user, keeping the permitted capabilities across setuid.
fn set_user(process: &Process) -> Result<()> {
    let user = process.user();
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| Error::sys("setgroups", e))?;
    nix::sys::prctl::set_keepcaps(true).map_err(|e| Error::sys("PR_SET_KEEPCAPS", e))?;
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).map_err(|e| Error::sys(format!("setgid {gid}"), e))?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).map_err(|e| Error::sys(format!("setuid {uid}"), e))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| Error::sys("PR_SET_KEEPCAPS", e))
}

/// Set the effective, permitted, inheritable and ambient sets from the spec.
fn set_capabilities(process: &Process) -> Result<()> {
    let Some(c) = process.capabilities() else {
        return Ok(());
    };
    let set = |which: CapSet, caps: &CapsHashSet| {
        caps::set(None, which, caps)
            .map_err(|e| Error::Init(format!("set {which:?} capabilities: {e}")))
    };
    let effective = to_caps(c.effective().as_ref());
    let permitted = to_caps(c.permitted().as_ref());
    // Effective may only shrink to within the current permitted set, so order matters.
    set(
        CapSet::Effective,
        &effective
            .intersection(&caps::read(None, CapSet::Permitted).unwrap_or_default())
            .copied()
            .collect(),
    )?;
    set(CapSet::Permitted, &permitted)?;
    set(CapSet::Effective, &effective)?;
    set(CapSet::Inheritable, &to_caps(c.inheritable().as_ref()))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| Error::Init(format!("clear ambient: {e}")))?;
    for cap in to_caps(c.ambient().as_ref()) {
        caps::raise(None, CapSet::Ambient, cap)
            .map_err(|e| Error::Init(format!("raise ambient {cap}: {e}")))?;
    }
    Ok(())
}

/// The spec's capability names as `caps` values; names this build does not know are skipped.
fn to_caps(set: Option<&oci_spec::runtime::Capabilities>) -> CapsHashSet {
    let mut out = HashSet::new();
    for cap in set.into_iter().flatten() {
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if let Ok(c) = name.parse::<Capability>() {
            out.insert(c);
        }
    }
    out
}

/// The spec's capability names as a bit mask (bit n: capability number n).
pub fn capability_bits(set: Option<&oci_spec::runtime::Capabilities>) -> u64 {
    to_caps(set).iter().fold(0u64, |m, c| {
        m | 1u64.checked_shl(u32::from(c.index())).unwrap_or(0)
    })
}

/// The names of the capabilities whose bits are set in `mask` (`CAP_<n>` for unknown ones).
pub fn capability_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            caps::all()
                .into_iter()
                .find(|c| u32::from(c.index()) == bit)
                .map_or_else(|| format!("CAP_{bit}"), |c| c.to_string())
        })
        .collect()
}

/// setrlimit's resource number for an OCI rlimit name.
fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_searches_path_and_refuses_missing_commands() {
        assert_eq!(
            lookup("sh", "/nonexistent:/bin").unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = lookup("no-such-command-here", "/bin")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-command-here"), "{e}");
        let e = lookup("/no/such/cmd", "/bin").unwrap_err().to_string();
        assert!(e.contains("/no/such/cmd"), "{e}");
        assert!(lookup("sh", "").is_err());
    }

    #[test]
    fn rlimit_names_map() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("RLIMIT_BOGUS"), None);
    }

    #[test]
    fn capability_names_convert() {
        let mut set = HashSet::new();
        set.insert(oci_spec::runtime::Capability::NetBindService);
        set.insert(oci_spec::runtime::Capability::Chown);
        let caps = to_caps(Some(&set));
        assert!(caps.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(caps.contains(&Capability::CAP_CHOWN));
        assert_eq!(caps.len(), 2);
    }
}
