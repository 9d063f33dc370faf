//! Resolved, validated settings: the config file merged under the flags.
//!
//! Pure code: no I/O besides reading the files the config names (the DNS pools' TSIG
//! secrets), so every rule is unit-tested. Each part has its own resolver (timing, mail, hooks,
//! DNS pools, here the groups and the failover); [`Settings::resolve`] puts them together.

use std::{borrow::Cow, net::IpAddr, time::Duration};

use crate::config::{
    cluster::{host_name, ClusterSettings},
    dns::PoolConfig,
    error::{bounded, SettingsError},
    family::{is_unicast_host, Family},
    file::{FileConfig, GroupFile},
    flags::{Failback, OnExit, RunArgs},
    hooks::Hooks,
    mail::MailSettings,
    timing::Timing,
    vips::Vips,
};

pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(10);
pub const DEFAULT_GARP_COUNT: u32 = 5;
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(200);
/// The RFC 5227 probe's wait when not given: half the window, at most this. A LAN answers ARP
/// in well under a millisecond, and the probe must be over before the primary can be DOWN
/// (two windows after its last reply) so that it never delays the claim.
pub const DEFAULT_CONFLICT_WAIT: Duration = Duration::from_millis(50);
/// Loopback only by default: the endpoint has no authentication.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9641";
/// The default log level of `run`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
const IFNAMSIZ: usize = 16;

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
    pub watch: IpAddr,
    /// One IPv4 or IPv6 VIP, or one of each (moved together).
    pub vip: Vips,
    pub label: String,
}

/// How the standby decides to take and give back the VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSettings {
    pub witnesses: Vec<IpAddr>,
    pub failback: Failback,
    pub on_exit: OnExit,
    pub hold_down: Duration,
    pub garp: Garp,
    /// Zero: no ARP conflict check before taking the VIP.
    pub conflict_wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub iface: String,
    /// Failover groups: each watches one primary and takes over its VIP.
    pub groups: Vec<Group>,
    /// Plain monitored targets, unresolved (see `probe::targets`).
    pub monitor: Vec<String>,
    /// The address families of the monitored targets (`-4`, `-6`).
    pub family: Family,
    /// DNS pools, secrets loaded.
    pub dns: Vec<PoolConfig>,
    pub timing: Timing,
    pub failover: FailoverSettings,
    pub hooks: Hooks,
    pub mail: Option<MailSettings>,
    pub debug: bool,
    /// Where to serve /metrics and /status (`None`: off).
    pub metrics: Option<std::net::SocketAddr>,
    /// Log filter directives (checked), e.g. `info` or `warn,xdprobe::hooks=debug`.
    pub log_level: String,
    /// Several nodes agreeing through etcd; `None`: this node alone decides.
    pub cluster: Option<ClusterSettings>,
}

impl Settings {
    /// Merges `file` under `args` (flags win) and validates the result.
    pub fn resolve(args: &RunArgs, file: FileConfig) -> Result<Self, SettingsError> {
        let iface = resolve_iface(args, &file)?;
        let monitor = file.monitor.clone().unwrap_or_default();
        let dns = resolve_pools(&file)?;
        let groups = resolve_groups(&iface, args, &file)?;
        if groups.is_empty() && monitor.is_empty() && dns.is_empty() {
            return Err(SettingsError::Missing {
                field: "watch".into(),
            });
        }
        let timing = Timing::resolve(&args.timing, &file)?;
        let failover = FailoverSettings::resolve(args, &file, &groups, &timing)?;
        Ok(Settings {
            iface,
            groups,
            monitor,
            family: Family::from_flags(args.ipv4, args.ipv6),
            dns,
            timing,
            failover,
            hooks: Hooks::resolve(args, &file)?,
            mail: MailSettings::resolve(args, &file)?,
            debug: args.debug || file.debug.unwrap_or(false),
            metrics: resolve_metrics(args.metrics.clone().or(file.metrics))?,
            log_level: resolve_log_level(file.log_level)?,
            cluster: file
                .cluster
                .as_ref()
                .map(|c| ClusterSettings::resolve(c, &host_name().unwrap_or_default()))
                .transpose()?,
        })
    }
}

