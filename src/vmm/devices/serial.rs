//! The guest console: a 16550A UART at COM1 (`vm-superio`), whose output is
//! written straight through to a `Write` (the monitor's stdout) and whose
//! interrupt is an eventfd registered as an irqfd on GSI 4.
//!
//! Console input (the monitor's stdin, a pipe from the agent) goes into
//! the UART's receive FIFO through [`ConsoleInput`], in the main thread.
//!
//! Owns: COM1's eight registers. Invariants: output is never buffered here,
//! so memory stays bounded whatever the guest prints (a slow reader slows
//! the guest down instead); input is read only as far as the receive FIFO
//! (64 bytes) has room, so a guest that never reads its UART makes the
//! monitor buffer nothing: the bytes wait in the pipe, and the writer
//! finds it full. A failing output (closed pipe) is logged once and the
//! bytes are dropped, the guest keeps running.

use std::fs::File;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::poll::{PollFd, PollFlags};

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
    /// Signalled (one byte) when the guest reads the data register while
    /// the input side waits for room in the receive FIFO.
    room: Option<PipeWriter>,
    waiting_for_room: bool,
}

/// The data register (receive buffer when read).
const DATA: u64 = 0;

impl<T: Trigger, W: Write> SerialDevice<T, W> {
    /// A UART raising `trigger` and writing to `out`.
    pub fn new(trigger: T, out: W) -> Self {
        Self {
            uart: Serial::new(trigger, out),
            output_failed: false,
            room: None,
            waiting_for_room: false,
        }
    }

    /// Bytes the receive FIFO takes now. When it takes none, the next
    /// read of the data register by the guest signals the room pipe.
    pub fn input_room(&mut self) -> usize {
        let room = self.uart.fifo_capacity();
        self.waiting_for_room = room == 0;
        room
    }

    /// Puts `bytes` in the receive FIFO (raising the receive interrupt
    /// when the guest enabled it); returns how many it took.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
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
        if offset == DATA && self.waiting_for_room && self.uart.fifo_capacity() > 0 {
            self.waiting_for_room = false;
            if let Some(room) = &mut self.room {
                let _ = room.write(&[1]);
            }
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

/// COM1 as the monitor builds it: interrupts by irqfd, output to stdout.
pub type Console = SerialDevice<EventFdTrigger, File>;

/// The console's input side, run by the monitor's main thread: bytes from
/// `source` go into COM1's receive FIFO, never more than it has room for.
/// While the FIFO is full the thread waits on the room pipe instead of
/// `source`, so nothing is held here.
pub struct ConsoleInput {
    source: File,
    /// The source reached end of file (no input was given, or the agent
    /// closed it) or failed. It stays open: the main thread's seccomp
    /// filter has no `close`.
    ended: bool,
    room: PipeReader,
    uart: Arc<Mutex<Console>>,
    full: bool,
}

impl ConsoleInput {
    /// Feeds `uart` from `source`.
    pub fn new(source: File, uart: Arc<Mutex<Console>>) -> io::Result<Self> {
        let (room, signal) = std::io::pipe()?;
        crate::sys::fd::set_nonblocking(room.as_fd())?;
        crate::sys::fd::set_nonblocking(signal.as_fd())?;
        uart.lock()
            .map_err(|_| io::Error::other("console lock poisoned"))?
            .room = Some(signal);
        Ok(Self {
            source,
            ended: false,
            room,
            uart,
            full: false,
        })
    }

    /// What the main thread polls for this: the room pipe while the
    /// FIFO is full, the source otherwise, nothing once the source ended.
    pub fn poll_fd(&self) -> PollFd<'_> {
        if self.ended {
            PollFd::new(self.room.as_fd(), PollFlags::empty())
        } else if self.full {
            PollFd::new(self.room.as_fd(), PollFlags::POLLIN)
        } else {
            PollFd::new(self.source.as_fd(), PollFlags::POLLIN)
        }
    }

    /// The polled fd is ready: move what fits from the source to the FIFO,
    /// or take note that the guest made room.
    pub fn on_ready(&mut self) {
        if self.full {
            let _ = self.room.read(&mut [0u8; 64]);
            self.full = false;
            return;
        }
        if self.ended {
            return;
        }
        let Ok(mut uart) = self.uart.lock() else {
            return;
        };
        let room = uart.input_room();
        if room == 0 {
            self.full = true;
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match self.source.read(&mut buf[..want]) {
            Ok(0) => self.ended = true,
            Ok(n) => {
                uart.enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("guest console input failed, ignoring it from now on: {e}");
                self.ended = true;
            }
        }
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
    fn input_fills_the_receive_fifo_only_as_far_as_it_has_room() {
        let mut dev = SerialDevice::new(CountingTrigger::default(), Vec::new());
        let (mut room, signal) = std::io::pipe().unwrap();
        crate::sys::fd::set_nonblocking(room.as_fd()).unwrap();
        dev.room = Some(signal);
        let mut signalled = || room.read(&mut [0u8; 8]).unwrap_or(0);
        assert_eq!(dev.input_room(), 64);
        assert_eq!(dev.enqueue_input(&[b'x'; 100]), 64, "a FIFO of 64 bytes");
        assert_eq!(dev.input_room(), 0);
        assert_eq!(dev.enqueue_input(b"y"), 0, "a full FIFO takes nothing");
        assert_eq!(signalled(), 0, "no room signalled yet");
        let mut byte = [0];
        dev.read(DATA, &mut byte);
        assert_eq!(byte[0], b'x');
        assert_eq!(signalled(), 1, "the guest's read made room");
        dev.read(DATA, &mut byte);
        assert_eq!(signalled(), 0, "signalled once per wait");
        assert_eq!(dev.input_room(), 2);
    }

    #[test]
    fn received_bytes_raise_the_receive_interrupt_when_enabled() {
        let mut dev = SerialDevice::new(CountingTrigger::default(), Vec::new());
        dev.write(IER, &[0x01]);
        let before = dev.uart.interrupt_evt().0.load(Ordering::Relaxed);
        dev.enqueue_input(b"a");
        assert!(dev.uart.interrupt_evt().0.load(Ordering::Relaxed) > before);
        let mut lsr = [0];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x01, 0x01, "data ready");
    }

    #[test]
    fn a_closed_output_does_not_stop_the_guest() {
        let mut dev = SerialDevice::new(CountingTrigger::default(), Broken);
        assert_eq!(dev.write(THR, b"a"), None);
        assert_eq!(dev.write(THR, b"b"), None);
        assert!(dev.output_failed);
    }
}
