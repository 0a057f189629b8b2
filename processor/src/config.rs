//! Configuration: defaults, then a TOML file, then `SIKLUS_*` environment
//! variables (nested keys joined by `__`, e.g. `SIKLUS_PROCESSOR__GROUP_ID`),
//! then command-line flags. Unknown keys are errors that name the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::codec::{InputFormat, OutputFormat};
use crate::engine::EngineConfig;
use crate::rules::Rules;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// librdkafka properties, passed through unchanged (`bootstrap.servers`,
    /// `security.protocol`, `sasl.*`, `ssl.*`, …).
    pub kafka: BTreeMap<String, String>,
    /// Topic names.
    pub topics: Topics,
    /// Processing parameters.
    pub processor: Processor,
    /// Lifecycle rules.
    pub rules: Rules,
    /// Confluent wire-format schema ids mapped to writer schema files.
    pub schemas: Schemas,
    /// The Schema Registry, when input and output schemas live in one.
    pub schema_registry: SchemaRegistry,
    /// Delivery guarantee of the outputs.
    pub processing: Processing,
    /// What the output topics carry.
    pub outputs: Outputs,
}

/// The `[outputs]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Outputs {
    /// Stages (`to_stage` values such as `converted` or `churned`) whose
    /// transitions are told to the Segment-style topic (`topics.segment`).
    /// Empty (the default): every stage. Every impression-only customer
    /// enters `reached`, which costs a tracked user downstream; listing the
    /// stages a journey uses avoids that. The transitions topic always
    /// carries every transition.
    pub transition_stages: Vec<String>,
}

/// How outputs are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs may repeat after a crash, with the same deterministic ids
    /// (consumers deduplicate by id). Works on every broker.
    #[default]
    AtLeastOnce,
    /// Outputs, changelog records and input offsets of a step commit in one
    /// Kafka transaction: a `read_committed` consumer sees each output once.
    /// Needs a broker with transactions.
    ExactlyOnce,
}

/// The `[processing]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Processing {
    /// `at_least_once` (default) or `exactly_once`.
    pub guarantee: Guarantee,
}

impl Default for Config {
    fn default() -> Self {
        let mut kafka = BTreeMap::new();
        kafka.insert(
            "bootstrap.servers".to_string(),
            "localhost:9092".to_string(),
        );
        Config {
            kafka,
            topics: Topics::default(),
            processor: Processor::default(),
            rules: Rules::default(),
            schemas: Schemas::default(),
            schema_registry: SchemaRegistry::default(),
            processing: Processing::default(),
            outputs: Outputs::default(),
        }
    }
}

/// Topic names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    /// Interaction events in (key: customer_id).
    pub input: String,
    /// Stage transitions out.
    pub transitions: String,
    /// Closed-window aggregates out.
    pub aggregates: String,
    /// Cohort retention cells out.
    pub cohorts: String,
    /// Dead letters out.
    pub dlq: String,
    /// Segment-style `Audience Entered` / `Audience Exited` events out
    /// (key: customer_id); empty (the default) turns them off.
    pub segment: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            input: "siklus.events".into(),
            transitions: "siklus.transitions".into(),
            aggregates: "siklus.aggregates".into(),
            cohorts: "siklus.cohorts".into(),
            dlq: "siklus.dlq".into(),
            segment: String::new(),
        }
    }
}

