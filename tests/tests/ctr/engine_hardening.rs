//! ctr cases: engine_hardening.

use super::Case;

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[];

pub const CASES: &[(&str, Case)] = &[];
