//! The supervision engine: a pure state machine over every unit.
//!
//! Inputs are operator commands, process events and the passage of time;
//! outputs are [`Action`]s the runtime carries out. Nothing here touches the
//! system or reads a clock: `now` is always passed in, so the whole restart and
//! ordering policy is unit-tested with a fake clock.
//!
//! Wanted state ([`Want`]) is kept apart from observed state ([`State`]): the
//! operator says what should run, and [`Supervisor::settle`] reconciles,
//! honouring `after` for starts (a unit waits for those of its dependencies
//! that are wanted up) and in reverse for stops (a unit being stopped waits
//! for its dependents that are being stopped too).
//!
//! Readiness and health: a unit with a [`ReadySpec`] stays `starting` after
//! its command runs until it says so (`Notified`) or a probe succeeds, and
//! its dependents wait that long; not ready within the timeout is a failed
//! start. A unit with a [`HealthSpec`] is probed while it runs; `retries`
//! failures in a row end it as `unhealthy`. The engine decides when a probe
//! runs and when it has run too long; the runtime only carries it out.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{self, Backoff, OnReboot, RestartPolicy, StartLimit, UnitKind};

use super::policy::{End, backoff_delay, should_restart};

/// Observed state of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not running, not wanted (or never started).
    Stopped,
    /// Wanted up: waiting for dependencies, or spawned and not yet ready.
    Starting,
    /// Its command is running.
    Running,
    /// Stop requested, waiting for the process to end.
    Stopping,
    /// Waiting to be restarted.
    Backoff,
    /// Ended on its own and not to be restarted.
    Exited,
    /// Start limit hit, or could not be started.
    Failed,
}

impl State {
    /// Every state, in the order `status` documents them.
    pub const ALL: [State; 7] = [
        State::Stopped,
        State::Starting,
        State::Running,
        State::Stopping,
        State::Backoff,
        State::Exited,
        State::Failed,
    ];

    /// Lower-case name used in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }
}

/// What the operator wants of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Should be running.
    Up,
    /// Should not be running.
    Down,
}

/// How a unit becomes ready, as far as the engine cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadySpec {
    /// Not ready this long after the spawn: the start failed.
    pub timeout: Duration,
    /// A probe to repeat until it succeeds; `None` when the unit tells
    /// (`Input::Notified`).
    pub probe: Option<ReadyProbe>,
}

/// How a readiness probe is repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyProbe {
    /// Pause from the end of one try to the start of the next.
    pub interval: Duration,
    /// Bound on one try: a try still running then failed.
    pub timeout: Duration,
}

/// A unit's health probing, as far as the engine cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSpec {
    /// Pause from the end of one probe to the start of the next.
    pub interval: Duration,
    /// Bound on one probe.
    pub timeout: Duration,
    /// Failures in a row that end the unit.
    pub retries: u32,
}

/// Which check a probe is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The unit's `ready` probe.
    Ready,
    /// The unit's `health` probe.
    Health,
}

/// What the health probes say of a running unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No probe has passed yet.
    Starting,
    /// The last probe passed.
    Healthy,
    /// `retries` probes failed in a row; the unit is being stopped.
    Unhealthy,
}

impl Health {
    /// Lower-case name used in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A unit's probe, as the engine schedules it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeState {
    /// None planned.
    Idle,
    /// The next one starts at this time.
    Due(Instant),
    /// One is running; past the deadline (if any) it has failed.
    Running(Option<Instant>),
}

/// The parts of a unit's config the engine needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Unit name.
    pub name: String,
    /// Units this one starts after.
    pub after: Vec<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Restart backoff.
    pub backoff: Backoff,
    /// Optional start limit.
    pub start_limit: Option<StartLimit>,
    /// Grace period between stop request and kill.
    pub stop_timeout: Duration,
    /// A guest reboot restarts the unit whatever the policy.
    pub reboot_restarts: bool,
    /// How it becomes ready; `None`: once its command runs.
    pub ready: Option<ReadySpec>,
    /// Its health probing.
    pub health: Option<HealthSpec>,
}

