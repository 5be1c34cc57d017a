//! The agent's per-unit runtime: carrying out the engine's actions
//! (spawn, stop, kill), capturing output, and turning the end of a unit's
//! top process into the engine's `End`.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use mio::Interest;
use mio::unix::SourceFd;
use nix::sys::wait::WaitStatus;

use super::{Agent, Source};
use crate::config::UnitKind;
use crate::logbuf::{Admit, LOG_BURST, LOG_PER_SECOND, LineSplitter, RateLimit, Ring, escape_line};
use crate::logging::UNIT_TARGET_PREFIX;
use crate::logging::error_chain;
use crate::supervisor::{Action, End, Input};
use crate::sys;
use crate::zone::spawn;

/// Most bytes read from one unit's output per wake-up, so a flooding unit
/// cannot starve the loop.
const READ_BUDGET: usize = 256 * 1024;

/// A unit's live resources. Only a unit with a process holds fds (its
/// output pipe, pidfd and status pipe); the ring outlives its runs.
pub(super) struct UnitRt {
    /// Read end of the output pipe of the current run: the agent keeps no
    /// write end, so it reaches end of file once the run's processes are
    /// gone.
    out: Option<(File, mio::Token)>,
    ring: Ring,
    splitter: LineSplitter,
    rate: RateLimit,
    proc: Option<Proc>,
    /// Control connections following this unit's output.
    pub(super) followers: Vec<usize>,
}

struct Proc {
    /// When the agent began starting it: the origin of the start timings
    /// logged at debug level.
    spawned_at: Instant,
    pidfd: OwnedFd,
    status: Option<(File, mio::Token)>,
    status_buf: Vec<u8>,
    /// What the zone's init reported about the command's end.
    reported: Option<End>,
    /// Setup error reported by the zone's init.
    error: Option<String>,
    /// A guest's monitor: its wait status says how the guest ended.
    guest: bool,
}

impl UnitRt {
    /// The pidfd of the unit's top process, while it runs.
    pub(super) fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.proc.as_ref().map(|p| p.pidfd.as_fd())
    }

    /// The captured output (last `n` lines).
    pub(super) fn tail(&self, n: Option<usize>) -> Vec<u8> {
        self.ring.tail(n)
    }
}

impl Agent {
    pub(super) fn act(&mut self, action: Action, queue: &mut std::collections::VecDeque<Input>) {
        match action {
            Action::Spawn(unit) => queue.extend(self.spawn_unit(&unit)),
            Action::Stop { unit, pid } => {
                let cfg = self.config.unit(&unit).or_else(|| self.retiring.get(&unit));
                let sig = match cfg.map(|u| &u.kind) {
                    Some(UnitKind::Zone(z)) => z.stop_signal,
                    _ => libc::SIGTERM,
                };
                self.signal_unit(&unit, pid, sig);
            }
            Action::Kill { unit, pid } => {
                log::warn!("{unit}: stop_timeout reached, killing it");
                self.signal_unit(&unit, pid, libc::SIGKILL);
                self.cgroups.kill(&unit);
            }
            Action::GaveUp { unit, reason } => log::error!("{unit}: failed: {reason}"),
        }
    }

    fn signal_unit(&mut self, unit: &str, pid: i32, sig: i32) {
        let Some(proc) = self.units.get(unit).and_then(|u| u.proc.as_ref()) else {
            return;
        };
        if let Err(e) = sys::pidfd_send_signal(proc.pidfd.as_fd(), sig) {
            // ESRCH: it ended and is about to be reaped.
            if e.raw_os_error() != Some(libc::ESRCH) {
                log::warn!(
                    "{unit}: unable to send {} to pid {pid}: {e}",
                    crate::supervisor::policy::signal_name(sig)
                );
            }
        }
    }

    /// SIGKILL to every unit that still has a process.
    pub(super) fn kill_all(&mut self) {
        let live: Vec<(String, i32)> = self
            .pids
            .iter()
            .map(|(pid, unit)| (unit.clone(), *pid))
            .collect();
        for (unit, pid) in live {
            self.signal_unit(&unit, pid, libc::SIGKILL);
        }
        self.kill_execs();
    }

    /// Drops a unit's runtime: its output pipe and its log followers.
    pub(super) fn release_unit(&mut self, name: &str, mut rt: UnitRt) {
        self.unwatch_status(&rt.out.take());
        self.sources
            .retain(|_, s| !matches!(s, Source::Output(u) | Source::Status(u) if u == name));
        for id in rt.followers {
            self.end_follow(id);
        }
    }

