//! Telemetry: logs, and OpenTelemetry traces and metrics over OTLP.
//!
//! - Logs go to stderr, pretty or as JSON lines ([`LogFormat`]), filtered by
//!   `SIKLUS_LOG` (an `EnvFilter` directive such as `info,siklus=debug`).
//!   Pretty lines are coloured only when stderr is a terminal and `NO_COLOR`
//!   is not set (<https://no-color.org>).
//! - Traces and metrics are exported over OTLP/HTTP (protobuf) when the
//!   standard OpenTelemetry variables name an endpoint:
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (both signals, `/v1/traces` and
//!   `/v1/metrics` appended), or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//!   `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (used as they are). The service
//!   name is `OTEL_SERVICE_NAME` (default `siklus`); the exporters also honour
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT` and `..._COMPRESSION`, and
//!   the metric reader `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60 000).
//! - Spans are the `tracing` spans of the code (a step of the live job, a
//!   merge step, a replay); OTLP metrics are the families of
//!   [`Metrics`], read at each export, so both paths carry the same figures.
//!
//! [`Telemetry::shutdown`] flushes both exporters; call it before exiting.
//!
//! OTLP export needs the `otlp` cargo feature (`--features otlp`; the
//! Docker image has it); a build without it logs a warning when the
//! variables ask for OTLP.

use std::sync::Arc;

#[cfg(feature = "otlp")]
use opentelemetry::metrics::{Meter, MeterProvider as _};
#[cfg(feature = "otlp")]
use opentelemetry::trace::TracerProvider as _;
#[cfg(feature = "otlp")]
use opentelemetry::KeyValue;
#[cfg(feature = "otlp")]
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig as _};
#[cfg(feature = "otlp")]
use opentelemetry_sdk::metrics::SdkMeterProvider;
#[cfg(feature = "otlp")]
use opentelemetry_sdk::trace::SdkTracerProvider;
#[cfg(feature = "otlp")]
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

#[cfg(feature = "otlp")]
use crate::metrics::Kind;
use crate::metrics::Metrics;

/// Format of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Whether log lines carry ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to a non-empty value.
pub fn use_ansi(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Where OTLP data goes; `None` turns a signal off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// Full URL of the traces endpoint (`…/v1/traces`).
    pub traces_endpoint: Option<String>,
    /// Full URL of the metrics endpoint (`…/v1/metrics`).
    pub metrics_endpoint: Option<String>,
    /// `service.name` of the resource.
    pub service_name: String,
}

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

impl OtlpSettings {
    /// Reads the standard OpenTelemetry variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let signal = |specific: &str, path: &str| {
            get(specific).or_else(|| base.as_deref().map(|b| join(b, path)))
        };
        OtlpSettings {
            traces_endpoint: signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/v1/traces"),
            metrics_endpoint: signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "/v1/metrics"),
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "siklus".into()),
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

