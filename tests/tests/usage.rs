//! Bad flags and bad config files: exit 2 with a message naming what is wrong; no permission,
//! or no daemon to talk to: exit 3. Each runs inside a namespace of its own, so nothing could ever probe outside it.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use xdprobe_harness::xdprobe_bin;

/// The tests that need root (a lab namespace to run xdprobe in).
mod privileged {
    use std::process::{Command, Output};

    use xdprobe_harness::{xdprobe_bin, Lab};

    fn lab() -> Lab {
        Lab::with_hosts(&[("standby", "192.0.2.2/24")]).expect("building the lab")
    }

    fn xdprobe(lab: &Lab, args: &[&str]) -> Output {
        lab.xdprobe("standby", args)
    }

    const GOOD: [&str; 7] = [
        "run",
        "--iface",
        "eth0",
        "--watch",
        "192.0.2.1",
        "--vip",
        "192.0.2.100/24",
    ];

    fn assert_usage_error(out: &Output, needles: &[&str]) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "expected exit 2, got {}: {stderr}",
            out.status
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "stderr lacks {needle:?}:\n{stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    #[test]
    fn bad_flags_exit_2_naming_the_flag() {
        let lab = lab();
        let with = |extra: &[&str]| xdprobe(&lab, &[&GOOD[..], extra].concat());
        assert_usage_error(&with(&["--window", "5ms"]), &["window", "out of range"]);
        assert_usage_error(&with(&["--window", "soon"]), &["--window"]);
        assert_usage_error(&with(&["--probes", "0"]), &["probes"]);
        assert_usage_error(&with(&["--failed-windows", "0"]), &["failed_windows"]);
        assert_usage_error(&with(&["--label", "eth1:1"]), &["label"]);
        assert_usage_error(&with(&["--notify", "ops@example.org"]), &["smtp"]);
        assert_usage_error(&with(&["--frobnicate"]), &["--frobnicate"]);
        assert_usage_error(
            &xdprobe(&lab, &["run", "--iface", "eth0", "--vip", "192.0.2.100/24"]),
            &["watch"],
        );
        assert_usage_error(
            &xdprobe(
                &lab,
                &[
                    "run",
                    "--iface",
                    "eth0",
                    "--watch",
                    "192.0.2.1",
                    "--vip",
                    "192.0.2.100/33",
                ],
            ),
            &["--vip"],
        );
        assert_usage_error(
            &xdprobe(
                &lab,
                &[
                    "run",
                    "--iface",
                    "eth0",
                    "--watch",
                    "192.0.2.1",
                    "--vip",
                    "192.0.2.1/24",
                ],
            ),
            &["vip"],
        );
        assert_usage_error(
            &xdprobe(
                &lab,
                &[
                    "run",
                    "--iface",
                    "nosuch0",
                    "--watch",
                    "192.0.2.1",
                    "--vip",
                    "192.0.2.100/24",
                ],
            ),
            &["iface", "nosuch0"],
        );
        assert_usage_error(&xdprobe(&lab, &["launch"]), &["launch"]);
        // Nothing was attached by the failed runs.
        assert!(!lab
            .ip("standby", &["link", "show", "dev", "eth0"])
            .unwrap()
            .contains("xdp"));
    }

