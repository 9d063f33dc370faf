//! Command-line definitions (clap). Every flag is optional here: the same settings may come
//! from `--config FILE`; `settings::Settings::resolve` merges and validates both.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;

#[derive(Debug, Parser)]
#[command(
    name = "xdprobe",
    version,
    about = "eBPF-accelerated ICMP health prober and virtual-IP failover daemon",
    long_about = "Probes hosts with ICMP echo, counts the replies in an XDP program, and takes \
                  over a virtual IP when the watched host misses two consecutive windows."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch a primary and take over its virtual IP when it goes down.
    Run(RunArgs),
}

#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML file with the same settings as the flags (flags win). See examples/xdprobe.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Interface that reaches the watched host: the XDP program attaches here, the VIP goes here.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,

    /// Address of the primary to watch.
    #[arg(long, value_name = "ADDR")]
    pub watch: Option<Ipv4Addr>,

    /// Virtual IP to take over, with its prefix length (e.g. 192.0.2.100/24).
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub vip: Option<Ipv4Net>,

    /// Label of the VIP alias [default: <iface>:1].
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,

    /// Length of a probe window, e.g. 100ms, 1s [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub window: Option<std::time::Duration>,

    /// Echo requests per host per window, spread evenly across it [default: 3].
    #[arg(long, value_name = "N")]
    pub probes: Option<u32>,

    /// Consecutive failed windows that make a host DOWN [default: 2].
    #[arg(long, value_name = "N")]
    pub failed_windows: Option<u32>,

    /// Consecutive good windows that make a DOWN host UP again [default: 2].
    #[arg(long, value_name = "N")]
    pub recover_windows: Option<u32>,

    /// E-mail address to notify of takeovers (needs --smtp and --from).
    #[arg(long, value_name = "EMAIL")]
    pub notify: Option<String>,

    /// SMTP relay for notifications, HOST:PORT (plain SMTP).
    #[arg(long, value_name = "HOST:PORT")]
    pub smtp: Option<String>,

    /// Sender address of notifications.
    #[arg(long, value_name = "EMAIL")]
    pub from: Option<String>,

    /// Turn on the XDP program's diagnostics (forwarded to this log); off costs nothing per packet.
    #[arg(long)]
    pub debug: bool,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 50ms, 1s)"))
}
