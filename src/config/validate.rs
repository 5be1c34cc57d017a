//! From raw sections to the validated [`Config`]: gives every value its
//! meaning, merges `[defaults]` into units, and checks what involves several
//! units (unique names, `after` references and cycles, `exit_with`).
//!
//! Values are checked where they are written: a bad default is reported
//! once, at `[defaults]`, not once per unit that inherits it. The keys
//! `[defaults]` shares with units are declared with their unit (`super`,
//! through `shared.rs`), each naming its check here: each unit's are
//! first checked into "parts" whose fields are all optional; merging is
//! then `unit.or(defaults)` per key (per entry for `env` and `rlimits`,
//! per field for `backoff`), and `build` puts the unit together from its
//! own keys, checked here, and the merged ones, built-in defaults filling
//! what is left.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::sys::resource::Resource;
use toml::Spanned;

use super::document::{RawDocument, RawUnit, RawUnitKind, Reporter};
use super::names;
use super::network as net;
use super::raw::{
    Limit, RawBackoff, RawDefaults, RawGuest, RawHealth, RawHost, RawReady, RawStartLimit, RawZone,
    RawZoneShared, Size,
};
use super::ready::{self, For};
use super::shared::Merge;
use super::units::{parse_duration, parse_size};
use super::{
    Backoff, BindMount, CgroupLimits, CommonOwn, CommonPart, Config, CtrlAltDel,
    DEFAULT_CONTROL_SOCKET, Disk, Guest, GuestOwn, GuestPart, Host, Network, NetworkDef, Nic,
    OnReboot, PortForward, RestartPolicy, StartLimit, TemplateMode, Unit, UnitKind, Zone, ZoneOwn,
    ZonePart,
};
use crate::vmm::limits;

/// Longest single argument or environment string execve(2) takes,
/// `MAX_ARG_STRLEN` (32 pages), its terminating NUL included.
pub const MAX_EXEC_STRING: usize = 32 * 4096;
/// Longest unix socket path: `sun_path` holds 108 bytes with the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Checks the whole document. Returns `None` if anything was reported
/// (here or before).
pub fn build(doc: RawDocument, rep: &mut Reporter<'_>) -> Option<Config> {
    let host = match &doc.host {
        Some(raw) => host(raw, rep),
        None => Some(default_host()),
    };
    let defaults = match &doc.defaults {
        Some(raw) => defaults(raw, rep),
        None => Defaults::default(),
    };
    let interfaces = net::interfaces(&doc.interfaces, rep);
    let networks = net::networks(&doc.networks, rep);
    let mut units = Vec::with_capacity(doc.units.len());
    for raw in &doc.units {
        if let Some(unit) = unit(raw, &defaults, &networks, rep) {
            units.push(unit);
        }
    }
    net::assign(&doc, &mut units, &networks, &interfaces, rep);
    check_names(&doc.units, rep);
    check_after(&doc.units, rep);
    if let Some(raw) = &doc.host {
        check_exit_with(raw, &doc.units, rep);
        check_watchdog_require(raw, &doc.units, rep);
    }
    let host = host?;
    if !rep.diagnostics.is_empty() {
        return None;
    }
    Some(Config {
        host,
        interfaces,
        networks,
        units,
    })
}

/// Checks values of one section; every method reports at the value's span
/// and names the key and section.
pub(super) struct Checker<'r, 'f> {
    rep: &'r mut Reporter<'f>,
    label: String,
    ok: bool,
}

impl<'r, 'f> Checker<'r, 'f> {
    pub(super) fn new(rep: &'r mut Reporter<'f>, label: impl Into<String>) -> Self {
        Checker {
            rep,
            label: label.into(),
            ok: true,
        }
    }

    pub(super) fn error(&mut self, span: Range<usize>, key: &str, message: impl std::fmt::Display) {
        self.ok = false;
        let label = &self.label;
        self.rep
            .at(span, format!("invalid `{key}` in {label}: {message}"));
    }

