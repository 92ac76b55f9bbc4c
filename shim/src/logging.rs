//! The serving shim's log: logrus-format lines, as containerd and runc's shim write them, on
//! the bundle's `log` FIFO that containerd copies into its own log. One line per record (the
//! containerd-shim crate's logger ends each with a blank line), level names as logrus spells
//! them (`warning`), the message quoted and escaped (a quote or newline in it cannot forge a
//! field or a line), and `runtime=io.containerd.cryo.v2` so every line in containerd's log says
//! which shim wrote it. The level is `RUST_LOG` if set, else info (debug with `-debug`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::RUNTIME_ID;

/// The variable that sets the level.
const LEVEL_ENV: &str = "RUST_LOG";

struct FifoLog {
    file: Mutex<File>,
}

/// Log to the `log` FIFO in the current directory (the bundle).
pub fn init(debug: bool) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open("log")?;
    let level = std::env::var(LEVEL_ENV)
        .ok()
        .and_then(|l| LevelFilter::from_str(&l).ok())
        .unwrap_or(LevelFilter::Info);
    log::set_max_level(if debug {
        level.max(LevelFilter::Debug)
    } else {
        level
    });
    log::set_boxed_logger(Box::new(FifoLog {
        file: Mutex::new(file),
    }))
    .map_err(|e| std::io::Error::other(format!("set logger: {e}")))
}

impl Log for FifoLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = line(
            SystemTime::now(),
            record.level(),
            &record.args().to_string(),
        );
        if let Ok(mut f) = self.file.lock() {
            // containerd may be restarting: a line lost then is not worth failing for.
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// One logrus line.
fn line(at: SystemTime, level: Level, msg: &str) -> String {
    let level = match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    };
    format!(
        "time=\"{}\" level={level} msg={} runtime={RUNTIME_ID}\n",
        rfc3339(at),
        quote(msg)
    )
}

/// `s` in double quotes with `\`, `"` and control characters escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `at` as RFC 3339 UTC with nanoseconds, as containerd writes its times.
fn rfc3339(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_logrus_lines_naming_the_runtime() {
        let at = UNIX_EPOCH + Duration::new(1_795_445_005, 535_433_455);
        assert_eq!(
            line(at, Level::Warn, "copy to \"x\"\nlevel=error msg=forged"),
            "time=\"2026-11-23T14:43:25.535433455Z\" level=warning \
             msg=\"copy to \\\"x\\\"\\nlevel=error msg=forged\" runtime=io.containerd.cryo.v2\n"
        );
    }

    #[test]
    fn dates_are_civil_dates() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000000000Z"),
        ] {
            assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(secs)), want);
        }
    }
}
