//! The cluster's edge: xdprobe nodes agreeing through a real etcd. One session task per node
//! ([`session`]) holds the node's lease, renews it and mirrors every key under the prefix; one
//! seat task per failover group ([`seat`]) publishes this node's verdict on the group's
//! primary, campaigns to be its holder, and tells the group's failover task what it may do.
//! The judgement itself (standing, quorum, mandate) is pure: `model::cluster`.

mod lease;
pub mod report;
pub mod seat;
pub mod session;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::{sync::watch, time::Instant};

use crate::{
    config::cluster::ClusterSettings,
    model::cluster::{GroupView, Judge, LeaseClock, Mirror, Slot, Standing},
};

/// What the session publishes: this node's lease clock (its standing is read from it at the
/// reader's time, so that fencing never waits for the session task), its lease, and the
/// mirrored keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    pub clock: LeaseClock,
    /// Time zero of `clock`.
    pub origin: Instant,
    /// The lease our keys are bound to, while we have one.
    pub lease: Option<i64>,
    pub mirror: Arc<Mirror>,
    /// Whether the mirror was read from etcd at least once.
    pub synced: bool,
    /// The members whose heartbeat is fresh here (sorted): the monitored targets are shared
    /// among them, so a dead node's targets move within a few heartbeats.
    pub beating: Vec<String>,
}

impl ClusterState {
    /// Our standing now.
    pub fn standing(&self) -> Standing {
        self.clock.standing(self.origin.elapsed())
    }

    /// When the standing changes next unless the lease is renewed.
    pub fn next_change(&self) -> Option<Instant> {
        self.clock
            .next_change(self.origin.elapsed())
            .map(|at| self.origin + at)
    }
}

/// A node's way to the cluster: its settings, a client, and the session's state.
#[derive(Clone)]
pub struct Cluster {
    pub settings: Arc<ClusterSettings>,
    client: Client,
    state: watch::Receiver<ClusterState>,
    /// Set when a VIP stays on the interface at shutdown (`on_exit = keep`): the session
    /// then leaves its lease to expire instead of revoking it (see [`Cluster::keep_lease`]).
    keep_lease: Arc<std::sync::atomic::AtomicBool>,
}

impl Cluster {
    /// The session's state as it changes.
    pub fn state(&self) -> watch::Receiver<ClusterState> {
        self.state.clone()
    }

    /// The full etcd key of `slot`.
    pub fn key(&self, slot: &Slot) -> String {
        slot.under(&self.settings.prefix)
    }

    /// At shutdown, a VIP of ours stays on the interface: do not revoke the lease (the next
    /// holder would claim at once, beside it); let it expire, or be inherited by our restart.
    pub fn keep_lease(&self) {
        self.keep_lease
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A client for a task of its own (clients share their connections).
    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

/// A group as this node sees it now (`held_off`: a revoked holder may still hold its VIP);
/// what its seat acts on, and what `/status` shows.
pub fn judge(cluster: &Cluster, state: &ClusterState, group: &str, held_off: bool) -> GroupView {
    let settings = &cluster.settings;
    let judge = Judge {
        node: &settings.node,
        standing: state.standing(),
        lease: state.lease,
        synced: state.synced,
        held_off,
        quorum: settings.quorum,
        on_quorum_loss: settings.on_quorum_loss,
    };
    judge.view(&state.mirror.group(group), &state.mirror.voters())
}

/// Sleeps until `at`; forever without one (a `select!` branch that is off).
async fn sleep_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long one request to etcd may take: a third of the lease, so a stuck member is given up
/// on while the lease still holds.
pub fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// A client for `endpoints` (some of `settings.etcd`). It connects lazily: an unreachable etcd
/// shows in the first requests, which the session retries.
pub async fn connect(settings: &ClusterSettings, endpoints: &[String]) -> anyhow::Result<Client> {
    let ttl = settings.lease_ttl;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(request_timeout(ttl))
        .with_timeout(request_timeout(ttl))
        // HTTP/2 pings find a member that went silent (a partition) well within a lease, so
        // that the streams on it are moved to another member.
        .with_keep_alive(ttl / 4, ttl / 4)
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &settings.tls {
        let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(config);
    }
    Client::connect(endpoints, Some(options))
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(", ")))
}
