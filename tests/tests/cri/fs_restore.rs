//! CRI cases: restore of filesystem checkpoints into new pods (`dev.cryo.fs-restore.image-path`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use harness::cri;

use super::{
    create, cryo, eventually, mount_at, run_pod_with_uid, sandbox_bundle, seed_pod, shim_pids,
    start, uid, Case, Pod, Suite,
};

pub(super) const CASES: &[(&str, Case)] = &[
    (
        "fs_restore_of_the_seed_pod_into_new_pods",
        fs_restore_of_the_seed_pod_into_new_pods,
    ),
    (
        "fs_restore_chain_of_restored_pods",
        fs_restore_chain_of_restored_pods,
    ),
    (
        "fs_restore_of_a_corrupt_checkpoint_fails_creation",
        fs_restore_of_a_corrupt_checkpoint_fails_creation,
    ),
    (
        "fs_restore_of_a_device_node_is_refused",
        fs_restore_of_a_device_node_is_refused,
    ),
    (
        "fs_restore_only_beneath_the_checkpoint_root",
        fs_restore_only_beneath_the_checkpoint_root,
    ),
    (
        "fs_restore_annotation_is_checked_at_run_pod",
        fs_restore_annotation_is_checked_at_run_pod,
    ),
    (
        "fs_restore_fills_private_volumes",
        fs_restore_fills_private_volumes,
    ),
    (
        "fs_restore_pod_removed_while_its_cache_fills",
        fs_restore_pod_removed_while_its_cache_fills,
    ),
    (
        "fs_restore_killed_shim_leaves_no_lazy_layer",
        fs_restore_killed_shim_leaves_no_lazy_layer,
    ),
    (
        "fs_restore_failed_create_leaves_no_lazy_layer",
        fs_restore_failed_create_leaves_no_lazy_layer,
    ),
    (
        "fs_restore_verifies_data_before_start_or_on_read",
        fs_restore_verifies_data_before_start_or_on_read,
    ),
    (
        "fs_restore_cache_evicts_only_what_no_pod_uses",
        fs_restore_cache_evicts_only_what_no_pod_uses,
    ),
];

/// Cases of this module that need containerd 2.x's CRI (ignored on 1.6 with the suite's reason).
pub(super) const NEEDS_V2: &[&str] = &[];

const ANNOTATION: &str = "dev.cryo.fs-restore.image-path";
const VERIFY: &str = "dev.cryo.fs-restore.verify";

/// `cryo fscheckpoint --leave-running` of `pod` with `paths` (`--path` each) into a fresh
/// temp dir, then the pod removed: the temp dir (kept alive by the caller) and the checkpoint.
fn save_and_remove(s: &Suite, pod: &Pod, paths: &[&str]) -> Result<(tempfile::TempDir, PathBuf)> {
    let tmp = tempfile::Builder::new()
        .prefix("cryo-fsrestore-")
        .tempdir_in("/tmp")?;
    let ck = tmp.path().join("ck");
    let ck_text = ck.display().to_string();
    let mut args = vec!["fscheckpoint", "--image-path", &ck_text];
    for p in paths {
        args.extend(["--path", p]);
    }
    args.extend(["--leave-running", &pod.id]);
    cryo(s, &args)?
        .ok()
        .with_context(|| format!("cryo fscheckpoint of pod {}", pod.id))?;
    s.cri.remove_pod_fully(&pod.id)?;
    Ok((tmp, ck))
}

/// Every layer in the run's cache: name -> (inode, mtime).
fn layers(s: &Suite) -> Result<BTreeMap<String, (u64, i64)>> {
    let mut out = BTreeMap::new();
    let root = s.cd.layer_root();
    if !root.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&root)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let md = std::fs::symlink_metadata(e.path())?;
        out.insert(name, (md.ino(), md.mtime()));
    }
    Ok(out)
}

/// The cache's layer of the section of `ck` for (`container`, `path`).
fn layer_of(s: &Suite, ck: &Path, container: Option<&str>, path: &str) -> Result<PathBuf> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("fscheckpoint.json"))?)?;
    let section = m["sections"]
        .as_array()
        .context("no sections")?
        .iter()
        .find(|x| {
            x["resource"]["path"] == path
                && container.is_none_or(|c| x["resource"]["container"] == c)
        })
        .with_context(|| format!("no section {container:?} {path}"))?;
    let hex = section["checksum"]
        .as_str()
        .and_then(|c| c.strip_prefix("blake3:"))
        .context("no checksum")?;
    Ok(s.cd.layer_root().join(hex))
}

