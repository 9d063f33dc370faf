//! `xdprobe check`: validate a config file without touching the system (no BPF, no sockets,
//! no name lookups) and print the plan it resolves to.

use std::{fmt::Write as _, path::PathBuf};

use crate::{
    config::flags::{CheckArgs, RunArgs},
    service::daemon::load_settings,
    failure::Failure,
    config::settings::{Settings, DEFAULT_CONFIG},
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
        targets::parse_args(&settings.monitor, |p| std::fs::read_to_string(p)).map_err(|e| {
            Failure::Usage(anyhow::anyhow!(
                "{}: invalid `monitor`: {e}",
                path.display()
            ))
        })?;
    }
    // Mail files: the credentials must parse, the CA must be readable.
    if let Some(mail) = &settings.mail {
        if let Some(credentials) = &mail.credentials {
            crate::act::mail::load_credentials(credentials).map_err(Failure::Usage)?;
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
    let mut out = String::new();
    let t = &s.timing;
    let f = &s.failover;
    let _ = writeln!(out, "{source}: valid");
    let _ = writeln!(out, "interface: {}", s.iface);
    let _ = writeln!(
        out,
        "timing: {} windows, {} probes each ({} retr{}), DOWN after {} failed windows, UP after {} good",
        humantime::format_duration(t.window),
        t.probes,
        t.retries,
        if t.retries == 1 { "y" } else { "ies" },
        t.failed_windows,
        t.recover_windows
    );
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
    if !s.groups.is_empty() {
        let witnesses: Vec<String> = f.witnesses.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "failover: witnesses [{}], failback {:?}, hold-down {}, on exit {:?}, conflict check {}, GARP 1 + {} every {}{}",
            witnesses.join(", "),
            f.failback,
            humantime::format_duration(f.hold_down),
            f.on_exit,
            if f.conflict_wait.is_zero() { "off".to_string() } else { humantime::format_duration(f.conflict_wait).to_string() },
            f.garp.count,
            humantime::format_duration(f.garp.interval),
            f.garp.refresh.map(|r| format!(", refresh every {}", humantime::format_duration(r))).unwrap_or_default()
        );
    }
    if !s.monitor.is_empty() {
        let _ = writeln!(out, "monitor: {}", s.monitor.join(", "));
    }
    for (i, pool) in s.dns.iter().enumerate() {
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
    let hooks = [
        ("on_down", &s.hooks.on_down),
        ("on_up", &s.hooks.on_up),
        ("on_claim", &s.hooks.on_claim),
        ("on_release", &s.hooks.on_release),
    ];
    for (name, hook) in hooks {
        if let Some(hook) = hook {
            let command = std::iter::once(hook.program.as_str())
                .chain(hook.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(out, "hook {name}: {command}");
        }
    }
    match &s.mail {
        Some(m) => {
            let _ = writeln!(
                out,
                "mail: to {} from {} via {}:{}{}{}, at most {}",
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
            );
        }
        None => {
            let _ = writeln!(out, "mail: off");
        }
    }
    let metrics = s
        .metrics
        .map_or("off".to_string(), |addr| format!("http://{addr}/metrics"));
    let _ = writeln!(out, "metrics: {metrics}");
    let _ = writeln!(out, "log level: {} (unless RUST_LOG is set)", s.log_level);
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::settings::FileConfig;

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
}
