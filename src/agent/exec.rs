//! `zonit ctl exec` sessions: one exec helper per request, answered with
//! the command's exit status when the helper is reaped.

use std::os::fd::{AsFd, OwnedFd};

use nix::sys::wait::WaitStatus;
use serde_json::json;

use super::units::{Child, end_status_code};
use super::{Agent, Source};
use crate::config::UnitKind;
use crate::control::proto::{self, WindowSize};
use crate::logging::error_chain;
use crate::supervisor::State;
use crate::sys;
use crate::zone::exec;
use crate::zone::protocol::Outcome;

/// One running `exec`.
pub(super) struct Session {
    conn: usize,
    child: Child,
}

impl Agent {
    pub(super) fn start_exec(
        &mut self,
        id: usize,
        name: &str,
        argv: &[String],
        tty: Option<WindowSize>,
    ) {
        if argv.first().is_none_or(|a| a.is_empty()) {
            self.send(id, &proto::error("exec needs a command: argv is empty"));
            return;
        }
        let fds = self.control.take_fds(id);
        let io = match tty {
            None => match <[OwnedFd; 3]>::try_from(fds) {
                Ok(stdio) => exec::Io::Stdio(stdio),
                Err(_) => {
                    self.send(
                        id,
                        &proto::error(
                            "exec needs the caller's stdin, stdout and stderr passed with SCM_RIGHTS",
                        ),
                    );
                    return;
                }
            },
            Some(size) => match <[OwnedFd; 1]>::try_from(fds) {
                Ok([back]) => exec::Io::Terminal { back, size },
                Err(_) => {
                    self.send(
                        id,
                        &proto::error(
                            "exec with a terminal needs one socket passed with SCM_RIGHTS, for the terminal's master",
                        ),
                    );
                    return;
                }
            },
        };
        let zone = match self.config.unit(name).map(|u| &u.kind) {
            Some(UnitKind::Zone(z)) => z.clone(),
            Some(UnitKind::Guest(_)) => {
                self.send(
                    id,
                    &proto::error(&format!("{name} is a guest; exec runs in zones")),
                );
                return;
            }
            None => {
                self.send(id, &proto::error(&format!("no unit named `{name}`")));
                return;
            }
        };
        if self.sup.status(name).map(|s| s.state) != Some(State::Running) {
            self.send(id, &proto::error(&format!("zone {name} is not running")));
            return;
        }
        let Some(init) = self.runtimes.pidfd(name) else {
            self.send(id, &proto::error(&format!("zone {name} is not running")));
            return;
        };
        let group = self.cgroups.open(name);
        let started = match exec::exec(
            name,
            &zone,
            argv,
            init,
            group.as_ref().map(|g| g.as_fd()),
            io,
        ) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("unable to exec in {name}: {}", error_chain(&e));
                log::warn!("{msg}");
                self.send(id, &proto::error(&msg));
                return;
            }
        };
        log::info!("{name}: exec {:?}, pid {}", argv, started.pid);
        let child = self.watch_channel(
            started.pidfd,
            started.channel,
            Source::ExecStatus(started.pid),
        );
        self.execs.insert(started.pid, Session { conn: id, child });
    }

    /// Whether connection `id` waits for an exec to end.
    pub(super) fn exec_pending(&self, id: usize) -> bool {
        self.execs.values().any(|s| s.conn == id)
    }

    /// The client of an exec went away: hang up the command (the helper
    /// forwards the signal), as a terminal does.
    pub(super) fn exec_client_gone(&mut self, id: usize) {
        for s in self.execs.values().filter(|s| s.conn == id) {
            let _ = sys::process::pidfd_send_signal(s.child.pidfd.as_fd(), libc::SIGHUP);
        }
    }

    /// SIGKILL to every exec helper (shutdown past its deadline). The
    /// helper is not the PID namespace's init, so its command is killed
    /// with its zone, not with it.
    pub(super) fn kill_execs(&mut self) {
        for s in self.execs.values() {
            let _ = sys::process::pidfd_send_signal(s.child.pidfd.as_fd(), libc::SIGKILL);
        }
    }

    pub(super) fn read_exec_status(&mut self, pid: i32) {
        if let Some(s) = self.execs.get_mut(&pid) {
            s.child.read();
        }
    }

    /// Reaps an exec helper; returns false if `pid` is not one.
    pub(super) fn exec_ended(&mut self, pid: i32, status: WaitStatus) -> bool {
        if !self.execs.contains_key(&pid) {
            return false;
        }
        self.read_exec_status(pid);
        let Some(s) = self.execs.remove(&pid) else {
            return true;
        };
        self.unwatch_channel(&s.child);
        let reply = match s.child.report.outcome(status) {
            Outcome::Failed(f) => proto::error_with_exit(&f.reason, f.status),
            Outcome::Ended(end) => proto::ok(json!({ "exit": end_status_code(&end) })),
        };
        self.send(s.conn, &reply);
        self.flush(s.conn);
        true
    }
}
