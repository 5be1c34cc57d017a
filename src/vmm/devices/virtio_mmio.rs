//! The virtio-mmio transport (virtio 1.2 §4.2, register layout version 2):
//! feature negotiation, device status, queue setup, notifications and the
//! interrupt, for any [`VirtioDevice`] behind it.
//!
//! Owns: one 0x200-byte register window and the device's queues.
//! Invariants: a device only sees its queues once the driver has set
//! DRIVER_OK, and only queues the driver marked ready and that are valid in
//! guest memory; FEATURES_OK sticks only if the driver accepted a subset of
//! what was offered, including VIRTIO_F_VERSION_1 (no legacy interface);
//! writing 0 to the status register resets everything; requests are served
//! synchronously on the notifying vCPU's thread, unless the device's owner
//! registered an ioeventfd for a queue's notify and serves it on a thread
//! of its own (virtio-net's transmit queue).

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vm_superio::Trigger;

use super::alloc::VirtioMmioSlot;
use super::{BusDevice, Syscalls};
use crate::vmm::Ending;

/// Size of the register window of one device.
pub const WINDOW: u64 = 0x200;
/// Feature bit: the device complies with virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5449_4e5a; // "ZNIT"

/// A virtio-mmio device in the DSDT: `VRnn` (LNRO0005) with its window
/// and interrupt line, as the allocator placed it.
pub fn aml(slot: &VirtioMmioSlot) -> Vec<u8> {
    use super::aml::*;
    device(
        &format!("VR{:02X}", slot.index),
        vec![
            name("_HID", string("LNRO0005")),
            name("_UID", integer(u64::from(slot.index))),
            name("_CCA", integer(1)),
            name(
                "_CRS",
                resource_template(vec![
                    memory32_fixed(slot.base as u32, slot.len as u32),
                    edge_interrupt(slot.gsi),
                ]),
            ),
        ],
    )
}

// Registers.
const MAGIC_VALUE: u64 = 0x000;
const VERSION_REG: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// Offset of the queue notify register: the driver writes a queue index.
pub const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// The driver knows how to drive the device.
pub const STATUS_DRIVER: u32 = 2;
/// The driver is ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// The driver gave up.
pub const STATUS_FAILED: u32 = 0x80;

/// InterruptStatus bit: a used buffer was added.
pub const INT_USED_BUFFER: u32 = 1;

/// A device behind the transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (1 = network, 2 = block).
    fn device_type(&self) -> u32;
    /// What serving its queues on the notifying vCPU's thread needs.
    fn syscalls(&self) -> Syscalls;
    /// Offered features.
    fn features(&self) -> u64;
    /// Maximum size of each queue (their count is the slice length).
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Serves queue `index`; returns whether used buffers were added.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
}

/// The transport around a device.
pub struct VirtioMmio<D: VirtioDevice, T: Trigger> {
    device: D,
    irq: T,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
}

fn split(value: u64, high: bool) -> u32 {
    if high {
        (value >> 32) as u32
    } else {
        value as u32
    }
}

impl<D: VirtioDevice, T: Trigger> VirtioMmio<D, T> {
    /// Puts `device` behind a transport raising `irq` and serving buffers in
    /// `mem`.
    pub fn new(device: D, irq: T, mem: GuestMemoryMmap) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        Self {
            device,
            irq,
            mem,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
        }
    }

    /// The device (tests inspect it).
    #[cfg(test)]
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for a device's own worker thread.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        // FEATURES_OK only if the driver took a subset of the offer,
        // including VERSION_1.
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                log::debug!(
                    "virtio driver accepted features {:#x} of {offered:#x}; refusing FEATURES_OK",
                    self.driver_features
                );
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
    }

    /// Serves queue `index` as a guest notify does, and raises the
    /// interrupt if buffers were used; also called by a device's worker
    /// when data arrives from outside (a frame on a tap).
    pub fn notify_queue(&mut self, index: u32) {
        if self.status & STATUS_DRIVER_OK == 0 {
            return;
        }
        let Some(queue) = self.queues.get_mut(index as usize) else {
            return;
        };
        if !queue.ready() || !queue.is_valid(&self.mem) {
            log::debug!("virtio-mmio: notify for queue {index}, which is not ready or not valid");
            return;
        }
        if self.device.process_queue(index as usize, queue, &self.mem) {
            self.interrupt_status |= INT_USED_BUFFER;
            if let Err(e) = self.irq.trigger() {
                log::warn!("cannot raise a virtio interrupt: {e:?}");
            }
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => split(self.device.features(), false),
                1 => split(self.device.features(), true),
                _ => 0,
            },
            QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        // Queue layout can only change before the driver is done.
        let configuring = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM if configuring => {
                if let Some(q) = self.selected() {
                    q.set_size(value as u16);
                }
            }
            QUEUE_READY if configuring => {
                if let Some(q) = self.selected() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH if configuring => {
                let high = offset == QUEUE_DESC_HIGH;
                if let Some(q) = self.selected() {
                    q.set_desc_table_address((!high).then_some(value), high.then_some(value));
                }
            }
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH if configuring => {
                let high = offset == QUEUE_DRIVER_HIGH;
                if let Some(q) = self.selected() {
                    q.set_avail_ring_address((!high).then_some(value), high.then_some(value));
                }
            }
            QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH if configuring => {
                let high = offset == QUEUE_DEVICE_HIGH;
                if let Some(q) = self.selected() {
                    q.set_used_ring_address((!high).then_some(value), high.then_some(value));
                }
            }
            QUEUE_NOTIFY => self.notify_queue(value),
            INTERRUPT_ACK => self.interrupt_status &= !value,
            STATUS => self.set_status(value),
            _ => log::trace!("ignored virtio-mmio write {value:#x} at {offset:#x}"),
        }
    }
}

