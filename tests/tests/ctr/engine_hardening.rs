//! ctr cases: engine_hardening. Hostile or unusual specs the engine must refuse by name, or run
//! exactly as runc does: ids out of range, sysctls, device rules, read-only paths, the console,
//! pids and cpu limits, terminal/cwd/hostname mismatches, rootfs propagation, PID 1's exit
//! without a pid namespace.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use harness::image::BUSYBOX_IMAGE;
use harness::Runtime;

use super::{
    cleanup_container, ctr_line, in_terminal, run_detached, run_spec, spec_file, wait_status, Case,
    Suite,
};

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[
    (
        "foreign_cgroups_are_refused",
        "runc 1.1.5 only warns about a non-empty cgroup (refused since runc 1.2); the case is not \
         run against it: with cgroupsPath \"/\" its kill --all would signal every process of the host",
    ),
    (
        "unapplied_fields_are_refused",
        "runc 1.1.5 predates process.scheduler, process.ioPriority, linux.personality and \
         linux.timeOffsets and silently ignores them (and it runs hooks, which cryo refuses)",
    ),
];

pub const CASES: &[(&str, Case)] = &[
    ("ids_out_of_range_are_refused", ids_out_of_range_are_refused),
    ("namespaced_sysctls_apply", namespaced_sysctls_apply),
    ("host_sysctls_are_refused", host_sysctls_are_refused),
    ("device_rules_match_runc", device_rules_match_runc),
    (
        "readonly_paths_keep_their_flags",
        readonly_paths_keep_their_flags,
    ),
    (
        "exec_terminal_leaves_console_alone",
        exec_terminal_leaves_console_alone,
    ),
    ("pids_limit_of_one_runs", pids_limit_of_one_runs),
    ("mismatched_specs_are_refused", mismatched_specs_are_refused),
    ("memory_limit_too_low_says_so", memory_limit_too_low_says_so),
    (
        "an_earlier_oom_is_not_blamed_for_a_failed_exec",
        an_earlier_oom_is_not_blamed_for_a_failed_exec,
    ),
    (
        "rshared_rootfs_propagation_runs",
        rshared_rootfs_propagation_runs,
    ),
    (
        "pid1_exit_kills_the_rest_without_pid_namespace",
        pid1_exit_kills_the_rest_without_pid_namespace,
    ),
    ("foreign_cgroups_are_refused", foreign_cgroups_are_refused),
    (
        "confinement_the_host_cannot_apply_is_refused",
        confinement_the_host_cannot_apply_is_refused,
    ),
    ("unapplied_fields_are_refused", unapplied_fields_are_refused),
    (
        "kill_all_of_a_paused_task_stops_it",
        kill_all_of_a_paused_task_stops_it,
    ),
];

/// `ctr run --rm --config` of a spec edited by `edit`, under the id `id-suffix`, removed after.
fn run_edited(
    s: &Suite,
    rt: Runtime,
    id: &str,
    suffix: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<harness::Output> {
    let id = format!("{id}-{suffix}");
    let spec = spec_file(s, &id, edit)?;
    let out = run_spec(s, rt, &id, &spec);
    cleanup_container(&s.cd, &id);
    out
}

/// Remove the namespace `typ` from the spec.
fn without_namespace(spec: &mut serde_json::Value, typ: &str) {
    if let Some(nss) = spec["linux"]["namespaces"].as_array_mut() {
        nss.retain(|ns| ns["type"] != typ);
    }
}

/// uid, gid or an additional gid of 4294967295 means "unchanged" to setresuid: refused, never
/// run as root.
fn ids_out_of_range_are_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    for (suffix, user) in [
        ("uid", serde_json::json!({"uid": 4294967295u32, "gid": 0})),
        (
            "gid",
            serde_json::json!({"uid": 1000, "gid": 4294967295u32}),
        ),
        (
            "groups",
            serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [4294967295u32]}),
        ),
    ] {
        let out = run_edited(s, rt, id, suffix, |spec| {
            spec["process"]["user"] = user;
            spec["process"]["args"] = serde_json::json!(["id"]);
        })?;
        ensure!(
            out.code != 0 && !out.stdout.contains("uid="),
            "{suffix} 4294967295 ran: {out:?}"
        );
        ensure!(
            out.stderr.contains("4294967295") || out.stderr.contains("range"),
            "{suffix}: the error names neither the value nor the range: {:?}",
            out.stderr
        );
    }
    Ok(())
}

