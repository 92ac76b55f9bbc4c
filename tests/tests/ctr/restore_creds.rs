//! ctr cases: what identity and limits a restored process may come back with. A container is
//! checkpointed (`ctr container checkpoint --task --rw`), the spec stored in the checkpoint
//! image is changed as a restoring node's would differ (a uid, rlimits, capabilities), and
//! `ctr container restore --live --rw` restores the process into a container of that spec.
//! CRIU gives the process the credentials and limits its images claim; cryo must refuse
//! those the new spec withholds. runc's shim trusts the images.

use anyhow::{bail, ensure, Context, Result};
use harness::Runtime;
use serde_json::Value;

use super::checkpoint::{
    doctored_blobs, kill_and_remove_task, nothing_left_after_failed_restore, unique_ref,
};
use super::{cleanup_container, run_detached, Case, Suite};

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[
    (
        "a_restore_gets_no_uid_its_spec_withholds",
        "runc's shim restores the uid and gids the checkpoint's images claim: a checkpoint of a \
         root process runs as root in a container whose spec says uid 1000",
    ),
    (
        "a_restore_gets_no_rlimit_its_spec_withholds",
        "runc's shim restores the rlimits the checkpoint's images claim, above the spec's \
         process.rlimits hard limits",
    ),
];

pub const CASES: &[(&str, Case)] = &[
    (
        "a_restore_gets_no_uid_its_spec_withholds",
        a_restore_gets_no_uid_its_spec_withholds,
    ),
    (
        "a_restore_gets_no_rlimit_its_spec_withholds",
        a_restore_gets_no_rlimit_its_spec_withholds,
    ),
];

/// The media type of the container record (its spec) in a containerd checkpoint image.
const CONFIG_TYPE: &str = "application/vnd.containerd.container.checkpoint.config.v1+proto";

/// Capabilities the checkpointed container runs without, so that its process holds nothing
/// the restoring spec's bounding set lacks (the capability check is not what refuses here).
const DROPPED: [&str; 2] = ["CAP_SETUID", "CAP_SETGID"];

/// A sleeping root container (without [`DROPPED`]) checkpointed with its task, then removed:
/// the checkpoint image's name.
fn checkpoint_of_root_sleeper(s: &Suite, rt: Runtime, id: &str) -> Result<String> {
    let mut extra = Vec::new();
    for cap in DROPPED {
        extra.extend(["--cap-drop", cap]);
    }
    run_detached(s, rt, id, &extra)?;
    let image = unique_ref(id);
    s.cd.ctr(&["container", "checkpoint", "--task", "--rw", id, &image])?
        .ok()
        .context("checkpoint")?;
    kill_and_remove_task(s, id)?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;
    Ok(image)
}

/// A copy of checkpoint image `image` whose stored spec `edit` changed.
fn with_spec(s: &Suite, image: &str, edit: impl Fn(&mut Value) -> Result<()>) -> Result<String> {
    doctored_blobs(s, image, |media_type, blob, work| {
        if media_type != CONFIG_TYPE {
            return Ok(None);
        }
        let (type_url, json) = any_decode(&std::fs::read(blob)?)?;
        let mut spec: Value = serde_json::from_slice(&json).context("the stored spec")?;
        edit(&mut spec)?;
        let new = work.join("config.blob");
        std::fs::write(&new, any_encode(&type_url, &serde_json::to_vec(&spec)?))?;
        Ok(Some(new))
    })
}

/// The fields of a protobuf `google.protobuf.Any` (1: type_url, 2: value), as containerd
/// stores a container's spec in a checkpoint image.
fn any_decode(mut bytes: &[u8]) -> Result<(String, Vec<u8>)> {
    let mut type_url = String::new();
    let mut value = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        ensure!(
            key & 7 == 2,
            "field key {key} of the stored spec is not length-delimited"
        );
        let len = varint(&mut bytes)? as usize;
        ensure!(len <= bytes.len(), "the stored spec is truncated");
        let (field, rest) = bytes.split_at(len);
        match key >> 3 {
            1 => type_url = String::from_utf8(field.to_vec())?,
            2 => value = field.to_vec(),
            n => bail!("field {n} in the stored spec's Any"),
        }
        bytes = rest;
    }
    Ok((type_url, value))
}

fn any_encode(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, field) in [(0x0a, type_url.as_bytes()), (0x12, value)] {
        out.push(key);
        let mut n = field.len() as u64;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(field);
    }
    out
}

fn varint(bytes: &mut &[u8]) -> Result<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().context("a truncated varint")?;
        *bytes = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    bail!("a varint longer than 64 bits")
}

/// `ctr container restore --live --rw restored image`: its output, with what the restore
/// left when it failed checked gone (no process, no task, no container, no mount).
fn restore(s: &Suite, restored: &str, image: &str) -> Result<harness::Output> {
    let out =
        s.cd.ctr(&["container", "restore", "--live", "--rw", restored, image])?;
    if out.code != 0 {
        nothing_left_after_failed_restore(s, restored)?;
    }
    Ok(out)
}