/// Processing parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Processor {
    /// Consumer group of the live job; also names the internal topics.
    pub group_id: String,
    /// Where the RocksDB state lives.
    pub state_dir: PathBuf,
    /// Watermark = max event time − this (ms; default one hour).
    pub allowed_lateness_ms: i64,
    /// A partition with no new records for this long stops holding the
    /// watermark back (ms, wall clock; default 30 s).
    pub idle_timeout_ms: u64,
    /// Longest time between commits (ms).
    pub commit_interval_ms: u64,
    /// Most records per processing step.
    pub max_batch: usize,
    /// Input encoding.
    pub input_format: InputFormat,
    /// Output encoding of transitions.
    pub output_format: OutputFormat,
    /// Schema id written in Avro outputs (Confluent wire format).
    pub output_schema_id: u32,
    /// Partitions of topics that siklus creates (the input's count when it exists).
    pub topic_partitions: i32,
    /// Replication factor of topics that siklus creates.
    pub replication_factor: i32,
    /// HTTP listen address for `/metrics`, `/healthz`, `/readyz` and the
    /// read API (empty: off).
    pub http_listen: String,
    /// Base URL other instances and clients reach this instance's HTTP
    /// endpoint at (`http://siklus-1:9464`), published to the instances
    /// topic. Empty: the bound address, or `$HOSTNAME` with the bound port
    /// when listening on all interfaces.
    pub advertised_http: String,
    /// Partitioner of the producers of the input topic, for the read API to
    /// find a customer's partition: `murmur2` (Java clients, Kafka Streams)
    /// or `crc32` (librdkafka's default).
    pub key_partitioner: crate::partitioner::KeyPartitioner,
    /// An event more than this far ahead of its partition's latest event time
    /// goes to the dead-letter topic (ms; default 400 days), so that one
    /// record with a wild clock cannot jump event time for everyone.
    pub max_time_jump_ms: i64,
    /// Records to re-read before a partition's stored offset when it is
    /// assigned (they are skipped, not applied again). 0 for Apache Kafka;
    /// brokers that cannot fetch from the middle of a record batch (tansu
    /// 0.6 returns the next batch instead) need at least their largest batch.
    pub resume_rewind: i64,
    /// RocksDB block cache (bytes).
    pub block_cache_bytes: usize,
    /// RocksDB memtable size (bytes).
    pub write_buffer_bytes: usize,
    /// Profiles kept decoded in memory between commits, over all assigned
    /// partitions (a read cache in front of RocksDB; 0 turns it off).
    pub profile_cache: usize,
    /// RocksDB memtables kept at most (each `write_buffer_bytes`).
    pub max_write_buffers: i32,
    /// Write every state change to the compacted changelog topic
    /// `siklus.<group>.profiles-changelog`, and restore partitions from it
    /// when they are assigned with local state missing or behind (default
    /// true). Off, a partition without local state is rebuilt from the input.
    pub changelog: bool,
    /// Delete a profile once it has been churned for this many days of
    /// event time (through the changelog too; 0, the default, keeps
    /// profiles for ever). A later event of the customer starts a new profile.
    pub expire_churned_after_days: u32,
    /// Keep a warm copy of every partition this instance does not own, by
    /// following its changelog, so that a failover restores only the last
    /// few steps (default false; costs the disk and CPU of the whole state).
    pub standby_replicas: bool,
}

impl Default for Processor {
    fn default() -> Self {
        Processor {
            group_id: "siklus".into(),
            state_dir: PathBuf::from("./siklus-state"),
            allowed_lateness_ms: 3_600_000,
            idle_timeout_ms: 30_000,
            commit_interval_ms: 1_000,
            max_batch: 20_000,
            input_format: InputFormat::Auto,
            output_format: OutputFormat::Json,
            output_schema_id: 2,
            topic_partitions: 8,
            replication_factor: 1,
            http_listen: String::new(),
            advertised_http: String::new(),
            key_partitioner: crate::partitioner::KeyPartitioner::default(),
            resume_rewind: 0,
            max_time_jump_ms: 400 * crate::time::DAY_MS,
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            profile_cache: crate::engine::DEFAULT_PROFILE_CACHE,
            max_write_buffers: 2,
            changelog: true,
            expire_churned_after_days: 0,
            standby_replicas: false,
        }
    }
}

/// Values given as command-line flags; they override the file and the
/// environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `kafka."bootstrap.servers"`.
    pub bootstrap_servers: Option<String>,
    /// `processor.state_dir`.
    pub state_dir: Option<PathBuf>,
    /// `processor.group_id`.
    pub group_id: Option<String>,
    /// `topics.input`.
    pub input_topic: Option<String>,
    /// `processor.http_listen`.
    pub http_listen: Option<String>,
    /// `processor.advertised_http`.
    pub advertised_http: Option<String>,
}

