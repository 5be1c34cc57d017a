//! Loading the guest: the kernel (ELF vmlinux, PVH ELF or bzImage, through
//! `linux-loader`), the command line, the initrd, and the boot structures
//! from [`layout`] written into guest memory.
//!
//! Owns: the choice of entry protocol and the writes into guest memory
//! before the first vCPU runs. Invariants: an ELF with a PVH note is
//! entered through PVH (32-bit, `hvm_start_info` in EBX), any other ELF at
//! its entry in 64-bit mode, a bzImage at its 64-bit entry (load address +
//! 0x200), both with the zero page in RSI; nothing is written outside the
//! addresses [`layout`] assigns.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::{self, PvhBootCapability};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::devices::acpi::{self, AcpiConfig};
use super::layout::{self, EntryMode};

/// Lowest bzImage boot protocol with a 64-bit entry (2.12 added
/// `xloadflags`).
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
/// `xloadflags`: the kernel has a 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry in a loaded bzImage.
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;
/// `initrd_addr_max` before boot protocol 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Neither a usable ELF nor a bzImage.
    #[error("cannot load kernel {path}")]
    LoadKernel {
        /// The kernel file.
        path: String,
        /// Cause.
        #[source]
        source: loader::Error,
    },
    /// A bzImage without a 64-bit entry point.
    #[error(
        "kernel {path} is a bzImage with boot protocol {version:#06x} and no 64-bit entry; need protocol 2.12+ built for x86_64"
    )]
    UnsupportedBzImage {
        /// The kernel file.
        path: String,
        /// Its boot protocol version.
        version: u16,
    },
    /// The command line is not acceptable.
    #[error("invalid kernel command line (at most {max} bytes of printable ASCII)")]
    Cmdline {
        /// Maximum length.
        max: usize,
        /// Cause.
        #[source]
        source: linux_loader::cmdline::Error,
    },
    /// The initrd cannot be sized.
    #[error("cannot read initrd {path}")]
    ReadInitrd {
        /// The initrd file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The initrd cannot be copied into the guest.
    #[error("cannot copy initrd {path} into guest memory")]
    CopyInitrd {
        /// The initrd file.
        path: String,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The memory layout does not work out.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// The ACPI tables cannot be built.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// A boot structure cannot be written.
    #[error("cannot write the {what} into guest memory")]
    WriteMemory {
        /// Which structure.
        what: &'static str,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The zero page or PVH start info cannot be written.
    #[error("cannot write the boot parameters into guest memory")]
    WriteBootParams(#[source] linux_loader::configurator::Error),
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Protocol and CPU mode.
    pub mode: EntryMode,
    /// First instruction.
    pub addr: u64,
}

/// The guest's files and settings.
pub struct BootSpec<'a> {
    /// Kernel file and its path (for messages).
    pub kernel: (&'a mut File, &'a Path),
    /// Initrd file and its path.
    pub initrd: Option<(&'a mut File, &'a Path)>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest memory size.
    pub mem_size: u64,
    /// What the ACPI tables describe.
    pub acpi: AcpiConfig,
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    value: T,
) -> Result<(), BootError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| BootError::WriteMemory { what, source })
}

fn write_words(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    words: &[u64],
) -> Result<(), BootError> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|source| BootError::WriteMemory { what, source })
}

/// What the kernel loader found.
struct LoadedKernel {
    entry: Entry,
    end: u64,
    setup_header: Option<loader::bootparam::setup_header>,
}

fn load_kernel(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let load_err = |source| BootError::LoadKernel {
        path: path.display().to_string(),
        source,
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match Elf::load(mem, None, file, himem) {
        Ok(result) => {
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => Entry {
                    mode: EntryMode::Protected32,
                    addr: addr.0,
                },
                _ => Entry {
                    mode: EntryMode::Long,
                    addr: result.kernel_load.0,
                },
            };
            Ok(LoadedKernel {
                entry,
                end: result.kernel_end,
                setup_header: None,
            })
        }
        Err(loader::Error::Elf(elf::Error::InvalidElfMagicNumber)) => {
            file.seek(SeekFrom::Start(0)).map_err(|_| {
                load_err(loader::Error::Bzimage(
                    loader::bzimage::Error::SeekBzImageHeader,
                ))
            })?;
            let result = BzImage::load(mem, None, file, himem).map_err(load_err)?;
            let hdr = result.setup_header.unwrap_or_default();
            if hdr.version < MIN_BZIMAGE_PROTOCOL || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::UnsupportedBzImage {
                    path: path.display().to_string(),
                    version: hdr.version,
                });
            }
            // The kernel decompresses itself into `init_size` bytes from its
            // runtime address; the initrd must stay clear of that too.
            let runtime = result.kernel_load.0.max(hdr.pref_address);
            let end = result
                .kernel_end
                .max(runtime.saturating_add(u64::from(hdr.init_size)));
            Ok(LoadedKernel {
                entry: Entry {
                    mode: EntryMode::Long,
                    addr: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY,
                },
                end,
                setup_header: Some(hdr),
            })
        }
        Err(e) => Err(load_err(e)),
    }
}

