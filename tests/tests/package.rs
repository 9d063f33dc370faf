//! The Debian package (`cargo xtask dist`): it installs with dpkg (into a scratch root, so the
//! test leaves the machine alone), and what it installs works: the binary checks the shipped
//! config, the unit verifies, the man page and completions are there, and the installed binary
//! runs `check` the way the unit starts it: as nobody, with no capability but the unit's
//! (tests/tests/service.rs checks the capabilities of the running service itself).

/// Needs root: dpkg into a scratch root, a lab namespace, setpriv to another user.
mod privileged {
    use std::process::Command;

    use xdprobe_harness::{run, xdprobe_deb};

    /// The package under test: `$XDPROBE_DEB`, set by `cargo xtask test` after building it.
    #[test]
    fn the_package_installs_with_dpkg_and_its_files_work() {
        xdprobe_harness::require_root();
        let deb = xdprobe_deb();
        let listing = String::from_utf8(
            run(&["dpkg-deb", "-c", deb.to_str().unwrap()])
                .unwrap()
                .stdout,
        )
        .unwrap();
        for path in [
            "./usr/bin/xdprobe",
            "./lib/systemd/system/xdprobe.service",
            "./etc/xdprobe/xdprobe.toml",
            "./usr/share/man/man8/xdprobe.8.gz",
            "./usr/share/bash-completion/completions/xdprobe",
            "./usr/share/zsh/vendor-completions/_xdprobe",
            "./usr/share/fish/vendor_completions.d/xdprobe.fish",
        ] {
            assert!(
                listing.contains(path),
                "{path} not in the package:\n{listing}"
            );
        }
        let conffiles = String::from_utf8(
            run(&["dpkg-deb", "-I", deb.to_str().unwrap(), "conffiles"])
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert_eq!(conffiles.trim(), "/etc/xdprobe/xdprobe.toml");
        // Debian's lintian has nothing to say: no error, no warning.
        let lintian = Command::new("lintian")
            .args(["--tag-display-limit", "0"])
            .arg(&deb)
            .output()
            .expect("lintian (Debian's lintian package)");
        let said = String::from_utf8_lossy(&lintian.stdout);
        assert!(
            lintian.status.success() && said.trim().is_empty(),
            "lintian said:\n{said}{}",
            String::from_utf8_lossy(&lintian.stderr)
        );
        // Its dependencies are the binary's shared libraries, as dpkg-shlibdeps finds them.
        let depends = run(&["dpkg-deb", "-f", deb.to_str().unwrap(), "Depends"])
            .unwrap()
            .stdout;
        let depends = String::from_utf8_lossy(&depends);
        assert!(depends.starts_with("libc6 (>= "), "Depends: {depends}");

        let scratch = std::env::temp_dir().join(format!("xdprobe-dpkg-{}", std::process::id()));
        let (root, admin) = (scratch.join("root"), scratch.join("admin"));
        for dir in [
            root.clone(),
            admin.join("info"),
            admin.join("updates"),
            admin.join("triggers"),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for file in ["status", "available"] {
            std::fs::write(admin.join(file), "").unwrap();
        }
        // Dependencies (libc6) are not in the scratch database: the real dpkg -i on this machine
        // has them.
        run(&[
            "dpkg",
            &format!("--instdir={}", root.display()),
            &format!("--admindir={}", admin.display()),
            "--force-depends",
            "--force-script-chrootless",
            "-i",
            deb.to_str().unwrap(),
        ])
        .expect("dpkg -i");

        let bin = root.join("usr/bin/xdprobe");
        let config = root.join("etc/xdprobe/xdprobe.toml");
        let check = Command::new(&bin)
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(String::from_utf8_lossy(&check.stdout).contains(": valid"));

        let unit =
            std::fs::read_to_string(root.join("lib/systemd/system/xdprobe.service")).unwrap();
        let verify_copy = scratch.join("xdprobe.service");
        std::fs::write(
            &verify_copy,
            unit.replace("/usr/bin/xdprobe", bin.to_str().unwrap()),
        )
        .unwrap();
        let verify = Command::new("systemd-analyze")
            .args(["verify", verify_copy.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );

        let man = Command::new("zcat")
            .arg(root.join("usr/share/man/man8/xdprobe.8.gz"))
            .output()
            .unwrap();
        let man = String::from_utf8_lossy(&man.stdout);
        assert!(
            man.contains(".TH xdprobe 8") && man.contains("monitor") && man.contains("check"),
            "{man}"
        );

        // The completions know the subcommands; bash's parses.
        for (file, needle) in [
            ("usr/share/bash-completion/completions/xdprobe", "monitor"),
            (
                "usr/share/zsh/vendor-completions/_xdprobe",
                "#compdef xdprobe",
            ),
            (
                "usr/share/fish/vendor_completions.d/xdprobe.fish",
                "complete -c xdprobe",
            ),
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            assert!(
                text.contains(needle) && text.contains("status"),
                "{file}:\n{text}"
            );
        }
        let bash = Command::new("bash")
            .arg("-n")
            .arg(root.join("usr/share/bash-completion/completions/xdprobe"))
            .output()
            .unwrap();
        assert!(
            bash.status.success(),
            "{}",
            String::from_utf8_lossy(&bash.stderr)
        );
        // --version names the commit it was built from.
        let version = Command::new(&bin).arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout);
        let head = run(&["git", "rev-parse", "--short=12", "HEAD"])
            .unwrap()
            .stdout;
        let head = String::from_utf8_lossy(&head);
        let want = format!("(commit {})", head.trim());
        assert!(
            version.starts_with("xdprobe ") && version.trim().ends_with(&want),
            "{version:?}, want the commit {want}"
        );

        // The installed binary as the unit runs it: nobody, the unit's capabilities, ambient.
        let caps: Vec<String> = unit
            .lines()
            .find_map(|l| l.strip_prefix("AmbientCapabilities="))
            .expect("capabilities in the unit")
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let caps = caps.join(",");
        let as_unit = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps=-all,{caps}"))
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg("--no-new-privs")
            .arg(&bin)
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&scratch);
        assert!(
            as_unit.status.success(),
            "{}",
            String::from_utf8_lossy(&as_unit.stderr)
        );
    }
}
