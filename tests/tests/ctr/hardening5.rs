//! ctr cases: hardening5. Faults an attacker or a broken host can provoke: a CRIU binary that
//! cannot be executed must fail the checkpoint by name, every time, and leave the shim and its
//! container running; a pod of one tenant (Kubernetes namespace) may neither write into nor
//! restore from the checkpoint directory another tenant's trigger claimed.

use std::os::unix::fs::PermissionsExt;

use anyhow::{ensure, Context, Result};
use harness::image::BUSYBOX_IMAGE;
use harness::{Containerd, Runtime, StartOptions};

use super::{assert_gone, run, run_detached, Case, Suite};

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[
    (
        "another_tenant_s_checkpoints_are_out_of_reach",
        NO_FS_CHECKPOINTS,
    ),
    ("another_container_cannot_open_a_trigger", NO_FS_CHECKPOINTS),
];

const NO_FS_CHECKPOINTS: &str =
    "runc's shim has no filesystem checkpoints (the fscheckpoint trigger, dev.cryo.fs-restore.image-path)";

pub const CASES: &[(&str, Case)] = &[
    (
        "unexecutable_criu_fails_checkpoints_by_name",
        unexecutable_criu_fails_checkpoints_by_name,
    ),
    (
        "another_tenant_s_checkpoints_are_out_of_reach",
        another_tenant_s_checkpoints_are_out_of_reach,
    ),
    (
        "another_container_cannot_open_a_trigger",
        another_container_cannot_open_a_trigger,
    ),
];

/// The system's directories, without /usr/local/sbin where scripts/setup installs CRIU.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How many checkpoints are tried: the shim's reaper and a spawner that waits for its failed
/// child race once per try.
const TRIES: usize = 40;

/// An executable file with no ELF header and no `#!`.
const GARBAGE: &str = "this is no program\n";
/// A script whose interpreter does not exist.
const NO_INTERPRETER: &str = "#!/nonexistent/interpreter\n";

/// With a `criu` first on containerd's PATH that is an executable file the kernel cannot
/// execute (by turns: no ELF and no `#!`; a `#!` naming a missing interpreter), [`TRIES`]
/// checkpoints each fail naming the binary and the exec's error, and the task keeps running
/// throughout.
fn unexecutable_criu_fails_checkpoints_by_name(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let bad = tempfile::tempdir_in(&s.cd.dir)?;
    let criu = bad.path().join("criu");
    std::fs::write(&criu, GARBAGE)?;
    std::fs::set_permissions(&criu, std::fs::Permissions::from_mode(0o755))?;
    let options = StartOptions {
        path: Some(format!("{}:{SYSTEM_PATH}", bad.path().display())),
        ..Default::default()
    };
    let cd = Containerd::start_with(&harness::built_shim()?, &options)?;
    let result = checkpoints_fail(&cd, s, rt, id, &criu.display().to_string());
    let _ = cd.ctr(&["task", "kill", "-a", "-s", "SIGKILL", id]);
    let teardown = cd.teardown(&[]);
    result?;
    teardown
}

fn checkpoints_fail(cd: &Containerd, s: &Suite, rt: Runtime, id: &str, criu: &str) -> Result<()> {
    let busybox = s.cd.dir.join("images/busybox.tar");
    ensure!(busybox.is_file(), "{} is missing", busybox.display());
    cd.ctr(&["image", "import", &busybox.display().to_string()])?
        .ok()?;
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        rt.id(),
        BUSYBOX_IMAGE,
        id,
        "sleep",
        "100000",
    ])?
    .ok()?;
    let pid = task_pid(cd, id)?;
    let mut failures = Vec::new();
    for n in 0..TRIES {
        let (content, why) = if n % 2 == 0 {
            (GARBAGE, "exec format error")
        } else {
            (NO_INTERPRETER, "no such file or directory")
        };
        std::fs::write(criu, content)?;
        let out = cd.ctr(&["task", "checkpoint", id])?;
        ensure!(
            out.code != 0,
            "try {n}: a checkpoint with an unexecutable CRIU succeeded: {out:?}"
        );
        if !(out.stderr.contains(criu) && out.stderr.to_lowercase().contains(why)) {
            failures.push(format!("try {n}: {:?}", out.stderr.trim()));
        }
        let now = task_pid(cd, id).with_context(|| format!("after try {n}"))?;
        ensure!(
            now == pid,
            "after try {n}: the task's pid is {now}, was {pid}"
        );
    }
    eprintln!(
        "{}: {} of {TRIES} failed checkpoints did not name {criu} and its exec error",
        rt.name(),
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "{} of {TRIES} failed checkpoints did not name {criu} and its exec error:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The task's pid from `ctr task ls`, which must show it RUNNING.
fn task_pid(cd: &Containerd, id: &str) -> Result<String> {
    let ls = cd.ctr(&["task", "ls"])?.stdout;
    ls.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id) && f.get(2) == Some(&"RUNNING")).then(|| f[1].to_string())
        })
        .with_context(|| format!("{id} is not RUNNING:\n{ls}"))
}

/// The annotation CRI sets to the pod's Kubernetes namespace (pod annotations cannot set it;
/// here ctr sets it, as CRI would).
const NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";

