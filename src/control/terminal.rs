//! The client's side of interactive sessions: the local terminal in raw
//! mode (restored on every way out), the signals that matter to it, and
//! two relays.
//!
//! `zonit ctl exec -t`: the zone's terminal master comes back to the
//! client itself (SCM_RIGHTS), so the client relays the bytes and sets the
//! window size (`TIOCSWINSZ` on the master, which signals the command with
//! SIGWINCH); the agent only answers with the exit status.
//!
//! `zonit ctl console`: the guest's output arrives as `log` replies, and
//! keystrokes go as `input` requests on the same connection; Ctrl-]
//! detaches.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::termios::{self, SetArg, Termios};
use serde_json::Value;

use super::proto::{self, Request};
use crate::sys;
use crate::sys::tty::{self, WindowSize};

/// Most bytes read from one side before they are written to the other.
const CHUNK: usize = 4096;
/// Most chunks read from the master once the command has ended.
const FINAL_READS: usize = 256;

/// The local terminal in raw mode until dropped: every byte typed
/// (Ctrl-C, Ctrl-Z included) goes to the remote side as it is.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on stdin in raw mode.
    pub fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).map_err(io::Error::from)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).map_err(io::Error::from)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The signals an interactive client handles, each turned into a byte on
/// a pipe the relay polls: SIGWINCH (the window changed), and SIGTERM,
/// SIGHUP, SIGINT (leave, restoring the terminal).
struct Signals {
    winch: OwnedFd,
    quit: OwnedFd,
    /// The last quitting signal received.
    which: Arc<AtomicUsize>,
}

impl Signals {
    fn install() -> io::Result<Signals> {
        let (winch, winch_w) = sys::fd::pipe()?;
        let (quit, quit_w) = sys::fd::pipe()?;
        sys::fd::set_nonblocking(winch.as_fd())?;
        sys::fd::set_nonblocking(quit.as_fd())?;
        sys::fd::set_nonblocking(winch_w.as_fd())?;
        sys::fd::set_nonblocking(quit_w.as_fd())?;
        signal_hook::low_level::pipe::register(libc::SIGWINCH, winch_w)?;
        let which = Arc::new(AtomicUsize::new(0));
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
            signal_hook::flag::register_usize(sig, which.clone(), sig as usize)?;
            signal_hook::low_level::pipe::register(sig, quit_w.try_clone()?)?;
        }
        Ok(Signals { winch, quit, which })
    }

    /// A quitting signal arrived: the session ends with 128 + its number.
    fn interrupted(&self, why: &str) -> Ended {
        drain(self.quit.as_fd());
        let sig = self.which.load(Ordering::Relaxed) as u8;
        Ended {
            exit: 128u8.saturating_add(sig),
            error: Some(why.to_string()),
        }
    }
}

