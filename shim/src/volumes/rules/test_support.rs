//! What the volume rules' tests share: annotations from pairs, a kubelet emptyDir path of the
//! test pod, a container's bind mount.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::kubelet::EMPTY_DIR_PLUGIN;

pub const UID: &str = "0b5c-uid";

pub fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn empty_dir(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/var/lib/kubelet/pods/{UID}/volumes/{EMPTY_DIR_PLUGIN}/{name}"
    ))
}

pub fn bind(dest: &str, source: &Path) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            "rprivate".to_string(),
            "rw".to_string(),
        ])
        .build()
        .unwrap()
}
