//! Running the guest: confinement, the vCPU threads under their seccomp
//! filters, and the main thread's loop over stop requests and the guest's
//! end; the status pipe to the agent; the panic hook; the entry point.
//!
//! Invariants: the guest's first instruction runs only after the process
//! is confined and every thread's seccomp filter is in place; the monitor
//! exits with exactly one [`GuestEnd`] status, the first end the guest
//! reached.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Arc, Barrier, Mutex, OnceLock};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vmm_sys_util::eventfd::EventFd;

use super::builder::Monitor;
use super::devices::Syscalls;
use super::devices::i8042::I8042;
use super::devices::serial::EventFdTrigger;
use super::exits::EndLatch;
use super::logger::init_logging;
use super::options::{Options, OptionsError, USAGE};
use super::{Ending, GuestEnd, MonitorError, confine, cpu, devices, memory, seccomp};
use crate::logging::error_chain;
use crate::zone::protocol::{MAX_MESSAGE, Message};

/// Asks the guest to shut down: the ACPI power button (through the GED
/// interrupt) and Ctrl-Alt-Del on the keyboard, so that both an ACPI-aware
/// init and one that only handles Ctrl-Alt-Del react.
pub(super) struct StopButton {
    pub(super) ged: EventFd,
    pub(super) keyboard: Arc<Mutex<I8042<EventFdTrigger>>>,
}

impl StopButton {
    fn press(&self) {
        if let Err(e) = self.ged.write(1) {
            log::warn!("cannot press the ACPI power button: {e}");
        }
        devices::lock(&self.keyboard).ctrl_alt_del();
    }
}

/// A device's own thread (a network card's receive side): named, with the
/// syscalls its filter allows, started with the vCPUs.
pub(super) struct Worker {
    pub(super) name: String,
    pub(super) syscalls: Syscalls,
    pub(super) body: Box<dyn FnOnce() + Send>,
}

impl Monitor {
    /// Confines the process, starts the vCPUs, and waits for the end.
    /// Returns only on a setup failure; otherwise the process exits with
    /// the guest's end.
    fn run(self) -> MonitorError {
        let Monitor {
            vcpus,
            ctx,
            latch,
            mut wake,
            signals,
            mut input,
            stop,
            vcpu_syscalls,
            workers,
            _vm,
        } = self;
        // Listed while /proc is still reachable; dropped as the guest
        // starts (`memory`).
        let setup_pages = match std::fs::read_to_string("/proc/self/smaps") {
            Ok(text) => memory::clean_file_mappings(&text),
            Err(e) => {
                log::debug!("cannot list the monitor's mappings: {e}");
                Vec::new()
            }
        };
        if let Err(e) = confine::confine() {
            return e.into();
        }
        log::debug!("confined");
        let (main_filter, vcpu_filter) =
            match (seccomp::main_filter(), seccomp::vcpu_filter(&vcpu_syscalls)) {
                (Ok(m), Ok(v)) => (m, v),
                (Err(e), _) | (_, Err(e)) => return e.into(),
            };
        log::debug!("seccomp filters built");
        let _ = PANIC_LATCH.set(latch.clone());
        // Every thread installs its filter, then all meet here before the
        // guest's first instruction.
        let start = Arc::new(Barrier::new(vcpus.len() + workers.len() + 1));
        for worker in workers {
            let filter = match seccomp::worker_filter(&worker.syscalls) {
                Ok(f) => f,
                Err(e) => return e.into(),
            };
            let (latch, start, name) = (latch.clone(), start.clone(), worker.name.clone());
            let spawned = std::thread::Builder::new()
                .name(worker.name)
                .spawn(move || {
                    if let Err(e) = seccomp::apply(&filter) {
                        latch.end(Ending::new(GuestEnd::SetupFailed, error_chain(&e)));
                    }
                    start.wait();
                    if latch.get().is_none() {
                        (worker.body)();
                    }
                    loop {
                        std::thread::park();
                    }
                });
            if let Err(source) = spawned {
                return MonitorError::SpawnThread { name, source };
            }
        }
        for (id, vcpu) in vcpus.into_iter().enumerate() {
            let id = id as u8;
            let (ctx, latch, start, filter) = (
                ctx.clone(),
                latch.clone(),
                start.clone(),
                vcpu_filter.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Err(e) = seccomp::apply(&filter) {
                        latch.end(Ending::new(GuestEnd::SetupFailed, error_chain(&e)));
                    }
                    start.wait();
                    if latch.get().is_some() {
                        loop {
                            std::thread::park();
                        }
                    }
                    test_panic("vcpu");
                    cpu::run(vcpu, id, ctx, latch)
                });
            if let Err(source) = spawned {
                return MonitorError::SpawnVcpu { id, source };
            }
        }
        if let Err(e) = seccomp::apply(&main_filter) {
            return e.into();
        }
        start.wait();
        if let Some(ending) = latch.get() {
            finish(ending);
        }
        report_status(&Message::Ready);
        if let Err(e) = crate::sys::process::release_file_pages(&setup_pages) {
            log::debug!("cannot release the set-up pages: {e}");
        }
        log::debug!("guest started");

