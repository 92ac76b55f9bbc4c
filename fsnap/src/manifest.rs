//! The manifest, `fscheckpoint.json`: what a filesystem checkpoint holds and where. Its types, the version
//! rules (a newer major is refused; minors only add what older readers may ignore inside
//! `extensions`), and validation against the data file (ranges inside it, in order, not
//! overlapping; counts sane). Unknown fields are refused: a manifest means exactly what this
//! build understands or nothing.
//!
//! Version 2.0 adds stacked sections: several sections of one resource (`container`, `path`),
//! each with its `layer` (0 the bottom; see [`crate::resource::check_all`]), the state of a
//! resource that was itself restored from a checkpoint (the restored layers, then its own
//! changes). An older reader could not ignore that (it would restore one layer and lose the
//! rest), so it is a major version: a checkpoint is written as 2.0 only when it holds a layer
//! above 0, else as 1.0, which every reader of version 1 reads as before.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint_files::{open_regular, read_regular};
use crate::error::{Error, Result};
pub use crate::resource::{ResourceId, ResourceKind};

/// File name of the manifest inside a checkpoint directory.
pub const MANIFEST_FILE: &str = "fscheckpoint.json";
/// File name of the data file (the concatenated tar sections).
pub const DATA_FILE: &str = "data.multitar";
/// The newest major version this build reads (and writes, for stacked sections).
pub const FORMAT_MAJOR: u32 = 2;
pub const FORMAT_MINOR: u32 = 0;
/// The major version written when no section is stacked (readable by every version-1 reader).
pub const UNSTACKED_MAJOR: u32 = 1;
/// The format's name, so a stray JSON file is not mistaken for a filesystem checkpoint.
pub const FORMAT_NAME: &str = "cryo-fscheckpoint";
/// The largest manifest read (a section takes about 400 bytes: some 40,000 sections).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// One tar section of the data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    pub resource: ResourceId,
    /// Byte range `[tar_start, tar_end)` of the data file holding this section's tar stream.
    pub tar_start: u64,
    pub tar_end: u64,
    /// `blake3:<hex>` of the bytes in the range.
    pub checksum: String,
    /// Entries (files, directories, links, ...) in the section.
    pub files: u64,
    /// Bytes of file content as the files are seen (sparse files at their full size).
    pub logical_bytes: u64,
    /// Bytes of file content actually stored (holes are not).
    pub stored_bytes: u64,
    /// Its place among the sections of the same resource, 0 the bottom (version 2.0; absent
    /// means 0). A layer's whiteouts and opaque directories hide what the layers below hold.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub layer: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// `major.minor`.
    pub version: String,
    /// Who wrote it, e.g. `cryo-fsnap 0.1.0`.
    pub producer: String,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Name of the data file in the checkpoint directory.
    pub data_file: String,
    /// Its size in bytes.
    pub data_size: u64,
    pub sections: Vec<Section>,
    /// Room for additions by later minor versions; readers ignore what they do not know.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// A manifest of this build's format version.
    /// Version 2.0 when a section is stacked, else 1.0.
    pub fn new(sections: Vec<Section>, data_size: u64) -> Manifest {
        let major = if sections.iter().any(|s| s.layer > 0) {
            FORMAT_MAJOR
        } else {
            UNSTACKED_MAJOR
        };
        Manifest {
            format: FORMAT_NAME.into(),
            version: format!("{major}.{FORMAT_MINOR}"),
            producer: format!("cryo-fsnap {}", env!("CARGO_PKG_VERSION")),
            created: rfc3339_now(),
            data_file: DATA_FILE.into(),
            data_size,
            sections,
            extensions: BTreeMap::new(),
        }
    }

    /// Read and validate the manifest of the checkpoint in `dir` (against its data file).
    pub fn load(dir: &Path) -> Result<Manifest> {
        Manifest::open(dir).map(|(m, _)| m)
    }

    /// Read and validate the manifest of the checkpoint in `dir`, and open its data file
    /// (a regular file of the size the manifest says) for reading.
    pub fn open(dir: &Path) -> Result<(Manifest, File)> {
        let path = dir.join(MANIFEST_FILE);
        let err = |reason: String| Error::Manifest {
            path: path.clone(),
            reason,
        };
        let bytes = read_regular(&path, MAX_MANIFEST_BYTES).map_err(&err)?;
        let manifest = Manifest::parse(&bytes, &path)?;
        let data = manifest.open_data(dir)?;
        Ok((manifest, data))
    }

    /// Section `index` of this manifest's checkpoint in `dir`; an error naming the checkpoint
    /// when there is no such section.
    pub fn section(&self, dir: &Path, index: usize) -> Result<&Section> {
        self.sections.get(index).ok_or_else(|| Error::Target {
            path: dir.into(),
            reason: format!(
                "has {} sections; there is no section {index}",
                self.sections.len()
            ),
        })
    }

    /// Open the data file of this manifest's checkpoint in `dir` for reading: a regular file
    /// of the size the manifest says.
    pub fn open_data(&self, dir: &Path) -> Result<File> {
        let err = |reason: String| Error::Manifest {
            path: dir.join(MANIFEST_FILE),
            reason,
        };
        let data_path = dir.join(&self.data_file);
        let (data, size) = open_regular(&data_path)
            .map_err(|why| err(format!("data file {}: {why}", data_path.display())))?;
        if size != self.data_size {
            return Err(err(format!(
                "data file {} is {size} bytes, the manifest says {} (truncated or replaced)",
                self.data_file, self.data_size
            )));
        }
        Ok(data)
    }

    /// Parse and validate manifest bytes (`path` only names it in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let err = |reason: String| Error::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        // Check the version before the shape: a newer major may look entirely different.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not JSON: {e}")))?;
        if let Some(v) = value.get("version").and_then(|v| v.as_str()) {
            let major = parse_version(v).map_err(err)?.0;
            if major > FORMAT_MAJOR {
                return Err(Error::NewerFormat {
                    found: v.to_string(),
                    supported: FORMAT_MAJOR,
                });
            }
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
        m.validate().map_err(err)?;
        Ok(m)
    }

    /// Internal consistency: format name and version, a plain data file name, resources named
    /// by the rules of [`crate::resource`], section ranges in order inside the data file,
    /// counts that add up.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT_NAME {
            return Err(format!("format {:?} is not {FORMAT_NAME:?}", self.format));
        }
        let (major, _) = parse_version(&self.version)?;
        if !(UNSTACKED_MAJOR..=FORMAT_MAJOR).contains(&major) {
            return Err(format!("unsupported version {}", self.version));
        }
        if major < FORMAT_MAJOR {
            if let Some(i) = self.sections.iter().position(|s| s.layer > 0) {
                return Err(format!(
                    "section {i}: layer {} needs version {FORMAT_MAJOR}.0 (the manifest says {})",
                    self.sections[i].layer, self.version
                ));
            }
        }
        if self.data_file.is_empty()
            || self.data_file.contains('/')
            || self.data_file == "."
            || self.data_file == ".."
            || self.data_file == MANIFEST_FILE
            || self.data_file == crate::blocks_file::BLOCKS_FILE
        {
            return Err(format!(
                "data_file {:?} is not a plain file name",
                self.data_file
            ));
        }
        crate::blocks_file::named(self)?;
        crate::resource::check_all(self.sections.iter().map(|s| (&s.resource, s.layer)))?;
        let mut end = 0u64;
        for (i, s) in self.sections.iter().enumerate() {
            if s.tar_start < end {
                return Err(format!(
                    "section {i}: tar_start {} overlaps the previous section (ends at {end})",
                    s.tar_start
                ));
            }
            if s.tar_end < s.tar_start || (s.tar_end - s.tar_start) % 512 != 0 {
                return Err(format!(
                    "section {i}: range {}..{} is not a whole number of tar blocks",
                    s.tar_start, s.tar_end
                ));
            }
            if s.tar_end > self.data_size {
                return Err(format!(
                    "section {i}: tar_end {} is beyond the data file ({} bytes)",
                    s.tar_end, self.data_size
                ));
            }
            if s.stored_bytes > s.tar_end - s.tar_start {
                return Err(format!(
                    "section {i}: stored_bytes {} exceed the section's {} bytes",
                    s.stored_bytes,
                    s.tar_end - s.tar_start
                ));
            }
            if s.stored_bytes > s.logical_bytes {
                return Err(format!(
                    "section {i}: stored_bytes {} exceed logical_bytes {}",
                    s.stored_bytes, s.logical_bytes
                ));
            }
            if s.files > (s.tar_end - s.tar_start) / 512 {
                return Err(format!(
                    "section {i}: {} files cannot fit in {} bytes",
                    s.files,
                    s.tar_end - s.tar_start
                ));
            }
            checksum_hex(&s.checksum).map_err(|e| format!("section {i}: {e}"))?;
            end = s.tar_end;
        }
        Ok(())
    }

    /// Write the manifest as `dir/fscheckpoint.json`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, bytes)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        Ok(path)
    }
}

