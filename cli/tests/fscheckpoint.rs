//! `cryo fscheckpoint`, through the binary: with `--target-root`, a legitimate checkpoint of
//! several containers' directories lands at `<root>/<container>/<recorded path>`, and a
//! manifest whose resource names would lead outside the root is refused by every command that
//! reads it; `inspect` never passes a manifest's control characters to the terminal.

use std::path::Path;
use std::process::{Command, Output};

const CMD: &str = "fscheckpoint";

fn cryo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cryo"))
        .arg(CMD)
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = cryo(args);
    assert!(
        out.status.success(),
        "cryo {CMD} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command fails, saying `needle` on stderr.
fn refused(args: &[&str], needle: &str) {
    let out = cryo(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cryo {CMD} {args:?} succeeded");
    assert!(err.contains(needle), "cryo {CMD} {args:?}: {err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cryo-cli-test-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// `dir/src` (holding one file) saved as `dir/snap` with `extra` flags; the checkpoint.
fn saved(dir: &Path, extra: &[&str]) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("planted"), b"x").unwrap();
    let snap = dir.join("snap");
    let mut args = vec!["save", "--path", s(&src), "--image-path", s(&snap)];
    args.extend_from_slice(extra);
    ok(&args);
    snap
}

/// `restore` of `snap` under `root`, then `extra`.
fn restore_under<'a>(snap: &'a Path, root: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["restore", "--image-path", s(snap), "--target-root", s(root)];
    args.extend_from_slice(extra);
    args
}

/// Change the checkpoint's manifest as a hostile hand would.
fn edit_manifest(snap: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mpath = snap.join("fscheckpoint.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn a_legitimate_checkpoint_restores_under_a_target_root() {
    let t = tmp();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir_all(a.join("sub")).unwrap();
    std::fs::write(a.join("sub/f"), b"from a").unwrap();
    std::fs::create_dir(&b).unwrap();
    std::fs::write(b.join("g"), b"from b").unwrap();
    let (snap_a, snap_b) = (t.path().join("snap-a"), t.path().join("snap-b"));
    ok(&[
        "save",
        "--path",
        s(&a),
        "--container",
        "c1",
        "--image-path",
        s(&snap_a),
    ]);
    ok(&["save", "--path", s(&b), "--image-path", s(&snap_b)]);
    let root = t.path().join("root");
    ok(&restore_under(&snap_a, &root, &[]));
    let rel_a = a.strip_prefix("/").unwrap();
    assert_eq!(
        std::fs::read(root.join("c1").join(rel_a).join("sub/f")).unwrap(),
        b"from a"
    );
    // No container recorded: directly under the root.
    ok(&restore_under(&snap_b, &root, &[]));
    let rel_b = b.strip_prefix("/").unwrap();
    assert_eq!(
        std::fs::read(root.join(rel_b).join("g")).unwrap(),
        b"from b"
    );
}

#[test]
fn resource_names_leading_outside_the_root_are_refused_by_every_command() {
    for (field, value) in [
        ("container", "../../escaped"),
        ("container", "/escaped"),
        ("path", "/../../../escaped"),
    ] {
        let t = tmp();
        let snap = saved(t.path(), &["--container", "c1"]);
        edit_manifest(&snap, |m| {
            m["sections"][0]["resource"][field] = value.into()
        });
        let root = t.path().join("deep/er/root");
        let needle = format!("resource.{field}");
        refused(&restore_under(&snap, &root, &[]), &needle);
        refused(&["verify", "--image-path", s(&snap)], &needle);
        refused(&["inspect", "--image-path", s(&snap)], &needle);
        assert!(!t.path().join("escaped").exists() && !Path::new("/escaped").exists());
        assert!(
            !t.path().join("deep").exists(),
            "{field}: the root was created"
        );
    }
}

#[test]
fn inspect_escapes_control_characters_from_the_manifest() {
    let t = tmp();
    let snap = saved(t.path(), &[]);
    edit_manifest(&snap, |m| {
        // Retitles the terminal, then forges a line of output.
        m["sections"][0]["resource"]["path"] = "/x\u{1b}]0;pwned\u{7}\rforged".into();
        m["producer"] = "p\u{1b}[2J".into();
    });
    let out = ok(&["inspect", "--image-path", s(&snap)]);
    assert!(
        !out.bytes().any(|b| b.is_ascii_control() && b != b'\n'),
        "control characters reach the terminal: {out:?}"
    );
    assert!(out.contains("/x\\u{1b}]0;pwned\\u{7}\\rforged"), "{out}");
}

#[test]
fn section_goes_with_target_only() {
    let t = tmp();
    let snap = saved(t.path(), &[]);
    let root = t.path().join("root");
    refused(
        &restore_under(&snap, &root, &["--section", "0"]),
        "--target",
    );
    assert!(!root.exists());
}

#[test]
fn inspect_shows_each_sections_layer() {
    let t = tmp();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("f"), b"x").unwrap();
    }
    let snap = t.path().join("snap");
    ok(&[
        "save",
        "--path",
        s(&a),
        "--path",
        s(&b),
        "--container",
        "app",
        "--image-path",
        s(&snap),
    ]);
    // The second section stacked on the first: a checkpoint of a restored container.
    edit_manifest(&snap, |m| {
        m["version"] = "2.0".into();
        m["sections"][1]["resource"]["path"] = m["sections"][0]["resource"]["path"].clone();
        m["sections"][1]["layer"] = 1.into();
    });
    let out = ok(&["inspect", "--image-path", s(&snap)]);
    let header = out.lines().nth(1).unwrap();
    assert!(header.contains("layer"), "{out}");
    let layers: Vec<&str> = out
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(layers, ["0", "1"], "{out}");
}