fn resolve_iface(args: &RunArgs, file: &FileConfig) -> Result<String, SettingsError> {
    let iface = args
        .iface
        .clone()
        .or(file.iface.clone())
        .ok_or(SettingsError::Missing {
            field: "iface".into(),
        })?;
    if iface.is_empty() || iface.len() >= IFNAMSIZ || iface.contains(['/', ' ', ':']) {
        return Err(SettingsError::invalid(
            "iface",
            format!(
                "{iface:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
            ),
        ));
    }
    Ok(iface)
}

/// The failover groups: the flags' (or the file's top-level keys') first, then the
/// `[[group]]` tables; no VIP or label twice, no group's VIP another's primary.
fn resolve_groups(
    iface: &str,
    args: &RunArgs,
    file: &FileConfig,
) -> Result<Vec<Group>, SettingsError> {
    let mut specs: Vec<(String, GroupFile)> = Vec::new();
    let (watch, vip, label) = (
        args.watch.or(file.watch),
        args.vip.clone().or(file.vip.clone()),
        args.label.clone().or(file.label.clone()),
    );
    if watch.is_some() || vip.is_some() || label.is_some() {
        specs.push((String::new(), GroupFile { watch, vip, label }));
    }
    for (i, g) in file.group.iter().flatten().enumerate() {
        let spec = GroupFile {
            watch: g.watch,
            vip: g.vip.clone(),
            label: g.label.clone(),
        };
        specs.push((format!("group[{i}]."), spec));
    }
    let mut groups: Vec<Group> = Vec::with_capacity(specs.len());
    for (n, (prefix, spec)) in specs.into_iter().enumerate() {
        let group = resolve_group(iface, n + 1, &prefix, spec)?;
        if let Some(other) = groups.iter().find(|g| clash(g, &group)) {
            return Err(SettingsError::invalid(
                format!("{prefix}vip"),
                format!(
                    "{} ({}) clashes with the group watching {} ({} {})",
                    group.vip, group.label, other.watch, other.vip, other.label
                ),
            ));
        }
        groups.push(group);
    }
    Ok(groups)
}

/// The same VIP or label twice, or one group's VIP the other's primary.
fn clash(a: &Group, b: &Group) -> bool {
    a.vip.overlaps(&b.vip)
        || a.label == b.label
        || b.vip.contains(a.watch)
        || a.vip.contains(b.watch)
}

/// One failover group: `prefix` names where it came from in errors (`group[2].`), `n` numbers
/// its default label (`<iface>:n`).
fn resolve_group(
    iface: &str,
    n: usize,
    prefix: &str,
    spec: GroupFile,
) -> Result<Group, SettingsError> {
    let field = |name: &str| -> Cow<'static, str> { format!("{prefix}{name}").into() };
    let watch = spec.watch.ok_or(SettingsError::Missing {
        field: field("watch"),
    })?;
    if !is_unicast_host(watch) {
        return Err(SettingsError::invalid(
            field("watch"),
            format!("{watch} is not a unicast host address"),
        ));
    }
    let vip = spec.vip.ok_or(SettingsError::Missing {
        field: field("vip"),
    })?;
    if vip.contains(watch) {
        return Err(SettingsError::invalid(
            field("vip"),
            format!("{watch} is the watched host's own address; the VIP must be another address"),
        ));
    }
    let label = spec.label.unwrap_or_else(|| format!("{iface}:{n}"));
    if !label.starts_with(iface) || label.len() >= IFNAMSIZ {
        return Err(SettingsError::invalid(
            field("label"),
            format!(
                "{label:?} must start with the interface name {iface:?} and be at most 15 \
                 characters"
            ),
        ));
    }
    Ok(Group { watch, vip, label })
}

/// The `[[dns]]` pools, each checked and its secret read.
fn resolve_pools(file: &FileConfig) -> Result<Vec<PoolConfig>, SettingsError> {
    file.dns
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, pool)| {
            PoolConfig::resolve(i, pool.clone())
                .map_err(|(field, reason)| SettingsError::invalid(field, reason))
        })
        .collect()
}

