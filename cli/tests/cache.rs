//! `cryo cache`, through the binary: bad arguments are refused naming the flag and the value
//! (nothing touched), and on a real cache root `ls` lists a layer and `prune` removes a crashed
//! extraction's leftover and evicts the unused layer. Needs root, as `cryo cache` does.

use std::path::Path;
use std::process::{Command, Output};

fn cryo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cryo"))
        .arg("cache")
        .args(args)
        .output()
        .unwrap()
}

/// The command fails, saying each of `needles` on stderr.
fn refused(args: &[&str], needles: &[&str]) {
    let out = cryo(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cryo cache {args:?} succeeded");
    for n in needles {
        assert!(err.contains(n), "cryo cache {args:?}: {err}");
    }
}

fn ok(args: &[&str]) -> String {
    let out = cryo(args);
    assert!(
        out.status.success(),
        "cryo cache {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_arguments_are_refused_by_flag_and_value() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "needs root (cryo cache refuses others): run as root, as CI does"
    );
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_str().unwrap();
    let layer = t.path().join("a".repeat(64));
    std::fs::create_dir(&layer).unwrap();
    for (args, needles) in [
        (
            vec!["prune", "--max-size", "10X"],
            vec!["--max-size", "\"10X\""],
        ),
        (
            vec!["prune", "--max-size=-1G"],
            vec!["--max-size", "\"-1G\""],
        ),
        (
            vec!["prune", "--max-size", "99999999999T"],
            vec!["--max-size", "99999999999T"],
        ),
        (
            vec!["prune", "--unused-for", "5"],
            vec!["--unused-for", "\"5\""],
        ),
        (
            vec!["prune", "--unused-for", "1w"],
            vec!["--unused-for", "\"1w\""],
        ),
        (
            vec!["prune", "--all", "--max-size", "1G"],
            vec!["--all", "--max-size"],
        ),
        (
            vec!["prune", "--all", "--unused-for", "1h"],
            vec!["--all", "--unused-for"],
        ),
        (
            vec!["ls", "--layer-root", "relative/dir"],
            vec!["--layer-root relative/dir", "absolute"],
        ),
        (
            vec!["ls", "--layer-root", "/nonexistent/cryo"],
            vec!["--layer-root /nonexistent/cryo"],
        ),
        (vec!["nonsense"], vec!["nonsense"]),
    ] {
        let mut args = args;
        if args[0] == "prune" {
            args.extend(["--layer-root", root]);
        }
        refused(&args, &needles);
    }
    // Only root: the cache is root's.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_cryo"))
        .args(["cache", "prune", "--all", "--layer-root", root])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("must run as root"),
        "as nobody: {err}"
    );
    // A file is no cache root.
    let file = t.path().join("file");
    std::fs::write(&file, b"").unwrap();
    refused(
        &["ls", "--layer-root", file.to_str().unwrap()],
        &["not a directory"],
    );
    // Nothing was touched.
    assert_eq!(names(t.path()), ["a".repeat(64), "file".into()]);
}

#[test]
fn ls_lists_and_prune_removes_leftovers_and_evicts_unused_layers() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "needs root: run as root, as CI does"
    );
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_str().unwrap();
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    std::fs::create_dir(t.path().join(&a)).unwrap();
    std::fs::write(t.path().join(&a).join("f"), vec![1u8; 100_000]).unwrap();
    std::fs::create_dir_all(t.path().join(format!(".{b}.partial-1-2/sub"))).unwrap();
    let listed = ok(&["ls", "--layer-root", root]);
    assert!(listed.contains(&a) && listed.contains(" no\n"), "{listed}");
    assert!(!listed.contains(&b), "{listed}");
    // Used just now: not unused for an hour, and 1 MiB is more than it uses.
    let out = ok(&[
        "prune",
        "--layer-root",
        root,
        "--unused-for",
        "1h",
        "--max-size",
        "1M",
    ]);
    assert!(
        out.contains("removed leftover") && !out.contains("evicted a"),
        "{out}"
    );
    assert_eq!(names(t.path()), vec![a.clone()]);
    let out = ok(&["prune", "--layer-root", root, "--max-size", "0"]);
    assert!(out.contains(&format!("evicted {a}")), "{out}");
    assert!(names(t.path()).is_empty(), "{:?}", names(t.path()));
}
