//! `zonit vmm`: the per-guest virtual machine monitor, one process per
//! guest, started by the agent.
//!
//! Owns: the command line of the monitor, its exit-status contract
//! ([`GuestEnd`]), and the order of setup: open everything, build the VM,
//! confine the process, start the vCPU threads under their seccomp filters,
//! then wait for the guest's end or a stop request. The contract is
//! documented for the agent in `docs/vmm.md`.
//!
//! Invariants: the guest's first instruction runs only after the process is
//! confined and every thread's seccomp filter is in place; the monitor
//! exits with exactly one [`GuestEnd`] status, the first end the guest
//! reached; guest console output goes to stdout, the monitor's own lines
//! to stderr prefixed `zonit-vmm:`.

pub mod boot;
pub mod confine;
pub mod cpu;
pub mod devices;
pub mod exits;
pub mod layout;
pub mod limits;
pub mod seccomp;
pub mod vm;

use std::borrow::Cow;

use crate::logging::error_chain;
use std::fs::File;
use std::io::{PipeReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::eventfd::EventFd;

use crate::zone::protocol::{MAX_MESSAGE, Message};
use devices::acpi::{self, AcpiConfig, AcpiPm, VirtioMmioSlot};
use devices::block::Block;
use devices::i8042::{self, I8042};
use devices::pvpanic::{self, PvPanic};
use devices::serial::{self, EventFdTrigger, SerialDevice};
use devices::virtio_mmio::VirtioMmio;
use exits::{EndLatch, ExitContext};

/// How a guest ended, as the monitor's exit status tells the agent.
///
/// | status | end |
/// |---|---|
/// | 0 | [`GuestEnd::Poweroff`] |
/// | 1 | [`GuestEnd::SetupFailed`] |
/// | 2 | [`GuestEnd::Reboot`] |
/// | 3 | [`GuestEnd::Crash`] |
/// | killed by SIGKILL/SIGTERM/SIGINT/SIGHUP | [`GuestEnd::Killed`] |
/// | killed by any other signal (SIGSYS from seccomp, SIGSEGV, ...) | [`GuestEnd::Crash`] |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestEnd {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The monitor failed before the guest ran: bad arguments, unreadable
    /// kernel, no KVM.
    SetupFailed,
    /// The guest rebooted (i8042 reset, ACPI reset register).
    Reboot,
    /// The guest crashed (pvpanic, triple fault, unhandled exit, internal
    /// error), or the monitor failed while the guest ran.
    Crash,
    /// The monitor was killed from outside (the agent's stop timeout).
    Killed,
}

impl GuestEnd {
    /// The monitor's exit status for this end; `None` for [`GuestEnd::Killed`],
    /// which is a signal, not a status.
    pub const fn exit_code(self) -> Option<u8> {
        match self {
            GuestEnd::Poweroff => Some(0),
            GuestEnd::SetupFailed => Some(1),
            GuestEnd::Reboot => Some(2),
            GuestEnd::Crash => Some(3),
            GuestEnd::Killed => None,
        }
    }

    /// Classifies a monitor's wait status given as (exit code, terminating
    /// signal), exactly one of which is set. An unknown exit code is a crash.
    pub fn from_code_or_signal(code: Option<i32>, signal: Option<i32>) -> GuestEnd {
        match (code, signal) {
            (Some(0), _) => GuestEnd::Poweroff,
            (Some(1), _) => GuestEnd::SetupFailed,
            (Some(2), _) => GuestEnd::Reboot,
            (Some(_), _) => GuestEnd::Crash,
            (None, Some(sig))
                if sig == libc::SIGKILL
                    || sig == libc::SIGTERM
                    || sig == libc::SIGINT
                    || sig == libc::SIGHUP =>
            {
                GuestEnd::Killed
            }
            (None, _) => GuestEnd::Crash,
        }
    }

    /// Classifies a monitor's exit status.
    pub fn from_exit_status(status: std::process::ExitStatus) -> GuestEnd {
        use std::os::unix::process::ExitStatusExt;
        GuestEnd::from_code_or_signal(status.code(), status.signal())
    }
}

/// An end with the reason the monitor logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    /// The kind of end.
    pub end: GuestEnd,
    /// Why, for the log.
    pub reason: String,
}

