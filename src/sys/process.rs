//! This process and its children: clone3 into new namespaces (with a
//! pidfd), fork, exec (of this program's own file too, and what its fresh
//! image reads before it allocates: `argv[0]`, one environment variable),
//! `_exit`, signals through pidfds, the process's name and command line,
//! dropping file pages from its resident set.

use std::ffi::{CStr, c_char};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::check;
use super::signal::{empty_sigset, full_sigset, set_sigmask};

/// `CLONE_INTO_CGROUP` (linux/sched.h); libc's constant is an overflowing c_int.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Kernel `struct clone_args` (linux/sched.h), version 2 layout.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of a [`clone3`] we are on.
pub enum Forked {
    /// In the new process.
    Child,
    /// In the caller, with the child's PID and a pidfd for it.
    Parent {
        /// Host PID of the child.
        pid: libc::pid_t,
        /// pidfd of the child: signals through it can never hit a recycled PID.
        pidfd: OwnedFd,
    },
}

/// `clone3` with fork semantics (no new stack), `CLONE_PIDFD` always set,
/// `SIGCHLD` as exit signal, optionally straight into the cgroup `cgroup`.
///
/// The child is born with every signal blocked: a signal sent to it at any
/// moment after the clone (a stop right after a start) stays pending until
/// the child has set up its own handling, instead of running the caller's
/// handlers or, in a PID namespace's init, being dropped. The caller's
/// mask is restored on its side.
///
/// The caller must be single-threaded (the agent is): the child is a copy of
/// it with one thread, so it may allocate and take locks.
pub fn clone3(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    let mut old = empty_sigset();
    // SAFETY: both sets are initialised and outlive the call.
    let ret = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &full_sigset(), &mut old) };
    check(ret.into())?;
    let forked = clone3_raw(flags, cgroup);
    if !matches!(forked, Ok(Forked::Child)) {
        set_sigmask(libc::SIG_SETMASK, &old);
    }
    forked
}

fn clone3_raw(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size passed; with a zero
    // stack the child continues on a copy of this stack like fork(2), and
    // `pidfd` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match check(ret)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as libc::pid_t,
            // SAFETY: the kernel stored a new, owned pidfd for the child.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// Sends `sig` to the process behind `pidfd`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd with a null siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// `fork(2)`. The caller must be single-threaded (the agent and the zone's
/// init are), so the child may run arbitrary code.
pub fn fork() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: callers are single-threaded (see above), so no lock can be
    // held by a thread that does not exist in the child.
    unsafe { nix::unistd::fork() }
}

/// `execve(path, argv, envp)`; returns only on failure.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    // SAFETY: callers pass NUL-terminated arrays of pointers to C strings
    // that live until the call (see `zone::command::command`).
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `_exit(code)`: leaves a forked child without running the parent's
/// destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Names this process: `comm` becomes `comm` (cut to 15 bytes by the
/// kernel) and its command line (what `/proc/PID/cmdline` and `ps` show)
/// the NUL-separated words in `args`, which must end with a NUL and should
/// stay in place as long as the process shows them (the kernel reads them
/// from this process's memory whenever asked). A fork of the agent would
/// otherwise show the agent's own command line, config path included.
///
/// Allocates nothing. The command line moves with `PR_SET_MM_MAP` (no
/// capability needed; the kernel needs `CONFIG_CHECKPOINT_RESTORE`), which
/// takes the whole memory map: the rest is read back from
/// `/proc/self/stat` unchanged.
pub fn set_process_name(args: &[u8], comm: &CStr) -> io::Result<()> {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    let ret = unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr(), 0, 0, 0) };
    check(ret.into())?;
    if args.last() != Some(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = [0u8; 1024];
    let stat = {
        let fd = nix::fcntl::open(
            c"/proc/self/stat",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let n = nix::unistd::read(&fd, &mut buf)?;
        &buf[..n]
    };
    let mm = MmFields::parse(stat).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: sbrk(0) only reads the current program break.
    let brk = unsafe { libc::sbrk(0) } as u64;
    let start = args.as_ptr() as u64;
    let map = PrctlMmMap {
        start_code: mm.start_code,
        end_code: mm.end_code,
        start_data: mm.start_data,
        end_data: mm.end_data,
        start_brk: mm.start_brk,
        brk,
        start_stack: mm.start_stack,
        arg_start: start,
        arg_end: start + args.len() as u64,
        env_start: mm.env_start,
        env_end: mm.env_end,
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
    };
    // SAFETY: a valid prctl_mm_map of the size passed, read by the kernel
    // during the call; every field but the command line is the current
    // value, and the kernel checks them all.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP,
            &map as *const PrctlMmMap,
            std::mem::size_of::<PrctlMmMap>(),
            0,
        )
    };
    check(ret.into()).map(drop)
}

