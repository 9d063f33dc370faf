//! The monitored targets in the cluster, one task per node: this node's share of them (which
//! the reloader computes and probes) has its state changes written to etcd
//! (`targets/ADDR/NODE` = `up W` or `down W`, under our lease); a target leaving our share has
//! its key deleted; and the merged view of every node's keys goes into `/status` and
//! `/metrics`. Writes run in their own task, a batch at a time, never holding up the loop.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use etcd_client::{Client, PutOptions};
use futures::StreamExt as _;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::timeout,
};
use tokio_util::sync::CancellationToken;

use super::{judge, request_timeout, Cluster, ClusterState};
use crate::model::{
    cluster::{Slot, Standing, Verdict},
    events::HostEvent,
    health::State,
    snapshot::{ClusterGroupStatus, ClusterStatus, MergedTarget, Observed},
};

/// How often the merged view in `/status` is refreshed, and pending writes retried.
const REFRESH: Duration = Duration::from_millis(250);
/// Writes in flight at once.
const PARALLEL: usize = 16;

/// Which monitored targets there are, and which of them this node probes (sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Share {
    pub targets: usize,
    pub mine: Vec<IpAddr>,
}

/// What to tell etcd about a target: its verdict, or that we no longer probe it.
type Pending = BTreeMap<IpAddr, Option<Verdict>>;

/// Starts the reporter; it ends at `stop`.
pub fn spawn(
    cluster: &Cluster,
    share: watch::Receiver<Share>,
    events: mpsc::UnboundedReceiver<HostEvent>,
    observed: Observed,
    stop: CancellationToken,
) {
    let reporter = Reporter {
        cluster: cluster.clone(),
        state: cluster.state(),
        share,
        observed,
        pending: Pending::new(),
        writing: None,
        known: BTreeMap::new(),
        lease: None,
    };
    tokio::spawn(reporter.run(events, stop));
}

struct Reporter {
    cluster: Cluster,
    state: watch::Receiver<ClusterState>,
    share: watch::Receiver<Share>,
    observed: Observed,
    pending: Pending,
    /// The batch being written; what failed of it comes back.
    writing: Option<JoinHandle<Pending>>,
    /// The last verdict on each target of our share, to write again under a new lease (the
    /// keys went with the old one).
    known: BTreeMap<IpAddr, Verdict>,
    /// The lease the keys were last written under.
    lease: Option<i64>,
}

impl Reporter {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<HostEvent>,
        stop: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(REFRESH);
        let mut mine = self.share.borrow().mine.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(event) = events.recv() => {
                    let known = matches!(event.change.to, State::Up | State::Down);
                    if known && mine.binary_search(&event.host).is_ok() {
                        let verdict = Verdict { down: event.change.to == State::Down, window: event.window };
                        self.known.insert(event.host, verdict);
                        self.pending.insert(event.host, Some(verdict));
                    }
                }
                Ok(()) = self.share.changed() => {
                    let new = self.share.borrow_and_update().mine.clone();
                    for gone in mine.iter().filter(|t| new.binary_search(t).is_err()) {
                        self.known.remove(gone);
                        self.pending.insert(*gone, None);
                    }
                    mine = new;
                }
                _ = refresh.tick() => self.publish_status(mine.len()),
                // A batch is done: what failed is pending again, and the next one starts now
                // (not at the next event or tick).
                failed = batch_done(&mut self.writing) => {
                    self.writing = None;
                    for (target, what) in failed {
                        self.pending.entry(target).or_insert(what);
                    }
                }
            }
            self.write();
        }
    }

    /// Starts writing what is pending, if the last batch is done and our lease is live.
    fn write(&mut self) {
        let state = self.state.borrow().clone();
        let (Standing::Live, Some(lease)) = (state.standing(), state.lease) else {
            return;
        };
        if self.lease != Some(lease) {
            // A new lease: our keys went with the old one. Write every state again.
            self.lease = Some(lease);
            for (target, verdict) in &self.known {
                self.pending.entry(*target).or_insert(Some(*verdict));
            }
        }
        if self.writing.is_some() || self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let (client, cluster) = (self.cluster.client(), self.cluster.clone());
        self.writing = Some(tokio::spawn(write_batch(client, cluster, batch, lease)));
    }

    fn publish_status(&self, share: usize) {
        let state = self.state.borrow().clone();
        let settings = &self.cluster.settings;
        // Counted as the seats count (without a seat's hold-off, which only sets the mandate).
        let groups = state
            .mirror
            .groups
            .keys()
            .map(|group| {
                let view = judge(&self.cluster, &state, group, false);
                ClusterGroupStatus {
                    group: group.clone(),
                    holder: view.holder,
                    down: view.down as u64,
                    up: view.up as u64,
                    needed: view.needed as u64,
                }
            })
            .collect();
        let merged = state
            .mirror
            .targets
            .iter()
            .map(|(target, by)| MergedTarget {
                target: *target,
                state: if by.values().any(|v| !v.down) {
                    State::Up
                } else {
                    State::Down
                },
                by: by
                    .iter()
                    .map(|(node, v)| {
                        format!("{node}:{}:{}", if v.down { "down" } else { "up" }, v.window)
                    })
                    .collect(),
            })
            .collect();
        let status = ClusterStatus {
            node: settings.node.clone(),
            standing: format!("{:?}", state.standing()).to_lowercase(),
            members: state.beating.clone(),
            targets: self.share.borrow().targets as u64,
            share: share as u64,
            groups,
            merged,
        };
        self.observed.update(|s| s.cluster = Some(status));
    }
}

/// What failed of the batch being written, once it is done; pending forever when none is.
async fn batch_done(writing: &mut Option<JoinHandle<Pending>>) -> Pending {
    match writing {
        Some(batch) => batch.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

/// Writes (or deletes) each pending target's key; returns what failed.
async fn write_batch(client: Client, cluster: Cluster, batch: Pending, lease: i64) -> Pending {
    let node = cluster.settings.node.clone();
    let limit = request_timeout(cluster.settings.lease_ttl);
    let outcomes = futures::stream::iter(batch)
        .map(|(target, what)| {
            let mut client = client.clone();
            let key = cluster.key(&Slot::Target {
                target,
                node: node.clone(),
            });
            async move {
                let ok = match what {
                    Some(v) => {
                        let put =
                            client.put(key, v.encode(), Some(PutOptions::new().with_lease(lease)));
                        matches!(timeout(limit, put).await, Ok(Ok(_)))
                    }
                    None => matches!(timeout(limit, client.delete(key, None)).await, Ok(Ok(_))),
                };
                (target, what, ok)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    outcomes
        .into_iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(target, what, _)| (target, what))
        .collect()
}
