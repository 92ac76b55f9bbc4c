//! Stacked saves: a checkpoint whose sections are either directories walked now or sections of
//! another checkpoint copied verbatim. A resource that was itself restored from a checkpoint is
//! saved as its restored layers (copied: the same bytes, the same checksum, no re-walk) below
//! its own changes (walked), each section with its `layer` (see [`crate::manifest`]).
//!
//! A copied section is read from the other checkpoint's data file as its manifest (validated)
//! places it, hashed as it is written, and refused unless the hash is the manifest's checksum:
//! a changed or truncated source fails the save naming the checkpoint and the section.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::block_hash::BlockHashes;
use crate::error::{Error, Result};
use crate::manifest::{checksum_hex, checksum_text, Manifest, ResourceId, Section};
use crate::progress::Progress;
use crate::section_writer::SectionWriter;

/// One section of a stacked save.
#[derive(Debug, Clone)]
pub struct Input {
    pub resource: ResourceId,
    /// Its place among the inputs of the same resource (0 the bottom, in input order).
    pub layer: u32,
    pub content: Content,
}

/// What a section holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// A directory, walked and saved now.
    Dir(PathBuf),
    /// Section `index` of the checkpoint in `checkpoint`, copied verbatim.
    Section { checkpoint: PathBuf, index: usize },
}

impl Input {
    /// The directory this input walks, if it walks one.
    pub fn dir(&self) -> Option<&Path> {
        match &self.content {
            Content::Dir(d) => Some(d),
            Content::Section { .. } => None,
        }
    }
}

/// A section of another checkpoint, opened for copying.
pub(crate) struct Parent {
    checkpoint: PathBuf,
    index: usize,
    data: File,
    section: Section,
}

impl Parent {
    /// Open section `index` of the checkpoint in `checkpoint` (its manifest validated against
    /// its data file).
    pub(crate) fn open(checkpoint: &Path, index: usize) -> Result<Parent> {
        let (manifest, data) = Manifest::open(checkpoint)?;
        let section = manifest
            .sections
            .get(index)
            .cloned()
            .ok_or_else(|| Error::Source {
                path: checkpoint.into(),
                reason: format!(
                    "has {} sections; there is no section {index} to copy",
                    manifest.sections.len()
                ),
            })?;
        Ok(Parent {
            checkpoint: checkpoint.into(),
            index,
            data,
            section,
        })
    }

    /// Bytes the copy takes in the new data file.
    pub(crate) fn len(&self) -> u64 {
        self.section.tar_end - self.section.tar_start
    }

