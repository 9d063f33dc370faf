//! `xdprobe run`: the failover daemon. One prober for every host (the failover groups'
//! primaries, the witnesses, the monitored targets), one failover task per group, and a
//! dispatcher between them that also runs the down/up hooks.

use std::{net::IpAddr, sync::Arc};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{
    act::{
        cluster::{report, session, Cluster},
        dns::{DnsPool, Start},
        mail::Notifier,
        wire::Wire,
    },
    config::{
        cluster::host_name,
        dns::PoolConfig,
        flags::RunArgs,
        load::load_settings,
        settings::{Group, Settings},
    },
    failure::{Failure, OrSystem as _},
    model::snapshot::{Observed, Snapshot},
    probe::{
        hosts::{monitored_hosts, probed_hosts, reload_capacity, Roles},
        prober::{Outcome, Prober},
        sender::Sender,
        xdp::XdpProbe,
    },
    service::{
        dispatch::dispatch,
        endpoint::{Endpoint, ReloadRequest},
        groups::{refuse_own_addresses, Common, Groups, Route},
        logging::LogLevel,
        pools::Pools,
        reload::Reloader,
        sharding::Sharding,
        startup::{attach_xdp, interface_index, require_capabilities, require_kernel},
    },
};

/// What the notices call this machine: its cluster node name, else its host name.
fn node_name(settings: &Settings) -> String {
    match &settings.cluster {
        Some(cluster) => cluster.node.clone(),
        None => host_name().unwrap_or_else(|| "this host".into()),
    }
}

/// What `run` prepares before touching the system: the settings, and the hosts they name.
struct Plan {
    settings: Settings,
    index: u32,
    notifier: Notifier,
    /// The monitored targets, resolved (a cluster node probes only its share of them).
    monitored: Vec<IpAddr>,
    hosts: Vec<IpAddr>,
    roles: Roles,
    capacity: usize,
}

/// The sockets and the attached program the prober and the failover groups use.
struct Link {
    xdp: XdpProbe,
    sender: Sender,
    wire: Arc<Wire>,
}

/// The daemon's long-lived tasks.
struct Tasks {
    prober: JoinHandle<anyhow::Result<Outcome>>,
    dispatcher: JoinHandle<()>,
    reloader: JoinHandle<()>,
    /// Whether a group still holds its VIP at the end (then a cluster lease is kept).
    observed: Observed,
}

pub async fn run(args: RunArgs, log: LogLevel) -> Result<(), Failure> {
    let started = tokio::time::Instant::now();
    let shutdown = CancellationToken::new();
    let plan = prepare(&args, &log, &shutdown).await?;
    // Installed before we say we are ready: SIGHUP's default action would end the process.
    let hangup = signal(SignalKind::hangup())
        .context("installing the SIGHUP handler")
        .system()?;
    // Everything set up below is undone by drop (the XDP link) if a later step fails.
    let s = &plan.settings;
    let link = Link {
        xdp: attach_xdp(&plan.hosts, plan.capacity, true, &s.iface, s.debug)?,
        sender: Sender::open(&s.iface).system()?,
        wire: Arc::new(Wire::open(&s.iface).system()?),
    };
    // The cluster session outlives the groups: its lease is revoked only after they left
    // their VIPs, so that no other node claims one we still hold.
    let leave = CancellationToken::new();
    let session = match &s.cluster {
        Some(settings) => Some(
            session::start(
                settings.clone(),
                started,
                leave.clone(),
                s.groups.is_empty(),
            )
            .await
            .map_err(Failure::Usage)?,
        ),
        None => None,
    };
    let (cluster, session) = session.unzip();
    let tasks = start_tasks(plan, link, cluster.clone(), args, log, hangup, &shutdown).await?;
    // systemd (Type=notify): we are up; the dispatcher pings the watchdog once per window.
    if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%error, "cannot notify systemd of readiness");
    }
    let result = wait_for_stop(tasks.prober, &shutdown).await?;
    let _ = tasks.dispatcher.await;
    let _ = tasks.reloader.await;
    if let Some(cluster) = &cluster {
        if tasks.observed.snapshot().groups.iter().any(|g| g.holding) {
            cluster.keep_lease();
        }
    }
    leave.cancel();
    if let Some(session) = session {
        let _ = session.await;
    }
    outcome(result)
}

