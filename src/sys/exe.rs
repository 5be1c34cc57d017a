//! This program's own executable, run again: how a zone's init trades
//! the agent's address space for a fresh one (`zone::init`), and what that
//! fresh image reads before it has allocated anything.

use std::ffi::{CStr, c_char};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// An `O_PATH`, close-on-exec fd of this process's executable, opened on
/// first use and kept: a child cloned after that inherits it and can run
/// the same file whatever its mount namespace and root have become since.
pub fn self_exe() -> io::Result<BorrowedFd<'static>> {
    static EXE: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = EXE.get() {
        return Ok(fd.as_fd());
    }
    let fd = nix::fcntl::open(
        c"/proc/self/exe",
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(EXE.get_or_init(|| fd).as_fd())
}

/// `execveat(exe, "", argv, envp, AT_EMPTY_PATH)`: runs the file behind
/// `exe`; returns only on failure.
pub fn execveat(exe: BorrowedFd<'_>, argv: &[*const c_char], envp: &[*const c_char]) -> io::Error {
    // SAFETY: the caller passes NUL-terminated arrays of pointers to C
    // strings that live until the call; the path is an empty C string.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

unsafe extern "C" {
    /// glibc's copy of `argv[0]`, set before `main`.
    static program_invocation_name: *const c_char;
}

/// `argv[0]` of this process, read in place (no allocation).
pub fn program_name() -> &'static CStr {
    // SAFETY: glibc sets the pointer to argv[0] (a C string that lives as
    // long as the process) before any Rust code runs, and nothing in zonit
    // writes it.
    let p = unsafe { program_invocation_name };
    if p.is_null() {
        return c"";
    }
    // SAFETY: non-null, NUL-terminated, never freed (see above).
    unsafe { CStr::from_ptr(p) }
}

/// The value of the environment variable `name`, read in place (no
/// allocation). Meant for the start of `main`, before anything could
/// change the environment.
pub fn env_var(name: &CStr) -> Option<&'static CStr> {
    // SAFETY: getenv reads the environment; zonit never calls setenv or
    // putenv, so the returned string stays valid and unchanged.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated, part of the environment block.
    Some(unsafe { CStr::from_ptr(p) })
}