/// The `Uid:`/`Gid:` lines of the restored task's init.
fn ids_of(s: &Suite, id: &str) -> Result<String> {
    let pid = super::checkpoint::task_pid(s, id)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Groups:"))
        .collect::<Vec<_>>()
        .join("; "))
}

/// Removes a container (and its task) when dropped.
struct Removed<'a>(&'a Suite, String);

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        cleanup_container(&self.0.cd, &self.1);
    }
}

fn caps_mut<'a>(spec: &'a mut Value, set: &str) -> Result<&'a mut Vec<Value>> {
    spec["process"]["capabilities"][set]
        .as_array_mut()
        .with_context(|| format!("the stored spec has no process.capabilities.{set}"))
}

/// A root process (its capabilities within what the new spec bounds) checkpointed, restored
/// into a container whose spec says uid 1000 and gid 1000 and grants neither CAP_SETUID nor
/// CAP_SETGID: the restore is refused naming the field, the value and what the spec allows,
/// and nothing is left. Restored into a spec that grants them, it runs on (as root: a process
/// of that spec could make itself root).
fn a_restore_gets_no_uid_its_spec_withholds(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let image = checkpoint_of_root_sleeper(s, rt, id)?;
    let as_1000 = |spec: &mut Value| -> Result<()> {
        spec["process"]["user"]["uid"] = 1000.into();
        spec["process"]["user"]["gid"] = 1000.into();
        Ok(())
    };
    let refused = with_spec(s, &image, as_1000)?;
    let restored = format!("{id}-r");
    let _removed = Removed(s, restored.clone());
    let out = restore(s, &restored, &refused)?;
    eprintln!(
        "{}: a root checkpoint restored as uid 1000: {out:?}",
        rt.name()
    );
    if out.code == 0 {
        let ids = ids_of(s, &restored)?;
        bail!("the restore into a uid-1000 spec ran with the checkpoint's identity: {ids}");
    }
    ensure!(
        out.stderr.contains("process.user.uid")
            && out.stderr.contains("uid 0")
            && out.stderr.contains("1000")
            && out.stderr.contains("CAP_SETUID"),
        "the refusal names neither the field, the value nor what the spec allows: {}",
        out.stderr
    );

    let granting = with_spec(s, &image, |spec| {
        as_1000(spec)?;
        for set in ["bounding", "permitted", "effective"] {
            caps_mut(spec, set)?.extend(DROPPED.map(Value::from));
        }
        Ok(())
    })?;
    let again = format!("{id}-g");
    let _removed = Removed(s, again.clone());
    restore(s, &again, &granting)?
        .ok()
        .context("restore into a spec that grants CAP_SETUID and CAP_SETGID")?;
    let ids = ids_of(s, &again)?;
    ensure!(
        ids.starts_with("Uid:\t0\t0\t0\t0"),
        "the granted restore: {ids}"
    );
    Ok(())
}

/// A process with RLIMIT_NOFILE hard 1024 (ctr's default) checkpointed, restored into a
/// container whose spec sets it to 512 and grants no CAP_SYS_RESOURCE: refused naming the
/// limit, both values and the capability; nothing is left.
fn a_restore_gets_no_rlimit_its_spec_withholds(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let image = checkpoint_of_root_sleeper(s, rt, id)?;
    let lowered = with_spec(s, &image, |spec| {
        let limits = spec["process"]["rlimits"]
            .as_array_mut()
            .context("the stored spec has no process.rlimits")?;
        let nofile = limits
            .iter_mut()
            .find(|l| l["type"] == "RLIMIT_NOFILE")
            .context("the stored spec has no RLIMIT_NOFILE")?;
        ensure!(nofile["hard"] == 1024, "the stored RLIMIT_NOFILE: {nofile}");
        nofile["hard"] = 512.into();
        nofile["soft"] = 512.into();
        Ok(())
    })?;
    let restored = format!("{id}-r");
    let _removed = Removed(s, restored.clone());
    let out = restore(s, &restored, &lowered)?;
    eprintln!(
        "{}: restored under a lower RLIMIT_NOFILE: {out:?}",
        rt.name()
    );
    if out.code == 0 {
        let pid = super::checkpoint::task_pid(s, &restored)?;
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"));
        bail!("the restore into a spec with RLIMIT_NOFILE 512 ran with {line:?}");
    }
    ensure!(
        out.stderr.contains("RLIMIT_NOFILE")
            && out.stderr.contains("1024")
            && out.stderr.contains("512")
            && out.stderr.contains("CAP_SYS_RESOURCE"),
        "the refusal names neither the limit, the values nor the capability: {}",
        out.stderr
    );
    Ok(())
}
