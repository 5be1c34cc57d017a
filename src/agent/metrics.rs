//! Prometheus metrics: `GET /metrics` served on the agent's loop when
//! `[host] metrics` is set. [`render`] turns a [`Sample`] into the text
//! exposition format (pure); the rest reads the sample (the engine, the
//! units' cgroups, `/proc`) and speaks just enough HTTP/1.1, parsed by
//! `httparse`, to answer one request per connection.
//!
//! Invariant: a scraper can never make the agent block or grow without
//! bound: sockets are non-blocking, a request is at most [`MAX_REQUEST`]
//! bytes, at most [`MAX_CONNS`] connections are kept (the oldest is
//! dropped for a new one), and each holds at most one response.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use mio::Interest;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::{Agent, Source};
use crate::config::{MetricsAddr, UnitKind};
use crate::supervisor::{End, State};

/// Longest request accepted (request line and headers).
const MAX_REQUEST: usize = 8 * 1024;
/// Most scrape connections kept at once.
const MAX_CONNS: usize = 16;

/// The kinds of end counted per unit, as the `end` label names them.
pub(super) const END_KINDS: [&str; 7] = [
    "exit",
    "signal",
    "poweroff",
    "reboot",
    "crash",
    "start_failed",
    "unhealthy",
];

fn end_index(end: &End) -> usize {
    match end {
        End::Exit(_) => 0,
        End::Signal(_) => 1,
        End::Poweroff => 2,
        End::Reboot => 3,
        End::Crash => 4,
        End::StartFailed(_) => 5,
        End::Unhealthy => 6,
    }
}

/// What one scrape reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Sample<'a> {
    pub units: Vec<UnitSample<'a>>,
    pub agent: AgentSample,
}

/// One unit's figures.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UnitSample<'a> {
    pub name: &'a str,
    /// `zone` or `guest`.
    pub kind: &'static str,
    pub state: State,
    pub restarts: u32,
    /// Ends by kind, in [`END_KINDS`] order.
    pub ends: [u64; END_KINDS.len()],
    /// Seconds since it became ready, while running.
    pub uptime_s: Option<f64>,
    pub zone: Option<ZoneSample>,
    pub guest: Option<GuestSample>,
}

/// A zone's cgroup figures; none where unreadable (or `max`).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct ZoneSample {
    pub memory_current: Option<u64>,
    pub memory_max: Option<u64>,
    pub oom_kills: u64,
    pub pids_current: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
}

/// A guest's figures.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct GuestSample {
    /// The monitor process's resident memory, while it runs.
    pub monitor_rss: Option<u64>,
    pub vcpus: u32,
}

/// The agent's own figures.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct AgentSample {
    pub rss: Option<u64>,
    pub open_fds: Option<u64>,
    pub loop_turns: u64,
}

/// Appends a label value with `\`, `"` and newlines escaped.
fn push_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A number with a fixed count of decimals.
struct Fixed(f64, usize);

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.*}", self.1, self.0)
    }
}

/// Which labels name a unit's row.
#[derive(Clone, Copy)]
enum Labels<'a> {
    /// `unit` only (zone and guest figures).
    Unit,
    /// `unit` and `kind`.
    UnitKind,
    /// `unit`, `kind` and one more.
    UnitKindAnd(&'a str, &'a str),
}

/// Appends one sample line of unit `u`.
fn row(
    out: &mut String,
    name: &str,
    u: &UnitSample,
    labels: Labels,
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    out.push_str("{unit=\"");
    push_label(out, u.name);
    out.push('"');
    if let Labels::UnitKind | Labels::UnitKindAnd(..) = labels {
        out.push_str(",kind=\"");
        out.push_str(u.kind);
        out.push('"');
    }
    if let Labels::UnitKindAnd(k, v) = labels {
        let _ = write!(out, ",{k}=\"{v}\"");
    }
    let _ = writeln!(out, "}} {value}");
}

/// Appends a family's help and type lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends a family with one row per unit that has a `value`; nothing
/// when none has.
fn per_unit<V: std::fmt::Display>(
    out: &mut String,
    units: &[UnitSample],
    (name, kind, help): (&str, &str, &str),
    labels: Labels,
    value: impl Fn(&UnitSample) -> Option<V>,
) {
    if !units.iter().any(|u| value(u).is_some()) {
        return;
    }
    head(out, name, kind, help);
    for u in units {
        if let Some(v) = value(u) {
            row(out, name, u, labels, v);
        }
    }
}

