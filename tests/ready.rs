//! Tier 2: readiness and health checks with real zones under `zonit run`.
//! Needs root (fails under CI=true without it), busybox-static and gcc
//! (the sd_notify client, tests/probe/notify.c).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Zonit, pids_with_cmdline, require_root, template, zone};

/// Builds tests/probe/notify.c into the template as `/bin/notify`, once.
fn install_notify() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/notify.c");
        let status = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(template().join("bin/notify"))
            .arg(&src)
            .status()
            .expect("gcc is needed: apt-get install gcc libc6-dev");
        assert!(status.success(), "building {} failed", src.display());
    });
}

/// When the first log line containing `needle` arrived.
fn logged_at(z: &Zonit, needle: &str) -> Instant {
    z.log_lines()
        .into_iter()
        .find(|(_, l)| l.contains(needle))
        .map(|(t, _)| t)
        .unwrap_or_else(|| panic!("no log line `{needle}`:\n{}", z.log_text()))
}

#[test]
fn notify_fd_gates_running_and_the_dependent_starts_after_ready() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("notifyfd", |d| {
        zone(
            d,
            "db",
            "sleep 1; echo db-ready; echo >&3; exec sleep 1000",
            "ready = { notify = \"fd\", timeout = \"10s\" }",
        ) + &zone(d, "web", "echo web-up; exec sleep 1000", "after = [\"db\"]")
    });
    z.wait_log("db: started");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(z.state("db"), "starting", "{}", z.log_text());
    assert_eq!(z.state("web"), "starting", "web waits for db to be ready");
    z.wait_state("web", "running");
    assert_eq!(z.state("db"), "running");
    let ready = logged_at(&z, "db: ready");
    assert!(ready >= logged_at(&z, "zonit[db]: db-ready"));
    assert!(
        logged_at(&z, "web: started") >= ready,
        "web started before db was ready:\n{}",
        z.log_text()
    );
}

#[test]
fn notify_fd_can_be_another_number() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("notifyfd5", |d| {
        zone(
            d,
            "db",
            "ls /proc/self/fd | tr '\\n' ' '; echo; echo >&5; exec sleep 1000",
            "ready = { notify = \"fd\", notify_fd = 5 }",
        )
    });
    z.wait_state("db", "running");
    // stdio, the notify fd, and ls's own directory fd: nothing else leaks.
    let line = z
        .log_lines()
        .into_iter()
        .map(|(_, l)| l)
        .find(|l| l.contains("zonit[db]: 0 "))
        .unwrap();
    assert!(line.trim_end().ends_with("0 1 2 3 5"), "{line}");
}

#[test]
fn ctl_start_returns_once_the_unit_is_ready() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("startwait", |d| {
        zone(
            d,
            "db",
            "sleep 1; echo >&3; exec sleep 1000",
            "ready = { notify = \"fd\" }\nautostart = false",
        )
    });
    let t = Instant::now();
    let (code, out, err) = z.ctl(&["start", "db"]);
    let took = t.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        took >= Duration::from_millis(900),
        "returned after {took:?}"
    );
    assert_eq!(z.state("db"), "running");
}

#[test]
fn not_ready_within_the_timeout_fails_the_start() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("readytimeout", |d| {
        zone(
            d,
            "db",
            "exec sleep 1000",
            "ready = { notify = \"fd\", timeout = \"1s\" }\nrestart = \"never\"\nautostart = false",
        )
    });
    let (code, _, err) = z.ctl(&["start", "db"]);
    assert_eq!(code, 1);
    assert!(err.contains("not ready within 1s"), "{err}");
    let u = z.unit("db");
    assert_eq!(u["state"], "failed", "{u}");
    assert_eq!(u["last_exit"], "start failed");
}

