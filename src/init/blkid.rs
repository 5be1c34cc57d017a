//! What is on a block device, read from its first bytes: the file
//! system's type, label and UUID (ext2/3/4, xfs, btrfs, vfat), and the
//! partition names of a GPT partition table. This is how `LABEL=`,
//! `UUID=` and `PARTLABEL=` sources of `[[host.mounts]]` are found
//! without a `blkid` binary.
//!
//! Pure: every function takes bytes already read. [`PROBE_LEN`] bytes from
//! the start of a device are enough for every file system here; the GPT
//! header is read from the second logical sector and its entries from
//! where the header says. The reading itself is `init::datamounts`.
//!
//! Invariant: a parser never trusts a length or an offset it read; every
//! access is bounds-checked and a short or garbled buffer means "not this
//! file system", never a panic.

use super::le::{u16_at, u32_at, u64_at};
use crate::config::MountSource;

/// Bytes from the start of a device that [`probe`] needs: the btrfs
/// superblock, the farthest out, ends at 64 KiB + 4 KiB.
pub const PROBE_LEN: usize = BTRFS_SB + 0x1000;

const EXT_SB: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const BTRFS_SB: usize = 64 << 10;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Most GPT entries zonit reads (the usual table has 128).
const GPT_MAX_ENTRIES: u32 = 1024;

/// A file system family, as far as finding it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// ext2, ext3 or ext4 (one superblock format).
    Ext,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// FAT12, FAT16 or FAT32.
    Vfat,
}

/// What a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The file system family.
    pub family: Family,
    /// Its label, if it has one.
    pub label: Option<String>,
    /// Its UUID (`xxxxxxxx-xxxx-...`, lowercase) or, for vfat, its volume
    /// id (`ABCD-1234`).
    pub uuid: Option<String>,
}

impl Identity {
    /// Whether this file system is what `source` names (`LABEL=` exact,
    /// `UUID=` in any case). `PARTLABEL=` and device paths name the
    /// container, not the file system: never matched here.
    pub fn matches(&self, source: &MountSource) -> bool {
        match source {
            MountSource::Label(l) => self.label.as_deref() == Some(l.as_str()),
            MountSource::Uuid(u) => self
                .uuid
                .as_deref()
                .is_some_and(|mine| mine.eq_ignore_ascii_case(u)),
            _ => false,
        }
    }
}

/// A NUL-padded byte string as text; `None` when empty.
fn padded_text(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[..end]).into_owned();
    (!text.is_empty()).then_some(text)
}

/// 16 bytes as the usual `8-4-4-4-12` lowercase UUID; `None` when all
/// zero (no UUID set).
fn uuid_text(bytes: &[u8]) -> Option<String> {
    let b: &[u8; 16] = bytes.try_into().ok()?;
    if b.iter().all(|&x| x == 0) {
        return None;
    }
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    ))
}

/// The file system at the start of `head` (at least [`PROBE_LEN`] bytes
/// for btrfs, fewer do for the others), if it is one zonit knows.
pub fn probe(head: &[u8]) -> Option<Identity> {
    xfs(head)
        .or_else(|| btrfs(head))
        .or_else(|| ext(head))
        .or_else(|| vfat(head))
}

fn ext(head: &[u8]) -> Option<Identity> {
    let sb = head.get(EXT_SB..EXT_SB + 1024)?;
    if u16_at(sb, 0x38)? != EXT_MAGIC {
        return None;
    }
    Some(Identity {
        family: Family::Ext,
        uuid: uuid_text(sb.get(0x68..0x78)?),
        label: padded_text(sb.get(0x78..0x88)?),
    })
}

fn xfs(head: &[u8]) -> Option<Identity> {
    if head.get(0..4)? != b"XFSB" {
        return None;
    }
    Some(Identity {
        family: Family::Xfs,
        uuid: uuid_text(head.get(32..48)?),
        label: padded_text(head.get(108..120)?),
    })
}

fn btrfs(head: &[u8]) -> Option<Identity> {
    let sb = head.get(BTRFS_SB..BTRFS_SB + 0x1000)?;
    if sb.get(64..72)? != BTRFS_MAGIC {
        return None;
    }
    Some(Identity {
        family: Family::Btrfs,
        uuid: uuid_text(sb.get(32..48)?),
        label: padded_text(sb.get(0x12b..0x12b + 256)?),
    })
}

