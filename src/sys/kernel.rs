//! Machine-wide calls PID 1 makes: loading kernel modules, reboot, sync,
//! the hardware watchdog's ioctls, QEMU's debug-exit port, the monotonic
//! clock of the kernel's log.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;

/// `MODULE_INIT_COMPRESSED_FILE` (linux/module.h): the kernel decompresses
/// the module itself (`CONFIG_MODULE_DECOMPRESS`).
pub const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

/// `finit_module(fd, params, flags)`: loads the kernel module in the open
/// file `fd`. `EEXIST` (already loaded) is returned like any error; the
/// caller decides.
pub fn finit_module(fd: BorrowedFd<'_>, params: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd and a NUL-terminated string
    // that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            fd.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    check(ret).map(drop)
}

/// `reboot(2)` with one of the `RB_*` commands. Returns only on failure
/// (or, for `RB_DISABLE_CAD`/`RB_ENABLE_CAD`, on success too).
pub fn reboot(cmd: libc::c_int) -> io::Result<()> {
    // SAFETY: reboot(2) takes a plain integer command; it either acts on
    // the whole machine or returns.
    let ret = unsafe { libc::reboot(cmd) };
    check(ret.into()).map(drop)
}

/// `sync(2)`: flush every file system's dirty data.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The watchdog ioctls of `linux/watchdog.h`.
mod wdioc {
    nix::ioctl_readwrite!(set_timeout, b'W', 6, libc::c_int);
    nix::ioctl_read!(get_timeout, b'W', 7, libc::c_int);
}

/// `WDIOC_SETTIMEOUT`: asks the watchdog behind `fd` for a timeout of
/// `secs`; returns the timeout the driver chose (it may round).
pub fn watchdog_set_timeout(fd: BorrowedFd<'_>, secs: i32) -> io::Result<i32> {
    let mut value: libc::c_int = secs;
    // SAFETY: the ioctl reads and writes one c_int, which `value` is, for
    // the duration of the call.
    unsafe { wdioc::set_timeout(fd.as_raw_fd(), &mut value) }.map_err(io::Error::from)?;
    Ok(value)
}

/// `WDIOC_GETTIMEOUT`: the timeout of the watchdog behind `fd`, seconds.
pub fn watchdog_timeout(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    // SAFETY: the ioctl writes one c_int, which `value` is.
    unsafe { wdioc::get_timeout(fd.as_raw_fd(), &mut value) }.map_err(io::Error::from)?;
    Ok(value)
}

/// Writes `value` to the x86 I/O port `port` after gaining access to it
/// with `ioperm(2)` (root, CAP_SYS_RAWIO). Used only for QEMU's
/// `isa-debug-exit` device; see `init::debug_exit` for when that is safe.
#[cfg(target_arch = "x86_64")]
pub fn outb(port: u16, value: u8) -> io::Result<()> {
    // SAFETY: ioperm changes this thread's I/O bitmap only.
    let ret = unsafe { libc::ioperm(libc::c_ulong::from(port), 1, 1) };
    check(ret.into())?;
    // SAFETY: ioperm above granted access to exactly this port, so the
    // instruction cannot fault; what the port does is the caller's choice.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

/// Port I/O does not exist on this architecture.
#[cfg(not(target_arch = "x86_64"))]
pub fn outb(_port: u16, _value: u8) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the same clock the kernel's
/// log time stamps use (minus suspend), so zonit's own boot marks line up
/// with `dmesg`.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        Err(_) => 0,
    }
}
