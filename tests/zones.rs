//! Tier 2: real zones under `zonit run` as PID 1 of a PID namespace.
//! Needs root (fails under CI=true without it) and busybox-static.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Zonit, pids_with_cmdline, require_root, zone};

#[test]
fn zone_sees_only_its_own_processes() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("procs", |d| {
        zone(
            d,
            "web",
            "echo procs=$(ls -d /proc/[0-9]* | wc -l) pid1=$(cat /proc/1/comm); sleep 1000",
            "",
        )
    });
    z.wait_log("zonit[web]: procs=");
    let log = z.log_text();
    // The zone's init (PID 1), sh, and the short-lived ls/wc/cat.
    let line = log.lines().find(|l| l.contains("procs=")).unwrap();
    let n: usize = line
        .split("procs=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(n <= 5, "zone sees {n} processes: {line}");
    assert!(
        line.contains("pid1=zonit"),
        "PID 1 in the zone is zonit's init: {line}"
    );
}

#[test]
fn zone_has_its_own_hostname_and_only_loopback() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("host", |d| {
        zone(
            d,
            "web",
            "echo host=$(hostname) ifs=$(ls /sys/class/net | tr '\\n' ,); sleep 1000",
            "hostname = \"webhost\"",
        )
    });
    z.wait_log("zonit[web]: host=");
    assert!(
        z.log_text().contains("host=webhost ifs=lo,"),
        "{}",
        z.log_text()
    );
    let own = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(own.trim(), "webhost", "the host's name must not change");
}

#[test]
fn crashing_zone_is_restarted_on_the_backoff_schedule() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("backoff", |d| {
        zone(
            d,
            "crashy",
            "echo crash; exit 3",
            "restart = \"on-failure\"\nbackoff = { initial = \"200ms\", max = \"800ms\" }",
        )
    });
    z.wait_for("5 restarts", Duration::from_secs(10), || {
        z.unit("crashy")["restarts"].as_u64().unwrap_or(0) >= 5
    });
    let starts: Vec<Instant> = z
        .log_lines()
        .into_iter()
        .filter(|(_, l)| l.contains("crashy: started"))
        .map(|(t, _)| t)
        .collect();
    assert!(starts.len() >= 5, "{}", z.log_text());
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // Expected waits 200, 400, 800, 800 ms plus the zone's own run time
    // (a few ms; the slack covers a loaded 2-core CI machine).
    let expected = [200u128, 400, 800, 800];
    for (gap, want) in gaps.iter().zip(expected) {
        assert!(
            *gap >= want && *gap < want + 500,
            "restart gaps {gaps:?} do not follow {expected:?}"
        );
    }
    assert_eq!(z.unit("crashy")["last_exit"], "exit 3");
}

#[test]
fn clean_exit_of_on_failure_zone_is_not_restarted() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("clean", |d| {
        zone(d, "once", "echo done; exit 0", "restart = \"on-failure\"")
    });
    z.wait_state("once", "exited");
    std::thread::sleep(Duration::from_millis(500));
    let u = z.unit("once");
    assert_eq!(u["state"], "exited");
    assert_eq!(u["restarts"], 0);
    assert_eq!(u["last_exit"], "exit 0");
}

#[test]
fn stop_is_not_followed_by_a_restart() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("stop", |d| {
        zone(
            d,
            "svc",
            "sleep 1000",
            "restart = \"always\"\nstop_timeout = \"2s\"",
        )
    });
    z.wait_state("svc", "running");
    let (code, out, err) = z.ctl(&["stop", "svc"]);
    assert_eq!(code, 0, "{out}{err}");
    // `stop` returns once the unit is stopped.
    assert_eq!(z.state("svc"), "stopped");
    std::thread::sleep(Duration::from_millis(800));
    let u = z.unit("svc");
    assert_eq!(u["state"], "stopped");
    assert!(u["pid"].is_null());
    assert_eq!(u["restarts"], 0);
    // And start brings it back.
    assert_eq!(z.ctl(&["start", "svc"]).0, 0);
    z.wait_state("svc", "running");
}

