//! `ready`, `health` and `[host] watchdog`: meanings, defaults and errors.

use std::path::PathBuf;
use std::time::Duration;

use super::tests::{ok, parse_str, render};
use super::*;

/// Exactly one diagnostic, at `line:col`, containing every needle.
fn one_error(text: &str, line: usize, col: usize, needles: &[&str]) {
    let diags = match parse_str(text) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(d) => d,
    };
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    let d = &diags[0];
    assert_eq!((d.line, d.col), (line, col), "{}", render(&diags));
    for n in needles {
        assert!(d.message.contains(n), "{n:?} not in {}", d.message);
    }
}

fn zone_with(extra: &str) -> String {
    format!("[zone.db]\nroot = \"/zones/db\"\ncommand = [\"/bin/db\"]\n{extra}\n")
}

fn common<'a>(c: &'a Config, name: &str) -> &'a Common {
    &c.unit(name).unwrap().common
}

#[test]
fn each_ready_kind_is_read_with_its_defaults() {
    let cases = [
        (
            r#"ready = { notify = "fd", timeout = "5s" }"#,
            ReadyKind::NotifyFd(3),
            Duration::from_secs(5),
        ),
        (
            r#"ready = { notify = "fd", notify_fd = 7 }"#,
            ReadyKind::NotifyFd(7),
            Duration::from_secs(30),
        ),
        (
            r#"ready = { notify = "systemd" }"#,
            ReadyKind::Systemd,
            Duration::from_secs(30),
        ),
        (
            r#"ready = { exec = ["/bin/pg_isready"], interval = "200ms", probe_timeout = "3s" }"#,
            ReadyKind::Probe {
                probe: Probe::Exec(vec!["/bin/pg_isready".into()]),
                interval: Duration::from_millis(200),
                timeout: Duration::from_secs(3),
            },
            Duration::from_secs(30),
        ),
        (
            r#"ready = { tcp = 5432 }"#,
            ReadyKind::Probe {
                probe: Probe::Tcp(5432),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
            },
            Duration::from_secs(30),
        ),
        (
            r#"ready = { log = "ready to accept" }"#,
            ReadyKind::Log("ready to accept".into()),
            Duration::from_secs(30),
        ),
    ];
    for (line, kind, timeout) in cases {
        let c = ok(&zone_with(line));
        assert_eq!(
            common(&c, "db").ready,
            Some(Ready { kind, timeout }),
            "{line}"
        );
    }
}

