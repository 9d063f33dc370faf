//! What the daemon shows from the outside: `/metrics` (Prometheus text) and `/status` (JSON)
//! over HTTP, from one snapshot the prober and the failover tasks keep up to date.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use axum::{
    extract::ConnectInfo,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::service::reload;

/// The daemon's state as last published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub windows: u64,
    pub late_rounds: u64,
    /// Time spent reading the per-host counters in the last window.
    pub map_read_seconds: f64,
    pub hosts: Vec<HostStatus>,
    pub groups: Vec<GroupStatus>,
    #[serde(default)]
    pub dns: Vec<DnsStatus>,
    /// Reloads applied, and rejected (the running config stayed).
    #[serde(default)]
    pub reloads: u64,
    #[serde(default)]
    pub reload_failures: u64,
    /// The probe window now in use.
    #[serde(default)]
    pub window_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: Ipv4Addr,
    pub state: String,
    /// The window in which the host entered its state.
    pub since_window: u32,
    pub rtt_ms: Option<f64>,
    pub probes_sent: u64,
    pub replies: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub watch: Ipv4Addr,
    pub vip: String,
    pub label: String,
    pub holding: bool,
    pub claims: u64,
    pub releases: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsStatus {
    pub name: String,
    pub server: String,
    /// The server's records matched the pool at the last attempt.
    pub in_sync: bool,
    /// Failed attempts to read or update the server.
    pub failures: u64,
    /// A records at the name after the last successful sync (ours and others').
    pub published: u64,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Observed(Arc<Mutex<Snapshot>>);

impl Observed {
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(Mutex::new(snapshot)))
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

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

/// The snapshot in the Prometheus text format.
pub fn render_metrics(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("xdprobe");
    let up = Family::<HostLabels, Gauge>::default();
    let rtt = Family::<HostLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let sent = Family::<HostLabels, Counter>::default();
    let replies = Family::<HostLabels, Counter>::default();
    for h in &s.hosts {
        let l = HostLabels {
            host: h.host.to_string(),
        };
        up.get_or_create(&l).set(i64::from(h.state == "UP"));
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

    let holding = Family::<GroupLabels, Gauge>::default();
    let claims = Family::<GroupLabels, Counter>::default();
    let releases = Family::<GroupLabels, Counter>::default();
    for g in &s.groups {
        let l = GroupLabels {
            vip: g.vip.clone(),
            watch: g.watch.to_string(),
        };
        holding.get_or_create(&l).set(i64::from(g.holding));
        claims.get_or_create(&l).inc_by(g.claims);
        releases.get_or_create(&l).inc_by(g.releases);
    }
    registry.register(
        "group_vip_held",
        "1 while this node holds the group's VIP",
        holding,
    );
    registry.register("group_claims", "Times the VIP was taken", claims);
    registry.register("group_releases", "Times the VIP was given back", releases);

    let in_sync = Family::<PoolLabels, Gauge>::default();
    let failures = Family::<PoolLabels, Counter>::default();
    let published = Family::<PoolLabels, Gauge>::default();
    for d in &s.dns {
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

    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: f64| {
        let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    };
    counter(&mut registry, "windows", "Probe windows run", s.windows);
    counter(
        &mut registry,
        "late_rounds",
        "Probe rounds skipped because the loop ran late",
        s.late_rounds,
    );
    counter(
        &mut registry,
        "reloads",
        "Config reloads applied",
        s.reloads,
    );
    counter(
        &mut registry,
        "reload_failures",
        "Config reloads rejected (the running config stayed)",
        s.reload_failures,
    );
    gauge(
        &mut registry,
        "window_seconds",
        "The probe window in use",
        s.window_seconds,
    );
    gauge(
        &mut registry,
        "map_read_seconds",
        "Time reading the counters in the last window",
        s.map_read_seconds,
    );

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// The HTTP endpoint, wherever the config puts it now (a reload may move it or turn it off).
pub struct Endpoint {
    addr: Option<SocketAddr>,
    stop: CancellationToken,
    observed: Observed,
    reloads: mpsc::Sender<reload::Request>,
    shutdown: CancellationToken,
}

impl Endpoint {
    /// Nothing served yet; [`Endpoint::move_to`] starts serving.
    pub fn new(
        observed: Observed,
        reloads: mpsc::Sender<reload::Request>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            addr: None,
            stop: CancellationToken::new(),
            observed,
            reloads,
            shutdown,
        }
    }

    /// Serves on `addr` from now on (`None`: nowhere). The new address is bound before the
    /// old one is let go: if it cannot be, nothing changed.
    pub async fn move_to(&mut self, addr: Option<SocketAddr>) -> anyhow::Result<()> {
        let listener = match addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening for metrics on {addr}"))?,
            ),
            None => None,
        };
        self.stop.cancel();
        self.stop = self.shutdown.child_token();
        self.addr = addr;
        if let Some(listener) = listener {
            let (observed, reloads, stop) = (
                self.observed.clone(),
                self.reloads.clone(),
                self.stop.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = serve(listener, observed, reloads, stop).await {
                    error!(error = %format!("{e:#}"), "metrics endpoint stopped; probing and failover go on");
                }
            });
        }
        Ok(())
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }
}

