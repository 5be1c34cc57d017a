//! Starting a guest's monitor (`zonit vmm`, one process per guest) and
//! reading how the guest ended from the monitor's wait status.
//!
//! The monitor is zonit itself, re-executed from `/proc/self/exe`, so a
//! monitor crash is just a unit ending. Its stdout (the guest's serial
//! console) and stderr go to the unit's output pipe; over its start
//! channel (`--status-fd`, the same typed protocol zones use,
//! `zone::protocol`) it reports `Ready` when the guest starts, or why its
//! set-up failed, which makes the unit failed for good.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use crate::config::network::format_mac;
use crate::config::{CgroupLimits, Guest, NetworkDef};
use crate::logging::error_chain;
use crate::net::netlink::Rtnl;
use crate::supervisor::End;
use crate::sys;
use crate::vmm::{GuestEnd, limits};

/// The executable re-run as the monitor.
const SELF_EXE: &str = "/proc/self/exe";

/// Why a monitor could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path or the command line holds a NUL byte.
    #[error("guest setting contains a NUL byte")]
    Nul,
    /// The start channel could not be created.
    #[error("unable to create the monitor's start channel")]
    Channel(#[source] std::io::Error),
    /// clone3 failed.
    #[error("unable to start the monitor process")]
    Clone(#[source] std::io::Error),
}

/// A started monitor.
pub struct Started {
    /// Host PID of the monitor.
    pub pid: i32,
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// The agent's end of its start channel.
    pub channel: OwnedFd,
}

/// Where the monitor finds its start channel: the first fd after stdio.
const STATUS_FD: i32 = 3;

/// Checks what the agent can check before starting a monitor: every image
/// (kernel, initrd, disks) is a regular file or a block device. A failure
/// is permanent: it recurs on every start until the host changes.
pub fn preflight(guest: &Guest) -> Result<(), String> {
    std::iter::once(&guest.kernel)
        .chain(guest.initrd.as_ref())
        .chain(guest.disks.iter().map(|d| &d.path))
        .try_for_each(|path| limits::check_image(path))
}

/// The limits of the monitor's cgroup: the configured ones and, unless
/// `memory_max` is set, the guest's memory plus the monitor's allowance
/// when the memory controller is there to enforce it. (A configured
/// limit without its controller fails the start instead, with the
/// reason, as for zones.)
pub fn cgroup_limits(guest: &Guest, memory_controller: bool) -> CgroupLimits {
    let mut limits = guest.cgroup_limits();
    if limits.memory_max.is_none() && memory_controller {
        limits.memory_max = Some(limits::default_memory_max(guest.memory));
    }
    limits
}

/// The taps of `guest`'s network cards, one per `nics` entry in order,
/// opened by the agent (the monitor only inherits them): each named for
/// its nic's host-side name, a port of its network's bridge, and up.
pub fn open_taps(guest: &Guest, networks: &[NetworkDef]) -> Result<Vec<OwnedFd>, String> {
    if guest.nics.is_empty() {
        return Ok(Vec::new());
    }
    let mut rtnl = Rtnl::new().map_err(|e| error_chain(&e))?;
    let mut taps = Vec::new();
    for nic in &guest.nics {
        let bridge = networks
            .iter()
            .find(|n| n.name == nic.network)
            .map(|n| n.bridge.as_str())
            .ok_or_else(|| format!("network {} is not in the config", nic.network))?;
        let bridge_index = link_index(&mut rtnl, bridge)?;
        let (tap, name) = sys::net::open_tap(&nic.host_ifname)
            .map_err(|e| format!("unable to create tap {}: {e}", nic.host_ifname))?;
        let tap_index = link_index(&mut rtnl, &name)?;
        rtnl.attach_up(tap_index, &name, bridge_index)
            .map_err(|e| error_chain(&e))?;
        taps.push(tap);
    }
    Ok(taps)
}

/// The index of link `name`, which must exist.
fn link_index(rtnl: &mut Rtnl, name: &str) -> Result<u32, String> {
    match rtnl.link(name).map_err(|e| error_chain(&e))? {
        Some((index, _)) => Ok(index),
        None => Err(format!("link {name} does not exist")),
    }
}

/// The monitor's argv for `guest` (pure). Its network cards' taps are
/// inherited after the start channel, from fd 4 on, in `nics` order.
pub fn monitor_argv(guest: &Guest) -> Vec<String> {
    let mut argv = vec![
        "zonit".to_string(),
        "vmm".into(),
        "--kernel".into(),
        guest.kernel.display().to_string(),
    ];
    if let Some(initrd) = &guest.initrd {
        argv.push("--initrd".into());
        argv.push(initrd.display().to_string());
    }
    argv.push("--cmdline".into());
    argv.push(guest.cmdline.clone());
    argv.push("--memory".into());
    argv.push(guest.memory.to_string());
    argv.push("--vcpus".into());
    argv.push(guest.vcpus.to_string());
    argv.push("--status-fd".into());
    argv.push(STATUS_FD.to_string());
    for d in &guest.disks {
        argv.push("--disk".into());
        let ro = if d.readonly { ",ro" } else { "" };
        argv.push(format!("{}{ro}", d.path.display()));
    }
    for (i, nic) in guest.nics.iter().enumerate() {
        argv.push("--net".into());
        let fd = STATUS_FD + 1 + i as i32;
        argv.push(format!("fd={fd},mac={}", format_mac(&nic.mac)));
    }
    argv
}

/// Starts the monitor for `guest` with stdout and stderr on `output`, its
/// console input (stdin) from `input`, its network cards on `taps`
/// ([`open_taps`]), in the cgroup `group` when given (entered at clone
/// time, so no byte of guest memory is ever charged elsewhere).
pub fn spawn(
    guest: &Guest,
    output: BorrowedFd<'_>,
    input: BorrowedFd<'_>,
    taps: &[OwnedFd],
    group: Option<BorrowedFd<'_>>,
) -> Result<Started, Error> {
    let argv = monitor_argv(guest)
        .into_iter()
        .map(CString::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Error::Nul)?;
    let exe = CString::new(SELF_EXE).map_err(|_| Error::Nul)?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    let (status_rx, status_tx) = crate::zone::protocol::channel().map_err(Error::Channel)?;
    match sys::process::clone3(0, group).map_err(Error::Clone)? {
        sys::process::Forked::Child => {
            sys::signal::reset_signals();
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let _ = nix::unistd::setsid();
            let setup = || -> std::io::Result<()> {
                nix::unistd::dup2_stdin(input)?;
                nix::unistd::dup2_stdout(output)?;
                nix::unistd::dup2_stderr(output)?;
                // The start channel becomes fd 3 (STATUS_FD), the taps 4
                // and on; nothing else is inherited.
                let inherited: Vec<BorrowedFd<'_>> = std::iter::once(status_tx.as_fd())
                    .chain(taps.iter().map(|t| t.as_fd()))
                    .collect();
                sys::fd::place_inherited_fds(&inherited)
            };
            if let Err(e) = setup() {
                eprintln!("zonit: unable to set up the monitor's stdio: {e}");
                sys::process::exit_now(1);
            }
            let err = sys::process::execve(&exe, &ptrs, &env);
            eprintln!("zonit: unable to execute the monitor {SELF_EXE}: {err}");
            sys::process::exit_now(1)
        }
        sys::process::Forked::Parent { pid, pidfd } => Ok(Started {
            pid,
            pidfd,
            channel: status_rx,
        }),
    }
}

/// How a monitor ended: the guest's end, or a set-up failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest ran and ended so.
    Ended(End),
    /// The monitor could not set the guest up; the reason it reported,
    /// or a pointer to its log when it reported none.
    SetupFailed(String),
}

