//! Readiness, health checks and the hardware watchdog: the keys as
//! written (`RawReady`, `RawHealth`, `RawWatchdog`), their meaning
//! ([`Ready`], [`Health`], [`Watchdog`]) and their checks.
//!
//! A unit has at most one way to say it is ready, and at most one health
//! probe; both are checked where they are written, so a bad `ready` in
//! `[defaults]` is reported once, there.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Checker;

/// Default bound on the time from start to ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default pause between two readiness probes.
pub const DEFAULT_READY_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound on one readiness probe.
pub const DEFAULT_READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default pause between two health probes.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// Default bound on one health probe.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of failed health probes in a row that end a unit.
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;
/// Default watchdog device.
pub const DEFAULT_WATCHDOG_DEVICE: &str = "/dev/watchdog";
/// Default hardware watchdog timeout.
pub const DEFAULT_WATCHDOG_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a required unit may be down before the petting stops.
pub const DEFAULT_WATCHDOG_GRACE: Duration = Duration::from_secs(60);
/// Highest fd number `notify_fd` may name.
pub const MAX_NOTIFY_FD: i64 = 1023;

/// `ready = { ... }`: when a started unit counts as ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// How readiness is learnt.
    pub kind: ReadyKind,
    /// Not ready this long after the start: the start failed.
    pub timeout: Duration,
}

/// The ways a unit says it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyKind {
    /// The command writes a newline to this fd (a pipe the agent reads).
    NotifyFd(i32),
    /// The command sends `READY=1` to `$NOTIFY_SOCKET` (sd_notify).
    Systemd,
    /// A probe that succeeds: run again every `interval` until it does.
    Probe {
        /// What to try.
        probe: Probe,
        /// Pause between two tries.
        interval: Duration,
        /// Bound on one try; a try still running then failed.
        timeout: Duration,
    },
    /// A line of the unit's output contains this text.
    Log(String),
}

/// An active check of a running unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A command run inside the zone, as `zonit ctl exec` runs it; exit
    /// status 0 is a success.
    Exec(Vec<String>),
    /// A TCP connect to this port: a zone's, to 127.0.0.1 inside its
    /// network namespace; a guest's, to its address from the host's.
    Tcp(u16),
}

/// `health = { ... }`: a probe repeated while the unit runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// What to try.
    pub probe: Probe,
    /// Pause between two probes.
    pub interval: Duration,
    /// Bound on one probe; a probe still running then failed.
    pub timeout: Duration,
    /// Failed probes in a row that end the unit as `unhealthy`.
    pub retries: u32,
}

/// `[host] watchdog = { ... }`: the hardware watchdog, petted while the
/// units in `require` are up and healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    /// The watchdog's character device.
    pub device: PathBuf,
    /// Hardware timeout, whole seconds.
    pub timeout: Duration,
    /// Units that must be running and healthy.
    pub require: Vec<String>,
    /// How long a required unit may be otherwise before the petting stops.
    pub grace: Duration,
}

/// `ready` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReady {
    pub notify: Option<Spanned<String>>,
    pub notify_fd: Option<Spanned<i64>>,
    pub exec: Option<Spanned<Vec<Spanned<String>>>>,
    pub tcp: Option<Spanned<i64>>,
    pub log: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub probe_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

/// `health` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub exec: Option<Spanned<Vec<Spanned<String>>>>,
    pub tcp: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
}

/// `[host] watchdog` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatchdog {
    pub device: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub require: Option<Vec<Spanned<String>>>,
    pub grace: Option<Spanned<String>>,
}

/// Which units a `ready` or `health` is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum For {
    /// A zone, or `[defaults]` (which hands it to zones).
    Zone,
    /// A guest: only its console and its address can tell (no command
    /// runs inside it, and it has no notify channel).
    Guest,
}

/// A duration above zero, or `None` (reported) when it is zero.
fn above_zero(
    c: &mut Checker<'_, '_>,
    key: &str,
    raw: Option<&Spanned<String>>,
) -> Option<Duration> {
    let d = c.duration(key, raw)?;
    if d.is_zero()
        && let Some(raw) = raw
    {
        c.error(raw.span(), key, "it must be above zero");
        return None;
    }
    Some(d)
}