    /// The value of `result`, or `None` with its error reported at `span`.
    fn reported<T>(
        &mut self,
        span: Range<usize>,
        key: &str,
        result: Result<T, impl std::fmt::Display>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(span, key, e);
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
    ) -> Option<Duration> {
        let value = value?;
        match parse_duration(value.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(value.span(), key, e);
                None
            }
        }
    }

    pub(super) fn size(&mut self, key: &str, value: Option<&Spanned<Size>>) -> Option<u64> {
        let value = value?;
        let parsed = match value.get_ref() {
            Size::Text(text) => parse_size(text),
            Size::Bytes(n) => u64::try_from(*n).map_err(|_| "a size cannot be negative".into()),
        };
        match parsed {
            Ok(n) => Some(n),
            Err(e) => {
                self.error(value.span(), key, e);
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let value = value?;
        if let Some((_, v)) = choices.iter().find(|(n, _)| *n == value.get_ref()) {
            return Some(*v);
        }
        let list: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        self.error(
            value.span(),
            key,
            format!(
                "\"{}\" is not one of: {}",
                value.get_ref().escape_debug(),
                list.join(", ")
            ),
        );
        None
    }

    /// An absolute path without NUL bytes (it becomes a C string later).
    pub(super) fn abs_path(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
    ) -> Option<PathBuf> {
        let value = value?;
        let text = value.get_ref();
        if text.contains('\0') {
            self.error(value.span(), key, "a path cannot contain a NUL byte");
            None
        } else if !text.starts_with('/') {
            self.error(
                value.span(),
                key,
                format!(
                    "\"{}\" is not an absolute path; start it with /",
                    text.escape_debug()
                ),
            );
            None
        } else {
            Some(PathBuf::from(text))
        }
    }

    pub(super) fn positive_int(&mut self, key: &str, value: Option<&Spanned<i64>>) -> Option<u64> {
        let value = value?;
        match u64::try_from(*value.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.error(
                    value.span(),
                    key,
                    format!("{} is not a positive integer", value.get_ref()),
                );
                None
            }
        }
    }

    /// A guest's `memory_max`, `cpu_max` and `pids_max`.
    fn cgroup_limits(
        &mut self,
        memory: Option<&Spanned<Size>>,
        cpu: Option<&Spanned<f64>>,
        pids: Option<&Spanned<i64>>,
    ) -> CgroupLimits {
        CgroupLimits {
            memory_max: memory_max(self, "memory_max", memory),
            cpu_max: cpu_max(self, "cpu_max", cpu),
            pids_max: self.positive_int("pids_max", pids),
        }
    }

    /// The `[network.X]` that `value` names.
    fn network_name<'n>(
        &mut self,
        key: &str,
        value: &Spanned<String>,
        networks: &'n [NetworkDef],
    ) -> Option<&'n NetworkDef> {
        let text = value.get_ref();
        if let Some(def) = networks.iter().find(|n| &n.name == text) {
            return Some(def);
        }
        let all: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        let hint = names::closest(text, &all)
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        let modes = if key == "network" {
            "\"none\", \"host\" or "
        } else {
            ""
        };
        self.error(
            value.span(),
            key,
            format!(
                "`{}` is no [network.X] of this file{hint}; expected {modes}the name of a [network.X]",
                text.escape_debug()
            ),
        );
        None
    }

    /// Port forwards as written (`"8080:80"`, `"5353:53/udp"`).
    fn ports(&mut self, list: Option<&[Spanned<String>]>) -> Vec<PortForward> {
        let mut ports = Vec::new();
        for p in list.into_iter().flatten() {
            match net::parse_port(p.get_ref()) {
                Some(fwd) => ports.push(fwd),
                None => self.error(
                    p.span(),
                    "ports",
                    format!(
                        "\"{}\" is not HOST:PORT with ports 1 to 65535 and an optional /tcp or /udp, as in \"8080:80\" or \"5353:53/udp\"",
                        p.get_ref().escape_debug()
                    ),
                ),
            }
        }
        ports
    }

    fn no_nul(&mut self, key: &str, value: &Spanned<String>) -> Option<String> {
        if value.get_ref().contains('\0') {
            self.error(value.span(), key, "the value cannot contain a NUL byte");
            None
        } else {
            Some(value.get_ref().clone())
        }
    }

    /// `value` as one string of a command's argv or environment: no NUL,
    /// and short enough for execve(2), which refuses the whole exec (E2BIG)
    /// otherwise, at every start.
    pub(super) fn exec_string(
        &mut self,
        key: &str,
        value: &Spanned<String>,
        len: usize,
    ) -> Option<String> {
        let v = self.no_nul(key, value)?;
        if len + 1 > MAX_EXEC_STRING {
            self.error(
                value.span(),
                key,
                format!(
                    "the string is {len} bytes; execve(2) takes at most {} per argument or environment entry",
                    MAX_EXEC_STRING - 1
                ),
            );
            return None;
        }
        Some(v)
    }
}

fn default_host() -> Host {
    Host {
        hostname: None,
        modules: Vec::new(),
        sysctl: BTreeMap::new(),
        log_level: log::LevelFilter::Info,
        syslog: None,
        metrics: None,
        control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        shutdown_timeout: Duration::from_secs(30),
        ctrl_alt_del: CtrlAltDel::Reboot,
        rescue_shell: None,
        exit_with: None,
        mounts: Vec::new(),
        watchdog: None,
    }
}

const LOG_LEVELS: [(&str, log::LevelFilter); 5] = [
    ("error", log::LevelFilter::Error),
    ("warn", log::LevelFilter::Warn),
    ("info", log::LevelFilter::Info),
    ("debug", log::LevelFilter::Debug),
    ("trace", log::LevelFilter::Trace),
];

