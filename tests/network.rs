//! Tier 2: zone networking on the host, for real, always inside network
//! namespaces the test makes (never the machine's own interfaces, routes
//! or firewall).
//!
//! Each test re-runs itself under `unshare --net` (a private namespace
//! standing in for the host) and does its work there; "zones" are
//! processes in network namespaces of their own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use zonit::config::Cidr;
use zonit::net::netlink::{self, Rtnl};
use zonit::net::plan::{Bridge, ZonePlan};

use common::{NetnsProc, in_private_netns, run_cmd as run};

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

/// A veth made without queue counts is allocated with a queue per CPU and
/// cut down to one once registered, which waits for an RCU grace period
/// with the rtnl lock held: the start of every other zone waits with it.
#[test]
fn a_zones_veth_is_allocated_with_one_queue_each_way_on_both_ends() {
    if !in_private_netns("a_zones_veth_is_allocated_with_one_queue_each_way_on_both_ends") {
        return;
    }
    let mut rtnl = Rtnl::new().unwrap();
    netlink::set_up_bridges(&mut rtnl, &[lan()]).unwrap();
    let zone = NetnsProc::new();
    let plan = zone_plan("zvq-0", "10.88.0.2/24", "fd88::2/64", 2);
    netlink::set_up_zone(&mut rtnl, &plan, zone.netns().as_fd(), "q").unwrap();
    let (_, host_end) = run(&["ip", "-d", "-o", "link", "show", "zvq-0"]);
    let (_, zone_end) = zone.run(&["ip", "-d", "-o", "link", "show", "eth0"]);
    for text in [host_end, zone_end] {
        assert!(text.contains("numtxqueues 1 numrxqueues 1"), "{text}");
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
address6 = "fd88::1/64"
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
        .arg(format!("--net=/proc/{}/ns/net", ns.pid()))
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
            .arg(format!("--net=/proc/{}/ns/net", ns.pid()))
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
    let peer = format!("/proc/{}/ns/net", outside.pid());
    for cmd in [
        vec![
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", &peer,
        ],
        vec!["ip", "addr", "add", "192.0.2.1/24", "dev", "up0"],
        vec!["ip", "addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"],
        vec!["ip", "link", "set", "up0", "up"],
        vec!["ip", "link", "set", "lo", "up"],
    ] {
        let (ok, text) = run(&cmd);
        assert!(ok, "{cmd:?}: {text}");
    }
    for cmd in [
        &["ip", "addr", "add", "192.0.2.2/24", "dev", "out0"][..],
        &[
            "ip",
            "addr",
            "add",
            "2001:db8::2/64",
            "dev",
            "out0",
            "nodad",
        ],
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

    let cases: [(&str, Option<&NetnsProc>, &str, u16, &str); 7] = [
        ("from outside", Some(&outside), "192.0.2.1", 8080, "zone-a"),
        (
            "from outside, IPv6",
            Some(&outside),
            "2001:db8::1",
            8080,
            "zone-a",
        ),
        (
            "a zone out through NAT, IPv6",
            Some(&a),
            "2001:db8::2",
            9000,
            "outside",
        ),
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

/// The config of the agent-level tests: two zones on a NAT network, one
/// with a port forward, and one without a network.
fn agent_units(dir: &std::path::Path) -> String {
    format!(
        "[network.lan]\naddress = \"10.88.0.1/24\"\naddress6 = \"fd88::1/64\"\nnat = true\ndns = [\"10.88.0.1\"]\n\n{}{}{}{}",
        common::zone(
            dir,
            "web",
            "exec busybox nc -ll -p 80 -e echo hello-from-web",
            "network = \"lan\"\naddress = \"10.88.0.2\"\nports = [\"8080:80\"]\nrestart = \"always\"",
        ),
        common::zone(dir, "client", "exec sleep 1000", "network = \"lan\""),
        common::zone(dir, "alone", "exec sleep 1000", ""),
        common::zone(dir, "shared", "exec sleep 1000", "network = \"host\""),
    )
}

fn host_links(prefix: &str) -> Vec<String> {
    let (_, text) = run(&["ip", "-o", "link", "show"]);
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn zones_on_a_network_under_the_agent_reach_each_other_the_host_and_the_outside() {
    if !in_private_netns(
        "zones_on_a_network_under_the_agent_reach_each_other_the_host_and_the_outside",
    ) {
        return;
    }
    run(&["ip", "link", "set", "lo", "up"]);
    let z = common::Zonit::start("net-agent", agent_units);
    for unit in ["web", "client", "alone"] {
        z.wait_state(unit, "running");
    }
    let exec = |unit: &str, cmd: &str| z.ctl(&["exec", unit, "--", "/bin/sh", "-c", cmd]);

    // status --json shows the addresses; client's was derived.
    let web = z.unit("web");
    assert_eq!(
        web["addresses"],
        serde_json::json!(["10.88.0.2", "fd88::2"])
    );
    let client_addr = z.unit("client")["addresses"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(client_addr.starts_with("10.88.0."), "{client_addr}");
    assert_eq!(z.unit("alone")["addresses"], serde_json::json!([]));

    // Inside: eth0 with its address, the default route, the files.
    let (code, out, err) = exec(
        "web",
        "ip -o addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts",
    );
    assert_eq!(code, 0, "{err}");
    for needle in [
        "10.88.0.2/24",
        "fd88::2/64",
        "default via 10.88.0.1 dev eth0",
        "nameserver 10.88.0.1",
        "10.88.0.2\tweb",
        &format!("{client_addr}\tclient"),
    ] {
        assert!(out.contains(needle), "no `{needle}` in:\n{out}");
    }
    // A zone without network sees only lo.
    let (_, out, _) = exec("alone", "ip -o link show");
    let links: Vec<&str> = out.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(links, ["lo"], "{out}");
    // network = "host": the agent's own interfaces, the bridge among them.
    z.wait_state("shared", "running");
    let (_, out, _) = exec("shared", "ip -o link show");
    assert!(out.contains("zn-lan"), "{out}");
    // A zone cannot change its address (no CAP_NET_ADMIN).
    let (code, _, _) = exec("web", "ip addr add 10.88.0.77/24 dev eth0");
    assert_ne!(code, 0, "a zone changed its address");
    let (_, out, _) = exec("web", "ip -o addr show eth0");
    assert!(!out.contains("10.88.0.77"), "{out}");
    for cmd in [
        "ip link set eth0 down",
        "ip route del default",
        "echo 10.0.0.1 web >> /etc/hosts",
        "echo nameserver 10.0.0.1 >> /etc/resolv.conf",
    ] {
        let (code, _, _) = exec("web", cmd);
        assert_ne!(code, 0, "a zone could: {cmd}");
    }

    // Zone to zone, over IPv4 and IPv6, and through the port forward.
    for (what, cmd, want) in [
        (
            "zone to zone",
            "busybox nc -w 3 10.88.0.2 80 </dev/null",
            "hello-from-web",
        ),
        (
            "zone to zone, IPv6",
            "busybox nc -w 3 fd88::2 80 </dev/null",
            "hello-from-web",
        ),
        (
            "hairpin through the host port",
            "busybox nc -w 3 10.88.0.1 8080 </dev/null",
            "hello-from-web",
        ),
    ] {
        let (_, out, err) = exec("client", cmd);
        assert!(out.contains(want), "{what}: {out} {err}\n{}", z.log_text());
    }
    // Host to zone, directly and through the port forward.
    assert_eq!(fetch(None, "10.88.0.2", 80), "hello-from-web");
    assert_eq!(fetch(None, "10.88.0.1", 8080), "hello-from-web");

    // Restarts: each incarnation gets a fresh link; none is left behind.
    for _ in 0..3 {
        let (code, _, err) = z.ctl(&["restart", "web"]);
        assert_eq!(code, 0, "{err}");
        z.wait_state("web", "running");
    }
    assert!(!z.log_text().contains("File exists"), "{}", z.log_text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while host_links("zv").len() != 2 {
        assert!(
            Instant::now() < deadline,
            "stale links: {:?}",
            host_links("zv")
        );
        sleep(Duration::from_millis(20));
    }
    assert_eq!(fetch(None, "10.88.0.1", 8080), "hello-from-web");
}

#[test]
fn the_agent_removes_its_bridges_and_table_at_exit_and_a_successor_recovers_after_sigkill() {
    if !in_private_netns(
        "the_agent_removes_its_bridges_and_table_at_exit_and_a_successor_recovers_after_sigkill",
    ) {
        return;
    }
    run(&["ip", "link", "set", "lo", "up"]);
    let z = common::Zonit::start("net-kill", agent_units);
    z.wait_state("web", "running");
    assert_eq!(host_links("zn-"), ["zn-lan"]);
    // SIGKILL: the bridge and the table stay behind.
    let (dir, config, socket) = z.kill_hard();
    assert_eq!(host_links("zn-"), ["zn-lan"]);
    assert!(run(&["nft", "list", "table", "inet", "zonit"]).0);

    // The next agent adopts the bridge, replaces the table, and works.
    let mut z = common::Zonit::launch(dir, config, socket);
    z.wait_state("web", "running");
    z.wait_state("client", "running");
    assert_eq!(fetch(None, "10.88.0.1", 8080), "hello-from-web");
    let (_, listing) = run(&["nft", "list", "table", "inet", "zonit"]);
    assert_eq!(
        listing.matches("dnat ip to 10.88.0.2:80").count(),
        2,
        "{listing}"
    );

    // An orderly exit leaves nothing.
    assert_eq!(z.terminate(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host_links("z").is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            host_links("z")
        );
        sleep(Duration::from_millis(20));
    }
    let (_, tables) = run(&["nft", "list", "tables"]);
    assert!(!tables.contains("zonit"), "{tables}");
}

#[test]
fn the_agent_gives_a_named_host_interface_its_addresses_mtu_and_default_route() {
    if !in_private_netns(
        "the_agent_gives_a_named_host_interface_its_addresses_mtu_and_default_route",
    ) {
        return;
    }
    let (ok, text) = run(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "peer0",
    ]);
    assert!(ok, "{text}");
    let z = common::Zonit::start("net-iface", |_| {
        "[interface.up0]\naddress = [\"192.0.2.10/24\", \"2001:db8::10/64\"]\ngateway = \"192.0.2.1\"\nmtu = 1400\n"
            .to_string()
    });
    z.wait_for("up0 configured", Duration::from_secs(5), || {
        run(&["ip", "route"])
            .1
            .contains("default via 192.0.2.1 dev up0")
    });
    let (_, link) = run(&["ip", "-o", "addr", "show", "dev", "up0"]);
    assert!(
        link.contains("192.0.2.10/24") && link.contains("2001:db8::10/64"),
        "{link}"
    );
    let (_, link) = run(&["ip", "-o", "link", "show", "dev", "up0"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
}

#[test]
fn a_zone_whose_host_link_name_is_taken_starts_at_once_with_the_next_name() {
    if !in_private_netns("a_zone_whose_host_link_name_is_taken_starts_at_once_with_the_next_name") {
        return;
    }
    // What a zone left running by a killed agent would hold.
    let taken = format!("{}-0", zonit::config::network::zone_ifname("web"));
    let (ok, text) = run(&[
        "ip", "link", "add", &taken, "type", "veth", "peer", "name", "x0",
    ]);
    assert!(ok, "{text}");
    let z = common::Zonit::start("net-taken", agent_units);
    z.wait_state("web", "running");
    assert_eq!(z.unit("web")["restarts"], 0, "{}", z.log_text());
    let next = format!("{}-1", zonit::config::network::zone_ifname("web"));
    assert!(link_exists(&next), "{}", z.log_text());
    assert_eq!(fetch(None, "10.88.0.2", 80), "hello-from-web");
}

#[test]
fn a_reload_updates_running_zones_hosts_and_removes_a_dropped_networks_bridge() {
    if !in_private_netns(
        "a_reload_updates_running_zones_hosts_and_removes_a_dropped_networks_bridge",
    ) {
        return;
    }
    run(&["ip", "link", "set", "lo", "up"]);
    let net =
        "[network.lan]\naddress = \"10.88.0.1/24\"\n[network.spare]\naddress = \"10.89.0.1/24\"\n";
    let z = common::Zonit::start("net-reload", |dir| {
        format!(
            "{net}{}",
            common::zone(
                dir,
                "web",
                "exec sleep 1000",
                "network = \"lan\"\naddress = \"10.88.0.2\""
            )
        )
    });
    z.wait_state("web", "running");
    let hosts = || z.ctl(&["exec", "web", "--", "cat", "/etc/hosts"]).1;
    assert!(!hosts().contains("client"), "{}", hosts());
    assert_eq!(host_links("zn-"), ["zn-lan", "zn-spare"]);

    // Add a zone on lan, drop the spare network.
    let dir = z.dir.clone();
    let text = std::fs::read_to_string(&z.config).unwrap();
    let text = text.replace("[network.spare]\naddress = \"10.89.0.1/24\"\n", "")
        + &common::zone(
            &dir,
            "client",
            "exec sleep 1000",
            "network = \"lan\"\naddress = \"10.88.0.7\"",
        );
    std::fs::write(&z.config, text).unwrap();
    let (code, _, err) = z.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    z.wait_state("client", "running");
    // web was not restarted, yet its hosts file names the new zone.
    assert_eq!(z.unit("web")["restarts"], 0);
    assert!(hosts().contains("10.88.0.7\tclient"), "{}", hosts());
    assert_eq!(host_links("zn-"), ["zn-lan"]);
}

#[test]
fn an_adopted_bridge_drops_the_addresses_of_an_older_config() {
    if !in_private_netns("an_adopted_bridge_drops_the_addresses_of_an_older_config") {
        return;
    }
    let mut rtnl = Rtnl::new().unwrap();
    netlink::set_up_bridges(&mut rtnl, &[lan()]).unwrap();
    let moved = Bridge {
        name: "zn-lan".into(),
        addresses: vec![cidr("10.90.0.1/24")],
    };
    netlink::set_up_bridges(&mut rtnl, &[moved]).unwrap();
    let (_, addrs) = run(&["ip", "-o", "addr", "show", "dev", "zn-lan"]);
    assert!(addrs.contains("10.90.0.1/24"), "{addrs}");
    assert!(
        !addrs.contains("10.88.0.1") && !addrs.contains("fd88::1"),
        "{addrs}"
    );
}
