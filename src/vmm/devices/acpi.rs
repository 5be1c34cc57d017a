//! Hardware-reduced ACPI: the tables the guest reads at boot, the
//! sleep-control/reset registers that turn a guest `poweroff` or `reboot`
//! into a monitor exit, and the power button that asks the guest to shut
//! down.
//!
//! Owns: RSDP, XSDT, FADT, MADT and DSDT (built as one blob for
//! [`ACPI_ADDR`]); the port-I/O block at [`PM_BASE`]; the GED interrupt.
//! Invariants: every table's checksum sums to zero and its length field
//! matches its bytes; the FADT advertises exactly the registers
//! [`AcpiPm`] implements; the DSDT's `_S5_` value is [`SLP_TYP_S5`], the
//! value [`AcpiPm`] recognises.
//!
//! Why hardware-reduced: with no PM1 blocks or SCI to emulate, a poweroff
//! is one port write (ACPI 6.5 §4.8.3.7), and the Debian cloud kernel as a
//! guest finds its SMP topology (MADT), virtio-mmio disks, power button and
//! pvpanic device here rather than on the command line.

use super::BusDevice;
use super::aml;
use crate::vmm::layout::{ACPI_ADDR, ACPI_END, IOAPIC_ADDR, LAPIC_ADDR};
use crate::vmm::{Ending, GuestEnd};

/// Base of the port-I/O block: sleep control, sleep status, reset.
pub const PM_BASE: u16 = 0x600;
/// Ports in the block.
pub const PM_LEN: u64 = 3;
/// Sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const SLEEP_CONTROL_PORT: u16 = PM_BASE;
/// Sleep status register (FADT `SLEEP_STATUS_REG`).
pub const SLEEP_STATUS_PORT: u16 = PM_BASE + 1;
/// Reset register (FADT `RESET_REG`).
pub const RESET_PORT: u16 = PM_BASE + 2;
/// The value the guest writes to [`RESET_PORT`] to reset (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x01;
/// The sleep type of S5 (soft-off), as `_S5_` publishes it.
pub const SLP_TYP_S5: u8 = 5;
/// Sleep-enable bit of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;
/// GSI of the Generic Event Device; its `_EVT` notifies the power button.
pub const GED_GSI: u32 = 9;

const OEM_ID: &[u8; 6] = b"ZONIT ";
const OEM_TABLE_ID: &[u8; 8] = b"ZONITVMM";
const CREATOR_ID: &[u8; 4] = b"ZNIT";

/// What the tables describe.
#[derive(Clone, Debug, Default)]
pub struct AcpiConfig {
    /// Number of vCPUs (APIC ids 0..n).
    pub vcpus: u8,
    /// Every device's description for the DSDT (AML terms under `\_SB_`),
    /// each written by the device's own module.
    pub devices: Vec<Vec<u8>>,
}

/// Errors building the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The tables do not fit in the reserved area.
    #[error("ACPI tables need {needed} bytes but only {room} are reserved")]
    TooLarge {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        room: u64,
    },
}

/// Sets the checksum byte at `offset` so that `bytes[range]` sums to zero.
fn fix_checksum(bytes: &mut [u8], offset: usize) {
    bytes[offset] = 0;
    let sum = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    bytes[offset] = sum.wrapping_neg();
}

/// A system description table: 36-byte header then `body`.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = (36 + body.len()) as u32;
    let mut t = Vec::with_capacity(len as usize);
    t.extend_from_slice(signature);
    t.extend_from_slice(&len.to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, fixed below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    fix_checksum(&mut t, 9);
    t
}