/// Starts the endpoint, the failover groups, the DNS pools, the dispatcher, the prober and
/// the reloader, with the channels between them.
async fn start_tasks(
    plan: Plan,
    link: Link,
    cluster: Option<Cluster>,
    args: RunArgs,
    log: LogLevel,
    hangup: Signal,
    shutdown: &CancellationToken,
) -> Result<Tasks, Failure> {
    let s = &plan.settings;
    let observed = Observed::new(Snapshot::default());
    let (endpoint, reload_rx) = start_endpoint(&observed, s.metrics, shutdown).await;
    let (timing_tx, timing_rx) = watch::channel(s.timing);
    let (hooks_tx, hooks_rx) = watch::channel(s.hooks.clone());
    let common = Common {
        iface: s.iface.clone(),
        index: plan.index,
        node: node_name(s),
        wire: link.wire,
        notifier: plan.notifier.clone(),
        hooks: hooks_rx.clone(),
        timing: timing_rx,
        settings: s.failover.clone(),
        observed: observed.clone(),
        cluster: cluster.clone(),
    };
    let (groups, routes) = start_groups(common, &s.groups, shutdown)?;
    let (pools, pool_handles) = start_pools(&plan.notifier, &observed, &s.dns, shutdown);
    let (sharding, cluster_events) = match (&cluster, &s.cluster) {
        (Some(cluster), Some(settings)) => {
            let (sharding, share) =
                Sharding::new(settings.node.clone(), settings.replicas, cluster.state());
            let (events_tx, events) = mpsc::unbounded_channel();
            report::spawn(cluster, share, events, observed.clone(), shutdown.clone());
            (Some(sharding), Some(events_tx))
        }
        _ => (None, None),
    };
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let dispatcher = tokio::spawn(dispatch(
        reports_rx,
        routes,
        pool_handles,
        hooks_rx,
        cluster_events,
    ));
    let (reloads_tx, reloads_rx) = mpsc::unbounded_channel();
    let prober = Prober::new(
        plan.hosts.clone(),
        plan.roles.clone(),
        Box::new(link.xdp),
        link.sender,
        s.timing,
        s.failover.conflict_wait,
        reports_tx,
    );
    let prober = prober.log_changes().observed(observed.clone());
    let prober = tokio::spawn(prober.reloads(reloads_rx).run(shutdown.clone()));
    info!(
        groups = s.groups.len(),
        witnesses = ?s.failover.witnesses,
        monitored = plan.monitored.len(),
        dns_pools = s.dns.len(),
        capacity = plan.capacity,
        "xdprobe running"
    );
    let observed_for_tasks = observed.clone();
    let reloader = Reloader {
        args,
        running: plan.settings,
        hosts: plan.hosts,
        capacity: plan.capacity,
        prober: reloads_tx,
        timing: timing_tx,
        hooks: hooks_tx,
        notifier: plan.notifier,
        endpoint,
        groups,
        pools,
        observed,
        log,
        monitored: plan.monitored,
        sharding,
    };
    // The reloader owns the failover groups: at shutdown it waits for them to leave their
    // VIPs as `on_exit` says.
    let reloader = tokio::spawn(reloader.run(hangup, reload_rx, shutdown.clone()));
    Ok(Tasks {
        prober,
        dispatcher,
        reloader,
        observed: observed_for_tasks,
    })
}

