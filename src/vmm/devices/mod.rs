//! The guest's emulated devices and the two buses (port I/O and MMIO) that
//! route vCPU exits to them.
//!
//! Owns: the [`BusDevice`] trait, the [`Bus`] address map, and one module
//! per device. Invariants: ranges on a bus never overlap; a device never
//! ends the guest itself, it returns an [`Ending`] from `write` and the
//! exit handler decides; devices are generic over their side effects (an
//! interrupt trigger, an output `Write`) so tests drive them with fakes.

pub mod acpi;
pub mod alloc;
pub mod aml;
pub mod block;
pub mod i8042;
pub mod net;
pub mod pvpanic;
pub mod serial;
pub mod virtio_mmio;

use std::sync::{Arc, Mutex, MutexGuard};

use super::Ending;

/// A device on a bus. Offsets are relative to the start of its range.
pub trait BusDevice: Send {
    /// A guest read; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write; return an [`Ending`] if it ends the guest.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Ending>;
}

/// The syscalls a device makes on the thread that serves it, beyond what
/// every monitor thread may do, named for the device: the seccomp filters
/// are built from these, so a thread may make a device's syscalls only
/// when that device is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscalls {
    /// The device, for the filter's log line and errors.
    pub device: &'static str,
    /// Syscall numbers.
    pub list: &'static [libc::c_long],
}

/// A device shared between vCPU threads (and the main thread, which
/// injects stop requests).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Locks a mutex, ignoring poisoning: devices keep consistent state between
/// register accesses, and a poisoned lock only means another thread of the
/// monitor panicked, which has already ended the guest as a crash
/// (`EndLatch::spawn_thread`): the monitor is about to exit.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A new range overlaps one already on the bus.
    #[error("device range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// A zero-length or wrapping range.
    #[error("device range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// An address map from ranges to devices, sorted by base address.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::BadRange { base, len }),
        };
        let pos = self.entries.partition_point(|e| e.base < base);
        let overlaps_prev =
            pos > 0 && self.entries[pos - 1].base + self.entries[pos - 1].len > base;
        let overlaps_next = pos < self.entries.len() && self.entries[pos].base < end;
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        let pos = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(pos.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset < entry.len).then_some((entry, offset))
    }

    /// Routes a read; `false` if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; `None` if no device claims `addr`, otherwise what
    /// the device returned.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<Option<Ending>> {
        let (entry, offset) = self.find(addr)?;
        Some(lock(&entry.device).write(offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::GuestEnd;

    /// Records the last access; a write of 0xEE ends the guest.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<Ending> {
            self.last = Some((offset, data.to_vec()));
            (data == [0xee]).then(|| Ending::new(GuestEnd::Poweroff, "probe"))
        }
    }

    #[test]
    fn accesses_reach_the_device_with_relative_offsets() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new();
        assert!(bus.insert(0x3f8, 8, probe.clone()).is_ok());
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fb, &mut data));
        assert_eq!(data, [3]);
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.read(0x3f7, &mut data));
        assert_eq!(bus.write(0x3f9, &[7]), Some(None));
        assert_eq!(lock(&probe).last, Some((1, vec![7])));
        assert_eq!(
            bus.write(0x3f8, &[0xee]).flatten().map(|e| e.end),
            Some(GuestEnd::Poweroff)
        );
        assert_eq!(bus.write(0x10, &[0]), None);
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Probe::default())) };
        assert!(bus.insert(0x60, 5, dev()).is_ok());
        assert!(bus.insert(0x600, 3, dev()).is_ok());
        assert_eq!(
            bus.insert(0x64, 1, dev()),
            Err(BusError::Overlap { base: 0x64, len: 1 })
        );
        assert_eq!(
            bus.insert(0x5f0, 0x11, dev()),
            Err(BusError::Overlap {
                base: 0x5f0,
                len: 0x11
            })
        );
        assert!(bus.insert(0x5f0, 0x10, dev()).is_ok());
        assert_eq!(
            bus.insert(0x10, 0, dev()),
            Err(BusError::BadRange { base: 0x10, len: 0 })
        );
        assert!(bus.insert(u64::MAX, 2, dev()).is_err());
    }
}