/// Namespaced sysctls reach the container's own namespaces (written before /proc/sys is made
/// read-only).
fn namespaced_sysctls_apply(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let out = run_edited(s, rt, id, "ns", |spec| {
        spec["linux"]["sysctl"] = serde_json::json!({
            "net.ipv4.ip_forward": "1",
            "kernel.shm_rmid_forced": "1",
            "fs.mqueue.msg_max": "20",
        });
        spec["process"]["args"] = serde_json::json!([
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/kernel/shm_rmid_forced",
            "/proc/sys/fs/mqueue/msg_max"
        ]);
    })?
    .ok()?;
    ensure!(out.stdout == "1\n1\n20\n", "stdout {:?}", out.stdout);
    Ok(())
}

/// A sysctl that is not namespaced, or a namespaced one without the container's own namespace,
/// is refused by name; the host's value stays.
fn host_sysctls_are_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let host = |key: &str| -> Result<String> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        Ok(std::fs::read_to_string(path)?.trim().to_string())
    };
    let swappiness = host("vm.swappiness")?;
    let other = if swappiness == "61" { "59" } else { "61" };
    let out = run_edited(s, rt, id, "vm", |spec| {
        spec["linux"]["sysctl"] = serde_json::json!({ "vm.swappiness": other });
        // Nothing read-only would stop the write.
        spec["linux"]["readonlyPaths"] = serde_json::json!([]);
        spec["process"]["args"] = serde_json::json!(["cat", "/proc/sys/vm/swappiness"]);
    })?;
    let now = host("vm.swappiness")?;
    if now != swappiness {
        std::fs::write("/proc/sys/vm/swappiness", &swappiness)?;
    }
    ensure!(now == swappiness, "the host's vm.swappiness became {now}");
    ensure!(
        out.code != 0 && out.stderr.contains("vm.swappiness"),
        "vm.swappiness: {out:?}"
    );
    // net.* in the host's network namespace (the host's own value, so a write changes nothing).
    let ttl = host("net.ipv4.ip_default_ttl")?;
    let out = run_edited(s, rt, id, "net", |spec| {
        without_namespace(spec, "network");
        spec["linux"]["sysctl"] = serde_json::json!({ "net.ipv4.ip_default_ttl": ttl });
        spec["linux"]["readonlyPaths"] = serde_json::json!([]);
        spec["process"]["args"] = serde_json::json!(["true"]);
    })?;
    ensure!(
        out.code != 0 && out.stderr.contains("net.ipv4.ip_default_ttl"),
        "net.* without a network namespace: {out:?}"
    );
    Ok(())
}

/// The device cgroup of a container equals runc's for the same spec (wildcards as `*`), and a
/// container with a terminal can be exec'd into with another terminal (/dev/pts/N allowed).
fn device_rules_match_runc(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let ctr = ctr_line(s);
    let fifo = s.cd.fifo_dir().display().to_string();
    // `run -d -t` through script, as ctr needs a terminal for -t.
    let out = in_terminal(&format!(
        "{ctr} run --fifo-dir {fifo} -d -t --runtime {} {BUSYBOX_IMAGE} {id} sleep 100000",
        rt.id()
    ))?;
    ensure!(out.code == 0, "run -d -t: {out:?}");
    wait_status(s, id, "RUNNING")?;
    let list = PathBuf::from("/sys/fs/cgroup/devices")
        .join(&s.cd.namespace)
        .join(id)
        .join("devices.list");
    let text = std::fs::read_to_string(&list)?;
    let mut got: Vec<&str> = text.lines().collect();
    got.sort();
    let mut want = vec![
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:8 rwm",
        "c 1:7 rwm",
        "c 5:0 rwm",
        "c 1:5 rwm",
        "c 1:9 rwm",
        "c 5:1 rwm",
        "c 136:* rwm",
        "c 5:2 rwm",
        "c 10:200 rwm",
    ];
    want.sort();
    ensure!(got == want, "{}: {got:?}", list.display());
    let out = in_terminal(&format!(
        "{ctr} task exec --fifo-dir {fifo} -t --exec-id t1 {id} tty"
    ))?;
    ensure!(out.stdout.contains("/dev/pts/"), "exec -t: {out:?}");
    Ok(())
}