/// `/metrics`, `/status` and `/reload` on `addr` (if it can be bound: probing and failover go
/// on without), and where its reload requests arrive.
async fn start_endpoint(
    observed: &Observed,
    addr: Option<std::net::SocketAddr>,
    shutdown: &CancellationToken,
) -> (Endpoint, mpsc::Receiver<ReloadRequest>) {
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let mut endpoint = Endpoint::new(observed.clone(), reload_tx, shutdown.clone());
    if let Err(e) = endpoint.move_to(addr).await {
        error!(error = %format!("{e:#}"), "no metrics endpoint; probing and failover go on");
    }
    (endpoint, reload_rx)
}

/// The settings, the log level and everything checked before anything is set up: the
/// interface, our capabilities, the mail files (CA, credentials) and the targets.
async fn prepare(
    args: &RunArgs,
    log: &LogLevel,
    shutdown: &CancellationToken,
) -> Result<Plan, Failure> {
    let settings = load_settings(args)?;
    log.apply(&settings.log_level).map_err(Failure::Usage)?;
    let index = interface_index(&settings.iface)?;
    require_kernel()?;
    require_capabilities()?;
    // Before anything is set up: a refused VIP leaves nothing behind.
    refuse_own_addresses(&settings.iface, index, &settings.groups)
        .await
        .map_err(|e| match e {
            Ok(not_a_vip) => Failure::Usage(not_a_vip.into()),
            Err(e) => Failure::System(e),
        })?;
    let notifier =
        Notifier::start(settings.mail.clone(), shutdown.clone()).map_err(Failure::Usage)?;
    let monitored = monitored_hosts(&settings.monitor, settings.family).await?;
    // Room for every host: a cluster node may be left alone with all the targets.
    let capacity = reload_capacity(probed_hosts(&settings, &monitored).0.len());
    // A cluster node starts with none of the monitored targets: it probes its share once it
    // knows the members.
    let (hosts, roles) = match settings.cluster {
        Some(_) => probed_hosts(&settings, &[]),
        None => probed_hosts(&settings, &monitored),
    };
    Ok(Plan {
        settings,
        index,
        notifier,
        monitored,
        hosts,
        roles,
        capacity,
    })
}

/// A task for each failover group, and the routes to them.
fn start_groups(
    common: Common,
    wanted: &[Group],
    shutdown: &CancellationToken,
) -> Result<(Groups, watch::Receiver<Vec<Route>>), Failure> {
    let (mut groups, routes) = Groups::new(common, shutdown.clone());
    for group in wanted {
        groups.start(group).system()?;
    }
    Ok((groups, routes))
}

/// A task for each DNS pool, and the handles to them.
fn start_pools(
    notifier: &Notifier,
    observed: &Observed,
    wanted: &[PoolConfig],
    shutdown: &CancellationToken,
) -> (Pools, watch::Receiver<Vec<Arc<DnsPool>>>) {
    let (mut pools, handles) = Pools::new(notifier.clone(), observed.clone(), shutdown.clone());
    for pool in wanted {
        pools.start(pool, Start::default());
    }
    (pools, handles)
}

type ProbeResult = Result<anyhow::Result<Outcome>, tokio::task::JoinError>;

/// Waits for SIGINT or SIGTERM (or the prober to end on its own), then stops every task and
/// waits for the prober.
async fn wait_for_stop(
    mut prober: JoinHandle<anyhow::Result<Outcome>>,
    shutdown: &CancellationToken,
) -> Result<ProbeResult, Failure> {
    let mut sigterm = signal(SignalKind::terminate())
        .context("installing SIGTERM handler")
        .system()?;
    let stopped_early = tokio::select! {
        _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down"); None }
        _ = sigterm.recv() => { info!("SIGTERM: shutting down"); None }
        result = &mut prober => Some(result),
    };
    shutdown.cancel();
    Ok(match stopped_early {
        Some(result) => result,
        None => prober.await,
    })
}

/// How the prober ended, as `run`'s result.
fn outcome(result: ProbeResult) -> Result<(), Failure> {
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
