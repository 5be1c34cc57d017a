//! virtio-blk (virtio 1.2 §5.2): a disk image file as a block device, with
//! read, write, flush and get-id requests.
//!
//! Owns: the image file and a bounded bounce buffer. Invariants: requests
//! never reach past the last whole 512-byte sector of the image (they fail
//! with IOERR instead); a read-only disk advertises VIRTIO_BLK_F_RO and
//! fails every write; data moves through a buffer of at most [`CHUNK`]
//! bytes, whatever the request size; a malformed chain is completed with
//! length 0 rather than stalling the queue.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::Syscalls;
use super::virtio_mmio::{VIRTIO_F_VERSION_1, VirtioDevice};

/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: the device supports flush.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Sector size of the request protocol.
pub const SECTOR: u64 = 512;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Bounce buffer size.
pub const CHUNK: usize = 64 << 10;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
/// Request status values.
pub const S_OK: u8 = 0;
/// I/O error.
pub const S_IOERR: u8 = 1;
/// Unsupported request.
pub const S_UNSUPP: u8 = 2;
/// Length of the id string of GET_ID.
const ID_LEN: usize = 20;

/// A disk.
pub struct Block {
    file: File,
    readonly: bool,
    sectors: u64,
    id: [u8; ID_LEN],
    buf: Vec<u8>,
}

