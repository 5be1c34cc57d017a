//! Tier 1: what the `zonit` command line prints, as a script or a person
//! reading a console sees it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};

/// Every line zonit prints must reach a terminal whole: a line written in
/// pieces can be cut by another writer of the same console (seen on a
/// serial console as `/etc/zonit.tom[    1.88] ...l:7:1: unknown key`).
/// stderr is a datagram socket here, so each write(2) arrives as one
/// datagram and a line written in two writes shows as two.
#[test]
fn config_errors_are_written_one_whole_line_per_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[host]\nbogus = 1\n\n[zone.a]\nroot = 7\ncommand = [\"/bin/true\"]\nnope = true\n",
    )
    .unwrap();
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_zonit"))
        .arg("check")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    ours.set_nonblocking(true).unwrap();
    let mut writes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = ours.recv(&mut buf) {
        writes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        writes.len() >= 3,
        "expected one write per error: {writes:?}"
    );
    let file = path.display().to_string();
    for w in &writes {
        assert!(
            w.starts_with(&file) && w.ends_with('\n') && w.matches('\n').count() == 1,
            "not one whole `FILE:LINE:COL: message` line per write: {w:?} (all: {writes:?})"
        );
    }
}

/// `[[host.mounts]]` is PID 1's business: `zonit check` accepts it, and
/// `zonit run` refuses to start with it, saying why, before it touches
/// anything (no socket, no cgroup).
#[test]
fn run_refuses_host_mounts_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mounts.toml");
    let socket = dir.path().join("ctl.sock");
    std::fs::write(
        &path,
        format!(
            "[host]\ncontrol_socket = \"{}\"\n[[host.mounts]]\nsource = \"LABEL=zdata\"\ntarget = \"/data\"\nfs = \"ext4\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_zonit"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let run = Command::new(env!("CARGO_BIN_EXE_zonit"))
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[[host.mounts]] is only for zonit as PID 1")
            && stderr.contains("host's own init"),
        "{stderr}"
    );
    assert!(!socket.exists());
}
