//! The checks a spec must pass before anything is created or exec'd: each refusal names the
//! field and the value.

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

/// The spec must describe a Linux process to run.
pub(super) fn validate(spec: &Spec) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    }
    if spec.linux().is_none() {
        return Err(Error::InvalidSpec("linux section is missing".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_without_a_process_are_refused() {
        let spec: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2","linux":{}}"#).unwrap();
        assert!(validate(&spec).unwrap_err().to_string().contains("process"));
    }
}
