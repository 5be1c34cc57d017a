//! The pvpanic device (QEMU's ISA variant, one I/O port): a guest kernel
//! that panics writes here, so a panic ends the monitor as a *crash*
//! instead of looking like a reboot or a hang.
//!
//! Owns: port [`PORT`]. Invariants: reads advertise exactly the events
//! that writes understand; only `PANICKED` ends the guest.

use super::BusDevice;
use crate::vmm::{Ending, GuestEnd};

/// The port QEMU and the DSDT's `QEMU0001` device use.
pub const PORT: u16 = 0x505;
/// The guest kernel panicked.
pub const PANICKED: u8 = 1 << 0;
/// A crash kernel is about to run (kdump); the guest goes on.
pub const CRASH_LOADED: u8 = 1 << 1;

/// The device in the DSDT under QEMU's ISA pvpanic id: Linux's
/// pvpanic-mmio driver binds to it and accepts an I/O port resource.
pub fn aml() -> Vec<u8> {
    use super::aml::*;
    device(
        "PEVT",
        vec![
            name("_HID", string("QEMU0001")),
            name("_CRS", resource_template(vec![io_port(PORT, 1)])),
            name("_STA", integer(0x0f)),
        ],
    )
}

/// The pvpanic port.
#[derive(Debug, Default)]
pub struct PvPanic {
    /// CRASH_LOADED was logged already: the guest decides how often it
    /// writes, the log says it once.
    crash_loaded_logged: bool,
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = PANICKED | CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<Ending> {
        let value = *data.first()?;
        if value & PANICKED != 0 {
            return Some(Ending::new(
                GuestEnd::Crash,
                "guest kernel panicked (pvpanic)",
            ));
        }
        if value & CRASH_LOADED != 0 && !self.crash_loaded_logged {
            self.crash_loaded_logged = true;
            log::warn!("guest kernel crashed and is starting its crash kernel (pvpanic)");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panicked_bit_is_a_crash_and_crash_loaded_is_not() {
        let mut dev = PvPanic::default();
        let mut caps = [0];
        dev.read(0, &mut caps);
        assert_eq!(caps, [3]);
        assert_eq!(
            dev.write(0, &[PANICKED]).map(|e| e.end),
            Some(GuestEnd::Crash)
        );
        assert_eq!(dev.write(0, &[CRASH_LOADED]), None);
        assert_eq!(dev.write(0, &[0]), None);
    }
}
