//! A private containerd for one test run: everything (root, state, sockets, CNI dirs, the
//! shim binary on its PATH) lives in a fresh temp dir, containers live in a unique namespace,
//! and teardown kills and removes everything, then stops the daemon and checks its log. Which
//! containerd (1.6 or 2.2.7) is [`crate::release`]'s choice; its config is [`crate::config`]'s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, Output};
use crate::release::{Binaries, Release};

/// How long one `ctr` call may take.
pub const CTR_LIMIT: Duration = Duration::from_secs(30);

/// How long removing one namespace's tasks, containers and images may take at teardown.
pub const TEARDOWN_BUDGET: Duration = Duration::from_secs(60);
/// The checkpoint root the shims are given (`CRYO_CHECKPOINT_ROOT`): pods may name trigger
/// destinations and restore sources only beneath it.
pub const CHECKPOINT_ROOT: &str = "/tmp";

/// A temp dir (named `prefix...`) beneath [`CHECKPOINT_ROOT`] and `<it>/ck`, not yet created:
/// where a case's pod may name its checkpoints. The dir goes when the guard is dropped.
pub fn checkpoint_destination(prefix: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(CHECKPOINT_ROOT)?;
    let dest = tmp.path().join("ck");
    Ok((tmp, dest))
}

/// The runtimes the suite compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Cryo,
    Runc,
}

impl Runtime {
    pub const ALL: [Runtime; 2] = [Runtime::Cryo, Runtime::Runc];

    /// The name containerd knows it by.
    pub fn id(self) -> &'static str {
        match self {
            Runtime::Cryo => "io.containerd.cryo.v2",
            Runtime::Runc => "io.containerd.runc.v2",
        }
    }

    /// Short name for test and container names.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Cryo => "cryo",
            Runtime::Runc => "runc",
        }
    }
}

pub struct Containerd {
    /// The temp dir holding everything; removed at teardown.
    pub dir: PathBuf,
    pub namespace: String,
    /// Which containerd this is.
    pub release: Release,
    bins: Binaries,
    child: Option<Child>,
    /// The shim sockets there were before this containerd started.
    shim_sockets: crate::leftovers::ShimSockets,
    /// The cgroups there were before this containerd started.
    cgroups: crate::leftovers::CgroupSnapshot,
    /// Every word this run's ctr calls carried (ids among them): which shim sockets are this
    /// run's is told by their ids ([`crate::leftovers::ShimSockets::stale`]).
    ctr_words: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// A shim's ttrpc address and the Task API version containerd speaks to it: containerd 2.x
/// records both in the bundle's `bootstrap.json` (version 3 for runc's 2.x shim, 2 for a shim
/// that answered `start` with a plain address); containerd 1.6 has only the shim's `address`
/// file (Task API v2).
#[derive(Debug, Clone)]
pub struct ShimAddress {
    /// `unix:///path`.
    pub address: String,
    pub task_api: u32,
}

impl ShimAddress {
    pub fn of_bundle(bundle: &Path) -> Result<ShimAddress> {
        if let Ok(text) = std::fs::read_to_string(bundle.join("bootstrap.json")) {
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}/bootstrap.json: {text}", bundle.display()))?;
            return Ok(ShimAddress {
                address: v["address"]
                    .as_str()
                    .with_context(|| format!("no address in bootstrap.json: {text}"))?
                    .to_string(),
                task_api: v["version"].as_u64().unwrap_or(2) as u32,
            });
        }
        let address = std::fs::read_to_string(bundle.join("address"))
            .with_context(|| format!("{}: no bootstrap.json or address", bundle.display()))?;
        Ok(ShimAddress {
            address: address.trim().to_string(),
            task_api: 2,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> Result<PathBuf> {
        self.address
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .with_context(|| format!("shim address {:?} is not unix://", self.address))
    }

    /// The ttrpc service name of its Task API.
    pub fn task_service(&self) -> String {
        format!("containerd.task.v{}.Task", self.task_api)
    }

    /// Call Task API `method` with `req`, whichever version the shim speaks (v2 and v3 share
    /// their messages; only the service name differs), within `timeout`.
    pub fn call<Req, Resp>(&self, method: &str, req: &Req, timeout: Duration) -> Result<Resp>
    where
        Req: containerd_shim_protos::protobuf::Message,
        Resp: containerd_shim_protos::protobuf::Message,
    {
        use containerd_shim_protos::ttrpc;
        let client = ttrpc::Client::connect(&self.address)
            .with_context(|| format!("connect to the shim at {}", self.address))?;
        let mut request = ttrpc::Request::new();
        request.set_service(self.task_service());
        request.set_method(method.to_string());
        request.set_timeout_nano(timeout.as_nanos() as i64);
        request.payload = req.write_to_bytes()?;
        let response = client
            .request(request)
            .with_context(|| format!("{} {method}", self.task_service()))?;
        Ok(Resp::parse_from_bytes(&response.payload)?)
    }
}

/// How to start a private containerd beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The umask containerd (and so every shim it starts) runs with; the test's own if `None`.
    pub umask: Option<u32>,
    /// The system part of containerd's (and so the shims') `PATH`, after the shim's and the
    /// release's directories; the test's own `PATH` if `None`.
    pub path: Option<String>,
    /// Name CRIU to the shims through `CRYO_CRIU` as a symlink in the run's dir
    /// ([`Containerd::criu_switch`]) to the `criu` on `PATH`, so that a case can take CRIU away
    /// from this daemon's shims (and give it back) without touching the machine's.
    pub criu_switch: bool,
    /// More environment for containerd (and so its shims), after (and over) the defaults.
    pub env: Vec<(String, String)>,
}

impl Containerd {
    /// Start a private containerd of the selected release ([`Release::selected`]) that finds
    /// `shim` as `containerd-shim-cryo-v2`.
    pub fn start(shim: &Path) -> Result<Containerd> {
        Containerd::start_with(shim, &StartOptions::default())
    }

