//! The configuration model: what the operator wants to run.
//!
//! `parse` turns TOML text into a [`Config`] or into *every* error it holds,
//! each carrying file, line and column. A [`Config`] that exists is valid:
//! names are unique and well formed, `after` references resolve and form no
//! cycle, `[defaults]` are already merged into each unit. Nothing here does
//! I/O except [`load`], which reads the file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::resource::Resource;
use toml::Spanned;

use crate::vmm::limits;
use raw::{Limit, RawBackoff, RawHealth, RawReady, RawStartLimit, Size};
use shared::unit_settings;

mod document;
mod hostmounts;
mod names;
pub mod network;
mod raw;
mod ready;
mod shared;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ready;
pub(crate) mod units;
mod validate;

pub use hostmounts::{HostMount, MountSource};
pub use ready::{Health, Probe, Ready, ReadyKind, Watchdog};
pub use units::parse_duration;

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/zonit.toml";
/// Default location of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/zonit/control.sock";
/// Default guest kernel command line.
const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[host]` settings.
    pub host: Host,
    /// Host NICs (`[interface.NAME]`), in file order.
    pub interfaces: Vec<Interface>,
    /// Bridges zonit owns (`[network.NAME]`), in file order.
    pub networks: Vec<NetworkDef>,
    /// Every zone and guest, in the order their headers appear in the file
    /// (zones and guests interleaved as written).
    pub units: Vec<Unit>,
}

pub use network::Cidr;

/// `[interface.NAME]`: a host NIC zonit brings up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Kernel interface name (at most 15 bytes).
    pub name: String,
    /// How it gets its addresses.
    pub address: InterfaceAddress,
    /// Default route via this address (static addresses only).
    pub gateway: Option<IpAddr>,
    /// MTU to set, if any.
    pub mtu: Option<u32>,
}

/// Addressing of a host NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceAddress {
    /// A DHCPv4 lease.
    Dhcp,
    /// These addresses (possibly none: the link is only brought up).
    Static(Vec<Cidr>),
}

/// `[network.NAME]`: a bridge zonit creates and owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    /// The name units refer to.
    pub name: String,
    /// The bridge's kernel name, derived from `name` (at most 15 bytes).
    pub bridge: String,
    /// The host's IPv4 address on the bridge; its prefix is the subnet.
    pub address: Cidr,
    /// The host's IPv6 address on the bridge, if any.
    pub address6: Option<Cidr>,
    /// Masquerade traffic from the subnet that leaves by another interface.
    pub nat: bool,
    /// Nameservers for `/etc/resolv.conf` of units on it (empty: the
    /// host's own, less loopback ones).
    pub dns: Vec<IpAddr>,
    /// Serve DHCP leases on the bridge.
    pub dhcp: bool,
}

/// One network interface of a unit on a `[network.X]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The `[network.X]` it is attached to.
    pub network: String,
    /// Its MAC address (given, or derived from the unit name).
    pub mac: [u8; 6],
    /// Its IPv4 address (always set for a zone: given or derived).
    pub address: Option<Ipv4Addr>,
    /// Its IPv6 address, derived from `address` when the network has one.
    pub address6: Option<Ipv6Addr>,
    /// Host-side interface name (a zone appends an incarnation suffix).
    pub host_ifname: String,
}

/// A forwarded host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// TCP or UDP.
    pub proto: Proto,
    /// Port on the host's addresses.
    pub host_port: u16,
    /// Port on the unit's address.
    pub port: u16,
}

/// Transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// `[host]`: settings of the global zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Host name set at boot (PID 1 only).
    pub hostname: Option<String>,
    /// Kernel modules loaded at boot, by name.
    pub modules: Vec<String>,
    /// sysctls applied at boot: dotted key -> value.
    pub sysctl: BTreeMap<String, String>,
    /// Log level filter.
    pub log_level: log::LevelFilter,
    /// Optional remote syslog target.
    pub syslog: Option<SyslogTarget>,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: Option<MetricsAddr>,
    /// Path of the control socket.
    pub control_socket: PathBuf,
    /// Bound on the whole orderly shutdown.
    pub shutdown_timeout: Duration,
    /// What ctrl-alt-del (SIGINT to PID 1) does.
    pub ctrl_alt_del: CtrlAltDel,
    /// Shell started on the console when the config cannot be loaded.
    pub rescue_shell: Option<PathBuf>,
    /// Test mode: when this unit ends, power off and report its status.
    pub exit_with: Option<String>,
    /// Data file systems PID 1 mounts at boot (`[[host.mounts]]`), in
    /// file order.
    pub mounts: Vec<HostMount>,
    /// The hardware watchdog, petted while the required units are well.
    pub watchdog: Option<Watchdog>,
}

