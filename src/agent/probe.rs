//! Readiness and health on the agent's side: carrying out the engine's
//! `Probe` and `CancelProbe`, and listening for a unit saying it is ready.
//!
//! - An exec probe is a `ctl exec`-style child of the agent (the zone's
//!   namespaces, user, capabilities and seccomp), stdio on /dev/null; its
//!   exit status 0 is a success. Cancelling it kills its helper, and the
//!   command dies with the helper.
//! - A tcp probe is a non-blocking connect, watched by the poll: a zone's
//!   to 127.0.0.1:PORT from a socket made inside its network namespace, a
//!   guest's to its address from the agent's own.
//! - `notify = "fd"`: a pipe whose write end the command gets; a newline
//!   on it is ready. `notify = "systemd"`: a datagram socket bound inside
//!   the zone's network namespace at the abstract address
//!   [`NOTIFY_SOCKET`], which the command finds in `$NOTIFY_SOCKET`.
//!
//! Invariant: nothing here blocks the loop. Probe deadlines are the
//! engine's timers; without probes nothing here wakes the agent.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, UnixAddr, bind, connect, getsockopt,
    recv, socket, sockopt,
};
use nix::sys::wait::WaitStatus;

use super::units::Child;
use super::{Agent, Source};
use crate::config::{Probe, ReadyKind, UnitKind};
use crate::logging::error_chain;
use crate::supervisor::{Check, End, Input, State};
use crate::sys;
use crate::zone::exec;
use crate::zone::protocol::Outcome;

/// The `$NOTIFY_SOCKET` of a zone with `notify = "systemd"`: an abstract
/// unix address, private to the zone's network namespace.
pub(super) const NOTIFY_SOCKET: &str = "@zonit-notify";
/// Most notify datagrams (or pipe reads) taken from one unit per wake-up.
const NOTIFY_BUDGET: usize = 64;

/// The probes and notify channels of every unit.
#[derive(Default)]
pub(super) struct Probes {
    /// The probe running for each unit.
    running: HashMap<String, Running>,
    /// Exec probe helpers by PID, until reaped (cancelled ones too).
    helpers: HashMap<i32, Helper>,
    /// Each starting unit's notify pipe or socket.
    notify: HashMap<String, Notifier>,
}

enum Running {
    /// An exec probe's helper, by PID.
    Exec(i32),
    /// A connect in progress.
    Tcp { socket: OwnedFd, token: Token },
}

struct Helper {
    unit: String,
    child: Child,
    /// When the agent began starting it.
    started: Instant,
    /// Cancelled: reap it, report nothing.
    cancelled: bool,
}

struct Notifier {
    fd: OwnedFd,
    token: Token,
    /// A socket (sd_notify) rather than a pipe.
    socket: bool,
    /// When a `STATUS=` was last logged: at most one a second, so a zone
    /// cannot flood the log.
    status_logged: Option<Instant>,
}

/// What one sd_notify datagram says, as far as zonit cares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notice {
    /// `READY=1`.
    pub ready: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `STATUS=...`.
    pub status: Option<String>,
}

/// Reads a datagram of newline-separated `KEY=VALUE` assignments
/// (sd_notify(3)); unknown keys (`WATCHDOG=1`, `MAINPID=`...) are ignored.
pub fn parse_notice(datagram: &[u8]) -> Notice {
    let text = String::from_utf8_lossy(datagram);
    let mut notice = Notice::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => notice.ready = true,
            Some(("STOPPING", "1")) => notice.stopping = true,
            Some(("STATUS", s)) => notice.status = Some(s.chars().take(200).collect()),
            _ => {}
        }
    }
    notice
}

