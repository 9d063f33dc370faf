//! Resolved, validated settings: the config file merged under the flags.
//!
//! Pure code: no I/O besides reading the config file's text, so every rule is unit-tested.

use std::{borrow::Cow, net::Ipv4Addr, path::Path, time::Duration};

use ipnet::Ipv4Net;
use lettre::message::Mailbox;
use serde::Deserialize;

use crate::{
    config::flags::{Failback, OnExit, RunArgs},
    act::hooks::{Hook, Hooks},
    act::mail::RateLimit,
};

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
pub const DEFAULT_PROBES: u32 = 3;
pub const DEFAULT_FAILED_WINDOWS: u32 = 2;
pub const DEFAULT_RECOVER_WINDOWS: u32 = 2;
pub const DEFAULT_RETRIES: u32 = 1;
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(10);
pub const DEFAULT_GARP_COUNT: u32 = 5;
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(200);
pub const DEFAULT_CONFLICT_WAIT: Duration = Duration::from_millis(50);
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Loopback only by default: the endpoint has no authentication.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9641";
const MIN_WINDOW: Duration = Duration::from_millis(10);
const MAX_WINDOW: Duration = Duration::from_secs(3600);
const MIN_ROUND: Duration = Duration::from_millis(1);
const IFNAMSIZ: usize = 16;

/// A setting that is missing or wrong; `field` is the config key (the flag is `--field`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("missing `{field}`: give --{flag} or set `{field}` in the config file", flag = .field.replace('_', "-"))]
    Missing { field: Cow<'static, str> },
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        field: Cow<'static, str>,
        reason: String,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

/// The config file: the same keys as the flags (`failed_windows` for `--failed-windows`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub iface: Option<String>,
    pub watch: Option<Ipv4Addr>,
    pub vip: Option<Ipv4Net>,
    pub label: Option<String>,
    /// More failover groups, each `[[group]]` with its own watch, vip and label.
    pub group: Option<Vec<GroupFile>>,
    /// Plain monitored targets (addresses, CIDRs, names, @FILEs): probed and reported, no VIP.
    pub monitor: Option<Vec<String>>,
    /// DNS round-robin pools kept in step with their members' health.
    pub dns: Option<Vec<crate::act::dns::DnsFileConfig>>,
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    pub probes: Option<u32>,
    pub failed_windows: Option<u32>,
    pub recover_windows: Option<u32>,
    pub retries: Option<u32>,
    pub witness: Option<Vec<Ipv4Addr>>,
    pub failback: Option<Failback>,
    pub on_exit: Option<OnExit>,
    #[serde(default, with = "humantime_serde")]
    pub hold_down: Option<Duration>,
    pub garp_count: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub garp_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub garp_refresh: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub conflict_wait: Option<Duration>,
    pub on_down: Option<String>,
    pub on_up: Option<String>,
    pub on_claim: Option<String>,
    pub on_release: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub hook_timeout: Option<Duration>,
    pub notify: Option<String>,
    pub smtp: Option<String>,
    pub from: Option<String>,
    pub smtp_starttls: Option<bool>,
    pub smtp_ca: Option<std::path::PathBuf>,
    pub smtp_credentials: Option<std::path::PathBuf>,
    pub mail_limit: Option<String>,
    pub debug: Option<bool>,
    /// Where to serve /metrics and /status: ADDR:PORT, or "off".
    pub metrics: Option<String>,
    /// What to log: a level (`info`) or `RUST_LOG`-style directives; `RUST_LOG` wins if set.
    pub log_level: Option<String>,
}

/// One `[[group]]` of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub watch: Option<Ipv4Addr>,
    pub vip: Option<Ipv4Net>,
    pub label: Option<String>,
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::File {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

/// The default config file, read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/xdprobe/xdprobe.toml";

/// The 1-based line of the config `text` where `field` is set: a top-level key (`window`), or
/// a key of the n-th `[[table]]` (`group[1].vip`, `dns[0].members`). `None` if the file does
/// not set it (the value came from a flag or a default).
pub fn locate(text: &str, field: &str) -> Option<usize> {
    let (table, index, key) = match field.split_once("].") {
        Some((head, key)) => {
            let (table, index) = head.split_once('[')?;
            (Some(table), index.parse::<usize>().ok()?, key)
        }
        None => (None, 0, field),
    };
    let mut section: Option<(&str, usize)> = None;
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim();
            let count = seen.entry(name).or_insert(0);
            section = Some((name, *count));
            *count += 1;
            continue;
        }
        if line.starts_with('[') {
            section = Some(("", usize::MAX));
            continue;
        }
        let here = match (table, section) {
            (None, None) => true,
            (Some(t), Some((name, i))) => t == name && i == index,
            _ => false,
        };
        let is_key = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if here && is_key {
            return Some(n + 1);
        }
    }
    None
}

