//! Wire layout of a probe: IPv4 header, ICMP echo header, then our [`ProbeHeader`]; or, for
//! IPv6, the ICMPv6 echo header then the same [`ProbeHeader`] (the kernel writes the IPv6
//! header and the ICMPv6 checksum); and the walk over IPv6 extension headers to the ICMPv6
//! header of a reply.
//!
//! All multi-byte fields are big-endian on the wire. The header is made of byte arrays so that it
//! has alignment 1 and can be read in place at any offset inside a packet (the XDP program does).

/// Identifies our payload among other echo traffic: "XDP2" (the second format: per-host MACs).
pub const PROBE_MAGIC: u32 = 0x5844_5032;

use crate::{
    host::HostKey,
    mac::{probe_mac, Key},
};

pub const ETH_HDR_LEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPV4_HDR_LEN: usize = 20;
pub const IPPROTO_ICMP: u8 = 1;
pub const ICMP_HDR_LEN: usize = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HDR_LEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// Extension headers a reply may carry before its ICMPv6 header, and how many we skip.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTS: u8 = 60;
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// Bytes of an ICMPv6 echo request as we hand it to a raw ICMPv6 socket.
pub const ECHO6_PACKET_LEN: usize = ICMP_HDR_LEN + ProbeHeader::LEN;

/// Bytes of an echo packet as we send it (no link-layer header).
pub const ECHO_PACKET_LEN: usize = IPV4_HDR_LEN + ICMP_HDR_LEN + ProbeHeader::LEN;

/// Our payload, carried in the echo request and returned verbatim in the reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProbeHeader {
    magic: [u8; 4],
    /// The window the probe belongs to; its reply counts for that window, however late.
    window: [u8; 4],
    /// The probe's sequence (`round * attempts + attempt`): each probe is answered once.
    seq: [u8; 4],
    /// CLOCK_MONOTONIC nanoseconds at send time (the clock `bpf_ktime_get_ns` reads).
    sent_ns: [u8; 8],
    /// [`crate::mac::probe_mac`] of the destination, our identifier and the fields above,
    /// under the window's key.
    mac: [u8; 8],
}

impl ProbeHeader {
    pub const LEN: usize = core::mem::size_of::<ProbeHeader>();

    pub const fn new(window: u32, seq: u32, sent_ns: u64, mac: u64) -> Self {
        Self {
            magic: PROBE_MAGIC.to_be_bytes(),
            window: window.to_be_bytes(),
            seq: seq.to_be_bytes(),
            sent_ns: sent_ns.to_be_bytes(),
            mac: mac.to_be_bytes(),
        }
    }

    /// The header of a probe to `dst` with identifier `ident`, authenticated with `key`.
    #[inline(always)]
    pub fn signed(
        key: &Key,
        dst: HostKey,
        ident: u16,
        window: u32,
        seq: u32,
        sent_ns: u64,
    ) -> Self {
        Self::new(
            window,
            seq,
            sent_ns,
            probe_mac(key, dst, ident, window, seq, sent_ns),
        )
    }

    #[inline(always)]
    pub fn magic(&self) -> u32 {
        u32::from_be_bytes(self.magic)
    }
    #[inline(always)]
    pub fn window(&self) -> u32 {
        u32::from_be_bytes(self.window)
    }
    #[inline(always)]
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes(self.seq)
    }
    #[inline(always)]
    pub fn sent_ns(&self) -> u64 {
        u64::from_be_bytes(self.sent_ns)
    }
    #[inline(always)]
    pub fn mac(&self) -> u64 {
        u64::from_be_bytes(self.mac)
    }

    /// Whether this header is what we sent to `dst` with `ident`: its MAC is right under `key`.
    #[inline(always)]
    pub fn is_authentic(&self, key: &Key, dst: HostKey, ident: u16) -> bool {
        self.mac() == probe_mac(key, dst, ident, self.window(), self.seq(), self.sent_ns())
    }

    /// Reads a header from its wire bytes (no validation: see [`crate::verdict`]).
    pub fn from_bytes(b: [u8; Self::LEN]) -> Self {
        let mut h = Self::default();
        h.magic.copy_from_slice(&b[0..4]);
        h.window.copy_from_slice(&b[4..8]);
        h.seq.copy_from_slice(&b[8..12]);
        h.sent_ns.copy_from_slice(&b[12..20]);
        h.mac.copy_from_slice(&b[20..28]);
        h
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..4].copy_from_slice(&self.magic);
        out[4..8].copy_from_slice(&self.window);
        out[8..12].copy_from_slice(&self.seq);
        out[12..20].copy_from_slice(&self.sent_ns);
        out[20..28].copy_from_slice(&self.mac);
        out
    }
}