impl Agent {
    /// Carries out `Action::Probe`; returns the answer when it is known at
    /// once (a refused connect, a probe that could not start).
    pub(super) fn start_probe(&mut self, unit: &str, check: Check) -> Option<Input> {
        let started_at = Instant::now();
        let failed = |why: String| probe_failed(unit, check, &why);
        let Some(cfg) = self.config.unit(unit) else {
            return failed("the unit is not in the config".into());
        };
        let probe = match (check, &cfg.common.ready, &cfg.common.health) {
            (Check::Ready, Some(r), _) => match &r.kind {
                ReadyKind::Probe { probe, .. } => probe.clone(),
                _ => return failed("this unit's ready has no probe".into()),
            },
            (Check::Health, _, Some(h)) => h.probe.clone(),
            _ => return failed("this unit has no such probe".into()),
        };
        // A zone is probed from inside (its init's namespaces), a guest
        // from the host, at its address.
        let (zone, guest_address) = match &cfg.kind {
            UnitKind::Zone(z) => (Some(z.clone()), None),
            UnitKind::Guest(_) => (None, cfg.addressed_nic().and_then(|n| n.address)),
        };
        let init = self.runtimes.pidfd(unit);
        match probe {
            Probe::Exec(argv) => {
                let (Some(zone), Some(init)) = (zone, init) else {
                    return failed("only a running zone can run a probe command".into());
                };
                let stdio = match null_stdio() {
                    Ok(s) => s,
                    Err(e) => return failed(format!("unable to open /dev/null: {e}")),
                };
                let group = self.cgroups.open(unit);
                let started = match exec::exec(
                    unit,
                    &zone,
                    &argv,
                    init,
                    group.as_ref().map(|g| g.as_fd()),
                    exec::Io::Stdio(stdio),
                ) {
                    Ok(s) => s,
                    Err(e) => return failed(format!("unable to start: {}", error_chain(&e))),
                };
                let child =
                    self.watch_channel(started.pidfd, started.channel, Source::Probe(started.pid));
                log::debug!("{unit}: {check:?} probe {argv:?}, pid {}", started.pid);
                self.probes.helpers.insert(
                    started.pid,
                    Helper {
                        unit: unit.to_string(),
                        child,
                        started: started_at,
                        cancelled: false,
                    },
                );
                self.probes
                    .running
                    .insert(unit.to_string(), Running::Exec(started.pid));
                None
            }
            Probe::Tcp(port) => {
                let target = match (&zone, init, guest_address) {
                    (Some(_), Some(init), _) => Target::Zone(init),
                    (Some(_), None, _) => return failed("the zone has no init".into()),
                    (None, _, Some(address)) => Target::Address(address),
                    (None, _, None) => return failed("the guest has no address".into()),
                };
                let connect = tcp_connect(target, port);
                self.tcp_probe(unit, check, port, connect)
            }
        }
    }

    /// A tcp probe's connect begun: the answer when it was decided at
    /// once, otherwise the socket is watched until it is.
    fn tcp_probe(
        &mut self,
        unit: &str,
        check: Check,
        port: u16,
        connect: io::Result<Connect>,
    ) -> Option<Input> {
        let failed = |why: String| probe_failed(unit, check, &why);
        match connect {
            Ok(Connect::Done(ok)) => {
                if ok && check == Check::Ready {
                    log::info!("{unit}: ready");
                }
                Some(Input::Probed {
                    unit: unit.to_string(),
                    ok,
                })
            }
            Ok(Connect::Pending(socket)) => {
                let token = self.token(Source::Tcp(unit.to_string()));
                let registered = self.poll.registry().register(
                    &mut SourceFd(&socket.as_raw_fd()),
                    token,
                    Interest::WRITABLE,
                );
                if let Err(e) = registered {
                    self.sources.remove(&token);
                    return failed(format!("unable to watch the connect: {e}"));
                }
                self.probes
                    .running
                    .insert(unit.to_string(), Running::Tcp { socket, token });
                None
            }
            Err(e) => failed(format!("unable to connect to port {port}: {e}")),
        }
    }

    /// Carries out `Action::CancelProbe`: kills an exec probe (reaped
    /// later, silently), drops a connect. An `overdue` probe failed by
    /// running past its deadline, which the log says; one cancelled
    /// because its unit stops or ended is not a failure.
    pub(super) fn cancel_probe(&mut self, unit: &str, overdue: bool) {
        match self.probes.running.remove(unit) {
            Some(Running::Exec(pid)) => {
                if let Some(h) = self.probes.helpers.get_mut(&pid) {
                    h.cancelled = true;
                    if overdue {
                        log::warn!("{unit}: probe pid {pid} ran past its deadline, killing it");
                    } else {
                        log::debug!("{unit}: probe pid {pid} no longer needed, killing it");
                    }
                    let _ = sys::process::pidfd_send_signal(h.child.pidfd.as_fd(), libc::SIGKILL);
                }
            }
            Some(Running::Tcp { socket, token }) => {
                if overdue {
                    log::debug!("{unit}: tcp probe not answered by its deadline");
                }
                self.unwatch_tcp(&socket, token)
            }
            None => {}
        }
    }