impl FailoverSettings {
    /// The failover settings of the flags over the file; witnesses checked against `groups`,
    /// the conflict check's wait scaled to `timing`'s window unless given.
    fn resolve(
        args: &RunArgs,
        file: &FileConfig,
        groups: &[Group],
        timing: &Timing,
    ) -> Result<Self, SettingsError> {
        let failover = FailoverSettings {
            witnesses: resolve_witnesses(args, file, groups)?,
            failback: args.failback.or(file.failback).unwrap_or_default(),
            on_exit: args.on_exit.or(file.on_exit).unwrap_or_default(),
            hold_down: bounded(
                "hold_down",
                args.hold_down.or(file.hold_down),
                DEFAULT_HOLD_DOWN,
                Duration::ZERO,
                Duration::from_secs(86_400),
            )?,
            garp: Garp::resolve(args, file)?,
            conflict_wait: bounded(
                "conflict_wait",
                args.conflict_wait.or(file.conflict_wait),
                DEFAULT_CONFLICT_WAIT.min(timing.window / 2),
                Duration::ZERO,
                Duration::from_secs(1),
            )?,
        };
        if failover.garp.count > 100 {
            return Err(SettingsError::invalid(
                "garp_count",
                format!("{} is out of range (0 to 100)", failover.garp.count),
            ));
        }
        Ok(failover)
    }
}

/// Unicast hosts other than any group's primary or VIP.
fn resolve_witnesses(
    args: &RunArgs,
    file: &FileConfig,
    groups: &[Group],
) -> Result<Vec<IpAddr>, SettingsError> {
    let witnesses = if args.witnesses.is_empty() {
        file.witness.clone().unwrap_or_default()
    } else {
        args.witnesses.clone()
    };
    for w in &witnesses {
        if groups.iter().any(|g| *w == g.watch || g.vip.contains(*w)) || !is_unicast_host(*w) {
            return Err(SettingsError::invalid(
                "witness",
                format!("{w} must be a unicast host other than the watched host and the VIP"),
            ));
        }
    }
    Ok(witnesses)
}

impl Garp {
    fn resolve(args: &RunArgs, file: &FileConfig) -> Result<Self, SettingsError> {
        let interval = bounded(
            "garp_interval",
            args.garp_interval.or(file.garp_interval),
            DEFAULT_GARP_INTERVAL,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        let refresh = args
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
            .transpose()?;
        Ok(Garp {
            count: args
                .garp_count
                .or(file.garp_count)
                .unwrap_or(DEFAULT_GARP_COUNT),
            interval,
            refresh,
        })
    }
}

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
    Err(SettingsError::invalid(
        "log_level",
        format!(
            "{value:?} is not a log level (error, warn, info, debug, trace) or a list of \
             directives like \"info,xdprobe::hooks=debug\""
        ),
    ))
}

