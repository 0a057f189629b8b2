//! The HTTP endpoint: Prometheus `/metrics`, `/healthz`, `/readyz`, and a
//! read API over the local state, `GET /customers/{id}`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use siklus_state::Store;

use crate::metrics::Metrics;
use crate::rules::Rules;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// The local state store.
    pub store: Arc<Store>,
    /// Rules, for deadlines.
    pub rules: Rules,
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/customers/{id}", get(customer))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    if s.metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn customer(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    if id.is_empty() || id.len() > 512 || id.chars().any(char::is_control) {
        return (StatusCode::BAD_REQUEST, "malformed customer id").into_response();
    }
    let store = s.store.clone();
    let found = tokio::task::spawn_blocking(move || store.find_profile(&id)).await;
    match found {
        Ok(Ok(Some((partition, bytes)))) => match crate::engine::decode_profile(&bytes) {
            Ok(p) => Json(serde_json::json!({
                "partition": partition,
                "next_deadline": crate::fold::next_deadline(&p, &s.rules).map(crate::time::format_rfc3339),
                "profile": p,
            }))
            .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        },
        Ok(Ok(None)) => (
            StatusCode::NOT_FOUND,
            "no profile for this customer on this instance",
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves on `addr` from a background thread; returns the bound address.
pub fn spawn(addr: &str, state: AppState) -> anyhow::Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Err(e) = axum::serve(listener, router(state)).await {
                    tracing::warn!(error = %e, "http server stopped");
                }
            })
        })?;
    tracing::info!(%local, "http endpoint listening");
    Ok(local)
}
