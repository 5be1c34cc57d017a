//! The zone's init: PID 1 of the zone's PID namespace, zonit code.
//!
//! It forks the command's process ([`super::command`]) and stays as the
//! zone's reaper: it relays whether the command was executed, forwards
//! every signal to the command, reaps orphans, reports how the command
//! ended and exits with its status (the kernel then kills whatever is left
//! in the namespace). `ctl exec` helpers ([`super::exec`]) use the same
//! reporting and reaping.
//!
//! The init lives as long as the zone, so what it keeps of its own is what
//! each zone costs. It is born a copy of the agent (a clone holding the
//! prepared start), forks the command's process from that copy, and then
//! executes zonit's own file again as `zonit-init NAME`: the fresh image
//! shares nothing with the agent's heap, and [`run_if_reexecuted`], at the
//! very start of `main`, makes it the reaper before anything else of zonit
//! runs or allocates. Messages are built on the stack.

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::command;
use super::protocol::{self, MAX_MESSAGE, Message};
use super::start::{INIT_NAME, Notify, Prepared};
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
/// the command, then re-execute zonit's file as the reaper (see the module
/// documentation). Never returns.
///
/// `exe` is zonit's own file ([`sys::process::self_exe`]); without it, or if
/// the exec fails, this copy of the agent stays the reaper, which works
/// the same but keeps the pages it shares with the agent.
pub(super) fn zone_init(
    prep: &Prepared,
    channel: OwnedFd,
    output: BorrowedFd<'_>,
    notify: Option<Notify<'_>>,
    exe: Option<BorrowedFd<'_>>,
) -> ! {
    // Born with every signal blocked (`sys::process::clone3`), and they stay
    // blocked, across the exec too, so they queue for `sigwait`: the init
    // of a PID namespace drops unblocked signals it has no handler for,
    // and one sent before this point must not be lost either. Handlers go
    // back to the default for the command's sake (an exec keeps ignored
    // signals ignored).
    sys::signal::reset_signal_handlers();
    // If the agent dies, so does the zone.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = nix::unistd::setsid();
    // Nothing inside the zone may read this process's memory or fds.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut keep = vec![channel.as_raw_fd(), output.as_raw_fd()];
    keep.extend(notify.map(|n| n.fd.as_raw_fd()));
    keep.extend(exe.map(|e| e.as_raw_fd()));
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
    // The command waits for EOF here before it runs: the exec below makes
    // this process dumpable until its new image says otherwise, and nothing
    // of the zone may run meanwhile.
    let (settled_rx, settled_tx) = match sys::fd::pipe() {
        Ok(p) => p,
        Err(e) => give_up(&channel, &format!("unable to create a pipe: {e}")),
    };
    let cmd = match sys::process::fork() {
        Ok(ForkResult::Child) => {
            drop(rx);
            drop(settled_tx);
            command::zone_command(prep, channel, tx, settled_rx, output, notify)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => give_up(&channel, &format!("unable to fork the command: {e}")),
    };
    drop(tx);
    drop(settled_rx);
    if let Some(exe) = exe {
        let e = reexec(prep, exe, &channel, &rx, &settled_tx, cmd);
        let line = format!(
            "zonit-init: unable to execute zonit again, the init stays a copy of the agent: {e}\n"
        );
        let _ = nix::unistd::write(output, line.as_bytes());
    }
    // Its own name, not the agent's command line (which holds the host's
    // config path): `prep` lives as long as this process. A kernel without
    // CONFIG_CHECKPOINT_RESTORE keeps the command line (comm is set in any
    // case); the zone runs all the same, so that is no reason to fail it.
    let _ = sys::process::set_process_name(&prep.title, INIT_NAME);
    drop(settled_tx);
    report_exec(rx, &channel);
    reap_forever(cmd, &channel)
}

/// The environment variable that hands the re-executed init its fds and
/// the command's PID ([`Handover`]).
const HANDOVER_VAR: &CStr = c"ZONIT_INIT";

/// What the init hands to its re-executed self:
/// `CHANNEL,EXEC_PIPE,SETTLED,PID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handover {
    /// The zone start channel to the agent.
    channel: RawFd,
    /// The read end of the command's exec pipe.
    exec_pipe: RawFd,
    /// The write end the command waits to see closed.
    settled: RawFd,
    /// The command's process.
    command: i32,
}

impl Handover {
    /// `NAME=VALUE` for the environment.
    fn encode(&self) -> String {
        format!(
            "{}={},{},{},{}",
            HANDOVER_VAR.to_string_lossy(),
            self.channel,
            self.exec_pipe,
            self.settled,
            self.command
        )
    }

