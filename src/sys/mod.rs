//! The thin syscall layer: the few calls that neither `nix` nor `std` wrap,
//! with all of their `unsafe` in a few modules, one per syscall family.
//! Callers name the family (`sys::mount::move_mount`).
//!
//! Invariant: every wrapper of a call that can fail turns a `-1` return
//! into `io::Error` through [`check`]; the exceptions are the few signal
//! calls that cannot fail with the arguments they pass (see [`signal`]).
//! Nothing here decides anything.

use std::io;

pub mod bare;
pub mod caps;
pub mod fd;
pub mod kernel;
pub mod mount;
pub mod net;
pub mod process;
pub mod signal;
pub mod socket;
pub mod tty;

/// Turns a `-1` return into the thread's `errno` as an `io::Error`.
pub fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An error that says the system is short of something for now (fds,
/// memory, processes) rather than that the operation can never succeed.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::ENOBUFS)
    )
}