/// Serves `/metrics` and `/status` on `listener` until `shutdown`, and `POST /reload`
/// (loopback clients only) by handing the request to the reloader.
async fn serve(
    listener: tokio::net::TcpListener,
    observed: Observed,
    reloads: mpsc::Sender<reload::Request>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("the metrics socket's address")?;
    let metrics = observed.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = render_metrics(&metrics.snapshot());
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let snapshot = observed.snapshot();
                async move { Json(snapshot) }
            }),
        )
        .route(
            "/reload",
            post(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                reload_request(peer, reloads.clone())
            }),
        );
    info!(%addr, "serving /metrics, /status and /reload");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
    .context("serving HTTP")
}

/// `POST /reload`: the reloader's outcome, 200 if applied, 422 if the config was rejected.
async fn reload_request(
    peer: SocketAddr,
    reloads: mpsc::Sender<reload::Request>,
) -> axum::response::Response {
    if !peer.ip().is_loopback() {
        return (StatusCode::FORBIDDEN, "reload is for local clients only\n").into_response();
    }
    let (reply, outcome) = oneshot::channel();
    if reloads.send(reload::Request { reply }).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match outcome.await {
        Ok(outcome) if outcome.applied => (StatusCode::OK, Json(outcome)).into_response(),
        Ok(outcome) => (StatusCode::UNPROCESSABLE_ENTITY, Json(outcome)).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
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
                state: "UP".into(),
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
        };
        let text = render_metrics(&s);
        for line in [
            "xdprobe_host_up{host=\"192.0.2.1\"} 1",
            "xdprobe_host_probes_sent_total{host=\"192.0.2.1\"} 126",
            "xdprobe_host_replies_total{host=\"192.0.2.1\"} 125",
            "xdprobe_host_rtt_seconds{host=\"192.0.2.1\"} 0.0005",
            "xdprobe_group_vip_held{vip=\"192.0.2.100/24\",watch=\"192.0.2.1\"} 1",
            "xdprobe_group_claims_total{vip=\"192.0.2.100/24\",watch=\"192.0.2.1\"} 1",
            "xdprobe_windows_total 42",
            "xdprobe_late_rounds_total 1",
            "xdprobe_reloads_total 2",
            "xdprobe_reload_failures_total 1",
            "xdprobe_window_seconds 0.1",
            "xdprobe_dns_pool_in_sync{pool=\"www.example.test.\",server=\"192.0.2.53:53\"} 0",
            "xdprobe_dns_pool_failures_total{pool=\"www.example.test.\",server=\"192.0.2.53:53\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
