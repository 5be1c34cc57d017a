//! The event stream of `zonit ctl events`: what the engine's state changes
//! mean to an operator, a bounded history for `--since`, and the clients
//! subscribed to it.
//!
//! Invariant: events are made in one place, [`Agent::note_changes`],
//! right after each engine input is handled, from the engine's own status
//! (plus the process ends, reloads and shutdowns the agent carries out),
//! so `status` and the stream agree. Subscribers are ordinary control
//! connections: their queue is the connection's bounded reply buffer, and
//! one that stops reading is dropped like a lagging `logs -f` follower.

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::Agent;
use crate::control::event::Event;
use crate::control::proto;
use crate::supervisor::{Health, State, Supervisor};

/// Most events kept for `--since`.
pub(super) const HISTORY: usize = 1000;

/// The stream's state: history, subscribers, and what was last reported.
#[derive(Default)]
pub(super) struct Events {
    history: VecDeque<Event>,
    /// Connections streaming events.
    subscribers: Vec<usize>,
    /// Each unit's state as last reported.
    seen: HashMap<String, State>,
    /// Each unit's health as last reported (absent: none).
    health: HashMap<String, Health>,
    /// Each unit's OOM kills as last reported.
    ooms: HashMap<String, u64>,
}

impl Events {
    /// The events for every unit whose state changed since the last call,
    /// in config order. A unit never seen counts as stopped.
    pub(super) fn changes(&mut self, sup: &Supervisor, now: Instant, ts_ms: u64) -> Vec<Event> {
        let mut out = Vec::new();
        for name in sup.names() {
            let Some(st) = sup.status(name) else { continue };
            let e = |event: &str| Event::new(ts_ms, event, Some(name));
            // A process that ended takes its health with it: the `exited`
            // event says so, no `health` event does.
            let health = match st.health {
                Some(h) if self.health.get(name) != Some(&h) => {
                    self.health.insert(name.to_string(), h);
                    let mut ev = e("health");
                    ev.health = Some(h.as_str().into());
                    if h == Health::Unhealthy {
                        ev.message = st.reason.clone();
                    }
                    Some(ev)
                }
                Some(_) => None,
                None => {
                    self.health.remove(name);
                    None
                }
            };
            let before = self.seen.get(name).copied().unwrap_or(State::Stopped);
            let state = (before != st.state).then(|| {
                self.seen.insert(name.to_string(), st.state);
                match st.state {
                    State::Starting => Some(e("starting")),
                    State::Running => Some(e("running")),
                    State::Stopping => Some(e("stopping")),
                    State::Stopped => Some(e("stopped")),
                    // The `exited` event of the end came first.
                    State::Exited => None,
                    State::Backoff => {
                        let mut ev = e("restarting");
                        ev.delay_ms = st
                            .restart_at()
                            .map(|t| t.saturating_duration_since(now).as_millis() as u64);
                        Some(ev)
                    }
                    State::Failed => {
                        let mut ev = e("failed");
                        ev.message = st.reason.clone();
                        Some(ev)
                    }
                }
            });
            // Cause before effect: a unit turns `unhealthy`, then is
            // stopped; it is `running`, then its probing starts.
            let (first, second) = match st.health {
                Some(Health::Unhealthy) => (health, state.flatten()),
                _ => (state.flatten(), health),
            };
            out.extend(first);
            out.extend(second);
        }
        if self.seen.len() > sup.names().count() {
            self.seen.retain(|n, _| sup.status(n).is_some());
            self.ooms.retain(|n, _| sup.status(n).is_some());
            self.health.retain(|n, _| sup.status(n).is_some());
        }
        out
    }

    /// An `oom` event when the unit's OOM kill count grew since last seen.
    pub(super) fn oom(&mut self, unit: &str, kills: u64, ts_ms: u64) -> Option<Event> {
        let before = self.ooms.insert(unit.to_string(), kills).unwrap_or(0);
        (kills > before).then(|| {
            let mut e = Event::new(ts_ms, "oom", Some(unit));
            e.oom_kills = Some(kills);
            e
        })
    }

