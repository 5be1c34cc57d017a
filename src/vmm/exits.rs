//! What each vCPU exit means: route port and MMIO accesses to the buses,
//! turn triple faults, system events and KVM failures into the guest's end,
//! and record the first end only.
//!
//! Owns: [`handle_exit`] (pure apart from the devices it calls, so tests feed
//! it made-up exits) and [`EndLatch`]. Invariants: the first end reported
//! wins, later ones (Linux may follow an ACPI reset with an i8042 reset) are
//! dropped; an access no device claims reads as all ones and is otherwise
//! ignored, as on a PC bus; an exit the monitor does not understand ends
//! the guest as a crash rather than being retried forever.

use std::sync::Mutex;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;
use std::io::{PipeWriter, Write};

use super::devices::{Bus, lock};
use super::{Ending, GuestEnd};

/// The buses a vCPU's exits are routed to.
#[derive(Default)]
pub struct ExitContext {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// What the vCPU loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// The guest is over.
    End(Ending),
}

fn from_write(result: Option<Option<Ending>>) -> ExitAction {
    match result.flatten() {
        Some(ending) => ExitAction::End(ending),
        None => ExitAction::Continue,
    }
}

/// Handles one exit.
pub fn handle_exit(ctx: &ExitContext, exit: VcpuExit<'_>) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
                log::trace!("read from unclaimed port {port:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => from_write(ctx.pio.write(u64::from(port), data)),
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
                log::trace!("read from unclaimed MMIO address {addr:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => from_write(ctx.mmio.write(addr, data)),
        VcpuExit::Shutdown => ExitAction::End(Ending::new(
            GuestEnd::Crash,
            "guest triple-faulted (KVM_EXIT_SHUTDOWN)",
        )),
        VcpuExit::SystemEvent(kind, _) => ExitAction::End(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => {
                Ending::new(GuestEnd::Poweroff, "guest shut down (KVM system event)")
            }
            KVM_SYSTEM_EVENT_RESET => {
                Ending::new(GuestEnd::Reboot, "guest reset (KVM system event)")
            }
            KVM_SYSTEM_EVENT_CRASH => {
                Ending::new(GuestEnd::Crash, "guest crashed (KVM system event)")
            }
            other => Ending::new(GuestEnd::Crash, format!("unknown KVM system event {other}")),
        }),
        VcpuExit::FailEntry(reason, cpu) => ExitAction::End(Ending::new(
            GuestEnd::Crash,
            format!("KVM could not enter the guest (hardware reason {reason:#x}, host CPU {cpu})"),
        )),
        VcpuExit::InternalError => ExitAction::End(Ending::new(
            GuestEnd::Crash,
            "KVM internal error (often an instruction KVM cannot emulate)",
        )),
        // Interrupted by a signal: nothing to do.
        VcpuExit::Intr => ExitAction::Continue,
        // With the in-kernel LAPIC a HLT never leaves KVM; if one does, the
        // vCPU would spin re-entering, so it is an error.
        other => ExitAction::End(Ending::new(
            GuestEnd::Crash,
            format!("unhandled vCPU exit {other:?}"),
        )),
    }
}

/// Records the guest's end once and wakes the main thread.
pub struct EndLatch {
    slot: Mutex<Option<Ending>>,
    wake: PipeWriter,
}

impl EndLatch {
    /// A latch that writes a byte to `wake` on the first end; the main
    /// thread polls the other end of that pipe.
    pub fn new(wake: PipeWriter) -> Self {
        Self {
            slot: Mutex::new(None),
            wake,
        }
    }

    /// Records `ending` if it is the first; returns whether it was.
    pub fn end(&self, ending: Ending) -> bool {
        let mut slot = lock(&self.slot);
        if let Some(first) = slot.as_ref() {
            log::debug!(
                "ignoring later end ({}) after {}",
                ending.reason,
                first.reason
            );
            return false;
        }
        *slot = Some(ending);
        drop(slot);
        if let Err(e) = (&self.wake).write_all(&[1]) {
            log::error!("cannot wake the main thread: {e}");
        }
        true
    }

