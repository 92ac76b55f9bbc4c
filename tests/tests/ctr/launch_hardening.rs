//! ctr cases: launch_hardening — what a container can reach of the runtime's helpers while
//! they wait (the host binary, CVE-2019-5736's class), specs larger than a socket buffer, and
//! inputs refused at create that must leave nothing behind (seccomp profiles the kernel would
//! refuse, SCMP_ACT_NOTIFY, an executable in no known format).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use harness::Runtime;
use harness::ShimAddress;

use super::{assert_gone, cleanup_container, run_detached, run_spec, spec_file, Case, Suite};

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[(
    "waiting_helpers_run_no_host_binary",
    "runc 1.1.5 (Debian) runs a created container's `runc init` from /usr/sbin/runc itself; \
     only its being non-dumpable keeps the container from opening it",
)];

pub const CASES: &[(&str, Case)] = &[
    (
        "helpers_expose_no_host_binary",
        helpers_expose_no_host_binary,
    ),
    (
        "waiting_helpers_run_no_host_binary",
        waiting_helpers_run_no_host_binary,
    ),
    (
        "large_arguments_arrive_intact",
        large_arguments_arrive_intact,
    ),
    ("many_additional_gids", many_additional_gids),
    (
        "seccomp_over_kernel_limit_refused",
        seccomp_over_kernel_limit_refused,
    ),
    ("seccomp_notify_refused", seccomp_notify_refused),
    ("exec_format_error_refused", exec_format_error_refused),
    ("unknown_seccomp_names_named", unknown_seccomp_names_named),
    ("bad_namespaces_refused", bad_namespaces_refused),
];

/// How many times each refused input is tried.
const REFUSAL_RUNS: usize = 20;

/// Ten seconds, for calls on the shim's own Task API.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// The Task API of the shim serving `id`, in whichever version it speaks (containerd 2.x's
/// runc shim serves v3).
fn shim_client(s: &Suite, id: &str) -> Result<ShimAddress> {
    let bundle =
        s.cd.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&s.cd.namespace)
            .join(id);
    ShimAddress::of_bundle(&bundle)
}

/// Host pid of the task `id` (from `ctr task ls`).
fn task_pid(s: &Suite, id: &str) -> Result<i32> {
    let out = s.cd.ctr(&["task", "ls"])?.ok()?;
    out.stdout
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(id)).then(|| w.next()?.parse().ok())?
        })
        .with_context(|| format!("no pid for {id} in {}", out.stdout))
}

/// `pid` as its innermost pid namespace numbers it (the last field of NSpid).
fn ns_pid(pid: i32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last().map(str::to_string))
        .with_context(|| format!("no NSpid for {pid}"))
}

/// Device and inode (`dev:ino`, as busybox `stat -c %d:%i` prints them) of every runtime binary
/// on the host: the shims, runc, containerd.
fn host_binaries() -> Result<HashSet<String>> {
    let mut paths = vec![harness::built_shim()?];
    for name in ["containerd-shim-runc-v2", "runc", "containerd", "ctr"] {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !path.is_empty() {
            paths.push(PathBuf::from(path));
        }
    }
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).with_context(|| p.display().to_string())?;
            Ok(format!("{}:{}", m.dev(), m.ino()))
        })
        .collect()
}

/// From the host: `pid`'s executable is none of the runtime's binaries, and it cannot be
/// written (not even by root on the host).
fn exe_is_sealed(pid: i32, host: &HashSet<String>, what: &str) -> Result<()> {
    use std::io::Write;
    let exe = format!("/proc/{pid}/exe");
    let m = std::fs::metadata(&exe).with_context(|| format!("{what}: stat {exe}"))?;
    let key = format!("{}:{}", m.dev(), m.ino());
    ensure!(
        !host.contains(&key),
        "{what} (pid {pid}) runs the host's binary {} ({key})",
        std::fs::read_link(&exe).unwrap_or_default().display()
    );
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&exe) {
        ensure!(
            f.write_all(b"x").is_err(),
            "{what} (pid {pid}): its executable {} took a write",
            std::fs::read_link(&exe).unwrap_or_default().display()
        );
    }
    Ok(())
}

/// Lists every process the container sees: `open PID DEV:INO` when its `/proc/PID/exe` can be
/// followed, `closed PID` when not, and `WRITABLE PID` when the executable took a write
/// (appending one byte to a sealed or executing file must fail).
const SCAN: &str = r#"for d in /proc/[0-9]*; do
  p=${d#/proc/}
  if s=$(stat -L -c %d:%i $d/exe 2>/dev/null); then
    echo "open $p $s"
    if (printf x >> $d/exe) 2>/dev/null; then echo "WRITABLE $p"; fi
  else
    echo "closed $p"
  fi
done"#;

/// Removes a second container created straight through a shim's Task API, and its bundle.
struct Sibling<'a> {
    client: &'a ShimAddress,
    id: String,
    bundle: PathBuf,
}

