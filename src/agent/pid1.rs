//! What the agent does for PID 1 beyond supervising: running without a
//! valid config (rescue) until a reload brings one, and telling when boot
//! is done. (A panic inside one turn of the loop is caught by the loop
//! itself, in `mod.rs`.)
//!
//! Kept apart from the loop itself so that changes to reload and the loop
//! stay easy to merge: `mod.rs` only calls in here.

use std::collections::BTreeSet;
use std::time::Instant;

use super::{Agent, Error, Options};
use crate::config::{self, Config, Host};
use crate::init::datamounts::{self, Unavailable};
use crate::supervisor::{Input, State};

/// Boot progress and rescue state.
#[derive(Debug, Default)]
pub(super) struct Pid1State {
    /// The running config is a stand-in: the real one could not be
    /// loaded. The next successful reload adopts its config whole.
    pub(super) fallback: bool,
    /// Called with `[host]` of a config adopted by reload after a
    /// fallback start (PID 1 applies hostname, modules, sysctls, data
    /// mounts); returns the required data mounts that failed.
    pub(super) host_setup: Option<fn(&Host) -> Vec<Unavailable>>,
    /// Required data mounts that failed at boot: a unit with a path
    /// under one of them fails to start, with the reason.
    pub(super) unavailable: Vec<Unavailable>,
    /// Autostart units not yet seen running, since when.
    boot: Option<(BTreeSet<String>, Instant)>,
}

impl Agent {
    /// Sets up the loop with a config that is already loaded (or, with
    /// [`Agent::without_config`], a stand-in for one that could not be).
    pub fn with_config(opts: Options, config: Config) -> Result<Self, Error> {
        Self::build(opts, config)
    }

    /// Sets up the loop with no units, for a PID 1 whose config could not
    /// be loaded: it reaps, serves the control socket at the default
    /// path, and the first successful `reload` adopts the fixed config.
    pub fn without_config(opts: Options) -> Result<Self, Error> {
        let empty = config::parse(&opts.config_path, "").map_err(Error::Config)?;
        let mut agent = Self::build(opts, empty)?;
        agent.pid1.fallback = true;
        Ok(agent)
    }

    /// `f` runs with the `[host]` section of a config adopted by reload
    /// after [`Agent::without_config`].
    pub fn on_adopted_host(&mut self, f: fn(&Host) -> Vec<Unavailable>) {
        self.pid1.host_setup = Some(f);
    }

    /// The required data mounts that failed at boot; units with paths
    /// under them will fail to start, naming the mount and why.
    pub fn set_unavailable_mounts(&mut self, unavailable: Vec<Unavailable>) {
        self.pid1.unavailable = unavailable;
    }

    /// Why unit `cfg` cannot start because of a failed data mount.
    pub(super) fn blocked_by_mount(&self, cfg: &config::Unit) -> Option<String> {
        datamounts::unit_blocked(cfg, &self.pid1.unavailable)
    }

    /// Starts the autostart units of the running config and remembers
    /// them for the boot marker.
    pub(super) fn start_autostart(&mut self) {
        let boot: Vec<String> = self
            .config
            .units
            .iter()
            .filter(|u| u.common.autostart)
            .map(|u| u.name.clone())
            .collect();
        log::info!(
            "supervising {} unit(s), starting {}",
            self.config.units.len(),
            boot.len()
        );
        self.pid1.boot = Some((boot.iter().cloned().collect(), Instant::now()));
        self.feed(Input::StartAll(boot));
        self.check_boot_done();
        // A start that failed at once leaves nothing to wake the loop.
        self.check_exit_with_failed();
    }

    /// Logs the boot marker once every autostart unit has been seen
    /// running. The line is what the QEMU tests and BENCHMARKS.md wait for:
    /// `all N autostart unit(s) running after X ms (monotonic T s)`.
    pub(super) fn check_boot_done(&mut self) {
        let Some((pending, since)) = &mut self.pid1.boot else {
            return;
        };
        let sup = &self.sup;
        pending.retain(|u| sup.status(u).map(|s| s.state) != Some(State::Running));
        if !pending.is_empty() {
            return;
        }
        let agent_ms = since.elapsed().as_secs_f64() * 1000.0;
        let mono = crate::sys::kernel::monotonic_ns() as f64 / 1e9;
        let n = self
            .config
            .units
            .iter()
            .filter(|u| u.common.autostart)
            .count();
        log::info!(
            "all {n} autostart unit(s) running after {agent_ms:.1} ms (monotonic {mono:.6} s)"
        );
        self.pid1.boot = None;
    }

    /// Test mode: an `exit_with` unit that can never start (a missing
    /// root or kernel, its start limit hit) must end the test too, or the
    /// machine would wait forever. Its end by exit or signal is handled
    /// where it is reaped (`units::unit_ended`).
    pub(super) fn check_exit_with_failed(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let Some(unit) = self.config.host.exit_with.clone() else {
            return;
        };
        if self.sup.status(&unit).map(|s| s.state) != Some(State::Failed) {
            return;
        }
        log::info!("exit_with unit {unit} failed to start; reporting status 1");
        let action = match self.opts.mode {
            super::Mode::Run => super::ShutdownAction::Exit(1),
            super::Mode::Init => super::ShutdownAction::Verdict(1),
        };
        self.begin_shutdown(action);
    }

    /// Reload after a fallback start: the new config replaces the stand-in
    /// whole (there is nothing running to diff against).
    pub(super) fn adopt(&mut self, new: Config) -> String {
        self.pid1.fallback = false;
        if let Some(f) = self.pid1.host_setup {
            self.pid1.unavailable = f(&new.host);
        }
        if new.host.control_socket != self.config.host.control_socket {
            log::warn!(
                "control_socket {} takes effect at the next boot; still serving {}",
                new.host.control_socket.display(),
                self.config.host.control_socket.display()
            );
        }
        let mut new = new;
        new.host.control_socket = self.config.host.control_socket.clone();
        log::set_max_level(self.opts.log_level_for(&new));
        self.sup = crate::supervisor::Supervisor::new(super::specs(&new));
        let n = new.units.len();
        self.config = new;
        self.reserve_runtimes();
        self.apply_network();
        self.start_autostart();
        format!("config loaded: {n} unit(s)")
    }
}
