//! What containerd's log may not say about cryo: no error or warning line that names cryo's
//! runtime or binary (cryo's shim marks each of its own lines `runtime=io.containerd.cryo.v2`),
//! and none about `-info` (containerd 2.x runs `SHIM -info` for every container and logs an
//! error when the answer is not a RuntimeInfo). Lines of a known, still open cause are listed
//! with it in [`KNOWN`]: teardown prints them every run, and fails on any other. Each run's log
//! is kept under the target directory for reading after the temp dir is gone.

use std::path::PathBuf;

/// What in a warning or error line means cryo caused it.
const CRYO_NEEDLES: &[&str] = &["io.containerd.cryo.v2", "containerd-shim-cryo-v2", "-info"];

/// Warnings cryo still causes, each with what identifies it and why it stays open.
pub const KNOWN: &[(&[&str], &str)] = &[(
    &["msg=\"copy to ", "Broken pipe"],
    "shim/src/stdio.rs copy_out warns on EPIPE, which is the normal end when the FIFO's reader \
     (a detached or finished ctr) has gone; runc's shim is silent there",
)];

/// Warnings that report cryo doing its job on hostile input: not complaints.
pub const EXPECTED: &[(&[&str], &str)] = &[
    (
        &["msg=\"refused a connection from uid "],
        "the shim refused a peer that is neither root nor containerd's uid (the socket cases \
         connect as uid 65534 on purpose)",
    ),
    (
        &["msg=\"lazy layer: read node ", "checksum mismatch"],
        "a lazy layer refused to serve a block that does not match its checksum (a case \
         changes a byte of a checkpoint's file data on purpose)",
    ),
    (
        &["background fill failed", "checksum mismatch"],
        "the layer cache refused to keep a section that does not match its checksum (the same \
         case)",
    ),
];

/// The error and warning lines of a log caused by cryo.
#[derive(Debug, Default)]
pub struct Complaints {
    /// Lines of no known cause: a failure.
    pub new: Vec<String>,
    /// Lines of a cause in [`KNOWN`], with it.
    pub known: Vec<(String, &'static str)>,
}

/// The error and warning lines of `log` caused by cryo.
pub fn cryo_complaints(log: &str) -> Complaints {
    let mut found = Complaints::default();
    for line in log
        .lines()
        .filter(|l| is_complaint(l))
        .filter(|l| CRYO_NEEDLES.iter().any(|n| l.contains(n)))
        .filter(|l| {
            !EXPECTED
                .iter()
                .any(|(marks, _)| marks.iter().all(|m| l.contains(m)))
        })
    {
        match KNOWN
            .iter()
            .find(|(marks, _)| marks.iter().all(|m| line.contains(m)))
        {
            Some((_, why)) => found.known.push((line.to_string(), why)),
            None => found.new.push(line.to_string()),
        }
    }
    found
}

/// Whether a logrus line is at warning level or worse (`warn` is how the containerd-shim
/// crate's logger spells `warning`).
fn is_complaint(line: &str) -> bool {
    ["level=warn", "level=error", "level=fatal", "level=panic"]
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
            "time=\"t\" level=warning msg=\"copy to /f: Broken pipe (os error 32)\" runtime=io.containerd.cryo.v2\n",
            "time=\"t\" level=warning msg=\"copy to /f: Broken pipe (os error 32)\" runtime=io.containerd.runc.v2\n",
            "time=\"t\" level=warning msg=\"refused a connection from uid 65534 (pid Some(1))\" runtime=io.containerd.cryo.v2\n",
        );
        let found = cryo_complaints(log);
        assert_eq!(found.new.len(), 2, "{found:?}");
        assert!(found.new[0].contains("-info"));
        assert!(found.new[1].contains("cleanup warnings"));
        assert_eq!(found.known.len(), 1, "{found:?}");
    }
}
