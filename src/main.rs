//! `zonit` entry point: dispatches on argv[0] and the first argument.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // Temporary dispatch for the monitor until the full one lands.
    if args.get(1).map(String::as_str) == Some("vmm") {
        return zonit::vmm::main(args.get(2..).unwrap_or_default());
    }
    ExitCode::SUCCESS
}
