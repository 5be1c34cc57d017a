//! File descriptors: close-on-exec pipes, the fds a child inherits
//! (placed at fixed numbers, everything else closed), flags.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use super::check;

/// Creates a pipe with both ends close-on-exec; returns (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Takes ownership of `fd`, a descriptor this process inherited and was
/// told about on its command line (never one of stdio, 0 to 2), and makes
/// it close-on-exec. Fails if `fd` is not open. The caller takes each
/// number at most once, before opening anything itself.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags; an
    // fd that is not open fails with EBADF and touches nothing.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) }.into())?;
    let flags = flags as libc::c_int | libc::FD_CLOEXEC;
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, flags) };
    check(ret.into())?;
    // SAFETY: the fd is open (checked above) and, by the caller's contract,
    // inherited and owned by nothing else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of the fd a library gives up through `IntoRawFd` (an
/// eventfd of vmm-sys-util, which has no `OwnedFd` conversion).
pub fn own(fd: impl IntoRawFd) -> OwnedFd {
    // SAFETY: `into_raw_fd` hands the fd over: nothing else owns or will
    // close it.
    unsafe { OwnedFd::from_raw_fd(fd.into_raw_fd()) }
}

/// In a freshly forked child about to exec: puts `fds` at 3, 4, ... in
/// order (without close-on-exec) and closes every other fd from 3 up.
/// Each is first copied above the target range, so a source that already
/// sits on a target number is never overwritten before it is placed.
pub fn place_inherited_fds(fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let n = RawFd::try_from(fds.len()).map_err(|_| io::Error::from_raw_os_error(libc::EMFILE))?;
    let mut high = [0 as RawFd; 16];
    if fds.len() > high.len() {
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    for (slot, fd) in high.iter_mut().zip(fds) {
        // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no
        // memory; the copy is owned by this child until it execs.
        let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3 + n) };
        *slot = check(ret.into())? as RawFd;
    }
    for (i, &src) in high.iter().take(fds.len()).enumerate() {
        // SAFETY: dup2 onto 3 + i, a number this child reserved for the
        // monitor; whatever was there is closed below anyway.
        let ret = unsafe { libc::dup2(src, 3 + i as RawFd) };
        check(ret.into())?;
    }
    close_fds_from(3 + n, &[])
}

/// Closes every fd from `first` up, except those in `keep` (sorted or not).
/// Allocates nothing: it runs in the zone's init, whose heap pages are
/// shared copy-on-write with the agent.
pub fn close_fds_from(first: RawFd, keep: &[RawFd]) -> io::Result<()> {
    let mut lo = first;
    // The lowest kept fd at or above `lo`, each round; `keep` is a few fds.
    while let Some(k) = keep.iter().copied().filter(|&k| k >= lo).min() {
        if k > lo {
            close_range(lo, k - 1)?;
        }
        match k.checked_add(1) {
            Some(next) => lo = next,
            None => return Ok(()),
        }
    }
    close_range(lo, RawFd::MAX)
}

fn close_range(first: RawFd, last: RawFd) -> io::Result<()> {
    // SAFETY: closing fds has no memory-safety effect on this process's
    // Rust objects because it runs only in a freshly forked child that is
    // about to exec or exit and owns no fd-holding objects it will use.
    let ret = unsafe { libc::close_range(first as libc::c_uint, last as libc::c_uint, 0) };
    check(ret.into()).map(drop)
}

/// Clears close-on-exec on `fd`, so the program it execs inherits it.
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
        .map(drop)
        .map_err(io::Error::from)
}

/// In a child about to exec: makes `target` a copy of `fd` (without
/// close-on-exec), closing what was there.
pub fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 creates a descriptor and touches no memory; whatever
    // `target` was is closed by the kernel, and the caller owns no Rust
    // object for that number any more (its contract).
    let ret = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    check(ret.into()).map(drop)
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))
        .map(drop)
        .map_err(io::Error::from)
}
