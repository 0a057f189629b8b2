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
//!
//! Exposure: these three serve customer data. With `processor.http_token`
//! set they need `Authorization: Bearer <token>`; without one they answer
//! only when the endpoint is bound to a loopback address, and `403`
//! otherwise. `/metrics`, `/healthz` and `/readyz` stay open for scrapers
//! and probes. A redirect goes only to a well-formed `http(s)://host:port`
//! of an instance in the directory, never to an address with a path,
//! credentials or a query.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
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
    /// Who may read customer data (see the module doc).
    pub access: Access,
}

/// Who may read the customer-data routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can connect (the endpoint is bound to loopback).
    Local,
    /// Requests with `Authorization: Bearer <token>`.
    Token(String),
    /// Nobody: bound beyond loopback without a token.
    Closed,
}

impl Access {
    /// The access rule for a token (if any) and the bound address.
    pub fn new(token: &str, bound: SocketAddr) -> Access {
        if !token.is_empty() {
            Access::Token(token.to_string())
        } else if bound.ip().is_loopback() {
            Access::Local
        } else {
            Access::Closed
        }
    }

    /// `Err` is the response to a request that may not read customer data.
    fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        match self {
            Access::Local => Ok(()),
            Access::Closed => Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "the read API is off: the endpoint listens beyond loopback and \
                 processor.http_token is not set",
            ))),
            Access::Token(want) => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                if constant_time_eq(given.as_bytes(), want.as_bytes()) {
                    Ok(())
                } else {
                    Err(Box::new(
                        (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            Json(json!({ "error": "a valid bearer token is required" })),
                        )
                            .into_response(),
                    ))
                }
            }
        }
    }
}

/// Compares two byte strings in time that does not depend on where they
/// differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an instance address from the directory may be a redirect
/// target: `http(s)://host[:port]`, nothing else.
pub fn valid_owner_address(owner: &str) -> bool {
    match reqwest::Url::parse(owner) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty())
                && u.username().is_empty()
                && u.password().is_none()
                && u.query().is_none()
                && u.fragment().is_none()
                && matches!(u.path(), "" | "/")
                && !owner.ends_with('/')
        }
        Err(_) => false,
    }
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
    if !valid_owner_address(owner) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the owner's published address is not a valid instance address",
        );
    }
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

async fn customer(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = s.access.check(&headers) {
        return *r;
    }
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

async fn latest_aggregates(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.access.check(&headers) {
        return *r;
    }
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

async fn instances(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.access.check(&headers) {
        return *r;
    }
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

/// The address to bind: a bare port (`9464` or `:9464`) means loopback
/// (`127.0.0.1:9464`); anything else is taken as given.
pub fn listen_address(addr: &str) -> String {
    let port = addr.strip_prefix(':').unwrap_or(addr);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{port}")
    } else {
        addr.to_string()
    }
}

/// Serves on `addr` from a background thread; returns the bound address.
/// `access(bound)` gives the read API's access rule once the address is known.
pub fn spawn(
    addr: &str,
    mut state: AppState,
    access: impl FnOnce(SocketAddr) -> Access,
) -> anyhow::Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(listen_address(addr)))?;
    let local = listener.local_addr()?;
    state.access = access(local);
    if state.access == Access::Closed {
        tracing::warn!(%local, "the read API is off: the HTTP endpoint listens beyond loopback and processor.http_token is not set (metrics and probes are served)");
    }
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
    fn access_rules() {
        let lo: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(Access::new("", lo), Access::Local);
        assert_eq!(Access::new("", any), Access::Closed);
        assert_eq!(Access::new("s3cret", any), Access::Token("s3cret".into()));
        let mut h = HeaderMap::new();
        assert!(Access::Local.check(&h).is_ok());
        assert_eq!(
            Access::Closed.check(&h).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        let t = Access::Token("s3cret".into());
        assert_eq!(t.check(&h).unwrap_err().status(), StatusCode::UNAUTHORIZED);
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert_eq!(t.check(&h).unwrap_err().status(), StatusCode::UNAUTHORIZED);
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(t.check(&h).is_ok());
    }

    #[test]
    fn only_plain_instance_addresses_are_redirect_targets() {
        for ok in [
            "http://siklus-1:9464",
            "https://10.0.0.5:443",
            "http://127.0.0.1:1",
        ] {
            assert!(valid_owner_address(ok), "{ok}");
        }
        for bad in [
            "http://evil.example/steal?x=",
            "http://user:pw@host:1",
            "javascript:alert(1)",
            "ftp://host:21",
            "http://host:1/",
            "http://host:1/path",
            "",
            "http://host:1#frag",
        ] {
            assert!(!valid_owner_address(bad), "{bad}");
        }
        let r = redirect("http://evil.example/x?", "/customers/a", Some(1));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(header::LOCATION).is_none());
    }

    #[test]
    fn a_bare_port_binds_loopback() {
        assert_eq!(listen_address("9464"), "127.0.0.1:9464");
        assert_eq!(listen_address(":9464"), "127.0.0.1:9464");
        assert_eq!(listen_address("0.0.0.0:9464"), "0.0.0.0:9464");
        assert_eq!(listen_address("[::1]:9464"), "[::1]:9464");
    }

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
