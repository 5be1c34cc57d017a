//! Table-style tests of the engine with a fake clock.

use std::time::{Duration, Instant};

use super::*;
use crate::config::{Backoff, RestartPolicy, StartLimit};

fn spec(name: &str, after: &[&str], restart: RestartPolicy) -> Spec {
    Spec {
        name: name.into(),
        after: after.iter().map(|s| s.to_string()).collect(),
        restart,
        backoff: Backoff::default(),
        start_limit: None,
        stop_timeout: Duration::from_secs(10),
        reboot_restarts: true,
        ready: None,
        health: None,
    }
}

/// A supervisor with a fake clock that answers Spawn actions the way the
/// runtime does (PIDs counting from 100) and records every action.
struct Harness {
    sup: Supervisor,
    t0: Instant,
    now: Instant,
    next_pid: i32,
    log: Vec<Action>,
}

impl Harness {
    fn new(specs: Vec<Spec>) -> Self {
        let t0 = Instant::now();
        Harness {
            sup: Supervisor::new(specs),
            t0,
            now: t0,
            next_pid: 100,
            log: Vec::new(),
        }
    }

    /// Feeds an input; spawns are answered with Spawned + Ready at once.
    fn feed(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(inp) = queue.pop_front() {
            for a in self.sup.handle(inp, self.now).unwrap() {
                if let Action::Spawn(u) = &a {
                    self.next_pid += 1;
                    queue.push_back(Input::Spawned {
                        unit: u.clone(),
                        pid: self.next_pid,
                    });
                    queue.push_back(Input::Ready(u.clone()));
                }
                self.log.push(a.clone());
                out.push(a);
            }
        }
        out
    }

    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.feed(Input::Tick)
    }

    fn advance_to_deadline(&mut self) -> Vec<Action> {
        let d = self.sup.next_deadline().unwrap();
        self.now = d;
        self.feed(Input::Tick)
    }

    fn state(&self, u: &str) -> State {
        self.sup.status(u).unwrap().state
    }

    fn pid(&self, u: &str) -> i32 {
        self.sup.status(u).unwrap().pid.unwrap()
    }

    fn end(&mut self, u: &str, end: End) -> Vec<Action> {
        self.feed(Input::Ended {
            unit: u.into(),
            end,
        })
    }

    fn elapsed_ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }
}

fn spawned(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

fn stopped(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { unit, .. } => Some(unit.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn start_spawns_and_ready_makes_running() {
    let mut h = Harness::new(vec![spec("web", &[], RestartPolicy::OnFailure)]);
    let a = h.feed(Input::Start("web".into()));
    assert_eq!(spawned(&a), vec!["web"]);
    assert_eq!(h.state("web"), State::Running);
    assert_eq!(h.pid("web"), 101);
}

#[test]
fn unknown_unit_is_an_error_not_a_panic() {
    let mut sup = Supervisor::new(vec![]);
    let err = sup
        .handle(Input::Start("nope".into()), Instant::now())
        .unwrap_err();
    assert_eq!(err, Error::UnknownUnit("nope".into()));
}

#[test]
fn on_failure_restarts_after_crash_with_doubling_backoff() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::OnFailure)]);
    h.feed(Input::Start("z".into()));
    let mut waits = Vec::new();
    for _ in 0..4 {
        h.end("z", End::Exit(1));
        assert_eq!(h.state("z"), State::Backoff);
        let before = h.elapsed_ms();
        let a = h.advance_to_deadline();
        waits.push(h.elapsed_ms() - before);
        assert_eq!(spawned(&a), vec!["z"]);
        assert_eq!(h.state("z"), State::Running);
    }
    assert_eq!(waits, vec![100, 200, 400, 800]);
    assert_eq!(h.sup.status("z").unwrap().restarts, 4);
}

#[test]
fn backoff_does_not_fire_early() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::OnFailure)]);
    h.feed(Input::Start("z".into()));
    h.end("z", End::Signal(9));
    assert!(spawned(&h.advance(Duration::from_millis(99))).is_empty());
    assert_eq!(h.state("z"), State::Backoff);
    assert_eq!(spawned(&h.advance(Duration::from_millis(1))), vec!["z"]);
}

#[test]
fn backoff_is_capped_at_max() {
    let mut s = spec("z", &[], RestartPolicy::Always);
    s.backoff.max = Duration::from_millis(300);
    let mut h = Harness::new(vec![s]);
    h.feed(Input::Start("z".into()));
    let mut waits = Vec::new();
    for _ in 0..5 {
        h.end("z", End::Exit(0));
        let before = h.elapsed_ms();
        h.advance_to_deadline();
        waits.push(h.elapsed_ms() - before);
    }
    assert_eq!(waits, vec![100, 200, 300, 300, 300]);
}

