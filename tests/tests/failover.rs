//! The whole loop against real hosts: a primary and a standby on a bridge, each in its own
//! network namespace; the real `xdprobe` runs on the standby and watches the primary.

/// Needs root: a lab of namespaces, XDP, servers inside the lab.
mod privileged {
    use std::time::{Duration, Instant};

    use xdprobe_harness::{log_number, AddrWatch, Daemon, Lab, Silent, Smtp};

    const WINDOW_MS: u64 = 100;
    const VIP: &str = "192.0.2.100";
    const VIP_NET: &str = "192.0.2.100/24";
    /// The bound: the VIP is up on the standby within 2 windows + 50 ms of the primary
    /// going silent.
    const BOUND: Duration = Duration::from_millis(2 * WINDOW_MS + 50);

    fn lab() -> Lab {
        let lab = Lab::with_hosts(&[("primary", "192.0.2.1/24"), ("standby", "192.0.2.2/24")])
            .expect("building the lab");
        // The primary holds the VIP, as in production.
        lab.add_vip("primary", VIP_NET).expect("VIP on primary");
        lab
    }

    fn start(lab: &Lab, extra: &[&str]) -> Daemon {
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

    /// Kills the primary; returns how long the daemon says the primary had been silent when it
    /// took the VIP (measured by the daemon: what the bound is about), after checking that the
    /// VIP did appear on the standby with its label. Prints the test's own wall-clock view.
    fn kill_and_time(lab: &Lab, watch: &AddrWatch, daemon: &Daemon) -> Duration {
        let silent_from = Instant::now();
        lab.kill("primary").expect("killing the primary");
        let (seen_at, line) = watch
            .wait_for(VIP, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("VIP never appeared on the standby; log:\n{}", daemon.log()));
        assert!(
            line.contains("eth0:1"),
            "VIP added without its label: {line}"
        );
        let logged = daemon
            .logged_takeover(Duration::from_secs(5))
            .expect("the takeover is logged");
        println!(
            "takeover: {logged:?} after the last reply (daemon), {:?} after the kill (test)",
            seen_at - silent_from
        );
        logged
    }

    fn assert_detached(lab: &Lab) {
        let link = lab
            .ip("standby", &["link", "show", "dev", "eth0"])
            .expect("ip link");
        assert!(
            !link.contains("xdp"),
            "XDP program still attached after exit:\n{link}"
        );
    }

    #[test]
    fn no_takeover_while_the_primary_answers() {
        let lab = lab();
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let daemon = start(&lab, &[]);
        std::thread::sleep(Duration::from_millis(25 * WINDOW_MS));
        let (status, log) = daemon.stop().expect("stopping xdprobe");

        assert!(status.success(), "exit {status}:\n{log}");
        assert!(
            watch.seen(VIP).is_empty(),
            "VIP appeared on the standby:\n{log}"
        );
        assert!(!lab.addrs("standby").unwrap().contains(VIP));
        assert!(
            !log.contains("host DOWN") && !log.contains("took over"),
            "{log}"
        );
        // The daemon reports how many windows it ran: at least 20, with every probe answered
        // and counted in the kernel.
        let windows = log_number(&log, "windows=").expect("stop summary in the log");
        let counted = log_number(&log, "counted=").expect("stop summary in the log");
        assert!(windows >= 20, "only {windows} windows ran:\n{log}");
        assert!(
            counted >= 3 * (windows - 1),
            "{counted} replies counted in {windows} windows:\n{log}"
        );
        assert_detached(&lab);
    }

    #[test]
    fn takeover_within_two_windows_and_fifty_ms() {
        let mut figures = Vec::new();
        for trial in 0..3 {
            let lab = lab();
            let watch = lab.watch_addrs("standby").expect("ip monitor");
            let daemon = start(&lab, &[]);
            // Kill at a different phase of the window each time.
            std::thread::sleep(Duration::from_millis(500 + 37 * trial));
            let took = kill_and_time(&lab, &watch, &daemon);
            figures.push(took);
            let addrs = lab.addrs("standby").unwrap();
            assert!(
                addrs.contains(VIP_NET) && addrs.contains("eth0:1"),
                "{addrs}"
            );
            let (status, log) = daemon.stop().expect("stopping xdprobe");
            assert!(status.success(), "exit {status}:\n{log}");
            assert!(
                log.contains("host DOWN") && log.contains("took over the VIP"),
                "{log}"
            );
            assert_detached(&lab);
            // The VIP is kept on exit: the standby now serves it.
            assert!(lab.addrs("standby").unwrap().contains(VIP_NET));
        }
        println!("takeover at a {WINDOW_MS} ms window: {figures:?} (bound {BOUND:?})");
        for took in figures {
            assert!(took <= BOUND, "takeover took {took:?}, bound {BOUND:?}");
        }
    }

    #[test]
    fn notification_email_arrives_with_the_facts() {
        let lab = lab();
        let smtp = Smtp::start(&lab.ns("standby"), 2525).expect("SMTP server");
        // Mail settings from a config file, the rest from flags.
        let config = std::env::temp_dir().join(format!("xdprobe-mail-{}.toml", lab.ns("cfg")));
        std::fs::write(
            &config,
            "notify = \"ops@example.org\"\nsmtp = \"127.0.0.1:2525\"\nfrom = \"xdprobe@example.org\"\n",
        )
        .unwrap();
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let daemon = start(&lab, &["--config", config.to_str().unwrap()]);
        let took = kill_and_time(&lab, &watch, &daemon);
        let messages = smtp.wait_messages(2, Duration::from_secs(10));
        let (status, log) = daemon.stop().expect("stopping xdprobe");
        let _ = std::fs::remove_file(&config);
        assert!(status.success(), "exit {status}:\n{log}");
        assert!(took <= BOUND, "takeover took {took:?} with mail configured");

        let down = messages
            .iter()
            .find(|m| m.contains("is DOWN"))
            .unwrap_or_else(|| panic!("no takeover e-mail among {messages:?}\nlog:\n{log}"));
        for needle in [
            "From: xdprobe@example.org",
            "To: ops@example.org",
            "Subject: xdprobe: 192.0.2.1 is DOWN, 192.0.2.100/24 taken over",
            "Host 192.0.2.1 stopped answering and was declared DOWN at 20",
            "(window ",
            "after 2 failed windows of 100ms",
            "The virtual IP 192.0.2.100/24 was taken over",
            "(label eth0:1)",
        ] {
            assert!(down.contains(needle), "missing {needle:?} in:\n{down}");
        }
        assert!(
            messages.iter().any(|m| m.contains("is watching 192.0.2.1")),
            "no start-up notice among {messages:?}"
        );
    }

    #[test]
    fn takeover_is_as_fast_when_smtp_is_down_or_hanging() {
        let mail = [
            "--notify",
            "ops@example.org",
            "--from",
            "xdprobe@example.org",
            "--smtp",
        ];
        // Nobody listening: every attempt is refused and retried with backoff.
        {
            let lab = lab();
            let watch = lab.watch_addrs("standby").expect("ip monitor");
            let daemon = start(&lab, &[&mail[..], &["127.0.0.1:2599"]].concat());
            let took = kill_and_time(&lab, &watch, &daemon);
            std::thread::sleep(Duration::from_millis(1500));
            let (status, log) = daemon.stop().expect("stopping xdprobe");
            println!("takeover with SMTP refusing: {took:?}");
            assert!(
                took <= BOUND,
                "takeover took {took:?} with SMTP down:\n{log}"
            );
            assert!(status.success(), "exit {status}:\n{log}");
            assert!(
                log.contains("sending notification failed"),
                "no retry logged:\n{log}"
            );
        }
        // A server that accepts and never answers: the start-up notice is stuck in it when the
        // primary dies.
        {
            let lab = lab();
            let _silent = Silent::start(&lab.ns("standby"), 2598).expect("silent server");
            let watch = lab.watch_addrs("standby").expect("ip monitor");
            let daemon = start(&lab, &[&mail[..], &["127.0.0.1:2598"]].concat());
            let took = kill_and_time(&lab, &watch, &daemon);
            let (status, log) = daemon.stop().expect("stopping xdprobe");
            println!("takeover with SMTP hanging: {took:?}");
            assert!(
                took <= BOUND,
                "takeover took {took:?} with SMTP hanging:\n{log}"
            );
            assert!(status.success(), "exit {status}:\n{log}");
        }
    }

    #[test]
    fn notification_over_starttls_with_credentials_from_a_file() {
        let lab = lab();
        let dir = std::env::temp_dir().join(lab.ns("tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let (smtp, secure) =
            Smtp::start_secure(&lab.ns("standby"), 2587, &dir).expect("STARTTLS server");
        let (ca, credentials) = (
            secure.ca_pem.to_str().unwrap(),
            secure.credentials.to_str().unwrap(),
        );
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let daemon = start(
            &lab,
            &[
                "--notify",
                "ops@example.org",
                "--from",
                "xdprobe@example.org",
                "--smtp",
                "localhost:2587",
                "--smtp-starttls",
                "--smtp-ca",
                ca,
                "--smtp-credentials",
                credentials,
            ],
        );
        kill_and_time(&lab, &watch, &daemon);
        let messages = smtp.wait_messages(2, Duration::from_secs(10));
        let (status, log) = daemon.stop().expect("stopping xdprobe");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(status.success(), "exit {status}:\n{log}");
        assert!(
            messages
                .iter()
                .any(|m| m.contains("Subject: xdprobe: 192.0.2.1 is DOWN")),
            "no takeover e-mail over STARTTLS among {messages:?}\nlog:\n{log}"
        );
        assert!(
            !log.contains(&secure.password),
            "password leaked into the log"
        );
    }

    #[test]
    fn groups_from_the_config_fail_over_independently_and_monitored_hosts_only_report() {
        let lab = Lab::with_hosts(&[
            ("primary", "192.0.2.1/24"),
            ("other", "192.0.2.11/24"),
            ("standby", "192.0.2.2/24"),
            ("plain", "192.0.2.21/24"),
        ])
        .expect("lab");
        let dir = std::env::temp_dir().join(lab.ns("groups"));
        std::fs::create_dir_all(&dir).unwrap();
        let hook = dir.join("hook");
        let hook_log = dir.join("hook.log");
        xdprobe_harness::write_script(
            &hook,
            &format!("#!/bin/sh\necho \"$@\" >> {}\n", hook_log.display()),
        );
        let config = dir.join("xdprobe.toml");
        std::fs::write(
            &config,
            format!(
                "iface = \"eth0\"\nwindow = \"100ms\"\non_down = \"{}\"\nmonitor = [\"192.0.2.21\"]\n\n\
                 [[group]]\nwatch = \"192.0.2.1\"\nvip = \"192.0.2.100/24\"\n\n\
                 [[group]]\nwatch = \"192.0.2.11\"\nvip = \"192.0.2.110/24\"\nlabel = \"eth0:other\"\n",
                hook.display()
            ),
        )
        .unwrap();
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let mut daemon = Daemon::start(
            &lab.ns("standby"),
            &["run", "--config", config.to_str().unwrap()],
        )
        .expect("starting xdprobe");
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("hosts up");
        std::thread::sleep(Duration::from_millis(500));

        // The plain monitored host dies: reported and hooked, no VIP anywhere.
        lab.kill("plain").unwrap();
        daemon
            .wait_for_log("host=192.0.2.21", Duration::from_secs(3))
            .expect("plain host DOWN logged");
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            watch.seen("192.0.2.1").is_empty(),
            "a VIP moved for a plain host:\n{}",
            daemon.log()
        );

        // The second group's primary dies: only its VIP is taken, with its label.
        lab.kill("other").unwrap();
        let (_, line) = watch
            .wait_for("192.0.2.110", Duration::from_secs(3))
            .expect("second VIP taken");
        assert!(line.contains("eth0:other"), "{line}");
        std::thread::sleep(Duration::from_millis(500));
        let (status, log) = daemon.stop().expect("stop");
        let addrs = lab.addrs("standby").unwrap();
        assert!(status.success(), "{log}");
        assert!(
            addrs.contains("192.0.2.110/24") && !addrs.contains("192.0.2.100/24"),
            "{addrs}\n{log}"
        );
        let hooks = std::fs::read_to_string(&hook_log).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            hooks.contains("down 192.0.2.21  DOWN"),
            "plain host's hook (no VIP):\n{hooks}"
        );
        assert!(
            hooks.contains("down 192.0.2.11 192.0.2.110/24 DOWN"),
            "group host's hook:\n{hooks}"
        );
    }

    #[test]
    fn on_exit_release_gives_the_vip_up_when_xdprobe_stops() {
        let lab = lab();
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let daemon = start(&lab, &["--on-exit", "release"]);
        kill_and_time(&lab, &watch, &daemon);
        let (status, log) = daemon.stop().expect("stopping xdprobe");
        assert!(status.success(), "exit {status}:\n{log}");
        assert!(
            log.contains("released the VIP (on_exit = release)"),
            "{log}"
        );
        assert!(
            !lab.addrs("standby").unwrap().contains(VIP_NET),
            "VIP left behind:\n{log}"
        );
        assert!(
            watch.wait_deleted(VIP, Duration::from_secs(1)).is_some(),
            "no removal seen"
        );
        assert_detached(&lab);
    }

    /// The capabilities the shipped systemd unit grants (AmbientCapabilities=...).
    fn unit_capabilities() -> Vec<String> {
        let unit = include_str!("../../probe-user/dist/xdprobe.service");
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("AmbientCapabilities="))
            .expect("the unit grants ambient capabilities");
        line.split_whitespace().map(str::to_string).collect()
    }

