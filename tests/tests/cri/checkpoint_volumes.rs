//! CRI cases: pod volumes carried by CRI checkpoint/restore.

use super::Case;

pub(super) const CASES: &[(&str, Case)] = &[];

/// Cases of this module that need containerd 2.x's CRI (ignored on 1.6 with the suite's reason).
pub(super) const NEEDS_V2: &[&str] = &[];