fn vfat(head: &[u8]) -> Option<Identity> {
    if head.get(510..512)? != [0x55, 0xAA] {
        return None;
    }
    // FAT32 has no 16-bit FAT size; its extended boot record sits 0x1C
    // bytes further on.
    let ebr = if u16_at(head, 0x16)? == 0 { 0x40 } else { 0x24 };
    let fs_type = head.get(ebr + 0x12..ebr + 0x1A)?;
    // The boot signature 0x29 says the id and label fields are there.
    if !fs_type.starts_with(b"FAT") || *head.get(ebr + 2)? != 0x29 {
        return None;
    }
    let id = u32_at(head, ebr + 3)?;
    let label = String::from_utf8_lossy(head.get(ebr + 7..ebr + 18)?)
        .trim_end_matches([' ', '\0'])
        .to_owned();
    Some(Identity {
        family: Family::Vfat,
        uuid: Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)),
        label: (!label.is_empty() && label != "NO NAME").then_some(label),
    })
}

/// Where a GPT's partition entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptHeader {
    /// Logical block of the first entry.
    pub entries_lba: u64,
    /// Number of entries.
    pub count: u32,
    /// Bytes per entry.
    pub entry_size: u32,
}

impl GptHeader {
    /// Byte length of the entry array.
    pub fn entries_len(&self) -> usize {
        self.count as usize * self.entry_size as usize
    }
}

/// The GPT header in `sector` (the disk's second logical sector), if
/// there is one of a sane shape.
pub fn gpt_header(sector: &[u8]) -> Option<GptHeader> {
    if sector.get(0..8)? != GPT_SIGNATURE {
        return None;
    }
    let header = GptHeader {
        entries_lba: u64_at(sector, 72)?,
        count: u32_at(sector, 80)?,
        entry_size: u32_at(sector, 84)?,
    };
    let sane = header.entries_lba >= 2
        && header.count <= GPT_MAX_ENTRIES
        && (128..=4096).contains(&header.entry_size)
        && header.entry_size.is_multiple_of(8);
    sane.then_some(header)
}

