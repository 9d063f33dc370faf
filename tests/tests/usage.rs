//! Bad flags and bad config files: exit 2 with a message naming what is wrong; no permission,
//! or no daemon to talk to: exit 3. Each runs inside a namespace of its own, so nothing could ever probe outside it.

use std::process::Command;

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