impl Block {
    /// A disk backed by `file` of `size` bytes, identified as `id` (at most
    /// 20 bytes are kept).
    pub fn new(file: File, size: u64, readonly: bool, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_LEN];
        for (dst, src) in id_bytes.iter_mut().zip(id.bytes()) {
            *dst = src;
        }
        Self {
            file,
            readonly,
            sectors: size / SECTOR,
            id: id_bytes,
            buf: Vec::new(),
        }
    }

    /// Byte offset of `sector` if `len` bytes from there fit in the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.sectors * SECTOR).then_some(offset)
    }

    /// The bounce buffer (allocated on first use) and the image, borrowed
    /// together.
    fn chunk_and_file(&mut self) -> (&mut [u8], &File) {
        if self.buf.is_empty() {
            self.buf = vec![0; CHUNK];
        }
        (&mut self.buf, &self.file)
    }

    fn read_into(&mut self, sector: u64, writer: &mut Writer<'_>) -> u8 {
        let len = writer.available_bytes();
        let Some(mut offset) = self.range(sector, len) else {
            return S_IOERR;
        };
        let mut left = len;
        let (buf, file) = self.chunk_and_file();
        while left > 0 {
            let n = left.min(buf.len());
            if file.read_exact_at(&mut buf[..n], offset).is_err()
                || writer.write_all(&buf[..n]).is_err()
            {
                return S_IOERR;
            }
            offset += n as u64;
            left -= n;
        }
        S_OK
    }

    fn write_from(&mut self, sector: u64, reader: &mut Reader<'_>) -> u8 {
        if self.readonly {
            return S_IOERR;
        }
        let len = reader.available_bytes();
        let Some(mut offset) = self.range(sector, len) else {
            return S_IOERR;
        };
        let mut left = len;
        let (buf, file) = self.chunk_and_file();
        while left > 0 {
            let n = left.min(buf.len());
            if reader.read_exact(&mut buf[..n]).is_err()
                || file.write_all_at(&buf[..n], offset).is_err()
            {
                return S_IOERR;
            }
            offset += n as u64;
            left -= n;
        }
        S_OK
    }

    /// Serves one request; returns the number of bytes written to the
    /// guest (data and status).
    fn serve(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) =
            (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
        else {
            log::debug!("virtio-blk: unusable descriptor chain");
            return 0;
        };
        let Ok(header) = reader.read_obj::<[u8; 16]>() else {
            log::debug!("virtio-blk: request without a header");
            return 0;
        };
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            log::debug!("virtio-blk: request without a status byte");
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(data_len) else {
            return 0;
        };
        let status = match kind {
            T_IN => self.read_into(sector, &mut writer),
            T_OUT => self.write_from(sector, &mut reader),
            T_FLUSH if self.readonly => S_OK,
            T_FLUSH => {
                if self.file.sync_data().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                }
            }
            T_GET_ID => {
                let n = data_len.min(ID_LEN);
                if writer.write_all(&self.id[..n]).is_ok() {
                    S_OK
                } else {
                    S_IOERR
                }
            }
            _ => S_UNSUPP,
        };
        if status_writer.write_obj(status).is_err() {
            return writer.bytes_written() as u32;
        }
        (writer.bytes_written() + 1) as u32
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn syscalls(&self) -> Syscalls {
        // Requests are served on the vCPU that notifies.
        Syscalls {
            device: "virtio-blk",
            list: &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync],
        }
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH;
        if self.readonly {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (u64, in sectors) at offset 0 is meaningful.
        let config = self.sectors.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.serve(chain, mem);
            if let Err(e) = queue.add_used(mem, head, len) {
                log::debug!("virtio-blk: cannot complete a request: {e}");
                break;
            }
            used = true;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn image(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "zonit-blk-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    /// Submits one request of `kind` for `sector` with a data buffer of
    /// `data_len` bytes (writable for reads), returns (status, used len,
    /// data buffer contents).
    fn request(
        blk: &mut Block,
        kind: u32,
        sector: u64,
        data: &[u8],
        device_writes: bool,
    ) -> (u8, u32, Vec<u8>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // The mock queue lives at the start of memory; buffers go above 1 MiB.
        let (hdr, buf, status) = (0x10_0000u64, 0x10_1000u64, 0x11_0000u64);
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(hdr)).unwrap();
        mem.write_slice(data, GuestAddress(buf)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let mut descs = vec![RawDescriptor::from(Descriptor::new(hdr, 16, F_NEXT, 1))];
        if !data.is_empty() {
            let flags = F_NEXT | if device_writes { F_WRITE } else { 0 };
            descs.push(RawDescriptor::from(Descriptor::new(
                buf,
                data.len() as u32,
                flags,
                2,
            )));
        }
        descs.push(RawDescriptor::from(Descriptor::new(status, 1, F_WRITE, 0)));
        vq.build_desc_chain(&descs).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(blk.process_queue(0, &mut queue, &mem));
        let used_len: u32 = mem.read_obj(vq.used_addr().unchecked_add(8)).unwrap();
        let mut out = vec![0u8; data.len()];
        mem.read_slice(&mut out, GuestAddress(buf)).unwrap();
        (mem.read_obj(GuestAddress(status)).unwrap(), used_len, out)
    }

    fn disk() -> Vec<u8> {
        let mut d = vec![0u8; 4096];
        d[..16].copy_from_slice(b"zonit disk test\n");
        d[1024..1028].copy_from_slice(b"two!");
        d
    }

    #[test]
    fn reads_sectors_into_guest_memory() {
        let mut blk = Block::new(image(&disk()), 4096, false, "d0");
        let (status, used, data) = request(&mut blk, T_IN, 2, &[0; 512], true);
        assert_eq!((status, used), (S_OK, 513));
        assert_eq!(&data[..4], b"two!");
    }

    #[test]
    fn writes_reach_the_file_unless_read_only() {
        let mut blk = Block::new(image(&disk()), 4096, false, "d0");
        let (status, used, _) = request(&mut blk, T_OUT, 1, &[0xab; 512], false);
        assert_eq!((status, used), (S_OK, 1));
        let mut back = [0u8; 512];
        blk.file.read_exact_at(&mut back, 512).unwrap();
        assert_eq!(back, [0xab; 512]);

        let mut ro = Block::new(image(&disk()), 4096, true, "d1");
        assert_ne!(ro.features() & VIRTIO_BLK_F_RO, 0);
        let (status, _, _) = request(&mut ro, T_OUT, 1, &[0xab; 512], false);
        assert_eq!(status, S_IOERR);
        ro.file.read_exact_at(&mut back, 512).unwrap();
        assert_eq!(back, [0; 512]);
    }

    #[test]
    fn requests_past_the_end_fail() {
        let mut blk = Block::new(image(&disk()), 4096, false, "d0");
        assert_eq!(request(&mut blk, T_IN, 7, &[0; 1024], true).0, S_IOERR);
        assert_eq!(
            request(&mut blk, T_OUT, u64::MAX / 2, &[0; 512], false).0,
            S_IOERR
        );
        assert_eq!(request(&mut blk, T_IN, 7, &[0; 512], true).0, S_OK);
    }

    #[test]
    fn flush_get_id_and_unknown_requests() {
        let mut blk = Block::new(image(&disk()), 4096, false, "zonit-disk-0");
        assert_eq!(request(&mut blk, T_FLUSH, 0, &[], true).0, S_OK);
        let (status, used, id) = request(&mut blk, T_GET_ID, 0, &[0; 20], true);
        assert_eq!((status, used), (S_OK, 21));
        assert_eq!(&id[..12], b"zonit-disk-0");
        assert_eq!(request(&mut blk, 99, 0, &[], true).0, S_UNSUPP);
    }

    #[test]
    fn config_space_holds_the_capacity_in_sectors() {
        let blk = Block::new(image(&disk()), 4096 + 100, false, "d0");
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut hi = [0u8; 4];
        blk.read_config(4, &mut hi);
        assert_eq!(hi, [0; 4]);
    }
}
