//! `xdprobe monitor`: probe many hosts, print their state changes as they happen and a summary
//! at the end (after `--count` windows, or on Ctrl-C / SIGTERM). Exit codes like fping.

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    cmd::report::{self, Format, StateLine},
    config::{
        family::Family,
        flags::{MonitorArgs, Receive, RunArgs},
        load::load_settings,
        timing::Timing,
    },
    failure::{Failure, OrSystem as _},
    model::events::{HostReport, Report},
    probe::{
        counters::{Counters, SocketCounters},
        hosts::Roles,
        prober::{Outcome, Prober},
        sender::Sender,
        stats::Summary,
        targets,
    },
    service::{
        daemon,
        logging::LogLevel,
        startup::{attach_xdp, interface_index, require_capabilities, require_kernel},
    },
};

/// `xdprobe monitor --cluster CONFIG`: this node's share of the config's monitored targets,
/// as a cluster node without failover groups (the daemon, with that config).
pub async fn cluster(config: PathBuf, log: LogLevel) -> Result<u8, Failure> {
    let args = RunArgs {
        config: Some(config.clone()),
        ..RunArgs::default()
    };
    let settings = load_settings(&args)?;
    let refuse = |why: &str| {
        Err(Failure::Usage(anyhow::anyhow!(
            "{}: {why}",
            config.display()
        )))
    };
    if settings.cluster.is_none() {
        return refuse(
            "no [cluster] table: monitor --cluster shares the targets among the nodes of a cluster",
        );
    }
    if settings.monitor.is_empty() {
        return refuse("no `monitor` targets to share");
    }
    if !settings.groups.is_empty() {
        return refuse("it has failover groups: run it with `xdprobe run --config`, which also shares the monitored targets");
    }
    daemon::run(args, log).await.map(|()| 0)
}

pub async fn monitor(args: MonitorArgs) -> Result<u8, Failure> {
    let iface = args
        .iface
        .clone()
        .ok_or_else(|| Failure::Usage(anyhow::anyhow!("--iface is needed")))?;
    let timing = Timing::for_monitor(&args).map_err(|e| Failure::Usage(e.into()))?;
    // The targets are read (not resolved) before the system is asked anything, so a bad target
    // file is a usage error for anyone, as in `check`.
    let family = Family::from_flags(args.ipv4, args.ipv6);
    let parsed = targets::parse_args_in(&args.targets, family, targets::open_file)
        .map_err(|e| Failure::Usage(e.into()))?;
    interface_index(&iface)?;
    require_kernel()?;
    require_capabilities()?;
    let hosts = targets::resolve(parsed, probe_common::maps::MAX_HOSTS as usize)
        .await
        .map_err(|e| Failure::Usage(e.into()))?;
    let host_count = hosts.len() as u64;
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };

    let counters: Box<dyn Counters> = match args.receive {
        Receive::Xdp => Box::new(attach_xdp(&hosts, hosts.len(), false, &iface, args.debug)?),
        Receive::Socket => Box::new(SocketCounters::start(&iface, &hosts).system()?),
    };
    // The maps' kernel memory is fixed once they exist (and gone once the prober ends).
    let map_kib = bpf_map_kib();
    let sender = Sender::open(&iface).system()?;
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let prober = Prober::new(
        hosts,
        Roles::default(),
        counters,
        sender,
        timing,
        std::time::Duration::ZERO,
        reports_tx,
    )
    .stop_after(args.count);
    let shutdown = CancellationToken::new();
    let mut prober = tokio::spawn(prober.run(shutdown.clone()));
    let printer = tokio::spawn(print(reports_rx, format));

    let mut sigterm = signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")
        .system()?;
    let done = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm.recv() => None,
        done = &mut prober => Some(done),
    };
    shutdown.cancel();
    let done = match done {
        Some(done) => done,
        None => prober.await,
    };
    let outcome = done
        .map_err(|join| anyhow::anyhow!("probe task died: {join}"))
        .and_then(|r| r)
        .system()?;
    // The prober is gone, so is the report sender: the printer drains and ends.
    printer
        .await
        .map_err(|join| anyhow::anyhow!("output task died: {join}"))
        .and_then(|r| r.context("writing to stdout"))
        .system()?;

    let summary = summarize(&outcome, host_count, map_kib);
    let mut out = std::io::stdout().lock();
    report::write_summary(&mut out, format, &summary)
        .and_then(|()| out.flush())
        .context("writing the summary")
        .system()?;
    Ok(report::exit_code(&summary))
}

/// Prints state changes (and, in JSON, per-window lines) as they come.
async fn print(
    mut reports: mpsc::UnboundedReceiver<Report>,
    format: Format,
) -> std::io::Result<()> {
    while let Some(report) = reports.recv().await {
        let mut out = std::io::stdout().lock();
        match report {
            Report::Host(HostReport::Changed(event)) => {
                report::write_state(
                    &mut out,
                    format,
                    &StateLine {
                        host: event.host,
                        from: event.change.from,
                        to: event.change.to,
                        window: event.window,
                        at: event.at,
                        rtt_us: event.rtt.map(|rtt| rtt.as_micros() as u64),
                    },
                )?;
            }
            Report::Window(counts) => report::write_window(&mut out, format, &counts)?,
            Report::Host(_) => {}
        }
        out.flush()?;
    }
    Ok(())
}

fn summarize(outcome: &Outcome, hosts: u64, map_kib: Option<u64>) -> Summary {
    let [unknown, up, down] = outcome.states;
    let mut summary =
        outcome
            .stats
            .summary(hosts, up, down, unknown, outcome.windows, outcome.rtt_known);
    summary.peak_rss_kib = proc_kib("/proc/self/status", "VmHWM:");
    summary.map_kib = map_kib;
    summary
}

/// A `kB` field of a /proc status file.
fn proc_kib(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_kib(&text, field)
}

fn parse_kib(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Kernel memory of our BPF maps: the `memlock` of every map fd we hold.
fn bpf_map_kib() -> Option<u64> {
    let mut bytes = 0u64;
    let mut maps = 0;
    for entry in std::fs::read_dir("/proc/self/fdinfo").ok()?.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(memlock) = map_memlock(&info) {
            bytes += memlock;
            maps += 1;
        }
    }
    (maps > 0).then_some(bytes / 1024)
}

/// The `memlock` bytes of a BPF map's fdinfo; `None` for any other kind of fd.
fn map_memlock(fdinfo: &str) -> Option<u64> {
    if !fdinfo.lines().any(|l| l.starts_with("map_type:")) {
        return None;
    }
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_in_kib() {
        let status = "Name:\txdprobe\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn map_memory_comes_from_map_fdinfo_only() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t2\n\
                   key_size:\t4\nvalue_size:\t16\nmax_entries:\t131072\nmap_flags:\t0x400\n\
                   memlock:\t2101248\n";
        assert_eq!(map_memlock(map), Some(2_101_248));
        assert_eq!(map_memlock("pos:\t0\nflags:\t02\nmnt_id:\t15\n"), None);
    }
}
