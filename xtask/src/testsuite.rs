//! `cargo xtask test`: everything CI checks, in order, stopping at the first failure.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo_cmd, cmd};

/// The packages whose unit tests the suite runs, as root and then, without the privileged
/// ones, as nobody.
const UNIT_TEST_PACKAGES: [&str; 4] = ["probe-common", "probe-user", "xtask", "xdprobe-harness"];
/// The user and group the unprivileged tests run as.
const NOBODY: &str = "nobody";
const NOGROUP: &str = "nogroup";

/// The environment variable that tells the integration tests which xdprobe binary to run.
pub const XDPROBE_BIN_ENV: &str = "XDPROBE_BIN";
/// ... and which Debian package to install.
pub const XDPROBE_DEB_ENV: &str = "XDPROBE_DEB";

struct Step {
    name: &'static str,
    action: Action,
    /// Integration tests build network namespaces: root only.
    needs_root: bool,
}

#[cfg(test)]
impl Step {
    /// The command the step runs (first).
    fn command(&self) -> &Command {
        match &self.action {
            Action::Run(command) | Action::AsNobody(command) => command,
        }
    }
}

enum Action {
    /// Run the command; it must exit 0.
    Run(Command),
    /// Run the command (`cargo test --no-run --message-format=json ...`), then every unit-test
    /// binary it lists as user nobody, without capabilities, skipping the `privileged` tests:
    /// each must pass. Proves that the tests outside `privileged` need no root.
    AsNobody(Command),
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
            shown_action(&step.action)
        );
        if step.needs_root && !root {
            bail!(
                "step `{}` needs root: the tests load BPF programs and run xdprobe in network \
                 namespaces; run `cargo xtask test` as root",
                step.name
            );
        }
        match &mut step.action {
            Action::Run(command) => cmd::run(command),
            Action::AsNobody(list) => run_as_nobody(list),
        }
        .with_context(|| format!("step `{}` failed", step.name))?;
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
    // `--no-fail-fast`: one failing test file does not hide the result of the others.
    let mut integration = cargo(&[
        "test",
        "-p",
        "xdprobe-tests",
        "--tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ]);
    integration.env(XDPROBE_BIN_ENV, xdprobe_bin);
    integration.env(XDPROBE_DEB_ENV, crate::dist::package_path());
    vec![
        Step {
            name: "build",
            action: Action::Run(cargo(&["build", "-p", "probe-user"])),
            needs_root: false,
        },
        Step {
            name: "fmt",
            action: Action::Run(cargo(&["fmt", "--all", "--check"])),
            needs_root: false,
        },
        Step {
            name: "clippy",
            action: Action::Run(cargo(&[
                "clippy",
                "-p",
                "probe-common",
                "-p",
                "probe-user",
                "-p",
                "xtask",
                "-p",
                "xdprobe-tests",
                "-p",
                "xdprobe-harness",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])),
            needs_root: false,
        },
        Step {
            name: "layers",
            action: Action::Run(cargo(&[
                "run",
                "--quiet",
                "--package",
                "xtask",
                "--",
                "layers",
            ])),
            needs_root: false,
        },
        Step {
            name: "unit tests",
            action: Action::Run(cargo(&with_packages(&["test"], &UNIT_TEST_PACKAGES))),
            // The XDP program, ARP and mail tests load BPF and build network namespaces.
            needs_root: true,
        },
        Step {
            name: "unit tests as nobody",
            action: Action::AsNobody(list_unit_tests()),
            // setpriv needs root to become nobody.
            needs_root: true,
        },
        Step {
            name: "package",
            action: Action::Run(cargo(&[
                "run",
                "--quiet",
                "--package",
                "xtask",
                "--",
                "dist",
                "--debug",
            ])),
            needs_root: false,
        },
        Step {
            name: "integration tests",
            action: Action::Run(integration),
            needs_root: true,
        },
    ]
}

/// `ARGS -p PACKAGE...`.
fn with_packages<'a>(args: &[&'a str], packages: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    for package in packages {
        all.extend(["-p", package]);
    }
    all
}

/// Builds the unit tests (already built by the step before: quick) and lists them as JSON.
fn list_unit_tests() -> Command {
    let mut command = cargo_cmd::cargo();
    command.args(with_packages(
        &["test", "--no-run", "--message-format=json"],
        &UNIT_TEST_PACKAGES,
    ));
    command
}

/// Who runs the unprivileged tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unprivileged {
    /// User nobody, without capabilities: the real test.
    Nobody,
    /// Root without any capability, when nobody cannot read the workspace (a clone under
    /// /root): every privilege the tests could lean on comes from a capability.
    CaplessRoot,
}

