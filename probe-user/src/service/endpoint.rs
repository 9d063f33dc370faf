//! The daemon's HTTP endpoint: `/metrics` (Prometheus text) and `/status` (JSON) from the
//! status snapshot, and `POST /reload` for local clients, handed to the reloader.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::{
    extract::ConnectInfo,
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{model::snapshot::Observed, service::metrics::Exposition};

/// A reload asked for over HTTP; the outcome goes back on `reply`.
pub struct ReloadRequest {
    pub reply: oneshot::Sender<ReloadOutcome>,
}

/// What a reload did, as `xdprobe reload` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// False when the new config was rejected (the old one keeps running).
    pub applied: bool,
    pub message: String,
}

/// The HTTP endpoint, wherever the config puts it now (a reload may move it or turn it off).
pub struct Endpoint {
    addr: Option<SocketAddr>,
    stop: CancellationToken,
    observed: Observed,
    reloads: mpsc::Sender<ReloadRequest>,
    shutdown: CancellationToken,
}

impl Endpoint {
    /// Nothing served yet; [`Endpoint::move_to`] starts serving.
    pub fn new(
        observed: Observed,
        reloads: mpsc::Sender<ReloadRequest>,
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
    reloads: mpsc::Sender<ReloadRequest>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("the metrics socket's address")?;
    let metrics = observed.clone();
    let app =
        Router::new()
            .route(
                "/metrics",
                get(move |headers: HeaderMap| {
                    // The body matches the content type: OpenMetrics to who asks for it (as
                    // Prometheus does), the classic text format to everyone else.
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                    let format = Exposition::negotiate(accept);
                    let body = format.render(&metrics.snapshot());
                    async move {
                        ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
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
    reloads: mpsc::Sender<ReloadRequest>,
) -> axum::response::Response {
    if !peer.ip().is_loopback() {
        return (StatusCode::FORBIDDEN, "reload is for local clients only\n").into_response();
    }
    let (reply, outcome) = oneshot::channel();
    if reloads.send(ReloadRequest { reply }).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match outcome.await {
        Ok(outcome) if outcome.applied => (StatusCode::OK, Json(outcome)).into_response(),
        Ok(outcome) => (StatusCode::UNPROCESSABLE_ENTITY, Json(outcome)).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}
