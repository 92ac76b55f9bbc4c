//! Verifying a filesystem checkpoint without extracting it: the manifest is valid for this
//! build and its data file, every section parses as a tar stream whose names stay inside the
//! section, and every section's checksum and entry count match; the block hashes file, when
//! the checkpoint has one, holds each section's values (merging into its checksum).

use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::pool::parallel;
use crate::section::read_section;

/// Check the checkpoint in `dir`; the manifest when everything holds.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let (manifest, data) = Manifest::open(dir)?;
    let indices: Vec<usize> = (0..manifest.sections.len()).collect();
    parallel(&indices, |_, i| {
        read_section(&data, *i, &manifest.sections[*i], |_, r| {
            r.content(|_, _| Ok(())).map_err(|reason| Error::Section {
                section: *i,
                resource: manifest.sections[*i].resource.to_string(),
                reason,
            })
        })
        .map(|_| ())?;
        crate::blocks_file::load(dir, &manifest, *i).map(|_| ())
    })?;
    Ok(manifest)
}
