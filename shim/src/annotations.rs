//! Every OCI spec annotation key the shim reads, and the rules that use them (one place).

use oci_spec::runtime::Spec;

/// The pod (sandbox) a CRI container belongs to; the shim groups a pod by it.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// `sandbox` for a pod's sandbox (pause) container, `container` for its app containers.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The value of [`CONTAINER_TYPE`] for the sandbox container.
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
/// The pod's uid (kubelet's volume directories are `<root>/pods/<uid>/volumes/...`).
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// The pod's Kubernetes namespace (set by CRI; pod annotations cannot set it).
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// An app container's name within its pod.
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// Pod annotation: restore the filesystem checkpoint in this directory (or the one its
/// `latest` link names) into the new pod (see `crate::fs_restore`).
pub const FS_RESTORE_IMAGE_PATH: &str = "dev.cryo.fs-restore.image-path";
/// Pod annotation: when a restore checks a section's file data — `full` (default: the whole
/// section is read and its checksum checked before the container starts) or `on-read` (with
/// the checkpoint's block hashes, only the blocks holding headers before; each block of file
/// data when it is read).
pub const FS_RESTORE_VERIFY: &str = "dev.cryo.fs-restore.verify";

/// Pod volume hints: `dev.cryo.spec.mount.<volume>.{source,type,share,options}`
/// (see `crate::volumes::rules` for what they mean).
pub const MOUNT_PREFIX: &str = "dev.cryo.spec.mount.";
/// gVisor's spelling of the same hints, accepted as aliases.
pub const GVISOR_MOUNT_PREFIX: &str = "dev.gvisor.spec.mount.";

/// The in-container filesystem checkpoint trigger: `dev.cryo.fscheckpoint.<setting>` (see
/// `crate::trigger::config` for the settings and their values).
pub const FSCHECKPOINT_PREFIX: &str = "dev.cryo.fscheckpoint.";
/// gVisor's spelling of the same settings, accepted as aliases.
pub const GVISOR_FSCHECKPOINT_PREFIX: &str = "dev.gvisor.internal.fscheckpoint.";

/// One annotation of `spec`, if set and not empty.
pub fn get<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// The id that decides which shim serves a container: its pod's sandbox id when CRI created it,
/// else its own id (one shim per container, as with `ctr`).
pub fn grouping(spec: Option<&Spec>, id: &str) -> String {
    spec.and_then(|s| s.annotations().as_ref())
        .and_then(|a| a.get(SANDBOX_ID))
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec_with(annotations: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        let map: HashMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        spec.set_annotations(Some(map));
        spec
    }

    #[test]
    fn grouping_uses_the_sandbox_id_of_cri_containers() {
        let spec = spec_with(&[
            (SANDBOX_ID, "pod1"),
            ("io.kubernetes.cri.container-type", "container"),
        ]);
        assert_eq!(grouping(Some(&spec), "app"), "pod1");
    }

    #[test]
    fn grouping_falls_back_to_the_container_id() {
        assert_eq!(grouping(Some(&spec_with(&[])), "c1"), "c1");
        assert_eq!(grouping(Some(&spec_with(&[(SANDBOX_ID, "")])), "c1"), "c1");
        assert_eq!(grouping(None, "c1"), "c1");
    }
}
