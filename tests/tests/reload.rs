//! Reload while a VIP is held: `xdprobe reload` (and SIGHUP) change the hosts and the window
//! without an outage, without re-attaching XDP, and without losing any host's state; they
//! start and stop failover groups; a broken or restart-only change is rejected and the running
//! config stays.

/// Needs root: a lab of namespaces and XDP.
mod privileged {
    use std::{
        path::{Path, PathBuf},
        time::{Duration, Instant},
    };

    use xdprobe_harness::{
        traffic::{longest_gap, Pinger},
        Daemon, Lab, Smtp,
    };

    const VIP: &str = "192.0.2.100";
    const VIP_NET: &str = "192.0.2.100/24";
    // The added host sorts before the kept one, so the kept host's slot moves.
    const ADDED: &str = "192.0.2.4";
    const KEPT: &str = "192.0.2.5";
    const REMOVED: &str = "192.0.2.6";

    fn lab() -> Lab {
        Lab::with_hosts(&[
            ("primary", "192.0.2.1/24"),
            ("standby", "192.0.2.2/24"),
            ("client", "192.0.2.3/24"),
            ("added", "192.0.2.4/24"),
            ("kept", "192.0.2.5/24"),
            ("removed", "192.0.2.6/24"),
        ])
        .expect("building the lab")
    }

    fn config(window: &str, monitor: &[&str], log_level: &str) -> String {
        let monitor: Vec<String> = monitor.iter().map(|m| format!("{m:?}")).collect();
        format!(
            "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"{VIP_NET}\"\nwindow = \"{window}\"\n\
             monitor = [{}]\nlog_level = \"{log_level}\"\n",
            monitor.join(", ")
        )
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("writing the config");
    }

