//! `xdprobe check`: validate a config file without touching the system (no BPF, no sockets,
//! no name lookups) and print the plan it resolves to.

use std::{fmt::Write as _, path::PathBuf};

use crate::{
    act::mail::load_credentials,
    config::{
        cluster::{ClusterSettings, OnQuorumLoss, Quorum},
        dns::PoolConfig,
        file::DEFAULT_CONFIG,
        flags::{CheckArgs, RunArgs},
        hooks::Hooks,
        load::load_settings,
        mail::MailSettings,
        settings::Settings,
        timing::Timing,
    },
    failure::Failure,
    probe::targets,
};

pub fn check(args: CheckArgs) -> Result<u8, Failure> {
    let path = args.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let settings = load_settings(&RunArgs {
        config: Some(path.clone()),
        ..RunArgs::default()
    })?;
    // Monitored targets: syntax and target files only; names are not looked up here.
    if !settings.monitor.is_empty() {
        targets::parse_config_list(&settings.monitor, settings.family, targets::open_file)
            .map_err(|e| {
                Failure::Usage(anyhow::anyhow!(
                    "{}: invalid `monitor`: {e}",
                    path.display()
                ))
            })?;
    }
    // Mail files: the credentials must parse, the CA must be readable.
    if let Some(mail) = &settings.mail {
        if let Some(credentials) = &mail.credentials {
            load_credentials(credentials).map_err(Failure::Usage)?;
        }
        if let Some(ca) = &mail.ca {
            std::fs::read(ca).map_err(|e| {
                Failure::Usage(anyhow::anyhow!(
                    "invalid `smtp_ca`: cannot read {}: {e}",
                    ca.display()
                ))
            })?;
        }
    }
    print!("{}", plan(&settings, &path.display().to_string()));
    Ok(0)
}

/// What xdprobe would do with these settings, for people.
pub fn plan(s: &Settings, source: &str) -> String {
    let mut out = format!("{source}: valid\ninterface: {}\n", s.iface);
    out.push_str(&timing_line(&s.timing));
    out.push_str(&groups_lines(s));
    if !s.monitor.is_empty() {
        out.push_str(&format!("monitor: {}\n", s.monitor.join(", ")));
    }
    out.push_str(&pools_lines(&s.dns));
    out.push_str(&cluster_line(s.cluster.as_ref()));
    out.push_str(&hooks_lines(&s.hooks));
    out.push_str(&mail_line(s.mail.as_ref()));
    let metrics = s
        .metrics
        .map_or("off".to_string(), |addr| format!("http://{addr}/metrics"));
    out.push_str(&format!("metrics: {metrics}\n"));
    out.push_str(&format!(
        "log level: {} (unless RUST_LOG is set)\n",
        s.log_level
    ));
    out
}

fn cluster_line(c: Option<&ClusterSettings>) -> String {
    let Some(c) = c else {
        return String::new();
    };
    let quorum = match c.quorum {
        Quorum::Majority => "a majority of the live nodes".to_string(),
        Quorum::Count(n) => format!("{n} nodes"),
    };
    let loss = match c.on_quorum_loss {
        OnQuorumLoss::Release => "release the VIPs",
        OnQuorumLoss::Keep => "keep the VIPs",
    };
    format!(
        "cluster: node {} in etcd {} (keys under {}, TLS {}), lease {}, VIPs move when {quorum} say DOWN, on quorum loss {loss}, {} node{} probe each monitored target\n",
        c.node,
        c.etcd.join(", "),
        c.prefix,
        if c.tls.is_some() { "on" } else { "off" },
        humantime::format_duration(c.lease_ttl),
        c.replicas,
        if c.replicas == 1 { "" } else { "s" },
    )
}

fn timing_line(t: &Timing) -> String {
    format!(
        "timing: {} windows, {} probes each ({} retr{}), DOWN after {} failed windows, UP after {} good, replies count for {}\n",
        humantime::format_duration(t.window),
        t.probes,
        t.retries,
        if t.retries == 1 { "y" } else { "ies" },
        t.failed_windows,
        t.recover_windows,
        humantime::format_duration(t.timeout)
    )
}

