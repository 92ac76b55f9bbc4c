//! fsnap's error type: every failure names the checkpoint part (manifest, section, entry) and
//! what was wrong with it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is unreadable, malformed, or describes something impossible.
    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    /// The checkpoint was written by a newer, incompatible format.
    #[error(
        "filesystem checkpoint format {found} is newer than this build reads ({supported}.x); upgrade cryo"
    )]
    NewerFormat { found: String, supported: u32 },
    /// A section's bytes are wrong: checksum, truncation, or its tar stream.
    #[error("section {section} ({resource}): {reason}")]
    Section {
        section: usize,
        resource: String,
        reason: String,
    },
    /// One entry of a section is refused or could not be written.
    #[error("section {section}, entry {entry:?}: {reason}")]
    Entry {
        section: usize,
        entry: String,
        reason: String,
    },
    /// The destination of a save or restore cannot be used.
    #[error("{path}: {reason}")]
    Target { path: PathBuf, reason: String },
    /// A file or directory being saved could not be read, or changed during the save.
    #[error("source {path}: {reason}")]
    Source { path: PathBuf, reason: String },
    /// The caller stopped the work (see [`crate::Progress::cancel`]).
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