#[test]
fn sd_notify_from_a_real_client_makes_the_zone_ready() {
    if !require_root() {
        return;
    }
    install_notify();
    let z = Zonit::start("sdnotify", |d| {
        zone(
            d,
            "db",
            "sleep 0.5; /bin/notify READY=1 STATUS=serving && echo sent; exec sleep 1000",
            "ready = { notify = \"systemd\", timeout = \"10s\" }",
        )
    });
    z.wait_state("db", "running");
    z.wait_log("db: status: serving");
    assert!(z.log_text().contains("zonit[db]: sent"));
}

#[test]
fn an_exec_probe_makes_the_zone_ready_once_it_succeeds() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("execready", |d| {
        zone(
            d,
            "db",
            "sleep 1; touch /tmp/up; exec sleep 1000",
            "ready = { exec = [\"/bin/test\", \"-e\", \"/tmp/up\"], interval = \"100ms\" }",
        )
    });
    z.wait_log("db: started");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(z.state("db"), "starting");
    z.wait_state("db", "running");
}

/// A readiness try that hangs (a check stuck on a lock, a connect to an
/// address that drops it) is killed at its own deadline, and the next try
/// makes the unit ready long before the whole ready timeout.
#[test]
fn a_hung_ready_probe_is_killed_at_its_deadline_and_the_next_try_makes_the_zone_ready() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("readyhang", |d| {
        zone(
            d,
            "db",
            "exec sleep 1000",
            "ready = { exec = [\"/bin/sh\", \"-c\", \"[ -e /tmp/tried ] && exit 0; touch /tmp/tried; exec sleep 773\"], interval = \"100ms\", probe_timeout = \"1s\", timeout = \"30s\" }\nrestart = \"never\"",
        )
    });
    z.wait_log("db: started");
    let started = logged_at(&z, "db: started");
    z.wait_for("db ready", Duration::from_secs(8), || {
        z.state("db") == "running"
    });
    let took = logged_at(&z, "db: ready") - started;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "ready {took:?} after the start (one 1 s try hung):\n{}",
        z.log_text()
    );
    assert!(z.log_text().contains("ran past its deadline, killing it"));
    assert!(
        pids_with_cmdline("sleep\u{0}773").is_empty(),
        "the hung try was left running"
    );
}

#[test]
fn a_tcp_probe_makes_the_zone_ready_once_the_port_listens() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("tcpready", |d| {
        zone(
            d,
            "web",
            "sleep 1; exec httpd -f -p 8080",
            "ready = { tcp = 8080, interval = \"100ms\" }",
        )
    });
    z.wait_log("web: started");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(z.state("web"), "starting");
    z.wait_state("web", "running");
}

#[test]
fn a_log_line_makes_the_zone_ready() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("logready", |d| {
        zone(
            d,
            "db",
            "echo booting; sleep 1; echo 'database system is ready'; exec sleep 1000",
            "ready = { log = \"system is ready\" }",
        )
    });
    z.wait_log("zonit[db]: booting");
    assert_eq!(z.state("db"), "starting");
    z.wait_state("db", "running");
}

#[test]
fn failed_exec_health_probes_restart_the_zone_as_unhealthy() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("healthexec", |d| {
        zone(
            d,
            "web",
            "touch /tmp/ok; echo up; exec sleep 1000",
            "health = { exec = [\"/bin/test\", \"-e\", \"/tmp/ok\"], interval = \"200ms\", timeout = \"2s\", retries = 2 }\nrestart = \"on-failure\"",
        )
    });
    z.wait_for("web healthy", Duration::from_secs(10), || {
        z.unit("web")["health"] == "healthy"
    });
    assert_eq!(z.ctl(&["exec", "web", "--", "rm", "/tmp/ok"]).0, 0);
    z.wait_for("a restart", Duration::from_secs(10), || {
        z.unit("web")["restarts"] == 1
    });
    assert_eq!(z.unit("web")["last_exit"], "unhealthy");
    z.wait_for("web healthy again", Duration::from_secs(10), || {
        z.unit("web")["health"] == "healthy"
    });
}