impl Ending {
    /// An end of kind `end` because of `reason`.
    pub fn new(end: GuestEnd, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            end,
            reason: reason.into().into_owned(),
        }
    }
}

/// GSI of the first disk.
const FIRST_DISK_GSI: u32 = 16;

/// A `--disk` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOption {
    /// Image file.
    pub path: PathBuf,
    /// Opened read-only and offered read-only to the guest.
    pub readonly: bool,
}

/// The monitor's parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `--kernel`.
    pub kernel: PathBuf,
    /// `--initrd`.
    pub initrd: Option<PathBuf>,
    /// `--cmdline`.
    pub cmdline: String,
    /// `--memory`, bytes.
    pub memory: u64,
    /// `--vcpus`.
    pub vcpus: u8,
    /// `--disk`, in order.
    pub disks: Vec<DiskOption>,
    /// `--status-fd`: an inherited pipe for the agent ([`Status`]).
    pub status_fd: Option<i32>,
}

/// The usage text.
pub const USAGE: &str = "usage: zonit vmm --kernel PATH [--initrd PATH] [--cmdline STR] \
[--memory BYTES] [--vcpus N] [--disk PATH[,ro]]... [--status-fd N]";

/// Errors in the monitor's command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// `--help` was asked for.
    #[error("{USAGE}")]
    Help,
    /// An unknown argument.
    #[error("unknown argument {0:?}\n{USAGE}")]
    Unknown(String),
    /// A flag without its value.
    #[error("{0} needs a value\n{USAGE}")]
    MissingValue(String),
    /// `--kernel` is missing.
    #[error("--kernel is required\n{USAGE}")]
    MissingKernel,
    /// A value that does not parse or is out of bounds.
    #[error("invalid {flag} {value:?}: {reason}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The options together exceed a limit.
    #[error(transparent)]
    Limit(limits::LimitError),
}

/// Parses `--status-fd`'s value: a descriptor number above stdio.
fn status_fd(value: &str) -> Result<i32, OptionsError> {
    value
        .parse::<i32>()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| {
            bad(
                "--status-fd",
                value,
                "expected a descriptor number above 2".into(),
            )
        })
}

fn bad(flag: &'static str, value: &str, reason: String) -> OptionsError {
    OptionsError::BadValue {
        flag,
        value: value.to_string(),
        reason,
    }
}

impl Options {
    /// Parses the arguments that follow `vmm`.
    pub fn parse(args: &[String]) -> Result<Self, OptionsError> {
        let mut kernel = None;
        let mut opts = Options {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: String::new(),
            memory: limits::DEFAULT_MEMORY,
            vcpus: 1,
            disks: Vec::new(),
            status_fd: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Err(OptionsError::Help);
            }
            if !matches!(
                flag,
                "--kernel"
                    | "--initrd"
                    | "--cmdline"
                    | "--memory"
                    | "--vcpus"
                    | "--disk"
                    | "--status-fd"
            ) {
                return Err(OptionsError::Unknown(arg.clone()));
            }
            let value = match inline.or_else(|| it.next().cloned()) {
                Some(v) => v,
                None => return Err(OptionsError::MissingValue(flag.to_string())),
            };
            match flag {
                "--kernel" => kernel = Some(PathBuf::from(value)),
                "--initrd" => opts.initrd = Some(PathBuf::from(value)),
                "--memory" => {
                    opts.memory = limits::parse_memory(&value)
                        .map_err(|why| bad("--memory", &value, why))
                        .and_then(|bytes| {
                            limits::check_memory(bytes)
                                .map_err(|e| bad("--memory", &value, e.to_string()))
                        })?;
                }
                "--vcpus" => {
                    opts.vcpus = value
                        .parse::<i64>()
                        .map_err(|_| bad("--vcpus", &value, "not a number".into()))
                        .and_then(|n| {
                            limits::check_vcpus(n)
                                .map_err(|e| bad("--vcpus", &value, e.to_string()))
                        })?;
                }
                "--status-fd" => {
                    opts.status_fd = Some(status_fd(&value)?);
                }
                "--cmdline" => {
                    limits::check_cmdline(&value)
                        .map_err(|e| bad("--cmdline", &value, e.to_string()))?;
                    opts.cmdline = value;
                }
                _ => {
                    let (path, readonly) = match value.strip_suffix(",ro") {
                        Some(p) => (p, true),
                        None => (value.as_str(), false),
                    };
                    if path.is_empty() {
                        return Err(bad("--disk", &value, "expected PATH or PATH,ro".into()));
                    }
                    opts.disks.push(DiskOption {
                        path: PathBuf::from(path),
                        readonly,
                    });
                }
            }
        }
        opts.kernel = kernel.ok_or(OptionsError::MissingKernel)?;
        limits::check_virtio_devices(opts.disks.len()).map_err(OptionsError::Limit)?;
        Ok(opts)
    }
}

