//! Zones: shared-kernel jails. `plan` decides the file
//! system purely, `rootfs` applies it, `template` provisions a root from a
//! template, `seccomp` holds the syscall filter, `spawn` creates the zone's
//! init and command.

pub mod exec;
pub mod plan;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod template;
