//! The status snapshot as metrics (pure): OpenMetrics text, as prometheus-client writes it,
//! or the classic Prometheus text format (0.0.4) for clients that do not ask for OpenMetrics.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use std::sync::atomic::AtomicU64;

use crate::model::{
    health::State,
    snapshot::{DnsStatus, GroupStatus, HostStatus, Snapshot},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    vip: String,
    watch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    server: String,
}

/// How `/metrics` answers: the body format a client asked for in `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    /// The classic text format, version 0.0.4 (the default).
    Text,
}

impl Exposition {
    /// From an `Accept` header: OpenMetrics when it is accepted at all (Prometheus 2 asks for
    /// it first), the classic text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Exposition::OpenMetrics,
            _ => Exposition::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The snapshot in this format.
    pub fn render(self, s: &Snapshot) -> String {
        let open = render_metrics(s);
        match self {
            Exposition::OpenMetrics => open,
            Exposition::Text => to_classic_text(&open),
        }
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter's `# HELP` and `# TYPE`
/// name its sample (`..._total`, where OpenMetrics names the family), and there is no `# EOF`
/// or `# UNIT`. The samples are the same.
pub fn to_classic_text(open: &str) -> String {
    let counters: Vec<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The snapshot as OpenMetrics text.
pub fn render_metrics(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("xdprobe");
    register_hosts(&mut registry, &s.hosts);
    register_groups(&mut registry, &s.groups);
    register_pools(&mut registry, &s.dns);
    register_process(&mut registry, s);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Per host: up, last RTT, probes sent, replies.
fn register_hosts(registry: &mut Registry, hosts: &[HostStatus]) {
    let up = Family::<HostLabels, Gauge>::default();
    let rtt = Family::<HostLabels, FloatGauge>::default();
    let sent = Family::<HostLabels, Counter>::default();
    let replies = Family::<HostLabels, Counter>::default();
    for h in hosts {
        let l = HostLabels {
            host: h.host.to_string(),
        };
        up.get_or_create(&l).set(i64::from(h.state == State::Up));
        if let Some(ms) = h.rtt_ms {
            rtt.get_or_create(&l).set(ms / 1000.0);
        }
        sent.get_or_create(&l).inc_by(h.probes_sent);
        replies.get_or_create(&l).inc_by(h.replies);
    }
    registry.register("host_up", "1 if the host is UP", up);
    registry.register("host_rtt_seconds", "Last round-trip time", rtt);
    registry.register("host_probes_sent", "Echo requests sent to the host", sent);
    registry.register("host_replies", "Valid replies counted in XDP", replies);
}

/// Per failover group: VIP held, claims, releases, yields, restores.
fn register_groups(registry: &mut Registry, groups: &[GroupStatus]) {
    let holding = Family::<GroupLabels, Gauge>::default();
    let claims = Family::<GroupLabels, Counter>::default();
    let releases = Family::<GroupLabels, Counter>::default();
    let yields = Family::<GroupLabels, Counter>::default();
    let restored = Family::<GroupLabels, Counter>::default();
    for g in groups {
        let l = GroupLabels {
            vip: g.vip.clone(),
            watch: g.watch.to_string(),
        };
        holding.get_or_create(&l).set(i64::from(g.holding));
        claims.get_or_create(&l).inc_by(g.claims);
        releases.get_or_create(&l).inc_by(g.releases);
        yields.get_or_create(&l).inc_by(g.yields);
        restored.get_or_create(&l).inc_by(g.restored);
    }
    registry.register(
        "group_vip_held",
        "1 while this node holds the group's VIP",
        holding,
    );
    registry.register("group_claims", "Times the VIP was taken", claims);
    registry.register("group_releases", "Times the VIP was given back", releases);
    registry.register(
        "group_yields",
        "Times the VIP was given up because another machine answered for it while held",
        yields,
    );
    registry.register(
        "group_vip_restored",
        "Times a held VIP removed by someone else (or flushed) was put back",
        restored,
    );
}

/// Per DNS pool: in sync, failures, records.
fn register_pools(registry: &mut Registry, pools: &[DnsStatus]) {
    let in_sync = Family::<PoolLabels, Gauge>::default();
    let failures = Family::<PoolLabels, Counter>::default();
    let published = Family::<PoolLabels, Gauge>::default();
    for d in pools {
        let l = PoolLabels {
            pool: d.name.clone(),
            server: d.server.clone(),
        };
        in_sync.get_or_create(&l).set(i64::from(d.in_sync));
        failures.get_or_create(&l).inc_by(d.failures);
        published
            .get_or_create(&l)
            .set(i64::try_from(d.published).unwrap_or(i64::MAX));
    }
    registry.register(
        "dns_pool_in_sync",
        "1 if the DNS server's records match the pool",
        in_sync,
    );
    registry.register("dns_pool_failures", "Failed DNS reads or updates", failures);
    registry.register(
        "dns_pool_records",
        "A records at the pool's name after the last sync",
        published,
    );
}

/// The process's counters and gauges: windows, late rounds, reloads, the window length and
/// the time spent reading the maps.
fn register_process(registry: &mut Registry, s: &Snapshot) {
    let counters = [
        ("windows", "Probe windows run", s.windows),
        (
            "late_rounds",
            "Probe rounds skipped because the loop ran late",
            s.late_rounds,
        ),
        ("reloads", "Config reloads applied", s.reloads),
        (
            "reload_failures",
            "Config reloads rejected (the running config stayed)",
            s.reload_failures,
        ),
    ];
    for (name, help, value) in counters {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    let gauges = [
        (
            "window_seconds",
            "The probe window in use",
            s.window_seconds,
        ),
        (
            "map_read_seconds",
            "Time reading the counters in the last window",
            s.map_read_seconds,
        ),
    ];
    for (name, help, value) in gauges {
        let gauge = FloatGauge::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    }
    if let Some(c) = &s.cluster {
        let gauges = [
            (
                "cluster_members",
                "Cluster members with a fresh heartbeat",
                c.members.len() as i64,
            ),
            (
                "cluster_targets",
                "Monitored targets shared among the members",
                c.targets as i64,
            ),
            (
                "cluster_share_targets",
                "Monitored targets this node probes",
                c.share as i64,
            ),
            (
                "cluster_lease_live",
                "1 if this node's etcd lease is live",
                i64::from(c.standing == "live"),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = Gauge::<i64>::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_hosts_groups_and_process_counters() {
        let s = Snapshot {
            windows: 42,
            late_rounds: 1,
            map_read_seconds: 0.000_25,
            hosts: vec![HostStatus {
                host: "192.0.2.1".parse().unwrap(),
                state: State::Up,
                since_window: 1,
                rtt_ms: Some(0.5),
                probes_sent: 126,
                replies: 125,
            }],
            groups: vec![GroupStatus {
                watch: "192.0.2.1".parse().unwrap(),
                vip: "192.0.2.100/24".into(),
                label: "eth0:1".into(),
                holding: true,
                claims: 1,
                releases: 0,
                yields: 2,
                restored: 3,
            }],
            dns: vec![DnsStatus {
                name: "www.example.test.".into(),
                server: "192.0.2.53:53".into(),
                in_sync: false,
                failures: 3,
                published: 2,
            }],
            reloads: 2,
            reload_failures: 1,
            window_seconds: 0.1,
            cluster: Some(crate::model::snapshot::ClusterStatus {
                node: "n1".into(),
                standing: "live".into(),
                members: vec!["n1".into(), "n2".into(), "n3".into()],
                targets: 254,
                share: 80,
                ..Default::default()
            }),
        };
        let text = render_metrics(&s);
        for line in [
            "xdprobe_host_up{host=\"192.0.2.1\"} 1",
            "xdprobe_host_probes_sent_total{host=\"192.0.2.1\"} 126",
            "xdprobe_host_replies_total{host=\"192.0.2.1\"} 125",
            "xdprobe_host_rtt_seconds{host=\"192.0.2.1\"} 0.0005",
            "xdprobe_group_vip_held{vip=\"192.0.2.100/24\",watch=\"192.0.2.1\"} 1",
            "xdprobe_group_claims_total{vip=\"192.0.2.100/24\",watch=\"192.0.2.1\"} 1",
            "xdprobe_group_yields_total{vip=\"192.0.2.100/24\",watch=\"192.0.2.1\"} 2",
            "xdprobe_group_vip_restored_total{vip=\"192.0.2.100/24\",watch=\"192.0.2.1\"} 3",
            "xdprobe_windows_total 42",
            "xdprobe_late_rounds_total 1",
            "xdprobe_reloads_total 2",
            "xdprobe_reload_failures_total 1",
            "xdprobe_window_seconds 0.1",
            "xdprobe_dns_pool_in_sync{pool=\"www.example.test.\",server=\"192.0.2.53:53\"} 0",
            "xdprobe_dns_pool_failures_total{pool=\"www.example.test.\",server=\"192.0.2.53:53\"} 3",
            "xdprobe_cluster_members 3",
            "xdprobe_cluster_targets 254",
            "xdprobe_cluster_share_targets 80",
            "xdprobe_cluster_lease_live 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_has_no_eof() {
        let open = "# HELP xdprobe_windows Probe windows run.\n# TYPE xdprobe_windows counter\n\
                    xdprobe_windows_total 42\n# HELP xdprobe_host_up 1 if the host is UP.\n\
                    # TYPE xdprobe_host_up gauge\nxdprobe_host_up{host=\"192.0.2.1\"} 1\n# EOF\n";
        assert_eq!(
            to_classic_text(open),
            "# HELP xdprobe_windows_total Probe windows run.\n\
             # TYPE xdprobe_windows_total counter\nxdprobe_windows_total 42\n\
             # HELP xdprobe_host_up 1 if the host is UP.\n# TYPE xdprobe_host_up gauge\n\
             xdprobe_host_up{host=\"192.0.2.1\"} 1\n"
        );
    }

    #[test]
    fn openmetrics_is_served_only_to_who_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        assert_eq!(Exposition::negotiate(Some("text/plain")), Exposition::Text);
        assert_eq!(Exposition::negotiate(Some("*/*")), Exposition::Text);
        assert_eq!(Exposition::negotiate(None), Exposition::Text);
        let s = Snapshot::default();
        assert!(Exposition::OpenMetrics.render(&s).ends_with("# EOF\n"));
        assert!(!Exposition::Text.render(&s).contains("# EOF"));
        // The content type says what the body is: OpenMetrics (with its `# EOF`) or the
        // classic text format, version 0.0.4.
        for format in [Exposition::OpenMetrics, Exposition::Text] {
            let (body, kind) = (format.render(&s), format.content_type());
            let open = body.ends_with("# EOF\n");
            assert_eq!(
                open,
                kind.starts_with("application/openmetrics-text"),
                "{kind}"
            );
            assert_eq!(
                !open,
                kind.starts_with("text/plain; version=0.0.4"),
                "{kind}"
            );
        }
    }
}