#[test]
fn restart_count_resets_after_running_reset_after() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::OnFailure)]);
    h.feed(Input::Start("z".into()));
    for _ in 0..3 {
        h.end("z", End::Exit(1));
        h.advance_to_deadline();
    }
    // Runs for a full minute: the next crash starts the backoff over.
    h.advance(Duration::from_secs(60));
    h.end("z", End::Exit(1));
    let before = h.elapsed_ms();
    h.advance_to_deadline();
    assert_eq!(h.elapsed_ms() - before, 100);
}

#[test]
fn on_failure_does_not_restart_clean_exit() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::OnFailure)]);
    h.feed(Input::Start("z".into()));
    h.end("z", End::Exit(0));
    assert_eq!(h.state("z"), State::Exited);
    assert_eq!(h.sup.next_deadline(), None);
    assert_eq!(h.sup.status("z").unwrap().last_exit, Some(End::Exit(0)));
}

#[test]
fn on_failure_does_not_restart_guest_poweroff() {
    let mut h = Harness::new(vec![spec("g", &[], RestartPolicy::OnFailure)]);
    h.feed(Input::Start("g".into()));
    h.end("g", End::Poweroff);
    assert_eq!(h.state("g"), State::Exited);
}

#[test]
fn never_policy_leaves_a_crash_exited() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::Never)]);
    h.feed(Input::Start("z".into()));
    h.end("z", End::Exit(2));
    assert_eq!(h.state("z"), State::Exited);
}

#[test]
fn guest_reboot_restarts_whatever_the_policy() {
    let mut h = Harness::new(vec![spec("g", &[], RestartPolicy::Never)]);
    h.feed(Input::Start("g".into()));
    h.end("g", End::Reboot);
    assert_eq!(h.state("g"), State::Backoff);
    assert_eq!(spawned(&h.advance_to_deadline()), vec!["g"]);
}

#[test]
fn guest_reboot_with_on_reboot_stop_ends_the_unit() {
    let mut s = spec("g", &[], RestartPolicy::OnFailure);
    s.reboot_restarts = false;
    let mut h = Harness::new(vec![s]);
    h.feed(Input::Start("g".into()));
    h.end("g", End::Reboot);
    assert_eq!(h.state("g"), State::Exited);
}

#[test]
fn operator_stop_is_never_followed_by_a_restart() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::Always)]);
    h.feed(Input::Start("z".into()));
    let pid = h.pid("z");
    let a = h.feed(Input::Stop("z".into()));
    assert_eq!(
        a,
        vec![Action::Stop {
            unit: "z".into(),
            pid
        }]
    );
    assert_eq!(h.state("z"), State::Stopping);
    h.end("z", End::Signal(15));
    assert_eq!(h.state("z"), State::Stopped);
    assert!(spawned(&h.advance(Duration::from_secs(120))).is_empty());
}

#[test]
fn stop_timeout_escalates_to_kill_once() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::Always)]);
    h.feed(Input::Start("z".into()));
    let pid = h.pid("z");
    h.feed(Input::Stop("z".into()));
    assert!(h.advance(Duration::from_millis(9_999)).is_empty());
    let a = h.advance(Duration::from_millis(1));
    assert_eq!(
        a,
        vec![Action::Kill {
            unit: "z".into(),
            pid
        }]
    );
    assert!(h.advance(Duration::from_secs(30)).is_empty());
    h.end("z", End::Signal(9));
    assert_eq!(h.state("z"), State::Stopped);
}

#[test]
fn stop_during_backoff_cancels_the_restart() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::Always)]);
    h.feed(Input::Start("z".into()));
    h.end("z", End::Exit(1));
    h.feed(Input::Stop("z".into()));
    assert_eq!(h.state("z"), State::Stopped);
    assert_eq!(h.sup.next_deadline(), None);
}

#[test]
fn restart_command_stops_then_starts() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::Never)]);
    h.feed(Input::Start("z".into()));
    let a = h.feed(Input::Restart("z".into()));
    assert_eq!(stopped(&a), vec!["z"]);
    let a = h.end("z", End::Signal(15));
    assert_eq!(spawned(&a), vec!["z"]);
    assert_eq!(h.state("z"), State::Running);
}