/// Schema ids of the Confluent wire format, without a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Schemas {
    /// Extra writer schemas by id (id 1 is the built-in InteractionEvent schema).
    pub ids: BTreeMap<u32, PathBuf>,
}

/// A Confluent Schema Registry (or a compatible one: Apicurio's `ccompat`
/// API, Redpanda's). With `url` set, Avro input is decoded with the writer
/// schema its Confluent header names, fetched from the registry, and Avro
/// output schemas are registered under `<topic>-value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistry {
    /// Base URL, e.g. `https://registry:8081` (empty: no registry).
    pub url: String,
    /// `user:password` for HTTP basic auth (Confluent's `basic.auth.user.info`).
    pub basic_auth_user_info: String,
    /// PEM file of the CA that signed the registry's certificate (default:
    /// the system's trust store).
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM file of the client certificate, for mutual TLS.
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8).
    pub ssl_key_location: Option<PathBuf>,
    /// Register the output schemas at start-up (`POST
    /// /subjects/{subject}/versions`); when false they must already be
    /// registered, and their ids are looked up (`POST /subjects/{subject}`).
    pub auto_register: bool,
    /// Timeout of one HTTP request (ms).
    pub timeout_ms: u64,
    /// First wait before retrying an unreachable registry (ms); it doubles
    /// on each failure up to `retry_backoff_max_ms`.
    pub retry_backoff_ms: u64,
    /// Longest wait between two retries (ms).
    pub retry_backoff_max_ms: u64,
}

impl Default for SchemaRegistry {
    fn default() -> Self {
        SchemaRegistry {
            url: String::new(),
            basic_auth_user_info: String::new(),
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            auto_register: true,
            timeout_ms: 10_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 10_000,
        }
    }
}

