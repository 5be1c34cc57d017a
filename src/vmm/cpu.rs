//! vCPUs: their boot state (CPUID, MSRs, FPU, general and special
//! registers, local APIC) and the thread that runs each one.
//!
//! Owns: CPUID normalisation, the MSR boot list, the register values, and
//! the `KVM_RUN` loop. Invariants: CPUID is set before MSRs (KVM gates some
//! MSRs on CPUID bits); every vCPU gets its own APIC id (its index) in
//! CPUID leaves 0x1, 0xB and 0x8000_001E, matching the MADT; only the boot
//! vCPU's registers matter, the others wait for INIT/SIPI from the guest
//! (the in-kernel LAPIC holds them); a vCPU thread never exits on its own,
//! it reports the guest's end and parks until the monitor exits.

use std::sync::Arc;

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs,
};
use kvm_ioctls::VcpuFd;

use super::boot::Entry;
use super::exits::{self, EndLatch, ExitAction};
use super::layout::{self, EntryMode};
use super::{Ending, GuestEnd};

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// An ioctl on the vCPU failed.
    #[error("cannot {what} on vCPU {id}")]
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// vCPU index.
        id: u8,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("KVM accepted only {set} of {wanted} boot MSRs on vCPU {id}")]
    Msrs {
        /// vCPU index.
        id: u8,
        /// Accepted.
        set: usize,
        /// Given.
        wanted: usize,
    },
    /// The MSR or CPUID list could not be built.
    #[error("cannot build the {0} list")]
    FamList(&'static str),
}

// CPUID bits.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_ECX_PDCM: u32 = 1 << 15;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF6_ECX_EPB: u32 = 1 << 3;

