//! The KVM virtual machine: `/dev/kvm`, the VM file descriptor, its
//! in-kernel interrupt controllers and PIT, guest memory and its
//! registration with KVM, irqfds and vCPU creation.
//!
//! Owns: every KVM system and VM ioctl the monitor issues before the guest
//! runs, and the one `unsafe` call that hands guest memory to KVM.
//! Invariants: the memory regions registered with KVM live as long as the
//! process (the [`Vm`] owns them and the monitor never unmaps them: it exits
//! instead of tearing down, since vCPU threads may still be in `KVM_RUN`);
//! memory slots are numbered from 0 in address order and never overlap.

use kvm_bindings::{
    KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::layout;

/// Where KVM puts the three pages it needs for real-mode emulation on
/// Intel: inside the MMIO gap, away from RAM and the APICs.
const TSS_ADDR: usize = 0xfffb_d000;

/// Capabilities the monitor relies on.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "IRQCHIP"),
    (Cap::Irqfd, "IRQFD"),
    (Cap::UserMemory, "USER_MEMORY"),
    (Cap::SetTssAddr, "SET_TSS_ADDR"),
    (Cap::Pit2, "PIT2"),
    (Cap::ExtCpuid, "EXT_CPUID"),
    (Cap::MpState, "MP_STATE"),
];

/// Errors setting the VM up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm (is KVM enabled and the device accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The kernel speaks another KVM API.
    #[error("unsupported KVM API version {0} (need {KVM_API_VERSION})")]
    ApiVersion(i32),
    /// A capability is missing.
    #[error("KVM lacks the {0} capability")]
    MissingCapability(&'static str),
    /// More vCPUs than KVM allows.
    #[error("{requested} vCPUs requested but KVM allows at most {max}")]
    TooManyVcpus {
        /// Requested.
        requested: u8,
        /// KVM's limit.
        max: usize,
    },
    /// `KVM_CREATE_VM` failed.
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// `KVM_SET_TSS_ADDR` failed.
    #[error("cannot set the TSS address")]
    SetTssAddress(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_IRQCHIP` failed.
    #[error("cannot create the in-kernel interrupt controllers")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_PIT2` failed.
    #[error("cannot create the in-kernel PIT")]
    CreatePit(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("cannot read the supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// Guest memory cannot be allocated.
    #[error("cannot allocate {size} bytes of guest memory")]
    AllocateMemory {
        /// Requested size.
        size: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// A memory region cannot be registered.
    #[error("cannot register guest memory at {addr:#x}")]
    RegisterMemory {
        /// Guest address of the region.
        addr: u64,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd cannot be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// An ioeventfd cannot be registered.
    #[error("cannot connect an eventfd to guest writes of {datamatch} at {addr:#x}")]
    Ioeventfd {
        /// The guest-physical MMIO address.
        addr: u64,
        /// The value the guest writes.
        datamatch: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An irqfd cannot be registered.
    #[error("cannot connect an eventfd to GSI {gsi}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create vCPU {id}")]
    CreateVcpu {
        /// vCPU index.
        id: u8,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// An open VM with its memory.
pub struct Vm {
    /// The `/dev/kvm` handle.
    pub kvm: Kvm,
    /// The VM.
    pub fd: VmFd,
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
}

impl Vm {
    /// Opens KVM, checks it, creates the VM, its interrupt controllers, its
    /// PIT and `mem_size` bytes of RAM laid out by [`layout::ram_ranges`].
    pub fn create(mem_size: u64, vcpus: u8) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(version));
        }
        if let Some((_, name)) = REQUIRED_CAPS
            .iter()
            .find(|(cap, _)| !kvm.check_extension(*cap))
        {
            return Err(VmError::MissingCapability(name));
        }
        let max = kvm.get_max_vcpus();
        if usize::from(vcpus) > max {
            return Err(VmError::TooManyVcpus {
                requested: vcpus,
                max,
            });
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        // Memory before the interrupt controllers and the PIT: each memory
        // slot change waits for an SRCU grace period of the VM, which is
        // short on a VM that has no I/O devices yet but took 4 to 13 ms
        // (almost all of the monitor's setup) when the irqchip and PIT had
        // just been created (BENCHMARKS.md, "Monitor").
        let memory = Self::register_memory(&fd, mem_size)?;
        fd.set_tss_address(TSS_ADDR)
            .map_err(VmError::SetTssAddress)?;
        fd.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        // A dummy speaker port (0x61) keeps Linux's PIT calibration happy
        // without emulating sound.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::CreatePit)?;
        Ok(Self { kvm, fd, memory })
    }

    /// Allocates `mem_size` bytes of guest RAM laid out by
    /// [`layout::ram_ranges`] and registers each range with KVM.
    fn register_memory(fd: &VmFd, mem_size: u64) -> Result<GuestMemoryMmap, VmError> {
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_size)
            .into_iter()
            .map(|(addr, size)| (GuestAddress(addr), size as usize))
            .collect();
        let memory =
            GuestMemoryMmap::from_ranges(&ranges).map_err(|source| VmError::AllocateMemory {
                size: mem_size,
                source,
            })?;
        for (slot, region) in memory.iter().enumerate() {
            let addr = region.start_addr().raw_value();
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::RegisterMemory {
                    addr,
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: addr,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of a live mapping of exactly
            // `region.len()` bytes owned by `memory`, which the new `Vm`
            // keeps for the rest of the process (on a setup error it is
            // dropped together with the VM, before any vCPU exists to touch
            // it); slots are distinct and the guest ranges come from
            // `ram_ranges`, which never overlap.
            unsafe { fd.set_user_memory_region(desc) }
                .map_err(|source| VmError::RegisterMemory { addr, source })?;
        }
        Ok(memory)
    }

    /// The CPUID leaves KVM can give a guest on this host.
    pub fn supported_cpuid(&self) -> Result<kvm_bindings::CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::SupportedCpuid)
    }

    /// A new eventfd wired to `gsi` as an irqfd: writing it raises the
    /// (edge) interrupt without a trip through the monitor.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })?;
        Ok(evt)
    }

    /// A new eventfd that KVM signals when the guest writes the 32-bit
    /// `datamatch` to the MMIO address `addr`: the write completes in the
    /// kernel, without an exit to the monitor. Read 8 bytes to clear it.
    pub fn ioeventfd(&self, addr: u64, datamatch: u32) -> Result<std::fs::File, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_ioevent(&evt, &kvm_ioctls::IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Ioeventfd {
                addr,
                datamatch,
                source,
            })?;
        Ok(crate::sys::fd::own(evt).into())
    }

    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(|source| VmError::CreateVcpu { id, source })
    }
}
