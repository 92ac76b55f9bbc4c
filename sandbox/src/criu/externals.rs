//! What of a container lies outside CRIU's images and must be named to CRIU on both sides, as
//! runc does: the spec's bind mounts and the container's cgroup views (bind mounts of host
//! cgroup directories) as external mounts, and joined network/pid namespaces (a pod's) as
//! external namespaces. Private overlay volumes are external mounts too (their files travel in
//! the checkpoint's volume sections, [`super::volumes`]). At a dump they are listed in the manifest; at a restore each is mapped
//! onto what the new spec and the new cgroup provide, or the restore is refused naming it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::manifest::External;
use super::swrk::Opts;
use crate::error::{Error, Result};
use crate::mount::{mountinfo_self, parse_mountinfo, MountInfo, MountOptions};

/// Where the host mounts its cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The externals of the running container whose PID 1 is `pid`.
pub fn for_dump(spec: &Spec, pid: i32) -> Result<Vec<External>> {
    let mut out: Vec<External> = bind_mounts(spec)
        .into_iter()
        .map(|(destination, _)| External::Bind { destination })
        .collect();
    out.extend(
        super::volumes::overlays(spec)
            .into_iter()
            .map(|o| External::Overlay {
                destination: o.destination,
            }),
    );
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {path}"), e))?;
    for m in parse_mountinfo(&text) {
        if m.fstype != "cgroup" && m.fstype != "cgroup2" {
            continue;
        }
        let destination = m.mount_point.display().to_string();
        if out
            .iter()
            .any(|e| matches!(e, External::Bind { destination: d } if *d == destination))
        {
            continue;
        }
        let hierarchy = if m
            .mount_point
            .parent()
            .is_some_and(|p| p == Path::new(CGROUP_ROOT))
        {
            m.mount_point
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        out.push(External::Cgroup {
            destination,
            hierarchy,
        });
    }
    for (typ, _) in joined_namespaces(spec) {
        let Some(name) = criu_ns_name(typ) else {
            continue;
        };
        out.push(External::Namespace {
            namespace: typ.to_string(),
            key: rust_criu::criu_ns_to_key(name),
        });
    }
    Ok(out)
}

/// Name the externals to CRIU for a dump of `pid`.
pub fn fill_dump(externals: &[External], pid: i32, opts: &mut Opts) -> Result<()> {
    for e in externals {
        match e {
            External::Bind { destination }
            | External::Cgroup { destination, .. }
            | External::Overlay { destination } => {
                opts.ext_mnt.push(ext_mnt(destination, destination));
            }
            External::Namespace { namespace, key } => {
                let name = LinuxNamespaceType::try_from(namespace.as_str())
                    .ok()
                    .and_then(criu_ns_name)
                    .ok_or_else(|| Error::InvalidSpec(format!("namespace {namespace}")))?;
                let path = format!("/proc/{pid}/ns/{name}");
                let ino = std::fs::metadata(&path)
                    .map_err(|e| Error::io(format!("stat {path}"), e))?
                    .ino();
                opts.external.push(format!("{name}[{ino}]:{key}"));
            }
        }
    }
    Ok(())
}

/// What a restore hands CRIU for the externals: mount mappings, the joined namespaces' files
/// (to pass as inherited descriptors under their keys), and the destinations of the overlay
/// volumes (each mounted from the new spec at Start, [`super::volumes::Staged`]).
pub struct RestoreExternals {
    pub mounts: Vec<(String, String)>,
    pub namespaces: Vec<(String, File)>,
    pub overlays: Vec<String>,
}

/// Map each external of the image onto the new container: bind mounts onto the new spec's
/// sources (relative ones in `bundle`), cgroup views onto the new cgroup `cgroup_path`, joined
/// namespaces onto the paths the new spec joins. Anything the new spec does not provide is
/// refused by name.
pub fn for_restore(
    externals: &[External],
    spec: &Spec,
    bundle: &Path,
    cgroup_path: &str,
) -> Result<RestoreExternals> {
    let binds = bind_mounts(spec);
    let host = mountinfo_self()?;
    let own = crate::init::own_cgroups()?;
    let mut out = RestoreExternals {
        mounts: Vec::new(),
        namespaces: Vec::new(),
        overlays: Vec::new(),
    };
    for e in externals {
        match e {
            External::Bind { destination } => {
                let source = binds
                    .iter()
                    .find(|(d, _)| d == destination)
                    .map(|(_, s)| s.clone())
                    .ok_or_else(|| {
                        Error::InvalidSpec(format!(
                            "the checkpoint has a bind mount at {destination} that the spec's \
                             mounts do not provide"
                        ))
                    })?;
                let source = if source.is_relative() {
                    bundle.join(source)
                } else {
                    source
                };
                out.mounts
                    .push((destination.clone(), source.display().to_string()));
            }
            External::Cgroup {
                destination,
                hierarchy,
            } => {
                let dir = cgroup_dir(&host, hierarchy, cgroup_path, &own, Path::is_dir)?;
                out.mounts
                    .push((destination.clone(), dir.display().to_string()));
            }
            External::Overlay { destination } => {
                if !super::volumes::overlays(spec)
                    .iter()
                    .any(|o| o.destination == *destination)
                {
                    return Err(Error::InvalidSpec(format!(
                        "the checkpoint has an overlay volume at {destination} that the spec's \
                         mounts do not provide (no overlay with an upperdir there)"
                    )));
                }
                out.overlays.push(destination.clone());
            }
            External::Namespace { namespace, key } => {
                let path = joined_namespaces(spec)
                    .into_iter()
                    .find(|(t, _)| t.to_string() == *namespace)
                    .map(|(_, p)| p)
                    .ok_or_else(|| {
                        Error::InvalidSpec(format!(
                            "the checkpoint joined a {namespace} namespace; \
                             linux.namespaces gives no path for one"
                        ))
                    })?;
                let file = File::open(&path).map_err(|e| {
                    Error::io(format!("open {namespace} namespace {}", path.display()), e)
                })?;
                out.namespaces.push((key.clone(), file));
            }
        }
    }
    Ok(out)
}

/// The freezer directory of `cgroup_path` for CRIU's `freeze_cgroup` (v1 freezer hierarchy,
/// else the v2 cgroup).
pub fn freezer_dir(cgroup_path: &str) -> Result<Option<PathBuf>> {
    let host = mountinfo_self()?;
    let rel = cgroup_path.trim_start_matches('/');
    if let Some(h) = hierarchies(&host)
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "freezer"))
    {
        return Ok(Some(h.mount_point.join(rel)));
    }
    let v2 = hierarchies(&host)
        .find(|m| m.fstype == "cgroup2" && m.mount_point == Path::new(CGROUP_ROOT))
        .map(|m| m.mount_point.join(rel));
    Ok(v2)
}