/// A Generic Address Structure for a one-byte I/O port.
fn gas_io_byte(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = 8; // register bit width
    g[2] = 0; // bit offset
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// FADT flags (ACPI 6.5 table 5.10).
const FADT_PWR_BUTTON: u32 = 1 << 4; // power button is a control-method device
const FADT_SLP_BUTTON: u32 = 1 << 5; // no fixed-feature sleep button
const FADT_RESET_REG_SUP: u32 = 1 << 10;
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IA-PC boot architecture flags.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Byte offsets inside the FADT (revision 6, 276 bytes).
pub mod fadt {
    /// Length of a revision-6 FADT.
    pub const LEN: usize = 276;
    /// 32-bit DSDT address.
    pub const DSDT: usize = 40;
    /// IA-PC boot architecture flags.
    pub const IAPC_BOOT_ARCH: usize = 109;
    /// Fixed feature flags.
    pub const FLAGS: usize = 112;
    /// Reset register (GAS).
    pub const RESET_REG: usize = 116;
    /// Reset value.
    pub const RESET_VALUE: usize = 128;
    /// FADT minor version.
    pub const MINOR_VERSION: usize = 131;
    /// 64-bit DSDT address.
    pub const X_DSDT: usize = 140;
    /// Sleep control register (GAS).
    pub const SLEEP_CONTROL_REG: usize = 244;
    /// Sleep status register (GAS).
    pub const SLEEP_STATUS_REG: usize = 256;
    /// Hypervisor vendor identity.
    pub const HYPERVISOR_ID: usize = 268;
}

fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut body = vec![0u8; fadt::LEN - 36];
    let mut put = |offset: usize, bytes: &[u8]| {
        body[offset - 36..offset - 36 + bytes.len()].copy_from_slice(bytes);
    };
    put(fadt::DSDT, &(dsdt_addr as u32).to_le_bytes());
    put(
        fadt::IAPC_BOOT_ARCH,
        &(IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).to_le_bytes(),
    );
    put(
        fadt::FLAGS,
        &(FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP | FADT_HW_REDUCED_ACPI)
            .to_le_bytes(),
    );
    put(fadt::RESET_REG, &gas_io_byte(RESET_PORT));
    put(fadt::RESET_VALUE, &[RESET_VALUE]);
    put(fadt::MINOR_VERSION, &[5]);
    put(fadt::X_DSDT, &dsdt_addr.to_le_bytes());
    put(fadt::SLEEP_CONTROL_REG, &gas_io_byte(SLEEP_CONTROL_PORT));
    put(fadt::SLEEP_STATUS_REG, &gas_io_byte(SLEEP_STATUS_PORT));
    put(fadt::HYPERVISOR_ID, b"ZONITVMM");
    sdt(b"FACP", 6, &body)
}

fn build_madt(vcpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    // No PCAT_COMPAT: with hardware-reduced ACPI Linux does not drive the
    // legacy PICs, every interrupt goes through the IOAPIC.
    body.extend_from_slice(&0u32.to_le_bytes());
    for id in 0..vcpus {
        // Processor local APIC: type 0, length 8, UID, APIC id, enabled.
        body.extend_from_slice(&[0, 8, id, id]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, id, reserved, address, GSI base 0.
    body.extend_from_slice(&[1, 12, 0, 0]);
    body.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Local APIC NMI on LINT1 of every processor (UID 0xff).
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 5, &body)
}

/// The power button and the Generic Event Device whose interrupt
/// ([`GED_GSI`]) presses it: the monitor raises it on a stop request.
pub fn power_button_aml() -> Vec<u8> {
    use aml::*;
    let mut terms = device(
        "PWRB",
        vec![name("_HID", eisa_id("PNP0C0C")), name("_UID", integer(0))],
    );
    terms.extend(device(
        "GED0",
        vec![
            name("_HID", string("ACPI0013")),
            name("_UID", integer(0)),
            name("_CRS", resource_template(vec![edge_interrupt(GED_GSI)])),
            method("_EVT", 1, vec![notify("\\_SB_.PWRB", 0x80)]),
        ],
    ));
    terms
}

fn build_dsdt(config: &AcpiConfig) -> Vec<u8> {
    use aml::*;
    let mut body = scope("\\_SB_", config.devices.clone());
    body.extend(name(
        "_S5_",
        package(vec![
            integer(u64::from(SLP_TYP_S5)),
            integer(0),
            integer(0),
            integer(0),
        ]),
    ));
    // Revision 2: integers are 64 bits wide.
    sdt(b"DSDT", 2, &body)
}

fn build_xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|a| a.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

fn build_rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+ (XSDT)
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    let sum20 = r[..20].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    r[8] = sum20.wrapping_neg();
    fix_checksum(&mut r, 32);
    r
}

