//! Building the guest before confinement: every file opened, KVM and
//! guest memory, the kernel loaded, devices placed on their buses and
//! wired to their interrupts, the vCPUs configured.

use std::fs::File;
use std::io::{PipeReader, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::devices::acpi::{self, AcpiConfig, AcpiPm};
use super::devices::alloc::Allocator;
use super::devices::block::Block;
use super::devices::i8042::{self, I8042};
use super::devices::net::{self, Net};
use super::devices::pvpanic::{self, PvPanic};
use super::devices::serial::{self, ConsoleInput, EventFdTrigger, SerialDevice};
use super::devices::virtio_mmio::{self, VirtioDevice, VirtioMmio};
use super::devices::{SharedDevice, Syscalls};
use super::exits::{EndLatch, ExitContext};
use super::run::{StopButton, Worker};
use super::{MonitorError, Options, boot, cpu, vm};

/// A VM ready to run.
pub(super) struct Monitor {
    pub(super) vcpus: Vec<kvm_ioctls::VcpuFd>,
    pub(super) ctx: Arc<ExitContext>,
    pub(super) latch: Arc<EndLatch>,
    pub(super) wake: PipeReader,
    pub(super) signals: SignalFd,
    pub(super) stop: StopButton,
    /// The console's input side, fed by the main thread.
    pub(super) input: ConsoleInput,
    /// What the present devices need on the vCPU threads.
    pub(super) vcpu_syscalls: Vec<Syscalls>,
    /// The devices' own threads.
    pub(super) workers: Vec<Worker>,
    // Kept open for the whole run: KVM and guest memory must outlive the
    // vCPU threads, which only end with the process.
    pub(super) _vm: vm::Vm,
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

/// Device wiring: every device goes on its bus, gets its interrupt line
/// and adds its own description to the DSDT and its syscalls to the vCPU
/// filter, through here. Adding a virtio device is one [`Wiring::virtio`]
/// call.
struct Wiring<'v> {
    vm: &'v vm::Vm,
    alloc: Allocator,
    ctx: ExitContext,
    dsdt: Vec<Vec<u8>>,
    syscalls: Vec<Syscalls>,
}

impl<'v> Wiring<'v> {
    fn new(vm: &'v vm::Vm) -> Self {
        Self {
            vm,
            alloc: Allocator::new(),
            ctx: ExitContext::default(),
            dsdt: vec![acpi::power_button_aml()],
            syscalls: Vec::new(),
        }
    }

    /// A legacy device at fixed ports, with its DSDT entry if it has one.
    fn ports(
        &mut self,
        name: &'static str,
        (base, len): (u16, u64),
        device: SharedDevice,
        aml: Option<Vec<u8>>,
    ) -> Result<(), MonitorError> {
        self.ctx
            .pio
            .insert(u64::from(base), len, device)
            .map_err(|source| MonitorError::Bus { name, source })?;
        self.dsdt.extend(aml);
        Ok(())
    }

    /// A virtio device behind its own virtio-mmio transport, at the next
    /// window and interrupt line the allocator gives; with the window's
    /// base address.
    fn virtio<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
    ) -> Result<(Transport<D>, u64), MonitorError> {
        let syscalls = device.syscalls();
        let name = syscalls.device;
        let slot = self
            .alloc
            .virtio(virtio_mmio::WINDOW)
            .map_err(|source| MonitorError::Allocate { name, source })?;
        let irq = EventFdTrigger(self.vm.irqfd(slot.gsi)?);
        let transport = Arc::new(Mutex::new(VirtioMmio::new(
            device,
            irq,
            self.vm.memory.clone(),
        )));
        self.ctx
            .mmio
            .insert(slot.base, slot.len, transport.clone())
            .map_err(|source| MonitorError::Bus { name, source })?;
        self.dsdt.push(virtio_mmio::aml(&slot));
        self.syscalls.push(syscalls);
        Ok((transport, slot.base))
    }
}

/// A virtio device on its transport, shared by the vCPUs' bus and its
/// worker, if it has one.
type Transport<D> = Arc<Mutex<VirtioMmio<D, EventFdTrigger>>>;

impl Monitor {
    /// Everything before confinement: files, KVM, memory, boot, devices,
    /// vCPUs.
    /// `taps` are the `--net` cards' inherited taps, in order.
    pub(super) fn build(opts: &Options, taps: Vec<File>) -> Result<Self, MonitorError> {
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
            disks.push(Block::new(
                file,
                size,
                disk.readonly,
                &format!("zonit-disk-{i}"),
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
        let stdout = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(MonitorError::Stdout)?;
        let console = Arc::new(Mutex::new(SerialDevice::new(
            EventFdTrigger(vm.irqfd(serial::COM1_IRQ)?),
            File::from(stdout),
        )));
        // Console input: the monitor's stdin (the agent's pipe, or
        // /dev/null for none).
        let input = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .and_then(|stdin| ConsoleInput::new(File::from(stdin), console.clone()))
            .map_err(MonitorError::ConsoleInput)?;
        let keyboard = Arc::new(Mutex::new(I8042::new(EventFdTrigger(
            vm.irqfd(i8042::KBD_IRQ)?,
        ))));
        let ged = vm.irqfd(acpi::GED_GSI)?;
        let mut wiring = Wiring::new(&vm);
        let com1 = (serial::COM1_BASE, serial::COM1_LEN);
        wiring.ports("serial", com1, console, Some(serial::aml()))?;
        let kbd = (i8042::DATA_PORT, i8042::PORT_RANGE);
        wiring.ports("i8042", kbd, keyboard.clone(), Some(i8042::aml()))?;
        let pm = Arc::new(Mutex::new(AcpiPm));
        wiring.ports("acpi-pm", (acpi::PM_BASE, acpi::PM_LEN), pm, None)?;
        let pvpanic = Arc::new(Mutex::new(PvPanic::default()));
        wiring.ports("pvpanic", (pvpanic::PORT, 1), pvpanic, Some(pvpanic::aml()))?;
        for disk in disks {
            wiring.virtio(disk)?;
        }
        let mut workers = Vec::with_capacity(taps.len());
        for (index, (tap, opt)) in taps.into_iter().zip(&opts.nets).enumerate() {
            let (card, rx) =
                Net::new(tap, opt.mac).map_err(|source| MonitorError::Net { index, source })?;
            let (card, base) = wiring.virtio(card)?;
            // The transmit queue's notify wakes the worker without an exit.
            let notify = base + virtio_mmio::QUEUE_NOTIFY;
            let rx = rx.with_tx_notify(vm.ioeventfd(notify, net::TX_QUEUE as u32)?);
            workers.push(Worker {
                name: format!("net{index}"),
                syscalls: net::WORKER_SYSCALLS,
                body: Box::new(move || rx.run(&card)),
            });
        }
        let Wiring {
            ctx,
            dsdt,
            syscalls,
            ..
        } = wiring;
        log::debug!("devices placed");

        let entry = boot::load(
            &vm.memory,
            boot::BootSpec {
                kernel: (&mut kernel, &opts.kernel),
                initrd: initrd.as_mut().map(|(f, p)| (f, p.as_path())),
                cmdline: &opts.cmdline,
                mem_size: opts.memory,
                acpi: AcpiConfig {
                    vcpus: opts.vcpus,
                    devices: dsdt,
                },
            },
        )?;
        log::debug!("guest loaded");

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
            input,
            stop: StopButton { ged, keyboard },
            vcpu_syscalls: syscalls,
            workers,
            _vm: vm,
        })
    }
}
