//! Benchmark driver (not a test) for `scripts/bench`: cryo's shim against runc's on the
//! containerd `CRYO_TEST_CONTAINERD` selects (scripts/bench runs it for 2.2.7), started by the
//! test harness (its config, its private dirs, its leftover and log checks at the end), with
//! the shim `CRYO_TEST_SHIM` names (scripts/bench: the release build).
//!  1. start->exit: `ctr run --rm IMAGE ID true`, N times per runtime, alternating; medians.
//!  2. resident memory of a shim holding one sleeping container: RSS and PSS.
//!  3. through CRI, as kubelet: CheckpointContainer of a running container (a counter plus
//!     `-m` MiB of touched memory) and restore to running (a new pod, CreateContainer with the
//!     archive as image, StartContainer), R rounds per runtime handler; medians, and the
//!     counter is checked to go on from where it was. Needs containerd 2.x's CRI.
//!
//! Usage: bench_containerd [-n N] [-r ROUNDS] [-m MIB]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use harness::cri::{self, Cri, HANDLER, K8S_NAMESPACE, RUNC_HANDLER};
use harness::release::Release;
use harness::{image, Containerd, StartOptions};

struct Args {
    runs: usize,
    rounds: usize,
    mib: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        runs: 20,
        rounds: 3,
        mib: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "-n" => a.runs = value.parse()?,
            "-r" => a.rounds = value.parse()?,
            "-m" => a.mib = value.parse()?,
            other => bail!("unknown flag {other} (usage: [-n N] [-r ROUNDS] [-m MIB])"),
        }
    }
    ensure!(a.runs > 0 && a.rounds > 0, "-n and -r must be at least 1");
    Ok(a)
}

fn main() -> Result<()> {
    let args = args()?;
    let release = Release::selected()?;
    if let Some(why) = release.unavailable() {
        println!("\n{}: not benchmarked: {why}", release.name());
        return Ok(());
    }
    let cd = Containerd::start_with(&harness::built_shim()?, &StartOptions::default())?;
    let result = bench(&cd, release, &args);
    let teardown = cd.teardown(&[K8S_NAMESPACE]);
    result?;
    teardown
}

fn bench(cd: &Containerd, release: Release, args: &Args) -> Result<()> {
    cri::install_cni(cd)?;
    cri::import_images(cd)?;
    let busybox = cd.dir.join("images/busybox.tar");
    cd.ctr(&["image", "import", &busybox.display().to_string()])?
        .ok()?;
    println!("\n== {}", release.name());
    start_to_exit(cd, args.runs)?;
    memory(cd)?;
    if release.is_v2() {
        checkpoint_restore(cd, args)?;
    } else {
        println!(
            "\nCRI checkpoint/restore: not on {} (no CheckpointContainer)",
            release.name()
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

const RUNTIMES: [&str; 2] = ["cryo", "runc"];

fn start_to_exit(cd: &Containerd, runs: usize) -> Result<()> {
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        for (r, rt) in RUNTIMES.iter().enumerate() {
            let runtime = format!("io.containerd.{rt}.v2");
            let id = format!("b-{rt}-{i}");
            let t0 = Instant::now();
            cd.ctr(&[
                "run",
                "--rm",
                "--runtime",
                &runtime,
                image::BUSYBOX_IMAGE,
                &id,
                "true",
            ])?
            .ok()
            .with_context(|| format!("ctr run {id}"))?;
            times[r].push(ms(t0.elapsed()));
        }
    }
    let [c, r] = times.map(median);
    println!("\nstart->exit of `ctr run --rm busybox true`, {runs} runs each, alternating");
    println!("  cryo  median {c:8.1} ms\n  runc  median {r:8.1} ms");
    println!("  ratio cryo/runc {:.2} (target <= 0.50)", c / r);
    Ok(())
}

/// (VmRSS, Pss, RssAnon) in kB of the shim serving task `id` of the run's namespace. RssAnon
/// is what each further pod's shim costs for certain: its file-backed pages (the binary, libc)
/// are shared between shims and reclaimable.
fn shim_memory(cd: &Containerd, rt: &str, id: &str) -> Result<(u64, u64, u64)> {
    let name = format!("containerd-shim-{rt}-v2");
    let pid = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(name.as_bytes()))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
                && args.contains(&cd.namespace.as_bytes())
        })
        .with_context(|| format!("no {name} serving {id}"))?;
    let field = |file: &str, key: &str| -> Result<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))?
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/{file}"))
    };
    Ok((
        field("status", "VmRSS:")?,
        field("smaps_rollup", "Pss:")?,
        field("status", "RssAnon:")?,
    ))
}

fn memory(cd: &Containerd) -> Result<()> {
    for rt in RUNTIMES {
        let runtime = format!("io.containerd.{rt}.v2");
        cd.ctr(&[
            "run",
            "-d",
            "--runtime",
            &runtime,
            image::BUSYBOX_IMAGE,
            &format!("sleep-{rt}"),
            "sleep",
            "100000",
        ])?
        .ok()?;
    }
    // Let start-up work settle (idle blocking threads exit).
    std::thread::sleep(Duration::from_secs(2));
    let (rc, pc, ac) = shim_memory(cd, "cryo", "sleep-cryo")?;
    let (rr, pr, ar) = shim_memory(cd, "runc", "sleep-runc")?;
    println!("\nshim resident memory, one sleeping container each");
    println!("  cryo  RSS {rc:6} kB  PSS {pc:6} kB  anonymous {ac:6} kB");
    println!("  runc  RSS {rr:6} kB  PSS {pr:6} kB  anonymous {ar:6} kB");
    println!(
        "  ratio cryo/runc RSS {:.2} (target <= 0.25)  PSS {:.2}  anonymous {:.2}",
        rc as f64 / rr as f64,
        pc as f64 / pr as f64,
        ac as f64 / ar as f64
    );
    for rt in RUNTIMES {
        let id = format!("sleep-{rt}");
        cd.ctr(&["task", "kill", "-s", "SIGKILL", &id])?.ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cd.ctr(&["task", "delete", &id])?.code != 0 {
            ensure!(Instant::now() < deadline, "task {id} did not go");
            std::thread::sleep(Duration::from_millis(100));
        }
        cd.ctr(&["container", "delete", &id])?.ok()?;
    }
    Ok(())
}

