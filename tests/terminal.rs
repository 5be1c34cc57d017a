//! Tier 2: `zonit ctl exec -t`, driven through a pseudo-terminal the test
//! opens, as a person's terminal would drive it. Needs root (fails under
//! CI=true without it) and busybox-static.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{OpenptyResult, Winsize, openpty};
use nix::sys::termios::{LocalFlags, tcgetattr};
use zonit::sys::tty::{self, WindowSize};

use common::{Zonit, require_root, zone};

/// A `zonit ctl exec -t` running on a terminal the test holds the master
/// of: the client's stdio and controlling terminal are the slave.
struct Session {
    child: Child,
    master: OwnedFd,
    slave: OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Session {
    fn start(z: &Zonit, rows: u16, cols: u16, argv: &[&str]) -> Session {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let OpenptyResult { master, slave } = openpty(Some(&size), None).unwrap();
        let mut cmd = Command::new(common::ZONIT);
        cmd.arg("ctl")
            .arg("--socket")
            .arg(&z.socket)
            .args(["exec", "-t", "web", "--"])
            .args(argv)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only async-signal-safe calls (setsid, ioctl) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = std::fs::File::from(master.try_clone().unwrap());
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the slave is closed everywhere.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Session {
            child,
            master,
            slave,
            output,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn wait_output(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the terminal; it shows: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_bytes(&self, bytes: &[u8]) {
        nix::unistd::write(self.master.as_fd(), bytes).unwrap();
    }

    /// Waits for the client to exit; returns its status.
    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "zonit ctl exec -t did not end; the terminal shows: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The local terminal is back in its normal (cooked, echoing) mode.
    fn assert_terminal_restored(&self) {
        let t = tcgetattr(self.slave.as_fd()).unwrap();
        assert!(
            t.local_flags
                .contains(LocalFlags::ICANON | LocalFlags::ECHO),
            "the client left the terminal in raw mode: {:?}",
            t.local_flags
        );
    }
}

fn zone_running() -> Zonit {
    let z = Zonit::start("tty", |d| {
        zone(d, "web", "sleep 1000", "user = \"1000:1000\"")
    });
    z.wait_state("web", "running");
    z
}

#[test]
fn exec_t_gives_the_command_a_terminal_of_the_zone_at_the_callers_size() {
    if !require_root() {
        return;
    }
    let z = zone_running();
    let mut s = Session::start(
        &z,
        33,
        111,
        &["sh", "-c", "echo tty=$(tty) size=$(stty size); exit 3"],
    );
    assert_eq!(s.wait(), 3, "the command's status: {}", s.text());
    // The zone's own devpts instance: its first terminal.
    s.wait_output("tty=/dev/pts/0 size=33 111");
    s.assert_terminal_restored();
}

#[test]
fn a_window_size_change_reaches_the_command_and_ctrl_c_ends_it() {
    if !require_root() {
        return;
    }
    let z = zone_running();
    let mut s = Session::start(
        &z,
        24,
        80,
        &[
            "sh",
            "-c",
            "trap 'echo resized=$(stty size)' WINCH; echo ready; while :; do sleep 0.05; done",
        ],
    );
    s.wait_output("ready");
    // What a terminal emulator does when its window changes: the kernel
    // sends SIGWINCH to the client, which passes the size on.
    tty::set_window_size(
        s.master.as_fd(),
        WindowSize {
            rows: 40,
            cols: 120,
        },
    )
    .unwrap();
    s.wait_output("resized=40 120");
    // Ctrl-C is a byte in raw mode; the zone's terminal turns it into
    // SIGINT for its foreground process group.
    s.type_bytes(b"\x03");
    assert_eq!(s.wait(), 130, "{}", s.text());
    s.assert_terminal_restored();
}

#[test]
fn ctrl_c_ends_a_sleep_and_typed_input_reaches_the_command() {
    if !require_root() {
        return;
    }
    let z = zone_running();
    let mut s = Session::start(&z, 24, 80, &["sh", "-c", "read x; echo got=$x; sleep 100"]);
    s.type_bytes(b"hello\r");
    s.wait_output("got=hello");
    let t = Instant::now();
    s.type_bytes(b"\x03");
    assert_eq!(s.wait(), 130, "{}", s.text());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn job_control_stops_and_resumes_a_job_of_a_shell() {
    if !require_root() {
        return;
    }
    let z = zone_running();
    let mut s = Session::start(&z, 24, 80, &["sh", "-i"]);
    s.type_bytes(b"sleep 100\r");
    std::thread::sleep(Duration::from_millis(300));
    // Ctrl-Z stops the foreground job and gives the shell the terminal.
    s.type_bytes(b"\x1a");
    s.wait_output("Stopped");
    s.type_bytes(b"echo back=$((40+2))\r");
    s.wait_output("back=42");
    // fg gives the job the terminal back; Ctrl-C then reaches it, not
    // the shell.
    s.type_bytes(b"fg\r");
    std::thread::sleep(Duration::from_millis(300));
    s.type_bytes(b"\x03");
    s.type_bytes(b"echo after=$?\r");
    s.wait_output("after=130");
    s.type_bytes(b"exit 5\r");
    assert_eq!(s.wait(), 5, "{}", s.text());
}

#[test]
fn the_terminal_is_restored_when_the_client_is_terminated() {
    if !require_root() {
        return;
    }
    let z = zone_running();
    let mut s = Session::start(&z, 24, 80, &["sh", "-c", "echo ready; sleep 100"]);
    s.wait_output("ready");
    let raw = tcgetattr(s.slave.as_fd()).unwrap();
    assert!(
        !raw.local_flags.contains(LocalFlags::ICANON),
        "raw while running"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(s.wait(), 128 + libc::SIGTERM);
    s.assert_terminal_restored();
}

#[test]
fn exec_t_without_a_terminal_on_stdin_is_refused() {
    if !require_root() {
        return;
    }
    let z = zone_running();
    let out = Command::new(common::ZONIT)
        .arg("ctl")
        .arg("--socket")
        .arg(&z.socket)
        .args(["exec", "-t", "web", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal on stdin"), "{err}");
}

#[test]
fn exec_t_reports_a_missing_command_and_a_missing_zone_as_exec_does() {
    if !require_root() {
        return;
    }
    let z = zone_running();
    let mut s = Session::start(&z, 24, 80, &["/no/such"]);
    assert_eq!(s.wait(), 127, "{}", s.text());
    s.wait_output("unable to execute /no/such");
    s.assert_terminal_restored();
    let (code, _, err) = z.ctl(&["stop", "web"]);
    assert_eq!(code, 0, "{err}");
    let mut s = Session::start(&z, 24, 80, &["true"]);
    assert_eq!(s.wait(), 1, "{}", s.text());
    s.wait_output("zone web is not running");
    s.assert_terminal_restored();
}
