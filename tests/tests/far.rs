//! Far hosts (issue 10): `xdprobe monitor` against hosts that answer after 0 ms to 1.5 s, in
//! the far-host lab of the harness (a delayed echo responder in a farm namespace; this kernel
//! has no netem). Every probe is sent once and answered once however far the host, so the
//! counts are exact; each host comes UP with its own round-trip time, to within 2 ms beyond
//! the responder's own lateness;
//! a host slower than the window is UP when `--timeout` covers it.
//!
//! Each test first checks its premise with `ping` through the lab: every host answers after
//! its delay, to within 5 ms. A failure lists everything that is wrong at once, with
//! the end of xdprobe's output.

/// Needs root: a lab of namespaces, raw sockets and XDP.
mod privileged {
    use std::time::Duration;

    use serde_json::Value;
    use xdprobe_harness::{
        far::{FarHost, PROBER},
        far_hosts,
        output::{json_lines, of_type, tail},
        Daemon, FarLab,
    };

    /// How close an RTT must be to its host's delay, beyond the responder's own lateness: 2 ms.
    /// Usually it is within 0.6 ms; 1 ms failed now and then in full runs on the 2-core VM
    /// (RTTs 1.1 to 1.8 ms over while the responder was at most 0.45 ms late).
    const TOLERANCE_US: u64 = 2000;

    /// The lab for hosts answering after `delays_ms`, once ping has shown that they do.
    fn far_lab(delays_ms: &[u64]) -> FarLab {
        let delays: Vec<Duration> = delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        let far = FarLab::start(&far_hosts(&delays)).expect("the far-host lab");
        // Premise: the lab delays as told, with two requests to each host in flight at once.
        let measured = far
            .check_delays(
                2,
                Duration::from_millis(20),
                // Roughly: how late it really was is allowed for in the RTTs' check.
                Duration::from_millis(5),
            )
            .unwrap_or_else(|e| panic!("the lab does not delay as it should: {e:#}"));
        for (host, ping) in measured {
            println!(
                "premise: {} answers ping after {:?} (asked {:?})",
                host.addr, ping.max, host.delay
            );
        }
        far
    }

    /// Runs `xdprobe monitor ARGS HOSTS` on the prober to its end; its exit code and output.
    fn monitor(far: &FarLab, args: &[&str]) -> (Option<i32>, String) {
        let hosts: Vec<String> = far.hosts().iter().map(|h| h.addr.to_string()).collect();
        let mut all: Vec<&str> = ["monitor", "--iface", "eth0", "--json"].to_vec();
        all.extend_from_slice(args);
        all.extend(hosts.iter().map(String::as_str));
        println!("xdprobe {}", all.join(" "));
        let daemon = Daemon::start(&far.ns(PROBER), &all).expect("starting xdprobe monitor");
        let (status, log) = daemon.wait().expect("monitor ends by itself");
        (status.code(), log)
    }

    /// What is wrong with each host's state: it must have come UP and stayed UP, every UP line
    /// with an RTT within [`TOLERANCE_US`] of the host's delay, plus however late the
    /// responder itself was in sending a reply (`late_us`, from its tally: the lab's jitter,
    /// not xdprobe's error, on a busy VM now and then over a millisecond).
    fn host_problems(hosts: &[FarHost], lines: &[Value], late_us: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let states = of_type(lines, "state");
        for host in hosts {
            let addr = host.addr.to_string();
            let mine: Vec<&&Value> = states
                .iter()
                .filter(|s| s["host"] == addr.as_str())
                .collect();
            let delay_us = host.delay.as_micros() as u64;
            match mine.last() {
                Some(last) if last["to"] == "UP" => {}
                Some(last) => problems.push(format!(
                    "{addr} (delay {delay_us} us) ended {}, not UP: {}",
                    last["to"], last
                )),
                None => problems.push(format!(
                    "{addr} (delay {delay_us} us) never changed state (never UP)"
                )),
            }
            for up in mine.iter().filter(|s| s["to"] == "UP") {
                let (low, high) = (
                    delay_us.saturating_sub(TOLERANCE_US),
                    delay_us + late_us + TOLERANCE_US,
                );
                match up["rtt_us"].as_u64() {
                    Some(rtt) if (low..=high).contains(&rtt) => {}
                    rtt => problems.push(format!(
                        "{addr} came UP with rtt_us {rtt:?}, want {low} to {high} (delay \
                         {delay_us}, responder up to {late_us} late, tolerance {TOLERANCE_US})"
                    )),
                }
            }
            for down in mine.iter().filter(|s| s["to"] == "DOWN") {
                problems.push(format!("{addr} (delay {delay_us} us) went DOWN: {down}"));
            }
        }
        problems
    }

