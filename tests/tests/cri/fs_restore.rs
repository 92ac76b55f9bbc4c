//! CRI cases: restore of filesystem checkpoints into new pods (`dev.cryo.fs-restore.image-path`).

use super::Case;

pub(super) const CASES: &[(&str, Case)] = &[];

/// Cases of this module that need containerd 2.x's CRI (ignored on 1.6 with the suite's reason).
pub(super) const NEEDS_V2: &[&str] = &[];
