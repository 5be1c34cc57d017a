//! The zone start protocol: the typed messages between the agent and the
//! processes it starts in a zone (a zone's init, or a `ctl exec` helper),
//! over one `SOCK_SEQPACKET` socket pair made before the clone.
//!
//! Zone side to agent: `Ready` (the command was executed), `SetupFailed`
//! (the zone could not be set up; the same error will recur, so the start
//! failed for good), `StartFailed` (a passing failure, such as no memory
//! to fork), `ExecFailed` (the command could not be executed: status 127
//! when it was not found, 126 otherwise), then `Exited` or `Signaled` (how
//! the command ended). Agent to zone side: `Go`, which releases the
//! command: a zone's command waits for it after the zone's own set-up, so
//! the agent can finish what it does from outside (the zone's network)
//! first.
//!
//! Each message is one datagram of at most [`MAX_MESSAGE`] bytes: a word,
//! then its argument after a space. The zone side encodes on the stack (its
//! heap is shared copy-on-write with the agent); the agent decodes, and
//! [`Report`] gathers what one start reported and turns it, with the wait
//! status, into the start's [`Outcome`].

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::wait::WaitStatus;

use crate::supervisor::End;
use crate::sys::bare;

/// The words of the messages a zone's init sends once it runs without the
/// C library ([`Message::encode_bare`]).
const READY: &str = "ready";
const EXIT: &str = "exit";
const SIGNAL: &str = "signal";

/// Longest message, in bytes; longer messages are cut (at a character
/// boundary).
pub const MAX_MESSAGE: usize = 2048;

/// One message of the zone start protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Agent to zone: the command may start.
    Go,
    /// The command was executed.
    Ready,
    /// The zone could not be set up; the same error will recur.
    SetupFailed(String),
    /// A passing failure before the command ran; a later start may work.
    StartFailed(String),
    /// The command could not be executed: `execve`'s errno and the message.
    ExecFailed {
        /// `errno` of the last `execve`.
        errno: i32,
        /// What failed, for a person.
        message: String,
    },
    /// The command exited with this code.
    Exited(i32),
    /// The command was killed by this signal.
    Signaled(i32),
}

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a zone start message: {0:?}")]
pub struct DecodeError(pub String);

impl Message {
    /// Encodes into `buf`; returns the length used.
    pub fn encode(&self, buf: &mut [u8; MAX_MESSAGE]) -> usize {
        let mut w = Cut { buf, len: 0 };
        // Writing to `Cut` never fails: what does not fit is dropped.
        let _ = match self {
            Message::Go => write!(w, "go"),
            Message::Ready => write!(w, "{READY}"),
            Message::SetupFailed(m) => write!(w, "setup-failed {m}"),
            Message::StartFailed(m) => write!(w, "start-failed {m}"),
            Message::ExecFailed { errno, message } => write!(w, "exec-failed {errno} {message}"),
            Message::Exited(c) => write!(w, "{EXIT} {c}"),
            Message::Signaled(s) => write!(w, "{SIGNAL} {s}"),
        };
        w.len
    }

    /// Encodes `Ready`, `Exited` or `Signaled` byte by byte into `buf`,
    /// the way a zone's init must before the C library is set up
    /// ([`crate::sys::bare`]); any other message comes out empty.
    pub fn encode_bare<'a>(&self, buf: &'a mut [MaybeUninit<u8>]) -> &'a [u8] {
        let mut w = bare::Writer::new(buf);
        match self {
            Message::Ready => w.bytes(READY.as_bytes()),
            Message::Exited(c) => w.bytes(EXIT.as_bytes()).byte(b' ').decimal(*c),
            Message::Signaled(s) => w.bytes(SIGNAL.as_bytes()).byte(b' ').decimal(*s),
            _ => &mut w,
        };
        w.into_bytes()
    }

    /// Decodes one datagram.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let text = String::from_utf8_lossy(bytes);
        let bad = || DecodeError(text.to_string());
        let (word, rest) = text.split_once(' ').unwrap_or((&text, ""));
        let int = |s: &str| s.parse::<i32>().map_err(|_| bad());
        Ok(match word {
            "go" if rest.is_empty() => Message::Go,
            READY if rest.is_empty() => Message::Ready,
            "setup-failed" => Message::SetupFailed(rest.to_string()),
            "start-failed" => Message::StartFailed(rest.to_string()),
            "exec-failed" => {
                let (errno, message) = rest.split_once(' ').unwrap_or((rest, ""));
                Message::ExecFailed {
                    errno: int(errno)?,
                    message: message.to_string(),
                }
            }
            EXIT => Message::Exited(int(rest)?),
            SIGNAL => Message::Signaled(int(rest)?),
            _ => return Err(bad()),
        })
    }

    /// Sends this message as one datagram. Allocates nothing. A peer that
    /// is gone is the caller's to notice (EPIPE).
    pub fn send(&self, channel: BorrowedFd<'_>) -> io::Result<()> {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = self.encode(&mut buf);
        nix::sys::socket::send(
            channel.as_raw_fd(),
            &buf[..n],
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )
        .map(drop)
        .map_err(io::Error::from)
    }
}

