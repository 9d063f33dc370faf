//! IPv6 VIPs (issue 11), the primary watched over IPv6 (`--watch 2001:db8::1`; the
//! dual-stack restart over IPv4): an IPv6 VIP moves within two windows and clients
//! follow through our unsolicited Neighbour Advertisements; a machine answering the DAD-style
//! probe keeps it from being claimed; a primary back with it is yielded to and announced for;
//! a held IPv6 VIP removed by hand or flushed by a link flap is put back and announced; an
//! IPv4 and an IPv6 VIP of one group move together. A client soliciting the VIP every 5 ms sees
//! two machines answer for it for at most two windows when the primary comes back with it; a
//! standby cut off from the bridge, with an IPv6 witness, claims nothing. Lab: a bridge with a primary (holding the
//! VIPs, `nodad`), a standby running xdprobe and a client; 2001:db8::/64 beside 192.0.2.0/24.

/// Needs root: a lab of namespaces, XDP, raw sockets.
mod privileged {
    use std::{
        thread::sleep,
        time::{Duration, Instant},
    };

    use xdprobe_harness::{
        arpwatch::{monotonic, two_holders, ArpAsker},
        traffic::{longest_gap, Pinger},
        Daemon, Lab,
    };

    const WINDOW_MS: u64 = 50;
    const VIP6: &str = "2001:db8::100";
    const VIP6_NET: &str = "2001:db8::100/64";
    const VIP4_NET: &str = "192.0.2.100/24";
    const PRIMARY6: &str = "2001:db8::1";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The lab; the primary holds `vips` (static, `nodad`, as in production).
    fn lab(extra: &[(&str, &str, &str)], vips: &[&str]) -> Lab {
        let mut hosts = vec![
            ("primary", "192.0.2.1/24", "2001:db8::1/64"),
            ("standby", "192.0.2.2/24", "2001:db8::2/64"),
            ("client", "192.0.2.3/24", "2001:db8::3/64"),
        ];
        hosts.extend_from_slice(extra);
        let v4: Vec<(&str, &str)> = hosts.iter().map(|(h, a, _)| (*h, *a)).collect();
        let lab = Lab::with_hosts(&v4).expect("building the lab");
        for (host, _, v6) in &hosts {
            add6(&lab, host, v6);
        }
        // A primary that comes back has its addresses configured again, as after a reboot:
        // here its link only goes down, which would flush them.
        #[rustfmt::skip]
        lab.exec("primary", &["sysctl", "-q", "-w", "net.ipv6.conf.eth0.keep_addr_on_down=1"])
            .expect("sysctl");
        for vip in vips {
            if vip.contains(':') {
                add6(&lab, "primary", vip);
            } else {
                lab.add_vip("primary", vip).expect("VIP on the primary");
            }
        }
        lab
    }