/// Builds every table into one blob to be written at [`ACPI_ADDR`]:
/// RSDP, XSDT, FADT, MADT, DSDT, each 16-byte aligned.
pub fn build_tables(config: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    fn align(n: usize) -> usize {
        (n + 15) & !15
    }
    let dsdt = build_dsdt(config);
    let madt = build_madt(config.vcpus);
    // The XSDT length depends only on its entry count, so offsets can be
    // fixed before the FADT, which points at the DSDT.
    let xsdt_off = align(36);
    let fadt_off = align(xsdt_off + 36 + 2 * 8);
    let madt_off = align(fadt_off + fadt::LEN);
    let dsdt_off = align(madt_off + madt.len());
    let end = dsdt_off + dsdt.len();
    let room = ACPI_END - ACPI_ADDR;
    if end as u64 > room {
        return Err(AcpiError::TooLarge { needed: end, room });
    }
    let addr = |off: usize| ACPI_ADDR + off as u64;
    let mut blob = vec![0u8; end];
    let mut place = |off: usize, bytes: &[u8]| blob[off..off + bytes.len()].copy_from_slice(bytes);
    place(0, &build_rsdp(addr(xsdt_off)));
    place(xsdt_off, &build_xsdt(&[addr(fadt_off), addr(madt_off)]));
    place(fadt_off, &build_fadt(addr(dsdt_off)));
    place(madt_off, &madt);
    place(dsdt_off, &dsdt);
    Ok(blob)
}

