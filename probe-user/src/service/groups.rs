//! The failover groups of `run`, one task each: started at start-up or when a reload adds a
//! group, stopped at shutdown or when a reload removes one (the group's `on_exit` then decides
//! what happens to a VIP it holds, as at shutdown). The dispatcher finds each group's task
//! through the routes published here.

use std::{net::IpAddr, sync::Arc};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    act::{
        cluster::{
            seat::{self, SeatFor},
            Cluster,
        },
        failover::Failover,
        mail::Notifier,
        vip::{self, Vip},
        wire::Wire,
    },
    config::{
        hooks::Hooks,
        settings::{FailoverSettings, Group},
        timing::Timing,
    },
    model::{
        events::{HostReport, Site},
        snapshot::{GroupStatus, Observed},
    },
};

/// Where the reports about one group's primary go.
#[derive(Clone, Debug)]
pub struct Route {
    pub watch: IpAddr,
    pub vip: String,
    pub tx: mpsc::UnboundedSender<HostReport>,
}

/// What every group's task shares.
pub struct Common {
    pub iface: String,
    pub index: u32,
    pub node: String,
    pub wire: Arc<Wire>,
    pub notifier: Notifier,
    pub hooks: watch::Receiver<Hooks>,
    pub timing: watch::Receiver<Timing>,
    pub settings: FailoverSettings,
    pub observed: Observed,
    /// The cluster this node belongs to, if any: each group gets a seat in it.
    pub cluster: Option<Cluster>,
}

struct Running {
    group: Group,
    route: Route,
    stop: CancellationToken,
    handover: CancellationToken,
    task: JoinHandle<()>,
}

/// The running groups.
pub struct Groups {
    common: Common,
    running: Vec<Running>,
    routes: watch::Sender<Vec<Route>>,
    shutdown: CancellationToken,
}

impl Groups {
    /// No groups yet; the receiver follows the routes as groups start and stop.
    pub fn new(common: Common, shutdown: CancellationToken) -> (Self, watch::Receiver<Vec<Route>>) {
        let (routes, receiver) = watch::channel(Vec::new());
        let groups = Self {
            common,
            running: Vec::new(),
            routes,
            shutdown,
        };
        (groups, receiver)
    }

    /// The groups running now, in the order they started.
    pub fn groups(&self) -> Vec<Group> {
        self.running.iter().map(|r| r.group.clone()).collect()
    }

    /// Starts `group`'s task and routes its primary's reports to it.
    pub fn start(&mut self, group: &Group) -> anyhow::Result<()> {
        let vip = self.vip(group)?;
        self.spawn(group, vip, false);
        Ok(())
    }

    /// Refuses a reload that would start a group whose VIP is one of the host's own
    /// addresses (see [`refuse_own_addresses`]); the reason as the reload's outcome.
    pub async fn refuse_own_addresses(&self, starting: &[Group]) -> Result<(), String> {
        refuse_own_addresses(&self.common.iface, self.common.index, starting)
            .await
            .map_err(|e| match e {
                Ok(not_a_vip) => not_a_vip.to_string(),
                Err(e) => format!("{e:#}"),
            })
    }

    /// The failover settings all groups run with.
    pub fn settings(&self) -> &FailoverSettings {
        &self.common.settings
    }

    /// Hands every running group over to a task with `settings`: each old task stops without
    /// touching its VIP, and the new one adopts the VIP if it is there. Counts in `/status`
    /// carry over. The groups to hand over must then be told their primary's state. On error
    /// (before any task stopped) nothing changed.
    pub async fn hand_over(&mut self, settings: FailoverSettings) -> anyhow::Result<()> {
        let groups = self.groups();
        let vips = groups
            .iter()
            .map(|g| self.vip(g))
            .collect::<anyhow::Result<Vec<Vip>>>()?;
        self.common.settings = settings;
        for (group, vip) in groups.iter().zip(vips) {
            let Some(at) = self.running.iter().position(|r| r.group == *group) else {
                continue;
            };
            let old = self.running.remove(at);
            old.handover.cancel();
            let _ = old.task.await;
            self.spawn(group, vip, true);
        }
        Ok(())
    }

    /// The group's VIP, with its own rtnetlink connection.
    fn vip(&self, group: &Group) -> anyhow::Result<Vip> {
        Vip::new(self.common.index, group.vip.clone(), group.label.clone())
    }

