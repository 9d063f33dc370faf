//! Command-line definitions (clap). Every flag is optional here: the same settings may come
//! from `--config FILE`; `settings::Settings::resolve` merges and validates both.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::vips::Vips;

#[derive(Debug, Parser)]
#[command(
    name = "xdprobe",
    version = VERSION,
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
    Run(Box<RunArgs>),
    /// Watch many hosts and report their state changes and a summary, like fping.
    /// Exit codes: 0 all up, 1 some down, 2 bad usage, 3 system failure.
    Monitor(MonitorArgs),
    /// Validate a config file without touching the system and print the resolved plan.
    /// Exit 0 when it is valid, 2 otherwise (each error with file:line and field).
    Check(CheckArgs),
    /// Show a running daemon's hosts and groups (from its /status endpoint).
    Status(StatusArgs),
    /// Make a running daemon re-read its config, like SIGHUP, and print what it did.
    /// Exit 0 when applied, 2 when the daemon rejected the new config (it keeps running the old
    /// one), 3 when it cannot be reached.
    Reload(ReloadArgs),
    /// Print the man page (roff), generated from these definitions; used for packaging.
    #[command(hide = true)]
    Man,
    /// Print a shell's completion script, generated from these definitions; used for packaging.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `xdprobe --version`: the package version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("XDPROBE_COMMIT"),
    ")"
);

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's metrics address [default: 127.0.0.1:9641].
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9641")]
    pub address: String,

    /// Print the status as JSON, for scripts.
    #[arg(long, conflicts_with = "metrics")]
    pub json: bool,

    /// Print the raw Prometheus metrics instead.
    #[arg(long)]
    pub metrics: bool,

    /// Print the cluster's merged view (members, holders, every monitored target as the nodes
    /// probing it report it) as this node sees it in etcd.
    #[arg(long, conflicts_with_all = ["metrics", "json"])]
    pub cluster: bool,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The daemon's metrics address [default: 127.0.0.1:9641].
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9641")]
    pub address: String,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file [default: /etc/xdprobe/xdprobe.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Interface that reaches the targets (the XDP program attaches here).
    #[arg(long, value_name = "IFACE", required_unless_present = "cluster")]
    pub iface: Option<String>,

    /// Probe this node's share of the config's `monitor` targets as one node of its
    /// `[cluster]`, states written to etcd (`xdprobe status --cluster` shows them all). The
    /// config must have no failover group; everything else comes from it.
    #[arg(long, value_name = "CONFIG", conflicts_with_all = ["iface", "targets", "count", "json", "receive"])]
    pub cluster: Option<PathBuf>,

    #[command(flatten)]
    pub timing: TimingArgs,

    /// Stop after this many windows (default: run until Ctrl-C).
    #[arg(long, value_name = "WINDOWS")]
    pub count: Option<u32>,

    /// One JSON object per line: state changes, per-window summaries, the final summary.
    #[arg(long)]
    pub json: bool,

    /// Where replies are counted: in the XDP program, or on a socket in userspace (the
    /// baseline the benchmark compares against).
    #[arg(long, value_enum, default_value_t = Receive::Xdp)]
    pub receive: Receive,

    /// Turn on the XDP program's diagnostics.
    #[arg(long)]
    pub debug: bool,

    /// Only IPv4: names resolve to their A records, an IPv6 target is an error.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6: names resolve to their AAAA records, an IPv4 target is an error.
    #[arg(short = '6')]
    pub ipv6: bool,

    /// Addresses and CIDRs of either family (198.18.0.0/15, 2001:db8:1::/111: at most 131,072
    /// addresses an IPv6 network), hostnames (all their addresses), or @FILE (one target a
    /// line, # comments).
    #[arg(required_unless_present = "cluster", value_name = "TARGET")]
    pub targets: Vec<String>,
}

/// How often to probe and when a host changes state: the same flags for `run` and `monitor`.
#[derive(Debug, Default, Args)]
pub struct TimingArgs {
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

    /// Resend an unanswered probe once its reply is overdue, this many times (0 to 3)
    /// [default: 1]. Keeps random loss from failing windows.
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,

    /// How long after its send a reply still counts (like fping's -t), credited to the window
    /// its probe belonged to however late it arrives [default: the window].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

/// Where replies are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Receive {
    Xdp,
    Socket,
}

