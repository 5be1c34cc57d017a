//! DHCPv4 for zonit's networking: a client that takes the address of a
//! host NIC (`[interface.X] address = "dhcp"`) and a server that hands
//! guests on a bridge their static addresses (`[network.X] dhcp = true`).
//!
//! Owns: the pure client state machine (`client`), the pure server
//! (`server`), the sockets and the applying of leases (`socket`), and
//! here what both sides share: encoding with the BOOTP minimum size and
//! pulling a DHCP message out of a raw IPv4 packet.
//!
//! Invariants: the pure parts read no clock and do no I/O (time comes in,
//! actions go out); nothing here panics on any packet from the wire.

pub mod client;
pub mod server;
pub mod socket;

use std::net::Ipv4Addr;

use dhcproto::{Decodable, Decoder, Encodable, Encoder, v4};

/// The server's UDP port.
pub const SERVER_PORT: u16 = 67;
/// The client's UDP port.
pub const CLIENT_PORT: u16 = 68;

/// Every message zonit sends is padded to this size: the fixed BOOTP part
/// (236 bytes), the magic cookie and 308 bytes of options, the smallest
/// datagram every host must accept (576 bytes with IP and UDP headers).
/// Some servers (QEMU's user network among them) drop shorter requests.
pub const MIN_LEN: usize = 548;

/// `msg` on the wire, padded with zero (`Pad`) options to [`MIN_LEN`].
/// `None` only if the encoder refuses the message (a value too long for
/// its option), which zonit's own messages never are.
pub fn encode(msg: &v4::Message) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(MIN_LEN);
    msg.encode(&mut Encoder::new(&mut buf)).ok()?;
    if buf.len() < MIN_LEN {
        buf.resize(MIN_LEN, 0);
    }
    Some(buf)
}

/// The DHCP message in `bytes`, if it is one.
pub fn decode(bytes: &[u8]) -> Option<v4::Message> {
    v4::Message::decode(&mut Decoder::new(bytes)).ok()
}

/// The UDP payload of IPv4 packet `packet` if it is an unfragmented UDP
/// datagram to port `port` with a valid IP header checksum. The UDP
/// checksum is not checked: on virtual links (veth, tap) the kernel hands
/// a packet socket datagrams whose checksum is still to be filled in;
/// the DHCP layer checks the transaction id and hardware address instead.
pub fn udp_payload(packet: &[u8], port: u16) -> Option<&[u8]> {
    let first = *packet.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
    if packet[9] != 17 || fragment != 0 || total < ihl + 8 || total > packet.len() {
        return None;
    }
    if checksum(&packet[..ihl]) != 0 {
        return None;
    }
    let udp = &packet[ihl..total];
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if dport != port || len < 8 || len > udp.len() {
        return None;
    }
    Some(&udp[8..len])
}

/// The Internet checksum of `data` (0 for a header whose checksum is right).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The prefix length of netmask `mask` (its leading ones).
pub fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

/// The netmask of prefix length `prefix`.
pub fn mask_of(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 + UDP packet to `dport` carrying `payload`, with a correct
    /// header checksum.
    pub(crate) fn ip_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            17,
            0,
            0,
            10,
            0,
            2,
            2,
            255,
            255,
            255,
            255,
        ];
        let sum = checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp_len = 8 + payload.len();
        p.extend_from_slice(&67u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn udp_payload_is_found_for_the_right_port_only() {
        let p = ip_udp(68, b"hello");
        assert_eq!(udp_payload(&p, 68), Some(&b"hello"[..]));
        assert_eq!(udp_payload(&p, 67), None);
    }

    #[test]
    fn udp_payload_refuses_a_bad_header_checksum_truncation_and_fragments() {
        let good = ip_udp(68, b"hello");
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 1;
        assert_eq!(udp_payload(&bad_sum, 68), None);
        assert_eq!(udp_payload(&good[..30], 68), None);
        let mut fragment = good.clone();
        fragment[6] = 0x20; // more fragments
        let sum = checksum(&{
            let mut h = fragment[..20].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        fragment[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(udp_payload(&fragment, 68), None);
        for n in 0..good.len() {
            // Any prefix is refused or parsed, never a panic.
            let _ = udp_payload(&good[..n], 68);
        }
    }

    #[test]
    fn netmask_and_prefix_convert_both_ways() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), 24);
        assert_eq!(mask_of(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(mask_of(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(mask_of(32), Ipv4Addr::BROADCAST);
    }
}