impl From<&config::Unit> for Spec {
    fn from(u: &config::Unit) -> Self {
        Spec {
            name: u.name.clone(),
            after: u.common.after.clone(),
            restart: u.common.restart,
            backoff: u.common.backoff,
            start_limit: u.common.start_limit,
            stop_timeout: u.common.stop_timeout,
            reboot_restarts: match &u.kind {
                UnitKind::Guest(g) => g.on_reboot == OnReboot::Restart,
                UnitKind::Zone(_) => false,
            },
            ready: u.common.ready.as_ref().map(|r| ReadySpec {
                timeout: r.timeout,
                probe: match r.kind {
                    config::ReadyKind::Probe {
                        interval, timeout, ..
                    } => Some(ReadyProbe { interval, timeout }),
                    _ => None,
                },
            }),
            health: u.common.health.as_ref().map(|h| HealthSpec {
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
            }),
        }
    }
}

/// An input to the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Operator: start the unit (clears `failed`/`exited`, resets counters).
    Start(String),
    /// Start several units together (boot, reload), so that `after` among
    /// them orders their starts.
    StartAll(Vec<String>),
    /// Operator: stop the unit; never followed by a restart.
    Stop(String),
    /// Operator: stop the unit if running, then start it.
    Restart(String),
    /// Operator: stop every unit in reverse dependency order.
    Shutdown,
    /// The runtime created the unit's top process.
    Spawned {
        /// Unit name.
        unit: String,
        /// Host PID of the top process.
        pid: i32,
    },
    /// The unit's command is running (executed).
    Ready(String),
    /// The unit said it is ready (notify fd, sd_notify, a log line).
    Notified(String),
    /// A probe the engine asked for (`Action::Probe`) ended.
    Probed {
        /// Unit name.
        unit: String,
        /// It succeeded.
        ok: bool,
    },
    /// The unit could not be started. `permanent` failures (a missing root,
    /// an unusable config) are not retried whatever the policy.
    StartFailed {
        /// Unit name.
        unit: String,
        /// What went wrong.
        reason: String,
        /// Retrying cannot help.
        permanent: bool,
    },
    /// The unit's top process ended.
    Ended {
        /// Unit name.
        unit: String,
        /// How it ended.
        end: End,
    },
    /// Time has passed; due timers fire.
    Tick,
}

/// Something the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the unit's process; answer with `Spawned` then `Ready`, or
    /// `StartFailed`.
    Spawn(String),
    /// Ask the unit to stop (zone: its stop signal; guest: graceful stop).
    Stop {
        /// Unit name.
        unit: String,
        /// Host PID of the top process.
        pid: i32,
    },
    /// Kill the unit and everything in it.
    Kill {
        /// Unit name.
        unit: String,
        /// Host PID of the top process.
        pid: i32,
    },
    /// Run the unit's probe for `check`; answer with `Probed`.
    Probe {
        /// Unit name.
        unit: String,
        /// Which probe.
        check: Check,
    },
    /// Kill the unit's running probe; no `Probed` is expected for it.
    CancelProbe {
        /// Unit name.
        unit: String,
        /// Cancelled because it ran past its deadline (it failed), not
        /// because the unit is stopping or gone.
        overdue: bool,
    },
    /// Tell the operator (the log) why the engine stops a unit itself
    /// (unhealthy, not ready in time); the `Stop` follows.
    Faulted {
        /// Unit name.
        unit: String,
        /// The end recorded once its process is gone.
        end: End,
        /// Why, as `status` shows it.
        reason: String,
    },
    /// Tell the operator (the log) of a change no process event shows:
    /// the unit was given up on.
    GaveUp {
        /// Unit name.
        unit: String,
        /// Why, as `status` shows it.
        reason: String,
    },
}

/// Errors of operator inputs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No unit of that name.
    #[error("no unit named `{0}`")]
    UnknownUnit(String),
}

