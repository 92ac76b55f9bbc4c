//! Stage 1: the mount hints, parsed from the annotations under cryo's prefix and gVisor's
//! (aliases that must agree), every key, volume name, field and option checked.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::error::{refuse, RuleError};
use super::kubelet::is_normal;
use crate::annotations::{GVISOR_MOUNT_PREFIX, MOUNT_PREFIX};

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

/// The hint fields, in the order their keys are named in errors.
const FIELDS: [&str; 4] = ["source", "type", "share", "options"];

/// Mount flags an `options` hint may carry.
pub(super) const ALLOWED_OPTIONS: &[&str] = &[
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::rules::test_support::ann;

    fn err_key(pairs: &[(&str, &str)]) -> String {
        parse_hints(&ann(pairs)).expect_err("must be refused").key
    }

    #[test]
    fn gvisor_keys_are_aliases() {
        let cryo = parse_hints(&ann(&[
            ("dev.cryo.spec.mount.ws.type", "tmpfs"),
            ("dev.cryo.spec.mount.ws.share", "pod"),
        ]))
        .unwrap();
        let gvisor = parse_hints(&ann(&[
            ("dev.gvisor.spec.mount.ws.type", "tmpfs"),
            ("dev.gvisor.spec.mount.ws.share", "pod"),
        ]))
        .unwrap();
        assert_eq!(gvisor, cryo);
        assert_eq!(cryo["ws"].typ, Some(HintType::Tmpfs));
        assert_eq!(cryo["ws"].share, Some(Share::Pod));
        // Both prefixes agreeing is fine.
        let both = parse_hints(&ann(&[
            ("dev.gvisor.spec.mount.ws.type", "tmpfs"),
            ("dev.cryo.spec.mount.ws.type", "tmpfs"),
            ("dev.gvisor.spec.mount.ws.share", "pod"),
        ]))
        .unwrap();
        assert_eq!(both, cryo);
    }

    #[test]
    fn conflicting_aliases_are_refused_naming_the_key() {
        let e = parse_hints(&ann(&[
            ("dev.cryo.spec.mount.ws.type", "bind"),
            ("dev.gvisor.spec.mount.ws.type", "tmpfs"),
            ("dev.cryo.spec.mount.ws.share", "pod"),
        ]))
        .unwrap_err();
        assert_eq!(e.key, "dev.cryo.spec.mount.ws.type");
        assert!(
            e.to_string().contains("dev.gvisor.spec.mount.ws.type"),
            "{e}"
        );
        assert!(e.to_string().contains("conflicting"), "{e}");
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
    fn unknown_type_share_field_or_option_is_refused() {
        assert_eq!(
            err_key(&[("dev.cryo.spec.mount.ws.type", "nfs")]),
            "dev.cryo.spec.mount.ws.type"
        );
        assert_eq!(
            err_key(&[
                ("dev.cryo.spec.mount.ws.type", "bind"),
                ("dev.gvisor.spec.mount.ws.share", "everyone")
            ]),
            "dev.gvisor.spec.mount.ws.share"
        );
        assert_eq!(
            err_key(&[("dev.cryo.spec.mount.ws.colour", "red")]),
            "dev.cryo.spec.mount.ws.colour"
        );
        assert_eq!(
            err_key(&[
                ("dev.cryo.spec.mount.ws.type", "bind"),
                ("dev.cryo.spec.mount.ws.options", "ro,suid,uid=0")
            ]),
            "dev.cryo.spec.mount.ws.options"
        );
        assert_eq!(
            err_key(&[("dev.cryo.spec.mount.ws.share", "pod")]),
            "dev.cryo.spec.mount.ws.type"
        );
    }
}
