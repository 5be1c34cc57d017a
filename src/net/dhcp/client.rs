//! The DHCPv4 client of a host NIC, as a pure state machine: packets and
//! the time come in, actions go out (send this, apply that lease, drop
//! it), and [`Client::deadline`] says when it next needs to run.
//!
//! States (RFC 2131, 4.4): `Init` -> `Selecting` (DISCOVER sent) ->
//! `Requesting` (REQUEST for one offer) -> `Bound` -> `Renewing` at T1
//! (REQUEST unicast to the server) -> `Rebinding` at T2 (REQUEST
//! broadcast to any server) -> lease expiry (address dropped, back to
//! `Init`). A NAK in any requesting state drops the lease and starts
//! over. [`Client::release`] gives the lease back (orderly shutdown).
//!
//! Invariants: between two deadlines the client needs nothing (zero
//! wake-ups while bound); retransmissions back off from 4 s to 64 s with
//! up to a second of jitter; a reply counts only with our transaction id
//! and hardware address; every lease applied is dropped before a
//! different one is applied or when it ends.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};

use super::{decode, encode, prefix_of};

/// First retransmission interval of DISCOVER and REQUEST.
const FIRST_RETRY: Duration = Duration::from_secs(4);
/// Longest retransmission interval.
const LAST_RETRY: Duration = Duration::from_secs(64);
/// REQUESTs sent for one offer before discovering again.
const REQUEST_TRIES: u32 = 4;
/// Shortest wait between retransmissions while renewing or rebinding
/// (less only when the next state comes sooner).
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// Wait after a NAK before discovering again, so a server that refuses
/// every request cannot make the client flood the link.
const AFTER_NAK: Duration = Duration::from_secs(1);

/// An address lease, as the server gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Its prefix length (from the subnet mask; 24 when none is given).
    pub prefix: u8,
    /// The server that granted it.
    pub server: Ipv4Addr,
    /// The first router, for the default route.
    pub router: Option<Ipv4Addr>,
    /// Nameservers.
    pub dns: Vec<Ipv4Addr>,
    /// The link MTU to use, if the server sets one.
    pub mtu: Option<u16>,
    /// Lease time (`None`: infinite).
    pub time: Option<Duration>,
    /// When it was granted (when its REQUEST was first sent).
    pub start: Instant,
}

impl Lease {
    /// T1, T2 and expiry, `None` for an infinite lease.
    fn times(&self, t1: Option<u32>, t2: Option<u32>) -> Option<(Instant, Instant, Instant)> {
        let time = self.time?;
        let expiry = self.start + time;
        let t2 = t2
            .map(|s| Duration::from_secs(s.into()).min(time))
            .unwrap_or(time * 7 / 8);
        let t1 = t1
            .map(|s| Duration::from_secs(s.into()).min(t2))
            .unwrap_or(time / 2)
            .min(t2);
        Some((self.start + t1, self.start + t2, expiry))
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `packet` from port 68 to port 67 of `to` (the broadcast
    /// address, or the server's address while renewing or releasing).
    Send {
        /// The DHCP message.
        packet: Vec<u8>,
        /// Destination address.
        to: Ipv4Addr,
    },
    /// Configure the lease: address, default route, MTU.
    Apply(Lease),
    /// Remove the lease's address (and with it its routes).
    Drop(Lease),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Init,
    Selecting,
    Requesting { server: Ipv4Addr, address: Ipv4Addr },
    Bound,
    Renewing,
    Rebinding,
    Released,
}

/// The client of one interface.
#[derive(Debug, Clone)]
pub struct Client {
    mac: [u8; 6],
    rng: u64,
    xid: u32,
    state: State,
    /// When the current exchange began (the `secs` field counts from it).
    began: Instant,
    /// Transmissions of the current message so far.
    tries: u32,
    /// When `on_timer` next has work.
    deadline: Option<Instant>,
    /// The lease in force (bound, renewing, rebinding).
    lease: Option<Lease>,
    /// T1, T2, expiry of `lease`.
    times: Option<(Instant, Instant, Instant)>,
}

impl Client {
    /// A client for the interface with hardware address `mac`; `seed`
    /// (random, from the caller) picks transaction ids and jitter.
    pub fn new(mac: [u8; 6], seed: u64, now: Instant) -> Client {
        Client {
            mac,
            rng: seed | 1,
            xid: 0,
            state: State::Init,
            began: now,
            tries: 0,
            deadline: Some(now),
            lease: None,
            times: None,
        }
    }

    /// When [`Client::on_timer`] must run next (`None`: never, until a
    /// packet comes).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The lease in force, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Does whatever is due at `now`: the first DISCOVER, a
    /// retransmission, renewing at T1, rebinding at T2, expiry.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        if self.deadline.is_none_or(|d| now < d) {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match self.state {
            State::Init => self.discover(now, &mut actions),
            State::Selecting => {
                self.send(MessageType::Discover, now, &mut actions);
                self.retry_later(now);
            }
            State::Requesting { server, address } => {
                if self.tries >= REQUEST_TRIES {
                    self.discover(now, &mut actions);
                } else {
                    self.send_request(server, address, now, &mut actions);
                    self.retry_later(now);
                }
            }
            State::Bound | State::Renewing | State::Rebinding => {
                self.lease_timer(now, &mut actions)
            }
            State::Released => self.deadline = None,
        }
        actions
    }