#[test]
fn stop_of_a_zone_ignoring_sigterm_kills_it_after_stop_timeout_and_it_starts_again() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("stopkill", |d| {
        zone(
            d,
            "stubborn",
            "trap '' TERM; echo up; while true; do sleep 0.1; done",
            "stop_timeout = \"500ms\"\nrestart = \"never\"",
        )
    });
    // Running is not enough: the shell must have set its trap.
    z.wait_log("zonit[stubborn]: up");
    let t = Instant::now();
    assert_eq!(z.ctl(&["stop", "stubborn"]).0, 0);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "killed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "kill took {took:?}");
    assert_eq!(z.unit("stubborn")["last_exit"], "signal SIGKILL");
    // The kill does not follow the next run into its cgroup.
    assert_eq!(z.ctl(&["start", "stubborn"]).0, 0);
    z.wait_state("stubborn", "running");
    std::thread::sleep(Duration::from_millis(700));
    let u = z.unit("stubborn");
    assert_eq!(u["state"], "running", "{u}\n{}", z.log_text());
    assert_eq!(z.log_text().matches("zonit[stubborn]: up").count(), 2);
}

#[test]
fn orphans_and_zombies_inside_a_zone_are_reaped() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("reap", |d| {
        zone(
            d,
            "parent",
            "for i in 1 2 3 4 5; do sh -c 'sleep 0.2 & exit 0'; done; sleep 1; \
             echo zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l) \
             ppid=$(for p in /proc/[0-9]*; do cat $p/stat; done | grep -c 'sleep'); sleep 1000",
            "",
        )
    });
    z.wait_log("zonit[parent]: zombies=");
    assert!(
        z.log_text().contains("zombies=0 ppid=0"),
        "orphans were not reaped:\n{}",
        z.log_text()
    );
}

#[test]
fn sigterm_stops_zones_in_reverse_after_order_and_exits_0() {
    if !require_root() {
        return;
    }
    let marker = format!("zonit-order-marker-{}", std::process::id());
    let cmd = |name: &str| {
        format!(
            "trap 'echo {name}-stopping; exit 0' TERM; echo {name}-trapped; while true; do sleep 0.05; done # {marker}"
        )
    };
    let mut z = Zonit::start("order", |d| {
        [
            zone(d, "db", &cmd("db"), ""),
            zone(d, "app", &cmd("app"), "after = [\"db\"]"),
            zone(d, "web", &cmd("web"), "after = [\"app\"]"),
        ]
        .concat()
    });
    for u in ["db", "app", "web"] {
        z.wait_log(&format!("zonit[{u}]: {u}-trapped"));
    }
    // Started in after order.
    let log = z.log_text();
    let pos = |s: &str| log.find(s).unwrap_or_else(|| panic!("no `{s}` in\n{log}"));
    assert!(pos("db: started") < pos("app: started"));
    assert!(pos("app: started") < pos("web: started"));
    assert!(!pids_with_cmdline(&marker).is_empty());

    assert_eq!(z.terminate(), 0, "{}", z.log_text());
    let log = z.log_text();
    let pos = |s: &str| log.find(s).unwrap_or_else(|| panic!("no `{s}` in\n{log}"));
    assert!(pos("web-stopping") < pos("app-stopping"), "{log}");
    assert!(pos("app-stopping") < pos("db-stopping"), "{log}");
    assert!(
        pos("web: ended (exit 0)") < pos("db: ended (exit 0)"),
        "{log}"
    );
    assert!(
        pids_with_cmdline(&marker).is_empty(),
        "processes left behind after exit"
    );
}

#[test]
fn malformed_control_requests_get_errors_and_the_agent_carries_on() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("badreq", |d| zone(d, "web", "sleep 1000", ""));
    z.wait_state("web", "running");
    let mut s = UnixStream::connect(&z.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"this is not json\n{\"v\":1,\"cmd\":\"explode\"}\n{\"v\":9,\"cmd\":\"status\"}\n{\"v\":1,\"cmd\":\"stop\",\"name\":\"nosuch\"}\n\xff\xfe\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..5 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false, "{line}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // A request over the size limit closes that client only.
    let mut big = UnixStream::connect(&z.socket).unwrap();
    let _ = big.write_all(&vec![b'x'; 100 * 1024]);
    drop(big);
    // Same connection still answers good requests; so do new ones.
    s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    assert_eq!(z.state("web"), "running");
}

#[test]
fn missing_root_makes_the_unit_failed_with_the_reason() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("noroot", |d| {
        format!(
            "[zone.ghost]\nroot = \"{}\"\ncommand = [\"/bin/true\"]\nrestart = \"always\"\n{}",
            d.join("does-not-exist").display(),
            zone(d, "web", "sleep 1000", "")
        )
    });
    z.wait_state("ghost", "failed");
    let u = z.unit("ghost");
    assert!(
        u["reason"].as_str().unwrap().contains("does-not-exist"),
        "{u}"
    );
    // The other unit is unaffected.
    z.wait_state("web", "running");
    let (_, table, _) = z.ctl(&["status"]);
    assert!(
        table.contains("ghost") && table.contains("failed"),
        "{table}"
    );
}