    /// The same with `options`.
    pub fn start_with(shim: &Path, options: &StartOptions) -> Result<Containerd> {
        let release = Release::selected()?;
        let bins = release.binaries()?;
        if !shim.is_file() {
            bail!(
                "{} is missing: build it first: cargo build --workspace --bins",
                shim.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("cryo-test-")
            .tempdir_in("/tmp")?
            .keep();
        // A daemon that never served (or is not the release asked for) is stopped by then; its
        // temp dir goes with it.
        Containerd::launch(dir.clone(), shim, release, bins, options).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    /// Start containerd in `dir` and wait until it serves.
    fn launch(
        dir: PathBuf,
        shim: &Path,
        release: Release,
        bins: Binaries,
        options: &StartOptions,
    ) -> Result<Containerd> {
        for sub in ["bin", "cni/bin", "cni/net.d"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::os::unix::fs::symlink(shim, dir.join("bin/containerd-shim-cryo-v2"))?;
        std::fs::write(
            dir.join("config.toml"),
            crate::config::for_release(release, &dir),
        )?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let namespace = format!(
            "{}{}-{nanos}",
            crate::leftovers::TEST_NAMESPACE_PREFIX,
            std::process::id()
        );
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let shim_sockets = crate::leftovers::ShimSockets::snapshot();
        let cgroups = crate::leftovers::CgroupSnapshot::take();
        // The shim under test first, then the release's own runc shim, then the system's.
        let mut path = vec![dir.join("bin")];
        path.extend(bins.bin_dir.clone());
        let system = match &options.path {
            Some(p) => p.into(),
            None => std::env::var_os("PATH").unwrap_or_default(),
        };
        path.extend(std::env::split_paths(&system));
        let mut command = Command::new(&bins.containerd);
        command
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", std::env::join_paths(path)?)
            // The shims it starts put their control sockets here (`cryo --root`).
            .env("CRYO_ROOT", dir.join("cryo"))
            // Their layer cache of restored filesystem checkpoints (`CRYO_LAYER_ROOT`).
            .env("CRYO_LAYER_ROOT", dir.join("layers"))
            // Pods may name checkpoints (trigger destinations, restore sources) beneath /tmp,
            // where the cases make theirs (`CRYO_CHECKPOINT_ROOT`).
            .env("CRYO_CHECKPOINT_ROOT", CHECKPOINT_ROOT)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if options.criu_switch {
            let switch = criu_switch_in(&dir);
            std::fs::create_dir_all(switch.parent().unwrap_or(&dir))?;
            // No criu on PATH: the switch stays off (the shims name CRYO_CRIU's path).
            if let Some(criu) = std::env::split_paths(&system)
                .map(|d| d.join("criu"))
                .find(|p| p.is_file())
            {
                std::os::unix::fs::symlink(criu, &switch)?;
            }
            command.env("CRYO_CRIU", &switch);
        }
        if let Some(mask) = options.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let child = command.spawn().with_context(|| {
            format!(
                "start {} ({}; is it installed? run scripts/setup)",
                release.name(),
                bins.containerd.display()
            )
        })?;
        let mut cd = Containerd {
            dir,
            namespace,
            release,
            bins,
            child: Some(child),
            shim_sockets,
            cgroups,
            ctr_words: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(out) = cd.ctr(&["version"]) {
                if out.code == 0 {
                    // The daemon and ctr that came up are the release asked for (PATH decides
                    // for 1.6).
                    if !release.reports(&out.stdout) {
                        cd.stop();
                        bail!(
                            "asked for {} but `ctr version` says:\n{}",
                            release.name(),
                            out.stdout
                        );
                    }
                    return Ok(cd);
                }
            }
            if Instant::now() > deadline {
                let log = cd.log_tail();
                cd.stop();
                bail!("containerd did not come up; its log ends with:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The symlink the shims know CRIU by when started with [`StartOptions::criu_switch`]:
    /// remove it and they have no CRIU.
    pub fn criu_switch(&self) -> PathBuf {
        criu_switch_in(&self.dir)
    }

    /// Where this containerd's cryo shims keep restored checkpoint layers (`CRYO_LAYER_ROOT`).
    pub fn layer_root(&self) -> PathBuf {
        self.dir.join("layers")
    }

    /// Where this containerd's cryo shims serve their control sockets (`CRYO_ROOT`).
    pub fn cryo_root(&self) -> PathBuf {
        self.dir.join("cryo")
    }

    pub fn address(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// `ctr -a SOCK -n NS args...`
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_in(&self.namespace, args, None)
    }

    /// The same with `stdin` fed to ctr.
    pub fn ctr_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<Output> {
        self.ctr_in(&self.namespace, args, Some(stdin))
    }

    /// `ctr` in another namespace (e.g. `k8s.io` for CRI).
    /// `ctr run` and `ctr task exec` get `--fifo-dir` under the temp dir, so FIFOs that ctr
    /// cannot remove (its task vanished with a killed shim) go with the temp dir; not with
    /// `--log-uri` (no FIFOs; `ctr task exec` refuses the two together).
    pub fn ctr_in(&self, namespace: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
        let fifo_dir = self.fifo_dir().display().to_string();
        let mut args = args.to_vec();
        let at = match args.as_slice() {
            _ if args.contains(&"--log-uri") => None,
            ["run", ..] => Some(1),
            ["task", "exec", ..] => Some(2),
            _ => None,
        };
        if let Some(at) = at {
            args.splice(at..at, ["--fifo-dir", fifo_dir.as_str()]);
        }
        self.ctr_words
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(
                args.iter()
                    .flat_map(|a| crate::leftovers::words(a))
                    .map(str::to_string),
            );
        let mut c = Command::new(&self.bins.ctr);
        c.arg("-a")
            .arg(self.address())
            .arg("-n")
            .arg(namespace)
            .args(args);
        cmd::run(&mut c, stdin, CTR_LIMIT)
    }

    /// How containerd reaches the shim of task `id` in this run's namespace.
    pub fn shim_address(&self, id: &str) -> Result<ShimAddress> {
        ShimAddress::of_bundle(
            &self
                .dir
                .join("state/io.containerd.runtime.v2.task")
                .join(&self.namespace)
                .join(id),
        )
    }

    /// The release's `ctr`.
    pub fn ctr_path(&self) -> &Path {
        &self.bins.ctr
    }

    /// containerd's whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Where this run's ctr calls put their FIFOs.
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }

    /// The last lines of containerd's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL every task of `namespace`, delete tasks, containers and images.
    pub fn clean_namespace(&self, namespace: &str) {
        let list = |args: &[&str]| -> Vec<String> {
            self.ctr_in(namespace, args, None)
                .map(|o| o.stdout.lines().map(str::to_string).collect())
                .unwrap_or_default()
        };
        for id in list(&["task", "ls", "-q"]) {
            let _ = self.ctr_in(
                namespace,
                &["task", "kill", "-a", "-s", "SIGKILL", &id],
                None,
            );
        }
        for id in list(&["task", "ls", "-q"]) {
            for _ in 0..50 {
                let o = self.ctr_in(namespace, &["task", "delete", &id], None);
                if o.map(|o| o.code == 0).unwrap_or(false) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for id in list(&["container", "ls", "-q"]) {
            let _ = self.ctr_in(namespace, &["container", "delete", &id], None);
        }
        for img in list(&["image", "ls", "-q"]) {
            let _ = self.ctr_in(namespace, &["image", "rm", &img], None);
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Remove everything this run made and stop containerd; then check that nothing is left
    /// (mounts, processes, cgroups, the temp dir). Returns what was left, if anything.
    pub fn teardown(mut self, namespaces: &[&str]) -> Result<()> {
        // A hung runtime must not hang teardown: each namespace gets a bounded time.
        let own = self.namespace.clone();
        for ns in std::iter::once(own.as_str()).chain(namespaces.iter().copied()) {
            cmd::with_budget(TEARDOWN_BUDGET, || self.clean_namespace(ns));
        }
        self.stop();
        let mut left = crate::leftovers::find(&self.dir, &self.namespace);
        // Every shim removes its control socket as it leaves.
        if let Ok(entries) = std::fs::read_dir(self.cryo_root()) {
            for e in entries.flatten() {
                left.push(format!("control socket left: {}", e.path().display()));
            }
        }
        let log = self.log();
        let ids = self.run_words(&log);
        left.extend(self.stale_shim_sockets(namespaces, &ids));
        // What is reported goes, so that a failed run does not burden the machine.
        crate::leftovers::kill_processes_mentioning(&[
            &self.dir.display().to_string(),
            &self.namespace,
        ]);
        // Unmount what is still mounted under the temp dir (reported above) so it can go.
        for m in crate::leftovers::mounts_under(&self.dir) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        crate::leftovers::remove_cgroups(&self.namespace);
        left.extend(crate::leftovers::remaining_cgroups(&self.namespace));
        // Cgroups made for this run's containers outside its namespace's directory.
        let run_ids = ids
            .iter()
            .map(String::as_str)
            .filter(|w| crate::leftovers::is_run_id(w));
        let mut strays = self.cgroups.strays(run_ids);
        strays.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in strays {
            left.push(format!("cgroup {} left behind", d.display()));
            let _ = std::fs::remove_dir(&d);
        }
        if let Some(kept) = crate::logcheck::kept_log_path(self.release.name()) {
            let _ = std::fs::create_dir_all(kept.parent().unwrap_or(Path::new(".")));
            let _ = std::fs::write(&kept, &log);
        }
        let complaints = crate::logcheck::cryo_complaints(&log);
        // runc's shim keeps its state under /run/containerd/runc/<namespace> and leaves the
        // directory; anything inside it is a container runc still knows.
        let runc_root = Path::new("/run/containerd/runc").join(&self.namespace);
        if runc_root.is_dir() && std::fs::remove_dir(&runc_root).is_err() {
            left.push(format!("runc state left in {}", runc_root.display()));
            let _ = std::fs::remove_dir_all(&runc_root);
        }
        // The same for the other namespaces this run used (CRI's `k8s.io`, where pods on the
        // `runc` handler put it), shared by name with other runs on the machine: removed only
        // when empty.
        for ns in namespaces {
            let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(ns));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            left.push(format!("temp dir {}: {e}", self.dir.display()));
        }
        if !left.is_empty() {
            bail!("the suite left things behind:\n  {}", left.join("\n  "));
        }
        for (why, count) in known_counts(&complaints.known) {
            eprintln!(
                "{}'s log: {count} warning lines caused by cryo, known and open: {why}",
                self.release.name()
            );
        }
        if !complaints.new.is_empty() {
            bail!(
                "{}'s log has {} error or warning lines caused by cryo:\n  {}",
                self.release.name(),
                complaints.new.len(),
                complaints.new.join("\n  ")
            );
        }
        Ok(())
    }
}

impl Containerd {
    /// Every word this run's ctr calls carried and its containerd logged: the run's ids are
    /// among them.
    fn run_words(&self, log: &str) -> std::collections::BTreeSet<String> {
        let mut words = self
            .ctr_words
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        words.extend(crate::leftovers::words(log).map(str::to_string));
        words
    }

    /// The shim sockets this run left in [`crate::leftovers::SHIM_SOCKET_DIR`] with no
    /// listener, described (each is removed).
    fn stale_shim_sockets(
        &self,
        namespaces: &[&str],
        ids: &std::collections::BTreeSet<String>,
    ) -> Vec<String> {
        let all: Vec<&str> = std::iter::once(self.namespace.as_str())
            .chain(namespaces.iter().copied())
            .collect();
        let mut left = Vec::new();
        for s in self
            .shim_sockets
            .stale(&self.address(), &all, ids.iter().map(String::as_str))
        {
            left.push(format!(
                "shim socket {} of {}/{} left with no listener",
                s.path.display(),
                s.namespace,
                s.id
            ));
            let _ = std::fs::remove_file(&s.path);
        }
        left
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The CRIU switch's path under a run's dir.
fn criu_switch_in(dir: &Path) -> PathBuf {
    dir.join("criu/criu")
}

/// How many lines each known cause accounts for.
fn known_counts(known: &[(String, &'static str)]) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for (_, why) in known {
        match counts.iter_mut().find(|(w, _)| w == why) {
            Some((_, n)) => *n += 1,
            None => counts.push((why, 1)),
        }
    }
    counts
}

/// The shim under test: `$CRYO_TEST_SHIM` if set (e.g. a release build), else the one built
/// next to this test binary (`<target>/debug/containerd-shim-cryo-v2`).
pub fn built_shim() -> Result<PathBuf> {
    if let Some(shim) = std::env::var_os("CRYO_TEST_SHIM") {
        return Ok(PathBuf::from(shim));
    }
    let exe = std::env::current_exe()?;
    // <target>/debug/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    Ok(profile_dir.join("containerd-shim-cryo-v2"))
}
