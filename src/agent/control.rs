//! The control socket inside the event loop: accepting clients (root
//! only, by SO_PEERCRED), reading request lines, answering them, and
//! streaming logs to followers.
//!
//! Invariant: a client can never make the agent block or grow without
//! bound: request lines are capped at `proto::MAX_REQUEST`, unsent replies
//! at [`MAX_PENDING`] (a follower that falls behind is dropped).

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use mio::Interest;
use mio::net::{UnixListener, UnixStream};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde_json::json;

use super::events::Events;
use super::{Agent, Error, LISTENER, Mode, ShutdownAction, Source, claim};
use crate::config::UnitKind;
use crate::control::event::Event;
use crate::control::proto::{self, Request, UnitRow};
use crate::supervisor::{Input, State, StopOutcome, Supervisor, Want};
use crate::sys;

/// Most unsent reply bytes kept for one client.
const MAX_PENDING: usize = 1024 * 1024;
/// How soon an accept that failed for want of fds or memory is retried.
pub(super) const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// Most request lines carried out for one client per wake-up, so one
/// client's pipelined flood cannot starve the loop.
const LINE_BUDGET: usize = 256;

/// The control server's state: the listening socket and the hold on its
/// path, the client connections, and what is owed to them.
#[derive(Default)]
pub(super) struct Server {
    listener: Option<UnixListener>,
    /// The hold on the socket's path; dropped last, it removes the socket.
    claim: Option<claim::Claim>,
    /// Open connections by id.
    conns: HashMap<usize, Conn>,
    /// `stop` requests waiting for their unit: (connection, unit).
    stop_waiters: Vec<(usize, String)>,
    /// `start` and `restart` requests waiting for their unit to be ready.
    start_waiters: Vec<(usize, String)>,
    /// Connections with requests left over from the last wake-up.
    pending: Vec<usize>,
    /// When to try `accept` again after it failed for want of fds.
    accept_retry: Option<Instant>,
    /// The event stream: its history and subscribers.
    events: Events,
}

impl Server {
    /// Takes the `start` and `restart` requests whose unit is ready
    /// (`running`), whose start came to nothing, or that a later `stop`
    /// (or the shutdown) overrode: that is no failure of the start. Each
    /// comes with its reply.
    fn settled_starts(&mut self, sup: &Supervisor) -> Vec<(usize, Vec<u8>)> {
        let mut done = Vec::new();
        self.start_waiters.retain(|(id, unit)| {
            let status = sup.status(unit);
            if let Some(st) = status.filter(|s| {
                s.want == Want::Down && s.state != State::Exited && s.state != State::Failed
            }) {
                done.push((*id, proto::ok(json!({ "state": st.state.as_str() }))));
                return false;
            }
            match status.map(|s| s.state) {
                Some(State::Starting | State::Stopping) => true,
                Some(State::Running) => {
                    done.push((*id, proto::ok(json!({ "state": "running" }))));
                    false
                }
                other => {
                    let state = other.map_or("unknown", |s| s.as_str());
                    let why = status
                        .and_then(|s| s.reason.clone())
                        .or_else(|| {
                            status
                                .and_then(|s| s.last_exit.as_ref())
                                .map(|e| e.describe())
                        })
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    let msg = format!("{unit} did not become ready, it is {state}{why}");
                    done.push((*id, proto::error(&msg)));
                    false
                }
            }
        });
        done
    }

    /// Forgets everything connection `id` waits for here: its `stop`,
    /// `start` and `restart` requests, its event stream.
    fn forget_waits(&mut self, id: usize) {
        self.stop_waiters.retain(|(c, _)| *c != id);
        self.start_waiters.retain(|(c, _)| *c != id);
        self.events.unsubscribe(id);
    }

    /// Writes this agent's record into the socket's claim, once the
    /// cgroups are known.
    pub(super) fn record_claim(&mut self, record: &claim::Record) {
        if let Some(c) = &mut self.claim {
            c.record(record);
        }
    }

    /// Whether connection `id` waits for a unit's `stop` or start, or for
    /// events.
    fn owes_later(&self, id: usize) -> bool {
        self.stop_waiters.iter().any(|(c, _)| *c == id)
            || self.start_waiters.iter().any(|(c, _)| *c == id)
            || self.events.is_subscribed(id)
    }

