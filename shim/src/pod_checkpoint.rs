//! Filesystem checkpoints of the running pod (`cryo fscheckpoint ID` over the control socket)
//! and the pod's listing (`cryo ps`).
//!
//! What is saved is read from each container's own view of its mounts
//! (`/proc/<pid1>/mountinfo`, mount points relative to the container's root):
//! - `/`: the upper directory of the container's overlay rootfs (the pod's sandbox (pause)
//!   container only if its upper holds anything);
//! - a mount path: the volume mounted there in every container that mounts it — the upper
//!   directory of an overlay the shim's own mount namespace also holds (a share=pod volume),
//!   else the mount read through `/proc/<pid1>/root/<path>` (a tmpfs or a private overlay
//!   inside the container's mount namespace). A container's own mount options are never taken
//!   for host paths ([`trusted_uppers`]);
//! - `all-volumes` (`all-tmpfs`): every writable tmpfs or overlay mount outside `/proc`, `/sys`
//!   and `/dev`.
//!
//! A directory seen by several containers (a share=pod volume) is saved once, recorded under
//! the first container naming it. A rootfs or share=pod volume the pod was restored with stands
//! on layers of the layer cache (its overlay's top lower directories): it is saved as stacked
//! sections, the sections those layers were made from copied verbatim from the checkpoint the
//! pod was restored from (bottom first), then its upper on top
//! ([`crate::fs_restore::restored_layers`]). Consistency: every running container of the pod is frozen,
//! the saved filesystems are synced, the checkpoint is written (fsnap: under a temporary name,
//! renamed into place), then the pod is thawed (`leave_running`) or its containers' PID 1s are
//! SIGKILLed and thawed (containerd sees the exits). A failure anywhere thaws the pod and leaves
//! it running: nothing was saved, and nothing is lost.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryo_sandbox::fscheckpoint::{self, Content, Input, ResourceId, ResourceKind};
use cryo_sandbox::state::Status as EngineStatus;
use log::{info, warn};

use crate::annotations;
use crate::container::Container;
use crate::control::protocol::{ContainerInfo, FscheckpointArgs, SectionInfo};
use crate::error::{Error, Result};
use crate::fs_restore::PodRestore;
use crate::pod::Pod;
use crate::process::Process;

/// `--path` values that name every writable volume.
const ALL_VOLUMES: [&str; 2] = ["all-volumes", "all-tmpfs"];
/// Mount trees that are never volumes.
const SYSTEM_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];
/// Filesystems an explicit `--path` may save (the rest are kernel views, not data).
const DATA_FILESYSTEMS: [&str; 8] = [
    "tmpfs", "overlay", "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs",
];

/// Who a container is in the pod.
struct Member {
    container: Arc<Container>,
    pod: String,
    /// CRI container name, empty outside CRI.
    name: String,
    sandbox: bool,
}

impl Member {
    fn of(container: Arc<Container>) -> Member {
        let annotations = read_annotations(&container.bundle);
        let get = |k: &str| {
            annotations
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let pod = Some(get(annotations::SANDBOX_ID))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| container.id.clone());
        Member {
            name: get(annotations::CONTAINER_NAME),
            sandbox: get(annotations::CONTAINER_TYPE) == annotations::CONTAINER_TYPE_SANDBOX,
            pod,
            container,
        }
    }

    /// The name a section records: the CRI container name, else the id.
    fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.container.id
        } else {
            &self.name
        }
    }

    fn pid(&self) -> i32 {
        self.container.init.pid()
    }

    /// PID 1's exit is known.
    fn exited(&self) -> bool {
        self.container.init.lifecycle().exited().is_some()
    }

    fn running(&self) -> bool {
        self.container.init.engine().status() == EngineStatus::Running
    }
}

/// The annotations of a container's bundle spec (empty if unreadable).
fn read_annotations(bundle: &str) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read(Path::new(bundle).join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("annotations").and_then(|a| a.as_object()).cloned())
        .unwrap_or_default()
}

fn members(pod: &Pod) -> Vec<Member> {
    let mut all: Vec<Member> = pod.containers().into_iter().map(Member::of).collect();
    // The sandbox container first, then by id: a stable order for sections.
    all.sort_by(|a, b| (!a.sandbox, &a.container.id).cmp(&(!b.sandbox, &b.container.id)));
    all
}

/// `cryo ps`: every container of the pod.
pub fn list(pod: &Pod) -> Vec<ContainerInfo> {
    members(pod)
        .into_iter()
        .map(|m| {
            let status = if m.exited() {
                "stopped".to_string()
            } else {
                format!("{:?}", m.container.init.engine().status()).to_lowercase()
            };
            ContainerInfo {
                id: m.container.id.clone(),
                pod: m.pod.clone(),
                name: m.name.clone(),
                status,
                pid: m.pid(),
            }
        })
        .collect()
}

