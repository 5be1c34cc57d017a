//! `zonit ctl exec`: running a command inside a running zone.
//!
//! Process tree: agent -> exec helper (a host process, in the zone's
//! cgroup, non-dumpable) -> the command (in every namespace of the zone).
//! The helper joins the zone's mount, UTS, IPC, network, cgroup and PID
//! namespaces through the pidfd of the zone's init; joining a PID
//! namespace only moves children, hence the second fork. The command gets
//! the same privilege drop as the zone's own command (capabilities, uid,
//! rlimits, no_new_privs) and the caller's stdin, stdout and stderr.
//!
//! The helper speaks the zone start protocol ([`super::protocol`]) like a
//! zone's init (without waiting for `Go`: the zone is set up already) and
//! forwards signals to the command, so the agent handles both alike.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::ForkResult;

use super::command::{self, Stdio};
use super::init;
use super::start::{self, Error, Prepared, Started};
use crate::config::Zone;
use crate::sys;

/// What an exec helper calls itself (`comm`, and the first word of its
/// command line, the zone's name being the second).
const EXEC_NAME: &std::ffi::CStr = c"zonit-exec";

/// Starts `argv` in the zone whose init is `init`, with the caller's
/// `stdio`, inside the zone's cgroup `cgroup` when it has one.
pub fn exec(
    name: &str,
    zone: &Zone,
    argv: &[String],
    init: BorrowedFd<'_>,
    cgroup: Option<BorrowedFd<'_>>,
    stdio: [OwnedFd; 3],
) -> Result<Started, Error> {
    let prep = start::prepare_command(EXEC_NAME, name, zone, argv)?;
    start::clone_with_channel(0, cgroup, |channel| helper(&prep, init, channel, &stdio))
}

fn helper(prep: &Prepared, init: BorrowedFd<'_>, channel: OwnedFd, stdio: &[OwnedFd; 3]) -> ! {
    let fail = |msg: String| -> ! { init::give_up(&channel, &msg) };
    // Born with every signal blocked (`sys::clone3`); they stay blocked
    // for `sigwait`.
    sys::reset_signal_handlers();
    let _ = sys::set_process_name(&prep.title, EXEC_NAME);
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Before joining: nothing in the zone may ptrace or read this process.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut keep = vec![channel.as_raw_fd(), init.as_raw_fd()];
    keep.extend(stdio.iter().map(|f| f.as_raw_fd()));
    if let Err(e) = sys::close_fds_from(3, &keep) {
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
    let (rx, tx) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => fail(format!("unable to create exec pipe: {e}")),
    };
    let cmd = match sys::fork() {
        Ok(ForkResult::Child) => {
            drop(rx);
            command::command(prep, tx, Stdio::Fds(stdio))
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(format!("unable to fork the command: {e}")),
    };
    drop(tx);
    // The helper keeps no copy of the caller's fds, so the caller sees EOF
    // as soon as the command closes them.
    let _ = sys::close_fds_from(3, &[channel.as_raw_fd(), rx.as_raw_fd()]);
    init::report_exec(rx, &channel);
    init::reap_forever(cmd, &channel)
}
