//! Reload (SIGHUP, or `xdprobe reload` over the HTTP endpoint): re-read the config and apply
//! it while running: the hosts probed (`monitor` targets, failover groups, witnesses, DNS
//! pools), the failover settings and the timing from the next window on, the hooks, mail, the
//! metrics endpoint and the log level at once. Host state, counters and the VIPs of the groups that stay are kept;
//! the XDP program stays attached. A removed group leaves its VIP as `on_exit` says; a removed
//! pool leaves its records. A config that does not parse, or that changes what only a restart
//! can change (the interface, debug), is rejected as a whole with a logged reason, and the
//! running config stays.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use tokio::{
    signal::unix::Signal,
    sync::{mpsc, oneshot, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{
    act::{dns::Start, mail::Notifier},
    config::{
        dns::PoolConfig,
        flags::RunArgs,
        hooks::Hooks,
        load::load_settings,
        settings::{FailoverSettings, Group, Settings},
        timing::Timing,
    },
    failure::Failure,
    model::{health::State, snapshot::Observed},
    probe::{
        hosts::{monitored_hosts, probed_hosts, Roles},
        prober::Reload,
    },
    service::{
        endpoint::{Endpoint, ReloadOutcome, ReloadRequest},
        groups::{self, Groups},
        logging::LogLevel,
        pools::{self, PoolChanges, Pools},
        sharding::Sharding,
    },
};

/// The settings that only a restart can change, among those that differ between `running`
/// and `new` (in the config file's words).
pub fn needs_restart(running: &Settings, new: &Settings) -> Vec<&'static str> {
    let fixed = [
        ("iface", running.iface == new.iface),
        ("debug", running.debug == new.debug),
        ("cluster", running.cluster == new.cluster),
    ];
    fixed
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
}

/// Hosts added and removed going from `old` to `new` (both sorted and unique).
pub fn host_changes(old: &[IpAddr], new: &[IpAddr]) -> (usize, usize) {
    let kept = new.iter().filter(|h| old.binary_search(h).is_ok()).count();
    (new.len() - kept, old.len() - kept)
}

/// The task that owns the running settings and applies reloads, one at a time.
pub struct Reloader {
    pub args: RunArgs,
    pub running: Settings,
    /// What the prober probes now (sorted).
    pub hosts: Vec<IpAddr>,
    /// Hosts the XDP maps have room for.
    pub capacity: usize,
    pub prober: mpsc::UnboundedSender<Reload>,
    /// The failover tasks follow the timing; they and the dispatcher follow the hooks.
    pub timing: watch::Sender<Timing>,
    pub hooks: watch::Sender<Hooks>,
    /// Mail goes out through it; a reload may point it elsewhere.
    pub notifier: Notifier,
    /// `/metrics`, `/status` and `/reload`, which a reload may move.
    pub endpoint: Endpoint,
    /// The failover groups and the DNS pools, started and stopped as reloads say.
    pub groups: Groups,
    pub pools: Pools,
    pub observed: Observed,
    pub log: LogLevel,
    /// The monitored targets, resolved (all of them; a cluster node probes its share).
    pub monitored: Vec<IpAddr>,
    /// Cluster mode: this node's share of the monitored targets, as members come and go.
    pub sharding: Option<Sharding>,
}

impl Reloader {
    pub async fn run(
        mut self,
        mut hangup: Signal,
        mut requests: mpsc::Receiver<ReloadRequest>,
        shutdown: CancellationToken,
    ) {
        loop {
            let reply = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sharding_changed(&mut self.sharding) => {
                    self.reshard().await;
                    continue;
                }
                Some(()) = hangup.recv() => {
                    info!("SIGHUP: reloading the config");
                    None
                }
                Some(request) = requests.recv() => {
                    info!("reload requested over HTTP: reloading the config");
                    Some(request.reply)
                }
            };
            notify_systemd(true);
            let outcome = match self.reload(&shutdown).await {
                Ok(message) => {
                    info!(change = %message, "reloaded");
                    self.observed.update(|s| s.reloads += 1);
                    ReloadOutcome {
                        applied: true,
                        message,
                    }
                }
                Err(reason) => {
                    error!(%reason, "reload rejected; the running config stays");
                    self.observed.update(|s| s.reload_failures += 1);
                    ReloadOutcome {
                        applied: false,
                        message: reason,
                    }
                }
            };
            notify_systemd(false);
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
        self.groups.join().await;
    }

