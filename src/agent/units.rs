//! The agent's per-unit runtime: carrying out the engine's actions
//! (spawn, stop, kill), capturing output, and turning the end of a unit's
//! top process into the engine's `End`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use mio::Interest;
use mio::unix::SourceFd;
use nix::sys::wait::WaitStatus;

use super::{Agent, Source};
use crate::config::{Config, ReadyKind, Unit, UnitKind};
use crate::logbuf::{Admit, LOG_BURST, LOG_PER_SECOND, LineSplitter, RateLimit, Ring, escape_line};
use crate::logging::UNIT_TARGET_PREFIX;
use crate::logging::error_chain;
use crate::supervisor::{Action, End, Input};
use crate::sys;
use crate::zone::protocol::{self, Failure, Message, Outcome, Report};
use crate::zone::{preflight, start};

/// Most bytes read from one unit's output per wake-up, so a flooding unit
/// cannot starve the loop.
const READ_BUDGET: usize = 256 * 1024;

/// Every unit's runtime and the maps that lead to them. Invariant: a PID
/// is in `pids` exactly while its unit's runtime holds that process.
#[derive(Default)]
pub(super) struct Runtimes {
    /// By unit name.
    units: HashMap<String, UnitRt>,
    /// Unit of each top process, by PID.
    pids: HashMap<i32, String>,
    /// Units whose output was not all read in the last wake-up.
    pending_reads: Vec<String>,
    /// Config of units a reload removed that are still stopping.
    retiring: HashMap<String, Unit>,
}

impl Runtimes {
    /// Room for `n` units in the maps (see `Agent::reserve_runtimes`).
    pub(super) fn reserve(&mut self, n: usize) {
        self.units.reserve(n);
        self.pids.reserve(n);
    }

    /// Creates the unit's runtime (log ring, no fds) if it has none.
    pub(super) fn ensure(&mut self, unit: &str) {
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

    /// The pidfd of `unit`'s top process, while it runs.
    pub(super) fn pidfd(&self, unit: &str) -> Option<BorrowedFd<'_>> {
        let proc = self.units.get(unit)?.proc.as_ref()?;
        Some(proc.child.pidfd.as_fd())
    }

    /// Records `proc`, PID `pid`, as `unit`'s top process.
    fn set_running(&mut self, unit: &str, pid: i32, proc: Proc) {
        self.pids.insert(pid, unit.to_string());
        if let Some(rt) = self.units.get_mut(unit) {
            rt.proc = Some(proc);
        }
    }

    /// The unit whose top process `pid` was, which was just reaped.
    pub(super) fn take_pid(&mut self, pid: i32) -> Option<String> {
        self.pids.remove(&pid)
    }

    /// Every unit that has a top process, with its PID.
    fn live(&self) -> Vec<(String, i32)> {
        self.pids
            .iter()
            .map(|(pid, unit)| (unit.clone(), *pid))
            .collect()
    }

    /// Units whose output is still to be read; the list is emptied.
    pub(super) fn take_pending_reads(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending_reads)
    }

    pub(super) fn has_pending_reads(&self) -> bool {
        !self.pending_reads.is_empty()
    }

    /// The last config of a unit a reload removed, while it stops.
    fn retiring(&self, unit: &str) -> Option<&Unit> {
        self.retiring.get(unit)
    }

    /// Units a reload removed that are still stopping.
    pub(super) fn retiring_units(&self) -> impl Iterator<Item = &Unit> {
        self.retiring.values()
    }

    pub(super) fn has_retiring(&self) -> bool {
        !self.retiring.is_empty()
    }

    /// After a reload to `config`: the `removed` units stop under their
    /// last config; a unit an earlier reload removed that is back is no
    /// longer retiring.
    pub(super) fn retire(&mut self, config: &Config, removed: impl IntoIterator<Item = Unit>) {
        for unit in &config.units {
            self.retiring.remove(&unit.name);
        }
        for unit in removed {
            self.retiring.insert(unit.name.clone(), unit);
        }
    }

    /// Forgets a unit a reload removed, now that it is down; returns its
    /// runtime, to be released.
    pub(super) fn forget(&mut self, unit: &str) -> Option<UnitRt> {
        self.retiring.remove(unit);
        self.units.remove(unit)
    }

    /// The last `lines` lines of `unit`'s output (all of the ring when
    /// `None`).
    pub(super) fn tail(&self, unit: &str, lines: Option<usize>) -> Vec<u8> {
        self.units
            .get(unit)
            .map(|u| u.ring.tail(lines))
            .unwrap_or_default()
    }

    /// Streams `unit`'s new output to the control connection `id`.
    pub(super) fn follow(&mut self, unit: &str, id: usize) {
        if let Some(u) = self.units.get_mut(unit) {
            u.followers.push(id);
        }
    }

    /// Whether `id` follows some unit's output.
    pub(super) fn is_following(&self, id: usize) -> bool {
        self.units.values().any(|u| u.followers.contains(&id))
    }

    /// Stops streaming any unit's output to `id`.
    pub(super) fn unfollow(&mut self, id: usize) {
        for u in self.units.values_mut() {
            u.followers.retain(|c| *c != id);
        }
    }
}