    /// Connections with requests left over from the last wake-up; the
    /// list is emptied.
    pub(super) fn take_pending(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.pending)
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When `accept` is to be tried again, after it failed for want of fds.
    pub(super) fn accept_deadline(&self) -> Option<Instant> {
        self.accept_retry
    }

    /// Whether the retry of `accept` is due at `now` (it is then no
    /// longer scheduled).
    pub(super) fn accept_due(&mut self, now: Instant) -> bool {
        let due = self.accept_retry.is_some_and(|t| t <= now);
        if due {
            self.accept_retry = None;
        }
        due
    }

    /// The fds connection `id` passed for its next request (none if it
    /// is gone).
    pub(super) fn take_fds(&mut self, id: usize) -> Vec<OwnedFd> {
        self.conns
            .get_mut(&id)
            .map(|c| c.fds.take())
            .unwrap_or_default()
    }

    // The event stream (`events.rs`) through the server that holds its
    // subscribers' connections.

    /// The events of the engine's state changes since the last call.
    pub(super) fn event_changes(
        &mut self,
        sup: &Supervisor,
        now: Instant,
        ts_ms: u64,
    ) -> Vec<Event> {
        self.events.changes(sup, now, ts_ms)
    }

    /// An `oom` event when `unit`'s OOM kill count grew since last seen.
    pub(super) fn oom_event(&mut self, unit: &str, kills: u64, ts_ms: u64) -> Option<Event> {
        self.events.oom(unit, kills, ts_ms)
    }

    /// Keeps `e` in the history; returns the connections to send it to.
    pub(super) fn publish(&mut self, e: Event) -> Vec<usize> {
        self.events.record(e);
        self.events.subscribers().to_vec()
    }

    /// The kept events from `from_ms` on, oldest first.
    pub(super) fn events_since(&self, from_ms: u64) -> impl Iterator<Item = &Event> {
        self.events.since(from_ms)
    }

    /// Makes connection `id` a subscriber, unless it is gone (sending it
    /// the history may have dropped it).
    pub(super) fn subscribe(&mut self, id: usize) {
        if self.conns.contains_key(&id) {
            self.events.subscribe(id);
        }
    }

    /// Takes the `stop` requests whose unit came to rest, or that a later
    /// start or restart superseded, with the reply each gets.
    fn settled_stops(&mut self, sup: &Supervisor) -> Vec<(usize, Vec<u8>)> {
        let mut done = Vec::new();
        self.stop_waiters.retain(|(id, unit)| {
            let reply = match sup.status(unit).map(|s| s.stop_outcome()) {
                Some(StopOutcome::Pending) => return true,
                Some(StopOutcome::Done(state)) => proto::ok(json!({ "state": state.as_str() })),
                Some(StopOutcome::Superseded(state)) => proto::error(&format!(
                    "stop of {unit} superseded: another request started it again (now {})",
                    state.as_str()
                )),
                None => proto::ok(json!({ "state": "removed" })),
            };
            done.push((*id, reply));
            false
        });
        done
    }
}

struct Conn {
    stream: UnixStream,
    token: mio::Token,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Close once `wbuf` is flushed.
    closing: bool,
    /// The client will send nothing more (it half-closed or closed).
    eof: bool,
    /// The client closed both directions: nothing can reach it.
    gone: bool,
    /// The client's pid (SO_PEERCRED), for the log.
    peer_pid: i32,
    writable_registered: bool,
    /// fds passed with SCM_RIGHTS, for the next request.
    fds: PassedFds,
}

/// fds that `exec` takes: stdin, stdout, stderr.
const EXEC_FDS: usize = 3;
/// fds that `exec` with a terminal takes: the socket the terminal's
/// master goes back on.
const EXEC_TTY_FDS: usize = 1;