/// `ctl events` shows each health change of a zone whose probe flips, in
/// order with its state changes, and agrees with `status`.
#[test]
fn health_changes_stream_as_events_that_agree_with_status() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("healthevents", |d| {
        zone(
            d,
            "web",
            "touch /tmp/ok; exec sleep 1000",
            "health = { exec = [\"/bin/test\", \"-e\", \"/tmp/ok\"], interval = \"200ms\", timeout = \"2s\", retries = 2 }\nrestart = \"on-failure\"\nbackoff = { initial = \"100ms\" }",
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
    let (_, out, err) = z.ctl(&["--timeout", "1s", "events", "--json", "--since", "1h"]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["unit"] == "web")
        .collect();
    let seq: Vec<String> = events
        .iter()
        .map(|e| match (&e["health"], &e["end"]) {
            (serde_json::Value::String(h), _) => format!("health:{h}"),
            (_, serde_json::Value::String(end)) => format!("exited:{end}"),
            _ => e["event"].as_str().unwrap().to_string(),
        })
        .collect();
    let want = [
        "starting",
        "running",
        "health:starting",
        "health:healthy",
        "health:unhealthy",
        "stopping",
        "exited:unhealthy",
        "restarting",
        "starting",
        "running",
        "health:starting",
        "health:healthy",
    ];
    assert_eq!(seq, want, "{err}");
    let unhealthy = &events[4];
    assert!(unhealthy["ts"].as_str().unwrap().ends_with('Z'));
    assert!(
        unhealthy["message"]
            .as_str()
            .unwrap()
            .contains("failed 2 times in a row"),
        "{unhealthy}"
    );
    assert_eq!(z.unit("web")["last_exit"], "unhealthy");
    let (_, text, _) = z.ctl(&["--timeout", "1s", "events", "--since", "1h"]);
    assert!(
        text.lines().any(|l| l.contains(" web health unhealthy: ")),
        "{text}"
    );
}

#[test]
fn tcp_health_probes_pass_while_the_port_listens_and_fail_when_it_does_not_and_the_log_says_why() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("healthtcp", |d| {
        zone(
            d,
            "web",
            "exec httpd -f -p 8080",
            "health = { tcp = 8080, interval = \"200ms\", retries = 2 }",
        ) + &zone(
            d,
            "deaf",
            "exec sleep 1000",
            "health = { tcp = 8080, interval = \"200ms\", retries = 2 }\nrestart = \"never\"",
        )
    });
    z.wait_for("web healthy", Duration::from_secs(10), || {
        z.unit("web")["health"] == "healthy"
    });
    z.wait_state("deaf", "exited");
    let u = z.unit("deaf");
    assert_eq!(u["last_exit"], "unhealthy", "{u}");
    assert_eq!(u["reason"], "health probe failed 2 times in a row", "{u}");
    assert!(u.get("health").is_none());
    // The log says why the engine stopped it, once, before how it ended.
    let line = "deaf: unhealthy: health probe failed 2 times in a row; stopping it";
    let text = z.log_text();
    assert_eq!(text.matches(line).count(), 1, "{text}");
    assert!(
        logged_at(&z, line) <= logged_at(&z, "deaf: ended"),
        "{text}"
    );
    assert_eq!(z.unit("web")["health"], "healthy");
}

#[test]
fn a_health_probe_past_its_timeout_is_killed() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("probekill", |d| {
        zone(
            d,
            "web",
            "exec sleep 1000",
            "health = { exec = [\"/bin/sleep\", \"777\"], interval = \"200ms\", timeout = \"500ms\", retries = 100 }",
        )
    });
    z.wait_log("ran past its deadline, killing it");
    // Killed with its helper, and no pile-up: at most the one running now.
    std::thread::sleep(Duration::from_millis(300));
    let live = pids_with_cmdline("sleep\u{0}777").len();
    assert!(live <= 1, "{live} probes alive");
    std::thread::sleep(Duration::from_secs(2));
    assert!(pids_with_cmdline("sleep\u{0}777").len() <= 1);
    assert_eq!(z.unit("web")["health"], "starting", "no probe has passed");
    assert_eq!(z.state("web"), "running");
}

