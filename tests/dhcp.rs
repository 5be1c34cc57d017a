//! Tier 2: DHCP under `zonit run`, for real, inside network namespaces
//! the test makes (never the machine's own interfaces): zonit's client
//! against busybox `udhcpd` beyond a veth, and zonit's server on a
//! bridge against busybox `udhcpc` in a stand-in guest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs::File;
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{NetnsProc, Zonit, run_cmd};

fn must(ok_text: (bool, String)) -> String {
    assert!(ok_text.0, "{}", ok_text.1);
    ok_text.1
}

/// busybox `udhcpd` on `srv0` (192.0.2.1/24) in `outside`, handing out
/// 192.0.2.50-60 with router 192.0.2.1 and a 4 s lease; its log goes to
/// `log`.
fn udhcpd(outside: &NetnsProc, dir: &std::path::Path, log: &std::path::Path) -> Child {
    let conf = dir.join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "start 192.0.2.50\nend 192.0.2.60\ninterface srv0\nlease_file {}\npidfile {}\nauto_time 0\noption subnet 255.255.255.0\noption router 192.0.2.1\noption lease 4\n",
            dir.join("leases").display(),
            dir.join("udhcpd.pid").display()
        ),
    )
    .unwrap();
    let out = File::create(log).unwrap();
    outside
        .command(&["busybox", "udhcpd", "-f"])
        .arg(&conf)
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("busybox (busybox-static) is needed")
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_client_takes_a_lease_from_udhcpd_renews_it_and_releases_it_at_exit() {
    if !common::in_private_netns(
        "the_client_takes_a_lease_from_udhcpd_renews_it_and_releases_it_at_exit",
    ) {
        return;
    }
    // Loose reverse path filtering (many distributions' default; this
    // namespace's own setting): it drops replies on their way to a UDP
    // socket while the interface has no address, which the client must
    // cope with.
    for conf in ["all", "default"] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter"), "2").unwrap();
    }
    must(run_cmd(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "srv0",
    ]));
    let outside = NetnsProc::new();
    must(run_cmd(&[
        "ip",
        "link",
        "set",
        "srv0",
        "netns",
        &outside.pid().to_string(),
    ]));
    must(outside.run(&["ip", "link", "set", "lo", "up"]));
    must(outside.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "srv0"]));
    must(outside.run(&["ip", "link", "set", "srv0", "up"]));
    let dir = common::test_dir("dhcp-client-server");
    let log = dir.join("udhcpd.log");
    let mut server = udhcpd(&outside, &dir, &log);

    let mut z = Zonit::start("dhcp-client", |_| {
        "[interface.up0]\naddress = \"dhcp\"\n".to_string()
    });
    z.wait_for("the lease", Duration::from_secs(20), || {
        z.log_text().contains("interface up0: DHCP lease 192.0.2.")
    });
    let granted = std::time::Instant::now();
    let addr = must(run_cmd(&["ip", "-o", "-4", "addr", "show", "dev", "up0"]));
    // udhcpd picks any free address of its pool, 192.0.2.50 to .60.
    let host: u32 = addr
        .split_once("inet 192.0.2.")
        .and_then(|(_, rest)| rest.split_once("/24"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no 192.0.2.x/24 address on up0: {addr}"));
    assert!((50..=60).contains(&host), "{addr}");
    let routes = must(run_cmd(&["ip", "route"]));
    assert!(routes.contains("default via 192.0.2.1 dev up0"), "{routes}");

    // T1 is 2 s into a 4 s lease: renewals keep it past several lease
    // times, each answered by the server with an ACK.
    let acks = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("sending ACK")
            .count()
    };
    wait("three renewals", Duration::from_secs(15), || acks() >= 4);
    // The address must outlive the first lease: look again only once a
    // whole lease time has passed since the grant was seen (the grant
    // can be seen late on a loaded machine, so the renewals alone may
    // come before that).
    let past_lease = granted + Duration::from_secs(5);
    if let Some(left) = past_lease.checked_duration_since(std::time::Instant::now()) {
        std::thread::sleep(left);
    }
    let again = must(run_cmd(&["ip", "-o", "-4", "addr", "show", "dev", "up0"]));
    assert!(
        again.contains(&format!("inet 192.0.2.{host}/24")),
        "{again}\n{}",
        z.log_text()
    );
    assert!(
        !z.log_text().contains("dropped"),
        "the lease lapsed:\n{}",
        z.log_text()
    );

    // An orderly exit gives the lease back and removes the address.
    assert_eq!(z.terminate(), 0, "{}", z.log_text());
    let after = must(run_cmd(&["ip", "-o", "-4", "addr", "show", "dev", "up0"]));
    assert!(!after.contains("192.0.2."), "{after}");
    assert!(z.log_text().contains("interface up0: DHCP lease 192.0.2."));
    // udhcpd marks a released lease expired at once; SIGUSR1 writes its
    // lease file, which dumpleases reads.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let leases = dir.join("leases");
    wait("the lease file", Duration::from_secs(5), || leases.exists());
    sleep(Duration::from_millis(200));
    let dump = must(run_cmd(&[
        "busybox",
        "dumpleases",
        "-f",
        leases.to_str().unwrap(),
    ]));
    assert!(dump.contains("expired"), "{dump}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_server_gives_a_guest_its_static_lease_and_ignores_unknown_macs() {
    if !common::in_private_netns(
        "the_server_gives_a_guest_its_static_lease_and_ignores_unknown_macs",
    ) {
        return;
    }
    run_cmd(&["ip", "link", "set", "lo", "up"]);
    let z = Zonit::start("dhcp-server", |_| {
        "[network.lan]\naddress = \"10.88.0.1/24\"\ndhcp = true\ndns = [\"10.88.0.53\"]\n\n\
         [guest.vm]\nkernel = \"/nonexistent\"\nautostart = false\n\
         nics = [{ network = \"lan\", mac = \"52:54:00:00:00:09\", address = \"10.88.0.9\" }]\n"
            .to_string()
    });
    z.wait_log("DHCP server on zn-lan");
    let script = common::test_dir("dhcp-server-script").join("event.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"EVENT $1 ip=$ip subnet=$subnet router=$router dns=$dns lease=$lease\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // A stand-in guest: a namespace on the bridge with the given MAC.
    let guest = |host_end: &str, mac: &str| {
        let g = NetnsProc::new();
        must(run_cmd(&[
            "ip",
            "link",
            "add",
            host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &g.pid().to_string(),
        ]));
        must(run_cmd(&[
            "ip", "link", "set", host_end, "master", "zn-lan", "up",
        ]));
        must(g.run(&["ip", "link", "set", "eth0", "address", mac, "up"]));
        g
    };
    let udhcpc = |g: &NetnsProc| {
        g.run(&[
            "busybox",
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "3",
            "-T",
            "1",
            "-i",
            "eth0",
            "-s",
            script.to_str().unwrap(),
        ])
    };

    let known = guest("gv0", "52:54:00:00:00:09");
    let (ok, out) = udhcpc(&known);
    assert!(ok, "{out}\n{}", z.log_text());
    assert!(
        out.contains(
            "EVENT bound ip=10.88.0.9 subnet=255.255.255.0 router=10.88.0.1 dns=10.88.0.53 lease=3600"
        ),
        "{out}"
    );

    let stranger = guest("gv1", "52:54:00:00:00:77");
    let (ok, out) = udhcpc(&stranger);
    assert!(!ok, "an unknown MAC got a lease:\n{out}");
    assert!(!out.contains("EVENT bound"), "{out}");

    // A reload that moves the guest's address is served at once.
    let text = std::fs::read_to_string(&z.config)
        .unwrap()
        .replace("10.88.0.9\"", "10.88.0.19\"");
    std::fs::write(&z.config, text).unwrap();
    let (code, out, err) = z.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let (ok, out) = udhcpc(&known);
    assert!(ok, "{out}\n{}", z.log_text());
    assert!(out.contains("EVENT bound ip=10.88.0.19 "), "{out}");
}