    /// The recorded end, if any.
    pub fn get(&self) -> Option<Ending> {
        lock(&self.slot).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::acpi::{
        AcpiPm, PM_BASE, PM_LEN, RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLP_EN, SLP_TYP_S5,
    };
    use crate::vmm::devices::i8042::{self, I8042};
    use crate::vmm::devices::pvpanic::{self, PvPanic};
    use crate::vmm::devices::serial::{COM1_BASE, COM1_LEN, CountingTrigger, SerialDevice};
    use crate::vmm::layout::VIRTIO_MMIO_BASE;
    use std::sync::{Arc, Mutex};

    type Console = Arc<Mutex<SerialDevice<CountingTrigger, Vec<u8>>>>;

    /// A port no device claims (the POST diagnostic port).
    const UNCLAIMED_PORT: u16 = 0x80;
    /// The i8042 command that pulses the CPU reset line.
    const I8042_PULSE_RESET: u8 = 0xfe;

    fn ctx() -> (ExitContext, Console) {
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            CountingTrigger::default(),
            Vec::new(),
        )));
        let mut ctx = ExitContext::default();
        ctx.pio
            .insert(u64::from(COM1_BASE), COM1_LEN, serial.clone())
            .unwrap();
        ctx.pio
            .insert(
                u64::from(i8042::DATA_PORT),
                i8042::PORT_RANGE,
                Arc::new(Mutex::new(I8042::new(CountingTrigger::default()))),
            )
            .unwrap();
        ctx.pio
            .insert(u64::from(PM_BASE), PM_LEN, Arc::new(Mutex::new(AcpiPm)))
            .unwrap();
        ctx.pio
            .insert(
                u64::from(pvpanic::PORT),
                1,
                Arc::new(Mutex::new(PvPanic::default())),
            )
            .unwrap();
        (ctx, serial)
    }

    fn end_of(action: ExitAction) -> Option<GuestEnd> {
        match action {
            ExitAction::End(e) => Some(e.end),
            ExitAction::Continue => None,
        }
    }

    #[test]
    fn port_writes_reach_the_console() {
        let (ctx, serial) = ctx();
        for b in b"ok" {
            assert_eq!(
                handle_exit(&ctx, VcpuExit::IoOut(COM1_BASE, &[*b])),
                ExitAction::Continue
            );
        }
        assert_eq!(lock(&serial).output(), b"ok");
    }

    #[test]
    fn unclaimed_reads_return_all_ones() {
        let (ctx, _) = ctx();
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(&ctx, VcpuExit::IoIn(UNCLAIMED_PORT, &mut data)),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff, 0xff]);
        let mut data = [0u8; 4];
        handle_exit(&ctx, VcpuExit::MmioRead(VIRTIO_MMIO_BASE, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert_eq!(
            handle_exit(&ctx, VcpuExit::MmioWrite(VIRTIO_MMIO_BASE, &[1])),
            ExitAction::Continue
        );
    }

    #[test]
    fn each_guest_end_maps_to_its_kind() {
        let (ctx, _) = ctx();
        assert_eq!(
            end_of(handle_exit(
                &ctx,
                VcpuExit::IoOut(i8042::COMMAND_PORT, &[I8042_PULSE_RESET])
            )),
            Some(GuestEnd::Reboot)
        );
        assert_eq!(
            end_of(handle_exit(
                &ctx,
                VcpuExit::IoOut(SLEEP_CONTROL_PORT, &[(SLP_TYP_S5 << 2) | SLP_EN])
            )),
            Some(GuestEnd::Poweroff)
        );
        assert_eq!(
            end_of(handle_exit(
                &ctx,
                VcpuExit::IoOut(RESET_PORT, &[RESET_VALUE])
            )),
            Some(GuestEnd::Reboot)
        );
        assert_eq!(
            end_of(handle_exit(
                &ctx,
                VcpuExit::IoOut(pvpanic::PORT, &[pvpanic::PANICKED])
            )),
            Some(GuestEnd::Crash)
        );
        assert_eq!(
            end_of(handle_exit(&ctx, VcpuExit::Shutdown)),
            Some(GuestEnd::Crash)
        );
        assert_eq!(
            end_of(handle_exit(&ctx, VcpuExit::InternalError)),
            Some(GuestEnd::Crash)
        );
        assert_eq!(
            end_of(handle_exit(&ctx, VcpuExit::FailEntry(0x80000021, 1))),
            Some(GuestEnd::Crash)
        );
        assert_eq!(
            end_of(handle_exit(&ctx, VcpuExit::Hlt)),
            Some(GuestEnd::Crash)
        );
        assert_eq!(end_of(handle_exit(&ctx, VcpuExit::Intr)), None);
        assert_eq!(
            end_of(handle_exit(
                &ctx,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])
            )),
            Some(GuestEnd::Reboot)
        );
        assert_eq!(
            end_of(handle_exit(
                &ctx,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])
            )),
            Some(GuestEnd::Poweroff)
        );
        assert_eq!(
            end_of(handle_exit(
                &ctx,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[])
            )),
            Some(GuestEnd::Crash)
        );
    }

    #[test]
    fn first_end_wins() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let latch = EndLatch::new(writer);
        assert!(latch.end(Ending::new(GuestEnd::Reboot, "acpi reset")));
        assert!(!latch.end(Ending::new(GuestEnd::Reboot, "i8042 reset")));
        assert!(!latch.end(Ending::new(GuestEnd::Crash, "late crash")));
        assert_eq!(
            latch.get().map(|e| e.reason),
            Some("acpi reset".to_string())
        );
        drop(latch);
        let mut woken = vec![];
        std::io::Read::read_to_end(&mut reader, &mut woken).unwrap();
        assert_eq!(woken, vec![1]);
    }
}
