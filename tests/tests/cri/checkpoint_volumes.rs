//! CRI cases: pod volumes carried by CRI checkpoint/restore (CheckpointContainer, then restore
//! through CreateContainer in a new pod, containerd 2.x), and what such a restore may hand out.

use anyhow::{ensure, Context, Result};
use harness::cri;

use super::{
    count, cryo, eventually, mount_at, restore_config, run_pod_with_uid, start, uid, Case, Suite,
    COUNTER,
};

pub(super) const CASES: &[(&str, Case)] = &[
    (
        "restore_brings_back_a_private_overlay_volume",
        restore_brings_back_a_private_overlay_volume,
    ),
    (
        "two_restored_containers_keep_private_volumes_apart",
        two_restored_containers_keep_private_volumes_apart,
    ),
    (
        "a_restore_gets_no_capability_its_spec_withholds",
        a_restore_gets_no_capability_its_spec_withholds,
    ),
    (
        "a_restore_gets_no_uid_its_spec_withholds",
        a_restore_gets_no_uid_its_spec_withholds,
    ),
];

/// Cases of this module that need containerd 2.x's CRI (ignored on 1.6 with the suite's reason).
pub(super) const NEEDS_V2: &[&str] = &[
    "restore_brings_back_a_private_overlay_volume",
    "two_restored_containers_keep_private_volumes_apart",
    "a_restore_gets_no_capability_its_spec_withholds",
    "a_restore_gets_no_uid_its_spec_withholds",
];

/// The hints of a private overlay emptyDir `cpriv`.
const PRIVATE: [(&str, &str); 2] = [
    ("dev.cryo.spec.mount.cpriv.type", "bind"),
    ("dev.cryo.spec.mount.cpriv.share", "container"),
];

/// A container with a private overlay emptyDir (`type=bind`, `share=container`: its files are
/// in an upper directory on disk only it sees) checkpointed through CRI; the pod removed and
/// its emptyDir deleted, as kubelet does; restored through CreateContainer in a new pod with the
/// same volume hint and a new, empty emptyDir: the files are back (in the new pod's volume),
/// the volume is an overlay again, and the process continues.
fn restore_brings_back_a_private_overlay_volume(s: &Suite, case: &str) -> Result<()> {
    const HINTS: [(&str, &str); 2] = PRIVATE;
    let uid1 = uid(case);
    let dir = cri::empty_dir(&s.kubelet, &uid1, "cpriv")?;
    let pod = run_pod_with_uid(s, case, &uid1, &HINTS)?;
    let script = format!(
        "echo in-the-volume > /v/cpriv/file; chmod 600 /v/cpriv/file; mkdir -p /v/cpriv/d/e; \
         echo deep > /v/cpriv/d/e/f; ln -s d/e/f /v/cpriv/link; {COUNTER}"
    );
    let app = start(s, &pod, "counter", &script, &[("/v/cpriv", &dir)])?;
    eventually("the counter counts", || Ok(count(s, &app)? >= 3))?;
    let upper = dir.join(".cryo-filestore/container-counter/upper");
    ensure!(
        upper.join("file").is_file() && !dir.join("file").exists(),
        "the volume is not a private overlay: its file is not in {}",
        upper.display()
    );
    let before = count(s, &app)?;
    let archive = s.kubelet.join("checkpoints").join(format!("{case}.tar"));
    std::fs::create_dir_all(archive.parent().context("no parent")?)?;
    s.cri.checkpoint_container(&app, &archive, 60)?;
    // The volume's checkpoint is in the archive whole: its data file, manifest and the block
    // hashes the manifest names.
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "cryo-volumes.multitar",
        "fscheckpoint.json",
        "fscheckpoint.blocks",
    ] {
        ensure!(
            listing.lines().any(|l| l.ends_with(&format!("/{file}"))),
            "the archive lacks the volume checkpoint's {file}:\n{listing}"
        );
    }
    s.cri.remove_pod_fully(&pod.id)?;
    // kubelet deletes a removed pod's emptyDirs.
    std::fs::remove_dir_all(&dir)?;

    let uid2 = format!("{uid1}-restored");
    let dir2 = cri::empty_dir(&s.kubelet, &uid2, "cpriv")?;
    let new = run_pod_with_uid(s, &format!("{case}-restored"), &uid2, &HINTS)?;
    let mut config = restore_config("counter", &archive);
    config.mounts = vec![k8s_cri::v1::Mount {
        container_path: "/v/cpriv".into(),
        host_path: dir2.display().to_string(),
        ..Default::default()
    }];
    let id = s.cri.create_container(&new.id, config, &new.config)?;
    s.cri.start_container(&id)?;
    let restored = count(s, &id)?;
    ensure!(restored >= before, "restored count {restored} < {before}");
    let got = s.cri.sh(
        &id,
        "cat /v/cpriv/file; stat -c %a /v/cpriv/file; readlink /v/cpriv/link; cat /v/cpriv/link",
    )?;
    ensure!(
        got == "in-the-volume\n600\nd/e/f\ndeep\n",
        "the overlay volume after the restore: {got:?}"
    );
    let (fstype, _) = mount_at(s.cri.container_pid(&id)?, "/v/cpriv")?;
    ensure!(
        fstype == "overlay",
        "/v/cpriv after restore is {fstype}, not overlay"
    );
    // The new pod's volume holds them (in the restored container's own filestore).
    let stores = dir2.join(".cryo-filestore");
    let holders: Vec<_> = std::fs::read_dir(&stores)
        .with_context(|| format!("{}", stores.display()))?
        .flatten()
        .filter(|e| e.path().join("upper/d/e/f").is_file())
        .map(|e| e.file_name())
        .collect();
    ensure!(
        holders.len() == 1,
        "the restored files are not in one filestore of the new pod's volume {}: {holders:?}",
        stores.display()
    );
    eventually("the restored counter counts on", || {
        Ok(count(s, &id)? > restored)
    })?;
    s.cri.stop_container(&id, 2)?;
    s.cri.remove_container(&id)?;
    std::fs::remove_file(&archive)?;
    Ok(())
}

