//! `zonit vmm`: the per-guest virtual machine monitor, one process per
//! guest, started by the agent.
//!
//! The order of a monitor's life: parse the command line (`options`),
//! build the guest before confinement (`builder`), confine the process,
//! start the vCPU threads under their seccomp filters and wait for the
//! guest's end or a stop request (`run`); exit with the end contract's
//! status (`end`). The contract is documented for the agent in
//! `docs/vmm.md`.
//!
//! Invariants: the guest's first instruction runs only after the process is
//! confined and every thread's seccomp filter is in place; the monitor
//! exits with exactly one [`GuestEnd`] status, the first end the guest
//! reached; guest console output goes to stdout, the monitor's own lines
//! to stderr prefixed `zonit-vmm:`.

pub mod boot;
mod builder;
pub mod confine;
pub mod cpu;
pub mod devices;
mod end;
pub mod exits;
pub mod layout;
pub mod limits;
mod logger;
pub mod memory;
mod options;
mod run;
pub mod seccomp;
pub mod vm;

use std::path::PathBuf;

pub use end::{Ending, GuestEnd};
pub use options::{DiskOption, NetOption, Options, OptionsError, USAGE};
pub use run::main;

/// Errors of the monitor as a whole.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A guest file cannot be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// Kernel, initrd or disk.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A disk's size cannot be read.
    #[error("cannot read the size of disk {path}")]
    DiskSize {
        /// The image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM setup.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Configuring a vCPU.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// No window or interrupt line left for a device.
    #[error("cannot place device {name}")]
    Allocate {
        /// The device.
        name: &'static str,
        /// Cause.
        #[source]
        source: devices::alloc::Exhausted,
    },
    /// Placing devices.
    #[error("cannot place device {name}")]
    Bus {
        /// The device.
        name: &'static str,
        /// Cause.
        #[source]
        source: devices::BusError,
    },
    /// Signal handling setup.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The wake-up pipe.
    #[error("cannot create the wake-up pipe")]
    Pipe(#[source] std::io::Error),
    /// Standard output, where the guest console goes.
    #[error("cannot use standard output for the guest console")]
    Stdout(#[source] std::io::Error),
    /// Confinement.
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
    /// Seccomp.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// A device's worker thread cannot be started.
    #[error("cannot start the thread {name}")]
    SpawnThread {
        /// The thread's name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A network card cannot be set up on its tap.
    #[error("cannot set up network card {index} on its tap")]
    Net {
        /// Order among the cards.
        index: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU thread cannot be started.
    #[error("cannot start the thread of vCPU {id}")]
    SpawnVcpu {
        /// vCPU index.
        id: u8,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for events failed.
    #[error("cannot wait for events")]
    Poll(#[source] nix::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::error_chain;

    #[test]
    fn error_chain_joins_sources() {
        let err = MonitorError::Open {
            what: "kernel",
            path: "/nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            error_chain(&err),
            "cannot open kernel /nope: entity not found"
        );
    }
}
