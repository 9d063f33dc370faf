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
    task::JoinHandle,
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
        Standing, MONITOR_ONLY,
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
/// `monitor_only`: this node has no failover group (it says so in its member key, and is
/// not asked for verdicts).
pub async fn start(
    settings: ClusterSettings,
    start: Instant,
    leave: CancellationToken,
    monitor_only: bool,
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
    let keep_lease = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let session = Session {
        keep_lease: Arc::clone(&keep_lease),
        monitor_only,
        clock,
        standing: Standing::Starting,
        origin: start,
        settings: Arc::clone(&settings),
        client: client.clone(),
        members,
        tx,
        mirror: Arc::new(Mirror::default()),
        synced: false,
        lease: None,
        failures: 0,
        beats: BTreeMap::new(),
        suspected: BTreeMap::new(),
        revoked: BTreeMap::new(),
    };
    let task = tokio::spawn(session.run(leave));
    let cluster = Cluster {
        settings,
        client,
        state: rx,
        keep_lease,
    };
    Ok((cluster, task))
}

struct Session {
    /// This node has no failover group: its member key says so.
    monitor_only: bool,
    /// Set by the daemon when a VIP stays at shutdown: leave the lease to expire.
    keep_lease: Arc<std::sync::atomic::AtomicBool>,
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
    /// Shared with what was published: cloned only when a watch message changes it, not at
    /// every publication (several a period), and compared by pointer when unchanged.
    mirror: Arc<Mirror>,
    synced: bool,
    lease: Option<i64>,
    /// Failed attempts in a row at granting a lease (for the backoff and the log).
    failures: u32,
    /// When each member's heartbeat (a write of its member key) was last seen here.
    beats: BTreeMap<String, Duration>,
    /// The holders we said we suspect (their lease, and when we last said so), and the
    /// leases we revoked (when we last tried).
    suspected: BTreeMap<String, (i64, Duration)>,
    revoked: BTreeMap<i64, Duration>,
}