#[test]
fn a_command_that_cannot_be_executed_fails_the_start_with_the_shells_status() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("nocmd", |d| {
        let cmd = |name: &str, path: &str| {
            zone(d, name, "true", "restart = \"never\"").replace(
                "command = [\"/bin/sh\", \"-c\", \"true\"]",
                &format!("command = [\"{path}\"]"),
            )
        };
        [cmd("x", "/no/such/binary"), cmd("dir", "/etc")].concat()
    });
    z.wait_state("x", "failed");
    let reason = z.unit("x")["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("/no/such/binary"), "{reason}");
    assert!(reason.contains("(status 127)"), "{reason}");
    z.wait_state("dir", "failed");
    let reason = z.unit("dir")["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("(status 126)"), "{reason}");
}

#[test]
fn logs_returns_the_last_lines_and_follow_streams_new_ones() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("logs", |d| {
        zone(
            d,
            "talk",
            "for i in 1 2 3 4 5; do echo line$i; done; sleep 1; echo late; sleep 1000",
            "",
        )
    });
    z.wait_log("zonit[talk]: line5");
    let (code, out, _) = z.ctl(&["logs", "talk", "-n", "2"]);
    assert_eq!(code, 0);
    assert_eq!(out, "line4\nline5\n");
    // Follow: the late line arrives on the open stream.
    let mut child = std::process::Command::new(common::ZONIT)
        .args(["ctl", "--socket"])
        .arg(&z.socket)
        .args(["logs", "talk", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("late") && Instant::now() < deadline {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            break;
        }
        seen.push_str(&l);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("line1") && seen.contains("late"), "{seen}");
}

#[test]
fn unknown_unit_commands_fail_cleanly() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("unknown", |d| zone(d, "web", "sleep 1000", ""));
    let (code, _, err) = z.ctl(&["start", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no unit named `nosuch`"), "{err}");
    let (code, _, err) = z.ctl(&["poweroff"]);
    assert_eq!(code, 1);
    assert!(err.contains("PID 1"), "{err}");
}

#[test]
fn reload_applies_a_good_config_and_refuses_a_bad_one() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("reload", |d| {
        [
            zone(d, "keep", "echo keep-v1; sleep 1000", ""),
            zone(d, "change", "echo change-v1; sleep 1000", ""),
            zone(d, "gone", "sleep 1000", ""),
        ]
        .concat()
    });
    for u in ["keep", "change", "gone"] {
        z.wait_state(u, "running");
    }
    let keep_pid = z.unit("keep")["pid"].clone();
    let change_pid = z.unit("change")["pid"].clone();
    let original = std::fs::read_to_string(&z.config).unwrap();

    // A bad config: every error reported, nothing changes.
    std::fs::write(
        &z.config,
        format!("{original}\n[zone.bad]\nroot = 1\nbogus = 2\n"),
    )
    .unwrap();
    let (code, _, err) = z.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("zonit.toml:") && err.contains("bogus"),
        "{err}"
    );
    assert!(
        err.matches("zonit.toml:").count() >= 2,
        "every error: {err}"
    );
    assert_eq!(z.status().len(), 3);
    assert_eq!(z.unit("keep")["pid"], keep_pid);

    // A good one: gone removed, change restarted, added started.
    let d = z.dir.clone();
    let host = original.split("[zone.").next().unwrap().to_string();
    std::fs::write(
        &z.config,
        [
            host,
            zone(&d, "keep", "echo keep-v1; sleep 1000", ""),
            zone(&d, "change", "echo change-v2; sleep 1000", ""),
            zone(&d, "added", "echo added; sleep 1000", ""),
        ]
        .concat(),
    )
    .unwrap();
    let (code, out, err) = z.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 added, 1 changed, 1 removed"), "{out}");
    z.wait_state("added", "running");
    z.wait_log("zonit[change]: change-v2");
    z.wait_state("change", "running");
    let names: Vec<String> = z
        .status()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["keep", "change", "added"]);
    assert_eq!(z.unit("keep")["pid"], keep_pid, "unchanged unit untouched");
    assert_ne!(z.unit("change")["pid"], change_pid);
    assert_eq!(z.unit("change")["restarts"], 0, "a reload is not a failure");
}