/// A unit's live resources. Only a unit with a process holds fds (its
/// output pipe, pidfd and start channel); the ring outlives its runs.
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
    followers: Vec<usize>,
}

struct Proc {
    /// When the agent began starting it: the origin of the start timings
    /// logged at debug level.
    spawned_at: Instant,
    child: Child,
    /// A guest's monitor: its wait status says how the guest ended.
    guest: bool,
}

/// A process the agent started: a zone's init or a `ctl exec` helper,
/// which report over the zone start channel, or a guest's monitor, which
/// has none.
pub(super) struct Child {
    pub(super) pidfd: OwnedFd,
    /// The agent's end of the zone start channel, registered with the poll.
    channel: Option<(OwnedFd, mio::Token)>,
    /// What came over the channel so far.
    pub(super) report: Report,
}

impl Child {
    /// Takes in every message waiting on the channel; returns true when
    /// one of them made the start ready.
    pub(super) fn read(&mut self) -> bool {
        let mut ready = false;
        if let Some((fd, _)) = &self.channel {
            for msg in protocol::drain(fd.as_fd()) {
                ready |= self.report.record(msg);
            }
        }
        ready
    }
}

impl Agent {
    pub(super) fn act(&mut self, action: Action, queue: &mut std::collections::VecDeque<Input>) {
        match action {
            Action::Spawn(unit) => queue.extend(self.spawn_unit(&unit)),
            Action::Stop { unit, pid } => {
                let cfg = self
                    .config
                    .unit(&unit)
                    .or_else(|| self.runtimes.retiring(&unit));
                let sig = match cfg.map(|u| &u.kind) {
                    Some(UnitKind::Zone(z)) => z.stop_signal,
                    _ => libc::SIGTERM,
                };
                self.signal_unit(&unit, pid, sig);
                // A stopped command would keep the stop signal pending
                // until stop_timeout ends in a kill: wake it to handle it
                // (the zone's init forwards SIGCONT like any signal).
                self.signal_unit(&unit, pid, libc::SIGCONT);
            }
            Action::Kill { unit, pid } => {
                log::warn!("{unit}: stop_timeout reached, killing it");
                self.signal_unit(&unit, pid, libc::SIGKILL);
                self.cgroups.kill(&unit);
            }
            Action::Probe { unit, check } => queue.extend(self.start_probe(&unit, check)),
            Action::CancelProbe { unit, overdue } => self.cancel_probe(&unit, overdue),
            Action::Faulted { unit, end, reason } => {
                log::warn!("{unit}: {}: {reason}; stopping it", end.describe());
            }
            Action::GaveUp { unit, reason } => log::error!("{unit}: failed: {reason}"),
        }
    }

