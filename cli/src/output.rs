//! What `cryo` prints: the manifest as a table (its text escaped: a manifest is hostile input
//! and must not drive the terminal), a progress line while work runs, sizes for humans.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use fsnap::resource::printable;
use fsnap::{Manifest, Progress};

pub fn print_table(m: &Manifest) {
    println!(
        "format {} {}  producer {}  created {}  data {} ({})",
        printable(&m.format),
        printable(&m.version),
        printable(&m.producer),
        printable(&m.created),
        printable(&m.data_file),
        human(m.data_size)
    );
    println!(
        "{:>3}  {:<13} {:<16} {:<30} {:>5} {:>8} {:>10} {:>10}  checksum",
        "#", "kind", "container", "path", "layer", "files", "logical", "stored"
    );
    for (i, s) in m.sections.iter().enumerate() {
        println!(
            "{i:>3}  {:<13} {:<16} {:<30} {:>5} {:>8} {:>10} {:>10}  {}",
            s.resource.kind.to_string(),
            printable(&s.resource.container),
            printable(&s.resource.path),
            s.layer,
            s.files,
            human(s.logical_bytes),
            human(s.stored_bytes),
            &s.checksum[..s.checksum.len().min(23)]
        );
    }
}

/// Run `f` with a progress line on stderr (when it is a terminal, or when asked).
pub fn with_progress<T>(
    verb: &str,
    forced: bool,
    f: impl FnOnce(&Progress) -> fsnap::Result<T>,
) -> Result<T> {
    let progress = Arc::new(Progress::default());
    let show = forced || std::io::stderr().is_terminal();
    let done = Arc::new(AtomicBool::new(false));
    let printer = show.then(|| {
        let (p, d, verb) = (progress.clone(), done.clone(), verb.to_string());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !d.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let bytes = p.bytes.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(0.001);
                eprint!(
                    "\r{verb}: {} files, {} of {} ({}/s)   ",
                    p.files.load(Ordering::Relaxed),
                    human(bytes),
                    human(p.total.load(Ordering::Relaxed)),
                    human((bytes as f64 / secs) as u64)
                );
            }
            eprintln!();
        })
    });
    let result = f(&progress);
    done.store(true, Ordering::Relaxed);
    if let Some(t) = printer {
        let _ = t.join();
    }
    Ok(result?)
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
