//! The networking part of the config: `[interface.X]`, `[network.X]`, a
//! zone's `network`, `address` and `ports`, a guest's `nics` and `ports`.
//!
//! Owns the value syntax (CIDRs, MACs, port forwards), the checks that
//! involve several units (an address used twice, a host port claimed twice,
//! subnets that overlap, host interface names that clash) and the stable
//! derivations: a bridged zone's address when it has none, a MAC from a unit
//! name, the host-side interface names. Pure: nothing here does I/O.
//!
//! Invariants of a validated config: every unit address lies inside its
//! network's subnet and is neither the network's own address, the subnet's
//! network or broadcast address, nor any other unit's; every derived name
//! fits IFNAMSIZ and no two clash; derivations depend only on names and
//! the set of explicit addresses, so a restart or a reload that keeps a
//! unit keeps its address and MAC.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use toml::Spanned;

use super::document::{RawDocument, RawUnitKind, Reporter};
use super::names;
use super::raw::{RawInterface, RawNetwork};
use super::{Interface, InterfaceAddress, Network, NetworkDef, PortForward, Proto, Unit, UnitKind};

/// Longest kernel interface name: `IFNAMSIZ` (16) less the NUL.
pub const MAX_IFNAME: usize = 15;

/// An address with a prefix length, as in `10.88.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address (host bits kept: it is an interface address).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside this subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = mask32(self.prefix);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = mask128(self.prefix);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = if self.prefix <= other.prefix {
            self
        } else {
            other
        };
        let longer = if std::ptr::eq(shorter, self) {
            other
        } else {
            self
        };
        shorter.contains(longer.addr)
    }

    /// The subnet itself, host bits cleared (`10.88.0.0/24`).
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// FNV-1a, 64 bits: a hash whose value is fixed by its definition, so
/// derived names and addresses never change with the toolchain.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator, so ("ab", "c") and ("a", "bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The MAC of interface `index` of unit `unit`: locally administered,
/// unicast, stable for the name.
pub fn derive_mac(unit: &str, index: usize) -> [u8; 6] {
    let h = fnv1a(&[unit.as_bytes(), index.to_string().as_bytes()]).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// The bridge of network `name`: `zn-NAME` when it fits, else `zn-` and a
/// hash of the name.
pub fn bridge_name(name: &str) -> String {
    let plain = format!("zn-{name}");
    if plain.len() <= MAX_IFNAME {
        plain
    } else {
        format!("zn-{:08x}", fnv1a(&[name.as_bytes()]) as u32)
    }
}

/// The host end of a zone's veth, before its incarnation suffix
/// (`zvXXXXXXXX`, 10 bytes; see `net::plan::veth_name`).
pub fn zone_ifname(unit: &str) -> String {
    format!("zv{:08x}", fnv1a(&[unit.as_bytes()]) as u32)
}

/// The tap of a guest's interface `index` (`ztXXXXXXXX`, `-N` after the
/// first).
pub fn tap_ifname(unit: &str, index: usize) -> String {
    let base = format!("zt{:08x}", fnv1a(&[unit.as_bytes()]) as u32);
    if index == 0 {
        base
    } else {
        format!("{base}-{index}")
    }
}

/// Formats a MAC as `02:ab:...`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a MAC written as six colon-separated hex bytes (also what the
/// monitor's `--net mac=` takes).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses `HOST:PORT[/tcp|/udp]` or `PORT[/tcp|/udp]` (same port on both
/// sides).
pub fn parse_port(text: &str) -> Option<PortForward> {
    let (ports, proto) = match text.split_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some(_) => return None,
        None => (text, Proto::Tcp),
    };
    let port = |s: &str| -> Option<u16> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u16>().ok().filter(|&p| p != 0)
    };
    let (host_port, unit_port) = match ports.split_once(':') {
        Some((h, u)) => (port(h)?, port(u)?),
        None => (port(ports)?, port(ports)?),
    };
    Some(PortForward {
        proto,
        host_port,
        port: unit_port,
    })
}

/// A kernel interface name: 1 to 15 bytes, no `/`, `:`, whitespace or NUL,
/// not `.` or `..` (dev_valid_name in the kernel).
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// Reports at `span`, naming the key and section.
fn err(rep: &mut Reporter<'_>, span: Range<usize>, key: &str, label: &str, message: &str) {
    rep.at(span, format!("invalid `{key}` in {label}: {message}"));
}

