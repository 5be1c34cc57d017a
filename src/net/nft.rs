//! The `zonit` nf_tables table as netlink bytes, and sending it.
//!
//! Owns: lowering `plan::Ruleset` into nf_tables expressions (meta, cmp,
//! payload, bitwise, fib, ct, immediate, nat, masq) and framing them in one
//! nfnetlink batch, which the kernel applies all or nothing. The batch
//! makes sure the table exists, deletes it and creates it anew with every
//! chain and rule, so a new agent (after a reload, or after one that was
//! killed) replaces whatever an earlier one left, atomically; nobody ever
//! sees a half table.
//!
//! The encoding is pure (golden-byte tests below); [`apply`] is the only
//! side effect. No `nft` binary is involved.

use std::io;
use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols};

use super::plan::{Rule, Ruleset, TABLE};
use crate::config::{Cidr, Proto};

// netlink and nfnetlink framing (linux/netlink.h, linux/netfilter/nfnetlink.h).
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 0x2;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

// nf_tables (linux/netfilter/nf_tables.h).
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;

const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 1 << 5;
const NFT_NAT_DNAT: u32 = 1;
const IFNAMSIZ: usize = 16;

/// Netlink attributes, built into a byte buffer (host byte order for the
/// attribute headers, as netlink wants; values as each attribute wants).
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(kind, &v)
    }

    /// A big-endian u32: nf_tables attributes carry numbers in network order.
    fn be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    fn nested(&mut self, kind: u16, inner: &Attrs) -> &mut Self {
        self.put(kind | NLA_F_NESTED, &inner.0)
    }

    /// `NFTA_*_DATA { NFTA_DATA_VALUE bytes }`.
    fn data(&mut self, kind: u16, bytes: &[u8]) -> &mut Self {
        let mut inner = Attrs::default();
        inner.put(NFTA_DATA_VALUE, bytes);
        self.nested(kind, &inner)
    }
}

/// One nf_tables expression: its name and attributes.
struct Expr {
    name: &'static str,
    data: Attrs,
}

fn expr(name: &'static str, build: impl FnOnce(&mut Attrs)) -> Expr {
    let mut data = Attrs::default();
    build(&mut data);
    Expr { name, data }
}

fn meta(key: u32) -> Expr {
    expr("meta", |a| {
        a.be32(1, NFT_REG_1).be32(2, key);
    })
}

fn cmp(op: u32, value: &[u8]) -> Expr {
    expr("cmp", |a| {
        a.be32(1, NFT_REG_1).be32(2, op).data(3, value);
    })
}

fn payload(base: u32, offset: u32, len: u32) -> Expr {
    expr("payload", |a| {
        a.be32(1, NFT_REG_1)
            .be32(2, base)
            .be32(3, offset)
            .be32(4, len);
    })
}

fn bitwise(mask: &[u8]) -> Expr {
    let xor = vec![0u8; mask.len()];
    expr("bitwise", |a| {
        a.be32(1, NFT_REG_1)
            .be32(2, NFT_REG_1)
            .be32(3, mask.len() as u32)
            .data(4, mask)
            .data(5, &xor);
    })
}

fn immediate(reg: u32, value: &[u8]) -> Expr {
    expr("immediate", |a| {
        a.be32(1, reg).data(2, value);
    })
}

/// `meta nfproto ipv4|ipv6`: payload matches below read this family's header.
fn nfproto(v4: bool) -> Vec<Expr> {
    let family = if v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 };
    vec![meta(NFT_META_NFPROTO), cmp(NFT_CMP_EQ, &[family])]
}

/// `ip saddr SUBNET` / `ip6 saddr SUBNET`.
fn saddr_in(subnet: &Cidr) -> Vec<Expr> {
    let net = subnet.network();
    let (offset, addr, mask) = match net.addr {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(net.prefix))
                .unwrap_or(0);
            (12, a.octets().to_vec(), m.to_be_bytes().to_vec())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(net.prefix))
                .unwrap_or(0);
            (8, a.octets().to_vec(), m.to_be_bytes().to_vec())
        }
    };
    let mut out = nfproto(net.addr.is_ipv4());
    out.push(payload(
        NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        addr.len() as u32,
    ));
    out.push(bitwise(&mask));
    out.push(cmp(NFT_CMP_EQ, &addr));
    out
}

