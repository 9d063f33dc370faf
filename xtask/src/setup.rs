//! `cargo xtask setup`: make sure every tool the build and the tests need is installed.
//!
//! Each check is cheap and runs first; only what is missing gets installed, with one line
//! saying so. Run by every other command, so it must stay fast when all is present.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo_cmd, cmd};

/// Debian packages the build, the tests and the benchmark need.
///
/// - `iproute2`, `iputils-ping`, `nftables`: the integration tests and the demo build their
///   hosts in network namespaces (`ip`), ping through them and drop traffic with `nft`.
/// - `python3-aiosmtpd`, `openssl`: throwaway SMTP servers for the alert-mail tests, plain
///   and STARTTLS (openssl makes their certificates).
/// - `fping`: the benchmark's peer: `cargo xtask bench` measures xdprobe against it on the same
///   hosts with the same probe count and period.
/// - `bind9`, `bind9-dnsutils`: the DNS-pool tests run a real BIND (`named`, `tsig-keygen`) as
///   the primary that xdprobe sends its TSIG-signed updates to, and check and disturb its
///   records with `dig` and `nsupdate`. The tests start their own `named`, on loopback inside
///   namespaces they make; the package's system service is not used (our machines run no
///   systemd, so installing it starts nothing).
/// - `etcd-server`: the cluster tests run a real etcd (3.4) cluster, three members in
///   namespaces they make; as with BIND, the package's system service is not used.
/// - `etcd-client`: `etcdctl`, with which those tests check and disturb the cluster.
/// - `mmdebstrap`, `systemd-container`, `lintian`: the service tests build a Debian bookworm
///   root with systemd (cached under `target/`), boot it with `systemd-nspawn` in a lab
///   namespace, install the package there with apt, and check the package with lintian.
/// - `prometheus`, `curl`: the metrics tests check `/metrics` with `promtool check metrics`
///   and have Debian's Prometheus (2.42) scrape the daemon in a namespace (its system service
///   is not used); curl asks for each content type.
/// - `protobuf-compiler`, `libprotobuf-dev`: `protoc`, which the `etcd-client` crate's build
///   script needs to compile etcd's gRPC definitions, and the well-known types those import
///   (`google/protobuf/descriptor.proto`...). `protoc` only recommends the package that has
///   them, and we install without recommends: without it the build fails with
///   "google/protobuf/descriptor.proto: File not found".
/// - the rest is what bpf-linker links against. LLVM 22 is not in plain bookworm: on our
///   machines apt finds `llvm-22-dev` in the configured `bookworm-security` main component
///   (version 1:22.1.8-1~deb12u1). We add no apt sources; if apt cannot find it, the install
///   fails and says so.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "nftables",
    "python3-aiosmtpd",
    "openssl",
    // systemd-analyze checks the shipped unit file.
    "systemd",
    "fping",
    "bind9",
    "bind9-dnsutils",
    "etcd-server",
    "etcd-client",
    "prometheus",
    "curl",
    "mmdebstrap",
    "systemd-container",
    "lintian",
    "protobuf-compiler",
    "libprotobuf-dev",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// Where the LLVM 22 Debian packages live.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The bpf-linker we build from source against the system LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    let root = cmd::is_root()?;
    debian_packages(root).context("installing Debian packages")?;
    nightly_rust_src().context("installing the nightly toolchain's rust-src")?;
    rustfmt_and_clippy().context("installing rustfmt and clippy")?;
    bpf_linker().context("installing bpf-linker")?;
    Ok(())
}

