//! zonit: a PID 1 for dedicated virtualization hosts that supervises
//! zone-style jails and KVM guests from one TOML file.
//!
//! The module map is in ARCHITECTURE.md.
#![warn(missing_docs)]

/// The agent: event loop, unit runtime, control server.
pub mod agent;
/// The command table: help, usage errors, completion.
pub mod cli;
/// The configuration model, parser and validator.
pub mod config;
/// Control protocol and `zonit ctl` client.
pub mod control;
/// PID 1: host boot, console, modules, shutdown.
pub mod init;
/// Per-unit output capture: ring buffer, line splitting, rate limit.
pub mod logbuf;
/// Log backend: stderr or /dev/kmsg.
pub mod logging;
/// Zone networking on the host: plans, nf_tables ruleset, netlink.
pub mod net;
/// Supervision engine: pure state machine and restart policy.
pub mod supervisor;
/// The thin syscall layer (all raw `unsafe` for process control).
pub mod sys;
/// The per-guest virtual machine monitor (`zonit vmm`).
pub mod vmm;
/// Zones: mount plan, root file system, spawning.
pub mod zone;
