//! Which containerd a run drives, chosen by `CRYO_TEST_CONTAINERD`: `1.6` (the default) is
//! Debian's containerd and ctr from PATH; `2.2` is containerd v2.2.7 from the archive that
//! ships next to this repository (`../shared/containerd-2.2/`, or `$CRYO_TEST_CONTAINERD_ARCHIVE`),
//! extracted once into a cache under the target directory. Where that archive is absent the
//! 2.x run cannot happen here: [`Release::unavailable`] says why, and the suites report every
//! trial as ignored with that reason (never as passed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The variable that picks the containerd.
pub const ENV: &str = "CRYO_TEST_CONTAINERD";
/// Overrides where the containerd 2.2.7 archive is.
pub const ARCHIVE_ENV: &str = "CRYO_TEST_CONTAINERD_ARCHIVE";
/// The archive's file name in `../shared/containerd-2.2/`.
pub const ARCHIVE_NAME: &str = "containerd-v2.2.7-linux-amd64.tar.xz";
/// The cache directory's name under the target directory.
const CACHE_NAME: &str = "containerd-v2.2.7";
/// How long extracting the archive may take.
const EXTRACT_LIMIT: Duration = Duration::from_secs(180);

/// A containerd release the suites run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Debian 12's containerd 1.6 (config version 2).
    V1_6,
    /// containerd v2.2.7 (config version 3, CRI defaults of 2.x).
    V2_2,
}

/// The programs of a release.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    /// The release's own directory (with its `containerd-shim-runc-v2`), first on containerd's
    /// PATH; `None` for the system's.
    pub bin_dir: Option<PathBuf>,
}

impl Release {
    /// The release `CRYO_TEST_CONTAINERD` names (unset or empty: 1.6).
    pub fn selected() -> Result<Release> {
        match std::env::var(ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Release::V1_6),
            Err(e) => bail!("{ENV}: {e}"),
            Ok(v) => match v.as_str() {
                "" | "1.6" => Ok(Release::V1_6),
                "2.2" | "2.2.7" => Ok(Release::V2_2),
                other => bail!("{ENV}={other:?}: expected 1.6 or 2.2"),
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Release::V1_6 => "containerd 1.6",
            Release::V2_2 => "containerd 2.2.7",
        }
    }

    /// Whether `ctr version` output shows this release for both client and server.
    pub fn reports(self, ctr_version: &str) -> bool {
        let versions: Vec<&str> = ctr_version
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Version:"))
            .map(str::trim)
            .collect();
        let want = |v: &str| match self {
            Release::V1_6 => v.trim_start_matches('v').starts_with("1.6."),
            Release::V2_2 => v == "v2.2.7",
        };
        versions.len() == 2 && versions.iter().all(|v| want(v))
    }

    /// Whether this is containerd 2.x.
    pub fn is_v2(self) -> bool {
        self == Release::V2_2
    }

    /// Why this release cannot run on this machine, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Release::V1_6 => None,
            Release::V2_2 => {
                let archive = archive();
                (!archive.is_file()).then(|| {
                    format!(
                        "{}: the archive {} is absent (it ships in ../shared/containerd-2.2/ next \
                         to the repository; {ARCHIVE_ENV} names another place)",
                        self.name(),
                        archive.display()
                    )
                })
            }
        }
    }

    /// The release's programs; for 2.2 the archive is extracted first if the cache does not
    /// hold this very archive's contents.
    pub fn binaries(self) -> Result<Binaries> {
        match self {
            Release::V1_6 => Ok(Binaries {
                containerd: PathBuf::from("containerd"),
                ctr: PathBuf::from("ctr"),
                bin_dir: None,
            }),
            Release::V2_2 => {
                if let Some(why) = self.unavailable() {
                    bail!("{why}");
                }
                let bin = extract(&archive(), &cache_dir()?)?.join("bin");
                let bins = Binaries {
                    containerd: bin.join("containerd"),
                    ctr: bin.join("ctr"),
                    bin_dir: Some(bin),
                };
                check_path_ctr(&bins)?;
                Ok(bins)
            }
        }
    }
}