fn host(raw: &RawHost, rep: &mut Reporter<'_>) -> Option<Host> {
    let mut c = Checker::new(rep, "[host]");
    let mut host = default_host();
    if let Some(name) = &raw.hostname {
        if names::is_valid_hostname(name.get_ref()) {
            host.hostname = Some(name.get_ref().clone());
        } else {
            c.error(name.span(), "hostname", HOSTNAME_RULE);
        }
    }
    for module in raw.modules.iter().flatten() {
        let name = module.get_ref();
        if name.is_empty() || name.contains(['/', '\0']) || name.contains(char::is_whitespace) {
            c.error(
                module.span(),
                "modules",
                format!(
                    "\"{}\" is not a module name; give the name as modprobe takes it, such as \"kvm_amd\"",
                    name.escape_debug()
                ),
            );
        } else {
            host.modules.push(name.clone());
        }
    }
    for (key, value) in raw.sysctl.iter().flatten() {
        // The key becomes a path under /proc/sys; never let it climb out.
        let valid = !key.is_empty()
            && key
                .split(['.', '/'])
                .all(|part| !part.is_empty() && part != "..")
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !valid {
            c.error(
                value.span(),
                "sysctl",
                format!(
                    "\"{}\" is not a sysctl name; write it dotted, as in \"net.ipv4.ip_forward\"",
                    key.escape_debug()
                ),
            );
        } else if let Some(v) = c.no_nul("sysctl", value) {
            host.sysctl.insert(key.clone(), v);
        }
    }
    if let Some(level) = c.choice("log_level", raw.log_level.as_ref(), &LOG_LEVELS) {
        host.log_level = level;
    }
    if let Some(target) = &raw.syslog {
        match syslog_target(target.get_ref()) {
            Some(t) => host.syslog = Some(t),
            None => c.error(
                target.span(),
                "syslog",
                format!(
                    "\"{}\" is not udp://IP:PORT or tcp://IP:PORT; the host must be an IP address (nothing is resolved at boot), as in \"udp://192.0.2.10:514\"",
                    target.get_ref().escape_debug()
                ),
            ),
        }
    }
    if let Some(addr) = &raw.metrics {
        match metrics_addr(addr.get_ref()) {
            Some(a) => host.metrics = Some(a),
            None => c.error(
                addr.span(),
                "metrics",
                format!(
                    "\"{}\" is not IP:PORT or unix:/PATH, as in \"127.0.0.1:9321\" or \"unix:/run/zonit/metrics.sock\" (a path of at most {MAX_SOCKET_PATH} bytes)",
                    addr.get_ref().escape_debug()
                ),
            ),
        }
    }
    if let Some(path) = c.abs_path("control_socket", raw.control_socket.as_ref()) {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            if let Some(raw_path) = raw.control_socket.as_ref() {
                c.error(
                    raw_path.span(),
                    "control_socket",
                    format!(
                        "the path is {len} bytes; a unix socket path holds at most {MAX_SOCKET_PATH}: choose a shorter one"
                    ),
                );
            }
        } else {
            host.control_socket = path;
        }
    }
    if let Some(d) = c.duration("shutdown_timeout", raw.shutdown_timeout.as_ref()) {
        host.shutdown_timeout = d;
    }
    let actions = [
        ("reboot", CtrlAltDel::Reboot),
        ("poweroff", CtrlAltDel::Poweroff),
        ("ignore", CtrlAltDel::Ignore),
    ];
    if let Some(a) = c.choice("ctrl_alt_del", raw.ctrl_alt_del.as_ref(), &actions) {
        host.ctrl_alt_del = a;
    }
    host.rescue_shell = c.abs_path("rescue_shell", raw.rescue_shell.as_ref());
    // Whether it names a unit is checked with the units.
    host.exit_with = raw.exit_with.as_ref().map(|n| n.get_ref().clone());
    host.mounts = super::hostmounts::host_mounts(&mut c, raw.mounts.as_deref().unwrap_or_default());
    // Whether `require` names units is checked with the units.
    host.watchdog = raw
        .watchdog
        .as_ref()
        .and_then(|w| ready::watchdog(&mut c, w));
    c.ok.then_some(host)
}

const HOSTNAME_RULE: &str = "a host name is 1 to 64 characters: letters, digits and hyphens, in dot-separated labels that neither start nor end with a hyphen";

fn metrics_addr(text: &str) -> Option<super::MetricsAddr> {
    if let Some(path) = text.strip_prefix("unix:") {
        let ok = path.starts_with('/') && path.len() <= MAX_SOCKET_PATH && !path.contains('\0');
        return ok.then(|| super::MetricsAddr::Unix(path.into()));
    }
    let addr: SocketAddr = text.parse().ok()?;
    (addr.port() != 0).then_some(super::MetricsAddr::Tcp(addr))
}

fn syslog_target(text: &str) -> Option<super::SyslogTarget> {
    let (scheme, addr) = text.split_once("://")?;
    let addr: SocketAddr = addr.parse().ok()?;
    if addr.port() == 0 {
        return None;
    }
    match scheme {
        "udp" => Some(super::SyslogTarget::Udp(addr)),
        "tcp" => Some(super::SyslogTarget::Tcp(addr)),
        _ => None,
    }
}

/// `[defaults]`, checked once.
#[derive(Debug, Default)]
struct Defaults {
    common: CommonPart,
    zone: ZonePart,
    guest: GuestPart,
}

fn defaults(raw: &RawDefaults, rep: &mut Reporter<'_>) -> Defaults {
    let mut c = Checker::new(rep, "[defaults]");
    Defaults {
        common: CommonPart::check(&mut c, &raw.common),
        zone: ZonePart::check(&mut c, &raw.zone),
        guest: GuestPart::check(&mut c, &raw.guest),
    }
}

// The checks of the keys `[defaults]` shares with units, named in their
// declarations (`super::Common`, `super::Zone`, `super::Guest`). Each
// takes the key's name and its value as written, if any, and returns the
// checked value, or `None` when it is absent or bad (reported).

/// A value kept as written (`network`, resolved later with the zone).
pub(super) fn as_written<T: Clone>(
    _c: &mut Checker<'_, '_>,
    _key: &str,
    value: Option<&T>,
) -> Option<T> {
    value.cloned()
}

/// A boolean (`autostart`): TOML already checked its type.
pub(super) fn flag(
    _c: &mut Checker<'_, '_>,
    _key: &str,
    value: Option<&Spanned<bool>>,
) -> Option<bool> {
    value.map(|v| *v.get_ref())
}

const RESTART_POLICIES: [(&str, RestartPolicy); 3] = [
    ("never", RestartPolicy::Never),
    ("on-failure", RestartPolicy::OnFailure),
    ("always", RestartPolicy::Always),
];

pub(super) fn restart(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<String>>,
) -> Option<RestartPolicy> {
    c.choice(key, value, &RESTART_POLICIES)
}