fn port(c: &mut Checker<'_, '_>, key: &str, raw: &Spanned<i64>) -> Option<u16> {
    match u16::try_from(*raw.get_ref()) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            c.error(
                raw.span(),
                key,
                format!("{} is not a TCP port; give 1 to 65535", raw.get_ref()),
            );
            None
        }
    }
}

fn argv(
    c: &mut Checker<'_, '_>,
    key: &str,
    raw: &Spanned<Vec<Spanned<String>>>,
) -> Option<Vec<String>> {
    if raw.get_ref().is_empty() {
        c.error(
            raw.span(),
            key,
            "the command is empty; give the program and its arguments, as in [\"/bin/check\"]",
        );
        return None;
    }
    let args: Vec<Option<String>> = raw
        .get_ref()
        .iter()
        .map(|a| c.exec_string(key, a, a.get_ref().len()))
        .collect();
    args.into_iter().collect()
}

/// The one probe kind of a `ready` or `health` table: reports none or
/// several at `whole`.
fn one_kind(
    c: &mut Checker<'_, '_>,
    key: &str,
    whole: &Spanned<impl Sized>,
    given: &[(&str, bool)],
) -> Option<usize> {
    let set: Vec<usize> = (0..given.len()).filter(|&i| given[i].1).collect();
    let names: Vec<String> = given.iter().map(|(n, _)| format!("`{n}`")).collect();
    match set.as_slice() {
        [one] => Some(*one),
        [] => {
            c.error(
                whole.span(),
                key,
                format!("it says nothing to check; give one of {}", names.join(", ")),
            );
            None
        }
        _ => {
            let chosen: Vec<&str> = set.iter().map(|&i| given[i].0).collect();
            c.error(
                whole.span(),
                key,
                format!(
                    "it gives {}; give exactly one of {}",
                    chosen.join(" and "),
                    names.join(", ")
                ),
            );
            None
        }
    }
}

/// Checks a `ready` table for a unit of kind `kind`.
pub fn ready(c: &mut Checker<'_, '_>, raw: &Spanned<RawReady>, kind: For) -> Option<Ready> {
    let r = raw.get_ref();
    let which = one_kind(
        c,
        "ready",
        raw,
        &[
            ("notify", r.notify.is_some()),
            ("exec", r.exec.is_some()),
            ("tcp", r.tcp.is_some()),
            ("log", r.log.is_some()),
        ],
    );
    let timeout = above_zero(c, "ready.timeout", r.timeout.as_ref());
    let interval = above_zero(c, "ready.interval", r.interval.as_ref());
    let probe_timeout = above_zero(c, "ready.probe_timeout", r.probe_timeout.as_ref());
    if kind == For::Guest && which.is_some_and(|w| w < 2) {
        c.error(
            raw.span(),
            "ready",
            "a guest says it is ready on its console or by a port: use `log` or `tcp`",
        );
        return None;
    }
    for (key, raw) in [
        ("interval", &r.interval),
        ("probe_timeout", &r.probe_timeout),
    ] {
        if let (Some(raw), Some(0 | 3)) = (raw, which) {
            c.error(
                raw.span(),
                &format!("ready.{key}"),
                format!("only `exec` and `tcp` are probes; remove {key}"),
            );
        }
    }
    if let (Some(fd), Some(w)) = (&r.notify_fd, which)
        && (w != 0 || r.notify.as_ref().is_some_and(|n| n.get_ref() != "fd"))
    {
        c.error(
            fd.span(),
            "ready.notify_fd",
            "it goes with notify = \"fd\" only; remove it",
        );
    }
    let probe_kind = |probe| ReadyKind::Probe {
        probe,
        interval: interval.unwrap_or(DEFAULT_READY_INTERVAL),
        timeout: probe_timeout.unwrap_or(DEFAULT_READY_PROBE_TIMEOUT),
    };
    let kind = match which? {
        0 => {
            let notify = r.notify.as_ref()?;
            match notify.get_ref().as_str() {
                "fd" => {
                    let fd = match &r.notify_fd {
                        None => 3,
                        Some(fd) if (3..=MAX_NOTIFY_FD).contains(fd.get_ref()) => {
                            *fd.get_ref() as i32
                        }
                        Some(fd) => {
                            c.error(
                                fd.span(),
                                "ready.notify_fd",
                                format!(
                                    "{} is not an fd the command can be given; choose 3 to {MAX_NOTIFY_FD} (0 to 2 are stdio)",
                                    fd.get_ref()
                                ),
                            );
                            return None;
                        }
                    };
                    ReadyKind::NotifyFd(fd)
                }
                "systemd" => ReadyKind::Systemd,
                other => {
                    c.error(
                        notify.span(),
                        "ready.notify",
                        format!("\"{}\" is not one of: fd, systemd", other.escape_debug()),
                    );
                    return None;
                }
            }
        }
        1 => probe_kind(Probe::Exec(argv(c, "ready.exec", r.exec.as_ref()?)?)),
        2 => probe_kind(Probe::Tcp(port(c, "ready.tcp", r.tcp.as_ref()?)?)),
        _ => {
            let text = r.log.as_ref()?;
            if text.get_ref().is_empty() || text.get_ref().contains(['\n', '\0']) {
                c.error(
                    text.span(),
                    "ready.log",
                    "give the text a line of output contains: not empty, without newline or NUL",
                );
                return None;
            }
            ReadyKind::Log(text.get_ref().clone())
        }
    };
    Some(Ready {
        kind,
        timeout: timeout.unwrap_or(DEFAULT_READY_TIMEOUT),
    })
}

