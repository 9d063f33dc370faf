//! What the standby may and must do with a VIP (issue 11): a VIP is never one of the host's
//! own addresses (refused at start-up and on reload, nothing left behind), and never has two
//! holders on the wire (the standby yields to a primary that comes back answering for it, as a
//! client asking for the VIP every 5 ms sees), and a held VIP removed by someone else or lost
//! in a link flap is put back and announced again within a window. Lab: a bridge with a
//! primary, a standby running xdprobe and a client.

/// Needs root: a lab of namespaces, XDP, raw sockets.
mod privileged {
    use std::{path::PathBuf, time::Duration};

    use xdprobe_harness::{
        arpwatch::{announced, monotonic, two_holders, ArpAsker},
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
        lab.add_vip("primary", VIP_NET).expect("VIP on primary");
        lab
    }

    /// `xdprobe run` on the standby with `vip`, expected to exit by itself (a daemon that
    /// keeps running fails the test after 60 s); exit code and output.
    fn run_with_vip(lab: &Lab, vip: &str) -> (Option<i32>, String) {
        let ns = lab.ns("standby");
        let daemon = Daemon::standby(&ns, "192.0.2.1", vip, 50, &["--on-exit", "release"], false)
            .expect("starting xdprobe");
        let (status, log) = daemon.wait().expect("xdprobe exits by itself");
        (status.code(), log)
    }

    /// xdprobe on the standby watching the primary at 50 ms windows with `extra` flags, once
    /// it has seen the primary UP.
    fn standby(lab: &Lab, extra: &[&str]) -> Daemon {
        Daemon::standby(
            &lab.ns("standby"),
            "192.0.2.1",
            VIP_NET,
            WINDOW_MS,
            extra,
            true,
        )
        .expect("xdprobe started and sees the primary up")
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
        let ns = lab.ns("standby");
        let mut daemon = Daemon::standby(
            &ns,
            "192.0.2.1",
            VIP_NET,
            50,
            &["--on-exit", "release"],
            false,
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
            replies.iter().any(|s| s.at < back && s.mac == standby),
            "premise: the standby answered for the VIP before the primary came back: {replies:?}"
        );
        let overlap = two_holders(&replies, back, &standby, &primary).unwrap_or_else(|| {
            panic!("premise: the primary never answered for the VIP after coming back: {replies:?}")
        });
        let last = replies.last().map(|s| s.mac.as_str());
        assert_eq!(last, Some(primary.as_str()), "{replies:?}");
        overlap
    }

