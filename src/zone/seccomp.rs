//! The seccomp filter every zone command runs under: it
//! refuses the calls that manage the *host* rather than the zone.
//!
//! The filter is a deny list, not Docker's allow list: a zone already runs
//! without most capabilities, in its own namespaces, so what is left to
//! close is the kernel surface a capability does not guard (keyrings,
//! `unshare(CLONE_NEWUSER)`, io_uring, `TIOCSTI`, vsock) and, as a second
//! wall, the host-global calls a capability does guard (modules, kexec,
//! reboot, swap, the clock, mounts) in case a zone is configured to keep
//! that capability. Which calls and why is the table in [`refusals`];
//! `docs/security.md` explains the choices.
//!
//! Shape of the program, in order:
//! 1. a foreign architecture (`int 0x80` from a 64-bit process is i386)
//!    kills the process, since every syscall number below means something
//!    else there;
//! 2. x32 calls (number with bit 30 set) and `clone3` (whose flags sit in
//!    a struct the filter cannot read) fail with `ENOSYS`, so libc falls
//!    back to plain `clone`, whose flags it can read;
//! 3. the [`refusals`] fail with `EPERM`; everything else is allowed.
//!
//! Step 2 is a short hand-written prefix because `seccompiler` can only
//! match exact syscall numbers with one action per filter; step 3 is
//! compiled by `seccompiler` from the table.
//!
//! The program is compiled once per agent ([`program`]) and installed in
//! the command's process right before `execve`, after no_new_privs.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rule table does not compile (a bug in the table).
    #[error("unable to compile the zone seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    /// seccomp(2) or no_new_privs failed in the command's process.
    #[error("unable to install the zone seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// When a syscall in the table is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every call.
    Always,
    /// When argument `arg` has any bit of `bits` set (low 32 bits only:
    /// the kernel reads these flags as 32-bit values).
    AnyBit {
        /// Argument index (0-based).
        arg: u8,
        /// The bits.
        bits: u32,
    },
    /// When the low 32 bits of argument `arg` equal `value`. Comparing only
    /// the low half matters: the kernel truncates an `unsigned int`
    /// argument, so a full 64-bit compare is bypassed by setting a high
    /// bit (CVE-2019-10063, a TIOCSTI filter).
    Equals32 {
        /// Argument index (0-based).
        arg: u8,
        /// The value.
        value: u32,
    },
}

/// One refused syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Syscall name, for docs and errors.
    pub name: &'static str,
    /// Syscall number on this architecture.
    pub nr: i64,
    /// Which calls are refused.
    pub when: When,
}

/// Every `CLONE_NEW*` flag: creating namespaces is how a root inside gets
/// a fresh, fully capable user namespace to attack the kernel from
/// (CVE-2022-0492 went through `unshare`).
pub const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWTIME) as u32;

/// `ioctl(2)` requests that push input into a terminal or poke the
/// console: a zone sharing a terminal could type commands into the host's
/// shell (bubblewrap CVE-2017-5226).
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541C;
/// `socket(2)` family of host <-> guest sockets: a zone must not talk to
/// the host or to guests through vsock.
const AF_VSOCK: u32 = 40;

#[cfg(target_arch = "x86_64")]
const ARCH: (TargetArch, u32) = (TargetArch::x86_64, 0xC000_003E);
#[cfg(target_arch = "aarch64")]
const ARCH: (TargetArch, u32) = (TargetArch::aarch64, 0xC000_00B7);