impl Unprivileged {
    fn label(self) -> &'static str {
        match self {
            Unprivileged::Nobody => "as nobody",
            Unprivileged::CaplessRoot => "without capabilities",
        }
    }
}

/// `setpriv ... BIN --skip privileged`: BIN as nobody (or root without capabilities), with no
/// capabilities at all, from `dir` (also its HOME), so no test leans on root's home or the
/// workspace as current dir.
fn as_nobody(bin: &Path, dir: &Path, who: Unprivileged) -> Command {
    let mut command = Command::new("setpriv");
    if who == Unprivileged::Nobody {
        command.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOGROUP}"),
            "--clear-groups".into(),
        ]);
    }
    command
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(bin)
        .args(["--skip", "privileged"])
        .current_dir(dir)
        .env("HOME", dir);
    command
}

/// The test executables in cargo's JSON messages: each `compiler-artifact` of a test profile.
fn test_executables(json_lines: &str) -> Vec<PathBuf> {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["profile"]["test"] == true
        })
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .collect()
}

/// Whether any user may run `bin`: it is readable and executable by others, and every
/// directory above it may be entered by them.
fn others_may_run(bin: &Path) -> bool {
    others_may(bin, 0o005)
}

/// Whether any user may read `file`, and enter every directory above it.
fn others_may_read(file: &Path) -> bool {
    others_may(file, 0o004)
}

fn others_may(path: &Path, bits: u32) -> bool {
    let mode = |path: &Path| fs::metadata(path).map(|m| m.permissions().mode());
    mode(path).is_ok_and(|m| m & bits == bits)
        && path
            .ancestors()
            .skip(1)
            .filter(|dir| !dir.as_os_str().is_empty())
            .all(|dir| mode(dir).is_ok_and(|m| m & 0o001 != 0))
}

