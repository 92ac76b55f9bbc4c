//! Stage 4: the mount rewrite. Once the engine has placed the decided volumes, point the
//! container's OCI mounts of them at what was placed; other mounts are left alone.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::decision::Decision;
use super::hints::ALLOWED_OPTIONS;
use super::kubelet::bind_source;

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
    use crate::volumes::rules::decision::{Medium, Shape};
    use crate::volumes::rules::test_support::{bind, empty_dir};

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
}