impl SettingsError {
    /// The error as the user should read it: with `path:line:` when the field is set in the
    /// config file `text`.
    pub fn in_file(&self, path: &Path, text: &str) -> String {
        let line = match self {
            SettingsError::Invalid { field, .. } | SettingsError::Missing { field } => {
                locate(text, field)
            }
            SettingsError::File { .. } => None,
        };
        match line {
            Some(line) => format!("{}:{line}: {self}", path.display()),
            None => self.to_string(),
        }
    }
}

/// Where and how to send notification e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSettings {
    pub to: Mailbox,
    pub from: Mailbox,
    pub smtp_host: String,
    pub smtp_port: u16,
    /// Upgrade the connection with STARTTLS (required when set).
    pub starttls: bool,
    /// Extra CA certificate (PEM) to trust for STARTTLS, besides the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// File holding the SMTP username and password (never given on the command line).
    pub credentials: Option<std::path::PathBuf>,
    /// How many notices may be sent, and how fast the allowance refills.
    pub limit: crate::act::mail::RateLimit,
}

/// How often to probe and when to change a host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub window: Duration,
    pub probes: u32,
    pub failed_windows: u32,
    pub recover_windows: u32,
    /// Resends of an unanswered probe within its round.
    pub retries: u32,
}

/// Gratuitous ARP when the VIP is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garp {
    /// Repeats after the first announcement.
    pub count: u32,
    pub interval: Duration,
    /// Re-announce while holding, if set.
    pub refresh: Option<Duration>,
}

/// A primary to watch and the VIP to take over when it is DOWN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub watch: Ipv4Addr,
    pub vip: Ipv4Net,
    pub label: String,
}

/// How the standby decides to take and give back the VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSettings {
    pub witnesses: Vec<Ipv4Addr>,
    pub failback: Failback,
    pub on_exit: OnExit,
    pub hold_down: Duration,
    pub garp: Garp,
    /// Zero: no ARP conflict check before taking the VIP.
    pub conflict_wait: Duration,
}

