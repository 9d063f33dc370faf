//! ARP on the VIP's interface: gratuitous announcements and RFC 5227 conflict probes.
//!
//! The failover needs two things from ARP: telling the LAN's caches that the VIP now lives
//! at our MAC (gratuitous ARP), and finding out whether another machine already answers for
//! an address before we claim it (RFC 5227 probes, which also resolve a live host's MAC).
//! Both go over a raw `AF_PACKET` socket, so the daemon needs neither `arping` nor the
//! kernel's neighbour table.
//!
//! The frame layouts ([`ArpPacket`], [`claims`]) are pure and tested on their own;
//! [`ArpSocket`] does the I/O.

use std::{io, net::Ipv4Addr, time::Duration};

use anyhow::Context as _;

use super::link::PacketSocket;

/// Length of an Ethernet/IPv4 ARP frame: 14 bytes of Ethernet header plus 28 of ARP.
/// (On the wire the NIC pads it to 60; [`ArpPacket::parse`] accepts such padding.)
pub const ARP_FRAME_LEN: usize = 42;

/// The Ethernet broadcast address, destination of every frame this module sends by itself.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// "Unknown" hardware address, used where RFC 5227 says the field is ignored.
const ZERO_MAC: [u8; 6] = [0; 6];

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const HTYPE_ETHERNET: u16 = 1;
const ETH_ALEN: u8 = 6;
const IPV4_ALEN: u8 = 4;

/// Field offsets within the frame (Ethernet header first, then the ARP payload).
mod at {
    pub const ETH_DST: usize = 0;
    pub const ETH_SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
    pub const HTYPE: usize = 14;
    pub const PTYPE: usize = 16;
    pub const HLEN: usize = 18;
    pub const PLEN: usize = 19;
    pub const OP: usize = 20;
    pub const SENDER_MAC: usize = 22;
    pub const SENDER_IP: usize = 28;
    pub const TARGET_MAC: usize = 32;
    pub const TARGET_IP: usize = 38;
}

/// Receive buffer size: ARP frames are at most 60 bytes (padded) plus whatever trailer a
/// driver leaves; a longer frame is truncated, which [`ArpPacket::parse`] treats as padding.
const RECV_BUF_LEN: usize = 256;

/// ARP operation (only the two that Ethernet/IPv4 ARP uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Reply = 2,
}

impl Op {
    fn from_wire(op: u16) -> Option<Op> {
        match op {
            1 => Some(Op::Request),
            2 => Some(Op::Reply),
            _ => None,
        }
    }
}

