//! zonit as PID 1 on a bare host: boot, hand over to the
//! agent, shut down. Never returns.
//!
//! Boot order: API file systems (plan in [`mounts`]), the console as
//! stdio, `/proc/cmdline` ([`cmdline`]), `/dev/kmsg` logging without the
//! kernel's rate limit, cgroup controllers for zones, ctrl-alt-del as
//! SIGINT, the config, then `[host]`: hostname, `lo` up, modules
//! ([`modules`]), sysctls ([`sysctl`]), data file systems
//! ([`datamounts`], waiting for their devices); then the agent, told
//! which required data mounts failed. After the agent
//! returns a [`ShutdownAction`], [`shutdown::finish`] takes the host down.
//!
//! Failure policy: nothing in boot is fatal. Every step that fails is
//! logged and boot goes on; a config that cannot be loaded leaves PID 1 up
//! with no units, a rescue shell on the console, and the control socket
//! open for `zonit ctl reload`. A panic is caught (the release profile
//! unwinds for this); if one escapes the agent, PID 1 reaps forever.

pub mod blkid;
pub mod cmdline;
pub mod console;
pub mod datamounts;
pub mod debug_exit;
pub mod le;
pub mod modules;
pub mod mounts;
pub mod shutdown;
pub mod sysctl;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::agent::{self, Agent, Mode, ShutdownAction};
use crate::config::{self, Host};

/// PID of the process that installed the panic hook. A panic in a forked
/// child (a zone's init before exec) must end that child, never unwind
/// into a copy of the agent's loop.
static MAIN_PID: AtomicU32 = AtomicU32::new(0);

/// Installs the panic hook: log the panic (to /dev/kmsg as PID 1) and, in
/// a forked child, `_exit(127)` on the spot. In the main process the panic
/// then unwinds to the agent's per-turn `catch_unwind`.
pub fn install_panic_hook() {
    MAIN_PID.store(std::process::id(), Ordering::SeqCst);
    std::panic::set_hook(Box::new(|info| {
        let me = std::process::id();
        if me != MAIN_PID.load(Ordering::SeqCst) {
            crate::logging::stderr_line(&format!("zonit: panic in child {me}: {info}"));
            crate::sys::process::exit_now(127);
        }
        crate::logging::emergency(&format!("panic: {info}"));
    }));
}

/// Runs PID 1: boot, agent, shutdown. `t0_ns` is CLOCK_MONOTONIC taken by
/// `main` as its first act.
pub fn main(t0_ns: u64) -> ! {
    let outcome = std::panic::catch_unwind(|| boot_and_run(t0_ns));
    match outcome {
        Ok((action, debug_exit)) => shutdown::finish(action, debug_exit),
        Err(_) => {
            log::error!("PID 1 caught a panic outside the event loop; reaping from now on");
            shutdown::reap_forever()
        }
    }
}