/// A writer into a fixed buffer that drops what does not fit, cutting at a
/// character boundary.
struct Cut<'a> {
    buf: &'a mut [u8; MAX_MESSAGE],
    len: usize,
}

impl Write for Cut<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_MESSAGE - self.len;
        let mut n = data.len().min(room);
        if n < data.len() {
            // Never split a UTF-8 sequence: back up to a boundary.
            while n > 0 && (data[n] & 0xC0) == 0x80 {
                n -= 1;
            }
        }
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Makes the channel: (agent end, zone end), both close-on-exec.
pub fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Zone side: blocks until the agent says `Go`. Any other message is
/// ignored; the agent closing the channel (it died, or gave up on this
/// start) is an error.
pub fn await_go(channel: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = [0u8; MAX_MESSAGE];
    loop {
        match nix::sys::socket::recv(
            channel.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EPIPE)),
            Ok(n) if Message::decode(&buf[..n]) == Ok(Message::Go) => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Agent side: reads every datagram waiting on the (non-blocking) channel.
/// Undecodable datagrams are logged and skipped.
pub fn drain(channel: BorrowedFd<'_>) -> Vec<Message> {
    let mut out = Vec::new();
    let mut buf = [0u8; MAX_MESSAGE];
    loop {
        match nix::sys::socket::recv(
            channel.as_fd().as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => break,
            Ok(n) => match Message::decode(&buf[..n]) {
                Ok(m) => out.push(m),
                Err(e) => log::warn!("{e}"),
            },
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break, // EAGAIN: nothing more for now
        }
    }
    out
}

/// What the zone side of one start reported, gathered by the agent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// The command was executed.
    pub ready: bool,
    /// Why the start failed, if it did.
    pub failure: Option<Failure>,
    /// How the command ended, as its init saw it.
    pub end: Option<End>,
}

/// A start that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// For a person.
    pub reason: String,
    /// The same error will recur: no restart.
    pub permanent: bool,
    /// The status a shell would give (127 not found, 126 not executable;
    /// 1 for anything else): what `ctl exec` and `exit_with` report.
    pub status: i32,
}

/// How a start ended, from the report and the wait status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command never ran.
    Failed(Failure),
    /// The command ran and ended so.
    Ended(End),
}

impl Report {
    /// Takes in one message; returns true when it made the start ready.
    pub fn record(&mut self, msg: Message) -> bool {
        match msg {
            Message::Ready => {
                let first = !self.ready;
                self.ready = true;
                return first;
            }
            Message::SetupFailed(reason) => {
                self.failure = Some(Failure {
                    reason,
                    permanent: true,
                    status: 1,
                })
            }
            Message::StartFailed(reason) => {
                self.failure = Some(Failure {
                    reason,
                    permanent: false,
                    status: 1,
                })
            }
            Message::ExecFailed { errno, message } => {
                let status = exec_failure_status(errno);
                self.failure = Some(Failure {
                    reason: format!("{message} (status {status})"),
                    permanent: false,
                    status,
                })
            }
            Message::Exited(c) => self.end = Some(End::Exit(c)),
            Message::Signaled(s) => self.end = Some(End::Signal(s)),
            Message::Go => {}
        }
        false
    }

    /// The outcome once the process is reaped with `status`: a reported
    /// failure wins, then the reported end, then the wait status itself.
    pub fn outcome(self, status: WaitStatus) -> Outcome {
        match (self.failure, self.end) {
            (Some(f), _) => Outcome::Failed(f),
            (None, Some(end)) => Outcome::Ended(end),
            (None, None) => Outcome::Ended(end_of_wait(status)),
        }
    }
}

/// The message for a failed step of a zone's set-up (`errno`, when the
/// step failed in a syscall): `SetupFailed`, since the same config fails
/// the same way next time, unless the errno says the host was only short
/// of something (memory, fds, processes, disk space) or busy: then
/// `StartFailed`, and the restart policy applies.
pub fn setup_failure(reason: String, errno: Option<i32>) -> Message {
    match errno {
        Some(
            libc::ENOMEM
            | libc::EAGAIN
            | libc::EMFILE
            | libc::ENFILE
            | libc::ENOSPC
            | libc::EINTR
            | libc::EBUSY,
        ) => Message::StartFailed(reason),
        _ => Message::SetupFailed(reason),
    }
}

/// The status a shell gives a command it could not execute: 127 when it
/// was not found, 126 when it was found but could not run.
pub fn exec_failure_status(errno: i32) -> i32 {
    match errno {
        libc::ENOENT | libc::ENOTDIR => 127,
        _ => 126,
    }
}

