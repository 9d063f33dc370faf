//! IPv6 neighbour discovery on the VIP's interface (RFC 4861): unsolicited Neighbour
//! Advertisements that move an IPv6 VIP in the LAN's caches, and a DAD-style Neighbour
//! Solicitation (RFC 4862, from `::`) that asks whether anyone still answers for an address
//! before we claim it, and resolves the holder's MAC. IPv6's counterpart of `act::arp`.
//!
//! Frames are built and parsed here (pure, tested against an independent parser) and go over
//! an `AF_PACKET` socket ([`NdpSocket`]) whose kernel filter passes Neighbour Solicitations
//! and Advertisements only.

use std::{io, net::Ipv6Addr, time::Duration};

use probe_common::wire::{ETH_HDR_LEN, ETH_P_IPV6 as ETHERTYPE_IPV6, IPPROTO_ICMPV6, IPV6_HDR_LEN};

use super::link::PacketSocket;

/// Every ND message is sent, and must be received, with hop limit 255 (RFC 4861 7.1.1).
const ND_HOP_LIMIT: u8 = 255;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const OPT_SOURCE_LINK_ADDR: u8 = 1;
const OPT_TARGET_LINK_ADDR: u8 = 2;
/// NA flags, in the first byte after the checksum.
const FLAG_ROUTER: u8 = 0x80;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

/// ff02::1, every node on the link.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Receive buffer: ND messages we look at are under 100 bytes; longer ones (with more
/// options) are truncated, and only their first options are read.
const RECV_BUF_LEN: usize = 256;

/// Kernel filter (classic BPF): IPv6 frames whose next header is ICMPv6 (no extension headers:
/// ND messages carry none) of type 135 or 136.
const FILTER: [libc::sock_filter; 9] = [
    op(0x28, 0, 0, 12),                             // ldh [12]: EtherType
    op(0x15, 0, 5, ETHERTYPE_IPV6 as u32),          // not IPv6: drop
    op(0x30, 0, 0, 20),                             // ldb [20]: next header
    op(0x15, 0, 3, IPPROTO_ICMPV6 as u32),          // not ICMPv6: drop
    op(0x30, 0, 0, 54),                             // ldb [54]: ICMPv6 type
    op(0x15, 2, 0, NEIGHBOUR_SOLICITATION as u32),  // NS: accept
    op(0x15, 1, 0, NEIGHBOUR_ADVERTISEMENT as u32), // NA: accept
    op(0x06, 0, 0, 0),                              // drop
    op(0x06, 0, 0, RECV_BUF_LEN as u32),            // accept (this many bytes)
];

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Which ND message, with an advertisement's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Solicitation,
    Advertisement {
        router: bool,
        solicited: bool,
        override_: bool,
    },
}

/// A Neighbour Solicitation or Advertisement as far as failover cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdpPacket {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub ip_src: Ipv6Addr,
    pub ip_dst: Ipv6Addr,
    pub kind: Kind,
    /// The address the message is about.
    pub target: Ipv6Addr,
    /// The link-layer address option: the source's for a solicitation, the target's for an
    /// advertisement.
    pub link_addr: Option<[u8; 6]>,
}

impl NdpPacket {
    /// An unsolicited advertisement (RFC 4861 7.2.6) that `target` is at `mac`: to all nodes,
    /// Override set, Solicited clear, Router as given (set only when we forward), from
    /// `ip_src` (an address of ours on the link) and our `eth_src`.
    pub fn unsolicited(
        eth_src: [u8; 6],
        ip_src: Ipv6Addr,
        target: Ipv6Addr,
        mac: [u8; 6],
        router: bool,
    ) -> Self {
        Self {
            eth_src,
            eth_dst: multicast_mac(ALL_NODES),
            ip_src,
            ip_dst: ALL_NODES,
            kind: Kind::Advertisement {
                router,
                solicited: false,
                override_: true,
            },
            target,
            link_addr: Some(mac),
        }
    }

    /// Duplicate address detection's solicitation for `target` (RFC 4862 5.4.2): from `::` to
    /// the target's solicited-node group, without a source link-layer option (there is no
    /// source address to bind it to). A holder answers with an advertisement to all nodes.
    pub fn dad_probe(eth_src: [u8; 6], target: Ipv6Addr) -> Self {
        let group = solicited_node(target);
        Self {
            eth_src,
            eth_dst: multicast_mac(group),
            ip_src: Ipv6Addr::UNSPECIFIED,
            ip_dst: group,
            kind: Kind::Solicitation,
            target,
            link_addr: None,
        }
    }

