//! Reading a bundle's OCI spec (`config.json`). Every error names the file; the fields whose
//! values are names from a fixed list (the seccomp profile's actions, architectures, flags and
//! operators) are named with their place and value (`linux.seccomp.syscalls[3].action:
//! SCMP_ACT_FOO is not supported`); any other mistake keeps serde's own message, which names
//! the value and its line and column.

use std::path::Path;

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};
use crate::init::seccomp;

/// The spec in `path`.
pub fn load(path: &Path) -> Result<Spec> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    parse(&bytes).map_err(|e| match e {
        Error::InvalidSpec(msg) => Error::InvalidSpec(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// The spec in `bytes` of JSON.
pub fn parse(bytes: &[u8]) -> Result<Spec> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidSpec(format!("not valid JSON: {e}")))?;
    seccomp::check_names(&value["linux"]["seccomp"])?;
    serde_json::from_slice(bytes).map_err(|e| Error::InvalidSpec(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_seccomp(seccomp: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","process":{{"args":["true"],"cwd":"/",
                "user":{{"uid":0,"gid":0}}}},"root":{{"path":"rootfs"}},
                "linux":{{"seccomp":{seccomp}}}}}"#
        )
    }

    #[test]
    fn unknown_seccomp_names_are_named_with_their_place() {
        let cases = [
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["read"],"action":"SCMP_ACT_ERRNO"},
                    {"names":["write"],"action":"SCMP_ACT_FOO"}]}"#,
                "linux.seccomp.syscalls[1].action: SCMP_ACT_FOO is not supported",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_BAR"}"#,
                "linux.seccomp.defaultAction: SCMP_ACT_BAR is not supported",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_Z80"]}"#,
                "linux.seccomp.architectures[1]: SCMP_ARCH_Z80 is not supported",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
                    "action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_XX"}]}]}"#,
                "linux.seccomp.syscalls[0].args[0].op: SCMP_CMP_XX is not supported",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_NOPE"]}"#,
                "linux.seccomp.flags[0]: SECCOMP_FILTER_FLAG_NOPE is not supported",
            ),
        ];
        for (seccomp, want) in cases {
            let e = parse(with_seccomp(seccomp).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn other_mistakes_keep_serde_s_message() {
        let e = parse(br#"{"ociVersion":"1.0.2","process":{"args":"true"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type") && e.contains("line 1"), "{e}");
        let e = parse(b"{").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn a_good_spec_loads() {
        let spec = parse(with_seccomp(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).as_bytes()).unwrap();
        assert!(spec.linux().as_ref().unwrap().seccomp().is_some());
        let dir = tempfile::tempdir().unwrap();
        let e = load(&dir.path().join("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