pub(crate) fn ext_mnt(key: &str, val: &str) -> rust_criu::rust_criu_protobuf::rpc::Ext_mount_map {
    let mut m = rust_criu::rust_criu_protobuf::rpc::Ext_mount_map::new();
    m.set_key(key.to_string());
    m.set_val(val.to_string());
    m
}

/// Host directory of `cgroup_path` in the hierarchy named `hierarchy` (empty: the single
/// hierarchy of a cgroup v2 host). Where that directory does not exist (`exists`), the
/// hierarchy is one cryo does not manage (a hybrid host's `unified` cgroup2 beside the v1
/// controllers): the new container's processes stay in this process's own cgroup there (`own`,
/// as in /proc/self/cgroup), and their cgroup view is that directory, as the init's cgroup
/// mount binds it (init::rootfs).
fn cgroup_dir(
    host: &[MountInfo],
    hierarchy: &str,
    cgroup_path: &str,
    own: &[(String, String)],
    exists: impl Fn(&Path) -> bool,
) -> Result<PathBuf> {
    let mount_point = if hierarchy.is_empty() {
        PathBuf::from(CGROUP_ROOT)
    } else {
        Path::new(CGROUP_ROOT).join(hierarchy)
    };
    let h = hierarchies(host)
        .find(|m| m.mount_point == mount_point)
        .ok_or_else(|| Error::Cgroup {
            path: cgroup_path.to_string(),
            reason: format!(
                "the checkpoint's cgroup hierarchy {} is not mounted on this host",
                mount_point.display()
            ),
        })?;
    let under = |path: &str| {
        let rel = path
            .strip_prefix(h.root.as_str())
            .unwrap_or(path)
            .trim_start_matches('/');
        h.mount_point.join(rel)
    };
    let dir = under(cgroup_path);
    if exists(&dir) {
        return Ok(dir);
    }
    let path = crate::init::own_path(own, h).ok_or_else(|| Error::Cgroup {
        path: cgroup_path.to_string(),
        reason: format!(
            "{} does not exist and this process has no cgroup in {}",
            dir.display(),
            h.mount_point.display()
        ),
    })?;
    Ok(under(&path))
}

fn hierarchies(host: &[MountInfo]) -> impl Iterator<Item = &MountInfo> {
    host.iter().filter(|m| {
        (m.fstype == "cgroup" || m.fstype == "cgroup2") && m.mount_point.starts_with(CGROUP_ROOT)
    })
}

