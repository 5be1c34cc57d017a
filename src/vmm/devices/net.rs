//! virtio-net (virtio 1.2 §5.1) over a tap the agent opened: one receive
//! and one transmit queue, `VIRTIO_F_VERSION_1` and `VIRTIO_NET_F_MAC`,
//! no offloads, no control queue, no mergeable receive buffers.
//!
//! Owns: the tap fd, the MAC in configuration space, one frame read from
//! the tap that waits for a guest buffer, and the receive worker's wake-up.
//! Invariants: every frame crosses as a 12-byte `virtio_net_hdr_v1` plus
//! the Ethernet frame, in both directions, exactly as the tap (set to a
//! 12-byte vnet header by the agent) reads and writes it; on receive the
//! device writes `num_buffers = 1` itself (the tap leaves those two bytes
//! alone); one tap read or write is one frame, and a frame that does not
//! fit or cannot be written is dropped, as a NIC would.
//!
//! Both directions run on the device's own worker thread ([`NetWorker`]).
//! Transmit: the guest's notify of the transmit queue is an ioeventfd the
//! monitor registers with KVM, so the guest's write completes in the
//! kernel and the worker sends the frames (one `write` per frame) while the
//! vCPU runs on; without it (the unit tests), a notify exit transmits on
//! the vCPU's thread. Receive: the worker polls the tap while the guest has
//! buffers posted; when a frame finds none it stops reading (the tap's own
//! queue holds what follows) until the guest's notify on the receive queue
//! wakes it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::{PipeReader, PipeWriter};
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vm_superio::Trigger;

use super::virtio_mmio::{VIRTIO_F_VERSION_1, VirtioDevice, VirtioMmio};
use super::{Syscalls, lock};

/// virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Feature bit: the device has a MAC address in its configuration space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// `virtio_net_hdr_v1`: the header before every frame.
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;
/// Largest frame with its header: an Ethernet frame of 64 KiB at most.
pub const MAX_FRAME: usize = HDR_LEN + 65536;
/// Frames the worker moves per lock of the device, so a flood cannot keep
/// the vCPUs off the device's registers.
const RX_BATCH: usize = 64;

/// What the device's worker thread may do beyond every monitor thread:
/// wait for the tap, its wake-up and the transmit notify, and read them
/// (writing the tap is allowed to every thread).
pub const WORKER_SYSCALLS: Syscalls = Syscalls {
    device: "virtio-net",
    list: &[libc::SYS_read, libc::SYS_poll, libc::SYS_ppoll],
};

/// A network card.
pub struct Net {
    tap: File,
    mac: [u8; 6],
    /// Wakes the receive worker (a byte on a non-blocking pipe).
    kick: PipeWriter,
    /// The worker stopped reading the tap and waits for a kick.
    worker_stalled: bool,
    /// A frame (header and all) read from the tap, `rx[..len]`, waiting
    /// for a guest buffer.
    rx: Vec<u8>,
    rx_len: Option<usize>,
    tx: Vec<u8>,
}

/// The device's thread: waits on the tap, on the kick and on the
/// transmit queue's notify.
pub struct NetWorker {
    tap: File,
    kick: PipeReader,
    /// Signalled by KVM when the guest notifies the transmit queue.
    tx_notify: Option<File>,
    stalled: bool,
}

fn nonblocking(file: &File) -> io::Result<()> {
    crate::sys::fd::set_nonblocking(file.as_fd())
}

impl Net {
    /// A card on `tap` (a tap fd with a 12-byte vnet header, or anything
    /// that reads and writes one such frame per call) with address `mac`,
    /// and its worker. Made non-blocking.
    pub fn new(tap: File, mac: [u8; 6]) -> io::Result<(Self, NetWorker)> {
        nonblocking(&tap)?;
        let (kick_rx, kick) = std::io::pipe()?;
        crate::sys::fd::set_nonblocking(kick_rx.as_fd())?;
        crate::sys::fd::set_nonblocking(kick.as_fd())?;
        let worker = NetWorker {
            tap: tap.try_clone()?,
            kick: kick_rx,
            tx_notify: None,
            stalled: false,
        };
        let net = Self {
            tap,
            mac,
            kick,
            worker_stalled: false,
            rx: vec![0; MAX_FRAME],
            rx_len: None,
            tx: vec![0; MAX_FRAME],
        };
        Ok((net, worker))
    }