/// One Ethernet/IPv4 ARP frame, Ethernet header included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    pub op: Op,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// Gratuitous ARP for `ip` at `mac`, broadcast so every cache on the segment sees it.
    ///
    /// The `Request` form is RFC 5227 §3's "ARP Announcement": sender IP = target IP = `ip`,
    /// target MAC zero. The `Reply` form is for old stacks that only learn from replies; its
    /// target MAC is our own, as `arping -A` sends it: Linux counts a gratuitous *reply* as
    /// such only if its target MAC equals its sender MAC (`arp_is_garp`), and only then lets
    /// it override a neighbour entry updated less than `locktime` (1 s) ago.
    pub fn gratuitous(op: Op, ip: Ipv4Addr, mac: [u8; 6]) -> ArpPacket {
        let target_mac = match op {
            Op::Request => ZERO_MAC,
            Op::Reply => mac,
        };
        ArpPacket {
            op,
            eth_src: mac,
            eth_dst: BROADCAST_MAC,
            sender_mac: mac,
            sender_ip: ip,
            target_mac,
            target_ip: ip,
        }
    }

    /// RFC 5227 §2.1.1 "ARP Probe" for `ip` from `mac`: a broadcast request with sender IP
    /// 0.0.0.0, so that asking does not itself pollute anybody's cache. Whoever owns `ip`
    /// answers with a reply carrying its MAC.
    pub fn probe(ip: Ipv4Addr, mac: [u8; 6]) -> ArpPacket {
        ArpPacket {
            op: Op::Request,
            eth_src: mac,
            eth_dst: BROADCAST_MAC,
            sender_mac: mac,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: ZERO_MAC,
            target_ip: ip,
        }
    }

    /// The frame as it goes on the wire (unpadded; drivers pad to the Ethernet minimum).
    /// Takes `self` by value: the packet is `Copy`, and `(&packet).to_frame()` still works.
    pub fn to_frame(self) -> [u8; ARP_FRAME_LEN] {
        let mut f = [0u8; ARP_FRAME_LEN];
        put(&mut f, at::ETH_DST, &self.eth_dst);
        put(&mut f, at::ETH_SRC, &self.eth_src);
        put(&mut f, at::ETHERTYPE, &ETHERTYPE_ARP.to_be_bytes());
        put(&mut f, at::HTYPE, &HTYPE_ETHERNET.to_be_bytes());
        put(&mut f, at::PTYPE, &ETHERTYPE_IPV4.to_be_bytes());
        f[at::HLEN] = ETH_ALEN;
        f[at::PLEN] = IPV4_ALEN;
        put(&mut f, at::OP, &(self.op as u16).to_be_bytes());
        put(&mut f, at::SENDER_MAC, &self.sender_mac);
        put(&mut f, at::SENDER_IP, &self.sender_ip.octets());
        put(&mut f, at::TARGET_MAC, &self.target_mac);
        put(&mut f, at::TARGET_IP, &self.target_ip.octets());
        f
    }

    /// Decodes an Ethernet/IPv4 ARP frame; `None` for anything else (other ethertypes,
    /// hardware or protocol types, address lengths or operations, or too short a frame).
    /// Bytes after the 42nd (Ethernet padding, trailers) are ignored.
    pub fn parse(frame: &[u8]) -> Option<ArpPacket> {
        let f: &[u8; ARP_FRAME_LEN] = frame.get(..ARP_FRAME_LEN)?.try_into().ok()?;
        let well_formed = be16(f, at::ETHERTYPE) == ETHERTYPE_ARP
            && be16(f, at::HTYPE) == HTYPE_ETHERNET
            && be16(f, at::PTYPE) == ETHERTYPE_IPV4
            && f[at::HLEN] == ETH_ALEN
            && f[at::PLEN] == IPV4_ALEN;
        if !well_formed {
            return None;
        }
        Some(ArpPacket {
            op: Op::from_wire(be16(f, at::OP))?,
            eth_dst: mac_at(f, at::ETH_DST),
            eth_src: mac_at(f, at::ETH_SRC),
            sender_mac: mac_at(f, at::SENDER_MAC),
            sender_ip: ip_at(f, at::SENDER_IP),
            target_mac: mac_at(f, at::TARGET_MAC),
            target_ip: ip_at(f, at::TARGET_IP),
        })
    }
}

fn put(frame: &mut [u8; ARP_FRAME_LEN], offset: usize, bytes: &[u8]) {
    frame[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn be16(frame: &[u8; ARP_FRAME_LEN], offset: usize) -> u16 {
    u16::from_be_bytes([frame[offset], frame[offset + 1]])
}

fn mac_at(frame: &[u8; ARP_FRAME_LEN], offset: usize) -> [u8; 6] {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[offset..offset + 6]);
    mac
}

fn ip_at(frame: &[u8; ARP_FRAME_LEN], offset: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        frame[offset],
        frame[offset + 1],
        frame[offset + 2],
        frame[offset + 3],
    )
}

/// The MAC of another machine that `p` shows using (or about to use) `ip`, if any.
///
/// Per RFC 5227 §2.1.1 that is any ARP packet whose sender IP is `ip` (a reply to our probe,
/// the holder's own announcement, or a request it sends from that address), and also another
/// host's *probe* for `ip` (sender IP 0.0.0.0, target IP `ip`): it is about to take the
/// address too. Packets from `own_mac` are ours (looped back or reflected) and never count.
/// An unspecified `ip` claims nothing, as every probe would otherwise "use" it.
pub fn claims(p: &ArpPacket, ip: Ipv4Addr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    if p.sender_mac == own_mac || ip.is_unspecified() {
        return None;
    }
    let uses = p.sender_ip == ip;
    let probes_for = p.op == Op::Request && p.sender_ip.is_unspecified() && p.target_ip == ip;
    (uses || probes_for).then_some(p.sender_mac)
}

