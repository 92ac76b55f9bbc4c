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
//! | `share=pod`, `type=bind` or `tmpfs` | [`Shape::PodOverlay`] | a bind of ONE overlay per pod whose upper and work dirs live in the emptyDir (`.cryo-filestore/pod`): every container of the pod sees the others' writes at once, on disk, captured by snapshots |
//! | `type=bind`, `share=container` (or no share) | [`Shape::ContainerOverlay`] | the same disk-backed overlay, private to the container (`.cryo-filestore/container-<name>`) |
//! | `type=tmpfs`, `share=container` (or no share) | [`Shape::Tmpfs`] | a memory-backed tmpfs private to the container (gVisor's meaning) |
//! | `share=shared` | [`Shape::SharedBind`] | a plain bind shared with the host; NOT captured by filesystem snapshots |
//!
//! Unlike gVisor, `type=tmpfs` + `share=pod` does NOT become memory-backed: the pod overlay
//! follows the emptyDir's medium (the point of cryo's shape: a large shared workspace on disk).
//! The decision is made once per pod, when the first container mounting the volume is
//! created, and reused for later containers (gVisor decides again per container by looking
//! whether the directory is empty; cryo never does).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use crate::annotations::{GVISOR_MOUNT_PREFIX, MOUNT_PREFIX};

/// kubelet's directory name for emptyDir volumes (`.../pods/<uid>/volumes/<this>/<name>`).
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

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

/// `type=` of a mount hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintType {
    Bind,
    Tmpfs,
}

/// `share=` of a mount hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Container,
    Pod,
    Shared,
}

/// One volume as its annotations describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hint {
    pub name: String,
    pub source: Option<PathBuf>,
    pub typ: Option<HintType>,
    pub share: Option<Share>,
    pub options: Vec<String>,
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

/// A refused annotation: the message names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation {}: {}", self.key, self.message)
    }
}

impl std::error::Error for RuleError {}

fn refuse(key: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError {
        key: key.into(),
        message: message.into(),
    }
}

/// The hint fields, in the order their keys are named in errors.
const FIELDS: [&str; 4] = ["source", "type", "share", "options"];

/// Mount flags an `options` hint may carry.
const ALLOWED_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "private",
    "rprivate",
    "slave",
    "rslave",
];

/// Every volume hinted by the annotations, by name. A field given under both prefixes must
/// agree; a key under either prefix that is not `<volume>.<field>` with a known field and a
/// safe volume name is refused.
pub fn parse_hints(
    annotations: &HashMap<String, String>,
) -> Result<BTreeMap<String, Hint>, RuleError> {
    // (volume, field) -> (key, value), cryo's prefix first.
    let mut fields: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    let mut keys: Vec<(&String, &String)> = annotations.iter().collect();
    // cryo's keys before gVisor's, then by name: errors are deterministic.
    keys.sort_by_key(|(k, _)| (!k.starts_with(MOUNT_PREFIX), (*k).clone()));
    for (key, value) in keys {
        let Some(rest) = key
            .strip_prefix(MOUNT_PREFIX)
            .or_else(|| key.strip_prefix(GVISOR_MOUNT_PREFIX))
        else {
            continue;
        };
        let (volume, field) = rest
            .rsplit_once('.')
            .ok_or_else(|| refuse(key, "expected <volume>.<field>"))?;
        if !FIELDS.contains(&field) {
            return Err(refuse(
                key,
                format!("unknown field {field:?} (known: source, type, share, options)"),
            ));
        }
        check_volume_name(key, volume)?;
        let slot = (volume.to_string(), field.to_string());
        match fields.get(&slot) {
            Some((first, v)) if v != value => {
                return Err(refuse(
                    first.clone(),
                    format!("conflicting aliases: {first}={v:?} but {key}={value:?}"),
                ))
            }
            Some(_) => {}
            None => {
                fields.insert(slot, (key.clone(), value.clone()));
            }
        }
    }
    let mut hints: BTreeMap<String, Hint> = BTreeMap::new();
    for ((volume, field), (key, value)) in fields {
        let hint = hints.entry(volume.clone()).or_insert_with(|| Hint {
            name: volume.clone(),
            ..Default::default()
        });
        match field.as_str() {
            "source" => {
                let path = PathBuf::from(&value);
                if !path.is_absolute() || !is_normal(&path) {
                    return Err(refuse(
                        key,
                        format!("{value:?} must be an absolute path without . or .."),
                    ));
                }
                hint.source = Some(path.components().collect());
            }
            "type" => {
                hint.typ = Some(match value.as_str() {
                    "bind" => HintType::Bind,
                    "tmpfs" => HintType::Tmpfs,
                    _ => {
                        return Err(refuse(
                            key,
                            format!("unknown type {value:?} (known: bind, tmpfs)"),
                        ))
                    }
                })
            }
            "share" => {
                hint.share = Some(match value.as_str() {
                    "container" => Share::Container,
                    "pod" => Share::Pod,
                    "shared" => Share::Shared,
                    _ => {
                        return Err(refuse(
                            key,
                            format!("unknown share {value:?} (known: container, pod, shared)"),
                        ))
                    }
                })
            }
            _ => {
                for opt in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                    if !ALLOWED_OPTIONS.contains(&opt) {
                        return Err(refuse(
                            key,
                            format!(
                                "option {opt:?} is not allowed (allowed: {})",
                                ALLOWED_OPTIONS.join(", ")
                            ),
                        ));
                    }
                    hint.options.push(opt.to_string());
                }
            }
        }
    }
    for hint in hints.values() {
        if hint.share.is_some() && hint.typ.is_none() {
            return Err(refuse(
                format!("{MOUNT_PREFIX}{}.type", hint.name),
                "missing: a share hint needs type=bind or type=tmpfs",
            ));
        }
    }
    Ok(hints)
}

