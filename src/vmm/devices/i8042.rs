//! The PS/2 controller (i8042) with a keyboard behind it: enough for a
//! guest kernel to find a keyboard, for its reset command to end the guest
//! as a *reboot*, and for the monitor to inject Ctrl-Alt-Del on a graceful
//! stop.
//!
//! Owns: ports 0x60 (data) and 0x64 (status/command), IRQ 1. Invariants:
//! the output queue holds at most [`OUT_CAPACITY`] bytes, whatever the guest
//! or the monitor pushes (extra bytes are dropped, as a full controller
//! would); an interrupt is raised each time a byte reaches the head of the
//! queue while keyboard interrupts are enabled in the command byte; no
//! mouse is attached.

use std::collections::VecDeque;

use vm_superio::Trigger;

use super::BusDevice;
use crate::vmm::{Ending, GuestEnd};

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;
/// The bus range from the data port through the command port.
pub const PORT_RANGE: u64 = 5;
/// The keyboard's ISA interrupt (and GSI).
pub const KBD_IRQ: u32 = 1;

/// The keyboard controller in the DSDT (PNP0303 at both ports, ISA IRQ 1).
pub fn aml() -> Vec<u8> {
    use super::aml::*;
    device(
        "KBD_",
        vec![
            name("_HID", eisa_id("PNP0303")),
            name(
                "_CRS",
                resource_template(vec![
                    io_port(DATA_PORT, 1),
                    io_port(COMMAND_PORT, 1),
                    isa_irq(KBD_IRQ as u8),
                ]),
            ),
        ],
    )
}
/// Bound on queued output bytes.
pub const OUT_CAPACITY: usize = 16;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_OBF: u8 = 0x20;

const CB_KBD_INT: u8 = 0x01;
const CB_SYS: u8 = 0x04;
const CB_TRANSLATE: u8 = 0x40;

/// Keyboard acknowledge.
const ACK: u8 = 0xfa;

/// Ctrl, Alt, Del pressed then released, scan code set 1 (what the guest
/// sees when the controller translates, the PC default).
pub const CAD_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
/// The same in scan code set 2 (translation off, e.g. `i8042.direct`).
pub const CAD_SET2: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// What the next byte written to the data port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// A keyboard command.
    Keyboard,
    /// The parameter of a keyboard command (LEDs, typematic, scan set).
    KeyboardParam(u8),
    /// A new command byte (controller command 0x60).
    CommandByte,
    /// The controller output port (0xD1); bit 0 low resets the CPU.
    OutputPort,
    /// A byte to echo as if the keyboard sent it (0xD2).
    KeyboardEcho,
    /// A byte to echo as if the mouse sent it (0xD3).
    AuxEcho,
    /// A byte for the (absent) mouse (0xD4).
    Aux,
}

/// The controller.
pub struct I8042<T: Trigger> {
    irq: T,
    command_byte: u8,
    last_was_command: bool,
    /// (byte, from the aux port).
    out: VecDeque<(u8, bool)>,
    pending: Pending,
}

impl<T: Trigger> I8042<T> {
    /// A controller raising `irq` for keyboard data.
    pub fn new(irq: T) -> Self {
        Self {
            irq,
            command_byte: CB_KBD_INT | CB_SYS | CB_TRANSLATE,
            last_was_command: false,
            out: VecDeque::with_capacity(OUT_CAPACITY),
            pending: Pending::Keyboard,
        }
    }

    fn raise(&self) {
        if self.command_byte & CB_KBD_INT != 0
            && let Err(e) = self.irq.trigger()
        {
            log::warn!("cannot raise the keyboard interrupt: {e:?}");
        }
    }

    fn push(&mut self, byte: u8, aux: bool) {
        if self.out.len() >= OUT_CAPACITY {
            log::debug!("i8042 output full, dropping {byte:#04x}");
            return;
        }
        self.out.push_back((byte, aux));
        // Only a byte arriving at the head is news for the guest; the
        // rest are announced as earlier ones are read.
        if self.out.len() == 1 && !aux {
            self.raise();
        }
    }

