//! Starting a guest's monitor (`zonit vmm`, one process per guest) and
//! reading how the guest ended from the monitor's wait status.
//!
//! The monitor is zonit itself, re-executed from `/proc/self/exe`, so a
//! monitor crash is just a unit ending. Its stdout (the guest's serial
//! console) and stderr go to the unit's output pipe.

use std::ffi::CString;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use crate::config::Guest;
use crate::supervisor::End;
use crate::sys;
use crate::vmm::GuestEnd;

/// The executable re-run as the monitor.
const SELF_EXE: &str = "/proc/self/exe";

/// Why a monitor could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path or the command line holds a NUL byte.
    #[error("guest setting contains a NUL byte")]
    Nul,
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
}

/// The monitor's argv for `guest` (pure).
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
    for d in &guest.disks {
        argv.push("--disk".into());
        let ro = if d.readonly { ",ro" } else { "" };
        argv.push(format!("{}{ro}", d.path.display()));
    }
    argv
}

/// Starts the monitor for `guest` with stdout and stderr on `output`.
pub fn spawn(guest: &Guest, output: BorrowedFd<'_>) -> Result<Started, Error> {
    let argv = monitor_argv(guest)
        .into_iter()
        .map(CString::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Error::Nul)?;
    let exe = CString::new(SELF_EXE).map_err(|_| Error::Nul)?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    match sys::clone3(0, None).map_err(Error::Clone)? {
        sys::Forked::Child => {
            sys::reset_signals();
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let _ = nix::unistd::setsid();
            let setup = || -> std::io::Result<()> {
                {
                    // Dropped (closed) before the sweep below closes the rest.
                    let null = std::fs::File::open("/dev/null")?;
                    nix::unistd::dup2_stdin(&null)?;
                }
                nix::unistd::dup2_stdout(output)?;
                nix::unistd::dup2_stderr(output)?;
                sys::close_fds_from(3, &[])
            };
            if let Err(e) = setup() {
                eprintln!("zonit: unable to set up the monitor's stdio: {e}");
                sys::exit_now(1);
            }
            let err = sys::execve(&exe, &ptrs, &env);
            eprintln!("zonit: unable to execute the monitor {SELF_EXE}: {err}");
            sys::exit_now(1)
        }
        sys::Forked::Parent { pid, pidfd } => Ok(Started { pid, pidfd }),
    }
}

/// How a guest ended, from its monitor's wait status, by the monitor's
/// own contract ([`GuestEnd`], docs/vmm.md). A monitor killed from outside
/// keeps its signal, so `status` says which.
pub fn end_of(status: WaitStatus) -> End {
    let (code, signal) = match status {
        WaitStatus::Exited(_, c) => (Some(c), None),
        WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
        _ => (None, None),
    };
    match GuestEnd::from_code_or_signal(code, signal) {
        GuestEnd::Poweroff => End::Poweroff,
        GuestEnd::Reboot => End::Reboot,
        GuestEnd::Crash | GuestEnd::SetupFailed => End::Crash,
        GuestEnd::Killed => End::Signal(signal.unwrap_or(libc::SIGKILL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Disk, OnReboot};
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
            on_reboot: OnReboot::Restart,
            nics: vec![],
            ports: vec![],
        };
        assert_eq!(
            monitor_argv(&g).join(" "),
            "zonit vmm --kernel /g/vmlinuz --initrd /g/initrd --cmdline console=ttyS0 quiet \
             --memory 268435456 --vcpus 2 --disk /g/a.img --disk /g/b.img,ro"
        );
    }

    #[test]
    fn monitor_statuses_map_to_guest_ends() {
        let p = Pid::from_raw(1);
        assert_eq!(end_of(WaitStatus::Exited(p, 0)), End::Poweroff);
        assert_eq!(end_of(WaitStatus::Exited(p, 2)), End::Reboot);
        assert_eq!(end_of(WaitStatus::Exited(p, 3)), End::Crash);
        assert_eq!(end_of(WaitStatus::Exited(p, 1)), End::Crash);
        assert_eq!(
            end_of(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            End::Signal(9)
        );
        assert_eq!(
            end_of(WaitStatus::Signaled(p, Signal::SIGSYS, true)),
            End::Crash
        );
    }
}
