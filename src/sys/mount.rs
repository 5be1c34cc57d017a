//! The fd-based mount calls (`open_tree`, `mount_setattr`, `move_mount`)
//! that zones' bind mounts use, so no path is resolved twice.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::NixPath;

use super::check;

/// `open_tree(dir, path, OPEN_TREE_CLONE | AT_EMPTY_PATH |
/// AT_SYMLINK_NOFOLLOW)`: a detached copy of the mount at `path` looked up
/// from `dir` (an empty path: `dir` itself, an `O_PATH` fd of any file or
/// directory), like the source of a bind mount; a link at the end of
/// `path` is taken as it is, never followed. With `recursive`, its
/// submounts too.
pub fn open_tree_clone<P: ?Sized + NixPath>(
    dir: BorrowedFd<'_>,
    path: &P,
    recursive: bool,
) -> io::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | (libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    let ret = path.with_nix_path(|path| {
        // SAFETY: a NUL-terminated path that outlives the call; integer
        // flags.
        unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), path.as_ptr(), flags) }
    })?;
    let fd = check(ret)?;
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Kernel `struct mount_attr` (linux/mount.h), version 0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set: set})`: adds mount
/// attributes (`MOUNT_ATTR_RDONLY`, `_NOSUID`, `_NODEV`, `_NOEXEC`) to the
/// mount at `fd` (and below it with `recursive`) without clearing any.
pub fn mount_setattr(fd: BorrowedFd<'_>, set: u64, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: an empty NUL-terminated path and a valid mount_attr of the
    // size passed; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// `move_mount(from, "", to, to_path, F_EMPTY_PATH [| T_EMPTY_PATH])`:
/// attaches the (detached) mount `from` on top of `to_path` looked up from
/// `to` (an empty path: on `to` itself), never following a link at its
/// end. With an empty path no path is resolved between checking the
/// target and mounting on it.
pub fn move_mount<P: ?Sized + NixPath>(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    to_path: &P,
) -> io::Result<()> {
    let mut flags = libc::MOVE_MOUNT_F_EMPTY_PATH;
    if to_path.is_empty() {
        flags |= libc::MOVE_MOUNT_T_EMPTY_PATH;
    }
    let ret = to_path.with_nix_path(|to_path| {
        // SAFETY: an empty NUL-terminated source path with F_EMPTY_PATH and
        // a NUL-terminated target path, both outliving the call.
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                from.as_raw_fd(),
                c"".as_ptr(),
                to.as_raw_fd(),
                to_path.as_ptr(),
                flags,
            )
        }
    })?;
    check(ret).map(drop)
}
