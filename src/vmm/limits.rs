//! What a guest may ask of the monitor: the one definition of the limits
//! on memory, vCPUs, disks, command line and image files.
//!
//! `zonit check` (config validation), the agent (before it starts a
//! monitor) and `zonit vmm` itself all apply these functions, so a guest
//! that passes the check is one the monitor accepts. Pure, apart from
//! [`check_image`], which looks at the file.

use std::path::Path;

use crate::config::units::{format_size, parse_size};

/// Smallest guest memory: below this not even a minimal Linux kernel with
/// an initramfs boots.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory (a bound on a typo, not a limit of the layout).
pub const MAX_MEMORY: u64 = 1 << 40;
/// Guest memory is a whole number of these pages.
pub const MEMORY_PAGE: u64 = 4096;
/// Guest memory when none is given: enough for a small Linux guest with a
/// busybox userland, small enough to run many guests on an edge box.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// Most vCPUs: APIC ids 0 to 253 (the xAPIC id space less 255, the
/// broadcast id, and the IOAPIC's own id 254 in the MADT).
pub const MAX_VCPUS: u8 = 254;
/// vCPUs when none are given.
pub const DEFAULT_VCPUS: u32 = 1;
/// Most virtio devices (disks and network interfaces together): one
/// interrupt line each, GSI 16 to 23, the IOAPIC pins above the ISA range.
pub const MAX_VIRTIO_DEVICES: usize = 8;
/// Longest kernel command line: x86's `COMMAND_LINE_SIZE` (2048) less the
/// terminating NUL.
pub const MAX_CMDLINE: usize = 2047;
/// What a monitor needs beyond the guest's memory, added to it for the
/// default `memory_max` of its cgroup: the monitor's own binary, heap and
/// thread stacks, the kernel's KVM page tables and per-vCPU state charged
/// to the group, and the block devices' buffers.
pub const MONITOR_ALLOWANCE: u64 = 64 << 20;
/// Threads of a monitor besides one per vCPU and one per network card
/// (its receive worker): the main thread, which runs the other devices.
pub const MONITOR_OWN_THREADS: u64 = 1;

/// A guest setting outside the limits; the message names the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Too little memory.
    #[error("{} is too little for a guest; give at least {}", format_size(*.0), format_size(MIN_MEMORY))]
    MemoryTooSmall(u64),
    /// Too much memory.
    #[error("{} is more than a guest can have; give at most {}", format_size(*.0), format_size(MAX_MEMORY))]
    MemoryTooLarge(u64),
    /// Not whole pages.
    #[error("{} is not a multiple of 4 KiB", format_size(*.0))]
    MemoryNotPages(u64),
    /// vCPU count out of range.
    #[error("{0} is not a vCPU count between 1 and {MAX_VCPUS}")]
    Vcpus(i64),
    /// Too many virtio devices.
    #[error(
        "{0} disks and network interfaces; a guest can have at most {MAX_VIRTIO_DEVICES} together"
    )]
    VirtioDevices(usize),
    /// Command line too long.
    #[error("the command line is {0} bytes; the kernel takes at most {MAX_CMDLINE}")]
    Cmdline(usize),
    /// pids.max too low for the monitor's threads.
    #[error(
        "{pids} is fewer than the monitor's threads: one per vCPU ({vcpus}), one per network card ({nics}) and {MONITOR_OWN_THREADS} of its own"
    )]
    MonitorPids {
        /// The pids_max asked for.
        pids: u64,
        /// The guest's vCPUs.
        vcpus: u32,
        /// The guest's network cards.
        nics: usize,
    },
}

/// Checks a guest memory size in bytes.
pub fn check_memory(bytes: u64) -> Result<u64, LimitError> {
    if bytes < MIN_MEMORY {
        Err(LimitError::MemoryTooSmall(bytes))
    } else if bytes > MAX_MEMORY {
        Err(LimitError::MemoryTooLarge(bytes))
    } else if !bytes.is_multiple_of(MEMORY_PAGE) {
        Err(LimitError::MemoryNotPages(bytes))
    } else {
        Ok(bytes)
    }
}

/// Checks a vCPU count.
pub fn check_vcpus(n: i64) -> Result<u8, LimitError> {
    u8::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_VCPUS).contains(n))
        .ok_or(LimitError::Vcpus(n))
}

/// Checks the number of virtio devices (disks plus network interfaces).
pub fn check_virtio_devices(n: usize) -> Result<usize, LimitError> {
    if n > MAX_VIRTIO_DEVICES {
        return Err(LimitError::VirtioDevices(n));
    }
    Ok(n)
}

