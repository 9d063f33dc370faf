//! The daemon's state as shown to the outside (`/status`, `/metrics`, `xdprobe status`): one
//! snapshot that the prober, the failover groups and the DNS pools keep up to date.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::model::health::State;

/// The daemon's state as last published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub windows: u64,
    pub late_rounds: u64,
    /// Time spent reading the per-host counters in the last window.
    pub map_read_seconds: f64,
    pub hosts: Vec<HostStatus>,
    pub groups: Vec<GroupStatus>,
    #[serde(default)]
    pub dns: Vec<DnsStatus>,
    /// Reloads applied, and rejected (the running config stayed).
    #[serde(default)]
    pub reloads: u64,
    #[serde(default)]
    pub reload_failures: u64,
    /// The probe window now in use.
    #[serde(default)]
    pub window_seconds: f64,
    /// Cluster mode: this node, the members, the groups' holders and the merged view of the
    /// monitored targets.
    #[serde(default)]
    pub cluster: Option<ClusterStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node: String,
    /// `starting`, `live` or `lapsed`.
    pub standing: String,
    /// Members whose heartbeat is fresh here: the ones the targets are shared among.
    pub members: Vec<String>,
    /// Monitored targets in all, and those this node probes.
    pub targets: u64,
    pub share: u64,
    pub groups: Vec<ClusterGroupStatus>,
    /// Each monitored target as the nodes probing it last wrote it to etcd.
    pub merged: Vec<MergedTarget>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterGroupStatus {
    pub group: String,
    pub holder: Option<String>,
    /// Live nodes' verdicts on the primary, and how many DOWN move the VIP.
    pub down: u64,
    pub up: u64,
    pub needed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergedTarget {
    pub target: IpAddr,
    /// UP if any node probing it says UP, DOWN if all do.
    pub state: State,
    /// `node:up:window` or `node:down:window`, one per node probing it.
    pub by: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: IpAddr,
    pub state: State,
    /// The window in which the host entered its state.
    pub since_window: u32,
    pub rtt_ms: Option<f64>,
    pub probes_sent: u64,
    pub replies: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub watch: IpAddr,
    pub vip: String,
    pub label: String,
    pub holding: bool,
    pub claims: u64,
    pub releases: u64,
    /// Times we gave the VIP up because another machine answered for it while we held it.
    #[serde(default)]
    pub yields: u64,
    /// Times a held VIP was found gone (removed by someone else) and put back.
    #[serde(default)]
    pub restored: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsStatus {
    pub name: String,
    pub server: String,
    /// The server's records matched the pool at the last attempt.
    pub in_sync: bool,
    /// Failed attempts to read or update the server.
    pub failures: u64,
    /// A records at the name after the last successful sync (ours and others').
    pub published: u64,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Observed(Arc<Mutex<Snapshot>>);

impl Observed {
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(Mutex::new(snapshot)))
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