impl Drop for Sibling<'_> {
    fn drop(&mut self) {
        let kill = api::KillRequest {
            id: self.id.clone(),
            signal: 9,
            all: true,
            ..Default::default()
        };
        let _: Result<api::Empty> = self.client.call("Kill", &kill, CALL_LIMIT);
        let wait = api::WaitRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let _: Result<api::WaitResponse> = self.client.call("Wait", &wait, CALL_LIMIT);
        let delete = api::DeleteRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let _: Result<api::DeleteResponse> = self.client.call("Delete", &delete, CALL_LIMIT);
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// While an exec waits to be started (cryo's helper has its process ready in the container),
/// another exec runs, and a sibling container sharing the pid namespace is created but not
/// started, no `/proc/*/exe` visible in the container is a host runtime binary, none can be
/// written, and those of the waiting processes cannot be opened at all.
fn helpers_expose_no_host_binary(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    with_waiting_processes(s, rt, id, |waiting, host| {
        let out =
            s.cd.ctr(&["task", "exec", "--exec-id", "scan", id, "sh", "-c", SCAN])?;
        ensure!(out.code == 0, "scan: {out:?}");
        let mut opened = HashSet::new();
        let mut closed = HashSet::new();
        for line in out.stdout.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["open", pid, key] => {
                    ensure!(
                        !host.contains(*key),
                        "pid {pid} in the container opens a host runtime binary ({key}):\n{}",
                        out.stdout
                    );
                    opened.insert(pid.to_string());
                }
                ["closed", pid] => {
                    closed.insert(pid.to_string());
                }
                ["WRITABLE", pid] => {
                    bail!("pid {pid}'s executable took a write:\n{}", out.stdout)
                }
                _ => bail!("scan line {line:?}"),
            }
        }
        // The scan saw the processes it was meant to look at, and could not open what the
        // waiting ones run (they are not dumpable).
        for (what, pid) in waiting {
            let inner = ns_pid(*pid)?;
            ensure!(
                closed.contains(&inner),
                "{what} (pid {inner} in the container) was {}:\n{}",
                if opened.contains(&inner) {
                    "opened"
                } else {
                    "not seen"
                },
                out.stdout
            );
        }
        Ok(())
    })
}

/// The same waiting processes, seen from the host: their executables are not the host's
/// runtime binaries, and take no write even from root on the host.
fn waiting_helpers_run_no_host_binary(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    with_waiting_processes(s, rt, id, |waiting, host| {
        for (what, pid) in waiting {
            exe_is_sealed(*pid, host, what)?;
        }
        Ok(())
    })
}

/// Run `check` while the container `id` has an exec created but not started, an exec
/// running, and a sibling container in its pid namespace created but not started. `check`
/// gets the waiting processes (what, host pid) and the host binaries' `dev:ino`.
fn with_waiting_processes(
    s: &Suite,
    rt: Runtime,
    id: &str,
    check: impl FnOnce(&[(&str, i32)], &HashSet<String>) -> Result<()>,
) -> Result<()> {
    let host = host_binaries()?;
    run_detached(s, rt, id, &[])?;
    let pid1 = task_pid(s, id)?;
    let client = shim_client(s, id)?;
    // The container's own process spec (its capabilities and user), as ctr's exec sends it.
    let mut process: serde_json::Value =
        serde_json::from_str(&s.cd.ctr(&["oci", "spec"])?.ok()?.stdout)?;
    process = process["process"].take();
    process["args"] = serde_json::json!(["sleep", "1000"]);
    process["env"] = serde_json::json!(["PATH=/bin"]);
    process["terminal"] = false.into();
    let exec = api::ExecProcessRequest {
        id: id.to_string(),
        exec_id: "waiting".into(),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process)?,
            ..Default::default()
        }),
        ..Default::default()
    };
    let _: api::Empty = client
        .call("Exec", &exec, CALL_LIMIT)
        .context("create the waiting exec")?;
    let state: api::StateResponse = client.call(
        "State",
        &api::StateRequest {
            id: id.to_string(),
            exec_id: "waiting".into(),
            ..Default::default()
        },
        CALL_LIMIT,
    )?;
    s.cd.ctr(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "running",
        id,
        "sleep",
        "1000",
    ])?
    .ok()?;

    // A sibling in the container's pid namespace (as in a pod), created, waiting for Start.
    let sibling_id = format!("{id}-sibling");
    let bundle = s.cd.dir.join(&sibling_id);
    std::fs::create_dir_all(&bundle)?;
    let sibling = Sibling {
        client: &client,
        id: sibling_id.clone(),
        bundle: bundle.clone(),
    };
    let spec = spec_file(s, &sibling_id, |spec| {
        spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
        for ns in spec["linux"]["namespaces"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if ns["type"] == "pid" {
                ns["path"] = format!("/proc/{pid1}/ns/pid").into();
            }
        }
    })?;
    std::fs::rename(&spec, bundle.join("config.json"))?;
    let created: api::CreateTaskResponse = client
        .call(
            "Create",
            &api::CreateTaskRequest {
                id: sibling_id.clone(),
                bundle: bundle.display().to_string(),
                ..Default::default()
            },
            CALL_LIMIT,
        )
        .context("create the sibling")?;

    let mut waiting = vec![("the created sibling's PID 1", created.pid as i32)];
    // runc's shim runs nothing for an exec before its Start.
    if state.pid > 0 {
        waiting.push(("the waiting exec", state.pid as i32));
    }
    let result = check(&waiting, &host);
    drop(sibling);
    result
}

