//! Starting a zone: one `clone3` into new namespaces, then the zone's init.
//!
//! Process tree: agent -> zone init (PID 1 of the zone's PID namespace,
//! zonit code) -> the configured command. The init forks the command's
//! process, which sets up the root (in the namespaces it shares with the
//! init) and execs the command; the init stays as the zone's reaper: it
//! forwards signals to the command, reaps orphans, and exits with the
//! command's status. Keeping the setup out of the init keeps the init's
//! private memory, what each running zone costs, to a few pages.
//!
//! Fork hygiene: every C string is built before `clone3`; the agent is
//! single-threaded, so the child may allocate. Only stdio (and, for a zone
//! with `ready = { notify = "fd" }`, the write end of the notify pipe at
//! the fd number it asked for) is inherited by the command; every other fd
//! the agent holds is closed in the init.
//!
//! The init and the agent talk over the zone start protocol
//! ([`super::protocol`]): the command's process sets up the zone, then
//! waits for the agent's `Go` before it drops privileges and executes the
//! command; the init reports `Ready` or why the start failed, then how the
//! command ended.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::plan::{self, Op};
use super::protocol::{self, MAX_MESSAGE, Message};
use super::{rootfs, seccomp, template};
use crate::config::{TemplateMode, Zone};
use crate::logging::error_chain;
use crate::sys;

