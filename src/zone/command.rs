//! The command's process: a child of the zone's init (or of a `ctl exec`
//! helper) that becomes the command. For a zone's own command it first
//! sets up the zone (template copy, mount plan and `pivot_root`, hostname,
//! `lo`) and waits for the agent's `Go`; then, for both, stdio, workdir,
//! rlimits, the privilege drop, the seccomp filter, and `execve`.
//!
//! Whatever fails is reported to the init over the exec pipe (close-on-exec,
//! so EOF without data means the exec succeeded) as one zone start message,
//! which the init relays to the agent.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::signal::Signal;

use nix::sys::resource::setrlimit;
use nix::unistd::{Gid, Uid};

use super::protocol::{self, MAX_MESSAGE, Message};
use super::start::{Notify, Prepared};
use super::{rootfs, seccomp, template};
use crate::logging::error_chain;
use crate::sys;

/// A zone's own command: set up the zone, wait for `Go`, then
/// [`command`]. Never returns.
///
/// The zone's mount namespace, hostname and network are the init's too:
/// setting them up here keeps the setup's memory out of the long-lived
/// init.
///
/// `init_settled` is a pipe whose write end the init closes once it is
/// non-dumpable in its final image (see `init::zone_init`): nothing of the
/// zone runs before that.
pub(super) fn zone_command(
    prep: &Prepared,
    channel: OwnedFd,
    exec_pipe: OwnedFd,
    init_settled: OwnedFd,
    output: BorrowedFd<'_>,
    notify: Option<Notify<'_>>,
) -> ! {
    if let Err(e) = setup(prep) {
        fail_setup(&exec_pipe, error_chain(&e), &e);
    }
    // Held here until the agent has done its part from outside (the
    // zone's network): the command must find it in place.
    if let Err(e) = protocol::await_go(channel.as_fd()) {
        let msg = format!("the agent gave up on this start: {e}");
        fail_start(&exec_pipe, &Message::StartFailed(msg));
    }
    drop(channel);
    // EOF: the init has closed its end (or is gone, and the zone with it).
    let mut byte = [0u8; 1];
    while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(&init_settled, &mut byte) {}
    drop(init_settled);
    command(prep, exec_pipe, Stdio::Output { output, notify })
}

/// The command's process could not start the command: `msg` goes to the
/// init over the exec pipe (the init relays it to the agent), then exit.
pub(super) fn fail_start(exec_pipe: &OwnedFd, msg: &Message) -> ! {
    let mut buf = [0u8; MAX_MESSAGE];
    let n = msg.encode(&mut buf);
    // One write of at most PIPE_BUF bytes is atomic.
    let _ = nix::unistd::write(exec_pipe, &buf[..n]);
    sys::process::exit_now(127)
}

/// A step of the zone's set-up failed: the same config will fail the
/// same way next time, so the start failed for good, unless the errno says
/// the host was only short of something ([`protocol::setup_failure`]).
fn fail_setup(exec_pipe: &OwnedFd, reason: String, e: &(dyn std::error::Error + 'static)) -> ! {
    fail_start(exec_pipe, &protocol::setup_failure(reason, errno_of(e)))
}

/// The errno at the bottom of an error's chain, if any.
fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    let mut found = None;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            found = io.raw_os_error().or(found);
        } else if let Some(errno) = err.downcast_ref::<nix::errno::Errno>() {
            found = Some(*errno as i32);
        }
        cur = err.source();
    }
    found
}

fn setup(prep: &Prepared) -> Result<(), SetupError> {
    if let Some((tpl, root)) = &prep.copy {
        template::ensure_copied(tpl, root)?;
    }
    rootfs::apply(&prep.ops)?;
    nix::unistd::sethostname(&prep.hostname).map_err(|e| SetupError::Hostname(e.into()))?;
    sys::net::set_link_up("lo").map_err(SetupError::Loopback)?;
    Ok(())
}