    fn add6(lab: &Lab, host: &str, addr: &str) {
        #[rustfmt::skip]
        lab.ip(host, &["-6", "addr", "add", addr, "dev", "eth0", "nodad"])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn addrs6(lab: &Lab, host: &str) -> String {
        lab.ip(host, &["-6", "-o", "addr", "show", "dev", "eth0"])
            .expect("ip -6 addr")
    }

    fn start(lab: &Lab, vip: &str, extra: &[&str]) -> Daemon {
        Daemon::standby(&lab.ns("standby"), PRIMARY6, vip, WINDOW_MS, extra, true)
            .expect("xdprobe started and sees the primary up")
    }

    /// Kills the primary and waits until the standby took the VIP over and its announcements
    /// (5, 200 ms apart) are done, so that what follows sees only the guard's traffic.
    fn take_over(lab: &Lab, daemon: &mut Daemon) {
        lab.kill("primary").unwrap();
        daemon
            .wait_for_log("took over the VIP", Duration::from_secs(3))
            .expect("claim");
        sleep(ms(1300));
    }

    /// Waits up to `timeout` for `host`'s neighbour entry of `addr` to name `mac`; when it did.
    fn neighbour_becomes(
        lab: &Lab,
        host: &str,
        addr: &str,
        mac: &str,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if lab.neighbour(host, addr).ok().flatten().as_deref() == Some(mac) {
                return Some(Instant::now());
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(ms(2));
        }
    }

    /// Plants a stale neighbour entry for the VIP on the client, at a MAC nobody has: only an
    /// unsolicited advertisement (Override) moves it while the client sends nothing.
    fn plant_stale(lab: &Lab) {
        #[rustfmt::skip]
        lab.ip("client", &["-6", "neigh", "replace", VIP6, "lladdr", "02:00:00:00:00:99",
                           "dev", "eth0", "nud", "stale"])
            .expect("planting a neighbour entry");
        assert_eq!(
            lab.neighbour("client", VIP6).unwrap().as_deref(),
            Some("02:00:00:00:00:99")
        );
    }

    #[test]
    fn an_ipv6_vip_moves_within_two_windows_and_clients_follow_our_advertisements() {
        let lab = lab(&[], &[VIP6_NET]);
        let daemon = start(&lab, VIP6_NET, &[]);
        let ping = Pinger::start(&lab, "client", VIP6, ms(5)).expect("ping");
        sleep(ms(500));
        let primary = lab.mac("primary").unwrap();
        assert_eq!(
            lab.neighbour("client", VIP6).unwrap().as_deref(),
            Some(primary.as_str()),
            "premise: the client reaches the VIP on the primary"
        );
        lab.kill("primary").unwrap();
        sleep(ms(700));
        let times = ping.stop().expect("ping output");
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        let outage = Duration::from_secs_f64(longest_gap(&times));
        let bound = ms(2 * WINDOW_MS + 40);
        println!(
            "IPv6 VIP: client outage {outage:?} at {WINDOW_MS} ms windows (bound {bound:?}; {} replies)",
            times.len()
        );
        assert!(times.len() > 150, "too few replies: {}\n{log}", times.len());
        assert!(outage <= bound, "outage {outage:?}\n{log}");
        assert_eq!(
            lab.neighbour("client", VIP6).unwrap(),
            Some(lab.mac("standby").unwrap()),
            "the client did not follow"
        );
        let line = addrs6(&lab, "standby");
        let vip = line
            .lines()
            .find(|l| l.contains(VIP6_NET))
            .unwrap_or_else(|| panic!("{line}"));
        assert!(vip.contains("nodad"), "{vip}");
        assert!(
            !vip.contains("tentative") && !vip.contains("dadfailed"),
            "{vip}"
        );
    }

    #[test]
    fn a_restart_adopts_our_ipv6_vip_and_one_of_the_hosts_own_is_refused() {
        let lab = lab(&[], &[VIP6_NET]);
        let mut daemon = start(&lab, VIP6_NET, &[]);
        lab.kill("primary").unwrap();
        daemon
            .wait_for_log("took over the VIP", Duration::from_secs(3))
            .expect("claim");
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert!(addrs6(&lab, "standby").contains(VIP6_NET), "kept on exit");
        // Restarted: ours (marked `proto 120` when added), so adopted, not refused.
        let ns = lab.ns("standby");
        let mut again = Daemon::standby(&ns, PRIMARY6, VIP6_NET, WINDOW_MS, &[], false)
            .expect("restarting xdprobe");
        again
            .wait_for_log("adopting it", Duration::from_secs(3))
            .expect("the IPv6 VIP is adopted");
        let (status, log) = again.stop().expect("stop");
        assert!(status.success(), "{log}");
        // The standby's own IPv6 address as the VIP: refused, and left alone.
        let release = ["--on-exit", "release"];
        let refused = Daemon::standby(&ns, PRIMARY6, "2001:db8::2/64", WINDOW_MS, &release, false)
            .expect("starting xdprobe");
        let (status, log) = refused.wait().expect("exits by itself");
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(
            log.contains("2001:db8::2 is already on eth0 and was not added by xdprobe"),
            "{log}"
        );
        assert!(addrs6(&lab, "standby").contains("2001:db8::2/64"));
    }

    #[test]
    fn a_machine_answering_the_dad_probe_keeps_the_ipv6_vip_from_being_claimed() {
        // The primary does not hold the VIP; a squatter does.
        let lab = lab(&[("squatter", "192.0.2.50/24", "2001:db8::50/64")], &[]);
        add6(&lab, "squatter", VIP6_NET);
        let mut daemon = start(&lab, VIP6_NET, &[]);
        lab.kill("primary").unwrap();
        daemon
            .wait_for_log("the VIP is in use", Duration::from_secs(3))
            .expect("conflict reported");
        sleep(ms(10 * WINDOW_MS));
        let (_, log) = daemon.stop().unwrap();
        assert!(
            log.contains(&lab.mac("squatter").unwrap()),
            "holder not named:\n{log}"
        );
        assert!(!addrs6(&lab, "standby").contains(VIP6), "{log}");
        assert!(!log.contains("took over"), "{log}");
    }

    #[test]
    fn a_primary_back_with_its_ipv6_vip_is_yielded_to_and_announced_for() {
        let lab = lab(&[], &[VIP6_NET]);
        let mut daemon = start(&lab, VIP6_NET, &[]);
        take_over(&lab, &mut daemon);
        plant_stale(&lab);
        let back = Instant::now();
        lab.revive("primary").unwrap();
        daemon
            .wait_for_log("yielded the VIP", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let yielded = back.elapsed();
        let primary = lab.mac("primary").unwrap();
        let moved = neighbour_becomes(&lab, "client", VIP6, &primary, ms(1000))
            .unwrap_or_else(|| panic!("not announced for the primary:\n{}", daemon.log()));
        println!(
            "IPv6 VIP yielded {yielded:?} after the primary came back; the client's entry moved \
             {:?} after",
            moved - back
        );
        assert!(yielded <= ms(2 * WINDOW_MS + 50), "{yielded:?}");
        assert!(!addrs6(&lab, "standby").contains(VIP6));
        lab.exec("client", &["ping", "-c", "1", "-W", "1", VIP6])
            .expect("the client reaches the VIP on the primary");
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        // The client's entry could also move by the primary's own advertisement: that the
        // standby announced the VIP for the primary is in its log.
        assert!(log.contains("announcing the VIP for its holder"), "{log}");
    }

    #[test]
    fn a_primary_back_with_its_ipv6_vip_shares_it_for_at_most_two_windows() {
        let lab = lab(&[], &[VIP6_NET]);
        let mut daemon = start(&lab, VIP6_NET, &[]);
        take_over(&lab, &mut daemon);
        // A client soliciting the VIP every 5 ms, recording whose advertisements answer.
        let asker = ArpAsker::start(&lab, "client", "2001:db8::3", VIP6, ms(5)).expect("NS asker");
        sleep(ms(300));
        let back = monotonic();
        lab.revive("primary").unwrap();
        daemon
            .wait_for_log("yielded the VIP", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e:#}"));
        sleep(ms(300));
        let seen = asker.stop();
        let (standby, primary) = (lab.mac("standby").unwrap(), lab.mac("primary").unwrap());
        assert!(
            seen.iter()
                .any(|s| s.at < back && s.mac == standby && !s.gratuitous),
            "premise: the standby answered for the VIP before: {seen:?}"
        );
        let overlap = two_holders(&seen, back, &standby, &primary).unwrap_or_else(|| {
            panic!("premise: the primary never answered after coming back: {seen:?}")
        });
        let bound = ms(2 * WINDOW_MS + 50);
        println!(
            "IPv6 VIP: two holders for {overlap:?} at {WINDOW_MS} ms windows (bound {bound:?})"
        );
        assert!(
            overlap <= bound,
            "two holders for {overlap:?}\n{}",
            daemon.log()
        );
        assert_eq!(seen.last().map(|s| s.mac.as_str()), Some(primary.as_str()));
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
    }

    #[test]
    fn a_held_ipv6_vip_removed_or_flushed_is_put_back_and_announced() {
        let lab = lab(&[], &[VIP6_NET]);
        let mut daemon = start(&lab, VIP6_NET, &[]);
        take_over(&lab, &mut daemon);
        let standby = lab.mac("standby").unwrap();
        let bound = ms(WINDOW_MS + 20);

        // Removed by hand.
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        plant_stale(&lab);
        let removed = Instant::now();
        add_or_del(&lab, "del");
        let (gone, _) = watch
            .wait_deleted(VIP6, Duration::from_secs(2))
            .expect("premise: removed");
        let (back, _) = watch
            .wait_for(VIP6, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("not put back:\n{}", daemon.log()));
        let announced = neighbour_becomes(&lab, "client", VIP6, &standby, ms(1000))
            .unwrap_or_else(|| panic!("not announced again:\n{}", daemon.log()));
        println!(
            "IPv6 VIP removed by hand: back {:?} after, announced {:?} after `ip addr del`",
            back - gone,
            announced - removed
        );
        assert!(back - gone <= bound, "{:?}", back - gone);
        assert!(
            announced - removed <= bound + ms(20),
            "{:?}",
            announced - removed
        );

        // Flushed by the link going down (IPv6 addresses go unless keep_addr_on_down).
        lab.ip("standby", &["link", "set", "eth0", "down"]).unwrap();
        sleep(ms(200));
        plant_stale(&lab);
        let up = Instant::now();
        lab.ip("standby", &["link", "set", "eth0", "up"]).unwrap();
        let announced = neighbour_becomes(&lab, "client", VIP6, &standby, ms(1000))
            .unwrap_or_else(|| panic!("not announced after up:\n{}", daemon.log()));
        println!(
            "IPv6 VIP after a link flap: announced {:?} after `ip link set up`",
            announced - up
        );
        assert!(announced - up <= bound + ms(20), "{:?}", announced - up);
        assert!(addrs6(&lab, "standby").contains(VIP6_NET));
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert!(
            log.matches("put it back").count() >= 2,
            "the flush was not seen as a removal:\n{log}"
        );
    }

    fn add_or_del(lab: &Lab, what: &str) {
        lab.ip("standby", &["-6", "addr", what, VIP6_NET, "dev", "eth0"])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    #[test]
    fn a_restart_with_half_a_dual_stack_vip_adopts_it_and_puts_the_other_half_back() {
        // The standby held both, the primary is dead; the IPv6 half went while xdprobe was
        // not running.
        let lab = lab(&[], &[]);
        lab.add_vip("standby", VIP4_NET).unwrap();
        lab.kill("primary").unwrap();
        let both = format!("{VIP4_NET},{VIP6_NET}");
        let window = format!("{WINDOW_MS}ms");
        #[rustfmt::skip]
        let args = ["run", "--iface", "eth0", "--watch", "192.0.2.1", "--vip", &both,
                    "--window", &window];
        let mut daemon = Daemon::start(&lab.ns("standby"), &args).expect("starting xdprobe");
        daemon
            .wait_for_log("adopting it", Duration::from_secs(3))
            .expect("adopted");
        daemon
            .wait_for_log("was missing: put it back", Duration::from_secs(1))
            .expect("the missing half put back");
        assert!(addrs6(&lab, "standby").contains(VIP6_NET));
        sleep(ms(4 * WINDOW_MS));
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert!(!log.contains("took over"), "{log}");
        assert_eq!(lab.addrs("standby").unwrap().matches(VIP4_NET).count(), 1);
    }

    #[test]
    fn an_ipv4_and_an_ipv6_vip_of_one_group_move_together() {
        let both = format!("{VIP4_NET},{VIP6_NET}");
        let lab = lab(&[], &[VIP4_NET, VIP6_NET]);
        let mut daemon = start(&lab, &both, &[]);
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        lab.kill("primary").unwrap();
        daemon
            .wait_for_log("took over the VIP", Duration::from_secs(3))
            .expect("claim");
        assert!(watch
            .wait_for("192.0.2.100", Duration::from_secs(1))
            .is_some());
        assert!(addrs6(&lab, "standby").contains(VIP6_NET));
        lab.exec("client", &["ping", "-c", "1", "-W", "1", "192.0.2.100"])
            .expect("IPv4 VIP reachable");
        lab.exec("client", &["ping", "-c", "1", "-W", "1", VIP6])
            .expect("IPv6 VIP reachable");
        assert_eq!(
            lab.neighbour("client", VIP6).unwrap(),
            Some(lab.mac("standby").unwrap())
        );
        // Back: both go.
        lab.revive("primary").unwrap();
        daemon
            .wait_for_log("yielded the VIP", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e:#}"));
        sleep(ms(100));
        assert!(!lab.addrs("standby").unwrap().contains("192.0.2.100"));
        assert!(!addrs6(&lab, "standby").contains(VIP6));
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert!(log.contains(&format!("vip={VIP4_NET},{VIP6_NET}")), "{log}");
    }

    #[test]
    fn a_standby_cut_off_from_the_bridge_with_an_ipv6_witness_does_not_claim() {
        let lab = lab(&[("gw", "192.0.2.254/24", "2001:db8::fe/64")], &[VIP6_NET]);
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let mut daemon = start(&lab, VIP6_NET, &["--witness", "2001:db8::fe"]);
        lab.ip("sw", &["link", "set", "p-standby", "down"])
            .expect("cutting the standby off");
        daemon
            .wait_for_log("we are cut off", Duration::from_secs(3))
            .expect("isolation reported");
        sleep(ms(10 * WINDOW_MS));
        let (_, log) = daemon.stop().expect("stop");
        assert!(
            watch.seen(VIP6).is_empty(),
            "VIP touched on an isolated standby:\n{log}"
        );
        assert!(!addrs6(&lab, "standby").contains(VIP6), "{log}");
        assert!(!log.contains("took over"), "{log}");
    }
}
