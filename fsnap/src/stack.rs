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
    ) -> Result<Section> {
        let s = &self.section;
        let fail = |reason: String| Error::Source {
            path: self.checkpoint.clone(),
            reason: format!("section {} ({}): {reason}", self.index, s.resource),
        };
        let mut w = SectionWriter::new(data, start, direct, progress);
        if !w
            .copy_from(&self.data, s.tar_start, self.len())
            .map_err(|e| fail(format!("read: {e}")))?
        {
            return Err(fail("the data file ends inside the section".into()));
        }
        let (hash, written) = w.finish()?;
        let want = checksum_hex(&s.checksum).map_err(&fail)?;
        if hash.to_hex().as_str() != want || written != self.len() {
            return Err(fail(format!(
                "checksum mismatch: the data is corrupt or was changed (blake3 {} != {want})",
                hash.to_hex()
            )));
        }
        Ok(Section {
            resource: resource.clone(),
            tar_start: start,
            tar_end: start + written,
            checksum: checksum_text(&hash),
            files: s.files,
            logical_bytes: s.logical_bytes,
            stored_bytes: s.stored_bytes,
            layer,
        })
    }
}