/// Appends an agent-wide figure, if known.
fn agent_row(out: &mut String, (name, kind, help): (&str, &str, &str), value: Option<u64>) {
    if let Some(v) = value {
        head(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
}

/// Writes the Prometheus text exposition of `s` into `out` (cleared
/// first; its capacity is kept from scrape to scrape).
pub(super) fn render(s: &Sample, out: &mut String) {
    out.clear();
    let units = &s.units[..];
    if !units.is_empty() {
        let name = "zonit_unit_state";
        head(
            out,
            name,
            "gauge",
            "1 for the state the unit is in, 0 for the others.",
        );
        for u in units {
            for st in State::ALL {
                let on = u8::from(st == u.state);
                row(out, name, u, Labels::UnitKindAnd("state", st.as_str()), on);
            }
        }
    }
    per_unit(
        out,
        units,
        (
            "zonit_unit_restarts_total",
            "counter",
            "Automatic restarts carried out since the agent started.",
        ),
        Labels::UnitKind,
        |u| Some(u.restarts),
    );
    if !units.is_empty() {
        let name = "zonit_unit_ends_total";
        let help = "Ends of the unit's process since the agent started, by kind.";
        head(out, name, "counter", help);
        for u in units {
            for (k, n) in END_KINDS.iter().zip(u.ends) {
                row(out, name, u, Labels::UnitKindAnd("end", k), n);
            }
        }
    }
    per_unit(
        out,
        units,
        (
            "zonit_unit_uptime_seconds",
            "gauge",
            "Seconds since the unit became ready, while it runs.",
        ),
        Labels::UnitKind,
        |u| u.uptime_s.map(|t| Fixed(t, 3)),
    );
    let zone =
        |f: fn(&ZoneSample) -> Option<u64>| move |u: &UnitSample| u.zone.as_ref().and_then(f);
    per_unit(
        out,
        units,
        (
            "zonit_zone_memory_current_bytes",
            "gauge",
            "memory.current of the zone's cgroup.",
        ),
        Labels::Unit,
        zone(|z| z.memory_current),
    );
    per_unit(
        out,
        units,
        (
            "zonit_zone_memory_max_bytes",
            "gauge",
            "memory.max of the zone's cgroup (absent when unlimited).",
        ),
        Labels::Unit,
        zone(|z| z.memory_max),
    );
    per_unit(
        out,
        units,
        (
            "zonit_zone_oom_kills_total",
            "counter",
            "OOM kills in the zone's cgroup.",
        ),
        Labels::Unit,
        zone(|z| Some(z.oom_kills)),
    );
    per_unit(
        out,
        units,
        (
            "zonit_zone_pids_current",
            "gauge",
            "pids.current of the zone's cgroup.",
        ),
        Labels::Unit,
        zone(|z| z.pids_current),
    );
    per_unit(
        out,
        units,
        (
            "zonit_zone_cpu_usage_seconds_total",
            "counter",
            "CPU time used in the zone's cgroup (cpu.stat usage_usec).",
        ),
        Labels::Unit,
        |u| {
            let us = u.zone.as_ref()?.cpu_usage_usec?;
            Some(Fixed(us as f64 / 1e6, 6))
        },
    );
    per_unit(
        out,
        units,
        (
            "zonit_guest_monitor_rss_bytes",
            "gauge",
            "Resident memory of the guest's monitor process.",
        ),
        Labels::Unit,
        |u| u.guest.as_ref()?.monitor_rss,
    );
    per_unit(
        out,
        units,
        ("zonit_guest_vcpus", "gauge", "The guest's vCPUs."),
        Labels::Unit,
        |u| Some(u.guest.as_ref()?.vcpus),
    );
    agent_row(
        out,
        (
            "zonit_agent_rss_bytes",
            "gauge",
            "Resident memory of the agent.",
        ),
        s.agent.rss,
    );
    agent_row(
        out,
        (
            "zonit_agent_open_fds",
            "gauge",
            "File descriptors the agent holds open.",
        ),
        s.agent.open_fds,
    );
    agent_row(
        out,
        (
            "zonit_agent_loop_turns_total",
            "counter",
            "Wake-ups of the agent's event loop.",
        ),
        Some(s.agent.loop_turns),
    );
}

/// What a complete request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// `GET /metrics`: the metrics.
    Metrics,
    /// Anything else: this status line and body.
    Refuse(&'static str, &'static str),
}

/// What the request in `buf` asks for, or none while it is incomplete.
pub(super) fn route(buf: &[u8]) -> Option<Reply> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    Some(match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => return None,
        Ok(httparse::Status::Partial) => Reply::Refuse("431 Request Header Fields Too Large", ""),
        Err(_) => Reply::Refuse("400 Bad Request", ""),
        Ok(httparse::Status::Complete(_)) => match (req.method, req.path) {
            (Some("GET"), Some("/metrics")) => Reply::Metrics,
            (Some("GET"), _) => Reply::Refuse("404 Not Found", "only /metrics is served\n"),
            _ => Reply::Refuse("405 Method Not Allowed", "only GET is served\n"),
        },
    })
}

