//! The thin layer of DHCP on the agent's loop: the sockets, the clients'
//! leases put in place through the rtnetlink layer, and the agent-facing
//! [`Dhcp`] that holds one client per `[interface.X] address = "dhcp"`
//! and one server per `[network.X] dhcp = true`.
//!
//! A client sends from a UDP socket bound to `0.0.0.0:68` on its
//! interface (`SO_BINDTODEVICE`, `SO_BROADCAST`), which the kernel lets
//! broadcast before the interface has an address. It hears replies on an
//! `AF_PACKET` socket filtered to UDP port 68: before the interface has
//! an address, the kernel's reverse path filter (`rp_filter` 1 or 2, the
//! default of many distributions) drops every reply on its way to a UDP
//! socket, since no route leads back to the server. A server is one UDP
//! socket on port 67 bound to its bridge, which has its address.
//!
//! Invariants: every socket is non-blocking and close-on-exec and is
//! registered with the agent's poll under a token from [`TOKEN_BASE`] up;
//! the clients' timers are the only time DHCP wakes the agent, so a
//! bound client costs no wake-up until T1; a failure is logged with its
//! interface and never ends the agent.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, sockopt};

use super::client::{Action, Client, Lease};
use super::server::Server;
use super::{CLIENT_PORT, SERVER_PORT, udp_payload};
use crate::config::{Cidr, Config, InterfaceAddress};
use crate::net::netlink::Rtnl;

/// DHCP's poll tokens start here, far above the agent's own.
pub const TOKEN_BASE: usize = 1 << 40;

/// Largest datagram read (an Ethernet frame's payload).
const MAX_PACKET: usize = 1500;

/// Most datagrams read from one socket per wake-up, so a flood cannot
/// hold the loop; what is left is read at the next turn.
const READ_BUDGET: usize = 64;

/// Accepts unfragmented IPv4 UDP packets to port 68; sees each packet
/// from its IP header on (a datagram packet socket).
const PORT_68: [libc::sock_filter; 9] = [
    bpf(0x30, 0, 0, 9),      // ldb [9]: IP protocol
    bpf(0x15, 0, 6, 17),     // jeq UDP, else drop
    bpf(0x28, 0, 0, 6),      // ldh [6]: flags and fragment offset
    bpf(0x45, 4, 0, 0x1fff), // jset fragment offset: drop
    bpf(0xb1, 0, 0, 0),      // ldxb 4*([0]&0xf): IP header length
    bpf(0x48, 0, 0, 2),      // ldh [x+2]: UDP destination port
    bpf(0x15, 0, 1, CLIENT_PORT as u32),
    bpf(0x06, 0, 0, 0xffff), // accept
    bpf(0x06, 0, 0, 0),      // drop
];

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A UDP socket bound to `0.0.0.0:port` on `device` that may broadcast.
fn udp_on(device: &str, port: u16) -> io::Result<mio::net::UdpSocket> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::BindToDevice, &device.into())?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
    socket::bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
    )?;
    Ok(mio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)))
}

/// A client's two sockets.
struct ClientSocket {
    /// Sends; what it receives is read from `packet` instead.
    udp: mio::net::UdpSocket,
    packet: OwnedFd,
}

impl ClientSocket {
    fn open(ifname: &str, ifindex: u32) -> io::Result<ClientSocket> {
        let udp = udp_on(ifname, CLIENT_PORT)?;
        // Replies reach the packet socket; keep this one's queue tiny.
        socket::setsockopt(&udp, sockopt::RcvBuf, &0)?;
        let packet = crate::sys::net::packet_socket(ifindex, &PORT_68)?;
        Ok(ClientSocket { udp, packet })
    }

    fn send(&self, packet: &[u8], to: Ipv4Addr) -> io::Result<()> {
        self.udp
            .send_to(packet, SocketAddrV4::new(to, SERVER_PORT).into())
            .map(drop)
    }

    /// The DHCP payloads waiting on the packet socket (up to the
    /// budget), and whether more may be waiting.
    fn receive(&self) -> (Vec<Vec<u8>>, bool) {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_PACKET];
        let mut more = true;
        for _ in 0..READ_BUDGET {
            match socket::recv(self.packet.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    if let Some(p) = udp_payload(&buf[..n.min(buf.len())], CLIENT_PORT) {
                        out.push(p.to_vec());
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    more = false; // EAGAIN: drained
                    break;
                }
            }
        }
        // Drop what the UDP socket got too (the same replies, when the
        // reverse path filter is off); its queue holds about one.
        while self.udp.recv_from(&mut buf).is_ok() {}
        (out, more)
    }
}