/// Remote syslog transport and address (`udp://ADDR:PORT`, `tcp://ADDR:PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTarget {
    /// RFC 5424 over UDP.
    Udp(SocketAddr),
    /// RFC 5424 over TCP.
    Tcp(SocketAddr),
}

/// Where the agent serves `GET /metrics` (`IP:PORT` or `unix:/PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A TCP listener.
    Tcp(SocketAddr),
    /// A unix socket.
    Unix(PathBuf),
}

/// Action for ctrl-alt-del.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlAltDel {
    /// Orderly reboot.
    Reboot,
    /// Orderly power-off.
    Poweroff,
    /// Log and do nothing.
    Ignore,
}

/// One zone or guest.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Unique name, `[a-z0-9][a-z0-9-]{0,31}`.
    pub name: String,
    /// Settings every unit has.
    pub common: Common,
    /// Kind-specific settings.
    pub kind: UnitKind,
}

/// Zone or guest settings.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitKind {
    /// A shared-kernel jail.
    Zone(Zone),
    /// A KVM virtual machine.
    Guest(Guest),
}

unit_settings! {
    /// Settings shared by zones and guests.
    pub struct Common {
        /// Units that must be running before this one starts.
        pub after: Vec<String>,
        /// How the unit says it is ready; without it, it is ready once its
        /// command runs.
        pub ready: Option<Ready>,
        /// A probe repeated while the unit runs (zones only).
        pub health: Option<Health>,
    }
    /// The keys every zone and guest has that `[defaults]` may also set.
    ///
    /// This struct and the two other shared ones are read from the same
    /// table as the unit's own keys (`document::read_units`), so they
    /// cannot deny the keys they do not hold: the key check has already
    /// reported and removed every unknown key.
    shared RawCommon, checked CommonPart, own CommonOwn {
        /// Restart policy.
        restart: Spanned<String> => RestartPolicy = RestartPolicy::OnFailure,
            check validate::restart;
        /// Restart backoff.
        backoff: Spanned<RawBackoff> => Backoff = Backoff::default(),
            check validate::backoff, merged as validate::BackoffPart;
        /// Optional start limit.
        start_limit: Spanned<RawStartLimit> => Option<StartLimit> = None,
            check validate::start_limit;
        /// Grace period between the stop request and SIGKILL.
        stop_timeout: Spanned<String> => Duration = Duration::from_secs(10),
            check validate::Checker::duration;
        /// Started at boot / `run`.
        autostart: Spanned<bool> => bool = true, check validate::flag;
    }
}

/// When a unit is restarted after it ends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restarted automatically.
    Never,
    /// Restarted after a failure (non-zero exit, signal, crash, failed start).
    OnFailure,
    /// Restarted after any end the operator did not ask for.
    Always,
}

/// Restart backoff: the n-th consecutive restart waits
/// `min(initial * 2^(n-1), max)`; the count resets after `reset_after` of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Cap on the delay.
    pub max: Duration,
    /// Run time after which the restart count resets.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// `start_limit = { burst = N, interval = "T" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartLimit {
    /// Starts allowed within `interval`.
    pub burst: u32,
    /// The window.
    pub interval: Duration,
}

/// How a zone's root is provisioned from a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateMode {
    /// overlayfs: template as shared read-only lower layer.
    Overlay,
    /// Copy the template into the root once, on first start.
    Copy,
}

/// Zone network mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A new network namespace with only loopback.
    None,
    /// The global zone's network namespace, shared.
    Host,
    /// A new network namespace with `eth0` on a `[network.X]` bridge.
    Bridged(Box<Nic>),
}

