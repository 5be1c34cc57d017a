//! Starting a zone, the agent's side: everything the zone's processes need
//! is prepared here before the clone ([`Prepared`]: C strings, the mount
//! plan, the seccomp program), then one `clone3` into new namespaces
//! makes the zone's init ([`super::init`]), and the agent gets its pidfd
//! and its end of the zone start channel ([`super::protocol`]). What
//! cannot change while the agent runs is read once per agent, not per
//! start: the host's CPUs (`mount_plan::HostFacts::get`), the kernel's
//! highest capability, the fd of zonit's own file, the seccomp program.
//!
//! Process tree: agent -> zone init (PID 1 of the zone's PID namespace,
//! zonit code) -> the command's process ([`super::command`]), which sets up
//! the zone, waits for the agent's `Go`, drops privileges and execs.
//!
//! Fork hygiene: every C string is built before `clone3`; the agent is
//! single-threaded, so the child may allocate. Only stdio (and, for a zone
//! with `ready = { notify = "fd" }`, the write end of the notify pipe at
//! the fd number it asked for) is inherited by the command; every other fd
//! the agent holds is closed in the init.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::resource::Resource;

use super::mount_plan::{self, Op};
use super::{init, protocol, seccomp};
use crate::config::{TemplateMode, Zone};
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
    /// The zone's mount plan (empty for an exec).
    pub(super) ops: Vec<Op>,
    /// `(template, root)` when the root is a one-time copy of a template
    /// (never for an exec).
    pub(super) copy: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub(super) seccomp: &'static [seccompiler::sock_filter],
    pub(super) hostname: String,
    pub(super) argv: Vec<CString>,
    pub(super) envp: Vec<CString>,
    /// Candidate paths for argv[0] (PATH search done inside the zone).
    pub(super) candidates: Vec<CString>,
    pub(super) workdir: CString,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) caps: Vec<u8>,
    /// The kernel's highest capability, read by the agent (once) so the
    /// command does not read /proc on every start.
    pub(super) last_cap: u8,
    pub(super) rlimits: Vec<(Resource, u64)>,
    /// The process's own name, `argv` style (`zonit-init\0web\0`), shown by
    /// `ps` inside and outside the zone instead of the agent's command line.
    pub(super) title: Vec<u8>,
}

fn cstring(s: impl Into<Vec<u8>>, what: &'static str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Nul { what })
}

/// Prepares the start of `zone`: its command, and the set-up of its root
/// that only a zone start makes (an exec joins a zone set up already).
fn prepare(name: &str, zone: &Zone) -> Result<Prepared, Error> {
    let mut prep = prepare_command(INIT_NAME, name, zone, &zone.command)?;
    prep.ops = mount_plan::plan(zone, mount_plan::HostFacts::get());
    prep.copy = match (&zone.template, zone.template_mode) {
        (Some(t), TemplateMode::Copy) => Some((t.clone(), zone.root.clone())),
        _ => None,
    };
    Ok(prep)
}

/// What a zone's init calls itself (`comm`, and the first word of its
/// command line, the zone's name being the second).
pub const INIT_NAME: &CStr = c"zonit-init";

/// Prepares running `command` with `zone`'s environment, user,
/// capabilities and limits (the zone's own command, or `ctl exec`).
/// `role` and `name` name the process that runs it (see [`Prepared::title`]).
pub(super) fn prepare_command(
    role: &CStr,
    name: &str,
    zone: &Zone,
    command: &[String],
) -> Result<Prepared, Error> {
    let mut title = role.to_bytes_with_nul().to_vec();
    title.extend_from_slice(cstring(name, "unit name")?.as_bytes_with_nul());
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
        ops: Vec::new(),
        copy: None,
        seccomp: seccomp::program().map_err(Error::Seccomp)?,
        hostname: zone.hostname.clone(),
        argv,
        envp,
        candidates,
        workdir: cstring(zone.workdir.as_os_str().as_bytes(), "workdir")?,
        uid: zone.user.0,
        gid: zone.user.1,
        caps: zone.capabilities.clone(),
        last_cap: sys::caps::last_cap(),
        rlimits: zone.rlimits.iter().map(|(&r, &v)| (r, v)).collect(),
        title,
    })
}

/// Starts `zone` (the unit `name`) with stdout and stderr on `output`,
/// optionally inside the cgroup open at `cgroup`, giving the command
/// `notify`.
pub fn spawn(
    name: &str,
    zone: &Zone,
    output: BorrowedFd<'_>,
    cgroup: Option<BorrowedFd<'_>>,
    notify: Option<Notify<'_>>,
) -> Result<Started, Error> {
    let prep = prepare(name, zone)?;
    // `network = "host"` shares the agent's network stack.
    let netns = match zone.network {
        crate::config::Network::Host => 0,
        _ => libc::CLONE_NEWNET,
    };
    let flags = (libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | netns
        | libc::CLONE_NEWCGROUP) as u64;
    // Opened once per agent; the init runs it again to leave the agent's
    // memory behind.
    let exe = sys::process::self_exe()
        .inspect_err(|e| {
            log::warn!("{name}: unable to open /proc/self/exe, the zone's init stays a copy of the agent: {e}")
        })
        .ok();
    clone_with_channel(flags, cgroup, |channel| {
        init::zone_init(&prep, channel, output, notify, exe)
    })
}

/// `clone3` with a zone start channel: the child runs `child` with its
/// end (which never returns: it execs or exits; should it return, the
/// child exits 127); the agent gets the child and its own end.
pub(super) fn clone_with_channel(
    flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    child: impl FnOnce(OwnedFd),
) -> Result<Started, Error> {
    let (agent_end, zone_end) = protocol::channel().map_err(Error::Channel)?;
    match sys::process::clone3(flags, cgroup).map_err(Error::Clone)? {
        sys::process::Forked::Child => {
            drop(agent_end);
            child(zone_end);
            sys::process::exit_now(127)
        }
        sys::process::Forked::Parent { pid, pidfd } => {
            drop(zone_end);
            Ok(Started {
                pid,
                pidfd,
                channel: agent_end,
            })
        }
    }
}