/// Eight arguments of 50 KiB each (400 KiB of argv, twice the size of a socket buffer) run,
/// and each arrives whole.
fn large_arguments_arrive_intact(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let spec = spec_file(s, id, |spec| {
        let mut args = vec![
            "sh".to_string(),
            "-c".into(),
            r#"for a in "$@"; do echo ${#a} $(printf %s "$a" | tr -s a-h); done"#.into(),
            "sh".into(),
        ];
        args.extend((0..8u8).map(|i| char::from(b'a' + i).to_string().repeat(50 << 10)));
        spec["process"]["args"] = serde_json::json!(args);
    })?;
    let out = run_spec(s, rt, id, &spec)?.ok()?;
    let want: String = (0..8u8)
        .map(|i| format!("51200 {}\n", char::from(b'a' + i)))
        .collect();
    ensure!(out.stdout == want, "stdout {:?}", out.stdout);
    Ok(())
}

/// 65536 additional gids (the kernel's NGROUPS_MAX) run, every one in place.
fn many_additional_gids(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let spec = spec_file(s, id, |spec| {
        let gids: Vec<u32> = (1..=65536).collect();
        spec["process"]["user"] = serde_json::json!({"uid": 0, "gid": 0, "additionalGids": gids});
        spec["process"]["args"] = serde_json::json!([
            "sh",
            "-c",
            "grep ^Groups: /proc/self/status | wc -w; grep -c '^Groups:.* 65536 *$' /proc/self/status"
        ]);
    })?;
    let out = run_spec(s, rt, id, &spec)?;
    ensure!(out.code == 0, "exit {}: {}", out.code, out.stderr);
    // "Groups:" and 65536 gids; the last one is 65536.
    ensure!(out.stdout == "65537\n1\n", "stdout {:?}", out.stdout);
    Ok(())
}

/// When a refusal must come.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// At Create: ctr says it "failed to create shim task".
    AtCreate,
    /// At Create or Start.
    Before,
}

/// `ctr run` of `spec` fails `REFUSAL_RUNS` times out of as many, `when` it must, with one of
/// `cause` in its error, and leaves no task and no mount behind each time (before any
/// cleanup).
fn refused_every_time(
    s: &Suite,
    rt: Runtime,
    id: &str,
    spec: &str,
    when: Refused,
    cause: &[&str],
) -> Result<()> {
    for run in 0..REFUSAL_RUNS {
        let out = run_spec(s, rt, id, spec)?;
        ensure!(out.code != 0, "run {run}: it ran: {out:?}");
        ensure!(
            when == Refused::Before || out.stderr.contains("failed to create shim task"),
            "run {run}: not refused at create: {:?}",
            out.stderr
        );
        ensure!(
            cause.iter().any(|c| out.stderr.contains(c)),
            "run {run}: the error names none of {cause:?}: {:?}",
            out.stderr
        );
        let left = assert_gone(s, id);
        cleanup_container(&s.cd, id);
        left.with_context(|| format!("run {run} of {REFUSAL_RUNS}"))?;
        assert_gone(s, id)?;
    }
    Ok(())
}

/// A profile containerd accepts and libseccomp compiles, but the kernel refuses: about 6000
/// BPF instructions, over BPF_MAXINSNS (4096).
fn seccomp_over_kernel_limit_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let rules: Vec<serde_json::Value> = (0..250u64)
        .map(|v| {
            let args: Vec<serde_json::Value> = (0..6u64)
                .map(|i| serde_json::json!({"index": i, "value": (v << 33) + i, "op": "SCMP_CMP_EQ"}))
                .collect();
            serde_json::json!({"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": args})
        })
        .collect();
    let spec = spec_file(s, id, |spec| {
        spec["process"]["args"] = serde_json::json!(["true"]);
        spec["linux"]["seccomp"] =
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules});
    })?;
    refused_every_time(s, rt, id, &spec, Refused::AtCreate, &["seccomp"])
}

