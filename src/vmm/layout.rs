//! The guest's physical memory map and the boot-time structures placed in
//! it, computed as plain data before anything touches KVM.
//!
//! Owns: where RAM, the MMIO gap, the zero page, the page tables, the GDT,
//! the command line, the initrd and the ACPI tables live; the e820 map; the
//! `boot_params` and PVH `hvm_start_info` contents; the identity-mapping page
//! tables; the GDT entries and the segment registers derived from them.
//!
//! Invariants: every fixed address below 1 MiB is distinct and inside the
//! first RAM range; RAM never overlaps the MMIO gap `[MMIO_GAP_START, 4 GiB)`;
//! every function here is pure (no I/O, no KVM), so the whole layout is
//! unit-tested without `/dev/kvm`.

use kvm_bindings::kvm_segment;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

/// GDT: four 8-byte entries (null, code, data, TSS).
pub const GDT_ADDR: u64 = 0x500;
/// An IDT holding a single null gate: any exception before the guest loads
/// its own IDT ends in a triple fault, which is reported as a crash.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` (56 bytes).
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
/// PVH module list: one entry, the initrd.
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map (24-byte entries).
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// The Linux zero page (`boot_params`, 4 KiB).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the Linux 64-bit entry; grows down towards the
/// zero page, and Linux switches to its own stack almost at once.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Page-map level 4 of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// The first of [`PD_COUNT`] page directories (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Page directories: 4 × 1 GiB identity-maps the whole 32-bit space, so a
/// guest can reach the LAPIC, IOAPIC and MMIO devices before it builds its
/// own tables.
pub const PD_COUNT: usize = 4;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line, NUL included (Linux x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area: RAM ends here in the low megabyte.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables, RSDP first. Linux also finds the RSDP by scanning
/// `[0xe0000, 0x100000)` on 16-byte boundaries, so it lives there.
pub const ACPI_ADDR: u64 = 0xe0000;
/// End of the area reserved for ACPI tables: the reset vector follows.
pub const ACPI_END: u64 = RESET_VECTOR_ADDR;
/// The x86 reset vector (`F000:FFF0`), the last 16 bytes of the low
/// megabyte. Linux reaches it on reboot with hardware-reduced ACPI: it
/// then prefers an EFI reset, and without EFI runtime services falls back
/// to a real-mode jump here (`reboot=bios`), never trying the ACPI reset
/// register. Zeroed RAM there would hang the guest, so [`reset_vector`]
/// stands in for the firmware.
pub const RESET_VECTOR_ADDR: u64 = 0xf_fff0;

// The ACPI tables must never overwrite the stub.
const _: () = assert!(ACPI_END <= RESET_VECTOR_ADDR);

/// Real-mode code for [`RESET_VECTOR_ADDR`]: writes the ACPI reset
/// register (the monitor ends the guest as a reboot), then, should that
/// be ignored, pulses the i8042 reset line, then halts forever.
pub fn reset_vector(reset_port: u16, reset_value: u8) -> [u8; 16] {
    let [port_lo, port_hi] = reset_port.to_le_bytes();
    [
        0xba,
        port_lo,
        port_hi, // mov dx, reset_port
        0xb0,
        reset_value, // mov al, reset_value
        0xee,        // out dx, al
        0xb0,
        0xfe, // mov al, 0xfe (pulse reset)
        0xe6,
        0x64, // out 0x64, al
        0xfa, // cli
        0xf4, // hlt
        0xeb,
        0xfd, // jmp back to hlt
        0x90,
        0x90, // nop padding
    ]
}
/// First byte above the legacy low megabyte: kernels load from here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 1 GiB hole below 4 GiB for MMIO (IOAPIC, LAPIC, virtio).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where virtio-mmio devices start inside the MMIO gap.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Distance between two virtio-mmio devices.
pub const VIRTIO_MMIO_STRIDE: u64 = 0x1000;
/// The in-kernel IOAPIC's base address.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's base address.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;

/// Selectors of the boot GDT (index × 8).
pub const CODE_SELECTOR: u16 = 0x08;
/// Data selector.
pub const DATA_SELECTOR: u16 = 0x10;
/// TSS selector.
pub const TSS_SELECTOR: u16 = 0x18;

/// Boot protocol magic numbers (Documentation/arch/x86/boot.rst).
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// `loadflags` bits.
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
/// PVH `hvm_start_info` magic.
const PVH_MAGIC: u32 = 0x336e_c578;

/// One range of guest physical memory in the e820 sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

impl MemoryRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Why a memory size cannot be laid out.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error(
        "initrd of {size} bytes does not fit in guest memory below {limit:#x} above the kernel (ends at {kernel_end:#x}); give the guest more memory"
    )]
    InitrdPlacement {
        /// Size of the initrd.
        size: u64,
        /// Highest usable address + 1.
        limit: u64,
        /// End of the kernel image.
        kernel_end: u64,
    },
}

