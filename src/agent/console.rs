//! `zonit ctl console`: a guest's serial console, interactive.
//!
//! Output needs nothing new: the monitor writes the guest's console to the
//! unit's output pipe, so every attached client is a follower of the
//! unit's output (history first, from the ring). Input goes the other
//! way: the writer's `input` requests are queued here and written,
//! non-blocking, to a pipe that is the monitor's stdin; the monitor moves
//! it into the UART only as far as the receive FIFO has room.
//!
//! Invariants: one writer per guest at a time (a second is refused unless
//! it forces the first out); input never blocks the loop and never grows
//! without bound: at most [`MAX_QUEUED`] bytes wait here, [`PIPE_SIZE`] in
//! the pipe, 64 in the UART; what a guest that does not read leaves over
//! is dropped, and the writer is told once per episode.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mio::Interest;
use mio::unix::SourceFd;
use serde_json::json;

use super::{Agent, Source};
use crate::config::UnitKind;
use crate::control::proto;
use crate::sys;

/// Most input bytes queued in the agent for one guest.
pub const MAX_QUEUED: usize = 4096;
/// The size asked for the pipe to the monitor (the kernel's minimum is a
/// page).
const PIPE_SIZE: i32 = 4096;

/// Input waiting for a guest's monitor, bounded.
#[derive(Debug, Default)]
pub struct InputQueue {
    bytes: VecDeque<u8>,
    /// Bytes were dropped since the queue last drained: the writer was
    /// told already.
    dropping: bool,
}

/// What [`InputQueue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes that did not fit and were dropped.
    pub dropped: usize,
    /// The first drop since the queue last drained: tell the writer.
    pub notify: bool,
}

impl InputQueue {
    /// Queues what fits of `data`; the rest is dropped.
    pub fn push(&mut self, data: &[u8]) -> Pushed {
        let room = MAX_QUEUED - self.bytes.len();
        let taken = data.len().min(room);
        self.bytes.extend(&data[..taken]);
        let dropped = data.len() - taken;
        let notify = dropped > 0 && !self.dropping;
        self.dropping |= dropped > 0;
        Pushed { dropped, notify }
    }

    /// The next bytes to write (a contiguous run).
    pub fn front(&self) -> &[u8] {
        self.bytes.as_slices().0
    }

