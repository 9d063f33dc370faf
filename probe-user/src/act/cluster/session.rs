//! The node's session with etcd: a lease (`lease_ttl`) that every key of ours is bound to,
//! kept alive through every member (`lease`); the member key that makes us live; a mirror of
//! every key under the prefix (read once, then followed by a watch); and the suspicion and
//! revocation of holders whose heartbeat stopped. What it publishes ([`ClusterState`]) is what
//! the seats judge by.
//!
//! Fencing starts here: the standing is `Live` only until a margin before the lease could
//! have expired in etcd, counted from the *send* time of the last renewal etcd confirmed
//! (`model::cluster::LeaseClock`). The standing turns `Lapsed` on a timer, not on an error, so
//! a hung connection fences as surely as a refused one. etcd unreachable at start-up is logged
//! and retried; never fatal.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions, WatchStream};
use tokio::{
    sync::{mpsc, watch},
    time::{sleep_until, timeout, Instant},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    connect,
    lease::{self, Renewal},
    request_timeout, sleep_or_never, Cluster, ClusterState,
};
use crate::{
    act::backoff::Backoff,
    config::cluster::ClusterSettings,
    model::cluster::{
        beating, renew_every, stale_holders, suspected_by_quorum, LeaseClock, Mirror, Slot,
        Standing,
    },
};

/// Waits between failed attempts at a lease: short, so a node rejoins soon after etcd is back.
const GRANT_RETRY: Backoff = Backoff {
    first: Duration::from_millis(50),
    max: Duration::from_secs(1),
};

/// Starts the session task; `start` is when the daemon started (the lease of an earlier run
/// of ours may live until a lease after it). `leave` ends the session and revokes the lease:
/// cancel it only after the groups have left their VIPs.
pub async fn start(
    settings: ClusterSettings,
    start: Instant,
    leave: CancellationToken,
) -> anyhow::Result<(Cluster, tokio::task::JoinHandle<()>)> {
    let client = connect(&settings, &settings.etcd).await?;
    // One client per member too, for the renewals and heartbeats (see `lease`).
    let mut members = Vec::new();
    for endpoint in &settings.etcd {
        members.push(connect(&settings, std::slice::from_ref(endpoint)).await?);
    }
    let clock = LeaseClock::new(settings.lease_ttl, Duration::ZERO);
    let (tx, rx) = watch::channel(ClusterState {
        clock,
        origin: start,
        lease: None,
        mirror: Arc::new(Mirror::default()),
        synced: false,
        beating: Vec::new(),
    });
    let settings = Arc::new(settings);
    let session = Session {
        clock,
        standing: Standing::Starting,
        origin: start,
        settings: Arc::clone(&settings),
        client: client.clone(),
        members,
        tx,
        mirror: Mirror::default(),
        synced: false,
        lease: None,
        failures: 0,
        beats: BTreeMap::new(),
        suspected: BTreeSet::new(),
        revoked: BTreeSet::new(),
    };
    let task = tokio::spawn(session.run(leave));
    let cluster = Cluster {
        settings,
        client,
        state: rx,
    };
    Ok((cluster, task))
}

struct Session {
    clock: LeaseClock,
    /// The standing last logged.
    standing: Standing,
    /// Time zero of `clock`.
    origin: Instant,
    settings: Arc<ClusterSettings>,
    client: Client,
    /// A client for each member alone.
    members: Vec<Client>,
    tx: watch::Sender<ClusterState>,
    mirror: Mirror,
    synced: bool,
    lease: Option<i64>,
    /// Failed attempts in a row at granting a lease (for the backoff and the log).
    failures: u32,
    /// When each member's heartbeat (a write of its member key) was last seen here.
    beats: BTreeMap<String, Duration>,
    /// The holder leases we said we suspect, and those we revoked.
    suspected: BTreeSet<i64>,
    revoked: BTreeSet<i64>,
}

/// The stream that lives as long as a lease: the mirror's watch.
#[derive(Default)]
struct Streams {
    watch: Option<WatchStream>,
}

/// Why holding a lease ended.
enum Ended {
    /// etcd says the lease is gone: grant a new one.
    Lost,
    Shutdown,
}

impl Session {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn ttl(&self) -> Duration {
        self.settings.lease_ttl
    }

    fn key(&self, slot: &Slot) -> String {
        format!("{}{}", self.settings.prefix, slot.key())
    }