    /// Takes in DHCP message `bytes` (a UDP payload from port 67).
    pub fn on_packet(&mut self, bytes: &[u8], now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(msg) = decode(bytes) else {
            return actions;
        };
        if msg.opcode() != v4::Opcode::BootReply
            || msg.xid() != self.xid
            || msg.chaddr() != self.mac
        {
            return actions;
        }
        match (self.state, msg.opts().msg_type()) {
            (State::Selecting, Some(MessageType::Offer)) => {
                let Some(server) = server_id(&msg) else {
                    return actions;
                };
                let address = msg.yiaddr();
                if address.is_unspecified() {
                    return actions;
                }
                self.state = State::Requesting { server, address };
                self.tries = 0;
                self.send_request(server, address, now, &mut actions);
                self.retry_later(now);
            }
            (State::Requesting { .. } | State::Renewing | State::Rebinding, Some(kind)) => {
                match kind {
                    MessageType::Ack => self.bind(&msg, &mut actions),
                    MessageType::Nak => {
                        self.drop_lease(&mut actions);
                        self.state = State::Init;
                        self.deadline = Some(now + AFTER_NAK);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        actions
    }

    /// Gives the lease back to its server (DHCPRELEASE) and drops it;
    /// the client does nothing more.
    pub fn release(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(lease) = self.lease.clone() {
            self.xid = self.next_xid();
            self.began = now;
            let mut msg = self.message(MessageType::Release, now);
            msg.set_ciaddr(lease.address);
            msg.opts_mut()
                .insert(DhcpOption::ServerIdentifier(lease.server));
            msg.opts_mut().remove(OptionCode::ParameterRequestList);
            if let Some(packet) = encode(&msg) {
                actions.push(Action::Send {
                    packet,
                    to: lease.server,
                });
            }
            self.drop_lease(&mut actions);
        }
        self.state = State::Released;
        self.deadline = None;
        actions
    }

    /// Starts over: a new transaction, DISCOVER broadcast.
    fn discover(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.drop_lease(actions);
        self.state = State::Selecting;
        self.xid = self.next_xid();
        self.began = now;
        self.tries = 0;
        self.send(MessageType::Discover, now, actions);
        self.retry_later(now);
    }

    /// The lease's timers: expiry, then T2, then T1, whichever has come.
    fn lease_timer(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let (Some((t1, t2, expiry)), Some(lease)) = (self.times, self.lease.clone()) else {
            self.deadline = None;
            return;
        };
        if now >= expiry {
            self.discover(now, actions);
            return;
        }
        let (next_state, until) = if now >= t2 {
            (State::Rebinding, expiry)
        } else if now >= t1 {
            (State::Renewing, t2)
        } else {
            self.deadline = Some(t1);
            return;
        };
        if next_state != self.state {
            // A new exchange: a new transaction id.
            self.state = next_state;
            self.xid = self.next_xid();
            self.began = now;
        }
        let mut msg = self.message(MessageType::Request, now);
        msg.set_ciaddr(lease.address);
        let to = if self.state == State::Renewing {
            lease.server
        } else {
            Ipv4Addr::BROADCAST
        };
        if let Some(packet) = encode(&msg) {
            actions.push(Action::Send { packet, to });
        }
        // Half the time left, at least a minute, never past the next state.
        let left = until.saturating_duration_since(now);
        let wait = (left / 2).max(RENEW_RETRY).min(left);
        self.deadline = Some(now + wait);
    }

    /// Takes the lease an ACK grants.
    fn bind(&mut self, msg: &v4::Message, actions: &mut Vec<Action>) {
        let opts = msg.opts();
        let address = msg.yiaddr();
        let Some(server) = server_id(msg).or(self.lease.as_ref().map(|l| l.server)) else {
            return;
        };
        if address.is_unspecified() {
            return;
        }
        let seconds = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(s)) => *s,
            _ => return, // an ACK for a lease must give its time
        };
        let lease = Lease {
            address,
            prefix: match opts.get(OptionCode::SubnetMask) {
                Some(DhcpOption::SubnetMask(mask)) => prefix_of(*mask),
                _ => 24,
            },
            server,
            router: match opts.get(OptionCode::Router) {
                Some(DhcpOption::Router(list)) => list.first().copied(),
                _ => None,
            },
            dns: match opts.get(OptionCode::DomainNameServer) {
                Some(DhcpOption::DomainNameServer(list)) => list.clone(),
                _ => Vec::new(),
            },
            mtu: match opts.get(OptionCode::InterfaceMtu) {
                Some(DhcpOption::InterfaceMtu(m)) if *m >= 68 => Some(*m),
                _ => None,
            },
            time: (seconds != u32::MAX).then(|| Duration::from_secs(seconds.into())),
            start: self.began,
        };
        let t1 = match opts.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(s)) => Some(*s),
            _ => None,
        };
        let t2 = match opts.get(OptionCode::Rebinding) {
            Some(DhcpOption::Rebinding(s)) => Some(*s),
            _ => None,
        };
        let times = lease.times(t1, t2);
        // A renewal that changes nothing but the times needs no work.
        let same = self.lease.as_ref().is_some_and(|old| {
            Lease {
                start: lease.start,
                time: lease.time,
                ..old.clone()
            } == lease
        });
        if !same {
            self.drop_lease(actions);
            actions.push(Action::Apply(lease.clone()));
        }
        self.lease = Some(lease);
        self.times = times;
        self.state = State::Bound;
        self.deadline = times.map(|(t1, _, _)| t1);
    }

