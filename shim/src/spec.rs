//! Reading what containerd hands the shim as JSON (the bundle's config.json, an exec's process,
//! Update's resources). Every value is hostile until parsed: a parse error names the file or
//! request, the field's path and the value (`process.rlimits[0].type: RLIMIT_FOO: unknown
//! value, expected one of ...`), never just "invalid argument".

use std::path::Path;

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The bundle's config.json.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    parse(&bytes).map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
}

/// The process spec of an Exec request.
pub fn process(exec_id: &str, bytes: &[u8]) -> Result<Process> {
    parse(bytes).map_err(|e| Error::InvalidArgument(format!("exec {exec_id}: process spec: {e}")))
}

/// The resources of an Update request.
pub fn resources(id: &str, bytes: &[u8]) -> Result<LinuxResources> {
    parse(bytes).map_err(|e| Error::InvalidArgument(format!("update {id}: resources: {e}")))
}

/// Parse JSON; the error starts with the path of the field that failed.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde says "unknown variant `X`, expected ...": put the value next to its field.
        let message = match inner
            .strip_prefix("unknown variant `")
            .and_then(|rest| rest.split_once('`'))
        {
            Some((value, expected)) => format!("{value}: unknown value{expected}"),
            None => inner,
        };
        if path == "." {
            message
        } else {
            format!("{path}: {message}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut spec = serde_json::to_value(Spec::default()).unwrap();
        edit(&mut spec);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();
        load(dir.path()).unwrap_err().to_string()
    }

    #[test]
    fn a_bad_rlimit_type_names_the_field_and_the_value() {
        let e = spec_error(|s| {
            s["process"]["rlimits"] =
                serde_json::json!([{"type": "RLIMIT_FOO", "hard": 1, "soft": 1}]);
        });
        assert!(
            e.contains("process.rlimits[0].type: RLIMIT_FOO: unknown value, expected"),
            "{e}"
        );
        assert!(e.contains("config.json"), "{e}");
    }

    #[test]
    fn a_bad_capability_names_the_field_and_the_value() {
        let e = spec_error(|s| {
            s["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_CHOWN", "CAP_FOO"]);
        });
        assert!(e.contains("process.capabilities.bounding[1]: "), "{e}");
        assert!(e.contains("CAP_FOO"), "{e}");
    }

    #[test]
    fn bad_seccomp_names_name_the_field_and_the_value() {
        let cases = [
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_FOO"}),
                "linux.seccomp.defaultAction: SCMP_ACT_FOO",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                    {"names": ["mkdir"], "action": "SCMP_ACT_BAR"}]}),
                "linux.seccomp.syscalls[1].action: SCMP_ACT_BAR",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_Z80"]}),
                "linux.seccomp.architectures[1]: SCMP_ARCH_Z80",
            ),
        ];
        for (profile, expected) in cases {
            let e = spec_error(|s| s["linux"]["seccomp"] = profile);
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn exec_and_update_errors_name_the_field() {
        let e = process("e1", br#"{"args":["sh"],"cwd":"/","user":{"uid":"root"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("exec e1: process spec: user.uid: invalid type"),
            "{e}"
        );
        let e = resources("c1", br#"{"memory":{"limit":"lots"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("update c1: resources: memory.limit: invalid type"),
            "{e}"
        );
        let e = resources("c1", b"not json").unwrap_err().to_string();
        assert!(e.starts_with("update c1: resources: expected"), "{e}");
    }
}