/// The named partitions of a GPT entry array: (partition number, name),
/// numbered from 1 as the kernel numbers them (`vda1` is entry 0).
/// Unused entries (type all zero) and unnamed ones are left out.
pub fn gpt_names(header: &GptHeader, entries: &[u8]) -> Vec<(u32, String)> {
    let size = header.entry_size as usize;
    let mut out = Vec::new();
    for i in 0..header.count {
        let at = i as usize * size;
        let Some(entry) = entries.get(at..at + size) else {
            break;
        };
        if entry[..16].iter().all(|&b| b == 0) {
            continue;
        }
        // UTF-16LE, NUL-terminated, 36 units.
        let units: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name = String::from_utf16_lossy(&units);
        if !name.is_empty() {
            out.push((i + 1, name));
        }
    }
    out
}

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Makes a sparse image of `size` bytes and runs `tool args.. image`
    /// on it; `None` (the test is skipped) when the tool is missing,
    /// except under CI=true, where that fails the test.
    fn image(tool: &str, size: u64, args: &[&str]) -> Option<(tempfile::TempDir, Vec<u8>)> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let run = Command::new(tool).args(args).arg(&img).output();
        let out = match run {
            Ok(out) => out,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{tool} is needed (scripts/setup.sh installs it): {e}"
                );
                eprintln!("skipped: {tool} is missing ({e})");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = head(&img, PROBE_LEN.max(64 << 10));
        Some((dir, bytes))
    }

    fn head(path: &Path, len: usize) -> Vec<u8> {
        use std::io::Read;
        let mut buf = Vec::new();
        std::fs::File::open(path)
            .unwrap()
            .take(len as u64)
            .read_to_end(&mut buf)
            .unwrap();
        buf
    }

    const UUID: &str = "3f1c9a52-7d0e-4b6a-9c1e-5a2b8d4e6f70";

    #[test]
    fn ext4_label_and_uuid_are_read() {
        let Some((_d, head)) = image("mkfs.ext4", 8 << 20, &["-q", "-L", "zdata", "-U", UUID])
        else {
            return;
        };
        let id = probe(&head).unwrap();
        assert_eq!(
            id,
            Identity {
                family: Family::Ext,
                label: Some("zdata".into()),
                uuid: Some(UUID.into())
            }
        );
        assert!(id.matches(&MountSource::Label("zdata".into())));
        assert!(id.matches(&MountSource::Uuid(UUID.to_uppercase())));
        assert!(!id.matches(&MountSource::Label("zdat".into())));
        assert!(!id.matches(&MountSource::PartLabel("zdata".into())));
    }

    #[test]
    fn xfs_label_and_uuid_are_read() {
        // xfsprogs refuses file systems under 300 MiB; the image is sparse.
        let Some((_d, head)) = image(
            "mkfs.xfs",
            320 << 20,
            &["-q", "-f", "-L", "zimg", "-m", &format!("uuid={UUID}")],
        ) else {
            return;
        };
        assert_eq!(
            probe(&head),
            Some(Identity {
                family: Family::Xfs,
                label: Some("zimg".into()),
                uuid: Some(UUID.into())
            })
        );
    }

    #[test]
    fn btrfs_label_and_uuid_are_read() {
        let Some((_d, head)) = image(
            "mkfs.btrfs",
            128 << 20,
            &["-q", "-f", "-L", "zpool", "-U", UUID],
        ) else {
            return;
        };
        assert_eq!(
            probe(&head),
            Some(Identity {
                family: Family::Btrfs,
                label: Some("zpool".into()),
                uuid: Some(UUID.into())
            })
        );
    }

    #[test]
    fn vfat_label_and_volume_id_are_read_for_fat16_and_fat32() {
        for (bits, size) in [("16", 16u64 << 20), ("32", 64 << 20)] {
            let Some((_d, head)) = image(
                "mkfs.vfat",
                size,
                &["-F", bits, "-n", "ZBOOT", "-i", "0a1b2c3d"],
            ) else {
                return;
            };
            assert_eq!(
                probe(&head),
                Some(Identity {
                    family: Family::Vfat,
                    label: Some("ZBOOT".into()),
                    uuid: Some("0A1B-2C3D".into())
                }),
                "FAT{bits}"
            );
            assert!(
                probe(&head)
                    .unwrap()
                    .matches(&MountSource::Uuid("0a1b-2c3d".into()))
            );
        }
    }

    #[test]
    fn vfat_without_a_label_has_none() {
        let Some((_d, head)) = image("mkfs.vfat", 16 << 20, &["-F", "16"]) else {
            return;
        };
        assert_eq!(probe(&head).unwrap().label, None);
    }

    #[test]
    fn gpt_partition_names_are_read_with_their_numbers() {
        let Some((_d, head)) = image(
            "sgdisk",
            8 << 20,
            &[
                "-n",
                "1:2048:+1M",
                "-c",
                "1:zdata",
                "-n",
                "2:0:+1M",
                "-n",
                "3:0:+1M",
                "-c",
                "3:guest images",
            ],
        ) else {
            return;
        };
        let header = gpt_header(&head[512..1024]).unwrap();
        assert_eq!(header.entries_lba, 2);
        let start = header.entries_lba as usize * 512;
        let names = gpt_names(&header, &head[start..start + header.entries_len()]);
        assert_eq!(
            names,
            [(1, "zdata".to_string()), (3, "guest images".to_string())]
        );
        // A partition table is no file system.
        assert_eq!(probe(&head), None);
    }

    #[test]
    fn short_or_blank_buffers_are_nothing() {
        assert_eq!(probe(&[]), None);
        assert_eq!(probe(&[0u8; PROBE_LEN]), None);
        assert_eq!(gpt_header(&[0u8; 512]), None);
        // An ext magic alone, with the rest cut off, is not read past the end.
        let mut cut = vec![0u8; EXT_SB + 0x3A];
        cut[EXT_SB + 0x38..].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        assert_eq!(probe(&cut), None);
        // A GPT header claiming absurd sizes is refused.
        let mut sector = vec![0u8; 512];
        sector[..8].copy_from_slice(GPT_SIGNATURE);
        sector[72..80].copy_from_slice(&2u64.to_le_bytes());
        sector[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        sector[84..88].copy_from_slice(&128u32.to_le_bytes());
        assert_eq!(gpt_header(&sector), None);
    }
}
