//! `cargo xtask test`: everything CI checks, in order, stopping at the first failure.
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cargo_cmd, cmd};

/// The environment variable that tells the integration tests which xdprobe binary to run.
pub const XDPROBE_BIN_ENV: &str = "XDPROBE_BIN";
/// ... and which Debian package to install.
pub const XDPROBE_DEB_ENV: &str = "XDPROBE_DEB";

struct Step {
    name: &'static str,
    command: Command,
    /// Integration tests build network namespaces: root only.
    needs_root: bool,
}

pub fn test() -> Result<()> {
    let bin = cargo_cmd::xdprobe_bin(false);
    let mut steps = steps(&bin.to_string_lossy());
    let root = cmd::is_root()?;
    let total = steps.len();
    for (i, step) in steps.iter_mut().enumerate() {
        println!(
            "==> [{}/{total}] {}: {}",
            i + 1,
            step.name,
            shown(&step.command)
        );
        if step.needs_root && !root {
            bail!(
                "step `{}` needs root: the tests load BPF programs and run xdprobe in network \
                 namespaces; run `cargo xtask test` as root",
                step.name
            );
        }
        cmd::run(&mut step.command).with_context(|| format!("step `{}` failed", step.name))?;
    }
    println!("==> all {total} steps passed");
    Ok(())
}

fn steps(xdprobe_bin: &str) -> Vec<Step> {
    let cargo = |args: &[&str]| {
        let mut command = cargo_cmd::cargo();
        command.args(args);
        command
    };
    // `--tests`: no doc-test run, so the output closes on the integration tests' own result
    // line (CI reads the last one), not on an empty doc-test summary.
    let mut integration = cargo(&[
        "test",
        "-p",
        "xdprobe-tests",
        "--tests",
        "--",
        "--test-threads=1",
    ]);
    integration.env(XDPROBE_BIN_ENV, xdprobe_bin);
    integration.env(XDPROBE_DEB_ENV, crate::dist::package_path());
    vec![
        Step {
            name: "build",
            command: cargo(&["build", "-p", "probe-user"]),
            needs_root: false,
        },
        Step {
            name: "fmt",
            command: cargo(&["fmt", "--all", "--check"]),
            needs_root: false,
        },
        Step {
            name: "clippy",
            command: cargo(&[
                "clippy",
                "-p",
                "probe-common",
                "-p",
                "probe-user",
                "-p",
                "xtask",
                "-p",
                "xdprobe-tests",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            needs_root: false,
        },
        Step {
            name: "layers",
            command: cargo(&["run", "--quiet", "--package", "xtask", "--", "layers"]),
            needs_root: false,
        },
        Step {
            name: "unit tests",
            command: cargo(&[
                "test",
                "-p",
                "probe-common",
                "-p",
                "probe-user",
                "-p",
                "xtask",
            ]),
            // The XDP program, ARP and mail tests load BPF and build network namespaces.
            needs_root: true,
        },
        Step {
            name: "package",
            command: cargo(&[
                "run",
                "--quiet",
                "--package",
                "xtask",
                "--",
                "dist",
                "--debug",
            ]),
            needs_root: false,
        },
        Step {
            name: "integration tests",
            command: integration,
            needs_root: true,
        },
    ]
}

/// The command line with the program's bare name: `cargo ...`, not the toolchain's full path.
fn shown(command: &Command) -> String {
    let full = cmd::describe(command);
    let program = command.get_program().to_string_lossy();
    match std::path::Path::new(command.get_program()).file_name() {
        Some(name) => full.replacen(&*program, &name.to_string_lossy(), 1),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integration_tests_run_last_one_at_a_time_with_the_binary() {
        let steps = steps("/abs/xdprobe");
        let last = steps.last().expect("there are steps");
        assert!(last.needs_root);
        let line = cmd::describe(&last.command);
        assert!(
            line.ends_with("test -p xdprobe-tests --tests -- --test-threads=1"),
            "{line}"
        );
        let bin = last
            .command
            .get_envs()
            .find(|(key, _)| *key == XDPROBE_BIN_ENV)
            .and_then(|(_, value)| value);
        assert_eq!(bin, Some(std::ffi::OsStr::new("/abs/xdprobe")));
        let root_steps: Vec<_> = steps
            .iter()
            .filter(|s| s.needs_root)
            .map(|s| s.name)
            .collect();
        assert_eq!(root_steps, ["unit tests", "integration tests"]);
        assert_eq!(steps[0].name, "build");
        assert_eq!(steps[steps.len() - 2].name, "package");
    }
}