/// How a guest ended, from its monitor's wait status and the error it
/// reported on its start channel, by the monitor's own contract
/// ([`GuestEnd`], docs/vmm.md). A monitor killed from outside keeps its
/// signal, so `status` says which.
pub fn outcome(status: WaitStatus, reported_error: Option<String>) -> Outcome {
    let (code, signal) = match status {
        WaitStatus::Exited(_, c) => (Some(c), None),
        WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
        _ => (None, None),
    };
    Outcome::Ended(match GuestEnd::from_code_or_signal(code, signal) {
        GuestEnd::Poweroff => End::Poweroff,
        GuestEnd::Reboot => End::Reboot,
        GuestEnd::Crash => End::Crash,
        GuestEnd::Killed => End::Signal(signal.unwrap_or(libc::SIGKILL)),
        GuestEnd::SetupFailed => {
            return Outcome::SetupFailed(reported_error.unwrap_or_else(|| {
                "the monitor failed to set the guest up; its log has the reason".into()
            }));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Disk, Nic};
    use nix::unistd::Pid;

    #[test]
    fn monitor_argv_carries_every_guest_setting() {
        let g = Guest {
            kernel: "/g/vmlinuz".into(),
            initrd: Some("/g/initrd".into()),
            cmdline: "console=ttyS0 quiet".into(),
            memory: 256 << 20,
            vcpus: 2,
            disks: vec![
                Disk {
                    path: "/g/a.img".into(),
                    readonly: false,
                },
                Disk {
                    path: "/g/b.img".into(),
                    readonly: true,
                },
            ],
            nics: ["lan", "dmz"]
                .iter()
                .enumerate()
                .map(|(i, net)| Nic {
                    network: net.to_string(),
                    mac: [0x52, 0x54, 0, 0, 0, 0x0a + i as u8],
                    address: None,
                    address6: None,
                    host_ifname: format!("zg-vm-{i}"),
                })
                .collect(),
            ..Guest::example("/g/vmlinuz")
        };
        assert_eq!(
            monitor_argv(&g).join(" "),
            "zonit vmm --kernel /g/vmlinuz --initrd /g/initrd --cmdline console=ttyS0 quiet \
             --memory 268435456 --vcpus 2 --status-fd 3 --disk /g/a.img --disk /g/b.img,ro \
             --net fd=4,mac=52:54:00:00:00:0a --net fd=5,mac=52:54:00:00:00:0b"
        );
    }

    #[test]
    fn a_monitor_gets_memory_plus_the_allowance_unless_told_otherwise() {
        let mut g = Guest::example("/k");
        g.memory = 256 << 20;
        g.cpu_max = Some(0.5);
        let with = cgroup_limits(&g, true);
        assert_eq!(
            with.memory_max,
            Some((256 << 20) + limits::MONITOR_ALLOWANCE)
        );
        assert_eq!(with.cpu_max, Some(0.5));
        // No controller to enforce the default: no default, no failure.
        assert_eq!(cgroup_limits(&g, false).memory_max, None);
        g.memory_max = Some(64 << 20);
        assert_eq!(cgroup_limits(&g, true).memory_max, Some(64 << 20));
        // A configured limit stays, so the missing controller is reported.
        assert_eq!(cgroup_limits(&g, false).memory_max, Some(64 << 20));
    }

    #[test]
    fn monitor_statuses_map_to_guest_ends() {
        let p = Pid::from_raw(1);
        let ended = |s| outcome(s, None);
        assert_eq!(
            ended(WaitStatus::Exited(p, 0)),
            Outcome::Ended(End::Poweroff)
        );
        assert_eq!(ended(WaitStatus::Exited(p, 2)), Outcome::Ended(End::Reboot));
        assert_eq!(ended(WaitStatus::Exited(p, 3)), Outcome::Ended(End::Crash));
        assert_eq!(
            ended(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Outcome::Ended(End::Signal(9))
        );
        assert_eq!(
            ended(WaitStatus::Signaled(p, Signal::SIGSYS, true)),
            Outcome::Ended(End::Crash)
        );
    }

    #[test]
    fn a_monitor_set_up_failure_is_no_crash_and_carries_its_reason() {
        let p = Pid::from_raw(1);
        assert_eq!(
            outcome(
                WaitStatus::Exited(p, 1),
                Some("cannot open kernel /k".into())
            ),
            Outcome::SetupFailed("cannot open kernel /k".into())
        );
        assert!(matches!(
            outcome(WaitStatus::Exited(p, 1), None),
            Outcome::SetupFailed(_)
        ));
    }

    #[test]
    fn preflight_accepts_files_and_refuses_directories() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"k").unwrap();
        let mut g = Guest::example("/");
        g.kernel = kernel;
        assert_eq!(preflight(&g), Ok(()));
        g.disks.push(Disk {
            path: dir.path().to_path_buf(),
            readonly: false,
        });
        assert!(
            preflight(&g)
                .unwrap_err()
                .contains("neither a regular file")
        );
    }
}
