//! Stage 3: the per-pod decision. Each hinted volume is found among a container's mounts
//! (by its source, or by name among this pod's kubelet volume paths), and its [`Shape`] and
//! backing [`Medium`] decided once per pod, with the reason for the log; the pod's hints
//! alone are checked when the pause container is created.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount;

use super::error::{refuse, RuleError};
use super::hints::{parse_hints, Hint, HintType, Share};
use super::kubelet::{bind_source, is_pod_volume, kubelet_volume, EMPTY_DIR_PLUGIN};
use crate::annotations::MOUNT_PREFIX;

/// What a volume becomes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Bind,
    PodOverlay,
    ContainerOverlay,
    Tmpfs,
    SharedBind,
}

/// Where the bytes of a volume live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Disk,
    Memory,
}

impl fmt::Display for Medium {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Medium::Disk => "disk",
            Medium::Memory => "memory",
        })
    }
}

/// A volume's shape, decided once per pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub volume: String,
    /// The volume's host directory (kubelet's).
    pub source: PathBuf,
    pub shape: Shape,
    /// Where its bytes live.
    pub backing: Medium,
    /// Extra mount flags from the `options` hint.
    pub options: Vec<String>,
    /// Why, in words, for the log.
    pub reason: String,
}

/// Where one hinted volume is in this container: its source, or `None` if the container does
/// not mount it. A hint without a source is found by name among the container's mounts of
/// this pod's kubelet volume paths.
pub fn locate(
    hint: &Hint,
    mounts: &[Mount],
    pod_uid: Option<&str>,
) -> Result<Option<PathBuf>, RuleError> {
    if let Some(source) = &hint.source {
        if !is_pod_volume(source, pod_uid) {
            return Err(outside(hint, source, pod_uid));
        }
        let used = mounts
            .iter()
            .any(|m| bind_source(m).as_deref() == Some(source.as_path()));
        return Ok(used.then(|| source.clone()));
    }
    let mut found: Vec<PathBuf> = mounts
        .iter()
        .filter_map(bind_source)
        .filter(|s| is_pod_volume(s, pod_uid))
        .filter(|s| kubelet_volume(s).is_some_and(|v| v.name == hint.name))
        .collect();
    found.sort();
    found.dedup();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(refuse(
            format!("{MOUNT_PREFIX}{}.source", hint.name),
            format!(
                "missing, and the name matches several volume paths ({}): give the source",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Decide the shape of `hint`'s volume at `source` whose medium is `medium`.
pub fn decide(hint: &Hint, source: &Path, medium: Medium) -> Result<Decision, RuleError> {
    let hinted = hint.typ.is_some() || hint.share.is_some();
    let is_empty_dir = kubelet_volume(source).is_some_and(|v| v.plugin == EMPTY_DIR_PLUGIN);
    let share = hint.share.unwrap_or(Share::Container);
    let (shape, why) = match (hint.typ, share) {
        (None, _) => (Shape::Bind, "no type/share hint: a plain bind, as with runc".to_string()),
        (Some(_), Share::Shared) => (
            Shape::SharedBind,
            "share=shared: a plain bind shared with the host, not captured by filesystem checkpoints".to_string(),
        ),
        (Some(t), Share::Pod) => (
            Shape::PodOverlay,
            format!(
                "share=pod (type={}): one overlay for the pod, upper and work dirs in the volume's .cryo-filestore, bound into every container that mounts it{}",
                if t == HintType::Tmpfs { "tmpfs" } else { "bind" },
                if t == HintType::Tmpfs {
                    "; type=tmpfs does not move it to RAM (unlike gVisor): the backing follows the emptyDir medium"
                } else {
                    ""
                }
            ),
        ),
        (Some(HintType::Bind), Share::Container) => (
            Shape::ContainerOverlay,
            "type=bind, share=container: an overlay private to the container, upper and work dirs in the volume's .cryo-filestore".to_string(),
        ),
        (Some(HintType::Tmpfs), Share::Container) => (
            Shape::Tmpfs,
            "type=tmpfs without share=pod: a tmpfs private to the container (gVisor's meaning)".to_string(),
        ),
    };
    if hinted && !is_empty_dir && !matches!(shape, Shape::Bind | Shape::SharedBind) {
        return Err(refuse(
            format!("{MOUNT_PREFIX}{}.type", hint.name),
            format!(
                "{} is not an emptyDir (…/volumes/{EMPTY_DIR_PLUGIN}/<name>): only share=shared or no hint apply",
                source.display()
            ),
        ));
    }
    let backing = if shape == Shape::Tmpfs {
        Medium::Memory
    } else {
        medium
    };
    Ok(Decision {
        volume: hint.name.clone(),
        source: source.to_path_buf(),
        shape,
        backing,
        options: hint.options.clone(),
        reason: format!("{why}; backing: {backing} (emptyDir medium: {medium})"),
    })
}

/// What can be checked of the pod's hints before any app container exists, when the pause
/// container is created (containerd's CRI reaches the runtime at RunPodSandbox and
/// StartContainer, never at CreateContainer): every key parses, every given source is a
/// volume directory of this pod, and overlay or tmpfs hints name an emptyDir.
pub fn validate_pod(
    annotations: &HashMap<String, String>,
    pod_uid: Option<&str>,
) -> Result<(), RuleError> {
    for hint in parse_hints(annotations)?.values() {
        let Some(source) = &hint.source else {
            continue;
        };
        if !is_pod_volume(source, pod_uid) {
            return Err(outside(hint, source, pod_uid));
        }
        decide(hint, source, Medium::Disk)?;
    }
    Ok(())
}

fn outside(hint: &Hint, source: &Path, pod_uid: Option<&str>) -> RuleError {
    refuse(
        format!("{MOUNT_PREFIX}{}.source", hint.name),
        format!(
            "{} is not a volume directory of this pod (<kubelet>/pods/{}/volumes/<plugin>/<name>)",
            source.display(),
            pod_uid.unwrap_or("<uid>")
        ),
    )
}

/// Every annotated volume this container mounts, decided (or taken from `decided`, the pod's
/// earlier decisions: a volume is decided once per pod). Returns the decisions this container
/// needs; new ones are marked `true`. Nothing is decided unless every annotation is valid.
pub fn plan(
    annotations: &HashMap<String, String>,
    mounts: &[Mount],
    pod_uid: Option<&str>,
    decided: &HashMap<String, Decision>,
    medium: &dyn Fn(&Path) -> Medium,
) -> Result<Vec<(Decision, bool)>, RuleError> {
    let hints = parse_hints(annotations)?;
    let mut located = Vec::new();
    for hint in hints.values() {
        if let Some(source) = locate(hint, mounts, pod_uid)? {
            located.push((hint, source));
        }
    }
    let mut out = Vec::new();
    for (hint, source) in located {
        match decided.get(&hint.name) {
            Some(d) if d.source == source => out.push((d.clone(), false)),
            Some(d) => {
                return Err(refuse(
                    format!("{MOUNT_PREFIX}{}.source", hint.name),
                    format!(
                        "the pod decided this volume for {}, this container mounts {}",
                        d.source.display(),
                        source.display()
                    ),
                ))
            }
            None => out.push((decide(hint, &source, medium(&source))?, true)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::rules::test_support::{ann, bind, empty_dir, UID};

    fn disk(_: &Path) -> Medium {
        Medium::Disk
    }

    fn memory(_: &Path) -> Medium {
        Medium::Memory
    }

    /// A first plan of `mounts` with `ws` hinted `type=tmpfs`, `share=pod`, on disk.
    fn plan_pod_ws(mounts: &[Mount]) -> Vec<(Decision, bool)> {
        let a = ann(&[
            ("dev.cryo.spec.mount.ws.type", "tmpfs"),
            ("dev.cryo.spec.mount.ws.share", "pod"),
        ]);
        plan(&a, mounts, Some(UID), &HashMap::new(), &disk).unwrap()
    }

    /// The single decision for volume `ws` mounted at /workspace.
    fn decide_ws(
        pairs: &[(&str, &str)],
        medium: &dyn Fn(&Path) -> Medium,
    ) -> Result<Decision, RuleError> {
        let mounts = [bind("/workspace", &empty_dir("ws"))];
        let mut plan = plan(&ann(pairs), &mounts, Some(UID), &HashMap::new(), medium)?;
        assert_eq!(plan.len(), 1, "{plan:?}");
        let (d, new) = plan.pop().unwrap();
        assert!(new);
        Ok(d)
    }

    #[test]
    fn no_hint_is_a_plain_bind() {
        let src = empty_dir("ws");
        let s = src.to_str().unwrap();
        let d = decide_ws(&[("dev.cryo.spec.mount.ws.source", s)], &disk).unwrap();
        assert_eq!(d.shape, Shape::Bind);
        assert_eq!(d.backing, Medium::Disk);
        assert!(d.reason.contains("plain bind"), "{}", d.reason);
    }

    #[test]
    fn unannotated_volumes_are_not_touched() {
        let mounts = [bind("/workspace", &empty_dir("ws"))];
        let plan = plan(&ann(&[]), &mounts, Some(UID), &HashMap::new(), &disk).unwrap();
        assert!(plan.is_empty());
    }

    #[test]
    fn share_pod_is_a_pod_overlay_on_disk_for_tmpfs_and_bind() {
        for typ in ["tmpfs", "bind"] {
            let d = decide_ws(
                &[
                    ("dev.cryo.spec.mount.ws.type", typ),
                    ("dev.cryo.spec.mount.ws.share", "pod"),
                ],
                &disk,
            )
            .unwrap();
            assert_eq!(d.shape, Shape::PodOverlay);
            assert_eq!(d.backing, Medium::Disk, "type={typ} stays on disk");
            assert_eq!(d.source, empty_dir("ws"));
        }
    }

    #[test]
    fn share_pod_on_a_memory_empty_dir_stays_in_memory() {
        let d = decide_ws(
            &[
                ("dev.cryo.spec.mount.ws.type", "tmpfs"),
                ("dev.cryo.spec.mount.ws.share", "pod"),
            ],
            &memory,
        )
        .unwrap();
        assert_eq!(d.shape, Shape::PodOverlay);
        assert_eq!(d.backing, Medium::Memory);
    }

    #[test]
    fn share_container_bind_is_a_private_overlay() {
        let d = decide_ws(
            &[
                ("dev.cryo.spec.mount.ws.type", "bind"),
                ("dev.cryo.spec.mount.ws.share", "container"),
            ],
            &disk,
        )
        .unwrap();
        assert_eq!(d.shape, Shape::ContainerOverlay);
        assert_eq!(d.backing, Medium::Disk);
        // share defaults to container
        let d = decide_ws(&[("dev.cryo.spec.mount.ws.type", "bind")], &disk).unwrap();
        assert_eq!(d.shape, Shape::ContainerOverlay);
    }

    #[test]
    fn tmpfs_without_share_pod_is_a_private_tmpfs_in_memory() {
        for pairs in [
            &[("dev.cryo.spec.mount.ws.type", "tmpfs")][..],
            &[
                ("dev.cryo.spec.mount.ws.type", "tmpfs"),
                ("dev.cryo.spec.mount.ws.share", "container"),
            ][..],
        ] {
            let d = decide_ws(pairs, &disk).unwrap();
            assert_eq!(d.shape, Shape::Tmpfs);
            assert_eq!(d.backing, Medium::Memory);
        }
    }

    #[test]
    fn share_shared_is_a_plain_bind_not_captured() {
        let d = decide_ws(
            &[
                ("dev.cryo.spec.mount.ws.type", "bind"),
                ("dev.cryo.spec.mount.ws.share", "shared"),
            ],
            &disk,
        )
        .unwrap();
        assert_eq!(d.shape, Shape::SharedBind);
        assert!(d.reason.contains("not captured"), "{}", d.reason);
    }

    #[test]
    fn missing_source_is_found_by_name() {
        let mounts = [
            bind("/other", &empty_dir("other")),
            bind("/workspace", &empty_dir("ws")),
            bind(
                "/etc/hosts",
                Path::new("/var/lib/containerd/sandboxes/x/hosts"),
            ),
        ];
        let plan = plan(
            &ann(&[
                ("dev.gvisor.spec.mount.ws.type", "tmpfs"),
                ("dev.gvisor.spec.mount.ws.share", "pod"),
            ]),
            &mounts,
            Some(UID),
            &HashMap::new(),
            &disk,
        )
        .unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].0.source, empty_dir("ws"));
        assert_eq!(plan[0].0.volume, "ws");
    }

    #[test]
    fn a_container_without_the_volume_gets_no_decision() {
        let mounts = [bind("/other", &empty_dir("other"))];
        assert!(plan_pod_ws(&mounts).is_empty());
    }

    #[test]
    fn another_pods_volume_is_not_found_by_name() {
        let other = PathBuf::from(format!(
            "/var/lib/kubelet/pods/other-uid/volumes/{EMPTY_DIR_PLUGIN}/ws"
        ));
        let mounts = [bind("/workspace", &other)];
        assert!(plan_pod_ws(&mounts).is_empty());
    }

    #[test]
    fn the_decision_is_made_once_per_pod() {
        let mounts = [bind("/workspace", &empty_dir("ws"))];
        let first = plan_pod_ws(&mounts);
        let a = ann(&[
            ("dev.cryo.spec.mount.ws.type", "tmpfs"),
            ("dev.cryo.spec.mount.ws.share", "pod"),
        ]);
        let decided: HashMap<String, Decision> = first
            .iter()
            .map(|(d, _)| (d.volume.clone(), d.clone()))
            .collect();
        // A later container: the medium is not asked again, the decision is reused.
        let again = plan(&a, &mounts, Some(UID), &decided, &|_| {
            panic!("decided twice")
        })
        .unwrap();
        assert_eq!(again, vec![(first[0].0.clone(), false)]);
    }

    #[test]
    fn sources_outside_the_pods_volume_dirs_are_refused() {
        for source in [
            "/etc".to_string(),
            "/var/lib/kubelet/pods/other-uid/volumes/kubernetes.io~empty-dir/ws".to_string(),
            format!("/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/ws/../../../../x"),
            format!("/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/ws/sub"),
            "relative/pods/u/volumes/p/ws".to_string(),
        ] {
            let mounts = [bind("/workspace", Path::new(&source))];
            let r = plan(
                &ann(&[
                    ("dev.cryo.spec.mount.ws.source", &source),
                    ("dev.cryo.spec.mount.ws.type", "bind"),
                ]),
                &mounts,
                Some(UID),
                &HashMap::new(),
                &disk,
            );
            assert_eq!(
                r.unwrap_err().key,
                "dev.cryo.spec.mount.ws.source",
                "{source}"
            );
        }
    }

    #[test]
    fn overlay_and_tmpfs_shapes_are_for_empty_dirs_only() {
        let cm = PathBuf::from(format!(
            "/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~configmap/ws"
        ));
        let mounts = [bind("/workspace", &cm)];
        let a = ann(&[
            ("dev.cryo.spec.mount.ws.type", "tmpfs"),
            ("dev.cryo.spec.mount.ws.share", "pod"),
        ]);
        let e = plan(&a, &mounts, Some(UID), &HashMap::new(), &disk).unwrap_err();
        assert_eq!(e.key, "dev.cryo.spec.mount.ws.type");
        let a = ann(&[
            ("dev.cryo.spec.mount.ws.type", "bind"),
            ("dev.cryo.spec.mount.ws.share", "shared"),
        ]);
        let p = plan(&a, &mounts, Some(UID), &HashMap::new(), &disk).unwrap();
        assert_eq!(p[0].0.shape, Shape::SharedBind);
    }

    #[test]
    fn the_pod_alone_is_checked_with_the_pause_container() {
        let src = empty_dir("ws");
        let s = src.to_str().unwrap();
        let ok = ann(&[
            ("dev.cryo.spec.mount.ws.source", s),
            ("dev.cryo.spec.mount.ws.type", "tmpfs"),
            ("dev.cryo.spec.mount.ws.share", "pod"),
            ("dev.gvisor.spec.mount.other.type", "bind"),
        ]);
        validate_pod(&ok, Some(UID)).unwrap();
        for (pairs, key) in [
            (
                vec![("dev.cryo.spec.mount.ws.type", "nfs")],
                "dev.cryo.spec.mount.ws.type",
            ),
            (
                vec![("dev.cryo.spec.mount.ws.source", "/etc")],
                "dev.cryo.spec.mount.ws.source",
            ),
            (
                vec![
                    (
                        "dev.cryo.spec.mount.ws.source",
                        "/k/pods/0b5c-uid/volumes/kubernetes.io~configmap/ws",
                    ),
                    ("dev.cryo.spec.mount.ws.type", "bind"),
                ],
                "dev.cryo.spec.mount.ws.type",
            ),
        ] {
            assert_eq!(validate_pod(&ann(&pairs), Some(UID)).unwrap_err().key, key);
        }
    }
}
