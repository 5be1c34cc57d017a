//! Confining the monitor before the guest runs: its own mount, IPC, UTS
//! and network namespaces, an empty read-only root, no capabilities, an
//! unprivileged uid/gid, and no_new_privs.
//!
//! Owns: the namespace, mount and credential changes of the monitor
//! process. Invariants: runs while the process is single-threaded (a mount
//! namespace cannot be unshared by a thread that shares its file-system
//! state); runs after every file the guest needs is open, since nothing is
//! reachable by path afterwards; a failure at any step stops the monitor
//! before the guest runs (it never boots a guest half-confined).

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid, chdir, pivot_root, setgroups, setresgid, setresuid};

use crate::sys;

/// The uid and gid the monitor runs as once confined (the traditional
/// `nobody`; no account needs to exist for it).
pub const UNPRIVILEGED_ID: u32 = 65534;

/// Where the new root is mounted before it becomes `/`: a directory that
/// exists on every host the monitor runs on, since `/dev/kvm` was opened
/// through it. The mount is only visible in the monitor's own namespace.
const NEW_ROOT: &str = "/dev";

/// Errors confining the monitor.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `unshare` failed.
    #[error("cannot create the monitor's namespaces (the monitor must run as root)")]
    Unshare(#[source] nix::Error),
    /// A mount step failed.
    #[error("cannot {what} while building the monitor's empty root")]
    Mount {
        /// Which step.
        what: &'static str,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// Dropping capabilities or ids failed.
    #[error("cannot {what} while dropping the monitor's privileges")]
    Privileges {
        /// Which step.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn mount_step(what: &'static str) -> impl FnOnce(nix::Error) -> ConfineError {
    move |source| ConfineError::Mount { what, source }
}

fn privilege_step<E: Into<std::io::Error>>(what: &'static str) -> impl FnOnce(E) -> ConfineError {
    move |source| ConfineError::Privileges {
        what,
        source: source.into(),
    }
}

/// Puts the monitor into an empty root of its own.
fn empty_root() -> Result<(), ConfineError> {
    // Private propagation first, so nothing below leaks to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mount_step("make mounts private"))?;
    mount(
        Some("zonit-vmm"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,nr_inodes=1,mode=0555"),
    )
    .map_err(mount_step("mount the tmpfs"))?;
    chdir(NEW_ROOT).map_err(mount_step("enter the tmpfs"))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // detach below then drops it, leaving only the empty tmpfs.
    pivot_root(".", ".").map_err(mount_step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(mount_step("detach the old root"))?;
    chdir("/").map_err(mount_step("enter the new root"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(mount_step("make the root read-only"))?;
    Ok(())
}

/// Drops every capability from every set and becomes uid/gid 65534, with
/// the capability code zones use (`sys`). `last_cap` is the highest
/// capability the kernel knows, read while `/proc` was still reachable.
fn drop_privileges(last_cap: u8) -> Result<(), ConfineError> {
    // The bounding set first, while CAP_SETPCAP is still held.
    sys::caps::limit_bounding_and_ambient(&[], last_cap)
        .map_err(privilege_step("drop the bounding and ambient capabilities"))?;
    setgroups(&[]).map_err(privilege_step("clear supplementary groups"))?;
    let gid = Gid::from_raw(UNPRIVILEGED_ID);
    setresgid(gid, gid, gid).map_err(privilege_step("switch to gid 65534"))?;
    // Leaving uid 0 in all three ids clears the permitted and effective
    // sets (keep-caps is off); capset then empties the inheritable set.
    let uid = Uid::from_raw(UNPRIVILEGED_ID);
    setresuid(uid, uid, uid).map_err(privilege_step("switch to uid 65534"))?;
    sys::caps::set_capabilities(&[]).map_err(privilege_step("clear the capability sets"))?;
    nix::sys::prctl::set_no_new_privs().map_err(privilege_step("set no_new_privs"))?;
    Ok(())
}

/// Confines the calling (single-threaded) process.
pub fn confine() -> Result<(), ConfineError> {
    let last_cap = sys::caps::last_cap();
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(ConfineError::Unshare)?;
    empty_root()?;
    drop_privileges(last_cap)
}
