//! Every OCI spec annotation key the shim reads, and the rules that use them (one place).

use oci_spec::runtime::Spec;

/// The pod (sandbox) a CRI container belongs to; the shim groups a pod by it.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

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
