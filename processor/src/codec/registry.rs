//! A blocking client of the Confluent Schema Registry REST API (also spoken
//! by Apicurio's `ccompat` API and by Redpanda).
//!
//! Only what siklus needs:
//! - `GET /schemas/ids/{id}`: the writer schema of an input record;
//! - `POST /subjects/{subject}/versions`: register an output schema;
//! - `POST /subjects/{subject}`: look up the id of an already registered one.
//!
//! Errors say whether they are the registry's fault (unreachable, 5xx, a
//! refused login: [`RegistryError::is_retriable`]) or a definite answer about
//! the schema (not found, rejected). The decoder retries the former with
//! exponential backoff and never blames the record for them.

use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Url;
use serde::Deserialize;

use crate::config::{redact_url, SchemaRegistry};

/// The media type of the registry's requests and answers.
pub const CONTENT_TYPE_V1: &str = "application/vnd.schemaregistry.v1+json";

/// Registry error code: subject not found.
pub const SUBJECT_NOT_FOUND: i64 = 40401;
/// Registry error code: version not found.
pub const VERSION_NOT_FOUND: i64 = 40402;
/// Registry error code: schema not found.
pub const SCHEMA_NOT_FOUND: i64 = 40403;

/// The subject of a topic's record values under the TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// Why a registry call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or could not answer (connection
    /// refused, timeout, 5xx, 429, a refused login, an unexpected answer).
    /// Retry later: it says nothing about the schema or the record.
    #[error("schema registry {url} unavailable: {reason}")]
    Unavailable {
        /// The request URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The registry answered that the schema, subject or version does not exist.
    #[error("schema registry has no {what} (error {code}: {message})")]
    NotFound {
        /// What was asked for, e.g. `schema id 7`.
        what: String,
        /// The registry's error code (40401, 40402 or 40403).
        code: i64,
        /// The registry's message.
        message: String,
    },
    /// The registry refused the request for good (e.g. 409: incompatible
    /// with the subject's earlier versions; 422: not a valid schema).
    #[error("schema registry refused {what}: HTTP {status}: {message}")]
    Rejected {
        /// What was asked for.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message (or body).
        message: String,
    },
    /// The client cannot be built from the configuration (bad URL, TLS files).
    #[error("schema registry client: {0}")]
    Config(String),
}

impl RegistryError {
    /// Whether trying again later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A schema as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    /// The global schema id (the one in the Confluent header).
    pub id: u32,
    /// `AVRO`, `PROTOBUF` or `JSON` (the registry omits it for Avro).
    pub schema_type: String,
    /// The schema text.
    pub schema: String,
    /// Names of the schema's references, if any (not resolved by siklus).
    pub references: Vec<String>,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<ReferenceBody>,
}

#[derive(Deserialize)]
struct ReferenceBody {
    name: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: i64,
    #[serde(default)]
    message: String,
}

/// Backoff between retries of an unreachable registry: doubles from `first`
/// up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First wait.
    pub first: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// A Schema Registry client (blocking; one per thread that needs it, or shared).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: Url,
    http: Client,
    auth: Option<(String, String)>,
    backoff: Backoff,
}

