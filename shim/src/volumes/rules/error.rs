//! The volume rules' error: a refused annotation, named by its key.

use std::fmt;

/// A refused annotation: the message names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation {}: {}", self.key, self.message)
    }
}

impl std::error::Error for RuleError {}

pub(super) fn refuse(key: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError {
        key: key.into(),
        message: message.into(),
    }
}