    /// Reads and applies the config; on error nothing changed.
    async fn reload(&mut self, shutdown: &CancellationToken) -> Result<String, String> {
        let new = load_settings(&self.args).map_err(reason)?;
        let fixed = needs_restart(&self.running, &new);
        if !fixed.is_empty() {
            return Err(format!(
                "changing {} needs a restart (a reload changes everything but iface and debug)",
                fixed.join(", ")
            ));
        }
        // A group this reload starts must not manage one of our own addresses (the groups
        // that keep running hold their VIPs already).
        let (starting, _) = groups::changes(&self.groups.groups(), &new.groups);
        self.groups.refuse_own_addresses(&starting).await?;
        let (hosts, roles, monitored) = self.hosts_of(&new).await?;
        let mut undo = Undo::default();
        let share = self.sharding.as_ref().map(|s| s.publish(&monitored));
        match self.apply(&new, &hosts, roles, &mut undo, shutdown).await {
            Ok(message) => {
                self.hosts = hosts;
                self.running = new;
                self.monitored = monitored;
                Ok(message)
            }
            Err(e) => {
                self.undo(undo, shutdown).await;
                if let (Some(sharding), Some(share)) = (&self.sharding, share) {
                    sharding.restore(share);
                }
                Err(e)
            }
        }
    }

    /// The hosts `new` probes (a cluster node: its share of the monitored targets), if all
    /// of them fit the maps (a cluster node may be left alone with them all); and the
    /// monitored targets.
    async fn hosts_of(&self, new: &Settings) -> Result<(Vec<IpAddr>, Roles, Vec<IpAddr>), String> {
        let monitored = monitored_hosts(&new.monitor, new.family)
            .await
            .map_err(reason)?;
        let all = probed_hosts(new, &monitored).0.len();
        if all > self.capacity {
            return Err(format!(
                "{all} hosts do not fit the {} the XDP maps were sized for at start-up; restart \
                 xdprobe to probe them all",
                self.capacity
            ));
        }
        let (hosts, roles) = match &self.sharding {
            Some(sharding) => probed_hosts(new, &sharding.mine(&monitored)),
            None => probed_hosts(new, &monitored),
        };
        Ok((hosts, roles, monitored))
    }

    /// The cluster's members changed: probe our new share of the monitored targets from the
    /// next window (the hosts that stay keep their state: a target that moves to us starts
    /// UNKNOWN and comes UP at its first reply, never DOWN).
    async fn reshard(&mut self) {
        let Some(sharding) = &self.sharding else {
            return;
        };
        let members = sharding.members().join(",");
        let mine = sharding.mine(&self.monitored);
        let (hosts, roles) = probed_hosts(&self.running, &mine);
        let before = sharding.publish(&self.monitored);
        if hosts != self.hosts {
            let running = self.running.clone();
            let unchanged = Changes {
                start: vec![],
                stop: vec![],
                resettled: false,
                repool: PoolChanges::default(),
            };
            match self
                .switch(&running, &unchanged, hosts.clone(), roles)
                .await
            {
                Ok(window) => {
                    self.hosts = hosts;
                    info!(window, %members, share = mine.len(), targets = self.monitored.len(),
                        "cluster: probing our share of the monitored targets");
                }
                Err(e) => {
                    error!(reason = %e, "cluster: probing our new share failed; probing the old one, trying again");
                    if let Some(sharding) = &mut self.sharding {
                        sharding.restore(before);
                        sharding.forget();
                    }
                }
            }
        }
    }

    /// Applies `new`, noting in `undo` what [`Reloader::undo`] must restore if a later step
    /// fails. Mail first: its files are checked there, and a bad one rejects the reload
    /// before anything else changed. Then the endpoint: a new address is bound before
    /// anything else changes. Then the hosts, groups, pools and timing, which undo themselves
    /// on error. The rest cannot fail.
    async fn apply(
        &mut self,
        new: &Settings,
        hosts: &[IpAddr],
        roles: Roles,
        undo: &mut Undo,
        shutdown: &CancellationToken,
    ) -> Result<String, String> {
        let remailed = new.mail != self.running.mail;
        if remailed {
            self.notifier
                .reconfigure(new.mail.clone(), shutdown.clone())
                .map_err(|e| format!("{e:#}"))?;
            undo.mail = true;
        }
        let moved = new.metrics != self.endpoint.addr();
        if moved {
            self.endpoint
                .move_to(new.metrics)
                .await
                .map_err(|e| format!("{e:#}"))?;
            undo.endpoint = true;
        }
        let mut message = self.rehost(new, hosts, roles).await?;
        if moved {
            message.push_str(&match new.metrics {
                Some(addr) => format!("; metrics on {addr}"),
                None => "; metrics off".to_string(),
            });
        }
        if remailed {
            message.push_str(match &new.mail {
                Some(_) => "; mail settings changed",
                None => "; mail off",
            });
        }
        message.push_str(&self.apply_at_once(new));
        Ok(message)
    }

