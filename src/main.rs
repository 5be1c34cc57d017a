//! `zonit` entry point: picks a face by argv[0] and the first argument
//! and maps the outcome to an exit status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lexopt::Arg::{Long, Short, Value};
use zonit::agent::{self, Agent, Mode, ShutdownAction};
use zonit::{cli, config};

fn main() -> ExitCode {
    // zonit's first instruction as PID 1, as near as Rust allows: the boot
    // time benchmark (BENCHMARKS.md) is measured from here.
    let t0 = zonit::sys::kernel::monotonic_ns();
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
    // arguments, so only an exact name of a command that runs something
    // overrides init mode: a stray `help` or `version` on the kernel's
    // command line must not make PID 1 print and exit.
    let sub = args.get(1).map(String::as_str);
    let explicit = matches!(sub, Some("run" | "check" | "ctl" | "vmm" | "init"));
    if !explicit && (std::process::id() == 1 || argv0 == "init") {
        return init(t0, &[]);
    }
    let rest = args.get(2..).unwrap_or_default();
    match sub {
        Some("run") => run(rest),
        Some("check") => check(rest),
        Some("ctl") => zonit::control::client::main(rest),
        Some("vmm") => zonit::vmm::main(rest),
        Some("init") => init(t0, rest),
        Some("help") if wants_help(rest) => cli::print_help(&["help"]),
        Some("help") => {
            let words: Vec<&str> = rest.iter().map(String::as_str).collect();
            cli::print_help(&words)
        }
        Some("-h" | "--help") => cli::print_help(&[]),
        Some("version") => match no_args("version", rest) {
            Some(code) => code,
            None => version(),
        },
        Some("-V" | "--version") => version(),
        Some("completion") => completion(rest),
        Some(other) => {
            eprintln!("zonit: unknown command `{other}`\n{}", cli::overview());
            ExitCode::from(2)
        }
        None => {
            eprint!("{}", cli::overview());
            ExitCode::from(2)
        }
    }
}

fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "-h" || a == "--help")
}

fn version() -> ExitCode {
    println!("zonit {}", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}

/// For a command `path` that takes no arguments: its help, a usage
/// error, or `None` when `args` is empty and the command goes ahead.
fn no_args(path: &str, args: &[String]) -> Option<ExitCode> {
    let mut p = lexopt::Parser::from_args(args);
    match p.next() {
        Ok(None) => None,
        Ok(Some(Short('h') | Long("help"))) => Some(cli::print_help(&[path])),
        Ok(Some(arg)) => Some(cli::usage_error(path, &arg.unexpected().to_string())),
        Err(e) => Some(cli::usage_error(path, &e.to_string())),
    }
}

fn check(args: &[String]) -> ExitCode {
    let mut file = None;
    let mut p = lexopt::Parser::from_args(args);
    loop {
        match p.next() {
            Ok(None) => break,
            Ok(Some(Short('h') | Long("help"))) => return cli::print_help(&["check"]),
            Ok(Some(Value(v))) if file.is_none() => file = Some(PathBuf::from(v)),
            Ok(Some(arg)) => return cli::usage_error("check", &arg.unexpected().to_string()),
            Err(e) => return cli::usage_error("check", &e.to_string()),
        }
    }
    let Some(file) = file else {
        return cli::usage_error("check", "no config file given");
    };
    match config::load(&file) {
        Ok(cfg) => {
            println!("{}: ok, {} unit(s)", file.display(), cfg.units.len());
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

fn completion(args: &[String]) -> ExitCode {
    let mut bash = false;
    let mut p = lexopt::Parser::from_args(args);
    loop {
        match p.next() {
            Ok(None) => break,
            Ok(Some(Short('h') | Long("help"))) => return cli::print_help(&["completion"]),
            Ok(Some(Value(v))) if !bash && v == "bash" => bash = true,
            Ok(Some(arg)) => return cli::usage_error("completion", &arg.unexpected().to_string()),
            Err(e) => return cli::usage_error("completion", &e.to_string()),
        }
    }
    if !bash {
        return cli::usage_error("completion", "name the shell: bash");
    }
    print!("{}", cli::bash_completion());
    ExitCode::SUCCESS
}

fn run(args: &[String]) -> ExitCode {
    let mut config_path = PathBuf::from(config::DEFAULT_PATH);
    let mut p = lexopt::Parser::from_args(args);
    loop {
        let arg = match p.next() {
            Ok(None) => break,
            Ok(Some(Short('h') | Long("help"))) => return cli::print_help(&["run"]),
            Ok(Some(Short('c') | Long("config"))) => p.value().map(|v| config_path = v.into()),
            Ok(Some(arg)) => Err(arg.unexpected()),
            Err(e) => Err(e),
        };
        if let Err(e) = arg {
            return cli::usage_error("run", &e.to_string());
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

/// PID 1: never returns; the kernel's words in `args` are not ours to
/// judge. Anywhere else host boot would remount /proc and friends under
/// a running system and reboot it at the end, so refuse.
fn init(t0: u64, args: &[String]) -> ExitCode {
    if std::process::id() != 1 {
        if let Some(code) = no_args("init", args) {
            return code;
        }
        eprintln!(
            "zonit init: must be PID 1 (the kernel's init); to supervise on a running host use `zonit run`"
        );
        return ExitCode::from(2);
    }
    zonit::init::main(t0)
}
