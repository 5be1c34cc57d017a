//! The guest console: a 16550A UART at COM1 (`vm-superio`), whose output is
//! written straight through to a `Write` (the monitor's stdout) and whose
//! interrupt is an eventfd registered as an irqfd on GSI 4.
//!
//! Owns: COM1's eight registers. Invariants: output is never buffered here,
//! so memory stays bounded whatever the guest prints (a slow reader slows
//! the guest down instead); the guest gets no console input yet,
//! so the receive FIFO stays empty; a failing output (closed pipe) is logged
//! once and the bytes are dropped, the guest keeps running.

use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::vmm::Ending;

/// COM1's base port.
pub const COM1_BASE: u16 = 0x3f8;
/// Registers in the port range.
pub const COM1_LEN: u64 = 8;
/// COM1's ISA interrupt (and GSI).
pub const COM1_IRQ: u32 = 4;

/// COM1 in the DSDT (PNP0501 at its ports and ISA IRQ).
pub fn aml() -> Vec<u8> {
    use super::aml::*;
    device(
        "COM1",
        vec![
            name("_HID", eisa_id("PNP0501")),
            name("_UID", integer(0)),
            name(
                "_CRS",
                resource_template(vec![io_port(COM1_BASE, 8), isa_irq(COM1_IRQ as u8)]),
            ),
        ],
    )
}

/// An interrupt line backed by an eventfd (an irqfd in KVM).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A trigger that only counts, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct CountingTrigger(pub std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl Trigger for CountingTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// COM1 on the port-I/O bus.
pub struct SerialDevice<T: Trigger, W: Write> {
    uart: Serial<T, vm_superio::serial::NoEvents, W>,
    output_failed: bool,
}

impl<T: Trigger, W: Write> SerialDevice<T, W> {
    /// A UART raising `trigger` and writing to `out`.
    pub fn new(trigger: T, out: W) -> Self {
        Self {
            uart: Serial::new(trigger, out),
            output_failed: false,
        }
    }

    /// The output sink (tests read back what the guest printed).
    #[cfg(test)]
    pub fn output(&self) -> &W {
        self.uart.writer()
    }
}

impl<T: Trigger + Send, W: Write + Send> BusDevice for SerialDevice<T, W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Ending> {
        let value = *data.first()?;
        if let Err(e) = self.uart.write(offset as u8, value) {
            // Logged once: the guest controls how often this happens.
            if !self.output_failed {
                self.output_failed = true;
                log::warn!("guest console output failed, dropping it from now on: {e:?}");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let mut dev = SerialDevice::new(CountingTrigger::default(), Vec::new());
        for b in b"hi\n" {
            assert_eq!(dev.write(THR, &[*b]), None);
        }
        assert_eq!(dev.output(), b"hi\n");
        let mut lsr = [0];
        dev.read(LSR, &mut lsr);
        // Transmitter empty and holding register empty.
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn thr_empty_interrupt_fires_when_enabled() {
        let mut dev = SerialDevice::new(CountingTrigger::default(), Vec::new());
        dev.write(IER, &[0x02]);
        dev.write(THR, b"x");
        assert!(dev.uart.interrupt_evt().0.load(Ordering::Relaxed) > 0);
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_does_not_stop_the_guest() {
        let mut dev = SerialDevice::new(CountingTrigger::default(), Broken);
        assert_eq!(dev.write(THR, b"a"), None);
        assert_eq!(dev.write(THR, b"b"), None);
        assert!(dev.output_failed);
    }
}
