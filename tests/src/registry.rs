//! An in-test Confluent Schema Registry: the part of the REST API that
//! siklus and the Confluent clients use, on a loopback port, with knobs to
//! make it fail (5xx) and a log of the requests it served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

/// One request the registry saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET` or `POST`.
    pub method: String,
    /// The path.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

#[derive(Debug, Clone)]
struct Stored {
    schema: String,
    schema_type: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Schemas by global id.
    schemas: BTreeMap<u32, Stored>,
    /// Subject -> ids of its versions, in order.
    subjects: BTreeMap<String, Vec<u32>>,
    next_id: u32,
    /// Requests still to fail with 503.
    fail_next: u32,
    /// `user:password` the registry demands, if any.
    credentials: Option<String>,
    seen: Vec<Seen>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running in-test registry; it stops when dropped.
pub struct MockRegistry {
    shared: Shared,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _runtime: tokio::runtime::Runtime,
}

fn error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        [("content-type", "application/vnd.schemaregistry.v1+json")],
        json!({"error_code": code, "message": message}).to_string(),
    )
        .into_response()
}

fn ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/vnd.schemaregistry.v1+json")],
        v.to_string(),
    )
        .into_response()
}

/// Auth, failure injection and the request log; `Some` ends the request.
fn gate(s: &Shared, method: &str, path: String, headers: &HeaderMap) -> Option<Response> {
    let mut g = s.lock();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    g.seen.push(Seen {
        method: method.into(),
        path,
        authorization: authorization.clone(),
    });
    if g.fail_next > 0 {
        g.fail_next -= 1;
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            50003,
            "registry unavailable (injected)",
        ));
    }
    if let Some(c) = &g.credentials {
        let want = format!("Basic {}", base64(c.as_bytes()));
        if authorization.as_deref() != Some(want.as_str()) {
            return Some(error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized"));
        }
    }
    None
}

/// Standard base64 with padding (for the expected `Authorization` header).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn by_id(State(s): State<Shared>, Path(id): Path<u32>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&s, "GET", format!("/schemas/ids/{id}"), &headers) {
        return r;
    }
    let g = s.lock();
    match g.schemas.get(&id) {
        Some(st) => {
            let mut v = json!({"schema": st.schema});
            if let Some(t) = &st.schema_type {
                v["schemaType"] = json!(t);
            }
            ok(v)
        }
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

/// The schema of a registration or lookup body; `Err` is the 422 message.
fn parse_body(body: &Bytes) -> Result<Stored, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let schema = v["schema"].as_str().ok_or("no schema")?.to_string();
    let schema_type = v["schemaType"]
        .as_str()
        .filter(|t| *t != "AVRO")
        .map(str::to_string);
    if schema_type.is_none() && apache_avro::Schema::parse_str(&schema).is_err() {
        return Err("Invalid schema".into());
    }
    Ok(Stored {
        schema,
        schema_type,
    })
}

fn invalid(message: String) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, 42201, &message)
}

fn same(a: &Stored, b: &Stored) -> bool {
    if a.schema_type != b.schema_type {
        return false;
    }
    match (
        apache_avro::Schema::parse_str(&a.schema),
        apache_avro::Schema::parse_str(&b.schema),
    ) {
        (Ok(x), Ok(y)) => x.canonical_form() == y.canonical_form(),
        _ => a.schema == b.schema,
    }
}

async fn register(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(
        &s,
        "POST",
        format!("/subjects/{subject}/versions"),
        &headers,
    ) {
        return r;
    }
    let new = match parse_body(&body) {
        Ok(n) => n,
        Err(m) => return invalid(m),
    };
    let mut g = s.lock();
    let existing = g
        .schemas
        .iter()
        .find(|(_, st)| same(st, &new))
        .map(|(id, _)| *id);
    let id = match existing {
        Some(id) => id,
        None => {
            g.next_id += 1;
            let id = g.next_id;
            g.schemas.insert(id, new);
            id
        }
    };
    let versions = g.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    ok(json!({ "id": id }))
}

