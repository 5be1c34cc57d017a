//! What the network of a config looks like, as data: the bridges and the
//! firewall ruleset the agent sets up on the host, and per zone the veth,
//! its addresses and routes, and the `/etc/resolv.conf` and `/etc/hosts`
//! it sees. Pure: the netlink layer applies these plans.
//!
//! Invariants: the host plan depends only on the config, so an agent that
//! starts again (after a reload, or after a predecessor was killed) plans
//! the same bridges and the same table and converges by replacing them; a
//! zone's plan depends only on the config and the zone's incarnation number
//! (which picks the host end's name, so a restart never meets the previous
//! incarnation's link, which the kernel deletes with its namespace
//! asynchronously).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{Cidr, Config, Network, NetworkDef, Nic, Proto, UnitKind};

/// Name of the one nf_tables table zonit owns (family `inet`).
pub const TABLE: &str = "zonit";

/// What the host needs for every `[network.X]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    /// One bridge per network, in file order.
    pub bridges: Vec<Bridge>,
    /// The `zonit` table's rules.
    pub ruleset: Ruleset,
    /// Routing between interfaces is needed (`net.ipv4.ip_forward`).
    pub forward_v4: bool,
    /// IPv6 routing is needed (`net.ipv6.conf.all.forwarding`).
    pub forward_v6: bool,
}

/// A bridge and the host's addresses on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// Kernel name.
    pub name: String,
    /// The host's addresses (IPv4 first).
    pub addresses: Vec<Cidr>,
}

/// The nat rules of table `inet zonit`, by chain. Each rule is one line of
/// nft syntax in [`Rule::to_nft`]; `net::nft` turns them into netlink.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// `type nat hook prerouting priority dstnat`: port forwards for
    /// traffic arriving from outside or from a zone.
    pub prerouting: Vec<Rule>,
    /// `type nat hook output priority dstnat`: port forwards for the host's
    /// own connections to its addresses.
    pub output: Vec<Rule>,
    /// `type nat hook postrouting priority srcnat`: masquerading.
    pub postrouting: Vec<Rule>,
}

/// One nat rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Traffic to `proto`/`port` on any of the host's own addresses goes to
    /// `to`:`to_port` (`fib daddr type local`). `skip_loopback` leaves out
    /// 127.0.0.0/8 and ::1, which a zone's answer could never reach back.
    Dnat {
        /// Transport protocol.
        proto: Proto,
        /// Host port.
        port: u16,
        /// The unit's address.
        to: IpAddr,
        /// The unit's port.
        to_port: u16,
        /// Leave out loopback destinations (the output chain).
        skip_loopback: bool,
    },
    /// Traffic from `subnet` leaving by any interface but `bridge` takes
    /// the outgoing interface's address.
    Masquerade {
        /// The network's subnet.
        subnet: Cidr,
        /// The network's bridge.
        bridge: String,
    },
    /// A forwarded connection from `subnet` back into `bridge` (a unit
    /// reaching another one through a host port) takes the host's address,
    /// so the answer returns through the host and is translated back.
    Hairpin {
        /// The network's subnet.
        subnet: Cidr,
        /// The network's bridge.
        bridge: String,
    },
}

impl Rule {
    /// The rule in nft syntax, as `nft list` shows it (documentation,
    /// logs, and the read-back test).
    pub fn to_nft(&self) -> String {
        match self {
            Rule::Dnat {
                proto,
                port,
                to,
                to_port,
                skip_loopback,
            } => {
                let (family, lo, target) = match to {
                    IpAddr::V4(a) => ("ip", "127.0.0.0/8", format!("{a}:{to_port}")),
                    IpAddr::V6(a) => ("ip6", "::1", format!("[{a}]:{to_port}")),
                };
                // As nft lists it: a match on the address implies the
                // family, so nft leaves out the explicit `meta nfproto`.
                let guard = if *skip_loopback {
                    format!("{family} daddr != {lo}")
                } else {
                    format!(
                        "meta nfproto {}",
                        if to.is_ipv4() { "ipv4" } else { "ipv6" }
                    )
                };
                format!(
                    "{guard} fib daddr type local {} dport {port} dnat {family} to {target}",
                    proto.name()
                )
            }
            Rule::Masquerade { subnet, bridge } => format!(
                "{} saddr {} oifname != \"{bridge}\" masquerade",
                family_of(subnet),
                subnet.network()
            ),
            Rule::Hairpin { subnet, bridge } => format!(
                "ct status dnat {} saddr {} oifname \"{bridge}\" masquerade",
                family_of(subnet),
                subnet.network()
            ),
        }
    }
}

