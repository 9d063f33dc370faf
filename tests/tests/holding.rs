//! What the standby may and must do with a VIP (issue 11): a VIP is never one of the host's
//! own addresses (refused at start-up and on reload, nothing left behind), and never has two
//! holders on the wire (the standby yields to a primary that comes back answering for it, as a
//! client asking for the VIP every 5 ms sees). Lab: a bridge with a primary, a standby running
//! xdprobe and a client.

/// Needs root: a lab of namespaces, XDP, raw sockets.
mod privileged {
    use std::{path::PathBuf, time::Duration};

    use xdprobe_harness::{
        arpwatch::{monotonic, two_holders, ArpAsker},
        Daemon, Lab, Smtp,
    };

    const VIP: &str = "192.0.2.100";
    const VIP_NET: &str = "192.0.2.100/24";
    const WINDOW_MS: u64 = 50;
    const STANDBY: &str = "192.0.2.2";

    fn lab() -> Lab {
        let lab = Lab::with_hosts(&[
            ("primary", "192.0.2.1/24"),
            ("standby", "192.0.2.2/24"),
            ("client", "192.0.2.3/24"),
        ])
        .expect("building the lab");
        lab.ip(
            "primary",
            &["addr", "add", VIP_NET, "dev", "eth0", "label", "eth0:1"],
        )
        .expect("VIP on primary");
        lab
    }

    /// `xdprobe run` on the standby with `vip`, expected to exit by itself (a daemon that
    /// keeps running fails the test after 60 s); exit code and output.
    fn run_with_vip(lab: &Lab, vip: &str) -> (Option<i32>, String) {
        #[rustfmt::skip]
        let args = ["run", "--iface", "eth0", "--watch", "192.0.2.1", "--vip", vip,
                    "--window", "50ms", "--on-exit", "release"];
        let daemon = Daemon::start(&lab.ns("standby"), &args).expect("starting xdprobe");
        let (status, log) = daemon.wait().expect("xdprobe exits by itself");
        (status.code(), log)
    }

    fn assert_nothing_attached(lab: &Lab) {
        let link = lab
            .ip("standby", &["link", "show", "dev", "eth0"])
            .expect("ip link");
        assert!(!link.contains("xdp"), "XDP left attached:\n{link}");
    }

    #[test]
    fn a_vip_that_is_one_of_our_own_addresses_is_refused_at_start_up() {
        let lab = lab();
        // The standby's own address, mistyped as the VIP.
        let (code, out) = run_with_vip(&lab, "192.0.2.2/24");
        assert_eq!(code, Some(2), "{out}");
        assert!(
            out.contains("192.0.2.2 is eth0's own (primary) address"),
            "{out}"
        );
        assert!(lab.addrs("standby").unwrap().contains("192.0.2.2/24"));
        assert_nothing_attached(&lab);

        // A second address of the host on the same interface (secondary, no alias label).
        lab.ip("standby", &["addr", "add", "192.0.2.9/24", "dev", "eth0"])
            .unwrap();
        let own = lab.addrs("standby").unwrap();
        assert!(
            own.lines()
                .any(|l| l.contains("192.0.2.9/24") && l.contains("secondary")),
            "premise: a secondary address without a label:\n{own}"
        );
        let (code, out) = run_with_vip(&lab, "192.0.2.9/24");
        assert_eq!(code, Some(2), "{out}");
        assert!(
            out.contains("192.0.2.9 is already on eth0 with label \"eth0\""),
            "{out}"
        );
        assert!(lab.addrs("standby").unwrap().contains("192.0.2.9/24"));

        // An address of another interface (this kernel has no dummy links: a veth pair).
        #[rustfmt::skip]
        lab.ip("standby", &["link", "add", "dum0", "type", "veth", "peer", "name", "dum1"])
            .unwrap();
        lab.ip("standby", &["addr", "add", "192.0.2.100/32", "dev", "dum0"])
            .unwrap();
        let (code, out) = run_with_vip(&lab, VIP_NET);
        assert_eq!(code, Some(2), "{out}");
        assert!(
            out.contains("192.0.2.100 is an address of interface dum0"),
            "{out}"
        );
        let dum = lab
            .ip("standby", &["-o", "addr", "show", "dev", "dum0"])
            .unwrap();
        assert!(dum.contains("192.0.2.100/32"), "{dum}");
        assert!(!lab.addrs("standby").unwrap().contains("192.0.2.100"));
        assert_nothing_attached(&lab);

        // Control: the same daemon with a VIP that is free starts and probes.
        lab.ip("standby", &["link", "del", "dum0"]).unwrap();
        let mut daemon = Daemon::start(
            &lab.ns("standby"),
            &[
                "run",
                "--iface",
                "eth0",
                "--watch",
                "192.0.2.1",
                "--vip",
                VIP_NET,
            ],
        )
        .expect("starting xdprobe");
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("a free VIP is accepted");
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
    }