/// `backoff` checked: the delays it gives. A unit's `backoff = { max =
/// "5s" }` keeps the `initial` of `[defaults]`, so it merges field by
/// field.
#[derive(Debug, Clone, Default)]
pub(super) struct BackoffPart {
    initial: Option<Duration>,
    max: Option<Duration>,
    reset_after: Option<Duration>,
}

impl Merge for BackoffPart {
    fn merge(self, defaults: &Self) -> Self {
        BackoffPart {
            initial: self.initial.or(defaults.initial),
            max: self.max.or(defaults.max),
            reset_after: self.reset_after.or(defaults.reset_after),
        }
    }
}

/// The built-in delays fill what neither the unit nor `[defaults]` gave.
impl From<BackoffPart> for Backoff {
    fn from(part: BackoffPart) -> Backoff {
        let builtin = Backoff::default();
        Backoff {
            initial: part.initial.unwrap_or(builtin.initial),
            max: part.max.unwrap_or(builtin.max),
            reset_after: part.reset_after.unwrap_or(builtin.reset_after),
        }
    }
}

pub(super) fn backoff(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<RawBackoff>>,
) -> Option<BackoffPart> {
    let b = value?.get_ref();
    let mut part = BackoffPart {
        initial: c.duration(&format!("{key}.initial"), b.initial.as_ref()),
        max: c.duration(&format!("{key}.max"), b.max.as_ref()),
        reset_after: c.duration(&format!("{key}.reset_after"), b.reset_after.as_ref()),
    };
    // A zero first delay would let a crashing unit restart in a tight
    // loop that starves PID 1.
    if let (Some(d), Some(raw)) = (part.initial, &b.initial)
        && d.is_zero()
    {
        c.error(
            raw.span(),
            &format!("{key}.initial"),
            "the first restart delay must be above zero",
        );
        part.initial = None;
    }
    Some(part)
}

pub(super) fn start_limit(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<RawStartLimit>>,
) -> Option<StartLimit> {
    let l = value?.get_ref();
    let burst = match u32::try_from(*l.burst.get_ref()) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            c.error(
                l.burst.span(),
                &format!("{key}.burst"),
                format!(
                    "{} is not a number of starts between 1 and {}",
                    l.burst.get_ref(),
                    u32::MAX
                ),
            );
            None
        }
    };
    let interval_key = format!("{key}.interval");
    let interval = match c.duration(&interval_key, Some(&l.interval)) {
        Some(d) if d.is_zero() => {
            c.error(
                l.interval.span(),
                &interval_key,
                "the window must be above zero",
            );
            None
        }
        other => other,
    };
    Some(StartLimit {
        burst: burst?,
        interval: interval?,
    })
}

/// `memory_max`, zone or guest alike: a size above zero.
pub(super) fn memory_max(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<Size>>,
) -> Option<u64> {
    let bytes = c.size(key, value)?;
    if bytes == 0 {
        if let Some(raw) = value {
            c.error(
                raw.span(),
                key,
                "a unit needs some memory; give a size above zero or leave memory_max out",
            );
        }
        return None;
    }
    Some(bytes)
}

/// `cpu_max`, zone or guest alike: a positive number of CPUs.
pub(super) fn cpu_max(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<f64>>,
) -> Option<f64> {
    let cpu = value?;
    let v = *cpu.get_ref();
    if v.is_finite() && v > 0.0 {
        Some(v)
    } else {
        c.error(
            cpu.span(),
            key,
            format!("{v} is not a positive number of CPUs; write for instance 0.5 or 2"),
        );
        None
    }
}

pub(super) fn user(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<String>>,
) -> Option<(u32, u32)> {
    let user = value?;
    let parsed = parse_user(user.get_ref());
    if parsed.is_none() {
        c.error(
            user.span(),
            key,
            format!(
                "\"{}\" is not UID:GID; write two numbers, as in \"1000:1000\"",
                user.get_ref().escape_debug()
            ),
        );
    }
    parsed
}

/// The capabilities named, sorted, each once; a bad name is reported and
/// left out.
pub(super) fn capabilities(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Vec<Spanned<String>>>,
) -> Option<Vec<u8>> {
    let list = value?;
    let mut caps = Vec::with_capacity(list.len());
    for cap in list {
        match names::capability_number(cap.get_ref()) {
            Some(n) => caps.push(n),
            None => c.error(
                cap.span(),
                key,
                format!(
                    "\"{}\" is not a Linux capability; use names like \"CAP_NET_BIND_SERVICE\" from capabilities(7)",
                    cap.get_ref().escape_debug()
                ),
            ),
        }
    }
    caps.sort_unstable();
    caps.dedup();
    Some(caps)
}

/// The limits given; a bad entry is reported and left out.
pub(super) fn rlimits(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&BTreeMap<String, Spanned<Limit>>>,
) -> Option<BTreeMap<Resource, u64>> {
    let mut rlimits = BTreeMap::new();
    for (name, limit) in value? {
        let key = format!("{key}.{name}");
        let Some(resource) = names::rlimit(name) else {
            // The key check reports unknown names first; this is for a
            // table that reached here some other way.
            c.error(
                limit.span(),
                &key,
                format!("`{}` is not a resource limit", name.escape_debug()),
            );
            continue;
        };
        let value = match limit.get_ref() {
            Limit::Number(n) => u64::try_from(*n).ok(),
            Limit::Text(t) if t == "unlimited" || t == "infinity" => Some(libc::RLIM_INFINITY),
            Limit::Text(_) => None,
        };
        match value {
            Some(v) => {
                rlimits.insert(resource, v);
            }
            None => c.error(
                limit.span(),
                &key,
                "a limit is a non-negative integer or \"unlimited\"",
            ),
        }
    }
    Some(rlimits)
}

