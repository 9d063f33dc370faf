//! The dispatcher: one task between the prober and everything that acts on its reports. It
//! runs the down/up hooks, tells the DNS pools about their members, hands each failover group
//! the reports about its primary (and the witnesses' liveness, which concerns them all), and
//! pings systemd's watchdog once per window.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::{
    act::{
        dns::DnsPool,
        hooks::{fire, HookFacts},
    },
    config::hooks::{HookEvent, Hooks},
    model::{
        events::{HostEvent, HostReport, Report},
        health::State,
    },
    service::groups::Route,
};

/// Delivers every report until the prober stops, following `routes`, `pools` and `hooks` as
/// reloads change them; in a cluster, every state change also goes to the reporter (which
/// writes those of its monitored targets to etcd).
pub async fn dispatch(
    mut reports: mpsc::UnboundedReceiver<Report>,
    routes: watch::Receiver<Vec<Route>>,
    pools: watch::Receiver<Vec<Arc<DnsPool>>>,
    hooks: watch::Receiver<Hooks>,
    cluster: Option<mpsc::UnboundedSender<HostEvent>>,
) {
    while let Some(report) = reports.recv().await {
        match report {
            Report::Window(_) => {
                // A window closed: the probe loop is alive (no-op without systemd's watchdog).
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            // Borrowed, not copied, per report: nothing below waits.
            Report::Host(report) => {
                if let (Some(cluster), HostReport::Changed(event)) = (&cluster, &report) {
                    let _ = cluster.send(*event);
                }
                deliver(&report, &routes.borrow(), &pools.borrow(), &hooks.borrow())
            }
        }
    }
}

/// Where one report goes: the hooks and the DNS pools for a state change (only the pools for a
/// state told to new pools and groups), and the groups it concerns.
fn deliver(report: &HostReport, groups: &[Route], pools: &[Arc<DnsPool>], hooks: &Hooks) {
    let host = match report {
        HostReport::Changed(event) => {
            tell_pools(event, pools);
            run_hook(event, groups, hooks);
            Some(event.host)
        }
        HostReport::Known(event) => {
            tell_pools(event, pools);
            Some(event.host)
        }
        HostReport::Suspect { host, .. } => Some(*host),
        HostReport::Witnesses { .. } => None,
    };
    for group in groups.iter().filter(|g| host.is_none_or(|h| h == g.watch)) {
        // A group's receiver goes away when it stops (shutdown, or a reload removed it).
        let _ = group.tx.send(report.clone());
    }
}

/// A member's state, for every pool (each ignores what is not its member).
fn tell_pools(event: &HostEvent, pools: &[Arc<DnsPool>]) {
    if matches!(event.change.to, State::Up | State::Down) {
        for pool in pools {
            pool.member(event.host, event.change.to == State::Up);
        }
    }
}

/// The down hook when a host goes DOWN, the up hook when it comes back from DOWN.
fn run_hook(event: &HostEvent, groups: &[Route], hooks: &Hooks) {
    let hook = match (event.change.from, event.change.to) {
        (_, State::Down) => HookEvent::Down,
        (State::Down, State::Up) => HookEvent::Up,
        _ => return,
    };
    let vip = groups
        .iter()
        .find(|g| g.watch == event.host)
        .map(|g| g.vip.clone());
    fire(
        hooks,
        HookFacts {
            event: hook,
            host: event.host,
            vip: vip.unwrap_or_default(),
            state: event.change.to,
            window: event.window,
        },
    );
}