fn run_as_nobody(list: &mut Command) -> Result<()> {
    let out = list
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", cmd::describe(list)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", cmd::describe(list), out.status);
    }
    let bins = test_executables(&String::from_utf8_lossy(&out.stdout));
    if bins.len() < UNIT_TEST_PACKAGES.len() {
        bail!(
            "expected a unit-test binary for each of {UNIT_TEST_PACKAGES:?}, cargo listed {bins:?}"
        );
    }
    // A world-readable scratch dir: the tests' current dir and, if nobody cannot reach the
    // target dir (a workspace under /root, say), where the binaries are copied to.
    let scratch = std::env::temp_dir().join(format!("xdprobe-nobody-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o1777))?;
    let result = run_each_as_nobody(&bins, &scratch);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn run_each_as_nobody(bins: &[PathBuf], scratch: &Path) -> Result<()> {
    // Some tests read the workspace (its manifest, its sources): nobody must be able to.
    let manifest = cargo_cmd::workspace_root().join("Cargo.toml");
    let who = if others_may_read(&manifest) {
        Unprivileged::Nobody
    } else {
        println!(
            "==> nobody cannot read {} (a directory above it is closed to others): the \
             unprivileged tests run as root without any capability instead",
            manifest.display()
        );
        Unprivileged::CaplessRoot
    };
    let mut failed = Vec::new();
    for bin in bins {
        let runnable = if others_may_run(bin) {
            bin.clone()
        } else {
            let copy = scratch.join(bin.file_name().context("a binary without a name")?);
            fs::copy(bin, &copy)
                .with_context(|| format!("copying {} for nobody", bin.display()))?;
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
            copy
        };
        let mut command = as_nobody(&runnable, scratch, who);
        println!("==> {}: {}", who.label(), cmd::describe(&command));
        if !cmd::status(&mut command)?.success() {
            failed.push(bin.display().to_string());
        }
    }
    if !failed.is_empty() {
        bail!(
            "tests outside the `privileged` modules failed without root in {}: a test that \
             needs root belongs in a `privileged` module and starts with require_root()",
            failed.join(", ")
        );
    }
    println!("==> {} unit-test binaries pass {}", bins.len(), who.label());
    Ok(())
}

fn shown_action(action: &Action) -> String {
    match action {
        Action::Run(command) => shown(command),
        Action::AsNobody(list) => format!(
            "{}, then each as nobody: {} BIN --skip privileged",
            shown(list),
            shown(&as_nobody(
                Path::new("BIN"),
                Path::new("/"),
                Unprivileged::Nobody
            ))
            .trim_end_matches(" BIN --skip privileged")
        ),
    }
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
        let line = cmd::describe(last.command());
        assert!(
            line.ends_with("test -p xdprobe-tests --tests --no-fail-fast -- --test-threads=1"),
            "{line}"
        );
        let bin = last
            .command()
            .get_envs()
            .find(|(key, _)| *key == XDPROBE_BIN_ENV)
            .and_then(|(_, value)| value);
        assert_eq!(bin, Some(std::ffi::OsStr::new("/abs/xdprobe")));
        let root_steps: Vec<_> = steps
            .iter()
            .filter(|s| s.needs_root)
            .map(|s| s.name)
            .collect();
        assert_eq!(
            root_steps,
            ["unit tests", "unit tests as nobody", "integration tests"]
        );
        assert_eq!(steps[0].name, "build");
        assert_eq!(steps[steps.len() - 2].name, "package");
    }

    #[test]
    fn the_unit_tests_run_as_root_then_without_the_privileged_ones_as_nobody() {
        let steps = steps("/abs/xdprobe");
        let at = |name: &str| steps.iter().position(|s| s.name == name).expect(name);
        assert_eq!(at("unit tests as nobody"), at("unit tests") + 1);
        let packages = "-p probe-common -p probe-user -p xtask -p xdprobe-harness";
        let unit = cmd::describe(steps[at("unit tests")].command());
        assert!(unit.ends_with(&format!("test {packages}")), "{unit}");
        let clippy = cmd::describe(steps[at("clippy")].command());
        assert!(clippy.contains("-p xdprobe-harness"), "{clippy}");
        let nobody = &steps[at("unit tests as nobody")];
        assert!(matches!(nobody.action, Action::AsNobody(_)));
        let list = cmd::describe(nobody.command());
        assert!(
            list.ends_with(&format!("test --no-run --message-format=json {packages}")),
            "{list}"
        );

        let run = as_nobody(
            Path::new("/t/deps/xtask-0123"),
            Path::new("/tmp/x"),
            Unprivileged::Nobody,
        );
        assert_eq!(
            cmd::describe(&run),
            "setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all \
             --bounding-set=-all /t/deps/xtask-0123 --skip privileged"
        );
        assert_eq!(run.get_current_dir(), Some(Path::new("/tmp/x")));
        let home = run.get_envs().find(|(key, _)| *key == "HOME");
        assert_eq!(home, Some(("HOME".as_ref(), Some("/tmp/x".as_ref()))));
        let capless = as_nobody(
            Path::new("/b"),
            Path::new("/tmp/x"),
            Unprivileged::CaplessRoot,
        );
        assert_eq!(
            cmd::describe(&capless),
            "setpriv --inh-caps=-all --bounding-set=-all /b --skip privileged"
        );
        assert_eq!(
            shown_action(&nobody.action),
            format!(
                "cargo test --no-run --message-format=json {packages}, then each as nobody: \
                 setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all \
                 --bounding-set=-all BIN --skip privileged"
            )
        );
    }

    #[test]
    fn test_executables_are_the_test_profile_artifacts() {
        let json = r#"{"reason":"compiler-artifact","profile":{"test":false},"executable":"/t/debug/xdprobe"}
{"reason":"build-script-executed","package_id":"x"}
{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/deps/xdprobe-1"}
{"reason":"compiler-artifact","profile":{"test":false},"executable":null}
not json
{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/deps/xtask-2"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executables(json),
            [
                PathBuf::from("/t/deps/xdprobe-1"),
                PathBuf::from("/t/deps/xtask-2")
            ]
        );
    }

    #[test]
    fn a_binary_nobody_cannot_reach_is_seen_as_such() {
        let dir = std::env::temp_dir().join(format!("xtask-perm-{}", std::process::id()));
        let inner = dir.join("inner");
        fs::create_dir_all(&inner).unwrap();
        let bin = inner.join("bin");
        fs::write(&bin, "").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o755)).unwrap();
        let open = others_may_run(&bin);
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o700)).unwrap();
        let closed_dir = others_may_run(&bin);
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o750)).unwrap();
        let closed_file = others_may_run(&bin);
        let _ = fs::remove_dir_all(&dir);
        // The temp dir itself may sit where others cannot go: only then is `open` false.
        if others_may_run(&std::env::temp_dir()) {
            assert!(open);
        }
        assert!(!closed_dir && !closed_file);
    }

    #[test]
    fn a_file_under_a_closed_directory_is_not_readable_by_others() {
        let dir = std::env::temp_dir().join(format!("xdprobe-modes-{}", std::process::id()));
        let inner = dir.join("inner");
        fs::create_dir_all(&inner).unwrap();
        let file = inner.join("Cargo.toml");
        fs::write(&file, "").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o755)).unwrap();
        let open = others_may_read(&file);
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o700)).unwrap();
        let closed = others_may_read(&file);
        let _ = fs::remove_dir_all(&dir);
        assert!(open, "a 644 file under 755 directories");
        assert!(!closed, "a directory above it is 700");
        assert!(!others_may_run(Path::new("/nonexistent/xdprobe")));
    }
}
