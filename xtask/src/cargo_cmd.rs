//! Where the workspace lives and how we call cargo on it.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// The binary that `probe-user` builds.
const XDPROBE: &str = "xdprobe";

/// The workspace root: xtask's manifest lives one level below it.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `cargo`, run from the workspace root. Prefers the cargo that ran us (`CARGO`), so the same
/// toolchain builds everything.
pub fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` like cargo does.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Absolute path of the built `xdprobe` binary for the given profile.
pub fn xdprobe_bin(release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    target_dir().join(profile).join(XDPROBE)
}

/// `cargo build -p probe-user [--release]`; probe-user's build script also compiles the eBPF
/// program. Returns the path of the `xdprobe` binary.
pub fn build_xdprobe(release: bool) -> Result<PathBuf> {
    let mut build = cargo();
    build.args(["build", "-p", "probe-user"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build).context("building xdprobe")?;
    let bin = xdprobe_bin(release);
    anyhow::ensure!(
        cmd::is_executable(&bin),
        "cargo build succeeded but {} is missing",
        bin.display()
    );
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("xtask").is_dir());
    }

    #[test]
    fn xdprobe_bin_is_absolute_and_per_profile() {
        let debug = xdprobe_bin(false);
        assert!(debug.is_absolute());
        assert!(debug.ends_with("debug/xdprobe"));
        assert!(xdprobe_bin(true).ends_with("release/xdprobe"));
    }
}
