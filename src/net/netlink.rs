//! The thin rtnetlink layer: bridges, veths, addresses, links up, routes,
//! over blocking netlink sockets on the agent's own thread.
//!
//! Owns: talking to the kernel for `plan::HostPlan` bridges and
//! `plan::ZonePlan` links. Every request asks for an acknowledgement and
//! waits for it, so an error comes back with the request that caused it.
//!
//! Invariants: nothing here deletes a zone's veth (the kernel does when
//! the zone's network namespace dies, without blocking the agent); the
//! agent's own network namespace is left only for the duration of one
//! `socket(2)` call (`Rtnl::in_netns`) and entered again before anything
//! else happens; sockets are close-on-exec.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols};

use super::plan::{Bridge, ZonePlan};
use crate::config::Cidr;

/// A failed netlink step, with what it was about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be made or used.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a request.
    #[error("unable to {what}: {err}")]
    Request {
        /// The step, naming the link (and namespace) it was about.
        what: String,
        /// The kernel's answer.
        #[source]
        err: io::Error,
    },
    /// A link that had to be a bridge is something else.
    #[error(
        "link {0} exists and is not a bridge; rename or delete it (zonit does not touch links it did not make)"
    )]
    NotABridge(String),
    /// Entering or leaving a network namespace failed.
    #[error("unable to {what}: {err}")]
    Namespace {
        /// The step.
        what: String,
        /// The cause.
        #[source]
        err: nix::Error,
    },
}

impl Error {
    /// The kernel said a link of that name exists already.
    pub fn is_link_exists(&self) -> bool {
        matches!(self, Error::Request { err, .. } if err.raw_os_error() == Some(libc::EEXIST))
    }
}

type Result<T> = std::result::Result<T, Error>;

/// An rtnetlink connection bound to one network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    /// Where the socket lives, for messages ("" for the agent's own).
    place: String,
}

/// The kernel's answers to one request, or the error it gave.
fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.abs())
}

impl Rtnl {
    /// A connection in the calling thread's network namespace.
    pub fn new() -> Result<Rtnl> {
        let mut socket = Socket::new(protocols::NETLINK_ROUTE).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(Error::Socket)?;
        Ok(Rtnl {
            socket,
            seq: 0,
            place: String::new(),
        })
    }

