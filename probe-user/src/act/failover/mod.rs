//! The failover task: turns the prober's reports into decisions ([`policy`]) and carries them
//! out: the VIP over rtnetlink, gratuitous ARP, hooks and notices. While it holds the VIP it
//! guards it: against another holder on the wire ([`guard`]) and against the VIP being removed
//! ([`restore`]). Nothing here waits on a hook or on the mail; ARP conflict checks and the
//! wire guard run in their own tasks.

mod guard;
pub mod policy;
mod restore;

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::{
    policy::{Action, Policy, PolicyConfig},
    restore::next_event,
};
use crate::{
    act::{
        cluster::seat::SeatHandle,
        hooks::{fire, HookFacts},
        mail::Notifier,
        vip::{Added, Vip},
        wire::{Addrs, Wire},
    },
    config::{
        flags::OnExit,
        hooks::{HookEvent, Hooks},
        settings::FailoverSettings,
        timing::Timing,
    },
    model::{
        cluster::{GroupView, Mandate, Verdict},
        events::{HostEvent, HostReport, Site},
        health::State,
        notice::{
            cluster_notice, conflict_notice, isolation_notice, recovery_notice, release_notice,
            start_notice, takeover_notice,
        },
        snapshot::{GroupStatus, Observed},
    },
};

/// How long an ARP conflict check's answer stays good for a claim.
fn check_valid_for(timing: &Timing) -> Duration {
    timing.window * timing.failed_windows.max(2)
}

/// The policy's clock (hold-down, pending checks): once a round, at most every 10 ms.
fn ticker(timing: &Timing) -> tokio::time::Interval {
    tokio::time::interval(timing.round().max(Duration::from_millis(10)))
}

/// How long to listen for the primary's ARP answer when announcing the VIP back to it.
const RELEASE_PROBE_WAIT: Duration = Duration::from_millis(100);

pub struct Failover {
    pub watch: IpAddr,
    pub site: Site,
    pub vip: Vip,
    /// ARP and NDP on the interface.
    pub wire: Arc<Wire>,
    pub notifier: Notifier,
    /// The hooks, which a reload may change.
    pub hooks: watch::Receiver<Hooks>,
    pub settings: FailoverSettings,
    /// The probe timing, which a reload may change.
    pub timing: watch::Receiver<Timing>,
    /// Where this group's state is published (`/metrics`, `/status`), under its VIP.
    pub observed: Observed,
    /// Cancelled when a reload hands the group over to a task with new settings: stop
    /// without touching the VIP, whatever `on_exit` says.
    pub handover: CancellationToken,
    /// Taking over from such a task: no start notice.
    pub quiet_start: bool,
    /// One node of a cluster: the group's seat, which publishes our verdicts and says what
    /// we may do. `None`: this node decides alone.
    pub cluster: Option<SeatHandle>,
}

/// What the loop keeps between events besides the policy.
struct Run {
    policy: Policy,
    start: Instant,
    window: u32,
    /// Gratuitous ARP repeats and refreshes while we hold the VIP.
    announcer: Option<JoinHandle<()>>,
    /// While we hold the VIP: watches the wire for another machine answering for it.
    wire_guard: Option<JoinHandle<()>>,
    checks: mpsc::UnboundedSender<Option<[u8; 6]>>,
    /// Where the wire guard reports the MAC of another holder.
    holders: mpsc::UnboundedSender<[u8; 6]>,
    claim_failure_reported: bool,
    /// The primary's last DOWN, for the takeover notice when the claim comes later (after an
    /// ARP conflict check that was not done yet when the DOWN arrived).
    down: Option<HostEvent>,
    /// Cluster: our last verdict's event, for the notices of what the quorum decides later.
    last: Option<HostEvent>,
}

impl Run {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Shutdown, or a reload removed the group: `on_exit` decides about the VIP.
    Shutdown,
    /// A reload handed the group over to a task with new settings: the VIP stays.
    HandedOver,
}

