//! The DHCPv4 server of one `[network.X]` with `dhcp = true`, pure: a
//! request comes in, at most one reply goes out.
//!
//! Owns the static leases: each guest NIC on the network that has an
//! `address` gets that address for its MAC, with the network's subnet
//! mask, its address as router, and its nameservers.
//!
//! Invariants: a MAC the config does not name gets no answer at all, so
//! another server on the same bridge (or none) is free to serve it; a
//! REQUEST for any address but the MAC's own is refused with a NAK; the
//! server never hands out an address the config does not give.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};

use super::{decode, encode, mask_of};
use crate::config::{Config, NetworkDef};

/// Lease time offered: the addresses are static, so this only bounds how
/// long a guest keeps an address a reload took away.
pub const LEASE_TIME: Duration = Duration::from_secs(3600);

/// A reply and where it goes (to port 68).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The DHCP message.
    pub packet: Vec<u8>,
    /// The client's address when it has one (renewals), else broadcast.
    pub to: Ipv4Addr,
}

/// What a network's server knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The host's address on the bridge: server id and router.
    address: Ipv4Addr,
    prefix: u8,
    dns: Vec<Ipv4Addr>,
    leases: BTreeMap<[u8; 6], Ipv4Addr>,
}

impl Server {
    /// The server of network `net` in `config`; `dns` are the nameservers
    /// handed out (the ones the network's zones get in resolv.conf).
    pub fn new(config: &Config, net: &NetworkDef, dns: Vec<Ipv4Addr>) -> Server {
        let std::net::IpAddr::V4(address) = net.address.addr else {
            // Validation makes a network's `address` IPv4.
            return Server {
                address: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                dns,
                leases: BTreeMap::new(),
            };
        };
        let leases = config
            .units
            .iter()
            .filter(|u| matches!(u.kind, crate::config::UnitKind::Guest(_)))
            .flat_map(|u| u.nics())
            .filter(|nic| nic.network == net.name)
            .filter_map(|nic| Some((nic.mac, nic.address?)))
            .collect();
        Server {
            address,
            prefix: net.address.prefix,
            dns,
            leases,
        }
    }

    /// The static leases, MAC to address.
    pub fn leases(&self) -> &BTreeMap<[u8; 6], Ipv4Addr> {
        &self.leases
    }

