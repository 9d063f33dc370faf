//! What the standby may and must do with a VIP (issue 11): a VIP is never one of the host's
//! own addresses (refused at start-up and on reload, nothing left behind). Lab: a bridge with a
//! primary, a standby running xdprobe and a client.

/// Needs root: a lab of namespaces, XDP, raw sockets.
mod privileged {
    use std::{path::PathBuf, time::Duration};

    use xdprobe_harness::{Daemon, Lab};

    const VIP_NET: &str = "192.0.2.100/24";
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
}
