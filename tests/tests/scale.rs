//! Many hosts (issue 4): `xdprobe monitor` against a farm namespace that answers for the whole
//! benchmark range 198.18.0.0/15 (`ip route add local ... dev lo`). Correctness at scale only:
//! no timing thresholds here (performance is `cargo xtask bench`).

/// Needs root: a lab of namespaces and XDP.
mod privileged {
    use std::{
        collections::BTreeSet,
        time::{Duration, Instant, SystemTime},
    };

    use serde_json::Value;
    use xdprobe_harness::{
        output::{json_lines, of_type, tail},
        run, Daemon, Lab,
    };

    /// A prober host and a farm host joined by a veth pair; the farm answers for 198.18.0.0/15.
    fn farm() -> Lab {
        let lab =
            Lab::with_hosts(&[("prober", "192.0.2.1/24"), ("farm", "192.0.2.2/24")]).expect("lab");
        lab.ip(
            "farm",
            &["route", "add", "local", "198.18.0.0/15", "dev", "lo"],
        )
        .expect("farm route");
        lab.ip(
            "prober",
            &["route", "add", "198.18.0.0/15", "via", "192.0.2.2"],
        )
        .expect("prober route");
        for sysctl in [
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=10000000",
        ] {
            lab.exec("farm", &["sysctl", "-qw", sysctl])
                .expect("sysctl");
        }
        lab
    }

    /// The window xdprobe was in at `at`, from when its "probing" line says the first began.
    fn window_at(log: &str, window: Duration, at: SystemTime) -> u64 {
        let line = log
            .lines()
            .find(|l| l.contains(" probing "))
            .expect("the prober's start in the log");
        let stamp = line.split_whitespace().next().expect("a time stamp");
        let start = humantime::parse_rfc3339(stamp).expect("an RFC 3339 time stamp");
        let elapsed = at.duration_since(start).expect("after the start");
        (elapsed.as_nanos() / window.as_nanos()) as u64 + 1
    }

