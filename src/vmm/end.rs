//! The monitor's end contract: how a guest ended ([`GuestEnd`]), as the
//! monitor's exit status tells the agent (docs/vmm.md, "Exit status").
//!
//! Owns: the exit codes and their reading back from a wait status.
//! Invariant: the agent classifies a monitor's end only through
//! [`GuestEnd::from_code_or_signal`], so the two sides cannot disagree.

use std::borrow::Cow;

/// How a guest ended, as the monitor's exit status tells the agent.
///
/// | status | end |
/// |---|---|
/// | 0 | [`GuestEnd::Poweroff`] |
/// | 1 | [`GuestEnd::SetupFailed`] |
/// | 2 | [`GuestEnd::Reboot`] |
/// | 3 | [`GuestEnd::Crash`] |
/// | killed by SIGKILL/SIGTERM/SIGINT/SIGHUP | [`GuestEnd::Killed`] |
/// | killed by any other signal (SIGSYS from seccomp, SIGSEGV, ...) | [`GuestEnd::Crash`] |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestEnd {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The monitor failed before the guest ran: bad arguments, unreadable
    /// kernel, no KVM.
    SetupFailed,
    /// The guest rebooted (i8042 reset, ACPI reset register).
    Reboot,
    /// The guest crashed (pvpanic, triple fault, unhandled exit, internal
    /// error), or the monitor failed while the guest ran.
    Crash,
    /// The monitor was killed from outside (the agent's stop timeout).
    Killed,
}

impl GuestEnd {
    /// The monitor's exit status for this end; `None` for [`GuestEnd::Killed`],
    /// which is a signal, not a status.
    pub const fn exit_code(self) -> Option<u8> {
        match self {
            GuestEnd::Poweroff => Some(0),
            GuestEnd::SetupFailed => Some(1),
            GuestEnd::Reboot => Some(2),
            GuestEnd::Crash => Some(3),
            GuestEnd::Killed => None,
        }
    }

    /// Classifies a monitor's wait status given as (exit code, terminating
    /// signal), exactly one of which is set. An unknown exit code is a crash.
    pub fn from_code_or_signal(code: Option<i32>, signal: Option<i32>) -> GuestEnd {
        match (code, signal) {
            (Some(0), _) => GuestEnd::Poweroff,
            (Some(1), _) => GuestEnd::SetupFailed,
            (Some(2), _) => GuestEnd::Reboot,
            (Some(_), _) => GuestEnd::Crash,
            (None, Some(sig))
                if sig == libc::SIGKILL
                    || sig == libc::SIGTERM
                    || sig == libc::SIGINT
                    || sig == libc::SIGHUP =>
            {
                GuestEnd::Killed
            }
            (None, _) => GuestEnd::Crash,
        }
    }

    /// Classifies a monitor's exit status.
    pub fn from_exit_status(status: std::process::ExitStatus) -> GuestEnd {
        use std::os::unix::process::ExitStatusExt;
        GuestEnd::from_code_or_signal(status.code(), status.signal())
    }
}

/// An end with the reason the monitor logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    /// The kind of end.
    pub end: GuestEnd,
    /// Why, for the log.
    pub reason: String,
}

impl Ending {
    /// An end of kind `end` because of `reason`.
    pub fn new(end: GuestEnd, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            end,
            reason: reason.into().into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for end in [
            GuestEnd::Poweroff,
            GuestEnd::SetupFailed,
            GuestEnd::Reboot,
            GuestEnd::Crash,
        ] {
            let code = end.exit_code().map(i32::from);
            assert_eq!(GuestEnd::from_code_or_signal(code, None), end);
        }
        assert_eq!(GuestEnd::Poweroff.exit_code(), Some(0));
        assert_eq!(GuestEnd::Reboot.exit_code(), Some(2));
        assert_eq!(GuestEnd::Crash.exit_code(), Some(3));
        assert_eq!(GuestEnd::Killed.exit_code(), None);
    }

    #[test]
    fn signals_are_killed_or_crash() {
        assert_eq!(
            GuestEnd::from_code_or_signal(None, Some(libc::SIGKILL)),
            GuestEnd::Killed
        );
        // A seccomp violation kills the monitor with SIGSYS: a crash.
        assert_eq!(
            GuestEnd::from_code_or_signal(None, Some(libc::SIGSYS)),
            GuestEnd::Crash
        );
        assert_eq!(
            GuestEnd::from_code_or_signal(None, Some(libc::SIGSEGV)),
            GuestEnd::Crash
        );
        assert_eq!(
            GuestEnd::from_code_or_signal(Some(77), None),
            GuestEnd::Crash
        );
    }
}