fn family_of(c: &Cidr) -> &'static str {
    if c.addr.is_ipv4() { "ip" } else { "ip6" }
}

/// The host side of `config`'s networks.
pub fn host_plan(config: &Config) -> HostPlan {
    let mut ruleset = Ruleset::default();
    for net in &config.networks {
        let subnets = std::iter::once(net.address).chain(net.address6);
        for subnet in subnets {
            if net.nat {
                ruleset.postrouting.push(Rule::Masquerade {
                    subnet,
                    bridge: net.bridge.clone(),
                });
            }
        }
    }
    for unit in &config.units {
        let Some(nic) = unit.addressed_nic() else {
            continue;
        };
        let targets: Vec<IpAddr> = nic
            .address
            .map(IpAddr::V4)
            .into_iter()
            .chain(nic.address6.map(IpAddr::V6))
            .collect();
        for p in unit.ports() {
            for to in &targets {
                for (chain, skip_loopback) in [
                    (&mut ruleset.prerouting, false),
                    (&mut ruleset.output, true),
                ] {
                    chain.push(Rule::Dnat {
                        proto: p.proto,
                        port: p.host_port,
                        to: *to,
                        to_port: p.port,
                        skip_loopback,
                    });
                }
            }
        }
    }
    let has_ports = config.units.iter().any(|u| !u.ports().is_empty());
    if has_ports {
        for net in &config.networks {
            for subnet in std::iter::once(net.address).chain(net.address6) {
                ruleset.postrouting.push(Rule::Hairpin {
                    subnet,
                    bridge: net.bridge.clone(),
                });
            }
        }
    }
    HostPlan {
        bridges: config
            .networks
            .iter()
            .map(|n| Bridge {
                name: n.bridge.clone(),
                addresses: std::iter::once(n.address).chain(n.address6).collect(),
            })
            .collect(),
        forward_v4: !config.networks.is_empty(),
        forward_v6: config.networks.iter().any(|n| n.address6.is_some()),
        ruleset,
    }
}

/// A bridged zone's network, for one start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonePlan {
    /// The bridge the host end joins.
    pub bridge: String,
    /// Host end of the veth, unique to this incarnation.
    pub host_ifname: String,
    /// Name of the zone's end, inside the zone.
    pub ifname: &'static str,
    /// MAC of the zone's end.
    pub mac: [u8; 6],
    /// The zone's addresses on `eth0`, with the network's prefixes.
    pub addresses: Vec<Cidr>,
    /// Default IPv4 route via the host.
    pub gateway4: Ipv4Addr,
    /// Default IPv6 route via the host, when the network has IPv6.
    pub gateway6: Option<Ipv6Addr>,
}

/// How many names a zone's host end cycles through; the kernel deletes a
/// dead zone's veth within milliseconds, far less than 16 restarts take.
pub const INCARNATIONS: u32 = 16;

/// The host end of a zone's veth for incarnation `n`: `zvXXXXXXXX-N`.
pub fn veth_name(base: &str, n: u32) -> String {
    format!("{base}-{:x}", n % INCARNATIONS)
}

/// The plan of `nic` (a bridged zone's) on `net`, for incarnation `n`.
/// `None` if the nic has no address (never so for a validated zone).
pub fn zone_plan(net: &NetworkDef, nic: &Nic, n: u32) -> Option<ZonePlan> {
    let v4 = nic.address?;
    let IpAddr::V4(gateway4) = net.address.addr else {
        return None;
    };
    let mut addresses = vec![Cidr {
        addr: IpAddr::V4(v4),
        prefix: net.address.prefix,
    }];
    let mut gateway6 = None;
    if let (Some(v6), Some(net6)) = (nic.address6, net.address6) {
        addresses.push(Cidr {
            addr: IpAddr::V6(v6),
            prefix: net6.prefix,
        });
        if let IpAddr::V6(g) = net6.addr {
            gateway6 = Some(g);
        }
    }
    Some(ZonePlan {
        bridge: net.bridge.clone(),
        host_ifname: veth_name(&nic.host_ifname, n),
        ifname: "eth0",
        mac: nic.mac,
        addresses,
        gateway4,
        gateway6,
    })
}

