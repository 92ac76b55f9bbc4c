//! The volume rules, pure: from a pod's mount annotations, its uid and one container's OCI
//! mounts, decide each annotated volume's [`Shape`] (with the reason, for the log), and rewrite
//! the container's mounts once the engine has placed the volumes. No I/O here: the emptyDir's
//! medium is asked of a callback, the places of overlays are given.
//!
//! Annotations (pod annotations that CRI copies into every container's spec when the runtime
//! handler lists them in `pod_annotations`):
//!
//! | key | values |
//! |---|---|
//! | `dev.cryo.spec.mount.<volume>.source` | the volume's host path (optional: else found by name) |
//! | `dev.cryo.spec.mount.<volume>.type` | `bind` or `tmpfs` |
//! | `dev.cryo.spec.mount.<volume>.share` | `container` (default), `pod` or `shared` |
//! | `dev.cryo.spec.mount.<volume>.options` | mount flags, comma-separated (`ro`, `noexec`, ...) |
//!
//! The same keys under `dev.gvisor.spec.mount.<volume>.` are aliases (pods written for gVisor
//! work unchanged); giving one field under both prefixes with different values is an error.
//!
//! Shapes, by hint (the backing of every shape but `tmpfs` is the emptyDir's own medium:
//! a disk emptyDir stays on disk, a `Memory` emptyDir — a tmpfs kubelet mounted — stays in RAM):
//!
//! | hint | shape | what the container gets |
//! |---|---|---|
//! | none | [`Shape::Bind`] | a bind of the emptyDir directory, as with runc |
//! | `share=pod`, `type=bind` or `tmpfs` | [`Shape::PodOverlay`] | a bind of ONE overlay per pod whose upper and work dirs live in the emptyDir (`.cryo-filestore/pod`): every container of the pod sees the others' writes at once, on disk, captured by filesystem checkpoints |
//! | `type=bind`, `share=container` (or no share) | [`Shape::ContainerOverlay`] | the same disk-backed overlay, private to the container (`.cryo-filestore/container-<name>`) |
//! | `type=tmpfs`, `share=container` (or no share) | [`Shape::Tmpfs`] | a memory-backed tmpfs private to the container (gVisor's meaning) |
//! | `share=shared` | [`Shape::SharedBind`] | a plain bind shared with the host; NOT captured by filesystem checkpoints |
//!
//! Unlike gVisor, `type=tmpfs` + `share=pod` does NOT become memory-backed: the pod overlay
//! follows the emptyDir's medium (the point of cryo's shape: a large shared workspace on disk).
//! The decision is made once per pod, when the first container mounting the volume is
//! created, and reused for later containers (gVisor decides again per container by looking
//! whether the directory is empty; cryo never does).
//!
//! The stages, one file each: [`hints`] parses the annotations, [`kubelet`] reads kubelet's
//! volume paths, [`decision`] finds each hinted volume in a container and decides its shape
//! once per pod, [`rewrite`] points the container's mounts at what the engine placed. The
//! public names are re-exported here.

mod decision;
mod error;
mod hints;
mod kubelet;
mod rewrite;
#[cfg(test)]
mod test_support;

pub use decision::{plan, validate_pod, Decision, Medium, Shape};
pub(crate) use kubelet::bind_source;
pub use rewrite::{rewrite, Placement};
// The rest of the former `rules.rs`'s public names, kept at `rules::` for callers that name
// them (none in the shim today).
#[allow(unused_imports)]
pub use {
    decision::{decide, locate},
    error::RuleError,
    hints::{parse_hints, Hint, HintType, Share},
    kubelet::{kubelet_volume, KubeletVolume, EMPTY_DIR_PLUGIN},
};