/// A unit's observed and wanted state, as shown by `status`.
#[derive(Debug, Clone)]
pub struct Status {
    /// Observed state.
    pub state: State,
    /// Wanted state.
    pub want: Want,
    /// Host PID of the top process while it exists.
    pub pid: Option<i32>,
    /// Automatic restarts since the agent started (counted when the
    /// restart is carried out, not when it is decided).
    pub restarts: u32,
    /// When the command became ready, while running.
    pub running_since: Option<Instant>,
    /// The last end.
    pub last_exit: Option<End>,
    /// Why the unit is failed or last failed to start.
    pub reason: Option<String>,
    /// What the health probes say, while the unit has a process and a
    /// `health` spec.
    pub health: Option<Health>,
    consecutive: u32,
    probe: ProbeState,
    /// Health probes failed in a row.
    failures: u32,
    /// Set when the engine itself stops the unit (not ready in time,
    /// unhealthy): the end recorded once its process is gone.
    fault: Option<End>,
    deadline: Option<Instant>,
    kill_sent: bool,
    spawn_pending: bool,
    starts: VecDeque<Instant>,
    /// Removed from the config by a reload: dropped once it has no process.
    retiring: bool,
    /// The next spawn is an automatic restart.
    restart_due: bool,
}

/// Where an operator's `stop` of a unit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The unit still has a process and is still wanted down.
    Pending,
    /// The unit came to rest in this state.
    Done(State),
    /// A later request wanted it up again (start, restart): the stop will
    /// never complete. The unit's state now.
    Superseded(State),
}

impl Status {
    /// Where a `stop` requested earlier stands now.
    pub fn stop_outcome(&self) -> StopOutcome {
        if self.want == Want::Up {
            return StopOutcome::Superseded(self.state);
        }
        match self.state {
            State::Running | State::Starting | State::Stopping => StopOutcome::Pending,
            other => StopOutcome::Done(other),
        }
    }

    /// When a unit waiting to be restarted will be.
    pub fn restart_at(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.state == State::Backoff)
    }

    fn new() -> Self {
        Status {
            state: State::Stopped,
            want: Want::Down,
            pid: None,
            restarts: 0,
            running_since: None,
            last_exit: None,
            reason: None,
            health: None,
            consecutive: 0,
            probe: ProbeState::Idle,
            failures: 0,
            fault: None,
            deadline: None,
            kill_sent: false,
            spawn_pending: false,
            starts: VecDeque::new(),
            retiring: false,
            restart_due: false,
        }
    }

    /// The process exists (spawned, ready or stopping).
    fn has_process(&self) -> bool {
        self.pid.is_some() || self.spawn_pending
    }
}

#[derive(Debug, Clone)]
struct Entry {
    spec: Spec,
    status: Status,
}

/// The engine: every unit's spec and status.
#[derive(Debug, Default)]
pub struct Supervisor {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    retired: Vec<String>,
}

impl Supervisor {
    /// An engine for `specs`, all stopped. The specs must have unique names
    /// and acyclic `after` (config validation guarantees both).
    pub fn new(specs: Vec<Spec>) -> Self {
        let mut sup = Supervisor::default();
        for spec in specs {
            sup.index.insert(spec.name.clone(), sup.entries.len());
            sup.entries.push(Entry {
                spec,
                status: Status::new(),
            });
        }
        sup
    }