#[test]
fn start_of_failed_unit_resets_it() {
    let mut s = spec("z", &[], RestartPolicy::Always);
    s.start_limit = Some(StartLimit {
        burst: 2,
        interval: Duration::from_secs(10),
    });
    let mut h = Harness::new(vec![s]);
    h.feed(Input::Start("z".into()));
    h.end("z", End::Exit(1));
    h.advance_to_deadline();
    h.end("z", End::Exit(1));
    h.advance_to_deadline();
    assert_eq!(h.state("z"), State::Failed);
    assert!(
        h.sup
            .status("z")
            .unwrap()
            .reason
            .as_deref()
            .unwrap()
            .contains("start limit")
    );
    let a = h.feed(Input::Start("z".into()));
    assert_eq!(spawned(&a), vec!["z"]);
}

#[test]
fn start_limit_counts_only_starts_within_interval() {
    let mut s = spec("z", &[], RestartPolicy::Always);
    s.start_limit = Some(StartLimit {
        burst: 2,
        interval: Duration::from_millis(250),
    });
    s.backoff.initial = Duration::from_millis(300);
    s.backoff.max = Duration::from_millis(300);
    let mut h = Harness::new(vec![s]);
    h.feed(Input::Start("z".into()));
    for _ in 0..5 {
        h.end("z", End::Exit(1));
        h.advance_to_deadline();
        assert_eq!(h.state("z"), State::Running);
    }
}

#[test]
fn permanent_start_failure_makes_unit_failed_with_reason() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::Always)]);
    let mut sup_actions = h.sup.handle(Input::Start("z".into()), h.now).unwrap();
    assert_eq!(sup_actions.pop(), Some(Action::Spawn("z".into())));
    h.feed(Input::StartFailed {
        unit: "z".into(),
        reason: "root /zones/z does not exist".into(),
        permanent: true,
    });
    assert_eq!(h.state("z"), State::Failed);
    assert_eq!(h.sup.next_deadline(), None);
    assert!(
        h.sup
            .status("z")
            .unwrap()
            .reason
            .as_deref()
            .unwrap()
            .contains("/zones/z")
    );
}

#[test]
fn transient_start_failure_follows_the_policy() {
    let mut h = Harness::new(vec![spec("z", &[], RestartPolicy::OnFailure)]);
    h.sup.handle(Input::Start("z".into()), h.now).unwrap();
    h.feed(Input::StartFailed {
        unit: "z".into(),
        reason: "fork: EAGAIN".into(),
        permanent: false,
    });
    assert_eq!(h.state("z"), State::Backoff);
}

#[test]
fn after_orders_starts() {
    let mut h = Harness::new(vec![
        spec("app", &["db"], RestartPolicy::OnFailure),
        spec("db", &[], RestartPolicy::OnFailure),
    ]);
    // Start both with the runtime answering Ready only later.
    let now = h.now;
    let a = h
        .sup
        .handle(Input::StartAll(vec!["app".into(), "db".into()]), now)
        .unwrap();
    assert_eq!(spawned(&a), vec!["db"]);
    h.sup
        .handle(
            Input::Spawned {
                unit: "db".into(),
                pid: 7,
            },
            now,
        )
        .unwrap();
    assert_eq!(h.state("app"), State::Starting);
    let a = h.sup.handle(Input::Ready("db".into()), now).unwrap();
    assert_eq!(spawned(&a), vec!["app"]);
}

#[test]
fn after_does_not_wait_for_a_dependency_nobody_wants() {
    let mut h = Harness::new(vec![
        spec("app", &["db"], RestartPolicy::OnFailure),
        spec("db", &[], RestartPolicy::OnFailure),
    ]);
    let a = h.feed(Input::Start("app".into()));
    assert_eq!(spawned(&a), vec!["app"]);
}

#[test]
fn dependent_waits_while_dependency_is_in_backoff() {
    let mut h = Harness::new(vec![
        spec("db", &[], RestartPolicy::OnFailure),
        spec("app", &["db"], RestartPolicy::OnFailure),
    ]);
    h.feed(Input::Start("db".into()));
    h.end("db", End::Exit(1));
    let a = h.feed(Input::Start("app".into()));
    assert!(spawned(&a).is_empty());
    let a = h.advance_to_deadline();
    assert_eq!(spawned(&a), vec!["db", "app"]);
}