    fn unwatch_tcp(&mut self, socket: &OwnedFd, token: Token) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&socket.as_raw_fd()));
        self.sources.remove(&token);
    }

    /// A connect in progress finished (the socket is writable).
    pub(super) fn tcp_event(&mut self, unit: &str) {
        let Some(Running::Tcp { socket, token }) = self.probes.running.remove(unit) else {
            return;
        };
        self.unwatch_tcp(&socket, token);
        let ok = getsockopt(&socket, sockopt::SocketError).is_ok_and(|e| e == 0);
        self.feed_readiness(Input::Probed {
            unit: unit.to_string(),
            ok,
        });
    }

    /// An exec probe's helper reported on its channel.
    pub(super) fn probe_channel_event(&mut self, pid: i32) {
        if let Some(h) = self.probes.helpers.get_mut(&pid) {
            h.child.read();
        }
    }

    /// Reaps an exec probe's helper; returns false if `pid` is not one.
    pub(super) fn probe_reaped(&mut self, pid: i32, status: WaitStatus) -> bool {
        let Some(mut h) = self.probes.helpers.remove(&pid) else {
            return false;
        };
        h.child.read();
        self.unwatch_channel(&h.child);
        if h.cancelled {
            return true;
        }
        if matches!(self.probes.running.get(&h.unit), Some(Running::Exec(p)) if *p == pid) {
            self.probes.running.remove(&h.unit);
        }
        // The probe's cost as the agent sees it, from deciding to start
        // it to its helper reaped (the benchmarks read this line).
        log::debug!(
            "{}: exec probe reaped {} us after start",
            h.unit,
            h.started.elapsed().as_micros()
        );
        let ok = match h.child.report.outcome(status) {
            Outcome::Ended(End::Exit(0)) => true,
            Outcome::Ended(end) => {
                log::debug!("{}: probe failed ({})", h.unit, end.describe());
                false
            }
            Outcome::Failed(f) => {
                log::warn!("{}: probe could not run: {}", h.unit, f.reason);
                false
            }
        };
        self.feed_readiness(Input::Probed { unit: h.unit, ok });
        true
    }

    /// Before a zone's spawn: the write end of its notify pipe, for a
    /// zone with `notify = "fd"`; the read end is watched from now on.
    pub(super) fn notify_pipe(&mut self, unit: &str) -> io::Result<Option<(OwnedFd, i32)>> {
        let at = match self.config.unit(unit).and_then(|u| u.common.ready.as_ref()) {
            Some(r) => match r.kind {
                ReadyKind::NotifyFd(at) => at,
                _ => return Ok(None),
            },
            None => return Ok(None),
        };
        let (rx, tx) = sys::fd::pipe()?;
        sys::fd::set_nonblocking(rx.as_fd())?;
        self.watch_notify(unit, rx, false)?;
        Ok(Some((tx, at)))
    }

    /// After a zone's clone, before its command runs: the sd_notify socket
    /// inside its network namespace, for a zone with `notify = "systemd"`.
    pub(super) fn notify_socket(&mut self, unit: &str, init: BorrowedFd<'_>) -> Result<(), String> {
        let wanted = self
            .config
            .unit(unit)
            .and_then(|u| u.common.ready.as_ref())
            .is_some_and(|r| r.kind == ReadyKind::Systemd);
        if !wanted {
            return Ok(());
        }
        let fd = sys::net::in_netns(init, || {
            let fd = socket(
                AddressFamily::Unix,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )?;
            let name = NOTIFY_SOCKET.trim_start_matches('@');
            let addr = UnixAddr::new_abstract(name.as_bytes())?;
            bind(fd.as_raw_fd(), &addr)?;
            Ok(fd)
        })
        .map_err(|e| format!("unable to make the sd_notify socket: {e}"))?;
        self.watch_notify(unit, fd, true)
            .map_err(|e| format!("unable to watch the sd_notify socket: {e}"))
    }

    fn watch_notify(&mut self, unit: &str, fd: OwnedFd, socket: bool) -> io::Result<()> {
        self.close_notify(unit);
        let token = self.token(Source::Notify(unit.to_string()));
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
        {
            self.sources.remove(&token);
            return Err(e);
        }
        self.probes.notify.insert(
            unit.to_string(),
            Notifier {
                fd,
                token,
                socket,
                status_logged: None,
            },
        );
        Ok(())
    }

    /// Stops listening for `unit`'s readiness (it is ready, or ended).
    pub(super) fn close_notify(&mut self, unit: &str) {
        if let Some(n) = self.probes.notify.remove(unit) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&n.fd.as_raw_fd()));
            self.sources.remove(&n.token);
        }
    }

    /// The unit's notify pipe or socket is readable.
    pub(super) fn notify_event(&mut self, unit: &str) {
        let Some(n) = self.probes.notify.get_mut(unit) else {
            return;
        };
        let mut ready = false;
        let mut closed = false;
        let mut buf = [0u8; 4096];
        for _ in 0..NOTIFY_BUDGET {
            if n.socket {
                match recv(n.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(len) => {
                        let notice = parse_notice(&buf[..len]);
                        let now = Instant::now();
                        let quiet = n
                            .status_logged
                            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
                        if let (Some(status), false) = (&notice.status, quiet) {
                            log::info!("{unit}: status: {status}");
                            n.status_logged = Some(now);
                        }
                        if notice.stopping {
                            log::info!("{unit}: says it is stopping");
                        }
                        ready |= notice.ready;
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            } else {
                match nix::unistd::read(&n.fd, &mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(len) => ready |= buf[..len].contains(&b'\n'),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        }
        if ready || closed {
            self.close_notify(unit);
        }
        if ready {
            self.feed_readiness(Input::Notified(unit.to_string()));
        }
    }

    /// Feeds a readiness input, logging first when it makes the unit
    /// ready (so the line comes before what its dependents do).
    pub(super) fn feed_readiness(&mut self, input: Input) {
        let (unit, says_ready) = match &input {
            Input::Notified(u) => {
                let passive = self
                    .sup
                    .spec(u)
                    .and_then(|s| s.ready)
                    .is_some_and(|r| r.probe.is_none());
                (u.as_str(), passive)
            }
            Input::Probed { unit, ok } => (unit.as_str(), *ok),
            _ => ("", false),
        };
        let waiting = self
            .sup
            .status(unit)
            .is_some_and(|s| s.state == State::Starting && s.pid.is_some());
        if says_ready && waiting {
            log::info!("{unit}: ready");
        }
        self.feed(input);
    }

    /// A unit's output line while it may be waiting for a `log` readiness
    /// pattern: the pattern, if it is waiting for one.
    pub(super) fn log_pattern(&self, unit: &str) -> Option<String> {
        let ready = self.config.unit(unit)?.common.ready.as_ref()?;
        let ReadyKind::Log(pattern) = &ready.kind else {
            return None;
        };
        let st = self.sup.status(unit)?;
        (st.state == State::Starting && st.pid.is_some()).then(|| pattern.clone())
    }

    /// The unit's process is gone: nothing of its readiness is left.
    pub(super) fn unit_probes_gone(&mut self, unit: &str) {
        self.close_notify(unit);
    }
}

/// A probe that failed before it could run: logged, and its answer.
fn probe_failed(unit: &str, check: Check, why: &str) -> Option<Input> {
    log::warn!("{unit}: {check:?} probe: {why}");
    Some(Input::Probed {
        unit: unit.to_string(),
        ok: false,
    })
}

fn null_stdio() -> io::Result<[OwnedFd; 3]> {
    let open = || -> io::Result<OwnedFd> {
        Ok(std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?
            .into())
    };
    Ok([open()?, open()?, open()?])
}

enum Connect {
    /// Connected (true) or refused (false) at once.
    Done(bool),
    /// In progress: the socket turns writable when it is decided.
    Pending(OwnedFd),
}

/// Where a tcp probe connects.
enum Target<'a> {
    /// 127.0.0.1 inside the network namespace of the process behind this
    /// pidfd (a zone's init).
    Zone(BorrowedFd<'a>),
    /// This address, from the agent's own network namespace (a guest's).
    Address(Ipv4Addr),
}

/// A non-blocking connect to `port` of `to`.
fn tcp_connect(to: Target<'_>, port: u16) -> io::Result<Connect> {
    let make = || {
        socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(io::Error::from)
    };
    let (socket, ip) = match to {
        Target::Zone(init) => (sys::net::in_netns(init, make)?, Ipv4Addr::LOCALHOST),
        Target::Address(ip) => (make()?, ip),
    };
    let addr = SockaddrIn::from(SocketAddrV4::new(ip, port));
    Ok(match connect(socket.as_raw_fd(), &addr) {
        Ok(()) => Connect::Done(true),
        Err(nix::errno::Errno::EINPROGRESS | nix::errno::Errno::EINTR) => Connect::Pending(socket),
        Err(_) => Connect::Done(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_notify_datagrams_are_read_line_by_line() {
        assert_eq!(
            parse_notice(b"READY=1\nSTATUS=accepting connections\nWATCHDOG=1"),
            Notice {
                ready: true,
                stopping: false,
                status: Some("accepting connections".into()),
            }
        );
        assert_eq!(
            parse_notice(b"STOPPING=1\n"),
            Notice {
                stopping: true,
                ..Notice::default()
            }
        );
        assert_eq!(parse_notice(b"READY=0\nMAINPID=4"), Notice::default());
    }
}