    /// Runs `xdprobe ARGS` in `ns` as user nobody with exactly `caps` (setpriv), the way the unit
    /// would start it.
    fn start_as_nobody(lab: &Lab, ns: &str, caps: &[String], args: &[&str]) -> Daemon {
        let list: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let list = list.join(",");
        // nobody may not be able to enter the build directory: run a copy.
        let bin = std::env::temp_dir().join(format!("xdprobe-{}", lab.ns("caps")));
        std::fs::copy(xdprobe_harness::xdprobe_bin(), &bin).expect("copying the binary");
        let setpriv = [
            "setpriv".to_string(),
            "--reuid=65534".into(),
            "--regid=65534".into(),
            "--clear-groups".into(),
            format!("--inh-caps=-all,{list}"),
            format!("--ambient-caps=-all,{list}"),
            format!("--bounding-set=-all,{list}"),
            "--no-new-privs".into(),
            bin.display().to_string(),
        ];
        let mut all: Vec<&str> = setpriv.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        Daemon::start_program(ns, &all).expect("starting xdprobe as nobody")
    }

    #[test]
    fn runs_under_exactly_the_units_capabilities_and_names_a_missing_one() {
        let caps = unit_capabilities();
        assert_eq!(
            caps,
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW"]
        );
        let lab = lab();
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        // A config file nobody can read, for the reload below.
        let config = std::env::temp_dir().join(format!("{}.toml", lab.ns("caps")));
        std::fs::write(&config, "monitor = []\n").expect("config");
        let config_path = config.display().to_string();
        let args = [
            "run",
            "--config",
            &config_path,
            "--iface",
            "eth0",
            "--watch",
            "192.0.2.1",
            "--vip",
            VIP_NET,
            "--window",
            "100ms",
        ];
        let mut daemon = start_as_nobody(&lab, &lab.ns("standby"), &caps, &args);
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("probing as nobody");
        let took = kill_and_time(&lab, &watch, &daemon);
        // A reload that adds a host rewrites the maps: that works with these capabilities too.
        std::fs::write(&config, "monitor = [\"192.0.2.7\"]\n").expect("config");
        let reload = lab.xdprobe("standby", &["reload"]);
        let said = String::from_utf8_lossy(&reload.stdout);
        assert!(
            reload.status.success() && said.contains("2 hosts (1 added, 0 removed)"),
            "{said}{}\n{}",
            String::from_utf8_lossy(&reload.stderr),
            daemon.log()
        );
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
        assert!(took <= BOUND, "takeover as nobody took {took:?}");
        assert_detached(&lab);

        // Without CAP_NET_RAW: exit 3, and the message names it and what it is for.
        let fewer: Vec<String> = caps
            .iter()
            .filter(|c| *c != "CAP_NET_RAW")
            .cloned()
            .collect();
        let daemon = start_as_nobody(&lab, &lab.ns("standby"), &fewer, &args);
        let (status, log) = daemon.wait().expect("exits");
        assert_eq!(status.code(), Some(3), "{log}");
        assert!(
            log.contains("missing capability CAP_NET_RAW (to send probes"),
            "{log}"
        );
        let _ =
            std::fs::remove_file(std::env::temp_dir().join(format!("xdprobe-{}", lab.ns("caps"))));
        let _ = std::fs::remove_file(&config);
    }