    /// Copy the section to `[start, start + len)` of `data` as `resource` at `layer`; its
    /// checksum is checked against the source manifest's.
    pub(crate) fn copy_into(
        &self,
        data: &File,
        start: u64,
        resource: &ResourceId,
        layer: u32,
        direct: bool,
        progress: &Progress,
    ) -> Result<(Section, BlockHashes)> {
        let s = &self.section;
        let fail = |reason: String| Error::Source {
            path: self.checkpoint.clone(),
            reason: format!("section {} ({}): {reason}", self.index, s.resource),
        };
        let mut w = SectionWriter::new(data, start, self.len(), direct, progress);
        if !w
            .copy_from(&self.data, s.tar_start, self.len())
            .map_err(|e| fail(format!("read: {e}")))?
        {
            return Err(fail("the data file ends inside the section".into()));
        }
        let (written, hashed) = w.finish()?;
        let want = checksum_hex(&s.checksum).map_err(&fail)?;
        let Some((hash, blocks)) = hashed.filter(|_| written == self.len()) else {
            return Err(fail(format!(
                "copied {written} of the section's {} bytes",
                self.len()
            )));
        };
        if hash.to_hex().as_str() != want {
            return Err(fail(format!(
                "checksum mismatch: the data is corrupt or was changed (blake3 {} != {want})",
                hash.to_hex()
            )));
        }
        let section = Section {
            resource: resource.clone(),
            tar_start: start,
            tar_end: start + written,
            checksum: checksum_text(&hash),
            files: s.files,
            logical_bytes: s.logical_bytes,
            stored_bytes: s.stored_bytes,
            layer,
        };
        Ok((section, blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ResourceKind, DATA_FILE};
    use crate::{save, save_stacked, verify, Progress, SaveOptions, Source};

    fn resource() -> ResourceId {
        ResourceId {
            container: "c".into(),
            path: "/".into(),
            kind: ResourceKind::RootfsUpper,
        }
    }

    fn stacked(ck1: &Path, top: &Path, out: &Path) -> Result<Manifest> {
        save_stacked(
            &[
                Input {
                    resource: resource(),
                    layer: 0,
                    content: Content::Section {
                        checkpoint: ck1.into(),
                        index: 0,
                    },
                },
                Input {
                    resource: resource(),
                    layer: 1,
                    content: Content::Dir(top.into()),
                },
            ],
            out,
            &SaveOptions::default(),
            &Progress::default(),
        )
    }

    #[test]
    fn a_copied_section_keeps_its_bytes_and_a_changed_one_fails_the_save() {
        let t = tempfile::tempdir().unwrap();
        let (bottom, top) = (t.path().join("bottom"), t.path().join("top"));
        std::fs::create_dir_all(&bottom).unwrap();
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(bottom.join("f1"), b"bottom file").unwrap();
        std::fs::write(top.join("f2"), b"top").unwrap();
        let ck1 = t.path().join("ck1");
        let m1 = save(
            &[Source {
                resource: resource(),
                dir: bottom,
            }],
            &ck1,
            &SaveOptions::default(),
            &Progress::default(),
        )
        .unwrap();
        assert_eq!(m1.version, "1.0");

        let ck2 = t.path().join("ck2");
        let m2 = stacked(&ck1, &top, &ck2).unwrap();
        assert_eq!(m2.version, "2.0");
        assert_eq!(m2.sections.len(), 2);
        let (s0, s1) = (&m2.sections[0], &m2.sections[1]);
        assert_eq!((s0.layer, s1.layer), (0, 1));
        assert_eq!(s0.checksum, m1.sections[0].checksum);
        assert_eq!(s0.files, m1.sections[0].files);
        assert_eq!(s1.tar_start % 4096, 0);
        verify(&ck2).unwrap();
        // Its layers are not one directory: a plain restore of both is refused by name.
        let e = crate::restore(
            &ck2,
            &crate::targets_under(&m2, &t.path().join("restored")),
            &crate::RestoreOptions::default(),
            &Progress::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sections 0 and 1 are layers 0 and 1"), "{e}");
        // A stacked checkpoint copies again as it is (a chain of restores).
        let ck3 = t.path().join("ck3");
        let m3 = save_stacked(
            &[0, 1].map(|index| Input {
                resource: resource(),
                layer: index as u32,
                content: Content::Section {
                    checkpoint: ck2.clone(),
                    index,
                },
            }),
            &ck3,
            &SaveOptions::default(),
            &Progress::default(),
        )
        .unwrap();
        assert_eq!(m3.sections[1].checksum, s1.checksum);

        // The source checkpoint's data changed: the copy fails naming it and the section,
        // and leaves nothing.
        let data = ck1.join(DATA_FILE);
        let mut bytes = std::fs::read(&data).unwrap();
        let at = bytes.windows(6).position(|w| w == b"bottom").unwrap();
        bytes[at] = b'B';
        std::fs::write(&data, &bytes).unwrap();
        let out = t.path().join("ck4");
        let e = stacked(&ck1, &top, &out).unwrap_err().to_string();
        assert!(
            e.contains(&ck1.display().to_string())
                && e.contains("section 0")
                && e.contains("checksum mismatch"),
            "{e}"
        );
        assert!(!out.exists());
        let e = stacked(&t.path().join("nothing"), &top, &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing"), "{e}");
        assert!(!out.exists());
    }
}
