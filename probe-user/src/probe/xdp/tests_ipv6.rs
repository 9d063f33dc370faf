//! The XDP program run by the kernel on crafted IPv6 frames (`BPF_PROG_TEST_RUN`): ICMPv6 echo
//! replies with and without extension headers, fragments, truncated frames, forged replies,
//! unknown hosts, and IPv4 and IPv6 hosts side by side in one table.

/// Root only, like the IPv4 tests whose helpers these share.
mod privileged {
    use std::net::{IpAddr, Ipv6Addr};

    use probe_common::{
        maps::{answer_bit, HostSlot, Stat},
        wire::{
            write_echo6, ProbeHeader, ECHO6_PACKET_LEN, ETH_HDR_LEN, ICMPV6_ECHO_REPLY,
            ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HDR_LEN,
            IPV6_HOP_BY_HOP, IPV6_ROUTING,
        },
    };
    use xdprobe_harness::require_root;

    use crate::probe::{
        counters::Counters as _,
        xdp::tests::privileged::{
            ethernet, loaded, reply, run, signed, DROP, IDENT, PASS, PRIMARY, SEQ, WINDOW,
        },
    };

    const PRIMARY6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    const OTHER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9));
    const ME6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    /// An IPv6 frame from `src` to us whose extension headers are `ext` (each 8 bytes, of the
    /// types listed, in order), then an ICMPv6 message of `icmp_type` carrying `probe`.
    fn frame6(src: IpAddr, ext: &[u8], icmp_type: u8, ident: u16, probe: ProbeHeader) -> Vec<u8> {
        let IpAddr::V6(src) = src else {
            panic!("{src}: an IPv6 frame needs an IPv6 address");
        };
        let mut icmp = [0u8; ECHO6_PACKET_LEN];
        write_echo6(icmp_type, ident, 1, &probe, &mut icmp);
        let mut payload = Vec::new();
        for (i, kind) in ext.iter().enumerate() {
            let next = ext.get(i + 1).copied().unwrap_or(IPPROTO_ICMPV6);
            // 8 bytes: next header, length 0 (8-octet units beyond the first 8), then padding
            // (or a fragment header's offset, flags and identification).
            let mut header = [0u8; 8];
            header[0] = next;
            if *kind == IPV6_FRAGMENT {
                header[3] = 1; // more fragments follow
            }
            payload.extend_from_slice(&header);
        }
        payload.extend_from_slice(&icmp);
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        ip.push(ext.first().copied().unwrap_or(IPPROTO_ICMPV6));
        ip.push(64);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&ME6.octets());
        assert_eq!(ip.len(), IPV6_HDR_LEN);
        ip.extend(payload);
        ethernet(0x86dd, &ip)
    }

    fn reply6(src: IpAddr, probe: ProbeHeader) -> Vec<u8> {
        frame6(src, &[], ICMPV6_ECHO_REPLY, IDENT, probe)
    }

    #[test]
    fn an_icmpv6_reply_is_counted_once_and_its_replay_is_not() {
        require_root();
        let xdp = loaded(&[PRIMARY6], 1, false);
        let frame = reply6(PRIMARY6, signed(PRIMARY6, WINDOW, SEQ, 1_000_000));
        assert_eq!(run(&xdp, &frame), (DROP, vec![Stat::Counted]));
        let slot = xdp.slot(0);
        assert_eq!(slot.total_replies, 1);
        assert_eq!(slot.answered, answer_bit(SEQ));
        assert!(
            (1_000_000..4_000_000_000).contains(&slot.rtt_ns),
            "rtt {}",
            slot.rtt_ns
        );
        assert_eq!(run(&xdp, &frame), (PASS, vec![Stat::Replayed]));
        assert_eq!(xdp.slot(0).total_replies, 1);
    }

    #[test]
    fn replies_after_option_and_routing_headers_are_counted_fragments_are_not() {
        require_root();
        let xdp = loaded(&[PRIMARY6], 1, false);
        let probe = |seq| signed(PRIMARY6, WINDOW, seq, 1_000);
        let counted: [(&str, &[u8]); 4] = [
            ("hop-by-hop", &[IPV6_HOP_BY_HOP]),
            ("destination options", &[IPV6_DEST_OPTS]),
            (
                "hop-by-hop, destination options, routing",
                &[IPV6_HOP_BY_HOP, IPV6_DEST_OPTS, IPV6_ROUTING],
            ),
            (
                "four headers",
                &[
                    IPV6_HOP_BY_HOP,
                    IPV6_DEST_OPTS,
                    IPV6_ROUTING,
                    IPV6_DEST_OPTS,
                ],
            ),
        ];
        for (i, (name, ext)) in counted.iter().enumerate() {
            let frame = frame6(
                PRIMARY6,
                ext,
                ICMPV6_ECHO_REPLY,
                IDENT,
                probe(SEQ - i as u32),
            );
            assert_eq!(run(&xdp, &frame), (DROP, vec![Stat::Counted]), "{name}");
        }
        assert_eq!(xdp.slot(0).total_replies, 4);
        let passed: [(&str, &[u8]); 3] = [
            ("a fragment", &[IPV6_FRAGMENT]),
            (
                "a fragment after hop-by-hop",
                &[IPV6_HOP_BY_HOP, IPV6_FRAGMENT],
            ),
            ("five headers", &[IPV6_DEST_OPTS; 5]),
        ];
        for (name, ext) in passed {
            let frame = frame6(PRIMARY6, ext, ICMPV6_ECHO_REPLY, IDENT, probe(SEQ - 10));
            assert_eq!(run(&xdp, &frame), (PASS, vec![]), "{name}");
        }
        assert_eq!(xdp.slot(0).total_replies, 4);
    }

    #[test]
    fn forged_unknown_foreign_and_truncated_icmpv6_pass_and_count_nothing() {
        require_root();
        let xdp = loaded(&[PRIMARY6, OTHER6], 2, false);
        let good = signed(PRIMARY6, WINDOW, SEQ, 1_000);
        let stranger = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77));
        let cases: [(&str, Vec<u8>, Vec<Stat>); 5] = [
            (
                "OTHER6's probe sent back from PRIMARY6's address",
                reply6(PRIMARY6, signed(OTHER6, WINDOW, SEQ, 1_000)),
                vec![Stat::Forged],
            ),
            (
                "an unmonitored host",
                reply6(stranger, signed(stranger, WINDOW, SEQ, 1_000)),
                vec![Stat::UnknownHost],
            ),
            (
                "an echo request, not a reply",
                frame6(PRIMARY6, &[], ICMPV6_ECHO_REQUEST, IDENT, good),
                vec![],
            ),
            (
                "another identifier",
                frame6(PRIMARY6, &[], ICMPV6_ECHO_REPLY, IDENT + 1, good),
                vec![],
            ),
            (
                "an IPv4 probe's MAC from an IPv6 host",
                reply6(PRIMARY6, signed(PRIMARY, WINDOW, SEQ, 1_000)),
                vec![Stat::Forged],
            ),
        ];
        for (name, frame, stats) in cases {
            assert_eq!(run(&xdp, &frame), (PASS, stats), "{name}");
        }
        let full = reply6(PRIMARY6, good);
        for len in ETH_HDR_LEN..full.len() {
            assert_eq!(
                run(&xdp, &full[..len]),
                (PASS, vec![]),
                "truncated to {len} bytes"
            );
        }
        assert_eq!(xdp.slot(0), HostSlot::default());
        assert_eq!(xdp.slot(1), HostSlot::default());
        // The frame in full, last: counted.
        assert_eq!(run(&xdp, &full), (DROP, vec![Stat::Counted]));
    }

    #[test]
    fn ipv4_and_ipv6_hosts_count_in_their_own_slots_and_ipv4_space_is_not_searched() {
        require_root();
        // Slots in IpAddr order: IPv4 first.
        let xdp = loaded(&[PRIMARY, PRIMARY6, OTHER6], 3, false);
        let v6 = reply6(OTHER6, signed(OTHER6, WINDOW, SEQ, 1_000));
        assert_eq!(run(&xdp, &v6), (DROP, vec![Stat::Counted]));
        let v4 = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ, 1_000));
        assert_eq!(run(&xdp, &v4), (DROP, vec![Stat::Counted]));
        let counts: Vec<u32> = (0..3).map(|i| xdp.slot(i).total_replies).collect();
        assert_eq!(counts, [1, 0, 1]);
        // ::192.0.2.1 is where the IPv4 host 192.0.2.1 is keyed: an IPv6 reply from there is
        // not looked up at all, even carrying that host's probe.
        let IpAddr::V4(primary) = PRIMARY else {
            unreachable!()
        };
        let compatible = IpAddr::V6(primary.to_ipv6_compatible());
        let sneaky = reply6(compatible, signed(PRIMARY, WINDOW, SEQ - 1, 1_000));
        assert_eq!(run(&xdp, &sneaky), (PASS, vec![]));
        assert_eq!(xdp.slot(0).total_replies, 1);
    }
}