pub(super) fn stop_signal(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<String>>,
) -> Option<i32> {
    let sig = value?;
    let Some(n) = names::signal_number(sig.get_ref()) else {
        c.error(
            sig.span(),
            key,
            format!(
                "\"{}\" is not a signal name; use one of: {}",
                sig.get_ref().escape_debug(),
                names::signal_names()
            ),
        );
        return None;
    };
    let pauses = [
        libc::SIGSTOP,
        libc::SIGCONT,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ];
    if pauses.contains(&n) {
        c.error(
            sig.span(),
            key,
            format!(
                "\"{}\" pauses or resumes a process instead of ending it, so every stop would wait for stop_timeout and kill; use SIGTERM, SIGINT, SIGQUIT or the signal the program shuts down on",
                sig.get_ref().escape_debug()
            ),
        );
        return None;
    }
    Some(n)
}

/// The variables given; a bad one is reported and left out.
pub(super) fn env(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&BTreeMap<String, Spanned<String>>>,
) -> Option<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for (name, value) in value? {
        if name.is_empty() || name.contains(['=', '\0']) {
            c.error(
                value.span(),
                key,
                format!(
                    "\"{}\" is not an environment variable name; it must be non-empty, without '=' or NUL",
                    name.escape_debug()
                ),
            );
        } else if let Some(v) = c.exec_string(key, value, name.len() + 1 + value.get_ref().len()) {
            env.insert(name.clone(), v);
        }
    }
    Some(env)
}

/// A zone's `ready`, its own or from `[defaults]` (a guest's has no
/// default).
pub(super) fn zone_ready(
    c: &mut Checker<'_, '_>,
    _key: &str,
    value: Option<&Spanned<RawReady>>,
) -> Option<super::Ready> {
    ready::ready(c, value?, For::Zone)
}

/// A zone's `health`, its own or from `[defaults]`.
pub(super) fn zone_health(
    c: &mut Checker<'_, '_>,
    _key: &str,
    value: Option<&Spanned<RawHealth>>,
) -> Option<super::Health> {
    ready::health(c, value?, For::Zone)
}

fn parse_user(text: &str) -> Option<(u32, u32)> {
    let (uid, gid) = text.split_once(':')?;
    let parse = |s: &str| -> Option<u32> {
        // -1 (u32::MAX) means "unchanged" to setresuid(2); it is not an id.
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .filter(|&id| id != u32::MAX)
    };
    Some((parse(uid)?, parse(gid)?))
}

// A guest's memory, vCPUs and command line are checked against the
// monitor's own limits (`vmm::limits`), so a guest that passes here is
// one the monitor accepts.

pub(super) fn guest_memory(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<Size>>,
) -> Option<u64> {
    let bytes = c.size(key, value)?;
    c.reported(value?.span(), key, limits::check_memory(bytes))
}

pub(super) fn vcpus(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<i64>>,
) -> Option<u32> {
    let vcpus = value?;
    c.reported(vcpus.span(), key, limits::check_vcpus(*vcpus.get_ref()))
        .map(u32::from)
}

pub(super) fn cmdline(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<String>>,
) -> Option<String> {
    let cmdline = value?;
    c.reported(
        cmdline.span(),
        key,
        limits::check_cmdline(cmdline.get_ref()),
    )?;
    c.no_nul(key, cmdline)
}

pub(super) fn on_reboot(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: Option<&Spanned<String>>,
) -> Option<OnReboot> {
    c.choice(
        key,
        value,
        &[("restart", OnReboot::Restart), ("stop", OnReboot::Stop)],
    )
}

fn unit(
    raw: &RawUnit,
    defaults: &Defaults,
    networks: &[NetworkDef],
    rep: &mut Reporter<'_>,
) -> Option<Unit> {
    let mut c = Checker::new(rep, label(raw));
    let common = CommonPart::check(&mut c, &raw.common).or(&defaults.common);
    let (kind, ready, health) = match &raw.kind {
        RawUnitKind::Zone(z, shared) => {
            let part = ZonePart::check(&mut c, shared).or(&defaults.zone);
            let (ready, health) = (part.ready.clone(), part.health.clone());
            let zone = zone(&mut c, raw, z, shared, part, networks);
            (zone.map(UnitKind::Zone), ready, health)
        }
        RawUnitKind::Guest(g, shared) => {
            // A guest's `ready` and `health` are its own: they have no
            // default.
            let ready = g
                .ready
                .as_ref()
                .and_then(|r| ready::ready(&mut c, r, For::Guest));
            let health = g
                .health
                .as_ref()
                .and_then(|h| ready::health(&mut c, h, For::Guest));
            let part = GuestPart::check(&mut c, shared).or(&defaults.guest);
            let guest = guest(&mut c, raw, g, part, networks);
            (guest.map(UnitKind::Guest), ready, health)
        }
    };
    let mut after: Vec<String> = Vec::new();
    for entry in after_of(raw) {
        if !after.contains(entry.get_ref()) {
            after.push(entry.get_ref().clone());
        }
    }
    let common = common.build(CommonOwn {
        after,
        ready,
        health,
    });
    let kind = kind?;
    c.ok.then(|| Unit {
        name: raw.name.get_ref().clone(),
        common,
        kind,
    })
}