/// Two containers of one pod, each with a private overlay volume of the same emptyDir,
/// checkpointed through CRI and restored into ONE new pod (one new emptyDir): both restores
/// start (each gets an empty upper directory to restore into), each finds its own checkpointed
/// file, and what one writes the other does not see. (containerd 2.2.7 annotates every
/// restored container's CRI name as "containerd": a name-keyed filestore is shared.) A
/// filesystem checkpoint of that pod is refused naming the shared name: its sections are
/// labelled by container name, and two containers' rootfs sections under one label would
/// come back stacked into one container.
fn two_restored_containers_keep_private_volumes_apart(s: &Suite, case: &str) -> Result<()> {
    const NAMES: [&str; 2] = ["alpha", "beta"];
    let uid1 = uid(case);
    let dir = cri::empty_dir(&s.kubelet, &uid1, "cpriv")?;
    let pod = run_pod_with_uid(s, case, &uid1, &PRIVATE)?;
    let mut archives = Vec::new();
    for name in NAMES {
        let script = format!("echo {name} > /v/cpriv/file; {COUNTER}");
        let app = start(s, &pod, name, &script, &[("/v/cpriv", &dir)])?;
        eventually("the counter counts", || Ok(count(s, &app)? >= 3))?;
        let archive = s
            .kubelet
            .join("checkpoints")
            .join(format!("{case}-{name}.tar"));
        std::fs::create_dir_all(archive.parent().context("no parent")?)?;
        s.cri.checkpoint_container(&app, &archive, 60)?;
        archives.push(archive);
    }
    s.cri.remove_pod_fully(&pod.id)?;
    std::fs::remove_dir_all(&dir)?;

    let uid2 = format!("{uid1}-restored");
    let dir2 = cri::empty_dir(&s.kubelet, &uid2, "cpriv")?;
    let new = run_pod_with_uid(s, &format!("{case}-restored"), &uid2, &PRIVATE)?;
    let mut ids = Vec::new();
    for (name, archive) in NAMES.iter().zip(&archives) {
        let mut config = restore_config(name, archive);
        config.mounts = vec![k8s_cri::v1::Mount {
            container_path: "/v/cpriv".into(),
            host_path: dir2.display().to_string(),
            ..Default::default()
        }];
        let id = s.cri.create_container(&new.id, config, &new.config)?;
        ids.push(id.clone());
        s.cri
            .start_container(&id)
            .with_context(|| format!("start the restored {name}"))?;
    }
    for (id, name) in ids.iter().zip(NAMES) {
        let got = s.cri.sh(id, "cat /v/cpriv/file")?;
        ensure!(
            got == format!("{name}\n"),
            "the restored {name}'s volume file holds {got:?}"
        );
        s.cri.sh(id, &format!("echo {name} > /v/cpriv/mine"))?;
    }
    for (id, name) in ids.iter().zip(NAMES) {
        let got = s.cri.sh(id, "cat /v/cpriv/mine")?;
        ensure!(
            got == format!("{name}\n"),
            "the restored {name} sees {got:?} in its private volume: shared with the other"
        );
    }
    let stores: Vec<_> = std::fs::read_dir(dir2.join(".cryo-filestore"))?
        .flatten()
        .filter(|e| e.path().join("upper/mine").is_file())
        .map(|e| e.file_name())
        .collect();
    ensure!(
        stores.len() == 2,
        "the two restored containers' files are not in two filestores: {stores:?}"
    );
    let tmp = tempfile::Builder::new()
        .prefix("cryo-fsck-")
        .tempdir_in("/tmp")?;
    let ck = tmp.path().join("ck").display().to_string();
    let out = cryo(
        s,
        &[
            "fscheckpoint",
            "--image-path",
            &ck,
            "--leave-running",
            &new.id,
        ],
    )?;
    // The CRI name each restored container's spec carries (its bundle's config.json).
    let names: Vec<String> = ids
        .iter()
        .map(|id| {
            let spec =
                s.cd.dir
                    .join("state/io.containerd.runtime.v2.task/k8s.io")
                    .join(id)
                    .join("config.json");
            let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec)?)?;
            Ok(spec["annotations"]["io.kubernetes.cri.container-name"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        })
        .collect::<Result<_>>()?;
    eprintln!("the restored containers' CRI name annotations: {names:?}; fscheckpoint: {out:?}");
    if names[0] == names[1] {
        ensure!(
            out.code != 0 && ids.iter().all(|id| out.stderr.contains(id.as_str())),
            "a filesystem checkpoint of a pod whose two containers share a name was not \
             refused naming them: {out:?}"
        );
    } else {
        out.ok().context("cryo fscheckpoint")?;
    }
    for id in &ids {
        s.cri.stop_container(id, 2)?;
        s.cri.remove_container(id)?;
    }
    for archive in &archives {
        std::fs::remove_file(archive)?;
    }
    Ok(())
}