fn boot_and_run(t0_ns: u64) -> (ShutdownAction, bool) {
    // Before /dev/kmsg exists, problems are kept and logged afterwards.
    let mut early: Vec<String> = Vec::new();
    apply_mounts(&mut early);
    if let Err(e) = console::attach() {
        early.push(format!("unable to open {}: {e}", console::CONSOLE));
    }
    // Userspace writes to /dev/kmsg are rate limited by default (10 lines
    // per 5 s burst), which would drop zone output without a word. The
    // kernel takes exactly the word and one newline.
    if let Err(e) = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n") {
        early.push(format!(
            "unable to write /proc/sys/kernel/printk_devkmsg: {e}; kernel may drop log lines"
        ));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map(|t| cmdline::parse(&t))
        .unwrap_or_default();
    crate::logging::init(cmdline.log.unwrap_or(log::LevelFilter::Info), true);
    log::info!(
        "zonit {} as PID 1 (started at monotonic {:.6} s)",
        env!("CARGO_PKG_VERSION"),
        t0_ns as f64 / 1e9
    );
    for e in early {
        log::error!("{e}");
    }
    for w in &cmdline.ignored {
        log::warn!("ignoring kernel command line word {w}: not understood");
    }
    enable_cgroup_controllers();
    // The kernel's ctrl-alt-del would reboot on the spot; as SIGINT it
    // is the config's ctrl_alt_del action after an orderly shutdown.
    if let Err(e) = crate::sys::kernel::reboot(libc::RB_DISABLE_CAD) {
        log::warn!("unable to disable ctrl-alt-del reboot: {e}");
    }
    if let Err(e) = crate::sys::net::set_link_up("lo") {
        log::warn!("unable to bring up lo: {e}");
    }

    let config_path = PathBuf::from(
        cmdline
            .config
            .clone()
            .unwrap_or_else(|| config::DEFAULT_PATH.into()),
    );
    let opts = agent::Options {
        config_path: config_path.clone(),
        mode: Mode::Init,
        log_level: cmdline.log,
    };
    let built = match config::load(&config_path) {
        Ok(cfg) => {
            log::set_max_level(cmdline.log.unwrap_or(cfg.host.log_level));
            crate::logging::add_syslog(cfg.host.syslog.as_ref());
            if cmdline.shell {
                start_shell(Path::new("/bin/sh"), "debug shell (zonit.shell)");
            }
            let unavailable = apply_host(&cfg.host);
            Agent::with_config(opts, cfg).map(|mut a| {
                a.set_unavailable_mounts(unavailable);
                a
            })
        }
        Err(diags) => {
            report_config_errors(&config_path, &diags);
            let shell = rescue_shell(&config_path, cmdline.rescue);
            match &shell {
                Some(sh) => start_shell(sh, "rescue shell"),
                None => {
                    log::warn!("no rescue shell: set [host] rescue_shell or boot with zonit.rescue")
                }
            }
            if cmdline.shell && shell.is_none() {
                start_shell(Path::new("/bin/sh"), "debug shell (zonit.shell)");
            }
            Agent::without_config(opts).map(|mut a| {
                a.on_adopted_host(adopted_host);
                a
            })
        }
    };
    let agent = match built {
        Ok(a) => a,
        // The config's own control socket could not be bound, say: try
        // once more with no units and the default socket, so a fixed
        // config can still be reloaded.
        Err(e) => {
            log::error!(
                "unable to start the agent: {}; starting with no units instead",
                crate::logging::error_chain(&e)
            );
            match Agent::without_config(agent::Options {
                config_path: config_path.clone(),
                mode: Mode::Init,
                log_level: cmdline.log,
            }) {
                Ok(mut a) => {
                    a.on_adopted_host(adopted_host);
                    a
                }
                Err(e) => {
                    log::error!(
                        "unable to start the agent without units either: {}; PID 1 stays up, reaping",
                        crate::logging::error_chain(&e)
                    );
                    shutdown::reap_forever();
                }
            }
        }
    };
    (agent.run(), cmdline.debug_exit)
}

fn read_mountinfo() -> Vec<mounts::MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| mounts::parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Mounts what the boot plan lists, after leaving the initramfs's rootfs
/// if that is where we are.
fn apply_mounts(errors: &mut Vec<String>) {
    let mut mounted = read_mountinfo();
    if mounted.is_empty() {
        // /proc is not there yet: mount it to see what the root is.
        if let Some(proc_) = mounts::BOOT_MOUNTS.first() {
            let _ = std::fs::create_dir_all(proc_.target);
            if let Err(e) = mount(
                Some(proc_.source),
                proc_.target,
                Some(proc_.fstype),
                proc_.flags,
                None::<&str>,
            ) {
                errors.push(format!("unable to mount proc on /proc: {e}"));
            }
        }
        mounted = read_mountinfo();
    }
    if mounts::root_is_initial(&mounted) {
        // /proc goes first so that it is not left mounted, hidden, on
        // the old root; it is mounted again below.
        let _ = umount2("/proc", MntFlags::MNT_DETACH);
        if let Err(e) = leave_rootfs() {
            errors.push(format!(
                "unable to put a bind mount over the initramfs root: {e}; zones cannot pivot_root"
            ));
        }
        mounted = read_mountinfo();
    }
    for m in mounts::boot_plan(&mounted) {
        if let Err(e) = std::fs::create_dir_all(m.target) {
            errors.push(format!("unable to create {}: {e}", m.target));
            continue;
        }
        let data = (!m.data.is_empty()).then_some(m.data);
        if let Err(e) = mount(Some(m.source), m.target, Some(m.fstype), m.flags, data) {
            errors.push(format!("unable to mount {} on {}: {e}", m.fstype, m.target));
        }
    }
}

