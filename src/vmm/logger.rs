//! The monitor's log backend: its own lines on stderr, prefixed
//! `zonit-vmm:`, so they stay apart from the guest's console on stdout.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

/// The monitor's log backend: stderr, one line per record, prefixed.
/// At debug level and above each line also carries the time since the
/// monitor started, so a slow setup step shows up without a tracer (whose
/// own overhead would hide what is being looked for).
struct StderrLog;

/// When `init_logging` ran: the start of the monitor, for the debug
/// timestamps.
static STARTED: OnceLock<Instant> = OnceLock::new();

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            let since = match (log::max_level() >= log::LevelFilter::Debug, STARTED.get()) {
                (true, Some(t)) => format!("[{:8.3} ms] ", t.elapsed().as_secs_f64() * 1e3),
                _ => String::new(),
            };
            // One write per line so lines from threads do not interleave.
            let line = format!("zonit-vmm: {level}: {since}{}\n", record.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

pub(super) fn init_logging() {
    STARTED.get_or_init(Instant::now);
    // Fails only if a logger is already set, which then stays in charge.
    let _ = log::set_logger(&LOGGER);
    let level = std::env::var("ZONIT_VMM_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    log::set_max_level(level);
}
