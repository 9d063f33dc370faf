//! The package as a distribution runs it (issue 13): a real systemd in a container
//! (`xdprobe_harness::container`), the .deb installed there with apt, and the unit's promises
//! checked: readiness (Type=notify), the dynamic user with exactly four capabilities, the
//! takeover under systemd with its journal, reload, the watchdog, stop, remove and purge.
//! The container's network is a lab host's namespace; TEST-NET addresses only.

/// Needs root: namespaces, a container, XDP.
mod privileged {
    use std::time::{Duration, Instant};

    use xdprobe_harness::{
        container::Container,
        traffic::{longest_gap, Pinger},
        xdprobe_deb, AddrWatch, Lab,
    };

    const VIP: &str = "192.0.2.100";
    const VIP_NET: &str = "192.0.2.100/24";
    const CONFIG: &str = "/etc/xdprobe/xdprobe.toml";
    /// CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_PERFMON (38), CAP_BPF (39).
    const FOUR_CAPS: u64 = (1 << 12) | (1 << 13) | (1 << 38) | (1 << 39);

    fn config(extra: &str) -> String {
        format!(
            "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"{VIP_NET}\"\nwindow = \"100ms\"\n\
             metrics = \"127.0.0.1:9641\"\n{extra}"
        )
    }

    /// A lab (primary holding the VIP, client, standby) and a container booted in the
    /// standby's namespace with the package installed by apt and `config` in place.
    fn installed(extra: &str) -> (Lab, Container) {
        let lab = Lab::with_hosts(&[
            ("primary", "192.0.2.1/24"),
            ("standby", "192.0.2.2/24"),
            ("client", "192.0.2.9/24"),
        ])
        .expect("building the lab");
        lab.add_vip("primary", VIP_NET).expect("VIP on primary");
        let container = Container::boot(&lab.ns("standby")).expect("booting the container");
        let bytes = std::fs::read(xdprobe_deb()).unwrap();
        container
            .write("/var/tmp/xdprobe_0.1.0_amd64.deb", &bytes)
            .unwrap();
        // apt resolves the package's real Depends from what the minimal system has; no --force.
        container
            .run(&[
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "/var/tmp/xdprobe_0.1.0_amd64.deb",
            ])
            .expect("apt-get install ./xdprobe.deb");
        container.write(CONFIG, config(extra).as_bytes()).unwrap();
        (lab, container)
    }

    fn journal(c: &Container) -> String {
        c.run(&["journalctl", "-u", "xdprobe", "--no-pager", "-o", "cat"])
            .unwrap_or_default()
    }