#[test]
fn shutdown_stops_in_reverse_after_order() {
    let mut h = Harness::new(vec![
        spec("db", &[], RestartPolicy::Always),
        spec("app", &["db"], RestartPolicy::Always),
        spec("web", &["app"], RestartPolicy::Always),
        spec("solo", &[], RestartPolicy::Always),
    ]);
    h.feed(Input::StartAll(
        ["web", "app", "db", "solo"].map(String::from).to_vec(),
    ));
    // Independent units stop in parallel with the head of the chain.
    let a = h.feed(Input::Shutdown);
    assert_eq!(stopped(&a), vec!["web", "solo"]);
    assert_eq!(h.state("app"), State::Running);
    let a = h.end("web", End::Signal(15));
    assert_eq!(stopped(&a), vec!["app"]);
    let a = h.end("app", End::Signal(15));
    assert_eq!(stopped(&a), vec!["db"]);
    h.end("solo", End::Exit(0));
    assert!(!h.sup.all_down());
    h.end("db", End::Exit(0));
    assert!(h.sup.all_down());
    assert!(spawned(&h.log).len() == 4);
}

#[test]
fn single_stop_does_not_wait_for_dependents_that_stay_up() {
    let mut h = Harness::new(vec![
        spec("db", &[], RestartPolicy::Always),
        spec("app", &["db"], RestartPolicy::Always),
    ]);
    h.feed(Input::Start("db".into()));
    h.feed(Input::Start("app".into()));
    let a = h.feed(Input::Stop("db".into()));
    assert_eq!(stopped(&a), vec!["db"]);
}

#[test]
fn unit_ending_while_dependents_stop_counts_as_stopped() {
    let mut h = Harness::new(vec![
        spec("db", &[], RestartPolicy::Always),
        spec("app", &["db"], RestartPolicy::Always),
    ]);
    h.feed(Input::Start("db".into()));
    h.feed(Input::Start("app".into()));
    h.feed(Input::Shutdown);
    h.end("db", End::Exit(1));
    assert_eq!(h.state("db"), State::Stopped);
    assert_eq!(h.sup.next_deadline(), Some(h.now + Duration::from_secs(10)));
}

#[test]
fn state_names_are_the_documented_ones() {
    let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "stopped", "starting", "running", "stopping", "backoff", "exited", "failed"
        ]
    );
}

#[test]
fn reload_stops_and_drops_removed_units() {
    let mut h = Harness::new(vec![
        spec("keep", &[], RestartPolicy::Always),
        spec("gone", &[], RestartPolicy::Always),
    ]);
    h.feed(Input::StartAll(vec!["keep".into(), "gone".into()]));
    let keep_pid = h.pid("keep");
    let a = h.sup.reload(
        vec![spec("keep", &[], RestartPolicy::Always)],
        &[],
        &[],
        h.now,
    );
    assert_eq!(stopped(&a), vec!["gone"]);
    assert_eq!(h.pid("keep"), keep_pid, "unchanged unit untouched");
    assert!(
        h.sup.take_retired().is_empty(),
        "dropped only once it ended"
    );
    h.end("gone", End::Signal(15));
    assert!(h.sup.status("gone").is_none());
    assert_eq!(h.sup.take_retired(), vec!["gone".to_string()]);
    assert!(spawned(&h.advance(Duration::from_secs(60))).is_empty());
}

#[test]
fn reload_restarts_changed_running_units_and_starts_new_ones() {
    let mut h = Harness::new(vec![spec("web", &[], RestartPolicy::Always)]);
    h.feed(Input::Start("web".into()));
    let a = h.sup.reload(
        vec![
            spec("web", &[], RestartPolicy::Always),
            spec("new", &["web"], RestartPolicy::Always),
        ],
        &["web".to_string()],
        &["new".to_string()],
        h.now,
    );
    // web is being restarted, so new waits for it.
    assert_eq!(stopped(&a), vec!["web"]);
    assert!(spawned(&a).is_empty());
    let a = h.end("web", End::Signal(15));
    assert_eq!(spawned(&a), vec!["web", "new"]);
    assert_eq!(h.state("new"), State::Running);
}

#[test]
fn reload_of_a_stopped_unit_keeps_it_stopped() {
    let mut h = Harness::new(vec![spec("web", &[], RestartPolicy::Always)]);
    let a = h.sup.reload(
        vec![spec("web", &[], RestartPolicy::Never)],
        &["web".to_string()],
        &[],
        h.now,
    );
    assert!(a.is_empty());
    assert_eq!(h.state("web"), State::Stopped);
    assert_eq!(h.sup.spec("web").unwrap().restart, RestartPolicy::Never);
}

