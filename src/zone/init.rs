//! The zone's init: PID 1 of the zone's PID namespace, zonit code.
//!
//! It forks the command's process ([`super::command`]) and stays as the
//! zone's reaper: it relays whether the command was executed, forwards
//! every signal to the command, reaps orphans, reports how the command
//! ended and exits with its status (the kernel then kills whatever is left
//! in the namespace). `ctl exec` helpers ([`super::exec`]) use the same
//! reporting and reaping.
//!
//! The init does as little as it can: it lives as long as the zone, and
//! every page it writes in memory shared with the agent (copy-on-write
//! since the clone) is what each zone costs. Messages are built on the
//! stack.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::command;
use super::protocol::{self, MAX_MESSAGE, Message};
use super::start::{Notify, Prepared};
use crate::sys;

/// Sends `msg` to the agent; nothing to do if the agent is gone.
pub(super) fn report(channel: &OwnedFd, msg: &Message) {
    let _ = msg.send(channel.as_fd());
}

/// The init (or exec helper) could not start the command: tell the agent
/// and exit.
pub(super) fn give_up(channel: &OwnedFd, msg: &str) -> ! {
    report(channel, &Message::StartFailed(msg.to_string()));
    sys::process::exit_now(126)
}

/// The zone's init: fork the process that sets up the zone and becomes
/// the command, then reap. Never returns.
///
/// The init itself does as little as it can: it lives as long as the zone,
/// and what it writes to memory shared with the agent (copy-on-write since
/// the clone) is what each zone costs. The setup's allocations happen in
/// the command's process and vanish with its exec.
pub(super) fn zone_init(
    prep: &Prepared,
    channel: OwnedFd,
    output: BorrowedFd<'_>,
    notify: Option<Notify<'_>>,
) -> ! {
    // Born with every signal blocked (`sys::process::clone3`), and they stay
    // blocked so they queue for `sigwait`: the init of a PID namespace
    // drops unblocked signals it has no handler for, and one sent before
    // this point must not be lost either.
    sys::signal::reset_signal_handlers();
    // Its own name, not the agent's command line (which holds the host's
    // config path): `prep` lives as long as this process. A kernel without
    // CONFIG_CHECKPOINT_RESTORE keeps the command line (comm is set in any
    // case); the zone runs all the same, so that is no reason to fail it.
    let _ = sys::process::set_process_name(&prep.title, super::start::INIT_NAME);
    // If the agent dies, so does the zone.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = nix::unistd::setsid();
    // Nothing inside the zone may read this process's memory or fds.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut keep = vec![channel.as_raw_fd(), output.as_raw_fd()];
    keep.extend(notify.map(|n| n.fd.as_raw_fd()));
    if let Err(e) = sys::fd::close_fds_from(3, &keep) {
        give_up(&channel, &format!("unable to close inherited fds: {e}"));
    }
    // pivot_root (done by the command's process) moves the root and the
    // working directory of every process that is at the old root: standing
    // at `/` puts the init inside the zone too, holding no reference to the
    // host's tree.
    if let Err(e) = nix::unistd::chdir("/") {
        give_up(&channel, &format!("unable to enter /: {e}"));
    }
    let (rx, tx) = match sys::fd::pipe() {
        Ok(p) => p,
        Err(e) => give_up(&channel, &format!("unable to create exec pipe: {e}")),
    };
    let cmd = match sys::process::fork() {
        Ok(ForkResult::Child) => {
            drop(rx);
            command::zone_command(prep, channel, tx, output, notify)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => give_up(&channel, &format!("unable to fork the command: {e}")),
    };
    drop(tx);
    report_exec(rx, &channel);
    reap_forever(cmd, &channel)
}

/// Waits on the command's exec pipe and reports to the agent: EOF without
/// data means the exec succeeded (the pipe is close-on-exec), `Ready`;
/// anything written is the message saying why it failed, relayed as it
/// came. Reads into the stack: the caller lives on, and heap pages it
/// writes stop being shared with the agent.
pub(super) fn report_exec(rx: OwnedFd, channel: &OwnedFd) {
    let mut msg = [0u8; MAX_MESSAGE];
    let mut len = 0;
    let mut rx = std::fs::File::from(rx);
    while len < msg.len() {
        match rx.read(&mut msg[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if len == 0 {
        report(channel, &Message::Ready);
    } else {
        let _ = protocol::send_raw(channel.as_fd(), &msg[..len]);
    }
}

/// Waits for signals: forwards each to `cmd`, and on SIGCHLD reaps every
/// child; when `cmd` ends, reports its status and exits with it.
pub(super) fn reap_forever(cmd: Pid, channel: &OwnedFd) -> ! {
    let all = sys::signal::full_sigset();
    loop {
        let sig = match sys::signal::sigwait(&all) {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != libc::SIGCHLD {
            // Forward everything else to the command; it may be gone.
            if let Ok(s) = Signal::try_from(sig) {
                let _ = kill(cmd, s);
            }
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == cmd => {
                    report(channel, &Message::Exited(code));
                    sys::process::exit_now(code);
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == cmd => {
                    report(channel, &Message::Signaled(sig as i32));
                    sys::process::exit_now(128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