    /// Creates the unit's runtime (log ring, no fds) if it has none.
    pub(super) fn ensure_runtime(&mut self, unit: &str) {
        if self.units.contains_key(unit) {
            return;
        }
        self.units.insert(
            unit.to_string(),
            UnitRt {
                out: None,
                ring: Ring::default(),
                splitter: LineSplitter::default(),
                rate: RateLimit::new(LOG_BURST, LOG_PER_SECOND, Instant::now()),
                proc: None,
                followers: Vec::new(),
            },
        );
    }

    /// A fresh output pipe for the unit's next run: the read end is
    /// watched, the write end returned for the child (and closed here once
    /// the child has its copy).
    fn open_output(&mut self, unit: &str) -> io::Result<OwnedFd> {
        self.close_output(unit);
        self.ensure_runtime(unit);
        let (rx, tx) = sys::pipe()?;
        let watched = self.watch_status(rx, Source::Output(unit.to_string()));
        let Some(out) = watched else {
            return Err(io::Error::other("unable to watch the output pipe"));
        };
        if let Some(rt) = self.units.get_mut(unit) {
            rt.out = Some(out);
        }
        Ok(tx)
    }

    /// Reads what is left of a finished run's output and closes the pipe.
    fn close_output(&mut self, unit: &str) {
        self.read_output(unit);
        let out = self.units.get_mut(unit).and_then(|rt| rt.out.take());
        self.unwatch_status(&out);
    }

    /// Registers a status pipe with the poll under `source`.
    pub(super) fn watch_status(
        &mut self,
        fd: OwnedFd,
        source: Source,
    ) -> Option<(File, mio::Token)> {
        let token = self.token(source);
        let res = sys::set_nonblocking(fd.as_fd()).and_then(|()| {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
        });
        match res {
            Ok(()) => Some((File::from(fd), token)),
            Err(e) => {
                log::warn!("unable to watch a status pipe: {e}");
                self.sources.remove(&token);
                None
            }
        }
    }