/// The RAM ranges backing `size` bytes of guest memory: up to the MMIO gap,
/// then the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(0, low)];
    if size > low {
        ranges.push((MMIO_GAP_END, size - low));
    }
    ranges
}

/// End of the RAM range that starts at 0 (the "low memory").
pub fn low_memory_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

/// The e820 map: conventional memory, the reserved BIOS/ACPI area,
/// RAM from 1 MiB up to the MMIO gap, and RAM above 4 GiB.
pub fn e820_map(size: u64) -> Vec<MemoryRange> {
    let mut map = vec![
        MemoryRange {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryRange {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
        MemoryRange {
            addr: HIMEM_START,
            size: low_memory_end(size) - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    if size > MMIO_GAP_START {
        map.push(MemoryRange {
            addr: MMIO_GAP_END,
            size: size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Where the initrd goes: page-aligned, as high as possible below both the
/// end of low memory and `addr_max` (the kernel's `initrd_addr_max`), and
/// above the kernel image.
pub fn initrd_addr(
    mem_size: u64,
    initrd_size: u64,
    addr_max: u64,
    kernel_end: u64,
) -> Result<u64, LayoutError> {
    let limit = low_memory_end(mem_size).min(addr_max.saturating_add(1));
    let err = LayoutError::InitrdPlacement {
        size: initrd_size,
        limit,
        kernel_end,
    };
    let start = limit.checked_sub(initrd_size).ok_or(err.clone())? & !0xfff;
    if start < kernel_end.max(HIMEM_START) {
        return Err(err);
    }
    Ok(start)
}

/// What the Linux boot protocol needs besides the kernel itself.
#[derive(Clone, Debug, Default)]
pub struct LinuxBootInfo {
    /// The bzImage setup header, if the kernel was a bzImage.
    pub setup_header: Option<setup_header>,
    /// Length of the command line without its NUL.
    pub cmdline_len: usize,
    /// Initrd address and size.
    pub initrd: Option<(u64, u64)>,
    /// Guest memory size.
    pub mem_size: u64,
}

/// Builds the zero page for the Linux 64-bit boot protocol.
pub fn linux_boot_params(info: &LinuxBootInfo) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        // Seeding from the image's own header keeps fields such as
        // `setup_sects`, `version` and `init_size` that the kernel reads back.
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDR_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = ACPI_ADDR;
    let map = e820_map(info.mem_size);
    params.e820_entries = map.len() as u8;
    for (slot, range) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: range.addr,
            size: range.size,
            r#type: range.kind,
        };
    }
    params
}

/// What the PVH boot protocol needs: the start-of-day structure, its
/// memory map and the module list (the initrd).
#[derive(Clone, Debug)]
pub struct PvhBootInfo {
    /// `hvm_start_info`, written at [`PVH_START_INFO_ADDR`].
    pub start_info: hvm_start_info,
    /// Memory map, written at [`PVH_MEMMAP_ADDR`].
    pub memmap: Vec<hvm_memmap_table_entry>,
    /// Module list, written at [`PVH_MODLIST_ADDR`].
    pub modules: Vec<hvm_modlist_entry>,
}

/// Builds the PVH start-of-day structure.
pub fn pvh_boot_info(mem_size: u64, initrd: Option<(u64, u64)>) -> PvhBootInfo {
    let memmap: Vec<_> = e820_map(mem_size)
        .iter()
        .map(|r| hvm_memmap_table_entry {
            addr: r.addr,
            size: r.size,
            type_: r.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initrd
        .iter()
        .map(|&(addr, size)| hvm_modlist_entry {
            paddr: addr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_ADDR
        },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: ACPI_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    PvhBootInfo {
        start_info,
        memmap,
        modules,
    }
}

/// The boot identity map: PML4[0] → PDPT, PDPT[0..4] → 4 page directories
/// of 2 MiB pages, covering guest-physical `[0, 4 GiB)` one to one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageTables {
    /// Written at [`PML4_ADDR`].
    pub pml4: Vec<u64>,
    /// Written at [`PDPT_ADDR`].
    pub pdpt: Vec<u64>,
    /// Written at [`PD_ADDR`], one 4 KiB page after the other.
    pub pds: Vec<u64>,
}

/// Builds the boot identity map.
pub fn page_tables() -> PageTables {
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE;
    let mut pdpt = vec![0u64; 512];
    for (i, entry) in pdpt.iter_mut().take(PD_COUNT).enumerate() {
        *entry = (PD_ADDR + (i as u64) * 0x1000) | PTE_PRESENT | PTE_WRITABLE;
    }
    let pds = (0..512 * PD_COUNT as u64)
        .map(|i| (i << 21) | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE)
        .collect();
    PageTables { pml4, pdpt, pds }
}

/// Which entry protocol the vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with paging (Linux boot protocol, vmlinux or bzImage).
    Long,
    /// 32-bit protected mode, paging off (PVH).
    Protected32,
}

/// Encodes a GDT descriptor from the packed flags word (access byte in the
/// low 8 bits, flags nibble in bits 12..16), base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT for an entry mode: null, code (64- or 32-bit), data, TSS.
pub fn gdt(mode: EntryMode) -> [u64; 4] {
    let code = match mode {
        // Present, ring 0, code, execute/read, accessed; L=1, G=1.
        EntryMode::Long => gdt_entry(0xa09b, 0, 0xfffff),
        // Same with D=1 instead of L=1: a flat 32-bit segment.
        EntryMode::Protected32 => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        code,
        // Present, ring 0, data, read/write, accessed; D/B=1, G=1.
        gdt_entry(0xc093, 0, 0xfffff),
        // Present, 32/64-bit busy TSS.
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Decodes a GDT descriptor into the segment register KVM loads, as the
/// CPU would on a selector load.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let granular = (entry >> 55) & 1 == 1;
    let limit = if granular {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let bits = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: bits(55, 1),
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

/// Control-register bits used at entry.
pub const CR0_PE: u64 = 1;
/// Extension type: always set on modern CPUs.
pub const CR0_ET: u64 = 1 << 4;
/// Paging.
pub const CR0_PG: u64 = 1 << 31;
/// Physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// Long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// Long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// The special registers' boot values, independent of KVM's reset state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootSregs {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// Code segment.
    pub code: kvm_segment,
    /// Data segments (DS, ES, FS, GS, SS).
    pub data: kvm_segment,
    /// Task register.
    pub tss: kvm_segment,
}

/// Special-register values for an entry mode.
pub fn boot_sregs(mode: EntryMode) -> BootSregs {
    let table = gdt(mode);
    let (cr0, cr3, cr4, efer) = match mode {
        EntryMode::Long => (
            CR0_PE | CR0_ET | CR0_PG,
            PML4_ADDR,
            CR4_PAE,
            EFER_LME | EFER_LMA,
        ),
        EntryMode::Protected32 => (CR0_PE | CR0_ET, 0, 0, 0),
    };
    BootSregs {
        cr0,
        cr3,
        cr4,
        efer,
        code: segment_from_gdt(table[1], CODE_SELECTOR),
        data: segment_from_gdt(table[2], DATA_SELECTOR),
        tss: segment_from_gdt(table[3], TSS_SELECTOR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_vector_fills_the_last_16_bytes_below_1m_and_writes_the_reset_port() {
        assert_eq!(RESET_VECTOR_ADDR + 16, HIMEM_START);
        let code = reset_vector(0x602, 1);
        // mov dx, 0x602; mov al, 1; out dx, al
        assert_eq!(code[..6], [0xba, 0x02, 0x06, 0xb0, 0x01, 0xee]);
        // then the i8042 pulse, and a halt loop whose jump lands on hlt.
        assert_eq!(code[6..10], [0xb0, 0xfe, 0xe6, 0x64]);
        assert_eq!(code[11], 0xf4);
        assert_eq!(code[12..14], [0xeb, 0xfd]);
        let after_jump = 14i64 + i64::from(code[13] as i8);
        assert_eq!(after_jump, 11);
    }

    #[test]
    fn small_guest_has_three_e820_entries_ending_at_memory_size() {
        let map = e820_map(64 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            MemoryRange {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[1].end(), HIMEM_START);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].end(), 64 << 20);
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_gap() {
        let size = 4u64 << 30;
        let map = e820_map(size);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].end(), MMIO_GAP_START);
        assert_eq!(map[3].addr, MMIO_GAP_END);
        let ram: u64 = map
            .iter()
            .filter(|r| r.kind == E820_RAM)
            .map(|r| r.size)
            .sum();
        // All memory is RAM except the 384 KiB BIOS/ACPI hole below 1 MiB.
        assert_eq!(ram, size - (HIMEM_START - EBDA_START));
        assert_eq!(
            ram_ranges(size),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }

    #[test]
    fn fixed_addresses_do_not_overlap() {
        let mut areas = [
            (GDT_ADDR, 32),
            (IDT_ADDR, 8),
            (PVH_START_INFO_ADDR, 56),
            (PVH_MODLIST_ADDR, 32),
            (PVH_MEMMAP_ADDR, 24 * 8),
            (ZERO_PAGE_ADDR, 4096),
            (PML4_ADDR, 4096),
            (PDPT_ADDR, 4096),
            (PD_ADDR, 4096 * PD_COUNT as u64),
            (CMDLINE_ADDR, CMDLINE_MAX as u64),
            (ACPI_ADDR, ACPI_END - ACPI_ADDR),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        const { assert!(BOOT_STACK_ADDR > ZERO_PAGE_ADDR + 4096 && BOOT_STACK_ADDR < PML4_ADDR) };
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory_page_aligned() {
        let mem = 64 << 20;
        let addr = initrd_addr(mem, 5000, u64::MAX, 0x20_0000);
        assert_eq!(addr, Ok((mem - 5000) & !0xfff));
        // A kernel limit below the end of memory wins.
        let addr = initrd_addr(mem, 4096, 0x1ff_ffff, 0x20_0000);
        assert_eq!(addr, Ok(0x1ff_f000));
        // No room above the kernel.
        assert!(initrd_addr(mem, 60 << 20, u64::MAX, 0x80_0000).is_err());
        assert!(initrd_addr(mem, mem * 2, u64::MAX, 0).is_err());
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_e820_and_rsdp() {
        let info = LinuxBootInfo {
            setup_header: None,
            cmdline_len: 11,
            initrd: Some((0x300_0000, 0x1234)),
            mem_size: 64 << 20,
        };
        let p = linux_boot_params(&info);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.cmdline_size }, 11);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.hdr.loadflags } & LOADED_HIGH, LOADED_HIGH);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_ADDR);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!({ last.addr } + { last.size }, 64 << 20);
        assert_eq!({ last.r#type }, E820_RAM);
    }

    #[test]
    fn bzimage_header_is_kept_but_loader_fields_are_ours() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let p = linux_boot_params(&LinuxBootInfo {
            setup_header: Some(hdr),
            cmdline_len: 0,
            initrd: None,
            mem_size: 64 << 20,
        });
        assert_eq!(p.hdr.setup_sects, 27);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_memmap_rsdp_and_initrd() {
        let info = pvh_boot_info(64 << 20, Some((0x300_0000, 77)));
        assert_eq!(info.start_info.magic, 0x336e_c578);
        assert_eq!(info.start_info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.start_info.rsdp_paddr, ACPI_ADDR);
        assert_eq!(info.start_info.memmap_paddr, PVH_MEMMAP_ADDR);
        assert_eq!(info.start_info.memmap_entries, 3);
        assert_eq!(info.start_info.nr_modules, 1);
        assert_eq!(info.start_info.modlist_paddr, PVH_MODLIST_ADDR);
        assert_eq!(info.modules[0].paddr, 0x300_0000);
        assert_eq!(info.modules[0].size, 77);
        let none = pvh_boot_info(64 << 20, None);
        assert_eq!(none.start_info.nr_modules, 0);
        assert_eq!(none.start_info.modlist_paddr, 0);
    }

    #[test]
    fn page_tables_identity_map_four_gib_with_2mib_pages() {
        let t = page_tables();
        assert_eq!(t.pml4[0], PDPT_ADDR | 3);
        assert!(t.pml4[1..].iter().all(|&e| e == 0));
        assert_eq!(t.pdpt[0], PD_ADDR | 3);
        assert_eq!(t.pdpt[3], (PD_ADDR + 0x3000) | 3);
        assert!(t.pdpt[4..].iter().all(|&e| e == 0));
        assert_eq!(t.pds.len(), 2048);
        assert_eq!(t.pds[0], 0x83);
        assert_eq!(t.pds[1], 0x20_0000 | 0x83);
        // The LAPIC page is reachable: 0xfee00000 lies in entry 0x7f7.
        assert_eq!(
            t.pds[(LAPIC_ADDR >> 21) as usize] & !0xfff,
            LAPIC_ADDR & !0x1f_ffff
        );
        assert_eq!(*t.pds.last().unwrap_or(&0), (0xffe0_0000u64) | 0x83);
    }

    #[test]
    fn gdt_entries_match_the_architectural_encoding() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
        assert_eq!(gdt(EntryMode::Long)[0], 0);
    }

    #[test]
    fn segments_decode_from_their_descriptors() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!(
            (code.type_, code.s, code.present, code.l, code.db, code.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.selector, 8);
        assert_eq!(code.unusable, 0);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), DATA_SELECTOR);
        assert_eq!((data.type_, data.s, data.db, data.l), (3, 1, 1, 0));
        let tss = segment_from_gdt(gdt_entry(0x808b, 0, 0xfffff), TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
        let odd = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 0x10);
        assert_eq!(odd.base, 0x1234_5678);
        assert_eq!(odd.limit, 0xabcde);
    }

    #[test]
    fn long_mode_enables_paging_and_protected_mode_does_not() {
        let long = boot_sregs(EntryMode::Long);
        assert_eq!(long.cr0 & CR0_PG, CR0_PG);
        assert_eq!(long.cr3, PML4_ADDR);
        assert_eq!(long.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(long.efer, EFER_LME | EFER_LMA);
        assert_eq!(long.code.l, 1);
        let pvh = boot_sregs(EntryMode::Protected32);
        assert_eq!(pvh.cr0, CR0_PE | CR0_ET);
        assert_eq!((pvh.cr3, pvh.cr4, pvh.efer), (0, 0, 0));
        assert_eq!((pvh.code.l, pvh.code.db), (0, 1));
    }
}
