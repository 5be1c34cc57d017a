//! Tier 2: the agent's own robustness under `zonit run` as PID 1 of a PID
//! namespace: its hold on the control socket, leftovers of a dead
//! predecessor, hostile clients, reload storms, fd limits.
//! Needs root (fails under CI=true without it) and busybox-static.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Zonit, own_cgroup2, require_root, run_expecting_exit, test_dir, zone};

/// A fresh cgroup2 group for one test, removed on drop.
struct TestGroup(PathBuf);

impl TestGroup {
    fn new(name: &str) -> TestGroup {
        let base = own_cgroup2().expect("cgroup2 is mounted");
        let dir = base.join(format!("zonit-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        TestGroup(dir)
    }

    fn children(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        for c in self.children() {
            let _ = std::fs::remove_dir(self.0.join(c));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn lock_record(socket: &Path) -> String {
    let mut lock = socket.as_os_str().to_os_string();
    lock.push(".lock");
    std::fs::read_to_string(PathBuf::from(lock)).unwrap()
}

#[test]
fn a_second_agent_on_the_same_socket_refuses_and_names_the_first() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("second", |d| zone(d, "web", "sleep 1000", ""));
    z.wait_state("web", "running");
    let group = TestGroup::new("second");
    let (code, out) = run_expecting_exit(&z.config, Some(&group.0), Duration::from_secs(10));
    assert_eq!(code, Some(1), "the second agent must refuse: {out}");
    assert!(
        out.contains(&format!("another agent (pid {})", z.pid())),
        "the message names the first agent's pid {}: {out}",
        z.pid()
    );
    assert!(
        group.children().is_empty(),
        "a refused agent left cgroups behind: {:?}",
        group.children()
    );
    // The first agent still serves its socket and its zone.
    assert_eq!(z.state("web"), "running");
}

#[test]
fn the_next_agent_removes_what_a_sigkilled_one_left() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("reclaim", |d| zone(d, "web", "sleep 1000", ""));
    z.wait_state("web", "running");
    let record = lock_record(&z.socket);
    let base = record
        .lines()
        .find_map(|l| l.strip_prefix("cgroup "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no cgroup in the lock record: {record}"));
    assert!(base.join("web").is_dir(), "{}", base.display());
    let (dir, config, socket) = z.kill_hard();
    assert!(base.exists(), "the dead agent's cgroup is left");
    assert!(socket.exists(), "the dead agent's socket is left");
    let z = Zonit::launch(dir, config, socket);
    z.wait_log("left by a dead agent");
    assert!(
        !base.exists(),
        "the dead agent's cgroup {} is still there",
        base.display()
    );
    z.wait_state("web", "running");
}

#[test]
fn control_socket_in_an_existing_directory_keeps_its_mode() {
    if !require_root() {
        return;
    }
    let dir = test_dir("sockdir");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = shared.join("ctl.sock");
    let config = dir.join("zonit.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\ncontrol_socket = \"{}\"\n{}",
            socket.display(),
            zone(&dir, "web", "sleep 1000", "")
        ),
    )
    .unwrap();
    let mut z = Zonit::launch(dir, config, socket.clone());
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "an existing directory must keep its mode");
    assert_eq!(z.terminate(), 0);
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn a_missing_socket_directory_is_created_0700() {
    if !require_root() {
        return;
    }
    let dir = test_dir("newdir");
    let socket = dir.join("new/sub/ctl.sock");
    let config = dir.join("zonit.toml");
    std::fs::write(
        &config,
        format!("[host]\ncontrol_socket = \"{}\"\n", socket.display()),
    )
    .unwrap();
    let _z = Zonit::launch(dir.clone(), config, socket.clone());
    let mode = std::fs::metadata(dir.join("new/sub"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn a_file_at_the_socket_path_is_refused_and_kept() {
    if !require_root() {
        return;
    }
    let dir = test_dir("notsock");
    let socket = dir.join("ctl.sock");
    std::fs::write(&socket, "precious").unwrap();
    let config = dir.join("zonit.toml");
    std::fs::write(
        &config,
        format!("[host]\ncontrol_socket = \"{}\"\n", socket.display()),
    )
    .unwrap();
    let group = TestGroup::new("notsock");
    let (code, out) = run_expecting_exit(&config, Some(&group.0), Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is not a socket"), "{out}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
    assert!(group.children().is_empty(), "{:?}", group.children());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent's open fds.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sends `line` with `n` fds (of /dev/null) attached; returns the first
/// reply line.
fn request_with_fds(socket: &Path, line: &[u8], n: usize) -> String {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let files: Vec<std::fs::File> = (0..n)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [std::io::IoSlice::new(line)];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_eq!(sent, line.len());
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    reply
}

#[test]
fn requests_carrying_too_many_fds_get_an_error_and_leak_none() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("fds", |d| zone(d, "web", "sleep 1000", ""));
    z.wait_state("web", "running");
    let pid = z.pid();
    // What the agent holds once the zone's start has settled (a start's
    // own descriptors may still be closing as it turns `running`).
    let mut before = fd_count(pid);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        let now = fd_count(pid);
        if now == before {
            break;
        }
        before = now;
    }
    for i in 0..100 {
        let (line, n) = if i % 2 == 0 {
            (&br#"{"v":1,"cmd":"status"}"#[..], 5)
        } else {
            (
                &br#"{"v":1,"cmd":"exec","name":"web","argv":["id"]}"#[..],
                200,
            )
        };
        let mut line = line.to_vec();
        line.push(b'\n');
        let reply = request_with_fds(&z.socket, &line, n);
        assert!(
            reply.contains(r#""ok":false"#) && reply.contains(&format!("carried {n} fds")),
            "request {i}: {reply}"
        );
    }
    // The agent closes each connection once it has seen the client go.
    let mut after = 0;
    for _ in 0..100 {
        after = fd_count(pid);
        if after <= before {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        after <= before,
        "the agent's fds went from {before} to {after}"
    );
    assert_eq!(z.state("web"), "running");
}

/// Reads reply lines from `stream` until `n` arrived or `timeout` passed.
fn read_replies(
    stream: &std::os::unix::net::UnixStream,
    n: usize,
    timeout: Duration,
) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut reader = BufReader::new(stream);
    let deadline = std::time::Instant::now() + timeout;
    while out.len() < n && std::time::Instant::now() < deadline {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => out.push(line),
            Err(_) => break,
        }
    }
    out
}

#[test]
fn pipelined_requests_all_get_replies_without_another_byte() {
    if !require_root() {
        return;
    }
    use std::io::Write;
    let z = Zonit::start("pipeline", |d| zone(d, "web", "sleep 1000", ""));
    z.wait_state("web", "running");
    let stream = std::os::unix::net::UnixStream::connect(&z.socket).unwrap();
    // 2000 requests of 50 bytes: more than one request's worth of bytes
    // (64 KiB) arrives at once.
    let flood = br#"{"v":1,"cmd":"logs","name":"web","lines":0}      
"#
    .repeat(2000);
    let mut writer = stream.try_clone().unwrap();
    let t = std::thread::spawn(move || writer.write_all(&flood).unwrap());
    let replies = read_replies(&stream, 2000, Duration::from_secs(20));
    t.join().unwrap();
    assert_eq!(replies.len(), 2000, "replies to 2000 pipelined requests");
    assert!(replies.iter().all(|r| r.contains(r#""ok":true"#)));
}

#[test]
fn a_half_closed_client_still_gets_every_reply() {
    if !require_root() {
        return;
    }
    use std::io::Write;
    use std::net::Shutdown;
    let z = Zonit::start("halfclose", |d| {
        zone(d, "svc", "sleep 1000", "")
            + &zone(d, "ticker", "while true; do echo tick; sleep 0.2; done", "")
    });
    z.wait_state("svc", "running");
    z.wait_state("ticker", "running");
    // `stop` answers once the unit is stopped, long after the half-close.
    let mut s = std::os::unix::net::UnixStream::connect(&z.socket).unwrap();
    s.write_all(b"{\"v\":1,\"cmd\":\"stop\",\"name\":\"svc\"}\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let replies = read_replies(&s, 1, Duration::from_secs(10));
    assert_eq!(replies.len(), 1, "no reply to stop after half-close");
    assert!(
        replies[0].contains(r#""state":"stopped""#),
        "{}",
        replies[0]
    );
    // `logs -f` keeps following.
    let mut s = std::os::unix::net::UnixStream::connect(&z.socket).unwrap();
    s.write_all(b"{\"v\":1,\"cmd\":\"logs\",\"name\":\"ticker\",\"lines\":0,\"follow\":true}\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let replies = read_replies(&s, 5, Duration::from_secs(5));
    let ticks = replies.iter().filter(|r| r.contains("tick")).count();
    assert!(ticks >= 3, "followed output after half-close: {replies:?}");
    assert!(
        !replies.iter().any(|r| r.contains(r#""end""#)),
        "{replies:?}"
    );
}

#[test]
fn closing_an_exec_client_hangs_up_its_command() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("exechup", |d| zone(d, "web", "sleep 1000", ""));
    z.wait_state("web", "running");
    let mut ctl = std::process::Command::new(common::ZONIT)
        .args(["ctl", "--socket"])
        .arg(&z.socket)
        .args(["exec", "web", "--", "sleep", "4242"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    z.wait_for("the exec'd command", Duration::from_secs(10), || {
        !common::pids_with_cmdline("sleep\x004242").is_empty()
    });
    ctl.kill().unwrap();
    ctl.wait().unwrap();
    z.wait_for("the command to end", Duration::from_secs(10), || {
        common::pids_with_cmdline("sleep\x004242").is_empty()
    });
}

#[test]
fn a_stop_waiter_is_answered_when_another_client_starts_the_unit() {
    if !require_root() {
        return;
    }
    use std::io::Write;
    let z = Zonit::start("supersede", |d| {
        zone(
            d,
            "slow",
            "trap 'sleep 1; exit 0' TERM; echo trapped; while true; do sleep 0.1; done",
            "stop_timeout = \"5s\"",
        )
    });
    // Running is not enough: the shell must have set its trap.
    z.output_until("slow", "trapped");
    let mut waiter = std::os::unix::net::UnixStream::connect(&z.socket).unwrap();
    waiter
        .write_all(b"{\"v\":1,\"cmd\":\"stop\",\"name\":\"slow\"}\n")
        .unwrap();
    z.wait_state("slow", "stopping");
    assert_eq!(z.ctl(&["start", "slow"]).0, 0);
    let replies = read_replies(&waiter, 1, Duration::from_secs(10));
    assert_eq!(replies.len(), 1, "the stop waiter got no answer");
    assert!(
        replies[0].contains(r#""ok":false"#) && replies[0].contains("superseded"),
        "{}",
        replies[0]
    );
    z.wait_state("slow", "running");
}

#[test]
fn ctl_gives_up_after_its_timeout() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("ctltimeout", |d| {
        zone(
            d,
            "stubborn",
            "trap '' TERM; echo trapped; while true; do sleep 0.1; done",
            "stop_timeout = \"3s\"",
        )
    });
    z.output_until("stubborn", "trapped");
    let t = std::time::Instant::now();
    let (code, _, err) = z.ctl(&["--timeout", "500ms", "stop", "stubborn"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no reply from the agent"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// `n` zones `z0`.. running `sleep`, restarted always, with `extra` keys,
/// under zonit started with `prlimit NOFILE`.
fn many_zones(name: &str, n: usize, extra: &str, nofile: &str) -> Zonit {
    let units = |d: &Path| {
        (0..n)
            .map(|i| {
                let keys = format!("restart = \"always\"\n{extra}");
                zone(d, &format!("z{i}"), "sleep 1000", &keys)
            })
            .collect::<String>()
    };
    Zonit::start_wrapped(name, "", units, &["prlimit", nofile])
}

#[test]
fn three_hundred_zones_run_under_a_1024_fd_hard_limit() {
    if !require_root() {
        return;
    }
    const N: usize = 300;
    // The soft limit of a PID 1 as the kernel starts it is 1024; start
    // lower so the agent must raise it to get through.
    let z = many_zones("manyzones", N, "", "--nofile=256:1024");
    z.wait_for("every zone running", Duration::from_secs(240), || {
        let rows = z.status();
        rows.len() == N && rows.iter().all(|u| u["state"] == "running")
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", z.pid())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        nofile.split_whitespace().filter(|w| *w == "1024").count() == 2,
        "soft limit raised to the hard one: {nofile}"
    );
    let fds = fd_count(z.pid());
    assert!(fds < 1000, "{fds} fds for {N} running zones");
    assert!(
        z.status().iter().all(|u| u["restarts"] == 0),
        "a zone failed to start on the way"
    );
}

#[test]
fn running_out_of_fds_is_a_passing_failure_not_a_permanent_one() {
    if !require_root() {
        return;
    }
    const N: usize = 150;
    // Too few fds for every zone at once: some starts run out of fds.
    let backoff = "backoff = { initial = \"100ms\", max = \"500ms\" }";
    let z = many_zones("emfile", N, backoff, "--nofile=400:400");
    z.wait_for("the fd limit to be hit", Duration::from_secs(60), || {
        z.log_text().contains("Too many open files")
    });
    let failed: Vec<String> = z
        .status()
        .iter()
        .filter(|u| u["state"] == "failed")
        .map(|u| u["name"].to_string())
        .collect();
    assert!(failed.is_empty(), "zones failed for good: {failed:?}");
    // Room made: every zone still wanted comes up.
    for i in 0..40 {
        assert_eq!(z.ctl(&["stop", &format!("z{i}")]).0, 0);
    }
    z.wait_for("the other zones running", Duration::from_secs(60), || {
        z.status()
            .iter()
            .filter(|u| u["state"] == "running")
            .count()
            == N - 40
    });
}

/// An agent running the zones `keep` and `slow` (which takes `stop_delay`
/// seconds to stop), once `slow` runs; with its config text as it is and
/// without `slow`, for reloads.
fn keep_and_slow_stopper(name: &str, stop_delay: &str) -> (Zonit, String, String) {
    let slow = |d: &Path| {
        zone(
            d,
            "slow",
            &format!(
                "trap 'sleep {stop_delay}; exit 0' TERM; echo trapped; while true; do sleep 0.1; done"
            ),
            "stop_timeout = \"5s\"",
        )
    };
    let z = Zonit::start(name, |d| zone(d, "keep", "sleep 1000", "") + &slow(d));
    z.output_until("slow", "trapped");
    let host = format!("[host]\ncontrol_socket = \"{}\"\n", z.socket.display());
    let keep = zone(&z.dir, "keep", "sleep 1000", "");
    let with = format!("{host}{keep}{}", slow(&z.dir));
    let without = format!("{host}{keep}");
    (z, with, without)
}

#[test]
fn a_sighup_storm_over_good_and_broken_configs_keeps_a_slow_stopping_unit() {
    if !require_root() {
        return;
    }
    let (z, with, without) = keep_and_slow_stopper("hupstorm", "0.5");
    let broken = format!("{without}[zone.bad]\nroot = 7\n");
    let pid = nix::unistd::Pid::from_raw(z.pid());
    for i in 0..200 {
        let text = [&with, &without, &broken][i % 3];
        std::fs::write(&z.config, text).unwrap();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(&z.config, &with).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    // Every reload has been handled once a status request is answered
    // after the last one.
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, err) = z.ctl(&["start", "slow"]);
    assert_eq!(code, 0, "slow disappeared: {err}");
    assert!(z.status().iter().any(|u| u["name"] == "slow"));
    assert_eq!(z.state("keep"), "running");
}

#[test]
fn a_unit_removed_and_re_added_while_stopping_stays() {
    if !require_root() {
        return;
    }
    let (z, with, without) = keep_and_slow_stopper("readd", "1");
    std::fs::write(&z.config, &without).unwrap();
    assert_eq!(z.ctl(&["reload"]).0, 0);
    assert_eq!(
        z.state("slow"),
        "stopping",
        "a removed unit shows until stopped"
    );
    std::fs::write(&z.config, &with).unwrap();
    assert_eq!(z.ctl(&["reload"]).0, 0);
    // Its old process ends; the unit stays and runs again.
    z.wait_for("slow to run again", Duration::from_secs(10), || {
        z.status()
            .iter()
            .any(|u| u["name"] == "slow" && u["state"] == "running")
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(z.state("slow"), "running");
}

#[test]
fn a_fifo_at_the_config_path_does_not_stall_reload() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("fifo", |d| zone(d, "web", "sleep 1000", ""));
    z.wait_state("web", "running");
    std::fs::remove_file(&z.config).unwrap();
    nix::unistd::mkfifo(&z.config, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let pid = nix::unistd::Pid::from_raw(z.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    z.wait_log("the config must be a regular file");
    let (code, _, err) = z.ctl(&["--timeout", "5s", "reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("a FIFO"), "{err}");
    assert_eq!(z.state("web"), "running");
}

#[test]
fn an_exit_with_unit_that_cannot_start_ends_the_run_at_once() {
    if !require_root() {
        return;
    }
    let dir = test_dir("exitwith");
    let config = dir.join("zonit.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\ncontrol_socket = \"{}\"\nexit_with = \"x\"\nshutdown_timeout = \"20s\"\n\
             [zone.x]\nroot = \"{}\"\ncommand = [\"/bin/true\"]\n",
            dir.join("ctl.sock").display(),
            dir.join("missing").display()
        ),
    )
    .unwrap();
    let t = std::time::Instant::now();
    let (code, out) = run_expecting_exit(&config, None, Duration::from_secs(10));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_characters_in_unit_output_are_escaped_in_the_log_and_raw_in_logs() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("escape", |d| {
        zone(
            d,
            "web",
            "printf 'x\\rzonit: error: forged \\033[31mred\\n'; sleep 1000",
            "",
        )
    });
    z.wait_log("zonit[web]: x\\x0dzonit: error: forged \\x1b[31mred");
    assert!(!z.log_text().contains('\u{1b}'), "{}", z.log_text());
    let out = z.output_until("web", "x\rzonit: error: forged \u{1b}[31mred");
    assert!(out.contains('\r'));
}

#[test]
fn start_limit_and_operator_actions_are_logged_once_and_restarts_counted_right() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("limitlog", |d| {
        zone(
            d,
            "crashy",
            "exit 1",
            "restart = \"always\"\nbackoff = { initial = \"50ms\", max = \"50ms\" }\n\
             start_limit = { burst = 5, interval = \"60s\" }",
        ) + &zone(d, "svc", "sleep 1000", "")
    });
    z.wait_state("crashy", "failed");
    let u = z.unit("crashy");
    assert_eq!(u["restarts"], 4, "5 starts are 4 restarts: {u}");
    let count = |needle: &str| z.log_text().matches(needle).count();
    z.wait_log("crashy: failed: start limit hit");
    assert_eq!(count("start limit hit"), 1, "{}", z.log_text());
    z.wait_state("svc", "running");
    assert_eq!(z.ctl(&["stop", "svc"]).0, 0);
    assert_eq!(z.ctl(&["start", "svc"]).0, 0);
    assert_eq!(z.ctl(&["restart", "svc"]).0, 0);
    assert_eq!(z.ctl(&["reload"]).0, 0);
    z.wait_log("control: reload");
    for what in ["stop svc", "start svc", "restart svc", "reload"] {
        assert_eq!(
            count(&format!("control: {what} (requested by pid")),
            1,
            "{what}:\n{}",
            z.log_text()
        );
    }
}

#[test]
fn a_second_agent_in_another_pid_namespace_names_the_first_as_recorded() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("secondns", |d| zone(d, "web", "sleep 1000", ""));
    let mut child = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--kill-child"])
        .arg(common::ZONIT)
        .args(["run", "--config"])
        .arg(&z.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // The first agent is PID 1 of its own namespace, invisible from here.
    assert!(
        text.contains("another agent (pid 1 in its own PID namespace"),
        "{text}"
    );
    // The first agent carries on.
    z.wait_state("web", "running");
}

/// The events of `unit` among JSON event objects, as `name` or
/// `name:detail` strings in order.
fn unit_events(events: &[serde_json::Value], unit: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["unit"] == unit)
        .map(|e| match (&e["end"], &e["delay_ms"]) {
            (serde_json::Value::String(end), _) => format!("exited:{end}"),
            (_, serde_json::Value::Number(_)) => "restarting:delay".to_string(),
            _ => e["event"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// True when `seq` holds `want` as consecutive entries.
fn holds_run(seq: &[String], want: &[&str]) -> bool {
    seq.windows(want.len()).any(|w| w == want)
}

#[test]
fn events_stream_a_restarts_whole_sequence_in_order_live_and_from_history() {
    if !require_root() {
        return;
    }
    use std::io::Write;
    let mut z = Zonit::start("events", |d| {
        zone(
            d,
            "crashy",
            "sleep 0.3; exit 3",
            "restart = \"always\"\nbackoff = { initial = \"200ms\", max = \"200ms\" }",
        )
    });
    let mut stream = std::os::unix::net::UnixStream::connect(&z.socket).unwrap();
    stream.write_all(b"{\"v\":1,\"cmd\":\"events\"}\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut next = || {
        use std::io::BufRead;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    let ack = next();
    assert!(ack.contains(r#""subscribed":true"#), "{ack}");
    let live: Vec<serde_json::Value> = (0..12)
        .map(|_| {
            let v: serde_json::Value = serde_json::from_str(&next()).unwrap();
            v["event"].clone()
        })
        .collect();
    let seq = unit_events(&live, "crashy");
    let restart = [
        "running",
        "exited:exit 3",
        "restarting:delay",
        "starting",
        "running",
    ];
    assert!(holds_run(&seq, &restart), "live: {seq:?}");
    let delays: Vec<u64> = live.iter().filter_map(|e| e["delay_ms"].as_u64()).collect();
    assert!(delays.iter().all(|d| *d <= 200), "{delays:?}");
    assert!(
        live.windows(2)
            .all(|w| w[0]["ts_ms"].as_u64() <= w[1]["ts_ms"].as_u64())
    );

    // The CLI with --since replays the kept history from the first start.
    let (_, out, _) = z.ctl(&["--timeout", "1s", "events", "--json", "--since", "1h"]);
    let kept: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seq = unit_events(&kept, "crashy");
    assert_eq!(seq[..2], ["starting", "running"], "{seq:?}");
    assert!(holds_run(&seq, &restart), "history: {seq:?}");
    // Text form: one line per event, unit and event named.
    let (_, text, _) = z.ctl(&["--timeout", "1s", "events", "--since", "1h"]);
    assert!(
        text.lines().any(|l| l.ends_with("crashy exited (exit 3)")),
        "{text}"
    );
    z.terminate();
    let mut rest = Vec::new();
    loop {
        let line = next();
        if line.is_empty() {
            break;
        }
        rest.push(line);
    }
    assert!(
        rest.iter()
            .any(|l| l.contains(r#""event":"shutdown""#) && l.contains("exit(0)")),
        "the stream ends with the shutdown: {rest:?}"
    );
}

#[test]
fn an_events_client_that_never_reads_does_not_slow_status() {
    if !require_root() {
        return;
    }
    use std::io::Write;
    let z = Zonit::start("events-stuck", |d| {
        zone(
            d,
            "flappy",
            "exit 1",
            "restart = \"always\"\nbackoff = { initial = \"10ms\", max = \"10ms\" }",
        ) + &zone(d, "svc", "sleep 1000", "")
    });
    z.wait_state("svc", "running");
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut s = std::os::unix::net::UnixStream::connect(&z.socket).unwrap();
        s.write_all(b"{\"v\":1,\"cmd\":\"events\",\"since_ms\":3600000}\n")
            .unwrap();
        stuck.push(s);
    }
    let begin = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    while begin.elapsed() < Duration::from_secs(4) {
        let t = std::time::Instant::now();
        let (code, out, err) = z.ctl(&["status"]);
        assert_eq!(code, 0, "{out}{err}");
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest status: {slowest:?}"
    );
    assert!(
        z.unit("flappy")["restarts"].as_u64().unwrap() > 20,
        "it flapped"
    );
    drop(stuck);
}

/// Scrapes `GET /metrics` from `addr` (a unix socket's path, or
/// `HOST:PORT` over TCP) and parses the body with Prometheus's own text
/// parser (the `prometheus_client` Python package); returns the status
/// line and `NAME{LABELS} VALUE` lines as the parser understood them.
fn scrape_and_parse(addr: &Path) -> (String, String) {
    let script = r#"
import socket, sys
from prometheus_client.parser import text_string_to_metric_families
addr = sys.argv[1]
if addr.startswith("/"):
    s = socket.socket(socket.AF_UNIX)
    s.connect(addr)
else:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: zonit\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, body = data.split(b"\r\n\r\n", 1)
print(head.split(b"\r\n")[0].decode())
for fam in text_string_to_metric_families(body.decode()):
    for smp in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
        print(f"{smp.name}{{{labels}}} {smp.value}")
"#;
    // The Debian package is for the system interpreter.
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scrape failed (python3-prometheus-client is needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, samples) = text.split_once('\n').unwrap();
    (status.to_string(), samples.to_string())
}

#[test]
fn metrics_parse_with_prometheus_and_restart_counters_match_status() {
    if !require_root() {
        return;
    }
    let mut sock = PathBuf::new();
    let z = Zonit::start("metrics", |d| {
        sock = d.join("metrics.sock");
        format!("metrics = \"unix:{}\"\n", sock.display())
            + &zone(
                d,
                "crashy",
                "exit 3",
                "restart = \"always\"\nbackoff = { initial = \"50ms\", max = \"50ms\" }\n\
                 start_limit = { burst = 4, interval = \"60s\" }",
            )
            + &zone(d, "svc", "sleep 1000", "")
    });
    z.wait_state("crashy", "failed");
    z.wait_state("svc", "running");
    let (status, samples) = scrape_and_parse(&sock);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value = |line: &str| -> f64 {
        let l = samples
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} in:\n{samples}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    for unit in ["crashy", "svc"] {
        let restarts = z.unit(unit)["restarts"].as_u64().unwrap() as f64;
        let name = format!("zonit_unit_restarts_total{{kind=zone,unit={unit}}}");
        assert_eq!(value(&name), restarts, "{unit}");
    }
    assert_eq!(
        value("zonit_unit_restarts_total{kind=zone,unit=crashy}"),
        3.0
    );
    assert_eq!(
        value("zonit_unit_ends_total{end=exit,kind=zone,unit=crashy}"),
        4.0
    );
    assert_eq!(
        value("zonit_unit_state{kind=zone,state=failed,unit=crashy}"),
        1.0
    );
    // Every zone has its OOM kill count (the other cgroup figures only
    // where the controller is enabled).
    assert_eq!(value("zonit_zone_oom_kills_total{unit=svc}"), 0.0);
    assert!(value("zonit_agent_loop_turns_total{}") > 0.0);
    assert!(value("zonit_agent_open_fds{}") > 0.0);
    assert!(value("zonit_agent_rss_bytes{}") > 0.0);
}

/// `[host] metrics` on a loopback TCP address, in a network namespace of
/// the test's own: the scrape parses, and an end for failed health probes
/// is counted as `unhealthy`, as `status` reports it.
#[test]
fn metrics_over_tcp_on_loopback_parse_and_count_unhealthy_ends() {
    if !common::in_private_netns("metrics_over_tcp_on_loopback_parse_and_count_unhealthy_ends") {
        return;
    }
    assert!(common::run_cmd(&["ip", "link", "set", "lo", "up"]).0);
    let z = Zonit::start_with_host("metrics-tcp", "metrics = \"127.0.0.1:9321\"", |d| {
        zone(
            d,
            "web",
            "touch /tmp/ok; exec sleep 1000",
            "health = { exec = [\"/bin/test\", \"-e\", \"/tmp/ok\"], interval = \"100ms\", retries = 1 }\n\
             restart = \"on-failure\"\nbackoff = { initial = \"50ms\" }",
        )
    });
    z.wait_for("web healthy", Duration::from_secs(10), || {
        z.unit("web")["health"] == "healthy"
    });
    assert_eq!(z.ctl(&["exec", "web", "--", "rm", "/tmp/ok"]).0, 0);
    z.wait_for(
        "web healthy after a restart",
        Duration::from_secs(10),
        || {
            let u = z.unit("web");
            u["restarts"] == 1 && u["health"] == "healthy"
        },
    );
    let (status, samples) = scrape_and_parse(Path::new("127.0.0.1:9321"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value = |line: &str| -> f64 {
        let l = samples
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} in:\n{samples}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(z.unit("web")["last_exit"], "unhealthy");
    assert_eq!(
        value("zonit_unit_ends_total{end=unhealthy,kind=zone,unit=web}"),
        1.0
    );
    assert_eq!(value("zonit_unit_restarts_total{kind=zone,unit=web}"), 1.0);
    assert_eq!(
        value("zonit_unit_state{kind=zone,state=running,unit=web}"),
        1.0
    );
    assert!(value("zonit_unit_uptime_seconds{kind=zone,unit=web}") > 0.0);
    assert!(
        z.log_text().contains("metrics: serving GET /metrics on"),
        "{}",
        z.log_text()
    );
}
