//! Tier 2: zone networking on the host, for real, always inside network
//! namespaces the test makes (never the machine's own interfaces, routes
//! or firewall).
//!
//! Each test re-runs itself under `unshare --net` (a private namespace
//! standing in for the host) and does its work there; "zones" are
//! processes in network namespaces of their own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use zonit::config::Cidr;
use zonit::net::netlink::{self, Rtnl};
use zonit::net::plan::{Bridge, ZonePlan};

const INNER: &str = "ZONIT_NETWORK_TEST_INNER";

/// Runs the calling test again inside a fresh network namespace; returns
/// true in the copy that should do the work.
fn in_private_netns(test: &str) -> bool {
    if std::env::var_os(INNER).is_some() {
        return true;
    }
    if !common::require_root() {
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .output()
        .expect("unshare (util-linux) is needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} failed in its namespace:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run in its namespace:\n{text}"
    );
    false
}

/// A process in a network namespace of its own: a stand-in zone.
struct NetnsProc {
    child: Child,
}

impl NetnsProc {
    fn new() -> NetnsProc {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let path = format!("/proc/{}/ns/net", child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        // unshare(1) enters its namespace just before it execs sleep.
        while std::fs::metadata(&path).map(|m| m.ino()).ok() == Some(own) {
            assert!(Instant::now() < deadline, "unshare never made its netns");
            sleep(Duration::from_millis(5));
        }
        NetnsProc { child }
    }

    fn netns(&self) -> File {
        File::open(format!("/proc/{}/ns/net", self.child.id())).unwrap()
    }

    /// Runs a command inside the namespace.
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.child.id()))
            .arg("--")
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NetnsProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap()
}

fn lan() -> Bridge {
    Bridge {
        name: "zn-lan".into(),
        addresses: vec![cidr("10.88.0.1/24"), cidr("fd88::1/64")],
    }
}

fn zone_plan(host_ifname: &str, v4: &str, v6: &str, mac_last: u8) -> ZonePlan {
    ZonePlan {
        bridge: "zn-lan".into(),
        host_ifname: host_ifname.into(),
        ifname: "eth0",
        mac: [0x02, 0, 0, 0, 0, mac_last],
        addresses: vec![cidr(v4), cidr(v6)],
        gateway4: "10.88.0.1".parse().unwrap(),
        gateway6: Some("fd88::1".parse().unwrap()),
    }
}

fn ping(from: Option<&NetnsProc>, addr: &str) -> (bool, String) {
    let args = ["busybox", "ping", "-c", "1", "-W", "2", addr];
    match from {
        Some(ns) => ns.run(&args),
        None => run(&args),
    }
}

/// Whether link `name` exists here (/sys/class/net shows the namespace
/// sysfs was mounted in, not this one).
fn link_exists(name: &str) -> bool {
    run(&["ip", "link", "show", "dev", name]).0
}