/// Writes the HTTP response with `status` and `body` into `out`.
pub(super) fn response(out: &mut Vec<u8>, status: &str, body: &str) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body.as_bytes());
}

/// The cgroup files a scrape reads per zone, in [`ZoneFiles`] bit order.
const ZONE_FILES: [&str; 5] = [
    "memory.current",
    "memory.max",
    "pids.current",
    "cpu.stat",
    "memory.events",
];

/// Which of [`ZONE_FILES`] a zone's group lacks (its controller is not
/// enabled there), as found for one run of the unit (its pid).
#[derive(Default)]
struct ZoneFiles {
    pid: Option<i32>,
    absent: u8,
}

/// Reads the files a scrape needs with one path and one buffer reused
/// from scrape to scrape, and without looking up again, during one run of
/// a zone, a file its group was found to lack: the controllers of a
/// group are set when it is made.
#[derive(Default)]
pub(super) struct FileReader {
    path: PathBuf,
    buf: Vec<u8>,
    zones: HashMap<String, ZoneFiles>,
}

impl FileReader {
    /// Reads the file at the reused path into the reused buffer. These
    /// files (cgroup and `/proc`) are made whole on each read: one that
    /// fits comes in one `read`, and a short read is its end, so a small
    /// file costs open, read, close (no size lookup, no read of the end).
    fn read(&mut self) -> io::Result<&str> {
        const CHUNK: usize = 4096;
        let mut f = std::fs::File::open(&self.path)?;
        self.buf.clear();
        loop {
            let len = self.buf.len();
            self.buf.resize(len + CHUNK, 0);
            match f.read(&mut self.buf[len..]) {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    if n < CHUNK {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(len),
                Err(e) => return Err(e),
            }
        }
        std::str::from_utf8(&self.buf).map_err(|_| io::ErrorKind::InvalidData.into())
    }

    /// File `file` (an index into [`ZONE_FILES`]) of `unit`'s group under
    /// `base`, whose current run is `pid`.
    fn zone_file(
        &mut self,
        base: &Path,
        unit: &str,
        pid: Option<i32>,
        file: usize,
    ) -> Option<&str> {
        let bit = 1u8 << file;
        let known = match self.zones.get_mut(unit) {
            Some(z) => z,
            None => self.zones.entry(unit.to_string()).or_default(),
        };
        if known.pid != pid {
            *known = ZoneFiles { pid, absent: 0 };
        }
        if known.absent & bit != 0 {
            return None;
        }
        self.path.clear();
        self.path.push(base);
        self.path.push(unit);
        self.path.push(ZONE_FILES[file]);
        match self.read().map(|_| ()) {
            Ok(()) => std::str::from_utf8(&self.buf).ok(),
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound
                    && let Some(z) = self.zones.get_mut(unit)
                {
                    z.absent |= bit;
                }
                None
            }
        }
    }

    /// A single-number file of the zone's group; none when unreadable or
    /// `max`.
    fn zone_value(
        &mut self,
        base: &Path,
        unit: &str,
        pid: Option<i32>,
        file: usize,
    ) -> Option<u64> {
        self.zone_file(base, unit, pid, file)?.trim().parse().ok()
    }

    /// One `KEY VALUE` line of a file of the zone's group.
    fn zone_keyed(
        &mut self,
        base: &Path,
        unit: &str,
        pid: Option<i32>,
        file: usize,
        key: &str,
    ) -> Option<u64> {
        self.zone_file(base, unit, pid, file)?
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
    }

    /// `VmRSS` of process `pid` (the agent's own for none), in bytes.
    fn rss(&mut self, pid: Option<i32>) -> Option<u64> {
        self.path.clear();
        match pid {
            Some(p) => {
                let _ = write!(PathWriter(&mut self.path), "/proc/{p}/status");
            }
            None => self.path.push("/proc/self/status"),
        }
        let text = self.read().ok()?;
        let kb = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
        let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    }