/// A volume name is one path component: not empty, no `/`, no `..`, no NUL.
fn check_volume_name(key: &str, volume: &str) -> Result<(), RuleError> {
    if volume.is_empty()
        || volume == "."
        || volume.contains('/')
        || volume.contains("..")
        || volume.contains('\0')
    {
        return Err(refuse(
            key,
            format!("volume name {volume:?} must be one path component without / or .."),
        ));
    }
    Ok(())
}

/// Only normal components after the root (no `.`, no `..`).
fn is_normal(path: &Path) -> bool {
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
fn is_pod_volume(path: &Path, pod_uid: Option<&str>) -> bool {
    kubelet_volume(path).is_some_and(|v| pod_uid.is_none_or(|uid| v.uid == uid))
}

/// The source of a bind mount, normalised (no trailing `/`).
fn bind_source(m: &Mount) -> Option<PathBuf> {
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
            "share=shared: a plain bind shared with the host, not captured by filesystem snapshots".to_string(),
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

/// What can be checked of the pod's hints before any container exists (at the sandbox's
/// create: containerd's CRI reaches the runtime at RunPodSandbox and StartContainer, never at
/// CreateContainer): every key parses, every given source is a volume directory of this pod,
/// and overlay or tmpfs hints name an emptyDir.
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

/// Where the engine put a volume for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Leave the mount as it is (bind, shared bind).
    AsIs,
    /// Bind this directory (the pod's merged overlay) instead of the source.
    BindFrom(PathBuf),
    /// Mount a private overlay of these dirs in the container.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    /// Mount a private tmpfs.
    Tmpfs,
}

/// Options of the original mount that are plain flags (kept: `rw`, `ro`, `nosuid`, ...; not
/// `rbind`), with the hint's options after them (later words win).
fn flags_of(m: &Mount, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = m
        .options()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|o| ALLOWED_OPTIONS.contains(&o.as_str()))
        .cloned()
        .collect();
    out.extend(extra.iter().cloned());
    out
}

