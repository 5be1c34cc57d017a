//! The hardware watchdog (`[host] watchdog`): opening the device, setting
//! its timeout, petting it from the event loop as the pure decision in
//! `supervisor::watchdog` says, and what happens to it at the end.
//!
//! A path that is not a character device, or a device that cannot be
//! opened, is logged and zonit runs without a watchdog: a machine must
//! not be kept from booting by its watchdog's config.
//!
//! At the end: as PID 1 the open device is handed to the shutdown code,
//! which pets it before each of its last steps, until reboot(2); nothing
//! ever disarms it, so a shutdown step that hangs longer than `timeout`
//! is ended by the hardware. Under `zonit run`, which exits and leaves the
//! machine running, the device is closed with the magic character `V`,
//! which disarms drivers that allow it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Agent, Mode};
use crate::config;
use crate::supervisor::watchdog::{Verdict, Watch};
use crate::sys;

/// The device handed over for the shutdown's last steps (PID 1 only).
static HANDED_OVER: Mutex<Option<File>> = Mutex::new(None);

/// An open watchdog device and its petting decision.
pub(super) struct Hw {
    file: File,
    path: PathBuf,
    timeout: Duration,
    watch: Watch,
}

impl Hw {
    /// Opens and arms the device of `cfg`; `None` (logged) when there is
    /// no usable device.
    pub(super) fn open(cfg: &config::Watchdog, now: Instant) -> Option<Hw> {
        let path = &cfg.device;
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_char_device() => {}
            Ok(_) => {
                log::error!(
                    "watchdog: {} is not a character device; running without a watchdog",
                    path.display()
                );
                return None;
            }
            Err(e) => {
                log::error!(
                    "watchdog: {}: {e}; running without a watchdog (is the driver loaded? add it to `modules`)",
                    path.display()
                );
                return None;
            }
        }
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                log::error!(
                    "watchdog: unable to open {}: {e}; running without a watchdog",
                    path.display()
                );
                return None;
            }
        };
        let wanted = i32::try_from(cfg.timeout.as_secs()).unwrap_or(i32::MAX);
        let secs = match sys::kernel::watchdog_set_timeout(file.as_fd(), wanted) {
            Ok(got) => got,
            Err(e) => {
                let own = sys::kernel::watchdog_timeout(file.as_fd()).ok();
                log::warn!(
                    "watchdog: unable to set a timeout of {wanted} s on {}: {e}; its own timeout is {}",
                    path.display(),
                    own.map_or("unknown (assuming the configured one)".into(), |s| format!(
                        "{s} s"
                    ))
                );
                own.unwrap_or(wanted)
            }
        };
        let timeout = Duration::from_secs(u64::try_from(secs.max(1)).unwrap_or(1));
        log::info!(
            "watchdog: {} armed, timeout {} s, required: {}",
            path.display(),
            timeout.as_secs(),
            if cfg.require.is_empty() {
                "none (the loop itself)".into()
            } else {
                cfg.require.join(", ")
            }
        );
        Some(Hw {
            file,
            path: path.clone(),
            timeout,
            watch: Watch::new(cfg.require.clone(), timeout, cfg.grace, now),
        })
    }

    /// When the loop must wake up for the watchdog.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.watch.next_deadline()
    }
}

/// Pets `file`; a failed pet is logged, it does not stop the loop.
fn pet(file: &mut File, path: &std::path::Path) {
    // Any byte but `V` (the magic close) pets.
    if let Err(e) = file.write_all(b"p") {
        log::warn!("watchdog: unable to pet {}: {e}", path.display());
    }
}

impl Agent {
    /// Opens the configured watchdog, if any.
    pub(super) fn open_watchdog(&mut self) {
        if let Some(cfg) = &self.config.host.watchdog {
            self.watchdog = Hw::open(cfg, Instant::now());
        }
        self.tend_watchdog();
    }

    /// Pets the watchdog, or stops for good, as the decision says.
    pub(super) fn tend_watchdog(&mut self) {
        let shutting_down = self.shutdown.is_some();
        let Some(hw) = &mut self.watchdog else {
            return;
        };
        match hw.watch.check(&self.sup, Instant::now(), shutting_down) {
            Verdict::Pet => pet(&mut hw.file, &hw.path),
            Verdict::Wait | Verdict::Starved => {}
            Verdict::Starve { why } => log::error!(
                "watchdog: {why}; no longer petting {}: the machine resets within {} s",
                hw.path.display(),
                hw.timeout.as_secs()
            ),
        }
    }

    /// The agent is done: hand the watchdog over to the shutdown (PID 1),
    /// or disarm it with the magic close (`zonit run`).
    pub(super) fn release_watchdog(&mut self) {
        let Some(mut hw) = self.watchdog.take() else {
            return;
        };
        match self.opts.mode {
            Mode::Init => {
                if let Ok(mut slot) = HANDED_OVER.lock() {
                    *slot = Some(hw.file);
                }
            }
            Mode::Run => {
                if let Err(e) = hw.file.write_all(b"V") {
                    log::warn!("watchdog: unable to disarm {}: {e}", hw.path.display());
                }
            }
        }
    }
}

/// Pets the watchdog handed over by the agent, if any: the shutdown's
/// last steps call this before each step.
pub fn keep_alive() {
    if let Ok(mut slot) = HANDED_OVER.lock()
        && let Some(file) = slot.as_mut()
    {
        pet(file, std::path::Path::new("the watchdog"));
    }
}
