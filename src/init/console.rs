//! The system console for PID 1: zonit's own stdio, and shells started
//! on it (the rescue shell when the config cannot be loaded, the debug
//! shell of `zonit.shell`).
//!
//! PID 1 opens the console with `O_NOCTTY`: a ^C typed on the console
//! must never become a signal to init. A shell gets its own session with
//! the console as its controlling terminal.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use crate::sys;

/// Path of the console device.
pub const CONSOLE: &str = "/dev/console";

/// Makes `/dev/console` (from the freshly mounted devtmpfs) PID 1's stdin,
/// stdout and stderr. The kernel opened the initramfs's node for us
/// already when there was one; this also covers an archive without it.
pub fn attach() -> io::Result<()> {
    let fd = open(CONSOLE, OFlag::O_RDWR | OFlag::O_NOCTTY, Mode::empty())?;
    to_stdio(fd).map_err(io::Error::from)
}

/// Makes `fd` stdin, stdout and stderr.
fn to_stdio(fd: OwnedFd) -> nix::Result<()> {
    nix::unistd::dup2_stdin(&fd)?;
    nix::unistd::dup2_stdout(&fd)?;
    nix::unistd::dup2_stderr(&fd)?;
    // If 0, 1 or 2 was closed, `open` returned that very number: it is
    // now one of the three and must stay open.
    if fd.as_raw_fd() <= 2 {
        std::mem::forget(fd);
    }
    Ok(())
}

/// Starts `shell` on the console in a session of its own; returns its
/// PID. The agent reaps it like any orphan; it is not restarted.
pub fn spawn_shell(shell: &Path) -> io::Result<i32> {
    let bad = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let path = CString::new(shell.as_os_str().as_bytes()).map_err(bad)?;
    let console = CString::new(CONSOLE).map_err(bad)?;
    let env: Vec<CString> = [
        "HOME=/",
        "TERM=linux",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PS1=zonit# ",
    ]
    .iter()
    .filter_map(|s| CString::new(*s).ok())
    .collect();
    let argv = [path.as_ptr(), std::ptr::null()];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    match sys::process::fork().map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
        nix::unistd::ForkResult::Child => {
            sys::signal::reset_signals();
            if nix::unistd::setsid().is_err() {
                sys::process::exit_now(127);
            }
            // As a session leader without a terminal, opening the console
            // without O_NOCTTY makes it the controlling terminal.
            let Ok(fd) = open(console.as_c_str(), OFlag::O_RDWR, Mode::empty()) else {
                sys::process::exit_now(127);
            };
            if to_stdio(fd).is_err() {
                sys::process::exit_now(127);
            }
            if sys::fd::close_fds_from(3, &[]).is_err() {
                sys::process::exit_now(127);
            }
            let err = sys::process::execve(&path, &argv, &envp);
            // stderr is the console now: say why there is no shell.
            crate::logging::stderr_line(&format!(
                "zonit: unable to run {}: {err}",
                path.to_string_lossy()
            ));
            sys::process::exit_now(127)
        }
    }
}
