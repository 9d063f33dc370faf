//! Sending when the link fails (issue 10): probes that cannot go out are counted, not logged
//! one by one. `xdprobe monitor` in the far-host lab (one host, no delay) while the prober's
//! link goes down for a second and comes back: one warning when sends start failing, one line
//! with the count when they work again, and the host answered before and after.

/// Needs root: a lab of namespaces, raw sockets and XDP.
mod privileged {
    use std::{thread::sleep, time::Duration};

    use xdprobe_harness::{
        far::{FarLab, FARM_ADDR, FAR_NET, PROBER},
        far_hosts, log_number, Daemon,
    };

    #[test]
    fn a_link_down_is_one_warning_and_one_count_not_a_line_per_probe() {
        let far = FarLab::start(&far_hosts(&[Duration::ZERO])).expect("the far-host lab");
        let host = far.hosts()[0].addr.to_string();
        let args = [
            "monitor", "--iface", "eth0", "--window", "100ms", "--count", "40", "--json", &host,
        ];
        let daemon = Daemon::start(&far.ns(PROBER), &args).expect("starting xdprobe monitor");
        sleep(Duration::from_millis(1000));
        let lab = far.lab();
        lab.ip(PROBER, &["link", "set", "eth0", "down"])
            .expect("link down");
        // The premise: the link really is down while the probes fail.
        let link = lab.ip(PROBER, &["link", "show", "eth0"]).expect("ip link");
        assert!(link.contains("state DOWN"), "{link}");
        sleep(Duration::from_millis(1000));
        lab.ip(PROBER, &["link", "set", "eth0", "up"])
            .expect("link up");
        // Going down took the route to the far hosts with it.
        lab.ip(PROBER, &["route", "replace", FAR_NET, "via", FARM_ADDR])
            .expect("the route back");
        let (status, log) = daemon.wait().expect("monitor ends by itself");
        assert!(status.code().is_some(), "{log}");
        let failed = log.matches("sending probes failed").count()
            + log.matches("some probes were not sent").count();
        assert_eq!(failed, 1, "one warning per episode:\n{log}");
        assert_eq!(
            log.matches("sending probes works again").count(),
            1,
            "{log}"
        );
        let unsent = log
            .lines()
            .find(|l| l.contains("sending probes works again"))
            .and_then(|l| log_number(l, "unsent="))
            .expect("the count of unsent probes");
        // A second down at 3 probes a 100 ms window: 30 probes, and as many retries (the host
        // is silent, so each round also sends its first retry at once).
        println!("link down for 1 s: {unsent} probes unsent, counted in one line");
        assert!((10..=80).contains(&unsent), "unsent={unsent}\n{log}");
        // Answered again after: the last window's line has answers.
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("\"type\":\"window\""))
            .expect("window lines");
        assert!(!last.contains("\"answered\":0,"), "{last}\n{log}");
    }
}