/// `/etc/resolv.conf` for units on `net`: its `dns`, else the host's file
/// (`host`) with loopback nameservers left out, since a zone cannot reach
/// the host's loopback. `None` when no nameserver is left: the zone's own
/// file is then left alone.
pub fn resolv_conf(net: &NetworkDef, host: Option<&str>) -> Option<String> {
    let mut out = String::from("# written by zonit\n");
    if !net.dns.is_empty() {
        for ip in &net.dns {
            out.push_str(&format!("nameserver {ip}\n"));
        }
        return Some(out);
    }
    let mut servers = 0;
    for line in host?.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["nameserver", addr, ..] => {
                // A scoped IPv6 address (fe80::1%eth0) names a host link.
                let ip = addr.parse::<IpAddr>();
                if ip.is_ok_and(|ip| !ip.is_loopback()) {
                    out.push_str(&format!("nameserver {addr}\n"));
                    servers += 1;
                }
            }
            ["search" | "domain" | "options", ..] => {
                out.push_str(&words.join(" "));
                out.push('\n');
            }
            _ => {}
        }
    }
    (servers > 0).then_some(out)
}

/// `/etc/hosts` of unit `name` (with host name `hostname`): loopback, the
/// unit itself, then every other unit with an address on a network it is
/// on, by unit name, in file order.
pub fn hosts(config: &Config, name: &str, hostname: &str) -> String {
    let mut out = String::from(
        "# written by zonit\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let Some(me) = config.unit(name) else {
        return out;
    };
    let names = if hostname == name {
        name.to_owned()
    } else {
        format!("{hostname} {name}")
    };
    for nic in me.nics() {
        for ip in nic_addresses(nic) {
            out.push_str(&format!("{ip}\t{names}\n"));
        }
    }
    let mine: Vec<&str> = me.nics().iter().map(|n| n.network.as_str()).collect();
    for unit in &config.units {
        if unit.name == name {
            continue;
        }
        for nic in unit.nics() {
            if !mine.contains(&nic.network.as_str()) {
                continue;
            }
            for ip in nic_addresses(nic) {
                out.push_str(&format!("{ip}\t{}\n", unit.name));
            }
        }
    }
    out
}

fn nic_addresses(nic: &Nic) -> impl Iterator<Item = IpAddr> + '_ {
    nic.address
        .map(IpAddr::V4)
        .into_iter()
        .chain(nic.address6.map(IpAddr::V6))
}

/// The zone plan of unit `name` in `config`, if it is a bridged zone.
pub fn zone_plan_of<'c>(
    config: &'c Config,
    name: &str,
    n: u32,
) -> Option<(ZonePlan, &'c NetworkDef)> {
    let unit = config.unit(name)?;
    let UnitKind::Zone(zone) = &unit.kind else {
        return None;
    };
    let Network::Bridged(nic) = &zone.network else {
        return None;
    };
    let net = config.network(&nic.network)?;
    Some((zone_plan(net, nic, n)?, net))
}

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[network.lan]
address = "10.88.0.1/24"
address6 = "fd88::1/64"
nat = true

[network.back]
address = "10.99.0.1/24"
dns = ["10.99.0.53", "fd99::53"]

[zone.web]
root = "/z/web"
command = ["/x"]
network = "lan"
address = "10.88.0.2"
hostname = "www"
ports = ["8080:80", "5353:53/udp"]

[zone.db]
root = "/z/db"
command = ["/x"]
network = "lan"
address = "10.88.0.3"

[zone.other]
root = "/z/other"
command = ["/x"]
network = "back"
address = "10.99.0.2"

[zone.alone]
root = "/z/alone"
command = ["/x"]