    fn drop_lease(&mut self, actions: &mut Vec<Action>) {
        if let Some(lease) = self.lease.take() {
            actions.push(Action::Drop(lease));
        }
        self.times = None;
    }

    fn send(&mut self, kind: MessageType, now: Instant, actions: &mut Vec<Action>) {
        let msg = self.message(kind, now);
        if let Some(packet) = encode(&msg) {
            actions.push(Action::Send {
                packet,
                to: Ipv4Addr::BROADCAST,
            });
        }
        self.tries += 1;
    }

    fn send_request(
        &mut self,
        server: Ipv4Addr,
        address: Ipv4Addr,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let mut msg = self.message(MessageType::Request, now);
        msg.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(address));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        if let Some(packet) = encode(&msg) {
            actions.push(Action::Send {
                packet,
                to: Ipv4Addr::BROADCAST,
            });
        }
        self.tries += 1;
    }

    /// A request of type `kind` with what every request carries.
    fn message(&self, kind: MessageType, now: Instant) -> v4::Message {
        let mut msg = v4::Message::new_with_id(
            self.xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        let secs = now.saturating_duration_since(self.began).as_secs();
        msg.set_secs(u16::try_from(secs).unwrap_or(u16::MAX));
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1u8]; // hardware type: Ethernet
        id.extend_from_slice(&self.mac);
        opts.insert(DhcpOption::ClientIdentifier(id));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::InterfaceMtu,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        msg
    }

    /// The next retransmission of DISCOVER or REQUEST: 4 s doubled per
    /// try up to 64 s, plus or minus up to a second.
    fn retry_later(&mut self, now: Instant) {
        let doublings = self.tries.saturating_sub(1).min(4);
        let base = (FIRST_RETRY * (1 << doublings)).min(LAST_RETRY);
        let jitter_ms = self.next_random() % 2001;
        let wait = (base + Duration::from_millis(jitter_ms)).saturating_sub(Duration::from_secs(1));
        self.deadline = Some(now + wait);
    }

    /// xorshift64: no cryptographic need, only ids and jitter that two
    /// hosts booted together do not share.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn next_xid(&mut self) -> u32 {
        (self.next_random() >> 32) as u32
    }
}