    /// The hosts, groups, pools and timing; what changed, as the outcome's message.
    async fn rehost(
        &mut self,
        new: &Settings,
        hosts: &[IpAddr],
        roles: Roles,
    ) -> Result<String, String> {
        let (added, removed) = host_changes(&self.hosts, hosts);
        let retimed = new.timing != self.running.timing;
        let (start, stop) = groups::changes(&self.groups.groups(), &new.groups);
        let changes = Changes {
            resettled: new.failover != *self.groups.settings(),
            repool: pools::changes(&self.pools.configs(), &new.dns),
            start,
            stop,
        };
        if added == 0 && removed == 0 && !retimed && changes.is_empty() {
            return Ok("hosts, groups, DNS pools and timing unchanged".to_string());
        }
        let window = self.switch(new, &changes, hosts.to_vec(), roles).await?;
        self.timing.send_replace(new.timing);
        let mut message = format!(
            "from window {window}: {} hosts ({added} added, {removed} removed), window {:?}, \
             {} probes, {} retries",
            hosts.len(),
            new.timing.window,
            new.timing.probes,
            new.timing.retries
        );
        message.push_str(&changes.summary());
        Ok(message)
    }

    /// The hooks and the log level, which change at once and cannot fail the reload.
    fn apply_at_once(&mut self, new: &Settings) -> String {
        let mut message = String::new();
        if new.hooks != self.running.hooks {
            self.hooks.send_replace(new.hooks.clone());
            message.push_str("; hooks changed");
        }
        if new.log_level != self.running.log_level {
            match self.log.apply(&new.log_level) {
                Ok(()) => message.push_str(&format!("; log_level {:?}", new.log_level)),
                Err(e) => message.push_str(&format!("; log_level not changed: {e:#}")),
            }
        }
        message
    }

    /// Back to the mail settings and the endpoint that ran until this reload, as `undo` says.
    async fn undo(&mut self, undo: Undo, shutdown: &CancellationToken) {
        if undo.mail {
            if let Err(again) = self
                .notifier
                .reconfigure(self.running.mail.clone(), shutdown.clone())
            {
                error!(reason = %format!("{again:#}"), "restoring the mail settings failed");
            }
        }
        if undo.endpoint {
            if let Err(again) = self.endpoint.move_to(self.running.metrics).await {
                error!(reason = %format!("{again:#}"), "restoring the metrics endpoint failed");
            }
        }
    }
}

/// What a reload changed that a later failure must put back (the groups, pools and prober put
/// themselves back).
#[derive(Default)]
struct Undo {
    mail: bool,
    endpoint: bool,
}

/// What a reload does to the groups and pools.
struct Changes {
    start: Vec<Group>,
    stop: Vec<Group>,
    /// The failover settings changed: every group is handed over to a task with the new ones.
    resettled: bool,
    repool: PoolChanges,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty() && !self.resettled && self.repool.is_empty()
    }

    fn summary(&self) -> String {
        let mut out = String::new();
        if !self.start.is_empty() || !self.stop.is_empty() {
            out.push_str(&format!(
                "; failover groups: {} started, {} stopped",
                self.start.len(),
                self.stop.len()
            ));
        }
        if self.resettled {
            out.push_str("; failover settings changed");
        }
        if !self.repool.is_empty() {
            out.push_str(&format!(
                "; DNS pools: {} started, {} stopped",
                self.repool.start.len(),
                self.repool.stop.len()
            ));
        }
        out
    }
}

/// Waits for the cluster's members to change; never without a cluster.
async fn sharding_changed(sharding: &mut Option<Sharding>) {
    match sharding {
        Some(sharding) => sharding.changed().await,
        None => std::future::pending().await,
    }
}