/// `"1.0"` → (1, 0).
fn parse_version(v: &str) -> std::result::Result<(u32, u32), String> {
    let (a, b) = v
        .split_once('.')
        .ok_or_else(|| format!("version {v:?} is not major.minor"))?;
    let major = a
        .parse()
        .map_err(|_| format!("version {v:?} is not major.minor"))?;
    let minor = b
        .parse()
        .map_err(|_| format!("version {v:?} is not major.minor"))?;
    Ok((major, minor))
}

/// The checksum text for `hash`.
pub fn checksum_text(hash: &blake3::Hash) -> String {
    format!("blake3:{}", hash.to_hex())
}

/// The hex digest of a `blake3:<64 hex>` checksum.
pub fn checksum_hex(c: &str) -> std::result::Result<&str, String> {
    let hex = c
        .strip_prefix("blake3:")
        .ok_or_else(|| format!("checksum {c:?} is not blake3:<hex>"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("checksum {c:?} is not blake3:<64 hex digits>"));
    }
    Ok(hex)
}

/// Now as RFC 3339 UTC with seconds.
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new(
            vec![Section {
                resource: ResourceId {
                    container: "c1".into(),
                    path: "/".into(),
                    kind: ResourceKind::RootfsUpper,
                },
                tar_start: 0,
                tar_end: 2048,
                checksum: checksum_text(&blake3::hash(b"x")),
                files: 1,
                logical_bytes: 10,
                stored_bytes: 10,
                layer: 0,
            }],
            2048,
        );
        m.created = "2026-01-01T00:00:00Z".into();
        m
    }

    fn parse(m: &serde_json::Value) -> Result<Manifest> {
        Manifest::parse(&serde_json::to_vec(m).unwrap(), Path::new("m.json"))
    }

    #[test]
    fn a_written_manifest_parses_back() {
        let m = sample();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(parse(&v).unwrap(), m);
    }

    #[test]
    fn a_newer_major_is_refused_by_name() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = "3.0".into();
        v["something_new"] = true.into();
        let e = parse(&v).unwrap_err();
        assert!(matches!(e, Error::NewerFormat { .. }), "{e}");
        assert!(e.to_string().contains("3.0"), "{e}");
    }

    #[test]
    fn a_newer_minor_with_extensions_is_read() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = "1.7".into();
        v["extensions"] = serde_json::json!({"future": {"x": 1}});
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn stacked_sections_are_version_2_and_refused_in_version_1() {
        let mut m = sample();
        assert_eq!(m.version, "1.0");
        let mut top = m.sections[0].clone();
        top.layer = 1;
        top.tar_start = 2048;
        top.tar_end = 4096;
        m.sections.push(top);
        m.data_size = 4096;
        let stacked = Manifest::new(m.sections.clone(), 4096);
        assert_eq!(stacked.version, "2.0");
        let v = serde_json::to_value(&stacked).unwrap();
        assert_eq!(v["sections"][1]["layer"], 1);
        assert!(v["sections"][0].get("layer").is_none());
        assert_eq!(parse(&v).unwrap().sections[1].layer, 1);
        // A 1.x manifest cannot carry layers (a version-1 reader would lose them).
        let mut v1 = v.clone();
        v1["version"] = "1.0".into();
        let e = parse(&v1).unwrap_err().to_string();
        assert!(e.contains("section 1: layer 1 needs version 2.0"), "{e}");
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["surprise"] = 1.into();
        assert!(parse(&v).unwrap_err().to_string().contains("surprise"));
        let mut v = serde_json::to_value(sample()).unwrap();
        v["sections"][0].as_object_mut().unwrap().remove("checksum");
        assert!(parse(&v).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn impossible_numbers_are_refused() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("tar_end", serde_json::json!(4096)),
            ("tar_end", serde_json::json!(100)),
            ("tar_start", serde_json::json!(4096)),
            ("files", serde_json::json!(1_000_000)),
            ("stored_bytes", serde_json::json!(1u64 << 40)),
            ("tar_end", serde_json::json!(1e30)),
            ("tar_end", serde_json::json!(-1)),
        ];
        for (field, value) in cases {
            let mut v = serde_json::to_value(sample()).unwrap();
            v["sections"][0][field] = value.clone();
            assert!(parse(&v).is_err(), "{field}={value} accepted");
        }
    }

    #[test]
    fn data_file_names_are_plain() {
        for name in ["../x", "/etc/passwd", "", "fscheckpoint.json"] {
            let mut v = serde_json::to_value(sample()).unwrap();
            v["data_file"] = name.into();
            assert!(parse(&v).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20454), (2026, 1, 1));
    }
}