/// The spec's bind mounts: (destination, source).
fn bind_mounts(spec: &Spec) -> Vec<(String, PathBuf)> {
    spec.mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|m| {
            m.typ().as_deref() == Some("bind")
                || MountOptions::parse(m.options().as_deref().unwrap_or_default()).is_bind()
        })
        .filter_map(|m| Some((m.destination().display().to_string(), m.source().clone()?)))
        .collect()
}

/// Namespaces the spec joins by path.
fn joined_namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, PathBuf)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|nss| {
            nss.iter()
                .filter_map(|ns| Some((ns.typ(), ns.path().clone()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// CRIU's name of the joined namespaces it treats as external (runc's choice: network, pid).
fn criu_ns_name(typ: LinuxNamespaceType) -> Option<&'static str> {
    match typ {
        LinuxNamespaceType::Network => Some("net"),
        LinuxNamespaceType::Pid => Some("pid"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn mount(root: &str, point: &str, fstype: &str, opts: &str) -> MountInfo {
        MountInfo {
            root: root.into(),
            mount_point: PathBuf::from(point),
            fstype: fstype.into(),
            source: fstype.into(),
            super_options: opts.into(),
            shared: false,
        }
    }

    #[test]
    fn a_bind_the_new_spec_lacks_is_refused_by_destination() {
        let externals = [External::Bind {
            destination: "/data".into(),
        }];
        let s = spec(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/other","type":"bind","source":"/tmp","options":["rbind"]}]}"#,
        );
        let err = for_restore(&externals, &s, Path::new("/b"), "/c")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/data"), "{err}");
    }

    #[test]
    fn binds_map_to_the_new_sources_relative_ones_in_the_bundle() {
        let externals = [
            External::Bind {
                destination: "/data".into(),
            },
            External::Bind {
                destination: "/etc/hosts".into(),
            },
        ];
        let s = spec(
            r#"{"ociVersion":"1.0.2","mounts":[
                {"destination":"/data","type":"none","source":"/srv/new","options":["rbind","rw"]},
                {"destination":"/etc/hosts","type":"bind","source":"hosts"}]}"#,
        );
        let ext = for_restore(&externals, &s, Path::new("/bundle"), "/c").unwrap();
        assert_eq!(
            ext.mounts,
            vec![
                ("/data".to_string(), "/srv/new".to_string()),
                ("/etc/hosts".to_string(), "/bundle/hosts".to_string())
            ]
        );
    }

    #[test]
    fn a_joined_namespace_the_new_spec_does_not_join_is_refused() {
        let externals = [External::Namespace {
            namespace: "network".into(),
            key: "extRootNetNS".into(),
        }];
        let s = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network"}]}}"#);
        let err = for_restore(&externals, &s, Path::new("/b"), "/c")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("network"), "{err}");
    }

    #[test]
    fn cgroup_views_map_to_the_new_cgroup_in_their_hierarchy() {
        let host = [
            mount("/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
            mount(
                "/",
                "/sys/fs/cgroup/cpu,cpuacct",
                "cgroup",
                "rw,cpu,cpuacct",
            ),
            mount("/", "/sys/fs/cgroup/unified", "cgroup2", "rw"),
        ];
        let own = [
            ("memory".to_string(), "/ns/c2".to_string()),
            ("cpu,cpuacct".to_string(), "/ns/c2".to_string()),
            (
                String::new(),
                "/system.slice/containerd.service".to_string(),
            ),
        ];
        let all = |_: &Path| true;
        assert_eq!(
            cgroup_dir(&host, "cpu,cpuacct", "/ns/c2", &own, all).unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/ns/c2")
        );
        assert_eq!(
            cgroup_dir(&host, "unified", "/ns/c2", &own, all).unwrap(),
            Path::new("/sys/fs/cgroup/unified/ns/c2")
        );
        // A hybrid host's cgroup2 where the new cgroup was not created (cryo manages the v1
        // controllers only): the view is the shim's own cgroup there, where the restored
        // processes stay, as a created container's cgroup mount binds it.
        let v1_only = |p: &Path| !p.starts_with("/sys/fs/cgroup/unified");
        assert_eq!(
            cgroup_dir(&host, "unified", "/ns/c2", &own, v1_only).unwrap(),
            Path::new("/sys/fs/cgroup/unified/system.slice/containerd.service")
        );
        let err = cgroup_dir(&host, "unified", "/ns/c2", &own[..2], v1_only)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/sys/fs/cgroup/unified/ns/c2"), "{err}");
        // A hierarchy name from a hostile manifest only ever names a mounted hierarchy.
        assert!(cgroup_dir(&host, "../../etc", "/ns/c2", &own, all).is_err());
        assert!(cgroup_dir(&host, "pids", "/ns/c2", &own, all).is_err());
    }
}
