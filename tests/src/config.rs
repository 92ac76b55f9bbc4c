//! containerd's config for a private test daemon, per release: everything (root, state,
//! sockets, CNI, NRI) under the run's temp dir, the offline pause image pinned, and the cryo
//! runtime section taken verbatim from `examples/` so that the examples are what the suites
//! run. containerd 1.6 gets config version 2 (shared/ENVIRONMENT.md); containerd 2.x gets
//! version 3 with its default CRI settings (unprivileged ports and ICMP stay on).

use std::path::Path;

use crate::image::PAUSE_IMAGE;
use crate::release::Release;

/// The cryo runtime for containerd 1.6 (config version 2), as users merge it.
pub const EXAMPLE_V2: &str = include_str!("../../examples/containerd-cryo.toml");
/// The cryo runtime for containerd 2.x (config version 3), as users merge it.
pub const EXAMPLE_V3: &str = include_str!("../../examples/containerd2-cryo.toml");

/// The whole config for `release` with everything under `dir`.
pub fn for_release(release: Release, dir: &Path) -> String {
    match release {
        Release::V1_6 => v2(dir),
        Release::V2_2 => v3(dir),
    }
}

/// An example's body without its `version = N` line (the harness's config states it).
fn example_body(example: &str) -> String {
    example
        .lines()
        .filter(|l| !l.trim_start().starts_with("version"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn v2(dir: &Path) -> String {
    let t = dir.display();
    format!(
        r#"version = 2
root = "{t}/root"
state = "{t}/state"
[grpc]
  address = "{t}/c.sock"
[ttrpc]
  address = "{t}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{t}/cni/bin"
    conf_dir = "{t}/cni/net.d"
  # CRI refuses to load without its default runtime (runc) configured.
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"

# examples/containerd-cryo.toml
{example}
"#,
        example = example_body(EXAMPLE_V2),
    )
}

fn v3(dir: &Path) -> String {
    let t = dir.display();
    format!(
        r#"version = 3
root = "{t}/root"
state = "{t}/state"
# No drop-in files of the host's containerd.
imports = []
[grpc]
  address = "{t}/c.sock"
[ttrpc]
  address = "{t}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/opt"
# NRI is on by default in 2.x; its socket is private to this daemon.
[plugins."io.containerd.nri.v1.nri"]
  socket_path = "{t}/nri/nri.sock"
  plugin_path = "{t}/nri/plugins"
  plugin_config_path = "{t}/nri/conf.d"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{PAUSE_IMAGE}"
# CRI runtime settings are 2.x's defaults (enable_unprivileged_ports and
# enable_unprivileged_icmp on) but for what this machine needs.
[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  # Restore of a CheckpointContainer archive through CreateContainer (KEP-2008); off by
  # default, and containerd logs that it is deprecated (removal planned for v2.4).
  enable_experimental_restore_via_create = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{t}/cni/bin"]
    conf_dir = "{t}/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"

# examples/containerd2-cryo.toml
{example}
"#,
        example = example_body(EXAMPLE_V3),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_state_their_version_and_the_cryo_runtime() {
        for (example, version, section) in [
            (
                EXAMPLE_V2,
                "version = 2",
                r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cryo]"#,
            ),
            (
                EXAMPLE_V3,
                "version = 3",
                r#"[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.cryo]"#,
            ),
        ] {
            assert!(example.lines().any(|l| l.trim() == version), "{example}");
            assert!(example.contains(section), "{example}");
            assert!(example.contains(r#"runtime_type = "io.containerd.cryo.v2""#));
        }
        // 2.x's CRI defaults are not turned off for cryo.
        for config in [EXAMPLE_V3.to_string(), v3(Path::new("/t"))] {
            for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
                assert!(
                    !line.contains("enable_unprivileged"),
                    "the 2.x config changes a CRI default: {line}"
                );
            }
        }
    }
}