impl Conn {
    /// Takes the next complete request line out of the read buffer,
    /// without its newline.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let nl = self.rbuf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.rbuf.drain(..=nl).collect();
        line.pop();
        Some(line)
    }

    /// Reads one chunk (and the fds passed with it) into the buffers;
    /// false when the socket has nothing more for now.
    fn read_some(&mut self, buf: &mut [u8]) -> bool {
        match sys::socket::recv_with_fds(self.stream.as_fd(), buf) {
            Ok(got) => {
                self.fds.take_fds(got.fds, got.truncated);
                if got.bytes == 0 {
                    self.eof = true;
                }
                self.rbuf.extend_from_slice(&buf[..got.bytes]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => self.eof = true,
        }
        true
    }

    /// Queues a reply; false when that would pass [`MAX_PENDING`]: the
    /// client is not reading, so what it was owed is replaced by one
    /// error saying so, and the connection closes once that is sent.
    /// A connection already closing takes nothing more.
    fn queue(&mut self, bytes: &[u8]) -> bool {
        if self.closing {
            return false;
        }
        if self.wbuf.len() + bytes.len() > MAX_PENDING {
            self.wbuf = proto::error(&format!(
                "dropped: this client left more than {} KiB of replies unread",
                MAX_PENDING / 1024
            ));
            self.closing = true;
            return false;
        }
        self.wbuf.extend_from_slice(bytes);
        true
    }

    /// Writes what the socket takes of the queued replies, and watches for
    /// writability exactly while some are left. A write error marks the
    /// connection for closing.
    fn flush(&mut self, registry: &mio::Registry) {
        while !self.wbuf.is_empty() {
            match self.stream.write(&self.wbuf) {
                Ok(0) => break,
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.wbuf.clear();
                    self.closing = true;
                    break;
                }
            }
        }
        let want_writable = !self.wbuf.is_empty();
        if want_writable != self.writable_registered {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if registry
                .reregister(&mut self.stream, self.token, interest)
                .is_ok()
            {
                self.writable_registered = want_writable;
            }
        }
    }
}

/// The fds a client passed for its next request.
#[derive(Default)]
struct PassedFds {
    fds: Vec<OwnedFd>,
    /// More fds arrived than any request takes (they were closed): how
    /// many. The next request is refused.
    refused: Option<usize>,
}

impl PassedFds {
    /// Keeps passed fds for the next request, or closes them at once when
    /// they are more than a request can take.
    fn take_fds(&mut self, fds: Vec<OwnedFd>, truncated: bool) {
        if fds.is_empty() && !truncated {
            return;
        }
        let total = self.fds.len() + fds.len();
        if truncated || total > EXEC_FDS || self.refused.is_some() {
            // Dropping closes every one of them.
            self.fds.clear();
            self.refused = Some(self.refused.unwrap_or(0) + total);
        } else {
            self.fds.extend(fds);
        }
    }

    /// A request comes with exactly the fds it takes: three for `exec`,
    /// one for `exec` with a terminal, none for anything else. Refused fds
    /// are closed.
    fn check(&mut self, req: &Request) -> Result<(), String> {
        let wanted = match req {
            Request::Exec { tty: None, .. } => EXEC_FDS,
            Request::Exec { tty: Some(_), .. } => EXEC_TTY_FDS,
            _ => 0,
        };
        let got = match self.refused.take() {
            Some(n) => n,
            None if wanted == 0 && !self.fds.is_empty() => {
                let n = self.fds.len();
                self.fds.clear();
                n
            }
            None => return Ok(()),
        };
        Err(format!(
            "request refused: it carried {got} fds (SCM_RIGHTS); exec takes {EXEC_FDS} (stdin, stdout, stderr), exec with a terminal {EXEC_TTY_FDS} (a socket), other requests none"
        ))
    }