/// Bit 30 of the syscall number marks the x32 ABI on x86_64: same
/// architecture value, different numbers, so a deny list must refuse the
/// whole range.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The refused calls. Grouped by what they would reach.
pub fn refusals() -> Vec<Refusal> {
    use When::*;
    let r = |name, nr, when| Refusal { name, nr, when };
    let mut t = vec![
        // Kernel code: modules and kexec replace or extend the host kernel.
        r("init_module", libc::SYS_init_module, Always),
        r("finit_module", libc::SYS_finit_module, Always),
        r("delete_module", libc::SYS_delete_module, Always),
        r("kexec_load", libc::SYS_kexec_load, Always),
        r("kexec_file_load", libc::SYS_kexec_file_load, Always),
        // Host power and host-global state.
        r("reboot", libc::SYS_reboot, Always),
        r("swapon", libc::SYS_swapon, Always),
        r("swapoff", libc::SYS_swapoff, Always),
        r("acct", libc::SYS_acct, Always),
        r("settimeofday", libc::SYS_settimeofday, Always),
        r("clock_settime", libc::SYS_clock_settime, Always),
        r("clock_adjtime", libc::SYS_clock_adjtime, Always),
        r("adjtimex", libc::SYS_adjtimex, Always),
        r("syslog", libc::SYS_syslog, Always),
        r("quotactl", libc::SYS_quotactl, Always),
        r("quotactl_fd", libc::SYS_quotactl_fd, Always),
        r("vhangup", libc::SYS_vhangup, Always),
        r("lookup_dcookie", libc::SYS_lookup_dcookie, Always),
        r("nfsservctl", libc::SYS_nfsservctl, Always),
        // Keyrings are not namespaced: a zone would share the host's.
        r("keyctl", libc::SYS_keyctl, Always),
        r("add_key", libc::SYS_add_key, Always),
        r("request_key", libc::SYS_request_key, Always),
        // Kernel attack surface with a record of exploits.
        r("bpf", libc::SYS_bpf, Always),
        r("perf_event_open", libc::SYS_perf_event_open, Always),
        r("userfaultfd", libc::SYS_userfaultfd, Always),
        r("io_uring_setup", libc::SYS_io_uring_setup, Always),
        r("io_uring_enter", libc::SYS_io_uring_enter, Always),
        r("io_uring_register", libc::SYS_io_uring_register, Always),
        // File handles open any inode of a file system, whatever the
        // root (the "shocker" escape).
        r("open_by_handle_at", libc::SYS_open_by_handle_at, Always),
        r("name_to_handle_at", libc::SYS_name_to_handle_at, Always),
        // Mounts: the zone's file system is set up by zonit; nothing in
        // the zone may change it, even with CAP_SYS_ADMIN kept.
        r("mount", libc::SYS_mount, Always),
        r("umount2", libc::SYS_umount2, Always),
        r("pivot_root", libc::SYS_pivot_root, Always),
        r("fsopen", libc::SYS_fsopen, Always),
        r("fsconfig", libc::SYS_fsconfig, Always),
        r("fsmount", libc::SYS_fsmount, Always),
        r("fspick", libc::SYS_fspick, Always),
        r("open_tree", libc::SYS_open_tree, Always),
        r("move_mount", libc::SYS_move_mount, Always),
        r("mount_setattr", libc::SYS_mount_setattr, Always),
        // Namespaces: joining or creating them.
        r("setns", libc::SYS_setns, Always),
    ];
    for bit in bits(NAMESPACE_FLAGS) {
        t.push(r(
            "unshare",
            libc::SYS_unshare,
            AnyBit { arg: 0, bits: bit },
        ));
        t.push(r("clone", libc::SYS_clone, AnyBit { arg: 0, bits: bit }));
    }
    for value in [TIOCSTI, TIOCLINUX] {
        t.push(r("ioctl", libc::SYS_ioctl, Equals32 { arg: 1, value }));
    }
    t.push(r(
        "socket",
        libc::SYS_socket,
        Equals32 {
            arg: 0,
            value: AF_VSOCK,
        },
    ));
    #[cfg(target_arch = "x86_64")]
    t.extend([
        // Direct port I/O reaches the host's hardware.
        r("iopl", libc::SYS_iopl, Always),
        r("ioperm", libc::SYS_ioperm, Always),
        r("uselib", libc::SYS_uselib, Always),
    ]);
    t
}

/// Each set bit of `mask` on its own.
fn bits(mask: u32) -> impl Iterator<Item = u32> {
    (0..32).map(|i| 1u32 << i).filter(move |b| mask & b != 0)
}

/// `seccompiler` rules for one table entry.
fn rule(when: When) -> Result<Option<SeccompRule>, seccompiler::BackendError> {
    let cond = |arg, mask: u32, value: u32| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(u64::from(mask)),
            u64::from(value),
        )
    };
    Ok(match when {
        When::Always => None,
        When::AnyBit { arg, bits } => Some(SeccompRule::new(vec![cond(arg, bits, bits)?])?),
        When::Equals32 { arg, value } => Some(SeccompRule::new(vec![cond(arg, u32::MAX, value)?])?),
    })
}

// Classic BPF opcodes (linux/bpf_common.h): class | op | source.
/// `BPF_LD | BPF_W | BPF_ABS` (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const BPF_JEQ_K: u16 = 0x05 | 0x10;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const BPF_JGE_K: u16 = 0x05 | 0x30;
/// `BPF_RET | BPF_K`.
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The hand-written prefix (steps 1 and 2 of the module doc). It falls
/// through to the next instruction for every call it does not decide.
fn prefix() -> Vec<sock_filter> {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JEQ_K, ARCH.1, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, enosys),
    ]);
    p.extend([
        jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, enosys),
    ]);
    p
}

/// Compiles the whole program.
pub fn build() -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for refusal in refusals() {
        let rule = rule(refusal.when).map_err(Error::Compile)?;
        let entry = rules.entry(refusal.nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), rule) {
            // An empty chain matches every call: `Always` wins.
            (_, None) => *entry = None,
            (Some(chain), Some(rule)) => chain.push(rule),
            (None, Some(_)) => {}
        }
    }
    let rules = rules
        .into_iter()
        .map(|(nr, chain)| (nr, chain.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH.0,
    )
    .map_err(Error::Compile)?;
    let body: BpfProgram = filter.try_into().map_err(Error::Compile)?;
    let mut program = prefix();
    program.extend(body);
    Ok(program)
}