    fn signal_unit(&mut self, unit: &str, pid: i32, sig: i32) {
        let Some(pidfd) = self.runtimes.pidfd(unit) else {
            return;
        };
        if let Err(e) = sys::process::pidfd_send_signal(pidfd, sig) {
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
        for (unit, pid) in self.runtimes.live() {
            self.signal_unit(&unit, pid, libc::SIGKILL);
        }
        self.kill_execs();
    }

    /// Drops a unit's runtime: its output pipe and its log followers.
    pub(super) fn release_unit(&mut self, name: &str, mut rt: UnitRt) {
        self.unwatch_output(rt.out.take());
        self.sources
            .retain(|_, s| !matches!(s, Source::Output(u) | Source::Status(u) if u == name));
        for id in rt.followers {
            self.end_follow(id);
        }
    }

    /// A fresh output pipe for the unit's next run: the read end is
    /// watched, the write end returned for the child (and closed here once
    /// the child has its copy).
    fn open_output(&mut self, unit: &str) -> io::Result<OwnedFd> {
        self.close_output(unit);
        self.runtimes.ensure(unit);
        let (rx, tx) = sys::fd::pipe()?;
        let token = self.token(Source::Output(unit.to_string()));
        let res = sys::fd::set_nonblocking(rx.as_fd()).and_then(|()| {
            self.poll
                .registry()
                .register(&mut SourceFd(&rx.as_raw_fd()), token, Interest::READABLE)
        });
        if let Err(e) = res {
            self.sources.remove(&token);
            return Err(e);
        }
        if let Some(rt) = self.runtimes.units.get_mut(unit) {
            rt.out = Some((File::from(rx), token));
        }
        Ok(tx)
    }

    /// Reads what is left of a finished run's output and closes the pipe.
    fn close_output(&mut self, unit: &str) {
        self.read_output(unit);
        let out = self
            .runtimes
            .units
            .get_mut(unit)
            .and_then(|rt| rt.out.take());
        self.unwatch_output(out);
    }

    fn unwatch_output(&mut self, out: Option<(File, mio::Token)>) {
        if let Some((file, token)) = out {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&file.as_raw_fd()));
            self.sources.remove(&token);
        }
    }

    /// Watches the agent's end of a zone start channel under `source`:
    /// the [`Child`] for a process that reports over it.
    pub(super) fn watch_channel(&mut self, pidfd: OwnedFd, fd: OwnedFd, source: Source) -> Child {
        let token = self.token(source);
        let res = sys::fd::set_nonblocking(fd.as_fd()).and_then(|()| {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
        });
        let channel = match res {
            Ok(()) => Some((fd, token)),
            Err(e) => {
                log::warn!("unable to watch a zone start channel: {e}");
                self.sources.remove(&token);
                None
            }
        };
        Child {
            pidfd,
            channel,
            report: Report::default(),
        }
    }

    /// Stops watching a child's channel.
    pub(super) fn unwatch_channel(&mut self, child: &Child) {
        if let Some((fd, token)) = &child.channel {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.sources.remove(token);
        }
    }

    /// Carries out `Spawn`; returns the engine inputs that answer it.
    fn spawn_unit(&mut self, unit: &str) -> Vec<Input> {
        let spawned_at = Instant::now();
        let failed = |reason: String, permanent: bool| start_failed(unit, reason, permanent);
        let Some(cfg) = self.config.unit(unit).cloned() else {
            return failed("not in the config".into(), true);
        };
        if let Some(reason) = self.blocked_by_mount(&cfg) {
            return failed(reason, true);
        }
        let zone = match &cfg.kind {
            UnitKind::Zone(z) => z,
            UnitKind::Guest(g) => return self.spawn_guest(unit, g),
        };
        if let Err(reason) = preflight::check(zone) {
            return failed(reason, true);
        }
        let group = match self.cgroups.prepare(unit, &zone.cgroup_limits()) {
            Ok(g) => g,
            Err(e) => return failed(error_chain(&e), cgroup_failure_is_permanent(&e)),
        };
        // A zone on a network sees its resolv.conf and hosts read-only.
        let net_files = match self.net.zone_files(&self.config, unit, zone) {
            Ok(m) => m,
            Err(reason) => return failed(reason, false),
        };
        let notify = match self.notify_pipe(unit) {
            Ok(n) => n,
            Err(e) => return failed(format!("unable to create the notify pipe: {e}"), false),
        };
        let mut zone = zone.clone();
        zone.mounts.extend(net_files);
        if matches!(
            cfg.common.ready.as_ref().map(|r| &r.kind),
            Some(ReadyKind::Systemd)
        ) {
            zone.env
                .insert("NOTIFY_SOCKET".into(), super::probe::NOTIFY_SOCKET.into());
        }
        let out = match self.open_output(unit) {
            Ok(tx) => tx,
            Err(e) => return failed(format!("unable to create the output pipe: {e}"), false),
        };
        let spawned = start::spawn(
            unit,
            &zone,
            out.as_fd(),
            group.as_ref().map(|g| g.as_fd()),
            notify.as_ref().map(|(fd, at)| start::Notify {
                fd: fd.as_fd(),
                at: *at,
            }),
        );
        drop(out);
        let started = match spawned {
            Ok(s) => s,
            Err(e) => {
                self.close_output(unit);
                let permanent = matches!(e, start::Error::Nul { .. });
                return failed(format!("unable to start: {}", error_chain(&e)), permanent);
            }
        };
        // The command holds the only write end now.
        drop(notify);
        // The zone's init is born and set up its side; the command waits
        // for `Go` until the agent's part is in place.
        let released = self
            .zone_outside_setup(unit, &zone, started.pidfd.as_fd())
            .and_then(|()| self.notify_socket(unit, started.pidfd.as_fd()))
            .and_then(|()| {
                Message::Go
                    .send(started.channel.as_fd())
                    .map_err(|e| format!("unable to release the zone's command: {e}"))
            });
        let mut child = self.watch_channel(
            started.pidfd,
            started.channel,
            Source::Status(unit.to_string()),
        );
        if let Err(reason) = released {
            // The command must not run without what it was promised: this
            // start ends here, with the reason, once the init is reaped.
            child.report.record(Message::StartFailed(reason));
            let _ = sys::process::pidfd_send_signal(child.pidfd.as_fd(), libc::SIGKILL);
        }
        self.runtimes.pids.insert(started.pid, unit.to_string());
        if let Some(rt) = self.runtimes.units.get_mut(unit) {
            rt.proc = Some(Proc {
                spawned_at,
                child,
                guest: false,
            });
        }
        log::info!("{unit}: started, pid {}", started.pid);
        vec![Input::Spawned {
            unit: unit.to_string(),
            pid: started.pid,
        }]
    }

    /// What the agent sets up for a zone from outside, after the zone's
    /// init is cloned (its pidfd `init` reaches its namespaces) and before
    /// its command is released with `Go`: a bridged zone's veth, addresses
    /// and routes.
    fn zone_outside_setup(
        &mut self,
        unit: &str,
        _zone: &crate::config::Zone,
        init: BorrowedFd<'_>,
    ) -> Result<(), String> {
        self.net.zone_start(&self.config, unit, init)
    }

    fn spawn_guest(&mut self, unit: &str, guest: &crate::config::Guest) -> Vec<Input> {
        if let Err(reason) = super::guest::preflight(guest) {
            return start_failed(unit, reason, true);
        }
        let limits = super::guest::cgroup_limits(guest, self.cgroups.has("memory"));
        let group = match self.cgroups.prepare(unit, &limits) {
            Ok(g) => g,
            Err(e) => return start_failed(unit, error_chain(&e), cgroup_failure_is_permanent(&e)),
        };
        let taps = match super::guest::open_taps(guest, &self.config.networks) {
            Ok(taps) => taps,
            Err(reason) => return start_failed(unit, reason, false),
        };
        // The agent's copies of the taps and of the console's read end
        // close when this returns: each then lives as long as its monitor.
        let spawned = self
            .open_output(unit)
            .map_err(|e| format!("unable to create the output pipe: {e}"))
            .and_then(|out| {
                let input = self
                    .console_pipe(unit)
                    .map_err(|e| format!("unable to create the console input pipe: {e}"))?;
                let group = group.as_ref().map(|g| g.as_fd());
                super::guest::spawn(guest, out.as_fd(), input.as_fd(), &taps, group)
                    .map_err(|e| error_chain(&e))
            });
        let started = match spawned {
            Ok(s) => s,
            Err(reason) => {
                self.close_output(unit);
                self.console_gone(unit);
                return start_failed(unit, reason, false);
            }
        };
        let child = self.watch_channel(
            started.pidfd,
            started.channel,
            Source::Status(unit.to_string()),
        );
        self.runtimes.set_running(
            unit,
            started.pid,
            Proc {
                child,
                guest: true,
                spawned_at: Instant::now(),
            },
        );
        log::info!("{unit}: monitor started, pid {}", started.pid);
        // Running once the monitor reports `ready` on its status pipe.
        vec![Input::Spawned {
            unit: unit.to_string(),
            pid: started.pid,
        }]
    }

    /// Reads what the zone's init reported.
    pub(super) fn read_status(&mut self, unit: &str) {
        let Some(proc) = self
            .runtimes
            .units
            .get_mut(unit)
            .and_then(|u| u.proc.as_mut())
        else {
            return;
        };
        if proc.child.read() {
            // The start latency as the agent sees it: from deciding to
            // spawn to the init's `Ready` (the command was executed).
            log::debug!(
                "{unit}: command running, {} us after spawn",
                proc.spawned_at.elapsed().as_micros()
            );
            self.feed(Input::Ready(unit.to_string()));
        }
    }

    /// The unit's top process was reaped with `status`.
    pub(super) fn unit_ended(&mut self, unit: &str, status: WaitStatus) {
        self.read_status(unit);
        self.close_output(unit);
        let Some(mut proc) = self
            .runtimes
            .units
            .get_mut(unit)
            .and_then(|u| u.proc.take())
        else {
            return;
        };
        self.unwatch_channel(&proc.child);
        self.cgroups.run_ended(unit);
        if proc.guest {
            self.console_gone(unit);
        }
        self.unit_probes_gone(unit);
        let outcome = if proc.guest {
            let reported = proc.child.report.failure.take().map(|f| f.reason);
            match super::guest::outcome(status, reported) {
                super::guest::Outcome::Ended(end) => Outcome::Ended(end),
                super::guest::Outcome::SetupFailed(reason) => Outcome::Failed(Failure {
                    reason,
                    permanent: true,
                    status: 1,
                }),
            }
        } else {
            proc.child.report.outcome(status)
        };
        let (input, exit_code) = match outcome {
            Outcome::Failed(f) => {
                log::error!("{unit}: {}", f.reason);
                let input = Input::StartFailed {
                    unit: unit.to_string(),
                    reason: f.reason,
                    permanent: f.permanent,
                };
                (input, f.status)
            }
            Outcome::Ended(end) => {
                log::info!("{unit}: ended ({})", end.describe());
                log::debug!(
                    "{unit}: reaped {} us after spawn",
                    proc.spawned_at.elapsed().as_micros()
                );
                let code = end_status_code(&end);
                let input = Input::Ended {
                    unit: unit.to_string(),
                    end,
                };
                (input, code)
            }
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
        let Some(rt) = self.runtimes.units.get_mut(unit) else {
            return;
        };
        let mut buf = [0u8; 8192];
        let mut total = 0;
        let mut chunks: Vec<u8> = Vec::new();
        loop {
            if total >= READ_BUDGET {
                self.runtimes.pending_reads.push(unit.to_string());
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
        let pattern = self.log_pattern(unit);
        let mut ready = false;
        let Some(rt) = self.runtimes.units.get_mut(unit) else {
            return;
        };
        let (splitter, rate) = (&mut rt.splitter, &mut rt.rate);
        let notice = |dropped: u64| {
            log::warn!(target: &target, "({dropped} lines not logged: rate limit; `zonit ctl logs` has them)");
        };
        splitter.feed(&chunks, |line| {
            if let Some(p) = &pattern {
                ready |= String::from_utf8_lossy(line).contains(p.as_str());
            }
            match rate.admit(now) {
                Admit::Pass { dropped } => {
                    if dropped > 0 {
                        notice(dropped);
                    }
                    log::info!(target: &target, "{}", escape_line(line));
                }
                Admit::Notice { dropped } => notice(dropped),
                Admit::Drop => {}
            }
        });
        let followers = rt.followers.clone();
        for id in followers {
            self.send_log(id, &chunks);
        }
        if ready {
            self.feed_readiness(Input::Notified(unit.to_string()));
        }
    }
}

/// The engine's answer to a start that failed, logged.
fn start_failed(unit: &str, reason: String, permanent: bool) -> Vec<Input> {
    log::error!("{unit}: {reason}");
    vec![Input::StartFailed {
        unit: unit.to_string(),
        reason,
        permanent,
    }]
}

/// Whether a cgroup failure recurs at every start until the host
/// changes: a busy leaf group empties and running out of fds or memory
/// passes; a missing controller does not.
fn cgroup_failure_is_permanent(e: &super::cgroup::Error) -> bool {
    !matches!(e, super::cgroup::Error::Busy { .. })
        && !matches!(e, super::cgroup::Error::Io { source, .. } if sys::is_transient(source))
}

/// The status `exit_with` reports for an end: the exit code, 128 + signal,
/// 0 for a guest poweroff, 1 for anything else.
pub(super) fn end_status_code(end: &End) -> i32 {
    match end {
        End::Exit(c) => *c,
        End::Signal(s) => 128 + s,
        End::Poweroff => 0,
        End::Reboot | End::Crash | End::StartFailed(_) | End::Unhealthy => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_with_status_codes() {
        assert_eq!(end_status_code(&End::Exit(0)), 0);
        assert_eq!(end_status_code(&End::Exit(7)), 7);
        assert_eq!(end_status_code(&End::Signal(9)), 137);
        assert_eq!(end_status_code(&End::Poweroff), 0);
        assert_eq!(end_status_code(&End::Crash), 1);
    }
}
