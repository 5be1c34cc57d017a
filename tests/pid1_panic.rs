//! PID 1's panic hook (src/init/mod.rs): in the main process a panic is
//! logged and unwinds to a `catch_unwind` (the agent's loop survives it);
//! in a forked child it ends the child with status 127 on the spot, so a
//! zone's init can never unwind into a copy of the agent's loop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;

#[test]
fn panics_unwind_in_the_main_process_and_end_forked_children() {
    zonit::init::install_panic_hook();

    let caught = std::panic::catch_unwind(|| panic!("boom in the loop"));
    assert!(caught.is_err(), "the panic must unwind to catch_unwind");

    // The test harness may run other threads, but this test's child only
    // panics and exits.
    match zonit::sys::process::fork().unwrap() {
        ForkResult::Child => {
            let _ = std::panic::catch_unwind(|| panic!("boom in a child"));
            // Reached only if the hook let the panic unwind.
            zonit::sys::process::exit_now(0);
        }
        ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
            WaitStatus::Exited(_, code) => assert_eq!(code, 127),
            other => panic!("child ended as {other:?}"),
        },
    }
}