    /// How late the responder was at worst in sending a reply, so far (microseconds).
    fn responder_late_us(far: &FarLab) -> u64 {
        let tally = far.tally();
        println!("responder: {tally:?}");
        tally.max_late.as_micros() as u64
    }

    /// The summary's `key`, as a number.
    fn number(summary: &Value, key: &str) -> Option<f64> {
        summary[key].as_f64()
    }

    fn fail_with(problems: &[String], log: &str) {
        assert!(
            problems.is_empty(),
            "{} problem(s):\n  {}\nxdprobe's output (last 60 lines):\n{}",
            problems.len(),
            problems.join("\n  "),
            tail(log, 60)
        );
    }

    /// Issue 10: eight hosts 0 ms to 400 ms away, 2 probes a 1 s window, 10 windows: 160
    /// probes, each sent once (no retry of a host that is only far) and each answered once,
    /// 0 % loss, every host UP with its own RTT. The responder counts the requests it got, so
    /// the count is checked on the wire too.
    #[test]
    fn far_hosts_are_probed_once_each_and_all_up_with_their_own_rtts() {
        let far = far_lab(&[0, 5, 20, 50, 100, 150, 250, 400]);
        let before = far.tally();
        let args = ["--window", "1s", "--probes", "2", "--count", "10"];
        let (code, log) = monitor(&far, &args);
        let on_the_wire = far.tally().requests - before.requests;
        let lines = json_lines(&log);
        let mut problems = Vec::new();
        match of_type(&lines, "summary").first() {
            None => problems.push("no summary line".to_string()),
            Some(summary) => {
                println!("summary: {summary}");
                for (key, want) in [
                    ("hosts", 8.0),
                    ("sent", 160.0),
                    ("answered", 160.0),
                    ("loss", 0.0),
                    ("up", 8.0),
                    ("down", 0.0),
                    ("unknown", 0.0),
                ] {
                    let got = number(summary, key);
                    if got != Some(want) {
                        problems.push(format!("summary {key}: {got:?}, want {want}"));
                    }
                }
            }
        }
        if on_the_wire != 160 {
            problems.push(format!(
                "the far hosts received {on_the_wire} echo requests, want 160"
            ));
        }
        problems.extend(host_problems(far.hosts(), &lines, responder_late_us(&far)));
        if code != Some(0) {
            problems.push(format!("exit code {code:?}, want 0 (every host up)"));
        }
        fail_with(&problems, &log);
    }

    /// Issue 10: a host that answers after 1.5 s, longer than the 1 s window, is UP with that
    /// RTT when `--timeout 2s` waits for it.
    #[test]
    fn a_host_slower_than_the_window_is_up_within_the_timeout() {
        let far = far_lab(&[1500]);
        let args = [
            "--window",
            "1s",
            "--probes",
            "2",
            "--timeout",
            "2s",
            "--count",
            "4",
        ];
        let (code, log) = monitor(&far, &args);
        let lines = json_lines(&log);
        let mut problems = host_problems(far.hosts(), &lines, responder_late_us(&far));
        match of_type(&lines, "summary").first() {
            None => problems.push("no summary line".to_string()),
            Some(summary) => {
                println!("summary: {summary}");
                if number(summary, "up") != Some(1.0) {
                    problems.push(format!("summary up: {}, want 1", summary["up"]));
                }
            }
        }
        if code != Some(0) {
            problems.push(format!("exit code {code:?}, want 0 (the host up)"));
        }
        fail_with(&problems, &log);
    }
}