    /// `xdprobe status ARGS` run inside the standby's namespace (where the endpoint listens).
    fn status(lab: &Lab, args: &[&str]) -> String {
        let out = lab.xdprobe("standby", &[&["status"], args].concat());
        assert!(
            out.status.success(),
            "xdprobe status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    #[test]
    fn metrics_and_status_match_what_the_lab_did() {
        let lab = lab();
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let daemon = start(&lab, &[]);
        std::thread::sleep(Duration::from_millis(1000));
        kill_and_time(&lab, &watch, &daemon);
        std::thread::sleep(Duration::from_millis(300));

        // /metrics parses as Prometheus text, and says what happened.
        let text = status(&lab, &["--metrics"]);
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format");
        let value = |metric: &str, label: (&str, &str)| -> f64 {
            let sample = scrape
                .samples
                .iter()
                .find(|s| s.metric == metric && s.labels.get(label.0) == Some(label.1))
                .unwrap_or_else(|| panic!("no {metric}{{{}={}}} in:\n{text}", label.0, label.1));
            match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{metric}: unexpected {other:?}"),
            }
        };
        let vip = ("vip", VIP_NET);
        let host = ("host", "192.0.2.1");
        assert_eq!(value("xdprobe_group_claims_total", vip), 1.0);
        assert_eq!(value("xdprobe_group_vip_held", vip), 1.0);
        assert_eq!(value("xdprobe_group_releases_total", vip), 0.0);
        assert_eq!(value("xdprobe_host_up", host), 0.0);
        let (sent, replies) = (
            value("xdprobe_host_probes_sent_total", host),
            value("xdprobe_host_replies_total", host),
        );
        // About 3 probes a window answered for ~1.5 s at 100 ms windows, then silence and retries.
        assert!(
            replies >= 30.0 && sent > replies,
            "sent {sent}, replies {replies}\n{text}"
        );
        let windows = scrape
            .samples
            .iter()
            .find(|s| s.metric == "xdprobe_windows_total")
            .expect("windows");
        assert!(
            matches!(windows.value, prometheus_parse::Value::Counter(w) | prometheus_parse::Value::Untyped(w) if w >= 10.0),
            "{:?}\n{text}",
            windows.value
        );

        // /status as JSON agrees, and the table says so too.
        let json: serde_json::Value =
            serde_json::from_str(&status(&lab, &["--json"])).expect("JSON status");
        assert_eq!(json["groups"][0]["holding"], true);
        assert_eq!(json["groups"][0]["claims"], 1);
        assert_eq!(json["hosts"][0]["state"], "DOWN");
        assert_eq!(json["hosts"][0]["replies"].as_f64(), Some(replies));
        let table = status(&lab, &[]);
        assert!(
            table.contains("VIP HELD here") && table.contains("DOWN"),
            "{table}"
        );
        let (status, log) = daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
    }
}
