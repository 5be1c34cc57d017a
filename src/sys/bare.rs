//! System calls without the C library, and zonit's entry point.
//!
//! A zone's init executes zonit's file again to shed the agent's memory
//! (`zone::init`). Started the usual way, that image would first run the
//! C library's and Rust's start-up: on a virtual machine the C library
//! alone spends a few hundred microseconds there (it asks the CPU about
//! its caches many times, and each question traps to the hypervisor), and
//! it writes pages the init then keeps. So the binary's entry point is
//! [`zonit_entry`] (set for the `zonit` binary by `build.rs`): it looks at
//! the initial stack and, for a re-executed init, runs
//! `zone::init::bare_init` on it directly; anything else goes on to the C
//! library's `_start` with the stack and registers untouched.
//!
//! Code reached from the entry runs before the C library exists: no
//! thread-local storage (so no `errno`), no allocation, and no call into
//! the C library at all, not even `memcpy`, whose address the C library
//! only fills in at start-up. Everything it needs is here: each call is
//! one `syscall` instruction, returning the kernel's value (a negative
//! errno on failure).

// The entry: `rsp` points at argc, then argv, NULL, envp, NULL, auxv;
// `rdx` holds a function for `atexit` (zero from the kernel), which
// `_start` expects to find. Both are kept in callee-saved registers
// across the call, which returns only when this is not a re-executed init.
use std::mem::MaybeUninit;

std::arch::global_asm!(
    ".globl zonit_entry",
    ".type zonit_entry, @function",
    "zonit_entry:",
    "mov r12, rsp",
    "mov r13, rdx",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {init}",
    "mov rsp, r12",
    "mov rdx, r13",
    "jmp _start",
    init = sym entry,
);

/// Called by `zonit_entry` with the initial stack; returns unless this
/// process is a zone's re-executed init.
///
/// # Safety
/// `sp` is the initial process stack as the kernel laid it out.
unsafe extern "C" fn entry(sp: *const usize) {
    // SAFETY: the kernel's layout: argc, then argc pointers, NULL, then the
    // environment's pointers up to a NULL.
    let (argv, envp) = unsafe {
        let argc = *sp;
        let argv = sp.add(1).cast::<*const u8>();
        (argv, argv.add(argc + 1))
    };
    crate::zone::init::bare_init(Args { argv, envp });
}

/// The initial stack's argument and environment vectors.
#[derive(Clone, Copy)]
pub struct Args {
    argv: *const *const u8,
    envp: *const *const u8,
}

impl Args {
    /// `argv[i]`, if there is one.
    pub fn arg(&self, i: usize) -> Option<&'static [u8]> {
        // SAFETY: argv is NULL-terminated; reading stops at the NULL.
        unsafe {
            for j in 0..=i {
                if (*self.argv.add(j)).is_null() {
                    return None;
                }
            }
            Some(c_bytes(*self.argv.add(i)))
        }
    }

    /// The value of the environment variable `name` (given with its `=`).
    pub fn env(&self, name_eq: &[u8]) -> Option<&'static [u8]> {
        let mut i = 0;
        loop {
            // SAFETY: envp is NULL-terminated; reading stops at the NULL.
            let p = unsafe { *self.envp.add(i) };
            if p.is_null() {
                return None;
            }
            // SAFETY: every entry is a NUL-terminated string on the stack.
            let var = unsafe { c_bytes(p) };
            if let Some(value) = strip_prefix(var, name_eq) {
                return Some(value);
            }
            i += 1;
        }
    }
}

/// The bytes of a C string, without its NUL.
///
/// # Safety
/// `p` points at a NUL-terminated string that lives as long as the process.
unsafe fn c_bytes(p: *const u8) -> &'static [u8] {
    // Scanned here: `CStr::from_ptr` calls the C library's `strlen`.
    let mut len = 0;
    // SAFETY: by the caller's contract, every byte up to the NUL is
    // readable.
    while unsafe { std::ptr::read_volatile(p.add(len)) } != 0 {
        len += 1;
    }
    // SAFETY: those `len` bytes, which live as long as the process.
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// `s` without `prefix`, compared byte by byte (a slice comparison could
/// become a call to `memcmp`).
pub fn strip_prefix<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() < prefix.len() {
        return None;
    }
    let mut i = 0;
    while i < prefix.len() {
        // SAFETY: i < prefix.len() <= s.len(); volatile keeps the loop a
        // loop.
        let (a, b) = unsafe {
            (
                std::ptr::read_volatile(s.as_ptr().add(i)),
                std::ptr::read_volatile(prefix.as_ptr().add(i)),
            )
        };
        if a != b {
            return None;
        }
        i += 1;
    }
    s.get(prefix.len()..)
}