impl RegistryClient {
    /// A client for the configured registry: basic auth from
    /// `basic_auth_user_info`, the CA and client certificate from the
    /// `ssl_*` files.
    pub fn new(cfg: &SchemaRegistry) -> Result<RegistryClient, RegistryError> {
        let base = Url::parse(cfg.url.trim())
            .map_err(|e| RegistryError::Config(format!("url {:?}: {e}", redact_url(&cfg.url))))?;
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| RegistryError::Config(format!("reading {}: {e}", p.display())))
        };
        let mut b = Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms));
        if let Some(ca) = &cfg.ssl_ca_location {
            let cert = reqwest::Certificate::from_pem(&read(ca)?).map_err(|e| {
                RegistryError::Config(format!("CA certificate {}: {e}", ca.display()))
            })?;
            b = b.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&cfg.ssl_certificate_location, &cfg.ssl_key_location) {
            let identity =
                reqwest::Identity::from_pkcs8_pem(&read(cert)?, &read(key)?).map_err(|e| {
                    RegistryError::Config(format!(
                        "client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
            b = b.identity(identity);
        }
        let http = b
            .build()
            .map_err(|e| RegistryError::Config(format!("HTTP client: {e}")))?;
        let auth = match cfg.basic_auth_user_info.split_once(':') {
            Some((u, p)) if !cfg.basic_auth_user_info.is_empty() => {
                Some((u.to_string(), p.to_string()))
            }
            _ => None,
        };
        Ok(RegistryClient {
            base,
            http,
            auth,
            backoff: Backoff {
                first: Duration::from_millis(cfg.retry_backoff_ms),
                max: Duration::from_millis(cfg.retry_backoff_max_ms),
            },
        })
    }

    /// The base URL as shown in logs: a password in it is masked.
    pub fn url(&self) -> String {
        shown(&self.base)
    }

    /// The retry backoff.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut path) = u.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        u
    }

    fn send(&self, req: RequestBuilder, url: &Url) -> Result<Response, RegistryError> {
        let req = req.header(ACCEPT, CONTENT_TYPE_V1);
        let req = match &self.auth {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        };
        req.send().map_err(|e| RegistryError::Unavailable {
            url: shown(url),
            reason: redact_url(&error_chain(&e)),
        })
    }

    /// Reads a successful answer as `T`, or classifies the failure.
    fn answer<T: for<'de> Deserialize<'de>>(
        &self,
        resp: Response,
        url: &Url,
        what: &str,
    ) -> Result<T, RegistryError> {
        let status = resp.status();
        let body = resp.text().map_err(|e| RegistryError::Unavailable {
            url: shown(url),
            reason: format!("reading the answer: {}", error_chain(&e)),
        })?;
        if status.is_success() {
            return serde_json::from_str(&body).map_err(|e| RegistryError::Unavailable {
                url: shown(url),
                reason: format!("unexpected answer ({e}): {}", snippet(&body)),
            });
        }
        let err: Option<ErrorBody> = serde_json::from_str(&body).ok();
        let code = status.as_u16();
        match (code, err) {
            (404, Some(e))
                if [SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND]
                    .contains(&e.error_code) =>
            {
                Err(RegistryError::NotFound {
                    what: what.to_string(),
                    code: e.error_code,
                    message: e.message,
                })
            }
            // A 404 without a registry error code is a wrong URL, not an
            // unknown schema: never blame the record for it.
            (404, _) => Err(RegistryError::Unavailable {
                url: shown(url),
                reason: format!(
                    "HTTP 404 without a registry error code (is schema_registry.url right?): {}",
                    snippet(&body)
                ),
            }),
            (401 | 403, _) => Err(RegistryError::Unavailable {
                url: shown(url),
                reason: format!(
                    "HTTP {code}: login refused (check schema_registry.basic_auth_user_info): {}",
                    snippet(&body)
                ),
            }),
            (408 | 429, _) | (500..=599, _) => Err(RegistryError::Unavailable {
                url: shown(url),
                reason: format!("HTTP {code}: {}", snippet(&body)),
            }),
            (_, e) => Err(RegistryError::Rejected {
                what: what.to_string(),
                status: code,
                message: e.map_or_else(|| snippet(&body), |e| e.message),
            }),
        }
    }

    /// `GET /schemas/ids/{id}`: the schema with this global id.
    pub fn schema_by_id(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        let url = self.endpoint(&["schemas", "ids", &id.to_string()]);
        let resp = self.send(self.http.get(url.clone()), &url)?;
        let body: SchemaBody = self.answer(resp, &url, &format!("schema id {id}"))?;
        Ok(RegisteredSchema {
            id,
            schema_type: body.schema_type.unwrap_or_else(|| "AVRO".to_string()),
            schema: body.schema,
            references: body.references.into_iter().map(|r| r.name).collect(),
        })
    }

    fn post_schema(
        &self,
        segments: &[&str],
        schema: &str,
        what: &str,
    ) -> Result<u32, RegistryError> {
        let url = self.endpoint(segments);
        let body = serde_json::json!({ "schema": schema }).to_string();
        let req = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, CONTENT_TYPE_V1)
            .body(body);
        let resp = self.send(req, &url)?;
        let id: IdBody = self.answer(resp, &url, what)?;
        Ok(id.id)
    }

    /// `POST /subjects/{subject}/versions`: registers an Avro schema under
    /// `subject` (or finds it registered already) and returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.post_schema(
            &["subjects", subject, "versions"],
            schema,
            &format!("registration under subject {subject}"),
        )
    }

    /// `POST /subjects/{subject}`: the id of an Avro schema already
    /// registered under `subject`.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.post_schema(
            &["subjects", subject],
            schema,
            &format!("schema under subject {subject}"),
        )
    }

    /// Runs `call` until it succeeds or fails for good, waiting with
    /// exponential backoff after each retriable failure. `on_retry` sees
    /// every retriable failure. When `stop` returns true while the registry
    /// is unreachable, the last error is returned.
    pub fn retrying<T>(
        &self,
        stop: &dyn Fn() -> bool,
        mut on_retry: impl FnMut(&RegistryError, Duration),
        mut call: impl FnMut(&RegistryClient) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut failures = 0u32;
        loop {
            match call(self) {
                Err(e) if e.is_retriable() => {
                    failures = failures.saturating_add(1);
                    let wait = self.backoff.delay(failures);
                    on_retry(&e, wait);
                    let until = Instant::now() + wait;
                    loop {
                        if stop() {
                            return Err(e);
                        }
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::sleep(left.min(Duration::from_millis(50)));
                    }
                }
                other => return other,
            }
        }
    }
}