/// Errors of the monitor as a whole.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A guest file cannot be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// Kernel, initrd or disk.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A disk's size cannot be read.
    #[error("cannot read the size of disk {path}")]
    DiskSize {
        /// The image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM setup.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Configuring a vCPU.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// Placing devices.
    #[error("cannot place device {name}")]
    Bus {
        /// The device.
        name: &'static str,
        /// Cause.
        #[source]
        source: devices::BusError,
    },
    /// Signal handling setup.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The wake-up pipe.
    #[error("cannot create the wake-up pipe")]
    Pipe(#[source] std::io::Error),
    /// Standard output, where the guest console goes.
    #[error("cannot use standard output for the guest console")]
    Stdout(#[source] std::io::Error),
    /// Confinement.
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
    /// Seccomp.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// A vCPU thread cannot be started.
    #[error("cannot start the thread of vCPU {id}")]
    SpawnVcpu {
        /// vCPU index.
        id: u8,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for events failed.
    #[error("cannot wait for events")]
    Poll(#[source] nix::Error),
}

/// The monitor's log backend: stderr, one line per record, prefixed.
/// At debug level and above each line also carries the time since the
/// monitor started, so a slow setup step shows up without a tracer (whose
/// own overhead would hide what is being looked for).
struct StderrLog;

/// When `init_logging` ran: the start of the monitor, for the debug
/// timestamps.
static STARTED: OnceLock<Instant> = OnceLock::new();

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            let since = match (log::max_level() >= log::LevelFilter::Debug, STARTED.get()) {
                (true, Some(t)) => format!("[{:8.3} ms] ", t.elapsed().as_secs_f64() * 1e3),
                _ => String::new(),
            };
            // One write per line so lines from threads do not interleave.
            let line = format!("zonit-vmm: {level}: {since}{}\n", record.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn init_logging() {
    STARTED.get_or_init(Instant::now);
    // Fails only if a logger is already set, which then stays in charge.
    let _ = log::set_logger(&LOGGER);
    let level = std::env::var("ZONIT_VMM_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    log::set_max_level(level);
}

/// Asks the guest to shut down: the ACPI power button (through the GED
/// interrupt) and Ctrl-Alt-Del on the keyboard, so that both an ACPI-aware
/// init and one that only handles Ctrl-Alt-Del react.
struct StopButton {
    ged: EventFd,
    keyboard: Arc<Mutex<I8042<EventFdTrigger>>>,
}

impl StopButton {
    fn press(&self) {
        if let Err(e) = self.ged.write(1) {
            log::warn!("cannot press the ACPI power button: {e}");
        }
        devices::lock(&self.keyboard).ctrl_alt_del();
    }
}

/// A VM ready to run.
struct Monitor {
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    ctx: Arc<ExitContext>,
    latch: Arc<EndLatch>,
    wake: PipeReader,
    signals: SignalFd,
    stop: StopButton,
    // Kept open for the whole run: KVM and guest memory must outlive the
    // vCPU threads, which only end with the process.
    _vm: vm::Vm,
}

fn open(what: &'static str, path: &std::path::Path, write: bool) -> Result<File, MonitorError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|source| MonitorError::Open {
            what,
            path: path.to_path_buf(),
            source,
        })
}

impl Monitor {
    /// Everything before confinement: files, KVM, memory, boot, devices,
    /// vCPUs.
    fn build(opts: &Options) -> Result<Self, MonitorError> {
        let mut kernel = open("kernel", &opts.kernel, false)?;
        let mut initrd = match &opts.initrd {
            Some(p) => Some((open("initrd", p, false)?, p)),
            None => None,
        };
        let mut disks = Vec::with_capacity(opts.disks.len());
        for (i, disk) in opts.disks.iter().enumerate() {
            let mut file = open("disk", &disk.path, !disk.readonly)?;
            // Seeking works for block devices too, whose metadata says 0.
            let size = file
                .seek(SeekFrom::End(0))
                .map_err(|source| MonitorError::DiskSize {
                    path: disk.path.clone(),
                    source,
                })?;
            let slot = VirtioMmioSlot {
                base: layout::VIRTIO_MMIO_BASE + i as u64 * layout::VIRTIO_MMIO_STRIDE,
                len: devices::virtio_mmio::WINDOW,
                gsi: FIRST_DISK_GSI + i as u32,
            };
            disks.push((
                Block::new(file, size, disk.readonly, &format!("zonit-disk-{i}")),
                slot,
            ));
        }

        // Block the stop signals before any thread exists, so every thread
        // inherits the mask and they only arrive through the signalfd.
        let mut mask = SigSet::empty();
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(sig);
        }
        mask.thread_block().map_err(MonitorError::Signals)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(MonitorError::Signals)?;

        log::debug!("files open");
        let vm = vm::Vm::create(opts.memory, opts.vcpus)?;
        log::debug!("VM created with its memory");
        let entry = boot::load(
            &vm.memory,
            boot::BootSpec {
                kernel: (&mut kernel, &opts.kernel),
                initrd: initrd.as_mut().map(|(f, p)| (f, p.as_path())),
                cmdline: &opts.cmdline,
                mem_size: opts.memory,
                acpi: AcpiConfig {
                    vcpus: opts.vcpus,
                    virtio: disks.iter().map(|(_, slot)| *slot).collect(),
                },
            },
        )?;
        log::debug!("guest loaded");

        let stdout = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(MonitorError::Stdout)?;
        let console = Arc::new(Mutex::new(SerialDevice::new(
            EventFdTrigger(vm.irqfd(serial::COM1_IRQ)?),
            File::from(stdout),
        )));
        let keyboard = Arc::new(Mutex::new(I8042::new(EventFdTrigger(
            vm.irqfd(i8042::KBD_IRQ)?,
        ))));
        let ged = vm.irqfd(acpi::GED_GSI)?;
        let mut ctx = ExitContext::default();
        let place = |bus: &mut devices::Bus, name, base: u16, len, dev: devices::SharedDevice| {
            bus.insert(u64::from(base), len, dev)
                .map_err(|source| MonitorError::Bus { name, source })
        };
        place(
            &mut ctx.pio,
            "serial",
            serial::COM1_BASE,
            serial::COM1_LEN,
            console,
        )?;
        place(
            &mut ctx.pio,
            "i8042",
            i8042::DATA_PORT,
            i8042::PORT_RANGE,
            keyboard.clone(),
        )?;
        place(
            &mut ctx.pio,
            "acpi-pm",
            acpi::PM_BASE,
            acpi::PM_LEN,
            Arc::new(Mutex::new(AcpiPm)),
        )?;
        place(
            &mut ctx.pio,
            "pvpanic",
            pvpanic::PORT,
            1,
            Arc::new(Mutex::new(PvPanic::default())),
        )?;
        for (block, slot) in disks {
            let transport = VirtioMmio::new(
                block,
                EventFdTrigger(vm.irqfd(slot.gsi)?),
                vm.memory.clone(),
            );
            ctx.mmio
                .insert(slot.base, slot.len, Arc::new(Mutex::new(transport)))
                .map_err(|source| MonitorError::Bus {
                    name: "virtio-blk",
                    source,
                })?;
        }

        log::debug!("devices placed");
        let supported = vm.supported_cpuid()?;
        let mut vcpus = Vec::with_capacity(usize::from(opts.vcpus));
        for id in 0..opts.vcpus {
            let vcpu = vm.create_vcpu(id)?;
            cpu::configure(&vcpu, &supported, id, opts.vcpus, entry)?;
            vcpus.push(vcpu);
        }

        log::debug!("vCPUs configured");
        let (wake, wake_writer) = std::io::pipe().map_err(MonitorError::Pipe)?;
        Ok(Self {
            vcpus,
            ctx: Arc::new(ctx),
            latch: Arc::new(EndLatch::new(wake_writer)),
            wake,
            signals,
            stop: StopButton { ged, keyboard },
            _vm: vm,
        })
    }

    /// Confines the process, starts the vCPUs, and waits for the end.
    /// Returns only on a setup failure; otherwise the process exits with
    /// the guest's end.
    fn run(self) -> MonitorError {
        let Monitor {
            vcpus,
            ctx,
            latch,
            mut wake,
            signals,
            stop,
            _vm,
        } = self;
        if let Err(e) = confine::confine() {
            return e.into();
        }
        log::debug!("confined");
        let (main_filter, vcpu_filter) = match (seccomp::main_filter(), seccomp::vcpu_filter()) {
            (Ok(m), Ok(v)) => (m, v),
            (Err(e), _) | (_, Err(e)) => return e.into(),
        };
        log::debug!("seccomp filters built");
        let _ = PANIC_LATCH.set(latch.clone());
        // Every thread installs its filter, then all meet here before the
        // guest's first instruction.
        let start = Arc::new(Barrier::new(vcpus.len() + 1));
        for (id, vcpu) in vcpus.into_iter().enumerate() {
            let id = id as u8;
            let (ctx, latch, start, filter) = (
                ctx.clone(),
                latch.clone(),
                start.clone(),
                vcpu_filter.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Err(e) = seccomp::apply(&filter) {
                        latch.end(Ending::new(GuestEnd::SetupFailed, error_chain(&e)));
                    }
                    start.wait();
                    if latch.get().is_some() {
                        loop {
                            std::thread::park();
                        }
                    }
                    test_panic("vcpu");
                    cpu::run(vcpu, id, ctx, latch)
                });
            if let Err(source) = spawned {
                return MonitorError::SpawnVcpu { id, source };
            }
        }
        if let Err(e) = seccomp::apply(&main_filter) {
            return e.into();
        }
        start.wait();
        if let Some(ending) = latch.get() {
            finish(ending);
        }
        report_status(&Message::Ready);
        log::debug!("guest started");

        loop {
            let mut fds = [
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("{}", error_chain(&MonitorError::Poll(e)));
                    finish(Ending::new(GuestEnd::Crash, "monitor event loop failed"));
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                test_panic("main");
                while let Ok(Some(info)) = signals.read_signal() {
                    log::info!(
                        "signal {} received: asking the guest to shut down",
                        info.ssi_signo
                    );
                    stop.press();
                }
            }
            if ready(&fds[1]) {
                let mut byte = [0u8; 1];
                let _ = wake.read(&mut byte);
                if let Some(ending) = latch.get() {
                    finish(ending);
                }
            }
        }
    }
}

/// The monitor's reports to the agent on the `--status-fd` channel, in
/// the agent's start protocol (`zone::protocol`, one message a datagram):
/// `Ready` once the guest's first instruction is about to run,
/// `SetupFailed` with the reason when set-up fails (then the monitor exits
/// with [`GuestEnd::SetupFailed`]'s status). Without `--status-fd` nothing
/// is sent. Sent with write(2), which the monitor's filters allow.
static STATUS: OnceLock<File> = OnceLock::new();

/// Sends one message to the agent.
fn report_status(msg: &Message) {
    if let Some(mut channel) = STATUS.get() {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = msg.encode(&mut buf);
        let _ = channel.write_all(&buf[..n]);
    }
}

/// Reports a set-up failure and returns the set-up failure status.
fn setup_failed(reason: &str) -> ExitCode {
    log::error!("{reason}");
    report_status(&Message::SetupFailed(reason.to_string()));
    ExitCode::from(GuestEnd::SetupFailed.exit_code().unwrap_or(1))
}

/// Logs the end and exits with its status, without tearing anything down:
/// vCPU threads may still be inside `KVM_RUN` on guest memory, and the
/// kernel releases all of it with the process.
fn finish(ending: Ending) -> ! {
    match ending.end {
        GuestEnd::Poweroff | GuestEnd::Reboot => log::info!("{}", ending.reason),
        _ => log::error!("{}", ending.reason),
    }
    if ending.end == GuestEnd::SetupFailed {
        report_status(&Message::SetupFailed(ending.reason.clone()));
    }
    let code = ending.end.exit_code().unwrap_or(3);
    std::process::exit(i32::from(code))
}

/// Debug builds only: panics on purpose where `ZONIT_VMM_TEST_PANIC`
/// names this thread (`vcpu`, `main`), so the tests can check that any
/// panic in the monitor ends the guest as a crash. Release builds have no
/// such hook.
#[cfg(debug_assertions)]
#[allow(clippy::panic)]
fn test_panic(thread: &str) {
    if std::env::var_os("ZONIT_VMM_TEST_PANIC").is_some_and(|v| v == thread) {
        panic!("test panic on the {thread} thread (ZONIT_VMM_TEST_PANIC)");
    }
}

#[cfg(not(debug_assertions))]
fn test_panic(_thread: &str) {}

/// The latch a panic ends the guest through, from the moment the threads
/// that run the guest exist.
static PANIC_LATCH: OnceLock<Arc<EndLatch>> = OnceLock::new();

/// The monitor's panic hook. The binary unwinds (PID 1 must not abort),
/// and unwinding would end only the panicking thread, leaving the guest
/// frozen and the monitor up; it would also drop (close) descriptors, which
/// the seccomp filters forbid. So once the guest's threads run, a panic on
/// any thread ends the guest as a crash right here, without unwinding:
/// the main thread exits, any other thread records the crash, which wakes
/// the main thread to exit, and parks. Before that (set-up, no filters
/// yet) the panic unwinds to [`main`], which exits with the crash status.
fn on_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let what = info.payload_as_str().unwrap_or("no message");
    let reason = format!("panic on monitor thread {name}{at}: {what}");
    let Some(latch) = PANIC_LATCH.get() else {
        log::error!("{reason}");
        return;
    };
    latch.end(Ending::new(GuestEnd::Crash, reason.clone()));
    if name == "main" {
        finish(
            latch
                .get()
                .unwrap_or_else(|| Ending::new(GuestEnd::Crash, reason)),
        );
    }
    loop {
        std::thread::park();
    }
}

/// Entry point of `zonit vmm`; `args` are the arguments after `vmm`. A
/// panic anywhere in the monitor ends the guest as a crash ([`on_panic`]).
pub fn main(args: &[String]) -> ExitCode {
    std::panic::catch_unwind(|| monitor_main(args)).unwrap_or_else(|_| {
        log::error!("the monitor panicked");
        ExitCode::from(GuestEnd::Crash.exit_code().unwrap_or(3))
    })
}

fn monitor_main(args: &[String]) -> ExitCode {
    init_logging();
    std::panic::set_hook(Box::new(on_panic));
    let opts = match Options::parse(args) {
        Ok(opts) => opts,
        Err(OptionsError::Help) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return setup_failed(&e.to_string()),
    };
    if let Some(fd) = opts.status_fd {
        match crate::sys::take_inherited_fd(fd) {
            Ok(fd) => {
                let _ = STATUS.set(File::from(fd));
            }
            Err(e) => return setup_failed(&format!("cannot use --status-fd {fd}: {e}")),
        }
    }
    let monitor = match Monitor::build(&opts) {
        Ok(m) => m,
        Err(e) => return setup_failed(&error_chain(&e)),
    };
    let err = monitor.run();
    setup_failed(&error_chain(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn exit_codes_round_trip() {
        for end in [
            GuestEnd::Poweroff,
            GuestEnd::SetupFailed,
            GuestEnd::Reboot,
            GuestEnd::Crash,
        ] {
            let code = end.exit_code().map(i32::from);
            assert_eq!(GuestEnd::from_code_or_signal(code, None), end);
        }
        assert_eq!(GuestEnd::Poweroff.exit_code(), Some(0));
        assert_eq!(GuestEnd::Reboot.exit_code(), Some(2));
        assert_eq!(GuestEnd::Crash.exit_code(), Some(3));
        assert_eq!(GuestEnd::Killed.exit_code(), None);
    }

    #[test]
    fn signals_are_killed_or_crash() {
        assert_eq!(
            GuestEnd::from_code_or_signal(None, Some(libc::SIGKILL)),
            GuestEnd::Killed
        );
        // A seccomp violation kills the monitor with SIGSYS: a crash.
        assert_eq!(
            GuestEnd::from_code_or_signal(None, Some(libc::SIGSYS)),
            GuestEnd::Crash
        );
        assert_eq!(
            GuestEnd::from_code_or_signal(None, Some(libc::SIGSEGV)),
            GuestEnd::Crash
        );
        assert_eq!(
            GuestEnd::from_code_or_signal(Some(77), None),
            GuestEnd::Crash
        );
    }

    #[test]
    fn options_parse_every_flag() {
        let o = Options::parse(&args(
            "--kernel /k --initrd /i --cmdline console=ttyS0 --memory 64M --vcpus 2 --disk /a --disk=/b,ro",
        ))
        .unwrap();
        assert_eq!(o.kernel, PathBuf::from("/k"));
        assert_eq!(o.initrd, Some(PathBuf::from("/i")));
        assert_eq!(o.cmdline, "console=ttyS0");
        assert_eq!(o.memory, 64 << 20);
        assert_eq!(o.vcpus, 2);
        assert_eq!(
            o.disks,
            vec![
                DiskOption {
                    path: "/a".into(),
                    readonly: false
                },
                DiskOption {
                    path: "/b".into(),
                    readonly: true
                }
            ]
        );
    }

    #[test]
    fn options_defaults_and_errors() {
        let o = Options::parse(&args("--kernel /k")).unwrap();
        assert_eq!(
            (o.memory, o.vcpus, o.cmdline.as_str()),
            (limits::DEFAULT_MEMORY, 1, "")
        );
        assert_eq!(Options::parse(&args("")), Err(OptionsError::MissingKernel));
        assert_eq!(
            Options::parse(&args("--kernel")),
            Err(OptionsError::MissingValue("--kernel".into()))
        );
        assert!(matches!(
            Options::parse(&args("--kernel /k --bogus")),
            Err(OptionsError::Unknown(_))
        ));
        assert!(matches!(
            Options::parse(&args("--kernel /k --vcpus 0")),
            Err(OptionsError::BadValue { .. })
        ));
        assert!(matches!(
            Options::parse(&args("--kernel /k --memory 1X")),
            Err(OptionsError::BadValue { .. })
        ));
        assert_eq!(Options::parse(&args("--help")), Err(OptionsError::Help));
    }

    #[test]
    fn options_outside_the_guest_limits_are_refused() {
        for (line, flag) in [
            ("--kernel /k --vcpus 255", "--vcpus"),
            ("--kernel /k --memory 65538K", "--memory"),
            ("--kernel /k --memory 2T", "--memory"),
            ("--kernel /k --memory 15M", "--memory"),
        ] {
            match Options::parse(&args(line)) {
                Err(OptionsError::BadValue { flag: f, .. }) => assert_eq!(f, flag, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let nine = format!("--kernel /k{}", " --disk /d".repeat(9));
        assert_eq!(
            Options::parse(&args(&nine)),
            Err(OptionsError::Limit(limits::LimitError::VirtioDevices(9)))
        );
        let long = vec![
            "--kernel".to_string(),
            "/k".into(),
            "--cmdline".into(),
            "x".repeat(limits::MAX_CMDLINE + 1),
        ];
        assert!(matches!(
            Options::parse(&long),
            Err(OptionsError::BadValue {
                flag: "--cmdline",
                ..
            })
        ));
    }

    #[test]
    fn stop_button_raises_the_ged_and_types_ctrl_alt_del() {
        let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stop = StopButton {
            ged: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            keyboard: Arc::new(Mutex::new(I8042::new(EventFdTrigger(
                kbd_irq.try_clone().unwrap(),
            )))),
        };
        stop.press();
        stop.press();
        assert_eq!(stop.ged.read().unwrap(), 2);
        assert!(kbd_irq.read().unwrap() >= 1);
        let mut kbd = devices::lock(&stop.keyboard);
        let mut first = [0u8];
        devices::BusDevice::read(&mut *kbd, 0, &mut first);
        assert_eq!(first[0], i8042::CAD_SET1[0]);
    }

    #[test]
    fn error_chain_joins_sources() {
        let err = MonitorError::Open {
            what: "kernel",
            path: "/nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            error_chain(&err),
            "cannot open kernel /nope: entity not found"
        );
    }
}