/// A bind mount into a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the zone root (absolute, resolved inside the root).
    pub target: PathBuf,
    /// Read-only bind.
    pub readonly: bool,
}

unit_settings! {
    /// `[zone.NAME]`.
    pub struct Zone {
        /// Root directory on the host.
        pub root: PathBuf,
        /// Template tree the root is provisioned from.
        pub template: Option<PathBuf>,
        /// How the template is used.
        pub template_mode: TemplateMode,
        /// argv of the zone's command (non-empty).
        pub command: Vec<String>,
        /// Host name inside the zone (defaults to the unit name).
        pub hostname: String,
        /// Working directory inside the zone.
        pub workdir: PathBuf,
        /// Bind mounts.
        pub mounts: Vec<BindMount>,
        /// Network mode.
        pub network: Network,
        /// Host ports forwarded to the zone (only on a bridged network).
        pub ports: Vec<PortForward>,
    }
    /// The zone keys `[defaults]` may also set.
    shared RawZoneShared, checked ZonePart, own ZoneOwn {
        /// Environment of the command.
        env: BTreeMap<String, Spanned<String>> => BTreeMap<String, String> = BTreeMap::new(),
            check validate::env, merged as BTreeMap<String, String>;
        /// uid and gid inside the zone.
        user: Spanned<String> => (u32, u32) = (0, 0), check validate::user;
        /// Capabilities kept (numbers as in `linux/capability.h`); every
        /// other one is dropped. Default: Docker's default set.
        capabilities: Vec<Spanned<String>> => Vec<u8> = names::DEFAULT_CAPABILITIES.to_vec(),
            check validate::capabilities;
        /// As written: `validate::zone` resolves it against the networks
        /// into the zone's `network`.
        network: Spanned<String> => Spanned<String>, check validate::as_written;
        /// cgroup v2 memory.max in bytes.
        memory_max: Spanned<Size> => Option<u64> = None, check validate::memory_max;
        /// cgroup v2 cpu.max in CPUs.
        cpu_max: Spanned<f64> => Option<f64> = None, check validate::cpu_max;
        /// cgroup v2 pids.max.
        pids_max: Spanned<i64> => Option<u64> = None, check validate::Checker::positive_int;
        /// Resource limits (`rlimits`), soft = hard.
        rlimits: BTreeMap<String, Spanned<Limit>> => BTreeMap<Resource, u64> = BTreeMap::new(),
            check validate::rlimits, merged as BTreeMap<Resource, u64>;
        /// Signal sent to the command to stop it.
        stop_signal: Spanned<String> => i32 = libc::SIGTERM, check validate::stop_signal;
        /// The zone's [`Common::ready`].
        ready: Spanned<RawReady> => Ready, check validate::zone_ready;
        /// The zone's [`Common::health`].
        health: Spanned<RawHealth> => Health, check validate::zone_health;
    }
}

/// A disk attached to a guest as a virtio-mmio block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image path on the host.
    pub path: PathBuf,
    /// Attach read-only.
    pub readonly: bool,
}

/// What a guest-initiated reboot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReboot {
    /// Start the guest again, whatever the restart policy.
    Restart,
    /// Treat the reboot as the guest's end.
    Stop,
}

