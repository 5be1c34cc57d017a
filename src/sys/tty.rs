//! Terminals: the pseudo-terminal of `ctl exec -t`, window sizes, and the
//! controlling terminal. Only the ioctls; the relaying is the caller's.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use super::check;

/// A terminal's size in character cells (also the `tty` field of the
/// control protocol's `exec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The size of the terminal `fd` (`TIOCGWINSZ`).
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<WindowSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which is live.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }.into())?;
    Ok(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Sets the size of the terminal `fd` (`TIOCSWINSZ`); the kernel sends
/// SIGWINCH to the terminal's foreground process group when it changes.
pub fn set_window_size(fd: BorrowedFd<'_>, size: WindowSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from `ws`, which is live.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }.into()).map(drop)
}

/// Makes the terminal `fd` the controlling terminal of the calling
/// process, which must be a session leader without one (`TIOCSCTTY`).
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }.into()).map(drop)
}

/// Opens a new pseudo-terminal of the devpts instance whose multiplexer
/// is `ptmx` (such as `/dev/pts/ptmx`); returns (master, slave), both
/// close-on-exec, the master non-blocking.
///
/// The path is resolved without following symlinks, and what it opens
/// must be a devpts file: a process that controls the tree (a zone's root)
/// cannot make this open something else, nor block on a FIFO. The slave is
/// opened through the master (`TIOCGPTPEER`), never by its path.
pub fn open_pty(ptmx: &str) -> io::Result<(OwnedFd, OwnedFd)> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let master = openat2(nix::fcntl::AT_FDCWD, ptmx, how).map_err(io::Error::from)?;
    let fs = nix::sys::statfs::fstatfs(&master).map_err(io::Error::from)?;
    if fs.filesystem_type() != nix::sys::statfs::DEVPTS_SUPER_MAGIC {
        return Err(io::Error::other(format!(
            "{ptmx} is not on a devpts file system"
        )));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from `unlock`, which is live.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) }.into())?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let slave = check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) }.into())?;
    // SAFETY: the kernel just installed `slave` in our fd table; nothing
    // else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave as i32) };
    Ok((master, slave))
}