/// Sections are labelled by container name: two app containers under one label could not be
/// told apart at a restore (their rootfs sections would come back stacked into one container).
/// containerd 2.2's CRI restore names every restored container "containerd".
fn refuse_shared_labels(members: &[Member], pod_id: &str) -> Result<()> {
    let apps: Vec<&Member> = members.iter().filter(|m| !m.sandbox).collect();
    for (i, a) in apps.iter().enumerate() {
        if let Some(b) = apps[..i].iter().find(|b| b.label() == a.label()) {
            return Err(Error::FailedPrecondition(format!(
                "pod {pod_id}: containers {} and {} are both named {:?} \
                 ({}; containerd 2.2's CRI restore names every restored container so): their \
                 sections could not be told apart",
                b.container.id,
                a.container.id,
                a.label(),
                annotations::CONTAINER_NAME
            )));
        }
    }
    Ok(())
}

/// `cryo fscheckpoint ID`: save the pod's filesystems as asked.
pub async fn save(pod: &Pod, args: FscheckpointArgs) -> Result<Vec<SectionInfo>> {
    let members = members(pod);
    if !members
        .iter()
        .any(|m| m.container.id == args.id || m.pod == args.id)
    {
        return Err(Error::NotFound(format!(
            "no pod or container {:?} in this shim",
            args.id
        )));
    }
    let pod_id = members[0].pod.clone();
    let out = PathBuf::from(&args.image_path);
    check_destination(&out)?;
    refuse_shared_labels(&members, &pod_id)?;
    let wanted = parse_paths(&args.paths)?;
    info!(
        "fscheckpoint of pod {pod_id} to {} (paths {:?}, leave running: {})",
        out.display(),
        args.paths,
        args.leave_running
    );

    // Freeze every running container of the pod (those already paused stay as they are).
    let mut frozen: Vec<&Member> = Vec::new();
    for m in members.iter().filter(|m| m.running()) {
        if let Err(e) = m.container.init.engine().call(|c| c.pause()).await {
            thaw(&frozen).await;
            return Err(Error::Internal(format!(
                "freeze container {}: {e}",
                m.container.id
            )));
        }
        frozen.push(m);
    }
    let direct = args.direct;
    let result = async {
        let sources = sources(&members, &wanted, &pod_id, &pod.fs_restore)?;
        let saved = tokio::task::spawn_blocking(move || -> Result<Vec<Input>> {
            fscheckpoint::save(&sources, &out, direct)
                .map_err(|e| Error::FailedPrecondition(format!("save the checkpoint: {e}")))?;
            Ok(sources)
        })
        .await
        .map_err(|e| Error::Internal(format!("the save task: {e}")))??;
        Ok::<_, Error>(saved)
    }
    .await;
    let sources = match result {
        Ok(s) => s,
        Err(e) => {
            thaw(&frozen).await;
            info!("fscheckpoint of pod {pod_id} failed, pod left running: {e}");
            return Err(e);
        }
    };
    if !args.leave_running {
        // Stop: SIGKILL every PID 1 (pending while frozen), then thaw so the kills land.
        for m in members.iter().filter(|m| m.pid() > 0 && !m.exited()) {
            if let Err(e) = m
                .container
                .init
                .engine()
                .call(|c| c.kill(libc::SIGKILL, false))
                .await
            {
                warn!(
                    "stop container {} after the checkpoint: {e}",
                    m.container.id
                );
            }
        }
    }
    thaw(&frozen).await;
    Ok(sources
        .into_iter()
        .map(|s| SectionInfo {
            container: s.resource.container,
            path: s.resource.path,
            kind: s.resource.kind.to_string(),
        })
        .collect())
}

async fn thaw(frozen: &[&Member]) {
    for m in frozen {
        if let Err(e) = m.container.init.engine().call(|c| c.resume()).await {
            warn!("thaw container {}: {e}", m.container.id);
        }
    }
}

/// The destination: absolute, and absent or an empty directory (checked before anything is
/// frozen; fsnap checks again when it writes).
fn check_destination(out: &Path) -> Result<()> {
    if !out.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "--image-path {}: not an absolute path",
            out.display()
        )));
    }
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::AlreadyExists(format!(
                    "--image-path {}: already exists and is not empty{}",
                    out.display(),
                    if out.join(fscheckpoint::MANIFEST_FILE).exists() {
                        " (it holds a checkpoint)"
                    } else {
                        ""
                    }
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::InvalidArgument(format!(
            "--image-path {}: {e}",
            out.display()
        ))),
    }
}