    struct ConfigFile(PathBuf);

    impl Drop for ConfigFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_reload_adding_a_group_for_one_of_our_own_addresses_is_refused() {
        let lab = lab();
        let file = ConfigFile(std::env::temp_dir().join(format!("{}.toml", lab.ns("own"))));
        let path = file.0.to_str().expect("path");
        let base = format!(
            "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"{VIP_NET}\"\nwindow = \"50ms\"\n\
             on_exit = \"release\"\nfailback = \"release\"\nhold_down = \"0s\"\n"
        );
        std::fs::write(&file.0, &base).unwrap();
        let mut daemon = Daemon::start(&lab.ns("standby"), &["run", "--config", path])
            .expect("starting xdprobe");
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("primary up");
        let bad = format!("{base}[[group]]\nwatch = \"192.0.2.3\"\nvip = \"{STANDBY}/24\"\n");
        std::fs::write(&file.0, bad).unwrap();
        let out = lab.xdprobe("standby", &["reload"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{said}\n{}", daemon.log());
        assert!(
            said.contains("192.0.2.2 is eth0's own (primary) address"),
            "{said}"
        );
        daemon.ensure_running().expect("the daemon keeps running");
        let status = lab.xdprobe("standby", &["status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
        assert_eq!(json["groups"].as_array().map(Vec::len), Some(1), "{json}");
        assert_eq!(json["reload_failures"], 1, "{json}");
        // The client (the second group's primary) dies: nothing is done for it.
        lab.kill("client").unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let (exit, log) = daemon.stop().expect("stop");
        assert!(exit.success(), "{log}");
        assert!(log.contains("reload rejected"), "{log}");
        assert!(!log.contains("host=192.0.2.3"), "{log}");
        assert!(
            lab.addrs("standby").unwrap().contains("192.0.2.2/24"),
            "the standby lost its own address:\n{log}"
        );
    }

    /// `xdprobe status --metrics` in the standby: the sample line of `metric` for our VIP.
    fn metric(lab: &Lab, metric: &str) -> String {
        let out = lab.xdprobe("standby", &["status", "--metrics"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let prefix = format!("{metric}{{vip=\"{VIP_NET}\",watch=\"192.0.2.1\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {metric} in:\n{text}"))
    }

    /// The standby takes the VIP from a dead primary, then the primary comes back with its VIP
    /// configured while a client asks for the VIP every 5 ms: returns how long both MACs
    /// answered, after checking the premise (the standby answered before, the primary after).
    fn primary_returns_with_its_vip(lab: &Lab, daemon: &mut Daemon) -> Duration {
        lab.kill("primary").unwrap();
        daemon
            .wait_for_log("took over the VIP", Duration::from_secs(3))
            .expect("claim");
        let asker = ArpAsker::start(lab, "client", "192.0.2.3", VIP, Duration::from_millis(5))
            .expect("ARP asker");
        std::thread::sleep(Duration::from_millis(300));
        let back = monotonic();
        lab.revive("primary").unwrap();
        daemon
            .wait_for_log("yielded the VIP", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(300));
        let replies = asker.stop();
        let (standby, primary) = (lab.mac("standby").unwrap(), lab.mac("primary").unwrap());
        assert!(
            replies.iter().any(|(t, m)| *t < back && *m == standby),
            "premise: the standby answered for the VIP before the primary came back: {replies:?}"
        );
        let overlap = two_holders(&replies, back, &standby, &primary).unwrap_or_else(|| {
            panic!("premise: the primary never answered for the VIP after coming back: {replies:?}")
        });
        let last = replies.last().map(|(_, m)| m.as_str());
        assert_eq!(last, Some(primary.as_str()), "{replies:?}");
        overlap
    }

    #[test]
    fn a_primary_back_with_its_vip_is_yielded_to_within_two_windows_whatever_the_hold_down() {
        let lab = lab();
        let window = format!("{WINDOW_MS}ms");
        #[rustfmt::skip]
        let args = ["run", "--iface", "eth0", "--watch", "192.0.2.1", "--vip", VIP_NET,
                    "--window", &window, "--hold-down", "10s"];
        let mut daemon = Daemon::start(&lab.ns("standby"), &args).expect("starting xdprobe");
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("primary up");
        let overlap = primary_returns_with_its_vip(&lab, &mut daemon);
        let bound = Duration::from_millis(2 * WINDOW_MS + 50);
        println!("two holders for {overlap:?} at {WINDOW_MS} ms windows (bound {bound:?})");
        assert!(
            overlap <= bound,
            "two holders for {overlap:?}\n{}",
            daemon.log()
        );
        assert!(!lab.addrs("standby").unwrap().contains(VIP_NET));
        assert_eq!(metric(&lab, "xdprobe_group_yields_total"), "1");
        assert_eq!(metric(&lab, "xdprobe_group_vip_held"), "0");
        // The client reaches the VIP, on the primary.
        lab.exec("client", &["ping", "-c", "1", "-W", "1", VIP])
            .expect("client reaches the VIP");
        let primary_mac = lab.mac("primary").unwrap();
        assert_eq!(lab.neighbour("client", VIP).unwrap(), Some(primary_mac));
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert!(log.contains("announcing the VIP for its holder"), "{log}");
        assert_eq!(log.matches("took over the VIP").count(), 1, "{log}");
    }

    #[test]
    fn keep_yields_to_a_primary_answering_for_the_vip_and_reports_the_conflict() {
        let lab = lab();
        let smtp = Smtp::start(&lab.ns("standby"), 2529).expect("SMTP server");
        let window = format!("{WINDOW_MS}ms");
        #[rustfmt::skip]
        let args = ["run", "--iface", "eth0", "--watch", "192.0.2.1", "--vip", VIP_NET,
                    "--window", &window, "--failback", "keep",
                    "--notify", "ops@example.org", "--smtp", "127.0.0.1:2529",
                    "--from", "xdprobe@example.org"];
        let mut daemon = Daemon::start(&lab.ns("standby"), &args).expect("starting xdprobe");
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("primary up");
        let overlap = primary_returns_with_its_vip(&lab, &mut daemon);
        let bound = Duration::from_millis(2 * WINDOW_MS + 50);
        println!("two holders for {overlap:?} with failback = keep (bound {bound:?})");
        assert!(
            overlap <= bound,
            "two holders for {overlap:?}\n{}",
            daemon.log()
        );
        assert_eq!(metric(&lab, "xdprobe_group_yields_total"), "1");
        let subject = format!("answered for {VIP_NET} held by");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mail = loop {
            if let Some(m) = smtp.messages().into_iter().find(|m| m.contains(&subject)) {
                break m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no conflict notice among {:?}",
                smtp.messages()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(mail.contains(&lab.mac("primary").unwrap()), "{mail}");
        assert!(mail.contains("failback = keep keeps"), "{mail}");
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert!(
            log.contains("WARN") && log.contains("failback = keep holds it only while"),
            "{log}"
        );
        assert!(!lab.addrs("standby").unwrap().contains(VIP_NET));
    }
}