    /// Publishes the lease clock, lease and mirror if anything changed; logs standing changes.
    fn publish(&mut self) {
        let state = ClusterState {
            clock: self.clock,
            origin: self.origin,
            lease: self.lease,
            mirror: Arc::new(self.mirror.clone()),
            synced: self.synced,
            beating: beating(
                &self.mirror,
                &self.beats,
                self.now(),
                renew_every(self.ttl()),
            ),
        };
        let standing = state.standing();
        if standing != self.standing {
            self.standing = standing;
            match standing {
                Standing::Live => info!(lease = ?self.lease, "cluster: lease live"),
                Standing::Lapsed => warn!(
                    ttl = ?self.ttl(),
                    "cluster: the etcd lease could not be renewed in time: fencing"
                ),
                Standing::Starting => {}
            }
        }
        self.tx.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let granted = tokio::select! {
                _ = shutdown.cancelled() => break,
                granted = self.grant() => granted,
            };
            let Some(lease) = granted else {
                self.failures += 1;
                self.wait(GRANT_RETRY.delay(self.failures), &shutdown).await;
                continue;
            };
            self.failures = 0;
            self.lease = Some(lease);
            self.publish();
            match self.hold(lease, &shutdown).await {
                Ended::Shutdown => break,
                Ended::Lost => {
                    warn!(
                        lease,
                        "cluster: etcd says our lease is gone; asking for a new one"
                    );
                    self.lease = None;
                    self.clock.lost();
                    self.publish();
                }
            }
        }
        self.leave().await;
    }

    /// Waits `delay` (or shutdown), keeping the standing up to date meanwhile.
    async fn wait(&mut self, delay: Duration, shutdown: &CancellationToken) {
        let until = Instant::now() + delay;
        loop {
            let change = self.next_change().unwrap_or(until).min(until);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sleep_until(change) => {}
            }
            self.publish();
            if Instant::now() >= until {
                return;
            }
        }
    }

    /// When the standing changes next, as an instant.
    fn next_change(&self) -> Option<Instant> {
        self.clock
            .next_change(self.now())
            .map(|at| self.origin + at)
    }

    /// A new lease, and our member key under it; `None` (logged) if etcd did not answer.
    async fn grant(&mut self) -> Option<i64> {
        let ttl = self.ttl().as_secs() as i64;
        let limit = request_timeout(self.ttl());
        let sent = self.now();
        let result = async {
            let lease = timeout(limit, self.client.lease_grant(ttl, None))
                .await
                .map_err(|_| anyhow::anyhow!("no answer in {limit:?}"))??
                .id();
            let member = self.key(&Slot::Member(self.settings.node.clone()));
            let options = PutOptions::new().with_lease(lease);
            timeout(limit, self.client.put(member, "", Some(options)))
                .await
                .map_err(|_| anyhow::anyhow!("no answer in {limit:?}"))??;
            anyhow::Ok(lease)
        }
        .await;
        match result {
            Ok(lease) => {
                self.clock.renewed(sent);
                info!(
                    lease,
                    node = %self.settings.node,
                    ttl_s = ttl,
                    "cluster: joined (lease granted, member key written)"
                );
                Some(lease)
            }
            Err(e) => {
                let etcd = self.settings.etcd.join(", ");
                if self.failures == 0 {
                    warn!(%etcd, error = %format!("{e:#}"), "cluster: etcd unreachable; retrying");
                } else {
                    debug!(%etcd, error = %format!("{e:#}"), "cluster: etcd still unreachable");
                }
                self.publish();
                None
            }
        }
    }

    /// Renews `lease` and follows the keys until etcd says the lease is gone, or shutdown.
    /// Renews `lease` (through every member, in tasks of their own) and follows the keys until
    /// etcd says the lease is gone, or shutdown.
    async fn hold(&mut self, lease: i64, shutdown: &CancellationToken) -> Ended {
        let (renewals_tx, mut renewals) = mpsc::unbounded_channel();
        let key = self.key(&Slot::Member(self.settings.node.clone()));
        let _keepers = lease::keep(&self.members, lease, self.ttl(), key, renewals_tx);
        let mut streams = Streams::default();
        let mut tick = tokio::time::interval(renew_every(self.ttl()));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let change = self.next_change();
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                Some(renewal) = renewals.recv() => match renewal {
                    Renewal::Confirmed { sent } => {
                        self.clock.renewed(sent.saturating_duration_since(self.origin));
                    }
                    Renewal::Gone => return Ended::Lost,
                },
                _ = tick.tick() => {
                    if streams.watch.is_none() {
                        self.open_watch(&mut streams).await;
                    }
                    self.watch_holders(lease);
                }
                event = next_watch(&mut streams.watch) => {
                    if self.apply(event) {
                        // Heartbeats arrive with the events: a stopped one is seen within
                        // one other node's beat, not one of our ticks.
                        self.watch_holders(lease);
                    } else {
                        streams.watch = None;
                    }
                }
                _ = sleep_or_never(change) => {}
            }
            self.publish();
        }
    }

    /// Suspects the holders whose heartbeat stopped (a key that says so, under our lease), and
    /// revokes the lease of one a quorum suspects: the new holder then holds off until the
    /// old one has surely fenced (see `model::cluster::hold_off`), instead of waiting for the
    /// lease to expire (up to half a second late, etcd checks expiries twice a second).
    fn watch_holders(&mut self, lease: i64) {
        let me = self.settings.node.clone();
        let now = self.now();
        let period = renew_every(self.ttl());
        for holder in stale_holders(&self.mirror, &self.beats, &me, now, period) {
            let Some(&theirs) = self.mirror.members.get(&holder) else {
                continue;
            };
            if self.suspected.insert(theirs) {
                warn!(%holder, lease = theirs, "cluster: a holder's heartbeat stopped; suspecting it");
                let slot = Slot::Suspect {
                    holder: holder.clone(),
                    observer: me.clone(),
                };
                self.spawn_put(self.key(&slot), theirs.to_string(), lease);
            }
            let quorum = self.settings.quorum;
            if suspected_by_quorum(&self.mirror, &holder, theirs, quorum)
                && self.revoked.insert(theirs)
            {
                warn!(%holder, lease = theirs, "cluster: a quorum suspects the holder: revoking its lease");
                let (mut client, limit) = (self.client.clone(), request_timeout(self.ttl()));
                tokio::spawn(async move {
                    let _ = timeout(limit, client.lease_revoke(theirs)).await;
                });
            }
        }
    }

    fn spawn_put(&self, key: String, value: String, lease: i64) {
        let (mut client, limit) = (self.client.clone(), request_timeout(self.ttl()));
        tokio::spawn(async move {
            let put = client.put(key, value, Some(PutOptions::new().with_lease(lease)));
            let _ = timeout(limit, put).await;
        });
    }

    /// Reads every key under the prefix and watches from there on.
    async fn open_watch(&mut self, streams: &mut Streams) {
        let limit = request_timeout(self.ttl());
        let prefix = self.settings.prefix.clone();
        let result = async {
            let got = timeout(
                limit,
                self.client
                    .get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await
            .map_err(|_| anyhow::anyhow!("no answer in {limit:?}"))??;
            let revision = got.header().map_or(0, |h| h.revision());
            let mut mirror = Mirror::default();
            for kv in got.kvs() {
                if let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) {
                    if let Some(rest) = key.strip_prefix(&prefix) {
                        mirror.put(rest, value, kv.lease());
                    }
                }
            }
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let watch = timeout(limit, self.client.watch(prefix.as_str(), Some(options)))
                .await
                .map_err(|_| anyhow::anyhow!("no answer in {limit:?}"))??;
            anyhow::Ok((mirror, watch))
        }
        .await;
        match result {
            Ok((mirror, watch)) => {
                // Every member starts with a heartbeat now: a node just synced suspects nobody
                // before it could have seen them beat.
                let now = self.now();
                self.beats = mirror.members.keys().map(|m| (m.clone(), now)).collect();
                self.mirror = mirror;
                self.synced = true;
                streams.watch = Some(watch);
            }
            Err(e) => debug!(error = %format!("{e:#}"), "cluster: cannot read the keys yet"),
        }
    }

    /// Applies a watch message to the mirror; false if the watch must be reopened.
    fn apply(
        &mut self,
        message: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    ) -> bool {
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) | Err(_) => return false,
        };
        if response.canceled() {
            // Compacted past our revision, or the member went away: read everything again.
            return false;
        }
        let prefix = &self.settings.prefix;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else {
                continue;
            };
            let Some(rest) = key.strip_prefix(prefix.as_str()) else {
                continue;
            };
            match event.event_type() {
                EventType::Put => {
                    if let Some(Slot::Member(node)) = Slot::parse(rest) {
                        self.beats.insert(node, self.origin.elapsed());
                    }
                    self.mirror.put(rest, value, kv.lease())
                }
                EventType::Delete => self.mirror.delete(rest),
            }
        }
        true
    }

    /// At shutdown: revokes the lease, so that our keys (holder keys included) go at once and
    /// another node takes over without waiting for the lease to expire.
    async fn leave(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let limit = request_timeout(self.ttl());
        match timeout(limit, self.client.lease_revoke(lease)).await {
            Ok(Ok(_)) => info!(lease, "cluster: left (lease revoked)"),
            Ok(Err(e)) => {
                warn!(lease, error = %e, "cluster: revoking the lease failed; it expires on its own")
            }
            Err(_) => warn!(
                lease,
                "cluster: revoking the lease timed out; it expires on its own"
            ),
        }
    }
}

/// The next watch message; pending forever without a watch.
async fn next_watch(
    watch: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}