#[test]
fn removed_unit_without_process_is_dropped_at_once() {
    let mut h = Harness::new(vec![spec("a", &[], RestartPolicy::Always)]);
    h.sup.reload(vec![], &[], &[], h.now);
    assert!(h.sup.status("a").is_none());
    assert_eq!(h.sup.take_retired(), vec!["a".to_string()]);
}

fn ready_by_notify(name: &str, after: &[&str], timeout_s: u64) -> Spec {
    Spec {
        ready: Some(ReadySpec {
            timeout: Duration::from_secs(timeout_s),
            probe: None,
        }),
        ..spec(name, after, RestartPolicy::OnFailure)
    }
}

fn ready_by_probe(name: &str, interval_ms: u64, timeout_s: u64) -> Spec {
    Spec {
        ready: Some(ReadySpec {
            timeout: Duration::from_secs(timeout_s),
            probe: Some(ReadyProbe {
                interval: Duration::from_millis(interval_ms),
                timeout: Duration::from_secs(1),
            }),
        }),
        ..spec(name, &[], RestartPolicy::OnFailure)
    }
}

fn with_health(mut s: Spec, interval_s: u64, timeout_s: u64, retries: u32) -> Spec {
    s.health = Some(HealthSpec {
        interval: Duration::from_secs(interval_s),
        timeout: Duration::from_secs(timeout_s),
        retries,
    });
    s
}

fn probes(actions: &[Action]) -> Vec<(String, Check)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Probe { unit, check } => Some((unit.clone(), *check)),
            _ => None,
        })
        .collect()
}

/// Whether each cancelled probe failed by its deadline (`overdue`).
fn overdue(actions: &[Action]) -> Vec<bool> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CancelProbe { overdue, .. } => Some(*overdue),
            _ => None,
        })
        .collect()
}

fn cancelled(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CancelProbe { unit, .. } => Some(unit.clone()),
            _ => None,
        })
        .collect()
}

/// The engine's own stops, each as (unit, end, reason), checked to come
/// before the unit's `Stop`.
fn faulted(actions: &[Action]) -> Vec<(String, End, String)> {
    let mut out = Vec::new();
    for (n, a) in actions.iter().enumerate() {
        if let Action::Faulted { unit, end, reason } = a {
            assert!(
                actions[n..]
                    .iter()
                    .any(|b| matches!(b, Action::Stop { unit: u, .. } if u == unit)),
                "{actions:?}"
            );
            out.push((unit.clone(), end.clone(), reason.clone()));
        }
    }
    out
}

fn probed(h: &mut Harness, u: &str, ok: bool) -> Vec<Action> {
    h.feed(Input::Probed { unit: u.into(), ok })
}

#[test]
fn a_unit_with_ready_is_starting_until_it_notifies() {
    let mut h = Harness::new(vec![ready_by_notify("db", &[], 30)]);
    h.feed(Input::Start("db".into()));
    assert_eq!(
        h.state("db"),
        State::Starting,
        "the command runs, not ready"
    );
    assert!(h.sup.status("db").unwrap().running_since.is_none());
    h.advance(Duration::from_secs(2));
    h.feed(Input::Notified("db".into()));
    assert_eq!(h.state("db"), State::Running);
    assert_eq!(h.sup.status("db").unwrap().running_since, Some(h.now));
}

#[test]
fn a_notification_before_the_exec_report_still_counts() {
    let mut h = Harness::new(vec![ready_by_notify("db", &[], 30)]);
    h.sup.handle(Input::Start("db".into()), h.now).unwrap();
    h.sup
        .handle(
            Input::Spawned {
                unit: "db".into(),
                pid: 7,
            },
            h.now,
        )
        .unwrap();
    h.feed(Input::Notified("db".into()));
    assert_eq!(h.state("db"), State::Running);
    h.feed(Input::Ready("db".into()));
    assert_eq!(h.state("db"), State::Running);
}

#[test]
fn after_waits_for_the_dependency_to_be_ready_not_just_started() {
    let mut h = Harness::new(vec![
        ready_by_notify("db", &[], 30),
        spec("web", &["db"], RestartPolicy::OnFailure),
    ]);
    let a = h.feed(Input::StartAll(vec!["db".into(), "web".into()]));
    assert_eq!(spawned(&a), vec!["db"]);
    let a = h.advance(Duration::from_secs(5));
    assert!(spawned(&a).is_empty(), "web waits while db is starting");
    let a = h.feed(Input::Notified("db".into()));
    assert_eq!(spawned(&a), vec!["web"]);
    assert_eq!(h.state("web"), State::Running);
}

