//! Neighbour discovery: frame layouts against etherparse, the claim rule, and (as root) the
//! socket against a real kernel on a veth pair.

use etherparse::{Icmpv6Type, SlicedPacket, TransportSlice};

use super::*;

const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const THEIRS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x0c0f, 0xfe00);

#[test]
fn groups_and_their_macs() {
    assert_eq!(
        solicited_node(VIP),
        "ff02::1:ff0f:fe00".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(
        multicast_mac(solicited_node(VIP)),
        [0x33, 0x33, 0xff, 0x0f, 0xfe, 0x00]
    );
    assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
}

/// The ICMPv6 part of `frame` as an independent parser reads it (checksum verified).
fn icmpv6(frame: &[u8]) -> (etherparse::Ipv6Header, Icmpv6Type, Vec<u8>) {
    let sliced = SlicedPacket::from_ethernet(frame).expect("a valid frame");
    let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else {
        panic!("not IPv6");
    };
    let header = ip.header().to_header();
    let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        panic!("not ICMPv6");
    };
    let expected = icmp
        .icmp_type()
        .calc_checksum(header.source, header.destination, icmp.payload())
        .expect("checksum");
    assert_eq!(icmp.checksum(), expected, "ICMPv6 checksum");
    (header, icmp.icmp_type(), icmp.payload().to_vec())
}

#[test]
fn an_unsolicited_advertisement_goes_to_all_nodes_with_override_and_the_mac() {
    let source = "fe80::a".parse().unwrap();
    let packet = NdpPacket::unsolicited(OURS, source, VIP, THEIRS, false);
    let frame = packet.to_frame();
    assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(&frame[6..12], &OURS);
    let (ip, kind, payload) = icmpv6(&frame);
    assert_eq!(ip.hop_limit, 255);
    assert_eq!(ip.source, source.octets());
    assert_eq!(ip.destination, ALL_NODES.octets());
    // etherparse knows ND messages only as type, code and the four bytes after the checksum.
    let Icmpv6Type::Unknown {
        type_u8: 136,
        code_u8: 0,
        bytes5to8: [flags, 0, 0, 0],
    } = kind
    else {
        panic!("not an advertisement: {kind:?}");
    };
    assert_eq!(flags, 0x20, "Override only");
    // Target, then the target link-layer address option: THEIRS.
    assert_eq!(&payload[..16], &VIP.octets());
    assert_eq!(&payload[16..], &[2, 1, 2, 0, 0, 0, 0, 0x0b]);
    assert_eq!(NdpPacket::parse(&frame), Some(packet));
    // With forwarding on, the Router flag.
    let router = NdpPacket::unsolicited(OURS, source, VIP, OURS, true);
    let kind = icmpv6(&router.to_frame()).1;
    assert!(
        matches!(
            kind,
            Icmpv6Type::Unknown {
                type_u8: 136,
                bytes5to8: [0xa0, 0, 0, 0],
                ..
            }
        ),
        "Router and Override: {kind:?}"
    );
}

#[test]
fn a_dad_probe_comes_from_nowhere_to_the_solicited_node_group_without_a_link_option() {
    let packet = NdpPacket::dad_probe(OURS, VIP);
    let frame = packet.to_frame();
    assert_eq!(&frame[..6], &[0x33, 0x33, 0xff, 0x0f, 0xfe, 0x00]);
    let (ip, kind, payload) = icmpv6(&frame);
    assert_eq!(ip.source, [0; 16]);
    assert_eq!(ip.destination, solicited_node(VIP).octets());
    assert_eq!(ip.hop_limit, 255);
    assert!(
        matches!(
            kind,
            Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0, 0, 0, 0]
            }
        ),
        "{kind:?}"
    );
    assert_eq!(payload, VIP.octets(), "the target and no option");
    assert_eq!(NdpPacket::parse(&frame), Some(packet));
}

#[test]
fn invalid_messages_are_not_parsed() {
    let frame =
        NdpPacket::unsolicited(OURS, "fe80::a".parse().unwrap(), VIP, OURS, false).to_frame();
    for len in 0..frame.len() - 8 {
        assert_eq!(NdpPacket::parse(&frame[..len]), None, "cut to {len}");
    }
    let mut forwarded = frame.clone();
    forwarded[ETH_HDR_LEN + 7] = 254; // hop limit: came through a router
    assert_eq!(NdpPacket::parse(&forwarded), None);
    let mut corrupt = frame.clone();
    corrupt[ETH_HDR_LEN + IPV6_HDR_LEN + 8] ^= 1; // the target, under the checksum
    assert_eq!(NdpPacket::parse(&corrupt), None);
    let mut echo = frame;
    echo[ETH_HDR_LEN + IPV6_HDR_LEN] = 129;
    assert_eq!(NdpPacket::parse(&echo), None);
}

