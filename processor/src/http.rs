//! The HTTP endpoint: Prometheus `/metrics`, `/healthz`, `/readyz`, and a
//! read API over the state.
//!
//! - `GET /customers/{id}`: the customer's profile, next deadline and last
//!   transitions, from the instance that owns the customer's input
//!   partition. Another instance answers `307 Temporary Redirect` to the
//!   owner (from the instance directory, see [`crate::instances`]), or `503`
//!   while no owner is known. `404` when the owner has no such customer,
//!   `400` for a malformed id.
//! - `GET /aggregates/latest`: the latest closed window per granularity and
//!   the recent cohort cells, from the instance that runs the merge stage
//!   (others redirect to it).
//! - `GET /instances`: the directory as this instance reads it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use siklus_state::Store;

use crate::engine::decode_stored_profile;
use crate::instances::Directory;
use crate::metrics::Metrics;
use crate::partitioner::KeyPartitioner;
use crate::rules::Rules;
use crate::time::format_rfc3339;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// Process metrics (also: which partitions are assigned here).
    pub metrics: Arc<Metrics>,
    /// The local state store.
    pub store: Arc<Store>,
    /// Rules, for deadlines.
    pub rules: Rules,
    /// Partitioner of the input's producers.
    pub partitioner: KeyPartitioner,
    /// Partitions of the input topic.
    pub partitions: u32,
    /// The group's instances, when instances publish their address.
    pub directory: Option<Directory>,
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/customers/{id}", get(customer))
        .route("/aggregates/latest", get(latest_aggregates))
        .route("/instances", get(instances))
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

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// `307` to `owner` + `path`, with a JSON body naming the owner.
fn redirect(owner: &str, path: &str, partition: Option<u32>) -> Response {
    let location = format!("{owner}{path}");
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location.clone())],
        Json(json!({
            "error": "served by another instance",
            "owner": owner,
            "partition": partition,
            "location": location,
        })),
    )
        .into_response()
}

/// Whether `id` can be a customer id (the dead-letter rules: non-empty, at
/// most [`crate::engine::MAX_ID_BYTES`] bytes, no control characters).
pub fn valid_customer_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= crate::engine::MAX_ID_BYTES && !id.chars().any(char::is_control)
}

async fn customer(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    if !valid_customer_id(&id) {
        return error(StatusCode::BAD_REQUEST, "malformed customer id");
    }
    let assigned: Vec<u32> = s
        .metrics
        .partitions()
        .into_iter()
        .filter(|(_, f)| f.assigned)
        .map(|(p, _)| p)
        .collect();
    let partition = s.partitioner.partition(id.as_bytes(), s.partitions);
    let store = s.store.clone();
    let rules = s.rules.clone();
    let lookup_id = id.clone();
    let local = assigned.clone();
    // The partition the partitioner names first; then the other local ones,
    // so that a producer with another partitioner is still served here.
    let found = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let mut order = local;
        order.sort_by_key(|p| *p != partition);
        for p in order {
            if let Some(bytes) = store.profile(p, &lookup_id).map_err(|e| e.to_string())? {
                let mut stored = decode_stored_profile(&bytes)?;
                stored.fill_transition_ids();
                return Ok(Some((p, stored.profile, stored.transitions)));
            }
        }
        Ok(None)
    })
    .await;
    match found {
        Ok(Ok(Some((p, profile, recent)))) => {
            let transitions: Vec<serde_json::Value> = recent
                .iter()
                .rev()
                .map(|t| {
                    json!({
                        "transition_id": t.transition_id,
                        "dimension": t.dimension,
                        "from_stage": t.from_stage,
                        "to_stage": t.to_stage,
                        "occurred_at": format_rfc3339(t.occurred_at),
                        "triggering_event_id": t.triggering_event_id,
                        "rule": t.rule,
                        "seq": t.seq,
                    })
                })
                .collect();
            Json(json!({
                "customer_id": id,
                "partition": p,
                "next_deadline": crate::fold::next_deadline(&profile, &rules).map(format_rfc3339),
                "profile": profile,
                "last_transitions": transitions,
            }))
            .into_response()
        }
        Ok(Ok(None)) if assigned.contains(&partition) => error(
            StatusCode::NOT_FOUND,
            format!("no customer {id:?} in partition {partition}"),
        ),
        Ok(Ok(None)) => {
            let path = format!("/customers/{}", percent_encode(&id));
            match s.directory.as_ref().and_then(|d| d.owner_of(partition)) {
                Some(owner) => redirect(&owner, &path, Some(partition)),
                None => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("partition {partition} is not assigned here and no owner is known"),
                ),
            }
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn latest_aggregates(State(s): State<AppState>) -> Response {
    if !s.metrics.merge_owner.load(Ordering::Relaxed) {
        return match s.directory.as_ref().and_then(Directory::merge_owner) {
            Some(owner) => redirect(&owner, "/aggregates/latest", None),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the merge stage does not run here and its instance is not known",
            ),
        };
    }
    let latest = s.metrics.latest();
    let aggregates: serde_json::Map<String, serde_json::Value> = latest
        .aggregates
        .iter()
        .map(|(g, a)| (g.as_str().to_string(), json!(a)))
        .collect();
    let cohorts: Vec<_> = latest.cohorts.values().collect();
    Json(json!({ "aggregates": aggregates, "cohorts": cohorts })).into_response()
}

async fn instances(State(s): State<AppState>) -> Response {
    let all = s.directory.as_ref().map(Directory::all).unwrap_or_default();
    Json(json!({ "instances": all })).into_response()
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters stay).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        assert!(valid_customer_id("cust-1"));
        assert!(!valid_customer_id(""));
        assert!(!valid_customer_id("a\u{7}b"));
        assert!(!valid_customer_id(
            &"x".repeat(crate::engine::MAX_ID_BYTES + 1)
        ));
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