/// The seed's pod (agent + sidecar sharing a share=pod emptyDir) writes into both rootfs and
/// the volume (the sidecar deletes an image file, the agent replaces an image directory);
/// `cryo fscheckpoint --leave-running --path / --path all-volumes`; a NEW pod with the restore
/// annotation (and a fresh emptyDir) starts on lazy layers (its rootfs' and its volume's top
/// lower layers are FUSE mounts of cryo's, nothing extracted before it started) and sees every
/// file, each container its own rootfs, the deletion and the replaced directory stay so, the
/// sidecar sees the agent's volume data; the cache fills meanwhile (three layers appear); the
/// new pod's writes leave the cache as it was; a second new pod, restored through a `latest`
/// link, reuses the cached layers (same inodes, nothing extracted, nothing lazy) and sees none
/// of the first new pod's writes; the lazy mounts go with the first pod.
/// (Saving a restored pod again: `fs_restore_chain_of_restored_pods`.)
fn fs_restore_of_the_seed_pod_into_new_pods(s: &Suite, case: &str) -> Result<()> {
    let (pod, dir) = seed_pod(s, case, &[])?;
    let _agent = start(
        s,
        &pod,
        "agent",
        "echo agent-root > /agent-root.txt && rm -r /home && mkdir /home && echo new > /home/new && echo agent-vol > /workspace/agent.txt && exec sleep 100000",
        &[("/workspace", &dir)],
    )?;
    let sidecar = start(
        s,
        &pod,
        "sidecar",
        "echo side-root > /side-root.txt && rm /bin/ls && echo side-vol > /workspace/side.txt && exec sleep 100000",
        &[("/workspace", &dir)],
    )?;
    eventually("both containers wrote", || {
        Ok(s.cri
            .exec_sync(
                &sidecar,
                &["cat", "/workspace/agent.txt", "/workspace/side.txt"],
            )?
            .0
            == 0)
    })?;
    let (tmp, ck) = save_and_remove(s, &pod, &["/", "all-volumes"])?;
    let ck_text = ck.display().to_string();
    ensure!(layers(s)?.is_empty(), "layers before any restore");

    // The first new pod.
    let (one, one_dir) = seed_pod(s, &format!("{case}-1"), &[(ANNOTATION, &ck_text)])?;
    let sleep = "exec sleep 100000";
    let agent1 = start(s, &one, "agent", sleep, &[("/workspace", &one_dir)])?;
    let side1 = start(s, &one, "sidecar", sleep, &[("/workspace", &one_dir)])?;
    let check_restored = |agent: &str, sidecar: &str| -> Result<()> {
        let a = s.cri.sh(
            agent,
            "cat /agent-root.txt /workspace/agent.txt /workspace/side.txt /home/new; ls /home; test -e /side-root.txt && echo LEAK; true",
        )?;
        ensure!(
            a == "agent-root\nagent-vol\nside-vol\nnew\nnew\n",
            "the agent sees {a:?}"
        );
        let b = s.cri.sh(
            sidecar,
            "cat /side-root.txt /workspace/agent.txt; test -e /bin/ls && echo ls-is-back; test -e /agent-root.txt && echo LEAK; ls -d /home/app; true",
        )?;
        ensure!(
            b == "side-root\nagent-vol\n/home/app\n",
            "the sidecar sees {b:?}"
        );
        Ok(())
    };
    check_restored(&agent1, &side1)?;
    // Served in place: each rootfs' top lower layer, and the volume's, is a lazy layer.
    for id in [&agent1, &side1] {
        let pid = s.cri.container_pid(id)?;
        let top = top_lower(&format!("/proc/{pid}/mountinfo"), "/")?;
        ensure!(
            lazy_mount(&top)?.is_some(),
            "container {id}: the rootfs' top lower layer {top} is not a lazy layer"
        );
    }
    let volume = sandbox_bundle(s, &one).join("volumes");
    let pod_overlay = harness::leftovers::mounts_under(&volume);
    let pod_overlay = pod_overlay.first().context("no pod overlay mounted")?;
    let top = top_lower("/proc/self/mountinfo", &pod_overlay.display().to_string())?;
    ensure!(
        lazy_mount(&top)?.is_some(),
        "the pod volume's top lower layer {top} is not a lazy layer"
    );
    // The harness' leftover check sees them (so that a lazy mount left behind fails a run).
    let lazies: Vec<PathBuf> = harness::leftovers::mounts_under(&s.cd.dir)
        .into_iter()
        .filter(|m| lazy_mount(&m.display().to_string()).is_ok_and(|l| l.is_some()))
        .collect();
    ensure!(
        lazies.len() == 3,
        "lazy mounts the leftover check sees: {lazies:?}"
    );
    let mut cached = BTreeMap::new();
    eventually("the cache filled in the background", || {
        cached = layers(s)?;
        Ok(cached.len() == 3)
    })?;
    // Writes of the new pod stay in the pod: the cache does not change.
    s.cri.sh(
        &agent1,
        "echo changed > /agent-root.txt && echo more > /new.txt && rm /home/new && echo changed > /workspace/agent.txt",
    )?;
    let agent_layer = layer_of(s, &ck, Some("agent"), "/")?;
    let volume_layer = layer_of(s, &ck, None, "/workspace")?;
    ensure!(std::fs::read_to_string(agent_layer.join("agent-root.txt"))? == "agent-root\n");
    ensure!(
        !agent_layer.join("new.txt").exists(),
        "a write reached the cache"
    );
    ensure!(
        agent_layer.join("home/new").is_file(),
        "a delete reached the cache"
    );
    ensure!(std::fs::read_to_string(volume_layer.join("agent.txt"))? == "agent-vol\n");
    ensure!(
        one_dir
            .join(".cryo-filestore/pod/upper/agent.txt")
            .is_file(),
        "the volume write is not in the new pod's own filestore"
    );

    // The second new pod, through a destination's `latest` link: nothing extracted again.
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest)?;
    std::fs::rename(&ck, dest.join("0001"))?;
    std::os::unix::fs::symlink("0001", dest.join("latest"))?;
    let dest_text = dest.display().to_string();
    let (two, two_dir) = seed_pod(s, &format!("{case}-2"), &[(ANNOTATION, &dest_text)])?;
    let agent2 = start(s, &two, "agent", sleep, &[("/workspace", &two_dir)])?;
    let side2 = start(s, &two, "sidecar", sleep, &[("/workspace", &two_dir)])?;
    check_restored(&agent2, &side2)?;
    let new_txt = s.cri.exec_sync(&agent2, &["test", "-e", "/new.txt"])?.0;
    ensure!(
        new_txt != 0,
        "the second pod sees the first new pod's write"
    );
    ensure!(
        layers(s)? == cached,
        "the cache changed (re-extracted?): {cached:?} -> {:?}",
        layers(s)?
    );
    let log = std::fs::read_to_string(s.cd.dir.join("containerd.log"))?;
    let count = |what: &str, id: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("container {id}: section")) && l.contains(what))
            .count()
    };
    for (id, name) in [(&agent1, "agent 1"), (&side1, "sidecar 1")] {
        ensure!(
            count("served lazily", id) >= 1 && count("reused from the cache", id) == 0,
            "{name}: the first restore was not served lazily"
        );
    }
    for (id, name) in [(&agent2, "agent 2"), (&side2, "sidecar 2")] {
        ensure!(
            count("served lazily", id) == 0 && count("reused from the cache", id) >= 1,
            "{name}: the second restore did not reuse the cache"
        );
    }
    // The first pod's lazy layers go with it.
    s.cri.remove_pod_fully(&one.id)?;
    for l in &lazies {
        ensure!(
            lazy_mount(&l.display().to_string())?.is_none() && !l.exists(),
            "{} is left after its pod",
            l.display()
        );
    }
    Ok(())
}

/// The top lower directory of the overlay mounted at `dest` in the mount table `mountinfo`.
fn top_lower(mountinfo: &str, dest: &str) -> Result<String> {
    let text = std::fs::read_to_string(mountinfo)?;
    let line = text
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(dest))
        .with_context(|| format!("nothing mounted at {dest} in {mountinfo}"))?;
    let (_, right) = line.split_once(" - ").context("bad mountinfo line")?;
    let options = right.split(' ').nth(2).unwrap_or_default();
    options
        .split(',')
        .find_map(|o| {
            o.strip_prefix("lowerdir=")
                .or_else(|| o.strip_prefix("lowerdir+="))
        })
        .map(|l| l.split(':').next().unwrap_or_default().to_string())
        .with_context(|| format!("{dest}: no lowerdir in {line}"))
}