/// One echo packet (request or reply) as far as we care about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoPacket {
    /// Source address octets; all zero lets the kernel choose (raw sockets with `IP_HDRINCL`).
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub icmp_type: u8,
    pub ident: u16,
    pub seq: u16,
    pub probe: ProbeHeader,
}

impl EchoPacket {
    /// Writes the IPv4 + ICMP + probe bytes, both checksums included.
    pub fn write(&self, buf: &mut [u8; ECHO_PACKET_LEN]) {
        let total = ECHO_PACKET_LEN as u16;
        let ip = &mut buf[..IPV4_HDR_LEN];
        ip[0] = 0x45; // version 4, 5 words
        ip[1] = 0; // tos
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        // Any non-zero id: with DF set it identifies no fragments (RFC 6864), and a zero one
        // would make the kernel pick one for every probe (a hash and a random number each).
        let id = self.seq.wrapping_add(self.ident) | 1;
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
        ip[8] = 64; // ttl
        ip[9] = IPPROTO_ICMP;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        let ip_sum = checksum(ip);
        ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());

        let icmp = &mut buf[IPV4_HDR_LEN..];
        icmp[0] = self.icmp_type;
        icmp[1] = 0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        icmp[4..6].copy_from_slice(&self.ident.to_be_bytes());
        icmp[6..8].copy_from_slice(&self.seq.to_be_bytes());
        icmp[ICMP_HDR_LEN..].copy_from_slice(&self.probe.to_bytes());
        let icmp_sum = checksum(icmp);
        icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
    }
}

/// Writes an ICMPv6 echo message (header and probe) with a zero checksum: a raw ICMPv6
/// socket computes it over the IPv6 pseudo-header, which only the kernel knows in full.
pub fn write_echo6(
    icmp_type: u8,
    ident: u16,
    seq: u16,
    probe: &ProbeHeader,
    buf: &mut [u8; ECHO6_PACKET_LEN],
) {
    buf[0] = icmp_type;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&[0, 0]);
    buf[4..6].copy_from_slice(&ident.to_be_bytes());
    buf[6..8].copy_from_slice(&seq.to_be_bytes());
    buf[ICMP_HDR_LEN..].copy_from_slice(&probe.to_bytes());
}

/// An ICMPv6 echo reply as a raw ICMPv6 socket hands it over (ICMPv6 header first): its
/// identifier and our probe header; `None` for anything else.
pub fn parse_echo6_reply(icmp: &[u8]) -> Option<(u16, ProbeHeader)> {
    if *icmp.first()? != ICMPV6_ECHO_REPLY || *icmp.get(1)? != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([*icmp.get(4)?, *icmp.get(5)?]);
    let probe = icmp.get(ICMP_HDR_LEN..ICMP_HDR_LEN + ProbeHeader::LEN)?;
    Some((ident, ProbeHeader::from_bytes(probe.try_into().ok()?)))
}

/// Where an IPv6 packet's upper-layer header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Payload {
    /// An ICMPv6 header at this offset.
    Icmpv6(usize),
    /// Anything else: another protocol, a fragment (left to the stack to reassemble), more
    /// extension headers than we skip, or a truncated chain.
    Other,
}

/// Walks the extension headers of an IPv6 packet whose fixed header says `next` and whose
/// first extension header would start at `offset`, skipping hop-by-hop, routing and
/// destination options (at most [`MAX_IPV6_EXT_HEADERS`]). `read(offset)` gives the two bytes
/// an extension header starts with (its next header and its length in 8-octet units beyond
/// the first 8), or `None` past the end. The XDP program and the tests share it.
#[inline(always)]
pub fn ipv6_payload(
    mut next: u8,
    mut offset: usize,
    read: impl Fn(usize) -> Option<[u8; 2]>,
) -> Ipv6Payload {
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_ICMPV6 => return Ipv6Payload::Icmpv6(offset),
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let Some([after, len]) = read(offset) else {
                    return Ipv6Payload::Other;
                };
                next = after;
                offset += (usize::from(len) + 1) * 8;
            }
            _ => return Ipv6Payload::Other,
        }
    }
    if next == IPPROTO_ICMPV6 {
        Ipv6Payload::Icmpv6(offset)
    } else {
        Ipv6Payload::Other
    }
}

/// An echo reply as seen by a raw IPv4 socket (IPv4 header first): its source address
/// (host order), ICMP identifier and our probe header; `None` for anything else.
pub fn parse_echo_reply(packet: &[u8]) -> Option<(u32, u16, ProbeHeader)> {
    let (&vihl, _) = packet.split_first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_HDR_LEN || *packet.get(9)? != IPPROTO_ICMP {
        return None;
    }
    if u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x3fff != 0 {
        return None;
    }
    let src = u32::from_be_bytes(packet.get(12..16)?.try_into().ok()?);
    let icmp = packet.get(ihl..)?;
    if *icmp.first()? != ICMP_ECHO_REPLY || *icmp.get(1)? != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([*icmp.get(4)?, *icmp.get(5)?]);
    let probe = icmp.get(ICMP_HDR_LEN..ICMP_HDR_LEN + ProbeHeader::LEN)?;
    Some((src, ident, ProbeHeader::from_bytes(probe.try_into().ok()?)))
}

