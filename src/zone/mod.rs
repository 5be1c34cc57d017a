//! Zones: shared-kernel jails. `preflight` checks a zone's paths before a
//! start, `mount_plan` decides the file system purely, `rootfs` applies
//! it, `template` provisions a root from a template, `seccomp` holds the
//! syscall filter. A start is split by process: `start` (the agent's side:
//! preparing and cloning), `init` (the zone's PID 1), `command` (the
//! command's set-up, privilege drop and exec); `protocol` is what they say
//! to each other, and `exec` runs `ctl exec` helpers the same way.

pub mod command;
pub mod exec;
pub mod init;
pub mod mount_plan;
pub mod preflight;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;
pub mod start;
pub mod template;
