//! Restart decisions as pure functions: whether an end calls for a restart,
//! and how long the n-th consecutive restart waits.

use std::time::Duration;

use crate::config::{Backoff, RestartPolicy};

/// How a unit's top process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Exited with this status code.
    Exit(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Guest-initiated reboot.
    Reboot,
    /// Guest powered itself off.
    Poweroff,
    /// Guest crash: panic, triple fault or monitor error.
    Crash,
    /// The unit could not be started, or was not ready in time; the
    /// reason is in the text.
    StartFailed(String),
    /// Its health probe failed `retries` times in a row, and the engine
    /// stopped it.
    Unhealthy,
}

impl End {
    /// A failure in the sense of `restart = "on-failure"`.
    pub fn is_failure(&self) -> bool {
        match self {
            End::Exit(code) => *code != 0,
            End::Signal(_) | End::Crash | End::StartFailed(_) | End::Unhealthy => true,
            End::Reboot | End::Poweroff => false,
        }
    }

    /// The short form shown in `status` (`exit 3`, `signal SIGKILL`, ...).
    pub fn describe(&self) -> String {
        match self {
            End::Exit(code) => format!("exit {code}"),
            End::Signal(sig) => format!("signal {}", signal_name(*sig)),
            End::Reboot => "reboot".into(),
            End::Poweroff => "poweroff".into(),
            End::Crash => "crash".into(),
            End::StartFailed(_) => "start failed".into(),
            End::Unhealthy => "unhealthy".into(),
        }
    }
}

/// The conventional name of a signal number (`SIGTERM`), or `SIG<n>`.
pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("SIG{sig}"),
    }
}

/// Whether `end` is followed by a restart under `policy`. `reboot_restarts`
/// is a guest's `on_reboot = "restart"`, which wins over the policy.
pub fn should_restart(policy: RestartPolicy, end: &End, reboot_restarts: bool) -> bool {
    if *end == End::Reboot {
        return reboot_restarts || policy == RestartPolicy::Always;
    }
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => end.is_failure(),
        RestartPolicy::Always => true,
    }
}

/// Delay before the `n`-th consecutive restart (n >= 1):
/// `min(initial * 2^(n-1), max)`, saturating instead of overflowing.
pub fn backoff_delay(backoff: &Backoff, n: u32) -> Duration {
    let shift = n.saturating_sub(1).min(63);
    let factor = 1u64 << shift;
    let initial = backoff.initial.as_nanos().min(u128::from(u64::MAX)) as u64;
    let nanos = initial.saturating_mul(factor);
    Duration::from_nanos(nanos).min(backoff.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_from_initial() {
        let b = backoff(100, 30_000);
        let got: Vec<u128> = (1..=5).map(|n| backoff_delay(&b, n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600]);
    }

    #[test]
    fn backoff_is_capped_at_max() {
        let b = backoff(100, 1000);
        assert_eq!(backoff_delay(&b, 5).as_millis(), 1000);
        assert_eq!(backoff_delay(&b, 500).as_millis(), 1000);
    }

    #[test]
    fn backoff_never_overflows() {
        let b = Backoff {
            initial: Duration::from_secs(3600),
            max: Duration::MAX,
            reset_after: Duration::from_secs(60),
        };
        assert_eq!(backoff_delay(&b, u32::MAX), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn on_failure_restarts_only_failures() {
        let p = RestartPolicy::OnFailure;
        assert!(should_restart(p, &End::Exit(1), false));
        assert!(should_restart(p, &End::Signal(9), false));
        assert!(should_restart(p, &End::Crash, false));
        assert!(should_restart(p, &End::StartFailed("x".into()), false));
        assert!(should_restart(p, &End::Unhealthy, false));
        assert!(!should_restart(p, &End::Exit(0), false));
        assert!(!should_restart(p, &End::Poweroff, false));
    }

    #[test]
    fn always_restarts_clean_ends_too() {
        assert!(should_restart(RestartPolicy::Always, &End::Exit(0), false));
        assert!(should_restart(RestartPolicy::Always, &End::Poweroff, false));
    }

    #[test]
    fn never_restarts_nothing_but_reboot_follows_on_reboot() {
        assert!(!should_restart(RestartPolicy::Never, &End::Exit(1), false));
        assert!(should_restart(RestartPolicy::Never, &End::Reboot, true));
        assert!(!should_restart(RestartPolicy::Never, &End::Reboot, false));
    }

    #[test]
    fn ends_are_described_for_status() {
        assert_eq!(End::Exit(3).describe(), "exit 3");
        assert_eq!(End::Signal(9).describe(), "signal SIGKILL");
        assert_eq!(End::Crash.describe(), "crash");
    }
}