    /// Names of every unit, in config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.spec.name.as_str())
    }

    /// A unit's status.
    pub fn status(&self, name: &str) -> Option<&Status> {
        self.index.get(name).map(|&i| &self.entries[i].status)
    }

    /// A unit's spec.
    pub fn spec(&self, name: &str) -> Option<&Spec> {
        self.index.get(name).map(|&i| &self.entries[i].spec)
    }

    /// Every unit is without a process and none is wanted up.
    pub fn all_down(&self) -> bool {
        self.entries
            .iter()
            .all(|e| !e.status.has_process() && e.status.want == Want::Down)
    }

    /// The earliest pending timer, to use as the event loop's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .flat_map(|e| {
                let probe = match e.status.probe {
                    ProbeState::Due(t) | ProbeState::Running(Some(t)) => Some(t),
                    ProbeState::Idle | ProbeState::Running(None) => None,
                };
                [e.status.deadline, probe]
            })
            .flatten()
            .min()
    }

    /// Applies a new set of specs (config reload): units not in `specs`
    /// are stopped (in reverse `after` order) and then dropped; units named
    /// in `changed` that are running are restarted so they pick up their
    /// new config; units in `start` (new units with autostart) are started;
    /// every other unit is left alone.
    pub fn reload(
        &mut self,
        specs: Vec<Spec>,
        changed: &[String],
        start: &[String],
        now: Instant,
    ) -> Vec<Action> {
        let mut old: HashMap<String, Entry> = self
            .entries
            .drain(..)
            .map(|e| (e.spec.name.clone(), e))
            .collect();
        let mut actions = Vec::new();
        for spec in specs {
            let status = match old.remove(&spec.name) {
                // A unit removed by an earlier reload and still stopping
                // is back: it is no longer to be dropped.
                Some(e) => Status {
                    retiring: false,
                    ..e.status
                },
                None => Status::new(),
            };
            self.entries.push(Entry { spec, status });
        }
        // What is left was removed from the config.
        let mut removed: Vec<Entry> = old.into_values().collect();
        removed.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        for mut e in removed {
            e.status.want = Want::Down;
            e.status.retiring = true;
            if e.status.has_process() {
                self.entries.push(e);
            } else {
                self.retired.push(e.spec.name);
            }
        }
        self.reindex();
        for name in changed {
            if let Some(&i) = self.index.get(name) {
                let st = &mut self.entries[i].status;
                if st.want == Want::Up
                    && st.pid.is_some()
                    && matches!(st.state, State::Running | State::Starting)
                {
                    self.begin_stop(i, now, &mut actions);
                }
            }
        }
        for name in start {
            if let Some(&i) = self.index.get(name) {
                self.start(i);
            }
        }
        self.settle(now, &mut actions);
        actions
    }

    /// Units dropped by a reload since the last call; their runtime
    /// resources can be released.
    pub fn take_retired(&mut self) -> Vec<String> {
        std::mem::take(&mut self.retired)
    }

    fn reindex(&mut self) {
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.spec.name.clone(), i))
            .collect();
    }

    fn drop_if_retired(&mut self, i: usize) {
        let st = &self.entries[i].status;
        if st.retiring && !st.has_process() {
            let e = self.entries.remove(i);
            self.retired.push(e.spec.name);
            self.reindex();
        }
    }

    fn idx(&self, name: &str) -> Result<usize, Error> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownUnit(name.to_string()))
    }

    /// Feeds one input at time `now`; returns the actions to carry out.
    pub fn handle(&mut self, input: Input, now: Instant) -> Result<Vec<Action>, Error> {
        let mut actions = Vec::new();
        match input {
            Input::Start(name) => {
                let i = self.idx(&name)?;
                self.start(i);
            }
            Input::StartAll(names) => {
                let idx = names
                    .iter()
                    .map(|n| self.idx(n))
                    .collect::<Result<Vec<_>, _>>()?;
                for i in idx {
                    self.start(i);
                }
            }
            Input::Stop(name) => {
                let i = self.idx(&name)?;
                self.stop(i);
            }
            Input::Restart(name) => {
                let i = self.idx(&name)?;
                let st = &mut self.entries[i].status;
                if st.pid.is_some() && matches!(st.state, State::Running | State::Starting) {
                    st.want = Want::Up;
                    self.begin_stop(i, now, &mut actions);
                } else {
                    self.start(i);
                }
            }
            Input::Shutdown => {
                for i in 0..self.entries.len() {
                    self.stop(i);
                }
            }
            Input::Spawned { unit, pid } => {
                let i = self.idx(&unit)?;
                let e = &mut self.entries[i];
                e.status.spawn_pending = false;
                e.status.pid = Some(pid);
                if let Some(ready) = e.spec.ready {
                    e.status.deadline = Some(now + ready.timeout);
                }
            }
            Input::Ready(unit) => {
                let i = self.idx(&unit)?;
                let e = &mut self.entries[i];
                if e.status.state == State::Starting && e.status.pid.is_some() {
                    match e.spec.ready {
                        None => self.became_ready(i, now),
                        Some(ReadySpec { probe: Some(_), .. })
                            if e.status.probe == ProbeState::Idle =>
                        {
                            e.status.probe = ProbeState::Due(now);
                        }
                        Some(_) => {}
                    }
                }
            }
            Input::Notified(unit) => {
                let i = self.idx(&unit)?;
                let e = &self.entries[i];
                // The command may say so before its `Ready` is read: both
                // come in the same wake-up, in no set order.
                if e.status.state == State::Starting
                    && e.status.pid.is_some()
                    && e.spec.ready.is_some_and(|r| r.probe.is_none())
                {
                    self.became_ready(i, now);
                }
            }
            Input::Probed { unit, ok } => {
                let i = self.idx(&unit)?;
                if matches!(self.entries[i].status.probe, ProbeState::Running(_)) {
                    self.probed(i, ok, now, &mut actions);
                }
            }
            Input::StartFailed {
                unit,
                reason,
                permanent,
            } => {
                let i = self.idx(&unit)?;
                self.cancel_probe(i, &mut actions);
                let st = &mut self.entries[i].status;
                st.spawn_pending = false;
                st.pid = None;
                st.reason = Some(reason.clone());
                if permanent && st.state == State::Starting {
                    st.last_exit = Some(End::StartFailed(reason));
                    st.state = State::Failed;
                    st.want = Want::Down;
                } else {
                    self.ended(i, End::StartFailed(reason), now);
                }
                self.drop_if_retired(i);
            }
            Input::Ended { unit, end } => {
                let i = self.idx(&unit)?;
                self.cancel_probe(i, &mut actions);
                self.ended(i, end, now);
                self.drop_if_retired(i);
            }
            Input::Tick => self.fire_timers(now, &mut actions),
        }
        self.settle(now, &mut actions);
        self.run_due_probes(now, &mut actions);
        Ok(actions)
    }

    /// The unit is ready: `running`, and its health probing begins.
    fn became_ready(&mut self, i: usize, now: Instant) {
        let e = &mut self.entries[i];
        let st = &mut e.status;
        st.state = State::Running;
        st.running_since = Some(now);
        st.reason = None;
        st.deadline = None;
        st.failures = 0;
        match e.spec.health {
            Some(h) => {
                st.health = Some(Health::Starting);
                st.probe = ProbeState::Due(now + h.interval);
            }
            None => {
                st.health = None;
                st.probe = ProbeState::Idle;
            }
        }
    }

    /// A running probe of unit `i` ended, well or not (a timeout is a
    /// failure).
    fn probed(&mut self, i: usize, ok: bool, now: Instant, actions: &mut Vec<Action>) {
        let e = &mut self.entries[i];
        e.status.probe = ProbeState::Idle;
        match (e.status.state, e.spec.ready, e.spec.health) {
            (State::Starting, Some(ready), _) if e.status.pid.is_some() => {
                if ok {
                    self.became_ready(i, now);
                } else if let Some(probe) = ready.probe {
                    e.status.probe = ProbeState::Due(now + probe.interval);
                }
            }
            (State::Running, _, Some(health)) => {
                let st = &mut e.status;
                if ok {
                    st.failures = 0;
                    st.health = Some(Health::Healthy);
                } else {
                    st.failures = st.failures.saturating_add(1);
                }
                if st.failures >= health.retries {
                    st.health = Some(Health::Unhealthy);
                    let reason = format!("health probe failed {} times in a row", st.failures);
                    self.fault(i, End::Unhealthy, reason, now, actions);
                } else {
                    st.probe = ProbeState::Due(now + health.interval);
                }
            }
            _ => {}
        }
    }

    /// Stops unit `i`'s running probe, if any.
    fn cancel_probe(&mut self, i: usize, actions: &mut Vec<Action>) {
        let e = &mut self.entries[i];
        if matches!(e.status.probe, ProbeState::Running(_)) {
            actions.push(Action::CancelProbe {
                unit: e.spec.name.clone(),
                overdue: false,
            });
        }
        e.status.probe = ProbeState::Idle;
    }

    /// Starts every probe that is due, and fails every one past its
    /// deadline.
    fn run_due_probes(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            match e.status.probe {
                ProbeState::Due(t) if t <= now => {
                    let check = match e.status.state {
                        State::Starting => Check::Ready,
                        _ => Check::Health,
                    };
                    let deadline = match check {
                        Check::Ready => e.spec.ready.and_then(|r| r.probe).map(|p| now + p.timeout),
                        Check::Health => e.spec.health.map(|h| now + h.timeout),
                    };
                    e.status.probe = ProbeState::Running(deadline);
                    actions.push(Action::Probe {
                        unit: e.spec.name.clone(),
                        check,
                    });
                }
                ProbeState::Running(Some(d)) if d <= now => {
                    actions.push(Action::CancelProbe {
                        unit: e.spec.name.clone(),
                        overdue: true,
                    });
                    e.status.probe = ProbeState::Running(None);
                    self.probed(i, false, now, actions);
                }
                _ => {}
            }
        }
    }

    fn start(&mut self, i: usize) {
        let st = &mut self.entries[i].status;
        st.want = Want::Up;
        match st.state {
            State::Stopped | State::Exited | State::Failed | State::Backoff => {
                st.state = State::Starting;
                st.deadline = None;
                st.consecutive = 0;
                st.starts.clear();
                st.reason = None;
                st.restart_due = false;
            }
            State::Starting | State::Running | State::Stopping => {}
        }
    }

    fn stop(&mut self, i: usize) {
        let st = &mut self.entries[i].status;
        st.want = Want::Down;
        if !st.has_process() && matches!(st.state, State::Starting | State::Backoff) {
            st.state = State::Stopped;
            st.deadline = None;
        }
    }

    fn begin_stop(&mut self, i: usize, now: Instant, actions: &mut Vec<Action>) {
        self.cancel_probe(i, actions);
        let e = &mut self.entries[i];
        if let Some(pid) = e.status.pid {
            e.status.state = State::Stopping;
            e.status.deadline = Some(now + e.spec.stop_timeout);
            e.status.kill_sent = false;
            actions.push(Action::Stop {
                unit: e.spec.name.clone(),
                pid,
            });
        }
    }

    fn ended(&mut self, i: usize, end: End, now: Instant) {
        let e = &mut self.entries[i];
        let st = &mut e.status;
        let ran_for = st.running_since.map(|t| now.saturating_duration_since(t));
        st.pid = None;
        st.spawn_pending = false;
        st.running_since = None;
        st.deadline = None;
        st.kill_sent = false;
        st.probe = ProbeState::Idle;
        st.health = None;
        // A stop the engine made itself (not ready, unhealthy) ends as
        // that fault, and the restart policy decides what follows.
        let fault = st.fault.take();
        let operator_stop =
            st.want == Want::Down || (st.state == State::Stopping && fault.is_none());
        let end = fault.unwrap_or(end);
        st.last_exit = Some(end.clone());
        if operator_stop {
            st.state = if st.want == Want::Up {
                State::Starting
            } else {
                State::Stopped
            };
            return;
        }
        if should_restart(e.spec.restart, &end, e.spec.reboot_restarts) {
            if ran_for.is_some_and(|d| d >= e.spec.backoff.reset_after) {
                st.consecutive = 0;
            }
            st.consecutive = st.consecutive.saturating_add(1);
            st.restart_due = true;
            st.state = State::Backoff;
            st.deadline = Some(now + backoff_delay(&e.spec.backoff, st.consecutive));
        } else {
            st.state = match end {
                End::StartFailed(_) => State::Failed,
                _ => State::Exited,
            };
            st.want = Want::Down;
        }
    }

    fn fire_timers(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut not_ready = Vec::new();
        for (i, e) in self.entries.iter_mut().enumerate() {
            let st = &mut e.status;
            match st.deadline {
                Some(d) if d <= now => {}
                _ => continue,
            }
            st.deadline = None;
            match st.state {
                State::Backoff => st.state = State::Starting,
                State::Starting if st.pid.is_some() => {
                    if let Some(ready) = e.spec.ready {
                        not_ready.push((i, format!("not ready within {:?}", ready.timeout)));
                    }
                }
                State::Stopping => {
                    if let (Some(pid), false) = (st.pid, st.kill_sent) {
                        st.kill_sent = true;
                        actions.push(Action::Kill {
                            unit: e.spec.name.clone(),
                            pid,
                        });
                    }
                }
                _ => {}
            }
        }
        for (i, reason) in not_ready {
            self.fault(i, End::StartFailed(reason.clone()), reason, now, actions);
        }
    }

    /// The engine stops unit `i` itself: it ends as `end` whatever its
    /// process does, and the operator is told why before the stop.
    fn fault(
        &mut self,
        i: usize,
        end: End,
        reason: String,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let e = &mut self.entries[i];
        e.status.reason = Some(reason.clone());
        e.status.fault = Some(end.clone());
        actions.push(Action::Faulted {
            unit: e.spec.name.clone(),
            end,
            reason,
        });
        self.begin_stop(i, now, actions);
    }

    /// Brings observed state toward wanted state as far as ordering allows.
    fn settle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for i in 0..self.entries.len() {
            let st = &self.entries[i].status;
            match (st.want, st.state) {
                (Want::Up, State::Starting) if !st.has_process() && self.deps_ready(i) => {
                    self.spawn(i, now, actions);
                }
                (Want::Down, State::Running | State::Starting)
                    if st.pid.is_some() && !self.dependents_stopping(i) =>
                {
                    self.begin_stop(i, now, actions);
                }
                _ => {}
            }
        }
    }

    /// Every dependency that is wanted up is running.
    fn deps_ready(&self, i: usize) -> bool {
        self.entries[i].spec.after.iter().all(|dep| {
            self.index.get(dep).is_none_or(|&d| {
                let st = &self.entries[d].status;
                st.want == Want::Down || st.state == State::Running
            })
        })
    }

    /// Some unit that starts after `i` is being stopped and still has a
    /// process, so `i` must wait.
    fn dependents_stopping(&self, i: usize) -> bool {
        let name = &self.entries[i].spec.name;
        self.entries.iter().any(|e| {
            e.spec.after.iter().any(|a| a == name)
                && e.status.want == Want::Down
                && e.status.has_process()
        })
    }

    fn spawn(&mut self, i: usize, now: Instant, actions: &mut Vec<Action>) {
        let e = &mut self.entries[i];
        let st = &mut e.status;
        if let Some(limit) = e.spec.start_limit {
            while st
                .starts
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= limit.interval)
            {
                st.starts.pop_front();
            }
            if st.starts.len() >= limit.burst as usize {
                let reason = format!(
                    "start limit hit: {} starts within {:?}",
                    limit.burst, limit.interval
                );
                st.state = State::Failed;
                st.want = Want::Down;
                st.restart_due = false;
                st.reason = Some(reason.clone());
                actions.push(Action::GaveUp {
                    unit: e.spec.name.clone(),
                    reason,
                });
                return;
            }
            st.starts.push_back(now);
        }
        if std::mem::take(&mut st.restart_due) {
            st.restarts = st.restarts.saturating_add(1);
        }
        st.spawn_pending = true;
        actions.push(Action::Spawn(e.spec.name.clone()));
    }
}

#[cfg(test)]
mod tests;
