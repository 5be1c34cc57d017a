//! Zones (SPEC section 5): shared-kernel jails. `plan` decides the file
//! system purely, `rootfs` applies it, `spawn` creates the zone's init and
//! command.

pub mod exec;
pub mod plan;
pub mod rootfs;
pub mod spawn;
