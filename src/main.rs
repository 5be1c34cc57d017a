//! `zonit` entry point: dispatches on argv[0] and the first argument.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::SUCCESS
}