    /// The frame: Ethernet, IPv6 (hop limit 255), ICMPv6 with its checksum.
    pub fn to_frame(self) -> Vec<u8> {
        let mut icmp = Vec::with_capacity(32);
        match self.kind {
            Kind::Solicitation => icmp.extend_from_slice(&[NEIGHBOUR_SOLICITATION, 0, 0, 0]),
            Kind::Advertisement { .. } => {
                icmp.extend_from_slice(&[NEIGHBOUR_ADVERTISEMENT, 0, 0, 0])
            }
        }
        let flags = match self.kind {
            Kind::Solicitation => 0,
            Kind::Advertisement {
                router,
                solicited,
                override_,
            } => {
                (if router { FLAG_ROUTER } else { 0 })
                    | (if solicited { FLAG_SOLICITED } else { 0 })
                    | (if override_ { FLAG_OVERRIDE } else { 0 })
            }
        };
        icmp.extend_from_slice(&[flags, 0, 0, 0]);
        icmp.extend_from_slice(&self.target.octets());
        if let Some(mac) = self.link_addr {
            let option = match self.kind {
                Kind::Solicitation => OPT_SOURCE_LINK_ADDR,
                Kind::Advertisement { .. } => OPT_TARGET_LINK_ADDR,
            };
            icmp.extend_from_slice(&[option, 1]);
            icmp.extend_from_slice(&mac);
        }
        let sum = icmpv6_checksum(self.ip_src, self.ip_dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HDR_LEN + IPV6_HDR_LEN + icmp.len());
        frame.extend_from_slice(&self.eth_dst);
        frame.extend_from_slice(&self.eth_src);
        frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[IPPROTO_ICMPV6, ND_HOP_LIMIT]);
        frame.extend_from_slice(&self.ip_src.octets());
        frame.extend_from_slice(&self.ip_dst.octets());
        frame.extend_from_slice(&icmp);
        frame
    }

    /// A valid solicitation or advertisement (RFC 4861 7.1: hop limit 255, code 0, a good
    /// checksum, a whole target address), or `None`.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let ip = frame.get(ETH_HDR_LEN..)?;
        if ether_type != ETHERTYPE_IPV6 || ip.first()? >> 4 != 6 {
            return None;
        }
        if *ip.get(6)? != IPPROTO_ICMPV6 || *ip.get(7)? != ND_HOP_LIMIT {
            return None;
        }
        let payload_len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
        let ip_src = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?);
        let ip_dst = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?);
        let icmp = ip.get(IPV6_HDR_LEN..IPV6_HDR_LEN + payload_len)?;
        if icmp.len() < 24 || icmp[1] != 0 || icmpv6_checksum(ip_src, ip_dst, icmp) != 0 {
            return None;
        }
        let kind = match icmp[0] {
            NEIGHBOUR_SOLICITATION => Kind::Solicitation,
            NEIGHBOUR_ADVERTISEMENT => Kind::Advertisement {
                router: icmp[4] & FLAG_ROUTER != 0,
                solicited: icmp[4] & FLAG_SOLICITED != 0,
                override_: icmp[4] & FLAG_OVERRIDE != 0,
            },
            _ => return None,
        };
        let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
        let wanted = match kind {
            Kind::Solicitation => OPT_SOURCE_LINK_ADDR,
            Kind::Advertisement { .. } => OPT_TARGET_LINK_ADDR,
        };
        Some(Self {
            eth_dst: frame.get(0..6)?.try_into().ok()?,
            eth_src: frame.get(6..12)?.try_into().ok()?,
            ip_src,
            ip_dst,
            kind,
            target,
            link_addr: link_option(&icmp[24..], wanted),
        })
    }
}

/// The MAC in the first option of type `wanted` (options are 8-octet units; a zero length
/// ends the walk, as RFC 4861 says such a packet is invalid).
fn link_option(mut options: &[u8], wanted: u8) -> Option<[u8; 6]> {
    while options.len() >= 8 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if options[0] == wanted {
            return options[2..8].try_into().ok();
        }
        options = &options[len..];
    }
    None
}

/// Before we claim `ip`: whether `p` shows another machine than `own_mac` holding or taking
/// it; its MAC if so: what [`answers_for`] counts, or another machine's DAD probe for `ip`
/// (it is about to take it).
pub fn claims(p: &NdpPacket, ip: Ipv6Addr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    let rival_probe = p.kind == Kind::Solicitation && p.ip_src.is_unspecified() && p.target == ip;
    if rival_probe {
        return foreign_mac(p, ip, own_mac);
    }
    answers_for(p, ip, own_mac)
}

