//! The docker stack agrees with itself and with siklus (no Docker needed):
//! services, ports, the OTLP endpoint, the siklus configuration, and the
//! metric names the Grafana dashboard queries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use siklus::config::Config;
use siklus::metrics::Metrics;

fn docker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn env_of<'a>(service: &'a Value, key: &str) -> Option<&'a str> {
    service["environment"][key].as_str()
}

/// The `host:port` of a URL such as `http://otel-collector:4318`.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (h, p) = authority.rsplit_once(':').expect("a port");
    (h.to_string(), p.parse().expect("a numeric port"))
}

fn siklus_config() -> Config {
    let compose = yaml(&docker().join("compose.yaml"));
    let siklus = &compose["services"]["siklus"];
    // The file mounted at the path given to --config.
    let command: Vec<&str> = siklus["command"]
        .as_array()
        .expect("siklus command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = command
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let target = command[at + 1];
    let mount = siklus["volumes"]
        .as_array()
        .expect("siklus volumes")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            (dst == target).then(|| src.to_string())
        })
        .expect("the config file is mounted");
    Config::load(Some(&docker().join(mount))).expect("the compose config loads")
}

#[test]
fn compose_services_ports_and_endpoints_agree() {
    let compose = yaml(&docker().join("compose.yaml"));
    let services = &compose["services"];
    for s in [
        "kafka",
        "schema-registry",
        "siklus",
        "otel-collector",
        "prometheus",
        "grafana",
    ] {
        assert!(services.get(s).is_some(), "service {s} is missing");
    }
    let cfg = siklus_config();

    // Kafka in KRaft mode, and siklus pointed at its advertised listener.
    let kafka = &services["kafka"];
    assert!(env_of(kafka, "KAFKA_PROCESS_ROLES")
        .unwrap()
        .contains("controller"));
    let advertised = env_of(kafka, "KAFKA_ADVERTISED_LISTENERS").unwrap();
    let (khost, kport) = host_port(advertised.split(',').next().unwrap());
    assert_eq!(
        cfg.kafka["bootstrap.servers"],
        format!("{khost}:{kport}"),
        "siklus must use Kafka's advertised listener"
    );
    assert_eq!(khost, "kafka");
    let registry = &services["schema-registry"];
    assert!(
        env_of(registry, "SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS")
            .unwrap()
            .ends_with(&format!("kafka:{kport}"))
    );
    // siklus asks the registry where it listens, by its service name.
    let listener = env_of(registry, "SCHEMA_REGISTRY_LISTENERS").unwrap();
    let (_, rport) = host_port(listener);
    assert_eq!(
        cfg.schema_registry.url,
        format!("http://schema-registry:{rport}"),
        "siklus must use the registry service"
    );
    assert!(services["siklus"]["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d == "schema-registry"));

    // Prometheus scrapes siklus where siklus listens.
    let http_port: u16 = cfg
        .processor
        .http_listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("siklus listens on a port");
    let prom = yaml(&docker().join("prometheus.yml"));
    let targets: Vec<String> = prom["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| j["static_configs"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(String::from))
        .collect();
    assert!(
        targets.contains(&format!("siklus:{http_port}")),
        "prometheus targets {targets:?} miss siklus:{http_port}"
    );
    let siklus = &services["siklus"];
    let published: Vec<String> = siklus["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str().map(String::from))
        .collect();
    assert!(published
        .iter()
        .any(|p| p.ends_with(&format!(":{http_port}"))));
    assert_eq!(
        host_port(&cfg.processor.advertised_http),
        ("siklus".to_string(), http_port)
    );

    // OTLP goes to the collector's OTLP/HTTP receiver.
    let otlp = env_of(siklus, "OTEL_EXPORTER_OTLP_ENDPOINT").expect("OTLP endpoint");
    let (ohost, oport) = host_port(otlp);
    assert_eq!(ohost, "otel-collector");
    let collector = yaml(&docker().join("otel-collector.yaml"));
    let http_receiver = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .expect("an OTLP/HTTP receiver");
    assert_eq!(host_port(http_receiver).1, oport);
    for pipeline in ["traces", "metrics"] {
        let receivers = &collector["service"]["pipelines"][pipeline]["receivers"];
        assert!(receivers.as_array().unwrap().iter().any(|r| r == "otlp"));
    }
    // The collector's Prometheus exporter is scraped too.
    let exporter = collector["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .unwrap();
    assert!(targets.contains(&format!("otel-collector:{}", host_port(exporter).1)));

    // Topics: all distinct, and the internal ones derive from the group.
    let topics = [
        &cfg.topics.input,
        &cfg.topics.transitions,
        &cfg.topics.aggregates,
        &cfg.topics.cohorts,
        &cfg.topics.dlq,
    ];
    let distinct: BTreeSet<&String> = topics.iter().copied().collect();
    assert_eq!(distinct.len(), topics.len());
    assert_eq!(cfg.partials_topic(), "siklus.siklus.partials");

    // Grafana is provisioned with the Prometheus service as its datasource.
    let ds = yaml(&docker().join("grafana/provisioning/datasources/prometheus.yaml"));
    let url = ds["datasources"][0]["url"].as_str().unwrap();
    let prom_port: u16 = services["prometheus"]["ports"][0]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(host_port(url), ("prometheus".to_string(), prom_port));
    let dashboards = yaml(&docker().join("grafana/provisioning/dashboards/siklus.yaml"));
    let path = dashboards["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let grafana_volumes: Vec<&str> = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(grafana_volumes
        .iter()
        .any(|v| v.starts_with("./grafana/dashboards:") && v.contains(path)));
}

/// The `siklus_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("siklus_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn the_dashboard_queries_only_metrics_siklus_exports() {
    let exported: BTreeSet<String> = Metrics::default()
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    let text = std::fs::read_to_string(docker().join("grafana/dashboards/siklus.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<String> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap_or("").to_lowercase())
        .collect();
    for wanted in [
        "throughput",
        "lag",
        "transitions by stage",
        "churn",
        "retention rate",
        "cohort",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel about {wanted}"
        );
    }
    assert!(panels.iter().any(|p| p["type"] == "heatmap"));
    let mut used = BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a PromQL expression");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} queries no siklus metric");
            used.extend(names);
        }
    }
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "not exported by siklus: {unknown:?}");
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "sum by (p) (rate(siklus_a_total[1m])) / max(siklus_b{x=\"y\"}) + otel_siklus_c"
        ),
        ["siklus_a_total", "siklus_b"]
    );
}