    #[test]
    fn bad_config_files_exit_2_naming_file_line_and_field() {
        let lab = lab();
        let dir = std::env::temp_dir().join(format!("xdprobe-usage-{}", lab.ns("cfg")));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "unknown.toml",
                "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvipp = \"192.0.2.100/24\"\n",
                vec!["unknown.toml", "line 3", "vipp"],
            ),
            (
                "badaddr.toml",
                "iface = \"eth0\"\nwatch = \"192.0.2.300\"\n",
                vec!["badaddr.toml", "line 2", "watch"],
            ),
            (
                "baddur.toml",
                "window = \"fast\"\n",
                vec!["baddur.toml", "line 1", "window"],
            ),
            (
                "syntax.toml",
                "iface = eth0\n",
                vec!["syntax.toml", "line 1"],
            ),
            (
                "range.toml",
                "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"192.0.2.100/24\"\nprobes = 0\n",
                vec!["probes"],
            ),
            (
                "missing.toml",
                "iface = \"eth0\"\nvip = \"192.0.2.100/24\"\n",
                vec!["watch"],
            ),
        ];
        for (name, text, needles) in cases {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let out = xdprobe(&lab, &["run", "--config", path.to_str().unwrap()]);
            assert_usage_error(&out, &needles);
        }
        let out = xdprobe(
            &lab,
            &["run", "--config", dir.join("absent.toml").to_str().unwrap()],
        );
        assert_usage_error(&out, &["absent.toml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_privileges_exit_3_saying_what_is_needed() {
        let lab = lab();
        // The binary may sit under a directory `nobody` cannot enter: copy it somewhere it can.
        let bin = std::env::temp_dir().join(format!("xdprobe-{}", lab.ns("nobody")));
        std::fs::copy(xdprobe_bin(), &bin).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns("standby")])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&bin)
            .args(GOOD)
            .output()
            .expect("spawning xdprobe as nobody");
        let _ = std::fs::remove_file(&bin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "expected exit 3, got {}: {stderr}",
            out.status
        );
        assert!(
            stderr.contains("CAP_BPF") && stderr.contains("CAP_NET_ADMIN"),
            "{stderr}"
        );
    }

    #[test]
    fn status_and_reload_without_a_daemon_exit_3_saying_so() {
        let lab = lab();
        for command in ["status", "reload"] {
            let out = xdprobe(&lab, &[command]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{command}: {stderr}");
            assert!(
                stderr.contains("cannot re") && stderr.contains("127.0.0.1:9641"),
                "{command}: {stderr}"
            );
        }
        let out = xdprobe(&lab, &["reload"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("systemctl reload xdprobe"), "{stderr}");
    }
}

#[test]
fn check_validates_a_config_and_points_at_the_bad_line() {
    let dir = std::env::temp_dir().join(format!("xdprobe-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(xdprobe_bin())
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .expect("running xdprobe check");
        (out, path.display().to_string())
    };
    let good =
        "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"192.0.2.100/24\"\nwindow = \"100ms\"\n\
                monitor = [\"198.51.100.0/28\"]\n";
    let (out, path) = check("good.toml", good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clustered = format!(
        "{good}[cluster]\netcd = [\"http://192.0.2.51:2379\", \"http://192.0.2.52:2379\"]\nnode = \"n1\"\n"
    );
    let (out, _) = check("cluster-good.toml", &clustered);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("cluster: node n1 in etcd http://192.0.2.51:2379, http://192.0.2.52:2379"),
        "{text}"
    );
    for needle in [
        format!("{path}: valid"),
        "group 1: watch 192.0.2.1 -> take 192.0.2.100/24 as eth0:1".to_string(),
        "timing: 100ms windows".to_string(),
        "monitor: 198.51.100.0/28".to_string(),
    ] {
        assert!(stdout.contains(&needle), "missing {needle:?} in:\n{stdout}");
    }
    let broken = [
        ("window.toml", "iface = \"eth0\"\nwatch = \"192.0.2.1\"\n\nvip = \"192.0.2.100/24\"\nwindow = \"5ms\"\n", ":5: invalid `window`"),
        ("group.toml", "iface = \"eth0\"\n[[group]]\nwatch = \"192.0.2.1\"\nvip = \"192.0.2.100/24\"\n[[group]]\nwatch = \"192.0.2.2\"\nvip = \"192.0.2.1/24\"\n", ":7: invalid `group[1].vip`"),
        ("label.toml", "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"192.0.2.100/24\"\nlabel = \"eth1:1\"\n", ":4: invalid `label`"),
        ("unknown.toml", "iface = \"eth0\"\nwatchh = \"192.0.2.1\"\n", "line 2"),
        ("target.toml", "iface = \"eth0\"\nmonitor = [\"198.51.100.0/33\"]\n", "invalid `monitor`"),
        ("lease.toml", "iface = \"eth0\"\nmonitor = [\"198.51.100.1\"]\n[cluster]\netcd = [\"http://192.0.2.51:2379\"]\n\nlease_ttl = \"1500ms\"\n", ":6: invalid `cluster.lease_ttl`"),
        ("etcd.toml", "iface = \"eth0\"\nmonitor = [\"198.51.100.1\"]\n[cluster]\netcd = [\"192.0.2.51:2379\"]\n", ":4: invalid `cluster.etcd`"),
        ("quorum.toml", "iface = \"eth0\"\nmonitor = [\"198.51.100.1\"]\n[cluster]\netcd = [\"http://192.0.2.51:2379\"]\nquorum = \"most\"\n", ":5: invalid `cluster.quorum`"),
        ("cluster.toml", "iface = \"eth0\"\nmonitor = [\"198.51.100.1\"]\n[cluster]\netcd = [\"http://192.0.2.51:2379\"]\nnodes = 3\n", "unknown field `nodes`"),
    ];
    for (name, text, needle) in broken {
        let (out, path) = check(name, text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(&path) && stderr.contains(needle),
            "{name}: want {needle:?} in {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `@/dev/zero` (a target file that is not text, and never ends) is a usage error naming its
/// first line at once, for `monitor` and for `check` alike, not a process that grows by a
/// gigabyte a second until it is killed. Needs no root: the target files are read before
/// anything else is asked of the system, and `monitor` is given an interface that does not
/// exist, so it could not probe anything even if it got past its targets.
#[test]
fn target_files_that_are_not_text_exit_2_at_once_naming_file_and_line() {
    let dir = std::env::temp_dir().join(format!("xdprobe-zero-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("zero.toml");
    std::fs::write(&config, "iface = \"eth0\"\nmonitor = [\"@/dev/zero\"]\n").unwrap();
    let config = config.to_str().unwrap();
    let monitor = [
        "monitor",
        "--iface",
        "xdprobe-none0",
        "--count",
        "1",
        "198.51.100.1",
        "@/dev/zero",
    ];
    for (args, needles) in [
        (&monitor[..], vec!["/dev/zero:1: contains a NUL byte"]),
        (
            &["check", "--config", config][..],
            vec![
                config,
                "invalid `monitor`: /dev/zero:1: contains a NUL byte",
            ],
        ),
    ] {
        let (code, stderr, took) = run_bounded(args, Duration::from_secs(10));
        assert_eq!(code, Some(2), "xdprobe {args:?}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "xdprobe {args:?}: want {needle:?} in {stderr}"
            );
        }
        assert!(
            took < Duration::from_secs(2),
            "xdprobe {args:?} took {took:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs xdprobe with `args`, killed if it runs longer than `limit`; its exit code (None if it
/// was killed), its stderr and how long it ran.
fn run_bounded(args: &[&str], limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(xdprobe_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning xdprobe");
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for xdprobe") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().expect("waiting for xdprobe");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.code(), stderr, took)
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = include_str!("../../probe-user/dist/xdprobe.service");
    assert!(
        unit.contains("Type=notify") && unit.contains("WatchdogSec="),
        "{unit}"
    );
    // verify wants ExecStart's binary to exist: point it at the one under test.
    let dir = std::env::temp_dir().join(format!("xdprobe-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xdprobe.service");
    let bin = xdprobe_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/bin/xdprobe", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );
}

/// `monitor --cluster` takes a config that shares monitored targets, nothing else: without
/// `[cluster]`, without targets or with failover groups it is a usage error naming why.
#[test]
fn monitor_cluster_refuses_configs_it_cannot_share() {
    let dir = std::env::temp_dir().join(format!("xdprobe-mcluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = "[cluster]\netcd = [\"http://192.0.2.51:2379\"]\n";
    let cases = [
        ("alone.toml", "iface = \"eth0\"\nmonitor = [\"198.51.100.1\"]\n".to_string(), "no [cluster] table"),
        ("groups.toml", format!("iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"192.0.2.100/24\"\nmonitor = [\"198.51.100.1\"]\n{cluster}"), "failover groups"),
        ("empty.toml", format!("iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"192.0.2.100/24\"\n{cluster}"), "no `monitor` targets"),
    ];
    for (name, text, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(xdprobe_bin())
            .args(["monitor", "--cluster", path.to_str().unwrap()])
            .output()
            .expect("running xdprobe monitor");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{name}: want {needle:?} in {stderr}"
        );
    }
    let out = Command::new(xdprobe_bin())
        .args(["monitor", "--cluster", "x.toml", "198.51.100.1"])
        .output()
        .expect("running xdprobe monitor");
    assert_eq!(out.status.code(), Some(2), "targets and --cluster together");
    let _ = std::fs::remove_dir_all(&dir);
}