/// Kernel `struct prctl_mm_map` (linux/prctl.h).
#[repr(C)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// The memory-map fields of `/proc/PID/stat` that `PR_SET_MM_MAP` needs.
#[derive(Debug, PartialEq, Eq)]
struct MmFields {
    start_code: u64,
    end_code: u64,
    start_stack: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    env_start: u64,
    env_end: u64,
}

impl MmFields {
    /// Parses a `/proc/PID/stat` line (proc(5): fields 26-28 and 45-51).
    fn parse(stat: &[u8]) -> Option<MmFields> {
        // The name (field 2) may hold spaces and parentheses: fields are
        // counted from the last `)`.
        let close = stat.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
        // Field 3 (the state letter) is the first word after the name.
        let mut words = [""; 52];
        for (i, word) in rest.split_ascii_whitespace().enumerate() {
            if let Some(slot) = words.get_mut(i + 3) {
                *slot = word;
            }
        }
        let f = |n: usize| words.get(n).and_then(|w| w.parse::<u64>().ok());
        Some(MmFields {
            start_code: f(26)?,
            end_code: f(27)?,
            start_stack: f(28)?,
            start_data: f(45)?,
            end_data: f(46)?,
            start_brk: f(47)?,
            env_start: f(50)?,
            env_end: f(51)?,
        })
    }
}

/// Drops this process's page-table entries for the address ranges
/// `(start, len)` (`MADV_DONTNEED`), so their pages stop counting in its
/// resident set until touched again. Only for private file mappings that
/// are not writable and hold no private copy of any page (see
/// `vmm::memory`): their contents come back unchanged from the file on the
/// next access, so nothing is lost.
pub fn release_file_pages(ranges: &[(usize, usize)]) -> io::Result<()> {
    for &(start, len) in ranges {
        // SAFETY: by the contract above the range is a read-only private
        // file mapping with no private (modified) page: dropping its PTEs
        // cannot change what any access reads, and no Rust object owns
        // the mapping's memory as mutable.
        let ret = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        check(ret.into())?;
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_memory_fields_are_found_after_a_name_with_spaces_and_parens() {
        let mut line = String::from("42 (a b) c) S");
        // Fields 4..=52: field n holds n * 10.
        for n in 4..=52 {
            line.push_str(&format!(" {}", n * 10));
        }
        let mm = MmFields::parse(line.as_bytes()).unwrap();
        assert_eq!(
            mm,
            MmFields {
                start_code: 260,
                end_code: 270,
                start_stack: 280,
                start_data: 450,
                end_data: 460,
                start_brk: 470,
                env_start: 500,
                env_end: 510,
            }
        );
    }

    #[test]
    fn this_process_stat_has_its_memory_fields() {
        let stat = std::fs::read("/proc/self/stat").unwrap();
        let mm = MmFields::parse(&stat).unwrap();
        assert!(
            mm.start_code < mm.end_code && mm.env_start < mm.env_end,
            "{mm:?}"
        );
    }

    #[test]
    fn a_short_stat_line_is_refused() {
        assert_eq!(MmFields::parse(b"1 (x) S 1 2 3"), None);
    }
}