/// A client on a host NIC.
struct Uplink {
    ifname: String,
    ifindex: u32,
    /// The config sets the MTU; the server's is ignored.
    fixed_mtu: bool,
    client: Client,
    socket: ClientSocket,
    token: Token,
    /// The last read stopped at its budget.
    more: bool,
}

impl Uplink {
    fn read(&mut self, now: Instant) {
        let (packets, more) = self.socket.receive();
        self.more = more;
        for packet in packets {
            let actions = self.client.on_packet(&packet, now);
            self.carry_out(actions);
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { packet, to } => {
                    if let Err(e) = self.socket.send(&packet, to) {
                        log::warn!(
                            "interface {}: unable to send a DHCP message to {to}: {e}",
                            self.ifname
                        );
                    }
                }
                Action::Apply(lease) => match self.apply(&lease) {
                    Ok(()) => log::info!(
                        "interface {}: DHCP lease {}/{} from {}{}{}",
                        self.ifname,
                        lease.address,
                        lease.prefix,
                        lease.server,
                        lease
                            .router
                            .map(|r| format!(", router {r}"))
                            .unwrap_or_default(),
                        lease
                            .time
                            .map(|t| format!(", {} s", t.as_secs()))
                            .unwrap_or_else(|| ", infinite".into()),
                    ),
                    Err(e) => log::error!(
                        "interface {}: unable to apply the DHCP lease {}: {e}",
                        self.ifname,
                        lease.address
                    ),
                },
                Action::Drop(lease) => {
                    let done = Rtnl::new().and_then(|mut r| {
                        r.delete_address(self.ifindex, &self.ifname, &cidr(&lease))
                    });
                    match done {
                        Ok(()) => log::info!(
                            "interface {}: DHCP lease {} dropped",
                            self.ifname,
                            lease.address
                        ),
                        Err(e) => log::warn!("interface {}: {e}", self.ifname),
                    }
                }
            }
        }
    }

    fn apply(&self, lease: &Lease) -> Result<(), crate::net::netlink::Error> {
        let mut rtnl = Rtnl::new()?;
        if let (Some(mtu), false) = (lease.mtu, self.fixed_mtu) {
            rtnl.set_mtu(self.ifindex, &self.ifname, mtu.into())?;
        }
        rtnl.add_address(self.ifindex, &self.ifname, &cidr(lease))?;
        if let Some(router) = lease.router {
            rtnl.add_default_route(self.ifindex, &self.ifname, IpAddr::V4(router))?;
        }
        Ok(())
    }
}

fn cidr(lease: &Lease) -> Cidr {
    Cidr {
        addr: IpAddr::V4(lease.address),
        prefix: lease.prefix,
    }
}

/// A server on a bridge.
struct Served {
    network: String,
    bridge: String,
    server: Server,
    udp: mio::net::UdpSocket,
    token: Token,
    /// The last read stopped at its budget.
    more: bool,
}

impl Served {
    fn serve(&mut self) {
        let mut buf = [0u8; MAX_PACKET];
        self.more = true;
        for _ in 0..READ_BUDGET {
            let n = match self.udp.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.more = false;
                    break;
                }
            };
            let Some(reply) = self.server.answer(&buf[..n]) else {
                continue;
            };
            let to = SocketAddrV4::new(reply.to, CLIENT_PORT);
            if let Err(e) = self.udp.send_to(&reply.packet, to.into()) {
                log::warn!(
                    "network {}: unable to send a DHCP reply to {to}: {e}",
                    self.network
                );
            }
        }
    }
}

/// Every DHCP client and server of the agent.
#[derive(Default)]
pub struct Dhcp {
    uplinks: Vec<Uplink>,
    servers: Vec<Served>,
    next_token: usize,
}

impl Dhcp {
    /// Whether `token` is one of DHCP's.
    pub fn owns(token: Token) -> bool {
        token.0 >= TOKEN_BASE
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(TOKEN_BASE + self.next_token)
    }

