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
use std::path::PathBuf;

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

const STATES: [State; 7] = [
    State::Stopped,
    State::Starting,
    State::Running,
    State::Stopping,
    State::Backoff,
    State::Exited,
    State::Failed,
];

/// What one scrape reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Sample {
    pub units: Vec<UnitSample>,
    pub agent: AgentSample,
}

/// One unit's figures.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UnitSample {
    pub name: String,
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

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family: its help, type and samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, String)]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in rows {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The Prometheus text exposition of `s`.
pub(super) fn render(s: &Sample) -> String {
    let mut out = String::with_capacity(256 + s.units.len() * 1024);
    let unit = |u: &UnitSample| format!("unit=\"{}\",kind=\"{}\"", label(&u.name), u.kind);
    let per = |f: &dyn Fn(&UnitSample) -> Vec<(String, String)>| -> Vec<(String, String)> {
        s.units.iter().flat_map(f).collect()
    };
    let states = per(&|u| {
        STATES
            .iter()
            .map(|st| {
                let on = u8::from(*st == u.state);
                (
                    format!("{},state=\"{}\"", unit(u), st.as_str()),
                    on.to_string(),
                )
            })
            .collect()
    });
    family(
        &mut out,
        "zonit_unit_state",
        "gauge",
        "1 for the state the unit is in, 0 for the others.",
        &states,
    );
    let restarts = per(&|u| vec![(unit(u), u.restarts.to_string())]);
    family(
        &mut out,
        "zonit_unit_restarts_total",
        "counter",
        "Automatic restarts carried out since the agent started.",
        &restarts,
    );
    let ends = per(&|u| {
        END_KINDS
            .iter()
            .zip(u.ends)
            .map(|(k, n)| (format!("{},end=\"{k}\"", unit(u)), n.to_string()))
            .collect()
    });
    family(
        &mut out,
        "zonit_unit_ends_total",
        "counter",
        "Ends of the unit's process since the agent started, by kind.",
        &ends,
    );
    let uptime = per(&|u| {
        u.uptime_s
            .map(|t| (unit(u), format!("{t:.3}")))
            .into_iter()
            .collect()
    });
    family(
        &mut out,
        "zonit_unit_uptime_seconds",
        "gauge",
        "Seconds since the unit became ready, while it runs.",
        &uptime,
    );
    let zone = |f: &dyn Fn(&ZoneSample) -> Option<String>| {
        per(&|u| {
            u.zone
                .as_ref()
                .and_then(f)
                .map(|v| (format!("unit=\"{}\"", label(&u.name)), v))
                .into_iter()
                .collect()
        })
    };
    let text = |v: Option<u64>| v.map(|v| v.to_string());
    family(
        &mut out,
        "zonit_zone_memory_current_bytes",
        "gauge",
        "memory.current of the zone's cgroup.",
        &zone(&|z| text(z.memory_current)),
    );
    family(
        &mut out,
        "zonit_zone_memory_max_bytes",
        "gauge",
        "memory.max of the zone's cgroup (absent when unlimited).",
        &zone(&|z| text(z.memory_max)),
    );
    family(
        &mut out,
        "zonit_zone_oom_kills_total",
        "counter",
        "OOM kills in the zone's cgroup.",
        &zone(&|z| Some(z.oom_kills.to_string())),
    );
    family(
        &mut out,
        "zonit_zone_pids_current",
        "gauge",
        "pids.current of the zone's cgroup.",
        &zone(&|z| text(z.pids_current)),
    );
    family(
        &mut out,
        "zonit_zone_cpu_usage_seconds_total",
        "counter",
        "CPU time used in the zone's cgroup (cpu.stat usage_usec).",
        &zone(&|z| z.cpu_usage_usec.map(|us| format!("{:.6}", us as f64 / 1e6))),
    );
    let guest = |f: &dyn Fn(&GuestSample) -> Option<String>| {
        per(&|u| {
            u.guest
                .as_ref()
                .and_then(f)
                .map(|v| (format!("unit=\"{}\"", label(&u.name)), v))
                .into_iter()
                .collect()
        })
    };
    family(
        &mut out,
        "zonit_guest_monitor_rss_bytes",
        "gauge",
        "Resident memory of the guest's monitor process.",
        &guest(&|g| text(g.monitor_rss)),
    );
    family(
        &mut out,
        "zonit_guest_vcpus",
        "gauge",
        "The guest's vCPUs.",
        &guest(&|g| Some(g.vcpus.to_string())),
    );
    let agent = |v: Option<u64>| {
        v.map(|v| (String::new(), v.to_string()))
            .into_iter()
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "zonit_agent_rss_bytes",
        "gauge",
        "Resident memory of the agent.",
        &agent(s.agent.rss),
    );
    family(
        &mut out,
        "zonit_agent_open_fds",
        "gauge",
        "File descriptors the agent holds open.",
        &agent(s.agent.open_fds),
    );
    family(
        &mut out,
        "zonit_agent_loop_turns_total",
        "counter",
        "Wake-ups of the agent's event loop.",
        &agent(Some(s.agent.loop_turns)),
    );
    out
}

/// The HTTP response to one complete request in `buf`, or none while the
/// request is incomplete.
pub(super) fn respond(buf: &[u8], body: impl FnOnce() -> String) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (status, body) = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => return None,
        Ok(httparse::Status::Partial) => ("431 Request Header Fields Too Large", String::new()),
        Err(_) => ("400 Bad Request", String::new()),
        Ok(httparse::Status::Complete(_)) => match (req.method, req.path) {
            (Some("GET"), Some("/metrics")) => ("200 OK", body()),
            (Some("GET"), _) => ("404 Not Found", "only /metrics is served\n".into()),
            _ => ("405 Method Not Allowed", "only GET is served\n".into()),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    Some(out)
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

/// `VmRSS` of a `/proc/PID/status`, in bytes.
fn rss(proc_dir: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("{proc_dir}/status")).ok()?;
    let kb = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
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
            let rbuf = std::mem::take(&mut conn.rbuf);
            let response = respond(&rbuf, || render(&self.sample()));
            if let Some(conn) = self.metrics.conns.get_mut(&id) {
                conn.rbuf = rbuf;
                conn.wbuf = response;
            }
        }
        let Some(conn) = self.metrics.conns.get_mut(&id) else {
            return;
        };
        let Some(wbuf) = &mut conn.wbuf else { return };
        while !wbuf.is_empty() {
            match conn.stream.write(wbuf) {
                Ok(0) => break,
                Ok(n) => {
                    wbuf.drain(..n);
                }
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
        }
    }

    /// Reads every figure a scrape reports.
    fn sample(&self) -> Sample {
        let now = std::time::Instant::now();
        let units = self
            .config
            .units
            .iter()
            .filter_map(|u| {
                let st = self.sup.status(&u.name)?;
                let (kind, zone, guest) = match &u.kind {
                    UnitKind::Zone(_) => {
                        let c = &self.cgroups;
                        let z = ZoneSample {
                            memory_current: c.value(&u.name, "memory.current"),
                            memory_max: c.value(&u.name, "memory.max"),
                            oom_kills: c.oom_kills(&u.name),
                            pids_current: c.value(&u.name, "pids.current"),
                            cpu_usage_usec: c.keyed(&u.name, "cpu.stat", "usage_usec"),
                        };
                        ("zone", Some(z), None)
                    }
                    UnitKind::Guest(g) => {
                        let monitor_rss = st.pid.and_then(|p| rss(&format!("/proc/{p}")));
                        let g = GuestSample {
                            monitor_rss,
                            vcpus: g.vcpus,
                        };
                        ("guest", None, Some(g))
                    }
                };
                Some(UnitSample {
                    name: u.name.clone(),
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
                rss: rss("/proc/self"),
                open_fds,
                loop_turns: self.metrics.turns,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            units: vec![
                UnitSample {
                    name: "web".into(),
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
                    name: "vm".into(),
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
        assert_eq!(render(&sample()), golden);
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
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn only_a_complete_get_of_metrics_gets_the_body() {
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", || {
            "m 1\n".into()
        })
        .unwrap();
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Length: 4\r\n") && ok.ends_with("\r\n\r\nm 1\n"),
            "{ok}"
        );
        assert!(respond(b"GET /metrics HTTP/1.1\r\nHost:", String::new).is_none());
        let not_found = respond(b"GET / HTTP/1.1\r\n\r\n", String::new).unwrap();
        assert!(not_found.starts_with(b"HTTP/1.1 404 "));
        let post = respond(b"POST /metrics HTTP/1.1\r\n\r\n", String::new).unwrap();
        assert!(post.starts_with(b"HTTP/1.1 405 "));
        let garbage = respond(b"\x01\x02 nonsense\r\n\r\n", String::new).unwrap();
        assert!(garbage.starts_with(b"HTTP/1.1 400 "));
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST + 1, b'a');
        assert!(
            respond(&huge, String::new)
                .unwrap()
                .starts_with(b"HTTP/1.1 431 ")
        );
    }
}
