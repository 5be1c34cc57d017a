//! The agent: zonit's single event loop.
//!
//! One `mio` poll over the signal pipe, the control socket and its
//! connections, and every unit's output and status pipes, with the next
//! supervision timer as the poll timeout: an idle agent sleeps until
//! something happens. Every wake-up reaps with `WNOHANG` until nothing is
//! left, orphans included.
//!
//! Invariant: the agent is single-threaded, which is what lets the zone
//! spawner fork without the async-signal-safety rules of a threaded
//! process. Nothing in here may panic or return early from the loop on a
//! per-request or per-unit error: it is logged and the loop goes on.

pub(crate) mod cgroup;
mod claim;
mod console;
mod control;
mod events;
mod exec;
mod guest;
mod metrics;
mod pid1;
mod probe;
mod units;
mod watchdog;

pub use watchdog::keep_alive as keep_watchdog_alive;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libc::SIGPWR;
use mio::{Events, Interest, Poll, Token};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;

use crate::config::{self, Config};
use crate::supervisor::{Input, Spec, Supervisor};

/// Why `zonit run` refuses `[[host.mounts]]`.
const HOST_MOUNTS_UNDER_RUN: &str = "[[host.mounts]] is only for zonit as PID 1: under `zonit run` the host's own init owns the mounts; mount the disks there (fstab, mount units) and remove [[host.mounts]] from this config";

const SIGNALS: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_DYNAMIC: usize = 2;

/// How zonit was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `zonit run`: supervise only; SIGTERM/SIGINT stop everything.
    Run,
    /// PID 1: the host is ours; shutdown ends in reboot(2).
    Init,
}