async fn lookup(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&s, "POST", format!("/subjects/{subject}"), &headers) {
        return r;
    }
    let wanted = match parse_body(&body) {
        Ok(n) => n,
        Err(m) => return invalid(m),
    };
    let g = s.lock();
    let Some(versions) = g.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, "Subject not found");
    };
    for (i, id) in versions.iter().enumerate() {
        if g.schemas.get(id).is_some_and(|st| same(st, &wanted)) {
            return ok(json!({
                "subject": subject,
                "id": id,
                "version": i + 1,
                "schema": g.schemas[id].schema,
            }));
        }
    }
    error(StatusCode::NOT_FOUND, 40403, "Schema not found")
}

async fn version(
    State(s): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(
        &s,
        "GET",
        format!("/subjects/{subject}/versions/{version}"),
        &headers,
    ) {
        return r;
    }
    let g = s.lock();
    let Some(versions) = g.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, "Subject not found");
    };
    let index = match version.as_str() {
        "latest" => versions.len().checked_sub(1),
        v => v.parse::<usize>().ok().and_then(|n| n.checked_sub(1)),
    };
    match index.and_then(|i| versions.get(i).map(|id| (i, *id))) {
        Some((i, id)) => ok(json!({
            "subject": subject,
            "id": id,
            "version": i + 1,
            "schema": g.schemas[&id].schema,
        })),
        None => error(StatusCode::NOT_FOUND, 40402, "Version not found"),
    }
}

async fn subjects(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&s, "GET", "/subjects".into(), &headers) {
        return r;
    }
    let g = s.lock();
    ok(json!(g.subjects.keys().collect::<Vec<_>>()))
}

async fn fallback(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        404,
        &format!("mock registry: no route for {method} {uri}"),
    )
}

impl MockRegistry {
    /// Starts a registry on a free loopback port.
    pub fn start() -> MockRegistry {
        MockRegistry::start_on("127.0.0.1:0".parse().expect("addr"))
    }

    /// Starts a registry on `addr` (to bring a registry "back up" on a
    /// port that refused connections until now).
    pub fn start_on(addr: SocketAddr) -> MockRegistry {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Shared(Arc::new(Mutex::new(Inner {
            next_id: 100,
            ..Default::default()
        })));
        let app = Router::new()
            .route("/schemas/ids/{id}", get(by_id))
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .fallback(fallback)
            .with_state(shared.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind the mock registry");
        let local = listener.local_addr().expect("local addr");
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockRegistry {
            shared,
            url: format!("http://{local}"),
            _runtime: rt,
        }
    }

    /// Registers a schema under `subject` as a producer would; returns its id.
    pub fn add(&self, subject: &str, schema: &str) -> u32 {
        self.add_typed(subject, schema, None)
    }

    /// Registers a schema of another type (`PROTOBUF`, `JSON`).
    pub fn add_typed(&self, subject: &str, schema: &str, schema_type: Option<&str>) -> u32 {
        let mut g = self.shared.lock();
        g.next_id += 1;
        let id = g.next_id;
        g.schemas.insert(
            id,
            Stored {
                schema: schema.into(),
                schema_type: schema_type.map(str::to_string),
            },
        );
        g.subjects.entry(subject.into()).or_default().push(id);
        id
    }

    /// The next `n` requests fail with 503.
    pub fn fail_next(&self, n: u32) {
        self.shared.lock().fail_next = n;
    }

    /// Demands HTTP basic auth with `user:password`.
    pub fn require_auth(&self, user_info: &str) {
        self.shared.lock().credentials = Some(user_info.into());
    }

    /// Every request served so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// The schema ids of a subject's versions.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.shared
            .lock()
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    /// The schema text of an id.
    pub fn schema(&self, id: u32) -> Option<String> {
        self.shared
            .lock()
            .schemas
            .get(&id)
            .map(|s| s.schema.clone())
    }
}