#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML file with the same settings as the flags (flags win). See examples/xdprobe.toml.
    /// Without it, /etc/xdprobe/xdprobe.toml is read if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Interface that reaches the watched host: the XDP program attaches here, the VIP goes here.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,

    /// Address of the primary to watch.
    #[arg(long, value_name = "ADDR")]
    pub watch: Option<IpAddr>,

    /// Virtual IP to take over, with its prefix length (e.g. 192.0.2.100/24 or
    /// 2001:db8::100/64), or one IPv4 and one IPv6 moved together, comma-separated.
    #[arg(long, value_name = "ADDR/PREFIX[,ADDR/PREFIX]")]
    pub vip: Option<Vips>,

    /// Label of the VIP alias [default: <iface>:1].
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,

    #[command(flatten)]
    pub timing: TimingArgs,

    /// E-mail address to notify of takeovers (needs --smtp and --from).
    #[arg(long, value_name = "EMAIL")]
    pub notify: Option<String>,

    /// SMTP relay for notifications, HOST:PORT (plain SMTP).
    #[arg(long, value_name = "HOST:PORT")]
    pub smtp: Option<String>,

    /// Sender address of notifications.
    #[arg(long, value_name = "EMAIL")]
    pub from: Option<String>,

    /// Another host to probe (typically the gateway); repeatable. If every witness is silent too
    /// when the primary goes down, we are the one cut off: the VIP is not taken.
    #[arg(long = "witness", value_name = "ADDR")]
    pub witnesses: Vec<IpAddr>,

    /// When the primary is back: `release` the VIP (and announce it for the primary) or `keep` it
    /// [default: release]. Either way the VIP is given up at once if another machine answers
    /// for it while we hold it (never two holders); with `keep` that is reported as a conflict.
    #[arg(long, value_name = "POLICY")]
    pub failback: Option<Failback>,

    /// What to do with a VIP we hold when xdprobe stops (SIGTERM/SIGINT): `keep` it, so a
    /// restart causes no outage, or `release` it [default: keep].
    #[arg(long, value_name = "POLICY")]
    pub on_exit: Option<OnExit>,

    /// Minimum time between taking the VIP and releasing it, against flapping [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub hold_down: Option<std::time::Duration>,

    /// Gratuitous ARP repeats after the first burst when the VIP is taken [default: 5].
    #[arg(long, value_name = "N")]
    pub garp_count: Option<u32>,

    /// Time between gratuitous ARP repeats [default: 200ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub garp_interval: Option<std::time::Duration>,

    /// Re-announce the VIP this often while holding it [default: off].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub garp_refresh: Option<std::time::Duration>,

    /// How long an RFC 5227 ARP probe waits for another holder of the VIP before it is taken;
    /// 0 turns the check off [default: half the window, at most 50ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conflict_wait: Option<std::time::Duration>,

    /// Command run (without a shell) when a probed host goes DOWN; gets the event facts as
    /// arguments and XDPROBE_* environment variables.
    #[arg(long, value_name = "CMD")]
    pub on_down: Option<String>,

    /// Command run when a probed host comes back UP.
    #[arg(long, value_name = "CMD")]
    pub on_up: Option<String>,

    /// Command run after the VIP was taken.
    #[arg(long, value_name = "CMD")]
    pub on_claim: Option<String>,

    /// Command run after the VIP was released.
    #[arg(long, value_name = "CMD")]
    pub on_release: Option<String>,

    /// Command run on cluster events: elected, lost_lease, fenced, handed_over.
    #[arg(long, value_name = "CMD")]
    pub on_cluster: Option<String>,

    /// Hooks still running after this are killed [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub hook_timeout: Option<std::time::Duration>,

    /// Require STARTTLS on the SMTP connection.
    #[arg(long)]
    pub smtp_starttls: bool,

    /// Extra CA certificate (PEM) to trust for STARTTLS.
    #[arg(long, value_name = "FILE")]
    pub smtp_ca: Option<PathBuf>,

    /// File with the SMTP username and password (never on the command line).
    #[arg(long, value_name = "FILE")]
    pub smtp_credentials: Option<PathBuf>,

    /// Notification rate limit, N/DURATION: up to N at once, N per DURATION after [default: 10/1h].
    #[arg(long, value_name = "N/DURATION")]
    pub mail_limit: Option<String>,

    /// Serve /metrics (Prometheus) and /status (JSON) on ADDR:PORT, or "off"
    /// [default: 127.0.0.1:9641].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,

    /// Turn on the XDP program's diagnostics (forwarded to this log); off costs nothing per packet.
    #[arg(long)]
    pub debug: bool,

    /// Only IPv4 for the `monitor` targets: names resolve to their A records, an IPv6 target is
    /// an error.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 for the `monitor` targets: names resolve to their AAAA records, an IPv4 target
    /// is an error.
    #[arg(short = '6')]
    pub ipv6: bool,
}

/// What to do with the VIP when the primary answers again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// Remove the VIP from the standby so the primary serves it again.
    #[default]
    Release,
    /// Keep the VIP on the standby and only report the primary's return.
    Keep,
}

/// What happens to a held VIP when xdprobe stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// Leave it on the interface: a restarted xdprobe adopts it.
    #[default]
    Keep,
    /// Remove it.
    Release,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 50ms, 1s)"))
}