/// The stream that lives as long as a lease: the mirror's watch, or its opening.
#[derive(Default)]
struct Streams {
    watch: Option<WatchStream>,
    opening: Option<JoinHandle<anyhow::Result<(Mirror, WatchStream)>>>,
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
        slot.under(&self.settings.prefix)
    }

    /// Publishes the lease clock, lease and mirror if anything changed; logs standing changes.
    fn publish(&mut self) {
        let state = ClusterState {
            clock: self.clock,
            origin: self.origin,
            lease: self.lease,
            mirror: Arc::clone(&self.mirror),
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
                    // Its keys are gone in etcd: forget them here too, so that our name on a
                    // holder key under it never looks like something to inherit.
                    Arc::make_mut(&mut self.mirror).forget_lease(lease);
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
            let value = if self.monitor_only {
                MONITOR_ONLY.to_string()
            } else {
                String::new()
            };
            timeout(limit, self.client.put(member, value, Some(options)))
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
        let prefix = if self.monitor_only {
            MONITOR_ONLY.to_string()
        } else {
            String::new()
        };
        let _keepers = lease::keep(&self.members, lease, self.ttl(), key, prefix, renewals_tx);
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
                    if streams.watch.is_none() && streams.opening.is_none() {
                        streams.opening = Some(self.open_watch());
                    }
                    self.watch_holders(lease);
                }
                opened = next_opening(&mut streams.opening) => {
                    streams.opening = None;
                    match opened {
                        Ok(Ok((mirror, watch))) => self.watching(mirror, watch, &mut streams),
                        Ok(Err(e)) => debug!(error = %format!("{e:#}"), "cluster: cannot read the keys yet"),
                        Err(_) => {}
                    }
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
            // Every renewal already confirmed counts before the clock is published.
            while let Ok(renewal) = renewals.try_recv() {
                match renewal {
                    Renewal::Confirmed { sent } => {
                        self.clock
                            .renewed(sent.saturating_duration_since(self.origin));
                    }
                    Renewal::Gone => return Ended::Lost,
                }
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
        let stale = stale_holders(&self.mirror, &self.beats, &me, now, period);
        self.withdraw_suspicions(&stale);
        for holder in stale {
            let Some(&theirs) = self.mirror.members.get(&holder) else {
                continue;
            };
            // Said once, and again each period until the mirror shows it (a lost write).
            let shown = self.mirror.suspects.get(&holder).and_then(|o| o.get(&me)) == Some(&theirs);
            let due = self
                .suspected
                .get(&holder)
                .is_none_or(|&(l, at)| l != theirs || (!shown && now >= at + period));
            if due {
                if !self.suspected.contains_key(&holder) {
                    warn!(%holder, lease = theirs, "cluster: a holder's heartbeat stopped; suspecting it");
                }
                self.suspected.insert(holder.clone(), (theirs, now));
                let slot = Slot::Suspect {
                    holder: holder.clone(),
                    observer: me.clone(),
                };
                self.spawn_put(self.key(&slot), theirs.to_string(), lease);
            }
            let quorum = self.settings.quorum;
            let revoke_due = self
                .revoked
                .get(&theirs)
                .is_none_or(|&at| now >= at + period);
            if suspected_by_quorum(&self.mirror, &holder, theirs, quorum) && revoke_due {
                if !self.revoked.contains_key(&theirs) {
                    warn!(%holder, lease = theirs, "cluster: a quorum suspects the holder: revoking its lease");
                }
                // Again each period while its member key is there (a lost revocation).
                self.revoked.insert(theirs, now);
                let (mut client, limit) = (self.client.clone(), request_timeout(self.ttl()));
                tokio::spawn(async move {
                    let _ = timeout(limit, client.lease_revoke(theirs)).await;
                });
            }
        }
        // Forget revocations of leases that are gone.
        let leases: BTreeSet<i64> = self.mirror.members.values().copied().collect();
        self.revoked.retain(|l, _| leases.contains(l));
    }

    /// Takes back our suspicion of a holder whose heartbeat is fresh again (under the same or
    /// a new lease): an old suspicion must never add up with a later one to revoke a healthy
    /// node. A node that is gone keeps it: it marks a recent revocation for new seats.
    fn withdraw_suspicions(&mut self, stale: &[String]) {
        let me = self.settings.node.clone();
        let back: Vec<String> = self
            .mirror
            .suspects
            .iter()
            .filter(|(holder, observers)| {
                // Never one we revoked, or one a quorum suspects: a new holder's hold-off
                // depends on it when the holder key goes.
                let lease = observers.get(&me).copied();
                lease.is_some_and(|l| {
                    !self.revoked.contains_key(&l)
                        && !suspected_by_quorum(&self.mirror, holder, l, self.settings.quorum)
                }) && self.mirror.members.contains_key(*holder)
                    && !stale.contains(holder)
            })
            .map(|(holder, _)| holder.clone())
            .collect();
        for holder in back {
            if self.suspected.remove(&holder).is_some() {
                info!(%holder, "cluster: the holder's heartbeat is back; withdrawing our suspicion");
            }
            let key = self.key(&Slot::Suspect {
                holder,
                observer: me.clone(),
            });
            let (mut client, limit) = (self.client.clone(), request_timeout(self.ttl()));
            tokio::spawn(async move {
                let _ = timeout(limit, client.delete(key, None)).await;
            });
        }
    }

    fn spawn_put(&self, key: String, value: String, lease: i64) {
        let (mut client, limit) = (self.client.clone(), request_timeout(self.ttl()));
        tokio::spawn(async move {
            let put = client.put(key, value, Some(PutOptions::new().with_lease(lease)));
            let _ = timeout(limit, put).await;
        });
    }

    /// Starts reading every key under the prefix and opening a watch from there, in a task
    /// of its own: this loop must go on applying renewals meanwhile.
    fn open_watch(&self) -> JoinHandle<anyhow::Result<(Mirror, WatchStream)>> {
        let limit = request_timeout(self.ttl());
        let prefix = self.settings.prefix.clone();
        let mut client = self.client.clone();
        tokio::spawn(async move {
            let got = timeout(
                limit,
                client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
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
            let watch = timeout(limit, client.watch(prefix.as_str(), Some(options)))
                .await
                .map_err(|_| anyhow::anyhow!("no answer in {limit:?}"))??;
            anyhow::Ok((mirror, watch))
        })
    }

    /// The keys were read and a watch opened: the mirror starts afresh.
    fn watching(&mut self, mirror: Mirror, watch: WatchStream, streams: &mut Streams) {
        // Every member starts with a heartbeat now: a node just synced suspects nobody
        // before it could have seen them beat.
        let now = self.now();
        self.beats = mirror.members.keys().map(|m| (m.clone(), now)).collect();
        self.mirror = Arc::new(mirror);
        self.synced = true;
        streams.watch = Some(watch);
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
                    Arc::make_mut(&mut self.mirror).put(rest, value, kv.lease())
                }
                EventType::Delete => Arc::make_mut(&mut self.mirror).delete(rest),
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
        if self.keep_lease.load(std::sync::atomic::Ordering::SeqCst) {
            info!(lease, "cluster: left; a VIP stays here, so the lease is not revoked (the others revoke it once our heartbeat is stale)");
            return;
        }
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

/// The watch being opened, once it is; pending forever when none is.
async fn next_opening(
    opening: &mut Option<JoinHandle<anyhow::Result<(Mirror, WatchStream)>>>,
) -> Result<anyhow::Result<(Mirror, WatchStream)>, tokio::task::JoinError> {
    match opening {
        Some(task) => task.await,
        None => std::future::pending().await,
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