/// The program, compiled on first use and kept for the agent's lifetime.
/// The agent calls this at start so a broken table fails loudly there,
/// and before each clone, so the child never compiles anything.
pub fn program() -> Result<&'static [sock_filter], &'static Error> {
    static PROGRAM: OnceLock<Result<BpfProgram, Error>> = OnceLock::new();
    PROGRAM.get_or_init(build).as_ref().map(Vec::as_slice)
}

/// Installs `program` on the calling thread (it sets no_new_privs first).
/// Called in the command's process right before `execve`.
pub fn install(program: &[sock_filter]) -> Result<(), Error> {
    seccompiler::apply_filter(program).map_err(Error::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel would answer, computed by a small classic-BPF
    /// interpreter over `struct seccomp_data`: enough of the instruction
    /// set for what the prefix and seccompiler emit.
    fn run(program: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&(nr as i32).to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = &program[pc];
            pc += 1;
            match ins.code {
                0x20 => {
                    let off = ins.k as usize;
                    acc = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
                }
                0x54 => acc &= ins.k,
                0x05 => pc += ins.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let hit = match ins.code {
                        0x15 => acc == ins.k,
                        0x25 => acc > ins.k,
                        0x35 => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += usize::from(if hit { ins.jt } else { ins.jf });
                }
                0x06 => return ins.k,
                code => panic!("interpreter lacks opcode {code:#x}"),
            }
        }
    }

    fn verdict(nr: i64, args: [u64; 6]) -> u32 {
        run(&build().unwrap(), ARCH.1, nr, args)
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn host_management_calls_are_refused_with_eperm() {
        for nr in [
            libc::SYS_finit_module,
            libc::SYS_init_module,
            libc::SYS_kexec_load,
            libc::SYS_reboot,
            libc::SYS_keyctl,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_open_by_handle_at,
            libc::SYS_io_uring_setup,
            libc::SYS_userfaultfd,
            libc::SYS_mount,
            libc::SYS_setns,
            libc::SYS_swapon,
        ] {
            assert_eq!(verdict(nr, [0; 6]), EPERM, "syscall {nr}");
        }
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_exit_group,
            libc::SYS_ptrace,
            libc::SYS_mknodat,
        ] {
            assert_eq!(verdict(nr, [0; 6]), ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn unshare_and_clone_are_refused_only_with_namespace_flags() {
        let newuser = libc::CLONE_NEWUSER as u64;
        assert_eq!(verdict(libc::SYS_unshare, [newuser, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            verdict(
                libc::SYS_unshare,
                [libc::CLONE_NEWTIME as u64, 0, 0, 0, 0, 0]
            ),
            EPERM
        );
        assert_eq!(
            verdict(libc::SYS_unshare, [libc::CLONE_FILES as u64, 0, 0, 0, 0, 0]),
            ALLOW
        );
        // A fork-like clone (what libc's fork and pthread_create use).
        let fork = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        assert_eq!(verdict(libc::SYS_clone, [fork, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            verdict(
                libc::SYS_clone,
                [fork | libc::CLONE_NEWNET as u64, 0, 0, 0, 0, 0]
            ),
            EPERM
        );
    }

    #[test]
    fn clone3_and_x32_calls_fail_with_enosys() {
        assert_eq!(verdict(libc::SYS_clone3, [0; 6]), ENOSYS);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(verdict(0x4000_0000 | libc::SYS_keyctl, [0; 6]), ENOSYS);
    }

    #[test]
    fn tiocsti_is_refused_whatever_the_high_bits() {
        for cmd in [0x5412u64, 0x1_0000_5412, 0xFFFF_FFFF_0000_5412, 0x541C] {
            assert_eq!(
                verdict(libc::SYS_ioctl, [0, cmd, 0, 0, 0, 0]),
                EPERM,
                "{cmd:#x}"
            );
        }
        assert_eq!(
            verdict(libc::SYS_ioctl, [0, libc::TCGETS, 0, 0, 0, 0]),
            ALLOW
        );
    }

    #[test]
    fn only_vsock_sockets_are_refused() {
        assert_eq!(verdict(libc::SYS_socket, [40, 1, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            verdict(libc::SYS_socket, [1 << 32 | 40, 1, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            verdict(libc::SYS_socket, [libc::AF_INET as u64, 1, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            verdict(libc::SYS_socket, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]),
            ALLOW
        );
    }

    #[test]
    fn a_foreign_architecture_is_killed() {
        // AUDIT_ARCH_I386: `int 0x80` from a 64-bit process.
        let v = run(&build().unwrap(), 0x4000_0003, libc::SYS_read, [0; 6]);
        assert_eq!(v, libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn program_is_built_once() {
        let a = program().unwrap().as_ptr();
        let b = program().unwrap().as_ptr();
        assert_eq!(a, b);
    }
}
