//! The thin syscall layer: the few calls that neither `nix` nor `std` wrap,
//! with all of their `unsafe` in one place.
//!
//! Invariant: every wrapper of a call that can fail turns a `-1` return
//! into `io::Error` through [`check`]; the exceptions are [`set_sigmask`],
//! [`reset_signals`] and [`reset_signal_handlers`], whose calls fail only
//! for arguments they never pass (an invalid `how`, the signal numbers
//! glibc reserves). Nothing here
//! decides anything.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

pub mod exe;
pub mod tty;

/// Turns a `-1` return into the thread's `errno` as an `io::Error`.
pub fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

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

/// Resets every signal's disposition to default and unblocks all signals,
/// undoing what the agent installed before it forked us.
pub fn reset_signals() {
    reset_signal_handlers();
    set_sigmask(libc::SIG_SETMASK, &empty_sigset());
}

/// Resets every signal's disposition to default and leaves the mask as it
/// is: a child born from [`clone3`] keeps every signal blocked, so what
/// was sent to it meanwhile stays pending.
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

/// `_exit(code)`: leaves a forked child without running the parent's
/// destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call.
    unsafe { libc::_exit(code) }
}

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

/// Runs `f` with this thread in the network namespace of the process
/// behind `pidfd`, then moves it back: the sockets `f` makes belong to that
/// namespace for good. The agent is single-threaded, so nothing else runs
/// meanwhile. Failing to move back is logged as an error: this thread
/// would make its later sockets in the wrong namespace.
pub fn in_netns<T>(pidfd: BorrowedFd<'_>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use nix::sched::{CloneFlags, setns};
    let own = std::fs::File::open("/proc/thread-self/ns/net")?;
    setns(pidfd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let out = f();
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWNET) {
        log::error!("unable to return to the agent's own network namespace: {e}");
        return Err(e.into());
    }
    out
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

/// `fork(2)`. The caller must be single-threaded (the agent and the zone's
/// init are), so the child may run arbitrary code.
pub fn fork() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: callers are single-threaded (see above), so no lock can be
    // held by a thread that does not exist in the child.
    unsafe { nix::unistd::fork() }
}

/// Sets `IFF_UP` on the interface `name` (used for `lo` in new network
/// namespaces and at host boot).
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills `req`, which is a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }.into())?;
    // SAFETY: the flags member is the active one after SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }.into())?;
    Ok(())
}

/// An error that says the system is short of something for now (fds,
/// memory, processes) rather than that the operation can never succeed.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::ENOBUFS)
    )
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

/// Size of the virtio-net header the tap reads and writes before each
/// frame (`virtio_net_hdr_v1`).
pub const TAP_VNET_HDR_LEN: libc::c_int = 12;

/// Creates (or attaches to) the tap `name` for a guest's network card and
/// returns its fd (close-on-exec) with the name the kernel gave it: no
/// packet-info prefix, a 12-byte virtio-net header before every frame, no
/// offloads. Needs CAP_NET_ADMIN in the current network namespace. The
/// link is not brought up or put on a bridge here.
pub fn open_tap(name: &str) -> io::Result<(OwnedFd, String)> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let fd = tun.as_raw_fd();
    // SAFETY: TUNSETIFF reads and fills `req`, a valid ifreq.
    check(unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) }.into())?;
    let hdr = TAP_VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    check(unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr) }.into())?;
    // SAFETY: TUNSETOFFLOAD takes its flags by value; 0 turns every
    // offload off, so frames cross whole and checksummed.
    check(unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) }.into())?;
    let given: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((
        OwnedFd::from(tun),
        String::from_utf8_lossy(&given).into_owned(),
    ))
}

/// Most fds the kernel passes in one message (`SCM_MAX_FD`); the receive
/// buffer has room for all of them, so none is ever left in flight.
const SCM_MAX_FD: usize = 253;

/// What one [`recv_with_fds`] brought.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer (0 at end of stream).
    pub bytes: usize,
    /// Every fd passed with them (close-on-exec), owned: dropping closes.
    pub fds: Vec<OwnedFd>,
    /// The kernel cut the ancillary data (`MSG_CTRUNC`): more was sent
    /// than fits, and the fds that did not fit are lost.
    pub truncated: bool,
}

/// `recvmsg` into `buf`, non-blocking, taking every passed fd
/// (close-on-exec) whatever their number, so that none can leak.
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    const SPACE: usize = SCM_MAX_FD * std::mem::size_of::<RawFd>() + 64;
    // u64 elements: cmsghdr alignment.
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at one iovec over `buf` and at `control`, both
    // live and writable for the call.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    let bytes = check(n as libc::c_long)? as usize;
    let mut fds = Vec::new();
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within
    // msg_controllen, which the kernel set to what it wrote.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is a header inside the control buffer (see above).
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(head) / std::mem::size_of::<RawFd>();
            // SAFETY: the data of an SCM_RIGHTS header holds `count` fds.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: i < count, inside the header's data; the data may
                // be unaligned.
                let raw = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel installed `raw` in our fd table for
                // this message; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        bytes,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Sends `data` with `fds` attached (SCM_RIGHTS).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [io::IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(io::Error::from)
}

/// `open_tree(fd, "", OPEN_TREE_CLONE | AT_EMPTY_PATH)`: a detached copy of
/// the mount at `fd` (an `O_PATH` fd of any file or directory), like the
/// source of a bind mount; with `recursive`, its submounts too.
pub fn open_tree_clone(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH; integer flags.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    let fd = check(ret)?;
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Kernel `struct mount_attr` (linux/mount.h), version 0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set: set})`: adds mount
/// attributes (`MOUNT_ATTR_RDONLY`, `_NOSUID`, `_NODEV`, `_NOEXEC`) to the
/// mount at `fd` (and below it with `recursive`) without clearing any.
pub fn mount_setattr(fd: BorrowedFd<'_>, set: u64, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: an empty NUL-terminated path and a valid mount_attr of the
    // size passed; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// `move_mount(from, "", to, "", F_EMPTY_PATH | T_EMPTY_PATH)`: attaches the
/// (detached) mount `from` on top of the file or directory `to`, both by fd,
/// so no path is resolved between checking the target and mounting on it.
pub fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: empty NUL-terminated paths with the EMPTY_PATH flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    check(ret).map(drop)
}

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

/// `sync(2)`: flush every file system's dirty data.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// A non-blocking, close-on-exec `AF_PACKET` datagram socket that hears
/// the IPv4 packets of interface `ifindex` that the classic BPF program
/// `filter` accepts (it sees each packet from its IP header on). The
/// filter is in place before the socket is bound, so no packet reaches
/// it unfiltered.
pub fn packet_socket(ifindex: u32, filter: &[libc::sock_filter]) -> io::Result<OwnedFd> {
    let ty = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2); protocol 0 hears nothing until bound.
    let fd = unsafe { libc::socket(libc::AF_PACKET, ty, 0) };
    check(fd.into())?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at `filter`, alive for the call; the kernel
    // copies the program.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    check(ret.into())?;
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex =
        i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: addr is a valid sockaddr_ll of the size passed.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check(ret.into())?;
    Ok(fd)
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