    fn main_pid(c: &Container) -> u32 {
        c.run(&["systemctl", "show", "-p", "MainPID", "--value", "xdprobe"])
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn status_field(c: &Container, pid: u32, field: &str) -> String {
        let status = c.run(&["cat", &format!("/proc/{pid}/status")]).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn wait_journal(c: &Container, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let j = journal(c);
            if j.contains(needle) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the journal:\n{j}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn installed_with_apt_it_starts_ready_with_four_capabilities_and_takes_over() {
        let (lab, c) = installed("");
        let status = c
            .run(&["dpkg-query", "-W", "-f", "${Status} ${Depends}", "xdprobe"])
            .unwrap();
        assert!(status.starts_with("install ok installed libc6"), "{status}");
        c.run(&["systemctl", "start", "xdprobe"])
            .expect("systemctl start");
        assert_eq!(
            c.run(&["systemctl", "is-active", "xdprobe"])
                .unwrap()
                .trim(),
            "active"
        );
        // Type=notify: systemd said "Started" only after the daemon was up and said so.
        let j = journal(&c);
        let (running, started) = (j.find("xdprobe running"), j.find("Started xdprobe.service"));
        assert!(
            matches!((running, started), (Some(r), Some(s)) if r < s),
            "readiness before Started:\n{j}"
        );
        let pid = main_pid(&c);
        // A dynamic user: systemd allocates them in 61184-65519 (real, effective, saved, fs).
        let uids = status_field(&c, pid, "Uid");
        let uids: Vec<u32> = uids
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        assert!(
            uids.len() == 4 && uids.iter().all(|u| (61184..=65519).contains(u)),
            "runs as uids {uids:?}"
        );
        for field in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
            let mask = u64::from_str_radix(&status_field(&c, pid, field), 16).unwrap();
            assert_eq!(mask, FOUR_CAPS, "{field} {mask:#x}, want {FOUR_CAPS:#x}");
        }

        wait_journal(&c, "host UP", Duration::from_secs(5));
        let watch: AddrWatch = lab.watch_addrs("standby").unwrap();
        let killed = Instant::now();
        lab.kill("primary").unwrap();
        let (at, _) = watch
            .wait_for(VIP, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no takeover:\n{}", journal(&c)));
        let took = at - killed;
        println!("takeover under systemd: {took:?} after the primary died");
        assert!(took <= Duration::from_millis(250), "took {took:?}");
        wait_journal(&c, "took over the VIP", Duration::from_secs(2));
    }

    #[test]
    fn reload_applies_a_good_edit_rejects_a_broken_one_and_the_watchdog_restarts_a_stuck_daemon() {
        let (lab, c) = installed("");
        // A short watchdog for the test (the unit's is 30 s).
        c.write(
            "/etc/systemd/system/xdprobe.service.d/watchdog.conf",
            b"[Service]\nWatchdogSec=3s\nRestartSec=100ms\n",
        )
        .unwrap();
        c.run(&["systemctl", "daemon-reload"]).unwrap();
        c.run(&["systemctl", "start", "xdprobe"]).unwrap();
        wait_journal(&c, "host UP", Duration::from_secs(5));

        c.write(CONFIG, config("").replace("100ms", "200ms").as_bytes())
            .unwrap();
        c.run(&["systemctl", "reload", "xdprobe"]).unwrap();
        wait_journal(&c, "reloaded", Duration::from_secs(5));
        let status = c.run(&["xdprobe", "status", "--json"]).unwrap();
        assert!(status.contains("\"window_seconds\":0.2"), "{status}");
        c.write(CONFIG, b"iface = \"eth0\"\nwindow = \"soon\"\n")
            .unwrap();
        c.run(&["systemctl", "reload", "xdprobe"]).unwrap();
        wait_journal(&c, "reload rejected", Duration::from_secs(5));
        assert_eq!(
            c.run(&["systemctl", "is-active", "xdprobe"])
                .unwrap()
                .trim(),
            "active"
        );
        c.write(CONFIG, config("").as_bytes()).unwrap();

        // Take the VIP, then freeze the daemon: the watchdog restarts it, and the new one
        // adopts the VIP, which never left the interface.
        let watch = lab.watch_addrs("standby").unwrap();
        lab.kill("primary").unwrap();
        watch
            .wait_for(VIP, Duration::from_secs(5))
            .expect("takeover");
        // The client pings the VIP every 10 ms across the freeze and the restart.
        let ping = Pinger::start(&lab, "client", VIP, Duration::from_millis(10)).expect("ping");
        std::thread::sleep(Duration::from_millis(300));
        let stuck = main_pid(&c);
        let frozen = Instant::now();
        c.run(&["kill", "-STOP", &stuck.to_string()]).unwrap();
        let deadline = frozen + Duration::from_secs(10);
        let restarted = loop {
            let pid = main_pid(&c);
            if pid != stuck && pid != 0 {
                break frozen.elapsed();
            }
            assert!(Instant::now() < deadline, "not restarted:\n{}", journal(&c));
            std::thread::sleep(Duration::from_millis(50));
        };
        println!("stuck daemon restarted by the watchdog {restarted:?} after SIGSTOP");
        assert!(restarted <= Duration::from_secs(4), "{restarted:?}");
        let j = wait_journal(&c, "adopting it", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(500));
        let replies = ping.stop().expect("ping");
        let span = frozen.elapsed().as_secs_f64() + 0.3;
        println!(
            "client: {} replies over {span:.1} s, longest gap {:.0} ms",
            replies.len(),
            longest_gap(&replies) * 1000.0
        );
        assert!(
            replies.len() as f64 > span * 100.0 * 0.8,
            "premise: the client pinged"
        );
        assert!(
            longest_gap(&replies) < 0.1,
            "an outage: {:.3} s",
            longest_gap(&replies)
        );
        assert!(j.contains("Watchdog timeout"), "{j}");
        assert!(
            watch
                .wait_deleted(VIP, Duration::from_millis(500))
                .is_none(),
            "the VIP left"
        );
        assert!(lab.addrs("standby").unwrap().contains(VIP_NET));
    }

    #[test]
    fn stop_keeps_or_releases_the_vip_as_on_exit_says_and_remove_and_purge_do_what_apt_says() {
        let (lab, c) = installed("on_exit = \"release\"\n");
        c.run(&["systemctl", "start", "xdprobe"]).unwrap();
        wait_journal(&c, "host UP", Duration::from_secs(5));
        let watch = lab.watch_addrs("standby").unwrap();
        lab.kill("primary").unwrap();
        watch
            .wait_for(VIP, Duration::from_secs(5))
            .expect("takeover");
        c.run(&["systemctl", "stop", "xdprobe"]).unwrap();
        assert!(
            !lab.addrs("standby").unwrap().contains(VIP_NET),
            "released on stop"
        );

        c.write(CONFIG, config("on_exit = \"keep\"\n").as_bytes())
            .unwrap();
        c.run(&["systemctl", "start", "xdprobe"]).unwrap();
        watch
            .wait_for(VIP, Duration::from_secs(5))
            .expect("takeover again");
        c.run(&["systemctl", "stop", "xdprobe"]).unwrap();
        assert!(
            lab.addrs("standby").unwrap().contains(VIP_NET),
            "kept on stop"
        );

        c.run(&["systemctl", "start", "xdprobe"]).unwrap();
        c.run(&["apt-get", "remove", "-y", "xdprobe"]).unwrap();
        let active = c.exec(&["systemctl", "is-active", "xdprobe"]).unwrap();
        assert_ne!(
            String::from_utf8_lossy(&active.stdout).trim(),
            "active",
            "stopped on remove"
        );
        assert!(
            c.host_path(CONFIG).is_file(),
            "the conffile stays on remove"
        );
        c.run(&["apt-get", "purge", "-y", "xdprobe"]).unwrap();
        assert!(!c.host_path(CONFIG).exists(), "purge removes the conffile");
    }
}