[guest.vm]
kernel = "/k"
nics = [{ network = "lan", address = "10.88.0.9" }]
ports = ["2222:22"]
"#;

    fn config() -> Config {
        crate::config::parse(Path::new("t.toml"), CONFIG).unwrap()
    }

    #[test]
    fn host_plan_has_a_bridge_per_network_with_the_hosts_addresses() {
        let plan = host_plan(&config());
        let shown: Vec<(String, Vec<String>)> = plan
            .bridges
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    b.addresses.iter().map(|a| a.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "zn-lan".to_owned(),
                    vec!["10.88.0.1/24".to_owned(), "fd88::1/64".to_owned()]
                ),
                ("zn-back".to_owned(), vec!["10.99.0.1/24".to_owned()]),
            ]
        );
        assert!(plan.forward_v4 && plan.forward_v6);
    }

    #[test]
    fn ruleset_masquerades_nat_networks_and_forwards_ports_from_outside_host_and_zones() {
        let plan = host_plan(&config());
        let rules = |chain: &[Rule]| chain.iter().map(Rule::to_nft).collect::<Vec<_>>();
        assert_eq!(
            rules(&plan.ruleset.prerouting),
            [
                "meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.88.0.2:80",
                "meta nfproto ipv6 fib daddr type local tcp dport 8080 dnat ip6 to [fd88::2]:80",
                "meta nfproto ipv4 fib daddr type local udp dport 5353 dnat ip to 10.88.0.2:53",
                "meta nfproto ipv6 fib daddr type local udp dport 5353 dnat ip6 to [fd88::2]:53",
                "meta nfproto ipv4 fib daddr type local tcp dport 2222 dnat ip to 10.88.0.9:22",
                "meta nfproto ipv6 fib daddr type local tcp dport 2222 dnat ip6 to [fd88::9]:22",
            ]
        );
        assert_eq!(plan.ruleset.output.len(), 6);
        assert_eq!(
            plan.ruleset.output[0].to_nft(),
            "ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080 dnat ip to 10.88.0.2:80"
        );
        assert_eq!(
            rules(&plan.ruleset.postrouting),
            [
                "ip saddr 10.88.0.0/24 oifname != \"zn-lan\" masquerade",
                "ip6 saddr fd88::/64 oifname != \"zn-lan\" masquerade",
                "ct status dnat ip saddr 10.88.0.0/24 oifname \"zn-lan\" masquerade",
                "ct status dnat ip6 saddr fd88::/64 oifname \"zn-lan\" masquerade",
                "ct status dnat ip saddr 10.99.0.0/24 oifname \"zn-back\" masquerade",
            ]
        );
    }

    #[test]
    fn a_config_without_networks_plans_nothing() {
        let config = crate::config::parse(Path::new("t.toml"), "").unwrap();
        let plan = host_plan(&config);
        assert!(plan.bridges.is_empty() && !plan.forward_v4 && !plan.forward_v6);
        assert_eq!(plan.ruleset, Ruleset::default());
    }

    #[test]
    fn zone_plan_gives_eth0_its_addresses_and_routes_via_the_host() {
        let config = config();
        let (plan, _) = zone_plan_of(&config, "web", 0).unwrap();
        assert_eq!(plan.bridge, "zn-lan");
        assert_eq!(plan.ifname, "eth0");
        let addrs: Vec<String> = plan.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.88.0.2/24", "fd88::2/64"]);
        assert_eq!(plan.gateway4.to_string(), "10.88.0.1");
        assert_eq!(plan.gateway6.unwrap().to_string(), "fd88::1");
        assert!(plan.host_ifname.len() <= 15);
        assert!(zone_plan_of(&config, "alone", 0).is_none());
        assert!(zone_plan_of(&config, "vm", 0).is_none());
    }

    #[test]
    fn each_incarnation_of_a_zone_gets_its_own_host_link_name() {
        let config = config();
        let names: Vec<String> = (0..INCARNATIONS)
            .map(|n| zone_plan_of(&config, "web", n).unwrap().0.host_ifname)
            .collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert_eq!(
            names[0],
            zone_plan_of(&config, "web", INCARNATIONS)
                .unwrap()
                .0
                .host_ifname
        );
    }

    #[test]
    fn resolv_conf_uses_the_networks_dns_or_the_hosts_without_loopback() {
        let config = config();
        let back = config.network("back").unwrap();
        assert_eq!(
            resolv_conf(back, Some("nameserver 1.1.1.1\n")).unwrap(),
            "# written by zonit\nnameserver 10.99.0.53\nnameserver fd99::53\n"
        );
        let lan = config.network("lan").unwrap();
        let host = "# comment\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.53\nsearch example.org\noptions edns0 trust-ad\n";
        assert_eq!(
            resolv_conf(lan, Some(host)).unwrap(),
            "# written by zonit\nnameserver 192.0.2.53\nsearch example.org\noptions edns0 trust-ad\n"
        );
        assert_eq!(resolv_conf(lan, Some("nameserver 127.0.0.53\n")), None);
        assert_eq!(resolv_conf(lan, None), None);
    }

    #[test]
    fn hosts_names_the_zone_and_every_unit_on_its_networks() {
        let config = config();
        assert_eq!(
            hosts(&config, "web", "www"),
            "# written by zonit\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.88.0.2\twww web\nfd88::2\twww web\n\
             10.88.0.3\tdb\nfd88::3\tdb\n\
             10.88.0.9\tvm\nfd88::9\tvm\n"
        );
        let other = hosts(&config, "other", "other");
        assert!(other.contains("10.99.0.2\tother\n"));
        assert!(!other.contains("web"), "{other}");
    }
}