/// The mount options of `mount_point` in `mountinfo` (per-mount options, field 6).
fn mount_options<'a>(mountinfo: &'a str, mount_point: &str) -> Option<Vec<&'a str>> {
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(mount_point))
        .and_then(|l| l.split(' ').nth(5))
        .map(|o| o.split(',').collect())
}

/// Read-only paths are remounted read-only with the flags they had (nosuid, nodev, noexec).
fn readonly_paths_keep_their_flags(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let out = run_edited(s, rt, id, "ro", |spec| {
        spec["linux"]["readonlyPaths"] = serde_json::json!(["/proc/sys", "/proc/bus"]);
        spec["process"]["args"] = serde_json::json!(["cat", "/proc/self/mountinfo"]);
    })?
    .ok()?;
    for path in ["/proc/sys", "/proc/bus"] {
        let opts = mount_options(&out.stdout, path);
        ensure!(
            opts.as_ref()
                .is_some_and(|o| ["ro", "nosuid", "nodev", "noexec"]
                    .iter()
                    .all(|f| o.contains(f))),
            "{path} mounted with {opts:?}"
        );
    }
    Ok(())
}

/// An exec with a terminal changes nothing in the container's mounts (its pty is not left on
/// /dev/console).
fn exec_terminal_leaves_console_alone(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    run_detached(s, rt, id, &[])?;
    let mounts = || -> Result<String> {
        Ok(s.cd
            .ctr(&[
                "task",
                "exec",
                "--exec-id",
                "m",
                id,
                "cat",
                "/proc/1/mountinfo",
            ])?
            .ok()?
            .stdout)
    };
    let before = mounts()?;
    let ctr = ctr_line(s);
    let fifo = s.cd.fifo_dir().display().to_string();
    let out = in_terminal(&format!(
        "{ctr} task exec --fifo-dir {fifo} -t --exec-id t1 {id} tty"
    ))?;
    ensure!(out.stdout.contains("/dev/pts/"), "exec -t: {out:?}");
    let after = mounts()?;
    ensure!(
        before == after,
        "the container's mounts changed:\nbefore:\n{before}\nafter:\n{after}"
    );
    Ok(())
}

/// pids.max=1 leaves room for exactly the workload.
fn pids_limit_of_one_runs(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let out = run_edited(s, rt, id, "pids", |spec| {
        spec["linux"]["resources"]["pids"] = serde_json::json!({ "limit": 1 });
        spec["process"]["args"] = serde_json::json!(["echo", "alone"]);
    })?;
    ensure!(out.code == 0 && out.stdout == "alone\n", "{out:?}");
    Ok(())
}

/// Specs runc refuses: cpu shares below 2, a terminal nobody asked for, a relative cwd, a
/// hostname without a uts namespace, a rootfsPropagation that is not one. Each error names
/// what was wrong.
fn mismatched_specs_are_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit); 5] = [
        ("shares", "cpu", |spec| {
            spec["linux"]["resources"]["cpu"] = serde_json::json!({ "shares": 1 });
        }),
        ("tty", "tty", |spec| {
            spec["process"]["terminal"] = true.into();
        }),
        ("cwd", "cwd", |spec| {
            spec["process"]["cwd"] = "tmp".into();
        }),
        ("uts", "hostname", |spec| {
            without_namespace(spec, "uts");
            spec["hostname"] = "elsewhere".into();
        }),
        ("propagation", "rootfspropagation", |spec| {
            spec["linux"]["rootfsPropagation"] = "rsharedx".into();
        }),
    ];
    for (suffix, word, edit) in cases {
        let out = run_edited(s, rt, id, suffix, |spec| {
            edit(spec);
            spec["process"]["args"] = serde_json::json!(["echo", "ran"]);
        })?;
        ensure!(
            out.code != 0 && !out.stdout.contains("ran"),
            "{suffix}: ran: {out:?}"
        );
        ensure!(
            out.stderr.to_lowercase().contains(word),
            "{suffix}: the error does not say {word:?}: {:?}",
            out.stderr
        );
    }
    Ok(())
}