    /// A connection inside the network namespace `netns` (named `place`
    /// in errors). The socket keeps that namespace for its life; the
    /// thread goes back to its own namespace at once.
    pub fn in_netns(netns: BorrowedFd<'_>, place: &str) -> Result<Rtnl> {
        use nix::sched::{CloneFlags, setns};
        let own = File::open("/proc/thread-self/ns/net").map_err(|e| Error::Namespace {
            what: "open this thread's network namespace".into(),
            err: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        setns(netns, CloneFlags::CLONE_NEWNET).map_err(|err| Error::Namespace {
            what: format!("enter the network namespace of {place}"),
            err,
        })?;
        let made = Rtnl::new();
        // Back home before anything else, even if the socket failed.
        setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|err| Error::Namespace {
            what: format!("return from the network namespace of {place}"),
            err,
        })?;
        let mut rtnl = made?;
        rtnl.place = format!(" in {place}");
        Ok(rtnl)
    }

    /// Sends `msg` with `flags` and an ACK request; returns the kernel's
    /// replies (for a GET) once the ACK arrives.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(Error::Socket)?;

        let mut replies = Vec::new();
        let mut rx: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            rx.clear();
            let n = self.socket.recv(&mut rx, 0).map_err(Error::Socket)?;
            let mut off = 0;
            while off < n.min(rx.len()) {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..])
                    .map_err(|e| Error::Socket(io::Error::other(e.to_string())))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(Error::Request {
                                what: format!("{}{}", what(), self.place),
                                err: errno(code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// The index and kind of link `name`, if it exists.
    pub fn link(&mut self, name: &str) -> Result<Option<(u32, Option<InfoKind>)>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        let replies = match self.request(RouteNetlinkMessage::GetLink(msg), 0, || {
            format!("look up link {name}")
        }) {
            Ok(r) => r,
            Err(Error::Request { err, .. }) if err.raw_os_error() == Some(libc::ENODEV) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        for reply in replies {
            if let RouteNetlinkMessage::NewLink(link) = reply {
                let kind = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.clone()),
                        _ => None,
                    }),
                    _ => None,
                });
                return Ok(Some((link.header.index, kind)));
            }
        }
        Ok(None)
    }

    fn index(&mut self, name: &str) -> Result<u32> {
        match self.link(name)? {
            Some((index, _)) => Ok(index),
            None => Err(Error::Request {
                what: format!("find link {name}{}", self.place),
                err: errno(libc::ENODEV),
            }),
        }
    }

    /// Creates bridge `name`, or adopts it if a bridge of that name is
    /// there (left by an agent that was killed); returns its index.
    pub fn ensure_bridge(&mut self, name: &str) -> Result<u32> {
        if let Some((index, kind)) = self.link(name)? {
            return match kind {
                Some(InfoKind::Bridge) => Ok(index),
                _ => Err(Error::NotABridge(name.into())),
            };
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("create bridge {name}"),
        )?;
        self.index(name)
    }

    /// Adds (or keeps) `addr` on link `index` (named `name`). IPv6 addresses
    /// skip duplicate address detection: they are static, and a tentative
    /// address would refuse `bind(2)` for a second.
    pub fn add_address(&mut self, index: u32, name: &str, addr: &Cidr) -> Result<()> {
        let mut msg = address_message(index, addr);
        msg.attributes.push(AddressAttribute::Address(addr.addr));
        if addr.addr.is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("add address {addr} to {name}"),
        )?;
        Ok(())
    }

    /// The addresses on link `index` (named `name`), link-local ones left
    /// out (the kernel makes those).
    pub fn addresses(&mut self, index: u32, name: &str) -> Result<Vec<Cidr>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            || format!("list the addresses of {name}"),
        )?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(msg) = reply else {
                continue;
            };
            if msg.header.index != index {
                continue;
            }
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr
                && !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
            {
                out.push(Cidr {
                    addr: ip,
                    prefix: msg.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// Sets the MTU of link `index` (named `name`).
    pub fn set_mtu(&mut self, index: u32, name: &str, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(msg), 0, || {
            format!("set the MTU of {name} to {mtu}")
        })?;
        Ok(())
    }

    /// Makes link `index` (named `name`) a port of the bridge `bridge`
    /// (an index) and sets it up, in one request.
    pub fn attach_up(&mut self, index: u32, name: &str, bridge: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Controller(bridge));
        self.request(RouteNetlinkMessage::SetLink(msg), 0, || {
            format!("put {name} on its bridge and set it up")
        })?;
        Ok(())
    }

    /// Sets link `index` (named `name`) up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0, || {
            format!("set {name} up")
        })?;
        Ok(())
    }

    /// Creates veth `host` on bridge `bridge` (up), with its peer `peer`
    /// (MAC `mac`) born inside the network namespace `netns` of `zone`.
    pub fn create_veth(
        &mut self,
        host: &str,
        bridge: u32,
        peer: &str,
        mac: [u8; 6],
        netns: BorrowedFd<'_>,
        zone: &str,
    ) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.into()));
        peer_msg
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        peer_msg.attributes.extend(one_queue());
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(host.into()));
        msg.attributes.extend(one_queue());
        msg.attributes.push(LinkAttribute::Controller(bridge));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("create veth {host} with its peer {peer} in zone {zone}"),
        )?;
        Ok(())
    }

    /// Adds the default route via `gateway` on link `index` (named `name`).
    pub fn add_default_route(&mut self, index: u32, name: &str, gateway: IpAddr) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match gateway {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.table = libc::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Gateway(match gateway {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("add the default route via {gateway} on {name}"),
        )?;
        Ok(())
    }

    /// Deletes link `name` if it exists. Only for bridges at the agent's
    /// exit: a veth goes with its zone's namespace.
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let Some((index, _)) = self.link(name)? else {
            return Ok(());
        };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), 0, || {
            format!("delete link {name}")
        })?;
        Ok(())
    }

    /// The index and hardware address of link `name`.
    pub fn link_mac(&mut self, name: &str) -> Result<(u32, [u8; 6])> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), 0, || {
            format!("look up link {name}")
        })?;
        for reply in replies {
            if let RouteNetlinkMessage::NewLink(link) = reply {
                let mac = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                    _ => None,
                });
                if let Some(mac) = mac {
                    return Ok((link.header.index, mac));
                }
            }
        }
        Err(Error::Request {
            what: format!("find the Ethernet address of {name}{}", self.place),
            err: errno(libc::ENODEV),
        })
    }

    /// Removes `addr` from link `index` (named `name`); an address that is
    /// not there is no error.
    pub fn delete_address(&mut self, index: u32, name: &str, addr: &Cidr) -> Result<()> {
        let msg = address_message(index, addr);
        match self.request(RouteNetlinkMessage::DelAddress(msg), 0, || {
            format!("remove address {addr} from {name}")
        }) {
            Err(Error::Request { err, .. }) if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                Ok(())
            }
            other => other.map(drop),
        }
    }
}

/// One transmit and one receive queue, asked for explicitly. A veth is
/// allocated with a queue per possible CPU and, when the request names no
/// count, cut down to one after it is registered; cutting down a live
/// device's transmit queues waits for an RCU grace period with the rtnl
/// lock held (milliseconds on a busy machine, during which every other
/// zone's namespace set-up and every netlink request waits too). Named
/// counts make the kernel allocate one queue from the start.
fn one_queue() -> [LinkAttribute; 2] {
    [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)]
}