#[test]
fn not_ready_within_the_timeout_is_a_failed_start_and_the_policy_applies() {
    let mut h = Harness::new(vec![ready_by_notify("db", &[], 30)]);
    h.feed(Input::Start("db".into()));
    let pid = h.pid("db");
    assert_eq!(h.sup.next_deadline(), Some(h.t0 + Duration::from_secs(30)));
    let a = h.advance_to_deadline();
    assert_eq!(stopped(&a), vec!["db"], "stopped through the stop ladder");
    let why = "not ready within 30s".to_string();
    assert_eq!(
        faulted(&a),
        vec![("db".to_string(), End::StartFailed(why.clone()), why)]
    );
    assert_eq!(h.state("db"), State::Stopping);
    // A notification now is too late.
    h.feed(Input::Notified("db".into()));
    assert_eq!(h.state("db"), State::Stopping);
    h.end("db", End::Signal(libc::SIGTERM));
    let st = h.sup.status("db").unwrap();
    assert_eq!(
        st.state,
        State::Backoff,
        "on-failure restarts a failed start"
    );
    assert!(
        matches!(&st.last_exit, Some(End::StartFailed(r)) if r.contains("not ready within 30s"))
    );
    let a = h.advance_to_deadline();
    assert_eq!(spawned(&a), vec!["db"]);
    assert_ne!(h.pid("db"), pid);
    assert_eq!(h.sup.status("db").unwrap().restarts, 1);
}

#[test]
fn not_ready_in_time_under_never_ends_failed() {
    let mut s = ready_by_notify("db", &[], 1);
    s.restart = RestartPolicy::Never;
    let mut h = Harness::new(vec![s]);
    h.feed(Input::Start("db".into()));
    h.advance_to_deadline();
    h.end("db", End::Signal(libc::SIGTERM));
    assert_eq!(h.state("db"), State::Failed);
    assert_eq!(
        h.sup.status("db").unwrap().reason.as_deref(),
        Some("not ready within 1s")
    );
}

#[test]
fn a_ready_probe_repeats_every_interval_until_it_succeeds() {
    let mut h = Harness::new(vec![ready_by_probe("db", 200, 30)]);
    let a = h.feed(Input::Start("db".into()));
    assert_eq!(
        probes(&a),
        vec![("db".to_string(), Check::Ready)],
        "first try at once"
    );
    let a = probed(&mut h, "db", false);
    assert!(probes(&a).is_empty());
    assert_eq!(
        h.sup.next_deadline(),
        Some(h.now + Duration::from_millis(200))
    );
    let a = h.advance(Duration::from_millis(199));
    assert!(probes(&a).is_empty());
    let a = h.advance(Duration::from_millis(1));
    assert_eq!(probes(&a), vec![("db".to_string(), Check::Ready)]);
    assert_eq!(h.state("db"), State::Starting);
    probed(&mut h, "db", true);
    assert_eq!(h.state("db"), State::Running);
    assert_eq!(
        h.sup.next_deadline(),
        None,
        "no probe after ready without health"
    );
}

#[test]
fn a_ready_probe_that_never_answers_fails_at_its_deadline_and_is_tried_again() {
    // A connect to a host that drops SYNs answers only after minutes of
    // kernel retries: each try is bounded, so a later one can succeed.
    let mut h = Harness::new(vec![ready_by_probe("db", 200, 30)]);
    let a = h.feed(Input::Start("db".into()));
    assert_eq!(probes(&a), vec![("db".to_string(), Check::Ready)]);
    assert_eq!(
        h.sup.next_deadline(),
        Some(h.now + Duration::from_secs(1)),
        "the try's own deadline, not the ready timeout"
    );
    let a = h.advance_to_deadline();
    assert_eq!(cancelled(&a), vec!["db"], "the hung try is killed");
    assert_eq!(overdue(&a), vec![true], "as a failed try");
    assert!(probes(&a).is_empty());
    assert_eq!(h.state("db"), State::Starting);
    assert_eq!(h.elapsed_ms(), 1000);
    let a = h.advance_to_deadline();
    assert_eq!(
        probes(&a),
        vec![("db".to_string(), Check::Ready)],
        "the next try an interval after the failed one"
    );
    assert_eq!(h.elapsed_ms(), 1200);
    probed(&mut h, "db", true);
    assert_eq!(h.state("db"), State::Running);
    assert_eq!(h.sup.status("db").unwrap().running_since, Some(h.now));
}