/// The OTLP providers of the process (none when OTLP is off).
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    tracer: Option<SdkTracerProvider>,
    #[cfg(feature = "otlp")]
    meter: Option<SdkMeterProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.traces_on())
            .field("metrics", &self.metrics_on())
            .finish()
    }
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn traces_on(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.tracer.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }

    /// Whether metrics are exported.
    pub fn metrics_on(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.meter.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }

    /// Builds the OTLP providers of `settings` without installing anything
    /// process-wide. Without the `otlp` feature it fails when `settings`
    /// asks for an export.
    #[cfg(not(feature = "otlp"))]
    pub fn build(settings: &OtlpSettings) -> anyhow::Result<Telemetry> {
        if settings.traces_endpoint.is_some() || settings.metrics_endpoint.is_some() {
            anyhow::bail!("this build of siklus has no OTLP support (cargo feature `otlp`)");
        }
        Ok(Telemetry::default())
    }

    /// Builds the OTLP providers of `settings` without installing anything
    /// process-wide.
    #[cfg(feature = "otlp")]
    pub fn build(settings: &OtlpSettings) -> anyhow::Result<Telemetry> {
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let tracer = match &settings.traces_endpoint {
            Some(url) => {
                let exporter = SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(url.clone())
                    .build()?;
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource.clone())
                        .build(),
                )
            }
            None => None,
        };
        let meter = match &settings.metrics_endpoint {
            Some(url) => {
                let exporter = MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(url.clone())
                    .build()?;
                Some(
                    SdkMeterProvider::builder()
                        .with_periodic_exporter(exporter)
                        .with_resource(resource)
                        .build(),
                )
            }
            None => None,
        };
        Ok(Telemetry { tracer, meter })
    }

    /// Installs the process-wide subscriber: logs in `format` filtered by
    /// `SIKLUS_LOG` (else `default_filter`), and the OTLP exporters the
    /// environment asks for. An exporter that cannot be built is logged and
    /// left off; it never stops the process.
    pub fn init(format: LogFormat, default_filter: &str) -> Telemetry {
        let filter = tracing_subscriber::EnvFilter::try_from_env("SIKLUS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
        let settings = OtlpSettings::from_env();
        let (telemetry, error) = match Telemetry::build(&settings) {
            Ok(t) => (t, None),
            Err(e) => (Telemetry::default(), Some(e)),
        };
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(use_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ));
        let fmt = match format {
            LogFormat::Json => fmt.json().boxed(),
            LogFormat::Pretty => fmt.boxed(),
        };
        #[cfg(feature = "otlp")]
        let otel = telemetry
            .tracer
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("siklus")));
        #[cfg(not(feature = "otlp"))]
        let otel: Option<tracing_subscriber::layer::Identity> = None;
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(otel)
            .init();
        if let Some(e) = error {
            tracing::warn!(error = %e, "OTLP export is off: the exporter could not be built");
        } else if telemetry.traces_on() || telemetry.metrics_on() {
            tracing::info!(
                traces = ?settings.traces_endpoint,
                metrics = ?settings.metrics_endpoint,
                service = %settings.service_name,
                "OTLP export on"
            );
        }
        telemetry
    }

    /// The meter of siklus, when OTLP metrics are on.
    #[cfg(feature = "otlp")]
    pub fn meter(&self) -> Option<Meter> {
        self.meter.as_ref().map(|p| p.meter("siklus"))
    }

    /// Exports the families of `metrics` over OTLP (a no-op when OTLP
    /// metrics are off).
    pub fn observe(&self, metrics: &Arc<Metrics>) {
        #[cfg(feature = "otlp")]
        if let Some(meter) = self.meter() {
            register(&meter, metrics);
        }
        #[cfg(not(feature = "otlp"))]
        let _ = metrics;
    }

    /// Flushes and stops the exporters.
    #[cfg(not(feature = "otlp"))]
    pub fn shutdown(self) {}

    /// Flushes and stops the exporters.
    #[cfg(feature = "otlp")]
    pub fn shutdown(self) {
        if let Some(t) = self.tracer {
            if let Err(e) = t.shutdown() {
                tracing::warn!(error = %e, "OTLP traces: shutdown");
            }
        }
        if let Some(m) = self.meter {
            if let Err(e) = m.shutdown() {
                tracing::warn!(error = %e, "OTLP metrics: shutdown");
            }
        }
    }
}

