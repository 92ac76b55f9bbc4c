//! The trigger's annotations and their values, checked before anything is set up. A pod
//! enables the trigger with `dev.cryo.fscheckpoint.path` (the host directory the checkpoints
//! go to); `.resume` (keep running after, default false: the pod stops), `.direct` (O_DIRECT
//! writes), `.container-path` (what to save: `/`, a mount path, `all-volumes`/`all-tmpfs`,
//! comma-separated; default `/`) and `.keep` (how many of the trigger's checkpoints the
//! destination keeps, 1 to [`MAX_KEEP`], default [`DEFAULT_KEEP`], as kubelet keeps
//! `containerLogMaxFiles` logs; see [`super::destination::prune`]) complete it. `dev.cryo.fscheckpoint.enable=true` on a
//! container makes its trigger writable. gVisor's `dev.gvisor.internal.fscheckpoint.*` are
//! aliases. Every value is checked; a refusal names the annotation and the value.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::annotations::{FSCHECKPOINT_PREFIX, GVISOR_FSCHECKPOINT_PREFIX};

const PATH: &str = "path";
const RESUME: &str = "resume";
const DIRECT: &str = "direct";
const CONTAINER_PATH: &str = "container-path";
const KEEP: &str = "keep";
const ENABLE: &str = "enable";
const KNOWN: [&str; 6] = [PATH, RESUME, DIRECT, CONTAINER_PATH, KEEP, ENABLE];
/// Checkpoints a destination keeps when `.keep` is not set (kubelet's default
/// `containerLogMaxFiles`).
pub const DEFAULT_KEEP: u32 = 5;
/// The most `.keep` may ask for: every round is a full copy of the pod's filesystems.
pub const MAX_KEEP: u32 = 100;
/// Host trees a destination may not be in.
const FORBIDDEN_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// What a pod's trigger does (the same for every container of the pod).
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    /// Where numbered checkpoints go.
    pub path: PathBuf,
    pub resume: bool,
    pub direct: bool,
    /// `--path` values.
    pub paths: Vec<String>,
    /// How many of the trigger's numbered checkpoints the destination keeps after a round.
    pub keep: u32,
}

/// One container's trigger annotations.
#[derive(Debug, Default, PartialEq)]
pub struct Settings {
    /// The pod-level settings, when `.path` is set.
    pub pod: Option<PodSettings>,
    /// `.enable=true`.
    pub enable: bool,
}

/// Read the trigger's annotations of one container's spec.
pub fn parse(annotations: &HashMap<String, String>) -> Result<Settings, String> {
    // setting -> (annotation, value)
    let mut found: HashMap<&str, (&str, &str)> = HashMap::new();
    let mut keys: Vec<&String> = annotations.keys().collect();
    keys.sort();
    for key in keys {
        let value = annotations[key].as_str();
        let Some(setting) = key
            .strip_prefix(FSCHECKPOINT_PREFIX)
            .or_else(|| key.strip_prefix(GVISOR_FSCHECKPOINT_PREFIX))
        else {
            continue;
        };
        let Some(setting) = KNOWN.iter().find(|k| **k == setting) else {
            return Err(format!(
                "annotation {key}={value:?}: unknown setting (known: {})",
                KNOWN.join(", ")
            ));
        };
        if let Some((other, before)) = found.get(setting) {
            if *before != value {
                return Err(format!(
                    "annotations {other}={before:?} and {key}={value:?} disagree"
                ));
            }
        }
        found.insert(setting, (key.as_str(), value));
    }
    let boolean = |setting: &str| -> Result<bool, String> {
        match found.get(setting) {
            None => Ok(false),
            Some((_, "true")) => Ok(true),
            Some((_, "false")) => Ok(false),
            Some((key, value)) => Err(format!("annotation {key}={value:?}: not true or false")),
        }
    };
    let enable = boolean(ENABLE)?;
    let resume = boolean(RESUME)?;
    let direct = boolean(DIRECT)?;
    let Some((path_key, path)) = found.get(PATH) else {
        if let Some(setting) = [RESUME, DIRECT, CONTAINER_PATH, KEEP]
            .into_iter()
            .find(|s| found.contains_key(s))
            .or(enable.then_some(ENABLE))
        {
            let (key, value) = found[setting];
            return Err(format!(
                "annotation {key}={value:?}: the pod has no {FSCHECKPOINT_PREFIX}{PATH} \
                 (the destination that enables the trigger)"
            ));
        }
        return Ok(Settings { pod: None, enable });
    };
    check_destination(path).map_err(|why| format!("annotation {path_key}={path:?}: {why}"))?;
    let paths = match found.get(CONTAINER_PATH) {
        None => vec!["/".to_string()],
        Some((key, value)) => {
            let paths: Vec<String> = value.split(',').map(|p| p.trim().to_string()).collect();
            crate::pod_checkpoint::parse_paths(&paths)
                .map_err(|e| format!("annotation {key}={value:?}: {e}"))?;
            paths
        }
    };
    let keep = match found.get(KEEP) {
        None => DEFAULT_KEEP,
        Some((key, value)) => {
            parse_keep(value).map_err(|why| format!("annotation {key}={value:?}: {why}"))?
        }
    };
    Ok(Settings {
        pod: Some(PodSettings {
            path: PathBuf::from(path),
            resume,
            direct,
            paths,
            keep,
        }),
        enable,
    })
}