unit_settings! {
    /// `[guest.NAME]`.
    pub struct Guest {
        /// Kernel image (bzImage, ELF vmlinux or PVH ELF).
        pub kernel: PathBuf,
        /// Optional initrd.
        pub initrd: Option<PathBuf>,
        /// virtio-blk disks.
        pub disks: Vec<Disk>,
        /// cgroup v2 memory.max of the monitor in bytes, as configured;
        /// without it the agent gives the monitor the guest's memory plus
        /// [`crate::vmm::limits::MONITOR_ALLOWANCE`] where it can.
        pub memory_max: Option<u64>,
        /// cgroup v2 cpu.max of the monitor in CPUs.
        pub cpu_max: Option<f64>,
        /// cgroup v2 pids.max of the monitor (its threads count).
        pub pids_max: Option<u64>,
        /// Network interfaces (virtio-net), in order.
        pub nics: Vec<Nic>,
        /// Host ports forwarded to the guest's first address.
        pub ports: Vec<PortForward>,
    }
    /// The guest keys `[defaults]` may also set.
    shared RawGuestShared, checked GuestPart, own GuestOwn {
        /// Guest memory in bytes.
        memory: Spanned<Size> => u64 = limits::DEFAULT_MEMORY, check validate::guest_memory;
        /// Number of vCPUs.
        vcpus: Spanned<i64> => u32 = limits::DEFAULT_VCPUS, check validate::vcpus;
        /// Kernel command line.
        cmdline: Spanned<String> => String = DEFAULT_CMDLINE.to_owned(), check validate::cmdline;
        /// What a guest reboot does.
        on_reboot: Spanned<String> => OnReboot = OnReboot::Restart, check validate::on_reboot;
    }
}

/// The cgroup v2 limits of one unit's group, zone or guest alike.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CgroupLimits {
    /// memory.max in bytes.
    pub memory_max: Option<u64>,
    /// cpu.max in CPUs.
    pub cpu_max: Option<f64>,
    /// pids.max.
    pub pids_max: Option<u64>,
}

impl Zone {
    /// The limits of the zone's cgroup.
    pub fn cgroup_limits(&self) -> CgroupLimits {
        CgroupLimits {
            memory_max: self.memory_max,
            cpu_max: self.cpu_max,
            pids_max: self.pids_max,
        }
    }
}

impl Guest {
    /// The limits of the monitor's cgroup, as configured.
    pub fn cgroup_limits(&self) -> CgroupLimits {
        CgroupLimits {
            memory_max: self.memory_max,
            cpu_max: self.cpu_max,
            pids_max: self.pids_max,
        }
    }
}

/// One problem in a config file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

#[cfg(test)]
impl Common {
    /// The settings of a unit with no `after`, `ready` or `health` and
    /// every other key at its built-in default, for unit tests.
    pub fn example() -> Common {
        CommonPart::default().build(CommonOwn {
            after: vec![],
            ready: None,
            health: None,
        })
    }
}

#[cfg(test)]
impl Zone {
    /// A minimal zone rooted at `root` running `/bin/true`, for unit tests.
    pub fn example(root: &str) -> Zone {
        let name = root.rsplit('/').next().unwrap_or("zone");
        let mut zone = ZonePart::default().build(ZoneOwn {
            root: root.into(),
            template: None,
            template_mode: TemplateMode::Overlay,
            command: vec!["/bin/true".into()],
            hostname: name.into(),
            workdir: "/".into(),
            mounts: vec![],
            network: Network::None,
            ports: vec![],
        });
        zone.capabilities = vec![];
        zone
    }
}

#[cfg(test)]
impl Guest {
    /// A guest of 64 MiB and one vCPU booting `kernel`, nothing else, for
    /// unit tests.
    pub fn example(kernel: &str) -> Guest {
        let mut guest = GuestPart::default().build(GuestOwn {
            kernel: kernel.into(),
            initrd: None,
            disks: vec![],
            memory_max: None,
            cpu_max: None,
            pids_max: None,
            nics: vec![],
            ports: vec![],
        });
        guest.cmdline = String::new();
        guest.memory = 64 << 20;
        guest
    }
}

impl Config {
    /// The unit called `name`.
    pub fn unit(&self, name: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.name == name)
    }

    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkDef> {
        self.networks.iter().find(|n| n.name == name)
    }
}

impl Unit {
    /// The unit's interfaces on `[network.X]` bridges: a bridged zone's
    /// one, a guest's `nics`.
    pub fn nics(&self) -> &[Nic] {
        match &self.kind {
            UnitKind::Zone(Zone {
                network: Network::Bridged(nic),
                ..
            }) => std::slice::from_ref(&**nic),
            UnitKind::Zone(_) => &[],
            UnitKind::Guest(g) => &g.nics,
        }
    }

    /// The nic that the unit's port forwards and tcp probes reach: its
    /// first with an address.
    pub fn addressed_nic(&self) -> Option<&Nic> {
        self.nics().iter().find(|n| n.address.is_some())
    }