/// SCMP_ACT_NOTIFY without a listener.
fn seccomp_notify_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let spec = spec_file(s, id, |spec| {
        spec["process"]["args"] = serde_json::json!(["true"]);
        spec["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        });
    })?;
    refused_every_time(s, rt, id, &spec, Refused::AtCreate, &["listenerPath"])
}

/// An executable file that is in no format the kernel knows.
fn exec_format_error_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let garbage = Path::new(&s.rootfs).join("bin/not-an-executable");
    if !garbage.exists() {
        // Written aside and renamed: the other runtime's trial may look at the same path.
        let part = garbage.with_extension(id);
        std::fs::write(&part, b"\x01\x02 this is no executable format\n")?;
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&part, &garbage)?;
    }
    let spec = spec_file(s, id, |spec| {
        spec["process"]["args"] = serde_json::json!(["/bin/not-an-executable"]);
    })?;
    refused_every_time(s, rt, id, &spec, Refused::Before, &["exec format error"])
}

/// An action, an operator and an architecture no runtime knows: refused, the value named;
/// cryo also names the field (`linux.seccomp.syscalls[1].action`).
fn unknown_seccomp_names_named(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let cases = [
        (
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["mkdir"], "action": "SCMP_ACT_FOO"}]}),
            "SCMP_ACT_FOO",
            "linux.seccomp.syscalls[1].action: SCMP_ACT_FOO",
        ),
        (
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}),
            "SCMP_CMP_ALMOST",
            "linux.seccomp.syscalls[0].args[0].op: SCMP_CMP_ALMOST",
        ),
        (
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
                               "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_Z80"]}),
            "SCMP_ARCH_Z80",
            "linux.seccomp.architectures[1]: SCMP_ARCH_Z80",
        ),
    ];
    for (profile, value, field) in cases {
        let spec = spec_file(s, id, |spec| {
            spec["process"]["args"] = serde_json::json!(["true"]);
            spec["linux"]["seccomp"] = profile;
        })?;
        let out = run_spec(s, rt, id, &spec)?;
        ensure!(out.code != 0, "{value}: it ran");
        ensure!(out.stderr.contains(value), "{value}: {:?}", out.stderr);
        if rt == Runtime::Cryo {
            ensure!(out.stderr.contains(field), "{field}: {:?}", out.stderr);
        }
        let left = assert_gone(s, id);
        cleanup_container(&s.cd, id);
        left?;
    }
    Ok(())
}

/// Namespaces that cannot be what the spec says: a path to a namespace of another type, a
/// path to a file that is no namespace, the same type twice. Refused, nothing left behind;
/// cryo names the entry and the value.
fn bad_namespaces_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let not_a_namespace = s.cd.dir.join(format!("{id}.not-a-namespace"));
    std::fs::write(&not_a_namespace, b"plain file\n")?;
    let not_a_namespace = not_a_namespace.display().to_string();
    let pid_ns = format!("/proc/{}/ns/pid", std::process::id());
    // What, the entry that replaces the type's own, and what cryo's error names.
    let cases = [
        (
            "a pid namespace as the network namespace",
            serde_json::json!({"type": "network", "path": pid_ns}),
            format!("linux.namespaces[4].path: {pid_ns}"),
        ),
        (
            "a plain file as the ipc namespace",
            serde_json::json!({"type": "ipc", "path": not_a_namespace}),
            format!("linux.namespaces[4].path: {not_a_namespace}"),
        ),
        (
            "two network namespaces",
            serde_json::json!({"type": "network"}),
            "linux.namespaces[5]: a second network namespace".to_string(),
        ),
    ];
    for (what, entry, named) in cases {
        let spec = spec_file(s, id, |spec| {
            spec["process"]["args"] = serde_json::json!(["true"]);
            let nss = spec["linux"]["namespaces"]
                .as_array_mut()
                .expect("namespaces");
            // The type's own entry goes (but for the duplicate), the new one comes last.
            if entry.get("path").is_some() {
                nss.retain(|ns| ns["type"] != entry["type"]);
            }
            nss.push(entry);
        })?;
        let out = run_spec(s, rt, id, &spec)?;
        ensure!(out.code != 0, "{what}: it ran: {out:?}");
        if rt == Runtime::Cryo {
            ensure!(
                out.stderr.contains(&named),
                "{what}: the error does not say {named:?}: {:?}",
                out.stderr
            );
        }
        let left = assert_gone(s, id);
        cleanup_container(&s.cd, id);
        left.with_context(|| what.to_string())?;
    }
    std::fs::remove_file(&not_a_namespace)?;
    Ok(())
}