fn server_id(msg: &v4::Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::MIN_LEN;
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const OURS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn client(t0: Instant) -> Client {
        Client::new(MAC, 42, t0)
    }

    fn sent(actions: &[Action]) -> Vec<(v4::Message, Ipv4Addr)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { packet, to } => Some((decode(packet).unwrap(), *to)),
                _ => None,
            })
            .collect()
    }

    /// A reply from SERVER of type `kind` to `req`.
    fn reply(req: &v4::Message, kind: MessageType, lease_secs: u32) -> Vec<u8> {
        let mut msg = v4::Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            OURS,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            req.chaddr(),
        );
        msg.set_opcode(v4::Opcode::BootReply);
        let o = msg.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        o.insert(DhcpOption::AddressLeaseTime(lease_secs));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![SERVER]));
        o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 2, 3,
        )]));
        o.insert(DhcpOption::InterfaceMtu(1400));
        encode(&msg).unwrap()
    }

    /// Drives a client to Bound at `t0` with a lease of `secs`; returns
    /// the client and the applied lease.
    fn bound(t0: Instant, secs: u32) -> (Client, Lease) {
        let mut c = client(t0);
        let discover = sent(&c.on_timer(t0)).remove(0).0;
        let request = sent(&c.on_packet(&reply(&discover, MessageType::Offer, secs), t0))
            .remove(0)
            .0;
        let actions = c.on_packet(&reply(&request, MessageType::Ack, secs), t0);
        let lease = match actions.as_slice() {
            [Action::Apply(l)] => l.clone(),
            other => panic!("expected one Apply, got {other:?}"),
        };
        (c, lease)
    }

    #[test]
    fn the_first_discover_is_due_at_once_and_matches_its_golden_bytes() {
        let t0 = Instant::now();
        let mut c = client(t0);
        assert_eq!(c.deadline(), Some(t0));
        let actions = c.on_timer(t0);
        let [Action::Send { packet, to }] = actions.as_slice() else {
            panic!("expected one send, got {actions:?}");
        };
        assert_eq!(*to, Ipv4Addr::BROADCAST);
        assert_eq!(packet.len(), MIN_LEN);
        let xid = c.xid.to_be_bytes();
        let mut golden = vec![1, 1, 6, 0];
        golden.extend_from_slice(&xid);
        golden.extend_from_slice(&[0; 4]); // secs, flags (no broadcast bit)
        golden.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
        golden.extend_from_slice(&MAC);
        golden.extend_from_slice(&[0; 10 + 64 + 128]);
        golden.extend_from_slice(&[99, 130, 83, 99]);
        golden.extend_from_slice(&[53, 1, 1]); // DHCPDISCOVER
        golden.extend_from_slice(&[55, 7, 1, 3, 6, 26, 51, 58, 59]);
        golden.extend_from_slice(&[61, 7, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        golden.push(255);
        golden.resize(MIN_LEN, 0);
        assert_eq!(*packet, golden);
    }

    #[test]
    fn an_offer_leads_to_a_broadcast_request_for_it_and_an_ack_to_the_lease() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let discover = sent(&c.on_timer(t0)).remove(0).0;
        let t = t0 + Duration::from_millis(10);
        let out = sent(&c.on_packet(&reply(&discover, MessageType::Offer, 3600), t));
        let [(request, to)] = out.as_slice() else {
            panic!("expected one REQUEST, got {out:?}");
        };
        assert_eq!(*to, Ipv4Addr::BROADCAST);
        assert_eq!(request.xid(), discover.xid());
        assert_eq!(request.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            request.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(OURS))
        );
        assert_eq!(
            request.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        let actions = c.on_packet(&reply(request, MessageType::Ack, 3600), t);
        assert_eq!(
            actions,
            [Action::Apply(Lease {
                address: OURS,
                prefix: 24,
                server: SERVER,
                router: Some(SERVER),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
                mtu: Some(1400),
                time: Some(Duration::from_secs(3600)),
                start: t0,
            })]
        );
        // Nothing to do until T1, half the lease.
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(1800)));
        assert!(c.on_timer(t0 + Duration::from_secs(1799)).is_empty());
    }

    #[test]
    fn replies_for_another_transaction_or_another_mac_are_ignored() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let discover = sent(&c.on_timer(t0)).remove(0).0;
        let mut other = discover.clone();
        other.set_xid(discover.xid().wrapping_add(1));
        assert!(
            c.on_packet(&reply(&other, MessageType::Offer, 60), t0)
                .is_empty()
        );
        let mut other = discover.clone();
        other.set_chaddr(&[2, 0, 0, 0, 0, 1]);
        assert!(
            c.on_packet(&reply(&other, MessageType::Offer, 60), t0)
                .is_empty()
        );
        assert!(c.on_packet(b"not dhcp", t0).is_empty());
        // An ACK while selecting is not ours to take.
        assert!(
            c.on_packet(&reply(&discover, MessageType::Ack, 60), t0)
                .is_empty()
        );
    }

    #[test]
    fn discover_is_retransmitted_with_backoff_up_to_64_seconds() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let first = sent(&c.on_timer(t0)).remove(0).0;
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let due = c.deadline().unwrap();
            waits.push(due - now);
            now = due;
            let out = sent(&c.on_timer(now));
            assert_eq!(out.len(), 1);
            // The same transaction, with the seconds since it began.
            assert_eq!(out[0].0.xid(), first.xid());
            assert_eq!(u64::from(out[0].0.secs()), (now - t0).as_secs().min(65535));
        }
        for (wait, base) in waits.iter().zip([4u64, 8, 16, 32, 64, 64, 64]) {
            let base = Duration::from_secs(base);
            assert!(
                *wait >= base - Duration::from_secs(1) && *wait <= base + Duration::from_secs(1),
                "wait {wait:?} for base {base:?}"
            );
        }
    }

    #[test]
    fn an_unanswered_request_goes_back_to_discover_with_a_new_transaction() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let discover = sent(&c.on_timer(t0)).remove(0).0;
        c.on_packet(&reply(&discover, MessageType::Offer, 60), t0);
        for _ in 1..REQUEST_TRIES {
            let now = c.deadline().unwrap();
            let out = sent(&c.on_timer(now));
            assert_eq!(out[0].0.opts().msg_type(), Some(MessageType::Request));
        }
        let now = c.deadline().unwrap();
        let out = sent(&c.on_timer(now));
        assert_eq!(out[0].0.opts().msg_type(), Some(MessageType::Discover));
        assert_ne!(out[0].0.xid(), discover.xid());
    }

    #[test]
    fn t1_renews_by_unicast_t2_rebinds_by_broadcast_and_expiry_drops_the_lease() {
        let t0 = Instant::now();
        let (mut c, lease) = bound(t0, 100);
        let t1 = t0 + Duration::from_secs(50);
        assert_eq!(c.deadline(), Some(t1));
        let out = sent(&c.on_timer(t1));
        let [(renew, to)] = out.as_slice() else {
            panic!("expected one renewal, got {out:?}");
        };
        assert_eq!(*to, SERVER);
        assert_eq!(renew.ciaddr(), OURS);
        assert_eq!(renew.opts().msg_type(), Some(MessageType::Request));
        assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(renew.opts().get(OptionCode::RequestedIpAddress).is_none());
        // Less than a minute to T2 (87.5 s): the next run is T2 itself.
        let t2 = t0 + Duration::from_millis(87_500);
        assert_eq!(c.deadline(), Some(t2));
        let out = sent(&c.on_timer(t2));
        let [(rebind, to)] = out.as_slice() else {
            panic!("expected one rebind, got {out:?}");
        };
        assert_eq!(*to, Ipv4Addr::BROADCAST);
        assert_eq!(rebind.ciaddr(), OURS);
        assert_ne!(rebind.xid(), renew.xid());
        let expiry = t0 + Duration::from_secs(100);
        assert_eq!(c.deadline(), Some(expiry));
        let actions = c.on_timer(expiry);
        assert_eq!(actions[0], Action::Drop(lease));
        let out = sent(&actions);
        assert_eq!(out[0].0.opts().msg_type(), Some(MessageType::Discover));
        assert!(c.lease().is_none());
    }

    #[test]
    fn an_ack_while_renewing_extends_the_lease_without_reapplying_it() {
        let t0 = Instant::now();
        let (mut c, _) = bound(t0, 100);
        let t1 = t0 + Duration::from_secs(50);
        let renew = sent(&c.on_timer(t1)).remove(0).0;
        let actions = c.on_packet(&reply(&renew, MessageType::Ack, 100), t1);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(50)));
        assert_eq!(c.lease().unwrap().start, t1);
    }

    #[test]
    fn a_nak_while_renewing_drops_the_lease_and_starts_over_after_a_second() {
        let t0 = Instant::now();
        let (mut c, lease) = bound(t0, 100);
        let t1 = t0 + Duration::from_secs(50);
        let renew = sent(&c.on_timer(t1)).remove(0).0;
        let actions = c.on_packet(&reply(&renew, MessageType::Nak, 0), t1);
        assert_eq!(actions, [Action::Drop(lease)]);
        assert_eq!(c.deadline(), Some(t1 + AFTER_NAK));
        let out = sent(&c.on_timer(t1 + AFTER_NAK));
        assert_eq!(out[0].0.opts().msg_type(), Some(MessageType::Discover));
    }

    #[test]
    fn a_late_wake_up_past_expiry_drops_the_lease_at_once() {
        let t0 = Instant::now();
        let (mut c, lease) = bound(t0, 100);
        let actions = c.on_timer(t0 + Duration::from_secs(1000));
        assert_eq!(actions[0], Action::Drop(lease));
    }

    #[test]
    fn release_sends_the_server_a_release_and_drops_the_lease_then_stays_quiet() {
        let t0 = Instant::now();
        let (mut c, lease) = bound(t0, 3600);
        let t = t0 + Duration::from_secs(5);
        let actions = c.release(t);
        let out = sent(&actions);
        let [(release, to)] = out.as_slice() else {
            panic!("expected one RELEASE, got {actions:?}");
        };
        assert_eq!(*to, SERVER);
        assert_eq!(release.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(release.ciaddr(), OURS);
        assert_eq!(
            release.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(actions.last(), Some(&Action::Drop(lease)));
        assert_eq!(c.deadline(), None);
        assert!(c.on_timer(t0 + Duration::from_secs(100_000)).is_empty());
    }

    #[test]
    fn release_without_a_lease_sends_nothing() {
        let t0 = Instant::now();
        let mut c = client(t0);
        c.on_timer(t0);
        assert!(c.release(t0).is_empty());
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn an_infinite_lease_needs_no_timer() {
        let t0 = Instant::now();
        let (c, lease) = bound(t0, u32::MAX);
        assert_eq!(lease.time, None);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn server_given_t1_and_t2_are_used_but_never_past_the_lease() {
        let t0 = Instant::now();
        let lease = Lease {
            address: OURS,
            prefix: 24,
            server: SERVER,
            router: None,
            dns: vec![],
            mtu: None,
            time: Some(Duration::from_secs(100)),
            start: t0,
        };
        let s = Duration::from_secs;
        assert_eq!(
            lease.times(Some(10), Some(20)),
            Some((t0 + s(10), t0 + s(20), t0 + s(100)))
        );
        assert_eq!(
            lease.times(Some(500), Some(500)),
            Some((t0 + s(100), t0 + s(100), t0 + s(100)))
        );
    }
}
