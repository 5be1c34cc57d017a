//! When to pet the hardware watchdog, and when to stop: a pure function
//! of the units' states and the time.
//!
//! The runtime pets every `timeout / 4` while every unit in `require` is
//! well (running, and not `unhealthy`), or has been otherwise for at most
//! `grace` (a boot, a restart). Once one has been unwell for longer, the
//! verdict is [`Verdict::Starve`], once, with the reason to log; from then
//! on it stays [`Verdict::Starved`] whatever happens, so the hardware
//! resets the machine within `timeout`. An agent whose loop stalls pets
//! nothing either: that case needs no code. During an orderly shutdown the
//! required units go down on purpose: petting goes on regardless, so a
//! shutdown that hangs is still caught, by the hardware, `timeout` after
//! the last pet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::state::{Health, State, Supervisor};

/// What the runtime does with the watchdog now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pet it (the pet interval has passed).
    Pet,
    /// Nothing to do until [`Watch::next_deadline`].
    Wait,
    /// Stop petting, for good; log `why` (this comes once).
    Starve {
        /// What made the decision, for the log.
        why: String,
    },
    /// Petting was stopped earlier; keep not petting.
    Starved,
}

/// The watchdog's decision state.
#[derive(Debug)]
pub struct Watch {
    require: Vec<String>,
    grace: Duration,
    pet_every: Duration,
    next_pet: Instant,
    /// Since when each required unit has been unwell.
    unwell_since: HashMap<String, Instant>,
    starved: bool,
}

impl Watch {
    /// A watch opened at `now` for a device with `timeout`: every required
    /// unit counts as unwell since `now`, so a boot has `grace` to bring
    /// them up.
    pub fn new(require: Vec<String>, timeout: Duration, grace: Duration, now: Instant) -> Self {
        Watch {
            unwell_since: require.iter().map(|u| (u.clone(), now)).collect(),
            require,
            grace,
            pet_every: timeout / 4,
            next_pet: now,
            starved: false,
        }
    }

    /// Whether a unit is well for the watchdog: running and not unhealthy.
    fn well(sup: &Supervisor, unit: &str) -> bool {
        sup.status(unit)
            .is_some_and(|s| s.state == State::Running && s.health != Some(Health::Unhealthy))
    }

    /// The verdict at `now` given the units in `sup`; `shutting_down`: an
    /// orderly shutdown is under way.
    pub fn check(&mut self, sup: &Supervisor, now: Instant, shutting_down: bool) -> Verdict {
        if self.starved {
            return Verdict::Starved;
        }
        if shutting_down {
            self.unwell_since.clear();
            return self.pet_if_due(now);
        }
        for unit in &self.require {
            if Self::well(sup, unit) {
                self.unwell_since.remove(unit);
            } else {
                self.unwell_since.entry(unit.clone()).or_insert(now);
            }
        }
        let overdue = self
            .require
            .iter()
            .filter_map(|u| self.unwell_since.get(u).map(|t| (u, *t)))
            .find(|(_, since)| now.saturating_duration_since(*since) > self.grace);
        if let Some((unit, since)) = overdue {
            self.starved = true;
            let state = sup.status(unit).map_or("gone", |s| match s.health {
                Some(Health::Unhealthy) => "unhealthy",
                _ => s.state.as_str(),
            });
            return Verdict::Starve {
                why: format!(
                    "required unit {unit} has not been running and healthy for {:?} (now {state}; grace {:?})",
                    now.saturating_duration_since(since),
                    self.grace
                ),
            };
        }
        self.pet_if_due(now)
    }

    fn pet_if_due(&mut self, now: Instant) -> Verdict {
        if now >= self.next_pet {
            self.next_pet = now + self.pet_every;
            return Verdict::Pet;
        }
        Verdict::Wait
    }