/// An address message for `addr` on link `index`.
fn address_message(index: u32, addr: &Cidr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = addr.prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.addr));
    msg
}

/// The network namespace of the process behind `pidfd` (named `place`
/// in errors), as a file descriptor. Through the pidfd, never a PID: under
/// `zonit run` the agent's /proc may belong to another PID namespace,
/// where the zone's PID names some other process. Refuses the agent's own
/// namespace, so a mistake can never configure the host's links as a
/// zone's.
pub fn netns_of(pidfd: BorrowedFd<'_>, place: &str) -> Result<OwnedFd> {
    use nix::sched::{CloneFlags, setns};
    let own_path = "/proc/thread-self/ns/net";
    let ns_error = |what: String, e: io::Error| Error::Namespace {
        what,
        err: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let own = File::open(own_path)
        .map_err(|e| ns_error("open this thread's network namespace".into(), e))?;
    setns(pidfd, CloneFlags::CLONE_NEWNET).map_err(|err| Error::Namespace {
        what: format!("enter the network namespace of {place}"),
        err,
    })?;
    // /proc/thread-self is this thread whatever PID namespace /proc shows.
    let theirs = File::open(own_path);
    setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|err| Error::Namespace {
        what: format!("return from the network namespace of {place}"),
        err,
    })?;
    let theirs =
        theirs.map_err(|e| ns_error(format!("open the network namespace of {place}"), e))?;
    let same = match (own.metadata(), theirs.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => true,
    };
    if same {
        return Err(Error::Namespace {
            what: format!("use the network namespace of {place}: it is the agent's own"),
            err: nix::Error::EINVAL,
        });
    }
    Ok(theirs.into())
}

/// Creates (or adopts) each bridge of the host plan, with its addresses,
/// and sets it up.
pub fn set_up_bridges(rtnl: &mut Rtnl, bridges: &[Bridge]) -> Result<()> {
    for bridge in bridges {
        let index = rtnl.ensure_bridge(&bridge.name)?;
        // An adopted bridge may carry the addresses of an older config.
        for stale in rtnl
            .addresses(index, &bridge.name)?
            .into_iter()
            .filter(|a| !bridge.addresses.contains(a))
        {
            rtnl.delete_address(index, &bridge.name, &stale)?;
        }
        for addr in &bridge.addresses {
            rtnl.add_address(index, &bridge.name, addr)?;
        }
        rtnl.set_up(index, &bridge.name)?;
    }
    Ok(())
}

/// Configures host NIC `iface` as the config says: MTU, static
/// addresses, up, default route. A DHCP interface is only brought up
/// here; its address comes from its DHCP client (`net::dhcp`).
pub fn set_up_interface(rtnl: &mut Rtnl, iface: &crate::config::Interface) -> Result<()> {
    let name = iface.name.as_str();
    let index = rtnl.index(name)?;
    if let Some(mtu) = iface.mtu {
        rtnl.set_mtu(index, name, mtu)?;
    }
    if let crate::config::InterfaceAddress::Static(list) = &iface.address {
        for addr in list {
            rtnl.add_address(index, name, addr)?;
        }
    }
    rtnl.set_up(index, name)?;
    if let Some(gateway) = iface.gateway {
        rtnl.add_default_route(index, name, gateway)?;
    }
    Ok(())
}

/// Gives zone `zone` its network: the veth with its peer born in the
/// zone's namespace `netns`, then, inside, the addresses, the link up and
/// the default routes. `lo` is the zone init's.
pub fn set_up_zone(
    host: &mut Rtnl,
    plan: &ZonePlan,
    netns: BorrowedFd<'_>,
    zone: &str,
) -> Result<()> {
    let bridge = host.index(&plan.bridge)?;
    host.create_veth(
        &plan.host_ifname,
        bridge,
        plan.ifname,
        plan.mac,
        netns,
        zone,
    )?;
    let mut inside = Rtnl::in_netns(netns, &format!("zone {zone}"))?;
    let index = inside.index(plan.ifname)?;
    for addr in &plan.addresses {
        inside.add_address(index, plan.ifname, addr)?;
    }
    inside.set_up(index, plan.ifname)?;
    inside.add_default_route(index, plan.ifname, IpAddr::V4(plan.gateway4))?;
    if let Some(g6) = plan.gateway6 {
        inside.add_default_route(index, plan.ifname, IpAddr::V6(g6))?;
    }
    Ok(())
}

/// Turns routing on (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`)
/// where the plan needs it; zones reach beyond their bridge through it.
pub fn enable_forwarding(v4: bool, v6: bool) -> io::Result<()> {
    if v4 {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    }
    if v6 {
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}