/// PATH used to find the command when the zone's env sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a zone could not be started (agent side).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config string holds a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which setting.
        what: &'static str,
    },
    /// The channel to the zone could not be created.
    #[error("unable to create the zone's channel")]
    Channel(#[source] io::Error),
    /// clone3 failed.
    #[error("unable to clone the zone's init")]
    Clone(#[source] io::Error),
    /// The seccomp filter is unusable (a bug in its rule table).
    #[error("no seccomp filter")]
    Seccomp(#[source] &'static seccomp::Error),
}

/// The write end of a readiness pipe and the fd number the command finds
/// it at (`ready = { notify = "fd" }`).
#[derive(Debug, Clone, Copy)]
pub struct Notify<'a> {
    /// The agent's copy of the write end.
    pub fd: BorrowedFd<'a>,
    /// Where the command gets it: 3 or above.
    pub at: RawFd,
}

/// A started zone, as the agent holds it.
pub struct Started {
    /// Host PID of the zone's init.
    pub pid: i32,
    /// pidfd of the zone's init.
    pub pidfd: OwnedFd,
    /// The agent's end of the zone start channel ([`protocol`]).
    pub channel: OwnedFd,
}

/// Everything the child needs, prepared before the clone.
pub(super) struct Prepared {
    ops: Vec<Op>,
    /// `(template, root)` when the root is a one-time copy of a template.
    copy: Option<(std::path::PathBuf, std::path::PathBuf)>,
    seccomp: &'static [seccompiler::sock_filter],
    hostname: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Candidate paths for argv[0] (PATH search done inside the zone).
    candidates: Vec<CString>,
    workdir: CString,
    uid: u32,
    gid: u32,
    caps: Vec<u8>,
    /// The kernel's highest capability, read by the agent (once) so the
    /// command does not read /proc on every start.
    last_cap: u8,
    rlimits: Vec<(Resource, u64)>,
}

fn cstring(s: impl Into<Vec<u8>>, what: &'static str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Nul { what })
}

fn prepare(zone: &Zone) -> Result<Prepared, Error> {
    prepare_command(zone, &zone.command)
}

/// Prepares running `command` with `zone`'s environment, user,
/// capabilities and limits (the zone's own command, or `ctl exec`).
pub(super) fn prepare_command(zone: &Zone, command: &[String]) -> Result<Prepared, Error> {
    let argv = command
        .iter()
        .map(|a| cstring(a.as_str(), "command"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env: Vec<(String, String)> = zone
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !zone.env.contains_key("PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let envp = env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}"), "env"))
        .collect::<Result<Vec<_>, _>>()?;
    let arg0 = command.first().cloned().unwrap_or_default();
    let candidates = if arg0.contains('/') {
        vec![cstring(arg0, "command")?]
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstring(format!("{d}/{arg0}"), "command"))
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(Prepared {
        ops: plan::plan(zone, &plan::HostFacts::probe()),
        copy: match (&zone.template, zone.template_mode) {
            (Some(t), TemplateMode::Copy) => Some((t.clone(), zone.root.clone())),
            _ => None,
        },
        seccomp: seccomp::program().map_err(Error::Seccomp)?,
        hostname: zone.hostname.clone(),
        argv,
        envp,
        candidates,
        workdir: cstring(zone.workdir.as_os_str().as_bytes(), "workdir")?,
        uid: zone.user.0,
        gid: zone.user.1,
        caps: zone.capabilities.clone(),
        last_cap: sys::last_cap(),
        rlimits: zone
            .rlimits
            .iter()
            .filter_map(|(k, v)| rlimit_resource(k).map(|r| (r, *v)))
            .collect(),
    })
}

/// Maps a config rlimit name to its resource.
pub fn rlimit_resource(name: &str) -> Option<Resource> {
    Some(match name {
        "as" => Resource::RLIMIT_AS,
        "core" => Resource::RLIMIT_CORE,
        "cpu" => Resource::RLIMIT_CPU,
        "data" => Resource::RLIMIT_DATA,
        "fsize" => Resource::RLIMIT_FSIZE,
        "locks" => Resource::RLIMIT_LOCKS,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "msgqueue" => Resource::RLIMIT_MSGQUEUE,
        "nice" => Resource::RLIMIT_NICE,
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "rss" => Resource::RLIMIT_RSS,
        "rtprio" => Resource::RLIMIT_RTPRIO,
        "rttime" => Resource::RLIMIT_RTTIME,
        "sigpending" => Resource::RLIMIT_SIGPENDING,
        "stack" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// Starts `zone` with stdout and stderr on `output`, optionally inside the
/// cgroup open at `cgroup`, and giving the command `notify`.
pub fn spawn(
    zone: &Zone,
    output: BorrowedFd<'_>,
    cgroup: Option<BorrowedFd<'_>>,
    notify: Option<Notify<'_>>,
) -> Result<Started, Error> {
    let prep = prepare(zone)?;
    let (agent_end, zone_end) = protocol::channel().map_err(Error::Channel)?;
    let flags = (libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP) as u64;
    match sys::clone3(flags, cgroup).map_err(Error::Clone)? {
        sys::Forked::Child => {
            drop(agent_end);
            zone_init(&prep, zone_end, output, notify)
        }
        sys::Forked::Parent { pid, pidfd } => {
            drop(zone_end);
            Ok(Started {
                pid,
                pidfd,
                channel: agent_end,
            })
        }
    }
}

/// Sends `msg` to the agent; nothing to do if the agent is gone.
pub(super) fn report(channel: &OwnedFd, msg: &Message) {
    let _ = msg.send(channel.as_fd());
}

/// The init (or exec helper) could not start the command: tell the agent
/// and exit.
pub(super) fn give_up(channel: &OwnedFd, msg: &str) -> ! {
    report(channel, &Message::StartFailed(msg.to_string()));
    sys::exit_now(126)
}

/// The zone's init: fork the process that sets up the zone and becomes
/// the command, then reap. Never returns.
///
/// The init itself does as little as it can: it lives as long as the zone,
/// and what it writes to memory shared with the agent (copy-on-write since
/// the clone) is what each zone costs. The setup's allocations happen in
/// the command's process and vanish with its exec.
fn zone_init(
    prep: &Prepared,
    channel: OwnedFd,
    output: BorrowedFd<'_>,
    notify: Option<Notify<'_>>,
) -> ! {
    // Born with every signal blocked (`sys::clone3`), and they stay
    // blocked so they queue for `sigwait`: the init of a PID namespace
    // drops unblocked signals it has no handler for, and one sent before
    // this point must not be lost either.
    sys::reset_signal_handlers();
    // If the agent dies, so does the zone.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = nix::unistd::setsid();
    // Nothing inside the zone may read this process's memory or fds.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut keep = vec![channel.as_raw_fd(), output.as_raw_fd()];
    keep.extend(notify.map(|n| n.fd.as_raw_fd()));
    if let Err(e) = sys::close_fds_from(3, &keep) {
        give_up(&channel, &format!("unable to close inherited fds: {e}"));
    }
    // pivot_root (done by the command's process) moves the root and the
    // working directory of every process that is at the old root: standing
    // at `/` puts the init inside the zone too, holding no reference to the
    // host's tree.
    if let Err(e) = nix::unistd::chdir("/") {
        give_up(&channel, &format!("unable to enter /: {e}"));
    }
    let (rx, tx) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => give_up(&channel, &format!("unable to create exec pipe: {e}")),
    };
    let cmd = match sys::fork() {
        Ok(ForkResult::Child) => {
            drop(rx);
            // The zone's mount namespace, hostname and network are the
            // init's too: setting them up here keeps the setup's memory out
            // of the long-lived init.
            if let Err(e) = setup(prep) {
                fail_start(&tx, &Message::StartFailed(error_chain(&e)));
            }
            // Held here until the agent has done its part from outside
            // (the zone's network): the command must find it in place.
            if let Err(e) = protocol::await_go(channel.as_fd()) {
                let msg = format!("the agent gave up on this start: {e}");
                fail_start(&tx, &Message::StartFailed(msg));
            }
            drop(channel);
            command(prep, tx, Stdio::Output { output, notify })
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => give_up(&channel, &format!("unable to fork the command: {e}")),
    };
    drop(tx);
    report_exec(rx, &channel);
    reap_forever(cmd, &channel)
}

/// The command's process could not start the command: `msg` goes to the
/// init over the exec pipe (the init relays it to the agent), then exit.
fn fail_start(exec_pipe: &OwnedFd, msg: &Message) -> ! {
    let mut buf = [0u8; MAX_MESSAGE];
    let n = msg.encode(&mut buf);
    // One write of at most PIPE_BUF bytes is atomic.
    let _ = nix::unistd::write(exec_pipe, &buf[..n]);
    sys::exit_now(127)
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

fn setup(prep: &Prepared) -> Result<(), SetupError> {
    if let Some((tpl, root)) = &prep.copy {
        template::ensure_copied(tpl, root)?;
    }
    rootfs::apply(&prep.ops)?;
    nix::unistd::sethostname(&prep.hostname).map_err(|e| SetupError::Hostname(e.into()))?;
    sys::set_link_up("lo").map_err(SetupError::Loopback)?;
    Ok(())
}

/// Why the zone init could not set up the zone.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Template(#[from] template::Error),
    #[error(transparent)]
    Rootfs(#[from] rootfs::Error),
    #[error("unable to set the hostname")]
    Hostname(#[source] io::Error),
    #[error("unable to bring up lo")]
    Loopback(#[source] io::Error),
}

/// Waits for signals: forwards each to `cmd`, and on SIGCHLD reaps every
/// child; when `cmd` ends, reports its status and exits with it.
pub(super) fn reap_forever(cmd: Pid, channel: &OwnedFd) -> ! {
    let all = sys::full_sigset();
    loop {
        let sig = match sys::sigwait(&all) {
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
                    sys::exit_now(code);
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == cmd => {
                    report(channel, &Message::Signaled(sig as i32));
                    sys::exit_now(128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// Where a command's standard fds come from.
pub(super) enum Stdio<'a> {
    /// stdin from /dev/null, stdout and stderr to the unit's output pipe,
    /// and the readiness pipe if the zone has one.
    Output {
        output: BorrowedFd<'a>,
        notify: Option<Notify<'a>>,
    },
    /// The caller's own three fds (`zonit ctl exec`).
    Fds(&'a [OwnedFd; 3]),
}

/// The command's process: drop privileges and exec. Never returns.
pub(super) fn command(prep: &Prepared, exec_pipe: OwnedFd, io: Stdio<'_>) -> ! {
    // The init reset every disposition before forking us, and exec resets
    // handlers anyway: only the init's full block mask is left to undo.
    sys::set_sigmask(libc::SIG_SETMASK, &sys::empty_sigset());
    let _ = nix::unistd::setsid();
    let is_exec = matches!(io, Stdio::Fds(_));
    let notify = match &io {
        Stdio::Output { notify, .. } => *notify,
        Stdio::Fds(_) => None,
    };
    let io_done = stdio(io).map_err(|e| format!("unable to set up stdio: {e}"));
    // After stdio: the output pipe may sit on the number the notify fd
    // goes to, and is no longer needed once on 1 and 2.
    let (exec_pipe, placed) = match (io_done, notify) {
        (Err(e), _) => (exec_pipe, Err(e)),
        (Ok(()), None) => (exec_pipe, Ok(())),
        (Ok(()), Some(n)) => place_notify(n, exec_pipe),
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        fail_start(&exec_pipe, &Message::StartFailed(format!("{what}: {e}")))
    };
    if let Err(e) = placed {
        fail("unable to set up the command's fds", &e);
    }
    let mut keep = vec![exec_pipe.as_raw_fd()];
    keep.extend(notify.map(|n| n.at));
    if let Err(e) = sys::close_fds_from(3, &keep) {
        fail("unable to close inherited fds", &e);
    }
    if let Err(e) = nix::unistd::chdir(prep.workdir.as_c_str()) {
        fail(&format!("unable to enter workdir {:?}", prep.workdir), &e);
    }
    for (res, limit) in &prep.rlimits {
        if let Err(e) = setrlimit(*res, *limit, *limit) {
            fail(&format!("unable to set {res:?}"), &e);
        }
    }
    if let Err(e) = drop_privileges(prep) {
        fail("unable to drop privileges", &e);
    }
    // A `ctl exec` command or probe dies with its helper, so killing the
    // helper (a probe past its deadline) kills the command. Set after the
    // uid switch, which clears it.
    if is_exec && let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail("unable to set the parent-death signal", &e);
    }
    // Last, so everything above may still use what the filter refuses.
    if let Err(e) = seccomp::install(prep.seccomp) {
        fail("unable to install seccomp", &error_chain(&e));
    }
    let argv = ptrs(&prep.argv);
    let envp = ptrs(&prep.envp);
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for path in &prep.candidates {
        last = sys::execve(path, &argv, &envp);
        if last.raw_os_error() != Some(libc::ENOENT) {
            break;
        }
    }
    let arg0 = prep
        .argv
        .first()
        .map(|a| a.to_string_lossy())
        .unwrap_or_default();
    fail_start(
        &exec_pipe,
        &Message::ExecFailed {
            errno: last.raw_os_error().unwrap_or(libc::ENOENT),
            message: format!("unable to execute {arg0}: {last}"),
        },
    )
}

fn ptrs(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn stdio(io: Stdio<'_>) -> io::Result<()> {
    match io {
        Stdio::Output { output, .. } => {
            let null = std::fs::File::open("/dev/null")?;
            nix::unistd::dup2_stdin(null.as_fd()).map_err(io::Error::from)?;
            nix::unistd::dup2_stdout(output).map_err(io::Error::from)?;
            nix::unistd::dup2_stderr(output).map_err(io::Error::from)?;
        }
        Stdio::Fds([i, o, e]) => {
            nix::unistd::dup2_stdin(i.as_fd()).map_err(io::Error::from)?;
            nix::unistd::dup2_stdout(o.as_fd()).map_err(io::Error::from)?;
            nix::unistd::dup2_stderr(e.as_fd()).map_err(io::Error::from)?;
        }
    }
    Ok(())
}

/// Puts the notify pipe's write end at its number for the command
/// (without close-on-exec), first moving the exec pipe away if it sits
/// there. Returns the exec pipe, wherever it is now.
fn place_notify(n: Notify<'_>, exec_pipe: OwnedFd) -> (OwnedFd, Result<(), String>) {
    let exec_pipe = if exec_pipe.as_raw_fd() == n.at {
        // The copy gets the lowest free number, never `n.at` (taken).
        match exec_pipe.try_clone() {
            Ok(moved) => {
                // Closes `n.at` now, so nothing closes it after the dup.
                drop(exec_pipe);
                moved
            }
            Err(e) => return (exec_pipe, Err(format!("unable to move the exec pipe: {e}"))),
        }
    } else {
        exec_pipe
    };
    let placed = if n.fd.as_raw_fd() == n.at {
        sys::clear_cloexec(n.fd)
    } else {
        sys::dup_onto(n.fd, n.at)
    };
    let placed = placed.map_err(|e| format!("unable to put the notify pipe at fd {}: {e}", n.at));
    (exec_pipe, placed)
}

/// Groups, capabilities, uid, no_new_privs, in the order each step still
/// has the privilege it needs.
///
/// For a root user the bounding, permitted and effective sets end up equal
/// to the zone's `capabilities`; inheritable and ambient are empty (a
/// non-empty inheritable set was CVE-2022-29162). For any other user the
/// uid switch clears permitted and effective, and with empty inheritable
/// and ambient sets `execve` grants nothing back: a non-root zone user runs
/// with no capabilities, as under Docker, and the bounding set still caps
/// what any file could grant.
fn drop_privileges(prep: &Prepared) -> io::Result<()> {
    let (uid, gid) = (Uid::from_raw(prep.uid), Gid::from_raw(prep.gid));
    nix::unistd::setgroups(&[gid]).map_err(io::Error::from)?;
    nix::unistd::setresgid(gid, gid, gid).map_err(io::Error::from)?;
    // Needs CAP_SETPCAP, so before anything drops it.
    sys::limit_bounding_and_ambient(&prep.caps, prep.last_cap)?;
    if prep.uid != 0 {
        nix::unistd::setresuid(uid, uid, uid).map_err(io::Error::from)?;
        // The switch emptied permitted; capset may only lower it, and
        // execve would clear it anyway. Inheritable is still emptied.
        sys::set_capabilities(&[])?;
    } else {
        sys::set_capabilities(&prep.caps)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)?;
    Ok(())
}