impl<D: VirtioDevice, T: Trigger + Send> BusDevice for VirtioMmio<D, T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        // Registers are 32 bits wide and accessed as such (§4.2.2.2).
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (dst, src) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0)))
        {
            *dst = *src;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Ending> {
        if offset < CONFIG && data.len() == 4 && offset.is_multiple_of(4) {
            let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_register(offset, value);
        }
        // Block devices have no writable configuration.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::serial::CountingTrigger;
    use std::sync::atomic::Ordering;
    use vm_memory::GuestAddress;

    /// Counts notifications; adds a used buffer each time.
    struct Fake {
        notified: usize,
    }

    impl VirtioDevice for Fake {
        fn syscalls(&self) -> Syscalls {
            Syscalls {
                device: "fake",
                list: &[],
            }
        }
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1 << 5
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 0x10);
        }
        fn process_queue(&mut self, _: usize, _: &mut Queue, _: &GuestMemoryMmap) -> bool {
            self.notified += 1;
            true
        }
    }

    fn dev() -> VirtioMmio<Fake, CountingTrigger> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        VirtioMmio::new(Fake { notified: 0 }, CountingTrigger::default(), mem)
    }

    fn rd(d: &mut VirtioMmio<Fake, CountingTrigger>, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(d: &mut VirtioMmio<Fake, CountingTrigger>, offset: u64, value: u32) {
        d.write(offset, &value.to_le_bytes());
    }

    fn bring_up(d: &mut VirtioMmio<Fake, CountingTrigger>, features_hi: u32) {
        wr(d, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(d, DRIVER_FEATURES_SEL, 1);
        wr(d, DRIVER_FEATURES, features_hi);
        wr(
            d,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    #[test]
    fn identification_registers() {
        let mut d = dev();
        assert_eq!(rd(&mut d, MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut d, VERSION_REG), 2);
        assert_eq!(rd(&mut d, DEVICE_ID), 42);
        assert_eq!(rd(&mut d, DEVICE_FEATURES), 1 << 5);
        wr(&mut d, DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut d, DEVICE_FEATURES), 1);
        assert_eq!(rd(&mut d, QUEUE_NUM_MAX), 16);
        let mut cfg = [0u8; 2];
        d.read(CONFIG + 3, &mut cfg);
        assert_eq!(cfg, [0x13, 0x13]);
    }

    #[test]
    fn features_ok_needs_version_1_and_a_subset() {
        let mut d = dev();
        bring_up(&mut d, 0);
        assert_eq!(rd(&mut d, STATUS) & STATUS_FEATURES_OK, 0);
        wr(&mut d, STATUS, 0);
        bring_up(&mut d, 1 | 2);
        assert_eq!(rd(&mut d, STATUS) & STATUS_FEATURES_OK, 0);
        wr(&mut d, STATUS, 0);
        bring_up(&mut d, 1);
        assert_ne!(rd(&mut d, STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn notify_reaches_a_ready_valid_queue_only_after_driver_ok() {
        let mut d = dev();
        bring_up(&mut d, 1);
        wr(&mut d, QUEUE_SEL, 0);
        wr(&mut d, QUEUE_NUM, 16);
        wr(&mut d, QUEUE_DESC_LOW, 0x1000);
        wr(&mut d, QUEUE_DRIVER_LOW, 0x2000);
        wr(&mut d, QUEUE_DEVICE_LOW, 0x3000);
        wr(&mut d, QUEUE_READY, 1);
        wr(&mut d, QUEUE_NOTIFY, 0);
        assert_eq!(d.device().notified, 0, "before DRIVER_OK");
        wr(&mut d, STATUS, 0xf);
        wr(&mut d, QUEUE_NOTIFY, 0);
        wr(&mut d, QUEUE_NOTIFY, 5); // no such queue
        assert_eq!(d.device().notified, 1);
        assert_eq!(rd(&mut d, INTERRUPT_STATUS), INT_USED_BUFFER);
        assert_eq!(d.irq.0.load(Ordering::Relaxed), 1);
        wr(&mut d, INTERRUPT_ACK, INT_USED_BUFFER);
        assert_eq!(rd(&mut d, INTERRUPT_STATUS), 0);
        // Reset forgets everything.
        wr(&mut d, STATUS, 0);
        assert_eq!(rd(&mut d, STATUS), 0);
        assert_eq!(rd(&mut d, QUEUE_READY), 0);
    }
}
