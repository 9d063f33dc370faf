//! `xdprobe`: probes hosts with ICMP echo, counts the replies in XDP, and takes over a virtual
//! IP when the watched host goes DOWN.
//!
//! Exit codes: 0 clean stop, 2 bad usage or config, 3 system failure.

mod arp;
mod cli;
mod clock;
mod counters;
mod events;
mod failover;
mod failure;
mod health;
mod hooks;
mod mail;
mod monitor;
mod prober;
mod report;
mod sender;
mod settings;
mod targets;
mod vip;
mod xdp;

use std::{ffi::CString, net::Ipv4Addr, path::Path, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{
    arp::ArpSocket,
    cli::{Cli, Command, RunArgs},
    events::Site,
    failover::Failover,
    failure::{Failure, OrSystem as _},
    mail::Notifier,
    prober::{Prober, Roles},
    sender::Sender,
    settings::{FileConfig, Settings},
    vip::Vip,
    xdp::{AttachMode, XdpProbe},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xdprobe: error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args).await.map(|()| 0),
            Command::Monitor(args) => monitor::monitor(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(e)) => {
            eprintln!("xdprobe: error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::System(e)) => {
            eprintln!("xdprobe: error: {e:#}{}", permission_hint(&e));
            ExitCode::from(3)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn permission_hint(e: &anyhow::Error) -> &'static str {
    let denied = e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            || cause.to_string().contains("Operation not permitted")
    });
    if denied {
        " (xdprobe needs root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_NET_RAW)"
    } else {
        ""
    }
}

fn load_settings(args: &RunArgs) -> Result<Settings, Failure> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))
                .map_err(Failure::Usage)?;
            FileConfig::parse(path, &text).map_err(|e| Failure::Usage(e.into()))?
        }
        None => FileConfig::default(),
    };
    Settings::resolve(args, file).map_err(|e| Failure::Usage(e.into()))
}

pub(crate) fn interface_index(iface: &str) -> Result<u32, Failure> {
    let name = CString::new(iface)
        .map_err(|_| Failure::Usage(anyhow::anyhow!("invalid `iface`: {iface:?}")))?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(Failure::Usage(anyhow::anyhow!(
            "invalid `iface`: no interface named {iface:?}"
        )));
    }
    Ok(index)
}

fn node_name() -> String {
    std::fs::read_to_string(Path::new("/proc/sys/kernel/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "this host".into())
}

/// Loads the XDP program for `hosts` (sorted) and attaches it to `iface`.
pub(crate) fn attach_xdp(
    hosts: &[Ipv4Addr],
    iface: &str,
    debug: bool,
) -> Result<XdpProbe, Failure> {
    let mut xdp = XdpProbe::load(hosts, debug).system()?;
    if debug {
        xdp.spawn_log_forwarder().system()?;
    }
    let mode = xdp.attach(iface).system()?;
    info!(
        %iface,
        mode = if mode == AttachMode::Native { "native" } else { "generic" },
        "XDP program attached"
    );
    Ok(xdp)
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    let settings = load_settings(&args)?;
    let index = interface_index(&settings.iface)?;
    // Mail files (CA, credentials) are checked before anything is set up.
    let shutdown = CancellationToken::new();
    let notifier =
        Notifier::start(settings.mail.clone(), shutdown.clone()).map_err(Failure::Usage)?;
    let mut hosts: Vec<Ipv4Addr> = std::iter::once(settings.watch)
        .chain(settings.failover.witnesses.iter().copied())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let roles = Roles::find(&hosts, settings.watch, &settings.failover.witnesses);

    // Everything set up below is undone by drop (the XDP link) if a later step fails.
    let xdp = attach_xdp(&hosts, &settings.iface, settings.debug)?;
    let sender = Sender::open(&settings.iface).system()?;
    let arp = ArpSocket::open(&settings.iface).system()?;
    let vip = Vip::new(index, settings.vip, settings.label.clone()).system()?;

    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let failover = Failover {
        watch: settings.watch,
        site: Site {
            vip: settings.vip.to_string(),
            iface: settings.iface.clone(),
            label: settings.label.clone(),
            node: node_name(),
        },
        vip,
        arp: Arc::new(arp),
        notifier,
        hooks: settings.hooks.clone(),
        settings: settings.failover.clone(),
        timing: settings.timing,
    };
    let failover = tokio::spawn(failover.run(reports_rx, shutdown.clone()));
    let prober = Prober::new(
        hosts,
        roles,
        Box::new(xdp),
        sender,
        settings.timing,
        settings.failover.conflict_wait,
        reports_tx,
    )
    .log_changes();
    let mut prober = tokio::spawn(prober.run(shutdown.clone()));
    info!(
        watch = %settings.watch,
        witnesses = ?settings.failover.witnesses,
        vip = %settings.vip,
        label = %settings.label,
        "xdprobe running"
    );

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
    let _ = failover.await;
    match result {
        Ok(Ok(_)) => {
            info!("stopped cleanly");
            Ok(())
        }
        Ok(Err(e)) => {
            error!(error = %format!("{e:#}"), "probing failed");
            Err(Failure::System(e))
        }
        Err(join) => Err(Failure::System(anyhow::anyhow!("probe task died: {join}"))),
    }
}
