//! `cargo xtask dist`: a Debian package of xdprobe: the binary, the systemd unit, the example
//! config as `/etc/xdprobe/xdprobe.toml` (a conffile: upgrades keep the operator's edits), and
//! the man page generated from the clap definitions (`xdprobe man`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{cargo_cmd, cmd};

/// Where the config lives once installed; listed as a conffile.
const CONFIG: &str = "etc/xdprobe/xdprobe.toml";

/// Builds the package (release binary, or the debug one for the test suite) and returns its
/// path under `target/dist/`.
pub fn dist(debug: bool) -> Result<PathBuf> {
    let bin = cargo_cmd::build_xdprobe(!debug)?;
    let root = cargo_cmd::workspace_root();
    let version = version(&cmd::output(Command::new(&bin).arg("--version"))?)?;
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let stage = cargo_cmd::target_dir()
        .join("dist")
        .join(format!("xdprobe_{version}_{arch}"));
    let _ = fs::remove_dir_all(&stage);

    install(&bin, &stage.join("usr/bin/xdprobe"), 0o755)?;
    install(
        &root.join("probe-user/dist/xdprobe.service"),
        &stage.join("lib/systemd/system/xdprobe.service"),
        0o644,
    )?;
    install(
        &root.join("probe-user/examples/xdprobe.toml"),
        &stage.join(CONFIG),
        0o644,
    )?;
    install(
        &root.join("README.md"),
        &stage.join("usr/share/doc/xdprobe/README.md"),
        0o644,
    )?;
    let man = stage.join("usr/share/man/man8/xdprobe.8");
    write(
        &man,
        &cmd::capture(Command::new(&bin).arg("man"))?.stdout,
        0o644,
    )?;
    cmd::run(Command::new("gzip").args(["-9n"]).arg(&man))?;

    let size_kib = du_kib(&stage)?;
    write(
        &stage.join("DEBIAN/control"),
        control(&version, &arch, size_kib).as_bytes(),
        0o644,
    )?;
    write(
        &stage.join("DEBIAN/conffiles"),
        format!("/{CONFIG}\n").as_bytes(),
        0o644,
    )?;

    let deb = package_path();
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("dist: {}", deb.display());
    Ok(deb)
}

/// Where `dist` writes the package (one name for every version, so the test suite finds it).
pub fn package_path() -> PathBuf {
    cargo_cmd::target_dir().join("dist").join("xdprobe.deb")
}

/// The version from `xdprobe --version` ("xdprobe 0.1.0").
fn version(line: &str) -> Result<String> {
    line.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no version in {line:?}"))
}

/// The package's control file.
fn control(version: &str, arch: &str, size_kib: u64) -> String {
    format!(
        "Package: xdprobe\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: xdprobe developers <xdprobe@example.org>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6\n\
         Section: net\n\
         Priority: optional\n\
         Description: eBPF-accelerated ICMP health prober and virtual-IP failover daemon\n \
         xdprobe probes hosts with ICMP echo, counts the replies in an XDP program and takes\n \
         over a virtual IP when the watched host misses two consecutive windows.\n"
    )
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

/// Kibibytes of the files under `dir` (for Installed-Size).
fn du_kib(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        bytes += if meta.is_dir() {
            du_kib(&entry.path())? * 1024
        } else {
            meta.len()
        };
    }
    Ok(bytes.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_binary() {
        assert_eq!(version("xdprobe 0.1.0\n").unwrap(), "0.1.0");
        assert!(version("xdprobe").is_err());
    }

    #[test]
    fn control_file_has_the_fields_dpkg_needs() {
        let control = control("0.1.0", "amd64", 4321);
        for field in [
            "Package: xdprobe\n",
            "Version: 0.1.0\n",
            "Architecture: amd64\n",
            "Installed-Size: 4321\n",
            "Maintainer: ",
        ] {
            assert!(control.contains(field), "{field:?} missing:\n{control}");
        }
        // Continuation lines of the description start with a space.
        assert!(control
            .lines()
            .skip_while(|l| !l.starts_with("Description:"))
            .skip(1)
            .all(|l| l.starts_with(' ')));
    }
}