/// Replaces `/` (the kernel's rootfs) with a bind mount of the same tree,
/// as switch_root does without the copy: bind it on a directory, move that
/// mount onto `/`, chroot into it. See `mounts::root_is_initial`.
fn leave_rootfs() -> nix::Result<()> {
    const STAGE: &str = "/run";
    let _ = std::fs::create_dir_all(STAGE);
    mount(
        Some("/"),
        STAGE,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    nix::unistd::chdir(STAGE)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")
}

/// Enables the controllers zone limits use (`memory_max`, `cpu_max`,
/// `pids_max`) for the root group's children, the same and no others as
/// the agent enables below it.
fn enable_cgroup_controllers() {
    let root = Path::new("/sys/fs/cgroup");
    match crate::agent::cgroup::enable_used(root) {
        None => log::warn!("no cgroup2 at /sys/fs/cgroup: zones cannot have resource limits"),
        Some(refused) => {
            for (c, e) in refused {
                log::warn!("unable to enable the cgroup controller {c}: {e}");
            }
        }
    }
}

/// `[host]` settings PID 1 applies: hostname, modules, sysctls, then the
/// data mounts (which may need modules). Errors are logged; none stops
/// boot. Returns the required data mounts that failed.
pub fn apply_host(host: &Host) -> Vec<datamounts::Unavailable> {
    if let Some(name) = &host.hostname
        && let Err(e) = nix::unistd::sethostname(name)
    {
        log::warn!("unable to set the hostname to {name}: {e}");
    }
    let dir = modules::modules_dir(Path::new("/"));
    match modules::load(&host.modules, &dir) {
        Ok(loaded) if !loaded.is_empty() => log::info!("loaded modules: {}", loaded.join(", ")),
        Ok(_) => {}
        Err(e) => log::error!("{}", crate::logging::error_chain(&e)),
    }
    for (key, value) in &host.sysctl {
        match sysctl::path(key) {
            Some(path) => {
                if let Err(e) = std::fs::write(&path, value) {
                    log::warn!(
                        "unable to set sysctl {key} = {value} ({}): {e}",
                        path.display()
                    );
                }
            }
            None => log::warn!("sysctl key {key:?} is not a valid name; skipped"),
        }
    }
    datamounts::mount_all(&host.mounts, &dir)
}

fn adopted_host(host: &Host) -> Vec<datamounts::Unavailable> {
    crate::logging::add_syslog(host.syslog.as_ref());
    apply_host(host)
}

/// Prints every diagnostic on the console (plain `FILE:LINE:COL: message`,
/// as `zonit check` prints them), each line one record of the kernel log
/// so that no kernel line can cut it in two.
fn report_config_errors(path: &Path, diags: &[config::Diagnostic]) {
    use crate::logging::print_line;
    use log::Level;
    print_line(
        Level::Error,
        &format!(
            "zonit: the config {} cannot be loaded ({} error(s)):",
            path.display(),
            diags.len()
        ),
    );
    for d in diags {
        print_line(Level::Error, &d.to_string());
    }
    print_line(
        Level::Error,
        "zonit: no units started; fix the file and run `zonit ctl reload` (or send SIGHUP to PID 1)",
    );
}

/// The rescue shell for a config that did not load: `[host] rescue_shell`
/// if the file is at least TOML that names one, else `/bin/sh` when the
/// command line says `zonit.rescue`.
fn rescue_shell(path: &Path, rescue_flag: bool) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok();
    text.as_deref()
        .and_then(rescue_shell_in)
        .or_else(|| rescue_flag.then(|| PathBuf::from("/bin/sh")))
}

/// `host.rescue_shell` of a config that may fail validation but still
/// parses as TOML.
pub fn rescue_shell_in(text: &str) -> Option<PathBuf> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table
        .get("host")?
        .get("rescue_shell")?
        .as_str()
        .map(PathBuf::from)
}

fn start_shell(shell: &Path, what: &str) {
    match console::spawn_shell(shell) {
        Ok(pid) => log::warn!(
            "{what} {} started on the console, pid {pid}",
            shell.display()
        ),
        Err(e) => log::error!("unable to start the {what} {}: {e}", shell.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescue_shell_is_read_from_a_config_that_fails_validation() {
        let text = "[host]\nrescue_shell = \"/bin/ash\"\n[zone.a]\nafter = [\"nope\"]\n";
        assert!(config::parse(Path::new("t.toml"), text).is_err());
        assert_eq!(rescue_shell_in(text), Some(PathBuf::from("/bin/ash")));
    }

    #[test]
    fn broken_toml_has_no_rescue_shell_of_its_own() {
        assert_eq!(rescue_shell_in("[host\nrescue_shell = \"/bin/sh\""), None);
        assert_eq!(rescue_shell_in("[host]\nlog_level = \"info\"\n"), None);
    }
}
