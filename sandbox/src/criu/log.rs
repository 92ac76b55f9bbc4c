//! CRIU's log file: where it is and the line that says why CRIU failed, so that an error can
//! quote it and point to the whole log.

use std::path::Path;

/// Errors CRIU logs that say nothing about why it failed: on every run here (no
/// CAP_SYS_RESOURCE to raise its own descriptor limit), and its closing summaries.
const NOISE: &[&str] = &[
    "Can't setup RLIMIT_NOFILE",
    "Restoring FAILED",
    "Dumping FAILED",
];

/// Whether a CRIU error line is known noise.
pub fn is_noise(line: &str) -> bool {
    NOISE.iter().any(|n| line.contains(n))
}

/// The last error line of CRIU's log (`... Error (file:line): ...`) that is not noise, else its
/// last non-empty line; `None` when the log cannot be read.
pub fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| (l.contains("Error (") || l.contains("Error:")) && !is_noise(l))
        .or(lines.last())
        .map(|l| l.to_string())
}

/// `reason`, CRIU's own last error line and where its log is.
pub fn explain(reason: &str, log: &Path) -> String {
    match last_error(log) {
        Some(line) => format!("{reason}; CRIU's log says {line} (log: {})", log.display()),
        None => format!("{reason} (CRIU's log {} is unreadable)", log.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_line_is_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("restore.log");
        std::fs::write(
            &log,
            "(00.001) Version: 4.1.1\n(00.002) Error (criu/cr-restore.c:1): first\n\
             (00.003) Error (criu/image.c:2): can't open inventory\n\
             (00.004) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self\n\
             (00.005) Error (criu/cr-restore.c:2320): Restoring FAILED.\n",
        )
        .unwrap();
        let text = explain("restore failed", &log);
        assert!(text.contains("can't open inventory"), "{text}");
        assert!(text.contains(&log.display().to_string()), "{text}");
        assert!(!text.contains("first"), "{text}");
    }
}