/// The sleep control, sleep status and reset registers.
#[derive(Debug, Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // No wake events ever: status reads as zero.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Ending> {
        let value = *data.first()?;
        match offset {
            o if o == u64::from(SLEEP_CONTROL_PORT - PM_BASE) => {
                let sleep_type = (value >> 2) & 0x7;
                if value & SLP_EN != 0 && sleep_type == SLP_TYP_S5 {
                    return Some(Ending::new(
                        GuestEnd::Poweroff,
                        "guest powered off (ACPI sleep control, S5)",
                    ));
                }
                if value & SLP_EN != 0 {
                    log::debug!("guest asked for ACPI sleep type {sleep_type}, not supported");
                }
                None
            }
            o if o == u64::from(RESET_PORT - PM_BASE) && value == RESET_VALUE => Some(Ending::new(
                GuestEnd::Reboot,
                "guest reset (ACPI reset register)",
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::alloc::{Allocator, VirtioMmioSlot};
    use super::super::virtio_mmio;
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
    }

    /// Looks a table up through RSDP → XSDT (→ FADT for the DSDT), as a
    /// guest would, and checks its checksum and length on the way.
    fn table<'a>(blob: &'a [u8], sig: &[u8; 4]) -> &'a [u8] {
        let at = |addr: u64| (addr - ACPI_ADDR) as usize;
        let xsdt_addr = u64_at(blob, 24);
        let xsdt = &blob[at(xsdt_addr)..];
        let xsdt = &xsdt[..u32_at(xsdt, 4) as usize];
        let mut addrs: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        if let Some(fadt_addr) = addrs
            .iter()
            .copied()
            .find(|&a| &blob[at(a)..at(a) + 4] == b"FACP")
        {
            addrs.push(u64_at(&blob[at(fadt_addr)..], fadt::X_DSDT));
        }
        let addr = addrs
            .into_iter()
            .find(|&a| &blob[at(a)..at(a) + 4] == sig)
            .unwrap_or_else(|| panic!("no {sig:?} table"));
        let t = &blob[at(addr)..];
        let t = &t[..u32_at(t, 4) as usize];
        assert_eq!(sum(t), 0, "checksum of {sig:?}");
        t
    }

    fn config(vcpus: u8) -> AcpiConfig {
        AcpiConfig {
            vcpus,
            devices: vec![
                power_button_aml(),
                super::super::serial::aml(),
                super::super::i8042::aml(),
                super::super::pvpanic::aml(),
                virtio_mmio::aml(&VirtioMmioSlot {
                    index: 0,
                    base: 0xd000_0000,
                    len: 0x200,
                    gsi: 16,
                }),
            ],
        }
    }

    #[test]
    fn rsdp_checksums_and_points_at_the_xsdt() {
        let blob = build_tables(&config(1)).unwrap_or_default();
        assert_eq!(&blob[..8], b"RSD PTR ");
        assert_eq!(sum(&blob[..20]), 0);
        assert_eq!(sum(&blob[..36]), 0);
        assert_eq!(blob[15], 2);
        assert_eq!(u32_at(&blob, 20), 36);
        let xsdt = &blob[(u64_at(&blob, 24) - ACPI_ADDR) as usize..];
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(u32_at(xsdt, 4), 36 + 16);
        assert_eq!(sum(&xsdt[..36 + 16]), 0);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let blob = build_tables(&config(1)).unwrap_or_default();
        let f = table(&blob, b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6);
        let flags = u32_at(f, fadt::FLAGS);
        assert_ne!(flags & FADT_HW_REDUCED_ACPI, 0);
        assert_ne!(flags & FADT_RESET_REG_SUP, 0);
        assert_eq!(
            &f[fadt::SLEEP_CONTROL_REG..fadt::SLEEP_CONTROL_REG + 4],
            &[1, 8, 0, 1]
        );
        assert_eq!(u64_at(f, fadt::SLEEP_CONTROL_REG + 4), 0x600);
        assert_eq!(u64_at(f, fadt::SLEEP_STATUS_REG + 4), 0x601);
        assert_eq!(u64_at(f, fadt::RESET_REG + 4), 0x602);
        assert_eq!(f[fadt::RESET_VALUE], RESET_VALUE);
        assert_eq!(u64::from(u32_at(f, fadt::DSDT)), u64_at(f, fadt::X_DSDT));
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        let blob = build_tables(&config(3)).unwrap_or_default();
        let m = table(&blob, b"APIC");
        assert_eq!(u32_at(m, 36), LAPIC_ADDR as u32);
        let mut lapics = vec![];
        let mut ioapics = 0;
        let mut off = 44;
        while off < m.len() {
            let (kind, len) = (m[off], m[off + 1] as usize);
            match kind {
                0 => lapics.push((m[off + 3], u32_at(m, off + 4))),
                1 => {
                    ioapics += 1;
                    assert_eq!(u32_at(m, off + 4), IOAPIC_ADDR as u32);
                }
                _ => {}
            }
            off += len;
        }
        assert_eq!(off, m.len());
        assert_eq!(lapics, vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(ioapics, 1);
    }

    #[test]
    fn dsdt_holds_s5_power_button_ged_pvpanic_and_virtio() {
        let blob = build_tables(&config(1)).unwrap_or_default();
        let d = table(&blob, b"DSDT");
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_\x12\x07\x04\x0a\x05"));
        assert!(has(&aml::eisa_id("PNP0C0C")));
        assert!(has(b"ACPI0013"));
        assert!(has(b"_EVT"));
        assert!(has(b"QEMU0001"));
        assert!(has(b"LNRO0005"));
        assert!(has(&aml::memory32_fixed(0xd000_0000, 0x200)));
        assert!(has(&aml::edge_interrupt(16)));
        assert!(has(&aml::edge_interrupt(GED_GSI)));
        assert!(has(b"VR00"));
        assert!(has(&aml::eisa_id("PNP0501")));
        assert!(has(&aml::eisa_id("PNP0303")));
        // The scope's package length covers exactly the devices.
        assert_eq!(d[36], 0x10);
    }

    #[test]
    fn tables_fit_for_many_vcpus_and_devices() {
        let mut alloc = Allocator::new();
        let mut cfg = config(254);
        while let Ok(slot) = alloc.virtio(0x200) {
            cfg.devices.push(virtio_mmio::aml(&slot));
        }
        let blob = build_tables(&cfg).unwrap_or_default();
        assert!(!blob.is_empty());
        table(&blob, b"DSDT");
        table(&blob, b"APIC");
    }

    #[test]
    fn s5_write_powers_off_and_reset_value_reboots() {
        let mut pm = AcpiPm;
        let s5 = (SLP_TYP_S5 << 2) | SLP_EN;
        assert_eq!(s5, 0x34);
        assert_eq!(pm.write(0, &[s5]).map(|e| e.end), Some(GuestEnd::Poweroff));
        // S5 without SLP_EN, or another sleep type, does nothing.
        assert_eq!(pm.write(0, &[SLP_TYP_S5 << 2]), None);
        assert_eq!(pm.write(0, &[(3 << 2) | SLP_EN]), None);
        // Clearing wake status is harmless.
        assert_eq!(pm.write(1, &[0x80]), None);
        assert_eq!(
            pm.write(2, &[RESET_VALUE]).map(|e| e.end),
            Some(GuestEnd::Reboot)
        );
        assert_eq!(pm.write(2, &[0x42]), None);
        let mut data = [0xff];
        pm.read(1, &mut data);
        assert_eq!(data, [0]);
    }
}