    /// Host ports forwarded to the unit.
    pub fn ports(&self) -> &[PortForward] {
        match &self.kind {
            UnitKind::Zone(z) => &z.ports,
            UnitKind::Guest(g) => &g.ports,
        }
    }
}

/// Reads and parses the config file at `path`. An unreadable file is one
/// diagnostic at 1:1.
pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    match read_file(path) {
        Ok(text) => parse(path, &text),
        Err(message) => Err(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message,
        }]),
    }
}

/// Largest config file read, in bytes.
pub const MAX_SIZE: u64 = 4 * 1024 * 1024;

/// Reads a config file without ever blocking or growing without bound:
/// it is opened non-blocking (a FIFO at the path would otherwise stall
/// the agent's loop until a writer came), and read only when `fstat`
/// says it is a regular file of at most [`MAX_SIZE`] bytes.
fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("unable to read config: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("unable to read config: {e}"))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(format!(
            "unable to read config: it is {what}; the config must be a regular file"
        ));
    }
    if meta.len() > MAX_SIZE {
        return Err(format!(
            "unable to read config: it is {} bytes, more than the {MAX_SIZE} a config may have",
            meta.len()
        ));
    }
    let mut text = String::new();
    // The size may change under us; never read past the limit.
    (&mut file)
        .take(MAX_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("unable to read config: {e}"))?;
    if text.len() as u64 > MAX_SIZE {
        return Err(format!(
            "unable to read config: it is more than the {MAX_SIZE} bytes a config may have"
        ));
    }
    Ok(text)
}

/// Parses config `text`; `file` is only used in diagnostics.
///
/// On failure, returns every problem found, sorted by position. A file
/// with TOML syntax errors yields only those: checking the parser's guess
/// at a broken file would report errors that are not there.
///
/// Built-in defaults, used when neither the unit nor `[defaults]` sets a
/// key (the full table is in `docs/config.md`): a key `[defaults]` shares
/// with units has its default in its declaration ([`Common`], [`Zone`],
/// [`Guest`]); the others are:
///
/// | key | default |
/// |---|---|
/// | `host.log_level` | `"info"` |
/// | `host.control_socket` | [`DEFAULT_CONTROL_SOCKET`] |
/// | `host.shutdown_timeout` | `"30s"` |
/// | `host.ctrl_alt_del` | `"reboot"` |
/// | `ready` | none: ready once the command runs; `timeout = "30s"`, `interval = "1s"`, `probe_timeout = "1s"` |
/// | `health` | none; `interval = "10s"`, `timeout = "5s"`, `retries = 3` |
/// | `host.watchdog` | none; `device = "/dev/watchdog"`, `timeout = "30s"`, `grace = "60s"` |
/// | zone `hostname` | the unit name |
/// | zone `workdir` | `"/"` |
/// | zone `template_mode` | `"overlay"` |
/// | zone `network` | `"none"` |
/// | zone `address` | derived from the unit name (bridged zones) |
/// | nic `mac` | derived from the unit name |
/// | network `nat`, `dhcp` | `false` |
/// | guest `memory_max` | none here; `memory` + [`crate::vmm::limits::MONITOR_ALLOWANCE`] where the memory controller is |
/// | `host.mounts[].wait` | `"10s"` |
/// | `host.mounts[].required` | `true` |
pub fn parse(file: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut rep = document::Reporter::new(file, text);
    let config = document::read(text, &mut rep).and_then(|doc| validate::build(doc, &mut rep));
    match config {
        Some(config) if rep.diagnostics.is_empty() => Ok(config),
        _ => {
            let mut diagnostics = rep.diagnostics;
            if diagnostics.is_empty() {
                // Unreachable by construction; never hand back an empty error.
                diagnostics.push(Diagnostic {
                    file: file.to_path_buf(),
                    line: 1,
                    col: 1,
                    message: "the config is invalid".into(),
                });
            }
            diagnostics.sort_by_key(|d| (d.line, d.col));
            // A bad value in [defaults] that every unit inherits is one error.
            diagnostics.dedup();
            Err(diagnostics)
        }
    }
}