        loop {
            let mut fds = [
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
                input.poll_fd(),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("{}", error_chain(&MonitorError::Poll(e)));
                    finish(Ending::new(GuestEnd::Crash, "monitor event loop failed"));
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let input_ready = ready(&fds[2]);
            if ready(&fds[0]) {
                test_panic("main");
                while let Ok(Some(info)) = signals.read_signal() {
                    log::info!(
                        "signal {} received: asking the guest to shut down",
                        info.ssi_signo
                    );
                    stop.press();
                }
            }
            if ready(&fds[1]) {
                let mut byte = [0u8; 1];
                let _ = wake.read(&mut byte);
                if let Some(ending) = latch.get() {
                    finish(ending);
                }
            }
            if input_ready {
                input.on_ready();
            }
        }
    }
}

/// The monitor's reports to the agent on the `--status-fd` channel, in
/// the agent's start protocol (`zone::protocol`, one message a datagram):
/// `Ready` once the guest's first instruction is about to run,
/// `SetupFailed` with the reason when set-up fails (then the monitor exits
/// with [`GuestEnd::SetupFailed`]'s status). Without `--status-fd` nothing
/// is sent. Sent with write(2), which the monitor's filters allow.
static STATUS: OnceLock<File> = OnceLock::new();

/// Sends one message to the agent.
fn report_status(msg: &Message) {
    if let Some(mut channel) = STATUS.get() {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = msg.encode(&mut buf);
        let _ = channel.write_all(&buf[..n]);
    }
}

/// Reports a set-up failure and returns the set-up failure status.
fn setup_failed(reason: &str) -> ExitCode {
    log::error!("{reason}");
    report_status(&Message::SetupFailed(reason.to_string()));
    ExitCode::from(GuestEnd::SetupFailed.exit_code().unwrap_or(1))
}

/// Logs the end and exits with its status, without tearing anything down:
/// vCPU threads may still be inside `KVM_RUN` on guest memory, and the
/// kernel releases all of it with the process.
fn finish(ending: Ending) -> ! {
    match ending.end {
        GuestEnd::Poweroff | GuestEnd::Reboot => log::info!("{}", ending.reason),
        _ => log::error!("{}", ending.reason),
    }
    if ending.end == GuestEnd::SetupFailed {
        report_status(&Message::SetupFailed(ending.reason.clone()));
    }
    let code = ending.end.exit_code().unwrap_or(3);
    std::process::exit(i32::from(code))
}

/// Debug builds only: panics on purpose where `ZONIT_VMM_TEST_PANIC`
/// names this thread (`vcpu`, `main`), so the tests can check that any
/// panic in the monitor ends the guest as a crash. Release builds have no
/// such hook.
#[cfg(debug_assertions)]
#[allow(clippy::panic)]
fn test_panic(thread: &str) {
    if std::env::var_os("ZONIT_VMM_TEST_PANIC").is_some_and(|v| v == thread) {
        panic!("test panic on the {thread} thread (ZONIT_VMM_TEST_PANIC)");
    }
}