/// `ADDR:PORT` to serve on, or "off".
fn resolve_metrics(value: Option<String>) -> Result<Option<std::net::SocketAddr>, SettingsError> {
    let value = value.unwrap_or_else(|| DEFAULT_METRICS.to_string());
    if value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        SettingsError::invalid(
            "metrics",
            format!("{value:?} is not ADDR:PORT (e.g. 127.0.0.1:9641) or \"off\""),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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

    /// Each case's edit of the default flags is refused, naming its field.
    fn assert_each_invalid(cases: &[Case]) {
        for (edit, field) in cases {
            let mut a = args();
            edit(&mut a);
            assert_eq!(
                invalid_field(Settings::resolve(&a, FileConfig::default())),
                *field
            );
        }
    }

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
                timeout: Duration::from_secs(1),
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
        assert_eq!(s.groups[0].vip.v4().map(|n| n.prefix_len()), Some(25));
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
        assert_eq!(s.cluster, None, "commented out");
        // The cluster section, uncommented but for the TLS files (https only), is valid.
        let cluster: String = text
            .lines()
            .skip_while(|l| *l != "# [cluster]")
            .take_while(|l| !l.starts_with("# ca = "))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        let s =
            Settings::resolve(&RunArgs::default(), file(&format!("{text}\n{cluster}"))).unwrap();
        let c = s.cluster.expect("the [cluster] table");
        assert_eq!((c.etcd.len(), c.node.as_str()), (3, "standby-1"));
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
            "timeout",
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
            "on_cluster",
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
            "etcd",
            "node",
            "prefix",
            "lease_ttl",
            "quorum",
            "on_quorum_loss",
            "replicas",
            "ca",
            "cert",
            "key",
        ] {
            let shown = |l: &str| l.trim_start_matches("# ").starts_with(&format!("{key} = "));
            assert!(text.lines().any(shown), "{key} missing");
        }
        assert_eq!(
            s.failover.witnesses,
            ["192.0.2.254".parse::<IpAddr>().unwrap()]
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
        assert_each_invalid(&cases);
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
    fn the_conflict_wait_scales_with_short_windows_unless_given() {
        let wait = |text: &str| {
            Settings::resolve(&args(), file(text))
                .unwrap()
                .failover
                .conflict_wait
        };
        assert_eq!(wait("window = \"1s\"\n"), Duration::from_millis(50));
        assert_eq!(wait("window = \"50ms\"\n"), Duration::from_millis(25));
        assert_eq!(wait("window = \"10ms\"\n"), Duration::from_millis(5));
        assert_eq!(
            wait("window = \"10ms\"\nconflict_wait = \"40ms\"\n"),
            Duration::from_millis(40)
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
        assert_eq!(s.groups[1].watch, "192.0.2.11".parse::<IpAddr>().unwrap());
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
    fn a_group_may_hold_an_ipv6_vip_or_one_of_each_family() {
        let f = file(
            r#"
            iface = "eth0"
            watch = "192.0.2.1"
            vip = ["192.0.2.100/24", "2001:db8::100/64"]

            [[group]]
            watch = "192.0.2.11"
            vip = "2001:db8::110/64"
            "#,
        );
        let s = Settings::resolve(&RunArgs::default(), f).unwrap();
        assert_eq!(
            s.groups[0].vip.to_string(),
            "192.0.2.100/24,2001:db8::100/64"
        );
        assert_eq!(s.groups[1].vip.v4(), None);
        assert_eq!(
            s.groups[1].vip.v6().map(|n| n.to_string()),
            Some("2001:db8::110/64".into())
        );
        // The same IPv6 VIP in two groups clashes.
        let twice = file(
            "iface = \"eth0\"\nwatch = \"192.0.2.1\"\nvip = \"2001:db8::100/64\"\n\
             [[group]]\nwatch = \"192.0.2.11\"\nvip = [\"192.0.2.110/24\", \"2001:db8::100/64\"]\n",
        );
        assert_eq!(
            invalid_field(Settings::resolve(&RunArgs::default(), twice)),
            "group[0].vip"
        );
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
            // ... also as one of a pair.
            (
                "[[group]]\nwatch = \"192.0.2.11\"\nvip = [\"2001:db8::110/64\", \"192.0.2.100/24\"]\n",
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
    fn errors_point_at_the_line_of_the_file() {
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
        assert_each_invalid(&cases);
    }

    #[test]
    fn the_timeout_defaults_to_the_window_and_is_bounded_by_the_answer_bits() {
        let s = Settings::resolve(&args(), file("window = \"200ms\"\n")).unwrap();
        assert_eq!(s.timing.timeout, Duration::from_millis(200));
        let s = Settings::resolve(&args(), file("timeout = \"2s\"\n")).unwrap();
        assert_eq!(s.timing.timeout, Duration::from_secs(2));
        // 1 s windows of 3 probes and 1 retry: 64 answer bits leave at most 4.5 s.
        assert_eq!(s.timing.max_timeout(), Duration::from_nanos(4_499_999_995));
        let cases: [Case; 3] = [
            (|a| a.timing.timeout = Some(Duration::ZERO), "timeout"),
            (
                |a| a.timing.timeout = Some(Duration::from_secs(5)),
                "timeout",
            ),
            // 30 probes a window, each perhaps resent once, leave no room in 64 answer bits.
            (|a| a.timing.probes = Some(30), "probes"),
        ];
        assert_each_invalid(&cases);
        let mut a = args();
        a.timing.timeout = Some(Duration::from_secs(5));
        let err = Settings::resolve(&a, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("to 4s 499ms"), "{err}");
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
        assert_each_invalid(&cases);
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
