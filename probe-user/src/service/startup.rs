//! Set-up steps shared by `run` and `monitor`: naming the interface, attaching the program.

use std::net::IpAddr;

use tracing::info;

use crate::{
    failure::{Failure, OrSystem as _},
    probe::xdp::{AttachMode, XdpProbe},
};

pub fn interface_index(iface: &str) -> Result<u32, Failure> {
    if iface.contains('\0') {
        return Err(Failure::Usage(anyhow::anyhow!(
            "invalid `iface`: {iface:?}"
        )));
    }
    nix::net::if_::if_nametoindex(iface).map_err(|_| {
        Failure::Usage(anyhow::anyhow!(
            "invalid `iface`: no interface named {iface:?}"
        ))
    })
}

/// The oldest kernel the XDP program runs on: `bpf_loop` came with 5.17 (mmapable BPF
/// arrays, which the counters need too, with 5.5).
pub const MIN_KERNEL: (u32, u32) = (5, 17);

/// Stops early, naming the minimum, on a kernel older than [`MIN_KERNEL`] (rather than with a
/// verifier error at load): a system failure, exit 3.
pub fn require_kernel() -> Result<(), Failure> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    check_kernel(&release).map_err(Failure::System)
}

/// The check on a kernel release string (`6.18.0-1-amd64`); an unreadable one passes (the
/// load would say what is wrong).
fn check_kernel(release: &str) -> anyhow::Result<()> {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|n| n.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (numbers.next(), numbers.next()) else {
        return Ok(());
    };
    let (want_major, want_minor) = MIN_KERNEL;
    if (major, minor) < MIN_KERNEL {
        anyhow::bail!(
            "kernel {release} is too old: xdprobe needs Linux {want_major}.{want_minor} or newer \
             (bpf_loop came with 5.17, mmapable BPF arrays with 5.5)"
        );
    }
    Ok(())
}

/// Stops early, naming what is missing, when we lack a capability we need.
pub fn require_capabilities() -> Result<(), Failure> {
    crate::service::caps::check().map_err(Failure::System)
}

/// Loads the XDP program with room for `capacity` hosts, fills it with `hosts` (sorted) and
/// attaches it to `iface`. `reloadable`: room to switch host tables on reload (`run`).
pub fn attach_xdp(
    hosts: &[IpAddr],
    capacity: usize,
    reloadable: bool,
    iface: &str,
    debug: bool,
) -> Result<XdpProbe, Failure> {
    let mut xdp = XdpProbe::load(hosts, capacity, reloadable, debug).system()?;
    if debug {
        xdp.spawn_log_forwarder().system()?;
    }
    let mode = xdp.attach(iface).system()?;
    info!(
        %iface,
        mode = if mode == AttachMode::Native { "native" } else { "generic" },
        "XDP program attached"
    );
    Ok(xdp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_older_than_5_17_are_named_with_the_minimum() {
        for ok in [
            "5.17.0",
            "6.18.0-1-amd64",
            "5.17",
            "6.1.0-28-cloud-amd64",
            "10.0",
        ] {
            assert!(check_kernel(ok).is_ok(), "{ok}");
        }
        for old in ["5.16.20", "5.15.0-91-generic", "4.19.0-26-amd64"] {
            let e = check_kernel(old).unwrap_err().to_string();
            assert!(e.contains(old) && e.contains("Linux 5.17 or newer"), "{e}");
        }
        for unreadable in ["", "x.y"] {
            assert!(check_kernel(unreadable).is_ok(), "{unreadable:?}");
        }
    }
}