fn after_of(raw: &RawUnit) -> &[Spanned<String>] {
    let after = match &raw.kind {
        RawUnitKind::Zone(z, _) => &z.after,
        RawUnitKind::Guest(g, _) => &g.after,
    };
    after.as_deref().unwrap_or(&[])
}

/// Reports a required key that is absent, unless it was present but
/// unreadable (already reported).
fn missing(c: &mut Checker<'_, '_>, raw: &RawUnit, key: &str, example: &str) {
    if raw.broken.contains(key) {
        c.ok = false;
        return;
    }
    let label = c.label.clone();
    c.ok = false;
    c.rep.at(
        raw.name.span(),
        format!("{label} has no `{key}`; it is required, as in {key} = {example}"),
    );
}

/// A zone from its own keys and its settings, merged with `[defaults]`
/// (`shared` holds the ones written in the zone).
fn zone(
    c: &mut Checker<'_, '_>,
    raw: &RawUnit,
    z: &RawZone,
    shared: &RawZoneShared,
    part: ZonePart,
    networks: &[NetworkDef],
) -> Option<Zone> {
    let name = raw.name.get_ref();

    let root = c.abs_path("root", z.root.as_ref());
    if z.root.is_none() {
        missing(c, raw, "root", &format!("\"/zones/{name}\""));
    }
    let template = c.abs_path("template", z.template.as_ref());
    let modes = [
        ("overlay", TemplateMode::Overlay),
        ("copy", TemplateMode::Copy),
    ];
    let template_mode = c.choice("template_mode", z.template_mode.as_ref(), &modes);
    if let (Some(mode), Some(_), None) = (&z.template_mode, template_mode, &z.template) {
        c.error(
            mode.span(),
            "template_mode",
            "it has no effect without `template`; add a template or remove template_mode",
        );
    }
    if template.is_some() && template_mode.unwrap_or(TemplateMode::Overlay) == TemplateMode::Overlay
    {
        // Both go into overlayfs's option string: the template as the
        // lower layer, the root's sibling state directory as upper/work.
        for (key, value, path) in [
            ("root", &z.root, &root),
            ("template", &z.template, &template),
        ] {
            if let (Some(value), Some(path)) = (value, path)
                && let Some(ch) = crate::zone::mount_plan::overlay_unsafe_char(path)
            {
                c.error(
                    value.span(),
                    key,
                    format!(
                        "the path holds `{ch}`, which overlayfs's mount options cannot carry (`,` `:` `\\` split them); choose a path without it"
                    ),
                );
            }
        }
    }
    let command = match &z.command {
        Some(cmd) if cmd.get_ref().is_empty() => {
            c.error(
                cmd.span(),
                "command",
                "the command is empty; give the program and its arguments, as in [\"/bin/httpd\", \"-f\"]",
            );
            None
        }
        Some(cmd) => {
            let args: Vec<Option<String>> = cmd
                .get_ref()
                .iter()
                .map(|a| c.exec_string("command", a, a.get_ref().len()))
                .collect();
            args.into_iter().collect::<Option<Vec<String>>>()
        }
        None => {
            missing(c, raw, "command", "[\"/bin/sh\", \"-c\", \"...\"]");
            None
        }
    };
    let hostname = match &z.hostname {
        Some(h) if names::is_valid_hostname(h.get_ref()) => Some(h.get_ref().clone()),
        Some(h) => {
            c.error(h.span(), "hostname", HOSTNAME_RULE);
            None
        }
        None => Some(name.clone()),
    };
    let workdir = match &z.workdir {
        Some(_) => c.abs_path("workdir", z.workdir.as_ref()),
        None => Some(PathBuf::from("/")),
    };
    let mut mounts = Vec::new();
    for (i, m) in z.mounts.iter().flatten().enumerate() {
        let m = m.get_ref();
        let source = c.abs_path(&format!("mounts[{i}].source"), Some(&m.source));
        let target = c.abs_path(&format!("mounts[{i}].target"), Some(&m.target));
        if let Some(t) = &target
            && Path::new(t).components().any(|p| p == Component::ParentDir)
        {
            c.error(
                m.target.span(),
                &format!("mounts[{i}].target"),
                "the target cannot contain `..`; name the place inside the zone directly",
            );
            continue;
        }
        if let (Some(source), Some(target)) = (source, target) {
            mounts.push(BindMount {
                source,
                target,
                readonly: m.readonly.unwrap_or(false),
            });
        }
    }
    let from_defaults = shared.network.is_none();
    let network = zone_network(c, name, part.network.as_ref(), from_defaults, networks, z);
    let ports = c.ports(z.ports.as_deref());
    let bridged = part
        .network
        .as_ref()
        .is_some_and(|n| !matches!(n.get_ref().as_str(), "none" | "host"));
    if !bridged && let Some(first) = z.ports.iter().flatten().next() {
        c.error(
            first.span(),
            "ports",
            "a port forward needs the zone on a [network.X]; set network = \"NAME\"",
        );
    }
    Some(part.build(ZoneOwn {
        root: root?,
        template,
        template_mode: template_mode.unwrap_or(TemplateMode::Overlay),
        command: command?,
        hostname: hostname?,
        workdir: workdir?,
        mounts,
        network: network?,
        ports,
    }))
}

