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
//! shares nothing with the agent's heap, and zonit's entry point hands it
//! to [`bare_init`] before the C library or anything else of zonit starts:
//! the reaper runs on system calls alone ([`sys::bare`]), with its
//! messages built on the stack. The same reaper serves the init that could
//! not execute zonit again and the `ctl exec` helpers.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid};

use super::command;
use super::protocol::{MAX_MESSAGE, Message};
use super::start::{INIT_NAME, Notify, Prepared};
use crate::sys::{self, bare};

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
/// the command's PID ([`Handover`]), with the `=` that ends its name.
const HANDOVER_PREFIX: &str = "ZONIT_INIT=";

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
            "{}{},{},{},{}",
            HANDOVER_PREFIX, self.channel, self.exec_pipe, self.settled, self.command
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

/// Called from zonit's entry point ([`sys::bare`]) before the C library
/// starts: if this process is a zone's init that [`zone_init`] executed
/// again, be that init and never return; otherwise return at once. Runs
/// on system calls alone (see [`sys::bare`] for what that rules out), so
/// the init's own memory is its stack and the few data pages it writes.
pub fn bare_init(args: bare::Args) {
    let named = args
        .arg(0)
        .and_then(|a| bare::strip_prefix(a, INIT_NAME.to_bytes()))
        .is_some_and(<[u8]>::is_empty);
    if !named {
        return;
    }
    let Some(h) = args
        .env(HANDOVER_PREFIX.as_bytes())
        .and_then(Handover::decode)
    else {
        return;
    };
    // The exec made the process dumpable again: first thing, undo that.
    bare::prctl(libc::PR_SET_DUMPABLE, 0);
    // Executed through an fd, comm would be the fd's number.
    bare::prctl(libc::PR_SET_NAME, INIT_NAME.as_ptr() as usize);
    // Kept across this exec (no set-uid, no new capabilities); set again
    // in case a kernel cleared it.
    bare::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as usize);
    let inherited = [h.channel, h.exec_pipe, h.settled];
    if inherited.iter().any(|&fd| bare::set_cloexec(fd) < 0) {
        // Nothing to report on: the agent sees the init end without a word.
        bare::exit(126)
    }
    // Non-dumpable again: the command may run.
    bare::close(h.settled);
    relay_exec(h.exec_pipe, h.channel);
    bare::close(h.exec_pipe);
    reap(h.command, h.channel)
}

/// Waits on the command's exec pipe and reports to the agent (see
/// [`relay_exec`]).
pub(super) fn report_exec(rx: OwnedFd, channel: &OwnedFd) {
    relay_exec(rx.as_raw_fd(), channel.as_raw_fd());
}

/// Waits for signals: forwards each to `cmd`, and on SIGCHLD reaps every
/// child; when `cmd` ends, reports its status and exits with it (see
/// [`reap`]).
pub(super) fn reap_forever(cmd: Pid, channel: &OwnedFd) -> ! {
    reap(cmd.as_raw(), channel.as_raw_fd())
}

/// Waits on the command's exec pipe and reports to the agent: EOF without
/// data means the exec succeeded (the pipe is close-on-exec), `Ready`;
/// anything written is the message saying why it failed, relayed as it
/// came. On system calls alone, into a buffer on the stack that nothing
/// zeroes.
fn relay_exec(rx: RawFd, channel: RawFd) {
    let mut space = MaybeUninit::<[u8; MAX_MESSAGE]>::uninit();
    let msg = bare::read_to_end(rx, bare::uninit_bytes(&mut space));
    if msg.is_empty() {
        let mut ready = MaybeUninit::<[u8; 8]>::uninit();
        bare::send(
            channel,
            Message::Ready.encode_bare(bare::uninit_bytes(&mut ready)),
        );
    } else {
        bare::send(channel, msg);
    }
}

/// The reaper's loop, on system calls alone: waits for signals, forwards
/// every standard one but SIGCHLD to `cmd`; on SIGCHLD reaps every child,
/// and when `cmd` ends, reports how to the agent and exits with its
/// status (128 + the signal for a killed command).
fn reap(cmd: i32, channel: RawFd) -> ! {
    loop {
        let sig = bare::wait_any_signal();
        if sig != libc::SIGCHLD as isize {
            // Forward everything else to the command; it may be gone.
            if (1..32).contains(&sig) {
                bare::kill(cmd, sig as i32);
            }
            continue;
        }
        loop {
            let (pid, status) = bare::reap_one();
            if pid <= 0 {
                break;
            }
            if pid != cmd as isize {
                continue;
            }
            let (msg, code) = if libc::WIFEXITED(status) {
                let code = libc::WEXITSTATUS(status);
                (Message::Exited(code), code)
            } else if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                (Message::Signaled(sig), 128 + sig)
            } else {
                continue;
            };
            let mut space = MaybeUninit::<[u8; 24]>::uninit();
            bare::send(channel, msg.encode_bare(bare::uninit_bytes(&mut space)));
            bare::exit(code);
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
