//! `zonit` entry point: picks a face by argv[0] and the first argument
//! and maps the outcome to an exit status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use zonit::agent::{self, Agent, Mode, ShutdownAction};
use zonit::config;

const USAGE: &str = "usage:
  zonit [init]                 as PID 1: boot the host and supervise
  zonit run [--config FILE]    supervise without host boot
  zonit check FILE             validate a config
  zonit ctl [--socket PATH] COMMAND   control a running agent (zonit ctl help)
  zonit vmm ...                internal: one guest's monitor";

fn main() -> ExitCode {
    // A zone's init, executed again to shed the agent's memory, is nothing
    // else: it must not parse, allocate or set up anything of the rest.
    zonit::zone::init::run_if_reexecuted();
    // zonit's first instruction as PID 1, as near as Rust allows: the boot
    // time benchmark (BENCHMARKS.md) is measured from here.
    let t0 = zonit::sys::monotonic_ns();
    zonit::init::install_panic_hook();
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
        .unwrap_or_default();
    // As PID 1 the kernel passes unrecognised command-line words as
    // arguments, so only an exact subcommand name overrides init mode.
    let sub = args.get(1).map(String::as_str);
    let explicit = matches!(sub, Some("run" | "check" | "ctl" | "vmm" | "init"));
    if !explicit && (std::process::id() == 1 || argv0 == "init") {
        return init(t0);
    }
    match sub {
        Some("run") => run(&args[2..]),
        Some("check") => check(&args[2..]),
        Some("ctl") => zonit::control::client::main(&args[2..]),
        Some("vmm") => zonit::vmm::main(&args[2..]),
        Some("init") => init(t0),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version" | "version") => {
            println!("zonit {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("zonit: unknown command {other}\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn check(args: &[String]) -> ExitCode {
    let [file] = args else {
        eprintln!("usage: zonit check FILE");
        return ExitCode::from(2);
    };
    match config::load(Path::new(file)) {
        Ok(cfg) => {
            println!("{file}: ok, {} unit(s)", cfg.units.len());
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                zonit::logging::stderr_line(&d.to_string());
            }
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> ExitCode {
    let mut config_path = PathBuf::from(config::DEFAULT_PATH);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(p) => config_path = PathBuf::from(p),
                None => {
                    eprintln!("zonit run: --config needs a file");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("zonit run: unknown option {other}");
                return ExitCode::from(2);
            }
        }
    }
    zonit::logging::init(log::LevelFilter::Info, false);
    // Orphans of our units (guests' monitors, anything that escapes a
    // unit's process group) are reparented to us and reaped.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!("unable to become a child subreaper: {e}");
    }
    let agent = match Agent::new(agent::Options {
        config_path,
        mode: Mode::Run,
        log_level: None,
    }) {
        Ok(a) => a,
        Err(agent::Error::Config(diags)) => {
            for d in &diags {
                zonit::logging::stderr_line(&d.to_string());
            }
            return ExitCode::from(1);
        }
        Err(e) => {
            log::error!("{}", zonit::logging::error_chain(&e));
            return ExitCode::from(1);
        }
    };
    match agent.run() {
        ShutdownAction::Exit(code) => ExitCode::from(code.clamp(0, 255) as u8),
        _ => ExitCode::SUCCESS,
    }
}

/// PID 1: never returns. Anywhere else host boot would remount /proc and
/// friends under a running system and reboot it at the end, so refuse.
fn init(t0: u64) -> ExitCode {
    if std::process::id() != 1 {
        eprintln!(
            "zonit init: must be PID 1 (the kernel's init); to supervise on a running host use `zonit run`"
        );
        return ExitCode::from(2);
    }
    zonit::init::main(t0)
}