    /// Stops watching a status pipe.
    pub(super) fn unwatch_status(&mut self, status: &Option<(File, mio::Token)>) {
        if let Some((file, token)) = status {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&file.as_raw_fd()));
            self.sources.remove(token);
        }
    }

    /// Carries out `Spawn`; returns the engine inputs that answer it.
    fn spawn_unit(&mut self, unit: &str) -> Vec<Input> {
        let spawned_at = Instant::now();
        let failed = |reason: String, permanent: bool| {
            log::error!("{unit}: {reason}");
            vec![Input::StartFailed {
                unit: unit.to_string(),
                reason,
                permanent,
            }]
        };
        let Some(cfg) = self.config.unit(unit).cloned() else {
            return failed("not in the config".into(), true);
        };
        let zone = match &cfg.kind {
            UnitKind::Zone(z) => z,
            UnitKind::Guest(g) => return self.spawn_guest(unit, g),
        };
        if zone.template.is_none() && !zone.root.is_dir() {
            return failed(
                format!(
                    "root {} does not exist or is not a directory; create it or set `template`",
                    zone.root.display()
                ),
                true,
            );
        }
        if let Some(t) = &zone.template
            && !t.is_dir()
        {
            return failed(
                format!(
                    "template {} does not exist or is not a directory",
                    t.display()
                ),
                true,
            );
        }
        // Checked here rather than in the zone's init so a mistake in the
        // config is a permanent failure with its reason, not a restart loop.
        for m in &zone.mounts {
            if !m.source.exists() {
                return failed(
                    format!(
                        "bind source {} does not exist; create it or remove the mount",
                        m.source.display()
                    ),
                    true,
                );
            }
            if m.target.starts_with("/proc") || m.target.starts_with("/sys") {
                return failed(
                    format!(
                        "bind target {} is under /proc or /sys, which zonit sets up itself; choose another target",
                        m.target.display()
                    ),
                    true,
                );
            }
        }
        let group = match self.cgroups.prepare(unit, zone) {
            Ok(g) => g,
            Err(e) => {
                // Out of fds or memory passes; a missing controller does not.
                let permanent = !matches!(&e, super::cgroup::Error::Io { source, .. } if sys::is_transient(source));
                return failed(error_chain(&e), permanent);
            }
        };
        let out = match self.open_output(unit) {
            Ok(tx) => tx,
            Err(e) => return failed(format!("unable to create the output pipe: {e}"), false),
        };
        let spawned = spawn::spawn(zone, out.as_fd(), group.as_ref().map(|g| g.as_fd()));
        drop(out);
        let started = match spawned {
            Ok(s) => s,
            Err(e) => {
                self.close_output(unit);
                let permanent = matches!(e, spawn::Error::Nul { .. });
                return failed(format!("unable to start: {}", error_chain(&e)), permanent);
            }
        };
        let status = self.watch_status(started.status, Source::Status(unit.to_string()));
        self.pids.insert(started.pid, unit.to_string());
        if let Some(rt) = self.units.get_mut(unit) {
            rt.proc = Some(Proc {
                spawned_at,
                pidfd: started.pidfd,
                status,
                status_buf: Vec::new(),
                reported: None,
                error: None,
                guest: false,
            });
        }
        log::info!("{unit}: started, pid {}", started.pid);
        vec![Input::Spawned {
            unit: unit.to_string(),
            pid: started.pid,
        }]
    }

    fn spawn_guest(&mut self, unit: &str, guest: &crate::config::Guest) -> Vec<Input> {
        for path in std::iter::once(&guest.kernel)
            .chain(guest.initrd.as_ref())
            .chain(guest.disks.iter().map(|d| &d.path))
        {
            if !path.is_file() {
                let reason = format!("{} does not exist or is not a file", path.display());
                log::error!("{unit}: {reason}");
                return vec![Input::StartFailed {
                    unit: unit.to_string(),
                    reason,
                    permanent: true,
                }];
            }
        }
        let spawned = self
            .open_output(unit)
            .map_err(|e| format!("unable to create the output pipe: {e}"))
            .and_then(|out| super::guest::spawn(guest, out.as_fd()).map_err(|e| error_chain(&e)));
        let started = match spawned {
            Ok(s) => s,
            Err(reason) => {
                self.close_output(unit);
                log::error!("{unit}: {reason}");
                return vec![Input::StartFailed {
                    unit: unit.to_string(),
                    reason,
                    permanent: false,
                }];
            }
        };
        self.pids.insert(started.pid, unit.to_string());
        if let Some(rt) = self.units.get_mut(unit) {
            rt.proc = Some(Proc {
                pidfd: started.pidfd,
                status: None,
                status_buf: Vec::new(),
                reported: None,
                error: None,
                guest: true,
                spawned_at: Instant::now(),
            });
        }
        log::info!("{unit}: monitor started, pid {}", started.pid);
        // A monitor is running as soon as it exists: it reports no
        // readiness of its own.
        vec![
            Input::Spawned {
                unit: unit.to_string(),
                pid: started.pid,
            },
            Input::Ready(unit.to_string()),
        ]
    }

    /// Reads the zone init's status lines.
    pub(super) fn read_status(&mut self, unit: &str) {
        let mut ready = None;
        if let Some(proc) = self.units.get_mut(unit).and_then(|u| u.proc.as_mut())
            && let Some((file, _)) = &mut proc.status
        {
            for line in drain_status(file, &mut proc.status_buf) {
                match line {
                    StatusLine::Ready => ready = Some(proc.spawned_at.elapsed()),
                    StatusLine::Error(msg) => proc.error = Some(msg),
                    StatusLine::End(end) => proc.reported = Some(end),
                    StatusLine::Unknown => {}
                }
            }
        }
        if let Some(after) = ready {
            // The start latency as the agent sees it: from deciding to
            // spawn to the init's `ready` (the command was executed).
            log::debug!(
                "{unit}: command running, {} us after spawn",
                after.as_micros()
            );
            self.feed(Input::Ready(unit.to_string()));
        }
    }

    /// The unit's top process was reaped with `status`.
    pub(super) fn unit_ended(&mut self, unit: &str, status: WaitStatus) {
        self.read_status(unit);
        self.close_output(unit);
        let Some(proc) = self.units.get_mut(unit).and_then(|u| u.proc.take()) else {
            return;
        };
        self.unwatch_status(&proc.status);
        let input = if let Some(msg) = proc.error {
            log::error!("{unit}: {msg}");
            Input::StartFailed {
                unit: unit.to_string(),
                reason: msg,
                permanent: false,
            }
        } else {
            let end = if proc.guest {
                super::guest::end_of(status)
            } else {
                proc.reported.unwrap_or(match status {
                    WaitStatus::Exited(_, code) => End::Exit(code),
                    WaitStatus::Signaled(_, sig, _) => End::Signal(sig as i32),
                    _ => End::Crash,
                })
            };
            log::info!("{unit}: ended ({})", end.describe());
            log::debug!(
                "{unit}: reaped {} us after spawn",
                proc.spawned_at.elapsed().as_micros()
            );
            Input::Ended {
                unit: unit.to_string(),
                end: end.clone(),
            }
        };
        let exit_code = match &input {
            Input::Ended { end, .. } => end_status_code(end),
            _ => 1,
        };
        self.feed(input);
        if self.config.host.exit_with.as_deref() == Some(unit) && self.shutdown.is_none() {
            log::info!("exit_with unit {unit} ended with status {exit_code}");
            let action = match self.opts.mode {
                super::Mode::Run => super::ShutdownAction::Exit(exit_code),
                super::Mode::Init => super::ShutdownAction::Verdict(exit_code),
            };
            self.begin_shutdown(action);
        }
    }

    /// Drains up to [`READ_BUDGET`] bytes of a unit's output.
    pub(super) fn read_output(&mut self, unit: &str) {
        let Some(rt) = self.units.get_mut(unit) else {
            return;
        };
        let mut buf = [0u8; 8192];
        let mut total = 0;
        let mut chunks: Vec<u8> = Vec::new();
        loop {
            if total >= READ_BUDGET {
                self.pending_reads.push(unit.to_string());
                break;
            }
            let Some((out, _)) = &mut rt.out else { break };
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    rt.ring.push(&buf[..n]);
                    chunks.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock
            }
        }
        if chunks.is_empty() {
            return;
        }
        let now = Instant::now();
        let target = format!("{UNIT_TARGET_PREFIX}{unit}");
        let (splitter, rate) = (&mut rt.splitter, &mut rt.rate);
        let notice = |dropped: u64| {
            log::warn!(target: &target, "({dropped} lines not logged: rate limit; `zonit ctl logs` has them)");
        };
        splitter.feed(&chunks, |line| match rate.admit(now) {
            Admit::Pass { dropped } => {
                if dropped > 0 {
                    notice(dropped);
                }
                log::info!(target: &target, "{}", escape_line(line));
            }
            Admit::Notice { dropped } => notice(dropped),
            Admit::Drop => {}
        });
        let followers = rt.followers.clone();
        for id in followers {
            self.send_log(id, &chunks);
        }
    }
}