/// The CRI workload: `mib` MiB held by `tail -c` (read from a FIFO), then a counter in `/count`.
fn workload(mib: u64) -> String {
    let bytes = mib * 1024 * 1024;
    format!(
        "mkfifo /tmp/f; (tail -c {bytes} < /tmp/f > /dev/null) & \
         (yes 0123456789abcde | head -c {bytes}; echo ready > /tmp/ready; sleep 100000) > /tmp/f & \
         i=0; while true; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.1; done"
    )
}

/// Wait until `sh -c script` in container `id` prints what `done` accepts.
fn wait_for(cri: &Cri, id: &str, script: &str, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((0, out, _)) = cri.exec_sync(id, &["sh", "-c", script]) {
            if done(&out) {
                return Ok(out);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{id}: `{script}` never satisfied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(cri: &Cri, id: &str) -> Result<u64> {
    let out = wait_for(cri, id, "cat /count", |o| o.trim().parse::<u64>().is_ok())?;
    Ok(out.trim().parse()?)
}

fn checkpoint_restore(cd: &Containerd, args: &Args) -> Result<()> {
    let cri = Cri::connect(&cd.address())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cri.image_present(image::PAUSE_IMAGE)? {
        ensure!(Instant::now() < deadline, "CRI never saw the pause image");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = cd.dir.join("logs");
    let archives = cd.dir.join("checkpoints");
    std::fs::create_dir_all(&archives)?;
    let cgroup_parent = format!("/{}", cd.namespace);
    let script = workload(args.mib);
    let mut cp: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut rs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut size: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (h, handler) in [HANDLER, RUNC_HANDLER].into_iter().enumerate() {
            let pod = |name: &str| -> Result<(String, k8s_cri::v1::PodSandboxConfig)> {
                let uid = format!("{name}-{round}");
                let dir = logs.join(&uid);
                std::fs::create_dir_all(&dir)?;
                let config = cri::pod_config(name, &uid, &[], &cgroup_parent, &dir);
                Ok((cri.run_pod_on(config.clone(), handler)?, config))
            };
            let (p1, c1) = pod(&format!("bench-{handler}"))?;
            let app =
                cri.create_container(&p1, cri::container_config("counter", &script, &[]), &c1)?;
            cri.start_container(&app)?;
            wait_for(&cri, &app, "cat /tmp/ready", |o| o.contains("ready"))?;
            wait_for(&cri, &app, "cat /count", |o| {
                o.trim().parse::<u64>().is_ok_and(|n| n >= 5)
            })?;
            let before = count(&cri, &app)?;
            let archive = archives.join(format!("{handler}-{round}.tar"));
            let t0 = Instant::now();
            cri.checkpoint_container(&app, &archive, 120)?;
            cp[h].push(ms(t0.elapsed()));
            size[h].push(std::fs::metadata(&archive)?.len() as f64);
            cri.remove_pod_fully(&p1)?;
            let (p2, c2) = pod(&format!("bench-{handler}-restored"))?;
            let t0 = Instant::now();
            let restored = cri.create_container(&p2, restore_config(&archive), &c2)?;
            cri.start_container(&restored)?;
            rs[h].push(ms(t0.elapsed()));
            let after = count(&cri, &restored)?;
            ensure!(
                after >= before,
                "{handler}: the restored counter is at {after}, it was at {before}: not restored"
            );
            cri.remove_pod_fully(&p2)?;
            std::fs::remove_file(&archive)?;
        }
    }
    let [cc, cr] = cp.map(median);
    let [rc, rr] = rs.map(median);
    let [sc, sr] = size.map(median);
    println!(
        "\nCRI CheckpointContainer and restore to running (CreateContainer with the archive, \
         StartContainer), {} MiB touched, {} rounds each, medians",
        args.mib, args.rounds
    );
    println!(
        "  checkpoint cryo {cc:8.1} ms  runc {cr:8.1} ms  ratio {:.2} (target <= 1.0)",
        cc / cr
    );
    println!(
        "  restore    cryo {rc:8.1} ms  runc {rr:8.1} ms  ratio {:.2} (target <= 1.0)",
        rc / rr
    );
    println!(
        "  archive    cryo {:8.1} MiB runc {:8.1} MiB ratio {:.2}",
        sc / 1048576.0,
        sr / 1048576.0,
        sc / sr
    );
    Ok(())
}

/// A container config restoring `archive` (its path as the image, as a restore Pod's `image:`).
fn restore_config(archive: &Path) -> k8s_cri::v1::ContainerConfig {
    k8s_cri::v1::ContainerConfig {
        metadata: Some(k8s_cri::v1::ContainerMetadata {
            name: "counter".into(),
            attempt: 0,
        }),
        image: Some(k8s_cri::v1::ImageSpec {
            image: archive.display().to_string(),
            ..Default::default()
        }),
        log_path: "counter.log".into(),
        ..Default::default()
    }
}