/// The MAC of another machine that `p` shows answering for, or announcing, `ip` (its sender
/// IP is `ip`): what a holder of `ip` watches for, since two holders on the wire means
/// clients get one or the other at random. Unlike [`claims`], another host's *probe* for `ip`
/// (sender 0.0.0.0) does not count: a standby checking before it claims holds nothing, and
/// our kernel's answer to it keeps it from claiming. Our own frames (sender MAC or Ethernet
/// source ours, as in our announcements for another MAC) never count.
pub fn answers_for(p: &ArpPacket, ip: Ipv4Addr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    if p.sender_mac == own_mac || p.eth_src == own_mac || ip.is_unspecified() {
        return None;
    }
    (p.sender_ip == ip).then_some(p.sender_mac)
}

/// A raw `AF_PACKET` socket receiving and sending ARP frames on one interface.
///
/// It lives in the network namespace of the thread that opened it, whatever thread uses it
/// later.
pub struct ArpSocket {
    link: PacketSocket,
}

impl ArpSocket {
    /// Opens the socket on `iface` (in the current network namespace) and learns the
    /// interface's MAC. Needs `CAP_NET_RAW` and must be called inside a tokio runtime with
    /// I/O enabled.
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        let link = PacketSocket::open(iface, ETHERTYPE_ARP, None)
            .with_context(|| format!("opening the ARP socket on {iface}"))?;
        Ok(Self { link })
    }

    /// The interface's own MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.link.mac()
    }

    /// Sends `packet` out of the interface as is (the Ethernet header is part of it).
    /// Does not wait: a full send buffer comes back as `WouldBlock`.
    pub fn send(&self, packet: &ArpPacket) -> io::Result<()> {
        self.link.send(&packet.to_frame(), packet.eth_dst)
    }

    /// Gratuitous ARP for `ip` at `mac`: the request form (RFC 5227 announcement), then the
    /// reply form for stacks that learn only from replies. `mac` may be another machine's
    /// (announcing the VIP back for the primary): the frames still leave with our own MAC as
    /// Ethernet source, or switches would learn the other machine's MAC on our port.
    pub fn announce(&self, ip: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
        for op in [Op::Request, Op::Reply] {
            let packet = ArpPacket {
                eth_src: self.mac(),
                ..ArpPacket::gratuitous(op, ip, mac)
            };
            self.send(&packet)?;
        }
        Ok(())
    }

    /// Sends one RFC 5227 probe for `ip` and waits up to `wait` for another machine to
    /// claim it (see [`claims`]); returns that machine's MAC. As Linux answers a probe for an
    /// address it owns, this also resolves a live host's MAC. Frames queued before the call
    /// are discarded first, so only answers to this probe count. A zero `wait` returns
    /// `None` without sending. RFC 5227's schedule (3 probes, 1-2 s apart) is the caller's.
    pub async fn probe(&self, ip: Ipv4Addr, wait: Duration) -> io::Result<Option<[u8; 6]>> {
        if wait.is_zero() {
            return Ok(None);
        }
        self.link.drain()?;
        self.send(&ArpPacket::probe(ip, self.mac()))?;
        self.listen(ip, wait).await
    }

    /// The first holder of `ip` seen within `wait`, if any.
    async fn listen(&self, ip: Ipv4Addr, wait: Duration) -> io::Result<Option<[u8; 6]>> {
        match tokio::time::timeout(wait, self.next_claim(ip)).await {
            Ok(found) => found.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    /// While we hold `ip`: sends an RFC 5227 probe for it every `every` (the first at once),
    /// which whoever else has the address answers, and reads every ARP frame meanwhile, until
    /// one shows another machine answering for or announcing `ip` (see [`answers_for`]);
    /// returns its MAC. A failed send (the link is down) is skipped: the next one may work.
    pub async fn guard(&self, ip: Ipv4Addr, every: Duration) -> io::Result<[u8; 6]> {
        self.link.drain()?;
        let mut probes = tokio::time::interval(every);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = [0u8; RECV_BUF_LEN];
        loop {
            tokio::select! {
                _ = probes.tick() => {
                    let _ = self.send(&ArpPacket::probe(ip, self.mac()));
                }
                received = self.link.recv(&mut buf) => {
                    let len = received?;
                    let holder = buf
                        .get(..len)
                        .and_then(ArpPacket::parse)
                        .and_then(|p| answers_for(&p, ip, self.mac()));
                    if let Some(mac) = holder {
                        return Ok(mac);
                    }
                }
            }
        }
    }

    /// Reads frames until one shows another machine claiming `ip`. (Our host's own
    /// transmissions never reach here: the link socket skips them.)
    async fn next_claim(&self, ip: Ipv4Addr) -> io::Result<[u8; 6]> {
        let mut buf = [0u8; RECV_BUF_LEN];
        loop {
            let len = self.link.recv(&mut buf).await?;
            let holder = buf
                .get(..len)
                .and_then(ArpPacket::parse)
                .and_then(|p| claims(&p, ip, self.mac()));
            if let Some(mac) = holder {
                return Ok(mac);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ArpSocket {
        /// Like [`ArpSocket::probe`] without sending: listens for up to `wait` for another
        /// machine claiming `ip`. Frames queued before the call are discarded, so a stale
        /// announcement (say, from the peer that held the VIP before it failed) does not read as
        /// a conflict. The daemon only probes; the tests use this to check the listening half.
        async fn watch_conflicts(
            &self,
            ip: Ipv4Addr,
            wait: Duration,
        ) -> io::Result<Option<[u8; 6]>> {
            if wait.is_zero() {
                return Ok(None);
            }
            self.link.drain()?;
            self.listen(ip, wait).await
        }
    }

    const MAC_A: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const MAC_B: [u8; 6] = [0x02, 0x66, 0x77, 0x88, 0x99, 0xaa];
    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

    #[rustfmt::skip]
    const GRATUITOUS_REQUEST: [u8; ARP_FRAME_LEN] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet destination: broadcast
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // Ethernet source
        0x08, 0x06,                         // ethertype ARP
        0x00, 0x01,                         // htype Ethernet
        0x08, 0x00,                         // ptype IPv4
        0x06, 0x04,                         // hlen, plen
        0x00, 0x01,                         // op: request
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // sender MAC
        192, 0, 2, 100,                     // sender IP
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC: zero
        192, 0, 2, 100,                     // target IP
    ];

    #[rustfmt::skip]
    const GRATUITOUS_REPLY: [u8; ARP_FRAME_LEN] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
        0x08, 0x06,
        0x00, 0x01,
        0x08, 0x00,
        0x06, 0x04,
        0x00, 0x02,                         // op: reply
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
        192, 0, 2, 100,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // target MAC: our own (arping -A)
        192, 0, 2, 100,
    ];

    #[rustfmt::skip]
    const PROBE: [u8; ARP_FRAME_LEN] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
        0x08, 0x06,
        0x00, 0x01,
        0x08, 0x00,
        0x06, 0x04,
        0x00, 0x01,
        0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
        0, 0, 0, 0,                         // sender IP: unspecified
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        192, 0, 2, 100,
    ];

    fn all_kinds() -> [ArpPacket; 3] {
        [
            ArpPacket::gratuitous(Op::Request, VIP, MAC_A),
            ArpPacket::gratuitous(Op::Reply, VIP, MAC_A),
            ArpPacket::probe(VIP, MAC_A),
        ]
    }

    #[test]
    fn gratuitous_request_layout() {
        let frame = ArpPacket::gratuitous(Op::Request, VIP, MAC_A).to_frame();
        assert_eq!(frame, GRATUITOUS_REQUEST);
    }

    #[test]
    fn gratuitous_reply_layout() {
        let frame = ArpPacket::gratuitous(Op::Reply, VIP, MAC_A).to_frame();
        assert_eq!(frame, GRATUITOUS_REPLY);
    }

    #[test]
    fn probe_layout() {
        assert_eq!(ArpPacket::probe(VIP, MAC_A).to_frame(), PROBE);
    }

    #[test]
    fn parse_inverts_to_frame() {
        let unicast_reply = ArpPacket {
            op: Op::Reply,
            eth_src: MAC_B,
            eth_dst: MAC_A,
            sender_mac: MAC_B,
            sender_ip: Ipv4Addr::new(192, 0, 2, 1),
            target_mac: MAC_A,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        for p in all_kinds().into_iter().chain([unicast_reply]) {
            assert_eq!(ArpPacket::parse(&p.to_frame()), Some(p));
        }
    }

    #[test]
    fn parse_tolerates_padding() {
        for p in all_kinds() {
            let mut padded = [0u8; 60];
            padded[..ARP_FRAME_LEN].copy_from_slice(&p.to_frame());
            assert_eq!(ArpPacket::parse(&padded), Some(p));
        }
    }

    #[test]
    fn parse_rejects_truncated_frames() {
        for len in 0..ARP_FRAME_LEN {
            assert_eq!(ArpPacket::parse(&PROBE[..len]), None, "length {len}");
        }
    }

    #[test]
    fn parse_rejects_other_types_lengths_and_ops() {
        let cases: &[(&str, usize, &[u8])] = &[
            ("ethertype IPv4", 12, &[0x08, 0x00]),
            ("ethertype RARP", 12, &[0x80, 0x35]),
            ("htype IEEE 802", 14, &[0x00, 0x06]),
            ("ptype IPv6", 16, &[0x86, 0xdd]),
            ("hlen 8", 18, &[8]),
            ("plen 16", 19, &[16]),
            ("op 0", 20, &[0x00, 0x00]),
            ("op 3 (RARP request)", 20, &[0x00, 0x03]),
            ("op byte-swapped", 20, &[0x01, 0x00]),
        ];
        for &(what, offset, bytes) in cases {
            let mut frame = GRATUITOUS_REQUEST;
            frame[offset..offset + bytes.len()].copy_from_slice(bytes);
            assert_eq!(ArpPacket::parse(&frame), None, "{what}");
        }
    }

    /// The daemon shares one socket between tasks (`Arc<ArpSocket>`, spawned futures).
    #[test]
    fn arp_socket_is_shareable_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ArpSocket>();
    }

    #[test]
    fn op_wire_values() {
        assert_eq!(Op::Request as u16, 1);
        assert_eq!(Op::Reply as u16, 2);
    }

    #[test]
    fn claims_ignores_own_mac() {
        for p in all_kinds() {
            assert_eq!(claims(&p, VIP, MAC_A), None, "{p:?}");
        }
    }

    #[test]
    fn claims_reply_from_other_mac() {
        let reply = ArpPacket {
            op: Op::Reply,
            eth_src: MAC_B,
            eth_dst: MAC_A,
            sender_mac: MAC_B,
            sender_ip: VIP,
            target_mac: MAC_A,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        assert_eq!(claims(&reply, VIP, MAC_A), Some(MAC_B));
    }

    #[test]
    fn claims_announcements_and_requests_from_the_holder() {
        let announcement = ArpPacket::gratuitous(Op::Request, VIP, MAC_B);
        assert_eq!(claims(&announcement, VIP, MAC_A), Some(MAC_B));
        let asking = ArpPacket {
            target_ip: Ipv4Addr::new(192, 0, 2, 1),
            ..announcement
        };
        assert_eq!(claims(&asking, VIP, MAC_A), Some(MAC_B));
    }

    #[test]
    fn claims_foreign_probe_for_same_ip() {
        let probe = ArpPacket::probe(VIP, MAC_B);
        assert_eq!(claims(&probe, VIP, MAC_A), Some(MAC_B));
    }

    #[test]
    fn claims_nothing_for_unrelated_ip() {
        let other = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(claims(&ArpPacket::probe(other, MAC_B), VIP, MAC_A), None);
        let announcement = ArpPacket::gratuitous(Op::Reply, other, MAC_B);
        assert_eq!(claims(&announcement, VIP, MAC_A), None);
        // A request *for* the VIP from a host using another address is not a claim.
        let asking = ArpPacket {
            op: Op::Request,
            eth_src: MAC_B,
            eth_dst: BROADCAST_MAC,
            sender_mac: MAC_B,
            sender_ip: other,
            target_mac: ZERO_MAC,
            target_ip: VIP,
        };
        assert_eq!(claims(&asking, VIP, MAC_A), None);
    }

    #[test]
    fn answers_for_counts_replies_and_announcements_from_another_mac_only() {
        let reply = ArpPacket {
            op: Op::Reply,
            eth_src: MAC_B,
            eth_dst: MAC_A,
            sender_mac: MAC_B,
            sender_ip: VIP,
            target_mac: MAC_A,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        assert_eq!(answers_for(&reply, VIP, MAC_A), Some(MAC_B));
        for op in [Op::Request, Op::Reply] {
            let announcement = ArpPacket::gratuitous(op, VIP, MAC_B);
            assert_eq!(
                answers_for(&announcement, VIP, MAC_A),
                Some(MAC_B),
                "{op:?}"
            );
        }
        // Our own frames: our probe, our announcements, and the ones we send for another MAC
        // (on release) with our Ethernet source.
        for p in all_kinds() {
            assert_eq!(answers_for(&p, VIP, MAC_A), None, "{p:?}");
        }
        let for_the_primary = ArpPacket {
            eth_src: MAC_A,
            ..ArpPacket::gratuitous(Op::Request, VIP, MAC_B)
        };
        assert_eq!(answers_for(&for_the_primary, VIP, MAC_A), None);
    }

    #[test]
    fn answers_for_ignores_probes_and_requests_for_the_vip() {
        // Another standby checking before it claims is not a holder.
        assert_eq!(answers_for(&ArpPacket::probe(VIP, MAC_B), VIP, MAC_A), None);
        let asking = ArpPacket {
            op: Op::Request,
            eth_src: MAC_B,
            eth_dst: BROADCAST_MAC,
            sender_mac: MAC_B,
            sender_ip: Ipv4Addr::new(192, 0, 2, 3),
            target_mac: ZERO_MAC,
            target_ip: VIP,
        };
        assert_eq!(answers_for(&asking, VIP, MAC_A), None);
        let other = ArpPacket::gratuitous(Op::Reply, Ipv4Addr::new(192, 0, 2, 7), MAC_B);
        assert_eq!(answers_for(&other, VIP, MAC_A), None);
        let any = ArpPacket::gratuitous(Op::Reply, Ipv4Addr::UNSPECIFIED, MAC_B);
        assert_eq!(answers_for(&any, Ipv4Addr::UNSPECIFIED, MAC_A), None);
    }

    #[test]
    fn claims_nothing_for_unspecified_ip() {
        let probe = ArpPacket::probe(VIP, MAC_B);
        assert_eq!(claims(&probe, Ipv4Addr::UNSPECIFIED, MAC_A), None);
    }

    #[test]
    fn arp_open_names_missing_interface() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let err = match rt.block_on(async { ArpSocket::open("xarp-missing0") }) {
            Ok(_) => panic!("opened an ARP socket on a missing interface"),
            Err(err) => format!("{err:#}"),
        };
        assert!(err.contains("xarp-missing0"), "{err}");
    }

    /// Tests against the kernel's ARP, in a throwaway lab of two network namespaces: root only.
    mod privileged {
        use std::{
            sync::{
                atomic::{AtomicBool, Ordering},
                mpsc, Arc,
            },
            thread,
            time::{Duration, Instant},
        };

        use xdprobe_harness::{
            enter::{join, run_async_in as run_in, spawn_async_in as spawn_in},
            Lab,
        };

        use super::super::*;

        /// Host A's address (the side running the ArpSocket under test).
        const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
        /// Host B's address (the "live host").
        const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

        /// Hosts `a` and `b` joined by a veth pair, both ends named `eth0`, both up; deleted on
        /// drop, also when the test fails.
        fn lab() -> Lab {
            let lab = Lab::with_pair(("a", &format!("{A_IP}/24")), ("b", &format!("{B_IP}/24")))
                .unwrap_or_else(|e| panic!("building the ARP lab: {e:#}"));
            // Until the link is operationally up the veth's qdisc drops what we send.
            for host in ["a", "b"] {
                lab.wait_until_up(host, Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("{e:#}"));
            }
            lab
        }

        fn mac_of(lab: &Lab, host: &str) -> [u8; 6] {
            parse_mac(&lab.mac(host).unwrap_or_else(|e| panic!("{e:#}")))
        }

        /// `ip -n <host> args`, panicking with its stderr if it fails; returns its stdout.
        fn ip(lab: &Lab, host: &str, args: &[&str]) -> String {
            lab.ip(host, args).unwrap_or_else(|e| panic!("{e:#}"))
        }

        fn parse_mac(s: &str) -> [u8; 6] {
            let bytes: Vec<u8> = s
                .split(':')
                .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("{s}: {e}")))
                .collect();
            bytes
                .try_into()
                .unwrap_or_else(|_| panic!("not a MAC: {s}"))
        }

        fn format_mac(mac: [u8; 6]) -> String {
            mac.map(|b| format!("{b:02x}")).join(":")
        }

        fn assert_send<T: Send>(t: T) -> T {
            t
        }

        fn open_eth0() -> ArpSocket {
            ArpSocket::open("eth0").unwrap_or_else(|e| panic!("{e:#}"))
        }

        #[test]
        fn arp_probe_resolves_live_host_mac() {
            let lab = lab();
            let (a_mac, b_mac) = (mac_of(&lab, "a"), mac_of(&lab, "b"));
            let (own, zero_wait, found) = run_in(&lab.ns("a"), || async {
                let sock = open_eth0();
                let zero_wait = sock.probe(B_IP, Duration::ZERO).await.expect("probe");
                // Spawned by the daemon, so the future must be Send.
                let found = assert_send(sock.probe(B_IP, Duration::from_secs(1)))
                    .await
                    .expect("probe");
                (sock.mac(), zero_wait, found)
            });
            assert_eq!(own, a_mac, "ArpSocket::mac disagrees with `ip link`");
            assert_eq!(zero_wait, None, "a zero wait must not listen");
            assert_eq!(found, Some(b_mac), "B's kernel should answer the probe");
        }

        #[test]
        fn arp_probe_for_unused_address_times_out() {
            let lab = lab();
            let (found, elapsed) = run_in(&lab.ns("a"), || async {
                let sock = open_eth0();
                let start = Instant::now();
                let found = sock
                    .probe(Ipv4Addr::new(192, 0, 2, 77), Duration::from_millis(50))
                    .await
                    .expect("probe");
                (found, start.elapsed())
            });
            assert_eq!(found, None);
            assert!(
                elapsed >= Duration::from_millis(50) && elapsed < Duration::from_millis(200),
                "probe took {elapsed:?} for a 50 ms wait"
            );
        }

        #[test]
        fn arp_announce_updates_peer_neighbour_entry() {
            let lab = lab();
            let a_mac = mac_of(&lab, "a");
            // arp_accept=0: Linux only updates entries it already has, so plant a stale one.
            #[rustfmt::skip]
            ip(&lab, "b", &["neigh", "add", "192.0.2.100", "lladdr", "02:00:00:00:00:99",
                            "dev", "eth0", "nud", "stale"]);
            run_in(&lab.ns("a"), move || async move {
                open_eth0().announce(super::VIP, a_mac).expect("announce");
            });
            let want = format_mac(a_mac);
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                let entry = ip(&lab, "b", &["neigh", "show", "192.0.2.100", "dev", "eth0"]);
                if entry.contains(&want) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "B's neighbour entry never learned {want}: {entry}"
                );
                thread::sleep(Duration::from_millis(10));
            }
        }

        #[test]
        fn arp_watch_conflicts_sees_foreign_reply() {
            let lab = lab();
            let (a_mac, b_mac) = (mac_of(&lab, "a"), mac_of(&lab, "b"));
            let claimed = Ipv4Addr::new(192, 0, 2, 50);
            let stop = Arc::new(AtomicBool::new(false));
            // B keeps sending a crafted unicast reply from `claimed` until A has seen one:
            // A drains its queue when it starts watching, so a single early frame could be lost.
            let sender = spawn_in(&lab.ns("b"), {
                let stop = Arc::clone(&stop);
                move || async move {
                    let sock = open_eth0();
                    let reply = ArpPacket {
                        op: Op::Reply,
                        eth_src: sock.mac(),
                        eth_dst: a_mac,
                        sender_mac: sock.mac(),
                        sender_ip: claimed,
                        target_mac: a_mac,
                        target_ip: A_IP,
                    };
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        sock.send(&reply).expect("send");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
            let seen = run_in(&lab.ns("a"), move || async move {
                open_eth0()
                    .watch_conflicts(claimed, Duration::from_secs(2))
                    .await
                    .expect("watch_conflicts")
            });
            stop.store(true, Ordering::Relaxed);
            join(sender);
            assert_eq!(seen, Some(b_mac));
        }

        #[test]
        fn arp_watch_conflicts_ignores_frames_queued_before_the_call() {
            let lab = lab();
            let (a_mac, b_mac) = (mac_of(&lab, "a"), mac_of(&lab, "b"));
            let claimed = Ipv4Addr::new(192, 0, 2, 70);
            let (opened_tx, opened) = mpsc::channel();
            let (sent_tx, sent) = mpsc::channel();
            let watcher = spawn_in(&lab.ns("a"), move || async move {
                let (watcher, witness) = (open_eth0(), open_eth0());
                opened_tx.send(()).expect("test thread gone");
                sent.recv().expect("test thread gone");
                let watched = watcher
                    .watch_conflicts(claimed, Duration::from_millis(100))
                    .await
                    .expect("watch_conflicts");
                // `listen` does not drain: proves the stale frame was queued.
                let queued = witness
                    .listen(claimed, Duration::from_millis(100))
                    .await
                    .expect("listen");
                (watched, queued)
            });
            opened.recv().expect("watcher thread failed");
            run_in(&lab.ns("b"), move || async move {
                let sock = open_eth0();
                let stale = ArpPacket {
                    eth_dst: a_mac,
                    target_mac: a_mac,
                    ..ArpPacket::gratuitous(Op::Reply, claimed, sock.mac())
                };
                sock.send(&stale).expect("send");
            });
            thread::sleep(Duration::from_millis(50));
            sent_tx.send(()).expect("watcher thread failed");
            let (watched, queued) = join(watcher);
            assert_eq!(queued, Some(b_mac), "the stale frame never reached A");
            assert_eq!(watched, None, "a frame queued before the call counted");
        }

        #[test]
        fn arp_watch_conflicts_ignores_own_transmissions() {
            let lab = lab();
            let claimed = Ipv4Addr::new(192, 0, 2, 60);
            let seen = run_in(&lab.ns("a"), move || async move {
                let (watcher, talker) = (open_eth0(), open_eth0());
                let talk = async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // Sent from this host, even when the frame names a foreign MAC.
                    talker.announce(claimed, talker.mac()).expect("announce");
                    talker
                        .announce(claimed, [0x02, 0, 0, 0, 0, 0x99])
                        .expect("announce");
                };
                let (seen, ()) = tokio::join!(
                    watcher.watch_conflicts(claimed, Duration::from_millis(150)),
                    talk
                );
                seen.expect("watch_conflicts")
            });
            assert_eq!(seen, None);
        }
    }
}