/// Pod "a" of namespace tenant-a checkpoints itself with the trigger into a destination beneath
/// the checkpoint root. Then pods of namespace tenant-b are refused by annotation and value,
/// naming the owner, and leave nothing behind: one restoring from that destination (it would
/// read tenant-a's files), one whose trigger writes there (it would re-point `latest`, which
/// tenant-a's next restore follows). A pod of tenant-a restores from it.
fn another_tenant_s_checkpoints_are_out_of_reach(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let (_tmp, dest) = harness::containerd::checkpoint_destination("cryo-tenant-")?;
    let path = format!("dev.cryo.fscheckpoint.path={}", dest.display());
    let tenant = |t: &str| format!("{NAMESPACE}={t}");
    let out = run(
        s,
        rt,
        id,
        &[
            "--annotation",
            &tenant("tenant-a"),
            "--annotation",
            &path,
            "--annotation",
            "dev.cryo.fscheckpoint.resume=true",
            "--annotation",
            "dev.cryo.fscheckpoint.enable=true",
        ],
        &[
            "sh",
            "-c",
            "echo secret > /secret; exec 3<>/run/cryo/fscheckpoint; echo 1 >&3; cat <&3",
        ],
    )?
    .ok()?;
    ensure!(out.stdout == "resume\n", "the round of tenant-a: {out:?}");
    assert_gone(s, id)?;

    let restore = format!("dev.cryo.fs-restore.image-path={}", dest.display());
    let refused = [
        ("restore", vec!["--annotation", &restore]),
        (
            "trigger",
            vec![
                "--annotation",
                &path,
                "--annotation",
                "dev.cryo.fscheckpoint.enable=true",
            ],
        ),
    ];
    let other = tenant("tenant-b");
    for (what, annotations) in refused {
        let mut extra = vec!["--annotation", other.as_str()];
        extra.extend(annotations);
        let out = run(s, rt, id, &extra, &["cat", "/secret"])?;
        ensure!(
            out.code != 0 && !out.stdout.contains("secret"),
            "tenant-b's {what} pod ran: {out:?}"
        );
        ensure!(
            out.stderr.contains(&dest.display().to_string())
                && out.stderr.contains("kubernetes namespace tenant-a"),
            "tenant-b's {what} refusal names neither the destination nor its owner: {:?}",
            out.stderr
        );
        super::cleanup_container(&s.cd, id);
        assert_gone(s, id)?;
    }
    ensure!(
        std::fs::read_link(dest.join("latest"))? == std::path::Path::new("1"),
        "latest moved"
    );

    run_detached(
        s,
        rt,
        id,
        &[
            "--annotation",
            &tenant("tenant-a"),
            "--annotation",
            &restore,
        ],
    )?;
    let seen =
        s.cd.ctr(&["task", "exec", "--exec-id", "read", id, "cat", "/secret"])?;
    ensure!(seen.stdout == "secret\n", "tenant-a's restore: {seen:?}");
    Ok(())
}

/// A container that shares the pid namespace of a trigger-enabled one (as containers of a pod
/// with `shareProcessNamespace` do) reaches its trigger file as `/proc/1/root/run/cryo/...`.
/// It may not open it at all, not even to read: every handle and parked read it held would
/// count against the owner's limits (1024 each: the owner's own open would get EMFILE) and its
/// reads would learn when the owner checkpoints. The owner's own round still works.
fn another_container_cannot_open_a_trigger(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let (_tmp, dest) = harness::containerd::checkpoint_destination("cryo-other-")?;
    let path = format!("dev.cryo.fscheckpoint.path={}", dest.display());
    run_detached(
        s,
        rt,
        id,
        &[
            "--annotation",
            &path,
            "--annotation",
            "dev.cryo.fscheckpoint.resume=true",
            "--annotation",
            "dev.cryo.fscheckpoint.enable=true",
        ],
    )?;
    let pid = task_pid(&s.cd, id)?;
    let other = format!("{id}-other");
    let pid_ns = format!("pid:/proc/{pid}/ns/pid");
    let result = (|| -> Result<()> {
        for mode in ["<", "<>"] {
            let script = format!(
                "test -e /proc/1/root/run/cryo/fscheckpoint || exit 9; \
                 exec 3{mode}/proc/1/root/run/cryo/fscheckpoint && echo opened"
            );
            let out = run(
                s,
                rt,
                &other,
                &["--with-ns", &pid_ns],
                &["sh", "-c", &script],
            )?;
            ensure!(
                out.code != 9,
                "the other container does not see the trigger: {out:?}"
            );
            ensure!(
                out.code != 0
                    && !out.stdout.contains("opened")
                    && out.stderr.contains("Permission denied"),
                "another container opened the trigger with {mode:?}: {out:?}"
            );
        }
        Ok(())
    })();
    super::cleanup_container(&s.cd, &other);
    result?;
    let round = s.cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "round",
        id,
        "sh",
        "-c",
        "exec 3<>/run/cryo/fscheckpoint; echo 1 >&3; cat <&3",
    ])?;
    ensure!(round.stdout == "resume\n", "the owner's round: {round:?}");
    Ok(())
}