    /// Forgets zones that are no longer configured.
    fn retain(&mut self, units: &[crate::config::Unit]) {
        if self.zones.len() > units.len() {
            self.zones.retain(|n, _| units.iter().any(|u| u.name == *n));
        }
    }
}

/// `write!` into a path buffer, without an intermediate `String`.
struct PathWriter<'a>(&'a mut PathBuf);

impl std::fmt::Write for PathWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.as_mut_os_string().push(s);
        Ok(())
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
}

struct Conn {
    stream: Stream,
    token: mio::Token,
    rbuf: Vec<u8>,
    /// The response, once the request is complete.
    wbuf: Option<Vec<u8>>,
    /// How much of it is written.
    sent: usize,
}

/// The metrics server's state, and the counters only it reports.
#[derive(Default)]
pub(super) struct Server {
    listener: Option<(Listener, mio::Token)>,
    /// The unix socket made, removed when the agent ends.
    unix_path: Option<PathBuf>,
    conns: HashMap<usize, Conn>,
    /// Each unit's ends by kind.
    ends: HashMap<String, [u64; END_KINDS.len()]>,
    /// Reads the scrapes' files; kept for its buffers.
    reader: FileReader,
    /// The last scrape's body; kept for its capacity.
    body: String,
    /// A finished response's buffer, for the next one.
    spare: Vec<u8>,
    /// Wake-ups of the loop.
    pub(super) turns: u64,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Server {
    /// Counts an end of `unit`.
    pub(super) fn count_end(&mut self, unit: &str, end: &End) {
        let counts = self.ends.entry(unit.to_string()).or_default();
        counts[end_index(end)] += 1;
    }
}

impl Agent {
    /// Listens where `[host] metrics` says, if it says anything. A failure
    /// is logged: the host runs on without metrics.
    pub(super) fn bind_metrics(&mut self) {
        let Some(addr) = self.config.host.metrics.clone() else {
            return;
        };
        let bound = match &addr {
            MetricsAddr::Tcp(a) => TcpListener::bind(*a).map(Listener::Tcp),
            MetricsAddr::Unix(p) => {
                // A socket left by an earlier agent is replaced; anything
                // else at the path makes the bind fail.
                if std::fs::symlink_metadata(p)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(p);
                }
                UnixListener::bind(p).map(Listener::Unix)
            }
        };
        let mut listener = match bound {
            Ok(l) => l,
            Err(e) => {
                log::error!("metrics: unable to listen on {addr:?}: {e}; no metrics are served");
                return;
            }
        };
        if let MetricsAddr::Unix(p) = &addr {
            self.metrics.unix_path = Some(p.clone());
        }
        let token = self.token(Source::MetricsListener);
        let res = match &mut listener {
            Listener::Tcp(l) => self.poll.registry().register(l, token, Interest::READABLE),
            Listener::Unix(l) => self.poll.registry().register(l, token, Interest::READABLE),
        };
        if let Err(e) = res {
            log::error!("metrics: unable to watch the listener: {e}; no metrics are served");
            self.sources.remove(&token);
            return;
        }
        log::info!("metrics: serving GET /metrics on {addr:?}");
        self.metrics.listener = Some((listener, token));
    }

