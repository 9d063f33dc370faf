//! `/metrics` as its real consumers read it: Debian's `promtool check metrics` finds nothing to
//! say about the body, the content type matches the body (the classic text format unless the
//! client asks for OpenMetrics, which Prometheus does), and Debian's Prometheus server scrapes
//! the daemon and answers a query for `xdprobe_host_up` with every host.

/// Needs root: a lab of namespaces, XDP, servers inside the lab.
mod privileged {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
        time::{Duration, Instant},
    };

    use xdprobe_harness::{Daemon, Lab, TempDir};

    const PROMETHEUS: &str = "/usr/bin/prometheus";
    const PROMTOOL: &str = "/usr/bin/promtool";
    const METRICS: &str = "http://127.0.0.1:9641/metrics";
    const HOSTS: [&str; 3] = ["192.0.2.1", "192.0.2.11", "192.0.2.12"];

    /// A standby watching the primary for a VIP and monitoring two more hosts, its metrics on
    /// its namespace's loopback.
    fn lab_and_daemon(dir: &TempDir) -> (Lab, Daemon) {
        let lab = Lab::with_hosts(&[
            ("primary", "192.0.2.1/24"),
            ("h1", "192.0.2.11/24"),
            ("h2", "192.0.2.12/24"),
            ("standby", "192.0.2.2/24"),
        ])
        .expect("building the lab");
        let config = dir.write(
            "xdprobe.toml",
            "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"192.0.2.100/24\"\n\
             window = \"100ms\"\nmonitor = [\"192.0.2.11\", \"192.0.2.12\"]\n\
             metrics = \"127.0.0.1:9641\"\n",
            0o644,
        );
        let mut daemon = Daemon::start(
            &lab.ns("standby"),
            &["run", "--config", config.to_str().unwrap()],
        )
        .expect("starting xdprobe");
        daemon
            .wait_for_log("serving /metrics", Duration::from_secs(5))
            .expect("the endpoint");
        daemon
            .watch_for(Duration::from_millis(500))
            .expect("running");
        (lab, daemon)
    }

    /// `curl` inside the standby's namespace with `accept` (if any): the content type and the
    /// body.
    fn fetch(lab: &Lab, url: &str, accept: Option<&str>) -> (String, String) {
        let mut curl = lab.command("standby", "curl");
        curl.args(["-s", "-D", "/dev/stderr", url]);
        if let Some(accept) = accept {
            curl.args(["-H", &format!("Accept: {accept}")]);
        }
        let out = curl.output().expect("running curl");
        assert!(out.status.success(), "curl {url} failed: {out:?}");
        let headers = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let content_type = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .trim()
            .to_string();
        (
            content_type,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn promtool_finds_nothing_and_the_content_type_matches_the_body() {
        let dir = TempDir::new("prom");
        let (lab, _daemon) = lab_and_daemon(&dir);
        let (text_type, text) = fetch(&lab, METRICS, None);
        assert!(
            text_type.starts_with("text/plain; version=0.0.4"),
            "{text_type}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE xdprobe_windows_total counter"),
            "{text}"
        );
        let (clean, said) = promtool_check(&text);
        assert!(
            clean && said.trim().is_empty(),
            "promtool check metrics said:\n{said}\non:\n{text}"
        );
        let (open_type, open) = fetch(
            &lab,
            METRICS,
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        );
        assert!(
            open_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{open_type}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE xdprobe_windows counter"), "{open}");
        // Premise: promtool does check: the OpenMetrics body read as the classic format (what
        // we served to everyone before) draws its complaints.
        let (_, said) = promtool_check(&open);
        assert!(
            said.contains("no help text"),
            "promtool said {said:?} on:\n{open}"
        );
    }

    /// `promtool check metrics` on `body`: whether it exited 0, and everything it said.
    fn promtool_check(body: &str) -> (bool, String) {
        let mut promtool = Command::new(PROMTOOL)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package)");
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let checked = promtool.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
        (checked.status.success(), said)
    }

    #[test]
    fn prometheus_scrapes_the_daemon_and_knows_every_host() {
        let dir = TempDir::new("prom");
        let (lab, _daemon) = lab_and_daemon(&dir);
        let config = dir.write(
            "prometheus.yml",
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: xdprobe\n    \
             static_configs:\n      - targets: ['127.0.0.1:9641']\n",
            0o644,
        );
        let data = dir.path("tsdb");
        let prometheus = Daemon::start_program(
            &lab.ns("standby"),
            &[
                PROMETHEUS,
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", data.display()),
                "--web.listen-address=127.0.0.1:9090",
            ],
        )
        .expect("starting Debian's prometheus");
        let query = "http://127.0.0.1:9090/api/v1/query?query=xdprobe_host_up";
        let deadline = Instant::now() + Duration::from_secs(20);
        let hosts = loop {
            let out = lab
                .command("standby", "curl")
                .args(["-s", query])
                .output()
                .expect("running curl");
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            let found: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["data"]["result"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r["metric"]["host"].as_str().map(str::to_string))
                .collect();
            if found.len() == HOSTS.len() {
                break found;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus knows {found:?} after 20 s; last answer {body}\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        for host in HOSTS {
            assert!(hosts.iter().any(|h| h == host), "{host} not in {hosts:?}");
        }
        // Its scrape of the daemon succeeded (the target is healthy).
        let (_, targets) = fetch(&lab, "http://127.0.0.1:9090/api/v1/targets", None);
        assert!(targets.contains("\"health\":\"up\""), "{targets}");
    }
}