impl Failover {
    pub async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<HostReport>,
        shutdown: CancellationToken,
    ) {
        let (checks, mut check_results) = mpsc::unbounded_channel();
        let (holders, mut other_holders) = mpsc::unbounded_channel();
        let timing = *self.timing.borrow_and_update();
        let mut run = self.begin(&timing, checks, holders);
        self.adopt(&mut run).await;
        let mut tick = ticker(&timing);
        let mut net = self.watch_net();
        if let Some(view) = self
            .cluster
            .as_mut()
            .map(|c| c.view.borrow_and_update().clone())
        {
            for action in self.on_view(&mut run, &view) {
                self.act(&mut run, action, None).await;
            }
        }
        let stop = loop {
            let (actions, event) = tokio::select! {
                _ = shutdown.cancelled() => break Stop::Shutdown,
                _ = self.handover.cancelled() => break Stop::HandedOver,
                report = reports.recv() => match report {
                    Some(report) => self.on_report(&mut run, report),
                    None => break Stop::Shutdown,
                },
                Some(holder) = check_results.recv() => (self.on_check(&mut run, holder), None),
                Some(holder) = other_holders.recv() => {
                    (run.policy.holder_seen(holder, run.now()), None)
                }
                Some(event) = next_event(&mut net) => (self.on_net(&mut run, event), None),
                Some(view) = next_view(&mut self.cluster) => (self.on_view(&mut run, &view), None),
                _ = tick.tick() => (run.policy.tick(run.now()), None),
                Ok(()) = self.timing.changed() => {
                    tick = self.retime(&mut run);
                    (vec![], None)
                }
            };
            for action in actions {
                self.act(&mut run, action, event.as_ref()).await;
            }
        };
        self.finish(run, stop).await;
    }

    /// The loop's state at the start: the policy with our settings, nothing held yet.
    fn begin(
        &self,
        timing: &Timing,
        checks: mpsc::UnboundedSender<Option<[u8; 6]>>,
        holders: mpsc::UnboundedSender<[u8; 6]>,
    ) -> Run {
        Run {
            policy: Policy::new(PolicyConfig {
                failback: self.settings.failback,
                hold_down: self.settings.hold_down,
                conflict_check: !self.settings.conflict_wait.is_zero(),
                check_valid_for: check_valid_for(timing),
                clustered: self.cluster.is_some(),
            }),
            start: Instant::now(),
            window: 0,
            announcer: None,
            wire_guard: None,
            checks,
            holders,
            claim_failure_reported: false,
            down: None,
            last: None,
        }
    }

    /// Adopts the VIP if it is already on the interface (a restart, or a hand-over), and
    /// says that we are watching (unless handed over).
    async fn adopt(&self, run: &mut Run) {
        let holding = match self.vip.is_present().await {
            Ok(present) => present,
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot list addresses");
                false
            }
        };
        if holding {
            info!(vip = %self.vip.net(), iface = %self.site.iface, "VIP already on this interface: adopting it");
            run.policy.adopt(run.now());
            self.publish(|g| g.holding = true);
            // One address of a dual-stack VIP may have gone while we were not running.
            match self.vip.add().await {
                Ok(Added::Now) => {
                    warn!(vip = %self.vip.net(), "an address of the adopted VIP was missing: put it back")
                }
                Ok(Added::AlreadyPresent) => {}
                Err(e) => {
                    error!(vip = %self.vip.net(), error = %format!("{e:#}"), "completing the adopted VIP FAILED")
                }
            }
            run.announcer = self
                .settings
                .garp
                .refresh
                .map(|every| self.spawn_announcer(self.wire.mac(), 0, every));
            self.guard_wire(run);
        }
        if !self.quiet_start {
            self.notifier
                .send(start_notice(self.watch, &self.site, holding));
        }
    }

    /// An ARP conflict check's answer: the MAC of another holder of the VIP, if any.
    fn on_check(&self, run: &mut Run, holder: Option<[u8; 6]>) -> Vec<Action> {
        match holder {
            Some(mac) => {
                warn!(vip = %self.vip.net(), holder = %mac_str(mac), "another machine answers ARP for the VIP")
            }
            None => info!(
                vip = %self.vip.net(),
                wait_ms = self.settings.conflict_wait.as_millis() as u64,
                "ARP conflict check: nobody else answers for the VIP"
            ),
        }
        run.policy.conflict_checked(holder, run.now())
    }

    /// A reload changed the timing: how long a check stays good, and the policy's clock.
    fn retime(&mut self, run: &mut Run) -> tokio::time::Interval {
        let timing = *self.timing.borrow_and_update();
        run.policy.set_check_valid_for(check_valid_for(&timing));
        if run.policy.holding() {
            // The wire guard probes once a window: the new one.
            self.guard_wire(run);
        }
        ticker(&timing)
    }

    /// Stops announcing, and leaves the VIP as `on_exit` says (kept when handed over).
    async fn finish(&self, mut run: Run, stop: Stop) {
        stop_holding_tasks(&mut run);
        let release = self.settings.on_exit == OnExit::Release;
        if stop == Stop::HandedOver || !release || !run.policy.holding() {
            return;
        }
        match self.vip.remove().await {
            Ok(_) => {
                self.publish(|g| g.holding = false);
                info!(vip = %self.vip.net(), "stopping: released the VIP (on_exit = release)")
            }
            Err(e) => {
                error!(vip = %self.vip.net(), error = %format!("{e:#}"), "stopping: releasing the VIP FAILED")
            }
        }
    }

    /// Logs and hooks a report, and asks the policy what it means.
    fn on_report(&self, run: &mut Run, report: HostReport) -> (Vec<Action>, Option<HostEvent>) {
        let now = run.now();
        match report {
            HostReport::Suspect { window, .. } => {
                run.window = window;
                (run.policy.primary_suspect(now), None)
            }
            HostReport::Witnesses { alive, window } => {
                run.window = window;
                if alive {
                    info!(window, "a witness answers again");
                } else {
                    warn!(window, "no witness answered for a window");
                }
                (run.policy.witnesses(alive, now), None)
            }
            HostReport::Changed(event) | HostReport::Known(event) => {
                run.window = event.window;
                if event.host != self.watch {
                    return (vec![], None);
                }
                if let Some(cluster) = &self.cluster {
                    // Our verdict goes to the cluster; what a quorum agrees comes back as a
                    // view (`on_view`).
                    if event.change.to != State::Unknown {
                        let down = event.change.to == State::Down;
                        if down {
                            run.down = Some(event);
                        }
                        let _ = cluster.verdicts.send(Verdict {
                            down,
                            window: event.window,
                        });
                    }
                    run.last = Some(event);
                    return (vec![], Some(event));
                }
                let actions = match event.change.to {
                    State::Down => {
                        run.down = Some(event);
                        run.policy.primary_down(now)
                    }
                    State::Up => run.policy.primary_up(now),
                    State::Unknown => vec![],
                };
                (actions, Some(event))
            }
        }
    }

    async fn act(&self, run: &mut Run, action: Action, event: Option<&HostEvent>) {
        match action {
            Action::CheckConflict => {
                let (wire, vip, wait, results) = (
                    Arc::clone(&self.wire),
                    self.vip.addrs(),
                    self.settings.conflict_wait,
                    run.checks.clone(),
                );
                tokio::spawn(async move {
                    let holder = wire.probe(vip, wait).await.unwrap_or_else(|error| {
                        warn!(%error, "ARP conflict check failed; assuming no other holder");
                        None
                    });
                    let _ = results.send(holder);
                });
            }
            Action::Claim => self.claim(run, event).await,
            Action::Fence => self.fence(run).await,
            Action::Release => self.release(run).await,
            Action::Yield { holder, keep } => self.yield_to(run, holder, keep).await,
            Action::Restore { report } => self.restore(run, report).await,
            Action::Reannounce => self.reannounce(run).await,
            Action::ReportIsolated => {
                warn!(host = %self.watch, window = run.window, vip = %self.vip.net(), "watched host DOWN but every witness too: we are cut off; VIP not taken");
                self.notifier.send(isolation_notice(
                    self.watch,
                    &self.settings.witnesses,
                    &self.site,
                    SystemTime::now(),
                ));
            }
            Action::ReportConflict(holder) => {
                warn!(host = %self.watch, window = run.window, vip = %self.vip.net(), holder = %mac_str(holder), "watched host DOWN but the VIP is in use: not taken");
                self.notifier.send(conflict_notice(
                    self.watch,
                    &self.site,
                    SystemTime::now(),
                    &mac_str(holder),
                ));
            }
            Action::ReportPrimaryBack {
                holding,
                release_in,
            } => {
                info!(host = %self.watch, window = run.window, holding, release_in = ?release_in, "watched host is back");
                if let Some(event) = event.or(run.last.as_ref()) {
                    self.notifier
                        .send(recovery_notice(event, &self.site, holding, release_in));
                }
            }
        }
    }

    async fn claim(&self, run: &mut Run, event: Option<&HostEvent>) {
        let event = event.copied().or(run.down);
        let event = event.as_ref();
        let started = Instant::now();
        let outcome = self.vip.add().await;
        let netlink_us = started.elapsed().as_micros() as u64;
        let outcome = match outcome {
            Ok(added) => {
                // Tell the network at once; repeats and refreshes follow in the background.
                if let Err(error) = self.wire.announce(self.vip.addrs(), self.wire.mac()) {
                    warn!(%error, "gratuitous ARP failed");
                }
                run.policy.claimed(true, run.now());
                self.publish(|g| {
                    g.holding = true;
                    g.claims += 1;
                });
                run.claim_failure_reported = false;
                run.announcer = Some(self.spawn_announcer(
                    self.wire.mac(),
                    self.settings.garp.count,
                    self.settings.garp.refresh.unwrap_or(Duration::ZERO),
                ));
                self.guard_wire(run);
                info!(
                    host = %self.watch,
                    window = run.window,
                    vip = %self.vip.net(),
                    iface = %self.site.iface,
                    label = %self.vip.label(),
                    already_present = added == Added::AlreadyPresent,
                    silent_ms = event.map(|e| e.silent_for.as_millis() as u64),
                    last_heard_ms = event.and_then(last_heard_ms),
                    netlink_us,
                    "took over the VIP"
                );
                self.fire(HookEvent::Claim, self.watch, State::Down, run.window);
                Ok(())
            }
            Err(e) => {
                run.policy.claimed(false, run.now());
                let reason = format!("{e:#}");
                error!(host = %self.watch, window = run.window, vip = %self.vip.net(), error = %reason, "VIP takeover FAILED; retrying");
                if run.claim_failure_reported {
                    return;
                }
                run.claim_failure_reported = true;
                Err(reason)
            }
        };
        if let Some(event) = event {
            self.notifier
                .send(takeover_notice(event, &self.site, &outcome));
        }
    }

    /// The cluster's view of our group changed: what we may do, and what a quorum says.
    fn on_view(&self, run: &mut Run, view: &GroupView) -> Vec<Action> {
        run.policy.cluster(view, run.now())
    }

    /// We may no longer hold the VIP (cluster): remove it now. The node that holds the group
    /// now announces it; we do not.
    async fn fence(&self, run: &mut Run) {
        stop_holding_tasks(run);
        let reason = match self
            .cluster
            .as_ref()
            .map(|c| c.view.borrow().holder.clone())
        {
            Some(Some(holder)) if holder != self.site.node => {
                format!("{holder} is the group's holder")
            }
            _ => "our etcd lease could not be renewed in time".to_string(),
        };
        let removed = self.vip.remove().await;
        run.policy.fenced(removed.is_ok(), run.now());
        match removed {
            Ok(_) => {
                self.publish(|g| {
                    g.holding = false;
                    g.releases += 1;
                });
                warn!(vip = %self.vip.net(), %reason, "cluster: fenced: removed the VIP");
            }
            Err(e) => {
                error!(vip = %self.vip.net(), error = %format!("{e:#}"), "cluster: fencing: removing the VIP FAILED; trying again");
                return;
            }
        }
        self.fire(HookEvent::Fenced, self.watch, State::Unknown, run.window);
        self.notifier.send(cluster_notice(
            HookEvent::Fenced.as_str(),
            self.watch,
            &self.site,
            SystemTime::now(),
            &format!(
                "{} removed the virtual IP because it may no longer hold it: {reason}.",
                self.site.node
            ),
        ));
    }

    async fn release(&self, run: &mut Run) {
        stop_holding_tasks(run);
        match self.vip.remove().await {
            Ok(removed) => {
                self.publish(|g| {
                    g.holding = false;
                    g.releases += 1;
                });
                info!(host = %self.watch, window = run.window, vip = %self.vip.net(), removed, "released the VIP")
            }
            Err(e) => {
                error!(vip = %self.vip.net(), error = %format!("{e:#}"), "releasing the VIP FAILED");
                return;
            }
        }
        self.fire(HookEvent::Release, self.watch, State::Up, run.window);
        // Say so on the wire: find who answers for the VIP now (the primary) and announce it
        // for them, so neighbour caches move back without waiting for their timeouts.
        let (wire, vip, addrs, garp, notifier, site, watch) = (
            Arc::clone(&self.wire),
            self.vip.net().clone(),
            self.vip.addrs(),
            self.settings.garp,
            self.notifier.clone(),
            self.site.clone(),
            self.watch,
        );
        tokio::spawn(async move {
            let holder = wire
                .probe(addrs, RELEASE_PROBE_WAIT)
                .await
                .unwrap_or_else(|error| {
                    warn!(%error, "ARP probe after release failed");
                    None
                });
            if let Some(mac) = holder {
                info!(%vip, mac = %mac_str(mac), "announcing the VIP for its holder");
            } else {
                warn!(%vip, "nobody answers ARP for the released VIP");
            }
            notifier.send(release_notice(
                watch,
                &site,
                SystemTime::now(),
                holder.map(mac_str),
            ));
            if let Some(mac) = holder {
                announce_repeatedly(&wire, addrs, mac, garp.count + 1, garp.interval).await;
            }
        });
    }

    /// Repeats the announcement `repeats` times, then every `refresh` (if non-zero) until aborted.
    fn spawn_announcer(&self, mac: [u8; 6], repeats: u32, refresh: Duration) -> JoinHandle<()> {
        let (wire, vip, garp) = (Arc::clone(&self.wire), self.vip.addrs(), self.settings.garp);
        tokio::spawn(async move {
            tokio::time::sleep(garp.interval).await;
            announce_repeatedly(&wire, vip, mac, repeats, garp.interval).await;
            if refresh.is_zero() {
                return;
            }
            let mut every = tokio::time::interval(refresh);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(error) = wire.announce(vip, mac) {
                    warn!(%error, "gratuitous ARP refresh failed");
                }
            }
        })
    }

    fn publish(&self, f: impl FnOnce(&mut GroupStatus)) {
        self.observed.update(|s| {
            if let Some(group) = s.groups.iter_mut().find(|g| g.vip == self.site.vip) {
                f(group);
            }
        });
    }

    fn fire(&self, event: HookEvent, host: IpAddr, state: State, window: u32) {
        fire(
            &self.hooks.borrow(),
            HookFacts {
                event,
                host,
                vip: self.vip.net().to_string(),
                state,
                window,
            },
        );
    }
}

