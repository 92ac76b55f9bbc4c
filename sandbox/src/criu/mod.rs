//! CRIU as the engine drives it: finding the binary ([`locate`]), one `criu swrk` RPC session
//! ([`swrk`]), quoting its log on failure ([`log`]), the checkpoint directory's manifest
//! ([`manifest`]), what of a container is external to CRIU's images ([`externals`]) and the
//! private overlay volumes' files carried beside the images ([`volumes`]).
//!
//! Why RPC (`criu swrk`) rather than the CLI: the answer to each request says whether it
//! worked (and, for a restore, the restored init's pid) on a socket, so nothing depends on
//! CRIU's exit status — which an embedder's SIGCHLD reaper (`waitpid(-1)`) may collect first.
//! The session's process is never waited for here; the embedder's reaper collects it. RPC also
//! lets the engine place CRIU in the container's cgroup before a restore, hand it file
//! descriptors (new stdio pipes, joined namespaces) by number, and receive a terminal's new pty
//! master. The messages are `rust-criu`'s generated protobuf types; the session is ours because
//! `rust-criu`'s own calls wait for the child and return no restore pid.
//!
//! The container-level operations are [`crate::Container::checkpoint`] and
//! [`crate::Container::prepare_restore`].

pub mod creds;
pub mod externals;
pub mod log;
pub mod manifest;
pub mod swrk;
pub mod volumes;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the binary looked up on `PATH` when no explicit path is configured.
pub const CRIU_BINARY: &str = "criu";

/// The CRIU binary to use: `configured` when given (it must be an executable file), else the
/// first `criu` on `path_var` (a `PATH`-style list). The error names what is missing.
pub fn locate(configured: Option<&Path>, path_var: Option<&str>) -> Result<PathBuf> {
    if let Some(path) = configured {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(Error::CriuMissing(format!(
                "the configured CRIU binary {} is not an executable file",
                path.display()
            )))
        };
    }
    let path_var = path_var.unwrap_or_default();
    std::env::split_paths(path_var)
        .map(|dir| dir.join(CRIU_BINARY))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            Error::CriuMissing(format!(
                "no `{CRIU_BINARY}` executable on PATH ({path_var}); install CRIU 4.x \
                 (scripts/setup builds it)"
            ))
        })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// CRIU's version as `major.minor[.sublevel]`, asked over RPC.
pub fn version(binary: &Path) -> Result<String> {
    let mut session = swrk::Session::spawn(binary, [None, None, None], Vec::new())?;
    let resp = session.call(swrk::ReqType::VERSION, None)?;
    let v = &resp.version;
    let mut text = format!("{}.{}", v.major_number(), v.minor_number());
    if v.has_sublevel() {
        text.push_str(&format!(".{}", v.sublevel()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = locate(None, Some(&dir.path().display().to_string())).unwrap_err();
        assert!(matches!(err, Error::CriuMissing(_)), "{err}");
        assert!(err.to_string().contains("criu"), "{err}");
        let bogus = dir.path().join("criu");
        std::fs::write(&bogus, "").unwrap();
        let err = locate(Some(&bogus), None).unwrap_err();
        assert!(
            err.to_string().contains(&bogus.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn criu_is_found_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("criu");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(locate(None, Some(&path)).unwrap(), bin);
    }
}