    /// Worker side: reads the next frame from the tap unless one is
    /// already waiting. `Ok(false)` when the tap has nothing.
    fn read_tap(&mut self) -> io::Result<bool> {
        if self.rx_len.is_some() {
            return Ok(true);
        }
        match self.tap.read(&mut self.rx) {
            Ok(n) if n >= HDR_LEN => {
                self.rx_len = Some(n);
                Ok(true)
            }
            Ok(n) => {
                log::debug!("virtio-net: dropping a {n}-byte read from the tap");
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Puts the waiting frame into the guest's next receive buffer.
    /// Returns whether a buffer was used.
    fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let Some(len) = self.rx_len else {
            return false;
        };
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return false;
        };
        self.rx_len = None;
        let head = chain.head_index();
        self.rx[NUM_BUFFERS..HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        let written = match Writer::new(mem, chain) {
            Ok(mut w) if w.available_bytes() >= len => match w.write_all(&self.rx[..len]) {
                Ok(()) => len,
                Err(e) => {
                    log::debug!("virtio-net: cannot fill a receive buffer: {e}");
                    0
                }
            },
            _ => {
                log::debug!("virtio-net: receive buffer too small for {len} bytes; frame dropped");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, written as u32) {
            log::debug!("virtio-net: cannot return a receive buffer: {e}");
        }
        true
    }

    /// Sends every frame the guest queued for transmission.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match Reader::new(mem, chain) {
                Ok(mut r) => {
                    let n = r.available_bytes();
                    if !(HDR_LEN..=MAX_FRAME).contains(&n) {
                        log::debug!("virtio-net: dropping a {n}-byte transmit request");
                    } else if r.read_exact(&mut self.tx[..n]).is_ok() {
                        // A tap takes one frame per write; a full tap or a
                        // link that is down drops it, as a NIC would.
                        if let Err(e) = self.tap.write(&self.tx[..n]) {
                            log::debug!("virtio-net: frame dropped: {e}");
                        }
                    }
                }
                Err(e) => log::debug!("virtio-net: unusable transmit chain: {e}"),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                log::debug!("virtio-net: cannot return a transmit buffer: {e}");
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn syscalls(&self) -> Syscalls {
        // Transmit is one `write`, and waking the worker an eventfd
        // `write`: nothing beyond what every thread may do.
        Syscalls {
            device: "virtio-net",
            list: &[],
        }
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // `mac` at offset 0; nothing else is offered.
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.mac.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        match index {
            TX_QUEUE => self.transmit(queue, mem),
            RX_QUEUE => {
                // New buffers: the waiting frame first, then the worker
                // may read on.
                let used = self.deliver(queue, mem);
                if self.worker_stalled && self.rx_len.is_none() {
                    self.worker_stalled = false;
                    // A full pipe already holds a wake-up.
                    if let Err(e) = (&self.kick).write(&[1])
                        && e.kind() != io::ErrorKind::WouldBlock
                    {
                        log::warn!("virtio-net: cannot wake the receive worker: {e}");
                    }
                }
                used
            }
            _ => false,
        }
    }
}

impl NetWorker {
    /// The worker also serves the transmit queue, woken by `notify` (an
    /// eventfd KVM signals on the guest's notify of that queue).
    pub fn with_tx_notify(mut self, notify: File) -> Self {
        self.tx_notify = Some(notify);
        self
    }

    /// Waits for the tap (while not stalled), the kick or the transmit
    /// notify, up to `timeout`, then sends what the guest queued and moves
    /// what the tap has into the guest's buffers.
    pub fn turn<T: Trigger>(
        &mut self,
        device: &Mutex<VirtioMmio<Net, T>>,
        timeout: PollTimeout,
    ) -> io::Result<()> {
        let tap_events = if self.stalled {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        // The third slot is polled only when there is a transmit notify.
        let mut fds = [
            PollFd::new(self.kick.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.tap.as_fd(), tap_events),
            PollFd::new(self.kick.as_fd(), PollFlags::empty()),
        ];
        let mut polled = 2;
        if let Some(notify) = &self.tx_notify {
            fds[2] = PollFd::new(notify.as_fd(), PollFlags::POLLIN);
            polled = 3;
        }
        match poll(&mut fds[..polled], timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        let kicked = ready(&fds[0]);
        let readable = ready(&fds[1]);
        let transmit = polled == 3 && ready(&fds[2]);
        if transmit && let Some(notify) = &mut self.tx_notify {
            // Clears the count; a notify after this read wakes the next turn.
            let _ = notify.read(&mut [0u8; 8]);
            lock(device).notify_queue(TX_QUEUE as u32);
        }
        if kicked {
            let mut drain = [0u8; 64];
            while matches!(self.kick.read(&mut drain), Ok(n) if n > 0) {}
            self.stalled = false;
        }
        if (kicked || readable) && !self.stalled {
            self.receive(device);
        }
        Ok(())
    }

    /// Moves frames from the tap to the guest until the tap is empty, the
    /// guest has no buffer left (then stalls), or a batch is done.
    fn receive<T: Trigger>(&mut self, device: &Mutex<VirtioMmio<Net, T>>) {
        let mut transport = lock(device);
        for _ in 0..RX_BATCH {
            match transport.device_mut().read_tap() {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    log::warn!("virtio-net: cannot read the tap: {e}; waiting for the guest");
                    self.stall(transport.device_mut());
                    return;
                }
            }
            transport.notify_queue(RX_QUEUE as u32);
            if transport.device_mut().rx_len.is_some() {
                self.stall(transport.device_mut());
                return;
            }
        }
    }

    fn stall(&mut self, net: &mut Net) {
        self.stalled = true;
        net.worker_stalled = true;
    }

    /// The worker thread's body.
    pub fn run<T: Trigger>(mut self, device: &Mutex<VirtioMmio<Net, T>>) -> ! {
        loop {
            if let Err(e) = self.turn(device, PollTimeout::NONE) {
                log::error!("virtio-net: receive worker cannot wait: {e}");
                // Nothing sensible is left to do but not spin.
                loop {
                    std::thread::park();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::serial::CountingTrigger;
    use std::os::unix::net::UnixDatagram;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const F_WRITE: u16 = 2;
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A card whose tap is one end of a SOCK_SEQPACKET pair (one read or
    /// write is one frame, as on a tap); the other end plays the host.
    fn card() -> (Net, NetWorker, std::os::unix::net::UnixStream) {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (net, worker) = Net::new(File::from(a), MAC).unwrap();
        (net, worker, std::os::unix::net::UnixStream::from(b))
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; HDR_LEN];
        f.extend_from_slice(payload);
        f
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    /// Posts one receive buffer of `len` bytes at 1 MiB.
    fn rx_queue<'a>(
        mem: &'a GuestMemoryMmap,
        len: u32,
    ) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
        let vq = MockSplitQueue::new(mem, 16);
        vq.build_desc_chain(&[RawDescriptor::from(Descriptor::new(
            0x10_0000, len, F_WRITE, 0,
        ))])
        .unwrap();
        let q = vq.create_queue().unwrap();
        (vq, q)
    }

    fn used_len(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u32 {
        mem.read_obj(vq.used_addr().unchecked_add(8)).unwrap()
    }

    #[test]
    fn offers_version_1_and_its_mac_with_two_queues() {
        let (net, _, _) = card();
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.features(), (1 << 32) | (1 << 5));
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, MAC);
        let mut past = [0xffu8; 2];
        net.read_config(6, &mut past);
        assert_eq!(past, [0, 0]);
    }

    #[test]
    fn transmit_writes_header_and_frame_to_the_tap_as_one_packet() {
        let (mut net, _, mut host) = card();
        let mem = mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let sent = frame(b"\xff\xff\xff\xff\xff\xffarp request");
        // Header and frame in two descriptors: the device gathers them.
        mem.write_slice(&sent[..HDR_LEN], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(&sent[HDR_LEN..], GuestAddress(0x10_1000))
            .unwrap();
        vq.build_desc_chain(&[
            RawDescriptor::from(Descriptor::new(0x10_0000, HDR_LEN as u32, 1, 1)),
            RawDescriptor::from(Descriptor::new(
                0x10_1000,
                (sent.len() - HDR_LEN) as u32,
                0,
                0,
            )),
        ])
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(net.process_queue(TX_QUEUE, &mut q, &mem));
        assert_eq!(used_len(&mem, &vq), 0);
        let mut got = vec![0u8; 2048];
        let n = host.read(&mut got).unwrap();
        assert_eq!(&got[..n], &sent[..]);
    }

    #[test]
    fn receive_fills_a_buffer_and_sets_num_buffers() {
        let (mut net, _, mut host) = card();
        let mem = mem();
        let (vq, mut q) = rx_queue(&mem, 2048);
        let mut sent = frame(b"arp reply");
        // The tap leaves num_buffers as it was: garbage here.
        sent[NUM_BUFFERS] = 0xaa;
        sent[NUM_BUFFERS + 1] = 0xbb;
        host.write_all(&sent).unwrap();
        assert!(net.read_tap().unwrap());
        assert!(net.process_queue(RX_QUEUE, &mut q, &mem));
        assert_eq!(used_len(&mem, &vq), sent.len() as u32);
        let mut got = vec![0u8; sent.len()];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&got[NUM_BUFFERS..HDR_LEN], &[1, 0]);
        assert_eq!(&got[HDR_LEN..], b"arp reply");
        // Nothing more on the tap.
        assert!(!net.read_tap().unwrap());
    }

    #[test]
    fn a_frame_too_big_for_the_buffer_is_dropped_not_truncated() {
        let (mut net, _, mut host) = card();
        let mem = mem();
        let (vq, mut q) = rx_queue(&mem, 16);
        host.write_all(&frame(&[7u8; 100])).unwrap();
        assert!(net.read_tap().unwrap());
        assert!(net.process_queue(RX_QUEUE, &mut q, &mem));
        assert_eq!(used_len(&mem, &vq), 0);
        assert_eq!(net.rx_len, None);
    }

    /// A transport around `net` that no driver has set up yet.
    fn live(net: Net) -> Mutex<VirtioMmio<Net, CountingTrigger>> {
        Mutex::new(VirtioMmio::new(net, CountingTrigger::default(), mem()))
    }

    #[test]
    fn the_worker_stalls_without_buffers_and_a_receive_notify_wakes_it() {
        let (net, mut worker, mut host) = card();
        let device = live(net);
        // The driver has not set the device up: the frame waits.
        host.write_all(&frame(b"first")).unwrap();
        host.write_all(&frame(b"second")).unwrap();
        worker.turn(&device, PollTimeout::from(1000u16)).unwrap();
        assert!(worker.stalled);
        {
            let mut t = lock(&device);
            assert_eq!(t.device_mut().rx_len, Some(HDR_LEN + 5));
            assert!(t.device_mut().worker_stalled);
        }
        // Stalled: the tap is not polled, so nothing happens.
        worker.turn(&device, PollTimeout::ZERO).unwrap();
        assert!(worker.stalled);
        // The guest posts a buffer and notifies the receive queue: the
        // waiting frame is delivered and the worker is kicked.
        let mem = mem();
        let (vq, mut q) = rx_queue(&mem, 2048);
        {
            let mut t = lock(&device);
            assert!(t.device_mut().process_queue(RX_QUEUE, &mut q, &mem));
            assert_eq!(t.device_mut().rx_len, None);
            assert!(!t.device_mut().worker_stalled);
        }
        assert_eq!(used_len(&mem, &vq), (HDR_LEN + 5) as u32);
        worker.turn(&device, PollTimeout::ZERO).unwrap();
        // It read the second frame, which now waits in turn.
        let mut t = lock(&device);
        assert_eq!(t.device_mut().rx_len, Some(HDR_LEN + 6));
        assert!(worker.stalled);
    }

    #[test]
    fn a_short_read_is_dropped() {
        let (mut net, _, _) = card();
        let (a, b) = UnixDatagram::pair().unwrap();
        net.tap = File::from(std::os::fd::OwnedFd::from(a));
        nonblocking(&net.tap).unwrap();
        b.send(b"tiny").unwrap();
        assert!(net.read_tap().unwrap());
        assert_eq!(net.rx_len, None);
    }
}