#[test]
fn a_bridge_and_veths_connect_the_host_and_two_zones_over_ipv4_and_ipv6() {
    if !in_private_netns("a_bridge_and_veths_connect_the_host_and_two_zones_over_ipv4_and_ipv6") {
        return;
    }
    let mut rtnl = Rtnl::new().unwrap();
    netlink::set_up_bridges(&mut rtnl, &[lan()]).unwrap();
    // A second agent adopts what the first left.
    netlink::set_up_bridges(&mut rtnl, &[lan()]).unwrap();

    let (a, b) = (NetnsProc::new(), NetnsProc::new());
    for (ns, name, plan) in [
        (&a, "a", zone_plan("zva-0", "10.88.0.2/24", "fd88::2/64", 2)),
        (&b, "b", zone_plan("zvb-0", "10.88.0.3/24", "fd88::3/64", 3)),
    ] {
        ns.run(&["ip", "link", "set", "lo", "up"]);
        netlink::set_up_zone(&mut rtnl, &plan, ns.netns().as_fd(), name).unwrap();
    }
    let (_, master) = run(&["ip", "-o", "link", "show", "zva-0"]);
    assert!(
        master.contains("master zn-lan") && master.contains("UP"),
        "{master}"
    );
    let (_, inside) = a.run(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(
        inside.contains("10.88.0.2/24") && inside.contains("fd88::2/64"),
        "{inside}"
    );
    let (_, link) = a.run(&["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("link/ether 02:00:00:00:00:02"), "{link}");
    let (_, routes) = a.run(&["ip", "route"]);
    assert!(
        routes.contains("default via 10.88.0.1 dev eth0"),
        "{routes}"
    );
    let (_, routes6) = a.run(&["ip", "-6", "route"]);
    assert!(
        routes6.contains("default via fd88::1 dev eth0"),
        "{routes6}"
    );
    // The zone's end never shows on the host.
    assert!(!link_exists("eth0"));

    for (from, to) in [
        (None, "10.88.0.2"),
        (Some(&a), "10.88.0.1"),
        (Some(&a), "10.88.0.3"),
        (Some(&b), "fd88::2"),
        (None, "fd88::3"),
    ] {
        let (ok, text) = ping(from, to);
        assert!(ok, "ping {to}: {text}");
    }
}

#[test]
fn a_zones_veth_goes_with_its_namespace_and_the_next_incarnation_never_clashes() {
    if !in_private_netns(
        "a_zones_veth_goes_with_its_namespace_and_the_next_incarnation_never_clashes",
    ) {
        return;
    }
    let mut rtnl = Rtnl::new().unwrap();
    netlink::set_up_bridges(&mut rtnl, &[lan()]).unwrap();
    let mut first = NetnsProc::new();
    let plan0 = zone_plan("zvx-0", "10.88.0.2/24", "fd88::2/64", 2);
    netlink::set_up_zone(&mut rtnl, &plan0, first.netns().as_fd(), "x").unwrap();
    assert!(link_exists("zvx-0"));
    // The same name again, while it exists, is refused with EEXIST.
    let other = NetnsProc::new();
    let err = netlink::set_up_zone(&mut rtnl, &plan0, other.netns().as_fd(), "x").unwrap_err();
    assert!(err.to_string().contains("zvx-0"), "{err}");
    assert!(err.to_string().contains("exists"), "{err}");

    // The zone dies: nothing is deleted explicitly, the kernel removes the
    // pair with the namespace; a restart uses the next name at once.
    first.kill();
    let second = NetnsProc::new();
    let plan1 = zone_plan("zvx-1", "10.88.0.2/24", "fd88::2/64", 2);
    netlink::set_up_zone(&mut rtnl, &plan1, second.netns().as_fd(), "x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while link_exists("zvx-0") {
        assert!(Instant::now() < deadline, "zvx-0 outlived its namespace");
        sleep(Duration::from_millis(10));
    }
    let (ok, text) = ping(None, "10.88.0.2");
    assert!(ok, "{text}");
}

#[test]
fn a_link_that_is_not_a_bridge_is_never_adopted() {
    if !in_private_netns("a_link_that_is_not_a_bridge_is_never_adopted") {
        return;
    }
    let (ok, text) = run(&[
        "ip", "link", "add", "zn-lan", "type", "veth", "peer", "name", "p",
    ]);
    assert!(ok, "{text}");
    let mut rtnl = Rtnl::new().unwrap();
    let err = netlink::set_up_bridges(&mut rtnl, &[lan()]).unwrap_err();
    assert!(
        err.to_string()
            .contains("zn-lan exists and is not a bridge"),
        "{err}"
    );
}

const FORWARDS: &str = r#"
[network.lan]
address = "10.88.0.1/24"
nat = true

[zone.a]
root = "/z/a"
command = ["/x"]
network = "lan"
address = "10.88.0.2"
ports = ["8080:80"]

[zone.b]
root = "/z/b"
command = ["/x"]
network = "lan"
address = "10.88.0.3"
"#;

/// A server in `ns` answering every TCP connection on `port` with `reply`.
fn serve(ns: &NetnsProc, port: u16, reply: &str) -> Child {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", ns.child.id()))
        .args([
            "--",
            "busybox",
            "nc",
            "-ll",
            "-p",
            &port.to_string(),
            "-e",
            "echo",
            reply,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn fetch(from: Option<&NetnsProc>, addr: &str, port: u16) -> String {
    let args = ["busybox", "nc", "-w", "3", addr, &port.to_string()];
    let out = match from {
        Some(ns) => Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", ns.child.id()))
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .output(),
        None => Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output(),
    }
    .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn port_forwards_reach_a_zone_from_outside_the_host_and_another_zone_and_nat_takes_zones_out() {
    if !in_private_netns(
        "port_forwards_reach_a_zone_from_outside_the_host_and_another_zone_and_nat_takes_zones_out",
    ) {
        return;
    }
    // Where br_netfilter is loaded, bridged frames pass the IP hooks and
    // conntrack would mend a hairpin by itself; an appliance has no
    // br_netfilter. Turn it off for this namespace only.
    for proto in ["iptables", "ip6tables"] {
        let knob = format!("/proc/sys/net/bridge/bridge-nf-call-{proto}");
        if std::path::Path::new(&knob).exists() {
            std::fs::write(&knob, "0").unwrap();
        }
    }
    let config = zonit::config::parse(std::path::Path::new("t.toml"), FORWARDS).unwrap();
    let plan = zonit::net::plan::host_plan(&config);
    let mut rtnl = Rtnl::new().unwrap();
    netlink::set_up_bridges(&mut rtnl, &plan.bridges).unwrap();
    netlink::enable_forwarding(plan.forward_v4, plan.forward_v6).unwrap();
    // Replacing twice: the second batch finds the first table and
    // replaces it whole.
    for _ in 0..2 {
        zonit::net::nft::apply(zonit::net::nft::replace_table(&plan.ruleset, 1)).unwrap();
    }

    // The outside: a namespace on a link of the host, with no route back
    // to the zones' subnet.
    let outside = NetnsProc::new();
    let peer = format!("/proc/{}/ns/net", outside.child.id());
    for cmd in [
        vec![
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", &peer,
        ],
        vec!["ip", "addr", "add", "192.0.2.1/24", "dev", "up0"],
        vec!["ip", "link", "set", "up0", "up"],
        vec!["ip", "link", "set", "lo", "up"],
    ] {
        let (ok, text) = run(&cmd);
        assert!(ok, "{cmd:?}: {text}");
    }
    for cmd in [
        &["ip", "addr", "add", "192.0.2.2/24", "dev", "out0"][..],
        &["ip", "link", "set", "out0", "up"],
    ] {
        let (ok, text) = outside.run(cmd);
        assert!(ok, "{cmd:?}: {text}");
    }

    let (a, b) = (NetnsProc::new(), NetnsProc::new());
    for (ns, name) in [(&a, "a"), (&b, "b")] {
        ns.run(&["ip", "link", "set", "lo", "up"]);
        let (zplan, _) = zonit::net::plan::zone_plan_of(&config, name, 0).unwrap();
        netlink::set_up_zone(&mut rtnl, &zplan, ns.netns().as_fd(), name).unwrap();
    }
    let mut server = serve(&a, 80, "zone-a");
    let mut outside_server = serve(&outside, 9000, "outside");
    sleep(Duration::from_millis(200));

    let cases: [(&str, Option<&NetnsProc>, &str, u16, &str); 5] = [
        ("from outside", Some(&outside), "192.0.2.1", 8080, "zone-a"),
        ("from the host", None, "192.0.2.1", 8080, "zone-a"),
        (
            "from the host, bridge address",
            None,
            "10.88.0.1",
            8080,
            "zone-a",
        ),
        (
            "from another zone (hairpin)",
            Some(&b),
            "192.0.2.1",
            8080,
            "zone-a",
        ),
        (
            "a zone out through NAT",
            Some(&a),
            "192.0.2.2",
            9000,
            "outside",
        ),
    ];
    let mut failures = Vec::new();
    for (what, from, addr, port, want) in cases {
        let got = fetch(from, addr, port);
        if got != want {
            failures.push(format!("{what}: {addr}:{port} gave {got:?}, want {want:?}"));
        }
    }
    let (_, listing) = run(&["nft", "list", "table", "inet", "zonit"]);
    let _ = server.kill();
    let _ = server.wait();
    let _ = outside_server.kill();
    let _ = outside_server.wait();
    assert!(failures.is_empty(), "{failures:#?}\n{listing}");

    // Read back with nft: every chain and every rule the plan made, in
    // nft's own words.
    for needle in [
        "type nat hook prerouting priority dstnat",
        "type nat hook output priority -100",
        "type nat hook postrouting priority srcnat",
    ] {
        assert!(listing.contains(needle), "no `{needle}` in:\n{listing}");
    }
    let chains = [
        ("prerouting", &plan.ruleset.prerouting),
        ("output", &plan.ruleset.output),
        ("postrouting", &plan.ruleset.postrouting),
    ];
    for (chain, rules) in chains {
        let body = listing
            .split(&format!("chain {chain} {{"))
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or_default();
        let listed: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("type nat hook"))
            .collect();
        let planned: Vec<String> = rules.iter().map(|r| r.to_nft()).collect();
        assert_eq!(listed, planned, "chain {chain} in:\n{listing}");
    }

    zonit::net::nft::apply(zonit::net::nft::delete_table(1)).unwrap();
    let (_, tables) = run(&["nft", "list", "tables"]);
    assert!(!tables.contains("zonit"), "{tables}");
}
