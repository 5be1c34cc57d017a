//! The end of PID 1's life, after the agent
//! has stopped every unit in reverse order: SIGTERM then SIGKILL to
//! whatever is left, sync, unmount (or remount read-only) everything
//! deepest first, then `reboot(2)`.
//!
//! Invariant: [`finish`] never returns and PID 1 never exits. If reboot(2)
//! fails, PID 1 logs it and stays, reaping, forever.

use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::debug_exit;
use super::mounts::{self, Teardown};
use crate::agent::ShutdownAction;
use crate::sys;

/// Grace between SIGTERM to the stragglers and SIGKILL. Units already had
/// their stop_timeout; what is left here are shells and orphans.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for SIGKILLed processes to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// The `reboot(2)` command for an action.
pub fn reboot_cmd(action: ShutdownAction) -> libc::c_int {
    match action {
        ShutdownAction::Reboot => libc::RB_AUTOBOOT,
        ShutdownAction::Halt => libc::RB_HALT_SYSTEM,
        ShutdownAction::Poweroff | ShutdownAction::Verdict(_) | ShutdownAction::Exit(_) => {
            libc::RB_POWER_OFF
        }
    }
}

/// Takes the host down as `action` says. `debug_exit_flag` is the
/// `zonit.debug_exit` command-line flag.
pub fn finish(action: ShutdownAction, debug_exit_flag: bool) -> ! {
    log::info!("every unit is down; ending the remaining processes");
    // Decided before /sys goes away.
    let report = match action {
        ShutdownAction::Verdict(status) => {
            let vendor = std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").ok();
            Some((
                status,
                debug_exit::wanted(vendor.as_deref(), debug_exit_flag),
            ))
        }
        _ => None,
    };
    sys::signal::set_sigmask(libc::SIG_BLOCK, &sigchld_set());
    // The hardware watchdog stays armed to the end: petted before each
    // step, so only a step that hangs longer than its timeout resets.
    let pet = crate::agent::keep_watchdog_alive;
    pet();
    signal_all(Signal::SIGTERM, TERM_GRACE);
    pet();
    signal_all(Signal::SIGKILL, KILL_WAIT);
    pet();
    sys::kernel::sync();
    pet();
    teardown_mounts();
    pet();
    sys::kernel::sync();
    pet();
    if let Some((status, wanted)) = report {
        if wanted {
            let value = debug_exit::port_value(status);
            log::info!(
                "exit_with status {status}: writing {value} to isa-debug-exit port {:#x} (QEMU exits {})",
                debug_exit::PORT,
                debug_exit::qemu_exit_code(value)
            );
            if let Err(e) = sys::kernel::outb(debug_exit::PORT, value) {
                log::error!(
                    "unable to write the isa-debug-exit port {:#x}: {e}",
                    debug_exit::PORT
                );
            }
        } else {
            log::info!("exit_with status {status}: not under QEMU, no debug-exit port written");
        }
    }
    let cmd = reboot_cmd(action);
    log::info!("{}", final_words(cmd));
    if let Err(e) = sys::kernel::reboot(cmd) {
        log::error!("reboot(2) failed: {e}; PID 1 stays up, reaping");
    }
    reap_forever()
}

fn final_words(cmd: libc::c_int) -> &'static str {
    match cmd {
        libc::RB_AUTOBOOT => "rebooting",
        libc::RB_HALT_SYSTEM => "halting",
        _ => "powering off",
    }
}

fn sigchld_set() -> libc::sigset_t {
    sys::signal::sigset_of(&[libc::SIGCHLD])
}

/// Sends `sig` to every process but PID 1, then reaps until none of our
/// children is left or `wait` has passed. Orphans are reparented to PID 1,
/// so "no child left" means no process left.
fn signal_all(sig: Signal, wait: Duration) {
    match kill(Pid::from_raw(-1), sig) {
        Ok(()) => {}
        // ESRCH: there is no other process at all.
        Err(nix::errno::Errno::ESRCH) => return,
        Err(e) => log::warn!("unable to send {sig} to every process: {e}"),
    }
    // A stopped process cannot act on SIGTERM until it is continued.
    if sig == Signal::SIGTERM {
        let _ = kill(Pid::from_raw(-1), Signal::SIGCONT);
    }
    let deadline = Instant::now() + wait;
    let set = sigchld_set();
    loop {
        if reap_all() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!("processes still alive {} ms after {sig}", wait.as_millis());
            return;
        }
        // SIGCHLD is blocked: wait for it instead of polling.
        let _ = sys::signal::sigtimedwait(&set, left);
    }
}

/// Reaps every child that has ended; true when no child is left at all.
fn reap_all() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return true, // ECHILD
        }
    }
}

/// Carries out the shutdown mount plan.
fn teardown_mounts() {
    let info = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(e) => {
            log::warn!("unable to read /proc/self/mountinfo: {e}; nothing unmounted");
            return;
        }
    };
    for step in mounts::shutdown_plan(&mounts::parse_mountinfo(&info)) {
        match step {
            Teardown::Unmount { target, fstype } => {
                if let Err(e) = umount2(target.as_str(), MntFlags::empty()) {
                    // Busy (our own console on /dev, a log file): make sure
                    // nothing more is written to it instead.
                    let ro = remount_ro(&target);
                    log::debug!(
                        "unable to unmount {target} ({fstype}): {e}; remount read-only: {}",
                        ro.map_or_else(|e| e.to_string(), |()| "done".into())
                    );
                }
            }
            Teardown::RemountReadOnly { target } => {
                if let Err(e) = remount_ro(&target) {
                    log::warn!("unable to remount {target} read-only: {e}");
                }
            }
        }
    }
}

fn remount_ro(target: &str) -> nix::Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
}

/// What PID 1 does when it cannot end: reap, never exit, never spin.
pub fn reap_forever() -> ! {
    let set = sigchld_set();
    sys::signal::set_sigmask(libc::SIG_BLOCK, &set);
    loop {
        reap_all();
        if sys::signal::sigwait(&set).is_err() {
            // Never spin even if sigwait were to fail.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_map_to_reboot_commands() {
        assert_eq!(reboot_cmd(ShutdownAction::Reboot), libc::RB_AUTOBOOT);
        assert_eq!(reboot_cmd(ShutdownAction::Halt), libc::RB_HALT_SYSTEM);
        assert_eq!(reboot_cmd(ShutdownAction::Poweroff), libc::RB_POWER_OFF);
        // A test verdict is reported, then the machine powers off.
        assert_eq!(reboot_cmd(ShutdownAction::Verdict(3)), libc::RB_POWER_OFF);
    }
}
