//! A failover group's seat in the cluster, one task per group: it publishes this node's
//! verdict on the primary (under our lease), campaigns to be the group's holder (a key under
//! our lease, created only if absent: etcd's transactions make the election), and judges the
//! group from the session's mirror — what the group's failover task may do ([`GroupView`]).
//!
//! Judging never waits on etcd: writes run one at a time in their own tasks, and their
//! outcome shows in the mirror. Cluster events (elected, lost lease, handed over) are logged,
//! mailed and given to the `on_cluster` hook here; `fenced` by the failover task, which acts.

use std::{net::IpAddr, time::Duration};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::{
    sync::{mpsc, watch},
    time::{timeout, Instant},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{judge, request_timeout, sleep_or_never, Cluster, ClusterState};
use crate::{
    act::{
        hooks::{fire, HookFacts},
        mail::Notifier,
    },
    config::hooks::{HookEvent, Hooks},
    model::{
        cluster::{
            campaign, hold_off, revoked_and_gone, suspected_by_quorum, Campaign, GroupView,
            Mandate, Slot, Standing, Verdict, UNKNOWN_VERDICT,
        },
        events::Site,
        health::State,
        notice::cluster_notice,
    },
};

/// How soon a failed write or campaign is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// What a group's failover task holds of its seat.
pub struct SeatHandle {
    /// What this node may do with the VIP, and what the cluster says of the primary.
    pub view: watch::Receiver<GroupView>,
    /// This node's own verdicts on the primary, to publish.
    pub verdicts: mpsc::UnboundedSender<Verdict>,
    /// The seat's task ended (it should not before the failover task): nothing it said holds.
    pub closed: bool,
}

/// The group a seat is for.
pub struct SeatFor {
    /// The group's name in etcd (its VIP's first address).
    pub group: String,
    pub watch: IpAddr,
    pub site: Site,
    pub notifier: Notifier,
    pub hooks: watch::Receiver<Hooks>,
}

/// Starts the seat's task, until `stop`; the handle, and the task (which ends once its
/// writes are done).
pub fn spawn(
    cluster: &Cluster,
    seat: SeatFor,
    stop: CancellationToken,
) -> (SeatHandle, tokio::task::JoinHandle<()>) {
    let state = cluster.state();
    // A seat started while a revoked node has not come back holds off from its first view
    // (a hand-over's new seat, too: the old one may have been holding off).
    let (looked_back, held_off_until) = {
        let s = state.borrow();
        let held = s.synced && revoked_and_gone(&s.mirror, cluster.settings.quorum);
        (
            s.synced,
            held.then(|| Instant::now() + hold_off(cluster.settings.lease_ttl)),
        )
    };
    let first = judge(
        cluster,
        &state.borrow(),
        &seat.group,
        held_off_until.is_some(),
    );
    let (view_tx, view) = watch::channel(first);
    let (verdicts, verdicts_rx) = mpsc::unbounded_channel();
    let task = Seat {
        cluster: cluster.clone(),
        seat,
        state,
        view: view_tx,
        local: None,
        published: None,
        writing: false,
        campaigning: false,
        retry_at: None,
        last_holder: None,
        held_off_until,
        looked_back,
        last_named: None,
    };
    let task = tokio::spawn(task.run(verdicts_rx, stop));
    let handle = SeatHandle {
        view,
        verdicts,
        closed: false,
    };
    (handle, task)
}

/// Takes a removed group's keys out of etcd once its task and seat have ended: our verdict,
/// and the holder key if it is ours under our lease and `vip_left` (otherwise our live lease
/// would keep the group held, for nobody, on every other node). A VIP that stays here
/// (`on_exit = keep`) keeps the holder key: another node elected now would claim beside it.
/// Run twice, a request's time apart, for writes the seat had in flight.
pub async fn retire(cluster: &Cluster, group: &str, vip_left: bool) {
    retire_once(cluster, group, vip_left).await;
    tokio::time::sleep(request_timeout(cluster.settings.lease_ttl)).await;
    retire_once(cluster, group, vip_left).await;
}

async fn retire_once(cluster: &Cluster, group: &str, vip_left: bool) {
    let state = cluster.state().borrow().clone();
    let Some(lease) = state.lease else {
        return;
    };
    let node = cluster.settings.node.clone();
    let verdict = cluster.key(&Slot::GroupVerdict {
        group: group.to_string(),
        node: node.clone(),
    });
    let holder = cluster.key(&Slot::Holder(group.to_string()));
    let txn = Txn::new()
        .when(vec![
            Compare::value(holder.as_str(), CompareOp::Equal, node.as_str()),
            Compare::lease(holder.as_str(), CompareOp::Equal, lease),
        ])
        .and_then(vec![TxnOp::delete(holder.as_str(), None)]);
    let mut client = cluster.client();
    let limit = request_timeout(cluster.settings.lease_ttl);
    let deleted = timeout(limit, client.delete(verdict, None)).await;
    let released = match vip_left {
        true => timeout(limit, client.txn(txn)).await.map(|r| r.map(drop)),
        false => Ok(Ok(())),
    };
    if !matches!((deleted, released), (Ok(Ok(_)), Ok(Ok(_)))) {
        warn!(%group, "cluster: could not remove a removed group's keys; they go with our lease");
    }
}

struct Seat {
    cluster: Cluster,
    seat: SeatFor,
    state: watch::Receiver<ClusterState>,
    view: watch::Sender<GroupView>,
    /// Our latest verdict, and the one etcd has (with the lease it is under).
    local: Option<Verdict>,
    published: Option<(String, i64)>,
    writing: bool,
    campaigning: bool,
    /// A failed write or campaign is tried again then.
    retry_at: Option<Instant>,
    /// The holder (name, lease) at the last judgement.
    last_holder: Option<(String, i64)>,
    /// A revoked holder may still hold the VIP until then: claim nothing before.
    held_off_until: Option<Instant>,
    /// Whether the first keys read were checked for a recent revocation.
    looked_back: bool,
    /// The last holder the group had (for `handed_over`).
    last_named: Option<String>,
}

/// A write's outcome.
enum Done {
    /// A verdict key written as `value` (a verdict, or `unknown`).
    Verdict {
        value: String,
        lease: i64,
        ok: bool,
    },
    Campaign {
        ok: bool,
    },
}

impl Seat {
    async fn run(
        mut self,
        mut verdicts: mpsc::UnboundedReceiver<Verdict>,
        stop: CancellationToken,
    ) {
        let (done_tx, mut done) = mpsc::unbounded_channel();
        loop {
            let retry = self.retry_at;
            // The standing turns on a timer: judge again then, whatever the session does.
            let change = self.state.borrow().next_change();
            tokio::select! {
                _ = sleep_or_never(change) => {}
                _ = sleep_or_never(self.held_off_until) => self.held_off_until = None,
                _ = stop.cancelled() => break,
                Some(verdict) = verdicts.recv() => self.local = Some(verdict),
                changed = self.state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(outcome) = done.recv() => self.finished(outcome),
                _ = sleep_or_never(retry) => self.retry_at = None,
            }
            self.judge();
            self.write(&done_tx);
        }
    }

    /// Publishes the group's view if it changed, with the events the change makes.
    fn judge(&mut self) {
        let state = self.state.borrow().clone();
        self.note_revocation(&state);
        let held_off = self.held_off_until.is_some_and(|t| Instant::now() < t);
        let view = judge(&self.cluster, &state, &self.seat.group, held_off);
        let before = self.view.borrow().clone();
        if view == before {
            return;
        }
        self.events(&before, &view, state.standing());
        self.view.send_replace(view);
    }

    /// When the group's holder went because a quorum suspected and revoked its lease, the
    /// old holder may still hold the VIP until its own trust in the lease ends: hold off.
    fn note_revocation(&mut self, state: &ClusterState) {
        let settings = &self.cluster.settings;
        if !self.looked_back && state.synced {
            // A new seat (start-up, or a reload's new group or hand-over) did not see the
            // holders come and go: if any node was revoked and has not come back, it may
            // have held this group a moment ago.
            self.looked_back = true;
            if revoked_and_gone(&state.mirror, settings.quorum) {
                let wait = hold_off(settings.lease_ttl);
                info!(group = %self.seat.group, wait_ms = wait.as_millis() as u64,
                    "cluster: a node's lease was revoked lately; no claim until it has surely fenced");
                self.held_off_until = Some(Instant::now() + wait);
            }
        }
        let holder = state
            .mirror
            .groups
            .get(&self.seat.group)
            .and_then(|g| g.holder.clone());
        let gone = match (&self.last_holder, &holder) {
            (Some(last), now) if now.as_ref() != Some(last) => Some(last.clone()),
            _ => None,
        };
        self.last_holder = holder;
        let Some((old, lease)) = gone else {
            return;
        };
        if old != settings.node && suspected_by_quorum(&state.mirror, &old, lease, settings.quorum)
        {
            let wait = hold_off(settings.lease_ttl);
            info!(group = %self.seat.group, holder = %old, wait_ms = wait.as_millis() as u64,
                "cluster: the holder's lease was revoked; no claim until it has surely fenced");
            self.held_off_until = Some(Instant::now() + wait);
        }
    }

    /// Logs, mails and hooks the cluster events between two views.
    fn events(&mut self, before: &GroupView, after: &GroupView, standing: Standing) {
        let node = &self.cluster.settings.node;
        if after.mandate == Mandate::Lead && before.mandate != Mandate::Lead {
            info!(group = %self.seat.group, vip = %self.seat.site.vip, "cluster: elected holder of the group");
            self.event(HookEvent::Elected, format!(
                "{node} was elected the holder of this group: it takes the virtual IP when a quorum of nodes ({} of {} live) says the primary is DOWN.",
                after.needed, after.down + after.up
            ));
        }
        if before.mandate == Mandate::Lead && standing == Standing::Lapsed {
            warn!(group = %self.seat.group, vip = %self.seat.site.vip, "cluster: lost the lease while holder of the group");
            self.event(HookEvent::LostLease, format!(
                "{node} could not renew its etcd lease in time (etcd out of reach, or without a majority): it no longer holds this group (on_quorum_loss = {:?}).",
                self.cluster.settings.on_quorum_loss
            ));
        }
        if let Some(holder) = after.holder.as_deref() {
            // Against the last holder named, not the last view: a revoked holder's key goes
            // before the next one's comes.
            let last = self.last_named.replace(holder.to_string());
            if last.as_deref() != Some(holder) && holder != node.as_str() {
                info!(group = %self.seat.group, vip = %self.seat.site.vip, %holder, "cluster: the group's holder is another node");
                if last.is_some() {
                    self.event(
                        HookEvent::HandedOver,
                        format!("The group was handed over: {holder} is its holder now."),
                    );
                }
            }
        }
    }

    fn event(&self, event: HookEvent, detail: String) {
        let (state, window) = match self.local {
            Some(v) if v.down => (State::Down, v.window),
            Some(v) => (State::Up, v.window),
            None => (State::Unknown, 0),
        };
        fire(
            &self.seat.hooks.borrow(),
            HookFacts {
                event,
                host: self.seat.watch,
                vip: self.seat.site.vip.clone(),
                state,
                window,
            },
        );
        self.seat.notifier.send(cluster_notice(
            event.as_str(),
            self.seat.watch,
            &self.seat.site,
            std::time::SystemTime::now(),
            &detail,
        ));
    }

    fn finished(&mut self, outcome: Done) {
        match outcome {
            Done::Verdict { value, lease, ok } => {
                self.writing = false;
                if ok {
                    self.published = Some((value, lease));
                } else {
                    self.retry_at = Some(Instant::now() + RETRY);
                }
            }
            Done::Campaign { ok } => {
                self.campaigning = false;
                if !ok {
                    // Someone else was faster, or etcd did not answer: the mirror will show
                    // the holder; try again a little later if it does not.
                    self.retry_at = Some(Instant::now() + RETRY);
                }
            }
        }
    }

    /// Starts what etcd should be told: our verdict under our current lease, and a campaign
    /// when the group has no holder. One write of each kind at a time.
    fn write(&mut self, done: &mpsc::UnboundedSender<Done>) {
        let state = self.state.borrow().clone();
        let (Standing::Live, Some(lease)) = (state.standing(), state.lease) else {
            return;
        };
        if self.retry_at.is_some() {
            return;
        }
        let node = self.cluster.settings.node.clone();
        let limit = request_timeout(self.cluster.settings.lease_ttl);
        // Until we know the primary's state, `unknown` (for neither side).
        let value = self
            .local
            .map_or_else(|| UNKNOWN_VERDICT.to_string(), Verdict::encode);
        if !self.writing && self.published.as_ref() != Some(&(value.clone(), lease)) {
            self.writing = true;
            let key = self.cluster.key(&Slot::GroupVerdict {
                group: self.seat.group.clone(),
                node: node.clone(),
            });
            let (mut client, done) = (self.cluster.client(), done.clone());
            tokio::spawn(async move {
                let options = PutOptions::new().with_lease(lease);
                let put = client.put(key, value.clone(), Some(options));
                let ok = matches!(timeout(limit, put).await, Ok(Ok(_)));
                let _ = done.send(Done::Verdict { value, lease, ok });
            });
        }
        let holder = state
            .mirror
            .groups
            .get(&self.seat.group)
            .and_then(|g| g.holder.clone());
        let how = campaign(holder.as_ref(), &node, lease);
        if self.campaigning || how == Campaign::Wait || !state.synced {
            return;
        }
        self.campaigning = true;
        let key = self.cluster.key(&Slot::Holder(self.seat.group.clone()));
        let (client, done) = (self.cluster.client(), done.clone());
        tokio::spawn(async move {
            let ok = matches!(
                timeout(limit, run_campaign(client, key, node, lease, how)).await,
                Ok(Ok(true))
            );
            let _ = done.send(Done::Campaign { ok });
        });
    }
}

/// One attempt at the holder key: create it if absent, or move it from our old lease to the
/// new one. True if we hold it now.
async fn run_campaign(
    mut client: Client,
    key: String,
    node: String,
    lease: i64,
    how: Campaign,
) -> Result<bool, etcd_client::Error> {
    let when = match how {
        Campaign::Create => vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)],
        Campaign::Inherit { old_lease } => vec![
            Compare::value(key.as_str(), CompareOp::Equal, node.as_str()),
            Compare::lease(key.as_str(), CompareOp::Equal, old_lease),
        ],
        Campaign::Wait => return Ok(false),
    };
    let put = TxnOp::put(
        key.as_str(),
        node,
        Some(PutOptions::new().with_lease(lease)),
    );
    let response = client
        .txn(Txn::new().when(when).and_then(vec![put]))
        .await?;
    Ok(response.succeeded())
}
