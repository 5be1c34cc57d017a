//! Per-thread seccomp filters: the syscalls each monitor thread may make
//! once the guest runs, built with `seccompiler`. Anything else kills the
//! whole monitor with SIGSYS, which the agent reports as a *crash*.
//!
//! Owns: the allow-lists of the vCPU threads and the main thread.
//! Invariants: neither list allows opening files, creating sockets or
//! processes, changing credentials or namespaces, or mapping executable
//! memory; a vCPU thread's only ioctls are `KVM_RUN` and the register reads
//! used to log a crash; filters are installed per thread (no TSYNC), each
//! by its own thread before the guest's first instruction.

use std::collections::BTreeMap;

use crate::vmm::devices::Syscalls;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = ioc_read(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
pub const KVM_GET_SREGS: u64 = ioc_read(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

const fn ioc_read(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules do not compile (a bug in this module).
    #[error("cannot build the {thread} seccomp filter")]
    Build {
        /// Which thread's filter.
        thread: &'static str,
        /// Cause.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install a seccomp filter")]
    Apply(#[source] seccompiler::Error),
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// mmap/mprotect only without PROT_EXEC: a compromised monitor cannot make
/// new code.
fn allow_memory(rules: &mut Rules) -> Result<(), seccompiler::BackendError> {
    let no_exec = || -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        Ok(vec![SeccompRule::new(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    rules.insert(libc::SYS_mmap, no_exec()?);
    rules.insert(libc::SYS_mprotect, no_exec()?);
    allow(
        rules,
        &[
            libc::SYS_munmap,
            libc::SYS_brk,
            libc::SYS_madvise,
            libc::SYS_mremap,
        ],
    );
    Ok(())
}

/// What every thread needs: locks, memory, output, signal returns.
fn common_rules() -> Result<Rules, seccompiler::BackendError> {
    let mut rules = Rules::new();
    allow(
        &mut rules,
        &[
            libc::SYS_write,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
            libc::SYS_exit,
        ],
    );
    allow_memory(&mut rules)?;
    Ok(rules)
}

fn compile(thread: &'static str, rules: Rules) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { thread, source };
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// The filter of a vCPU thread: run the vCPU, drive devices (eventfd and
/// console writes), log; plus what each present device needs to serve its
/// queues on the notifying vCPU (`devices`, each named for its device).
pub fn vcpu_filter(devices: &[Syscalls]) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        thread: "vCPU",
        source,
    };
    let mut rules = common_rules().map_err(build)?;
    let ioctl = [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]
        .iter()
        .map(|&cmd| SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, cmd)?]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(build)?;
    rules.insert(libc::SYS_ioctl, ioctl);
    for needs in devices {
        log::debug!(
            "seccomp: vCPU threads may make syscalls {:?} for {}",
            needs.list,
            needs.device
        );
        allow(&mut rules, needs.list);
    }
    compile("vCPU", rules)
}

/// The filter of a device's own worker thread (a network card's receive
/// side): what every thread may do, plus what the device names.
pub fn worker_filter(device: &Syscalls) -> Result<BpfProgram, SeccompError> {
    let mut rules = common_rules().map_err(|source| SeccompError::Build {
        thread: "device worker",
        source,
    })?;
    log::debug!(
        "seccomp: the {} worker may make syscalls {:?}",
        device.device,
        device.list
    );
    allow(&mut rules, device.list);
    compile("device worker", rules)
}

/// The filter of the main thread: wait for signals and the guest's end,
/// press the stop button, exit.
pub fn main_filter() -> Result<BpfProgram, SeccompError> {
    let mut rules = common_rules().map_err(|source| SeccompError::Build {
        thread: "main",
        source,
    })?;
    allow(
        &mut rules,
        &[
            libc::SYS_read,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_exit_group,
        ],
    );
    compile("main", rules)
}

/// Installs `filter` on the calling thread only.
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // From <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn filters_compile() {
        assert!(!vcpu_filter(&[]).unwrap().is_empty());
        assert!(!main_filter().unwrap().is_empty());
        let net = crate::vmm::devices::net::WORKER_SYSCALLS;
        assert!(!worker_filter(&net).unwrap().is_empty());
    }
}
