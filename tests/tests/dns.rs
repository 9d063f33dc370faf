//! Health-aware DNS round robin (issue 6), against a real BIND 9 on loopback in the standby's
//! namespace: xdprobe probes the pool's members and keeps www.example.test's A records (and
//! AAAA records for IPv6 members, issue 11) in step with their health through TSIG-signed
//! RFC 2136 updates.

/// Needs root: a lab of namespaces, XDP, BIND inside the lab.
mod privileged {
    use std::{
        collections::BTreeSet,
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        path::Path,
        time::{Duration, Instant},
    };

    use xdprobe_harness::{bind::Bind, Daemon, Lab, Smtp};

    const WINDOW_MS: u64 = 100;
    const MEMBERS: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];

    fn set(addrs: &[&str]) -> BTreeSet<Ipv4Addr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn lab() -> Lab {
        Lab::with_hosts(&[
            ("standby", "192.0.2.2/24"),
            ("m1", "192.0.2.11/24"),
            ("m2", "192.0.2.12/24"),
            ("m3", "192.0.2.13/24"),
        ])
        .expect("lab")
    }

    fn config(lab: &Lab, bind: &Bind, key: &Path, extra: &str) -> std::path::PathBuf {
        config_with(lab, bind, key, extra, &MEMBERS)
    }

    /// The config of one pool with `members`, after the `extra` top-level lines.
    fn config_with(
        lab: &Lab,
        bind: &Bind,
        key: &Path,
        extra: &str,
        members: &[&str],
    ) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("{}.toml", lab.ns("dns")));
        let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
        std::fs::write(
            &path,
            format!(
                "iface = \"eth0\"\nwindow = \"{WINDOW_MS}ms\"\n{extra}\n[[dns]]\nserver = \"{}\"\nzone = \"example.test\"\n\
                 name = \"www\"\nttl = 30\ntsig_name = \"xdprobe-key\"\ntsig_secret_file = \"{}\"\n\
                 members = [{}]\nresync = \"2s\"\n",
                bind.server(),
                key.display(),
                members.join(", ")
            ),
        )
        .expect("config");
        path
    }

    /// The daemon's /metrics, read with `xdprobe status --metrics` in the standby's namespace.
    fn metrics(lab: &Lab) -> String {
        let out = lab.xdprobe("standby", &["status", "--metrics"]);
        assert!(
            out.status.success(),
            "xdprobe status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Polls the server until `addr` is gone from (or back in) the set; returns how long it took.
    fn time_until(bind: &Bind, addr: &str, present: bool, timeout: Duration) -> Duration {
        let start = Instant::now();
        let addr: Ipv4Addr = addr.parse().unwrap();
        loop {
            if bind.a_records().expect("dig").contains(&addr) == present {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{addr} still {} after {timeout:?}",
                if present { "absent" } else { "present" }
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn records_follow_member_health_and_leave_others_alone() {
        let lab = lab();
        let bind = Bind::start(&lab.ns("standby")).expect("BIND");
        let config = config(&lab, &bind, &bind.key_file(), "");
        let mut daemon = Daemon::start(
            &lab.ns("standby"),
            &["run", "--config", config.to_str().unwrap()],
        )
        .expect("xdprobe");
        bind.wait_for_a(&set(&MEMBERS), Duration::from_secs(5))
            .expect("members published at start-up");
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("members probed");
        assert!(
            metrics(&lab).contains(
                "xdprobe_dns_pool_in_sync{pool=\"www.example.test.\",server=\"127.0.0.1:5353\"} 1"
            ),
            "pool not reported in sync"
        );
        // Somebody else's record for the same name.
        bind.add_a("192.0.2.99".parse().unwrap(), 30)
            .expect("foreign record");

        lab.kill("m2").unwrap();
        let gone = time_until(&bind, "192.0.2.12", false, Duration::from_secs(3));
        let bound = Duration::from_millis(2 * WINDOW_MS + 100);
        println!(
            "member death to record removal at a {WINDOW_MS} ms window: {gone:?} (bound {bound:?})"
        );
        assert!(gone <= bound, "removal took {gone:?}");
        assert_eq!(
            bind.a_records().unwrap(),
            set(&["192.0.2.11", "192.0.2.13", "192.0.2.99"])
        );

        lab.revive("m2").unwrap();
        let back = time_until(&bind, "192.0.2.12", true, Duration::from_secs(3));
        println!("member return to record back: {back:?}");

        // Every member down: the pool is never emptied (keep_all), the foreign record stays.
        for m in ["m1", "m2", "m3"] {
            lab.kill(m).unwrap();
        }
        daemon
            .wait_for_log("all members down", Duration::from_secs(3))
            .expect("all-down reported");
        std::thread::sleep(Duration::from_millis(6 * WINDOW_MS));
        assert_eq!(
            bind.a_records().unwrap(),
            set(&["192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.99"])
        );
        let (status, log) = daemon.stop().expect("stop");
        let _ = std::fs::remove_file(&config);
        assert!(status.success(), "{log}");
        assert!(
            log.contains("removed: member 192.0.2.12 DOWN"),
            "change and reason not logged:\n{log}"
        );
    }

    /// Issue 11: IPv6 members are probed over ICMPv6 and published as AAAA records, beside the
    /// IPv4 members' A records, through a server reached over IPv6.
    #[test]
    fn ipv6_members_are_aaaa_records_that_follow_their_health() {
        let lab = lab();
        for (host, addr) in [
            ("standby", "2001:db8::2/64"),
            ("m2", "2001:db8::12/64"),
            ("m3", "2001:db8::13/64"),
        ] {
            lab.ip(host, &["-6", "addr", "add", addr, "dev", "eth0", "nodad"])
                .expect("IPv6 address");
            // A link going down keeps its static IPv6 address, so the member can come back.
            lab.exec(
                host,
                &["sysctl", "-qw", "net.ipv6.conf.eth0.keep_addr_on_down=1"],
            )
            .expect("sysctl");
        }
        let bind = Bind::start_on(&lab.ns("standby"), std::net::Ipv6Addr::LOCALHOST, 5353)
            .expect("BIND on ::1");
        let members = ["192.0.2.11", "2001:db8::12", "2001:db8::13"];
        let config = config_with(&lab, &bind, &bind.key_file(), "", &members);
        let mut daemon = Daemon::start(
            &lab.ns("standby"),
            &["run", "--config", config.to_str().unwrap()],
        )
        .expect("xdprobe");
        let all: BTreeSet<IpAddr> = members.iter().map(|a| a.parse().unwrap()).collect();
        bind.wait_for_records(&all, Duration::from_secs(5))
            .expect("A and AAAA records published at start-up");
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("members probed");

        lab.kill("m2").unwrap();
        let start = Instant::now();
        let dead: Ipv6Addr = "2001:db8::12".parse().unwrap();
        let gone = loop {
            if !bind.aaaa_records().expect("dig").contains(&dead) {
                break start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{dead} still published"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let bound = Duration::from_millis(2 * WINDOW_MS + 100);
        println!("IPv6 member death to AAAA removal at a {WINDOW_MS} ms window: {gone:?}");
        assert!(gone <= bound, "removal took {gone:?} (bound {bound:?})");
        // The other records are untouched.
        let without: BTreeSet<IpAddr> = all
            .iter()
            .copied()
            .filter(|a| *a != IpAddr::V6(dead))
            .collect();
        assert_eq!(bind.records().unwrap(), without);

        lab.revive("m2").unwrap();
        bind.wait_for_records(&all, Duration::from_secs(3))
            .expect("the member's AAAA record back");
        let (status, log) = daemon.stop().expect("stop");
        let _ = std::fs::remove_file(&config);
        assert!(status.success(), "{log}");
        assert!(
            log.contains("AAAA record 2001:db8::12 removed: member 2001:db8::12 DOWN"),
            "change and reason not logged:\n{log}"
        );
    }

    #[test]
    fn a_wrong_tsig_secret_is_reported_and_probing_goes_on() {
        let lab = lab();
        let bind = Bind::start(&lab.ns("standby")).expect("BIND");
        bind.add_a("192.0.2.11".parse().unwrap(), 30).expect("seed");
        let wrong = bind.wrong_key_file().expect("wrong key");
        let smtp = Smtp::start(&lab.ns("standby"), 2526).expect("SMTP server");
        let mail =
            "notify = \"ops@example.org\"\nsmtp = \"127.0.0.1:2526\"\nfrom = \"xdprobe@example.org\"\n";
        let config = config(&lab, &bind, &wrong, mail);
        let mut daemon = Daemon::start(
            &lab.ns("standby"),
            &["run", "--config", config.to_str().unwrap()],
        )
        .expect("xdprobe");
        daemon
            .wait_for_log("BADSIG", Duration::from_secs(5))
            .expect("the bad key is reported");
        lab.kill("m3").unwrap();
        daemon
            .wait_for_log("host DOWN", Duration::from_secs(3))
            .expect("probing goes on");
        // ... and in the metrics: out of sync, with failures counted.
        let metrics = metrics(&lab);
        assert!(
            metrics.contains(
                "xdprobe_dns_pool_in_sync{pool=\"www.example.test.\",server=\"127.0.0.1:5353\"} 0"
            ),
            "{metrics}"
        );
        let failures = metrics
            .lines()
            .find(|l| l.starts_with("xdprobe_dns_pool_failures_total{pool=\"www.example.test.\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(failures >= 1, "{metrics}");
        let (status, log) = daemon.stop().expect("stop");
        let _ = std::fs::remove_file(&config);
        assert!(status.success(), "{log}");
        assert_eq!(
            bind.a_records().unwrap(),
            set(&["192.0.2.11"]),
            "server changed with a wrong key"
        );
        // The failure was mailed too.
        let messages = smtp.wait_messages(2, Duration::from_secs(5));
        assert!(
            messages.iter().any(|m| m
                .contains("DNS pool www.example.test.: DNS records out of sync")
                && m.contains("BADSIG")),
            "no DNS failure notice among {messages:?}"
        );
    }

    /// `xdprobe reload` in the standby; its output, after checking it succeeded.
    fn reload(lab: &Lab, daemon: &Daemon) -> String {
        let out = lab.xdprobe("standby", &["reload"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}\n{}", daemon.log());
        said
    }

    #[test]
    fn reload_changes_a_pools_members_without_publishing_the_dead() {
        let lab = lab();
        let bind = Bind::start(&lab.ns("standby")).expect("BIND");
        let key = bind.key_file();
        let (m1, m2, m3) = (MEMBERS[0], MEMBERS[1], MEMBERS[2]);
        let config = config_with(&lab, &bind, &key, "", &[m1, m2]);
        let mut daemon = Daemon::start(
            &lab.ns("standby"),
            &["run", "--config", config.to_str().unwrap()],
        )
        .expect("xdprobe");
        bind.wait_for_a(&set(&[m1, m2]), Duration::from_secs(5))
            .expect("members published at start-up");
        bind.add_a("192.0.2.99".parse().unwrap(), 30)
            .expect("foreign record");

        // m2 leaves the pool (alive: its record must go), m3 joins.
        config_with(&lab, &bind, &key, "", &[m1, m3]);
        let said = reload(&lab, &daemon);
        assert!(said.contains("DNS pools: 1 started, 1 stopped"), "{said}");
        bind.wait_for_a(&set(&[m1, m3, "192.0.2.99"]), Duration::from_secs(3))
            .expect("the pool follows its new members");
        daemon
            .wait_for_log(
                &format!("A record {m2} removed: {m2} is no longer a member of the pool (reload)"),
                Duration::from_secs(1),
            )
            .expect("the removal and its reason are logged");

        // The restarted pool follows health as before.
        lab.kill("m1").unwrap();
        bind.wait_for_a(&set(&[m3, "192.0.2.99"]), Duration::from_secs(3))
            .expect("a dead member's record goes");

        // m2 comes back into the pool while m1, DOWN, stays in it: m1 is never published.
        // Watched from before the reload is asked until well after it is applied.
        config_with(&lab, &bind, &key, "", &[m1, m2, m3]);
        let m1_addr: Ipv4Addr = m1.parse().unwrap();
        let published_dead = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let deadline = Instant::now() + Duration::from_millis(10 * WINDOW_MS);
                while Instant::now() < deadline {
                    let now = bind.a_records().expect("dig");
                    if now.contains(&m1_addr) {
                        return Some(now);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                None
            });
            reload(&lab, &daemon);
            watcher.join().expect("watcher")
        });
        assert_eq!(
            published_dead,
            None,
            "a DOWN member was published\n{}",
            daemon.log()
        );
        assert_eq!(bind.a_records().unwrap(), set(&[m2, m3, "192.0.2.99"]));

        // The pool goes from the config: its task stops and the records stay as they are.
        std::fs::write(
            &config,
            format!("iface = \"eth0\"\nwindow = \"{WINDOW_MS}ms\"\nmonitor = [\"{m3}\"]\n"),
        )
        .expect("config");
        let said = reload(&lab, &daemon);
        assert!(said.contains("DNS pools: 0 started, 1 stopped"), "{said}");
        lab.kill("m3").unwrap();
        daemon
            .wait_for_log(&format!("host DOWN host={m3}"), Duration::from_secs(2))
            .expect("m3 still probed");
        std::thread::sleep(Duration::from_millis(3 * WINDOW_MS));
        assert_eq!(bind.a_records().unwrap(), set(&[m2, m3, "192.0.2.99"]));
        assert!(!metrics(&lab).contains("xdprobe_dns_pool_in_sync{"));
        let (status, log) = daemon.stop().expect("stop");
        let _ = std::fs::remove_file(&config);
        assert!(status.success(), "{log}");
    }
}
