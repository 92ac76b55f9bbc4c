//! What a section is the saved state of: a resource (`container`, `path`, `kind`), the rules
//! its names follow, and where it lands under a target root. The names come from a manifest
//! (hostile until checked), so every reader and the writer check them here, in one place:
//!
//! - `container` is empty (saved from a plain directory) or a containerd identifier: letters
//!   and digits, with single `.`, `_` or `-` between them, at most 76 bytes — one plain path
//!   component, never `.`, `..`, absolute, or holding `/`, NUL or control characters.
//! - `path` is the mount path in the container (or the directory saved): `/`, or one optional
//!   leading `/` then non-empty components that are neither `.` nor `..`, no NUL, at most 4096
//!   bytes. It always lands beneath the target root, whatever its leading `/`.
//! - The sections of one `container` and `path` are its layers, bottom to top: `layer` 0, 1,
//!   ... in section order, all of one `kind` (one section, layer 0, when it is not stacked).

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What kind of upper layer a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    /// A container's rootfs overlay upper directory.
    RootfsUpper,
    /// A pod volume (e.g. an emptyDir's overlay upper).
    PodVolume,
    /// A tmpfs mount's contents.
    Tmpfs,
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResourceKind::RootfsUpper => "rootfs-upper",
            ResourceKind::PodVolume => "pod-volume",
            ResourceKind::Tmpfs => "tmpfs",
        })
    }
}

impl std::str::FromStr for ResourceKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "rootfs-upper" => ResourceKind::RootfsUpper,
            "pod-volume" => ResourceKind::PodVolume,
            "tmpfs" => ResourceKind::Tmpfs,
            other => {
                return Err(format!(
                    "unknown kind {other:?} (rootfs-upper, pod-volume, tmpfs)"
                ))
            }
        })
    }
}

/// Which resource a section is the saved state of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceId {
    /// The container (or pod) it belongs to; empty when saved from a plain directory.
    pub container: String,
    /// The mount path (in the container) or directory it was saved from.
    pub path: String,
    pub kind: ResourceKind,
}

/// Longest `container` (containerd's limit for identifiers).
const MAX_CONTAINER: usize = 76;
/// Longest `path` (the kernel's PATH_MAX).
const MAX_PATH: usize = 4096;

impl ResourceId {
    /// The naming rules (see the module documentation); the refusal names the field and value.
    pub fn check(&self) -> Result<(), String> {
        check_container(&self.container)
            .map_err(|why| format!("resource.container {:?}: {why}", self.container))?;
        check_path(&self.path).map_err(|why| format!("resource.path {:?}: {why}", self.path))
    }

    /// Where this resource lands beneath a target root: `<container>/<path>` (without the
    /// container when it is empty), relative. Only meaningful for a checked resource.
    pub fn relative_target(&self) -> PathBuf {
        let mut p = PathBuf::new();
        if !self.container.is_empty() {
            p.push(&self.container);
        }
        let rel = self.path.strip_prefix('/').unwrap_or(&self.path);
        if !rel.is_empty() {
            p.push(rel);
        }
        p
    }
}