    /// The answer to DHCP message `bytes` (a UDP payload to port 67).
    pub fn answer(&self, bytes: &[u8]) -> Option<Reply> {
        let req = decode(bytes)?;
        if req.opcode() != v4::Opcode::BootRequest
            || req.htype() != v4::HType::Eth
            || !req.giaddr().is_unspecified()
        {
            return None;
        }
        let mac: [u8; 6] = req.chaddr().try_into().ok()?;
        let ours = *self.leases.get(&mac)?;
        let kind = req.opts().msg_type()?;
        let (reply_kind, yiaddr) = match kind {
            MessageType::Discover => (MessageType::Offer, ours),
            MessageType::Request => {
                if let Some(DhcpOption::ServerIdentifier(id)) =
                    req.opts().get(OptionCode::ServerIdentifier)
                    && *id != self.address
                {
                    return None; // the client took another server's offer
                }
                let wanted = match req.opts().get(OptionCode::RequestedIpAddress) {
                    Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                    _ => req.ciaddr(),
                };
                if wanted == ours {
                    (MessageType::Ack, ours)
                } else {
                    (MessageType::Nak, Ipv4Addr::UNSPECIFIED)
                }
            }
            MessageType::Decline => {
                log::warn!(
                    "DHCP: {} declined {ours}: another host on the bridge uses that address",
                    crate::config::network::format_mac(&mac)
                );
                return None;
            }
            // Release of a static lease changes nothing; INFORM is not served.
            _ => return None,
        };
        let mut msg = v4::Message::new_with_id(
            req.xid(),
            if reply_kind == MessageType::Ack {
                req.ciaddr()
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            &mac,
        );
        msg.set_opcode(v4::Opcode::BootReply);
        msg.set_flags(req.flags());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(reply_kind));
        opts.insert(DhcpOption::ServerIdentifier(self.address));
        if reply_kind == MessageType::Nak {
            opts.insert(DhcpOption::Message(format!(
                "this host's address is {ours}"
            )));
        } else {
            let secs = LEASE_TIME.as_secs() as u32;
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
            opts.insert(DhcpOption::SubnetMask(mask_of(self.prefix)));
            opts.insert(DhcpOption::Router(vec![self.address]));
            if !self.dns.is_empty() {
                opts.insert(DhcpOption::DomainNameServer(self.dns.clone()));
            }
        }
        // A client with an address (renewing) is answered there; any
        // other is broadcast to, since a UDP socket cannot reach a MAC
        // that has no address yet.
        let to = if reply_kind != MessageType::Nak && !req.ciaddr().is_unspecified() {
            req.ciaddr()
        } else {
            Ipv4Addr::BROADCAST
        };
        Some(Reply {
            packet: encode(&msg)?,
            to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 9];

    fn config() -> Config {
        crate::config::parse(
            std::path::Path::new("t.toml"),
            r#"
[network.lan]
address = "10.88.0.1/24"
dhcp = true

[guest.router]
kernel = "/k"
nics = [{ network = "lan", mac = "52:54:00:00:00:09", address = "10.88.0.9" }]

[guest.other]
kernel = "/k"
nics = [{ network = "lan" }]
"#,
        )
        .unwrap()
    }

    fn server() -> Server {
        let c = config();
        Server::new(
            &c,
            c.network("lan").unwrap(),
            vec![Ipv4Addr::new(9, 9, 9, 9)],
        )
    }

    fn request(kind: MessageType, mac: &[u8], extra: &[DhcpOption]) -> Vec<u8> {
        let mut msg = v4::Message::new_with_id(
            0xabcd,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            mac,
        );
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            msg.opts_mut().insert(o.clone());
        }
        encode(&msg).unwrap()
    }

    #[test]
    fn leases_come_from_guest_nics_with_an_address_only() {
        let s = server();
        assert_eq!(
            s.leases().iter().collect::<Vec<_>>(),
            [(&GUEST_MAC, &Ipv4Addr::new(10, 88, 0, 9))]
        );
    }

    #[test]
    fn discover_from_a_known_mac_gets_its_static_address_and_the_network_options() {
        let reply = server()
            .answer(&request(MessageType::Discover, &GUEST_MAC, &[]))
            .unwrap();
        assert_eq!(reply.to, Ipv4Addr::BROADCAST);
        let msg = decode(&reply.packet).unwrap();
        assert_eq!(msg.opcode(), v4::Opcode::BootReply);
        assert_eq!(msg.xid(), 0xabcd);
        assert_eq!(msg.chaddr(), GUEST_MAC);
        assert_eq!(msg.yiaddr(), Ipv4Addr::new(10, 88, 0, 9));
        let o = msg.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Offer));
        let lan = Ipv4Addr::new(10, 88, 0, 1);
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(lan))
        );
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![lan]))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                9, 9, 9, 9
            )]))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
    }

    #[test]
    fn unknown_macs_and_guests_without_an_address_get_no_answer() {
        let s = server();
        let other = crate::config::network::derive_mac("other", 0);
        for mac in [&[2, 0, 0, 0, 0, 1][..], &other[..]] {
            assert_eq!(s.answer(&request(MessageType::Discover, mac, &[])), None);
            assert_eq!(s.answer(&request(MessageType::Request, mac, &[])), None);
        }
        assert_eq!(s.answer(b"garbage"), None);
    }

    #[test]
    fn request_for_the_static_address_is_acked_and_a_foreign_one_naked() {
        let s = server();
        let ours = Ipv4Addr::new(10, 88, 0, 9);
        let lan = Ipv4Addr::new(10, 88, 0, 1);
        let ack = s
            .answer(&request(
                MessageType::Request,
                &GUEST_MAC,
                &[
                    DhcpOption::RequestedIpAddress(ours),
                    DhcpOption::ServerIdentifier(lan),
                ],
            ))
            .unwrap();
        let msg = decode(&ack.packet).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(msg.yiaddr(), ours);
        let nak = s
            .answer(&request(
                MessageType::Request,
                &GUEST_MAC,
                &[DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 88, 0, 50))],
            ))
            .unwrap();
        assert_eq!(nak.to, Ipv4Addr::BROADCAST);
        let msg = decode(&nak.packet).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn a_renewal_is_acked_by_unicast_to_the_client() {
        let mut msg = v4::Message::new_with_id(
            7,
            Ipv4Addr::new(10, 88, 0, 9),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &GUEST_MAC,
        );
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        let reply = server().answer(&encode(&msg).unwrap()).unwrap();
        assert_eq!(reply.to, Ipv4Addr::new(10, 88, 0, 9));
        let ack = decode(&reply.packet).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.ciaddr(), Ipv4Addr::new(10, 88, 0, 9));
    }

    #[test]
    fn a_request_meant_for_another_server_is_left_alone() {
        let reply = server().answer(&request(
            MessageType::Request,
            &GUEST_MAC,
            &[
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 88, 0, 9)),
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 88, 0, 254)),
            ],
        ));
        assert_eq!(reply, None);
    }

    #[test]
    fn release_and_inform_get_no_answer() {
        let s = server();
        for kind in [
            MessageType::Release,
            MessageType::Inform,
            MessageType::Decline,
        ] {
            assert_eq!(s.answer(&request(kind, &GUEST_MAC, &[])), None);
        }
    }
}