    fn push_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b, false);
        }
    }

    /// Presses and releases Ctrl-Alt-Del, in the scan code set the guest
    /// expects given the translation bit it left in the command byte.
    pub fn ctrl_alt_del(&mut self) {
        if self.command_byte & CB_TRANSLATE != 0 {
            self.push_all(CAD_SET1);
        } else {
            self.push_all(CAD_SET2);
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_SYS | STATUS_UNLOCKED;
        if let Some(&(_, aux)) = self.out.front() {
            s |= STATUS_OBF;
            if aux {
                s |= STATUS_AUX_OBF;
            }
        }
        if self.last_was_command {
            s |= STATUS_CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.out.pop_front().map_or(0, |(b, _)| b);
        if matches!(self.out.front(), Some(&(_, false))) {
            self.raise();
        }
        byte
    }

    fn reset(reason: &'static str) -> Option<Ending> {
        Some(Ending::new(GuestEnd::Reboot, reason))
    }

    fn command(&mut self, cmd: u8) -> Option<Ending> {
        self.pending = Pending::Keyboard;
        match cmd {
            0x20 => self.push(self.command_byte, false),
            0x60 => self.pending = Pending::CommandByte,
            0xa7 | 0xa8 | 0xad | 0xae => {} // port enable/disable
            0xa9 => self.push(0xff, false), // aux port test: no mouse
            0xaa => self.push(0x55, false), // controller self-test passed
            0xab => self.push(0x00, false), // keyboard port test passed
            0xc0 => self.push(0x00, false), // input port
            0xd0 => self.push(0x01, false), // output port: reset line high
            0xd1 => self.pending = Pending::OutputPort,
            0xd2 => self.pending = Pending::KeyboardEcho,
            0xd3 => self.pending = Pending::AuxEcho,
            0xd4 => self.pending = Pending::Aux,
            // Pulse output lines; bit 0 low pulses the CPU reset line.
            c if c & 0xf0 == 0xf0 && c & 0x01 == 0 => {
                return Self::reset("guest reset (i8042 reset line)");
            }
            _ => {}
        }
        None
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            0xff => self.push_all(&[ACK, 0xaa]), // reset, self-test passed
            0xf2 => self.push_all(&[ACK, 0xab, 0x83]), // identify: MF2 keyboard
            0xee => self.push(0xee, false),      // echo
            0xed | 0xf0 | 0xf3 => {
                self.push(ACK, false);
                self.pending = Pending::KeyboardParam(cmd);
            }
            _ => self.push(ACK, false),
        }
    }

    fn data(&mut self, value: u8) -> Option<Ending> {
        let pending = std::mem::replace(&mut self.pending, Pending::Keyboard);
        match pending {
            Pending::Keyboard => self.keyboard_command(value),
            Pending::KeyboardParam(0xf0) if value == 0 => self.push_all(&[ACK, 0x02]),
            Pending::KeyboardParam(_) => self.push(ACK, false),
            Pending::CommandByte => self.command_byte = value,
            Pending::OutputPort if value & 0x01 == 0 => {
                return Self::reset("guest reset (i8042 output port)");
            }
            Pending::OutputPort => {}
            Pending::KeyboardEcho => self.push(value, false),
            Pending::AuxEcho => self.push(value, true),
            Pending::Aux => {} // no mouse: nothing answers
        }
        None
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.read_data(),
            4 => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Ending> {
        let value = *data.first()?;
        match offset {
            0 => {
                self.last_was_command = false;
                self.data(value)
            }
            4 => {
                self.last_was_command = true;
                self.command(value)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::serial::CountingTrigger;
    use std::sync::atomic::Ordering;

    fn dev() -> I8042<CountingTrigger> {
        I8042::new(CountingTrigger::default())
    }

    fn irqs(d: &I8042<CountingTrigger>) -> usize {
        d.irq.0.load(Ordering::Relaxed)
    }

    fn drain(d: &mut I8042<CountingTrigger>) -> Vec<u8> {
        let mut got = vec![];
        let mut b = [0];
        loop {
            d.read(4, &mut b);
            if b[0] & STATUS_OBF == 0 {
                return got;
            }
            d.read(0, &mut b);
            got.push(b[0]);
        }
    }

    #[test]
    fn reset_command_ends_the_guest_as_reboot() {
        let mut d = dev();
        assert_eq!(d.write(4, &[0xfe]).map(|e| e.end), Some(GuestEnd::Reboot));
        // Pulsing other lines does not reset.
        assert_eq!(d.write(4, &[0xff]), None);
    }

    #[test]
    fn output_port_write_with_reset_bit_low_reboots() {
        let mut d = dev();
        assert_eq!(d.write(4, &[0xd1]), None);
        assert_eq!(d.write(0, &[0x01]), None);
        assert_eq!(d.write(4, &[0xd1]), None);
        assert_eq!(d.write(0, &[0x00]).map(|e| e.end), Some(GuestEnd::Reboot));
    }

    #[test]
    fn controller_self_test_and_command_byte_round_trip() {
        let mut d = dev();
        d.write(4, &[0xaa]);
        assert_eq!(drain(&mut d), vec![0x55]);
        d.write(4, &[0x60]);
        d.write(0, &[0x07]);
        d.write(4, &[0x20]);
        assert_eq!(drain(&mut d), vec![0x07]);
    }

    #[test]
    fn keyboard_answers_identify_and_reset() {
        let mut d = dev();
        d.write(0, &[0xf2]);
        assert_eq!(drain(&mut d), vec![0xfa, 0xab, 0x83]);
        d.write(0, &[0xff]);
        assert_eq!(drain(&mut d), vec![0xfa, 0xaa]);
        d.write(0, &[0xed]);
        d.write(0, &[0x07]);
        assert_eq!(drain(&mut d), vec![0xfa, 0xfa]);
    }

    #[test]
    fn ctrl_alt_del_follows_the_translation_bit() {
        let mut d = dev();
        d.ctrl_alt_del();
        assert_eq!(drain(&mut d), CAD_SET1.to_vec());
        d.write(4, &[0x60]);
        d.write(0, &[CB_KBD_INT | CB_SYS]);
        d.ctrl_alt_del();
        // Capped at the queue size.
        assert_eq!(drain(&mut d), CAD_SET2.to_vec());
    }

    #[test]
    fn each_byte_reaching_the_head_raises_the_interrupt() {
        let mut d = dev();
        d.ctrl_alt_del();
        assert_eq!(irqs(&d), 1);
        drain(&mut d);
        assert_eq!(irqs(&d), CAD_SET1.len());
        // With keyboard interrupts off, nothing is raised.
        d.write(4, &[0x60]);
        d.write(0, &[CB_SYS | CB_TRANSLATE]);
        d.ctrl_alt_del();
        drain(&mut d);
        assert_eq!(irqs(&d), CAD_SET1.len());
    }

    #[test]
    fn output_queue_is_bounded() {
        let mut d = dev();
        for _ in 0..10 {
            d.ctrl_alt_del();
        }
        assert_eq!(d.out.len(), OUT_CAPACITY);
        assert_eq!(drain(&mut d).len(), OUT_CAPACITY);
    }
}