    /// `n` bytes were written.
    pub fn consume(&mut self, n: usize) {
        self.bytes.drain(..n.min(self.bytes.len()));
        if self.bytes.is_empty() {
            self.dropping = false;
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The bytes an `input` request carries: each character of `data` is one
/// byte, U+0000 to U+00FF (so any byte travels in a JSON string).
pub fn input_bytes(data: &str) -> Result<Vec<u8>, String> {
    data.chars()
        .map(|c| {
            u8::try_from(u32::from(c))
                .map_err(|_| format!("input character {c:?} is not a byte (U+0000 to U+00FF)"))
        })
        .collect()
}

/// One guest's console.
#[derive(Default)]
pub(super) struct Console {
    /// The write end of the running monitor's stdin, watched for room.
    pipe: Option<(OwnedFd, mio::Token)>,
    queue: InputQueue,
    /// The connection that may type.
    writer: Option<usize>,
}

impl Agent {
    /// The pipe a guest's monitor about to start reads its console input
    /// from: returns the read end, keeps the write end.
    pub(super) fn console_pipe(&mut self, unit: &str) -> io::Result<OwnedFd> {
        let (rx, tx) = sys::fd::pipe()?;
        sys::fd::set_nonblocking(tx.as_fd())?;
        // Smaller than the default: less to hold for a guest that does not
        // read. Not fatal: the default is bounded too.
        let _ = nix::fcntl::fcntl(&tx, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        let token = self.token(Source::ConsoleInput(unit.to_string()));
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&tx.as_raw_fd()), token, Interest::WRITABLE)
        {
            self.sources.remove(&token);
            return Err(e);
        }
        self.console_gone(unit);
        let console = self.consoles.entry(unit.to_string()).or_default();
        console.pipe = Some((tx, token));
        Ok(rx)
    }

    /// The guest's monitor ended: its input pipe and what waited for it
    /// go. Attached clients stay, for the next start.
    pub(super) fn console_gone(&mut self, unit: &str) {
        let Some(console) = self.consoles.get_mut(unit) else {
            return;
        };
        if let Some((fd, token)) = console.pipe.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.sources.remove(&token);
        }
        let n = console.queue.len();
        console.queue.consume(n);
    }

    /// `console`: attach connection `id` to guest `name`'s console.
    pub(super) fn attach_console(&mut self, id: usize, name: &str, read_only: bool, force: bool) {
        match self.config.unit(name).map(|u| &u.kind) {
            Some(UnitKind::Guest(_)) => {}
            Some(UnitKind::Zone(_)) => {
                let msg = format!("{name} is a zone; console attaches to guests (use exec -t)");
                self.send(id, &proto::error(&msg));
                return;
            }
            None => {
                self.send(id, &proto::error(&format!("no unit named `{name}`")));
                return;
            }
        }
        if !read_only {
            let console = self.consoles.entry(name.to_string()).or_default();
            match console.writer {
                Some(w) if w != id && !force => {
                    let msg = format!(
                        "the console of {name} has a writer already; --read-only watches it, --force takes it over"
                    );
                    self.send(id, &proto::error(&msg));
                    return;
                }
                Some(w) if w != id => {
                    console.writer = Some(id);
                    log::info!("{name}: console taken over by another client");
                    let msg = format!("another client took over the console of {name}");
                    self.send(w, &proto::error(&msg));
                    self.flush(w);
                    self.unfollow(w);
                }
                _ => console.writer = Some(id),
            }
        }
        self.send(
            id,
            &proto::ok(json!({ "console": name, "writer": !read_only })),
        );
        self.follow(id, name, None);
    }

    /// `input`: bytes typed by the writer of a console.
    pub(super) fn console_input(&mut self, id: usize, data: &str) {
        let Some((unit, console)) = self.consoles.iter_mut().find(|(_, c)| c.writer == Some(id))
        else {
            self.send(
                id,
                &proto::error("input needs a console attached as its writer"),
            );
            return;
        };
        let unit = unit.clone();
        let bytes = match input_bytes(data) {
            Ok(b) => b,
            Err(msg) => {
                self.send(id, &proto::error(&msg));
                return;
            }
        };
        let pushed = console.queue.push(&bytes);
        if pushed.notify {
            log::warn!("{unit}: the guest is not reading its console; dropping input");
            let msg = format!(
                "the guest {unit} is not reading its console: input dropped (more than {MAX_QUEUED} bytes waiting)"
            );
            self.send(id, &proto::ok(json!({ "notice": msg })));
            self.flush(id);
        }
        self.write_console(&unit);
    }

    /// Writes what is queued for `unit`'s monitor, as far as the pipe
    /// takes it; the rest waits for the pipe's next writable event.
    pub(super) fn write_console(&mut self, unit: &str) {
        let Some(console) = self.consoles.get_mut(unit) else {
            return;
        };
        let Some((fd, _)) = &console.pipe else {
            // No monitor running: nothing can take input now.
            let n = console.queue.len();
            console.queue.consume(n);
            return;
        };
        while !console.queue.is_empty() {
            match nix::unistd::write(fd, console.queue.front()) {
                Ok(n) => console.queue.consume(n),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    /// Connection `id` closed: it is no longer any console's writer.
    pub(super) fn console_client_gone(&mut self, id: usize) {
        for c in self.consoles.values_mut() {
            if c.writer == Some(id) {
                c.writer = None;
            }
        }
    }

    /// A unit a reload removed: its console goes with it.
    pub(super) fn drop_console(&mut self, unit: &str) {
        self.console_gone(unit);
        self.consoles.remove(unit);
    }
}

/// Consoles by guest name.
pub(super) type Consoles = HashMap<String, Console>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_takes_what_fits_and_tells_once_per_episode() {
        let mut q = InputQueue::default();
        assert_eq!(
            q.push(&[b'a'; MAX_QUEUED - 10]),
            Pushed {
                dropped: 0,
                notify: false
            }
        );
        assert_eq!(
            q.push(&[b'b'; 30]),
            Pushed {
                dropped: 20,
                notify: true
            }
        );
        assert_eq!(q.len(), MAX_QUEUED, "never more than the bound");
        assert_eq!(
            q.push(b"c"),
            Pushed {
                dropped: 1,
                notify: false
            },
            "told once"
        );
        q.consume(100);
        assert_eq!(q.len(), MAX_QUEUED - 100);
        assert!(!q.push(&[0; 200]).notify, "not drained yet: same episode");
        while !q.is_empty() {
            let n = q.front().len();
            q.consume(n);
        }
        assert!(q.push(&[0; MAX_QUEUED + 1]).notify, "a new episode");
    }

    #[test]
    fn input_travels_as_one_character_per_byte() {
        assert_eq!(
            input_bytes("a\u{1b}[A\u{ff}\u{0}"),
            Ok(vec![b'a', 27, b'[', b'A', 255, 0])
        );
        assert!(input_bytes("\u{100}").is_err());
        assert!(input_bytes("é").is_ok(), "U+00E9 is the byte 0xE9");
    }
}