/// Loads the kernel, command line and initrd, and writes the boot
/// parameters, page tables, GDT, IDT and ACPI tables. Returns the entry.
pub fn load(mem: &GuestMemoryMmap, spec: BootSpec<'_>) -> Result<Entry, BootError> {
    let (kernel_file, kernel_path) = spec.kernel;
    let kernel = load_kernel(mem, kernel_file, kernel_path)?;

    let cmdline_err = |source| BootError::Cmdline {
        max: layout::CMDLINE_MAX - 1,
        source,
    };
    let cmdline = Cmdline::try_from(spec.cmdline, layout::CMDLINE_MAX).map_err(cmdline_err)?;
    let cmdline_len = cmdline.as_cstring().map_err(cmdline_err)?.as_bytes().len();
    loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), &cmdline).map_err(|_| {
        BootError::WriteMemory {
            what: "command line",
            source: vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(
                layout::CMDLINE_ADDR,
            )),
        }
    })?;

    let initrd = match spec.initrd {
        Some((file, path)) => {
            let read_err = |source| BootError::ReadInitrd {
                path: path.display().to_string(),
                source,
            };
            let size = file.metadata().map_err(read_err)?.len();
            let addr_max = kernel
                .setup_header
                .filter(|h| h.version >= 0x0203)
                .map_or(DEFAULT_INITRD_ADDR_MAX, |h| u64::from(h.initrd_addr_max));
            let addr = layout::initrd_addr(spec.mem_size, size, addr_max, kernel.end)?;
            mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize)
                .map_err(|source| BootError::CopyInitrd {
                    path: path.display().to_string(),
                    source,
                })?;
            Some((addr, size))
        }
        None => None,
    };

    match kernel.entry.mode {
        EntryMode::Long => {
            let params = layout::linux_boot_params(&layout::LinuxBootInfo {
                setup_header: kernel.setup_header,
                cmdline_len,
                initrd,
                mem_size: spec.mem_size,
            });
            let bp = BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE_ADDR));
            LinuxBootConfigurator::write_bootparams(&bp, mem)
                .map_err(BootError::WriteBootParams)?;
        }
        EntryMode::Protected32 => {
            let info = layout::pvh_boot_info(spec.mem_size, initrd);
            let mut bp =
                BootParams::new(&info.start_info, GuestAddress(layout::PVH_START_INFO_ADDR));
            bp.set_sections(&info.memmap, GuestAddress(layout::PVH_MEMMAP_ADDR));
            if !info.modules.is_empty() {
                bp.set_modules(&info.modules, GuestAddress(layout::PVH_MODLIST_ADDR));
            }
            PvhBootConfigurator::write_bootparams(&bp, mem).map_err(BootError::WriteBootParams)?;
        }
    }

    let tables = layout::page_tables();
    write_words(mem, "page tables", layout::PML4_ADDR, &tables.pml4)?;
    write_words(mem, "page tables", layout::PDPT_ADDR, &tables.pdpt)?;
    write_words(mem, "page tables", layout::PD_ADDR, &tables.pds)?;
    write_words(
        mem,
        "GDT",
        layout::GDT_ADDR,
        &layout::gdt(kernel.entry.mode),
    )?;
    write(mem, "IDT", layout::IDT_ADDR, 0u64)?;
    let stub = layout::reset_vector(acpi::RESET_PORT, acpi::RESET_VALUE);
    mem.write_slice(&stub, GuestAddress(layout::RESET_VECTOR_ADDR))
        .map_err(|source| BootError::WriteMemory {
            what: "reset vector",
            source,
        })?;
    let blob = acpi::build_tables(&spec.acpi)?;
    mem.write_slice(&blob, GuestAddress(layout::ACPI_ADDR))
        .map_err(|source| BootError::WriteMemory {
            what: "ACPI tables",
            source,
        })?;
    Ok(kernel.entry)
}