    /// Keeps `e` in the history, forgetting the oldest past [`HISTORY`].
    pub(super) fn record(&mut self, e: Event) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(e);
    }

    /// The kept events from `from_ms` on, oldest first.
    pub(super) fn since(&self, from_ms: u64) -> impl Iterator<Item = &Event> {
        self.history.iter().filter(move |e| e.ts_ms >= from_ms)
    }

    /// Connection `id` streams events from now on.
    pub(super) fn subscribe(&mut self, id: usize) {
        self.subscribers.push(id);
    }

    /// Connection `id` streams events no more.
    pub(super) fn unsubscribe(&mut self, id: usize) {
        self.subscribers.retain(|c| *c != id);
    }

    pub(super) fn is_subscribed(&self, id: usize) -> bool {
        self.subscribers.contains(&id)
    }

    /// The connections streaming events.
    pub(super) fn subscribers(&self) -> &[usize] {
        &self.subscribers
    }
}

/// The wall clock in milliseconds since the epoch (0 before it).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    /// Reports the engine's state changes since the last call.
    pub(super) fn note_changes(&mut self) {
        let events = self
            .control
            .event_changes(&self.sup, Instant::now(), now_ms());
        for e in events {
            self.emit(e);
        }
    }

    /// A unit's process ended: its `exited` event, and an `oom` event if
    /// the kernel's OOM killer acted in its cgroup since the last one.
    pub(super) fn note_end(&mut self, unit: &str, end: &crate::supervisor::End) {
        let ts = now_ms();
        let mut e = Event::new(ts, "exited", Some(unit));
        e.end = Some(end.describe());
        self.emit(e);
        self.metrics.count_end(unit, end);
        let kills = self.cgroups.oom_kills(unit);
        if let Some(e) = self.control.oom_event(unit, kills, ts) {
            self.emit(e);
        }
    }

    /// A host event (`reload`, `shutdown`) with its message.
    pub(super) fn note_host(&mut self, event: &str, message: String) {
        let mut e = Event::new(now_ms(), event, None);
        e.message = Some(message);
        self.emit(e);
    }

    /// Keeps `e` and sends it to every subscriber.
    fn emit(&mut self, e: Event) {
        let line = proto::ok(json!({ "event": &e }));
        for id in self.control.publish(e) {
            self.send(id, &line);
            self.flush(id);
        }
    }

    /// Makes connection `id` a subscriber, after sending it the kept
    /// events of the last `since_ms` milliseconds (none without it).
    pub(super) fn subscribe(&mut self, id: usize, since_ms: Option<u64>) {
        let mut lines = Vec::new();
        if let Some(since) = since_ms {
            let from = now_ms().saturating_sub(since);
            for e in self.control.events_since(from) {
                lines.push(proto::ok(json!({ "event": e })));
            }
        }
        lines.push(proto::ok(json!({ "subscribed": true })));
        for line in lines {
            self.send(id, &line);
        }
        self.flush(id);
        self.control.subscribe(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::control::tests::engine;
    use crate::supervisor::{End, Input};

    fn names(events: &[Event]) -> Vec<String> {
        events.iter().map(|e| e.event.clone()).collect()
    }

    #[test]
    fn a_crash_reads_as_restarting_with_its_delay_then_starting_and_running() {
        let now = Instant::now();
        let mut sup = engine();
        let mut ev = Events::default();
        assert!(ev.changes(&sup, now, 0).is_empty(), "stopped at first");
        sup.handle(Input::Start("a".into()), now).unwrap();
        assert_eq!(names(&ev.changes(&sup, now, 1)), ["starting"]);
        let spawned = Input::Spawned {
            unit: "a".into(),
            pid: 7,
        };
        sup.handle(spawned, now).unwrap();
        sup.handle(Input::Ready("a".into()), now).unwrap();
        assert_eq!(names(&ev.changes(&sup, now, 2)), ["running"]);
        let crash = Input::Ended {
            unit: "a".into(),
            end: End::Exit(3),
        };
        sup.handle(crash, now).unwrap();
        let got = ev.changes(&sup, now, 3);
        assert_eq!(names(&got), ["restarting"]);
        let delay = got[0].delay_ms.expect("a restart carries its delay");
        let due = sup.next_deadline().unwrap().duration_since(now);
        assert_eq!(delay, due.as_millis() as u64);
        assert!(ev.changes(&sup, now, 4).is_empty(), "reported once");
        sup.handle(Input::Tick, now + due).unwrap();
        assert_eq!(names(&ev.changes(&sup, now + due, 5)), ["starting"]);
    }

    #[test]
    fn health_changes_are_events_in_order_with_the_state_changes() {
        let t0 = Instant::now();
        let sup = engine();
        let mut spec = sup.spec("a").unwrap().clone();
        let s = std::time::Duration::from_secs(1);
        spec.health = Some(crate::supervisor::HealthSpec {
            interval: s,
            timeout: s,
            retries: 2,
        });
        let mut sup = Supervisor::new(vec![spec]);
        let mut ev = Events::default();
        let probed = |sup: &mut Supervisor, t: Instant, ok: bool| {
            sup.handle(Input::Tick, t).unwrap();
            let unit = "a".to_string();
            sup.handle(Input::Probed { unit, ok }, t).unwrap();
        };
        sup.handle(Input::Start("a".into()), t0).unwrap();
        let spawned = Input::Spawned {
            unit: "a".into(),
            pid: 7,
        };
        sup.handle(spawned, t0).unwrap();
        sup.handle(Input::Ready("a".into()), t0).unwrap();
        let got = ev.changes(&sup, t0, 1);
        assert_eq!(names(&got), ["running", "health"]);
        assert_eq!(got[1].health.as_deref(), Some("starting"));
        probed(&mut sup, t0 + s, true);
        let got = ev.changes(&sup, t0 + s, 2);
        assert_eq!(names(&got), ["health"]);
        assert_eq!(got[0].health.as_deref(), Some("healthy"));
        probed(&mut sup, t0 + 2 * s, false);
        assert!(ev.changes(&sup, t0 + 2 * s, 3).is_empty(), "one failure");
        probed(&mut sup, t0 + 3 * s, false);
        let got = ev.changes(&sup, t0 + 3 * s, 4);
        assert_eq!(names(&got), ["health", "stopping"], "cause first");
        assert_eq!(got[0].health.as_deref(), Some("unhealthy"));
        assert!(got[0].message.as_deref().unwrap().contains("2 times"));
        let status = sup.status("a").unwrap();
        assert_eq!(status.health.map(|h| h.as_str()), got[0].health.as_deref());
    }

    #[test]
    fn the_history_keeps_the_newest_events_and_filters_by_time() {
        let mut ev = Events::default();
        for t in 0..(HISTORY as u64 + 10) {
            ev.record(Event::new(t, "running", Some("a")));
        }
        assert_eq!(ev.since(0).count(), HISTORY);
        assert_eq!(ev.since(0).next().unwrap().ts_ms, 10, "oldest dropped");
        let recent: Vec<u64> = ev.since(HISTORY as u64 + 8).map(|e| e.ts_ms).collect();
        assert_eq!(recent, [HISTORY as u64 + 8, HISTORY as u64 + 9]);
    }

    #[test]
    fn an_oom_event_comes_only_when_the_count_grows() {
        let mut ev = Events::default();
        assert!(ev.oom("a", 0, 0).is_none());
        assert_eq!(ev.oom("a", 2, 1).unwrap().oom_kills, Some(2));
        assert!(ev.oom("a", 2, 2).is_none());
    }
}