    /// The fds for the request being carried out.
    fn take(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

impl Agent {
    /// Claims the control socket's path (see `claim`), binds the socket
    /// and watches it; returns the record a dead predecessor left.
    pub(super) fn bind_control(&mut self) -> Result<claim::Record, Error> {
        let path = self.config.host.control_socket.clone();
        let err = |source: io::Error| Error::Socket {
            path: path.clone(),
            source,
        };
        let (claim, previous) = claim::Claim::take(&path).map_err(Error::Claim)?;
        let mut listener = UnixListener::bind(&path).map_err(err)?;
        // From here on the claim removes the socket if anything fails.
        self.control.claim = Some(claim);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        self.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(Error::Poll)?;
        self.control.listener = Some(listener);
        Ok(previous)
    }

    pub(super) fn accept(&mut self) {
        loop {
            let Some(listener) = &self.control.listener else {
                return;
            };
            let mut stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket: accept failed: {e}");
                    // The listener is edge-triggered: a client left in the
                    // backlog (say, while out of fds) is tried again soon.
                    if sys::is_transient(&e) {
                        self.control.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    }
                    return;
                }
            };
            let peer_pid = match getsockopt(&stream, PeerCredentials) {
                Ok(cred) if cred.uid() == 0 => cred.pid(),
                Ok(cred) => {
                    log::warn!(
                        "control socket: refused pid {} uid {}: only root may control zonit",
                        cred.pid(),
                        cred.uid()
                    );
                    let _ = stream.write_all(&proto::error(
                        "permission denied: only root may control zonit",
                    ));
                    continue;
                }
                Err(e) => {
                    log::warn!("control socket: unable to read peer credentials: {e}");
                    continue;
                }
            };
            let id = self.sources.next_id();
            let token = self.token(Source::Conn(id));
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                log::warn!("control socket: unable to watch a client: {e}");
                self.sources.remove(&token);
                continue;
            }
            self.control.conns.insert(
                id,
                Conn {
                    stream,
                    token,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    closing: false,
                    eof: false,
                    gone: false,
                    peer_pid,
                    writable_registered: false,
                    fds: PassedFds::default(),
                },
            );
        }
    }

    /// A client's socket is readable or writable (or, from the loop's
    /// pending list, it has more to process): flushes replies, carries out
    /// complete request lines one at a time, reads more when none is left.
    /// `gone` says the client closed both directions.
    ///
    /// The socket is edge-triggered, so this either reads until
    /// `WouldBlock`, or stops with a way back: a writable event (replies
    /// piling up: requests wait until the client reads) or the loop's
    /// pending list (the per-wake-up budget is spent).
    pub(super) fn on_conn(&mut self, id: usize, gone: bool) {
        let mut handled = 0;
        let mut buf = [0u8; 4096];
        if gone && let Some(conn) = self.control.conns.get_mut(&id) {
            conn.gone = true;
        }
        loop {
            self.flush(id);
            let Some(conn) = self.control.conns.get_mut(&id) else {
                return;
            };
            if conn.closing {
                break;
            }
            if conn.wbuf.len() > MAX_PENDING / 2 && !conn.gone {
                break; // resumed by the writable event
            }
            if handled >= LINE_BUDGET {
                self.control.pending.push(id);
                break;
            }
            if let Some(line) = conn.next_line() {
                handled += 1;
                self.line(id, &line);
                continue;
            }
            if conn.rbuf.len() > proto::MAX_REQUEST {
                conn.rbuf.clear();
                conn.closing = true;
                let msg = format!("request longer than {} bytes", proto::MAX_REQUEST);
                self.send(id, &proto::error(&msg));
                continue;
            }
            if conn.eof {
                break;
            }
            if !conn.read_some(&mut buf) {
                break;
            }
        }
        if self.control.conns.get(&id).is_some_and(|c| c.gone) {
            self.exec_client_gone(id);
            self.close(id);
        } else {
            self.close_if_done(id);
        }
    }

    /// Carries out one request line.
    fn line(&mut self, id: usize, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match proto::decode(line) {
            Ok(req) => {
                if let Err(msg) = self
                    .control
                    .conns
                    .get_mut(&id)
                    .map_or(Ok(()), |c| c.fds.check(&req))
                {
                    log::debug!("control socket: {msg}");
                    self.send(id, &proto::error(&msg));
                    return;
                }
                self.request(id, req)
            }
            Err(e) => {
                log::debug!("control socket: {e}");
                self.send(id, &proto::error(&e.to_string()));
            }
        }
    }

    /// Closes a connection whose client has stopped sending once nothing
    /// is owed to it: every reply sent, no `stop` waiting, no log
    /// following, no exec running. A half-closed client thus still gets
    /// every reply.
    fn close_if_done(&mut self, id: usize) {
        let Some(conn) = self.control.conns.get(&id) else {
            return;
        };
        // An unfinished last line is never carried out.
        if !conn.eof || !conn.wbuf.is_empty() {
            return;
        }
        let waiting =
            self.control.owes_later(id) || self.runtimes.is_following(id) || self.exec_pending(id);
        if !waiting {
            self.close(id);
        }
    }

    fn request(&mut self, id: usize, req: Request) {
        match req {
            Request::Status {} => {
                let rows = self.status_rows();
                self.send(id, &proto::ok(json!({ "units": rows })));
            }
            Request::Start { name } => self.unit_command(id, Input::Start(name.clone()), &name),
            Request::Restart { name } => self.unit_command(id, Input::Restart(name.clone()), &name),
            Request::Stop { name } => {
                if self.sup.status(&name).is_none() {
                    self.send(id, &proto::error(&format!("no unit named `{name}`")));
                    return;
                }
                self.log_operator(id, &format!("stop {name}"));
                self.control.stop_waiters.push((id, name.clone()));
                self.feed(Input::Stop(name));
            }
            Request::Logs {
                name,
                lines,
                follow,
            } => {
                if self.sup.status(&name).is_none() {
                    self.send(id, &proto::error(&format!("no unit named `{name}`")));
                    return;
                }
                if follow {
                    self.follow(id, &name, lines);
                } else {
                    self.send_tail(id, &name, lines);
                    self.send(id, &proto::ok(json!({ "end": true })));
                }
            }
            Request::Console {
                name,
                read_only,
                force,
            } => self.attach_console(id, &name, read_only, force),
            Request::Input { data } => self.console_input(id, &data),
            Request::Exec { name, argv, tty } => self.start_exec(id, &name, &argv, tty),
            Request::Events { since_ms } => self.subscribe(id, since_ms),
            Request::Reload {} => {
                self.log_operator(id, "reload");
                match self.reload_and_log() {
                    Ok(msg) => self.send(id, &proto::ok(json!({ "message": msg }))),
                    Err(errors) => {
                        let msg = format!(
                            "reload failed; the running config is unchanged:\n{}",
                            errors.join("\n")
                        );
                        self.send(id, &proto::error(&msg));
                    }
                }
            }
            Request::Poweroff {} => self.host_command(id, ShutdownAction::Poweroff),
            Request::Reboot {} => self.host_command(id, ShutdownAction::Reboot),
            Request::Halt {} => self.host_command(id, ShutdownAction::Halt),
        }
    }

    /// Sends the last `lines` lines of `name`'s output (all of the ring
    /// when `None`).
    fn send_tail(&mut self, id: usize, name: &str, lines: Option<usize>) {
        let text = self.runtimes.tail(name, lines);
        if !text.is_empty() {
            self.send_log(id, &text);
        }
    }

    /// Sends the tail of `name`'s output, then streams new output to `id`.
    pub(super) fn follow(&mut self, id: usize, name: &str, lines: Option<usize>) {
        self.send_tail(id, name, lines);
        // A unit added by a reload has no runtime yet; make it so the
        // follower sees its first start too.
        self.runtimes.ensure(name);
        self.runtimes.follow(name, id);
    }

    /// Stops streaming output to `id`.
    pub(super) fn unfollow(&mut self, id: usize) {
        self.runtimes.unfollow(id);
    }

    /// `start` and `restart`: the reply comes once the unit is ready, or
    /// its start has failed.
    fn unit_command(&mut self, id: usize, input: Input, name: &str) {
        if self.sup.status(name).is_none() {
            self.send(id, &proto::error(&format!("no unit named `{name}`")));
            return;
        }
        let verb = match input {
            Input::Restart(_) => "restart",
            _ => "start",
        };
        self.log_operator(id, &format!("{verb} {name}"));
        self.control.start_waiters.push((id, name.to_string()));
        self.feed(input);
    }

    /// Replies to `start` and `restart` requests whose unit is ready
    /// (`running`), whose start came to nothing, or that a later `stop`
    /// (or the shutdown) overrode.
    pub(super) fn answer_start_waiters(&mut self) {
        for (id, reply) in self.control.settled_starts(&self.sup) {
            self.send(id, &reply);
            self.flush(id);
        }
    }

    fn host_command(&mut self, id: usize, action: ShutdownAction) {
        if self.opts.mode != Mode::Init {
            self.send(
                id,
                &proto::error(
                    "poweroff, reboot and halt need zonit as PID 1; stop `zonit run` with SIGTERM",
                ),
            );
            return;
        }
        self.log_operator(id, &format!("{action:?}").to_lowercase());
        self.send(
            id,
            &proto::ok(json!({ "message": format!("{action:?} started") })),
        );
        self.begin_shutdown(action);
    }

    /// One log line per operator action, naming the client.
    fn log_operator(&self, id: usize, what: &str) {
        let pid = self.control.conns.get(&id).map_or(0, |c| c.peer_pid);
        log::info!("control: {what} (requested by pid {pid})");
    }

    pub(super) fn status_rows(&self) -> Vec<UnitRow> {
        let now = Instant::now();
        // Units a reload removed show until they have stopped.
        self.config
            .units
            .iter()
            .chain(self.runtimes.retiring_units())
            .filter_map(|u| {
                let st = self.sup.status(&u.name)?;
                Some(UnitRow {
                    name: u.name.clone(),
                    kind: match u.kind {
                        UnitKind::Zone(_) => "zone".into(),
                        UnitKind::Guest(_) => "guest".into(),
                    },
                    state: st.state.as_str().into(),
                    pid: st.pid,
                    restarts: st.restarts,
                    uptime_ms: st
                        .running_since
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                    last_exit: st.last_exit.as_ref().map(|e| e.describe()),
                    reason: st.reason.clone(),
                    oom_kills: self.cgroups.oom_kills(&u.name),
                    health: st.health.map(|h| h.as_str().into()),
                    addresses: crate::net::host::HostNet::addresses(&self.config, &u.name),
                })
            })
            .collect()
    }

    /// Replies to `stop` requests whose unit has come to rest, or that a
    /// later start or restart superseded.
    pub(super) fn answer_stop_waiters(&mut self) {
        for (id, reply) in self.control.settled_stops(&self.sup) {
            self.send(id, &reply);
            self.flush(id);
        }
    }

    pub(super) fn send_log(&mut self, id: usize, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        self.send(id, &proto::ok(json!({ "log": text })));
        self.flush(id);
    }

    /// Ends a `logs -f` stream whose unit went away.
    pub(super) fn end_follow(&mut self, id: usize) {
        self.send(id, &proto::ok(json!({ "end": true })));
        self.flush(id);
    }

    pub(super) fn send(&mut self, id: usize, bytes: &[u8]) {
        let Some(conn) = self.control.conns.get_mut(&id) else {
            return;
        };
        if !conn.queue(bytes) {
            if conn.closing && !conn.wbuf.is_empty() {
                log::warn!(
                    "control socket: pid {} not reading its replies; dropping it",
                    conn.peer_pid
                );
            }
            // Nothing more is owed to it; the drop notice goes out if the
            // client ever reads, and the connection closes then.
            self.detach(id);
            self.flush(id);
        }
    }

    pub(super) fn flush(&mut self, id: usize) {
        let Some(conn) = self.control.conns.get_mut(&id) else {
            return;
        };
        conn.flush(self.poll.registry());
        if conn.closing && conn.wbuf.is_empty() {
            self.close(id);
        } else if conn.eof && conn.wbuf.is_empty() {
            self.close_if_done(id);
        }
    }

    fn close(&mut self, id: usize) {
        if let Some(mut conn) = self.control.conns.remove(&id) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.sources.remove(&conn.token);
        }
        self.detach(id);
    }

    /// Ends everything connection `id` waits for: stops, log follows,
    /// the event stream.
    fn detach(&mut self, id: usize) {
        self.control.forget_waits(id);
        self.unfollow(id);
        self.console_client_gone(id);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn fds(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| std::fs::File::open("/dev/null").unwrap().into())
            .collect()
    }

    fn exec() -> Request {
        Request::Exec {
            name: "z".into(),
            argv: vec!["id".into()],
            tty: None,
        }
    }

    /// An engine of one unit `a`, restarted always.
    pub(in crate::agent) fn engine() -> Supervisor {
        let spec = crate::supervisor::Spec {
            name: "a".into(),
            after: Vec::new(),
            restart: crate::config::RestartPolicy::Always,
            backoff: crate::config::Backoff::default(),
            start_limit: None,
            stop_timeout: std::time::Duration::from_secs(10),
            reboot_restarts: false,
            ready: None,
            health: None,
        };
        Supervisor::new(vec![spec])
    }

    #[test]
    fn a_stop_waiter_gets_stopped_or_superseded_once() {
        let now = Instant::now();
        let mut sup = engine();
        sup.handle(Input::Start("a".into()), now).unwrap();
        sup.handle(
            Input::Spawned {
                unit: "a".into(),
                pid: 7,
            },
            now,
        )
        .unwrap();
        sup.handle(Input::Ready("a".into()), now).unwrap();
        let mut server = Server::default();
        server.stop_waiters.push((1, "a".into()));
        sup.handle(Input::Stop("a".into()), now).unwrap();
        assert!(server.settled_stops(&sup).is_empty(), "still stopping");
        sup.handle(Input::Start("a".into()), now).unwrap();
        let done = server.settled_stops(&sup);
        assert_eq!(done.len(), 1);
        assert!(String::from_utf8_lossy(&done[0].1).contains("superseded"));
        assert!(server.settled_stops(&sup).is_empty(), "answered once");
        server.stop_waiters.push((2, "a".into()));
        sup.handle(Input::Stop("a".into()), now).unwrap();
        let end = crate::supervisor::End::Signal(15);
        sup.handle(
            Input::Ended {
                unit: "a".into(),
                end,
            },
            now,
        )
        .unwrap();
        let done = server.settled_stops(&sup);
        assert!(String::from_utf8_lossy(&done[0].1).contains(r#""state":"stopped""#));
    }

    /// A connection with nothing read or queued, and its peer.
    fn conn() -> (Conn, UnixStream) {
        let (stream, peer) = UnixStream::pair().unwrap();
        let conn = Conn {
            stream,
            token: mio::Token(9),
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            closing: false,
            eof: false,
            gone: false,
            peer_pid: 1,
            writable_registered: false,
            fds: PassedFds::default(),
        };
        (conn, peer)
    }

    #[test]
    fn events_go_to_open_subscribers_until_they_are_forgotten() {
        let mut server = Server::default();
        let (open, _peer) = conn();
        server.conns.insert(1, open);
        // Connection 2 was dropped while it was sent the history.
        server.subscribe(1);
        server.subscribe(2);
        let event = || Event::new(0, "running", Some("a"));
        assert_eq!(server.publish(event()), [1]);
        assert!(server.owes_later(1));
        server.forget_waits(1);
        assert!(server.publish(event()).is_empty());
        assert!(!server.owes_later(1));
        assert_eq!(server.events_since(0).count(), 2, "both kept");
    }

    #[test]
    fn a_client_past_its_queue_bound_gets_one_drop_notice_and_nothing_more() {
        let (mut conn, _peer) = conn();
        let line = vec![b'x'; 1000];
        let mut queued = 0;
        while conn.queue(&line) {
            queued += 1;
        }
        assert_eq!(queued, MAX_PENDING / 1000);
        assert!(conn.closing);
        let notice = String::from_utf8_lossy(&conn.wbuf).into_owned();
        let v: serde_json::Value = serde_json::from_str(&notice).unwrap();
        assert_eq!(v["ok"], false);
        assert!(
            v["error"].as_str().unwrap().starts_with("dropped: "),
            "{notice}"
        );
        assert!(!conn.queue(b"late"), "a dropped client takes nothing more");
        assert_eq!(conn.wbuf, notice.as_bytes());
    }

    #[test]
    fn exec_takes_its_three_fds() {
        let mut p = PassedFds::default();
        p.take_fds(fds(3), false);
        assert!(p.check(&exec()).is_ok());
        assert_eq!(p.take().len(), 3);
    }

    #[test]
    fn too_many_fds_are_closed_and_the_next_request_refused() {
        let mut p = PassedFds::default();
        p.take_fds(fds(2), false);
        p.take_fds(fds(5), false);
        assert!(p.fds.is_empty(), "every fd is closed at once");
        let err = p.check(&exec()).unwrap_err();
        assert!(err.contains("carried 7 fds"), "{err}");
        // Only that request is refused.
        assert!(p.check(&Request::Status {}).is_ok());
    }

    #[test]
    fn truncated_fds_refuse_the_request() {
        let mut p = PassedFds::default();
        p.take_fds(Vec::new(), true);
        assert!(p.check(&exec()).is_err());
    }

    #[test]
    fn fds_with_a_request_that_takes_none_are_refused_and_closed() {
        let mut p = PassedFds::default();
        p.take_fds(fds(1), false);
        assert!(p.check(&Request::Status {}).is_err());
        assert!(p.fds.is_empty());
    }
}
