//! The log backend behind the `log` facade: one line per record to stderr
//! (the console under `zonit run`), or to `/dev/kmsg` with the record's
//! priority when zonit is PID 1.
//!
//! Unit output is logged with target `unit:NAME` and printed as
//! `zonit[NAME]: line`; zonit's own records as `zonit: LEVEL: message`.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Prefix of the log target used for unit output.
pub const UNIT_TARGET_PREFIX: &str = "unit:";

enum Sink {
    Stderr,
    Kmsg(File),
}

struct Logger {
    sink: Mutex<Sink>,
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Installs the logger; `kmsg` selects `/dev/kmsg` (falls back to stderr
/// if it cannot be opened). Safe to call more than once: later calls only
/// change the level.
pub fn init(level: LevelFilter, kmsg: bool) {
    let sink = if kmsg {
        match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            Ok(f) => Sink::Kmsg(f),
            Err(_) => Sink::Stderr,
        }
    } else {
        Sink::Stderr
    };
    let logger = LOGGER.get_or_init(|| Logger {
        sink: Mutex::new(sink),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

/// Formats an error and its sources as one line, `a: b: c`: the chain is
/// printed once, where the error is reported.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

fn kmsg_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Formats a record as one line, without priority prefix or newline.
pub fn format_line(record: &Record<'_>) -> String {
    match record.target().strip_prefix(UNIT_TARGET_PREFIX) {
        Some(unit) => format!("zonit[{unit}]: {}", record.args()),
        None => format!(
            "zonit: {}: {}",
            record.level().as_str().to_lowercase(),
            record.args()
        ),
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record);
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        match &mut *sink {
            Sink::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Sink::Kmsg(f) => {
                let _ = writeln!(f, "<{}>{line}", kmsg_priority(record.level()));
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_lines_carry_the_unit_name() {
        let rec = Record::builder()
            .target("unit:web")
            .level(Level::Info)
            .args(format_args!("hello"))
            .build();
        assert_eq!(format_line(&rec), "zonit[web]: hello");
    }

    #[test]
    fn own_lines_carry_the_level() {
        let rec = Record::builder()
            .target("zonit::agent")
            .level(Level::Warn)
            .args(format_args!("careful"))
            .build();
        assert_eq!(format_line(&rec), "zonit: warn: careful");
    }
}