/// A guest from its own keys and its settings, merged with `[defaults]`.
fn guest(
    c: &mut Checker<'_, '_>,
    raw: &RawUnit,
    g: &RawGuest,
    part: GuestPart,
    networks: &[NetworkDef],
) -> Option<Guest> {
    let kernel = c.abs_path("kernel", g.kernel.as_ref());
    if g.kernel.is_none() {
        missing(c, raw, "kernel", "\"/guests/vmlinuz\"");
    }
    let initrd = c.abs_path("initrd", g.initrd.as_ref());
    let raw_disks = g.disks.as_deref().unwrap_or_default();
    let raw_nics = g.nics.as_deref().unwrap_or_default();
    // Disks and nics share the monitor's virtio slots: reported at the
    // first one that does not fit.
    if let Err(e) = limits::check_virtio_devices(raw_disks.len() + raw_nics.len())
        && let Some((key, span)) = raw_disks
            .iter()
            .map(|d| ("disks", d.span()))
            .chain(raw_nics.iter().map(|n| ("nics", n.span())))
            .nth(limits::MAX_VIRTIO_DEVICES)
    {
        c.error(span, key, e);
    }
    let mut disks = Vec::new();
    for (i, d) in raw_disks.iter().enumerate() {
        let d = d.get_ref();
        if let Some(path) = c.abs_path(&format!("disks[{i}].path"), Some(&d.path)) {
            disks.push(Disk {
                path,
                readonly: d.readonly.unwrap_or(false),
            });
        }
    }
    let vcpus = part.vcpus.unwrap_or(limits::DEFAULT_VCPUS);
    let cgroup = c.cgroup_limits(
        g.memory_max.as_ref(),
        g.cpu_max.as_ref(),
        g.pids_max.as_ref(),
    );
    let name = raw.name.get_ref();
    let mut nics = Vec::new();
    for (i, n) in raw_nics.iter().enumerate() {
        let n = n.get_ref();
        let key = format!("nics[{i}]");
        let Some(network) = c.network_name(&format!("{key}.network"), &n.network, networks) else {
            continue;
        };
        let mac = match &n.mac {
            None => Some(net::derive_mac(name, i)),
            Some(m) => match net::check_mac(m.get_ref()) {
                Ok(mac) => Some(mac),
                Err(e) => {
                    c.error(m.span(), &format!("{key}.mac"), e);
                    None
                }
            },
        };
        let address = match &n.address {
            None => Some(None),
            Some(a) => match net::check_unit_address(network, a.get_ref()) {
                Ok(ip) => Some(Some(ip)),
                Err(e) => {
                    c.error(a.span(), &format!("{key}.address"), e);
                    None
                }
            },
        };
        if let (Some(mac), Some(address)) = (mac, address) {
            nics.push(Nic {
                network: network.name.clone(),
                mac,
                address,
                address6: None,
                host_ifname: net::tap_ifname(name, i),
            });
        }
    }
    let raw_nics = g.nics.as_deref().unwrap_or_default().len();
    if let (Some(pids), Some(raw)) = (cgroup.pids_max, &g.pids_max)
        && let Err(e) = limits::check_monitor_pids(pids, vcpus, raw_nics)
    {
        c.error(raw.span(), "pids_max", e);
    }
    let ports = c.ports(g.ports.as_deref());
    if let Some(p) = &g.ports
        && let Some(first) = p.first()
        && c.ok
        && !nics.iter().any(|n| n.address.is_some())
    {
        c.error(
            first.span(),
            "ports",
            "a port forward needs an address to forward to; give the guest's first nic an `address`",
        );
    }
    let tcp_probes = [
        (
            "ready.tcp",
            g.ready.as_ref().and_then(|r| r.get_ref().tcp.as_ref()),
        ),
        (
            "health.tcp",
            g.health.as_ref().and_then(|h| h.get_ref().tcp.as_ref()),
        ),
    ];
    for (key, tcp) in tcp_probes {
        if let Some(tcp) = tcp
            && c.ok
            && !nics.iter().any(|n| n.address.is_some())
        {
            c.error(
                tcp.span(),
                key,
                "a tcp probe connects to the guest's address; give one of its nics an `address`",
            );
        }
    }
    Some(part.build(GuestOwn {
        kernel: kernel?,
        initrd,
        disks,
        memory_max: cgroup.memory_max,
        cpu_max: cgroup.cpu_max,
        pids_max: cgroup.pids_max,
        nics,
        ports,
    }))
}

/// A zone's `network` (its own or, with `from_defaults`, from
/// `[defaults]`) with its `address`.
fn zone_network(
    c: &mut Checker<'_, '_>,
    name: &str,
    network: Option<&Spanned<String>>,
    from_defaults: bool,
    networks: &[NetworkDef],
    z: &RawZone,
) -> Option<Network> {
    let mode = match network.map(|n| n.get_ref().as_str()) {
        None | Some("none") => Network::None,
        Some("host") => Network::Host,
        Some(_) => {
            let written = network?;
            // A bad name from [defaults] is reported there, once.
            let label = if from_defaults {
                std::mem::replace(&mut c.label, "[defaults]".into())
            } else {
                c.label.clone()
            };
            let def = c.network_name("network", written, networks);
            c.label = label;
            let def = def?;
            let address = match &z.address {
                None => None,
                Some(a) => match net::check_unit_address(def, a.get_ref()) {
                    Ok(ip) => Some(ip),
                    Err(e) => {
                        c.error(a.span(), "address", e);
                        return None;
                    }
                },
            };
            return Some(Network::Bridged(Box::new(Nic {
                network: def.name.clone(),
                mac: net::derive_mac(name, 0),
                address,
                address6: None,
                host_ifname: net::zone_ifname(name),
            })));
        }
    };
    if let Some(a) = &z.address {
        c.error(
            a.span(),
            "address",
            "an address needs the zone on a [network.X]; set network = \"NAME\"",
        );
        return None;
    }
    Some(mode)
}