#[inline(always)]
fn syscall1(n: libc::c_long, a: usize) -> isize {
    let ret: isize;
    // SAFETY: a system call with one argument; the callers below pass the
    // arguments each call expects.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
fn syscall2(n: libc::c_long, a: usize, b: usize) -> isize {
    let ret: isize;
    // SAFETY: as `syscall1`, two arguments.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
fn syscall4(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: as `syscall1`, four arguments.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
            in("rdx") c, in("r10") d, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
fn syscall6(n: libc::c_long, args: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: as `syscall1`, six arguments.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") n as isize => ret,
            in("rdi") args[0], in("rsi") args[1], in("rdx") args[2],
            in("r10") args[3], in("r8") args[4], in("r9") args[5],
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// Reads `fd` until end of file, an error, or `buf` is full; returns the
/// bytes read. `buf` may be uninitialised: nothing zeroes it (zeroing
/// could be a call to `memset`).
pub fn read_to_end(fd: i32, buf: &mut [MaybeUninit<u8>]) -> &[u8] {
    let mut len = 0;
    while len < buf.len() {
        let rest = &mut buf[len..];
        let n = syscall6(
            libc::SYS_read,
            [fd as usize, rest.as_mut_ptr() as usize, rest.len(), 0, 0, 0],
        );
        match n {
            n if n > 0 => len += n as usize,
            n if n == -(libc::EINTR as isize) => {}
            _ => break,
        }
    }
    // SAFETY: the kernel wrote the first `len` bytes.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), len) }
}

/// The bytes of `space`, uninitialised: stack space a caller declares as
/// `MaybeUninit::<[u8; N]>::uninit()` and nothing fills in (an array of
/// `MaybeUninit::uninit()` is filled with `memset` in a debug build).
pub fn uninit_bytes<const N: usize>(space: &mut MaybeUninit<[u8; N]>) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<[u8; N]>` and `[MaybeUninit<u8>; N]` have the
    // same layout, and every byte of the latter may be uninitialised.
    unsafe { std::slice::from_raw_parts_mut(space.as_mut_ptr().cast(), N) }
}

/// Builds a short message in a caller's (uninitialised) buffer, byte by
/// byte; what does not fit is dropped.
pub struct Writer<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    len: usize,
}

impl<'a> Writer<'a> {
    /// An empty message in `buf`.
    pub fn new(buf: &'a mut [MaybeUninit<u8>]) -> Writer<'a> {
        Writer { buf, len: 0 }
    }

    /// Appends one byte.
    pub fn byte(&mut self, b: u8) -> &mut Self {
        if let Some(slot) = self.buf.get_mut(self.len) {
            slot.write(b);
            self.len += 1;
        }
        self
    }

    /// Appends `bytes`.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let mut i = 0;
        while i < bytes.len() {
            // SAFETY: i < bytes.len(); volatile keeps this a loop, not a
            // call to `memcpy`.
            self.byte(unsafe { std::ptr::read_volatile(bytes.as_ptr().add(i)) });
            i += 1;
        }
        self
    }

    /// Appends `n` in decimal.
    pub fn decimal(&mut self, n: i32) -> &mut Self {
        if n < 0 {
            self.byte(b'-');
        }
        let n = n.unsigned_abs();
        // Highest power of ten first: no digit buffer to fill.
        let mut p = 1u32;
        while p <= n / 10 {
            p *= 10;
        }
        loop {
            self.byte(b'0' + (n / p % 10) as u8);
            if p == 1 {
                break;
            }
            p /= 10;
        }
        self
    }

    /// The message so far.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by `byte`.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast(), self.len) }
    }

    /// The message, borrowed from the buffer rather than the writer.
    pub fn into_bytes(self) -> &'a [u8] {
        // SAFETY: as `as_bytes`.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast(), self.len) }
    }
}

/// `send(fd, bytes, MSG_NOSIGNAL)`: one datagram on the zone's channel.
pub fn send(fd: i32, bytes: &[u8]) -> isize {
    syscall6(
        libc::SYS_sendto,
        [
            fd as usize,
            bytes.as_ptr() as usize,
            bytes.len(),
            libc::MSG_NOSIGNAL as usize,
            0,
            0,
        ],
    )
}

/// `close(fd)`.
pub fn close(fd: i32) -> isize {
    syscall1(libc::SYS_close, fd as usize)
}

/// Sets close-on-exec on `fd` (`fcntl(F_SETFD)`); zero or a negative
/// errno (`EBADF` for an fd that is not open).
pub fn set_cloexec(fd: i32) -> isize {
    syscall4(
        libc::SYS_fcntl,
        fd as usize,
        libc::F_SETFD as usize,
        libc::FD_CLOEXEC as usize,
        0,
    )
}

/// `prctl(option, arg)`.
pub fn prctl(option: libc::c_int, arg: usize) -> isize {
    syscall2(libc::SYS_prctl, option as usize, arg)
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: i32) -> isize {
    syscall2(libc::SYS_kill, pid as usize, sig as usize)
}

/// Waits for any signal (all of them must be blocked); returns its number
/// or a negative errno.
pub fn wait_any_signal() -> isize {
    let all: u64 = !0;
    syscall4(
        libc::SYS_rt_sigtimedwait,
        &all as *const u64 as usize,
        0,
        0,
        std::mem::size_of::<u64>(),
    )
}

/// `wait4(-1, &status, WNOHANG)`: `(pid, status)`; pid 0 when no child
/// has changed state, negative (an errno) when there is none.
pub fn reap_one() -> (isize, i32) {
    let mut status: i32 = 0;
    let pid = syscall4(
        libc::SYS_wait4,
        -1isize as usize,
        &mut status as *mut i32 as usize,
        libc::WNOHANG as usize,
        0,
    );
    (pid, status)
}

/// `exit_group(code)`.
pub fn exit(code: i32) -> ! {
    loop {
        syscall1(libc::SYS_exit_group, code as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_compares_every_byte() {
        assert_eq!(
            strip_prefix(b"ZONIT_INIT=1,2", b"ZONIT_INIT="),
            Some(&b"1,2"[..])
        );
        assert_eq!(strip_prefix(b"ZONIT_INIT=", b"ZONIT_INIT="), Some(&b""[..]));
        assert_eq!(strip_prefix(b"ZONIT_INIX=1", b"ZONIT_INIT="), None);
        assert_eq!(strip_prefix(b"ZONIT", b"ZONIT_INIT="), None);
    }

    #[test]
    fn raw_calls_return_the_kernels_values() {
        assert_eq!(close(-1), -(libc::EBADF as isize));
        assert_eq!(set_cloexec(-1), -(libc::EBADF as isize));
        let (pid, _) = reap_one();
        assert!(pid <= 0);
        let (rx, tx) = crate::sys::fd::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let w = syscall6(
            libc::SYS_write,
            [tx.as_raw_fd() as usize, b"hi".as_ptr() as usize, 2, 0, 0, 0],
        );
        assert_eq!(w, 2);
        drop(tx);
        let mut buf = [MaybeUninit::uninit(); 4];
        assert_eq!(read_to_end(rx.as_raw_fd(), &mut buf), b"hi");
    }

    #[test]
    fn the_writer_builds_messages_and_drops_what_does_not_fit() {
        let mut buf = [MaybeUninit::uninit(); 16];
        let mut w = Writer::new(&mut buf);
        w.bytes(b"exit ").decimal(0);
        assert_eq!(w.as_bytes(), b"exit 0");
        let mut w = Writer::new(&mut buf);
        w.bytes(b"x").decimal(-2147483648);
        assert_eq!(w.as_bytes(), b"x-2147483648");
        let mut small = [MaybeUninit::uninit(); 4];
        let mut w = Writer::new(&mut small);
        w.bytes(b"signal ").decimal(9);
        assert_eq!(w.as_bytes(), b"sign");
    }
}
