//! What the prober tells the rest of the daemon (pure data).

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::model::health::Change;

/// A host changed state at the end of a probe round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostEvent {
    pub host: IpAddr,
    pub change: Change,
    /// The window the deciding round belonged to.
    pub window: u32,
    /// Wall-clock time of the decision.
    pub at: SystemTime,
    /// How long the host had been silent when declared DOWN, in probe rounds' time (zero
    /// otherwise).
    pub silent_for: Duration,
    /// How long ago the host's last reply arrived, measured (`None`: never heard).
    pub heard_ago: Option<Duration>,
    /// Length of a window, for the notice.
    pub window_len: Duration,
    /// The last round-trip time, when the host came UP.
    pub rtt: Option<Duration>,
}

/// Where the VIP lives on this node, for the notices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub vip: String,
    pub iface: String,
    pub label: String,
    pub node: String,
}

/// What the prober says: something about the hosts, or that a window ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    Host(HostReport),
    Window(WindowCounts),
}

/// What the prober says about the hosts: what the failover groups, the hooks and the DNS pools
/// act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostReport {
    /// A host changed state.
    Changed(HostEvent),
    /// A host's current state, for a failover group that a reload has just added to watch it
    /// (it missed the change): the group acts on it, but it is not a change, so no hooks.
    Known(HostEvent),
    /// The watched host has been silent long enough that a DOWN may follow.
    Suspect { host: IpAddr, window: u32 },
    /// Whether any witness answered within the last window (sent when it changes).
    Witnesses { alive: bool, window: u32 },
}

/// A window ended: hosts per state at its end, probes sent and replies counted in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WindowCounts {
    pub window: u32,
    pub up: u64,
    pub down: u64,
    pub unknown: u64,
    pub sent: u64,
    pub answered: u64,
}