/// Bytes a fake device received, with their arrival times.
type Bytes = std::sync::Arc<std::sync::Mutex<Vec<(Instant, u8)>>>;

/// A pty standing in for a watchdog device: (slave path, bytes written to
/// it with their arrival times). The device ioctls fail on a tty, which
/// zonit logs and carries on from, so the pets can be watched without
/// arming any real watchdog.
fn fake_watchdog() -> (String, Bytes, std::os::fd::OwnedFd) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let path = nix::unistd::ttyname(&pty.slave).unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let mut master = std::fs::File::from(pty.master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        // Ends with EIO once every slave fd is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            let now = Instant::now();
            sink.lock()
                .unwrap()
                .extend(buf[..n].iter().map(|b| (now, *b)));
        }
    });
    (path.display().to_string(), got, pty.slave)
}

fn pets(got: &std::sync::Mutex<Vec<(Instant, u8)>>) -> Vec<Instant> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(_, b)| *b == b'p')
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn the_watchdog_is_petted_while_required_units_run_and_disarmed_when_zonit_run_exits() {
    if !require_root() {
        return;
    }
    let (path, got, slave) = fake_watchdog();
    let host = format!(
        "watchdog = {{ device = \"{path}\", timeout = \"2s\", require = [\"db\"], grace = \"1s\" }}"
    );
    let mut z = Zonit::start_with_host("wdok", &host, |d| zone(d, "db", "exec sleep 1000", ""));
    drop(slave);
    z.wait_log("watchdog: ");
    std::thread::sleep(Duration::from_secs(4));
    let p = pets(&got);
    assert!(p.len() >= 6, "{} pets in 4 s:\n{}", p.len(), z.log_text());
    let gaps: Vec<u128> = p.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert!(
        gaps.iter().all(|g| *g < 1000),
        "a 2 s watchdog went unpetted too long: {gaps:?}"
    );
    assert_eq!(z.terminate(), 0);
    let last = got.lock().unwrap().last().map(|(_, b)| *b);
    assert_eq!(
        last,
        Some(b'V'),
        "zonit run disarms the watchdog as it exits"
    );
}

#[test]
fn the_watchdog_is_starved_once_a_required_unit_has_failed_for_longer_than_grace() {
    if !require_root() {
        return;
    }
    let (path, got, slave) = fake_watchdog();
    let host = format!(
        "watchdog = {{ device = \"{path}\", timeout = \"2s\", require = [\"db\"], grace = \"1s\" }}"
    );
    let z = Zonit::start_with_host("wdstarve", &host, |d| {
        zone(d, "db", "sleep 1; exit 1", "restart = \"never\"")
    });
    drop(slave);
    z.wait_log("db: ended");
    let ended = logged_at(&z, "db: ended");
    z.wait_log("no longer petting");
    let starved = logged_at(&z, "no longer petting");
    let waited = starved - ended;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2000),
        "starved {waited:?} after db ended (grace 1 s)"
    );
    let line = z
        .log_text()
        .lines()
        .find(|l| l.contains("no longer petting"))
        .unwrap()
        .to_string();
    assert!(line.contains("required unit db"), "{line}");
    assert!(line.contains("exited"), "{line}");
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<Instant> = pets(&got).into_iter().filter(|t| *t > starved).collect();
    assert!(after.is_empty(), "{} pets after the decision", after.len());
    assert_eq!(
        z.log_text().matches("no longer petting").count(),
        1,
        "logged once"
    );
}

#[test]
fn sd_notify_status_lines_are_logged_at_most_once_a_second() {
    if !require_root() {
        return;
    }
    install_notify();
    let z = Zonit::start("sdflood", |d| {
        zone(
            d,
            "chatty",
            "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/notify STATUS=step$i; done; /bin/notify READY=1; exec sleep 1000",
            "ready = { notify = \"systemd\" }",
        )
    });
    z.wait_state("chatty", "running");
    let logged = z.log_text().matches("chatty: status: step").count();
    assert_eq!(logged, 1, "{}", z.log_text());
}
