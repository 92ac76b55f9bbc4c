//! Progress of a save or restore: counters the caller may read from another thread while the
//! work runs, and a flag the caller may set to stop a restore.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters a caller may watch while a save or restore runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Total bytes expected (known once planning is done).
    pub total: AtomicU64,
    /// Set by the caller to stop a restore: the extraction stops at the next entry (or chunk of
    /// a file's content) and fails with [`crate::Error::Cancelled`], leaving nothing behind.
    pub cancel: AtomicBool,
}

impl Progress {
    /// Ask the work to stop (see [`Progress::cancel`]).
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Whether the caller asked the work to stop.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}
