//! `xdprobe run`: the failover daemon. One prober for every host (the failover groups'
//! primaries, the witnesses, the monitored targets), one failover task per group, and a
//! dispatcher between them that also runs the down/up hooks.

use std::{net::Ipv4Addr, path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{
    act::arp::ArpSocket,
    config::flags::RunArgs,
    act::dns::{DnsPool, Start},
    model::events::Report,
    failure::{Failure, OrSystem as _},
    service::groups::{Common, Groups, Route},
    model::health::State,
    act::hooks::{HookEvent, HookFacts, Hooks},
    service::logging::LogLevel,
    act::mail::Notifier,
    service::endpoint::{Endpoint, Observed, Snapshot},
    service::pools::Pools,
    probe::prober::{Prober, Roles},
    service::reload::Reloader,
    probe::sender::Sender,
    config::settings::{FileConfig, Settings, DEFAULT_CONFIG},
    service::startup::{attach_xdp, interface_index, require_capabilities},
    probe::targets,
};

/// The settings from the flags over the config file (`--config`, else the default file if it
/// exists); errors point at the file's line.
pub fn load_settings(args: &RunArgs) -> Result<Settings, Failure> {
    let default = Path::new(DEFAULT_CONFIG);
    let path = match &args.config {
        Some(path) => Some(path.as_path()),
        None => default.exists().then_some(default),
    };
    let Some(path) = path else {
        return Settings::resolve(args, FileConfig::default())
            .map_err(|e| Failure::Usage(e.into()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))
        .map_err(Failure::Usage)?;
    let file = FileConfig::parse(path, &text).map_err(|e| Failure::Usage(e.into()))?;
    Settings::resolve(args, file)
        .map_err(|e| Failure::Usage(anyhow::anyhow!(e.in_file(path, &text))))
}

fn node_name() -> String {
    std::fs::read_to_string(Path::new("/proc/sys/kernel/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "this host".into())
}

/// Every host to probe, sorted: the groups' primaries, the witnesses, the monitored targets
/// and the DNS pools' members; and which of them play a part in failover.
pub fn probed_hosts(settings: &Settings, monitored: &[Ipv4Addr]) -> (Vec<Ipv4Addr>, Roles) {
    let watches: Vec<Ipv4Addr> = settings.groups.iter().map(|g| g.watch).collect();
    let witnesses = &settings.failover.witnesses;
    let members = settings.dns.iter().flat_map(|pool| &pool.members);
    let mut hosts: Vec<Ipv4Addr> = watches
        .iter()
        .chain(witnesses)
        .chain(monitored)
        .chain(members)
        .copied()
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let roles = Roles::find(&hosts, &watches, witnesses);
    (hosts, roles)
}

/// Hosts the XDP maps get room for, so that a reload can add hosts without re-attaching:
/// twice the hosts at start-up, and at least 4,096 (96 KiB of maps).
pub fn reload_capacity(hosts: usize) -> usize {
    (hosts * 2).clamp(4096, probe_common::maps::MAX_HOSTS as usize)
}

pub async fn run(args: RunArgs, log: LogLevel) -> Result<(), Failure> {
    let settings = load_settings(&args)?;
    log.apply(&settings.log_level).map_err(Failure::Usage)?;
    let index = interface_index(&settings.iface)?;
    require_capabilities()?;
    // Mail files (CA, credentials) and targets are checked before anything is set up.
    let shutdown = CancellationToken::new();
    let notifier =
        Notifier::start(settings.mail.clone(), shutdown.clone()).map_err(Failure::Usage)?;
    let monitored = monitored_hosts(&settings.monitor).await?;
    let (hosts, roles) = probed_hosts(&settings, &monitored);
    let capacity = reload_capacity(hosts.len());
    // Installed before we say we are ready: SIGHUP's default action would end the process.
    let hangup = signal(SignalKind::hangup())
        .context("installing the SIGHUP handler")
        .system()?;

    // Everything set up below is undone by drop (the XDP link) if a later step fails.
    let xdp = attach_xdp(&hosts, capacity, &settings.iface, settings.debug)?;
    let sender = Sender::open(&settings.iface).system()?;
    let arp = Arc::new(ArpSocket::open(&settings.iface).system()?);

    let observed = Observed::new(Snapshot::default());
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let mut endpoint = Endpoint::new(observed.clone(), reload_tx, shutdown.clone());
    if let Err(e) = endpoint.move_to(settings.metrics).await {
        error!(error = %format!("{e:#}"), "no metrics endpoint; probing and failover go on");
    }

    let (timing_tx, timing_rx) = watch::channel(settings.timing);
    let (hooks_tx, hooks_rx) = watch::channel(settings.hooks.clone());
    let (mut groups, routes) = Groups::new(
        Common {
            iface: settings.iface.clone(),
            index,
            node: node_name(),
            arp,
            notifier: notifier.clone(),
            hooks: hooks_rx.clone(),
            timing: timing_rx,
            settings: settings.failover.clone(),
            observed: observed.clone(),
        },
        shutdown.clone(),
    );
    for group in &settings.groups {
        groups.start(group).system()?;
    }
    let (mut pools, pool_handles) =
        Pools::new(notifier.clone(), observed.clone(), shutdown.clone());
    for pool in &settings.dns {
        pools.start(pool, Start::default());
    }
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let dispatcher = tokio::spawn(dispatch(reports_rx, routes, pool_handles, hooks_rx));
    let (reloads_tx, reloads_rx) = mpsc::unbounded_channel();
    let prober = Prober::new(
        hosts.clone(),
        roles,
        Box::new(xdp),
        sender,
        settings.timing,
        settings.failover.conflict_wait,
        reports_tx,
    )
    .log_changes()
    .observed(observed.clone())
    .reloads(reloads_rx);
    let mut prober = tokio::spawn(prober.run(shutdown.clone()));
    info!(
        groups = settings.groups.len(),
        witnesses = ?settings.failover.witnesses,
        monitored = monitored.len(),
        dns_pools = settings.dns.len(),
        capacity,
        "xdprobe running"
    );
    let reloader = Reloader {
        args,
        running: settings,
        hosts,
        capacity,
        prober: reloads_tx,
        timing: timing_tx,
        hooks: hooks_tx,
        notifier,
        endpoint,
        groups,
        pools,
        observed,
        log,
    };
    // The reloader owns the failover groups: at shutdown it waits for them to leave their
    // VIPs as `on_exit` says.
    let reloader = tokio::spawn(reloader.run(hangup, reload_rx, shutdown.clone()));

    // systemd (Type=notify): we are up; the dispatcher pings the watchdog once per window.
    if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%error, "cannot notify systemd of readiness");
    }

    let mut sigterm = signal(SignalKind::terminate())
        .context("installing SIGTERM handler")
        .system()?;
    let stopped_early = tokio::select! {
        _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down"); None }
        _ = sigterm.recv() => { info!("SIGTERM: shutting down"); None }
        result = &mut prober => Some(result),
    };
    shutdown.cancel();
    let result = match stopped_early {
        Some(result) => result,
        None => prober.await,
    };
    let _ = dispatcher.await;
    let _ = reloader.await;
    match result {
        Ok(Ok(_)) => {
            info!("stopped cleanly; XDP detached");
            Ok(())
        }
        Ok(Err(e)) => {
            error!(error = %format!("{e:#}"), "probing failed");
            Err(Failure::System(e))
        }
        Err(join) => Err(Failure::System(anyhow::anyhow!("probe task died: {join}"))),
    }
}

/// The config's plain monitored targets, resolved.
pub async fn monitored_hosts(specs: &[String]) -> Result<Vec<Ipv4Addr>, Failure> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let parsed = targets::parse_args(specs, |path| std::fs::read_to_string(path))
        .map_err(|e| Failure::Usage(anyhow::Error::from(e).context("invalid `monitor`")))?;
    targets::resolve(parsed, probe_common::maps::MAX_HOSTS as usize)
        .await
        .map_err(|e| Failure::Usage(anyhow::Error::from(e).context("invalid `monitor`")))
}

/// Runs the down/up hooks for every probed host, tells the DNS pools about their members, and
/// hands each group the reports about its primary (and the witnesses' liveness, which concerns
/// them all), following `routes` as reloads add and remove groups.
async fn dispatch(
    mut reports: mpsc::UnboundedReceiver<Report>,
    routes: watch::Receiver<Vec<Route>>,
    pools: watch::Receiver<Vec<Arc<DnsPool>>>,
    hooks: watch::Receiver<Hooks>,
) {
    while let Some(report) = reports.recv().await {
        if let Report::Window { .. } = report {
            // A window closed: the probe loop is alive (no-op without systemd's watchdog).
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            continue;
        }
        // Borrowed, not copied, per report: nothing below waits.
        deliver(&report, &routes.borrow(), &pools.borrow(), &hooks.borrow());
    }
}

/// Where one report goes: the hooks and the DNS pools for a state change (only the pools for a
/// state told to new pools and groups), and the groups it concerns.
fn deliver(report: &Report, groups: &[Route], pools: &[Arc<DnsPool>], hooks: &Hooks) {
    let tell_pools = |event: &crate::model::events::HostEvent| {
        if matches!(event.change.to, State::Up | State::Down) {
            for pool in pools {
                pool.member(event.host, event.change.to == State::Up);
            }
        }
    };
    let host = match report {
        Report::Host(event) => {
            tell_pools(event);
            let hook = match (event.change.from, event.change.to) {
                (_, State::Down) => Some(HookEvent::Down),
                (State::Down, State::Up) => Some(HookEvent::Up),
                _ => None,
            };
            if let Some(hook) = hook {
                let vip = groups
                    .iter()
                    .find(|g| g.watch == event.host)
                    .map(|g| g.vip.clone());
                hooks.fire(HookFacts {
                    event: hook,
                    host: event.host,
                    vip: vip.unwrap_or_default(),
                    state: event.change.to.to_string(),
                    window: event.window,
                });
            }
            Some(event.host)
        }
        Report::Known(event) => {
            tell_pools(event);
            Some(event.host)
        }
        Report::Suspect { host, .. } => Some(*host),
        Report::Witnesses { .. } | Report::Window { .. } => None,
    };
    for group in groups.iter().filter(|g| host.is_none_or(|h| h == g.watch)) {
        // A group's receiver goes away when it stops (shutdown, or a reload removed it).
        let _ = group.tx.send(report.clone());
    }
}