fn check_container(c: &str) -> Result<(), &'static str> {
    const RULE: &str = "not a container id (letters and digits with single '.', '_' or '-' \
                        between them, at most 76 bytes)";
    if c.is_empty() {
        return Ok(());
    }
    let separated_alnum = c
        .split(['.', '_', '-'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if c.len() > MAX_CONTAINER || !separated_alnum {
        return Err(RULE);
    }
    Ok(())
}

fn check_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty");
    }
    if p.len() > MAX_PATH {
        return Err("longer than 4096 bytes");
    }
    if p.contains('\0') {
        return Err("holds a NUL byte");
    }
    if p == "/" {
        return Ok(());
    }
    let rel = p.strip_prefix('/').unwrap_or(p);
    for c in rel.split('/') {
        match c {
            "" => return Err("has an empty component ('//' or a trailing '/')"),
            "." | ".." => return Err("has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// Shown with [`printable`] names: a manifest's text never reaches a terminal raw.
impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = printable(&self.path);
        if self.container.is_empty() {
            write!(f, "{} {path}", self.kind)
        } else {
            write!(f, "{} {}:{path}", self.kind, printable(&self.container))
        }
    }
}

/// `s` with every control character escaped (as `char::escape_debug` does), so that text from
/// a manifest cannot move the cursor, retitle the terminal or forge lines where it is shown.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Check every section's resource and layer, in order: each resource named by the rules, and
/// the sections of one container and path its layers 0, 1, ... in order and of one kind; the
/// refusal names the section(s).
pub fn check_all<'a>(
    resources: impl IntoIterator<Item = (&'a ResourceId, u32)>,
) -> Result<(), String> {
    // (container, path) -> (the last section, its layer, its kind).
    let mut seen: HashMap<(&str, &str), (usize, u32, ResourceKind)> = HashMap::new();
    for (i, (r, layer)) in resources.into_iter().enumerate() {
        r.check().map_err(|e| format!("section {i}: {e}"))?;
        let want = match seen.get(&(r.container.as_str(), r.path.as_str())) {
            None => 0,
            Some((last, last_layer, kind)) => {
                if *kind != r.kind {
                    return Err(format!(
                        "section {i}: resource.kind {} of container {:?} path {:?} is not section {last}'s ({kind})",
                        r.kind, r.container, r.path
                    ));
                }
                if layer == 0 {
                    return Err(format!(
                        "section {i}: resource.path {:?} of container {:?} is also section {last}'s",
                        r.path, r.container
                    ));
                }
                last_layer + 1
            }
        };
        if layer != want {
            return Err(format!(
                "section {i}: layer {layer} of container {:?} path {:?}: expected layer {want} (layers go 0, 1, ... bottom to top, in section order)",
                r.container, r.path
            ));
        }
        seen.insert((&r.container, &r.path), (i, layer, r.kind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(container: &str, path: &str) -> ResourceId {
        ResourceId {
            container: container.into(),
            path: path.into(),
            kind: ResourceKind::PodVolume,
        }
    }

    #[test]
    fn plain_names_pass_and_land_beneath_the_root() {
        for (c, p, rel) in [
            ("", "/", ""),
            ("c1", "/", "c1"),
            ("c1", "/data/x", "c1/data/x"),
            ("a.b_c-d", "data", "a.b_c-d/data"),
            ("", "/var/lib/upper", "var/lib/upper"),
        ] {
            let r = id(c, p);
            r.check().unwrap();
            assert_eq!(r.relative_target(), PathBuf::from(rel));
        }
        let long = "x".repeat(76);
        id(&long, "/").check().unwrap();
    }

    #[test]
    fn names_that_could_leave_the_root_are_refused_by_field_and_value() {
        for c in [
            "..",
            ".",
            "/abs",
            "a/b",
            "a\0b",
            "a b",
            "-a",
            "a..b",
            &"x".repeat(77),
        ] {
            let e = id(c, "/").check().unwrap_err();
            assert!(e.starts_with(&format!("resource.container {c:?}")), "{e}");
        }
        for p in [
            "",
            "..",
            "/..",
            "a/../b",
            "//",
            "/a/",
            "./a",
            "a\0",
            &"a/".repeat(2049),
        ] {
            let e = id("c", p).check().unwrap_err();
            assert!(e.starts_with(&format!("resource.path {p:?}")), "{e}");
        }
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("/data/é x"), "/data/é x");
        assert_eq!(
            printable("a\u{1b}]0;t\u{7}\nb\rc"),
            "a\\u{1b}]0;t\\u{7}\\nb\\rc"
        );
        assert_eq!(id("c", "/a\nb").to_string(), "pod-volume c:/a\\nb");
    }

    #[test]
    fn one_resource_per_container_and_path_unless_stacked_in_order() {
        let (a, b, y) = (id("c", "/x"), id("c", "/x"), id("c", "/y"));
        let e = check_all([(&a, 0), (&y, 0), (&b, 0)]).unwrap_err();
        assert!(e.contains("section 2") && e.contains("section 0's"), "{e}");
        check_all([(&a, 0), (&id("d", "/x"), 0), (&id("", "/x"), 0)]).unwrap();
        // Stacked: layers 0, 1, 2 in section order.
        check_all([(&a, 0), (&y, 0), (&b, 1), (&a, 2)]).unwrap();
        for (layers, what) in [
            ([1, 2], "expected layer 0"),
            ([0, 2], "expected layer 1"),
            ([0, 0], "also section 0's"),
        ] {
            let e = check_all([(&a, layers[0]), (&b, layers[1])]).unwrap_err();
            assert!(e.contains(what), "{layers:?}: {e}");
        }
        let mut other_kind = id("c", "/x");
        other_kind.kind = ResourceKind::Tmpfs;
        let e = check_all([(&a, 0), (&other_kind, 1)]).unwrap_err();
        assert!(e.contains("resource.kind tmpfs"), "{e}");
    }
}