/// Checks a `health` table for a unit of kind `kind`.
pub fn health(c: &mut Checker<'_, '_>, raw: &Spanned<RawHealth>, kind: For) -> Option<Health> {
    let h = raw.get_ref();
    let which = one_kind(
        c,
        "health",
        raw,
        &[("exec", h.exec.is_some()), ("tcp", h.tcp.is_some())],
    );
    if kind == For::Guest && which == Some(0) {
        c.error(
            raw.span(),
            "health",
            "a guest runs no probe command: use `tcp`",
        );
        return None;
    }
    let interval = above_zero(c, "health.interval", h.interval.as_ref());
    let timeout = above_zero(c, "health.timeout", h.timeout.as_ref());
    let retries = match &h.retries {
        None => Some(DEFAULT_HEALTH_RETRIES),
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                c.error(
                    n.span(),
                    "health.retries",
                    format!(
                        "{} is not a number of failures in a row between 1 and {}",
                        n.get_ref(),
                        u32::MAX
                    ),
                );
                None
            }
        },
    };
    let probe = match which? {
        0 => Probe::Exec(argv(c, "health.exec", h.exec.as_ref()?)?),
        _ => Probe::Tcp(port(c, "health.tcp", h.tcp.as_ref()?)?),
    };
    Some(Health {
        probe,
        interval: interval.unwrap_or(DEFAULT_HEALTH_INTERVAL),
        timeout: timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
        retries: retries?,
    })
}

/// Checks `[host] watchdog`; whether `require` names units is checked with
/// the units.
pub fn watchdog(c: &mut Checker<'_, '_>, raw: &Spanned<RawWatchdog>) -> Option<Watchdog> {
    let w = raw.get_ref();
    let device = match &w.device {
        Some(_) => c.abs_path("watchdog.device", w.device.as_ref())?,
        None => PathBuf::from(DEFAULT_WATCHDOG_DEVICE),
    };
    let timeout = match above_zero(c, "watchdog.timeout", w.timeout.as_ref()) {
        Some(d) if d.subsec_nanos() != 0 || i32::try_from(d.as_secs()).is_err() => {
            if let Some(raw) = &w.timeout {
                c.error(
                    raw.span(),
                    "watchdog.timeout",
                    "a watchdog counts whole seconds; give one, as in \"30s\"",
                );
            }
            return None;
        }
        Some(d) => d,
        None if w.timeout.is_some() => return None,
        None => DEFAULT_WATCHDOG_TIMEOUT,
    };
    let grace = match &w.grace {
        Some(_) => c.duration("watchdog.grace", w.grace.as_ref())?,
        None => DEFAULT_WATCHDOG_GRACE,
    };
    let mut require: Vec<String> = Vec::new();
    for name in w.require.iter().flatten() {
        if !require.contains(name.get_ref()) {
            require.push(name.get_ref().clone());
        }
    }
    Some(Watchdog {
        device,
        timeout,
        require,
        grace,
    })
}