/// How a container's pod settings differ from the pod's: one phrase per setting, naming the
/// annotation and both values.
pub fn differences(container: &PodSettings, pod: &PodSettings) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |setting: &str, mine: String, pods: String| {
        if mine != pods {
            out.push(format!(
                "annotation {FSCHECKPOINT_PREFIX}{setting}={mine:?} differs from the pod's {pods:?}"
            ));
        }
    };
    differ(
        PATH,
        container.path.display().to_string(),
        pod.path.display().to_string(),
    );
    differ(RESUME, container.resume.to_string(), pod.resume.to_string());
    differ(DIRECT, container.direct.to_string(), pod.direct.to_string());
    differ(
        CONTAINER_PATH,
        container.paths.join(","),
        pod.paths.join(","),
    );
    differ(KEEP, container.keep.to_string(), pod.keep.to_string());
    out
}

/// A `.keep` value: a decimal integer from 1 to [`MAX_KEEP`], written plainly (no sign, no
/// leading zero, no spaces).
fn parse_keep(value: &str) -> Result<u32, String> {
    let plain = !value.is_empty()
        && value.len() <= 3
        && value.bytes().all(|b| b.is_ascii_digit())
        && !value.starts_with('0');
    match value.parse::<u32>() {
        Ok(n) if plain && (1..=MAX_KEEP).contains(&n) => Ok(n),
        _ => Err(format!("not an integer from 1 to {MAX_KEEP}")),
    }
}