/// `oifname [!=] NAME`: the whole IFNAMSIZ buffer, so `zn-lan` never
/// matches `zn-lan2`.
fn oifname(op: u32, name: &str) -> Vec<Expr> {
    let mut buf = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    vec![meta(NFT_META_OIFNAME), cmp(op, &buf)]
}

fn masq() -> Expr {
    expr("masq", |_| {})
}

/// The expressions of one rule.
fn lower(rule: &Rule) -> Vec<Expr> {
    match rule {
        Rule::Masquerade { subnet, bridge } => {
            let mut e = saddr_in(subnet);
            e.extend(oifname(NFT_CMP_NEQ, bridge));
            e.push(masq());
            e
        }
        Rule::Hairpin { subnet, bridge } => {
            let mut e = vec![
                expr("ct", |a| {
                    a.be32(1, NFT_REG_1).be32(2, NFT_CT_STATUS);
                }),
                bitwise(&IPS_DST_NAT.to_ne_bytes()),
                cmp(NFT_CMP_NEQ, &0u32.to_ne_bytes()),
            ];
            e.extend(saddr_in(subnet));
            e.extend(oifname(NFT_CMP_EQ, bridge));
            e.push(masq());
            e
        }
        Rule::Dnat {
            proto,
            port,
            to,
            to_port,
            skip_loopback,
        } => {
            let mut e = nfproto(to.is_ipv4());
            if *skip_loopback {
                match to {
                    IpAddr::V4(_) => {
                        e.push(payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4));
                        e.push(bitwise(&[0xff, 0, 0, 0]));
                        e.push(cmp(NFT_CMP_NEQ, &[127, 0, 0, 0]));
                    }
                    IpAddr::V6(_) => {
                        e.push(payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16));
                        e.push(cmp(NFT_CMP_NEQ, &std::net::Ipv6Addr::LOCALHOST.octets()));
                    }
                }
            }
            // fib daddr type local
            e.push(expr("fib", |a| {
                a.be32(1, NFT_REG_1)
                    .be32(2, NFT_FIB_RESULT_ADDRTYPE)
                    .be32(3, NFTA_FIB_F_DADDR);
            }));
            e.push(cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes()));
            let l4 = match proto {
                Proto::Tcp => libc::IPPROTO_TCP as u8,
                Proto::Udp => libc::IPPROTO_UDP as u8,
            };
            e.push(meta(NFT_META_L4PROTO));
            e.push(cmp(NFT_CMP_EQ, &[l4]));
            e.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
            e.push(cmp(NFT_CMP_EQ, &port.to_be_bytes()));
            let (family, addr) = match to {
                IpAddr::V4(a) => (NFPROTO_IPV4, a.octets().to_vec()),
                IpAddr::V6(a) => (NFPROTO_IPV6, a.octets().to_vec()),
            };
            e.push(immediate(NFT_REG_1, &addr));
            e.push(immediate(NFT_REG_2, &to_port.to_be_bytes()));
            e.push(expr("nat", |a| {
                a.be32(1, NFT_NAT_DNAT)
                    .be32(2, u32::from(family))
                    .be32(3, NFT_REG_1)
                    .be32(5, NFT_REG_2);
            }));
            e
        }
    }
}

/// A batch of nfnetlink messages.
struct Batch {
    bytes: Vec<u8>,
    seq: u32,
    /// Messages that ask for an acknowledgement.
    acks: usize,
}

impl Batch {
    fn new(seq: u32) -> Batch {
        let mut b = Batch {
            bytes: Vec::new(),
            seq,
            acks: 0,
        };
        // res_id of the batch markers is the subsystem, in network order.
        b.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        );
        b
    }

    fn message(&mut self, kind: u16, flags: u16, family: u8, res_id: u16, attrs: &Attrs) {
        let len = 16 + 4 + attrs.0.len();
        self.bytes.extend_from_slice(&(len as u32).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&self.seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg
        self.bytes.push(family);
        self.bytes.push(0); // NFNETLINK_V0
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        self.bytes.extend_from_slice(&attrs.0);
        self.seq = self.seq.wrapping_add(1);
    }

    fn nft(&mut self, msg: u16, flags: u16, attrs: &Attrs) {
        self.acks += 1;
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_INET,
            0,
            attrs,
        );
    }

    fn finish(mut self) -> (Vec<u8>, usize) {
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        );
        (self.bytes, self.acks)
    }
}