fn debian_packages(root: bool) -> Result<()> {
    let mut missing = Vec::new();
    for &package in DEBIAN_PACKAGES {
        if !deb_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !root {
        bail!(
            "missing Debian packages: {list}\n\
             xtask installs them only as root (it does not call sudo); run as root, or:\n  \
             sudo apt-get update && sudo apt-get install -y --no-install-recommends {list}"
        );
    }
    println!("setup: installing Debian packages: {list}");
    cmd::run(apt_get().args(["update", "-qq"]))?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )?;
    Ok(())
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn deb_installed(package: &str) -> Result<bool> {
    // Exits 1 for a package dpkg has never heard of: that just means "not installed".
    let out = cmd::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .context("dpkg-query is needed (xtask setup supports Debian and derivatives)")?;
    Ok(out.status.success() && is_installed_status(&String::from_utf8_lossy(&out.stdout)))
}

fn is_installed_status(status: &str) -> bool {
    status.trim() == "install ok installed"
}

/// The eBPF program is built with `rustup run nightly cargo build -Z build-std=core`, which
/// needs the nightly toolchain and its `rust-src`.
fn nightly_rust_src() -> Result<()> {
    let listed =
        cmd::capture(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .context("rustup is needed to build the eBPF program")?;
    if !listed.status.success() {
        // rustup refuses to list the components of a toolchain it does not have.
        println!("setup: installing the nightly toolchain with rust-src");
        return cmd::run(rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    if !has_component(&String::from_utf8_lossy(&listed.stdout), "rust-src") {
        println!("setup: installing rust-src for nightly");
        cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// `cargo xtask test` runs `cargo fmt` and `cargo clippy` with the toolchain that runs us.
fn rustfmt_and_clippy() -> Result<()> {
    let installed = cmd::output(rustup().args(["component", "list", "--installed"]))?;
    for component in ["rustfmt", "clippy"] {
        if !has_component(&installed, component) {
            println!("setup: installing {component}");
            cmd::run(rustup().args(["component", "add", component]))?;
        }
    }
    Ok(())
}

/// rustup, run from the workspace so it picks the workspace's active toolchain.
fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(cargo_cmd::workspace_root());
    cmd
}

/// `rustup component list --installed` prints `rust-src` bare and others as `NAME-TARGET`.
fn has_component(installed: &str, component: &str) -> bool {
    installed.lines().any(|line| {
        let line = line.trim();
        line == component || line.starts_with(&format!("{component}-"))
    })
}

fn bpf_linker() -> Result<()> {
    if let Some(found) = find_bpf_linker() {
        if bpf_linker_works(&found) {
            ensure_on_path(&found);
            return Ok(());
        }
    }
    println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (LLVM 22; takes a few minutes)");
    cmd::run(
        cargo_cmd::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            // bpf-linker's build script reads LLVM_PREFIX; without it, linking fails with
            // "unable to find library -lLLVM". llvm-sys reads its own variable.
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
    )?;
    let installed = find_bpf_linker()
        .context("cargo install finished but bpf-linker is neither in PATH nor ~/.cargo/bin")?;
    ensure_on_path(&installed);
    Ok(())
}

/// bpf-linker in `PATH`, else where `cargo install` puts it.
fn find_bpf_linker() -> Option<PathBuf> {
    cmd::find_in_path("bpf-linker").or_else(|| {
        let candidate = cargo_bin_dir()?.join("bpf-linker");
        cmd::is_executable(&candidate).then_some(candidate)
    })
}

fn bpf_linker_works(path: &Path) -> bool {
    cmd::capture(Command::new(path).arg("--version")).is_ok_and(|out| out.status.success())
}

/// `$CARGO_HOME/bin`, defaulting to `~/.cargo/bin`.
fn cargo_bin_dir() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    Some(home.join("bin"))
}

/// The eBPF build finds bpf-linker through `PATH`; if it is only in `~/.cargo/bin`, put that
/// directory on the `PATH` our children inherit.
fn ensure_on_path(bpf_linker: &Path) {
    let Some(dir) = bpf_linker.parent() else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == dir) {
        return;
    }
    let joined = env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&path)));
    if let Ok(joined) = joined {
        // Single-threaded at this point: no other thread reads the environment.
        env::set_var("PATH", joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fully_installed_packages_count() {
        assert!(is_installed_status("install ok installed"));
        assert!(!is_installed_status("deinstall ok config-files"));
        assert!(!is_installed_status("install ok unpacked"));
        assert!(!is_installed_status(""));
    }

    #[test]
    fn finds_rust_src_in_component_list() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
        assert!(has_component("clippy-x86_64-unknown-linux-gnu\n", "clippy"));
    }
}