/// Reads what is available on a status pipe into `buf` and returns the
/// complete lines. `buf` is bounded: a well-behaved init writes a few short
/// lines, and nothing more is kept in any case.
pub(super) fn drain_status(file: &mut File, buf: &mut Vec<u8>) -> Vec<StatusLine> {
    let mut chunk = [0u8; 512];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if buf.len() < 4096 {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let mut lines = Vec::new();
    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        lines.push(parse_status_line(&String::from_utf8_lossy(&line[..nl])));
    }
    lines
}

/// One line of the status-pipe protocol (see `zone::spawn`).
pub(super) enum StatusLine {
    Ready,
    Error(String),
    End(End),
    Unknown,
}

pub(super) fn parse_status_line(line: &str) -> StatusLine {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "ready" => StatusLine::Ready,
        "error" => StatusLine::Error(rest.to_string()),
        "exit" => rest
            .parse()
            .map_or(StatusLine::Unknown, |c| StatusLine::End(End::Exit(c))),
        "signal" => rest
            .parse()
            .map_or(StatusLine::Unknown, |s| StatusLine::End(End::Signal(s))),
        _ => StatusLine::Unknown,
    }
}

/// The status `exit_with` reports for an end: the exit code, 128 + signal,
/// 0 for a guest poweroff, 1 for anything else.
pub(super) fn end_status_code(end: &End) -> i32 {
    match end {
        End::Exit(c) => *c,
        End::Signal(s) => 128 + s,
        End::Poweroff => 0,
        End::Reboot | End::Crash | End::StartFailed(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed() {
        assert!(matches!(parse_status_line("ready"), StatusLine::Ready));
        assert!(matches!(
            parse_status_line("exit 3"),
            StatusLine::End(End::Exit(3))
        ));
        assert!(matches!(
            parse_status_line("signal 9"),
            StatusLine::End(End::Signal(9))
        ));
        assert!(
            matches!(parse_status_line("error no root"), StatusLine::Error(m) if m == "no root")
        );
        assert!(matches!(parse_status_line("exit x"), StatusLine::Unknown));
    }

    #[test]
    fn exit_with_status_codes() {
        assert_eq!(end_status_code(&End::Exit(0)), 0);
        assert_eq!(end_status_code(&End::Exit(7)), 7);
        assert_eq!(end_status_code(&End::Signal(9)), 137);
        assert_eq!(end_status_code(&End::Poweroff), 0);
        assert_eq!(end_status_code(&End::Crash), 1);
    }
}