#[test]
fn health_is_read_with_its_defaults() {
    let c = ok(&zone_with(r#"health = { tcp = 80 }"#));
    assert_eq!(
        common(&c, "db").health,
        Some(Health {
            probe: Probe::Tcp(80),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            retries: 3,
        })
    );
    let c = ok(&zone_with(
        r#"health = { exec = ["/bin/check", "-q"], interval = "2s", timeout = "1s", retries = 5 }"#,
    ));
    assert_eq!(
        common(&c, "db").health,
        Some(Health {
            probe: Probe::Exec(vec!["/bin/check".into(), "-q".into()]),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            retries: 5,
        })
    );
}

#[test]
fn ready_and_health_from_defaults_reach_zones_not_guests() {
    let text = r#"
[defaults]
ready = { tcp = 80 }
health = { tcp = 80 }

[zone.web]
root = "/zones/web"
command = ["/bin/web"]

[zone.own]
root = "/zones/own"
command = ["/bin/own"]
ready = { notify = "systemd" }

[guest.vm]
kernel = "/k"
"#;
    let c = ok(text);
    assert!(matches!(
        common(&c, "web").ready.as_ref().map(|r| &r.kind),
        Some(ReadyKind::Probe {
            probe: Probe::Tcp(80),
            ..
        })
    ));
    assert!(common(&c, "web").health.is_some());
    assert_eq!(
        common(&c, "own").ready.as_ref().map(|r| &r.kind),
        Some(&ReadyKind::Systemd)
    );
    assert_eq!(common(&c, "vm").ready, None);
    assert_eq!(common(&c, "vm").health, None);
}

#[test]
fn a_guest_is_ready_by_its_console_or_by_a_port_on_its_address() {
    let c = ok("[guest.vm]\nkernel = \"/k\"\nready = { log = \"login:\" }\n");
    assert_eq!(
        common(&c, "vm").ready.as_ref().map(|r| &r.kind),
        Some(&ReadyKind::Log("login:".into()))
    );
    let lan = "[network.lan]\naddress = \"10.88.0.1/24\"\n\n[guest.vm]\nkernel = \"/k\"\n";
    let c = ok(&format!(
        "{lan}nics = [{{ network = \"lan\", address = \"10.88.0.9\" }}]\nready = {{ tcp = 22 }}\nhealth = {{ tcp = 22, retries = 2 }}\n"
    ));
    assert!(matches!(
        common(&c, "vm").ready.as_ref().map(|r| &r.kind),
        Some(ReadyKind::Probe {
            probe: Probe::Tcp(22),
            ..
        })
    ));
    assert_eq!(
        common(&c, "vm")
            .health
            .as_ref()
            .map(|h| (&h.probe, h.retries)),
        Some((&Probe::Tcp(22), 2))
    );
    assert_eq!(
        c.unit("vm")
            .unwrap()
            .addressed_nic()
            .and_then(|n| n.address),
        Some(std::net::Ipv4Addr::new(10, 88, 0, 9))
    );
    // Nothing runs a command in a guest for it.
    one_error(
        "[guest.vm]\nkernel = \"/k\"\nready = { exec = [\"/bin/true\"] }\n",
        3,
        9,
        &["ready", "[guest.vm]", "use `log` or `tcp`"],
    );
    one_error(
        "[guest.vm]\nkernel = \"/k\"\nhealth = { exec = [\"/bin/true\"] }\n",
        3,
        10,
        &["health", "[guest.vm]", "use `tcp`"],
    );
    // A tcp probe needs an address to connect to: a nic without one, or
    // no nic at all, is reported at the port.
    one_error(
        &format!("{lan}nics = [{{ network = \"lan\" }}]\nready = {{ tcp = 22 }}\n"),
        7,
        17,
        &[
            "ready.tcp",
            "[guest.vm]",
            "give one of its nics an `address`",
        ],
    );
    one_error(
        "[guest.vm]\nkernel = \"/k\"\nhealth = { tcp = 22 }\n",
        3,
        18,
        &[
            "health.tcp",
            "[guest.vm]",
            "give one of its nics an `address`",
        ],
    );
}

#[test]
fn ready_needs_exactly_one_kind() {
    one_error(
        &zone_with(r#"ready = { timeout = "5s" }"#),
        4,
        9,
        &[
            "invalid `ready` in [zone.db]",
            "give one of `notify`, `exec`, `tcp`, `log`",
        ],
    );
    one_error(
        &zone_with(r#"ready = { tcp = 80, log = "x" }"#),
        4,
        9,
        &["gives tcp and log", "exactly one"],
    );
    one_error(
        &zone_with(r#"health = { retries = 2 }"#),
        4,
        10,
        &["invalid `health`", "give one of `exec`, `tcp`"],
    );
}

#[test]
fn bad_ready_values_point_at_the_value() {
    one_error(
        &zone_with(r#"ready = { notify = "s6" }"#),
        4,
        20,
        &["ready.notify", "\"s6\" is not one of: fd, systemd"],
    );
    one_error(
        &zone_with(r#"ready = { notify = "fd", notify_fd = 2 }"#),
        4,
        38,
        &["ready.notify_fd", "0 to 2 are stdio"],
    );
    one_error(
        &zone_with(r#"ready = { notify = "systemd", notify_fd = 4 }"#),
        4,
        43,
        &["ready.notify_fd", "notify = \"fd\" only"],
    );
    one_error(
        &zone_with(r#"ready = { tcp = 70000 }"#),
        4,
        17,
        &["ready.tcp", "70000 is not a TCP port"],
    );
    one_error(
        &zone_with(r#"ready = { exec = [] }"#),
        4,
        18,
        &["ready.exec", "the command is empty"],
    );
    one_error(&zone_with(r#"ready = { log = "" }"#), 4, 17, &["ready.log"]);
    one_error(
        &zone_with(r#"ready = { tcp = 80, timeout = "0s" }"#),
        4,
        31,
        &["ready.timeout", "above zero"],
    );
    one_error(
        &zone_with(r#"ready = { log = "up", interval = "1s" }"#),
        4,
        34,
        &["ready.interval", "only `exec` and `tcp`"],
    );
    one_error(
        &zone_with(r#"ready = { notify = "fd", probe_timeout = "1s" }"#),
        4,
        42,
        &["ready.probe_timeout", "only `exec` and `tcp`"],
    );
    one_error(
        &zone_with(r#"ready = { tcp = 80, probe_timeout = "0s" }"#),
        4,
        37,
        &["ready.probe_timeout", "above zero"],
    );
    one_error(
        &zone_with(r#"ready = { tcp = 80, timout = "1s" }"#),
        4,
        21,
        &[
            "unknown key `timout` in `ready` of [zone.db]",
            "did you mean `timeout`?",
        ],
    );
    one_error(
        &zone_with(r#"health = { tcp = 80, retries = 0 }"#),
        4,
        32,
        &["health.retries", "0 is not a number of failures"],
    );
    one_error(
        &zone_with(r#"health = { tcp = 80, interval = "10" }"#),
        4,
        33,
        &["health.interval", "has no unit"],
    );
}

#[test]
fn a_bad_default_ready_is_reported_once_at_defaults() {
    let text = r#"[defaults]
ready = { tcp = 0 }
[zone.a]
root = "/a"
command = ["/a"]
[zone.b]
root = "/b"
command = ["/b"]
"#;
    one_error(text, 2, 17, &["[defaults]", "0 is not a TCP port"]);
}

#[test]
fn watchdog_is_read_with_its_defaults() {
    let c = ok("[host]\nwatchdog = {}\n");
    assert_eq!(
        c.host.watchdog,
        Some(Watchdog {
            device: PathBuf::from("/dev/watchdog"),
            timeout: Duration::from_secs(30),
            require: vec![],
            grace: Duration::from_secs(60),
        })
    );
    let text = format!(
        "[host]\nwatchdog = {{ device = \"/dev/watchdog1\", timeout = \"10s\", require = [\"db\", \"db\"], grace = \"5s\" }}\n{}",
        zone_with("")
    );
    let c = ok(&text);
    assert_eq!(
        c.host.watchdog,
        Some(Watchdog {
            device: PathBuf::from("/dev/watchdog1"),
            timeout: Duration::from_secs(10),
            require: vec!["db".into()],
            grace: Duration::from_secs(5),
        })
    );
    assert_eq!(ok("").host.watchdog, None);
}

#[test]
fn bad_watchdog_values_are_reported() {
    one_error(
        &format!(
            "[host]\nwatchdog = {{ require = [\"bd\"] }}\n{}",
            zone_with("")
        ),
        2,
        25,
        &[
            "watchdog.require",
            "`bd` is no zone or guest",
            "did you mean `db`?",
        ],
    );
    one_error(
        "[host]\nwatchdog = { timeout = \"1.5s\" }\n",
        2,
        24,
        &["watchdog.timeout", "whole seconds"],
    );
    one_error(
        "[host]\nwatchdog = { device = \"watchdog\" }\n",
        2,
        23,
        &["watchdog.device", "not an absolute path"],
    );
    one_error(
        "[host]\nwatchdog = { timeout = \"30s\", pet = true }\n",
        2,
        31,
        &["unknown key `pet` in `watchdog` of [host]"],
    );
}