/// What one `--path` asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Wanted {
    Rootfs,
    AllVolumes,
    Mount(String),
}

pub(crate) fn parse_paths(paths: &[String]) -> Result<Vec<Wanted>> {
    if paths.is_empty() {
        return Ok(vec![Wanted::Rootfs]);
    }
    paths
        .iter()
        .map(|p| {
            if ALL_VOLUMES.contains(&p.as_str()) {
                return Ok(Wanted::AllVolumes);
            }
            let bad = |why: &str| Error::InvalidArgument(format!("--path {p:?}: {why}"));
            if !p.starts_with('/') {
                return Err(bad("not an absolute path (nor all-volumes)"));
            }
            let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
            if parts.iter().any(|c| *c == "." || *c == "..") || p.contains('\0') {
                return Err(bad("holds '.' or '..' components"));
            }
            Ok(if parts.is_empty() {
                Wanted::Rootfs
            } else {
                Wanted::Mount(format!("/{}", parts.join("/")))
            })
        })
        .collect()
}

/// One mount as a container sees it.
struct MountEntry {
    point: String,
    /// `major:minor` of the filesystem.
    dev: String,
    fstype: String,
    read_only: bool,
    /// An overlay's upper directory as a host path, only when the shim's own mount namespace
    /// holds the same overlay (see [`trusted_uppers`]).
    upperdir: Option<PathBuf>,
}

/// The mounts of a mountinfo text, the last mount at a point winning (it hides the rest);
/// `upperdir` as the options say.
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out: Vec<MountEntry> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < sep + 4 || sep < 6 {
            continue;
        }
        let point = unescape(fields[4]);
        let upperdir = fields[sep + 3]
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(|u| PathBuf::from(unescape(u)));
        out.retain(|m| m.point != point);
        out.push(MountEntry {
            point,
            dev: fields[2].to_string(),
            fstype: fields[sep + 1].to_string(),
            read_only: fields[5].split(',').any(|o| o == "ro"),
            upperdir,
        });
    }
    out
}

/// The upper directories of the overlays in the shim's own mount namespace, by device: the
/// containers' rootfs (the engine mounts them here before the containers start) and the pod's
/// share=pod volumes. A container's own mount options are the container's to forge (a
/// privileged container can mount an overlay whose `upperdir=` names any host path); an
/// overlay the shim's namespace also holds is one the shim or containerd mounted, and its
/// options here are host paths.
fn trusted_uppers() -> std::io::Result<HashMap<String, PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.fstype == "overlay")
        .filter_map(|m| Some((m.dev, m.upperdir?)))
        .collect())
}

/// The mounts `pid` sees (points relative to its root); an overlay's upper only when trusted.
fn mounts(pid: i32, trusted: &HashMap<String, PathBuf>) -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mut entries = parse_mountinfo(&text);
    for e in &mut entries {
        e.upperdir = if e.fstype == "overlay" {
            trusted.get(&e.dev).cloned()
        } else {
            None
        };
    }
    Ok(entries)
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn under_system_tree(point: &str) -> bool {
    SYSTEM_TREES
        .iter()
        .any(|t| point == *t || point.starts_with(&format!("{t}/")))
}