/// Each group, then the failover settings they share (if there is a group).
fn groups_lines(s: &Settings) -> String {
    let mut out = String::new();
    for (i, g) in s.groups.iter().enumerate() {
        let _ = writeln!(
            out,
            "group {}: watch {} -> take {} as {}",
            i + 1,
            g.watch,
            g.vip,
            g.label
        );
    }
    if s.groups.is_empty() {
        return out;
    }
    let f = &s.failover;
    let witnesses: Vec<String> = f.witnesses.iter().map(ToString::to_string).collect();
    let conflict = if f.conflict_wait.is_zero() {
        "off".to_string()
    } else {
        humantime::format_duration(f.conflict_wait).to_string()
    };
    let refresh = f
        .garp
        .refresh
        .map(|r| format!(", refresh every {}", humantime::format_duration(r)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "failover: witnesses [{}], failback {:?}, hold-down {}, on exit {:?}, conflict check {conflict}, GARP 1 + {} every {}{refresh}",
        witnesses.join(", "),
        f.failback,
        humantime::format_duration(f.hold_down),
        f.on_exit,
        f.garp.count,
        humantime::format_duration(f.garp.interval),
    );
    out
}

fn pools_lines(pools: &[PoolConfig]) -> String {
    let mut out = String::new();
    for (i, pool) in pools.iter().enumerate() {
        let members: Vec<String> = pool.members.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "dns pool {}: {} at {} (TTL {}, when all down {}): {}",
            i + 1,
            pool.name,
            pool.server,
            pool.ttl,
            pool.when_all_down,
            members.join(", ")
        );
    }
    out
}

fn hooks_lines(hooks: &Hooks) -> String {
    let mut out = String::new();
    let all = [
        ("on_down", &hooks.on_down),
        ("on_up", &hooks.on_up),
        ("on_claim", &hooks.on_claim),
        ("on_release", &hooks.on_release),
        ("on_cluster", &hooks.on_cluster),
    ];
    for (name, hook) in all {
        if let Some(hook) = hook {
            let command = std::iter::once(hook.program.as_str())
                .chain(hook.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(out, "hook {name}: {command}");
        }
    }
    out
}

fn mail_line(mail: Option<&MailSettings>) -> String {
    let Some(m) = mail else {
        return "mail: off\n".to_string();
    };
    format!(
        "mail: to {} from {} via {}:{}{}{}, at most {}\n",
        m.to,
        m.from,
        m.smtp_host,
        m.smtp_port,
        if m.starttls { " with STARTTLS" } else { "" },
        if m.credentials.is_some() {
            " and credentials"
        } else {
            ""
        },
        m.limit
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::file::FileConfig;

    #[test]
    fn the_plan_shows_groups_timing_failover_and_mail() {
        let text = include_str!("../../examples/xdprobe.toml");
        let file = FileConfig::parse(Path::new("x.toml"), text).unwrap();
        let settings = Settings::resolve(&RunArgs::default(), file).unwrap();
        let plan = plan(&settings, "xdprobe.toml");
        for needle in [
            "xdprobe.toml: valid",
            "interface: eth0",
            "timing: 100ms windows, 3 probes each (1 retry), DOWN after 2 failed windows, UP after 2 good",
            "group 1: watch 192.0.2.1 -> take 192.0.2.100/24 as eth0:1",
            "witnesses [192.0.2.254], failback Release, hold-down 10s, on exit Keep",
            "monitor: 198.51.100.0/28",
            "hook on_claim: /usr/local/bin/xdprobe-hook --restart-services",
            "mail: to ops@example.org from xdprobe@standby.example.org via 127.0.0.1:25, at most 10/1h",
            "metrics: http://127.0.0.1:9641/metrics",
            "log level: info (unless RUST_LOG is set)",
        ] {
            assert!(plan.contains(needle), "missing {needle:?} in:\n{plan}");
        }
    }

    #[test]
    fn the_plan_shows_the_cluster() {
        let c = ClusterSettings {
            etcd: vec!["http://192.0.2.51:2379".into()],
            node: "n1".into(),
            prefix: "/xdprobe/".into(),
            lease_ttl: std::time::Duration::from_secs(1),
            quorum: Quorum::Count(2),
            on_quorum_loss: OnQuorumLoss::Keep,
            replicas: 2,
            tls: None,
        };
        assert_eq!(
            cluster_line(Some(&c)),
            "cluster: node n1 in etcd http://192.0.2.51:2379 (keys under /xdprobe/, TLS off), \
             lease 1s, VIPs move when 2 nodes say DOWN, on quorum loss keep the VIPs, 2 nodes probe \
             each monitored target\n"
        );
        assert_eq!(cluster_line(None), "");
    }
}
