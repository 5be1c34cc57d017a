//! Signal dispositions, masks and sets, and waiting for a blocked signal.
//!
//! [`set_sigmask`], [`reset_signals`] and [`reset_signal_handlers`] return
//! nothing: their calls fail only for arguments they never pass (an
//! invalid `how`, the signal numbers glibc reserves).

use std::io;

use super::check;

/// Resets every signal's disposition to default and unblocks all signals,
/// undoing what the agent installed before it forked us.
pub fn reset_signals() {
    reset_signal_handlers();
    set_sigmask(libc::SIG_SETMASK, &empty_sigset());
}

/// Resets every signal's disposition to default and leaves the mask as it
/// is: a child born from [`clone3`](super::process::clone3) keeps every
/// signal blocked, so what was sent to it meanwhile stays pending.
pub fn reset_signal_handlers() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting SIG_DFL is always valid; errors for invalid
        // numbers (32, 33 taken by glibc) are ignored on purpose.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// An empty signal set.
pub fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// A signal set holding `signals`; invalid numbers are left out.
pub fn sigset_of(signals: &[i32]) -> libc::sigset_t {
    let mut set = empty_sigset();
    for &sig in signals {
        // SAFETY: `set` is an initialised sigset; an invalid `sig` makes
        // sigaddset fail with EINVAL and change nothing.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// A signal set with every signal.
pub fn full_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// `sigprocmask(how, set)`; cannot fail with valid arguments.
pub fn set_sigmask(how: libc::c_int, set: &libc::sigset_t) {
    // SAFETY: `set` is an initialised sigset; the old mask is not wanted.
    unsafe { libc::sigprocmask(how, set, std::ptr::null_mut()) };
}

/// Waits for a signal in `set` (which must be blocked); returns its number.
pub fn sigwait(set: &libc::sigset_t) -> io::Result<i32> {
    // SAFETY: `set` is initialised; siginfo is not wanted.
    let ret = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
    check(ret.into()).map(|s| s as i32)
}

/// Waits up to `timeout` for a signal in `set` (which must be blocked);
/// `Ok(None)` when the time ran out.
pub fn sigtimedwait(set: &libc::sigset_t, timeout: std::time::Duration) -> io::Result<Option<i32>> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` and `ts` are initialised and outlive the call; siginfo
    // is not wanted.
    let ret = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    match check(ret.into()) {
        Ok(sig) => Ok(Some(sig as i32)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}
