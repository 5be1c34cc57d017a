//! Capabilities: the bounding and ambient sets, permitted and effective,
//! and the highest capability the running kernel knows. Zones' commands
//! and guests' monitors drop theirs with the same calls.

use std::io;

use super::check;

/// Capability sets (linux/capability.h, version 3).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// Highest capability number this code knows (CAP_CHECKPOINT_RESTORE).
pub const CAP_LAST: u8 = 40;

/// Cuts the bounding set to `keep` and empties the ambient set. Permitted
/// and effective are left alone (see [`set_capabilities`]), so the caller
/// can still switch uid afterwards. `last` is the highest capability the
/// kernel knows ([`last_cap`], read before the fork).
pub fn limit_bounding_and_ambient(keep: &[u8], last: u8) -> io::Result<()> {
    for cap in 0..=last {
        if !keep.contains(&cap) {
            // SAFETY: prctl with integer arguments only.
            let ret =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            // EINVAL: the running kernel does not know this capability.
            if ret == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(ret.into()).map(drop)
}

/// Sets permitted and effective to `keep`, inheritable to empty.
pub fn set_capabilities(keep: &[u8]) -> io::Result<()> {
    let mut data = [CapData::default(); 2];
    for &cap in keep {
        let (word, bit) = (usize::from(cap / 32), cap % 32);
        if let Some(d) = data.get_mut(word) {
            d.permitted |= 1 << bit;
            d.effective |= 1 << bit;
        }
    }
    let mut header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    // SAFETY: header and a two-element data array as capset(2) expects for
    // _LINUX_CAPABILITY_VERSION_3.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    check(ret).map(drop)
}

/// The highest capability the running kernel knows. Read once per
/// process: it cannot change while the kernel runs, and zone starts should
/// not pay five syscalls for it each time.
pub fn last_cap() -> u8 {
    static LAST: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CAP_LAST)
    })
}
