//! The log backend behind the `log` facade: one line per record to stderr
//! (the console under `zonit run`), or to `/dev/kmsg` with the record's
//! priority when zonit is PID 1; and, when `[host] syslog` is set, a copy
//! of every record to a remote syslog server (RFC 5424 over UDP or TCP).
//!
//! The remote copy is best effort: a send that fails is counted, never
//! retried, and never blocks the agent for long (UDP does not block; TCP
//! gets a short write timeout). After failures the next successful send is
//! preceded by a line saying how many records were lost.
//!
//! Unit output is logged with target `unit:NAME` and printed as
//! `zonit[NAME]: line`; zonit's own records as `zonit: LEVEL: message`.

use std::fs::File;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
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
    remote: Mutex<Option<Remote>>,
}

/// A remote syslog collector and how many records it failed to take.
struct Remote {
    socket: RemoteSocket,
    /// This host's name, as records carry it (`-` when unknown).
    host: String,
    lost: u64,
}

enum RemoteSocket {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Remote {
    /// One RFC 5424 record of `msg`: facility daemon, the level's
    /// severity, the time in UTC, this host, `zonit` and its pid, no
    /// message id or structured data. Over TCP it ends in a newline: the
    /// non-transparent framing of RFC 6587 that rsyslog and syslog-ng
    /// read.
    fn record(&self, level: Level, msg: &str) -> String {
        const DAEMON: u8 = 3;
        let severity = match level {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut rec = format!(
            "<{}>1 {} {} zonit {} - - {msg}",
            DAEMON * 8 + severity,
            crate::control::event::rfc3339(ms),
            self.host,
            std::process::id()
        );
        if let RemoteSocket::Tcp(_) = self.socket {
            rec.push('\n');
        }
        rec
    }

    /// Sends one record in one write.
    fn write(&mut self, level: Level, msg: &str) -> std::io::Result<()> {
        let rec = self.record(level, msg);
        match &mut self.socket {
            RemoteSocket::Udp(s) => s.send(rec.as_bytes()).map(drop),
            RemoteSocket::Tcp(s) => s.write_all(rec.as_bytes()),
        }
    }

    fn send(&mut self, level: Level, line: &str) {
        if self.lost > 0 {
            let note = format!(
                "zonit: warn: {} log record(s) not sent to syslog",
                self.lost
            );
            if self.write(Level::Warn, &note).is_ok() {
                self.lost = 0;
            }
        }
        if self.write(level, line).is_err() {
            self.lost += 1;
        }
    }
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
        remote: Mutex::new(None),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

/// Sends a copy of every record to `target` from now on (`None` stops
/// sending). Errors setting it up are logged; logging goes on locally.
pub fn add_syslog(target: Option<&crate::config::SyslogTarget>) {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let remote = target.and_then(|t| match connect_syslog(t) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!("unable to set up remote syslog {t:?}: {e}");
            None
        }
    });
    if let Ok(mut slot) = logger.remote.lock() {
        *slot = remote;
    }
}

fn connect_syslog(target: &crate::config::SyslogTarget) -> std::io::Result<Remote> {
    use crate::config::SyslogTarget;
    let socket = match target {
        SyslogTarget::Udp(addr) => {
            let local: std::net::SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(local)?;
            s.connect(addr)?;
            RemoteSocket::Udp(s)
        }
        SyslogTarget::Tcp(addr) => {
            let s = TcpStream::connect(addr)?;
            // A stalled collector must not stall PID 1 for long: a write
            // that times out is counted as lost.
            s.set_write_timeout(Some(TCP_WRITE_TIMEOUT))?;
            RemoteSocket::Tcp(s)
        }
    };
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty() && !h.contains(' '))
        .unwrap_or_else(|| "-".into());
    Ok(Remote {
        socket,
        host,
        lost: 0,
    })
}

/// Logs `message` at error level from a panic hook: never blocks on the
/// logger's lock (the panic may have happened while it was held, and std's
/// mutex is not reentrant), falling back to stderr.
pub fn emergency(message: &str) {
    let line = format!("zonit: error: {message}");
    let Some(logger) = LOGGER.get() else {
        stderr_line(&line);
        return;
    };
    match logger.sink.try_lock() {
        Ok(mut sink) => match &mut *sink {
            Sink::Kmsg(f) => {
                let _ = f.write_all(format!("<3>{line}\n").as_bytes());
            }
            Sink::Stderr => stderr_line(&line),
        },
        Err(_) => stderr_line(&line),
    }
}

/// Writes `line` and its newline to stderr in one write(2): a line written
/// in pieces can be cut in two by another writer of the same terminal (the
/// kernel's console output, a unit's shell).
pub fn stderr_line(line: &str) {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

/// Prints `line` as is (no `zonit: LEVEL:` prefix) where the operator reads
/// zonit: as PID 1, one record of the kernel log at `level`, which the
/// kernel prints on the console whole and never interleaved with its own
/// lines; elsewhere on stderr, in one write.
pub fn print_line(level: Level, line: &str) {
    if let Some(logger) = LOGGER.get()
        && let Ok(mut sink) = logger.sink.lock()
        && let Sink::Kmsg(f) = &mut *sink
    {
        let rec = format!("<{}>{line}\n", kmsg_priority(level));
        let _ = f.write_all(rec.as_bytes());
        return;
    }
    stderr_line(line);
}

/// Longest a TCP syslog write may block the agent.
const TCP_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

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
        if let Ok(mut sink) = self.sink.lock() {
            match &mut *sink {
                Sink::Stderr => stderr_line(&line),
                Sink::Kmsg(f) => {
                    // One write(2) per record: /dev/kmsg makes a record of
                    // every write, so a formatted write_fmt in pieces
                    // would split the line into several.
                    let rec = format!("<{}>{line}\n", kmsg_priority(record.level()));
                    let _ = f.write_all(rec.as_bytes());
                }
            }
        }
        // try_lock: a record logged while sending must not deadlock; it
        // is only kept locally.
        if let Ok(mut remote) = self.remote.try_lock()
            && let Some(r) = &mut *remote
        {
            r.send(record.level(), &line);
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
