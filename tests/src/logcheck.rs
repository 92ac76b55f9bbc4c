//! What containerd's log may not say about cryo: no error or warning line that names cryo's
//! runtime or binary, and none about `-info` (containerd 2.x runs `SHIM -info` for every
//! container and logs an error when the answer is not a RuntimeInfo). Each run's log is kept
//! under the target directory for reading after the temp dir is gone.

use std::path::PathBuf;

/// What in a warning or error line means cryo caused it.
const CRYO_NEEDLES: &[&str] = &["io.containerd.cryo.v2", "containerd-shim-cryo-v2", "-info"];

/// The error and warning lines of `log` caused by cryo.
pub fn cryo_complaints(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| is_complaint(l))
        .filter(|l| CRYO_NEEDLES.iter().any(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Whether a logrus line is at warning level or worse.
fn is_complaint(line: &str) -> bool {
    ["level=warning", "level=error", "level=fatal", "level=panic"]
        .iter()
        .any(|l| line.contains(l))
}

/// Where the log of this test binary's run against `release` is kept:
/// `<target>/test-logs/<release>-<binary>.log` (the last run's).
pub fn kept_log_path(release: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let binary = exe.file_name()?.to_str()?.split('-').next()?.to_string();
    let target = exe.ancestors().nth(3)?;
    Some(
        target
            .join("test-logs")
            .join(format!("{}-{binary}.log", release.replace(' ', "-"))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_warnings_and_errors_about_cryo_count() {
        let log = concat!(
            "time=\"t\" level=error msg=\"failed to load runtime info\" error=\"failed to run [/x/containerd-shim-cryo-v2 -info]: exit status 1\" runtime=io.containerd.cryo.v2\n",
            "time=\"t\" level=info msg=\"starting io.containerd.cryo.v2\"\n",
            "time=\"t\" level=error msg=\"failed to load cni during init\"\n",
            "time=\"t\" level=warning msg=\"cleanup warnings\" runtime=io.containerd.cryo.v2\n",
        );
        let found = cryo_complaints(log);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("-info"));
        assert!(found[1].contains("cleanup warnings"));
    }
}
