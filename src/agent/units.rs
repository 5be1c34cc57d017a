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
use crate::logbuf::{Admit, LOG_BURST, LOG_PER_SECOND, LineSplitter, RateLimit, Ring};
use crate::logging::UNIT_TARGET_PREFIX;
use crate::supervisor::{Action, End, Input};
use crate::sys;
use crate::zone::spawn;

/// Most bytes read from one unit's output per wake-up, so a flooding unit
/// cannot starve the loop.
const READ_BUDGET: usize = 256 * 1024;

/// A unit's live resources.
pub(super) struct UnitRt {
    out_rx: File,
    out_tx: OwnedFd,
    ring: Ring,
    splitter: LineSplitter,
    rate: RateLimit,
    proc: Option<Proc>,
    /// Control connections following this unit's output.
    pub(super) followers: Vec<usize>,
}

struct Proc {
    pidfd: OwnedFd,
    status: Option<(File, mio::Token)>,
    status_buf: Vec<u8>,
    /// What the zone's init reported about the command's end.
    reported: Option<End>,
    /// Setup error reported by the zone's init.
    error: Option<String>,
}

impl UnitRt {
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
                let sig = match self.config.unit(&unit).map(|u| &u.kind) {
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
    }

    pub(super) fn ensure_runtime_pub(&mut self, unit: &str) -> io::Result<()> {
        self.ensure_runtime(unit)
    }

    fn ensure_runtime(&mut self, unit: &str) -> io::Result<()> {
        if self.units.contains_key(unit) {
            return Ok(());
        }
        let (rx, tx) = sys::pipe()?;
        sys::set_nonblocking(rx.as_fd())?;
        let token = self.token(Source::Output(unit.to_string()));
        self.poll
            .registry()
            .register(&mut SourceFd(&rx.as_raw_fd()), token, Interest::READABLE)?;
        self.units.insert(
            unit.to_string(),
            UnitRt {
                out_rx: File::from(rx),
                out_tx: tx,
                ring: Ring::default(),
                splitter: LineSplitter::default(),
                rate: RateLimit::new(LOG_BURST, LOG_PER_SECOND, Instant::now()),
                proc: None,
                followers: Vec::new(),
            },
        );
        Ok(())
    }

    /// Carries out `Spawn`; returns the engine inputs that answer it.
    fn spawn_unit(&mut self, unit: &str) -> Vec<Input> {
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
        if let Err(e) = self.ensure_runtime(unit) {
            return failed(format!("unable to create the output pipe: {e}"), false);
        }
        let zone = match &cfg.kind {
            UnitKind::Zone(z) => z,
            UnitKind::Guest(_) => {
                return failed("guests are not supported by this build yet".into(), true);
            }
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
        let group = match self.cgroups.prepare(unit, zone) {
            Ok(g) => g,
            Err(e) => return failed(error_chain(&e), true),
        };
        let Some(rt) = self.units.get(unit) else {
            return failed("internal: runtime missing".into(), false);
        };
        let started = match spawn::spawn(zone, rt.out_tx.as_fd(), group.as_ref().map(|g| g.as_fd()))
        {
            Ok(s) => s,
            Err(e) => {
                let permanent = matches!(e, spawn::Error::Nul { .. });
                return failed(format!("unable to start: {}", error_chain(&e)), permanent);
            }
        };
        let status_token = self.token(Source::Status(unit.to_string()));
        let status = match sys::set_nonblocking(started.status.as_fd()).and_then(|()| {
            self.poll.registry().register(
                &mut SourceFd(&started.status.as_raw_fd()),
                status_token,
                Interest::READABLE,
            )
        }) {
            Ok(()) => Some((File::from(started.status), status_token)),
            Err(e) => {
                log::warn!("{unit}: unable to watch the status pipe: {e}");
                self.sources.remove(&status_token);
                None
            }
        };
        self.pids.insert(started.pid, unit.to_string());
        if let Some(rt) = self.units.get_mut(unit) {
            rt.proc = Some(Proc {
                pidfd: started.pidfd,
                status,
                status_buf: Vec::new(),
                reported: None,
                error: None,
            });
        }
        log::info!("{unit}: started, pid {}", started.pid);
        vec![Input::Spawned {
            unit: unit.to_string(),
            pid: started.pid,
        }]
    }

    /// Reads the zone init's status lines.
    pub(super) fn read_status(&mut self, unit: &str) {
        let mut ready = false;
        if let Some(proc) = self.units.get_mut(unit).and_then(|u| u.proc.as_mut()) {
            if let Some((file, _)) = &mut proc.status {
                let mut buf = [0u8; 512];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            // A well-behaved init writes a few short lines;
                            // bound what we keep in any case.
                            if proc.status_buf.len() < 4096 {
                                proc.status_buf.extend_from_slice(&buf[..n]);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            }
            while let Some(nl) = proc.status_buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = proc.status_buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line[..nl]).into_owned();
                match parse_status_line(&line) {
                    StatusLine::Ready => ready = true,
                    StatusLine::Error(msg) => proc.error = Some(msg),
                    StatusLine::End(end) => proc.reported = Some(end),
                    StatusLine::Unknown => {}
                }
            }
        }
        if ready {
            log::debug!("{unit}: command running");
            self.feed(Input::Ready(unit.to_string()));
        }
    }

    /// The unit's top process was reaped with `status`.
    pub(super) fn unit_ended(&mut self, unit: &str, status: WaitStatus) {
        self.read_status(unit);
        self.read_output(unit);
        let Some(proc) = self.units.get_mut(unit).and_then(|u| u.proc.take()) else {
            return;
        };
        if let Some((file, token)) = &proc.status {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&file.as_raw_fd()));
            self.sources.remove(token);
        }
        let input = if let Some(msg) = proc.error {
            log::error!("{unit}: {msg}");
            Input::StartFailed {
                unit: unit.to_string(),
                reason: msg,
                permanent: false,
            }
        } else {
            let end = proc.reported.unwrap_or(match status {
                WaitStatus::Exited(_, code) => End::Exit(code),
                WaitStatus::Signaled(_, sig, _) => End::Signal(sig as i32),
                _ => End::Crash,
            });
            log::info!("{unit}: ended ({})", end.describe());
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
            match rt.out_rx.read(&mut buf) {
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
        splitter.feed(&chunks, |line| match rate.admit(now) {
            Admit::Pass { dropped } => {
                if dropped > 0 {
                    log::warn!(target: &target, "({dropped} lines not logged: rate limit; `zonit ctl logs` has them)");
                }
                log::info!(target: &target, "{}", String::from_utf8_lossy(line));
            }
            Admit::Drop => {}
        });
        let followers = rt.followers.clone();
        for id in followers {
            self.send_log(id, &chunks);
        }
    }
}

enum StatusLine {
    Ready,
    Error(String),
    End(End),
    Unknown,
}

fn parse_status_line(line: &str) -> StatusLine {
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

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