#[test]
fn a_ready_probe_still_running_at_the_timeout_is_cancelled() {
    let mut h = Harness::new(vec![ready_by_probe("db", 200, 2)]);
    h.feed(Input::Start("db".into()));
    let a = h.advance(Duration::from_secs(2));
    assert_eq!(cancelled(&a), vec!["db"]);
    assert_eq!(stopped(&a), vec!["db"]);
    // Its late answer changes nothing.
    probed(&mut h, "db", true);
    assert_eq!(h.state("db"), State::Stopping);
}

#[test]
fn health_probes_start_an_interval_after_ready() {
    let mut h = Harness::new(vec![with_health(
        spec("web", &[], RestartPolicy::Always),
        10,
        2,
        3,
    )]);
    let a = h.feed(Input::Start("web".into()));
    assert!(probes(&a).is_empty());
    assert_eq!(h.sup.status("web").unwrap().health, Some(Health::Starting));
    let a = h.advance(Duration::from_secs(10));
    assert_eq!(probes(&a), vec![("web".to_string(), Check::Health)]);
    probed(&mut h, "web", true);
    assert_eq!(h.sup.status("web").unwrap().health, Some(Health::Healthy));
    assert_eq!(h.sup.next_deadline(), Some(h.now + Duration::from_secs(10)));
}

#[test]
fn health_failures_in_a_row_end_the_unit_unhealthy_and_restart_it() {
    let mut h = Harness::new(vec![with_health(
        spec("web", &[], RestartPolicy::OnFailure),
        10,
        2,
        3,
    )]);
    h.feed(Input::Start("web".into()));
    let pid = h.pid("web");
    for n in 1..=2 {
        h.advance(Duration::from_secs(10));
        let a = probed(&mut h, "web", false);
        assert!(stopped(&a).is_empty(), "failure {n} of 3 stops nothing");
        assert_eq!(h.state("web"), State::Running);
    }
    h.advance(Duration::from_secs(10));
    let a = probed(&mut h, "web", false);
    assert_eq!(stopped(&a), vec!["web"]);
    assert_eq!(
        faulted(&a),
        vec![(
            "web".to_string(),
            End::Unhealthy,
            "health probe failed 3 times in a row".to_string()
        )],
        "the operator is told why, before the stop"
    );
    assert_eq!(h.sup.status("web").unwrap().health, Some(Health::Unhealthy));
    h.end("web", End::Signal(libc::SIGTERM));
    let st = h.sup.status("web").unwrap();
    assert_eq!(st.last_exit, Some(End::Unhealthy));
    assert_eq!(
        st.state,
        State::Backoff,
        "unhealthy is a failure for on-failure"
    );
    assert_eq!(st.health, None);
    let a = h.advance_to_deadline();
    assert_eq!(spawned(&a), vec!["web"]);
    assert_ne!(h.pid("web"), pid);
    assert_eq!(h.sup.status("web").unwrap().health, Some(Health::Starting));
}

#[test]
fn a_success_resets_the_failures_in_a_row() {
    let mut h = Harness::new(vec![with_health(
        spec("web", &[], RestartPolicy::OnFailure),
        10,
        2,
        3,
    )]);
    h.feed(Input::Start("web".into()));
    for ok in [false, false, true, false, false, true, false, false] {
        h.advance(Duration::from_secs(10));
        let a = probed(&mut h, "web", ok);
        assert!(stopped(&a).is_empty());
    }
    assert_eq!(h.state("web"), State::Running);
}

#[test]
fn a_health_probe_past_its_timeout_is_cancelled_and_counts_as_a_failure() {
    let mut h = Harness::new(vec![with_health(
        spec("web", &[], RestartPolicy::OnFailure),
        10,
        2,
        1,
    )]);
    h.feed(Input::Start("web".into()));
    h.advance(Duration::from_secs(10));
    assert_eq!(h.sup.next_deadline(), Some(h.now + Duration::from_secs(2)));
    let a = h.advance(Duration::from_secs(2));
    assert_eq!(cancelled(&a), vec!["web"]);
    assert_eq!(overdue(&a), vec![true]);
    assert_eq!(stopped(&a), vec!["web"], "retries = 1: one timeout ends it");
    // The cancelled probe's answer is not expected, and ignored if it comes.
    probed(&mut h, "web", true);
    assert_eq!(h.state("web"), State::Stopping);
}

