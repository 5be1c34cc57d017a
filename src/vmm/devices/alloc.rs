//! The device allocator: where each virtio device's register window sits
//! in the MMIO gap and which interrupt line it raises, handed out in one
//! place, in the order devices are added.
//!
//! Owns: the virtio-mmio address range and the GSIs set aside for virtio
//! devices. Invariants: windows never overlap and stay inside the range;
//! each line goes to one device; running out is an error, never a reuse.
//! Pure.

use crate::vmm::layout;
use crate::vmm::limits::MAX_VIRTIO_DEVICES;

/// First GSI for virtio devices: the IOAPIC pins above the ISA range, so
/// they never collide with legacy devices.
pub const FIRST_VIRTIO_GSI: u32 = 16;

/// Where one virtio-mmio device lives, as the allocator handed it out and
/// the DSDT announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Order of the device among virtio devices (its ACPI `_UID`).
    pub index: u32,
    /// Base of its register window.
    pub base: u64,
    /// Window size.
    pub len: u64,
    /// Its GSI.
    pub gsi: u32,
}

/// The allocator has nothing left to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no room for another virtio device: a guest has at most {MAX_VIRTIO_DEVICES}")]
pub struct Exhausted;

/// Hands out virtio-mmio windows and interrupt lines.
#[derive(Debug, Default)]
pub struct Allocator {
    given: u32,
}

impl Allocator {
    /// An allocator with everything free.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next device's window of `len` bytes (at most one stride) and
    /// interrupt line.
    pub fn virtio(&mut self, len: u64) -> Result<VirtioMmioSlot, Exhausted> {
        if self.given as usize >= MAX_VIRTIO_DEVICES || len > layout::VIRTIO_MMIO_STRIDE {
            return Err(Exhausted);
        }
        let index = self.given;
        self.given += 1;
        Ok(VirtioMmioSlot {
            index,
            base: layout::VIRTIO_MMIO_BASE + u64::from(index) * layout::VIRTIO_MMIO_STRIDE,
            len,
            gsi: FIRST_VIRTIO_GSI + index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_lines_are_handed_out_in_order_without_overlap() {
        let mut a = Allocator::new();
        let slots: Vec<_> = (0..MAX_VIRTIO_DEVICES)
            .map(|_| a.virtio(0x200).unwrap())
            .collect();
        assert_eq!(
            slots[0],
            VirtioMmioSlot {
                index: 0,
                base: 0xd000_0000,
                len: 0x200,
                gsi: 16
            }
        );
        assert_eq!(slots[7].base, 0xd000_7000);
        assert_eq!(slots[7].gsi, 23);
        for pair in slots.windows(2) {
            assert!(pair[0].base + pair[0].len <= pair[1].base);
            assert_eq!(pair[1].gsi, pair[0].gsi + 1);
        }
        // The last window ends well below the IOAPIC.
        assert!(slots[7].base + slots[7].len < layout::IOAPIC_ADDR);
    }

    #[test]
    fn running_out_is_an_error() {
        let mut a = Allocator::new();
        for _ in 0..MAX_VIRTIO_DEVICES {
            a.virtio(0x200).unwrap();
        }
        assert_eq!(a.virtio(0x200), Err(Exhausted));
        // A window larger than the stride would overlap its neighbour.
        assert_eq!(Allocator::new().virtio(0x2000), Err(Exhausted));
    }
}