    #[test]
    fn a_primary_back_with_its_vip_is_yielded_to_within_two_windows_whatever_the_hold_down() {
        let lab = lab();
        let mut daemon = standby(&lab, &["--hold-down", "10s"]);
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
        #[rustfmt::skip]
        let mut daemon = standby(&lab, &["--failback", "keep", "--notify", "ops@example.org",
                                         "--smtp", "127.0.0.1:2529",
                                         "--from", "xdprobe@example.org"]);
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

    /// xdprobe on the standby at 50 ms windows with mail to `smtp_port`; the primary killed
    /// and the VIP taken, its gratuitous ARP repeats over.
    fn holding_standby(lab: &Lab, smtp_port: u16) -> Daemon {
        let smtp = format!("127.0.0.1:{smtp_port}");
        #[rustfmt::skip]
        let mut daemon = standby(lab, &["--notify", "ops@example.org", "--smtp", &smtp,
                                        "--from", "xdprobe@example.org"]);
        lab.kill("primary").unwrap();
        daemon
            .wait_for_log("took over the VIP", Duration::from_secs(3))
            .expect("claim");
        // 5 repeats 200 ms apart: over after 1 s; later announcements are the guard's.
        std::thread::sleep(Duration::from_millis(1300));
        daemon
    }

    fn restore_notices(smtp: &Smtp) -> usize {
        smtp.messages()
            .iter()
            .filter(|m| m.contains("was removed from") && m.contains("and put back"))
            .count()
    }

    #[test]
    fn a_held_vip_removed_by_hand_is_put_back_within_a_window_and_a_released_one_is_not() {
        let lab = lab();
        let smtp = Smtp::start(&lab.ns("standby"), 2531).expect("SMTP server");
        let mut daemon = holding_standby(&lab, 2531);
        let standby = lab.mac("standby").unwrap();
        let listener = ArpAsker::start(&lab, "client", "192.0.2.3", VIP, Duration::ZERO)
            .expect("ARP listener");
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let before = monotonic();
        lab.ip("standby", &["addr", "del", VIP_NET, "dev", "eth0"])
            .expect("removing the VIP by hand");
        let (gone, _) = watch
            .wait_deleted(VIP, Duration::from_secs(2))
            .expect("premise: the VIP was removed");
        let (back, line) = watch
            .wait_for(VIP, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("the VIP was not put back:\n{}", daemon.log()));
        assert!(
            line.contains("eth0:1"),
            "put back without its label: {line}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let garp = announced(&listener.seen(), before, &standby)
            .unwrap_or_else(|| panic!("not announced again: {:?}", listener.seen()));
        let (restored, announced_after) = (back - gone, garp - before);
        let bound = Duration::from_millis(WINDOW_MS + 20);
        println!(
            "VIP removed by hand: back {restored:?} after the removal, announced {:.1} ms after \
             `ip addr del` started (bound {bound:?})",
            announced_after * 1000.0
        );
        assert!(restored <= bound, "put back after {restored:?}");
        assert!(
            announced_after <= (bound + Duration::from_millis(10)).as_secs_f64(),
            "announced {announced_after} s after the removal"
        );
        assert_eq!(metric(&lab, "xdprobe_group_vip_restored_total"), "1");
        assert_eq!(metric(&lab, "xdprobe_group_vip_held"), "1");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while restore_notices(&smtp) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no restore notice among {:?}",
                smtp.messages()
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        // The primary comes back with its VIP: the standby yields it, and never puts it back.
        lab.revive("primary").unwrap();
        daemon
            .wait_for_log("yielded the VIP", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(5 * WINDOW_MS));
        assert!(
            !lab.addrs("standby").unwrap().contains(VIP),
            "put back after a yield"
        );
        assert_eq!(metric(&lab, "xdprobe_group_vip_restored_total"), "1");
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert_eq!(log.matches("put it back").count(), 1, "{log}");
        assert_eq!(
            restore_notices(&smtp),
            1,
            "mailed once: {:?}",
            smtp.messages()
        );
    }

    #[test]
    fn after_a_link_flap_the_held_vip_is_there_and_announced_within_a_window_of_up() {
        let lab = lab();
        let smtp = Smtp::start(&lab.ns("standby"), 2533).expect("SMTP server");
        let daemon = holding_standby(&lab, 2533);
        let standby = lab.mac("standby").unwrap();
        let listener = ArpAsker::start(&lab, "client", "192.0.2.3", VIP, Duration::ZERO)
            .expect("ARP listener");
        let bound = Duration::from_millis(WINDOW_MS + 20);
        // Twice: a plain flap (IPv4 addresses stay on a link that goes down), then one in
        // which the VIP is flushed while the link is down.
        for flush in [false, true] {
            lab.ip("standby", &["link", "set", "eth0", "down"]).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            if flush {
                lab.ip("standby", &["addr", "del", VIP_NET, "dev", "eth0"])
                    .unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            let silent = listener.seen().len();
            let up = monotonic();
            lab.ip("standby", &["link", "set", "eth0", "up"]).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let seen = listener.seen();
            let garp = announced(&seen, up, &standby)
                .unwrap_or_else(|| panic!("not announced after up (flush {flush}): {seen:?}"));
            let after = Duration::from_secs_f64(garp - up);
            println!(
                "link flap (VIP flushed: {flush}): announced {after:?} after `ip link set up`"
            );
            assert!(
                after <= bound,
                "announced {after:?} after up, bound {bound:?}\n{}",
                daemon.log()
            );
            assert!(
                seen[..silent].iter().all(|s| s.at < up - 0.2),
                "premise: nothing announced while the link was down: {seen:?}"
            );
            let addrs = lab.addrs("standby").unwrap();
            assert!(
                addrs.contains(VIP_NET) && addrs.contains("eth0:1"),
                "{addrs}\n{}",
                daemon.log()
            );
        }
        assert_eq!(metric(&lab, "xdprobe_group_vip_restored_total"), "1");
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert_eq!(
            log.matches("link up again: announced the VIP again")
                .count(),
            2,
            "{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(restore_notices(&smtp), 1, "{:?}", smtp.messages());
    }
}