impl Timing {
    /// Time between two probe rounds.
    pub fn round(&self) -> Duration {
        self.window / self.probes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub iface: String,
    /// Failover groups: each watches one primary and takes over its VIP.
    pub groups: Vec<Group>,
    /// Plain monitored targets, unresolved (see `targets`).
    pub monitor: Vec<String>,
    /// DNS pools, secrets loaded.
    pub dns: Vec<crate::act::dns::PoolConfig>,
    pub timing: Timing,
    pub failover: FailoverSettings,
    pub hooks: Hooks,
    pub mail: Option<MailSettings>,
    pub debug: bool,
    /// Where to serve /metrics and /status (`None`: off).
    pub metrics: Option<std::net::SocketAddr>,
    /// Log filter directives (checked), e.g. `info` or `warn,xdprobe::hooks=debug`.
    pub log_level: String,
}

impl Settings {
    /// Merges `file` under `args` (flags win) and validates the result.
    pub fn resolve(args: &RunArgs, file: FileConfig) -> Result<Self, SettingsError> {
        use SettingsError::{Invalid, Missing};

        let iface = args.iface.clone().or(file.iface).ok_or(Missing {
            field: "iface".into(),
        })?;
        if iface.is_empty() || iface.len() >= IFNAMSIZ || iface.contains(['/', ' ', ':']) {
            return Err(Invalid {
                field: "iface".into(),
                reason: format!("{iface:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"),
            });
        }
        // The flags (or the file's top-level keys) make the first group; [[group]] tables more.
        let mut specs: Vec<(String, GroupFile)> = Vec::new();
        let (watch, vip, label) = (
            args.watch.or(file.watch),
            args.vip.or(file.vip),
            args.label.clone().or(file.label),
        );
        if watch.is_some() || vip.is_some() || label.is_some() {
            specs.push((String::new(), GroupFile { watch, vip, label }));
        }
        for (i, g) in file.group.unwrap_or_default().into_iter().enumerate() {
            specs.push((format!("group[{i}]."), g));
        }
        let monitor = file.monitor.unwrap_or_default();
        let dns = file
            .dns
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, pool)| {
                crate::act::dns::PoolConfig::resolve(i, pool).map_err(|(field, reason)| Invalid {
                    field: field.into(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if specs.is_empty() && monitor.is_empty() && dns.is_empty() {
            return Err(Missing {
                field: "watch".into(),
            });
        }
        let mut groups: Vec<Group> = Vec::with_capacity(specs.len());
        for (n, (prefix, spec)) in specs.into_iter().enumerate() {
            let group = resolve_group(&iface, n + 1, &prefix, spec)?;
            if let Some(other) = groups.iter().find(|g| {
                // The same VIP or label twice, or one group's VIP the other's primary.
                g.vip.addr() == group.vip.addr()
                    || g.label == group.label
                    || g.watch == group.vip.addr()
                    || group.watch == g.vip.addr()
            }) {
                return Err(Invalid {
                    field: format!("{prefix}vip").into(),
                    reason: format!(
                        "{} ({}) clashes with the group watching {} ({} {})",
                        group.vip, group.label, other.watch, other.vip, other.label
                    ),
                });
            }
            groups.push(group);
        }

        let timing = Timing {
            window: args.timing.window.or(file.window).unwrap_or(DEFAULT_WINDOW),
            probes: args.timing.probes.or(file.probes).unwrap_or(DEFAULT_PROBES),
            failed_windows: args
                .timing
                .failed_windows
                .or(file.failed_windows)
                .unwrap_or(DEFAULT_FAILED_WINDOWS),
            recover_windows: args
                .timing
                .recover_windows
                .or(file.recover_windows)
                .unwrap_or(DEFAULT_RECOVER_WINDOWS),
            retries: args
                .timing
                .retries
                .or(file.retries)
                .unwrap_or(DEFAULT_RETRIES),
        };
        validate_timing(&timing)?;

        let witnesses = if args.witnesses.is_empty() {
            file.witness.unwrap_or_default()
        } else {
            args.witnesses.clone()
        };
        for w in &witnesses {
            if groups.iter().any(|g| *w == g.watch || *w == g.vip.addr())
                || w.is_unspecified()
                || w.is_multicast()
                || w.is_broadcast()
            {
                return Err(Invalid {
                    field: "witness".into(),
                    reason: format!(
                        "{w} must be a unicast host other than the watched host and the VIP"
                    ),
                });
            }
        }
        let failover = FailoverSettings {
            witnesses,
            failback: args.failback.or(file.failback).unwrap_or_default(),
            on_exit: args.on_exit.or(file.on_exit).unwrap_or_default(),
            hold_down: bounded(
                "hold_down",
                args.hold_down.or(file.hold_down),
                DEFAULT_HOLD_DOWN,
                Duration::ZERO,
                Duration::from_secs(86_400),
            )?,
            garp: Garp {
                count: args
                    .garp_count
                    .or(file.garp_count)
                    .unwrap_or(DEFAULT_GARP_COUNT),
                interval: bounded(
                    "garp_interval",
                    args.garp_interval.or(file.garp_interval),
                    DEFAULT_GARP_INTERVAL,
                    Duration::from_millis(10),
                    Duration::from_secs(60),
                )?,
                refresh: args
                    .garp_refresh
                    .or(file.garp_refresh)
                    .filter(|d| !d.is_zero())
                    .map(|d| {
                        bounded(
                            "garp_refresh",
                            Some(d),
                            d,
                            Duration::from_millis(100),
                            Duration::from_secs(86_400),
                        )
                    })
                    .transpose()?,
            },
            conflict_wait: bounded(
                "conflict_wait",
                args.conflict_wait.or(file.conflict_wait),
                DEFAULT_CONFLICT_WAIT,
                Duration::ZERO,
                Duration::from_secs(1),
            )?,
        };
        if failover.garp.count > 100 {
            return Err(Invalid {
                field: "garp_count".into(),
                reason: format!("{} is out of range (0 to 100)", failover.garp.count),
            });
        }

        let hook = |field: &'static str, flag: &Option<String>, file: Option<String>| {
            flag.clone()
                .or(file)
                .map(|cmd| {
                    Hook::parse(&cmd).map_err(|reason| Invalid {
                        field: field.into(),
                        reason,
                    })
                })
                .transpose()
        };
        let hooks = Hooks {
            on_down: hook("on_down", &args.on_down, file.on_down)?,
            on_up: hook("on_up", &args.on_up, file.on_up)?,
            on_claim: hook("on_claim", &args.on_claim, file.on_claim)?,
            on_release: hook("on_release", &args.on_release, file.on_release)?,
            timeout: bounded(
                "hook_timeout",
                args.hook_timeout.or(file.hook_timeout),
                DEFAULT_HOOK_TIMEOUT,
                Duration::from_millis(10),
                Duration::from_secs(3600),
            )?,
        };

        let mut mail = resolve_mail(
            args.notify.clone().or(file.notify),
            args.smtp.clone().or(file.smtp),
            args.from.clone().or(file.from),
        )?;
        let tls_and_limit = [
            (
                "smtp_starttls",
                args.smtp_starttls || file.smtp_starttls.unwrap_or(false),
            ),
            ("smtp_ca", args.smtp_ca.is_some() || file.smtp_ca.is_some()),
            (
                "smtp_credentials",
                args.smtp_credentials.is_some() || file.smtp_credentials.is_some(),
            ),
            (
                "mail_limit",
                args.mail_limit.is_some() || file.mail_limit.is_some(),
            ),
        ];
        match &mut mail {
            None => {
                if let Some((field, _)) = tls_and_limit.iter().find(|(_, given)| *given) {
                    return Err(Invalid {
                        field: (*field).into(),
                        reason: "only makes sense with `notify`".into(),
                    });
                }
            }
            Some(m) => {
                m.starttls = args.smtp_starttls || file.smtp_starttls.unwrap_or(false);
                m.ca = args.smtp_ca.clone().or(file.smtp_ca);
                m.credentials = args.smtp_credentials.clone().or(file.smtp_credentials);
                if let Some(limit) = args.mail_limit.clone().or(file.mail_limit) {
                    m.limit = limit.parse::<RateLimit>().map_err(|reason| Invalid {
                        field: "mail_limit".into(),
                        reason,
                    })?;
                }
            }
        }

        Ok(Settings {
            iface,
            groups,
            monitor,
            dns,
            timing,
            failover,
            hooks,
            mail,
            debug: args.debug || file.debug.unwrap_or(false),
            metrics: resolve_metrics(args.metrics.clone().or(file.metrics))?,
            log_level: resolve_log_level(file.log_level)?,
        })
    }
}

/// The default log level of `run`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Log filter directives, checked now so that a typo is a config error, not a silent default.
/// A bare word must be a level: `EnvFilter` would take `loud` for a target name.
fn resolve_log_level(value: Option<String>) -> Result<String, SettingsError> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let value = value.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
    let bare_words_are_levels = value.split(',').all(|directive| {
        directive.contains('=') || LEVELS.contains(&directive.trim().to_ascii_lowercase().as_str())
    });
    let parses = tracing_subscriber::EnvFilter::builder()
        .parse(&value)
        .is_ok();
    if bare_words_are_levels && parses {
        return Ok(value);
    }
    Err(SettingsError::Invalid {
        field: "log_level".into(),
        reason: format!(
            "{value:?} is not a log level (error, warn, info, debug, trace) or a list of \
             directives like \"info,xdprobe::hooks=debug\""
        ),
    })
}

/// `ADDR:PORT` to serve on, or "off".
fn resolve_metrics(value: Option<String>) -> Result<Option<std::net::SocketAddr>, SettingsError> {
    let value = value.unwrap_or_else(|| DEFAULT_METRICS.to_string());
    if value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| SettingsError::Invalid {
        field: "metrics".into(),
        reason: format!("{value:?} is not ADDR:PORT (e.g. 127.0.0.1:9641) or \"off\""),
    })
}

/// One failover group: `prefix` names where it came from in errors (`group[2].`), `n` numbers
/// its default label (`<iface>:n`).
fn resolve_group(
    iface: &str,
    n: usize,
    prefix: &str,
    spec: GroupFile,
) -> Result<Group, SettingsError> {
    use SettingsError::{Invalid, Missing};
    let field = |name: &str| -> Cow<'static, str> { format!("{prefix}{name}").into() };
    let watch = spec.watch.ok_or(Missing {
        field: field("watch"),
    })?;
    if watch.is_unspecified() || watch.is_broadcast() || watch.is_multicast() {
        return Err(Invalid {
            field: field("watch"),
            reason: format!("{watch} is not a unicast host address"),
        });
    }
    let vip = spec.vip.ok_or(Missing {
        field: field("vip"),
    })?;
    if vip.addr() == watch {
        return Err(Invalid {
            field: field("vip"),
            reason: format!(
                "{} is the watched host's own address; the VIP must be another address",
                vip.addr()
            ),
        });
    }
    if vip.addr().is_unspecified() || vip.addr().is_multicast() || vip.addr().is_broadcast() {
        return Err(Invalid {
            field: field("vip"),
            reason: format!("{} is not a unicast address", vip.addr()),
        });
    }
    let label = spec.label.unwrap_or_else(|| format!("{iface}:{n}"));
    if !label.starts_with(iface) || label.len() >= IFNAMSIZ {
        return Err(Invalid {
            field: field("label"),
            reason: format!("{label:?} must start with the interface name {iface:?} and be at most 15 characters"),
        });
    }
    Ok(Group { watch, vip, label })
}

/// `value` (or `default`) if within `min..=max`, else an error naming `field`.
fn bounded(
    field: &'static str,
    value: Option<Duration>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, SettingsError> {
    let d = value.unwrap_or(default);
    if d < min || d > max {
        return Err(SettingsError::Invalid {
            field: field.into(),
            reason: format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        });
    }
    Ok(d)
}

/// The timing of `xdprobe monitor`, from its flags.
pub fn monitor_timing(args: &crate::config::flags::MonitorArgs) -> Result<Timing, SettingsError> {
    let timing = Timing {
        window: args.timing.window.unwrap_or(DEFAULT_WINDOW),
        probes: args.timing.probes.unwrap_or(DEFAULT_PROBES),
        failed_windows: args.timing.failed_windows.unwrap_or(DEFAULT_FAILED_WINDOWS),
        recover_windows: args
            .timing
            .recover_windows
            .unwrap_or(DEFAULT_RECOVER_WINDOWS),
        retries: args.timing.retries.unwrap_or(DEFAULT_RETRIES),
    };
    validate_timing(&timing)?;
    if args.count == Some(0) {
        return Err(SettingsError::Invalid {
            field: "count".into(),
            reason: "0 windows: nothing to do".into(),
        });
    }
    Ok(timing)
}

fn validate_timing(t: &Timing) -> Result<(), SettingsError> {
    use SettingsError::Invalid;
    if t.window < MIN_WINDOW || t.window > MAX_WINDOW {
        return Err(Invalid {
            field: "window".into(),
            reason: format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(t.window),
                humantime::format_duration(MIN_WINDOW),
                humantime::format_duration(MAX_WINDOW)
            ),
        });
    }
    if !(1..=1000).contains(&t.probes) {
        return Err(Invalid {
            field: "probes".into(),
            reason: format!("{} is out of range (1 to 1000)", t.probes),
        });
    }
    if t.round() < MIN_ROUND {
        return Err(Invalid {
            field: "probes".into(),
            reason: format!(
                "{} probes in a {} window leave less than 1ms between probes",
                t.probes,
                humantime::format_duration(t.window)
            ),
        });
    }
    if t.recover_windows.saturating_mul(t.probes) > crate::model::health::MAX_RECOVERY_ROUNDS {
        return Err(Invalid {
            field: "recover_windows".into(),
            reason: format!(
                "{} windows of {} probes look back more than {} rounds",
                t.recover_windows,
                t.probes,
                crate::model::health::MAX_RECOVERY_ROUNDS
            ),
        });
    }
    if t.retries > 3 {
        return Err(Invalid {
            field: "retries".into(),
            reason: format!("{} is out of range (0 to 3)", t.retries),
        });
    }
    for (field, n) in [
        ("failed_windows", t.failed_windows),
        ("recover_windows", t.recover_windows),
    ] {
        if !(1..=1000).contains(&n) {
            return Err(Invalid {
                field: field.into(),
                reason: format!("{n} is out of range (1 to 1000)"),
            });
        }
    }
    Ok(())
}

fn resolve_mail(
    notify: Option<String>,
    smtp: Option<String>,
    from: Option<String>,
) -> Result<Option<MailSettings>, SettingsError> {
    use SettingsError::{Invalid, Missing};
    let Some(to) = notify else {
        for (field, value) in [("smtp", &smtp), ("from", &from)] {
            if value.is_some() {
                return Err(Invalid {
                    field: field.into(),
                    reason: "only makes sense with `notify`".into(),
                });
            }
        }
        return Ok(None);
    };
    let smtp = smtp.ok_or(Missing {
        field: "smtp".into(),
    })?;
    let from = from.ok_or(Missing {
        field: "from".into(),
    })?;
    let mailbox = |field: &'static str, s: &str| {
        s.parse::<Mailbox>().map_err(|e| Invalid {
            field: field.into(),
            reason: format!("{s:?} is not an e-mail address ({e})"),
        })
    };
    let (host, port) = smtp
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| Invalid {
            field: "smtp".into(),
            reason: format!("{smtp:?} is not HOST:PORT"),
        })?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Invalid {
            field: "smtp".into(),
            reason: format!("{port:?} is not a port number (1 to 65535)"),
        })?;
    Ok(Some(MailSettings {
        to: mailbox("notify", &to)?,
        from: mailbox("from", &from)?,
        smtp_host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        smtp_port: port,
        starttls: false,
        ca: None,
        credentials: None,
        limit: crate::act::mail::RateLimit::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            iface: Some("eth0".into()),
            watch: Some("192.0.2.1".parse().unwrap()),
            vip: Some("192.0.2.100/24".parse().unwrap()),
            ..RunArgs::default()
        }
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(Path::new("test.toml"), text).unwrap()
    }

    /// An edit of the flags and the field whose error it must cause.
    type Case = (fn(&mut RunArgs), &'static str);

    fn invalid_field(r: Result<Settings, SettingsError>) -> String {
        match r {
            Err(SettingsError::Invalid { field, .. }) | Err(SettingsError::Missing { field }) => {
                field.into_owned()
            }
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let s = Settings::resolve(&args(), FileConfig::default()).unwrap();
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].label, "eth0:1");
        assert_eq!(
            s.timing,
            Timing {
                window: Duration::from_secs(1),
                probes: 3,
                failed_windows: 2,
                recover_windows: 2,
                retries: 1,
            }
        );
        assert_eq!(
            s.failover,
            FailoverSettings {
                witnesses: vec![],
                failback: Failback::Release,
                on_exit: OnExit::Keep,
                hold_down: Duration::from_secs(10),
                garp: Garp {
                    count: 5,
                    interval: Duration::from_millis(200),
                    refresh: None
                },
                conflict_wait: Duration::from_millis(50),
            }
        );
        assert_eq!(s.hooks.timeout, Duration::from_secs(10));
        assert!(s.hooks.on_claim.is_none());
        assert_eq!(s.mail, None);
        assert!(!s.debug);
    }

    #[test]
    fn flags_override_the_file() {
        let f = file("iface = \"eth9\"\nwindow = \"250ms\"\nprobes = 5\ndebug = true\n");
        let mut a = args();
        a.timing.window = Some(Duration::from_millis(100));
        let s = Settings::resolve(&a, f).unwrap();
        assert_eq!(s.iface, "eth0");
        assert_eq!(s.timing.window, Duration::from_millis(100));
        assert_eq!(s.timing.probes, 5);
        assert!(s.debug);
    }

    #[test]
    fn a_file_alone_is_enough() {
        let f = file(
            r#"
            iface = "eth1"
            watch = "198.51.100.7"
            vip = "198.51.100.200/25"
            label = "eth1:vip"
            window = "50ms"
            failed_windows = 3
            notify = "ops@example.org"
            smtp = "127.0.0.1:2525"
            from = "xdprobe@example.org"
            "#,
        );
        let s = Settings::resolve(&RunArgs::default(), f).unwrap();
        assert_eq!(s.groups[0].vip.prefix_len(), 25);
        assert_eq!(s.groups[0].label, "eth1:vip");
        assert_eq!(s.timing.failed_windows, 3);
        let mail = s.mail.unwrap();
        assert_eq!(
            (mail.smtp_host.as_str(), mail.smtp_port),
            ("127.0.0.1", 2525)
        );
        assert_eq!(mail.to.email.to_string(), "ops@example.org");
    }

    #[test]
    fn the_commented_example_file_is_valid_and_complete() {
        let text = include_str!("../../examples/xdprobe.toml");
        let f = file(text);
        let s = Settings::resolve(&RunArgs::default(), f).unwrap();
        assert_eq!(s.timing.window, Duration::from_millis(100));
        assert!(s.mail.is_some());
        // Every key the file format knows is shown in the example (some commented out).
        for key in [
            "iface",
            "watch",
            "vip",
            "label",
            "window",
            "probes",
            "failed_windows",
            "recover_windows",
            "retries",
            "witness",
            "failback",
            "on_exit",
            "hold_down",
            "garp_count",
            "garp_interval",
            "garp_refresh",
            "conflict_wait",
            "on_down",
            "on_up",
            "on_claim",
            "on_release",
            "hook_timeout",
            "notify",
            "smtp",
            "from",
            "smtp_starttls",
            "smtp_ca",
            "smtp_credentials",
            "mail_limit",
            "debug",
            "monitor",
            "metrics",
            "log_level",
        ] {
            let shown = |l: &str| l.trim_start_matches("# ").starts_with(&format!("{key} = "));
            assert!(text.lines().any(shown), "{key} missing");
        }
        assert_eq!(
            s.failover.witnesses,
            ["192.0.2.254".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(s.hooks.on_claim.as_ref().map(|h| h.args.len()), Some(1));
    }

    #[test]
    fn failover_hook_and_mail_extras_are_checked_by_field() {
        let cases: [Case; 9] = [
            (
                |a| a.witnesses = vec!["192.0.2.1".parse().unwrap()],
                "witness",
            ),
            (
                |a| a.witnesses = vec!["192.0.2.100".parse().unwrap()],
                "witness",
            ),
            (
                |a| a.garp_interval = Some(Duration::from_millis(1)),
                "garp_interval",
            ),
            (|a| a.garp_count = Some(1000), "garp_count"),
            (
                |a| a.conflict_wait = Some(Duration::from_secs(5)),
                "conflict_wait",
            ),
            (
                |a| a.on_claim = Some("/bin/x 'unbalanced".into()),
                "on_claim",
            ),
            (|a| a.on_down = Some("   ".into()), "on_down"),
            (|a| a.smtp_starttls = true, "smtp_starttls"),
            (|a| a.timing.retries = Some(4), "retries"),
        ];
        for (edit, field) in cases {
            let mut a = args();
            edit(&mut a);
            assert_eq!(
                invalid_field(Settings::resolve(&a, FileConfig::default())),
                field
            );
        }
        let mut a = args();
        a.notify = Some("ops@example.org".into());
        a.smtp = Some("127.0.0.1:25".into());
        a.from = Some("x@example.org".into());
        a.mail_limit = Some("lots".into());
        assert_eq!(
            invalid_field(Settings::resolve(&a, FileConfig::default())),
            "mail_limit"
        );
        a.mail_limit = Some("3/10m".into());
        a.smtp_starttls = true;
        let s = Settings::resolve(&a, FileConfig::default()).unwrap();
        let mail = s.mail.unwrap();
        assert!(mail.starttls);
        assert_eq!(
            (mail.limit.burst, mail.limit.per),
            (3, Duration::from_secs(600))
        );
    }

    #[test]
    fn zero_turns_the_conflict_check_and_the_refresh_off() {
        let f = file("conflict_wait = \"0s\"\ngarp_refresh = \"0s\"\nfailback = \"keep\"\n");
        let s = Settings::resolve(&args(), f).unwrap();
        assert_eq!(s.failover.conflict_wait, Duration::ZERO);
        assert_eq!(s.failover.garp.refresh, None);
        assert_eq!(s.failover.failback, Failback::Keep);
        let err = FileConfig::parse(Path::new("x.toml"), "failback = \"maybe\"\n").unwrap_err();
        assert!(err.to_string().contains("failback"), "{err}");
    }

    #[test]
    fn groups_and_monitored_targets_come_from_the_file() {
        let f = file(
            r#"
            iface = "eth0"
            watch = "192.0.2.1"
            vip = "192.0.2.100/24"
            monitor = ["198.51.100.0/28", "@/etc/xdprobe/hosts.txt"]

            [[group]]
            watch = "192.0.2.11"
            vip = "192.0.2.110/24"

            [[group]]
            watch = "192.0.2.12"
            vip = "192.0.2.120/24"
            label = "eth0:web"
            "#,
        );
        let s = Settings::resolve(&RunArgs::default(), f).unwrap();
        let labels: Vec<&str> = s.groups.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["eth0:1", "eth0:2", "eth0:web"]);
        assert_eq!(s.groups[1].watch, "192.0.2.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(s.monitor.len(), 2);
        // Monitored targets alone are enough: no VIP to take, just watching.
        let s = Settings::resolve(
            &RunArgs {
                iface: Some("eth0".into()),
                ..RunArgs::default()
            },
            file("monitor = [\"192.0.2.7\"]\n"),
        )
        .unwrap();
        assert!(s.groups.is_empty());
    }

    #[test]
    fn group_errors_name_the_group_and_clashes_are_refused() {
        let bad = [
            ("[[group]]\nvip = \"192.0.2.110/24\"\n", "group[0].watch"),
            ("[[group]]\nwatch = \"192.0.2.11\"\n", "group[0].vip"),
            (
                "[[group]]\nwatch = \"192.0.2.11\"\nvip = \"192.0.2.11/24\"\n",
                "group[0].vip",
            ),
            (
                "[[group]]\nwatch = \"192.0.2.11\"\nvip = \"192.0.2.110/24\"\nlabel = \"eth9:1\"\n",
                "group[0].label",
            ),
            // Same VIP as the flags' group.
            (
                "[[group]]\nwatch = \"192.0.2.11\"\nvip = \"192.0.2.100/24\"\n",
                "group[0].vip",
            ),
        ];
        for (text, field) in bad {
            assert_eq!(
                invalid_field(Settings::resolve(&args(), file(text))),
                field,
                "{text}"
            );
        }
        let err = FileConfig::parse(Path::new("x.toml"), "[[group]]\nwach = \"192.0.2.1\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("wach"), "{err}");
    }

    #[test]
    fn fields_are_located_in_the_file() {
        let text = "iface = \"eth0\"\nwindow = \"5ms\"\n\n[[group]]\nwatch = \"192.0.2.11\"\n\
                    vip = \"192.0.2.110/24\"\n\n[[group]]\nvip = \"192.0.2.120/24\"\n\n\
                    [[dns]]\nmembers = []\n";
        assert_eq!(locate(text, "window"), Some(2));
        assert_eq!(locate(text, "group[0].vip"), Some(6));
        assert_eq!(locate(text, "group[1].vip"), Some(9));
        assert_eq!(
            locate(text, "group[1].watch"),
            None,
            "missing in that group"
        );
        assert_eq!(locate(text, "dns[0].members"), Some(12));
        assert_eq!(locate(text, "probes"), None, "from a flag or a default");
        // A top-level key after a table header belongs to the table, not the top level.
        assert_eq!(locate("[[group]]\nwindow = \"1s\"\n", "window"), None);
        let text = "iface = \"eth0\"\nwindow = \"5ms\"\n";
        let err = Settings::resolve(&args(), file(text)).unwrap_err();
        assert_eq!(
            err.in_file(Path::new("/etc/xdprobe/xdprobe.toml"), text),
            format!("/etc/xdprobe/xdprobe.toml:2: {err}")
        );
    }

    #[test]
    fn the_log_level_defaults_to_info_and_a_bad_one_is_an_error() {
        let s = Settings::resolve(&args(), file("")).unwrap();
        assert_eq!(s.log_level, "info");
        let s = Settings::resolve(&args(), file("log_level = \"warn,xdprobe::hooks=debug\"\n"))
            .unwrap();
        assert_eq!(s.log_level, "warn,xdprobe::hooks=debug");
        for bad in ["loud", "", "info,", "xdprobe=[[", "xdprobe=loud"] {
            let text = format!("log_level = {bad:?}\n");
            assert_eq!(
                invalid_field(Settings::resolve(&args(), file(&text))),
                "log_level",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn metrics_listen_on_loopback_by_default_and_can_be_turned_off() {
        let s = Settings::resolve(&args(), FileConfig::default()).unwrap();
        assert_eq!(s.metrics, Some("127.0.0.1:9641".parse().unwrap()));
        let s = Settings::resolve(&args(), file("metrics = \"off\"\n")).unwrap();
        assert_eq!(s.metrics, None);
        assert_eq!(
            invalid_field(Settings::resolve(&args(), file("metrics = \"loopback\"\n"))),
            "metrics"
        );
    }

    #[test]
    fn missing_required_settings_are_named() {
        let mut a = args();
        a.watch = None;
        let err = Settings::resolve(&a, FileConfig::default()).unwrap_err();
        assert_eq!(
            err,
            SettingsError::Missing {
                field: "watch".into()
            }
        );
        assert!(err.to_string().contains("--watch"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_in_the_file_are_errors_with_their_line() {
        let err = FileConfig::parse(Path::new("x.toml"), "iface = \"eth0\"\nwindw = \"1s\"\n")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("x.toml") && msg.contains("windw") && msg.contains("line 2"),
            "{msg}"
        );
        let err = FileConfig::parse(Path::new("x.toml"), "watch = \"192.0.2.300\"\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = FileConfig::parse(Path::new("x.toml"), "window = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
    }

    #[test]
    fn timing_out_of_range_is_rejected_by_field() {
        let cases: [Case; 6] = [
            (
                |a| a.timing.window = Some(Duration::from_millis(5)),
                "window",
            ),
            (
                |a| a.timing.window = Some(Duration::from_secs(7200)),
                "window",
            ),
            (|a| a.timing.probes = Some(0), "probes"),
            (
                |a| {
                    a.timing.window = Some(Duration::from_millis(10));
                    a.timing.probes = Some(20)
                },
                "probes",
            ),
            (|a| a.timing.failed_windows = Some(0), "failed_windows"),
            (|a| a.timing.recover_windows = Some(0), "recover_windows"),
        ];
        for (edit, field) in cases {
            let mut a = args();
            edit(&mut a);
            assert_eq!(
                invalid_field(Settings::resolve(&a, FileConfig::default())),
                field
            );
        }
    }

    #[test]
    fn addresses_and_names_are_checked() {
        let cases: [Case; 6] = [
            (|a| a.vip = Some("192.0.2.1/24".parse().unwrap()), "vip"),
            (|a| a.watch = Some("0.0.0.0".parse().unwrap()), "watch"),
            (|a| a.watch = Some("224.0.0.1".parse().unwrap()), "watch"),
            (
                |a| a.iface = Some("an-interface-name-too-long".into()),
                "iface",
            ),
            (|a| a.label = Some("eth1:1".into()), "label"),
            (|a| a.label = Some("eth0:much-too-long".into()), "label"),
        ];
        for (edit, field) in cases {
            let mut a = args();
            edit(&mut a);
            assert_eq!(
                invalid_field(Settings::resolve(&a, FileConfig::default())),
                field
            );
        }
    }

    #[test]
    fn mail_settings_come_as_a_set() {
        let with = |n: Option<&str>, s: Option<&str>, f: Option<&str>| {
            let mut a = args();
            a.notify = n.map(Into::into);
            a.smtp = s.map(Into::into);
            a.from = f.map(Into::into);
            Settings::resolve(&a, FileConfig::default())
        };
        assert_eq!(
            invalid_field(with(Some("a@b.c"), None, Some("x@y.z"))),
            "smtp"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some("h:25"), None)),
            "from"
        );
        assert_eq!(invalid_field(with(None, Some("h:25"), None)), "smtp");
        assert_eq!(
            invalid_field(with(Some("not an address"), Some("h:25"), Some("x@y.z"))),
            "notify"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some("h:25"), Some("@@"))),
            "from"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some("h"), Some("x@y.z"))),
            "smtp"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some("h:0"), Some("x@y.z"))),
            "smtp"
        );
        assert_eq!(
            invalid_field(with(Some("a@b.c"), Some(":25"), Some("x@y.z"))),
            "smtp"
        );
        assert!(with(Some("a@b.c"), Some("[::1]:25"), Some("x@y.z"))
            .unwrap()
            .mail
            .is_some());
    }
}
