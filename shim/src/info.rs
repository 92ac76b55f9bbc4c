//! `containerd-shim-cryo-v2 -info`: what containerd 2.x asks a shim binary before it uses it
//! (`core/runtime/v2` TaskManager.PluginInfo runs `SHIM -info` with the runtime options on
//! stdin and decodes stdout as a `containerd.types.RuntimeInfo` protobuf). The answer names
//! the runtime, its version, and the OCI runtime features cryo implements (the runtime-spec
//! `features` document, as an `Any` with the type URL runc's shim uses). It is answered before
//! any runtime or environment setup.

use std::io::{IsTerminal, Read, Write};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use serde_json::json;

use crate::RUNTIME_ID;

/// The type URL containerd decodes the features document by.
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The shim's flags that take a value (the value is never a flag itself).
const VALUE_FLAGS: &[&str] = &[
    "namespace",
    "id",
    "address",
    "publish-binary",
    "bundle",
    "socket",
];

/// Whether the command line asks for `-info`, read as Go's flag package reads it: one or two
/// dashes, optionally `=true`, among the flags before the first positional argument, and never
/// as the value of a flag such as `-id`.
pub fn requested<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> bool {
    let mut args = args.iter().skip(1).map(|a| a.as_ref().to_str());
    while let Some(Some(arg)) = args.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return false;
        };
        if matches!(flag, "info" | "info=true") {
            return true;
        }
        if VALUE_FLAGS.contains(&flag) {
            args.next();
        }
    }
    false
}

/// Answer `-info` on stdout and exit: 0 once the answer is written, 1 (with the reason on
/// stderr) otherwise.
pub fn answer() -> ! {
    // containerd writes the runtime's options (if any) on stdin; cryo takes none. Read them
    // so the writer never blocks, unless a person runs this at a terminal.
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let _ = stdin.lock().read_to_end(&mut Vec::new());
    }
    let result = encode().and_then(|bytes| {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        out.flush()
    });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{RUNTIME_ID}: -info: {e}");
            std::process::exit(1);
        }
    }
}

/// The RuntimeInfo protobuf.
pub fn encode() -> std::io::Result<Vec<u8>> {
    runtime_info()
        .write_to_bytes()
        .map_err(|e| std::io::Error::other(format!("encode RuntimeInfo: {e}")))
}

fn runtime_info() -> RuntimeInfo {
    RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }),
        features: MessageField::some(Any {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: features().to_string().into_bytes(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The runtime-spec `features` document for what cryo's engine implements: no hooks, the
/// mount flags and propagation words it knows (no `rro`, no id-mapped mounts), every
/// namespace but the user namespace, cgroup v1 and v2 through cgroupfs (no systemd driver),
/// seccomp without `SCMP_ACT_NOTIFY`, no AppArmor or SELinux labelling.
pub fn features() -> serde_json::Value {
    let capabilities: Vec<String> = {
        let mut all: Vec<caps::Capability> = caps::all().into_iter().collect();
        all.sort_by_key(|c| c.index());
        all.iter().map(|c| c.to_string()).collect()
    };
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": capabilities,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE", "SCMP_ACT_TRAP",
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                    "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE",
                ],
                "archs": SECCOMP_ARCHS,
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
    })
}

/// Mount option words the engine applies (`sandbox/src/mount.rs`).
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// Architectures libseccomp resolves for a profile's `architectures`.
const SECCOMP_ARCHS: &[&str] = &[
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_recognised_in_go_flag_forms_only() {
        for args in [
            &["shim", "-info"][..],
            &["shim", "--info"],
            &["shim", "-info=true"],
            &["shim", "-debug", "-info"],
        ] {
            assert!(requested(args), "{args:?}");
        }
        for args in [
            &["shim"][..],
            &["shim", "-id", "x", "start"],
            &["shim", "-information"],
            &["shim", "-info=false"],
            // A flag's value, or an argument after the action, is not the flag.
            &["shim", "-id", "-info", "start"],
            &["shim", "-namespace", "--info", "delete"],
            &["shim", "start", "-info"],
        ] {
            assert!(!requested(args), "{args:?}");
        }
        // argv[0] is the program, never a flag.
        assert!(!requested(&["-info"]));
    }

    /// The bytes decode as containerd decodes them: RuntimeInfo with cryo's name and version,
    /// and a features Any whose JSON is a runtime-spec features document.
    #[test]
    fn encoding_decodes_as_runtime_info_with_features() {
        let bytes = encode().unwrap();
        let info = RuntimeInfo::parse_from_bytes(&bytes).unwrap();
        assert_eq!(info.name, "io.containerd.cryo.v2");
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        let f: oci_spec::runtime::Features = serde_json::from_slice(&info.features.value)
            .expect("features decode as the runtime-spec document");
        assert_eq!(f.oci_version_min(), "1.0.0");
        assert_eq!(f.hooks().as_deref(), Some(&[][..]), "cryo runs no hooks");
        let mounts = f.mount_options().clone().unwrap_or_default();
        assert!(mounts.iter().any(|m| m == "rbind"));
        // containerd's CRI turns on recursive read-only mounts when a runtime lists "rro":
        // cryo does not implement it.
        assert!(!mounts.iter().any(|m| m == "rro"), "{mounts:?}");
        let linux = f.linux().clone().unwrap();
        let ns = linux.namespaces().clone().unwrap();
        assert!(
            !ns.contains(&oci_spec::runtime::LinuxNamespaceType::User),
            "{ns:?}"
        );
        let caps = linux.capabilities().clone().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{caps:?}");
        let seccomp = linux.seccomp().clone().unwrap();
        let actions = seccomp.actions().clone().unwrap();
        assert!(
            !actions.contains(&oci_spec::runtime::LinuxSeccompAction::ScmpActNotify),
            "{actions:?}"
        );
    }

    /// Raw wire check against the field numbers of containerd's introspection.proto (name 1,
    /// version 2, features 4), independent of the generated code.
    #[test]
    fn wire_fields_are_containerds() {
        let bytes = encode().unwrap();
        // Field 1, wire type 2 (length-delimited), then the name.
        assert_eq!(bytes[0], (1 << 3) | 2);
        assert_eq!(bytes[1] as usize, RUNTIME_ID.len());
        assert_eq!(&bytes[2..2 + RUNTIME_ID.len()], RUNTIME_ID.as_bytes());
        let rest = &bytes[2 + RUNTIME_ID.len()..];
        assert_eq!(rest[0], (2 << 3) | 2, "version is field 2");
        let after_version = &rest[2 + rest[1] as usize..];
        assert_eq!(after_version[0], (4 << 3) | 2, "features is field 4");
    }
}