/// `[interface.X]` sections.
pub fn interfaces(
    raw: &[(Spanned<String>, RawInterface)],
    rep: &mut Reporter<'_>,
) -> Vec<Interface> {
    let mut out = Vec::new();
    for (name, r) in raw {
        let label = format!("[interface.{}]", name.get_ref());
        let mut ok = true;
        if !is_valid_ifname(name.get_ref()) {
            rep.at(
                name.span(),
                format!(
                    "invalid interface name in {label}: a kernel interface name is 1 to {MAX_IFNAME} bytes without '/', ':' or spaces"
                ),
            );
            ok = false;
        }
        let address = match &r.address {
            None => InterfaceAddress::Static(Vec::new()),
            Some(a) if a.get_ref().items() == ["dhcp"] => InterfaceAddress::Dhcp,
            Some(a) => {
                let mut list = Vec::new();
                for item in a.get_ref().items() {
                    match Cidr::parse(item) {
                        Some(c) => list.push(c),
                        None => {
                            err(
                                rep,
                                a.span(),
                                "address",
                                &label,
                                &format!(
                                    "\"{}\" is not \"dhcp\" or an address with its prefix length, as in \"192.0.2.10/24\" or \"2001:db8::10/64\"",
                                    item.escape_debug()
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                InterfaceAddress::Static(list)
            }
        };
        let mut gateway = None;
        if let Some(g) = &r.gateway {
            match (g.get_ref().parse::<IpAddr>(), &address) {
                (Err(_), _) => {
                    err(
                        rep,
                        g.span(),
                        "gateway",
                        &label,
                        "not an IP address, as in \"192.0.2.1\"",
                    );
                    ok = false;
                }
                (Ok(_), InterfaceAddress::Dhcp) => {
                    err(
                        rep,
                        g.span(),
                        "gateway",
                        &label,
                        "a DHCP lease brings its own router; remove gateway or give static addresses",
                    );
                    ok = false;
                }
                (Ok(ip), InterfaceAddress::Static(list)) => {
                    if list.iter().any(|c| c.contains(ip)) {
                        gateway = Some(ip);
                    } else {
                        err(
                            rep,
                            g.span(),
                            "gateway",
                            &label,
                            "the gateway is in none of the interface's subnets; it must be reachable on the link",
                        );
                        ok = false;
                    }
                }
            }
        }
        let mtu = match &r.mtu {
            None => None,
            Some(m) => match u32::try_from(*m.get_ref()) {
                Ok(v) if (68..=65535).contains(&v) => Some(v),
                _ => {
                    err(rep, m.span(), "mtu", &label, "an MTU is 68 to 65535 bytes");
                    ok = false;
                    None
                }
            },
        };
        if ok {
            out.push(Interface {
                name: name.get_ref().clone(),
                address,
                gateway,
                mtu,
            });
        }
    }
    out
}

/// `[network.X]` sections, each with its derived bridge name; subnets may
/// not overlap.
pub fn networks(raw: &[(Spanned<String>, RawNetwork)], rep: &mut Reporter<'_>) -> Vec<NetworkDef> {
    let mut out: Vec<NetworkDef> = Vec::new();
    for (name, r) in raw {
        let label = format!("[network.{}]", name.get_ref());
        let mut ok = true;
        if !names::is_valid_unit_name(name.get_ref()) {
            rep.at(
                name.span(),
                format!(
                    "invalid name `{}` in {label}; network names are 1 to 32 characters of a-z, 0-9 and '-', starting with a letter or digit",
                    name.get_ref().escape_debug()
                ),
            );
            ok = false;
        }
        let address = match &r.address {
            None => {
                rep.at(
                    name.span(),
                    format!(
                        "{label} has no `address`; it is required: the host's address on the bridge, whose subnet the units share, as in address = \"10.88.0.1/24\""
                    ),
                );
                None
            }
            Some(a) => match Cidr::parse(a.get_ref()) {
                Some(
                    c @ Cidr {
                        addr: IpAddr::V4(ip),
                        prefix: 8..=30,
                    },
                ) if !is_network_or_broadcast(&c, ip) => Some(c),
                _ => {
                    err(
                        rep,
                        a.span(),
                        "address",
                        &label,
                        &format!(
                            "\"{}\" is not an IPv4 host address with a prefix of 8 to 30, as in \"10.88.0.1/24\"",
                            a.get_ref().escape_debug()
                        ),
                    );
                    None
                }
            },
        };
        let address6 = match (&r.address6, &address) {
            (None, _) => None,
            (Some(a), v4) => match Cidr::parse(a.get_ref()) {
                Some(
                    c @ Cidr {
                        addr: IpAddr::V6(_),
                        ..
                    },
                ) if v4.is_none_or(|v4| u32::from(128 - c.prefix) >= u32::from(32 - v4.prefix)) => {
                    Some(c)
                }
                _ => {
                    err(
                        rep,
                        a.span(),
                        "address6",
                        &label,
                        &format!(
                            "\"{}\" is not an IPv6 address with a prefix that leaves as many host bits as the IPv4 subnet, as in \"fd88::1/64\"",
                            a.get_ref().escape_debug()
                        ),
                    );
                    ok = false;
                    None
                }
            },
        };
        let mut dns = Vec::new();
        for d in r.dns.iter().flatten() {
            match d.get_ref().parse::<IpAddr>() {
                Ok(ip) => dns.push(ip),
                Err(_) => {
                    err(
                        rep,
                        d.span(),
                        "dns",
                        &label,
                        &format!(
                            "\"{}\" is not an IP address; nameservers are given by address",
                            d.get_ref().escape_debug()
                        ),
                    );
                    ok = false;
                }
            }
        }
        let Some(address) = address else { continue };
        let mut overlap = false;
        for other in &out {
            let mine = [Some(address), address6];
            let theirs = [Some(other.address), other.address6];
            let clash = mine
                .iter()
                .flatten()
                .any(|m| theirs.iter().flatten().any(|t| m.overlaps(t)));
            if clash && let Some(a) = r.address.as_ref() {
                let line = raw
                    .iter()
                    .find(|(n, _)| n.get_ref() == &other.name)
                    .map_or(0, |(n, _)| rep.position(n.span().start).0);
                err(
                    rep,
                    a.span(),
                    "address",
                    &label,
                    &format!(
                        "its subnet overlaps that of [network.{}] (line {line}); give each network its own subnet",
                        other.name
                    ),
                );
                overlap = true;
            }
        }
        if ok && !overlap {
            out.push(NetworkDef {
                name: name.get_ref().clone(),
                bridge: bridge_name(name.get_ref()),
                address,
                address6,
                nat: r.nat.as_ref().is_some_and(|n| *n.get_ref()),
                dns,
                dhcp: r.dhcp.as_ref().is_some_and(|d| *d.get_ref()),
            });
        }
    }
    out
}

fn is_network_or_broadcast(subnet: &Cidr, ip: Ipv4Addr) -> bool {
    let mask = mask32(subnet.prefix);
    let ip = u32::from(ip);
    ip & !mask == 0 || ip & !mask == !mask
}

/// Checks an explicit unit address against its network: inside the
/// subnet, not the network's own, not the subnet's network or broadcast
/// address. Returns what is wrong.
pub fn check_unit_address(net: &NetworkDef, text: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = text.parse().map_err(|_| {
        format!(
            "\"{}\" is not an IPv4 address; give the address alone, as in \"10.88.0.2\" (the prefix is the network's)",
            text.escape_debug()
        )
    })?;
    if !net.address.contains(IpAddr::V4(ip)) {
        return Err(format!(
            "{ip} is outside the subnet {} of network `{}`",
            net.address.network(),
            net.name
        ));
    }
    if is_network_or_broadcast(&net.address, ip) {
        return Err(format!(
            "{ip} is the network or broadcast address of {}",
            net.address.network()
        ));
    }
    if IpAddr::V4(ip) == net.address.addr {
        return Err(format!(
            "{ip} is the host's own address on network `{}`",
            net.name
        ));
    }
    Ok(ip)
}

/// The IPv6 address that goes with `v4` on `net`: the IPv6 prefix with
/// the IPv4 address's host part (`10.88.0.7` on `fd88::1/64` is `fd88::7`).
pub fn address6_for(net: &NetworkDef, v4: Ipv4Addr) -> Option<Ipv6Addr> {
    let v6 = net.address6?;
    let IpAddr::V6(base) = v6.network().addr else {
        return None;
    };
    let host = u32::from(v4) & !mask32(net.address.prefix);
    Some(Ipv6Addr::from(u128::from(base) | u128::from(host)))
}

/// Picks an address for unit `name` on `net`, avoiding `taken`: the
/// name's hash chooses a first host number, then the next free one.
/// Only the name and the taken set matter, so it is stable.
pub fn derive_address(
    net: &NetworkDef,
    name: &str,
    taken: &std::collections::BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let IpAddr::V4(own) = net.address.addr else {
        return None;
    };
    let mask = mask32(net.address.prefix);
    let base = u32::from(own) & mask;
    // Host numbers 1 ..= size - 2: never the network or broadcast address.
    let hosts = (!mask).saturating_sub(1);
    if hosts == 0 {
        return None;
    }
    let start = (fnv1a(&[name.as_bytes()]) % u64::from(hosts)) as u32;
    (0..hosts)
        .map(|i| Ipv4Addr::from(base | ((start + i) % hosts + 1)))
        .find(|ip| *ip != own && !taken.contains(ip))
}

/// Where each explicit address of a unit was written: (unit, nic index).
type AddressSpans = HashMap<(String, usize), Range<usize>>;

fn address_spans(doc: &RawDocument) -> AddressSpans {
    let mut spans = HashMap::new();
    for raw in &doc.units {
        let name = raw.name.get_ref().clone();
        match &raw.kind {
            RawUnitKind::Zone(z, _) => {
                if let Some(a) = &z.address {
                    spans.insert((name, 0), a.span());
                }
            }
            RawUnitKind::Guest(g, _) => {
                for (i, nic) in g.nics.iter().flatten().enumerate() {
                    let span = match &nic.get_ref().address {
                        Some(a) => a.span(),
                        None => nic.span(),
                    };
                    spans.insert((name.clone(), i), span);
                }
            }
        }
    }
    spans
}

fn port_spans(doc: &RawDocument) -> HashMap<String, Vec<Range<usize>>> {
    doc.units
        .iter()
        .map(|raw| {
            let ports = match &raw.kind {
                RawUnitKind::Zone(z, _) => &z.ports,
                RawUnitKind::Guest(g, _) => &g.ports,
            };
            let spans = ports.iter().flatten().map(|p| p.span()).collect();
            (raw.name.get_ref().clone(), spans)
        })
        .collect()
}

/// The checks across units, then the derived addresses: explicit
/// addresses are unique per network, host ports are claimed once, MACs and
/// host interface names are unique; then each bridged zone without an
/// address gets one (in name order, around the explicit ones), and every
/// addressed interface its IPv6 twin.
pub(super) fn assign(
    doc: &RawDocument,
    units: &mut [Unit],
    networks: &[NetworkDef],
    interfaces: &[Interface],
    rep: &mut Reporter<'_>,
) {
    let spans = address_spans(doc);
    let header = |name: &str| -> Range<usize> {
        doc.units
            .iter()
            .find(|u| u.name.get_ref() == name)
            .map(|u| u.name.span())
            .unwrap_or(0..0)
    };

    // Explicit addresses, per network.
    let mut taken: BTreeMap<String, BTreeMap<Ipv4Addr, String>> = BTreeMap::new();
    for unit in units.iter() {
        for (i, nic) in unit.nics().iter().enumerate() {
            let Some(ip) = nic.address else { continue };
            let owners = taken.entry(nic.network.clone()).or_default();
            if let Some(first) = owners.get(&ip) {
                let span = spans.get(&(unit.name.clone(), i)).cloned();
                rep.at(
                    span.unwrap_or_else(|| header(&unit.name)),
                    format!(
                        "address {ip} of `{}` on network `{}` is already `{first}`'s; give each unit its own address",
                        unit.name, nic.network
                    ),
                );
            } else {
                owners.insert(ip, unit.name.clone());
            }
        }
    }

    // Derived zone addresses, in name order so the result does not depend
    // on the order of the file.
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| units[a].name.cmp(&units[b].name));
    for i in order {
        let name = units[i].name.clone();
        let UnitKind::Zone(zone) = &mut units[i].kind else {
            continue;
        };
        let Network::Bridged(nic) = &mut zone.network else {
            continue;
        };
        if nic.address.is_some() {
            continue;
        }
        let Some(net) = networks.iter().find(|n| n.name == nic.network) else {
            continue;
        };
        let owners = taken.entry(net.name.clone()).or_default();
        let set = owners.keys().copied().collect();
        match derive_address(net, &name, &set) {
            Some(ip) => {
                nic.address = Some(ip);
                owners.insert(ip, name.clone());
            }
            None => rep.at(
                header(&name),
                format!(
                    "network `{}` has no free address left for [zone.{name}]; give the network a larger subnet",
                    net.name
                ),
            ),
        }
    }

    // IPv6 twins.
    for unit in units.iter_mut() {
        let nics: &mut [super::Nic] = match &mut unit.kind {
            UnitKind::Zone(z) => match &mut z.network {
                Network::Bridged(nic) => std::slice::from_mut(&mut **nic),
                _ => &mut [],
            },
            UnitKind::Guest(g) => &mut g.nics,
        };
        for nic in nics {
            if let (Some(v4), Some(net)) =
                (nic.address, networks.iter().find(|n| n.name == nic.network))
            {
                nic.address6 = address6_for(net, v4);
            }
        }
    }

    // Host ports.
    let ports = port_spans(doc);
    let mut claimed: BTreeMap<(Proto, u16), String> = BTreeMap::new();
    for unit in units.iter() {
        for (i, p) in unit.ports().iter().enumerate() {
            let key = (p.proto, p.host_port);
            if let Some(first) = claimed.get(&key) {
                let span = ports
                    .get(&unit.name)
                    .and_then(|s| s.get(i))
                    .cloned()
                    .unwrap_or_else(|| header(&unit.name));
                rep.at(
                    span,
                    format!(
                        "host port {}/{} of `{}` is already forwarded to `{first}`; a host port goes to one unit",
                        p.host_port,
                        p.proto.name(),
                        unit.name
                    ),
                );
            } else {
                claimed.insert(key, unit.name.clone());
            }
        }
    }

    // MACs and host interface names.
    let mut macs: HashMap<[u8; 6], String> = HashMap::new();
    let mut ifnames: HashMap<String, String> = HashMap::new();
    for iface in interfaces {
        ifnames.insert(iface.name.clone(), format!("[interface.{}]", iface.name));
    }
    for net in networks {
        if let Some(first) = ifnames.get(&net.bridge) {
            let span = doc
                .networks
                .iter()
                .find(|(n, _)| n.get_ref() == &net.name)
                .map(|(n, _)| n.span())
                .unwrap_or(0..0);
            rep.at(
                span,
                format!(
                    "the bridge name `{}` of [network.{}] is also that of {first}; rename one of them",
                    net.bridge, net.name
                ),
            );
        }
        ifnames.insert(net.bridge.clone(), format!("[network.{}]", net.name));
    }
    for unit in units.iter() {
        for nic in unit.nics() {
            if let Some(first) = macs.get(&nic.mac) {
                rep.at(
                    header(&unit.name),
                    format!(
                        "MAC {} of `{}` is already `{first}`'s; give each interface its own",
                        format_mac(&nic.mac),
                        unit.name
                    ),
                );
            } else {
                macs.insert(nic.mac, unit.name.clone());
            }
            if let Some(first) = ifnames.get(&nic.host_ifname) {
                rep.at(
                    header(&unit.name),
                    format!(
                        "the host interface name `{}` derived for `{}` is also that of {first}; rename one of them",
                        nic.host_ifname, unit.name
                    ),
                );
            } else {
                ifnames.insert(nic.host_ifname.clone(), format!("`{}`", unit.name));
            }
        }
    }
}

/// Reads a MAC as written (`52:54:00:00:00:09`): six hex pairs, unicast.
pub fn check_mac(text: &str) -> Result<[u8; 6], String> {
    match parse_mac(text) {
        Some(mac) if mac[0] & 1 == 0 && mac != [0; 6] => Ok(mac),
        Some(_) => Err(format!(
            "{text} is a multicast or zero address; an interface needs a unicast MAC"
        )),
        None => Err(format!(
            "\"{}\" is not a MAC address; write six hex pairs, as in \"52:54:00:00:00:09\"",
            text.escape_debug()
        )),
    }
}

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn lan() -> NetworkDef {
        NetworkDef {
            name: "lan".into(),
            bridge: bridge_name("lan"),
            address: Cidr::parse("10.88.0.1/24").unwrap(),
            address6: Cidr::parse("fd88::1/64"),
            nat: true,
            dns: vec![],
            dhcp: false,
        }
    }

    #[test]
    fn cidrs_parse_contain_and_overlap() {
        let a = Cidr::parse("10.88.0.1/24").unwrap();
        assert!(a.contains("10.88.0.200".parse().unwrap()));
        assert!(!a.contains("10.88.1.1".parse().unwrap()));
        assert!(!a.contains("fd88::1".parse().unwrap()));
        assert_eq!(a.network().to_string(), "10.88.0.0/24");
        assert!(a.overlaps(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(Cidr::parse("10.0.0.0/8").unwrap().overlaps(&a));
        assert!(!a.overlaps(&Cidr::parse("10.89.0.1/24").unwrap()));
        for bad in [
            "10.88.0.1",
            "10.88.0.1/33",
            "10.88.0.1/",
            "x/24",
            "10.88.0.1/+4",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
        assert_eq!(Cidr::parse("fd88::1/64").unwrap().prefix, 64);
    }

    #[test]
    fn ports_parse_with_protocol_and_shorthand() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!((p.proto, p.host_port, p.port), (Proto::Tcp, 8080, 80));
        let p = parse_port("5353:53/udp").unwrap();
        assert_eq!((p.proto, p.host_port, p.port), (Proto::Udp, 5353, 53));
        let p = parse_port("443").unwrap();
        assert_eq!((p.host_port, p.port), (443, 443));
        for bad in [
            "0:80",
            "8080:",
            ":80",
            "8080:80/sctp",
            "70000:1",
            "a:b",
            "+1:2",
        ] {
            assert_eq!(parse_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn macs_are_derived_stable_local_unicast_and_distinct() {
        let a = derive_mac("web", 0);
        assert_eq!(a, derive_mac("web", 0));
        assert_eq!(a[0], 0x02);
        assert_ne!(a, derive_mac("web", 1));
        assert_ne!(a, derive_mac("db", 0));
        // The value is fixed by FNV-1a, not by the toolchain.
        assert_eq!(format_mac(&a), format_mac(&derive_mac("web", 0)));
        assert_eq!(check_mac("52:54:00:00:00:09").unwrap()[5], 9);
        assert!(check_mac("01:00:5e:00:00:01").is_err());
        assert!(check_mac("52:54:00:00:00").is_err());
        assert!(check_mac("52:54:00:00:00:09:01").is_err());
    }

    #[test]
    fn fnv1a_matches_its_published_test_vectors() {
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn host_interface_names_fit_ifnamsiz() {
        assert_eq!(bridge_name("lan"), "zn-lan");
        let long = bridge_name("a-rather-long-network-name");
        assert!(
            long.len() <= MAX_IFNAME && long.starts_with("zn-"),
            "{long}"
        );
        let z = zone_ifname("a-zone-name-that-is-32-chars-xxx");
        assert_eq!(z.len(), 10);
        assert_ne!(zone_ifname("web"), zone_ifname("db"));
        assert!(tap_ifname("router", 3).len() <= MAX_IFNAME);
        assert!(is_valid_ifname("eth0"));
        assert!(!is_valid_ifname("a-name-of-16-byt"));
        assert!(!is_valid_ifname("a/b"));
        assert!(!is_valid_ifname(".."));
    }

    #[test]
    fn derived_addresses_are_stable_and_avoid_taken_ones() {
        let net = lan();
        let none = BTreeSet::new();
        let a = derive_address(&net, "web", &none).unwrap();
        assert_eq!(a, derive_address(&net, "web", &none).unwrap());
        assert!(net.address.contains(IpAddr::V4(a)));
        assert_ne!(IpAddr::V4(a), net.address.addr);
        let taken: BTreeSet<Ipv4Addr> = [a].into();
        let b = derive_address(&net, "web", &taken).unwrap();
        assert_ne!(a, b);
        assert!(check_unit_address(&net, &b.to_string()).is_ok());
    }

    #[test]
    fn a_full_subnet_has_no_address_to_derive() {
        let mut net = lan();
        net.address = Cidr::parse("10.88.0.1/30").unwrap();
        let taken: BTreeSet<Ipv4Addr> = ["10.88.0.2".parse().unwrap()].into();
        assert_eq!(derive_address(&net, "x", &taken), None);
        let one = derive_address(&net, "x", &BTreeSet::new()).unwrap();
        assert_eq!(one.to_string(), "10.88.0.2");
    }

    #[test]
    fn unit_addresses_must_be_hosts_of_the_subnet() {
        let net = lan();
        assert!(check_unit_address(&net, "10.88.0.2").is_ok());
        for bad in [
            "10.88.1.2",
            "10.88.0.0",
            "10.88.0.255",
            "10.88.0.1",
            "x",
            "10.88.0.2/24",
        ] {
            assert!(check_unit_address(&net, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_twin_takes_the_ipv4_host_part() {
        let net = lan();
        let v6 = address6_for(&net, "10.88.0.7".parse().unwrap()).unwrap();
        assert_eq!(v6.to_string(), "fd88::7");
    }
}
