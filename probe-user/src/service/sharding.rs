//! Which monitored targets this cluster node probes: its rendezvous share among the members
//! whose heartbeat is fresh (`model::shard`), followed as members come and go. The reloader
//! asks for the share and hands the prober its hosts; the reporter is told the share, to
//! write its targets' states to etcd.

use std::net::IpAddr;

use tokio::sync::watch;

use crate::{
    act::cluster::{report::Share, ClusterState},
    model::{cluster::Standing, shard},
};

pub struct Sharding {
    node: String,
    replicas: usize,
    state: watch::Receiver<ClusterState>,
    /// The members the share was last computed for.
    members: Vec<String>,
    share: watch::Sender<Share>,
}

impl Sharding {
    /// The receiver follows the share as [`Sharding::publish`] sets it.
    pub fn new(
        node: String,
        replicas: u32,
        state: watch::Receiver<ClusterState>,
    ) -> (Self, watch::Receiver<Share>) {
        let (share, rx) = watch::channel(Share::default());
        let sharding = Self {
            node,
            replicas: replicas as usize,
            state,
            members: Vec::new(),
            share,
        };
        (sharding, rx)
    }

    /// Our share of `monitored` (sorted, so is the share) among the current members.
    pub fn mine(&self, monitored: &[IpAddr]) -> Vec<IpAddr> {
        shard::share(&self.node, monitored, &self.members, self.replicas)
    }

    /// Tells the reporter our share of `monitored` before the prober probes it (so that no
    /// first state change of a new target arrives before it); returns the share it replaced,
    /// to put back with [`Sharding::restore`] if the prober could not switch.
    pub fn publish(&self, monitored: &[IpAddr]) -> Share {
        self.share.send_replace(Share {
            targets: monitored.len(),
            mine: self.mine(monitored),
        })
    }

    pub fn restore(&self, share: Share) {
        self.share.send_replace(share);
    }

    /// Waits until the members the targets are shared among change (only while our lease is
    /// live and the keys were read: a node cut off keeps probing what it probed).
    pub async fn changed(&mut self) {
        loop {
            if self.state.changed().await.is_err() {
                return std::future::pending().await;
            }
            let state = self.state.borrow_and_update();
            if !state.synced || state.standing() != Standing::Live {
                continue;
            }
            if state.beating != self.members {
                self.members = state.beating.clone();
                return;
            }
        }
    }

    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The prober could not switch to the share: forget the members, so that the next
    /// state the session publishes (at least every renewal period) tries again.
    pub fn forget(&mut self) {
        self.members.clear();
    }
}
