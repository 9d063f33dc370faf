//! IPv6 probing (issue 11): `xdprobe monitor` over IPv6 and mixed IPv4/IPv6 lists, against a
//! dual-stack farm namespace that answers for 198.18.0.0/15 and 2001:db8:1::/111 (`ip route
//! add local ... dev lo`, checked here). The replies are ICMPv6 echo replies counted by the XDP
//! program; every count asserted is exact.

/// Needs root: a lab of namespaces and XDP.
mod privileged {
    use std::collections::BTreeSet;

    use xdprobe_harness::{
        output::{json_lines, of_type, tail},
        run, Daemon, Lab,
    };

    /// A prober and a farm joined by a veth pair, both dual-stack (`nodad`: usable at once);
    /// the farm answers for 198.18.0.0/15 and 2001:db8:1::/111.
    fn farm() -> Lab {
        let lab =
            Lab::with_hosts(&[("prober", "192.0.2.1/24"), ("farm", "192.0.2.2/24")]).expect("lab");
        for (host, addr) in [("prober", "2001:db8::1/64"), ("farm", "2001:db8::2/64")] {
            lab.ip(host, &["-6", "addr", "add", addr, "dev", "eth0", "nodad"])
                .expect("IPv6 address");
        }
        for route in [
            &["route", "add", "local", "198.18.0.0/15", "dev", "lo"][..],
            &[
                "-6",
                "route",
                "add",
                "local",
                "2001:db8:1::/111",
                "dev",
                "lo",
            ],
        ] {
            lab.ip("farm", route).expect("farm route");
        }
        for route in [
            &["route", "add", "198.18.0.0/15", "via", "192.0.2.2"][..],
            &[
                "-6",
                "route",
                "add",
                "2001:db8:1::/111",
                "via",
                "2001:db8::2",
            ],
        ] {
            lab.ip("prober", route).expect("prober route");
        }
        for sysctl in [
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=10000000",
            "net.ipv6.icmp.ratelimit=0",
        ] {
            lab.exec("farm", &["sysctl", "-qw", sysctl])
                .expect("sysctl");
        }
        lab
    }