/// A memory limit too small to start the container fails Create saying the limit was hit.
fn memory_limit_too_low_says_so(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let out = run_edited(s, rt, id, "mem", |spec| {
        spec["linux"]["resources"]["memory"] = serde_json::json!({ "limit": 64 << 10 });
        spec["process"]["args"] = serde_json::json!(["echo", "ran"]);
    })?;
    ensure!(out.code != 0 && !out.stdout.contains("ran"), "{out:?}");
    ensure!(
        out.stderr.contains("memory limit") && out.stderr.contains("65536"),
        "the error does not say the memory limit was hit: {:?}",
        out.stderr
    );
    Ok(())
}

/// An OOM kill in the container's past does not make a later, unrelated exec failure a
/// "memory limit" error: the exec's own cause is named.
fn an_earlier_oom_is_not_blamed_for_a_failed_exec(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    run_detached(s, rt, id, &["--memory-limit", "33554432"])?;
    let out = s.cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "hog",
        id,
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    ])?;
    ensure!(
        out.code != 0 && !out.stdout.contains("survived"),
        "the hog survived: {out:?}"
    );
    let out =
        s.cd.ctr(&["task", "exec", "--exec-id", "x", id, "/no/such/cmd"])?;
    ensure!(out.code != 0, "a missing command ran");
    ensure!(
        out.stderr.contains("/no/such/cmd") && !out.stderr.contains("memory limit"),
        "stderr {:?}",
        out.stderr
    );
    Ok(())
}

/// rootfsPropagation rshared: the rootfs's parent mount is made private so pivot_root works.
fn rshared_rootfs_propagation_runs(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let out = run_edited(s, rt, id, "rshared", |spec| {
        spec["linux"]["rootfsPropagation"] = "rshared".into();
        spec["process"]["args"] = serde_json::json!(["echo", "pivoted"]);
    })?;
    ensure!(out.code == 0 && out.stdout == "pivoted\n", "{out:?}");
    Ok(())
}

/// Without a pid namespace of its own, the container's other processes are killed when PID 1
/// exits (as runc's shim does): nothing stays in its cgroup once the task has stopped.
fn pid1_exit_kills_the_rest_without_pid_namespace(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let spec = spec_file(s, id, |spec| {
        without_namespace(spec, "pid");
        spec["process"]["args"] = serde_json::json!([
            "sh",
            "-c",
            "sleep 100000 </dev/null >/dev/null 2>&1 & exec sleep 1"
        ]);
    })?;
    s.cd.ctr(&["run", "-d", "--runtime", rt.id(), "--config", &spec, id])?
        .ok()?;
    wait_status(s, id, "STOPPED")?;
    let procs = PathBuf::from("/sys/fs/cgroup/pids")
        .join(&s.cd.namespace)
        .join(id)
        .join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = std::fs::read_to_string(&procs).unwrap_or_default();
        if left.trim().is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "processes left in the cgroup after PID 1 exited: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A container's cgroup must be new or empty: a cgroupsPath naming another container's cgroup,
/// or the host's root cgroup, is refused at create — never joined, limited, or killed at delete.
fn foreign_cgroups_are_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    ensure!(
        rt != Runtime::Runc,
        "not run against runc 1.1.5 (see RUNC_FALLS_SHORT): it would take the host's root cgroup"
    );
    let victim = format!("{id}-victim");
    run_detached(s, rt, &victim, &[])?;
    let result = (|| -> Result<()> {
        let theirs = format!("/{}/{victim}", s.cd.namespace);
        for (suffix, path) in [("sibling", theirs.as_str()), ("root", "/")] {
            let out = run_edited(s, rt, id, suffix, |spec| {
                spec["linux"]["cgroupsPath"] = path.into();
                spec["process"]["args"] = serde_json::json!(["true"]);
            })?;
            ensure!(
                out.code != 0 && out.stderr.contains("linux.cgroupsPath"),
                "cgroupsPath {path:?} was not refused by name: {out:?}"
            );
        }
        let ls = s.cd.ctr(&["task", "ls"])?.stdout;
        ensure!(
            ls.lines()
                .any(|l| l.starts_with(&victim) && l.contains("RUNNING")),
            "the container whose cgroup was named is no longer running:\n{ls}"
        );
        Ok(())
    })();
    cleanup_container(&s.cd, &victim);
    result
}