/// Rewrite the container's mounts of the decided volumes as placed. Mounts of other sources
/// are left alone.
pub fn rewrite(mounts: &[Mount], placed: &[(Decision, Placement)]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let Some(source) = bind_source(m) else {
                return m.clone();
            };
            let Some((d, place)) = placed.iter().find(|(d, _)| d.source == source) else {
                return m.clone();
            };
            let build = |typ: &str, source: &Path, options: Vec<String>| {
                MountBuilder::default()
                    .destination(m.destination().clone())
                    .typ(typ)
                    .source(source)
                    .options(options)
                    .build()
                    .unwrap_or_else(|_| m.clone())
            };
            match place {
                Placement::AsIs if d.options.is_empty() => m.clone(),
                Placement::AsIs => {
                    let mut opts = m.options().clone().unwrap_or_default();
                    opts.extend(d.options.iter().cloned());
                    let mut out = m.clone();
                    out.set_options(Some(opts));
                    out
                }
                Placement::BindFrom(dir) => {
                    let mut opts = vec!["rbind".to_string()];
                    opts.extend(flags_of(m, &d.options));
                    build("bind", dir, opts)
                }
                Placement::Overlay { lower, upper, work } => {
                    let mut opts = flags_of(m, &d.options);
                    opts.retain(|o| {
                        !matches!(o.as_str(), "private" | "rprivate" | "slave" | "rslave")
                    });
                    opts.push(format!("lowerdir={}", lower.display()));
                    opts.push(format!("upperdir={}", upper.display()));
                    opts.push(format!("workdir={}", work.display()));
                    build("overlay", Path::new("overlay"), opts)
                }
                Placement::Tmpfs => {
                    let mut opts = vec!["nosuid".to_string(), "nodev".to_string()];
                    opts.extend(flags_of(m, &d.options));
                    opts.retain(|o| {
                        !matches!(o.as_str(), "private" | "rprivate" | "slave" | "rslave")
                    });
                    opts.push("mode=1777".to_string());
                    build("tmpfs", Path::new("tmpfs"), opts)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5c-uid";

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn empty_dir(name: &str) -> PathBuf {
        PathBuf::from(format!(
            "/var/lib/kubelet/pods/{UID}/volumes/{EMPTY_DIR_PLUGIN}/{name}"
        ))
    }

    fn bind(dest: &str, source: &Path) -> Mount {
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

    fn disk(_: &Path) -> Medium {
        Medium::Disk
    }

    fn memory(_: &Path) -> Medium {
        Medium::Memory
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

    fn err_key(r: Result<Decision, RuleError>) -> String {
        r.expect_err("must be refused").key
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
    fn gvisor_keys_are_aliases() {
        let d = decide_ws(
            &[
                ("dev.gvisor.spec.mount.ws.type", "tmpfs"),
                ("dev.gvisor.spec.mount.ws.share", "pod"),
            ],
            &disk,
        )
        .unwrap();
        assert_eq!(d.shape, Shape::PodOverlay);
        // Both prefixes agreeing is fine.
        let d = decide_ws(
            &[
                ("dev.gvisor.spec.mount.ws.type", "tmpfs"),
                ("dev.cryo.spec.mount.ws.type", "tmpfs"),
                ("dev.gvisor.spec.mount.ws.share", "pod"),
            ],
            &disk,
        )
        .unwrap();
        assert_eq!(d.shape, Shape::PodOverlay);
    }

    #[test]
    fn conflicting_aliases_are_refused_naming_the_key() {
        let e = decide_ws(
            &[
                ("dev.cryo.spec.mount.ws.type", "bind"),
                ("dev.gvisor.spec.mount.ws.type", "tmpfs"),
                ("dev.cryo.spec.mount.ws.share", "pod"),
            ],
            &disk,
        )
        .unwrap_err();
        assert_eq!(e.key, "dev.cryo.spec.mount.ws.type");
        assert!(
            e.to_string().contains("dev.gvisor.spec.mount.ws.type"),
            "{e}"
        );
        assert!(e.to_string().contains("conflicting"), "{e}");
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
        let plan = plan(
            &ann(&[
                ("dev.cryo.spec.mount.ws.type", "tmpfs"),
                ("dev.cryo.spec.mount.ws.share", "pod"),
            ]),
            &mounts,
            Some(UID),
            &HashMap::new(),
            &disk,
        )
        .unwrap();
        assert!(plan.is_empty());
    }

    #[test]
    fn another_pods_volume_is_not_found_by_name() {
        let other = PathBuf::from(format!(
            "/var/lib/kubelet/pods/other-uid/volumes/{EMPTY_DIR_PLUGIN}/ws"
        ));
        let mounts = [bind("/workspace", &other)];
        let plan = plan(
            &ann(&[
                ("dev.cryo.spec.mount.ws.type", "tmpfs"),
                ("dev.cryo.spec.mount.ws.share", "pod"),
            ]),
            &mounts,
            Some(UID),
            &HashMap::new(),
            &disk,
        )
        .unwrap();
        assert!(plan.is_empty());
    }

    #[test]
    fn the_decision_is_made_once_per_pod() {
        let mounts = [bind("/workspace", &empty_dir("ws"))];
        let a = ann(&[
            ("dev.cryo.spec.mount.ws.type", "tmpfs"),
            ("dev.cryo.spec.mount.ws.share", "pod"),
        ]);
        let first = plan(&a, &mounts, Some(UID), &HashMap::new(), &disk).unwrap();
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
    fn hostile_volume_names_are_refused() {
        for key in [
            "dev.cryo.spec.mount.../x.type",
            "dev.cryo.spec.mount.a/b.type",
            "dev.gvisor.spec.mount...type",
            "dev.cryo.spec.mount..type",
        ] {
            let e = parse_hints(&ann(&[(key, "bind")])).unwrap_err();
            assert_eq!(e.key, key);
        }
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
    fn unknown_type_share_field_or_option_is_refused() {
        assert_eq!(
            err_key(decide_ws(&[("dev.cryo.spec.mount.ws.type", "nfs")], &disk)),
            "dev.cryo.spec.mount.ws.type"
        );
        assert_eq!(
            err_key(decide_ws(
                &[
                    ("dev.cryo.spec.mount.ws.type", "bind"),
                    ("dev.gvisor.spec.mount.ws.share", "everyone")
                ],
                &disk
            )),
            "dev.gvisor.spec.mount.ws.share"
        );
        assert_eq!(
            err_key(decide_ws(
                &[("dev.cryo.spec.mount.ws.colour", "red")],
                &disk
            )),
            "dev.cryo.spec.mount.ws.colour"
        );
        assert_eq!(
            err_key(decide_ws(
                &[
                    ("dev.cryo.spec.mount.ws.type", "bind"),
                    ("dev.cryo.spec.mount.ws.options", "ro,suid,uid=0")
                ],
                &disk
            )),
            "dev.cryo.spec.mount.ws.options"
        );
        assert_eq!(
            err_key(decide_ws(&[("dev.cryo.spec.mount.ws.share", "pod")], &disk)),
            "dev.cryo.spec.mount.ws.type"
        );
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
    fn rewrite_places_each_shape() {
        let src = empty_dir("ws");
        let m = bind("/workspace", &src);
        let other = bind("/etc/hosts", Path::new("/x/hosts"));
        let d = |shape, options: &[&str]| Decision {
            volume: "ws".into(),
            source: src.clone(),
            shape,
            backing: Medium::Disk,
            options: options.iter().map(|s| s.to_string()).collect(),
            reason: String::new(),
        };
        let mounts = [m.clone(), other.clone()];

        let out = rewrite(&mounts, &[(d(Shape::Bind, &[]), Placement::AsIs)]);
        assert_eq!(out, mounts);

        let out = rewrite(
            &mounts,
            &[(
                d(Shape::PodOverlay, &["ro"]),
                Placement::BindFrom("/b/volumes/ws".into()),
            )],
        );
        assert_eq!(out[0].typ().as_deref(), Some("bind"));
        assert_eq!(out[0].source().as_deref(), Some(Path::new("/b/volumes/ws")));
        assert_eq!(out[0].destination(), Path::new("/workspace"));
        assert_eq!(
            out[0].options().as_deref().unwrap(),
            ["rbind", "rprivate", "rw", "ro"]
        );
        assert_eq!(out[1], other);

        let out = rewrite(
            &mounts,
            &[(
                d(Shape::ContainerOverlay, &[]),
                Placement::Overlay {
                    lower: "/l".into(),
                    upper: "/u".into(),
                    work: "/w".into(),
                },
            )],
        );
        assert_eq!(out[0].typ().as_deref(), Some("overlay"));
        assert_eq!(
            out[0].options().as_deref().unwrap(),
            ["rw", "lowerdir=/l", "upperdir=/u", "workdir=/w"]
        );

        let out = rewrite(&mounts, &[(d(Shape::Tmpfs, &[]), Placement::Tmpfs)]);
        assert_eq!(out[0].typ().as_deref(), Some("tmpfs"));
        assert_eq!(out[0].source().as_deref(), Some(Path::new("tmpfs")));
        assert_eq!(
            out[0].options().as_deref().unwrap(),
            ["nosuid", "nodev", "rw", "mode=1777"]
        );

        // A trailing slash in the source still matches.
        let slashed = bind("/workspace", Path::new(&format!("{}/", src.display())));
        let out = rewrite(&[slashed], &[(d(Shape::Tmpfs, &[]), Placement::Tmpfs)]);
        assert_eq!(out[0].typ().as_deref(), Some("tmpfs"));
    }

    #[test]
    fn the_pod_alone_is_checked_at_the_sandbox() {
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

    #[test]
    fn kubelet_paths_parse() {
        let path = empty_dir("ws");
        let v = kubelet_volume(&path).unwrap();
        assert_eq!((v.uid, v.plugin, v.name), (UID, EMPTY_DIR_PLUGIN, "ws"));
        assert!(kubelet_volume(Path::new("/pods/u/volumes/p")).is_none());
        assert!(kubelet_volume(Path::new("/a/pods/u/volumes/p/../x")).is_none());
    }
}