/// What an orderly shutdown ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    /// `zonit run` exits with this status.
    Exit(i32),
    /// Power off the host.
    Poweroff,
    /// Reboot the host.
    Reboot,
    /// Halt the host.
    Halt,
    /// Test mode (`exit_with` as PID 1): report this status (the unit's
    /// exit status) through QEMU's isa-debug-exit port, then power off.
    Verdict(i32),
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config has errors (each already formatted).
    #[error("the config has {} error(s)", .0.len())]
    Config(Vec<config::Diagnostic>),
    /// `[[host.mounts]]` under `zonit run`.
    #[error("{}", HOST_MOUNTS_UNDER_RUN)]
    HostMountsUnderRun,
    /// Setting up the event loop failed.
    #[error("unable to set up the event loop")]
    Poll(#[source] io::Error),
    /// Registering the signal handlers failed.
    #[error("unable to register signal handlers")]
    Signals(#[source] io::Error),
    /// The zones' seccomp filter does not compile.
    #[error("unable to build the zone seccomp filter")]
    Seccomp(#[source] &'static crate::zone::seccomp::Error),
    /// The control socket's path is taken or unusable.
    #[error("unable to claim the control socket")]
    Claim(#[source] claim::Error),
    /// The control socket could not be bound.
    #[error("unable to bind the control socket {path}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Where the agent takes what from.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file.
    pub config_path: PathBuf,
    /// Run or Init.
    pub mode: Mode,
    /// A log level that wins over `[host] log_level`, also across reloads
    /// (the kernel command line's `zonit.log=`).
    pub log_level: Option<log::LevelFilter>,
}

impl Options {
    /// The log level to use with `config`.
    pub fn log_level_for(&self, config: &Config) -> log::LevelFilter {
        self.log_level.unwrap_or(config.host.log_level)
    }
}

#[derive(Debug)]
enum Source {
    Output(String),
    Status(String),
    Conn(usize),
    ExecStatus(i32),
    /// A guest's console input pipe has room.
    ConsoleInput(String),
    /// An exec probe's channel, by helper PID.
    Probe(i32),
    /// A tcp probe's connect, by unit.
    Tcp(String),
    /// A unit's notify pipe or sd_notify socket.
    Notify(String),
    MetricsListener,
    MetricsConn(usize),
}

struct Shutdown {
    action: ShutdownAction,
    deadline: Instant,
    killed: bool,
}

/// The running agent.
///
/// Its parts, each owned here and each the state of one concern: the
/// engine (`sup`), the event sources (`poll`, `signals`, `sources`), the
/// control server (`control`, in `control.rs`), the units' runtimes
/// (`runtimes`, in `units.rs`), the `ctl exec` sessions (`execs`, in
/// `exec.rs`), the cgroups, and PID 1's extras (`pid1`).
pub struct Agent {
    opts: Options,
    config: Config,
    sup: Supervisor,
    poll: Poll,
    signals: Signals,
    sources: Sources,
    control: control::Server,
    runtimes: units::Runtimes,
    shutdown: Option<Shutdown>,
    cgroups: cgroup::Cgroups,
    pid1: pid1::Pid1State,
    /// Running `ctl exec` helpers by PID.
    execs: HashMap<i32, exec::Session>,
    /// Readiness and health probes, notify channels.
    probes: probe::Probes,
    /// The hardware watchdog, when one is configured and usable.
    watchdog: Option<watchdog::Hw>,
    /// Bridges, the nf_tables table, zones' network files.
    net: crate::net::host::HostNet,
    /// Guests' interactive consoles.
    consoles: console::Consoles,
    /// DHCP clients of host NICs and servers of bridges.
    dhcp: crate::net::dhcp::socket::Dhcp,
    /// `GET /metrics`, when configured.
    metrics: metrics::Server,
}

/// What each poll token stands for.
struct Sources {
    map: HashMap<Token, Source>,
    next: usize,
}

impl Sources {
    fn new() -> Self {
        Sources {
            map: HashMap::new(),
            next: FIRST_DYNAMIC,
        }
    }

    /// The number the next token will carry.
    fn next_id(&self) -> usize {
        self.next
    }

    /// A new token for `source`.
    fn add(&mut self, source: Source) -> Token {
        let t = Token(self.next);
        self.next += 1;
        self.map.insert(t, source);
        t
    }

    fn get(&self, t: &Token) -> Option<&Source> {
        self.map.get(t)
    }

    fn remove(&mut self, t: &Token) {
        self.map.remove(t);
    }

    fn retain(&mut self, keep: impl FnMut(&Token, &mut Source) -> bool) {
        self.map.retain(keep);
    }

    fn reserve(&mut self, n: usize) {
        self.map.reserve(n);
    }
}

fn specs(config: &Config) -> Vec<Spec> {
    config.units.iter().map(Spec::from).collect()
}

impl Agent {
    /// Loads the config and sets up the loop; nothing is started yet.
    pub fn new(opts: Options) -> Result<Self, Error> {
        let config = config::load(&opts.config_path).map_err(Error::Config)?;
        Self::build(opts, config)
    }

    fn build(opts: Options, config: Config) -> Result<Self, Error> {
        raise_nofile();
        if opts.mode == Mode::Run && !config.host.mounts.is_empty() {
            return Err(Error::HostMountsUnderRun);
        }
        // Compiled once here, so a broken filter stops the agent at start
        // and no zone start ever compiles it.
        crate::zone::seccomp::program().map_err(Error::Seccomp)?;
        // The logger starts at info so config errors are always shown; from
        // here on the operator's level applies.
        log::set_max_level(opts.log_level_for(&config));
        let poll = Poll::new().map_err(Error::Poll)?;
        let mut signals =
            Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPWR])
                .map_err(Error::Signals)?;
        if opts.mode == Mode::Init {
            for off in [3, 4, 5] {
                signals
                    .add_signal(libc::SIGRTMIN() + off)
                    .map_err(Error::Signals)?;
            }
        }
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(Error::Poll)?;
        let opts_mode = opts.mode;
        let net_files = net_files_dir(&config.host.control_socket);
        let mut agent = Agent {
            sup: Supervisor::new(specs(&config)),
            config,
            opts,
            poll,
            signals,
            sources: Sources::new(),
            control: control::Server::default(),
            runtimes: units::Runtimes::default(),
            shutdown: None,
            cgroups: cgroup::Cgroups::default(),
            pid1: pid1::Pid1State::default(),
            net: crate::net::host::HostNet::new(net_files),
            dhcp: Default::default(),
            execs: HashMap::new(),
            consoles: HashMap::new(),
            probes: probe::Probes::default(),
            watchdog: None,
            metrics: metrics::Server::default(),
        };
        // The socket first: an agent that cannot serve it (another one
        // does, the path is unusable) must leave no cgroup behind.
        let previous = agent.bind_control()?;
        if let Some(dir) = &previous.cgroup {
            claim::reclaim_cgroup(dir, previous.pid);
        }
        agent.cgroups = cgroup::Cgroups::detect(&cgroup_instance(opts_mode));
        let record = claim::Record {
            pid: Some(std::process::id() as i32),
            cgroup: agent.cgroups.base().map(Into::into),
        };
        agent.control.record_claim(&record);
        Ok(agent)
    }

    fn token(&mut self, source: Source) -> Token {
        self.sources.add(source)
    }

    /// Starts every `autostart` unit and runs until shutdown; returns the
    /// exit status for `zonit run`.
    pub fn run(mut self) -> ShutdownAction {
        self.reserve_runtimes();
        self.bind_metrics();
        self.apply_network();
        self.open_watchdog();
        self.start_autostart();
        let mut events = Events::with_capacity(256);
        loop {
            // A panic in one turn must not end PID 1 (the release profile
            // unwinds for this reason): log it and take the next turn.
            let turn =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.turn(&mut events)));
            match turn {
                Ok(Some(action)) => {
                    self.release_watchdog();
                    self.dhcp.release(self.poll.registry(), Instant::now());
                    self.net.teardown();
                    return action;
                }
                Ok(None) => {}
                Err(_) => log::error!("the event loop caught a panic; carrying on"),
            }
        }
    }

    /// Every unit's runtime (16 KiB log ring; fds only come with a run)
    /// and the maps' room, made before the first zone is forked: each
    /// zone's init shares
    /// the agent's heap copy-on-write, and every heap page the agent
    /// rewrites after a fork (a map growing, a ring being made) becomes a
    /// private page of that zone.
    fn reserve_runtimes(&mut self) {
        let n = self.config.units.len();
        self.runtimes.reserve(n);
        // Output and status pipe of each unit, plus control connections.
        self.sources.reserve(2 * n + 16);
        for unit in &self.config.units {
            self.runtimes.ensure(&unit.name);
        }
    }

    /// One wake-up: wait, dispatch, reap, advance timers.
    fn turn(&mut self, events: &mut Events) -> Option<ShutdownAction> {
        // A shutdown begun outside the loop (say, at start by an
        // `exit_with` unit that cannot start) may already be complete:
        // nothing would wake the poll for it.
        if let Some(action) = self.check_shutdown() {
            return Some(action);
        }
        let timeout = self.timeout(Instant::now());
        self.metrics.turns += 1;
        if let Err(e) = self.poll.poll(events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            log::error!("poll failed: {e}");
            // Never spin: a broken poll still waits a little.
            std::thread::sleep(Duration::from_millis(100));
        }
        let tokens: Vec<(Token, bool)> = events
            .iter()
            .map(|e| (e.token(), e.is_write_closed() || e.is_error()))
            .collect();
        for (token, hangup) in tokens {
            self.dispatch(token, hangup);
        }
        for unit in self.runtimes.take_pending_reads() {
            self.read_output(&unit);
        }
        for id in self.control.take_pending() {
            self.on_conn(id, false);
        }
        if self.control.accept_due(Instant::now()) {
            self.accept();
        }
        self.dhcp.on_timer(Instant::now());
        self.reap();
        self.feed(Input::Tick);
        self.check_boot_done();
        self.check_exit_with_failed();
        self.tend_watchdog();
        self.check_shutdown()
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.runtimes.has_pending_reads() || self.control.has_pending() {
            return Some(Duration::ZERO);
        }
        let shutdown = self
            .shutdown
            .as_ref()
            .filter(|s| !s.killed)
            .map(|s| s.deadline);
        let watchdog = self.watchdog.as_ref().and_then(|w| w.next_deadline());
        [
            self.sup.next_deadline(),
            shutdown,
            self.control.accept_deadline(),
            self.dhcp.deadline(),
            watchdog,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.saturating_duration_since(now))
    }

    /// `hangup`: the other end of the source is closed for good.
    fn dispatch(&mut self, token: Token, hangup: bool) {
        match token {
            SIGNALS => self.on_signals(),
            LISTENER => self.accept(),
            t if crate::net::dhcp::socket::Dhcp::owns(t) => self.dhcp.on_ready(t, Instant::now()),
            t => match self.sources.get(&t) {
                Some(Source::Output(unit)) => {
                    let unit = unit.clone();
                    self.read_output(&unit);
                }
                Some(Source::Status(unit)) => {
                    let unit = unit.clone();
                    self.read_status(&unit);
                }
                Some(Source::Conn(id)) => {
                    let id = *id;
                    self.on_conn(id, hangup);
                }
                Some(Source::ExecStatus(pid)) => {
                    let pid = *pid;
                    self.read_exec_status(pid);
                }
                Some(Source::ConsoleInput(unit)) => {
                    let unit = unit.clone();
                    self.write_console(&unit);
                }
                Some(Source::Probe(pid)) => {
                    let pid = *pid;
                    self.probe_channel_event(pid);
                }
                Some(Source::Tcp(unit)) => {
                    let unit = unit.clone();
                    self.tcp_event(&unit);
                }
                Some(Source::Notify(unit)) => {
                    let unit = unit.clone();
                    self.notify_event(&unit);
                }
                Some(Source::MetricsListener) => self.metrics_accept(),
                Some(Source::MetricsConn(id)) => {
                    let id = *id;
                    self.on_metrics_conn(id);
                }
                None => {}
            },
        }
    }

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match (sig, self.opts.mode) {
                (SIGCHLD, _) => {} // reaped after every wake-up
                (SIGHUP, _) => {
                    log::info!(
                        "SIGHUP received, reloading {}",
                        self.opts.config_path.display()
                    );
                    let _ = self.reload_and_log();
                }
                (SIGTERM | SIGINT, Mode::Run) => {
                    log::info!("{} received, stopping every unit", signal_name(sig));
                    self.begin_shutdown(ShutdownAction::Exit(0));
                }
                (SIGTERM, Mode::Init) => self.begin_shutdown(ShutdownAction::Reboot),
                (SIGINT, Mode::Init) => match self.config.host.ctrl_alt_del {
                    config::CtrlAltDel::Reboot => self.begin_shutdown(ShutdownAction::Reboot),
                    config::CtrlAltDel::Poweroff => self.begin_shutdown(ShutdownAction::Poweroff),
                    config::CtrlAltDel::Ignore => log::info!("ctrl-alt-del ignored"),
                },
                (SIGUSR1, Mode::Init) => self.begin_shutdown(ShutdownAction::Halt),
                (SIGUSR2 | SIGPWR, Mode::Init) => self.begin_shutdown(ShutdownAction::Poweroff),
                (s, Mode::Init) if s == libc::SIGRTMIN() + 3 => {
                    self.begin_shutdown(ShutdownAction::Halt)
                }
                (s, Mode::Init) if s == libc::SIGRTMIN() + 4 => {
                    self.begin_shutdown(ShutdownAction::Poweroff)
                }
                (s, Mode::Init) if s == libc::SIGRTMIN() + 5 => {
                    self.begin_shutdown(ShutdownAction::Reboot)
                }
                (s, _) => log::debug!("ignoring {}", signal_name(s)),
            }
        }
    }

    /// Feeds one input and everything it leads to, then answers waiters.
    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let ended = match &input {
                Input::Ended { unit, .. } => Some(unit.clone()),
                _ => None,
            };
            match self.sup.handle(input, Instant::now()) {
                Ok(actions) => {
                    // The end as the engine recorded it (`unhealthy` for a
                    // unit it stopped for failed probes), as `status` shows.
                    let end = ended.and_then(|u| {
                        let st = self.sup.status(&u)?;
                        Some((st.last_exit.clone()?, u))
                    });
                    if let Some((end, unit)) = end {
                        self.note_end(&unit, &end);
                    }
                    self.note_changes();
                    for action in actions {
                        self.act(action, &mut queue);
                    }
                }
                Err(e) => log::warn!("{e}"),
            }
        }
        self.answer_stop_waiters();
        self.answer_start_waiters();
        if self.runtimes.has_retiring() {
            self.release_retired();
        }
    }

    fn begin_shutdown(&mut self, action: ShutdownAction) {
        if let Some(s) = &mut self.shutdown {
            s.action = action;
            return;
        }
        log::info!("shutting down ({action:?})");
        self.note_host("shutdown", format!("{action:?}").to_lowercase());
        self.shutdown = Some(Shutdown {
            action,
            deadline: Instant::now() + self.config.host.shutdown_timeout,
            killed: false,
        });
        self.feed(Input::Shutdown);
    }

    /// Returns the final action once every unit is down.
    fn check_shutdown(&mut self) -> Option<ShutdownAction> {
        let now = Instant::now();
        let s = self.shutdown.as_mut()?;
        if self.sup.all_down() {
            let action = s.action;
            for unit in &self.config.units {
                self.cgroups.remove(&unit.name);
            }
            self.cgroups.remove_base();
            return Some(action);
        }
        if !s.killed && now >= s.deadline {
            s.killed = true;
            log::warn!(
                "shutdown_timeout of {:?} reached, killing what is left",
                self.config.host.shutdown_timeout
            );
            self.kill_all();
        }
        None
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if self.exec_ended(pid.as_raw(), status)
                        || self.probe_reaped(pid.as_raw(), status)
                    {
                        continue;
                    }
                    match self.runtimes.take_pid(pid.as_raw()) {
                        Some(unit) => self.unit_ended(&unit, status),
                        None => log::debug!("reaped orphan {pid}"),
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: nothing left
            }
        }
    }

    /// Reloads and logs the outcome (SIGHUP and `ctl reload` alike).
    fn reload_and_log(&mut self) -> Result<String, Vec<String>> {
        let res = self.reload();
        match &res {
            Ok(msg) => {
                log::info!("{msg}");
                self.note_host("reload", msg.clone());
            }
            Err(errors) => {
                for e in errors {
                    log::error!("{e}");
                }
                log::error!("reload failed; the running config is unchanged");
                let msg = format!(
                    "failed ({} error(s)); the running config is unchanged",
                    errors.len()
                );
                self.note_host("reload", msg);
            }
        }
        res
    }

    /// Re-reads the config. On error the running config stays in place;
    /// on success removed units are stopped, new ones started (autostart),
    /// changed ones restarted, the rest left alone.
    fn reload(&mut self) -> Result<String, Vec<String>> {
        let new = config::load(&self.opts.config_path)
            .map_err(|d| d.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
        if self.opts.mode == Mode::Run && !new.host.mounts.is_empty() {
            return Err(vec![HOST_MOUNTS_UNDER_RUN.to_string()]);
        }
        if self.pid1.fallback {
            return Ok(self.adopt(new));
        }
        let old = std::mem::replace(&mut self.config, new);
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for unit in &self.config.units {
            match old.unit(&unit.name) {
                Some(before) if before == unit => {}
                Some(_) => changed.push(unit.name.clone()),
                None if unit.common.autostart => added.push(unit.name.clone()),
                None => {}
            }
        }
        let removed: Vec<String> = old
            .units
            .iter()
            .filter(|u| self.config.unit(&u.name).is_none())
            .map(|u| u.name.clone())
            .collect();
        // A unit removed by an earlier reload may be back before it stopped.
        self.runtimes.retire(
            &self.config,
            removed.iter().filter_map(|name| old.unit(name).cloned()),
        );
        if old.host.control_socket != self.config.host.control_socket
            || old.host.hostname != self.config.host.hostname
            || old.host.modules != self.config.host.modules
            || old.host.sysctl != self.config.host.sysctl
            || old.host.mounts != self.config.host.mounts
            || old.host.watchdog != self.config.host.watchdog
            || old.host.metrics != self.config.host.metrics
        {
            log::warn!(
                "reload: changes to control_socket, metrics, hostname, modules, sysctl, mounts and watchdog take effect at the next start"
            );
        }
        log::set_max_level(self.opts.log_level_for(&self.config));
        self.apply_network();
        let actions = self
            .sup
            .reload(specs(&self.config), &changed, &added, Instant::now());
        self.note_changes();
        let mut queue = VecDeque::new();
        for action in actions {
            self.act(action, &mut queue);
        }
        while let Some(input) = queue.pop_front() {
            self.feed(input);
        }
        self.release_retired();
        Ok(format!(
            "reloaded: {} added, {} changed, {} removed",
            added.len(),
            changed.len(),
            removed.len()
        ))
    }

    /// Brings the host's networking in line with the config: NICs,
    /// bridges and the firewall table first, then the DHCP clients and
    /// servers that use them.
    fn apply_network(&mut self) {
        self.net.apply(&self.config);
        self.dhcp
            .apply(&self.config, self.poll.registry(), Instant::now());
    }

    /// Frees the runtime of units a reload removed, once they are down.
    fn release_retired(&mut self) {
        for name in self.sup.take_retired() {
            self.cgroups.remove(&name);
            self.drop_console(&name);
            if let Some(rt) = self.runtimes.forget(&name) {
                self.release_unit(&name, rt);
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as systemd does
/// for itself: the agent holds a few fds per running unit and per client,
/// and PID 1 starts with a soft limit of 1024. Units inherit the raised
/// limit unless their `rlimits` set `nofile` (docs/config.md).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => log::debug!("open files limit raised from {soft} to {hard}"),
            Err(e) => log::warn!("unable to raise the open files limit from {soft} to {hard}: {e}"),
        },
        Ok(_) => {}
        Err(e) => log::warn!("unable to read the open files limit: {e}"),
    }
}

/// Where zones' generated `resolv.conf` and `hosts` live: beside the
/// control socket, so each agent has its own.
fn net_files_dir(control_socket: &std::path::Path) -> PathBuf {
    control_socket
        .parent()
        .unwrap_or(std::path::Path::new("/run/zonit"))
        .join("net")
}

fn cgroup_instance(mode: Mode) -> String {
    match mode {
        Mode::Init => "zonit".into(),
        Mode::Run => {
            let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
            format!("zonit-run-{}", id.trim().get(..8).unwrap_or("0"))
        }
    }
}

fn signal_name(sig: i32) -> String {
    crate::supervisor::policy::signal_name(sig)
}