/// While we hold `ip`: whether `p` shows another machine than `own_mac` answering for or
/// using it; its MAC if so: an advertisement for `ip` (an answer to our guard's probe, or
/// the holder announcing itself), or a solicitation *from* `ip`. Another machine's DAD probe
/// does not count here (as `arp::answers_for` ignores ARP probes): our kernel answers it for
/// us, so that machine will not take the address, and yielding to it would leave the VIP
/// to nobody.
pub fn answers_for(p: &NdpPacket, ip: Ipv6Addr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    let answers = match p.kind {
        Kind::Advertisement { .. } => p.target == ip,
        Kind::Solicitation => p.ip_src == ip,
    };
    if answers {
        foreign_mac(p, ip, own_mac)
    } else {
        None
    }
}

/// The MAC `p` speaks for, unless it is ours (looped back or reflected, or our announcement
/// for another machine) or `ip` is unspecified (every DAD probe would "use" it).
fn foreign_mac(p: &NdpPacket, ip: Ipv6Addr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    let mac = p.link_addr.unwrap_or(p.eth_src);
    if p.eth_src == own_mac || mac == own_mac || ip.is_unspecified() {
        return None;
    }
    Some(mac)
}

/// The solicited-node multicast group of `addr` (RFC 4291 2.7.1): ff02::1:ffXX:XXXX.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address of IPv6 multicast group `group` (RFC 2464 7): 33:33 and its last
/// four bytes.
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The ICMPv6 checksum over the IPv6 pseudo-header (RFC 8200 8.1) and `icmp` (whose checksum
/// field is zero when computing, or the checksum when verifying: then the result is 0).
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
    pseudo.extend_from_slice(icmp);
    probe_common::wire::checksum(&pseudo)
}

/// Whether `iface` forwards IPv6 (its `forwarding` sysctl in the current network namespace):
/// an advertisement then sets the Router flag, so hosts keep using us as a router.
pub fn forwarding(iface: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
}

/// The interface's link-local address, the source of advertisements for an address that is
/// not (or no longer) ours.
pub fn link_local(iface: &str) -> Option<Ipv6Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| a.address?.as_sockaddr_in6().map(|s| s.ip()))
        .find(Ipv6Addr::is_unicast_link_local)
}

/// A raw socket sending and watching Neighbour Solicitations and Advertisements on one
/// interface.
pub struct NdpSocket {
    link: PacketSocket,
}

impl NdpSocket {
    /// Opens the socket on `iface` (current network namespace). Needs `CAP_NET_RAW` and a
    /// tokio runtime with I/O enabled.
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        Ok(Self {
            link: PacketSocket::open(iface, ETHERTYPE_IPV6, Some(&FILTER))?,
        })
    }

    /// The interface's own MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.link.mac()
    }

    pub fn send(&self, packet: &NdpPacket) -> io::Result<()> {
        self.link.send(&packet.to_frame(), packet.eth_dst)
    }

    /// Sends one DAD-style solicitation for `ip` and waits up to `wait` for another machine
    /// to claim it (see [`claims`]); returns its MAC. Frames queued before are discarded, so
    /// only answers to this probe count. A zero `wait` returns `None` without sending.
    pub async fn probe(&self, ip: Ipv6Addr, wait: Duration) -> io::Result<Option<[u8; 6]>> {
        if wait.is_zero() {
            return Ok(None);
        }
        self.link.drain()?;
        self.send(&NdpPacket::dad_probe(self.mac(), ip))?;
        match tokio::time::timeout(wait, self.next_claim(ip)).await {
            Ok(found) => found.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    /// Reads messages until one shows another machine holding or taking `ip`.
    async fn next_claim(&self, ip: Ipv6Addr) -> io::Result<[u8; 6]> {
        let mut buf = [0u8; RECV_BUF_LEN];
        loop {
            let len = self.link.recv(&mut buf).await?;
            let holder = buf
                .get(..len)
                .and_then(NdpPacket::parse)
                .and_then(|p| claims(&p, ip, self.mac()));
            if let Some(mac) = holder {
                return Ok(mac);
            }
        }
    }

    /// While we hold `ip`: sends a DAD-style solicitation for it every `every` (the first at
    /// once), which whoever else has the address answers, and reads every ND message
    /// meanwhile, until one shows another machine answering for it (see [`answers_for`]);
    /// returns its MAC. A failed send (the link is down) is skipped: the next one may work.
    pub async fn guard(&self, ip: Ipv6Addr, every: Duration) -> io::Result<[u8; 6]> {
        self.link.drain()?;
        let mut probes = tokio::time::interval(every);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = [0u8; RECV_BUF_LEN];
        loop {
            tokio::select! {
                _ = probes.tick() => {
                    let _ = self.send(&NdpPacket::dad_probe(self.mac(), ip));
                }
                received = self.link.recv(&mut buf) => {
                    let len = received?;
                    let holder = buf
                        .get(..len)
                        .and_then(NdpPacket::parse)
                        .and_then(|p| answers_for(&p, ip, self.mac()));
                    if let Some(mac) = holder {
                        return Ok(mac);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