#[cfg(not(debug_assertions))]
fn test_panic(_thread: &str) {}

/// The latch a panic ends the guest through, from the moment the threads
/// that run the guest exist.
static PANIC_LATCH: OnceLock<Arc<EndLatch>> = OnceLock::new();

/// The monitor's panic hook. The binary unwinds (PID 1 must not abort),
/// and unwinding would end only the panicking thread, leaving the guest
/// frozen and the monitor up; it would also drop (close) descriptors, which
/// the seccomp filters forbid. So once the guest's threads run, a panic on
/// any thread ends the guest as a crash right here, without unwinding:
/// the main thread exits, any other thread records the crash, which wakes
/// the main thread to exit, and parks. Before that (set-up, no filters
/// yet) the panic unwinds to [`main`], which exits with the crash status.
fn on_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let what = info.payload_as_str().unwrap_or("no message");
    let reason = format!("panic on monitor thread {name}{at}: {what}");
    let Some(latch) = PANIC_LATCH.get() else {
        log::error!("{reason}");
        return;
    };
    latch.end(Ending::new(GuestEnd::Crash, reason.clone()));
    if name == "main" {
        finish(
            latch
                .get()
                .unwrap_or_else(|| Ending::new(GuestEnd::Crash, reason)),
        );
    }
    loop {
        std::thread::park();
    }
}

/// Entry point of `zonit vmm`; `args` are the arguments after `vmm`. A
/// panic anywhere in the monitor ends the guest as a crash ([`on_panic`]).
pub fn main(args: &[String]) -> ExitCode {
    std::panic::catch_unwind(|| monitor_main(args)).unwrap_or_else(|_| {
        log::error!("the monitor panicked");
        ExitCode::from(GuestEnd::Crash.exit_code().unwrap_or(3))
    })
}

fn monitor_main(args: &[String]) -> ExitCode {
    init_logging();
    std::panic::set_hook(Box::new(on_panic));
    let opts = match Options::parse(args) {
        Ok(opts) => opts,
        Err(OptionsError::Help) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return setup_failed(&e.to_string()),
    };
    if let Some(fd) = opts.status_fd {
        match crate::sys::fd::take_inherited_fd(fd) {
            Ok(fd) => {
                let _ = STATUS.set(File::from(fd));
            }
            Err(e) => return setup_failed(&format!("cannot use --status-fd {fd}: {e}")),
        }
    }
    // Taken before the monitor opens anything, so no number it opens
    // itself can be mistaken for one it inherited.
    let mut taps = Vec::with_capacity(opts.nets.len());
    for net in &opts.nets {
        match crate::sys::fd::take_inherited_fd(net.fd) {
            Ok(fd) => taps.push(File::from(fd)),
            Err(e) => return setup_failed(&format!("cannot use --net fd={}: {e}", net.fd)),
        }
    }
    let monitor = match Monitor::build(&opts, taps) {
        Ok(m) => m,
        Err(e) => return setup_failed(&error_chain(&e)),
    };
    let err = monitor.run();
    setup_failed(&error_chain(&err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::i8042;

    #[test]
    fn stop_button_raises_the_ged_and_types_ctrl_alt_del() {
        let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stop = StopButton {
            ged: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            keyboard: Arc::new(Mutex::new(I8042::new(EventFdTrigger(
                kbd_irq.try_clone().unwrap(),
            )))),
        };
        stop.press();
        stop.press();
        assert_eq!(stop.ged.read().unwrap(), 2);
        assert!(kbd_irq.read().unwrap() >= 1);
        let mut kbd = devices::lock(&stop.keyboard);
        let mut first = [0u8];
        devices::BusDevice::read(&mut *kbd, 0, &mut first);
        assert_eq!(first[0], i8042::CAD_SET1[0]);
    }
}