/// Registers one observable instrument per family of `metrics`. A counter
/// `siklus_x_total` is exported as `siklus_x` (OpenTelemetry names carry no
/// `_total`; a Prometheus exporter of the collector adds it back).
#[cfg(feature = "otlp")]
pub fn register(meter: &Meter, metrics: &Arc<Metrics>) {
    for family in metrics.families_at(0) {
        let name = family.name;
        let source = metrics.clone();
        let observe = move |obs: &dyn Fn(f64, &[KeyValue])| {
            if let Some(f) = source.families().into_iter().find(|f| f.name == name) {
                for (labels, v) in &f.samples {
                    let attrs: Vec<KeyValue> = labels
                        .iter()
                        .map(|(k, v)| KeyValue::new(*k, v.clone()))
                        .collect();
                    obs(*v, &attrs);
                }
            }
        };
        match family.kind {
            Kind::Counter => {
                let _ = meter
                    .f64_observable_counter(name.trim_end_matches("_total"))
                    .with_description(family.help)
                    .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                    .build();
            }
            Kind::Gauge => {
                let _ = meter
                    .f64_observable_gauge(name)
                    .with_description(family.help)
                    .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                    .build();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "otlp")]
    use std::io::{BufRead, BufReader, Read, Write};
    #[cfg(feature = "otlp")]
    use std::net::TcpListener;
    #[cfg(feature = "otlp")]
    use std::sync::Mutex;
    #[cfg(feature = "otlp")]
    use std::time::{Duration, Instant};

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(OsStr::new(""))));
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        assert!(!use_ansi(false, None));
    }

    #[test]
    fn settings_follow_the_standard_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let off = OtlpSettings::from_vars(vars(&[]));
        assert_eq!(off.traces_endpoint, None);
        assert_eq!(off.metrics_endpoint, None);
        assert_eq!(off.service_name, "siklus");

        let base = OtlpSettings::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_SERVICE_NAME", "siklus-eu"),
        ]));
        assert_eq!(
            base.traces_endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            base.metrics_endpoint.as_deref(),
            Some("http://collector:4318/v1/metrics")
        );
        assert_eq!(base.service_name, "siklus-eu");

        let specific = OtlpSettings::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/custom"),
        ]));
        assert_eq!(
            specific.metrics_endpoint.as_deref(),
            Some("http://m:9/custom")
        );
        assert_eq!(
            specific.traces_endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
    }

    /// (path, content type, body) of every POST received.
    #[cfg(feature = "otlp")]
    type Posts = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

    /// A minimal HTTP/1.1 server that records (path, content type, body) of
    /// every POST and answers 200.
    #[cfg(feature = "otlp")]
    fn collector() -> (String, Posts) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let g = g.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        let (mut len, mut ctype) = (0usize, String::new());
                        loop {
                            let mut h = String::new();
                            r.read_line(&mut h).unwrap();
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            let (k, v) = h.split_once(':').unwrap_or((h, ""));
                            match k.to_ascii_lowercase().as_str() {
                                "content-length" => len = v.trim().parse().unwrap_or(0),
                                "content-type" => ctype = v.trim().to_string(),
                                _ => {}
                            }
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).unwrap();
                        g.lock().unwrap().push((path, ctype, body));
                        let _ = conn.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                        );
                    }
                });
            }
        });
        (addr, got)
    }

    #[cfg(feature = "otlp")]
    #[test]
    fn exports_traces_and_metrics_as_protobuf_and_flushes_on_shutdown() {
        let (addr, got) = collector();
        let settings = OtlpSettings {
            traces_endpoint: Some(format!("{addr}/v1/traces")),
            metrics_endpoint: Some(format!("{addr}/v1/metrics")),
            service_name: "siklus-test".into(),
        };
        let t = Telemetry::build(&settings).unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.with_partition(0, |p| p.records_in = 5);
        t.observe(&metrics);
        {
            use opentelemetry::trace::{Span as _, Tracer as _};
            let tracer = t.tracer.as_ref().unwrap().tracer("siklus");
            let mut span = tracer.start("step");
            span.set_attribute(KeyValue::new("records", 5i64));
            span.end();
        }
        t.shutdown();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = got.lock().unwrap().clone();
            let has = |p: &str| {
                seen.iter().any(|(path, ctype, body)| {
                    path == p && ctype == "application/x-protobuf" && !body.is_empty()
                })
            };
            if has("/v1/traces") && has("/v1/metrics") {
                // The metric names travel in the protobuf body as strings.
                let m = seen.iter().find(|(p, _, _)| p == "/v1/metrics").unwrap();
                let text = String::from_utf8_lossy(&m.2);
                assert!(text.contains("siklus_records_in"), "{text}");
                assert!(text.contains("siklus-test"));
                break;
            }
            assert!(Instant::now() < deadline, "no OTLP export seen: {seen:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