    /// Brings clients and servers in line with `config` (at start and at
    /// every reload, after the bridges are in place): a client for each
    /// DHCP interface (one that stays in the config keeps its lease), a
    /// server for each DHCP network with the leases `config` gives now.
    pub fn apply(&mut self, config: &Config, registry: &Registry, now: Instant) {
        let wanted: Vec<&crate::config::Interface> = config
            .interfaces
            .iter()
            .filter(|i| i.address == InterfaceAddress::Dhcp)
            .collect();
        for mut gone in self
            .uplinks
            .extract_if(.., |u| !wanted.iter().any(|i| i.name == u.ifname))
        {
            let actions = gone.client.release(now);
            gone.carry_out(actions);
            let _ = registry.deregister(&mut SourceFd(&gone.socket.packet.as_raw_fd()));
        }
        for iface in wanted {
            if let Some(up) = self.uplinks.iter_mut().find(|u| u.ifname == iface.name) {
                up.fixed_mtu = iface.mtu.is_some();
                continue;
            }
            let token = self.token();
            match start_client(&iface.name, iface.mtu.is_some(), token, registry, now) {
                Ok(up) => {
                    log::info!("interface {}: DHCP client started", iface.name);
                    self.uplinks.push(up);
                }
                Err(e) => log::error!(
                    "interface {}: unable to start the DHCP client: {e}; the interface has no address",
                    iface.name
                ),
            }
        }

        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").ok();
        let nets: Vec<_> = config.networks.iter().filter(|n| n.dhcp).collect();
        for mut gone in self.servers.extract_if(.., |s| {
            !nets
                .iter()
                .any(|n| n.name == s.network && n.bridge == s.bridge)
        }) {
            let _ = registry.deregister(&mut gone.udp);
        }
        for net in nets {
            let dns = crate::net::plan::resolv_conf(net, host_resolv.as_deref())
                .map(|text| nameservers_v4(&text))
                .unwrap_or_default();
            let server = Server::new(config, net, dns);
            if let Some(s) = self.servers.iter_mut().find(|s| s.network == net.name) {
                s.server = server;
                continue;
            }
            let token = self.token();
            let opened = udp_on(&net.bridge, SERVER_PORT).and_then(|mut udp| {
                registry.register(&mut udp, token, Interest::READABLE)?;
                Ok(udp)
            });
            match opened {
                Ok(udp) => {
                    log::info!(
                        "network {}: DHCP server on {} for {} static lease(s)",
                        net.name,
                        net.bridge,
                        server.leases().len()
                    );
                    self.servers.push(Served {
                        network: net.name.clone(),
                        bridge: net.bridge.clone(),
                        server,
                        udp,
                        token,
                        more: false,
                    });
                }
                Err(e) => log::error!(
                    "network {}: unable to start the DHCP server on {}: {e}; guests on it get no lease",
                    net.name,
                    net.bridge
                ),
            }
        }
    }

    /// The earliest client timer; now, when a socket has datagrams left
    /// from the last read.
    pub fn deadline(&self) -> Option<Instant> {
        if self.uplinks.iter().any(|u| u.more) || self.servers.iter().any(|s| s.more) {
            return Some(Instant::now());
        }
        self.uplinks
            .iter()
            .filter_map(|u| u.client.deadline())
            .min()
    }

    /// Reads what the last wake-up left on sockets, and runs the clients
    /// whose timer is due.
    pub fn on_timer(&mut self, now: Instant) {
        for up in &mut self.uplinks {
            if up.more {
                up.read(now);
            }
            let actions = up.client.on_timer(now);
            up.carry_out(actions);
        }
        for s in self.servers.iter_mut().filter(|s| s.more) {
            s.serve();
        }
    }

    /// Reads the socket behind `token`.
    pub fn on_ready(&mut self, token: Token, now: Instant) {
        if let Some(up) = self.uplinks.iter_mut().find(|u| u.token == token) {
            up.read(now);
        } else if let Some(s) = self.servers.iter_mut().find(|s| s.token == token) {
            s.serve();
        }
    }

    /// Gives every lease back and closes every socket (orderly shutdown).
    pub fn release(&mut self, registry: &Registry, now: Instant) {
        for mut up in self.uplinks.drain(..) {
            let actions = up.client.release(now);
            up.carry_out(actions);
            let _ = registry.deregister(&mut SourceFd(&up.socket.packet.as_raw_fd()));
        }
        for mut s in self.servers.drain(..) {
            let _ = registry.deregister(&mut s.udp);
        }
    }
}

fn start_client(
    ifname: &str,
    fixed_mtu: bool,
    token: Token,
    registry: &Registry,
    now: Instant,
) -> io::Result<Uplink> {
    let (ifindex, mac) = Rtnl::new()
        .and_then(|mut r| r.link_mac(ifname))
        .map_err(io::Error::other)?;
    let socket = ClientSocket::open(ifname, ifindex)?;
    registry.register(
        &mut SourceFd(&socket.packet.as_fd().as_raw_fd()),
        token,
        Interest::READABLE,
    )?;
    let seed = RandomState::new().hash_one((ifname, mac));
    Ok(Uplink {
        ifname: ifname.into(),
        ifindex,
        fixed_mtu,
        client: Client::new(mac, seed, now),
        socket,
        token,
        more: false,
    })
}

/// The IPv4 `nameserver` lines of a resolv.conf.
fn nameservers_v4(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_the_ipv4_ones_of_resolv_conf() {
        let text = "# x\nnameserver 10.0.0.1\nnameserver fd00::1\nsearch lan\nnameserver 9.9.9.9\n";
        assert_eq!(
            nameservers_v4(text),
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(9, 9, 9, 9)]
        );
    }
}