/// A destination is an absolute, clean host path (no empty, `.` or `..` components, no
/// trailing slash), not `/`, and not in a kernel tree.
fn check_destination(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("not an absolute path");
    }
    if path == "/" {
        return Err("the host's root directory");
    }
    if path.contains('\0') || path.len() > 4096 {
        return Err("not a path");
    }
    if path[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("not a clean path (empty, '.' or '..' components)");
    }
    if FORBIDDEN_TREES
        .iter()
        .any(|t| path == *t || path.starts_with(&format!("{t}/")))
    {
        return Err("inside /proc, /sys or /dev");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_of(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn settings_and_aliases_parse() {
        assert_eq!(parse_of(&[("other", "x")]).unwrap(), Settings::default());
        let s = parse_of(&[
            ("dev.cryo.fscheckpoint.path", "/var/lib/ck"),
            ("dev.gvisor.internal.fscheckpoint.resume", "true"),
            ("dev.cryo.fscheckpoint.container-path", "/,all-volumes"),
            ("dev.gvisor.internal.fscheckpoint.enable", "true"),
            ("dev.cryo.fscheckpoint.enable", "true"),
        ])
        .unwrap();
        assert!(s.enable);
        let pod = s.pod.unwrap();
        assert_eq!(pod.path, PathBuf::from("/var/lib/ck"));
        assert!(pod.resume && !pod.direct);
        assert_eq!(pod.paths, vec!["/", "all-volumes"]);
        let s = parse_of(&[("dev.gvisor.internal.fscheckpoint.path", "/ck")]).unwrap();
        let pod = s.pod.unwrap();
        assert_eq!(pod.paths, vec!["/"]);
        assert_eq!(pod.keep, DEFAULT_KEEP);
        assert_eq!(DEFAULT_KEEP, 5);
    }

    #[test]
    fn keep_is_an_integer_from_1_to_100_under_either_name() {
        for (key, value, keep) in [
            ("dev.cryo.fscheckpoint.keep", "1", 1),
            ("dev.cryo.fscheckpoint.keep", "2", 2),
            ("dev.gvisor.internal.fscheckpoint.keep", "17", 17),
            ("dev.cryo.fscheckpoint.keep", "100", 100),
        ] {
            let s = parse_of(&[("dev.cryo.fscheckpoint.path", "/ck"), (key, value)]).unwrap();
            assert_eq!(s.pod.unwrap().keep, keep, "{key}={value}");
        }
        for value in [
            "0",
            "101",
            "-1",
            "+2",
            "02",
            " 2",
            "2 ",
            "two",
            "",
            "1.5",
            "4294967297",
            "1000",
        ] {
            let e = parse_of(&[
                ("dev.cryo.fscheckpoint.path", "/ck"),
                ("dev.cryo.fscheckpoint.keep", value),
            ])
            .unwrap_err();
            assert_eq!(
                e,
                format!(
                    "annotation dev.cryo.fscheckpoint.keep={value:?}: not an integer from 1 to 100"
                )
            );
        }
        let e = parse_of(&[
            ("dev.cryo.fscheckpoint.path", "/ck"),
            ("dev.cryo.fscheckpoint.keep", "2"),
            ("dev.gvisor.internal.fscheckpoint.keep", "3"),
        ])
        .unwrap_err();
        assert!(e.contains("disagree"), "{e}");
        let e = parse_of(&[("dev.cryo.fscheckpoint.keep", "2")]).unwrap_err();
        assert!(
            e.contains("keep=\"2\": the pod has no dev.cryo.fscheckpoint.path"),
            "{e}"
        );
        let pod = |keep: &str| {
            parse_of(&[
                ("dev.cryo.fscheckpoint.path", "/ck"),
                ("dev.cryo.fscheckpoint.keep", keep),
            ])
            .unwrap()
            .pod
            .unwrap()
        };
        assert_eq!(
            differences(&pod("3"), &pod("2")),
            vec!["annotation dev.cryo.fscheckpoint.keep=\"3\" differs from the pod's \"2\""]
        );
    }

    #[test]
    fn differences_name_the_annotation_and_both_values() {
        let pod = parse_of(&[("dev.cryo.fscheckpoint.path", "/ck")])
            .unwrap()
            .pod
            .unwrap();
        let mine = parse_of(&[
            ("dev.cryo.fscheckpoint.path", "/other"),
            ("dev.cryo.fscheckpoint.resume", "true"),
        ])
        .unwrap()
        .pod
        .unwrap();
        assert_eq!(
            differences(&mine, &pod),
            vec![
                "annotation dev.cryo.fscheckpoint.path=\"/other\" differs from the pod's \"/ck\"",
                "annotation dev.cryo.fscheckpoint.resume=\"true\" differs from the pod's \"false\"",
            ]
        );
        assert!(differences(&pod, &pod).is_empty());
    }

    #[test]
    fn hostile_values_are_refused_naming_annotation_and_value() {
        let p = "dev.cryo.fscheckpoint.path";
        for (pairs, expected) in [
            (
                vec![(p, "ck")],
                "dev.cryo.fscheckpoint.path=\"ck\": not an absolute path",
            ),
            (vec![(p, "/a/../etc")], "\"/a/../etc\": not a clean path"),
            (vec![(p, "/a//b")], "not a clean path"),
            (vec![(p, "/a/")], "not a clean path"),
            (vec![(p, "/")], "root directory"),
            (vec![(p, "")], "not an absolute path"),
            (vec![(p, "/proc/self/root/x")], "inside /proc"),
            (
                vec![(p, "/ck"), ("dev.cryo.fscheckpoint.resume", "yes")],
                "resume=\"yes\": not true or false",
            ),
            (
                vec![(p, "/ck"), ("dev.cryo.fscheckpoint.direct", "1")],
                "direct=\"1\": not true or false",
            ),
            (
                vec![(p, "/ck"), ("dev.cryo.fscheckpoint.container-path", "etc")],
                "container-path=\"etc\": --path \"etc\"",
            ),
            (
                vec![
                    (p, "/ck"),
                    ("dev.cryo.fscheckpoint.container-path", "/x/../y"),
                ],
                "container-path=\"/x/../y\"",
            ),
            (
                vec![(p, "/ck"), ("dev.cryo.fscheckpoint.resum", "true")],
                "dev.cryo.fscheckpoint.resum=\"true\": unknown setting",
            ),
            (
                vec![
                    (p, "/ck"),
                    ("dev.gvisor.internal.fscheckpoint.path", "/other"),
                ],
                "disagree",
            ),
            (
                vec![("dev.cryo.fscheckpoint.enable", "true")],
                "enable=\"true\": the pod has no dev.cryo.fscheckpoint.path",
            ),
            (
                vec![("dev.cryo.fscheckpoint.resume", "true")],
                "resume=\"true\": the pod has no",
            ),
            (
                vec![("dev.cryo.fscheckpoint.enable", "on")],
                "enable=\"on\": not true or false",
            ),
        ] {
            let e = parse_of(&pairs).unwrap_err();
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
    }
}
