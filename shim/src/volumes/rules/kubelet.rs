//! Stage 2: kubelet's volume paths (`<root>/pods/<uid>/volumes/<plugin>/<name>`): which pod
//! and plugin a directory belongs to, and the source of a container's bind mount.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;

/// kubelet's directory name for emptyDir volumes (`.../pods/<uid>/volumes/<this>/<name>`).
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// Only normal components after the root (no `.`, no `..`).
pub(super) fn is_normal(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The pieces of a kubelet volume path `<root>/pods/<uid>/volumes/<plugin>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletVolume<'a> {
    pub uid: &'a str,
    pub plugin: &'a str,
    pub name: &'a str,
}

/// `path` as a kubelet volume directory, if it is one.
pub fn kubelet_volume(path: &Path) -> Option<KubeletVolume<'_>> {
    if !path.is_absolute() || !is_normal(path) {
        return None;
    }
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let n = parts.len();
    if n < 5 || parts[n - 5] != "pods" || parts[n - 3] != "volumes" {
        return None;
    }
    Some(KubeletVolume {
        uid: parts[n - 4],
        plugin: parts[n - 2],
        name: parts[n - 1],
    })
}

/// Whether `path` is one of this pod's volume directories (any pod's when the uid is unknown).
pub(super) fn is_pod_volume(path: &Path, pod_uid: Option<&str>) -> bool {
    kubelet_volume(path).is_some_and(|v| pod_uid.is_none_or(|uid| v.uid == uid))
}

/// The source of a bind mount, normalised (no trailing `/`).
pub(crate) fn bind_source(m: &Mount) -> Option<PathBuf> {
    let is_bind = m.typ().as_deref() == Some("bind")
        || m.options()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o == "bind" || o == "rbind");
    if !is_bind {
        return None;
    }
    m.source().as_ref().map(|s| s.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::rules::test_support::{empty_dir, UID};

    #[test]
    fn kubelet_paths_parse() {
        let path = empty_dir("ws");
        let v = kubelet_volume(&path).unwrap();
        assert_eq!((v.uid, v.plugin, v.name), (UID, EMPTY_DIR_PLUGIN, "ws"));
        assert!(kubelet_volume(Path::new("/pods/u/volumes/p")).is_none());
        assert!(kubelet_volume(Path::new("/a/pods/u/volumes/p/../x")).is_none());
    }
}
