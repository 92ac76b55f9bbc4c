//! Pause and resume: freeze and thaw every process of the container through its cgroup. The
//! state record and the freezer never disagree: when the record cannot be written, the freezer
//! is put back and the caller gets the error.

use super::Container;
use crate::error::Result;
use crate::state::Status;

impl Container {
    /// Freeze every process of the container.
    pub fn pause(&mut self) -> Result<()> {
        if !self.state.status.can_pause() {
            return Err(self.wrong_state("pause"));
        }
        self.cgroup.freeze()?;
        self.record(Status::Paused, Status::Running)
    }

    /// Thaw a paused container.
    pub fn resume(&mut self) -> Result<()> {
        if !self.state.status.can_resume() {
            return Err(self.wrong_state("resume"));
        }
        self.cgroup.thaw()?;
        self.record(Status::Running, Status::Paused)
    }

    /// Record `now` after the freezer changed; if the record cannot be written, put the freezer
    /// back to `before` and keep `before` as the status.
    fn record(&mut self, now: Status, before: Status) -> Result<()> {
        self.state.status = now;
        let Err(e) = self.state.save() else {
            return Ok(());
        };
        self.state.status = before;
        let back = match before {
            Status::Paused => self.cgroup.freeze(),
            _ => self.cgroup.thaw(),
        };
        if let Err(b) = back {
            log::error!(
                "container {}: put the freezer back to {before}: {b}",
                self.state.id
            );
        }
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::cgroup::Cgroup;
    use crate::state::State;

    /// A container record around a real cgroup holding a real process, with a bundle where the
    /// state file cannot be written (its parent is a regular file). Dropped: thawed, killed,
    /// removed, even when an assertion failed.
    struct Fixture {
        c: Container,
        child: Child,
        parent: String,
    }

    impl Fixture {
        fn new(dir: &std::path::Path, name: &str) -> Fixture {
            assert!(
                nix::unistd::geteuid().is_root(),
                "this test needs root (it creates a cgroup and freezes it)"
            );
            let parent = format!("/cryo-unit-{}", std::process::id());
            let path = format!("{parent}/{name}");
            let cgroup = Cgroup::create(&path, None).unwrap();
            let child = Command::new("sleep")
                .arg("100")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            cgroup.add(child.id() as i32).unwrap();
            let not_a_dir = dir.join("file");
            std::fs::write(&not_a_dir, b"").unwrap();
            let state = State {
                id: name.into(),
                bundle: not_a_dir.join("bundle"),
                rootfs: dir.into(),
                rootfs_mounts: Vec::new(),
                pid: child.id() as i32,
                pid_start_time: 0,
                cgroup_path: path,
                namespaces: Vec::new(),
                status: Status::Running,
                created_unix: 0,
            };
            let c = Container {
                state,
                spec: serde_json::from_str(r#"{"ociVersion":"1.0.2"}"#).unwrap(),
                cgroup,
                init: None,
                console: None,
                restore: None,
            };
            Fixture { c, child, parent }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = self.c.cgroup.thaw();
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = self.c.cgroup.destroy();
            if let Ok(parent) = Cgroup::open(&self.parent) {
                let _ = parent.destroy();
            }
        }
    }

    fn frozen(c: &Container) -> bool {
        let v1 = std::path::Path::new("/sys/fs/cgroup/freezer")
            .join(c.cgroup.path().trim_start_matches('/'))
            .join("freezer.state");
        match std::fs::read_to_string(&v1) {
            Ok(s) => s.trim() != "THAWED",
            Err(_) => {
                let v2 = std::path::Path::new("/sys/fs/cgroup")
                    .join(c.cgroup.path().trim_start_matches('/'))
                    .join("cgroup.freeze");
                std::fs::read_to_string(v2).unwrap().trim() == "1"
            }
        }
    }

    #[test]
    fn a_failed_state_write_leaves_record_and_freezer_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(dir.path(), "pause");
        let c = &mut f.c;
        let e = c.pause().unwrap_err().to_string();
        assert!(e.contains("cryo-state.json"), "{e}");
        assert_eq!(c.status(), Status::Running);
        assert!(
            !frozen(c),
            "the container stayed frozen after a failed pause"
        );

        // The same for resume: frozen and PAUSED before, frozen and PAUSED after.
        c.cgroup.freeze().unwrap();
        c.state.status = Status::Paused;
        let e = c.resume().unwrap_err().to_string();
        assert!(e.contains("cryo-state.json"), "{e}");
        assert_eq!(c.status(), Status::Paused);
        assert!(frozen(c), "the container was thawed by a failed resume");
    }
}
