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