/// A process's end from its wait status alone.
pub fn end_of_wait(status: WaitStatus) -> End {
    match status {
        WaitStatus::Exited(_, code) => End::Exit(code),
        WaitStatus::Signaled(_, sig, _) => End::Signal(sig as i32),
        _ => End::Crash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    fn roundtrip(m: Message) {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = m.encode(&mut buf);
        assert_eq!(Message::decode(&buf[..n]), Ok(m));
    }

    #[test]
    fn the_bare_encoding_is_the_same_as_the_usual_one() {
        for m in [
            Message::Ready,
            Message::Exited(0),
            Message::Exited(1),
            Message::Exited(255),
            Message::Signaled(9),
            Message::Signaled(64),
        ] {
            let mut usual = [0u8; MAX_MESSAGE];
            let n = m.encode(&mut usual);
            let mut bare = [MaybeUninit::uninit(); 32];
            assert_eq!(m.encode_bare(&mut bare), &usual[..n], "{m:?}");
        }
        let mut bare = [MaybeUninit::uninit(); 32];
        assert_eq!(Message::Go.encode_bare(&mut bare), b"");
    }

    #[test]
    fn every_message_survives_encode_and_decode() {
        for m in [
            Message::Go,
            Message::Ready,
            Message::SetupFailed("unable to enter workdir /x: ENOENT".into()),
            Message::StartFailed("unable to fork the command: EAGAIN".into()),
            Message::ExecFailed {
                errno: libc::ENOENT,
                message: "unable to execute /no/such: not found".into(),
            },
            Message::Exited(3),
            Message::Signaled(9),
            Message::Exited(-1),
        ] {
            roundtrip(m);
        }
    }

    #[test]
    fn garbage_is_a_decode_error() {
        for bad in [&b"exit x"[..], b"signal", b"hello", b"ready now", b""] {
            assert!(Message::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let m = Message::SetupFailed("é".repeat(MAX_MESSAGE));
        let mut buf = [0u8; MAX_MESSAGE];
        let n = m.encode(&mut buf);
        assert!(n <= MAX_MESSAGE);
        let Ok(Message::SetupFailed(text)) = Message::decode(&buf[..n]) else {
            panic!("not decoded");
        };
        assert!(text.chars().all(|c| c == 'é'), "{text}");
    }

    #[test]
    fn setup_errors_are_for_good_unless_the_host_was_short_of_something() {
        let f = |errno| setup_failure("x".into(), errno);
        assert_eq!(f(Some(libc::ENOENT)), Message::SetupFailed("x".into()));
        assert_eq!(f(Some(libc::EPERM)), Message::SetupFailed("x".into()));
        assert_eq!(f(None), Message::SetupFailed("x".into()));
        assert_eq!(f(Some(libc::EMFILE)), Message::StartFailed("x".into()));
        assert_eq!(f(Some(libc::ENOMEM)), Message::StartFailed("x".into()));
    }

    #[test]
    fn exec_failures_get_the_shells_statuses() {
        assert_eq!(exec_failure_status(libc::ENOENT), 127);
        assert_eq!(exec_failure_status(libc::EACCES), 126);
        assert_eq!(exec_failure_status(libc::ENOEXEC), 126);
    }

    #[test]
    fn a_setup_failure_is_permanent_an_exec_failure_is_not() {
        let mut r = Report::default();
        r.record(Message::SetupFailed("no workdir".into()));
        let Outcome::Failed(f) = r.outcome(WaitStatus::Exited(Pid::from_raw(1), 126)) else {
            panic!("not failed");
        };
        assert!(f.permanent);
        let mut r = Report::default();
        r.record(Message::ExecFailed {
            errno: libc::ENOENT,
            message: "x".into(),
        });
        let Outcome::Failed(f) = r.outcome(WaitStatus::Exited(Pid::from_raw(1), 127)) else {
            panic!("not failed");
        };
        assert_eq!((f.permanent, f.status), (false, 127));
    }

    #[test]
    fn the_reported_end_wins_over_the_wait_status() {
        let pid = Pid::from_raw(1);
        let mut r = Report::default();
        assert!(r.record(Message::Ready));
        assert!(!r.record(Message::Ready), "ready only once");
        r.record(Message::Signaled(15));
        assert_eq!(
            r.outcome(WaitStatus::Exited(pid, 143)),
            Outcome::Ended(End::Signal(15))
        );
        assert_eq!(
            Report::default().outcome(WaitStatus::Exited(pid, 2)),
            Outcome::Ended(End::Exit(2))
        );
    }

    #[test]
    fn the_zone_side_waits_for_go() {
        let (agent, zone) = channel().unwrap();
        Message::Ready.send(agent.as_fd()).unwrap();
        let waiter = std::thread::spawn(move || await_go(zone.as_fd()).map(|()| zone));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "went on before go");
        Message::Go.send(agent.as_fd()).unwrap();
        assert!(waiter.join().unwrap().is_ok());
    }

    #[test]
    fn the_zone_side_gives_up_when_the_agent_is_gone() {
        let (agent, zone) = channel().unwrap();
        drop(agent);
        assert!(await_go(zone.as_fd()).is_err());
    }
}