    fn spawn(&mut self, group: &Group, vip: Vip, handed_over: bool) {
        let c = &self.common;
        let key = group.vip.to_string();
        c.observed.update(|s| {
            if !s.groups.iter().any(|g| g.vip == key) {
                s.groups.push(GroupStatus {
                    watch: group.watch,
                    vip: key.clone(),
                    label: group.label.clone(),
                    holding: false,
                    claims: 0,
                    releases: 0,
                    yields: 0,
                    restored: 0,
                });
            }
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = self.shutdown.child_token();
        let site = Site {
            vip: group.vip.to_string(),
            iface: c.iface.clone(),
            label: group.label.clone(),
            node: c.node.clone(),
        };
        // The seat lives as long as this task, and stops only after it (a failover task that
        // sees its seat gone fences): a hand-over starts a new one with the new task.
        let seat_stop = CancellationToken::new();
        let cluster = c.cluster.as_ref().map(|cluster| {
            let seat = SeatFor {
                group: group_name(group),
                watch: group.watch,
                site: site.clone(),
                notifier: c.notifier.clone(),
                hooks: c.hooks.clone(),
            };
            seat::spawn(cluster, seat, seat_stop.clone())
        });
        let (cluster, seat_task) = match cluster {
            Some((handle, task)) => (Some(handle), Some(task)),
            None => (None, None),
        };
        let failover = Failover {
            watch: group.watch,
            site,
            vip,
            wire: Arc::clone(&c.wire),
            notifier: c.notifier.clone(),
            hooks: c.hooks.clone(),
            settings: c.settings.clone(),
            timing: c.timing.clone(),
            observed: c.observed.clone(),
            handover: CancellationToken::new(),
            quiet_start: handed_over,
            cluster,
        };
        let handover = failover.handover.clone();
        let run = failover.run(rx, stop.clone());
        let task = tokio::spawn(async move {
            run.await;
            seat_stop.cancel();
            // The group's task ends with its seat's.
            if let Some(seat) = seat_task {
                let _ = seat.await;
            }
        });
        if !handed_over {
            info!(watch = %group.watch, vip = %group.vip, label = %group.label, "failover group");
        }
        self.running.push(Running {
            group: group.clone(),
            route: Route {
                watch: group.watch,
                vip: group.vip.to_string(),
                tx,
            },
            stop,
            handover,
            task,
        });
        self.publish_routes();
    }

    /// Stops `group`'s task (which leaves its VIP as `on_exit` says) and waits for it.
    pub async fn stop(&mut self, group: &Group) {
        let Some(at) = self.running.iter().position(|r| r.group == *group) else {
            return;
        };
        let running = self.running.remove(at);
        self.publish_routes();
        running.stop.cancel();
        let _ = running.task.await;
        let vip = group.vip.to_string();
        if let Some(cluster) = &self.common.cluster {
            let held = self
                .common
                .observed
                .snapshot()
                .groups
                .iter()
                .any(|g| g.vip == vip && g.holding);
            seat::retire(cluster, &group_name(group), !held).await;
        }
        self.common
            .observed
            .update(|s| s.groups.retain(|g| g.vip != vip));
        info!(watch = %group.watch, vip = %group.vip, "failover group stopped");
    }

    /// Waits for every task to end (after shutdown).
    pub async fn join(self) {
        for running in self.running {
            let _ = running.task.await;
        }
    }

    fn publish_routes(&self) {
        let routes = self.running.iter().map(|r| r.route.clone()).collect();
        self.routes.send_replace(routes);
    }
}

/// A group's name in the cluster's keys: its VIP's first address (unique among groups).
pub fn group_name(group: &Group) -> String {
    group
        .vip
        .addrs()
        .next()
        .map_or_else(|| group.vip.to_string(), |a| a.to_string())
}

/// Refuses `groups` whose VIP is one of the host's own addresses (on another interface, or
/// `iface`'s own address): a failback or `on_exit = "release"` would delete it. A VIP already
/// on `iface` that looks like one we added is fine (it is adopted). `Err(Ok(reason))`: bad
/// config; `Err(Err(e))`: the addresses could not be listed.
pub async fn refuse_own_addresses(
    iface: &str,
    index: u32,
    groups: &[Group],
) -> Result<(), Result<vip::NotAVip, anyhow::Error>> {
    if groups.is_empty() {
        return Ok(());
    }
    let listed = vip::listed().await.map_err(Err)?;
    for group in groups {
        for addr in group.vip.addrs() {
            vip::ownership(addr, index, iface, &group.label, &listed).map_err(Ok)?;
        }
    }
    Ok(())
}

/// Going from the `running` groups to `wanted`: the groups to start and the groups to stop.
/// A group is its primary and its VIP: a group whose VIP changed is a group stopped and another
/// started, but one whose label alone changed (as default labels do when an earlier group is
/// removed) keeps running with the label its VIP has.
pub fn changes(running: &[Group], wanted: &[Group]) -> (Vec<Group>, Vec<Group>) {
    let same = |a: &Group, b: &Group| a.watch == b.watch && a.vip == b.vip;
    let start = wanted
        .iter()
        .filter(|w| !running.iter().any(|r| same(r, w)))
        .cloned()
        .collect();
    let stop = running
        .iter()
        .filter(|r| !wanted.iter().any(|w| same(r, w)))
        .cloned()
        .collect();
    (start, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(watch: &str, vip: &str) -> Group {
        Group {
            watch: watch.parse().unwrap(),
            vip: vip.parse().unwrap(),
            label: "eth0:1".into(),
        }
    }

    #[test]
    fn groups_are_started_and_stopped_by_what_changed() {
        let a = group("192.0.2.1", "192.0.2.100/24");
        let b = group("192.0.2.2", "192.0.2.101/24");
        let c = group("192.0.2.3", "192.0.2.102/24");
        let (ab, bc) = ([a.clone(), b.clone()], [b, c.clone()]);
        assert_eq!(changes(&ab, &bc), (vec![c], vec![a.clone()]));
        let only_a = [a.clone()];
        assert_eq!(changes(&only_a, &only_a), (vec![], vec![]));
        // A new VIP for the same primary: the old group stops, the new one starts.
        let moved = [group("192.0.2.1", "192.0.2.110/24")];
        assert_eq!(changes(&only_a, &moved), (moved.to_vec(), vec![a.clone()]));
        // A new label alone changes nothing: the running group keeps its VIP as it is.
        let relabelled = [Group {
            label: "eth0:7".into(),
            ..a
        }];
        assert_eq!(changes(&only_a, &relabelled), (vec![], vec![]));
    }
}