/// Waits until one of `fds` is ready; false when a signal interrupted
/// the wait (its pipe is then readable: poll again).
fn wait(fds: &mut [PollFd<'_>]) -> io::Result<bool> {
    match poll(fds, PollTimeout::NONE) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reads whatever is waiting on a non-blocking pipe (signal bytes).
fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    while matches!(nix::unistd::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// Writes all of `data` to stdout and flushes it.
fn show(data: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(data)?;
    out.flush()
}

/// `zonit ctl exec -t`: sends the request with one end of a socket pair,
/// receives the terminal's master on the other, then relays until the
/// agent sends the exit status. Returns `None` when no terminal came back
/// (the agent refused the request or the start failed): the caller then
/// reads the agent's error reply from `stream`.
pub fn exec(
    stream: &mut UnixStream,
    name: String,
    argv: Vec<String>,
    size: WindowSize,
) -> io::Result<Option<std::process::ExitCode>> {
    let stdin = io::stdin();
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let req = Request::Exec {
        name,
        argv,
        tty: Some(size),
    };
    let line = proto::encode_request(&req);
    let sent = sys::socket::send_with_fds(stream.as_fd(), &line, &[theirs.as_raw_fd()])?;
    stream.write_all(&line[sent..])?;
    // Only the helper (or, until it is done with it, the agent) holds the
    // other end now: EOF there means no terminal is coming.
    drop(theirs);
    let mut fds = [PollFd::new(mine.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::NONE).map_err(io::Error::from)?;
    let mut byte = [0u8; 1];
    let Some(master) = sys::socket::recv_with_fds(mine.as_fd(), &mut byte)?
        .fds
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    drop(mine);
    sys::fd::set_nonblocking(master.as_fd())?;
    // The size may have changed while the command started.
    let _ = tty::set_window_size(master.as_fd(), tty::window_size(stdin.as_fd())?);
    let signals = Signals::install()?;
    let raw = RawMode::enter()?;
    let code = relay(stream, master.as_fd(), &signals);
    drop(raw);
    let code = code?;
    if let Some(msg) = &code.error {
        eprintln!("zonit ctl: {msg}");
    }
    Ok(Some(std::process::ExitCode::from(code.exit)))
}

/// How a relay ended.
struct Ended {
    exit: u8,
    error: Option<String>,
}

/// Relays stdin to `master` and `master` to stdout until the agent's
/// reply on `stream`; the master's writes never block (a command that
/// does not read its input stops only the reading of stdin).
fn relay(stream: &mut UnixStream, master: BorrowedFd<'_>, signals: &Signals) -> io::Result<Ended> {
    let stdin = io::stdin();
    let mut to_master: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut reply: Vec<u8> = Vec::new();
    let (mut stdin_open, mut master_open) = (true, true);
    let mut buf = [0u8; CHUNK];
    loop {
        let none = PollFlags::empty();
        let want_stdin = stdin_open && to_master.is_empty();
        let mut master_events = none;
        if master_open {
            master_events |= PollFlags::POLLIN;
            if !to_master.is_empty() {
                master_events |= PollFlags::POLLOUT;
            }
        }
        let mut fds = [
            PollFd::new(
                stdin.as_fd(),
                if want_stdin { PollFlags::POLLIN } else { none },
            ),
            PollFd::new(master, master_events),
            PollFd::new(stream.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.winch.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.quit.as_fd(), PollFlags::POLLIN),
        ];
        if !wait(&mut fds)? {
            continue;
        }
        let ready = |i: usize| {
            fds[i].revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let (stdin_ready, master_ready, stream_ready, winch, quit) =
            (ready(0), ready(1), ready(2), ready(3), ready(4));
        let master_writable = fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLOUT));
        if quit {
            return Ok(signals.interrupted("interrupted; the command gets SIGHUP"));
        }
        if winch {
            drain(signals.winch.as_fd());
            if let Ok(size) = tty::window_size(stdin.as_fd()) {
                let _ = tty::set_window_size(master, size);
            }
        }
        if want_stdin && stdin_ready {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) => stdin_open = false,
                Ok(n) => to_master.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => stdin_open = false,
            }
        }
        if master_open && (master_writable || !to_master.is_empty()) {
            match nix::unistd::write(master, &to_master) {
                Ok(n) => {
                    to_master.drain(..n);
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => to_master.clear(),
            }
        }
        if master_open && master_ready && !read_master(master, &mut buf, 1)? {
            master_open = false;
            to_master.clear();
        }
        if stream_ready {
            let mut chunk = [0u8; 1024];
            let n = io::Read::read(stream, &mut chunk)?;
            if n == 0 {
                return Ok(Ended {
                    exit: 1,
                    error: Some("the agent closed the connection".into()),
                });
            }
            reply.extend_from_slice(&chunk[..n]);
            if let Some(nl) = reply.iter().position(|&b| b == b'\n') {
                // The command ended: what it wrote last may still wait
                // in the terminal (a bounded drain: a background process
                // may keep writing).
                if master_open {
                    read_master(master, &mut buf, FINAL_READS)?;
                }
                return Ok(ended(&reply[..nl]));
            }
        }
    }
}

/// Copies what the master has to stdout, at most `reads` chunks; returns
/// false once the master is done (EIO: every holder of the slave closed
/// it).
fn read_master(master: BorrowedFd<'_>, buf: &mut [u8], reads: usize) -> io::Result<bool> {
    for _ in 0..reads {
        match nix::unistd::read(master, buf) {
            Ok(0) => return Ok(false),
            Ok(n) => show(&buf[..n])?,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Ok(true),
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

/// The agent's final reply to an exec: the exit status, or an error.
fn ended(line: &[u8]) -> Ended {
    let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
    if v["ok"] == Value::Bool(true) {
        let exit = v["exit"].as_i64().map_or(1, |c| c.clamp(0, 255) as u8);
        return Ended { exit, error: None };
    }
    let msg = v["error"]
        .as_str()
        .unwrap_or("the agent sent no exit status");
    Ended {
        exit: v["exit"].as_i64().map_or(1, |c| c.clamp(1, 255) as u8),
        error: Some(msg.to_string()),
    }
}

/// The key that detaches from a console: Ctrl-], as telnet's and virsh's.
pub const DETACH: u8 = 0x1d;

/// `zonit ctl console`: attaches with `req`, then shows the console and
/// passes keystrokes (a writer only) until Ctrl-] or the end of the
/// connection.
pub fn console(stream: &mut UnixStream, req: &Request) -> io::Result<std::process::ExitCode> {
    let (name, read_only) = match req {
        Request::Console {
            name, read_only, ..
        } => (name.as_str(), *read_only),
        _ => return Err(io::Error::other("not a console request")),
    };
    stream.write_all(&proto::encode_request(req))?;
    let mut pending = Vec::new();
    let first = loop {
        if let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            break line;
        }
        let mut chunk = [0u8; 4096];
        let n = io::Read::read(stream, &mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("the agent closed the connection"));
        }
        pending.extend_from_slice(&chunk[..n]);
    };
    let v: Value = serde_json::from_slice(&first).unwrap_or(Value::Null);
    if v["ok"] != Value::Bool(true) {
        let msg = v["error"]
            .as_str()
            .unwrap_or("the agent refused the console");
        eprintln!("zonit ctl: {msg}");
        return Ok(std::process::ExitCode::from(1));
    }
    let signals = Signals::install()?;
    let stdin = io::stdin();
    let raw = if nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let mode = if read_only { " (read-only)" } else { "" };
    eprint!("Connected to the console of {name}{mode}; Ctrl-] detaches\r\n");
    let ended = console_relay(stream, pending, !read_only, &signals);
    drop(raw);
    let ended = ended?;
    match &ended.error {
        Some(msg) => eprintln!("zonit ctl: {msg}"),
        None => eprintln!("Detached from the console of {name}"),
    }
    Ok(std::process::ExitCode::from(ended.exit))
}

/// Shows the console's output and, for a `writer`, sends what is typed,
/// until Ctrl-], a signal, or the agent ends the session.
fn console_relay(
    stream: &mut UnixStream,
    mut pending: Vec<u8>,
    writer: bool,
    signals: &Signals,
) -> io::Result<Ended> {
    let stdin = io::stdin();
    let mut stdin_open = true;
    let mut buf = [0u8; CHUNK];
    loop {
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let v: Value = serde_json::from_slice(&line).unwrap_or(Value::Null);
            if v["ok"] != Value::Bool(true) {
                return Ok(ended(&line));
            }
            if let Some(text) = v["log"].as_str() {
                show(text.as_bytes())?;
            } else if let Some(notice) = v["notice"].as_str() {
                eprint!("\r\n[zonit: {notice}]\r\n");
            } else if v.get("end").is_some() {
                return Ok(Ended {
                    exit: 0,
                    error: Some("the guest was removed from the config".into()),
                });
            }
        }
        let none = PollFlags::empty();
        let mut fds = [
            PollFd::new(
                stdin.as_fd(),
                if stdin_open { PollFlags::POLLIN } else { none },
            ),
            PollFd::new(stream.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.winch.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.quit.as_fd(), PollFlags::POLLIN),
        ];
        if !wait(&mut fds)? {
            continue;
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (stdin_ready, stream_ready, winch, quit) = (ready(0), ready(1), ready(2), ready(3));
        if quit {
            return Ok(signals.interrupted("interrupted"));
        }
        if winch {
            // A serial console has no window size to pass on.
            drain(signals.winch.as_fd());
        }
        if stdin_open && stdin_ready {
            let n = match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EBADF | nix::errno::Errno::EIO) => {
                    stdin_open = false;
                    0
                }
                Ok(n) => n,
                Err(_) => 0,
            };
            let typed = &buf[..n];
            let detach = typed.iter().position(|&b| b == DETACH);
            let send = &typed[..detach.unwrap_or(n)];
            if writer && !send.is_empty() {
                let data: String = send.iter().map(|&b| char::from(b)).collect();
                stream.write_all(&proto::encode_request(&Request::Input { data }))?;
            }
            if detach.is_some() {
                return Ok(Ended {
                    exit: 0,
                    error: None,
                });
            }
        }
        if stream_ready {
            let n = io::Read::read(stream, &mut buf)?;
            if n == 0 {
                return Ok(Ended {
                    exit: 1,
                    error: Some("the agent closed the connection".into()),
                });
            }
            pending.extend_from_slice(&buf[..n]);
        }
    }
}

/// The size of the terminal on stdin, or why `-t` cannot be used.
pub fn local_size() -> Result<WindowSize, String> {
    let stdin = io::stdin();
    if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
        return Err("exec -t needs a terminal on stdin".into());
    }
    tty::window_size(stdin.as_fd()).map_err(|e| format!("unable to read the window size: {e}"))
}