/// Runs `zonit ctl exec` with `stdin` piped in; returns (status, stdout, stderr).
fn exec(z: &Zonit, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = std::process::Command::new(common::ZONIT)
        .args(["ctl", "--socket"])
        .arg(&z.socket)
        .arg("exec")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exec_runs_inside_the_zone_with_the_callers_stdio_and_returns_its_status() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("exec", |d| {
        zone(
            d,
            "web",
            "echo zone-caps $(grep CapBnd /proc/self/status); sleep 1000",
            "hostname = \"webhost\"\ncapabilities = [\"CAP_KILL\"]\nuser = \"1000:1000\"",
        )
    });
    z.wait_state("web", "running");
    z.wait_log("zone-caps");
    let (code, out, err) = exec(
        &z,
        &[
            "web",
            "--",
            "sh",
            "-c",
            "read line; echo got=$line host=$(hostname) uid=$(id -u) procs=$(ls -d /proc/[0-9]* | wc -l); \
             grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status; echo oops >&2; exit 7",
        ],
        b"hello\n",
    );
    assert_eq!(code, 7, "{out}{err}");
    assert!(out.contains("got=hello host=webhost uid=1000"), "{out}");
    assert!(err.contains("oops"), "stderr is the caller's: {err}");
    let procs: usize = out
        .split("procs=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(procs <= 6, "exec sees the zone's processes only: {out}");
    // Same capability bounding set as the zone's own command.
    let zone_caps = z
        .log_text()
        .lines()
        .find(|l| l.contains("zone-caps"))
        .and_then(|l| l.split("CapBnd:").nth(1))
        .map(|s| s.trim().to_string())
        .unwrap();
    assert!(
        out.contains(&format!("CapBnd:\t{zone_caps}")),
        "{out} vs {zone_caps}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("Seccomp:\t2"),
        "exec'd command is filtered: {out}"
    );
}

#[test]
fn exec_into_a_stopped_zone_or_missing_command_fails_cleanly() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("execfail", |d| {
        [
            zone(d, "web", "sleep 1000", ""),
            zone(d, "off", "sleep 1000", "autostart = false"),
        ]
        .concat()
    });
    z.wait_state("web", "running");
    let (code, _, err) = exec(&z, &["off", "--", "true"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
    // Not found: 127, as a shell says.
    let (code, _, err) = exec(&z, &["web", "--", "/no/such"], b"");
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("/no/such"), "{err}");
    let (code, _, err) = exec(&z, &["web", "--", "nosuchcmd"], b"");
    assert_eq!(code, 127, "{err}");
    // Found but not executable: 126.
    let (code, _, err) = exec(&z, &["web", "--", "/etc"], b"");
    assert_eq!(code, 126, "{err}");
    // The zone is unaffected and exec still works.
    assert_eq!(exec(&z, &["web", "--", "true"], b"").0, 0);
    assert_eq!(z.state("web"), "running");
}

#[test]
fn sighup_reloads_the_config() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("sighup", |d| zone(d, "one", "sleep 1000", ""));
    z.wait_state("one", "running");
    let original = std::fs::read_to_string(&z.config).unwrap();
    let d = z.dir.clone();
    std::fs::write(
        &z.config,
        format!(
            "{original}{}",
            zone(&d, "two", "echo two-up; sleep 1000", "")
        ),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(z.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    z.wait_state("two", "running");
    z.wait_log("reloaded: 1 added, 0 changed, 0 removed");
    assert_eq!(z.state("one"), "running");
}

#[test]
fn a_stop_sent_right_after_a_start_stops_the_zone_without_a_kill() {
    if !require_root() {
        return;
    }
    const N: usize = 20;
    let z = Zonit::start("startstop", |d| {
        (0..N)
            .map(|i| {
                zone(
                    d,
                    &format!("z{i}"),
                    "sleep 1000",
                    "autostart = false\nstop_timeout = \"5s\"",
                )
            })
            .collect::<String>()
    });
    let t = Instant::now();
    let conns: Vec<UnixStream> = (0..N)
        .map(|i| {
            let mut s = UnixStream::connect(&z.socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            // Both requests in one write: the stop reaches the agent while
            // the zone's init is being born.
            s.write_all(
                format!(
                    "{{\"v\":1,\"cmd\":\"start\",\"name\":\"z{i}\"}}\n{{\"v\":1,\"cmd\":\"stop\",\"name\":\"z{i}\"}}\n"
                )
                .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    for s in conns {
        let mut r = BufReader::new(s);
        for _ in 0..2 {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"ok\":true"), "{line}");
        }
    }
    let took = t.elapsed();
    for i in 0..N {
        let u = z.unit(&format!("z{i}"));
        assert_eq!(u["state"], "stopped", "{u}");
        assert_ne!(u["last_exit"], "signal SIGKILL", "{u}\n{}", z.log_text());
    }
    assert!(
        took < Duration::from_secs(5),
        "stops waited for stop_timeout: {took:?}"
    );
    assert!(!z.log_text().contains("killing it"), "{}", z.log_text());
}

#[test]
fn the_zone_init_names_itself_and_the_host_config_path_stays_outside() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("initname", |d| {
        zone(
            d,
            "web",
            "echo cmdline=$(tr '\\0' ' ' < /proc/1/cmdline)end comm=$(cat /proc/1/comm); \
             echo ps; ps; echo ps-end; sleep 1000",
            "",
        )
    });
    let out = z.output_until("web", "ps-end");
    assert!(
        out.contains("cmdline=zonit-init web end comm=zonit-init"),
        "{out}\n{}",
        z.log_text()
    );
    let config = z.config.display().to_string();
    assert!(!out.contains(&config), "the config path leaks: {out}");
    let ps = out.split("\nps\n").nth(1).unwrap_or("");
    assert!(ps.contains("zonit-init web"), "ps: {out}");
    // On the host, the zone's init is told apart from the agent.
    let init = common::child_of(z.pid() as u32).unwrap();
    let host_view = std::fs::read(format!("/proc/{init}/cmdline")).unwrap();
    assert_eq!(host_view, b"zonit-init\0web\0");
}

#[test]
fn the_zone_init_is_a_fresh_image_holding_nothing_of_the_agent() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("initfresh", |d| zone(d, "web", "echo up; sleep 1000", ""));
    z.output_until("web", "up");
    let init = common::child_of(z.pid() as u32).unwrap();
    // A copy of the agent would carry the agent's whole environment (and
    // heap); the init executed afresh holds only what it was handed.
    let env = std::fs::read(format!("/proc/{init}/environ")).unwrap();
    let vars: Vec<&[u8]> = env.split(|&b| b == 0).filter(|v| !v.is_empty()).collect();
    assert_eq!(vars.len(), 1, "{}", String::from_utf8_lossy(&env));
    assert!(
        vars[0].starts_with(b"ZONIT_INIT="),
        "{}",
        String::from_utf8_lossy(&env)
    );
    let agent_env = std::fs::read(format!("/proc/{}/environ", z.pid())).unwrap();
    assert!(
        agent_env
            .split(|&b| b == 0)
            .any(|v| v.starts_with(b"PATH="))
    );
    // It still reaps and reports: the command's end is the unit's end.
    let (code, _, err) = z.ctl(&["stop", "web"]);
    assert_eq!(code, 0, "{err}");
    z.wait_state("web", "stopped");
}

#[test]
fn setup_errors_inside_the_zone_fail_the_start_for_good_with_the_reason() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("setupfail", |d| {
        let file = d.join("a-file");
        std::fs::write(&file, "x").unwrap();
        let always = "restart = \"always\"\nbackoff = { initial = \"50ms\", max = \"50ms\" }";
        [
            zone(
                d,
                "nowd",
                "true",
                &format!("{always}\nworkdir = \"/no/such/dir\""),
            ),
            zone(
                d,
                "nofile",
                "true",
                &format!("{always}\nrlimits = {{ nofile = 100000000 }}"),
            ),
            zone(
                d,
                "fileondir",
                "true",
                &format!(
                    "{always}\nmounts = [{{ source = \"{}\", target = \"/etc\" }}]",
                    file.display()
                ),
            ),
        ]
        .concat()
    });
    for (unit, needle) in [
        ("nowd", "/no/such/dir"),
        ("nofile", "NOFILE"),
        ("fileondir", "/etc"),
    ] {
        z.wait_state(unit, "failed");
        let u = z.unit(unit);
        let reason = u["reason"].as_str().unwrap_or("");
        assert!(reason.contains(needle), "{unit}: {u}");
        assert_eq!(u["restarts"], 0, "{unit}: {u}\n{}", z.log_text());
    }
}

#[test]
fn stop_wakes_a_stopped_command_so_it_can_handle_the_stop_signal() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("sigcont", |d| {
        zone(
            d,
            "paused",
            "trap 'echo got-term; exit 0' TERM; echo pausing; kill -STOP $$; sleep 1000",
            "stop_timeout = \"3s\"",
        )
    });
    z.wait_log("zonit[paused]: pausing");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(z.ctl(&["stop", "paused"]).0, 0);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(z.unit("paused")["last_exit"], "exit 0", "{}", z.log_text());
}
