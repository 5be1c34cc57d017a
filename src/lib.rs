//! zonit: a PID 1 for dedicated virtualization hosts that supervises
//! zone-style jails and KVM guests from one TOML file.
//!
//! The module map is in ARCHITECTURE.md.
#![warn(missing_docs)]

/// The configuration model, parser and validator.
pub mod config;
/// The per-guest virtual machine monitor (`zonit vmm`).
pub mod vmm;