/// The hosts whose state the prober tells the groups and pools a reload starts: the
/// primaries of every group handed over (all of them when the failover settings changed, else
/// the new ones) and the members of the pools started.
fn announced(new: &Settings, changes: &Changes) -> Vec<IpAddr> {
    let watches: Vec<IpAddr> = if changes.resettled {
        new.groups.iter().map(|g| g.watch).collect()
    } else {
        changes.start.iter().map(|g| g.watch).collect()
    };
    let members = changes
        .repool
        .start
        .iter()
        .flat_map(|(p, _)| p.members.iter().copied());
    watches.into_iter().chain(members).collect()
}

impl Reloader {
    /// Switches groups and pools, then the prober; returns the window the prober switched on.
    /// Groups and pools change first, so that new ones hear of their hosts from that window
    /// on (the prober tells them what it already knows). On error, everything is as before.
    async fn switch(
        &mut self,
        new: &Settings,
        changes: &Changes,
        hosts: Vec<IpAddr>,
        roles: Roles,
    ) -> Result<u32, String> {
        let old = self.groups.settings().clone();
        if changes.resettled {
            // On error nothing changed.
            self.groups
                .hand_over(new.failover.clone())
                .await
                .map_err(|e| format!("restarting the failover groups: {e:#}"))?;
        }
        let switched = self.regroup_and_rehost(new, changes, hosts, roles).await;
        if switched.is_err() && changes.resettled {
            self.hand_back(old).await;
        }
        switched
    }

    /// Starts and stops groups and pools, then hands the prober its hosts; on error, the groups
    /// and pools are as before.
    async fn regroup_and_rehost(
        &mut self,
        new: &Settings,
        changes: &Changes,
        hosts: Vec<IpAddr>,
        roles: Roles,
    ) -> Result<u32, String> {
        self.regroup(&changes.start, &changes.stop).await?;
        let before = self.pools.configs();
        self.apply_pools(&changes.repool);
        let (done, applied) = oneshot::channel();
        let reload = Reload {
            hosts,
            roles,
            timing: new.timing,
            suspect_lead: new.failover.conflict_wait,
            announce: announced(new, changes),
            done,
        };
        let handed = self.hand_to_prober(reload, applied).await;
        if handed.is_err() {
            // Back to the groups and pools that match the hosts still probed.
            self.undo_pools(&changes.repool, &before);
            if let Err(again) = self.regroup(&changes.stop, &changes.start).await {
                error!(reason = %again, "restoring the failover groups failed");
            }
        }
        handed
    }

    /// Back to the failover settings the groups ran with.
    async fn hand_back(&mut self, old: FailoverSettings) {
        if let Err(e) = self.groups.hand_over(old).await {
            error!(reason = %format!("{e:#}"), "restoring the failover settings failed");
        }
    }