    /// `xdprobe reload` in the standby: exit code, stdout + stderr.
    fn reload(lab: &Lab) -> (Option<i32>, String) {
        let out = lab.xdprobe("standby", &["reload"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    fn status(lab: &Lab) -> serde_json::Value {
        let out = lab.xdprobe("standby", &["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON status")
    }

    fn host<'a>(status: &'a serde_json::Value, addr: &str) -> Option<&'a serde_json::Value> {
        status["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["host"] == addr)
    }

    fn number(value: &serde_json::Value) -> u64 {
        value
            .as_u64()
            .unwrap_or_else(|| panic!("not a count: {value}"))
    }

    /// The id of the XDP program attached to the standby's eth0.
    fn xdp_prog_id(lab: &Lab) -> String {
        let link = lab
            .ip("standby", &["-d", "link", "show", "dev", "eth0"])
            .expect("ip link");
        link.split_whitespace()
            .skip_while(|w| *w != "prog/xdp")
            .nth(2)
            .unwrap_or_else(|| panic!("no XDP program attached:\n{link}"))
            .to_string()
    }

    fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    struct ConfigFile(PathBuf);

    impl Drop for ConfigFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn reload_changes_hosts_and_window_while_the_vip_is_held() {
        let lab = lab();
        let file = ConfigFile(std::env::temp_dir().join(format!("{}.toml", lab.ns("reload"))));
        write(&file.0, &config("100ms", &[KEPT, REMOVED], "info"));
        let path = file.0.to_str().expect("path");
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let mut daemon =
            Daemon::start_logging_by_config(&lab.ns("standby"), &["run", "--config", path])
                .expect("starting xdprobe");
        daemon
            .wait_for_log("host UP", Duration::from_secs(5))
            .expect("hosts come up");

        // The primary dies and the standby takes the VIP.
        lab.kill("primary").expect("killing the primary");
        watch
            .wait_for(VIP, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no takeover:\n{}", daemon.log()));
        wait_until(
            "the kept host UP and the claim published",
            Duration::from_secs(5),
            || {
                let s = status(&lab);
                s["groups"][0]["claims"] == 1 && host(&s, KEPT).is_some_and(|h| h["state"] == "UP")
            },
        );
        let prog = xdp_prog_id(&lab);
        let ping = Pinger::start(&lab, "client", VIP, Duration::from_millis(10)).expect("ping");
        std::thread::sleep(Duration::from_millis(500));
        let before = status(&lab);

        // Reload: one host in, one out, half the window, and a quieter log.
        write(&file.0, &config("50ms", &[KEPT, ADDED], "warn"));
        let (code, out) = reload(&lab);
        assert_eq!(code, Some(0), "{out}\n{}", daemon.log());
        assert!(
            out.contains("3 hosts (1 added, 1 removed), window 50ms"),
            "{out}"
        );
        let log_at_reload = daemon.log().len();
        wait_until("the added host UP", Duration::from_secs(5), || {
            host(&status(&lab), ADDED).is_some_and(|h| h["state"] == "UP")
        });
        let settled = status(&lab);
        std::thread::sleep(Duration::from_millis(1000));
        let after = status(&lab);
        let gaps = longest_gap(&ping.stop().expect("ping results"));

        // No outage: the VIP never left and the client's pings kept flowing.
        assert!(
            watch.seen("Deleted").iter().all(|l| !l.contains(VIP)),
            "VIP removed: {:?}",
            watch.seen("Deleted")
        );
        eprintln!("longest gap between the client's ping replies across the reload: {gaps:.3} s");
        assert!(gaps < 0.1, "client lost the VIP for {gaps:.3} s");
        // No lost state: the group still holds with its one claim; the primary is still DOWN
        // since the same window; the kept host kept its counters and its UP.
        assert_eq!(after["groups"][0]["holding"], true);
        assert_eq!(after["groups"][0]["claims"], 1);
        assert_eq!(after["groups"][0]["releases"], 0);
        for addr in ["192.0.2.1", KEPT] {
            let (b, a) = (
                host(&before, addr).expect(addr),
                host(&after, addr).expect(addr),
            );
            assert_eq!(a["state"], b["state"], "{addr}");
            assert_eq!(a["since_window"], b["since_window"], "{addr}");
            assert!(
                number(&a["probes_sent"]) > number(&b["probes_sent"]),
                "{addr}: counters restarted\nbefore {b}\nafter {a}"
            );
        }
        // Its kernel counter moved with it (to another slot): nearly every probe ever sent to it
        // is still counted as answered.
        let kept = host(&after, KEPT).expect("kept");
        let (sent, replies) = (number(&kept["probes_sent"]), number(&kept["replies"]));
        assert!(
            replies <= sent && replies * 10 >= sent * 9,
            "kept host: {replies} replies to {sent} probes"
        );
        assert!(host(&after, REMOVED).is_none(), "{after}");
        // The new window is in use: ~20 windows a second instead of 10.
        assert_eq!(after["window_seconds"], 0.05);
        let windows = number(&after["windows"]) - number(&settled["windows"]);
        assert!((16..=24).contains(&windows), "{windows} windows in 1 s");
        assert_eq!(after["reloads"], 1);
        // The same XDP program, never re-attached.
        assert_eq!(xdp_prog_id(&lab), prog);
        // log_level "warn": the added host's UP (info) was not logged.
        let since_reload = daemon.log()[log_at_reload..].to_string();
        assert!(!since_reload.contains("host UP"), "{since_reload}");

        // A broken config is rejected with its reason, and the old one keeps running.
        write(
            &file.0,
            &format!("{}windw = \"1s\"\n", config("1s", &[], "info")),
        );
        let (code, out) = reload(&lab);
        assert_eq!(code, Some(2), "{out}");
        assert!(
            out.contains("reload rejected") && out.contains("windw"),
            "{out}"
        );
        // A change only a restart can make is rejected too, naming it.
        write(
            &file.0,
            &format!("{}debug = true\n", config("1s", &[KEPT], "info")),
        );
        let (code, out) = reload(&lab);
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains("debug needs a restart"), "{out}");
        let rejected = status(&lab);
        assert_eq!(rejected["window_seconds"], 0.05);
        assert_eq!(rejected["reloads"], 1);
        assert_eq!(rejected["reload_failures"], 2);
        assert!(host(&rejected, ADDED).is_some() && host(&rejected, KEPT).is_some());
        assert!(daemon
            .log()
            .contains("reload rejected; the running config stays"));

        // SIGHUP does the same as `xdprobe reload`: back to 100 ms, without the added host, with
        // a down hook, a witness (the client) and on_exit = "release".
        let hook = std::env::temp_dir().join(format!("{}-hook", lab.ns("reload")));
        let hook_out = std::env::temp_dir().join(format!("{}-hook.out", lab.ns("reload")));
        xdprobe_harness::write_script(
            &hook,
            &format!(
                "#!/bin/sh\necho \"$XDPROBE_EVENT $XDPROBE_HOST\" >> {}\n",
                hook_out.display()
            ),
        );
        write(
            &file.0,
            &format!(
                "{}on_down = \"{}\"\nwitness = [\"192.0.2.3\"]\non_exit = \"release\"\n",
                config("100ms", &[KEPT], "info"),
                hook.display()
            ),
        );
        daemon.hangup();
        wait_until("the SIGHUP reload", Duration::from_secs(5), || {
            status(&lab)["reloads"] == 2
        });
        let last = status(&lab);
        assert_eq!(last["window_seconds"], 0.1);
        assert!(host(&last, ADDED).is_none(), "{last}");
        assert!(
            host(&last, "192.0.2.3").is_some(),
            "the witness is probed: {last}"
        );
        // The group was handed over to a task with the new failover settings: still holding, its
        // counts carried over, the VIP never removed.
        assert_eq!(last["groups"][0]["holding"], true);
        assert_eq!(last["groups"][0]["claims"], 1);
        assert!(watch.seen("Deleted").iter().all(|l| !l.contains(VIP)));
        assert_eq!(xdp_prog_id(&lab), prog);

        // The kept host still goes DOWN with the reloaded timing, and the reloaded hook runs.
        lab.kill("kept").expect("killing the kept host");
        daemon
            .wait_for_log(&format!("host DOWN host={KEPT}"), Duration::from_secs(2))
            .expect("the kept host goes DOWN");
        wait_until("the reloaded down hook", Duration::from_secs(5), || {
            std::fs::read_to_string(&hook_out)
                .is_ok_and(|out| out.contains(&format!("down {KEPT}")))
        });
        let _ = (std::fs::remove_file(&hook), std::fs::remove_file(&hook_out));
        let (exit, log) = daemon.stop().expect("stopping xdprobe");
        assert!(exit.success(), "{log}");
        // The reloaded on_exit = "release" is what the group did at the end.
        watch
            .wait_deleted(VIP, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("the VIP was kept despite on_exit = release:\n{log}"));
        // Logged at info, which the SIGHUP's config turned back on.
        assert!(
            log[log_at_reload..].contains("reloaded change=from window"),
            "{log}"
        );
    }

    #[test]
    fn reload_starts_a_group_for_a_host_already_down_and_stops_removed_groups() {
        const DB: &str = "192.0.2.7";
        const DB_VIP: &str = "192.0.2.107";
        let lab = Lab::with_hosts(&[
            ("primary", "192.0.2.1/24"),
            ("standby", "192.0.2.2/24"),
            ("db", "192.0.2.7/24"),
        ])
        .expect("building the lab");
        let file = ConfigFile(std::env::temp_dir().join(format!("{}.toml", lab.ns("groups"))));
        let path = file.0.to_str().expect("path");
        let db_group = format!("[[group]]\nwatch = \"{DB}\"\nvip = \"{DB_VIP}/24\"\n");
        // At first the database host is only monitored.
        write(&file.0, &config("100ms", &[DB], "info"));
        let watch = lab.watch_addrs("standby").expect("ip monitor");
        let mut daemon = Daemon::start(&lab.ns("standby"), &["run", "--config", path])
            .expect("starting xdprobe");
        daemon
            .wait_for_log(&format!("host UP host={DB}"), Duration::from_secs(5))
            .expect("the database host comes up");
        lab.kill("db").expect("killing the database host");
        daemon
            .wait_for_log(&format!("host DOWN host={DB}"), Duration::from_secs(2))
            .expect("the database host goes down");
        assert!(
            watch.seen(DB_VIP).is_empty(),
            "nobody watched it: no VIP yet"
        );

        // A group for it appears: told the host is already DOWN, it takes the VIP at once. Mail,
        // off until now, comes on in the same reload.
        let smtp = Smtp::start(&lab.ns("standby"), 2527).expect("SMTP server");
        let mail = "notify = \"ops@example.org\"\nsmtp = \"127.0.0.1:2527\"\n\
                    from = \"xdprobe@example.org\"\n";
        write(
            &file.0,
            &format!("{}{mail}{db_group}", config("100ms", &[DB], "info")),
        );
        let asked = Instant::now();
        let (code, out) = reload(&lab);
        assert_eq!(code, Some(0), "{out}\n{}", daemon.log());
        assert!(
            out.contains("failover groups: 1 started, 0 stopped")
                && out.contains("mail settings changed"),
            "{out}"
        );
        let (seen_at, line) = watch
            .wait_for(DB_VIP, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("the new group never took its VIP:\n{}", daemon.log()));
        assert!(line.contains("eth0:2"), "{line}");
        let took = seen_at - asked;
        eprintln!("VIP of a group added for a host already down: up {took:?} after the reload");
        // Applied at the next window boundary (100 ms), then the 50 ms conflict check.
        assert!(took < Duration::from_millis(400), "took {took:?}");
        let s = status(&lab);
        assert_eq!(s["groups"].as_array().map(Vec::len), Some(2), "{s}");
        // The takeover is mailed with the reloaded settings.
        let taken = format!("{DB} is DOWN, {DB_VIP}/24 taken over");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !smtp.messages().iter().any(|m| m.contains(&taken)) {
            assert!(
                Instant::now() < deadline,
                "no takeover notice by the reloaded mail settings among {:?}",
                smtp.messages()
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        // The first group goes: its task stops; the database group keeps its VIP and its claim.
        let only_db = format!("{}{mail}", config("100ms", &[DB], "info"))
            .replace("watch = \"192.0.2.1\"\n", "")
            .replace(&format!("vip = \"{VIP_NET}\"\n"), "");
        write(&file.0, &format!("{only_db}{db_group}"));
        let (code, out) = reload(&lab);
        assert_eq!(code, Some(0), "{out}\n{}", daemon.log());
        assert!(
            out.contains("failover groups: 0 started, 1 stopped"),
            "{out}"
        );
        let s = status(&lab);
        let groups = s["groups"].as_array().expect("groups");
        assert_eq!(groups.len(), 1, "{s}");
        assert_eq!(groups[0]["vip"], format!("{DB_VIP}/24"));
        assert_eq!(groups[0]["holding"], true);
        assert_eq!(groups[0]["claims"], 1);
        assert!(
            host(&s, "192.0.2.1").is_none(),
            "the old primary is no longer probed: {s}"
        );

        // The database group goes too, holding its VIP: on_exit = keep leaves the VIP in place.
        write(&file.0, &only_db);
        let (code, out) = reload(&lab);
        assert_eq!(code, Some(0), "{out}\n{}", daemon.log());
        assert!(out.contains("0 started, 1 stopped"), "{out}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            watch.seen("Deleted").iter().all(|l| !l.contains(DB_VIP)),
            "{:?}",
            watch.seen("Deleted")
        );
        assert_eq!(status(&lab)["groups"].as_array().map(Vec::len), Some(0));

        // The endpoint moves: the reload is answered on the old address, later calls use the new.
        write(&file.0, &format!("{only_db}metrics = \"127.0.0.1:9642\"\n"));
        let (code, out) = reload(&lab);
        assert_eq!(code, Some(0), "{out}\n{}", daemon.log());
        assert!(out.contains("metrics on 127.0.0.1:9642"), "{out}");
        let moved = lab.xdprobe(
            "standby",
            &["status", "--address", "127.0.0.1:9642", "--json"],
        );
        assert!(
            moved.status.success(),
            "{}",
            String::from_utf8_lossy(&moved.stderr)
        );
        let old = lab.xdprobe("standby", &["status"]);
        assert_eq!(old.status.code(), Some(3), "the old address still answers");
        let (exit, log) = daemon.stop().expect("stopping xdprobe");
        assert!(exit.success(), "{log}");
    }
}