    /// The farm's count of ICMPv6 echo replies sent (`Icmp6OutEchoReplies`).
    fn farm_echo6_replies(lab: &Lab) -> u64 {
        let out = lab
            .exec("farm", &["cat", "/proc/net/snmp6"])
            .expect("snmp6");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6OutEchoReplies"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Icmp6OutEchoReplies in /proc/net/snmp6")
    }

    fn monitor(lab: &Lab, args: &[&str]) -> (Option<i32>, String) {
        let mut all = vec!["monitor", "--iface", "eth0", "--json"];
        all.extend_from_slice(args);
        let daemon = Daemon::start(&lab.ns("prober"), &all).expect("starting xdprobe monitor");
        let (status, log) = daemon.wait().expect("monitor ends by itself");
        (status.code(), log)
    }

    #[test]
    fn a_mixed_list_is_all_up_every_probe_answered_once_and_exit_0() {
        let lab = farm();
        // Premise: the farm answers ping on both families.
        for addr in ["198.18.0.9", "2001:db8:1::9"] {
            run(&[
                "ip",
                "netns",
                "exec",
                &lab.ns("prober"),
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                addr,
            ])
            .unwrap_or_else(|e| panic!("the farm does not answer {addr}: {e:#}"));
        }
        let before = farm_echo6_replies(&lab);
        let (status, log) = monitor(
            &lab,
            &[
                "--window",
                "200ms",
                "--probes",
                "2",
                "--count",
                "5",
                "198.18.0.0/29",
                "2001:db8:1::/125",
                "2001:db8:1::100",
                "::ffff:198.18.0.1",
            ],
        );
        let farm_sent = farm_echo6_replies(&lab) - before;
        assert_eq!(status, Some(0), "{}", tail(&log, 40));
        let lines = json_lines(&log);
        let ups: BTreeSet<String> = of_type(&lines, "state")
            .iter()
            .filter(|s| s["to"] == "UP")
            .filter_map(|s| s["host"].as_str().map(str::to_string))
            .collect();
        // 6 IPv4 hosts (a /29 without network and broadcast; the mapped address is one of
        // them), 7 + 1 IPv6 hosts (a /125 without its Subnet-Router anycast address).
        let mut want: BTreeSet<String> = (1..=6).map(|i| format!("198.18.0.{i}")).collect();
        want.extend((1..=7).map(|i| format!("2001:db8:1::{i}")));
        want.insert("2001:db8:1::100".to_string());
        assert_eq!(ups, want, "{}", tail(&log, 40));
        let summary = of_type(&lines, "summary");
        let summary = summary.first().expect("a summary");
        assert_eq!(summary["hosts"], 14, "{summary}");
        assert_eq!(summary["up"], 14, "{summary}");
        // Exact: 14 hosts x 2 probes x 5 windows, each answered once; the 8 IPv6 hosts' 80
        // probes were each answered by the farm once.
        assert_eq!(summary["sent"], 140, "{summary}");
        assert_eq!(summary["answered"], 140, "{summary}");
        assert_eq!(farm_sent, 80, "ICMPv6 echo replies the farm sent");
    }

    #[test]
    fn silent_hosts_of_both_families_are_down_and_the_exit_code_says_so() {
        let lab = farm();
        let rule = "table inet bh { chain input { type filter hook input priority 0; \
                    ip6 daddr 2001:db8:1::3 drop; ip daddr 198.18.0.3 drop; }; }";
        run(&["ip", "netns", "exec", &lab.ns("farm"), "nft", rule]).expect("nft blackhole");
        let (status, log) = monitor(
            &lab,
            &[
                "--window",
                "200ms",
                "--count",
                "6",
                "198.18.0.3",
                "198.18.0.4",
                "2001:db8:1::3",
                "2001:db8:1::4",
            ],
        );
        let lines = json_lines(&log);
        let last_state = |host: &str| {
            of_type(&lines, "state")
                .iter()
                .rfind(|s| s["host"] == host)
                .map(|s| s["to"].as_str().unwrap_or_default().to_string())
        };
        assert_eq!(
            last_state("2001:db8:1::3").as_deref(),
            Some("DOWN"),
            "{}",
            tail(&log, 40)
        );
        assert_eq!(
            last_state("198.18.0.3").as_deref(),
            Some("DOWN"),
            "{}",
            tail(&log, 40)
        );
        assert_eq!(
            last_state("2001:db8:1::4").as_deref(),
            Some("UP"),
            "{}",
            tail(&log, 40)
        );
        assert_eq!(
            last_state("198.18.0.4").as_deref(),
            Some("UP"),
            "{}",
            tail(&log, 40)
        );
        // Some host down: fping's exit code 1.
        assert_eq!(status, Some(1), "{}", tail(&log, 40));
    }

    #[test]
    fn the_socket_baseline_counts_icmpv6_too() {
        let lab = farm();
        let (status, log) = monitor(
            &lab,
            &[
                "--window",
                "200ms",
                "--count",
                "3",
                "--receive",
                "socket",
                "198.18.9.0/30",
                "2001:db8:1::/126",
            ],
        );
        assert_eq!(status, Some(0), "{}", tail(&log, 40));
        let lines = json_lines(&log);
        let summary = of_type(&lines, "summary");
        let summary = summary.first().expect("a summary");
        assert_eq!(summary["up"], 5, "{summary}");
        assert_eq!(summary["sent"], summary["answered"], "{summary}");
    }

    #[test]
    fn a_slash_111_of_ipv6_hosts_is_all_up() {
        let lab = farm();
        let (status, log) = monitor(
            &lab,
            &["--window", "1s", "--count", "3", "2001:db8:1::/111"],
        );
        assert_eq!(status, Some(0), "{}", tail(&log, 40));
        let lines = json_lines(&log);
        let summary = of_type(&lines, "summary");
        let summary = summary.first().expect("a summary");
        assert_eq!(summary["hosts"], 131_071, "{summary}");
        assert_eq!(summary["up"], 131_071, "{summary}");
        assert_eq!(summary["sent"], summary["answered"], "{summary}");
    }

    #[test]
    fn bad_ipv6_targets_and_the_wrong_family_exit_2_naming_the_target() {
        let lab = farm();
        let cases: [(&[&str], &str); 3] = [
            (&["2001:db8::/64"], "at most 131072 addresses"),
            (
                &["-6", "2001:db8:1::1", "198.18.0.1"],
                "only IPv6 was asked for (-6)",
            ),
            (&["-4", "2001:db8:1::1"], "only IPv4 was asked for (-4)"),
        ];
        for (args, want) in cases {
            let (status, log) = monitor(&lab, args);
            assert_eq!(status, Some(2), "{args:?}: {log}");
            assert!(log.contains(want), "{args:?}: {log}");
        }
    }
}
