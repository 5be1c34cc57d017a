//! `zonit ctl exec`: running a command inside a running zone.
//!
//! Process tree: agent -> exec helper (a host process, in the zone's
//! cgroup, non-dumpable) -> the command (in every namespace of the zone).
//! The helper joins the zone's mount, UTS, IPC, network, cgroup and PID
//! namespaces through the pidfd of the zone's init; joining a PID
//! namespace only moves children, hence the second fork. The command gets
//! the same privilege drop as the zone's own command (capabilities, uid,
//! rlimits, no_new_privs) and either the caller's stdin, stdout and
//! stderr, or a new terminal (`ctl exec -t`).
//!
//! A terminal is made inside the zone, from the zone's own devpts
//! instance (`/dev/pts/ptmx`), so the command sees `/dev/pts/N` as any
//! login would; the command becomes a session leader with the slave as
//! its controlling terminal, so Ctrl-C and job control work through the
//! terminal's line discipline. The helper sends the master back to the
//! caller (SCM_RIGHTS, on the socket the caller passed) before it forks
//! the command, and keeps no copy: the caller relays the bytes and sets
//! the window size, and neither the helper nor the agent is in the data
//! path.
//!
//! The helper speaks the zone start protocol ([`super::protocol`]) like a
//! zone's init (without waiting for `Go`: the zone is set up already) and
//! forwards signals to the command, so the agent handles both alike.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::ForkResult;

use super::command::{self, Stdio};
use super::init;
use super::start::{self, Error, Prepared, Started};
use crate::config::Zone;
use crate::sys;
use crate::sys::tty::{self, WindowSize};

/// The multiplexer of the zone's devpts instance, as the helper sees it
/// once it has joined the zone's mount namespace.
const PTMX: &str = "/dev/pts/ptmx";

/// What the command's standard fds are.
pub enum Io {
    /// The caller's own stdin, stdout and stderr.
    Stdio([OwnedFd; 3]),
    /// A new terminal of `size` in the zone; its master goes back to the
    /// caller on the socket `back`.
    Terminal {
        /// Where the master is sent.
        back: OwnedFd,
        /// The terminal's first window size.
        size: WindowSize,
    },
}

/// What an exec helper calls itself (`comm`, and the first word of its
/// command line, the zone's name being the second).
const EXEC_NAME: &std::ffi::CStr = c"zonit-exec";

/// Starts `argv` in the zone whose init is `init`, with `io` as its
/// stdio, inside the zone's cgroup `cgroup` when it has one.
pub fn exec(
    name: &str,
    zone: &Zone,
    argv: &[String],
    init: BorrowedFd<'_>,
    cgroup: Option<BorrowedFd<'_>>,
    io: Io,
) -> Result<Started, Error> {
    let prep = start::prepare_command(EXEC_NAME, name, zone, argv)?;
    start::clone_with_channel(0, cgroup, |channel| helper(&prep, init, channel, &io))
}

fn helper(prep: &Prepared, init: BorrowedFd<'_>, channel: OwnedFd, io: &Io) -> ! {
    let fail = |msg: String| -> ! { init::give_up(&channel, &msg) };
    // Born with every signal blocked (`sys::process::clone3`); they stay blocked
    // for `sigwait`.
    sys::signal::reset_signal_handlers();
    let _ = sys::process::set_process_name(&prep.title, EXEC_NAME);
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Before joining: nothing in the zone may ptrace or read this process.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut keep = vec![channel.as_raw_fd(), init.as_raw_fd()];
    match io {
        Io::Stdio(fds) => keep.extend(fds.iter().map(|f| f.as_raw_fd())),
        Io::Terminal { back, .. } => keep.push(back.as_raw_fd()),
    }
    if let Err(e) = sys::fd::close_fds_from(3, &keep) {
        fail(format!("unable to close inherited fds: {e}"));
    }
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWPID;
    if let Err(e) = nix::sched::setns(init, flags) {
        fail(format!("unable to join the zone's namespaces: {e}"));
    }
    let stdio = match io {
        Io::Stdio(fds) => Stdio::Fds(fds),
        Io::Terminal { back, size } => match open_terminal(back.as_fd(), *size) {
            Ok(slave) => Stdio::Terminal(slave),
            Err(e) => fail(format!("unable to give the command a terminal: {e}")),
        },
    };
    let (rx, tx) = match sys::fd::pipe() {
        Ok(p) => p,
        Err(e) => fail(format!("unable to create exec pipe: {e}")),
    };
    let cmd = match sys::process::fork() {
        Ok(ForkResult::Child) => {
            drop(rx);
            command::command(prep, tx, stdio)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(format!("unable to fork the command: {e}")),
    };
    // Only the command holds the slave: when it and its children are gone,
    // the caller reads EIO from the master.
    drop(stdio);
    drop(tx);
    // The helper keeps no copy of the caller's fds, so the caller sees EOF
    // as soon as the command closes them.
    let _ = sys::fd::close_fds_from(3, &[channel.as_raw_fd(), rx.as_raw_fd()]);
    init::report_exec(rx, &channel);
    init::reap_forever(cmd, &channel)
}

/// Opens a terminal in the zone's devpts instance, sets its size, sends
/// the master on `back`; returns the slave.
fn open_terminal(back: BorrowedFd<'_>, size: WindowSize) -> std::io::Result<OwnedFd> {
    let (master, slave) = tty::open_pty(PTMX)
        .map_err(|e| std::io::Error::new(e.kind(), format!("unable to open {PTMX}: {e}")))?;
    tty::set_window_size(master.as_fd(), size)?;
    sys::socket::send_with_fds(back, b"t", &[master.as_raw_fd()]).map_err(|e| {
        std::io::Error::new(e.kind(), format!("unable to pass the terminal back: {e}"))
    })?;
    Ok(slave)
}