fn table_attrs() -> Attrs {
    let mut a = Attrs::default();
    a.str(NFTA_TABLE_NAME, TABLE);
    a
}

/// The batch that replaces table `inet zonit` with `ruleset`, and the
/// number of acknowledgements it asks for. Sequence numbers start at `seq`.
pub fn replace_table(ruleset: &Ruleset, seq: u32) -> (Vec<u8>, usize) {
    let mut batch = Batch::new(seq);
    // Creating first makes the delete succeed whether or not a table was
    // there; both happen in the same transaction as the new contents.
    batch.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table_attrs());
    batch.nft(NFT_MSG_DELTABLE, 0, &table_attrs());
    batch.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table_attrs());
    let chains = [
        (
            "prerouting",
            NF_INET_PRE_ROUTING,
            PRIORITY_DSTNAT,
            &ruleset.prerouting,
        ),
        (
            "output",
            NF_INET_LOCAL_OUT,
            PRIORITY_DSTNAT,
            &ruleset.output,
        ),
        (
            "postrouting",
            NF_INET_POST_ROUTING,
            PRIORITY_SRCNAT,
            &ruleset.postrouting,
        ),
    ];
    for (name, hook, priority, rules) in chains {
        let mut hook_attrs = Attrs::default();
        hook_attrs
            .be32(NFTA_HOOK_HOOKNUM, hook)
            .be32(NFTA_HOOK_PRIORITY, priority as u32);
        let mut chain = Attrs::default();
        chain
            .str(NFTA_CHAIN_TABLE, TABLE)
            .str(NFTA_CHAIN_NAME, name)
            .nested(NFTA_CHAIN_HOOK, &hook_attrs)
            .str(NFTA_CHAIN_TYPE, "nat");
        batch.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, &chain);
        for rule in rules.iter() {
            let mut list = Attrs::default();
            for e in lower(rule) {
                let mut elem = Attrs::default();
                elem.str(NFTA_EXPR_NAME, e.name);
                if !e.data.0.is_empty() {
                    elem.nested(NFTA_EXPR_DATA, &e.data);
                }
                list.nested(NFTA_LIST_ELEM, &elem);
            }
            let mut attrs = Attrs::default();
            attrs
                .str(NFTA_RULE_TABLE, TABLE)
                .str(NFTA_RULE_CHAIN, name)
                .nested(NFTA_RULE_EXPRESSIONS, &list);
            batch.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &attrs);
        }
    }
    batch.finish()
}

/// The batch that removes table `inet zonit` (if there: created first, so
/// the delete never fails for a missing table).
pub fn delete_table(seq: u32) -> (Vec<u8>, usize) {
    let mut batch = Batch::new(seq);
    batch.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table_attrs());
    batch.nft(NFT_MSG_DELTABLE, 0, &table_attrs());
    batch.finish()
}

