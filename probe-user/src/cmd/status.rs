//! Talking to a running daemon over its HTTP endpoint: `xdprobe status` reads its hosts and
//! groups from `/status`; `xdprobe reload` asks it to re-read its config (`POST /reload`).

use std::fmt::Write as _;

use anyhow::Context as _;

use crate::{
    config::flags::{ReloadArgs, StatusArgs},
    failure::Failure,
    model::snapshot::{ClusterStatus, Snapshot},
    service::endpoint::ReloadOutcome,
};

pub fn status(args: StatusArgs) -> Result<u8, Failure> {
    let path = if args.metrics { "metrics" } else { "status" };
    let url = format!("http://{}/{path}", args.address);
    let body = ureq::get(&url)
        .call()
        .and_then(|mut response| response.body_mut().read_to_string())
        .with_context(|| format!("cannot read {url}: is xdprobe running with metrics on?"))
        .map_err(Failure::System)?;
    if args.metrics || args.json {
        print!("{body}");
        return Ok(0);
    }
    let snapshot: Snapshot = serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer with a status"))
        .map_err(Failure::System)?;
    if args.cluster {
        let Some(cluster) = &snapshot.cluster else {
            return Err(Failure::Usage(anyhow::anyhow!(
                "the daemon at {} is not in a cluster (no [cluster] in its config)",
                args.address
            )));
        };
        print!("{}", cluster_table(cluster));
        return Ok(0);
    }
    print!("{}", table(&snapshot));
    Ok(0)
}

/// The cluster's merged view for people: this node, the members, the groups, the targets.
pub fn cluster_table(c: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({}), members {}: probing {} of {} monitored targets",
        c.node,
        c.standing,
        c.members.join(", "),
        c.share,
        c.targets
    );
    for g in &c.groups {
        let _ = writeln!(
            out,
            "group {}: holder {}, {} DOWN and {} UP of {} needed",
            g.group,
            g.holder.as_deref().unwrap_or("none"),
            g.down,
            g.up,
            g.needed
        );
    }
    let _ = writeln!(out, "{:<40} {:<8} BY", "TARGET", "STATE");
    for t in &c.merged {
        let state = t.state.to_string();
        let _ = writeln!(out, "{:<40} {state:<8} {}", t.target, t.by.join(" "));
    }
    out
}

/// `xdprobe reload`: 0 if the daemon applied its config, 2 if it rejected it.
pub fn reload(args: ReloadArgs) -> Result<u8, Failure> {
    let url = format!("http://{}/reload", args.address);
    let mut response = ureq::post(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .send_empty()
        .with_context(|| {
            format!(
                "cannot reach {url}: is xdprobe running with metrics on? (without them, send it \
                 SIGHUP: systemctl reload xdprobe)"
            )
        })
        .map_err(Failure::System)?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))
        .map_err(Failure::System)?;
    let outcome: ReloadOutcome = serde_json::from_str(&body)
        .map_err(|_| anyhow::anyhow!("{url} answered {status}: {}", body.trim()))
        .map_err(Failure::System)?;
    if outcome.applied {
        println!("reloaded: {}", outcome.message);
        Ok(0)
    } else {
        eprintln!(
            "xdprobe: reload rejected, the old config keeps running: {}",
            outcome.message
        );
        Ok(2)
    }
}

/// The snapshot for people: hosts, then groups.
pub fn table(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "window {} ({} s each), late rounds {}, reloads {} ({} rejected)",
        s.windows, s.window_seconds, s.late_rounds, s.reloads, s.reload_failures
    );
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:>12} {:>10} {:>8}",
        "HOST", "STATE", "SINCE WINDOW", "RTT", "LOSS"
    );
    for h in &s.hosts {
        let rtt = h.rtt_ms.map_or("-".to_string(), |ms| format!("{ms:.3} ms"));
        let loss = if h.probes_sent == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.1}%",
                100.0 * (1.0 - (h.replies as f64 / h.probes_sent as f64).min(1.0))
            )
        };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:>12} {:>10} {:>8}",
            h.host, h.state, h.since_window, rtt, loss
        );
    }
    for g in &s.groups {
        let _ = writeln!(
            out,
            "group {} -> {} ({}): {}, {} claims, {} releases",
            g.watch,
            g.vip,
            g.label,
            if g.holding {
                "VIP HELD here"
            } else {
                "VIP not held"
            },
            g.claims,
            g.releases
        );
    }
    for d in &s.dns {
        let _ = writeln!(
            out,
            "dns pool {} at {}: {} ({} failures), {} records",
            d.name,
            d.server,
            if d.in_sync { "in sync" } else { "OUT OF SYNC" },
            d.failures,
            d.published
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        health::State,
        snapshot::{DnsStatus, GroupStatus, HostStatus},
    };

    #[test]
    fn the_table_shows_state_rtt_loss_and_groups() {
        let s = Snapshot {
            windows: 7,
            late_rounds: 0,
            map_read_seconds: 0.0,
            hosts: vec![HostStatus {
                host: "192.0.2.1".parse().unwrap(),
                state: State::Up,
                since_window: 1,
                rtt_ms: Some(0.25),
                probes_sent: 20,
                replies: 19,
            }],
            groups: vec![GroupStatus {
                watch: "192.0.2.1".parse().unwrap(),
                vip: "192.0.2.100/24".into(),
                label: "eth0:1".into(),
                holding: false,
                claims: 0,
                releases: 0,
                yields: 0,
                restored: 0,
            }],
            dns: vec![DnsStatus {
                name: "www.example.test.".into(),
                server: "192.0.2.53:53".into(),
                in_sync: false,
                failures: 2,
                published: 3,
            }],
            reloads: 1,
            reload_failures: 0,
            window_seconds: 0.05,
            cluster: None,
        };
        let t = table(&s);
        assert!(
            t.starts_with("window 7 (0.05 s each), late rounds 0, reloads 1 (0 rejected)\n"),
            "{t}"
        );
        assert!(t.contains("192.0.2.1        UP"), "{t}");
        assert!(t.contains("0.250 ms") && t.contains("5.0%"), "{t}");
        assert!(
            t.contains("group 192.0.2.1 -> 192.0.2.100/24 (eth0:1): VIP not held, 0 claims"),
            "{t}"
        );
        assert!(
            t.contains(
                "dns pool www.example.test. at 192.0.2.53:53: OUT OF SYNC (2 failures), 3 records"
            ),
            "{t}"
        );
    }

    #[test]
    fn the_cluster_table_shows_members_holders_and_merged_targets() {
        use crate::model::snapshot::{ClusterGroupStatus, MergedTarget};
        let c = ClusterStatus {
            node: "n1".into(),
            standing: "live".into(),
            members: vec!["n1".into(), "n2".into()],
            targets: 254,
            share: 130,
            groups: vec![ClusterGroupStatus {
                group: "192.0.2.100".into(),
                holder: Some("n2".into()),
                down: 1,
                up: 1,
                needed: 2,
            }],
            merged: vec![MergedTarget {
                target: "198.51.100.7".parse().unwrap(),
                state: State::Up,
                by: vec!["n2:up:4".into()],
            }],
        };
        let t = cluster_table(&c);
        assert!(
            t.starts_with("node n1 (live), members n1, n2: probing 130 of 254 monitored targets\n"),
            "{t}"
        );
        assert!(
            t.contains("group 192.0.2.100: holder n2, 1 DOWN and 1 UP of 2 needed"),
            "{t}"
        );
        assert!(
            t.contains(&format!("{:<40} {:<8} n2:up:4\n", "198.51.100.7", "UP")),
            "{t}"
        );
    }
}