    /// When [`Watch::check`] has something new to say: the next pet, or
    /// the end of a grace period.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.starved {
            return None;
        }
        let grace_end = self
            .unwell_since
            .values()
            .map(|t| *t + self.grace + Duration::from_nanos(1))
            .min();
        [Some(self.next_pet), grace_end].into_iter().flatten().min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Backoff, RestartPolicy};
    use crate::supervisor::state::{HealthSpec, Input, Spec};
    use crate::supervisor::{Action, End};

    fn spec(name: &str, health: bool) -> Spec {
        Spec {
            name: name.into(),
            after: vec![],
            restart: RestartPolicy::Never,
            backoff: Backoff::default(),
            start_limit: None,
            stop_timeout: Duration::from_secs(10),
            reboot_restarts: false,
            ready: None,
            health: health.then_some(HealthSpec {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                retries: 1,
            }),
        }
    }

    /// Starts `unit` and makes it running at `now`.
    fn run(sup: &mut Supervisor, unit: &str, now: Instant) {
        for input in [
            Input::Start(unit.into()),
            Input::Spawned {
                unit: unit.into(),
                pid: 10,
            },
            Input::Ready(unit.into()),
        ] {
            sup.handle(input, now).unwrap();
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pets_every_quarter_timeout_while_required_units_run() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(vec![spec("db", false)]);
        let mut w = Watch::new(vec!["db".into()], 8 * S, 60 * S, t0);
        run(&mut sup, "db", t0);
        assert_eq!(w.check(&sup, t0, false), Verdict::Pet);
        assert_eq!(w.check(&sup, t0 + S, false), Verdict::Wait);
        assert_eq!(w.next_deadline(), Some(t0 + 2 * S));
        assert_eq!(w.check(&sup, t0 + 2 * S, false), Verdict::Pet);
        assert_eq!(
            w.check(&sup, t0 + 1000 * S, false),
            Verdict::Pet,
            "well for ever"
        );
    }

    #[test]
    fn a_boot_gets_grace_then_petting_stops_once_with_the_reason() {
        let t0 = Instant::now();
        let sup = Supervisor::new(vec![spec("db", false)]);
        let mut w = Watch::new(vec!["db".into()], 8 * S, 60 * S, t0);
        assert_eq!(
            w.check(&sup, t0, false),
            Verdict::Pet,
            "starting is within grace"
        );
        assert_eq!(w.check(&sup, t0 + 60 * S, false), Verdict::Pet);
        assert_eq!(
            w.next_deadline(),
            Some(t0 + 60 * S + Duration::from_nanos(1))
        );
        let Verdict::Starve { why } = w.check(&sup, t0 + 61 * S, false) else {
            panic!("still petting");
        };
        assert!(why.contains("required unit db"), "{why}");
        assert!(why.contains("stopped"), "{why}");
        assert_eq!(
            w.check(&sup, t0 + 62 * S, false),
            Verdict::Starved,
            "said once"
        );
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_required_unit_that_fails_for_good_stops_the_petting_after_grace() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(vec![spec("db", false)]);
        let mut w = Watch::new(vec!["db".into()], 8 * S, 10 * S, t0);
        run(&mut sup, "db", t0);
        assert_eq!(w.check(&sup, t0 + 100 * S, false), Verdict::Pet);
        let t1 = t0 + 101 * S;
        sup.handle(
            Input::Ended {
                unit: "db".into(),
                end: End::Exit(1),
            },
            t1,
        )
        .unwrap();
        assert_eq!(w.check(&sup, t1, false), Verdict::Wait, "grace starts now");
        assert_eq!(w.check(&sup, t1 + 10 * S, false), Verdict::Pet);
        assert!(matches!(
            w.check(&sup, t1 + 11 * S, false),
            Verdict::Starve { why } if why.contains("exited")
        ));
    }

    #[test]
    fn a_unit_back_within_grace_keeps_the_petting() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(vec![spec("db", false), spec("web", false)]);
        let mut w = Watch::new(vec!["db".into()], 8 * S, 10 * S, t0);
        assert_eq!(w.check(&sup, t0 + 9 * S, false), Verdict::Pet);
        run(&mut sup, "db", t0 + 9 * S);
        assert_eq!(w.check(&sup, t0 + 30 * S, false), Verdict::Pet);
        assert_eq!(
            w.check(&sup, t0 + 300 * S, false),
            Verdict::Pet,
            "web is not required"
        );
    }

    #[test]
    fn an_orderly_shutdown_keeps_petting_with_every_unit_down() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(vec![spec("db", false)]);
        let mut w = Watch::new(vec!["db".into()], 8 * S, 5 * S, t0);
        run(&mut sup, "db", t0);
        assert_eq!(w.check(&sup, t0, false), Verdict::Pet);
        sup.handle(Input::Shutdown, t0).unwrap();
        sup.handle(
            Input::Ended {
                unit: "db".into(),
                end: End::Signal(libc::SIGTERM),
            },
            t0 + S,
        )
        .unwrap();
        for n in [2, 4, 6, 8, 30] {
            assert_eq!(w.check(&sup, t0 + n * S, true), Verdict::Pet, "at {n} s");
        }
    }

    #[test]
    fn a_decision_to_stop_stands_through_a_shutdown() {
        let t0 = Instant::now();
        let sup = Supervisor::new(vec![spec("db", false)]);
        let mut w = Watch::new(vec!["db".into()], 8 * S, S, t0);
        assert!(matches!(
            w.check(&sup, t0 + 2 * S, false),
            Verdict::Starve { .. }
        ));
        assert_eq!(w.check(&sup, t0 + 3 * S, true), Verdict::Starved);
    }

    #[test]
    fn an_unhealthy_required_unit_counts_as_unwell() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(vec![spec("db", true)]);
        let mut w = Watch::new(vec!["db".into()], 8 * S, 5 * S, t0);
        run(&mut sup, "db", t0);
        let t1 = t0 + S;
        let actions = sup.handle(Input::Tick, t1).unwrap();
        assert!(matches!(actions.as_slice(), [Action::Probe { .. }]));
        sup.handle(
            Input::Probed {
                unit: "db".into(),
                ok: false,
            },
            t1,
        )
        .unwrap();
        assert_eq!(w.check(&sup, t1, false), Verdict::Pet);
        // Its stop hangs: still unwell past grace.
        assert!(matches!(
            w.check(&sup, t1 + 6 * S, false),
            Verdict::Starve { why } if why.contains("unhealthy")
        ));
    }
}