    /// Hands the prober its new hosts and timing, and waits for the window it applies them
    /// from (its next window boundary). If it does not answer in time, dropping the answer's
    /// receiver withdraws the reload.
    async fn hand_to_prober(
        &self,
        reload: Reload,
        applied: oneshot::Receiver<Result<u32, String>>,
    ) -> Result<u32, String> {
        let wait = self.running.timing.window * 2 + Duration::from_secs(1);
        if self.prober.send(reload).is_err() {
            return Err("the probe loop has stopped".into());
        }
        match tokio::time::timeout(wait, applied).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the probe loop has stopped".into()),
            Err(_) => Err(format!("the probe loop did not take it within {wait:?}")),
        }
    }

    /// Stops and starts pools as `changes` says; a started pool begins from what the prober
    /// knows of its members, so a reload never publishes a member known to be DOWN.
    fn apply_pools(&mut self, changes: &PoolChanges) {
        for name in &changes.stop {
            self.pools.stop(name);
        }
        for (config, retired) in &changes.start {
            let start = Start {
                up: Some(self.known_up(&config.members)),
                retired: retired.clone(),
            };
            self.pools.start(config, start);
        }
    }

    /// Undoes [`Reloader::apply_pools`], `before` being the pools that ran until then.
    fn undo_pools(&mut self, changes: &PoolChanges, before: &[PoolConfig]) {
        for (config, _) in &changes.start {
            self.pools.stop(&config.name);
        }
        for config in before.iter().filter(|c| changes.stop.contains(&c.name)) {
            let start = Start {
                up: Some(self.known_up(&config.members)),
                retired: BTreeSet::new(),
            };
            self.pools.start(config, start);
        }
    }

    /// The `members` not known to be DOWN (as last published by the prober).
    fn known_up(&self, members: &[IpAddr]) -> BTreeSet<IpAddr> {
        let snapshot = self.observed.snapshot();
        let down: BTreeSet<IpAddr> = snapshot
            .hosts
            .iter()
            .filter(|h| h.state == State::Down)
            .map(|h| h.host)
            .collect();
        members
            .iter()
            .filter(|m| !down.contains(m))
            .copied()
            .collect()
    }

    /// Stops the groups in `stop` (each leaves its VIP as `on_exit` says), then starts those in
    /// `start`; if one cannot start, undoes it all.
    async fn regroup(&mut self, start: &[Group], stop: &[Group]) -> Result<(), String> {
        for group in stop {
            self.groups.stop(group).await;
        }
        for (n, group) in start.iter().enumerate() {
            if let Err(e) = self.groups.start(group) {
                for started in &start[..n] {
                    self.groups.stop(started).await;
                }
                for stopped in stop {
                    if let Err(again) = self.groups.start(stopped) {
                        error!(vip = %stopped.vip, reason = %format!("{again:#}"), "restarting a failover group failed");
                    }
                }
                return Err(format!(
                    "starting the failover group for {}: {e:#}",
                    group.vip
                ));
            }
        }
        Ok(())
    }
}

fn reason(failure: Failure) -> String {
    match failure {
        Failure::Usage(e) | Failure::System(e) => format!("{e:#}"),
    }
}

/// systemd (`Type=notify`): reloading, then ready again.
fn notify_systemd(reloading: bool) {
    use sd_notify::NotifyState;
    let states: Vec<NotifyState> = if reloading {
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        states
    } else {
        vec![NotifyState::Ready]
    };
    // Without systemd (no NOTIFY_SOCKET) this does nothing.
    let _ = sd_notify::notify(&states);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::file::FileConfig;

    fn settings(text: &str) -> Settings {
        let file = FileConfig::parse(Path::new("test.toml"), text).unwrap();
        Settings::resolve(&RunArgs::default(), file).unwrap()
    }

    const BASE: &str = r#"
iface = "eth0"
watch = "192.0.2.1"
vip = "192.0.2.100/24"
monitor = ["198.51.100.0/30"]
window = "1s"
"#;

    #[test]
    fn everything_but_the_interface_and_debug_changes_without_a_restart() {
        let running = settings(BASE);
        let new = settings(&format!(
            "{}probes = 5\nlog_level = \"debug\"\non_down = \"/bin/true\"\n\
             witness = [\"192.0.2.254\"]\non_exit = \"release\"\nmetrics = \"off\"\n\
             notify = \"ops@example.org\"\nsmtp = \"127.0.0.1:25\"\nfrom = \"x@example.org\"\n\
             [[group]]\nwatch = \"192.0.2.2\"\nvip = \"192.0.2.102/24\"\n",
            BASE.replace("198.51.100.0/30", "203.0.113.7")
                .replace("1s", "100ms")
                .replace("192.0.2.100", "192.0.2.101")
        ));
        assert_ne!(running, new);
        assert!(needs_restart(&running, &new).is_empty());
    }

    #[test]
    fn the_interface_and_debug_need_a_restart_and_are_named() {
        let running = settings(BASE);
        let debug = format!("{BASE}debug = true\n");
        assert_eq!(needs_restart(&running, &settings(&debug)), ["debug"]);
        let both = format!("{}debug = true\n", BASE.replace("eth0", "eth1"));
        assert_eq!(
            needs_restart(&running, &settings(&both)),
            ["iface", "debug"]
        );
    }

    #[test]
    fn added_and_removed_hosts_are_counted() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let old = [a("192.0.2.1"), a("192.0.2.5"), a("192.0.2.9")];
        let new = [
            a("192.0.2.1"),
            a("192.0.2.6"),
            a("192.0.2.7"),
            a("192.0.2.9"),
        ];
        assert_eq!(host_changes(&old, &new), (2, 1));
        assert_eq!(host_changes(&old, &old), (0, 0));
        assert_eq!(host_changes(&old, &[]), (0, 3));
    }
}
