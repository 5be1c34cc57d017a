//! The hostile control clients of `scripts/stress.sh`: each case talks to
//! an agent's control socket the way a broken or malicious client would
//! and prints one summary line. Not part of zonit; a test tool.
//!
//! Usage: stress_client SOCKET CASE [ARGS]
//!   fds N COUNT        COUNT status requests, each carrying N fds
//!   pipeline COUNT     COUNT requests in one write (`logs` of the unit
//!                      `flood`, no lines); replies counted
//!   halfclose UNIT     stop UNIT, then shut the write side; then the
//!                      same for `logs -f UNIT` (replies for 2 s)
//!   race UNIT COUNT    COUNT times `start` and `stop` of UNIT in one
//!                      write; every reply counted

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn connect(socket: &str) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads reply lines until `n` came, the stream ended, or `limit` passed.
fn replies(s: &UnixStream, n: usize, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => out.push(line),
        }
    }
    out
}

fn fds(socket: &str, n: usize, count: usize) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let mut errors = 0;
    for _ in 0..count {
        let s = connect(socket);
        let files: Vec<std::fs::File> = (0..n)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let line = b"{\"v\":1,\"cmd\":\"status\"}\n";
        let iov = [std::io::IoSlice::new(line)];
        sendmsg::<()>(
            s.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let r = replies(&s, 1, Duration::from_secs(5));
        if r.first().is_some_and(|l| l.contains("\"ok\":false")) {
            errors += 1;
        }
    }
    println!("fds: {count} requests carrying {n} fds each, {errors} error replies");
}

fn pipeline(socket: &str, count: usize) {
    let s = connect(socket);
    // Cheap requests with small replies: the flood measures the request
    // path, not the cost of building `status` rows.
    let flood = b"{\"v\":1,\"cmd\":\"logs\",\"name\":\"flood\",\"lines\":0}\n".repeat(count);
    let mut w = s.try_clone().unwrap();
    let t = std::thread::spawn(move || w.write_all(&flood).is_ok());
    let got = replies(&s, count, Duration::from_secs(30)).len();
    let written = t.join().unwrap_or(false);
    println!("pipeline: {count} requests in one write (written: {written}), {got} replies");
}

fn halfclose(socket: &str, unit: &str) {
    let mut s = connect(socket);
    writeln!(s, "{{\"v\":1,\"cmd\":\"stop\",\"name\":\"{unit}\"}}").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let stop = replies(&s, 1, Duration::from_secs(20));
    let mut s = connect(socket);
    writeln!(
        s,
        "{{\"v\":1,\"cmd\":\"start\",\"name\":\"{unit}\"}}\n{{\"v\":1,\"cmd\":\"logs\",\"name\":\"{unit}\",\"lines\":0,\"follow\":true}}"
    )
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let follow = replies(&s, usize::MAX, Duration::from_secs(2));
    println!(
        "halfclose: stop reply {:?}; logs -f after half-close: {} replies in 2 s",
        stop.first().map(|l| l.trim()),
        follow.len()
    );
}

fn race(socket: &str, unit: &str, count: usize) {
    let s = connect(socket);
    let mut text = String::new();
    for _ in 0..count {
        text.push_str(&format!(
            "{{\"v\":1,\"cmd\":\"start\",\"name\":\"{unit}\"}}\n{{\"v\":1,\"cmd\":\"stop\",\"name\":\"{unit}\"}}\n"
        ));
    }
    let mut w = s.try_clone().unwrap();
    let t = std::thread::spawn(move || w.write_all(text.as_bytes()).is_ok());
    let got = replies(&s, 2 * count, Duration::from_secs(60));
    let _ = t.join();
    let superseded = got.iter().filter(|l| l.contains("superseded")).count();
    println!(
        "race: {count} x (start, stop) of {unit} in one write, {} of {} replies ({superseded} stops superseded)",
        got.len(),
        2 * count
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let num = |s: &str| s.parse::<usize>().expect("a number");
    match a.as_slice() {
        [sock, "fds", n, count] => fds(sock, num(n), num(count)),
        [sock, "pipeline", count] => pipeline(sock, num(count)),
        [sock, "halfclose", unit] => halfclose(sock, unit),
        [sock, "race", unit, count] => race(sock, unit, num(count)),
        _ => {
            eprintln!(
                "usage: stress_client SOCKET fds N COUNT | pipeline COUNT | halfclose UNIT | race UNIT COUNT"
            );
            std::process::exit(2);
        }
    }
}