/// Checks a kernel command line's length.
pub fn check_cmdline(cmdline: &str) -> Result<(), LimitError> {
    if cmdline.len() > MAX_CMDLINE {
        return Err(LimitError::Cmdline(cmdline.len()));
    }
    Ok(())
}

/// The default `memory_max` of a guest's monitor: its memory plus
/// [`MONITOR_ALLOWANCE`].
pub fn default_memory_max(memory: u64) -> u64 {
    memory.saturating_add(MONITOR_ALLOWANCE)
}

/// Checks that a monitor's `pids_max` leaves room for all its threads.
pub fn check_monitor_pids(pids: u64, vcpus: u32, nics: usize) -> Result<(), LimitError> {
    if pids < u64::from(vcpus) + nics as u64 + MONITOR_OWN_THREADS {
        return Err(LimitError::MonitorPids { pids, vcpus, nics });
    }
    Ok(())
}

/// Parses a size as the monitor's command line spells it: plain bytes, or
/// a number with a binary unit as in the config (`64M`, `2G`, `512KiB`).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("size \"{text}\" is too large"));
    }
    parse_size(text)
}

/// Checks that a kernel, initrd or disk image can be used: it exists and
/// is a regular file or a block device (symbolic links followed).
pub fn check_image(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(format!(
            "{} is neither a regular file nor a block device",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_must_be_whole_pages_between_the_bounds() {
        assert_eq!(check_memory(64 << 20), Ok(64 << 20));
        assert_eq!(check_memory(MIN_MEMORY), Ok(MIN_MEMORY));
        assert_eq!(check_memory(MAX_MEMORY), Ok(MAX_MEMORY));
        assert_eq!(
            check_memory(15 << 20),
            Err(LimitError::MemoryTooSmall(15 << 20))
        );
        assert_eq!(
            check_memory(2 << 40),
            Err(LimitError::MemoryTooLarge(2 << 40))
        );
        assert_eq!(
            check_memory(65538 << 10),
            Err(LimitError::MemoryNotPages(65538 << 10))
        );
        assert_eq!(
            check_memory(65538 << 10).map_err(|e| e.to_string()),
            Err("65538K is not a multiple of 4 KiB".to_string())
        );
    }

    #[test]
    fn vcpus_run_from_1_to_254() {
        assert_eq!(check_vcpus(1), Ok(1));
        assert_eq!(check_vcpus(254), Ok(254));
        for bad in [0, 255, 256, -1] {
            assert_eq!(check_vcpus(bad), Err(LimitError::Vcpus(bad)));
        }
    }

    #[test]
    fn at_most_eight_virtio_devices() {
        assert_eq!(check_virtio_devices(8), Ok(8));
        assert_eq!(check_virtio_devices(9), Err(LimitError::VirtioDevices(9)));
    }

    #[test]
    fn cmdline_fits_the_kernels_buffer() {
        assert!(check_cmdline(&"x".repeat(MAX_CMDLINE)).is_ok());
        assert_eq!(
            check_cmdline(&"x".repeat(MAX_CMDLINE + 1)),
            Err(LimitError::Cmdline(MAX_CMDLINE + 1))
        );
    }

    #[test]
    fn a_monitor_needs_a_pid_per_vcpu_per_nic_and_one_of_its_own() {
        assert_eq!(check_monitor_pids(4, 2, 1), Ok(()));
        assert_eq!(
            check_monitor_pids(3, 2, 1),
            Err(LimitError::MonitorPids {
                pids: 3,
                vcpus: 2,
                nics: 1
            })
        );
    }

    #[test]
    fn memory_parses_as_bytes_or_as_the_config_spells_sizes() {
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert_eq!(parse_memory("512KiB"), Ok(512 << 10));
        assert!(parse_memory("").is_err());
        assert!(parse_memory("99999999999999999999").is_err());
    }

    #[test]
    fn images_are_regular_files_or_block_devices() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(check_image(&file), Ok(()));
        // A directory is neither; a character device is not a block device.
        assert!(check_image(dir.path()).is_err());
        assert!(check_image(Path::new("/dev/null")).is_err());
        assert!(check_image(&dir.path().join("missing")).is_err());
        // A block device node (loop0's numbers; never opened here).
        let node = dir.path().join("loop0");
        let made = nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(7, 0),
        );
        match made {
            Ok(()) => assert_eq!(check_image(&node), Ok(())),
            // Only root may make device nodes.
            Err(e) => assert!(!nix::unistd::geteuid().is_root(), "mknod: {e}"),
        }
    }
}