fn label(raw: &RawUnit) -> String {
    let kind = match raw.kind {
        RawUnitKind::Zone(..) => "zone",
        RawUnitKind::Guest(..) => "guest",
    };
    format!("[{kind}.{}]", raw.name.get_ref())
}

/// Names are well formed and not shared between a zone and a guest (the
/// TOML parser already refuses two `[zone.x]`).
fn check_names(units: &[RawUnit], rep: &mut Reporter<'_>) {
    let mut seen: HashMap<&str, &RawUnit> = HashMap::new();
    for raw in units {
        let name = raw.name.get_ref();
        if !names::is_valid_unit_name(name) {
            rep.at(
                raw.name.span(),
                format!(
                    "invalid name `{}` in {}; names are 1 to 32 characters of a-z, 0-9 and '-', starting with a letter or digit",
                    name.escape_debug(),
                    label(raw)
                ),
            );
        }
        if let Some(first) = seen.get(name.as_str()) {
            let (line, _) = rep.position(first.name.span().start);
            rep.at(
                raw.name.span(),
                format!(
                    "{} has the same name as {} (line {line}); zones and guests share one namespace, rename one of them",
                    label(raw),
                    label(first)
                ),
            );
        } else {
            seen.insert(name, raw);
        }
    }
}

/// `after` names existing units and has no cycle.
fn check_after(units: &[RawUnit], rep: &mut Reporter<'_>) {
    let index: HashMap<&str, usize> = units
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.get_ref().as_str(), i))
        .rev() // the first of duplicate names wins, as in check_names
        .collect();
    let all_names: Vec<&str> = units.iter().map(|u| u.name.get_ref().as_str()).collect();

    // edges[i]: (target unit, span of the `after` entry naming it)
    let mut edges: Vec<Vec<(usize, Range<usize>)>> = vec![Vec::new(); units.len()];
    for (i, raw) in units.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for entry in after_of(raw) {
            let target = entry.get_ref().as_str();
            match index.get(target) {
                Some(&j) => {
                    if seen.insert(j) {
                        edges[i].push((j, entry.span()));
                    }
                }
                None => {
                    let hint = names::closest(target, &all_names)
                        .map(|n| format!("; did you mean `{n}`?"))
                        .unwrap_or_default();
                    rep.at(
                        entry.span(),
                        format!(
                            "`after` in {} names `{}`, which is no zone or guest in this file{hint}",
                            label(raw),
                            target.escape_debug()
                        ),
                    );
                }
            }
        }
    }
    for (from, to, span) in find_cycles(&edges) {
        let path: Vec<&str> = to_cycle(&from, to, units);
        rep.at(
            span,
            format!(
                "`after` in {} closes a cycle: {}; a unit cannot start after itself, remove one of these `after` entries",
                label(&units[*from.last().unwrap_or(&0)]),
                path.join(" -> ")
            ),
        );
    }
}

fn to_cycle<'a>(stack: &[usize], to: usize, units: &'a [RawUnit]) -> Vec<&'a str> {
    let start = stack.iter().position(|&n| n == to).unwrap_or(0);
    stack[start..]
        .iter()
        .chain(std::iter::once(&to))
        .map(|&i| units[i].name.get_ref().as_str())
        .collect()
}

/// Depth-first search over `after` edges; each edge back onto the current
/// path closes a cycle. Returns, per such edge, the path from the root of
/// the search to the edge's source, the edge's target, and the edge's span.
/// Iterative, so a long chain of units cannot overflow PID 1's stack.
fn find_cycles(edges: &[Vec<(usize, Range<usize>)>]) -> Vec<(Vec<usize>, usize, Range<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    let mut cycles = Vec::new();
    for root in 0..edges.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some((to, span)) = edges[node].get(*next) else {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            };
            *next += 1;
            match mark[*to] {
                Mark::New => {
                    mark[*to] = Mark::OnPath;
                    stack.push((*to, 0));
                }
                Mark::OnPath => {
                    let path = stack.iter().map(|&(n, _)| n).collect();
                    cycles.push((path, *to, span.clone()));
                }
                Mark::Done => {}
            }
        }
    }
    cycles
}

fn check_exit_with(raw: &RawHost, units: &[RawUnit], rep: &mut Reporter<'_>) {
    if let Some(name) = &raw.exit_with {
        check_host_unit_ref("exit_with", name, units, rep);
    }
}

/// Every unit `[host] watchdog.require` names exists.
fn check_watchdog_require(raw: &RawHost, units: &[RawUnit], rep: &mut Reporter<'_>) {
    let Some(watchdog) = &raw.watchdog else {
        return;
    };
    for name in watchdog.get_ref().require.iter().flatten() {
        check_host_unit_ref("watchdog.require", name, units, rep);
    }
}

/// `name`, the value of `[host]`'s `key`, names a zone or guest of the
/// file; reported at the value, with the closest name as a hint.
fn check_host_unit_ref(
    key: &str,
    name: &Spanned<String>,
    units: &[RawUnit],
    rep: &mut Reporter<'_>,
) {
    if units.iter().any(|u| u.name.get_ref() == name.get_ref()) {
        return;
    }
    let all: Vec<&str> = units.iter().map(|u| u.name.get_ref().as_str()).collect();
    let hint = names::closest(name.get_ref(), &all)
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    rep.at(
        name.span(),
        format!(
            "invalid `{key}` in [host]: `{}` is no zone or guest in this file{hint}",
            name.get_ref().escape_debug()
        ),
    );
}