/// The source (`cryo-layer:<checksum hex>`) of the lazy layer (a `fuse.cryo-layer` mount, in
/// this process' mount table, which is the shims') at `path`, if one is mounted there.
fn lazy_mount(path: &str) -> Result<Option<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        (left.split(' ').nth(4) == Some(path) && r.next() == Some("fuse.cryo-layer"))
            .then(|| r.next().unwrap_or_default().to_string())
    }))
}

/// The sections of `ck`'s manifest for (`container`, `path`): (layer, checksum) in order, and
/// the manifest's version.
fn stack_of(ck: &Path, container: &str, path: &str) -> Result<(String, Vec<(u64, String)>)> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("fscheckpoint.json"))?)?;
    let stack = m["sections"]
        .as_array()
        .context("no sections")?
        .iter()
        .filter(|x| x["resource"]["path"] == path && x["resource"]["container"] == container)
        .map(|x| {
            (
                x["layer"].as_u64().unwrap_or(0),
                x["checksum"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Ok((m["version"].as_str().unwrap_or_default().to_string(), stack))
}

/// Freeze, thaw, freeze: pod A writes `/f1`, deletes an image file and makes `/d/old`, and
/// writes its share=pod volume; checkpoint 1; pod B, restored from 1, writes `/f2`, deletes
/// `/f1`, replaces `/d` (an opaque directory over A's layer), and does likewise in the volume;
/// checkpoint 2 (of a restored pod: A's sections copied verbatim beneath B's uppers, as layers
/// 0 and 1, version 2.0); pod C, restored from 2, sees B's state: `/f2`, no `/f1`, the image
/// file still deleted, `/d` replaced, the volume likewise. C saved again: three layers. A save
/// of B while checkpoint 1's data is changed fails naming it, leaves nothing, B keeps running.
fn fs_restore_chain_of_restored_pods(s: &Suite, case: &str) -> Result<()> {
    let (a, a_dir) = seed_pod(s, case, &[])?;
    let agent = start(
        s,
        &a,
        "agent",
        "echo one > /f1 && rm /bin/ls && mkdir /d && echo old > /d/old && echo v1 > /workspace/v1 && echo keep > /workspace/keep && mkdir /workspace/vd && echo old > /workspace/vd/old && echo done > /workspace/a-done && exec sleep 100000",
        &[("/workspace", &a_dir)],
    )?;
    eventually("pod A wrote", || {
        Ok(s.cri.exec_sync(&agent, &["cat", "/workspace/a-done"])?.0 == 0)
    })?;
    let (_tmp1, ck1) = save_and_remove(s, &a, &["/", "all-volumes"])?;
    let ck1_text = ck1.display().to_string();

    let (b, b_dir) = seed_pod(s, &format!("{case}-b"), &[(ANNOTATION, &ck1_text)])?;
    let agent = start(
        s,
        &b,
        "agent",
        "test -e /f1 && test -e /workspace/v1 && echo two > /f2 && rm /f1 && rm -r /d && mkdir /d && echo new > /d/new && echo v2 > /workspace/v2 && rm /workspace/v1 && rm -r /workspace/vd && mkdir /workspace/vd && echo new > /workspace/vd/new && echo done > /workspace/b-done && exec sleep 100000",
        &[("/workspace", &b_dir)],
    )?;
    eventually("pod B wrote", || {
        Ok(s.cri.exec_sync(&agent, &["cat", "/workspace/b-done"])?.0 == 0)
    })?;
    // The checkpoint B stands on, changed meanwhile: the save fails naming it and the
    // section, leaves nothing, and B keeps running.
    let data1 = ck1.join("data.multitar");
    let good = std::fs::read(&data1)?;
    let mut bad = good.clone();
    let at = bad
        .windows(4)
        .position(|w| w == b"one\n")
        .context("A's /f1 in checkpoint 1")?;
    bad[at] = b'0';
    std::fs::write(&data1, &bad)?;
    let refused = _tmp1.path().join("refused");
    let out = cryo(
        s,
        &[
            "fscheckpoint",
            "--image-path",
            &refused.display().to_string(),
            "--leave-running",
            &b.id,
        ],
    )?;
    ensure!(
        out.code != 0 && out.stderr.contains(&ck1_text) && out.stderr.contains("checksum mismatch"),
        "a save copying a changed section did not fail naming it: {out:?}"
    );
    ensure!(
        !refused.exists(),
        "the failed save left {}",
        refused.display()
    );
    ensure!(
        s.cri.exec_sync(&agent, &["cat", "/f2"])?.0 == 0,
        "pod B is not running after the failed save"
    );
    std::fs::write(&data1, &good)?;
    let (_tmp2, ck2) = save_and_remove(s, &b, &["/", "all-volumes"])?;
    let ck2_text = ck2.display().to_string();
    for (path, what) in [("/", "rootfs"), ("/workspace", "volume")] {
        let (_, one) = stack_of(&ck1, "agent", path)?;
        let (version, two) = stack_of(&ck2, "agent", path)?;
        ensure!(
            version == "2.0" && two.len() == 2 && two[0] == (0, one[0].1.clone()) && two[1].0 == 1,
            "checkpoint 2's {what}: want A's section copied as layer 0 under B's as layer 1 \
             (version 2.0); checkpoint 1 has {one:?}, checkpoint 2 (version {version}) {two:?}"
        );
    }

    let (c, c_dir) = seed_pod(s, &format!("{case}-c"), &[(ANNOTATION, &ck2_text)])?;
    let agent = start(
        s,
        &c,
        "agent",
        "exec sleep 100000",
        &[("/workspace", &c_dir)],
    )?;
    let seen = s.cri.sh(
        &agent,
        "cat /f2 /d/new /workspace/v2 /workspace/keep /workspace/vd/new; \
         test -e /f1 && echo LEAK-f1; test -e /bin/ls && echo ls-is-back; \
         test -e /d/old && echo LEAK-d-old; test -e /workspace/v1 && echo LEAK-v1; \
         test -e /workspace/vd/old && echo LEAK-vd-old; true",
    )?;
    ensure!(
        seen == "two\nnew\nv2\nkeep\nnew\n",
        "pod C (restored from the checkpoint of a restored pod) sees {seen:?}"
    );

    // And once more: C's checkpoint stacks three layers (A's, B's, C's).
    s.cri.sh(&agent, "echo three > /f3")?;
    let (_tmp3, ck3) = save_and_remove(s, &c, &["/"])?;
    let (_, two) = stack_of(&ck2, "agent", "/")?;
    let (version, three) = stack_of(&ck3, "agent", "/")?;
    ensure!(
        version == "2.0"
            && three.iter().map(|l| l.0).collect::<Vec<_>>() == [0, 1, 2]
            && three[0].1 == two[0].1
            && three[1].1 == two[1].1,
        "checkpoint 3: want checkpoint 2's two sections as layers 0 and 1 under C's; \
         checkpoint 2 has {two:?}, checkpoint 3 {three:?}"
    );
    Ok(())
}

/// A checkpoint whose rootfs section's data was changed: CreateContainer fails naming the
/// annotation, the section and the checksum mismatch; no container, mount or layer is left
/// (only the section's lock file, and other layers' last-use stamps), and the pod still takes a container without a section.
fn fs_restore_of_a_corrupt_checkpoint_fails_creation(s: &Suite, case: &str) -> Result<()> {
    let marker = format!("corrupt-me-{}", uid(case));
    let (pod, _) = seed_pod(s, case, &[])?;
    let app = start(
        s,
        &pod,
        "app",
        &format!("echo {marker} > /marker.txt && exec sleep 100000"),
        &[],
    )?;
    eventually("app wrote", || {
        Ok(s.cri.exec_sync(&app, &["cat", "/marker.txt"])?.0 == 0)
    })?;
    let (_tmp, ck) = save_and_remove(s, &pod, &[])?;
    let ck_text = ck.display().to_string();
    let data = ck.join("data.multitar");
    let mut bytes = std::fs::read(&data)?;
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .context("the marker is not in the data file")?;
    bytes[at] ^= 0x20;
    std::fs::write(&data, &bytes)?;
    let layer = layer_of(s, &ck, Some("app"), "/")?;

    let (new, _) = seed_pod(s, &format!("{case}-new"), &[(ANNOTATION, &ck_text)])?;
    // CRI creates the task (and so calls the shim) at StartContainer.
    let id = create(s, &new, "app", "exec sleep 100000", &[])?;
    let e = s
        .cri
        .start_container(&id)
        .err()
        .context("StartContainer of a corrupt section succeeded")?;
    let e = format!("{e:#}");
    for want in [ANNOTATION, "rootfs-upper app:/", "checksum mismatch"] {
        ensure!(e.contains(want), "the error does not name {want:?}: {e}");
    }
    let st = s.cri.container_status(&id)?.status.context("no status")?;
    ensure!(st.state != 1, "the container runs: {st:?}");
    let bundle =
        s.cd.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(harness::cri::K8S_NAMESPACE)
            .join(&id);
    ensure!(
        !bundle.exists(),
        "the task's bundle is left: {}",
        bundle.display()
    );
    ensure!(
        !layer.exists(),
        "a layer of the corrupt section is in the cache"
    );
    let root = s.cd.layer_root();
    let left: Vec<String> = match std::fs::read_dir(&root) {
        Ok(d) => d
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    ensure!(
        left.iter()
            .all(|n| n.ends_with(".lock") || n.ends_with(".used") || !n.starts_with('.')),
        "an unfinished extraction is left in the cache: {left:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts.contains(&root.display().to_string()) && !mounts.contains(" fuse.cryo-layer "),
        "a layer is mounted"
    );
    // A container the checkpoint has no section for is created as usual.
    let other = start(s, &new, "other", "exec sleep 100000", &[])?;
    ensure!(
        s.cri
            .container_status(&other)?
            .status
            .context("status")?
            .state
            == 1
    );
    Ok(())
}

/// A container that planted a device node in its rootfs (`mknod`, which the default
/// capabilities allow) is checkpointed; restoring it into a new pod fails StartContainer
/// naming the section, the entry and the refusal: a device node never enters the shared
/// layer cache.
fn fs_restore_of_a_device_node_is_refused(s: &Suite, case: &str) -> Result<()> {
    let (pod, _) = seed_pod(s, case, &[])?;
    let app = start(
        s,
        &pod,
        "app",
        "mknod /mem-here c 1 1 && exec sleep 100000",
        &[],
    )?;
    eventually("app made the node", || {
        Ok(s.cri.exec_sync(&app, &["test", "-c", "/mem-here"])?.0 == 0)
    })?;
    let (_tmp, ck_path) = save_and_remove(s, &pod, &[])?;
    let ck = ck_path.display().to_string();
    let layer = layer_of(s, &ck_path, Some("app"), "/")?;
    let (new, _) = seed_pod(s, &format!("{case}-new"), &[(ANNOTATION, &ck)])?;
    let id = create(s, &new, "app", "exec sleep 100000", &[])?;
    let e = s
        .cri
        .start_container(&id)
        .err()
        .context("StartContainer of a section with a device node succeeded")?;
    let e = format!("{e:#}");
    for want in [
        ANNOTATION,
        "rootfs-upper app:/",
        "mem-here",
        "device node 1:1 refused",
    ] {
        ensure!(e.contains(want), "the error does not name {want:?}: {e}");
    }
    ensure!(
        !layer.exists(),
        "a layer with the device node is in the cache"
    );
    Ok(())
}

/// Hostile or unusable values of the annotation fail RunPodSandbox naming the annotation and
/// the value; nothing of the pod is left.
fn fs_restore_annotation_is_checked_at_run_pod(s: &Suite, case: &str) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("cryo-fsrestore-")
        .tempdir_in("/tmp")?;
    let empty = tmp.path().display().to_string();
    let outside = tmp.path().join("dest");
    std::fs::create_dir(&outside)?;
    std::os::unix::fs::symlink("/etc", outside.join("latest"))?;
    let outside = outside.display().to_string();
    let before = s.cri.list_pods()?;
    for (value, why) in [
        ("relative/ck", "not an absolute path"),
        ("/tmp/../etc", "'.' or '..'"),
        (empty.as_str(), "neither a checkpoint"),
        (
            outside.as_str(),
            "must name an entry of the directory itself",
        ),
    ] {
        let e = seed_pod(s, case, &[(ANNOTATION, value)])
            .err()
            .with_context(|| format!("RunPodSandbox with {value:?} succeeded"))?;
        let e = format!("{e:#}");
        ensure!(
            e.contains(ANNOTATION) && e.contains(value) && e.contains(why),
            "{value:?}: the error does not say {why:?}: {e}"
        );
    }
    ensure!(s.cri.list_pods()? == before, "a pod is left");
    Ok(())
}

/// A pod may name only checkpoints beneath the node's checkpoint root (`CRYO_CHECKPOINT_ROOT`,
/// `/tmp` in this suite): a valid checkpoint elsewhere on the host (another tenant's, say) is
/// refused at RunPodSandbox naming the root, and so is a link beneath the root leading out of
/// it. Before the root existed both pods ran.
fn fs_restore_only_beneath_the_checkpoint_root(s: &Suite, case: &str) -> Result<()> {
    let elsewhere = tempfile::Builder::new()
        .prefix("cryo-fsrestore-")
        .tempdir_in("/var/tmp")?;
    let data = elsewhere.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::write(data.join("secret"), "another tenant's")?;
    let ck = elsewhere.path().join("ck");
    let (data_s, ck_s) = (data.display().to_string(), ck.display().to_string());
    cryo(
        s,
        &[
            "fscheckpoint",
            "save",
            "--path",
            &data_s,
            "--image-path",
            &ck_s,
        ],
    )?
    .ok()?;
    let inside = tempfile::Builder::new()
        .prefix("cryo-fsrestore-")
        .tempdir_in(harness::containerd::CHECKPOINT_ROOT)?;
    let link = inside.path().join("ck");
    std::os::unix::fs::symlink(&ck, &link)?;
    let link_s = link.display().to_string();
    let before = s.cri.list_pods()?;
    for (value, why) in [
        (ck_s.as_str(), "not beneath the node's checkpoint root /tmp"),
        (link_s.as_str(), "resolves to"),
    ] {
        let e = seed_pod(s, case, &[(ANNOTATION, value)])
            .err()
            .with_context(|| format!("RunPodSandbox with {value:?} succeeded"))?;
        let e = format!("{e:#}");
        ensure!(
            e.contains(ANNOTATION) && e.contains(value) && e.contains(why),
            "{value:?}: the error does not say {why:?}: {e}"
        );
    }
    ensure!(s.cri.list_pods()? == before, "a pod is left");
    Ok(())
}

/// Private volumes: a tmpfs (`type=tmpfs`, share=container) and a disk overlay (`type=bind`,
/// share=container), saved with `--path /scratch --path /work`, come back in a new pod: the
/// tmpfs as a tmpfs holding a copy of its section (a tmpfs takes no layer: files, a
/// subdirectory, a hard link, a mode), the overlay with its section's layer as its lower
/// directory (writes go to the new pod's own filestore, not the cache).
fn fs_restore_fills_private_volumes(s: &Suite, case: &str) -> Result<()> {
    let private_pod = |case: &str, extra: &[(&str, &str)]| -> Result<(Pod, PathBuf, PathBuf)> {
        let uid = uid(case);
        let scratch = cri::empty_dir(&s.kubelet, &uid, "scratch")?;
        let work = cri::empty_dir(&s.kubelet, &uid, "work")?;
        let (scratch_s, work_s) = (scratch.display().to_string(), work.display().to_string());
        let mut annotations = vec![
            ("dev.cryo.spec.mount.scratch.type", "tmpfs"),
            ("dev.cryo.spec.mount.scratch.source", scratch_s.as_str()),
            ("dev.cryo.spec.mount.work.type", "bind"),
            ("dev.cryo.spec.mount.work.source", work_s.as_str()),
        ];
        annotations.extend_from_slice(extra);
        Ok((
            run_pod_with_uid(s, case, &uid, &annotations)?,
            scratch,
            work,
        ))
    };
    let (pod, scratch, work) = private_pod(case, &[])?;
    let app = start(
        s,
        &pod,
        "app",
        "mkdir /scratch/sub && echo one > /scratch/f && echo two > /scratch/sub/g && ln /scratch/f /scratch/h && chmod 0640 /scratch/f && echo disk > /work/w && exec sleep 100000",
        &[("/scratch", &scratch), ("/work", &work)],
    )?;
    eventually("app wrote", || {
        Ok(s.cri.exec_sync(&app, &["cat", "/scratch/h", "/work/w"])?.0 == 0)
    })?;
    let (_tmp, ck_path) = save_and_remove(s, &pod, &["/scratch", "/work"])?;
    let ck = ck_path.display().to_string();

    let (new, scratch, work) = private_pod(&format!("{case}-new"), &[(ANNOTATION, &ck)])?;
    let app = start(
        s,
        &new,
        "app",
        "exec sleep 100000",
        &[("/scratch", &scratch), ("/work", &work)],
    )?;
    let seen = s.cri.sh(
        &app,
        "cat /scratch/f /scratch/sub/g /work/w; stat -c '%a %h' /scratch/f; echo new > /work/w",
    )?;
    ensure!(
        seen == "one\ntwo\ndisk\n640 2\n",
        "the restored volumes hold {seen:?}"
    );
    let pid = s.cri.container_pid(&app)?;
    let (fstype, _) = mount_at(pid, "/scratch")?;
    ensure!(fstype == "tmpfs", "/scratch is a {fstype}, not a tmpfs");
    let (fstype, _) = mount_at(pid, "/work")?;
    ensure!(fstype == "overlay", "/work is a {fstype}, not an overlay");
    let layer = layer_of(s, &ck_path, Some("app"), "/work")?;
    ensure!(
        std::fs::read_to_string(layer.join("w"))? == "disk\n",
        "the write reached the cached layer"
    );
    ensure!(
        std::fs::read_to_string(work.join(".cryo-filestore/container-app/upper/w"))? == "new\n",
        "the write is not in the new pod's own filestore"
    );
    Ok(())
}

/// A pod restored from a checkpoint with a large rootfs section (512 MiB) starts on a lazy
/// layer while the cache fills in the background; it is removed before the fill finished:
/// the fill is stopped (logged), the cache holds no layer and no partial extraction, its lazy
/// mount is gone. A second pod restored while another extraction holds the section's lock (as
/// a fill of another pod would) does not wait for it: it starts on a lazy layer and reads the
/// file right. A third pod starts lazily again and its fill completes.
fn fs_restore_pod_removed_while_its_cache_fills(s: &Suite, case: &str) -> Result<()> {
    let (pod, _) = seed_pod(s, case, &[])?;
    let app = start(
        s,
        &pod,
        "app",
        "head -c 536870912 /dev/urandom > /big && md5sum /big > /big.md5 && exec sleep 100000",
        &[],
    )?;
    eventually("app wrote 512 MiB", || {
        Ok(s.cri.exec_sync(&app, &["test", "-s", "/big.md5"])?.0 == 0)
    })?;
    let want = s.cri.sh(&app, "cat /big.md5")?;
    let (_tmp, ck) = save_and_remove(s, &pod, &["/"])?;
    let ck_text = ck.display().to_string();
    let layer = layer_of(s, &ck, Some("app"), "/")?;
    let hex = layer
        .file_name()
        .context("no layer name")?
        .to_string_lossy()
        .into_owned();
    let lazy_top = |id: &str| -> Result<String> {
        let pid = s.cri.container_pid(id)?;
        let top = top_lower(&format!("/proc/{pid}/mountinfo"), "/")?;
        ensure!(
            lazy_mount(&top)?.as_deref() == Some(format!("cryo-layer:{hex}").as_str()),
            "container {id}: the rootfs' top lower layer {top} is not the section's lazy layer"
        );
        Ok(top)
    };

    // The pod must go while its fill runs. On a fast machine the fill may finish first: then
    // its layer is dropped from the cache and a new pod tries again (the cancel itself is
    // covered deterministically by layer_cache's unit tests; this is the pod's end reaching it).
    const TRIES: usize = 6;
    let mut tries = 0;
    let top = loop {
        tries += 1;
        let (new, _) = seed_pod(s, &format!("{case}-new{tries}"), &[(ANNOTATION, &ck_text)])?;
        let id = start(s, &new, "app", "exec sleep 100000", &[])?;
        let top = lazy_top(&id)?;
        s.cri.remove_pod_fully(&new.id)?;
        let log = std::fs::read_to_string(s.cd.dir.join("containerd.log"))?;
        if tries == 1 {
            let indexed = log
                .lines()
                .find(|l| {
                    l.contains(&format!("container {id}: section")) && l.contains("indexed in")
                })
                .and_then(|l| l.split("indexed in ").nth(1))
                .and_then(|r| r.split(' ').next());
            print!(
                "512 MiB section checked, indexed and mounted in {} ms ",
                indexed.unwrap_or("?")
            );
        }
        if log
            .lines()
            .any(|l| l.contains(&format!("cache fill of layer {hex} stopped: Cancelled")))
        {
            break top;
        }
        ensure!(
            layer.exists(),
            "no stopped fill of layer {hex} logged, and the layer is not in the cache either"
        );
        ensure!(
            tries < TRIES,
            "no stopped fill of layer {hex} logged in {tries} tries: the fill always finished \
             before its pod was removed"
        );
        std::fs::remove_dir_all(&layer)?;
    };
    ensure!(
        !layer.exists(),
        "a layer of the stopped fill is in the cache"
    );
    // Of this section, only the fill's lock may stay (other cases' layers share the cache).
    let ours = || -> Result<Vec<String>> {
        Ok(std::fs::read_dir(s.cd.layer_root())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter()
            .filter(|n| n.contains(&hex) && *n != format!(".{hex}.lock"))
            .collect())
    };
    ensure!(
        ours()?.is_empty(),
        "the stopped fill left {:?} in the cache",
        ours()?
    );
    ensure!(
        lazy_mount(&top)?.is_none() && !Path::new(&top).exists(),
        "the lazy layer {top} is left"
    );
    ensure!(
        !std::fs::read_to_string("/proc/self/mountinfo")?.contains(" fuse.cryo-layer "),
        "a lazy layer is mounted"
    );

    // Another extraction of the section holds its lock: a new pod does not wait for it.
    let lock = std::fs::File::open(s.cd.layer_root().join(format!(".{hex}.lock")))?;
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)?;
    let (second, _) = seed_pod(s, &format!("{case}-second"), &[(ANNOTATION, &ck_text)])?;
    let id2 = start(s, &second, "app", "exec sleep 100000", &[])?;
    lazy_top(&id2)?;
    let got = s.cri.sh(&id2, "md5sum /big")?;
    ensure!(got == want, "the second pod reads {got:?}, saved {want:?}");
    ensure!(
        ours()?.is_empty(),
        "an extraction ran under the held lock: {:?}",
        ours()?
    );
    drop(lock);
    s.cri.remove_pod_fully(&second.id)?;

    // A third pod: lazy again (nothing was cached), the content is right, the fill finishes.
    let (again, _) = seed_pod(s, &format!("{case}-again"), &[(ANNOTATION, &ck_text)])?;
    let id3 = start(s, &again, "app", "exec sleep 100000", &[])?;
    lazy_top(&id3)?;
    let got = s.cri.sh(&id3, "md5sum /big")?;
    ensure!(
        got == want,
        "the restored file reads {got:?}, saved {want:?}"
    );
    eventually("the third pod's fill completed", || Ok(layer.is_dir()))?;
    Ok(())
}

/// A pod restored lazily (its rootfs and its share=pod volume on lazy layers) loses its shim
/// (SIGKILL): the dead FUSE mounts only answer ENOTCONN; the shim's `delete` for each bundle
/// unmounts them after the overlays that used them, so no mount is left and the bundles go.
fn fs_restore_killed_shim_leaves_no_lazy_layer(s: &Suite, case: &str) -> Result<()> {
    let (pod, dir) = seed_pod(s, case, &[])?;
    let app = start(
        s,
        &pod,
        "app",
        &format!(
            "echo {case} > /mine.txt && echo {case} > /workspace/mine.txt && exec sleep 100000"
        ),
        &[("/workspace", &dir)],
    )?;
    eventually("app wrote", || {
        Ok(s.cri.exec_sync(&app, &["cat", "/workspace/mine.txt"])?.0 == 0)
    })?;
    let (_tmp, ck) = save_and_remove(s, &pod, &["/", "all-volumes"])?;
    let ck_text = ck.display().to_string();
    let (new, new_dir) = seed_pod(s, &format!("{case}-new"), &[(ANNOTATION, &ck_text)])?;
    let id = start(
        s,
        &new,
        "app",
        "exec sleep 100000",
        &[("/workspace", &new_dir)],
    )?;
    let got = s.cri.sh(&id, "cat /mine.txt /workspace/mine.txt")?;
    ensure!(
        got == format!("{case}\n{case}\n"),
        "the restored pod sees {got:?}"
    );
    let lazy = |dir: &Path| -> Result<Vec<PathBuf>> {
        Ok(harness::leftovers::mounts_under(dir)
            .into_iter()
            .filter(|m| lazy_mount(&m.display().to_string()).is_ok_and(|l| l.is_some()))
            .collect())
    };
    ensure!(
        lazy(&s.cd.dir)?.len() == 2,
        "want two lazy layers (rootfs, volume): {:?}",
        lazy(&s.cd.dir)?
    );
    let shims = shim_pids(&new.id);
    ensure!(shims.len() == 1, "shims serving the pod: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    eventually("the shim is gone", || {
        Ok(!Path::new(&format!("/proc/{}", shims[0])).exists())
    })?;
    let _ = s.cri.stop_container(&id, 1);
    s.cri.remove_pod_fully(&new.id)?;
    eventually("no lazy layer is left", || Ok(lazy(&s.cd.dir)?.is_empty()))?;
    ensure!(
        !sandbox_bundle(s, &new).exists(),
        "the sandbox bundle is left: {}",
        sandbox_bundle(s, &new).display()
    );
    Ok(())
}

/// A container of a restored pod whose creation fails after its lazy layer was mounted (a
/// bad per-container trigger annotation, refused after the rootfs is prepared): the error
/// names the annotation, the shim itself unmounts the lazy layer (stopping its server) before
/// the failure is answered, no mount is left and the task's bundle goes; a good container of
/// the pod starts lazily afterwards.
fn fs_restore_failed_create_leaves_no_lazy_layer(s: &Suite, case: &str) -> Result<()> {
    let (pod, _) = seed_pod(s, case, &[])?;
    let app = start(
        s,
        &pod,
        "app",
        &format!("echo {case} > /mine.txt && exec sleep 100000"),
        &[],
    )?;
    eventually("app wrote", || {
        Ok(s.cri.exec_sync(&app, &["cat", "/mine.txt"])?.0 == 0)
    })?;
    let (_tmp, ck) = save_and_remove(s, &pod, &["/"])?;
    let ck_text = ck.display().to_string();
    let (new, _) = seed_pod(s, &format!("{case}-new"), &[(ANNOTATION, &ck_text)])?;
    let mut config = cri::container_config("app", "exec sleep 100000", &[]);
    config.annotations = [("dev.cryo.fscheckpoint.enable", "on")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let id = s.cri.create_container(&new.id, config, &new.config)?;
    let e = s
        .cri
        .start_container(&id)
        .err()
        .context("StartContainer with a bad trigger annotation succeeded")?;
    let e = format!("{e:#}");
    ensure!(e.contains("dev.cryo.fscheckpoint.enable"), "{e}");
    let log = std::fs::read_to_string(s.cd.dir.join("containerd.log"))?;
    ensure!(
        log.lines()
            .any(|l| l.contains(&format!("container {id}: section")) && l.contains("served lazily")),
        "the failed container's layer was not served lazily"
    );
    // Released by the shim serving it (its threads and connection), not only detached by
    // the `delete` containerd runs for the failed task's bundle.
    ensure!(
        log.lines().any(|l| l.contains("lazy layer at ")
            && l.contains(&format!("/{id}/cryo-lazy/"))
            && l.contains(" unmounted")),
        "the shim did not unmount the failed container's lazy layer itself"
    );
    let bundle =
        s.cd.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(cri::K8S_NAMESPACE)
            .join(&id);
    let lazies: Vec<PathBuf> = harness::leftovers::mounts_under(&s.cd.dir)
        .into_iter()
        .filter(|m| lazy_mount(&m.display().to_string()).is_ok_and(|l| l.is_some()))
        .collect();
    ensure!(lazies.is_empty(), "lazy layers left: {lazies:?}");
    ensure!(
        !bundle.exists(),
        "the task's bundle is left: {}",
        bundle.display()
    );
    s.cri.remove_container(&id)?;
    let good = start(s, &new, "app", "exec sleep 100000", &[])?;
    let got = s.cri.sh(&good, "cat /mine.txt")?;
    ensure!(
        got == format!("{case}\n"),
        "the restored container sees {got:?}"
    );
    Ok(())
}

/// A checkpoint with one changed byte in the middle of a 1 MiB file (far from any tar header):
/// by default (`dev.cryo.fs-restore.verify` unset, or `full`) the whole section is checked
/// before the container starts, so StartContainer fails naming the section; with `on-read`
/// the container starts (only the blocks holding headers were read) and reading that file
/// fails (EIO) while the rest of the tree reads; a bad value fails RunPodSandbox naming the
/// annotation and the value.
fn fs_restore_verifies_data_before_start_or_on_read(s: &Suite, case: &str) -> Result<()> {
    let marker = format!("flip-me-{}", uid(case));
    let (pod, _) = seed_pod(s, case, &[])?;
    let app = start(
        s,
        &pod,
        "app",
        &format!(
            "head -c 524288 /dev/zero | tr '\\0' a > /big && echo {marker} >> /big && \
             head -c 524288 /dev/zero | tr '\\0' b >> /big && echo ok > /small && \
             exec sleep 100000"
        ),
        &[],
    )?;
    eventually("app wrote", || {
        Ok(s.cri.exec_sync(&app, &["cat", "/small"])?.0 == 0)
    })?;
    let (_tmp, ck) = save_and_remove(s, &pod, &[])?;
    let ck_text = ck.display().to_string();
    let data = ck.join("data.multitar");
    let mut bytes = std::fs::read(&data)?;
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .context("the marker is not in the data file")?;
    bytes[at] ^= 0x20;
    std::fs::write(&data, &bytes)?;

    for verify in [None, Some("full")] {
        let mut annotations = vec![(ANNOTATION, ck_text.as_str())];
        annotations.extend(verify.map(|v| (VERIFY, v)));
        let (new, _) = seed_pod(
            s,
            &format!("{case}-{}", verify.unwrap_or("default")),
            &annotations,
        )?;
        let id = create(s, &new, "app", "exec sleep 100000", &[])?;
        let e = s.cri.start_container(&id).err().with_context(|| {
            format!("verify {verify:?}: StartContainer of a corrupt section succeeded")
        })?;
        let e = format!("{e:#}");
        for want in ["rootfs-upper app:/", "checksum mismatch"] {
            ensure!(
                e.contains(want),
                "verify {verify:?}: the error does not name {want:?}: {e}"
            );
        }
        s.cri.remove_pod_fully(&new.id)?;
    }

    let (new, _) = seed_pod(
        s,
        &format!("{case}-on-read"),
        &[(ANNOTATION, &ck_text), (VERIFY, "on-read")],
    )?;
    let id = start(s, &new, "app", "exec sleep 100000", &[])?;
    let small = s.cri.exec_sync(&id, &["cat", "/small"])?;
    ensure!(
        small.0 == 0 && small.1 == "ok\n",
        "reading /small: {small:?}"
    );
    let big = s.cri.exec_sync(&id, &["md5sum", "/big"])?;
    ensure!(
        big.0 != 0 && big.2.contains("Input/output error"),
        "reading the changed file did not fail with EIO: {big:?}"
    );
    s.cri.remove_pod_fully(&new.id)?;

    let e = seed_pod(
        s,
        &format!("{case}-bad"),
        &[(ANNOTATION, &ck_text), (VERIFY, "later")],
    )
    .err()
    .context("RunPodSandbox with a bad verify value succeeded")?;
    let e = format!("{e:#}");
    ensure!(
        e.contains(VERIFY) && e.contains("\"later\""),
        "the error does not name the annotation and its value: {e}"
    );
    Ok(())
}

/// `cryo cache` on the node's layer cache: a pod restored from a cached layer holds it (a
/// lease, and its overlay stands on it): `ls` shows it in use and `prune --all` keeps it
/// while the pod reads its files; once the pod is gone, `prune --all` evicts it, and the next
/// pod restoring the checkpoint is served lazily again (and fills the cache again).
fn fs_restore_cache_evicts_only_what_no_pod_uses(s: &Suite, case: &str) -> Result<()> {
    let (pod, _) = seed_pod(s, case, &[])?;
    let app = start(
        s,
        &pod,
        "app",
        &format!(
            "echo {case} > /mark.txt && head -c 1048576 /dev/urandom > /big && md5sum /big > /big.md5 && exec sleep 100000"
        ),
        &[],
    )?;
    eventually("app wrote", || {
        Ok(s.cri.exec_sync(&app, &["test", "-s", "/big.md5"])?.0 == 0)
    })?;
    let (_tmp, ck) = save_and_remove(s, &pod, &["/"])?;
    let ck_text = ck.display().to_string();
    let layer = layer_of(s, &ck, Some("app"), "/")?;
    let hex = layer
        .file_name()
        .context("no layer name")?
        .to_string_lossy()
        .into_owned();
    let root = s.cd.layer_root().display().to_string();
    let cache = |args: &[&str]| -> Result<String> {
        let mut all = vec!["cache"];
        all.extend_from_slice(args);
        all.extend(["--layer-root", &root]);
        Ok(cryo(s, &all)?.ok()?.stdout)
    };
    let sleep = "exec sleep 100000";
    // The first restore fills the cache; the second uses the cached layer.
    let (one, _) = seed_pod(s, &format!("{case}-1"), &[(ANNOTATION, &ck_text)])?;
    start(s, &one, "app", sleep, &[])?;
    eventually("the cache filled", || Ok(layer.is_dir()))?;
    s.cri.remove_pod_fully(&one.id)?;
    let (two, _) = seed_pod(s, &format!("{case}-2"), &[(ANNOTATION, &ck_text)])?;
    let id2 = start(s, &two, "app", sleep, &[])?;
    let top = top_lower(
        &format!("/proc/{}/mountinfo", s.cri.container_pid(&id2)?),
        "/",
    )?;
    ensure!(
        Path::new(&top) == layer,
        "the second pod's rootfs is not on the cached layer: {top}"
    );
    let listed = cache(&["ls"])?;
    ensure!(
        listed
            .lines()
            .any(|l| l.starts_with(&hex) && l.ends_with(" yes")),
        "ls does not show {hex} in use:\n{listed}"
    );
    let pruned = cache(&["prune", "--all"])?;
    ensure!(
        pruned.contains(&format!("kept {hex}: in use")) && layer.is_dir(),
        "prune --all did not keep the layer a pod uses:\n{pruned}"
    );
    // The shim's lease alone keeps it: a prune in a mount namespace where the pod's overlays
    // are not mounted (so the mount table names no overlay on the layer).
    let overlays: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| {
            l.contains(" - overlay ") && l.contains(&format!("lowerdir={}", layer.display()))
        })
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect();
    ensure!(
        !overlays.is_empty(),
        "no overlay on {} in the mount table",
        layer.display()
    );
    let unmount: String = overlays
        .iter()
        .map(|m| format!("umount -l {m} && "))
        .collect();
    let bin = harness::built_shim()?.with_file_name("cryo");
    let script = format!(
        "{unmount}{} cache prune --all --layer-root {root}",
        bin.display()
    );
    let out = harness::cmd::run(
        std::process::Command::new("unshare").args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]),
        None,
        std::time::Duration::from_secs(60),
    )?
    .ok()?;
    ensure!(
        out.stdout.contains(&format!("kept {hex}: in use")) && layer.is_dir(),
        "a prune that sees no overlay on the layer did not keep it (no lease?):\n{}",
        out.stdout
    );
    let (code, out, err) = s.cri.exec_sync(&id2, &["md5sum", "-c", "/big.md5"])?;
    ensure!(
        code == 0 && out.contains("OK"),
        "the pod reading its layer after a prune: exit {code}, {out:?}, {err:?}"
    );
    s.cri.remove_pod_fully(&two.id)?;
    let pruned = cache(&["prune", "--all"])?;
    ensure!(
        pruned.contains(&format!("evicted {hex}")) && !layer.exists(),
        "prune --all did not evict the unused layer:\n{pruned}"
    );
    let left: Vec<String> = std::fs::read_dir(s.cd.layer_root())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|n| n.contains(&hex))
        .collect();
    ensure!(left.is_empty(), "eviction left {left:?}");
    // Evicted: the next restore is lazy again, and right.
    let (three, _) = seed_pod(s, &format!("{case}-3"), &[(ANNOTATION, &ck_text)])?;
    let id3 = start(s, &three, "app", sleep, &[])?;
    let top = top_lower(
        &format!("/proc/{}/mountinfo", s.cri.container_pid(&id3)?),
        "/",
    )?;
    ensure!(
        lazy_mount(&top)?.is_some(),
        "the third pod's rootfs is not on a lazy layer: {top}"
    );
    ensure!(s.cri.sh(&id3, "cat /mark.txt")?.trim() == case);
    eventually("the cache filled again", || Ok(layer.is_dir()))?;
    s.cri.remove_pod_fully(&three.id)?;
    Ok(())
}
