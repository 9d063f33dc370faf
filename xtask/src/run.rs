//! `cargo xtask run`: build xdprobe, then become it (as root).
use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{bail, Result};

use crate::{cargo_cmd, cmd};

/// Builds xdprobe and replaces this process with it, so its exit code (0/2/3) and its
/// signal handling are exactly xdprobe's. Not root: goes through `sudo -E` when there is one.
pub fn run(release: bool, args: &[String]) -> Result<()> {
    let bin = cargo_cmd::build_xdprobe(release)?;
    let mut xdprobe = if cmd::is_root()? {
        Command::new(&bin)
    } else if let Some(sudo) = cmd::find_in_path("sudo") {
        println!("run: xdprobe needs root; running it through sudo");
        let mut sudo = Command::new(sudo);
        sudo.arg("-E").arg(&bin);
        sudo
    } else {
        bail!(
            "xdprobe needs root (it attaches XDP programs and moves addresses) and sudo is not \
             installed; run as root: {} {}",
            bin.display(),
            args.join(" ")
        );
    };
    xdprobe.args(args);
    // exec only returns if it failed.
    let err = xdprobe.exec();
    bail!("cannot start `{}`: {err}", cmd::describe(&xdprobe))
}