    /// Reads the variable's value back; allocates nothing.
    fn decode(value: &[u8]) -> Option<Handover> {
        let mut fields = value.split(|&b| b == b',').map(|f| {
            std::str::from_utf8(f)
                .ok()
                .and_then(|f| f.parse::<i32>().ok())
                .filter(|&n| n > 0)
        });
        let h = Handover {
            channel: fields.next()??,
            exec_pipe: fields.next()??,
            settled: fields.next()??,
            command: fields.next()??,
        };
        // Never one of stdio.
        let fds = [h.channel, h.exec_pipe, h.settled];
        (fields.next().is_none() && fds.iter().all(|&fd| fd > 2)).then_some(h)
    }
}

/// Executes zonit's file as `zonit-init NAME`, handing it the channel,
/// the exec pipe, the command's wait pipe and the command's PID. Returns
/// only on failure.
fn reexec(
    prep: &Prepared,
    exe: BorrowedFd<'_>,
    channel: &OwnedFd,
    rx: &OwnedFd,
    settled: &OwnedFd,
    cmd: Pid,
) -> io::Error {
    let handover = Handover {
        channel: channel.as_raw_fd(),
        exec_pipe: rx.as_raw_fd(),
        settled: settled.as_raw_fd(),
        command: cmd.as_raw(),
    };
    let env = match CString::new(handover.encode()) {
        Ok(e) => e,
        Err(e) => return io::Error::other(e),
    };
    // Every other fd left (the output pipe, the notify pipe, `exe`) is
    // close-on-exec.
    let placed = sys::fd::clear_cloexec(channel.as_fd())
        .and_then(|()| sys::fd::clear_cloexec(rx.as_fd()))
        .and_then(|()| sys::fd::clear_cloexec(settled.as_fd()));
    if let Err(e) = placed {
        return e;
    }
    // `title` is `zonit-init\0NAME\0`: each word starts after a NUL.
    let mut argv: Vec<*const libc::c_char> = Vec::with_capacity(3);
    let mut start = 0;
    for (i, &b) in prep.title.iter().enumerate() {
        if b == 0 {
            argv.push(prep.title[start..].as_ptr().cast());
            start = i + 1;
        }
    }
    argv.push(std::ptr::null());
    let envp = [env.as_ptr(), std::ptr::null()];
    sys::process::execveat(exe, &argv, &envp)
}

/// At the very start of `main`: if this process is a zone's init that
/// [`zone_init`] executed again, be that init and never return; otherwise
/// return at once. Allocates nothing, so the init's own memory is its
/// stack and the few pages the C and Rust start-up wrote.
pub fn run_if_reexecuted() {
    if sys::process::program_name() != INIT_NAME {
        return;
    }
    let Some(h) = sys::process::env_var(HANDOVER_VAR).and_then(|v| Handover::decode(v.to_bytes()))
    else {
        return;
    };
    // The exec made the process dumpable again: first thing, undo that.
    let _ = nix::sys::prctl::set_dumpable(false);
    // Executed through an fd, comm would be the fd's number.
    let _ = nix::sys::prctl::set_name(INIT_NAME);
    // Kept across this exec (no set-uid, no new capabilities); set again
    // in case a kernel cleared it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let (Ok(channel), Ok(rx), Ok(settled)) = (
        sys::fd::take_inherited_fd(h.channel),
        sys::fd::take_inherited_fd(h.exec_pipe),
        sys::fd::take_inherited_fd(h.settled),
    ) else {
        // Nothing to report on: the agent sees the init end without a word.
        sys::process::exit_now(126)
    };
    // Non-dumpable again: the command may run.
    drop(settled);
    report_exec(rx, &channel);
    reap_forever(Pid::from_raw(h.command), &channel)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handover_reads_back_what_was_written() {
        let h = Handover {
            channel: 5,
            exec_pipe: 7,
            settled: 9,
            command: 2,
        };
        let encoded = h.encode();
        let value = encoded.strip_prefix("ZONIT_INIT=").unwrap();
        assert_eq!(Handover::decode(value.as_bytes()), Some(h));
    }

    #[test]
    fn a_malformed_handover_is_refused() {
        for bad in [
            "",
            "5,7,9",
            "5,7,9,2,4",
            "5,x,9,2",
            "1,7,9,2",
            "5,7,9,0",
            "5,7,9,-3",
            "5,,9,2",
        ] {
            assert_eq!(Handover::decode(bad.as_bytes()), None, "{bad}");
        }
    }
}