/// An AppArmor profile or SELinux label on a host without AppArmor or SELinux (this one) is
/// refused: the container never runs unconfined when its spec asked for confinement.
fn confinement_the_host_cannot_apply_is_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    ensure!(
        !std::path::Path::new("/sys/module/apparmor/parameters/enabled").exists()
            && !std::path::Path::new("/sys/fs/selinux/enforce").exists(),
        "this case expects a host without AppArmor and SELinux"
    );
    for (suffix, field, edit) in [
        (
            "apparmor",
            "process.apparmorProfile",
            &(|spec: &mut serde_json::Value| {
                spec["process"]["apparmorProfile"] = "cryo-test-profile".into()
            }) as &dyn Fn(&mut serde_json::Value),
        ),
        ("selinux", "process.selinuxLabel", &|spec| {
            spec["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0".into()
        }),
    ] {
        let out = run_edited(s, rt, id, suffix, |spec| {
            edit(spec);
            spec["process"]["args"] = serde_json::json!(["echo", "ran unconfined"]);
        })?;
        ensure!(
            out.code != 0 && !out.stdout.contains("ran unconfined"),
            "{field} was not refused: {out:?}"
        );
        if rt == Runtime::Cryo {
            ensure!(out.stderr.contains(field), "{field} not named: {out:?}");
        }
    }
    Ok(())
}

/// Spec fields cryo does not apply are refused by name, never silently dropped. containerd
/// 1.6 itself drops the fields its runtime-spec predates (scheduler, ioPriority, timeOffsets):
/// each field is checked where containerd hands it over, and at least the hooks always are.
fn unapplied_fields_are_refused(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let cases: [(&str, &str, serde_json::Value); 6] = [
        (
            "hook",
            "hooks.prestart",
            serde_json::json!([{"path": "/bin/true"}]),
        ),
        (
            "rdt",
            "linux.intelRdt",
            serde_json::json!({"closID": "cryo"}),
        ),
        (
            "persona",
            "linux.personality",
            serde_json::json!({"domain": "LINUX32"}),
        ),
        (
            "sched",
            "process.scheduler",
            serde_json::json!({"policy": "SCHED_OTHER"}),
        ),
        (
            "ioprio",
            "process.ioPriority",
            serde_json::json!({"class": "IOPRIO_CLASS_IDLE"}),
        ),
        (
            "timens",
            "linux.timeOffsets",
            serde_json::json!({"monotonic": {"secs": 86400}}),
        ),
    ];
    let mut checked = Vec::new();
    for (suffix, field, value) in cases {
        let cid = format!("{id}-{suffix}");
        let (section, key) = field.split_once('.').expect("section.key");
        let spec = spec_file(s, &cid, |spec| {
            spec[section][key] = value;
            spec["process"]["args"] = serde_json::json!(["echo", "ran"]);
        })?;
        let result = (|| -> Result<()> {
            s.cd.ctr(&[
                "container",
                "create",
                "--runtime",
                rt.id(),
                "--config",
                &spec,
                &cid,
            ])?
            .ok()?;
            let info: serde_json::Value =
                serde_json::from_str(&s.cd.ctr(&["container", "info", &cid])?.ok()?.stdout)?;
            if info["Spec"][section][key].is_null() {
                return Ok(()); // containerd dropped it: nothing reaches the runtime
            }
            checked.push(field);
            let out = s.cd.ctr(&["task", "start", &cid])?;
            ensure!(
                out.code != 0 && out.stderr.contains(field) && !out.stdout.contains("ran"),
                "{field} was not refused by name: {out:?}"
            );
            Ok(())
        })();
        cleanup_container(&s.cd, &cid);
        result?;
    }
    ensure!(
        checked.contains(&"hooks.prestart"),
        "containerd dropped even the hooks: nothing was checked ({checked:?})"
    );
    Ok(())
}

/// `kill --all SIGKILL` of a paused task stops it (as runc: the processes are thawed to die);
/// a frozen process never acts on a SIGKILL, so without the thaw the task stays PAUSED forever.
fn kill_all_of_a_paused_task_stops_it(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    run_detached(s, rt, id, &[])?;
    s.cd.ctr(&["task", "pause", id])?.ok()?;
    wait_status(s, id, "PAUSED")?;
    s.cd.ctr(&["task", "kill", "-a", "-s", "SIGKILL", id])?
        .ok()?;
    wait_status(s, id, "STOPPED")
}