impl SchemaRegistry {
    /// Whether a registry is configured.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// Checks the section: a well-formed http(s) URL, `user:password`,
    /// readable TLS files, a key only with a certificate, sane timings.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled() {
            let url = reqwest::Url::parse(self.url.trim())
                .map_err(|e| format!("schema_registry.url {:?} is not a URL: {e}", self.url))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "schema_registry.url {:?} must be http:// or https://",
                    self.url
                ));
            }
        }
        if !self.basic_auth_user_info.is_empty() && !self.basic_auth_user_info.contains(':') {
            return Err("schema_registry.basic_auth_user_info must be user:password".into());
        }
        for (key, path) in [
            ("ssl_ca_location", &self.ssl_ca_location),
            ("ssl_certificate_location", &self.ssl_certificate_location),
            ("ssl_key_location", &self.ssl_key_location),
        ] {
            if let Some(p) = path {
                std::fs::metadata(p)
                    .map_err(|e| format!("schema_registry.{key} {}: {e}", p.display()))?;
            }
        }
        if self.ssl_key_location.is_some() != self.ssl_certificate_location.is_some() {
            return Err(
                "schema_registry.ssl_certificate_location and ssl_key_location go together".into(),
            );
        }
        if self.timeout_ms == 0 {
            return Err("schema_registry.timeout_ms must be positive".into());
        }
        if self.retry_backoff_ms == 0 || self.retry_backoff_max_ms < self.retry_backoff_ms {
            return Err(
                "schema_registry.retry_backoff_ms must be positive and at most retry_backoff_max_ms"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// Loads defaults, then the file (if any), then `SIKLUS_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(format!("config file {} does not exist", f.display()));
            }
            fig = fig.merge(Toml::file(f));
        }
        // librdkafka property names are dotted, which figment would nest, so
        // SIKLUS_KAFKA__SASL_USERNAME -> kafka."sasl.username" is read by hand.
        fig = fig.merge(Env::prefixed("SIKLUS_").split("__").filter(|k| {
            // Only the sections of the file: SIKLUS_LOG, SIKLUS_CONFIG and
            // the like are not configuration keys; [kafka] is read below.
            let k = k.as_str().to_ascii_lowercase();
            [
                "topics.",
                "processor.",
                "rules.",
                "schemas.",
                "schema_registry.",
                "processing.",
                "outputs.",
            ]
            .iter()
            .any(|s| k.starts_with(s))
        }));
        let mut cfg: Config = fig.extract().map_err(|e| {
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        for (k, v) in std::env::vars() {
            if let Some(rest) = k.strip_prefix("SIKLUS_KAFKA__") {
                cfg.kafka
                    .insert(rest.to_ascii_lowercase().replace('_', "."), v);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        self.rules.validate()?;
        if self.processor.allowed_lateness_ms < 0 {
            return Err("processor.allowed_lateness_ms must not be negative".into());
        }
        if self.processor.max_write_buffers < 1 {
            return Err("processor.max_write_buffers must be at least 1".into());
        }
        if self.processor.max_batch == 0 {
            return Err("processor.max_batch must be at least 1".into());
        }
        if self.processor.group_id.is_empty() {
            return Err("processor.group_id must not be empty".into());
        }
        if self.processor.max_time_jump_ms <= 0 {
            return Err("processor.max_time_jump_ms must be positive".into());
        }
        if self.processor.resume_rewind < 0 {
            return Err("processor.resume_rewind must not be negative".into());
        }
        if self.processor.topic_partitions < 1 {
            return Err("processor.topic_partitions must be at least 1".into());
        }
        self.schema_registry.validate()?;
        for stage in &self.outputs.transition_stages {
            if crate::model::stage_from_name(stage).is_none() {
                return Err(format!(
                    "outputs.transition_stages: {stage:?} is not a stage (one of {})",
                    crate::model::STAGE_NAMES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The engine parameters this configuration implies.
    pub fn engine(&self, live_watermark: bool) -> EngineConfig {
        EngineConfig {
            rules: self.rules.clone(),
            allowed_lateness_ms: self.processor.allowed_lateness_ms,
            live_watermark,
            max_time_jump_ms: self.processor.max_time_jump_ms,
            profile_cache: self.processor.profile_cache,
            expire_churned_after_ms: (self.processor.expire_churned_after_days > 0)
                .then(|| i64::from(self.processor.expire_churned_after_days) * crate::time::DAY_MS),
        }
    }

    /// The internal topic carrying window partials to the merge stage.
    pub fn partials_topic(&self) -> String {
        format!("siklus.{}.partials", self.processor.group_id)
    }

    /// The compacted changelog topic of the profile store.
    pub fn changelog_topic(&self) -> String {
        format!("siklus.{}.profiles-changelog", self.processor.group_id)
    }

    /// The compacted topic where instances publish their HTTP address and
    /// partitions (for the read API).
    pub fn instances_topic(&self) -> String {
        format!("siklus.{}.instances", self.processor.group_id)
    }

    /// Applies command-line flags, the last layer.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(b) = &o.bootstrap_servers {
            self.kafka.insert("bootstrap.servers".into(), b.clone());
        }
        if let Some(d) = &o.state_dir {
            self.processor.state_dir = d.clone();
        }
        if let Some(g) = &o.group_id {
            self.processor.group_id = g.clone();
        }
        if let Some(t) = &o.input_topic {
            self.topics.input = t.clone();
        }
        if let Some(h) = &o.http_listen {
            self.processor.http_listen = h.clone();
        }
        if let Some(a) = &o.advertised_http {
            self.processor.advertised_http = a.clone();
        }
    }

    /// RocksDB options from the processor section.
    pub fn store_options(&self) -> siklus_state::StoreOptions {
        siklus_state::StoreOptions {
            block_cache_bytes: self.processor.block_cache_bytes,
            write_buffer_bytes: self.processor.write_buffer_bytes,
            max_write_buffers: self.processor.max_write_buffers,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_layering_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("siklus.toml");
        std::fs::write(
            &f,
            "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n\"security.protocol\" = \"SASL_SSL\"\n[processor]\ngroup_id = \"g1\"\n[rules]\nat_risk_after_ms = 1000\nchurn_after_ms = 5000\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        assert_eq!(cfg.kafka["bootstrap.servers"], "b:9092");
        assert_eq!(cfg.kafka["security.protocol"], "SASL_SSL");
        assert_eq!(cfg.processor.group_id, "g1");
        assert_eq!(cfg.rules.at_risk_after_ms, 1000);
        assert_eq!(cfg.topics.input, "siklus.events");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[processor]\ngroup_idd = \"x\"\n").unwrap();
        let err = Config::load(Some(&bad)).unwrap_err();
        assert!(err.contains("group_idd"), "{err}");

        // Variables of the process that are not configuration are left alone.
        std::env::set_var("SIKLUS_LOG", "debug");
        assert!(Config::load(Some(&f)).is_ok());
        std::env::remove_var("SIKLUS_LOG");

        let invalid = dir.path().join("invalid.toml");
        std::fs::write(
            &invalid,
            "[rules]\nat_risk_after_ms = 10\nchurn_after_ms = 5\n",
        )
        .unwrap();
        assert!(Config::load(Some(&invalid)).is_err());
    }

    #[test]
    fn state_and_guarantee_keys_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("siklus.toml");
        std::fs::write(
            &f,
            "[processor]\nchangelog = false\nstandby_replicas = true\nexpire_churned_after_days = 400\nmax_write_buffers = 3\n[processing]\nguarantee = \"exactly_once\"\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        assert!(!cfg.processor.changelog);
        assert!(cfg.processor.standby_replicas);
        assert_eq!(cfg.processing.guarantee, Guarantee::ExactlyOnce);
        assert_eq!(cfg.store_options().max_write_buffers, 3);
        assert_eq!(
            cfg.engine(true).expire_churned_after_ms,
            Some(400 * crate::time::DAY_MS)
        );
        let d = Config::default();
        assert!(d.processor.changelog && !d.processor.standby_replicas);
        assert_eq!(d.processing.guarantee, Guarantee::AtLeastOnce);
        assert_eq!(d.engine(true).expire_churned_after_ms, None);
        assert_eq!(d.changelog_topic(), "siklus.siklus.profiles-changelog");
        for bad in [
            "[processing]\nguarantee = \"twice\"\n",
            "[processing]\nguarante = \"exactly_once\"\n",
            "[processor]\nmax_write_buffers = 0\n",
        ] {
            std::fs::write(&f, bad).unwrap();
            assert!(Config::load(Some(&f)).is_err(), "{bad}");
        }
    }

    #[test]
    fn schema_registry_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let f = dir.path().join("siklus.toml");
        std::fs::write(
            &f,
            format!(
                "[topics]\nsegment = \"siklus.segment\"\n[schema_registry]\nurl = \"https://registry:8081\"\nbasic_auth_user_info = \"svc:pw\"\nssl_ca_location = \"{}\"\nauto_register = false\n",
                ca.display()
            ),
        )
        .unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        assert!(cfg.schema_registry.enabled());
        assert_eq!(cfg.schema_registry.url, "https://registry:8081");
        assert_eq!(cfg.schema_registry.basic_auth_user_info, "svc:pw");
        assert_eq!(
            cfg.schema_registry.ssl_ca_location.as_deref(),
            Some(ca.as_path())
        );
        assert!(!cfg.schema_registry.auto_register);
        assert_eq!(cfg.topics.segment, "siklus.segment");
        assert!(!Config::default().schema_registry.enabled());

        let check = |text: &str| {
            let bad = dir.path().join("bad.toml");
            std::fs::write(&bad, text).unwrap();
            Config::load(Some(&bad)).unwrap_err()
        };
        let err = check("[schema_registry]\nurll = \"http://r\"\n");
        assert!(err.contains("urll"), "{err}");
        let err = check("[schema_registry]\nurl = \"ftp://r\"\n");
        assert!(err.contains("http"), "{err}");
        let err =
            check("[schema_registry]\nurl = \"http://r\"\nbasic_auth_user_info = \"nopassword\"\n");
        assert!(err.contains("user:password"), "{err}");
        let err = check(
            "[schema_registry]\nurl = \"https://r\"\nssl_ca_location = \"/nonexistent/ca.pem\"\n",
        );
        assert!(err.contains("ssl_ca_location"), "{err}");
        let err = check(&format!(
            "[schema_registry]\nurl = \"https://r\"\nssl_key_location = \"{}\"\n",
            ca.display()
        ));
        assert!(err.contains("go together"), "{err}");
        let err = check("[schema_registry]\nretry_backoff_ms = 500\nretry_backoff_max_ms = 100\n");
        assert!(err.contains("retry_backoff"), "{err}");
    }

    #[test]
    fn flags_override_env_override_file() {
        // One test owns these variables (nextest runs each test in its own process).
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("siklus.toml");
        std::fs::write(
            &f,
            "[kafka]\n\"bootstrap.servers\" = \"file:9092\"\n[processor]\ngroup_id = \"file-group\"\nstate_dir = \"/file/state\"\nhttp_listen = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        std::env::set_var("SIKLUS_KAFKA__BOOTSTRAP_SERVERS", "env:9092");
        std::env::set_var("SIKLUS_PROCESSOR__GROUP_ID", "env-group");
        std::env::set_var("SIKLUS_PROCESSOR__HTTP_LISTEN", "127.0.0.1:2");
        let from_env = Config::load(Some(&f));
        std::env::remove_var("SIKLUS_KAFKA__BOOTSTRAP_SERVERS");
        std::env::remove_var("SIKLUS_PROCESSOR__GROUP_ID");
        std::env::remove_var("SIKLUS_PROCESSOR__HTTP_LISTEN");
        let mut cfg = from_env.unwrap();
        assert_eq!(cfg.kafka["bootstrap.servers"], "env:9092");
        assert_eq!(cfg.processor.group_id, "env-group");
        assert_eq!(cfg.processor.http_listen, "127.0.0.1:2");
        assert_eq!(cfg.processor.state_dir, PathBuf::from("/file/state"));

        cfg.apply(&Overrides {
            bootstrap_servers: Some("flag:9092".into()),
            group_id: Some("flag-group".into()),
            http_listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        });
        assert_eq!(cfg.kafka["bootstrap.servers"], "flag:9092");
        assert_eq!(cfg.processor.group_id, "flag-group");
        assert_eq!(cfg.processor.http_listen, "127.0.0.1:3");
        // Not given as a flag: the file's value stays.
        assert_eq!(cfg.processor.state_dir, PathBuf::from("/file/state"));
    }

    #[test]
    fn every_section_names_an_unknown_key() {
        let dir = tempfile::tempdir().unwrap();
        for (section, key) in [
            ("topics", "inptu"),
            ("processor", "http_listn"),
            ("rules", "churn_afterr_ms"),
            ("schemas", "idz"),
            ("schema_registry", "urll"),
        ] {
            let f = dir.path().join(format!("{section}.toml"));
            std::fs::write(&f, format!("[{section}]\n{key} = 1\n")).unwrap();
            let err = Config::load(Some(&f)).unwrap_err();
            assert!(err.contains(key), "{section}: {err}");
        }
        let f = dir.path().join("top.toml");
        std::fs::write(&f, "[kafak]\nx = \"y\"\n").unwrap();
        let err = Config::load(Some(&f)).unwrap_err();
        assert!(err.contains("kafak"), "{err}");
    }

    #[test]
    fn sasl_ssl_properties_reach_the_client_config_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("siklus.toml");
        let props = [
            ("bootstrap.servers", "broker-1:9093,broker-2:9093"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "siklus"),
            ("sasl.password", "p@ss=word;with\"chars"),
            ("ssl.ca.location", "/etc/ssl/certs/ca.pem"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ];
        let mut text = String::from("[kafka]\n");
        for (k, v) in props {
            text.push_str(&format!("\"{k}\" = {}\n", toml_quote(v)));
        }
        std::fs::write(&f, text).unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        let client = crate::kafka::client_config(&cfg);
        for (k, v) in props {
            assert_eq!(client.get(k), Some(v), "{k}");
        }
    }

    fn toml_quote(v: &str) -> String {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}