/// The 2.2.7 archive's path.
fn archive() -> PathBuf {
    if let Some(a) = std::env::var_os(ARCHIVE_ENV) {
        return PathBuf::from(a);
    }
    // tests/ → the repository → its parent's shared/.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/containerd-2.2")
        .join(ARCHIVE_NAME)
}

/// `<target>/containerd-v2.2.7`, next to the build this test binary belongs to.
pub fn cache_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // <target>/<profile>/deps/<test>-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .context("test binary has no target dir")?;
    Ok(target.join(CACHE_NAME))
}

/// Extract `archive` into `cache` unless `cache` already holds it (its stamp records the
/// archive's size and modification time); returns `cache`. Extraction goes to a fresh sibling
/// directory renamed into place, so concurrent runs and interrupted ones never see half a tree.
fn extract(archive: &Path, cache: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(archive).with_context(|| format!("{}", archive.display()))?;
    let stamp = format!(
        "{} {}\n",
        meta.len(),
        meta.modified()?
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let complete = |dir: &Path| {
        std::fs::read_to_string(dir.join(".archive"))
            .ok()
            .as_deref()
            == Some(stamp.as_str())
            && ["containerd", "ctr", "containerd-shim-runc-v2"]
                .iter()
                .all(|b| dir.join("bin").join(b).is_file())
    };
    if complete(cache) {
        return Ok(cache.to_path_buf());
    }
    let parent = cache.parent().context("cache dir has no parent")?;
    std::fs::create_dir_all(parent)?;
    let fresh = tempfile::Builder::new()
        .prefix(".containerd-extract-")
        .tempdir_in(parent)?;
    cmd::run(
        std::process::Command::new("tar")
            .arg("-xJf")
            .arg(archive)
            .arg("-C")
            .arg(fresh.path()),
        None,
        EXTRACT_LIMIT,
    )?
    .ok()
    .with_context(|| format!("extract {}", archive.display()))?;
    std::fs::write(fresh.path().join(".archive"), &stamp)?;
    if !complete(fresh.path()) {
        bail!(
            "{} does not hold bin/containerd, bin/ctr and bin/containerd-shim-runc-v2",
            archive.display()
        );
    }
    if cache.exists() && !complete(cache) {
        std::fs::remove_dir_all(cache)
            .with_context(|| format!("remove the stale {}", cache.display()))?;
    }
    let fresh = fresh.keep();
    if let Err(e) = std::fs::rename(&fresh, cache) {
        let _ = std::fs::remove_dir_all(&fresh);
        // Another run put the same tree in place meanwhile.
        if !complete(cache) {
            return Err(e).with_context(|| format!("move the extraction to {}", cache.display()));
        }
    }
    Ok(cache.to_path_buf())
}

/// The suites run `ctr` from PATH in places (a terminal, `ctr events`): it must be the
/// release's own ctr, not Debian's 1.6 one talking to a 2.2 daemon.
fn check_path_ctr(bins: &Binaries) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join("ctr"))
        .find(|c| c.is_file());
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    match found {
        Some(c) if same(&c, &bins.ctr) => Ok(()),
        other => bail!(
            "the suites also run `ctr` from PATH, which finds {}, not {}: put {} first on PATH \
             (scripts/test does)",
            other
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "none".into()),
            bins.ctr.display(),
            bins.bin_dir.as_deref().unwrap_or(Path::new("?")).display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked_on_both_ends() {
        let v = |c: &str, s: &str| {
            format!("Client:\n  Version:  {c}\n  Revision: \n\nServer:\n  Version:  {s}\n")
        };
        assert!(Release::V1_6.reports(&v("1.6.20~ds1", "1.6.20~ds1")));
        assert!(!Release::V1_6.reports(&v("v2.2.7", "v2.2.7")));
        assert!(Release::V2_2.reports(&v("v2.2.7", "v2.2.7")));
        assert!(!Release::V2_2.reports(&v("1.6.20~ds1", "v2.2.7")));
    }

    #[test]
    fn a_missing_archive_is_a_reason_not_a_pass() {
        assert_eq!(Release::V1_6.unavailable(), None);
        let dir = tempfile::tempdir().unwrap();
        let err = extract(&dir.path().join("none.tar.xz"), &dir.path().join("cache"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.tar.xz"), "{err}");
    }
}