/// Why the zone init could not set up the zone.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Template(#[from] template::Error),
    #[error(transparent)]
    Rootfs(#[from] rootfs::Error),
    #[error("unable to set the hostname")]
    Hostname(#[source] io::Error),
    #[error("unable to bring up lo")]
    Loopback(#[source] io::Error),
}

/// Where a command's standard fds come from.
pub(super) enum Stdio<'a> {
    /// stdin from /dev/null, stdout and stderr to the unit's output pipe,
    /// and the readiness pipe if the zone has one.
    Output {
        output: BorrowedFd<'a>,
        notify: Option<Notify<'a>>,
    },
    /// The caller's own three fds (`zonit ctl exec`).
    Fds(&'a [OwnedFd; 3]),
    /// A terminal's slave (`zonit ctl exec -t`): stdin, stdout, stderr and
    /// the controlling terminal.
    Terminal(OwnedFd),
}

/// The command's process: drop privileges and exec. Never returns.
pub(super) fn command(prep: &Prepared, exec_pipe: OwnedFd, io: Stdio<'_>) -> ! {
    // The init reset every disposition before forking us, and exec resets
    // handlers anyway: only the init's full block mask is left to undo.
    sys::signal::set_sigmask(libc::SIG_SETMASK, &sys::signal::empty_sigset());
    let _ = nix::unistd::setsid();
    let is_exec = matches!(io, Stdio::Fds(_) | Stdio::Terminal(_));
    let notify = match &io {
        Stdio::Output { notify, .. } => *notify,
        Stdio::Fds(_) | Stdio::Terminal(_) => None,
    };
    let io_done = stdio(io, prep).map_err(|e| format!("unable to set up stdio: {e}"));
    // After stdio: the output pipe may sit on the number the notify fd
    // goes to, and is no longer needed once on 1 and 2.
    let (exec_pipe, placed) = match (io_done, notify) {
        (Err(e), _) => (exec_pipe, Err(e)),
        (Ok(()), None) => (exec_pipe, Ok(())),
        (Ok(()), Some(n)) => place_notify(n, exec_pipe),
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        fail_start(&exec_pipe, &Message::StartFailed(format!("{what}: {e}")))
    };
    if let Err(e) = placed {
        fail("unable to set up the command's fds", &e);
    }
    let mut keep = vec![exec_pipe.as_raw_fd()];
    keep.extend(notify.map(|n| n.at));
    if let Err(e) = sys::fd::close_fds_from(3, &keep) {
        fail("unable to close inherited fds", &e);
    }
    // From here on each step depends on the config: see `fail_setup`.
    if let Err(e) = nix::unistd::chdir(prep.workdir.as_c_str()) {
        let reason = format!("unable to enter workdir {:?}: {e}", prep.workdir);
        fail_setup(&exec_pipe, reason, &e);
    }
    for (res, limit) in &prep.rlimits {
        if let Err(e) = setrlimit(*res, *limit, *limit) {
            fail_setup(
                &exec_pipe,
                format!("unable to set {res:?} to {limit}: {e}"),
                &e,
            );
        }
    }
    if let Err(e) = drop_privileges(prep) {
        fail_setup(&exec_pipe, format!("unable to drop privileges: {e}"), &e);
    }
    // A `ctl exec` command or probe dies with its helper, so killing the
    // helper (a probe past its deadline) kills the command. Set after the
    // uid switch, which clears it.
    if is_exec && let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail("unable to set the parent-death signal", &e);
    }
    // Last, so everything above may still use what the filter refuses.
    if let Err(e) = seccomp::install(prep.seccomp) {
        let reason = format!("unable to install seccomp: {}", error_chain(&e));
        fail_setup(&exec_pipe, reason, &e);
    }
    let argv = ptrs(&prep.argv);
    let envp = ptrs(&prep.envp);
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for path in &prep.candidates {
        last = sys::process::execve(path, &argv, &envp);
        if last.raw_os_error() != Some(libc::ENOENT) {
            break;
        }
    }
    let arg0 = prep
        .argv
        .first()
        .map(|a| a.to_string_lossy())
        .unwrap_or_default();
    fail_start(
        &exec_pipe,
        &Message::ExecFailed {
            errno: last.raw_os_error().unwrap_or(libc::ENOENT),
            message: format!("unable to execute {arg0}: {last}"),
        },
    )
}

fn ptrs(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn stdio(io: Stdio<'_>, prep: &Prepared) -> io::Result<()> {
    match io {
        Stdio::Output { output, .. } => {
            let null = std::fs::File::open("/dev/null")?;
            nix::unistd::dup2_stdin(null.as_fd()).map_err(io::Error::from)?;
            nix::unistd::dup2_stdout(output).map_err(io::Error::from)?;
            nix::unistd::dup2_stderr(output).map_err(io::Error::from)?;
        }
        Stdio::Fds([i, o, e]) => {
            nix::unistd::dup2_stdin(i.as_fd()).map_err(io::Error::from)?;
            nix::unistd::dup2_stdout(o.as_fd()).map_err(io::Error::from)?;
            nix::unistd::dup2_stderr(e.as_fd()).map_err(io::Error::from)?;
        }
        Stdio::Terminal(slave) => {
            // The session leader (setsid above) takes its controlling
            // terminal; the terminal belongs to the zone's user, as a
            // login's does, so the command may change its modes.
            sys::tty::set_controlling_terminal(slave.as_fd())?;
            nix::unistd::fchown(
                &slave,
                Some(Uid::from_raw(prep.uid)),
                Some(Gid::from_raw(prep.gid)),
            )
            .map_err(io::Error::from)?;
            nix::unistd::dup2_stdin(&slave).map_err(io::Error::from)?;
            nix::unistd::dup2_stdout(&slave).map_err(io::Error::from)?;
            nix::unistd::dup2_stderr(&slave).map_err(io::Error::from)?;
        }
    }
    Ok(())
}

/// Puts the notify pipe's write end at its number for the command
/// (without close-on-exec), first moving the exec pipe away if it sits
/// there. Returns the exec pipe, wherever it is now.
fn place_notify(n: Notify<'_>, exec_pipe: OwnedFd) -> (OwnedFd, Result<(), String>) {
    let exec_pipe = if exec_pipe.as_raw_fd() == n.at {
        // The copy gets the lowest free number, never `n.at` (taken).
        match exec_pipe.try_clone() {
            Ok(moved) => {
                // Closes `n.at` now, so nothing closes it after the dup.
                drop(exec_pipe);
                moved
            }
            Err(e) => return (exec_pipe, Err(format!("unable to move the exec pipe: {e}"))),
        }
    } else {
        exec_pipe
    };
    let placed = if n.fd.as_raw_fd() == n.at {
        sys::fd::clear_cloexec(n.fd)
    } else {
        sys::fd::dup_onto(n.fd, n.at)
    };
    let placed = placed.map_err(|e| format!("unable to put the notify pipe at fd {}: {e}", n.at));
    (exec_pipe, placed)
}

/// Groups, capabilities, uid, no_new_privs, in the order each step still
/// has the privilege it needs.
///
/// For a root user the bounding, permitted and effective sets end up equal
/// to the zone's `capabilities`; inheritable and ambient are empty (a
/// non-empty inheritable set was CVE-2022-29162). For any other user the
/// uid switch clears permitted and effective, and with empty inheritable
/// and ambient sets `execve` grants nothing back: a non-root zone user runs
/// with no capabilities, as under Docker, and the bounding set still caps
/// what any file could grant.
fn drop_privileges(prep: &Prepared) -> io::Result<()> {
    let (uid, gid) = (Uid::from_raw(prep.uid), Gid::from_raw(prep.gid));
    nix::unistd::setgroups(&[gid]).map_err(io::Error::from)?;
    nix::unistd::setresgid(gid, gid, gid).map_err(io::Error::from)?;
    // Needs CAP_SETPCAP, so before anything drops it.
    sys::caps::limit_bounding_and_ambient(&prep.caps, prep.last_cap)?;
    if prep.uid != 0 {
        nix::unistd::setresuid(uid, uid, uid).map_err(io::Error::from)?;
        // The switch emptied permitted; capset may only lower it, and
        // execve would clear it anyway. Inheritable is still emptied.
        sys::caps::set_capabilities(&[])?;
    } else {
        sys::caps::set_capabilities(&prep.caps)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)?;
    Ok(())
}
