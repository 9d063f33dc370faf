//! The XDP program run by the kernel on crafted IPv4 frames (`BPF_PROG_TEST_RUN`), and the
//! helpers the IPv6 tests share.

/// Every test loads the XDP program and runs it with `BPF_PROG_TEST_RUN`: root only
/// (CAP_BPF + CAP_NET_ADMIN).
pub(crate) mod privileged {
    use std::{net::Ipv4Addr, time::Duration};

    use probe_common::wire::{
        EchoPacket, ProbeHeader, ECHO_PACKET_LEN, ETH_HDR_LEN, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
    };

    use super::super::*;
    use xdprobe_harness::require_root;

    use crate::probe::clock::monotonic_ns;

    impl XdpProbe {
        /// Runs the loaded (not necessarily attached) program once on `frame` with
        /// `BPF_PROG_TEST_RUN`; returns the XDP action.
        pub(crate) fn test_run(&self, frame: &[u8]) -> anyhow::Result<u32> {
            use aya::programs::{TestRun as _, TestRunOptions};
            let program: &Xdp = self
                .ebpf
                .program(PROGRAM_NAME)
                .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing"))?
                .try_into()?;
            let result = program.test_run(TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            })?;
            Ok(result.return_value)
        }
    }

    pub(crate) const PRIMARY: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    pub(crate) const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
    pub(crate) const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    pub(crate) const IDENT: u16 = 0x4242;
    pub(crate) const WINDOW: u32 = 7;
    pub(crate) const SEQ: u32 = 100;
    pub(crate) const KEY: Key = Key {
        k0: 0x0bad_cafe,
        k1: 0xf00d,
    };
    // enum xdp_action in <linux/bpf.h>.
    pub(crate) const DROP: u32 = 1;
    pub(crate) const PASS: u32 = 2;

    pub(crate) const ACCEPT: Accept = Accept {
        ident: IDENT,
        seq_max: SEQ,
        timeout: Duration::from_secs(1),
    };

    /// PRIMARY as the one host, window WINDOW's key installed, sequences up to SEQ out.
    pub(crate) fn loaded(hosts: &[IpAddr], capacity: usize, reloadable: bool) -> XdpProbe {
        let mut xdp =
            XdpProbe::load(hosts, capacity, reloadable, false).expect("load (needs root)");
        xdp.set_key(WINDOW, KEY).unwrap();
        xdp.publish(ACCEPT).unwrap();
        xdp
    }

    pub(crate) fn probe() -> XdpProbe {
        loaded(&[PRIMARY], 1, false)
    }

    pub(crate) fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// A reply from `src` carrying `probe`.
    fn v4(addr: IpAddr) -> Ipv4Addr {
        match addr {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => panic!("{v6}: an IPv4 reply needs an IPv4 address"),
        }
    }

    pub(crate) fn reply(src: IpAddr, ident: u16, probe: ProbeHeader) -> Vec<u8> {
        let mut ip = [0u8; ECHO_PACKET_LEN];
        EchoPacket {
            src: v4(src).octets(),
            dst: v4(ME).octets(),
            icmp_type: ICMP_ECHO_REPLY,
            ident,
            seq: 1,
            probe,
        }
        .write(&mut ip);
        ethernet(0x0800, &ip)
    }

    /// The probe we would have sent `dst` (seq, window, sent `ago` before now).
    pub(crate) fn signed(dst: IpAddr, window: u32, seq: u32, ago: u64) -> ProbeHeader {
        ProbeHeader::signed(
            &KEY,
            HostKey::from(dst),
            IDENT,
            window,
            seq,
            monotonic_ns() - ago,
        )
    }

    pub(crate) fn valid() -> Vec<u8> {
        reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ, 1_000_000))
    }

    /// Runs `frame` and returns the action and which counters moved.
    pub(crate) fn run(xdp: &XdpProbe, frame: &[u8]) -> (u32, Vec<Stat>) {
        let before = xdp.kernel_stats().unwrap();
        let action = xdp.test_run(frame).unwrap();
        let after = xdp.kernel_stats().unwrap();
        let moved = Stat::ALL
            .into_iter()
            .filter(|s| after[*s as usize] != before[*s as usize])
            .collect();
        (action, moved)
    }

    #[test]
    fn a_reply_is_counted_once_with_its_rtt_and_its_replay_is_not() {
        require_root();
        let xdp = probe();
        let frame = valid();
        assert_eq!(run(&xdp, &frame), (DROP, vec![Stat::Counted]));
        let slot = xdp.slot(0);
        assert_eq!(slot.total_replies, 1);
        assert_eq!(slot.answered, probe_common::maps::answer_bit(SEQ));
        assert_eq!(slot.last_seq, SEQ);
        // Sent 1 ms "ago": the kernel's RTT is at least that, and sane.
        assert!(
            (1_000_000..4_000_000_000).contains(&slot.rtt_ns),
            "rtt {}",
            slot.rtt_ns
        );
        // The very same reply again: its probe was answered already.
        assert_eq!(run(&xdp, &frame), (PASS, vec![Stat::Replayed]));
        assert_eq!(xdp.slot(0).total_replies, 1);
        // The retry of the same round is another probe: it counts.
        let retry = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 1, 500_000));
        assert_eq!(run(&xdp, &retry), (DROP, vec![Stat::Counted]));
        assert_eq!(xdp.slot(0).total_replies, 2);
    }

    #[test]
    fn another_hosts_probe_sent_back_from_the_primarys_address_is_not_counted() {
        require_root();
        let xdp = loaded(&[PRIMARY, OTHER], 2, false);
        // OTHER (a witness, a monitored host) received its own probe and answers it as if it
        // were the primary: the MAC names OTHER, not PRIMARY.
        let stolen = signed(OTHER, WINDOW, SEQ, 1_000);
        assert_eq!(
            run(&xdp, &reply(PRIMARY, IDENT, stolen)),
            (PASS, vec![Stat::Forged])
        );
        assert_eq!(xdp.slot(0), HostSlot::default());
        // From OTHER's own address it is a good answer.
        assert_eq!(
            run(&xdp, &reply(OTHER, IDENT, stolen)),
            (DROP, vec![Stat::Counted])
        );
    }

    #[test]
    fn replies_that_are_not_ours_or_not_timely_pass_and_count_nothing() {
        require_root();
        let xdp = loaded(&[PRIMARY], 1, false);
        let mut tampered = signed(PRIMARY, WINDOW, SEQ, 1_000).to_bytes();
        tampered[27] ^= 1;
        let cases: [(&str, Vec<u8>, Vec<Stat>); 8] = [
            (
                "wrong identifier",
                reply(PRIMARY, IDENT + 1, signed(PRIMARY, WINDOW, SEQ, 1_000)),
                vec![],
            ),
            (
                "a MAC that is not ours",
                reply(PRIMARY, IDENT, ProbeHeader::from_bytes(tampered)),
                vec![Stat::Forged],
            ),
            (
                "a window whose key was never installed",
                reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW + 1, SEQ, 1_000)),
                vec![Stat::Stale],
            ),
            (
                "older than the timeout",
                reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ, 1_100_000_000)),
                vec![Stat::Stale],
            ),
            (
                "a sequence not sent yet",
                reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ + 1, 1_000)),
                vec![Stat::Stale],
            ),
            (
                "a sequence whose answer bit is reused",
                reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 64, 1_000)),
                vec![Stat::Stale],
            ),
            (
                "an unmonitored host",
                reply(OTHER, IDENT, signed(OTHER, WINDOW, SEQ, 1_000)),
                vec![Stat::UnknownHost],
            ),
            (
                "no magic",
                {
                    let mut bytes = signed(PRIMARY, WINDOW, SEQ, 1_000).to_bytes();
                    bytes[0] = b'Y';
                    reply(PRIMARY, IDENT, ProbeHeader::from_bytes(bytes))
                },
                vec![],
            ),
        ];
        for (name, frame, stats) in cases {
            assert_eq!(run(&xdp, &frame), (PASS, stats), "{name}");
        }
        assert_eq!(xdp.slot(0), HostSlot::default());
    }

    #[test]
    fn vlan_tagged_replies_are_counted() {
        require_root();
        let xdp = probe();
        let plain = valid();
        let tag = |tpid: u16, vid: u16| {
            let mut t = tpid.to_be_bytes().to_vec();
            t.extend_from_slice(&vid.to_be_bytes());
            t
        };
        // 802.1Q: the tag between the MACs and the EtherType.
        let mut dot1q = plain[..12].to_vec();
        dot1q.extend(tag(0x8100, 42));
        dot1q.extend_from_slice(&plain[12..]);
        assert_eq!(run(&xdp, &dot1q), (DROP, vec![Stat::Counted]));
        // 802.1ad outer tag, then 802.1Q (QinQ), for another probe.
        let second = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 1, 1_000));
        let mut qinq = second[..12].to_vec();
        qinq.extend(tag(0x88a8, 7));
        qinq.extend(tag(0x8100, 42));
        qinq.extend_from_slice(&second[12..]);
        assert_eq!(run(&xdp, &qinq), (DROP, vec![Stat::Counted]));
        // Three tags are more than we look through: passed untouched.
        let third = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 2, 1_000));
        let mut deep = third[..12].to_vec();
        for _ in 0..3 {
            deep.extend(tag(0x8100, 1));
        }
        deep.extend_from_slice(&third[12..]);
        assert_eq!(run(&xdp, &deep), (PASS, vec![]));
        assert_eq!(xdp.slot(0).total_replies, 2);
    }

    #[test]
    fn truncated_malformed_and_other_frames_pass() {
        require_root();
        let xdp = probe();
        let full = valid();
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        // Truncated inside IPv4, ICMP and our header (BPF_PROG_TEST_RUN refuses frames
        // shorter than an Ethernet header, so no shorter case can reach the program).
        for len in [
            ETH_HDR_LEN,
            ETH_HDR_LEN + 10,
            ETH_HDR_LEN + 19,
            ETH_HDR_LEN + 27,
            full.len() - 1,
        ] {
            cases.push((format!("truncated to {len}"), full[..len].to_vec()));
        }
        let mut arp = full.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        cases.push(("ARP ethertype".into(), arp));
        let mut v6 = full.clone();
        v6[ETH_HDR_LEN] = 0x65;
        cases.push(("IP version 6 in an IPv4 frame".into(), v6));
        let mut short_ihl = full.clone();
        short_ihl[ETH_HDR_LEN] = 0x44;
        cases.push(("IHL below 5".into(), short_ihl));
        let mut udp = full.clone();
        udp[ETH_HDR_LEN + 9] = 17;
        cases.push(("UDP".into(), udp));
        let mut fragment = full.clone();
        fragment[ETH_HDR_LEN + 6] = 0x20; // more fragments
        cases.push(("first fragment".into(), fragment));
        let mut request = full.clone();
        request[ETH_HDR_LEN + 20] = ICMP_ECHO_REQUEST;
        cases.push(("echo request".into(), request));
        let mut ihl_too_long = full.clone();
        ihl_too_long[ETH_HDR_LEN] = 0x4f; // 60-byte header: our payload would lie past the end
        cases.push(("IHL beyond the frame".into(), ihl_too_long));
        for (name, frame) in cases {
            assert_eq!(xdp.test_run(&frame).unwrap(), PASS, "{name}");
        }
        assert_eq!(xdp.slot(0), HostSlot::default());
        assert_eq!(xdp.kernel_stats().unwrap(), [0; Stat::COUNT as usize]);
    }

    #[test]
    fn ip_options_shift_the_icmp_header_and_are_handled() {
        require_root();
        let xdp = probe();
        let plain = valid();
        // Insert 4 bytes of options (NOPs + end of list) after the 20-byte IPv4 header.
        let mut frame = plain[..ETH_HDR_LEN + 20].to_vec();
        frame[ETH_HDR_LEN] = 0x46;
        frame.extend_from_slice(&[1, 1, 1, 0]);
        frame.extend_from_slice(&plain[ETH_HDR_LEN + 20..]);
        assert_eq!(xdp.test_run(&frame).unwrap(), DROP);
        assert_eq!(xdp.slot(0).total_replies, 1);
    }

    #[test]
    fn nothing_counts_before_the_first_publish() {
        require_root();
        let mut xdp = XdpProbe::load(&[PRIMARY], 1, false, false).expect("load (needs root)");
        xdp.set_key(WINDOW, KEY).unwrap();
        assert_eq!(xdp.test_run(&valid()).unwrap(), PASS);
        xdp.publish(ACCEPT).unwrap();
        assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
    }

    #[test]
    fn clearing_an_answer_bit_lets_the_next_probe_with_it_count() {
        require_root();
        let mut xdp = probe();
        assert_eq!(run(&xdp, &valid()).0, DROP);
        // 64 sequences later the same bit belongs to a new probe: cleared before it is
        // sent, its answer counts.
        xdp.clear(0, probe_common::maps::answer_bit(SEQ + 64));
        xdp.publish(Accept {
            seq_max: SEQ + 64,
            ..ACCEPT
        })
        .unwrap();
        let newer = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ + 64, 1_000));
        assert_eq!(run(&xdp, &newer), (DROP, vec![Stat::Counted]));
        assert_eq!(xdp.slot(0).total_replies, 2);
    }

    #[test]
    fn rehosting_switches_tables_without_pausing_and_keeps_each_hosts_counters() {
        require_root();
        const LOW: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0));
        let mut xdp = loaded(&[PRIMARY], 4, true);
        assert_eq!(run(&xdp, &valid()).0, DROP);
        let other = |seq| reply(OTHER, IDENT, signed(OTHER, WINDOW, seq, 1_000));
        assert_eq!(run(&xdp, &other(SEQ)).0, PASS, "not watched yet");

        // A host before PRIMARY and one after: PRIMARY's slot moves from 0 to 1.
        xdp.rehost(&[LOW, PRIMARY, OTHER], &[None, Some(0), None])
            .unwrap();
        // Counting goes on at once, in the new tables.
        assert_eq!(run(&xdp, &other(SEQ)), (DROP, vec![Stat::Counted]));
        let retry = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 1, 1_000));
        assert_eq!(run(&xdp, &retry).0, DROP);
        assert_eq!(xdp.slot(0), HostSlot::default());
        assert_eq!(xdp.slot(1).total_replies, 2, "moved, then counted again");
        assert_eq!(xdp.slot(2).total_replies, 1);
        // The copy kept PRIMARY's answer: its replay does not count in the new table.
        assert_eq!(run(&xdp, &valid()), (PASS, vec![Stat::Replayed]));

        // What the old table counted after the copy (a CPU still in it) is merged at the
        // next publish: simulate one more answer there.
        let (bits, total) = xdp.slot_atomics(1 - (xdp.value.generation as usize & 1));
        bits.fetch_or(probe_common::maps::answer_bit(SEQ - 2), Ordering::SeqCst);
        total.fetch_add(1, Ordering::SeqCst);
        xdp.publish(ACCEPT).unwrap();
        let slot = xdp.slot(1);
        assert_eq!(slot.total_replies, 3);
        assert_ne!(slot.answered & probe_common::maps::answer_bit(SEQ - 2), 0);

        // PRIMARY removed: OTHER keeps its counters, PRIMARY's replies count no more.
        xdp.rehost(&[OTHER], &[Some(2)]).unwrap();
        let fresh = reply(PRIMARY, IDENT, signed(PRIMARY, WINDOW, SEQ - 3, 1_000));
        assert_eq!(run(&xdp, &fresh), (PASS, vec![Stat::UnknownHost]));
        assert_eq!(xdp.slot(0).total_replies, 1);

        // More hosts than the maps were sized for: refused, and nothing moved.
        let five: Vec<IpAddr> = (10..15)
            .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
            .collect();
        let error = xdp.rehost(&five, &[None; 5]).unwrap_err();
        assert!(format!("{error:#}").contains("restart"), "{error:#}");
        assert_eq!(run(&xdp, &other(SEQ - 1)).0, DROP);
        assert_eq!(xdp.slot(0).total_replies, 2);
    }

    #[test]
    fn maps_loaded_without_room_to_switch_refuse_to_rehost() {
        require_root();
        let mut xdp = loaded(&[PRIMARY], 4, false);
        let error = xdp.rehost(&[PRIMARY, OTHER], &[Some(0), None]).unwrap_err();
        assert!(format!("{error:#}").contains("switch"), "{error:#}");
        assert_eq!(run(&xdp, &valid()).0, DROP);
    }

    #[test]
    fn loads_with_kernel_diagnostics_on() {
        require_root();
        let mut xdp =
            XdpProbe::load(&[PRIMARY, OTHER], 2, true, true).expect("load with debug logging");
        assert_eq!(xdp.test_run(&valid()).unwrap(), PASS);
        xdp.set_key(WINDOW, KEY).unwrap();
        xdp.publish(ACCEPT).unwrap();
        assert_eq!(xdp.test_run(&valid()).unwrap(), DROP);
    }
}