/// The Internet checksum (RFC 1071) of `data`, ready to store big-endian.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use etherparse::{IcmpEchoHeader, Icmpv4Slice, Icmpv4Type, Ipv4Slice};

    fn sample() -> EchoPacket {
        EchoPacket {
            src: [192, 0, 2, 2],
            dst: [192, 0, 2, 1],
            icmp_type: ICMP_ECHO_REQUEST,
            ident: 0xbeef,
            seq: 7,
            probe: ProbeHeader::new(41, 3, 123_456_789_000, 0xdead_cafe_f00d_0001),
        }
    }

    #[test]
    fn probe_header_is_28_bytes_with_alignment_one() {
        assert_eq!(ProbeHeader::LEN, 28);
        assert_eq!(core::mem::align_of::<ProbeHeader>(), 1);
        assert_eq!(ECHO_PACKET_LEN, 56);
    }

    #[test]
    fn probe_header_round_trips_fields() {
        let h = ProbeHeader::new(u32::MAX, 2, u64::MAX - 5, 0x0102_0304_0506_0708);
        assert_eq!(h.magic(), PROBE_MAGIC);
        assert_eq!(h.window(), u32::MAX);
        assert_eq!(h.seq(), 2);
        assert_eq!(h.sent_ns(), u64::MAX - 5);
        assert_eq!(h.mac(), 0x0102_0304_0506_0708);
        assert_eq!(&h.to_bytes()[..4], b"XDP2");
        assert_eq!(ProbeHeader::from_bytes(h.to_bytes()), h);
    }

    #[test]
    fn a_signed_header_is_authentic_for_its_host_only() {
        let key = Key { k0: 11, k1: 12 };
        let (primary, witness) = (HostKey::v4(0xc000_0201), HostKey::v4(0xc000_02fe));
        let h = ProbeHeader::signed(&key, primary, 0x4242, 9, 17, 1_000);
        assert!(h.is_authentic(&key, primary, 0x4242));
        // The witness's probe cannot pass as the primary's reply, nor another ident's, nor
        // under another window's key.
        assert!(!h.is_authentic(&key, witness, 0x4242));
        assert!(!h.is_authentic(&key, primary, 0x4243));
        assert!(!h.is_authentic(&Key { k0: 11, k1: 13 }, primary, 0x4242));
        let mut bytes = h.to_bytes();
        bytes[12] ^= 1; // another send time
        assert!(!ProbeHeader::from_bytes(bytes).is_authentic(&key, primary, 0x4242));
    }

    #[test]
    fn echo_packet_parses_as_valid_ipv4_icmp_in_an_independent_parser() {
        let mut buf = [0u8; ECHO_PACKET_LEN];
        sample().write(&mut buf);
        let ip = Ipv4Slice::from_slice(&buf).expect("valid IPv4");
        let hdr = ip.header().to_header();
        assert_eq!(hdr.source, [192, 0, 2, 2]);
        assert_eq!(hdr.destination, [192, 0, 2, 1]);
        assert_eq!(hdr.protocol, etherparse::IpNumber::ICMP);
        assert_eq!(hdr.header_checksum, hdr.calc_header_checksum());
        let icmp = Icmpv4Slice::from_slice(ip.payload().payload).expect("valid ICMP");
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 0xbeef, seq: 7 })
        );
        let expected = icmp.header().icmp_type.calc_checksum(icmp.payload());
        assert_eq!(icmp.checksum(), expected);
        assert_eq!(icmp.payload(), &sample().probe.to_bytes());
    }

    #[test]
    fn checksum_of_data_with_its_checksum_is_zero() {
        let mut buf = [0u8; ECHO_PACKET_LEN];
        sample().write(&mut buf);
        assert_eq!(checksum(&buf[..IPV4_HDR_LEN]), 0);
        assert_eq!(checksum(&buf[IPV4_HDR_LEN..]), 0);
    }

    #[test]
    fn echo_replies_parse_back_and_everything_else_is_refused() {
        let mut reply = sample();
        reply.icmp_type = ICMP_ECHO_REPLY;
        let mut buf = [0u8; ECHO_PACKET_LEN];
        reply.write(&mut buf);
        assert_eq!(
            parse_echo_reply(&buf),
            Some((u32::from_be_bytes([192, 0, 2, 2]), 0xbeef, reply.probe))
        );
        for len in 0..buf.len() {
            assert_eq!(parse_echo_reply(&buf[..len]), None, "truncated to {len}");
        }
        let mut request = [0u8; ECHO_PACKET_LEN];
        sample().write(&mut request);
        assert_eq!(parse_echo_reply(&request), None, "echo request");
        let mut fragment = buf;
        fragment[6] = 0x20;
        assert_eq!(parse_echo_reply(&fragment), None, "fragment");
        let mut udp = buf;
        udp[9] = 17;
        assert_eq!(parse_echo_reply(&udp), None, "UDP");
    }

    #[test]
    fn echo6_requests_parse_in_an_independent_parser_and_replies_parse_back() {
        use etherparse::{Icmpv6Slice, Icmpv6Type};
        let probe = sample().probe;
        let mut buf = [0u8; ECHO6_PACKET_LEN];
        write_echo6(ICMPV6_ECHO_REQUEST, 0xbeef, 7, &probe, &mut buf);
        let icmp = Icmpv6Slice::from_slice(&buf).expect("valid ICMPv6");
        assert_eq!(
            icmp.icmp_type(),
            Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 0xbeef, seq: 7 })
        );
        assert_eq!(icmp.payload(), &probe.to_bytes());
        assert_eq!(parse_echo6_reply(&buf), None, "a request is no reply");
        write_echo6(ICMPV6_ECHO_REPLY, 0xbeef, 7, &probe, &mut buf);
        assert_eq!(parse_echo6_reply(&buf), Some((0xbeef, probe)));
        for len in 0..buf.len() {
            assert_eq!(parse_echo6_reply(&buf[..len]), None, "truncated to {len}");
        }
    }

    /// Extension headers as (next header, total length) from the fixed header's `next`.
    fn chain(next: u8, headers: &[(u8, usize)]) -> (u8, std::vec::Vec<u8>) {
        let mut bytes = std::vec::Vec::new();
        for (after, len) in headers {
            let mut h = std::vec![0u8; *len];
            h[0] = *after;
            h[1] = (len / 8 - 1) as u8;
            bytes.extend(h);
        }
        (next, bytes)
    }

    fn walk(next: u8, bytes: &[u8]) -> Ipv6Payload {
        ipv6_payload(next, 0, |at| Some([*bytes.get(at)?, *bytes.get(at + 1)?]))
    }

    #[test]
    fn the_walk_skips_up_to_four_option_and_routing_headers() {
        assert_eq!(walk(IPPROTO_ICMPV6, &[]), Ipv6Payload::Icmpv6(0));
        let (next, b) = chain(IPV6_HOP_BY_HOP, &[(IPPROTO_ICMPV6, 8)]);
        assert_eq!(walk(next, &b), Ipv6Payload::Icmpv6(8));
        let (next, b) = chain(
            IPV6_HOP_BY_HOP,
            &[
                (IPV6_DEST_OPTS, 8),
                (IPV6_ROUTING, 24),
                (IPV6_DEST_OPTS, 16),
                (IPPROTO_ICMPV6, 8),
            ],
        );
        assert_eq!(walk(next, &b), Ipv6Payload::Icmpv6(56));
        let (next, b) = chain(
            IPV6_DEST_OPTS,
            &[
                (IPV6_DEST_OPTS, 8),
                (IPV6_DEST_OPTS, 8),
                (IPV6_DEST_OPTS, 8),
                (IPV6_DEST_OPTS, 8),
                (IPPROTO_ICMPV6, 8),
            ],
        );
        assert_eq!(walk(next, &b), Ipv6Payload::Other, "five is too many");
    }

    #[test]
    fn fragments_other_protocols_and_truncated_chains_are_not_ours() {
        let (next, b) = chain(IPV6_FRAGMENT, &[(IPPROTO_ICMPV6, 8)]);
        assert_eq!(walk(next, &b), Ipv6Payload::Other);
        let (next, b) = chain(IPV6_HOP_BY_HOP, &[(IPV6_FRAGMENT, 8), (IPPROTO_ICMPV6, 8)]);
        assert_eq!(walk(next, &b), Ipv6Payload::Other);
        assert_eq!(walk(17, &[]), Ipv6Payload::Other, "UDP");
        assert_eq!(
            walk(IPV6_HOP_BY_HOP, &[58]),
            Ipv6Payload::Other,
            "cut short"
        );
    }

    #[test]
    fn checksum_handles_odd_lengths() {
        // RFC 1071 pads an odd trailing byte with zero.
        assert_eq!(checksum(&[0x01]), checksum(&[0x01, 0x00]));
        assert_eq!(checksum(&[]), 0xffff);
    }
}