    #[test]
    fn a_slash_16_is_all_up_and_only_the_blackholed_hosts_go_down() {
        let lab = farm();
        let window_ms = 2000u64;
        let window = format!("{window_ms}ms");
        let daemon = Daemon::start(
            &lab.ns("prober"),
            &[
                "monitor",
                "--iface",
                "eth0",
                "--window",
                &window,
                "--probes",
                "2",
                "--json",
                "198.18.0.0/16",
            ],
        )
        .expect("starting xdprobe monitor");

        // Every host of the /16 (65,534 without network and broadcast) seen UP.
        let deadline = Instant::now() + Duration::from_secs(30);
        let all_up = loop {
            let lines = json_lines(&daemon.log());
            if let Some(w) = of_type(&lines, "window")
                .into_iter()
                .find(|w| w["up"] == 65_534)
            {
                break w["window"].as_u64().expect("window number");
            }
            assert!(
                Instant::now() < deadline,
                "the /16 never came up:\n{}",
                tail(&daemon.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        };

        // Blackhole a handful of hosts in the farm.
        let blackholed = [
            "198.18.0.1",
            "198.18.7.7",
            "198.18.100.200",
            "198.18.255.254",
            "198.18.128.0",
        ];
        let rule = format!(
            "table inet bh {{ chain input {{ type filter hook input priority 0; ip daddr {{ {} }} drop; }}; }}",
            blackholed.join(", ")
        );
        run(&["ip", "netns", "exec", &lab.ns("farm"), "nft", &rule]).expect("nft blackhole");
        let since = Instant::now();
        // Window lines come when a window's answers are all in, after it ended: the window
        // the blackhole began in follows from when the first window began.
        let blackholed_in = window_at(
            &daemon.log(),
            Duration::from_millis(window_ms),
            SystemTime::now(),
        );
        std::thread::sleep(Duration::from_millis(window_ms * 4));
        let (status, log) = daemon.stop().expect("stopping xdprobe");
        let lines = json_lines(&log);

        let downs: Vec<&Value> = of_type(&lines, "state")
            .into_iter()
            .filter(|s| s["to"] == "DOWN")
            .collect();
        let down_hosts: BTreeSet<&str> = downs.iter().filter_map(|s| s["host"].as_str()).collect();
        assert_eq!(
            down_hosts,
            blackholed.iter().copied().collect(),
            "wrong hosts DOWN:\n{}",
            tail(&log, 40)
        );
        for d in &downs {
            let w = d["window"].as_u64().expect("window");
            assert!(
                w <= blackholed_in + 2,
                "{} DOWN in window {w}, blackholed in window {blackholed_in} (all up in {all_up}, {since:?} ago)",
                d["host"]
            );
        }
        let summary = of_type(&lines, "summary");
        let summary = summary.first().expect("a summary at the end");
        assert_eq!(summary["hosts"], 65_534);
        assert_eq!(summary["down"], blackholed.len());
        assert_eq!(summary["up"], 65_534 - blackholed.len() as u64);
        assert_eq!(summary["rtt_known"], 65_534, "every host's RTT known");
        // Some down: fping's exit code 1.
        assert_eq!(status.code(), Some(1), "{}", tail(&log, 40));
    }

    #[test]
    fn count_stops_the_monitor_with_a_summary_and_exit_0_when_all_are_up() {
        let lab = farm();
        let targets = std::env::temp_dir().join(format!("{}.txt", lab.ns("targets")));
        std::fs::write(
            &targets,
            "# a few farm hosts\n198.18.1.1\n198.18.2.0/30  # a small net\n\n198.18.3.3\n",
        )
        .unwrap();
        let at_file = format!("@{}", targets.display());
        let daemon = Daemon::start(
            &lab.ns("prober"),
            &[
                "monitor", "--iface", "eth0", "--window", "200ms", "--count", "5", &at_file,
            ],
        )
        .expect("start");
        let (status, log) = daemon.wait().expect("monitor ends by itself");
        let _ = std::fs::remove_file(&targets);
        assert_eq!(status.code(), Some(0), "{log}");
        // 1 + 2 (a /30 without network and broadcast) + 1 hosts, all up, in a text summary.
        assert!(log.contains("4 hosts: 4 up, 0 down"), "{log}");
        assert!(log.contains("(5 windows)"), "{log}");
        // Each host's change to UP is printed with its round-trip time.
        let ups: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("UNKNOWN -> UP"))
            .collect();
        assert_eq!(ups.len(), 4, "{log}");
        assert!(
            ups.iter()
                .all(|l| l.contains(" rtt ") && l.ends_with(" ms")),
            "{log}"
        );
    }

    #[test]
    fn bad_targets_are_usage_errors_with_their_line() {
        let lab = farm();
        let targets = std::env::temp_dir().join(format!("{}.txt", lab.ns("bad")));
        std::fs::write(&targets, "198.18.1.1\n198.18.0.0/33\n").unwrap();
        let at_file = format!("@{}", targets.display());
        let daemon = Daemon::start(&lab.ns("prober"), &["monitor", "--iface", "eth0", &at_file])
            .expect("start");
        let (status, log) = daemon.wait().expect("exits");
        let _ = std::fs::remove_file(&targets);
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(
            log.contains(":2:") && log.contains("198.18.0.0/33"),
            "{log}"
        );
        // A socket-receiving baseline also works on a small set (the benchmark's ablation).
        let daemon = Daemon::start(
            &lab.ns("prober"),
            &[
                "monitor",
                "--iface",
                "eth0",
                "--window",
                "200ms",
                "--count",
                "3",
                "--receive",
                "socket",
                "198.18.9.0/29",
            ],
        )
        .expect("start");
        let (status, log) = daemon.wait().expect("exits");
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(log.contains("6 hosts: 6 up, 0 down"), "{log}");
    }
}