/// Sends one batch and waits for its acknowledgements; the first error
/// the kernel reports fails the whole (already rolled back) batch.
pub fn apply((bytes, acks): (Vec<u8>, usize)) -> io::Result<()> {
    let mut socket = Socket::new(protocols::NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    let mut seen = 0;
    let mut rx: Vec<u8> = Vec::with_capacity(64 * 1024);
    while seen < acks {
        rx.clear();
        let n = socket.recv(&mut rx, 0)?.min(rx.len());
        let mut off = 0;
        while off + 16 <= n {
            let field = |at: usize| -> [u8; 4] {
                let mut b = [0u8; 4];
                b.copy_from_slice(&rx[off + at..off + at + 4]);
                b
            };
            let len = u32::from_ne_bytes(field(0)) as usize;
            let kind = u16::from_ne_bytes([rx[off + 4], rx[off + 5]]);
            if len < 16 {
                break;
            }
            if kind == NLMSG_ERROR && off + 20 <= n {
                let code = i32::from_ne_bytes(field(16));
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                seen += 1;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn attributes_are_padded_to_four_bytes_and_nested_ones_flagged() {
        let mut a = Attrs::default();
        a.str(1, "zonit");
        // len 10 (4 + "zonit\0"), type 1, value, 2 bytes of padding
        assert_eq!(hex(&a.0), "0a0001007a6f6e6974000000");
        let mut outer = Attrs::default();
        outer.nested(4, &a);
        assert_eq!(hex(&outer.0[..4]), "10000480");
    }

    #[test]
    fn delete_table_batch_matches_its_golden_bytes() {
        let (bytes, acks) = delete_table(7);
        assert_eq!(acks, 2);
        let golden = concat!(
            // batch begin: len 20, type 0x10, REQUEST, seq 7, pid 0, AF_UNSPEC, v0, res_id 10 (BE)
            "14000000",
            "1000",
            "0100",
            "07000000",
            "00000000",
            "00",
            "00",
            "000a",
            // NEWTABLE: type 0x0a00, REQUEST|ACK|CREATE, seq 8, inet
            "20000000",
            "000a",
            "0504",
            "08000000",
            "00000000",
            "01",
            "00",
            "0000",
            "0a0001007a6f6e6974000000",
            // DELTABLE: type 0x0a02, REQUEST|ACK, seq 9
            "20000000",
            "020a",
            "0500",
            "09000000",
            "00000000",
            "01",
            "00",
            "0000",
            "0a0001007a6f6e6974000000",
            // batch end: type 0x11, seq 10
            "14000000",
            "1100",
            "0100",
            "0a000000",
            "00000000",
            "00",
            "00",
            "000a",
        );
        assert_eq!(hex(&bytes), golden);
    }

    #[test]
    fn a_masquerade_rule_lowers_to_nfproto_saddr_mask_oifname_and_masq() {
        let rule = Rule::Masquerade {
            subnet: Cidr::parse("10.88.0.1/24").unwrap(),
            bridge: "zn-lan".into(),
        };
        let names: Vec<&str> = lower(&rule).iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "meta", "cmp", "payload", "bitwise", "cmp", "meta", "cmp", "masq"
            ]
        );
        let e = lower(&rule);
        // payload: reg 1, network header, offset 12, 4 bytes
        assert_eq!(
            hex(&e[2].data.0),
            concat!(
                "0800010000000001",
                "0800020000000001",
                "080003000000000c",
                "0800040000000004"
            )
        );
        // cmp against the subnet 10.88.0.0, after the /24 mask
        assert!(hex(&e[4].data.0).ends_with("0c000380080001000a580000"));
        assert!(hex(&e[3].data.0).contains("08000100ffffff00"));
        // oifname != "zn-lan": NEQ against the whole 16-byte name buffer
        assert!(hex(&e[6].data.0).contains("0800020000000001"));
        assert!(hex(&e[6].data.0).ends_with("7a6e2d6c616e00000000000000000000"));
    }

    #[test]
    fn a_port_forward_loads_address_and_port_into_two_registers_for_dnat() {
        let rule = Rule::Dnat {
            proto: Proto::Udp,
            port: 5353,
            to: "10.88.0.2".parse().unwrap(),
            to_port: 53,
            skip_loopback: true,
        };
        let e = lower(&rule);
        let names: Vec<&str> = e.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "meta",
                "cmp",
                "payload",
                "bitwise",
                "cmp",
                "fib",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "cmp",
                "immediate",
                "immediate",
                "nat"
            ]
        );
        assert!(hex(&e[8].data.0).ends_with("0500010011000000"), "udp is 17");
        assert!(
            hex(&e[10].data.0).ends_with("0600010014e90000"),
            "port 5353 BE"
        );
        assert!(hex(&e[11].data.0).ends_with("080001000a580002"));
        assert!(
            hex(&e[12].data.0).ends_with("0600010000350000"),
            "port 53 BE"
        );
        // nat: type dnat, family ipv4, address in reg 1, port in reg 2
        assert_eq!(
            hex(&e[13].data.0),
            concat!(
                "0800010000000001",
                "0800020000000002",
                "0800030000000001",
                "0800050000000002"
            )
        );
    }

    #[test]
    fn replacing_the_table_asks_an_ack_for_every_message_but_the_markers() {
        let ruleset = Ruleset {
            prerouting: vec![],
            output: vec![],
            postrouting: vec![Rule::Masquerade {
                subnet: Cidr::parse("10.88.0.1/24").unwrap(),
                bridge: "zn-lan".into(),
            }],
        };
        let (bytes, acks) = replace_table(&ruleset, 1);
        // new, delete, new table; three chains; one rule
        assert_eq!(acks, 7);
        assert_eq!(u32::from_ne_bytes(bytes[..4].try_into().unwrap()), 20);
        // batch end, sequence number 1 + 1 + 7
        assert!(hex(&bytes).ends_with("140000001100010009000000000000000000000a"));
    }
}