/// A container granted CAP_SYS_ADMIN and CAP_SYS_MODULE is checkpointed through CRI; restored
/// into a new pod by a request that grants only the defaults, it must not come back with them
/// (CRIU sets the capabilities the checkpoint's images claim; a checkpoint's author could claim
/// any): StartContainer fails naming them and the bounding set, and no process of it is left.
/// Restored into another pod by a request that grants them, it runs on.
fn a_restore_gets_no_capability_its_spec_withholds(s: &Suite, case: &str) -> Result<()> {
    const CAPS: [&str; 2] = ["SYS_ADMIN", "SYS_MODULE"];
    let pod = super::run_pod(s, case, &[])?;
    let config = secured(
        cri::container_config("capped", COUNTER, &[]),
        None,
        &CAPS,
        &[],
    );
    let app = s.cri.create_container(&pod.id, config, &pod.config)?;
    s.cri.start_container(&app)?;
    eventually("the counter counts", || Ok(count(s, &app)? >= 3))?;
    let archive = s.kubelet.join("checkpoints").join(format!("{case}.tar"));
    std::fs::create_dir_all(archive.parent().context("no parent")?)?;
    s.cri.checkpoint_container(&app, &archive, 60)?;
    s.cri.remove_pod_fully(&pod.id)?;

    let new = super::run_pod(s, &format!("{case}-restored"), &[])?;
    let id = s
        .cri
        .create_container(&new.id, restore_config("capped", &archive), &new.config)?;
    let started = s.cri.start_container(&id);
    let left: Vec<String> = std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(&id)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let err = match started {
        Ok(()) => {
            let pid = s.cri.container_pid(&id)?;
            let caps = std::fs::read_to_string(format!("/proc/{pid}/status"))?
                .lines()
                .filter(|l| l.starts_with("Cap"))
                .collect::<Vec<_>>()
                .join(" ");
            anyhow::bail!("the restore ran with the checkpoint's capabilities: {caps}");
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("CAP_SYS_ADMIN") && err.contains("CAP_SYS_MODULE") && err.contains("bounding"),
        "the refusal names neither the capabilities nor the bounding set: {err}"
    );
    ensure!(
        left.is_empty(),
        "processes of the refused restore: {left:?}"
    );
    s.cri.remove_container(&id)?;
    s.cri.remove_pod_fully(&new.id)?;

    // (A pod of its own: its pids are the checkpoint's, free in a new pod's pid namespace.)
    let granting = super::run_pod(s, &format!("{case}-granted"), &[])?;
    let config = secured(restore_config("capped", &archive), None, &CAPS, &[]);
    let id = s
        .cri
        .create_container(&granting.id, config, &granting.config)?;
    s.cri.start_container(&id)?;
    let restored = count(s, &id)?;
    eventually("the restored counter counts on", || {
        Ok(count(s, &id)? > restored)
    })?;
    s.cri.stop_container(&id, 2)?;
    s.cri.remove_container(&id)?;
    std::fs::remove_file(&archive)?;
    Ok(())
}

/// A config whose container runs as `user` (uid and gid; `None`: the image's) with the
/// capabilities `add` added to the defaults and `drop` dropped.
fn secured(
    mut config: k8s_cri::v1::ContainerConfig,
    user: Option<i64>,
    add: &[&str],
    drop: &[&str],
) -> k8s_cri::v1::ContainerConfig {
    let id = user.map(|value| k8s_cri::v1::Int64Value { value });
    let names = |caps: &[&str]| caps.iter().map(|c| c.to_string()).collect();
    config.linux = Some(k8s_cri::v1::LinuxContainerConfig {
        security_context: Some(k8s_cri::v1::LinuxContainerSecurityContext {
            run_as_user: id,
            run_as_group: id,
            capabilities: Some(k8s_cri::v1::Capability {
                add_capabilities: names(add),
                drop_capabilities: names(drop),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// A root container (without CAP_SETUID and CAP_SETGID, so that its capabilities are within
/// the new spec's) is checkpointed through CRI; restored into a new pod by a request with
/// `runAsUser: 1000`, `runAsGroup: 1000` and the same dropped capabilities, it must not run as
/// root (CRIU sets the uids the images claim): StartContainer fails naming the uid, the field
/// and CAP_SETUID, and no process of it is left. Restored by a request that keeps the default
/// capabilities (CAP_SETUID within reach: a setuid-root binary gives it back without
/// no_new_privs), it runs on.
fn a_restore_gets_no_uid_its_spec_withholds(s: &Suite, case: &str) -> Result<()> {
    const DROP: [&str; 2] = ["SETUID", "SETGID"];
    let pod = super::run_pod(s, case, &[])?;
    let config = secured(
        cri::container_config("rooted", COUNTER, &[]),
        None,
        &[],
        &DROP,
    );
    let app = s.cri.create_container(&pod.id, config, &pod.config)?;
    s.cri.start_container(&app)?;
    eventually("the counter counts", || Ok(count(s, &app)? >= 3))?;
    let archive = s.kubelet.join("checkpoints").join(format!("{case}.tar"));
    std::fs::create_dir_all(archive.parent().context("no parent")?)?;
    s.cri.checkpoint_container(&app, &archive, 60)?;
    s.cri.remove_pod_fully(&pod.id)?;

    let new = super::run_pod(s, &format!("{case}-restored"), &[])?;
    let config = secured(restore_config("rooted", &archive), Some(1000), &[], &DROP);
    let id = s.cri.create_container(&new.id, config, &new.config)?;
    let started = s.cri.start_container(&id);
    let left: Vec<String> = std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(&id)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let err = match started {
        Ok(()) => {
            let pid = s.cri.container_pid(&id)?;
            let ids = std::fs::read_to_string(format!("/proc/{pid}/status"))?
                .lines()
                .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:"))
                .collect::<Vec<_>>()
                .join(" ");
            anyhow::bail!(
                "the restore into a runAsUser 1000 spec ran with the checkpoint's ids: {ids}"
            );
        }
        Err(e) => format!("{e:#}"),
    };
    eprintln!("the restore into a runAsUser 1000 spec: {err}");
    ensure!(
        err.contains("uid 0")
            && err.contains("process.user.uid is 1000")
            && err.contains("CAP_SETUID"),
        "the refusal names neither the uid, the field nor CAP_SETUID: {err}"
    );
    ensure!(
        left.is_empty(),
        "processes of the refused restore: {left:?}"
    );
    s.cri.remove_container(&id)?;
    s.cri.remove_pod_fully(&new.id)?;

    // (A pod of its own: its pids are the checkpoint's, free in a new pod's pid namespace.)
    let granting = super::run_pod(s, &format!("{case}-granted"), &[])?;
    let config = secured(restore_config("rooted", &archive), Some(1000), &[], &[]);
    let id = s
        .cri
        .create_container(&granting.id, config, &granting.config)?;
    s.cri.start_container(&id)?;
    let restored = count(s, &id)?;
    eventually("the restored counter counts on", || {
        Ok(count(s, &id)? > restored)
    })?;
    s.cri.stop_container(&id, 2)?;
    s.cri.remove_container(&id)?;
    std::fs::remove_file(&archive)?;
    Ok(())
}