/// The sections to save: one per distinct directory, each above the sections of the layers it
/// was restored with (`restore`: the pod's restore).
fn sources(
    members: &[Member],
    wanted: &[Wanted],
    pod_id: &str,
    restore: &PodRestore,
) -> Result<Vec<Input>> {
    let mut sources: Vec<Input> = Vec::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut add = |label: &str, path: &str, kind: ResourceKind, dir: PathBuf| -> Result<bool> {
        let meta = std::fs::metadata(&dir).map_err(|e| {
            Error::FailedPrecondition(format!(
                "container {label}: {path} ({}): {e}",
                dir.display()
            ))
        })?;
        if !meta.is_dir() {
            // A file bind (e.g. /etc/hosts): not a volume directory.
            return Ok(false);
        }
        if !seen.insert((meta.dev(), meta.ino())) {
            // Already saved (a share=pod volume another container mounts).
            return Ok(true);
        }
        let resource = ResourceId {
            container: label.to_string(),
            path: path.to_string(),
            kind,
        };
        let below = crate::fs_restore::restored_layers(
            &format!("container {label} {path} ({kind})"),
            &dir,
            restore,
        )?;
        let top = below.len() as u32;
        for (layer, (checkpoint, index)) in (0u32..).zip(below) {
            sources.push(Input {
                resource: resource.clone(),
                layer,
                content: Content::Section { checkpoint, index },
            });
        }
        sources.push(Input {
            resource,
            layer: top,
            content: Content::Dir(dir),
        });
        Ok(true)
    };
    let trusted = trusted_uppers()
        .map_err(|e| Error::Internal(format!("read the shim's own mounts: {e}")))?;
    let live: Vec<(&Member, Vec<MountEntry>)> = members
        .iter()
        .filter(|m| m.pid() > 0 && !m.exited())
        .filter_map(|m| match mounts(m.pid(), &trusted) {
            Ok(ms) => Some((m, ms)),
            Err(e) => {
                warn!("container {}: read its mounts: {e}", m.container.id);
                None
            }
        })
        .collect();
    for w in wanted {
        match w {
            Wanted::Rootfs => {
                let mut any = false;
                for (m, ms) in &live {
                    let Some(upper) = ms
                        .iter()
                        .find(|e| e.point == "/")
                        .and_then(|e| e.upperdir.clone())
                    else {
                        info!(
                            "container {}: no overlay rootfs, nothing to save for /",
                            m.container.id
                        );
                        continue;
                    };
                    if m.sandbox && is_empty_dir(&upper) {
                        continue;
                    }
                    add(m.label(), "/", ResourceKind::RootfsUpper, upper)?;
                    any = true;
                }
                if !any {
                    return Err(Error::FailedPrecondition(format!(
                        "--path /: no container of pod {pod_id} has an overlay rootfs"
                    )));
                }
            }
            Wanted::AllVolumes => {
                let mut any = false;
                for (m, ms) in &live {
                    for e in ms.iter().filter(|e| {
                        e.point != "/"
                            && !e.read_only
                            && !under_system_tree(&e.point)
                            && (e.fstype == "tmpfs" || e.fstype == "overlay")
                    }) {
                        let (kind, dir) = volume_source(m, e);
                        any |= add(m.label(), &e.point, kind, dir)?;
                    }
                }
                if !any {
                    return Err(Error::InvalidArgument(format!(
                        "--path all-volumes: no container of pod {pod_id} mounts a writable volume"
                    )));
                }
            }
            Wanted::Mount(path) => {
                let mut found = false;
                for (m, ms) in &live {
                    let Some(e) = ms.iter().find(|e| &e.point == path) else {
                        continue;
                    };
                    if !DATA_FILESYSTEMS.contains(&e.fstype.as_str()) {
                        return Err(Error::InvalidArgument(format!(
                            "--path {path}: a {} mount in container {}, not a volume",
                            e.fstype, m.container.id
                        )));
                    }
                    let (kind, dir) = volume_source(m, e);
                    if !add(m.label(), path, kind, dir)? {
                        return Err(Error::InvalidArgument(format!(
                            "--path {path}: not a directory in container {}",
                            m.container.id
                        )));
                    }
                    found = true;
                }
                if !found {
                    return Err(Error::InvalidArgument(format!(
                        "--path {path}: no container of pod {pod_id} mounts it"
                    )));
                }
            }
        }
    }
    Ok(sources)
}

/// Where a volume's data is read from: an overlay's upper directory, else the mount through
/// the container's root.
fn volume_source(m: &Member, e: &MountEntry) -> (ResourceKind, PathBuf) {
    match (&e.upperdir, e.fstype.as_str()) {
        (Some(upper), "overlay") => (ResourceKind::PodVolume, upper.clone()),
        (_, "tmpfs") => (
            ResourceKind::Tmpfs,
            PathBuf::from(format!("/proc/{}/root{}", m.pid(), e.point)),
        ),
        _ => (
            ResourceKind::PodVolume,
            PathBuf::from(format!("/proc/{}/root{}", m.pid(), e.point)),
        ),
    }
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// Flush the filesystem holding `dir` (the pod is frozen: nothing writes meanwhile).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_hostile_ones_are_refused() {
        assert_eq!(parse_paths(&[]).unwrap(), vec![Wanted::Rootfs]);
        assert_eq!(
            parse_paths(&["/".into(), "all-tmpfs".into(), "/data//x/".into()]).unwrap(),
            vec![
                Wanted::Rootfs,
                Wanted::AllVolumes,
                Wanted::Mount("/data/x".into())
            ]
        );
        for bad in ["data", "/a/../etc", "/./x"] {
            let e = parse_paths(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn mountinfo_lines_parse_the_last_mount_at_a_point_winning() {
        let text = "\
22 1 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/a\\040b,workdir=/w
23 22 0:41 / /data ro - tmpfs tmpfs rw
24 22 0:42 / /data rw - tmpfs tmpfs rw";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].point, "/");
        assert_eq!(m[0].dev, "0:40");
        assert_eq!(m[0].upperdir.as_deref(), Some(Path::new("/a b")));
        assert_eq!((m[1].dev.as_str(), m[1].read_only), ("0:42", false));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/x\"), r"/x\");
    }
}