#[test]
fn claims_are_answers_announcements_uses_and_rival_probes_from_others_only() {
    let holder = NdpPacket::unsolicited(THEIRS, VIP, VIP, THEIRS, false);
    assert_eq!(claims(&holder, VIP, OURS), Some(THEIRS));
    assert_eq!(claims(&holder, "2001:db8::1".parse().unwrap(), OURS), None);
    // Our own announcement, looped back or reflected, never counts.
    let ours = NdpPacket::unsolicited(OURS, VIP, VIP, OURS, false);
    assert_eq!(claims(&ours, VIP, OURS), None);
    // Another machine announcing the VIP at its own MAC from its link-local address.
    let for_them = NdpPacket::unsolicited(THEIRS, "fe80::b".parse().unwrap(), VIP, THEIRS, false);
    assert_eq!(claims(&for_them, VIP, OURS), Some(THEIRS));
    // Our own announcement of the VIP for another machine (giving it back): it leaves with
    // our Ethernet source and names their MAC; it is no other holder.
    let given_back = NdpPacket::unsolicited(OURS, "fe80::a".parse().unwrap(), VIP, THEIRS, false);
    assert_eq!(claims(&given_back, VIP, OURS), None);
    assert_eq!(answers_for(&given_back, VIP, OURS), None);
    // Another machine's DAD for the VIP: it is about to take it.
    let rival = NdpPacket::dad_probe(THEIRS, VIP);
    assert_eq!(claims(&rival, VIP, OURS), Some(THEIRS));
    // While we hold the VIP the same probe is no other holder: our kernel answers it.
    assert_eq!(answers_for(&rival, VIP, OURS), None);
    assert_eq!(answers_for(&holder, VIP, OURS), Some(THEIRS));
    // Someone resolving a neighbour from the VIP: it uses the address.
    let using = NdpPacket {
        ip_src: VIP,
        target: "2001:db8::1".parse().unwrap(),
        link_addr: Some(THEIRS),
        ..NdpPacket::dad_probe(THEIRS, VIP)
    };
    assert_eq!(claims(&using, VIP, OURS), Some(THEIRS));
    // Someone merely resolving the VIP (from its own address) claims nothing.
    let asking = NdpPacket {
        ip_src: "2001:db8::1".parse().unwrap(),
        link_addr: Some(THEIRS),
        ..NdpPacket::dad_probe(THEIRS, VIP)
    };
    assert_eq!(claims(&asking, VIP, OURS), None);
}

/// Against a real kernel: two namespaces joined by a veth pair. Root only.
mod privileged {
    use std::time::{Duration, Instant};

    use xdprobe_harness::{enter::run_async_in as run_in, Lab};

    use super::super::*;

    const A: &str = "2001:db8::1";
    const B: &str = "2001:db8::2";
    const HELD: &str = "2001:db8::100";

    fn lab() -> Lab {
        let lab = Lab::with_pair(("a", "192.0.2.1/24"), ("b", "192.0.2.2/24"))
            .unwrap_or_else(|e| panic!("building the lab: {e:#}"));
        for (host, addr) in [("a", A), ("b", B)] {
            lab.ip(
                host,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{addr}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
            lab.wait_until_up(host, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        lab
    }

    fn mac_of(lab: &Lab, host: &str) -> [u8; 6] {
        let text = lab.mac(host).unwrap_or_else(|e| panic!("{e:#}"));
        let bytes: Vec<u8> = text
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("{text}: {e}")))
            .collect();
        bytes
            .try_into()
            .unwrap_or_else(|_| panic!("not a MAC: {text}"))
    }

    #[test]
    fn a_dad_probe_finds_the_holder_and_times_out_on_a_free_address() {
        let lab = lab();
        lab.ip(
            "b",
            &[
                "-6",
                "addr",
                "add",
                &format!("{HELD}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let b_mac = mac_of(&lab, "b");
        let (held, free, waited) = run_in(&lab.ns("a"), || async {
            let socket = NdpSocket::open("eth0").unwrap_or_else(|e| panic!("{e:#}"));
            let held = socket
                .probe(HELD.parse().unwrap(), Duration::from_secs(1))
                .await
                .expect("probe");
            let start = Instant::now();
            let free = socket
                .probe("2001:db8::101".parse().unwrap(), Duration::from_millis(300))
                .await
                .expect("probe");
            (held, free, start.elapsed())
        });
        assert_eq!(
            held,
            Some(b_mac),
            "b's kernel answers the DAD probe for its address"
        );
        assert_eq!(free, None);
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
    }

    #[test]
    fn an_unsolicited_advertisement_moves_the_neighbours_entry_to_our_mac() {
        let lab = lab();
        // b knows HELD at some other MAC, as it would after talking to the old holder.
        lab.ip(
            "b",
            &[
                "-6",
                "neigh",
                "add",
                HELD,
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "eth0",
                "nud",
                "stale",
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let a_mac = mac_of(&lab, "a");
        let (source, router) = run_in(&lab.ns("a"), || async {
            let socket = NdpSocket::open("eth0").unwrap_or_else(|e| panic!("{e:#}"));
            let source = link_local("eth0").expect("a link-local address on eth0");
            let router = forwarding("eth0");
            socket
                .send(&NdpPacket::unsolicited(
                    socket.mac(),
                    source,
                    HELD.parse().unwrap(),
                    socket.mac(),
                    router,
                ))
                .expect("announce");
            (source, router)
        });
        assert!(source.is_unicast_link_local(), "{source}");
        assert!(!router, "the lab does not forward");
        let want = a_mac.map(|b| format!("{b:02x}")).join(":");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let neigh = lab
                .ip("b", &["-6", "neigh", "show", HELD, "dev", "eth0"])
                .unwrap_or_else(|e| panic!("{e:#}"));
            if neigh.contains(&want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "b still has {neigh:?}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