/// Bits needed to number `n` items (0 for 1).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts KVM's supported CPUID for vCPU `id` of `count`: one socket of
/// `count` single-threaded cores, APIC id = index, the hypervisor bit set,
/// and features the monitor does not emulate hidden.
pub fn normalize_cpuid(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8) {
    let id32 = u32::from(id);
    let count32 = u32::from(count.max(1));
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: APIC id [31:24], logical processors [23:16].
                e.ebx = (e.ebx & 0x0000_ffff) | (id32 << 24) | (count32.min(255) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
                e.ecx &= !LEAF1_ECX_PDCM;
                if count32 > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Cores per package - 1 in [31:26]; caches above L2 are
                // shared by the whole package.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count32 - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            0x6 => e.ecx &= !LEAF6_ECX_EPB,
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread), level 1 =
                // core (all vCPUs), then invalid levels.
                e.edx = id32;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits_for(count32);
                        e.ebx = count32;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: NC = cores - 1; legacy APIC-id sizing.
                e.ecx = (e.ecx & !0xf0ff) | (count32 - 1);
            }
            0x8000_001e => {
                // AMD: extended APIC id, core id, one thread per core, node 0.
                e.eax = id32;
                e.ebx = id32 & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// MSR indices.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSRs set at boot: syscall/sysenter state cleared, TSC at zero, fast
/// strings on, and all memory write-back by default.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// LAPIC register offsets and delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| state.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

/// Wires LINT0 to ExtINT (the legacy PIC) and LINT1 to NMI, as firmware
/// does on a PC.
pub fn set_lapic_lints(state: &mut kvm_lapic_state) {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lint0 = lapic_reg(state, APIC_LVT_LINT0);
    set_lapic_reg(state, APIC_LVT_LINT0, with_mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lapic_reg(state, APIC_LVT_LINT1);
    set_lapic_reg(state, APIC_LVT_LINT1, with_mode(lint1, APIC_MODE_NMI));
}

/// General registers at entry.
pub fn boot_regs(entry: Entry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry.addr,
        ..Default::default()
    };
    match entry.mode {
        EntryMode::Long => {
            regs.rsp = layout::BOOT_STACK_ADDR;
            regs.rbp = layout::BOOT_STACK_ADDR;
            regs.rsi = layout::ZERO_PAGE_ADDR;
        }
        EntryMode::Protected32 => {
            regs.rbx = layout::PVH_START_INFO_ADDR;
        }
    }
    regs
}

/// Applies the boot special registers over KVM's reset state.
pub fn apply_boot_sregs(sregs: &mut kvm_sregs, mode: EntryMode) {
    let boot = layout::boot_sregs(mode);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (4 * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = boot.code;
    sregs.ds = boot.data;
    sregs.es = boot.data;
    sregs.fs = boot.data;
    sregs.gs = boot.data;
    sregs.ss = boot.data;
    sregs.tr = boot.tss;
    sregs.cr0 = boot.cr0;
    sregs.cr3 = boot.cr3;
    sregs.cr4 = boot.cr4;
    sregs.efer = boot.efer;
}

/// Puts vCPU `id` of `count` into its boot state.
pub fn configure(
    vcpu: &VcpuFd,
    supported: &CpuId,
    id: u8,
    count: u8,
    entry: Entry,
) -> Result<(), CpuError> {
    let ioctl = |what: &'static str| move |source| CpuError::Ioctl { what, id, source };
    let mut cpuid = supported.clone();
    normalize_cpuid(cpuid.as_mut_slice(), id, count);
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("set CPUID"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::FamList("MSR"))?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("set MSRs"))?;
    if set != entries.len() {
        return Err(CpuError::Msrs {
            id,
            set,
            wanted: entries.len(),
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,    // x87 default control word: all exceptions masked
        mxcsr: 0x1f80, // SSE default: all exceptions masked
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("set FPU state"))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(ioctl("set registers"))?;
    let mut sregs = vcpu.get_sregs().map_err(ioctl("read special registers"))?;
    apply_boot_sregs(&mut sregs, entry.mode);
    vcpu.set_sregs(&sregs)
        .map_err(ioctl("set special registers"))?;
    let mut lapic = vcpu.get_lapic().map_err(ioctl("read the local APIC"))?;
    set_lapic_lints(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(ioctl("set the local APIC"))?;
    Ok(())
}

/// Runs a vCPU until the guest ends, then reports the end and parks.
pub fn run(mut vcpu: VcpuFd, id: u8, ctx: Arc<exits::ExitContext>, latch: Arc<EndLatch>) -> ! {
    let ending = loop {
        match vcpu.run() {
            Ok(exit) => match exits::handle_exit(&ctx, exit) {
                ExitAction::Continue => {}
                ExitAction::End(mut ending) => {
                    if ending.end == GuestEnd::Crash
                        && let Ok(regs) = vcpu.get_regs()
                    {
                        ending.reason =
                            format!("{} at rip {:#x} on vCPU {id}", ending.reason, regs.rip);
                    }
                    break ending;
                }
            },
            // A signal or a transient condition: just enter again.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                break Ending::new(GuestEnd::Crash, format!("KVM_RUN failed on vCPU {id}: {e}"));
            }
        }
    };
    latch.end(ending);
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0x1234_0800,
            ecx: LEAF1_ECX_PDCM | LEAF6_ECX_EPB | 0xf0ff,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = [leaf(1, 0)];
        normalize_cpuid(&mut e, 2, 4);
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(e[0].ecx & LEAF1_ECX_PDCM, 0);
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        let mut single = [leaf(1, 0)];
        normalize_cpuid(&mut single, 0, 1);
        assert_eq!(single[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn topology_leaves_describe_one_socket_of_single_thread_cores() {
        let mut e = [
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ];
        normalize_cpuid(&mut e, 3, 5);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx, e[0].edx), (0, 1, 0x100, 3));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx, e[1].edx), (3, 5, 0x201, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx & 0xff00), (0, 0, 0));
        assert_eq!(e[3].ecx & 0xf0ff, 4);
        assert_eq!(e[4].eax, 3);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn cache_leaf_reports_cores_and_l3_sharing() {
        let mut l1 = leaf(4, 0);
        l1.eax = 1 << 5; // level 1
        let mut l3 = leaf(4, 3);
        l3.eax = 3 << 5;
        let mut e = [l1, l3];
        normalize_cpuid(&mut e, 0, 4);
        assert_eq!(e[0].eax >> 26, 3);
        assert_eq!((e[0].eax >> 14) & 0xfff, 0);
        assert_eq!((e[1].eax >> 14) & 0xfff, 3);
        assert_eq!(e[1].eax & 0x3fff, 3 << 5);
    }

    #[test]
    fn epb_is_hidden_and_other_leaves_untouched() {
        let mut e = [leaf(6, 0), leaf(7, 0)];
        normalize_cpuid(&mut e, 0, 1);
        assert_eq!(e[0].ecx & LEAF6_ECX_EPB, 0);
        assert_eq!(e[1], leaf(7, 0));
    }

    #[test]
    fn boot_msrs_enable_write_back_mtrrs_and_fast_strings() {
        let msrs = boot_msrs();
        let get = |i: u32| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(msrs.len(), 11);
    }

    #[test]
    fn lapic_lints_get_extint_and_nmi() {
        let mut s = kvm_lapic_state { regs: [0; 1024] };
        set_lapic_reg(&mut s, APIC_LVT_LINT0, 0x0001_0700);
        set_lapic_lints(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT1), 0x400);
    }

    #[test]
    fn regs_follow_the_entry_protocol() {
        let long = boot_regs(Entry {
            mode: EntryMode::Long,
            addr: 0x100_0000,
        });
        assert_eq!(
            (long.rip, long.rsi, long.rsp, long.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 2)
        );
        let pvh = boot_regs(Entry {
            mode: EntryMode::Protected32,
            addr: 0x10_0040,
        });
        assert_eq!((pvh.rip, pvh.rbx, pvh.rsi), (0x10_0040, 0x6000, 0));
    }

    #[test]
    fn sregs_point_at_the_boot_gdt_idt_and_page_tables() {
        let mut s = kvm_sregs::default();
        apply_boot_sregs(&mut s, EntryMode::Long);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 7));
        assert_eq!(s.cr3, layout::PML4_ADDR);
        assert_eq!(
            (s.cs.selector, s.ss.selector, s.tr.selector),
            (8, 0x10, 0x18)
        );
        assert_eq!(s.efer, layout::EFER_LME | layout::EFER_LMA);
    }
}