/// A URL as errors and logs show it: with its password masked.
fn shown(url: &Url) -> String {
    redact_url(url.as_str())
}

/// The error and its causes on one line (reqwest hides the useful part,
/// e.g. "Connection refused", in its sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn snippet(body: &str) -> String {
    let t = body.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let d: Vec<u64> = (1..=6).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(200), Duration::from_secs(1));
    }

    #[test]
    fn endpoints_keep_a_path_prefix_and_escape_subjects() {
        let cfg = SchemaRegistry {
            url: "http://registry:8081/apis/ccompat/v7/".into(),
            ..Default::default()
        };
        let c = RegistryClient::new(&cfg).unwrap();
        assert_eq!(
            c.endpoint(&["subjects", "a b/c-value", "versions"])
                .as_str(),
            "http://registry:8081/apis/ccompat/v7/subjects/a%20b%2Fc-value/versions"
        );
        assert_eq!(
            c.endpoint(&["schemas", "ids", "7"]).as_str(),
            "http://registry:8081/apis/ccompat/v7/schemas/ids/7"
        );
        assert_eq!(
            value_subject("siklus.transitions"),
            "siklus.transitions-value"
        );
    }

    #[test]
    fn unreadable_tls_files_are_config_errors() {
        let cfg = SchemaRegistry {
            url: "https://registry:8081".into(),
            ssl_ca_location: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = RegistryClient::new(&cfg).unwrap_err();
        assert!(matches!(err, RegistryError::Config(_)), "{err}");
        assert!(!err.is_retriable());

        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let cfg = SchemaRegistry {
            ssl_ca_location: Some(bad),
            ..cfg
        };
        assert!(matches!(
            RegistryClient::new(&cfg),
            Err(RegistryError::Config(_))
        ));
    }

    #[test]
    fn a_refused_connection_is_retriable_and_retrying_stops_when_told() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = SchemaRegistry {
            url: format!("http://127.0.0.1:{port}"),
            retry_backoff_ms: 1,
            retry_backoff_max_ms: 4,
            ..Default::default()
        };
        let c = RegistryClient::new(&cfg).unwrap();
        let err = c.schema_by_id(1).unwrap_err();
        assert!(err.is_retriable(), "{err}");
        let mut retries = 0;
        let tries = std::cell::Cell::new(0);
        let err = c
            .retrying(
                &|| tries.get() >= 3,
                |_, _| retries += 1,
                |c| {
                    tries.set(tries.get() + 1);
                    c.schema_by_id(1)
                },
            )
            .unwrap_err();
        assert!(err.is_retriable());
        assert_eq!(tries.get(), 3);
        assert_eq!(retries, 3);
    }
}
