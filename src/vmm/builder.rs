//! Building the guest before confinement: every file opened, KVM and
//! guest memory, the kernel loaded, devices placed on their buses and
//! wired to their interrupts, the vCPUs configured.

use std::fs::File;
use std::io::{PipeReader, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::devices::acpi::{self, AcpiConfig, AcpiPm, VirtioMmioSlot};
use super::devices::block::Block;
use super::devices::i8042::{self, I8042};
use super::devices::pvpanic::{self, PvPanic};
use super::devices::serial::{self, EventFdTrigger, SerialDevice};
use super::devices::virtio_mmio::VirtioMmio;
use super::exits::{EndLatch, ExitContext};
use super::run::StopButton;
use super::{MonitorError, Options, boot, cpu, devices, layout, vm};

/// GSI of the first disk.
const FIRST_DISK_GSI: u32 = 16;

/// A VM ready to run.
pub(super) struct Monitor {
    pub(super) vcpus: Vec<kvm_ioctls::VcpuFd>,
    pub(super) ctx: Arc<ExitContext>,
    pub(super) latch: Arc<EndLatch>,
    pub(super) wake: PipeReader,
    pub(super) signals: SignalFd,
    pub(super) stop: StopButton,
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

impl Monitor {
    /// Everything before confinement: files, KVM, memory, boot, devices,
    /// vCPUs.
    pub(super) fn build(opts: &Options) -> Result<Self, MonitorError> {
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
}