#[test]
fn an_operator_stop_cancels_the_running_probe_and_is_no_failure() {
    let mut h = Harness::new(vec![with_health(
        spec("web", &[], RestartPolicy::Always),
        10,
        2,
        3,
    )]);
    h.feed(Input::Start("web".into()));
    h.advance(Duration::from_secs(10));
    let a = h.feed(Input::Stop("web".into()));
    assert_eq!(cancelled(&a), vec!["web"]);
    assert_eq!(
        overdue(&a),
        vec![false],
        "not a probe failure: the log stays quiet"
    );
    h.end("web", End::Signal(libc::SIGTERM));
    assert_eq!(h.state("web"), State::Stopped);
    assert_eq!(h.sup.next_deadline(), None);
}

#[test]
fn an_unhealthy_unit_stopped_by_the_operator_meanwhile_stays_down() {
    let mut h = Harness::new(vec![with_health(
        spec("web", &[], RestartPolicy::Always),
        10,
        2,
        1,
    )]);
    h.feed(Input::Start("web".into()));
    h.advance(Duration::from_secs(10));
    probed(&mut h, "web", false);
    h.feed(Input::Stop("web".into()));
    h.end("web", End::Signal(libc::SIGTERM));
    assert_eq!(h.state("web"), State::Stopped);
}

#[test]
fn a_stop_is_superseded_by_a_start_while_stopping() {
    let mut h = Harness::new(vec![spec("a", &[], RestartPolicy::Always)]);
    h.feed(Input::Start("a".into()));
    let pid = h.pid("a");
    h.feed(Input::Stop("a".into()));
    assert_eq!(
        h.sup.status("a").unwrap().stop_outcome(),
        StopOutcome::Pending
    );
    h.feed(Input::Start("a".into()));
    assert_eq!(
        h.sup.status("a").unwrap().stop_outcome(),
        StopOutcome::Superseded(State::Stopping)
    );
    h.feed(Input::Ended {
        unit: "a".into(),
        end: End::Signal(15),
    });
    assert_ne!(h.pid("a"), pid, "started again");
    assert_eq!(
        h.sup.status("a").unwrap().stop_outcome(),
        StopOutcome::Superseded(State::Running)
    );
}

#[test]
fn a_completed_stop_reports_the_resting_state() {
    let mut h = Harness::new(vec![spec("a", &[], RestartPolicy::Always)]);
    h.feed(Input::Start("a".into()));
    h.feed(Input::Stop("a".into()));
    h.feed(Input::Ended {
        unit: "a".into(),
        end: End::Signal(15),
    });
    assert_eq!(
        h.sup.status("a").unwrap().stop_outcome(),
        StopOutcome::Done(State::Stopped)
    );
}

#[test]
fn a_unit_re_added_while_still_stopping_is_kept_and_started_again() {
    let both = || {
        vec![
            spec("keep", &[], RestartPolicy::Always),
            spec("slow", &[], RestartPolicy::Always),
        ]
    };
    let mut h = Harness::new(both());
    h.feed(Input::StartAll(vec!["keep".into(), "slow".into()]));
    let first = h.pid("slow");
    h.sup.reload(
        vec![spec("keep", &[], RestartPolicy::Always)],
        &[],
        &[],
        h.now,
    );
    assert_eq!(h.state("slow"), State::Stopping);
    let a = h.sup.reload(both(), &[], &["slow".into()], h.now);
    assert!(spawned(&a).is_empty(), "waits for the old process to end");
    h.end("slow", End::Signal(15));
    assert!(h.sup.status("slow").is_some(), "re-added unit disappeared");
    assert!(h.sup.take_retired().is_empty());
    assert_eq!(h.state("slow"), State::Running);
    assert_ne!(h.pid("slow"), first);
}

#[test]
fn a_start_limit_of_5_shows_4_restarts_and_says_it_gave_up() {
    let mut s = spec("z", &[], RestartPolicy::Always);
    s.start_limit = Some(StartLimit {
        burst: 5,
        interval: Duration::from_secs(60),
    });
    let mut h = Harness::new(vec![s]);
    h.feed(Input::Start("z".into()));
    let mut spawns = 1;
    let mut gave_up = Vec::new();
    while h.state("z") != State::Failed {
        h.end("z", End::Exit(1));
        for a in h.advance_to_deadline() {
            match a {
                Action::Spawn(_) => spawns += 1,
                Action::GaveUp { reason, .. } => gave_up.push(reason),
                _ => {}
            }
        }
    }
    assert_eq!(spawns, 5);
    assert_eq!(
        h.sup.status("z").unwrap().restarts,
        4,
        "5 starts are 4 restarts"
    );
    assert_eq!(gave_up.len(), 1);
    assert!(gave_up[0].contains("start limit hit"), "{gave_up:?}");
}