/// The next view of the group's seat; pending forever when not in a cluster. A seat whose
/// task ended (the session died with it) gives one last view that drops the VIP: without
/// the cluster's word, a node must not hold it.
async fn next_view(cluster: &mut Option<SeatHandle>) -> Option<GroupView> {
    match cluster {
        Some(seat) if !seat.closed => match seat.view.changed().await {
            Ok(()) => Some(seat.view.borrow_and_update().clone()),
            Err(_) => {
                seat.closed = true;
                let mut last = seat.view.borrow().clone();
                last.mandate = Mandate::Drop;
                Some(last)
            }
        },
        _ => std::future::pending().await,
    }
}

/// Stops what runs only while we hold the VIP: the announcer and the wire guard.
fn stop_holding_tasks(run: &mut Run) {
    for task in [run.announcer.take(), run.wire_guard.take()]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
}

/// How long ago the primary's last reply arrived, measured now: when it was declared DOWN,
/// plus the time since. What the takeover bound is about, measured by the daemon itself.
fn last_heard_ms(down: &HostEvent) -> Option<u64> {
    let since_down = SystemTime::now()
        .duration_since(down.at)
        .unwrap_or_default();
    down.heard_ago
        .map(|ago| (ago + since_down).as_millis() as u64)
}

/// Sends `count` announcements `interval` apart, the first at once.
async fn announce_repeatedly(
    wire: &Wire,
    vip: Addrs,
    mac: [u8; 6],
    count: u32,
    interval: Duration,
) {
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        if let Err(error) = wire.announce(vip, mac) {
            warn!(%error, "gratuitous ARP failed");
        }
    }
}

pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