    /// Accepts scrapers until none is waiting.
    pub(super) fn metrics_accept(&mut self) {
        loop {
            let accepted = match &self.metrics.listener {
                Some((Listener::Tcp(l), _)) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Some((Listener::Unix(l), _)) => l.accept().map(|(s, _)| Stream::Unix(s)),
                None => return,
            };
            let mut stream = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    return;
                }
            };
            if self.metrics.conns.len() >= MAX_CONNS
                && let Some(&oldest) = self.metrics.conns.keys().min()
            {
                self.metrics_close(oldest);
            }
            let id = self.sources.next_id();
            let token = self.token(Source::MetricsConn(id));
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .poll
                .registry()
                .register(stream.source(), token, interest)
            {
                log::warn!("metrics: unable to watch a scraper: {e}");
                self.sources.remove(&token);
                continue;
            }
            let conn = Conn {
                stream,
                token,
                rbuf: Vec::new(),
                wbuf: None,
                sent: 0,
            };
            self.metrics.conns.insert(id, conn);
            self.on_metrics_conn(id);
        }
    }

    /// A scraper's socket is ready: reads its request, answers it once
    /// complete, writes what the socket takes, closes when all is sent or
    /// the scraper went away.
    pub(super) fn on_metrics_conn(&mut self, id: usize) {
        let mut buf = [0u8; 2048];
        loop {
            let Some(conn) = self.metrics.conns.get_mut(&id) else {
                return;
            };
            if conn.wbuf.is_some() {
                break;
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => return self.metrics_close(id),
                Ok(n) => conn.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.metrics_close(id),
            }
            let Some(reply) = route(&conn.rbuf) else {
                continue;
            };
            let mut wbuf = std::mem::take(&mut self.metrics.spare);
            match reply {
                Reply::Metrics => {
                    let mut reader = std::mem::take(&mut self.metrics.reader);
                    let mut body = std::mem::take(&mut self.metrics.body);
                    render(&self.sample(&mut reader), &mut body);
                    response(&mut wbuf, "200 OK", &body);
                    self.metrics.reader = reader;
                    self.metrics.body = body;
                }
                Reply::Refuse(status, body) => response(&mut wbuf, status, body),
            }
            if let Some(conn) = self.metrics.conns.get_mut(&id) {
                conn.wbuf = Some(wbuf);
            }
        }
        let Some(conn) = self.metrics.conns.get_mut(&id) else {
            return;
        };
        let Some(wbuf) = &mut conn.wbuf else { return };
        while conn.sent < wbuf.len() {
            match conn.stream.write(&wbuf[conn.sent..]) {
                Ok(0) => break,
                Ok(n) => conn.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.metrics_close(id);
    }

    fn metrics_close(&mut self, id: usize) {
        if let Some(mut conn) = self.metrics.conns.remove(&id) {
            let _ = self.poll.registry().deregister(conn.stream.source());
            self.sources.remove(&conn.token);
            if let Some(wbuf) = conn.wbuf {
                self.metrics.spare = wbuf;
            }
        }
    }

    /// Reads every figure a scrape reports.
    fn sample<'a>(&'a self, reader: &mut FileReader) -> Sample<'a> {
        let now = std::time::Instant::now();
        let base = self.cgroups.base();
        reader.retain(&self.config.units);
        let units = self
            .config
            .units
            .iter()
            .filter_map(|u| {
                let st = self.sup.status(&u.name)?;
                let (kind, zone, guest) = match &u.kind {
                    UnitKind::Zone(_) => {
                        let z = base.map(|b| {
                            let (name, pid) = (u.name.as_str(), st.pid);
                            ZoneSample {
                                memory_current: reader.zone_value(b, name, pid, 0),
                                memory_max: reader.zone_value(b, name, pid, 1),
                                pids_current: reader.zone_value(b, name, pid, 2),
                                cpu_usage_usec: reader.zone_keyed(b, name, pid, 3, "usage_usec"),
                                oom_kills: reader
                                    .zone_keyed(b, name, pid, 4, "oom_kill")
                                    .unwrap_or(0),
                            }
                        });
                        ("zone", Some(z.unwrap_or_default()), None)
                    }
                    UnitKind::Guest(g) => {
                        let g = GuestSample {
                            monitor_rss: st.pid.and_then(|p| reader.rss(Some(p))),
                            vcpus: g.vcpus,
                        };
                        ("guest", None, Some(g))
                    }
                };
                Some(UnitSample {
                    name: &u.name,
                    kind,
                    state: st.state,
                    restarts: st.restarts,
                    ends: self.metrics.ends.get(&u.name).copied().unwrap_or_default(),
                    uptime_s: st
                        .running_since
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    zone,
                    guest,
                })
            })
            .collect();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count().saturating_sub(1) as u64);
        Sample {
            units,
            agent: AgentSample {
                rss: reader.rss(None),
                open_fds,
                loop_turns: self.metrics.turns,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample<'static> {
        Sample {
            units: vec![
                UnitSample {
                    name: "web",
                    kind: "zone",
                    state: State::Running,
                    restarts: 2,
                    ends: [1, 1, 0, 0, 0, 0, 0],
                    uptime_s: Some(12.5),
                    zone: Some(ZoneSample {
                        memory_current: Some(4096),
                        memory_max: None,
                        oom_kills: 0,
                        pids_current: Some(3),
                        cpu_usage_usec: Some(1_500_000),
                    }),
                    guest: None,
                },
                UnitSample {
                    name: "vm",
                    kind: "guest",
                    state: State::Failed,
                    restarts: 0,
                    ends: [0, 0, 0, 0, 1, 0, 1],
                    uptime_s: None,
                    zone: None,
                    guest: Some(GuestSample {
                        monitor_rss: None,
                        vcpus: 2,
                    }),
                },
            ],
            agent: AgentSample {
                rss: Some(1_048_576),
                open_fds: Some(12),
                loop_turns: 99,
            },
        }
    }

    #[test]
    fn rendering_matches_the_golden_text() {
        let golden = include_str!("metrics.golden.txt");
        let mut out = String::from("what the last scrape left");
        render(&sample(), &mut out);
        assert_eq!(out, golden);
    }

    #[test]
    fn rendering_again_reuses_the_buffer() {
        let mut out = String::new();
        render(&sample(), &mut out);
        let (ptr, cap) = (out.as_ptr(), out.capacity());
        render(&sample(), &mut out);
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, cap));
    }

    #[test]
    fn nothing_is_rendered_for_no_units_but_the_agent() {
        let mut out = String::new();
        render(&Sample::default(), &mut out);
        assert!(
            out.starts_with("# HELP zonit_agent_loop_turns_total "),
            "{out}"
        );
    }

    #[test]
    fn a_file_a_zone_lacks_is_not_looked_up_again_until_its_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("web");
        std::fs::create_dir(&zone).unwrap();
        std::fs::write(zone.join("cpu.stat"), "usage_usec 1500000\nuser_usec 1\n").unwrap();
        let mut r = FileReader::default();
        let base = dir.path();
        assert_eq!(
            r.zone_keyed(base, "web", Some(7), 3, "usage_usec"),
            Some(1_500_000)
        );
        assert_eq!(r.zone_value(base, "web", Some(7), 0), None);
        std::fs::write(zone.join("memory.current"), "4096\n").unwrap();
        assert_eq!(r.zone_value(base, "web", Some(7), 0), None, "known absent");
        assert_eq!(
            r.zone_value(base, "web", Some(8), 0),
            Some(4096),
            "a new run"
        );
        std::fs::write(zone.join("memory.max"), "max\n").unwrap();
        let big = format!("{}oom_kill 3\n", "low 0\n".repeat(2000));
        std::fs::write(zone.join("memory.events"), big).unwrap();
        assert_eq!(
            r.zone_keyed(base, "web", Some(8), 4, "oom_kill"),
            Some(3),
            "past one read"
        );
        assert_eq!(r.zone_value(base, "web", Some(8), 1), None, "unlimited");
    }

    #[test]
    fn every_kind_of_end_is_counted_under_its_label() {
        let mut server = Server::default();
        let ends = [
            End::Exit(1),
            End::Signal(9),
            End::Poweroff,
            End::Reboot,
            End::Crash,
            End::StartFailed("no root".into()),
            End::Unhealthy,
        ];
        for (i, end) in ends.iter().enumerate() {
            server.count_end("a", end);
            assert_eq!(END_KINDS[end_index(end)], END_KINDS[i]);
        }
        assert_eq!(server.ends["a"], [1; END_KINDS.len()]);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        push_label(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
    }

    /// The response to `buf`, with `body` for `GET /metrics`.
    fn respond(buf: &[u8], body: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match route(buf)? {
            Reply::Metrics => response(&mut out, "200 OK", body),
            Reply::Refuse(status, body) => response(&mut out, status, body),
        }
        Some(out)
    }

    #[test]
    fn only_a_complete_get_of_metrics_gets_the_body() {
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "m 1\n").unwrap();
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Length: 4\r\n") && ok.ends_with("\r\n\r\nm 1\n"),
            "{ok}"
        );
        assert!(respond(b"GET /metrics HTTP/1.1\r\nHost:", "").is_none());
        let not_found = respond(b"GET / HTTP/1.1\r\n\r\n", "").unwrap();
        assert!(not_found.starts_with(b"HTTP/1.1 404 "));
        let post = respond(b"POST /metrics HTTP/1.1\r\n\r\n", "").unwrap();
        assert!(post.starts_with(b"HTTP/1.1 405 "));
        let garbage = respond(b"\x01\x02 nonsense\r\n\r\n", "").unwrap();
        assert!(garbage.starts_with(b"HTTP/1.1 400 "));
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST + 1, b'a');
        assert!(respond(&huge, "").unwrap().starts_with(b"HTTP/1.1 431 "));
    }
}
