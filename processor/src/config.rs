//! Configuration: defaults, then a TOML file, then `SIKLUS_*` environment
//! variables, then command-line flags. Unknown keys are errors that name the
//! key, in the file and in the environment alike.
//!
//! # Environment variables
//!
//! A variable is a configuration key when its name is `SIKLUS_`, a section,
//! `__`, and a key: `SIKLUS_PROCESSOR__GROUP_ID` sets `processor.group_id`,
//! `SIKLUS_KAFKA__SASL_USERNAME` sets `kafka."sasl.username"` (in `[kafka]`
//! the single underscores become dots, since librdkafka names are dotted).
//! The rule, in full:
//!
//! - a `SIKLUS_` name containing `__` is a configuration key: an unknown
//!   section (`SIKLUS_PROCESOR__GROUP_ID`) is an error, and so is an unknown
//!   key of a known section;
//! - a `SIKLUS_` name without `__` is not configuration (`SIKLUS_CONFIG`,
//!   `SIKLUS_LOG`, `SIKLUS_LOG_FORMAT`, and the test hooks such as
//!   `SIKLUS_FAULT_ABORT_AFTER_STEPS` or `SIKLUS_CHAOS_SEED`), unless it
//!   starts with a section name and one underscore
//!   (`SIKLUS_PROCESSOR_GROUP_ID`): that is a key written with a single
//!   underscore, and an error that names the intended variable.
//!
//! # `[kafka]`
//!
//! librdkafka properties pass through unchanged. Values may be written as
//! TOML strings, integers, floats or booleans (`"linger.ms" = 5`,
//! `"enable.idempotence" = true`), or arrays of them (joined with commas,
//! librdkafka's list form); they are turned into librdkafka's string form.
//! Unquoted dotted keys (`bootstrap.servers = "b:9092"`, which TOML reads as
//! nested tables) are joined back into the dotted property name.
//!
//! # Secrets
//!
//! [`Config::to_redacted_toml`] (behind `siklus config check`) masks every
//! secret, and [`redact_url`] masks the password of a URL wherever a URL
//! may be shown (logs, error messages).

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
    /// `security.protocol`, `sasl.*`, `ssl.*`, …). Numbers and booleans are
    /// read as their string form (see the module documentation).
    #[serde(deserialize_with = "kafka_properties")]
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
    /// What a transition carries besides the change itself: `full` (the
    /// default) adds the snapshot of the customer's profile after it
    /// (`profile`); `none` leaves it out, for consumers that only need the
    /// change: about a third of the bytes, and less CPU. `none` needs JSON
    /// output (`profile` is a required field of the Avro schema).
    pub snapshot: SnapshotMode,
}

/// The `outputs.snapshot` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Every transition carries the profile snapshot.
    #[default]
    Full,
    /// No profile snapshot.
    None,
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

/// What to do with an output record the broker can never accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProductionErrorPolicy {
    /// Stop the instance (fail-stop); nothing is committed past the step.
    #[default]
    Fail,
    /// Skip the record, log it, count it, and go on.
    Skip,
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
    /// Most input bytes (record values) per processing step (default 16 MiB):
    /// with `max_batch`, bounds a step's memory whatever the record size.
    pub max_batch_bytes: usize,
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
    /// A bearer token for the read API (`/customers`, `/aggregates/latest`,
    /// `/instances`): requests must send `Authorization: Bearer <token>`.
    /// Empty (the default): the read API answers only on a loopback
    /// address; bound beyond it, only metrics and probes are served.
    pub http_token: String,
    /// Base URL other instances and clients reach this instance's HTTP
    /// endpoint at (`http://siklus-1:9464`), published to the instances
    /// topic. Empty: the bound address, or `$HOSTNAME` with the bound port
    /// when listening on all interfaces.
    pub advertised_http: String,
    /// Partitioner of the producers of the input topic, for the read API to
    /// find a customer's partition: `murmur2` (Java clients, Kafka Streams)
    /// or `crc32` (librdkafka's default).
    pub key_partitioner: crate::partitioner::KeyPartitioner,
    /// An event more than this far ahead of its partition's confirmed event
    /// time is held: applied to its own customer, but the partition's clock
    /// (watermark, timers, windows of everyone else) moves to its time only
    /// when a later record confirms it (ms; default 7 days). So one record
    /// with a wild clock cannot jump event time for everyone.
    pub max_time_jump_ms: i64,
    /// An event more than this far ahead of the wall clock is a dead letter
    /// of kind `future` (ms; default one day).
    pub max_future_skew_ms: i64,
    /// Records to re-read before a partition's stored offset when it is
    /// assigned (they are skipped, not applied again). 0 for Apache Kafka;
    /// brokers that cannot fetch from the middle of a record batch (tansu
    /// 0.6 returns the next batch instead) need at least their largest batch.
    pub resume_rewind: i64,
    /// RocksDB block cache (bytes).
    pub block_cache_bytes: usize,
    /// RocksDB memtable size (bytes).
    pub write_buffer_bytes: usize,
    /// Bytes of profiles kept decoded in memory between commits, over all
    /// assigned partitions (estimated; the hot table in front of RocksDB;
    /// default 128 MiB; 0 keeps only the profiles of the step in progress).
    pub state_cache_bytes: usize,
    /// Replaced by `state_cache_bytes` (the cache is bounded in bytes, not
    /// in profiles): accepted, so older files still load, and ignored with a
    /// warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_cache: Option<usize>,
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
    /// What to do with an output record the broker can never accept (larger
    /// than its `message.max.bytes`, or a topic this instance may not write):
    /// `fail` (the default) stops the instance with an error that names the
    /// topic; `skip` drops that record, logs it and counts it in
    /// `siklus_production_skipped_total`. Transient failures are retried
    /// either way.
    pub production_error_policy: ProductionErrorPolicy,
    /// The largest original value a dead letter carries (bytes); a longer
    /// one is cut to this size and gets the header `siklus.truncated` with
    /// its original length. Keep it below the DLQ topic's `max.message.bytes`.
    pub dlq_max_value_bytes: usize,
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
            max_batch_bytes: 16 << 20,
            input_format: InputFormat::Auto,
            output_format: OutputFormat::Json,
            output_schema_id: 2,
            topic_partitions: 8,
            replication_factor: 1,
            http_listen: String::new(),
            http_token: String::new(),
            advertised_http: String::new(),
            key_partitioner: crate::partitioner::KeyPartitioner::default(),
            resume_rewind: 0,
            max_time_jump_ms: 7 * crate::time::DAY_MS,
            max_future_skew_ms: crate::time::DAY_MS,
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            state_cache_bytes: crate::engine::DEFAULT_CACHE_BYTES,
            profile_cache: None,
            max_write_buffers: 2,
            changelog: true,
            expire_churned_after_days: 0,
            standby_replicas: false,
            production_error_policy: ProductionErrorPolicy::Fail,
            dlq_max_value_bytes: 900_000,
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
            let url = reqwest::Url::parse(self.url.trim()).map_err(|e| {
                format!(
                    "schema_registry.url {:?} is not a URL: {e}",
                    redact_url(&self.url)
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "schema_registry.url {:?} must be http:// or https://",
                    redact_url(&self.url)
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
    /// Loads defaults, then the file (if any), then `SIKLUS_*` variables
    /// (see the module documentation for which variables are configuration).
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let vars = env_vars()?;
        check_env_names(vars.iter().map(|(k, _)| k.as_str()))?;
        // The default librdkafka properties are applied after the file: a
        // file's unquoted dotted key (`bootstrap.servers = …`, a nested
        // table to TOML) must win over them, and is only joined back into a
        // dotted name when [kafka] is read.
        let mut defaults = Config::default();
        let kafka_defaults = std::mem::take(&mut defaults.kafka);
        let mut fig = Figment::from(Serialized::defaults(defaults));
        if let Some(f) = file {
            if !f.exists() {
                return Err(format!("config file {} does not exist", f.display()));
            }
            fig = fig.merge(Toml::file(f));
        }
        // librdkafka property names are dotted, which figment would nest, so
        // SIKLUS_KAFKA__SASL_USERNAME -> kafka."sasl.username" is read by hand
        // below. check_env_names has refused unknown sections, so only known
        // ones get here, and figment names an unknown key among them.
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__").filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            k.contains('.') && !k.starts_with("kafka.")
        }));
        let mut cfg: Config = fig.extract().map_err(|e| {
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        for (k, v) in kafka_defaults {
            cfg.kafka.entry(k).or_insert(v);
        }
        for (name, v) in vars {
            if let Some(("kafka", property)) = env_key(&name) {
                cfg.kafka.insert(property.replace('_', "."), v);
            }
        }
        cfg.validate()?;
        if let Some(n) = cfg.processor.profile_cache.take() {
            tracing::warn!(
                profile_cache = n,
                state_cache_bytes = cfg.processor.state_cache_bytes,
                "processor.profile_cache is replaced by processor.state_cache_bytes \
                 (the profile cache is bounded in bytes) and is ignored"
            );
        }
        Ok(cfg)
    }

    /// The configuration as TOML, with every secret masked (`***`): the
    /// librdkafka properties whose name contains `password` or `secret`
    /// (`sasl.password`, `ssl.key.password`, `ssl.keystore.password`,
    /// `ssl.truststore.password`, `sasl.oauthbearer.client.secret`, …) and
    /// the other secret-bearing ones ([`is_secret_kafka_key`]), any key of
    /// another section that names a secret ([`is_secret_key`]), the password
    /// of `schema_registry.basic_auth_user_info`, and the password of every
    /// URL in any string value ([`redact_url`]). The output is a valid
    /// configuration file.
    pub fn to_redacted_toml(&self) -> Result<String, String> {
        let mut shown = self.clone();
        let info = &mut shown.schema_registry.basic_auth_user_info;
        if !info.is_empty() {
            *info = match info.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}"),
                None => MASK.to_string(),
            };
        }
        let mut value =
            serde_json::to_value(&shown).map_err(|e| format!("configuration as TOML: {e}"))?;
        redact_strings(&mut value);
        toml::to_string(&value).map_err(|e| format!("configuration as TOML: {e}"))
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
        if self.processor.max_batch_bytes == 0 {
            return Err("processor.max_batch_bytes must be at least 1".into());
        }
        if self.processor.max_batch == 0 {
            return Err("processor.max_batch must be at least 1".into());
        }
        if self.processor.group_id.is_empty() {
            return Err("processor.group_id must not be empty".into());
        }
        if self.processor.max_future_skew_ms < 0 {
            return Err("processor.max_future_skew_ms must not be negative".into());
        }
        if self.processor.max_time_jump_ms <= 0 {
            return Err("processor.max_time_jump_ms must be positive".into());
        }
        if self.processor.resume_rewind < 0 {
            return Err("processor.resume_rewind must not be negative".into());
        }
        if self.processor.dlq_max_value_bytes < 1024 {
            return Err("processor.dlq_max_value_bytes must be at least 1024".into());
        }
        if self.processor.topic_partitions < 1 {
            return Err("processor.topic_partitions must be at least 1".into());
        }
        if self.processing.guarantee == Guarantee::ExactlyOnce && !self.processor.changelog {
            // A crash after a transaction committed and before the state
            // write is repaired from the changelog; without one, the step
            // would be processed again and its committed outputs re-emitted.
            return Err(
                "processing.guarantee = \"exactly_once\" needs processor.changelog = true \
                 (the changelog is what repairs a crash between the commit and the state write)"
                    .into(),
            );
        }
        self.schema_registry.validate()?;
        if self.outputs.snapshot == SnapshotMode::None
            && self.processor.output_format != OutputFormat::Json
        {
            return Err(
                "outputs.snapshot = \"none\" needs processor.output_format = \"json\" \
                 (the Avro schema of transitions requires the profile snapshot)"
                    .into(),
            );
        }
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
            max_future_skew_ms: self.processor.max_future_skew_ms,
            cache_bytes: self.processor.state_cache_bytes,
            snapshots: self.outputs.snapshot == SnapshotMode::Full,
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

/// The prefix of the configuration's environment variables.
const ENV_PREFIX: &str = "SIKLUS_";

/// What a masked secret reads as.
const MASK: &str = "***";

/// The sections of the configuration, as the file spells them.
pub const SECTIONS: [&str; 8] = [
    "kafka",
    "topics",
    "processor",
    "rules",
    "schemas",
    "schema_registry",
    "processing",
    "outputs",
];

/// The process's `SIKLUS_*` variables (the prefix in any case, as figment
/// reads them). A value that is not Unicode is an error: it cannot be a
/// configuration value.
fn env_vars() -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(name) = k.to_str() else { continue };
        if env_rest(name).is_none() {
            continue;
        }
        let value = v
            .into_string()
            .map_err(|_| format!("environment variable {name}: the value is not valid UTF-8"))?;
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// The part of `name` after `SIKLUS_` (matched in any case).
fn env_rest(name: &str) -> Option<&str> {
    name.get(..ENV_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
        .and_then(|_| name.get(ENV_PREFIX.len()..))
}

/// `(section, key)` of a configuration variable, both lowercase:
/// `SIKLUS_PROCESSOR__GROUP_ID` gives `("processor", "group_id")`.
fn env_key(name: &str) -> Option<(&'static str, String)> {
    let (section, key) = env_rest(name)?.split_once("__")?;
    let section = SECTIONS
        .iter()
        .find(|s| s.eq_ignore_ascii_case(section))
        .copied()?;
    Some((section, key.to_ascii_lowercase()))
}

/// Checks the names of `SIKLUS_*` variables against the rule of the module
/// documentation: a name with `__` must name a known section and a key; a
/// name without `__` that starts with a section and one underscore is a key
/// written with a single underscore. Other names are left alone.
pub fn check_env_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    for name in names {
        let Some(rest) = env_rest(name) else {
            continue;
        };
        match rest.split_once("__") {
            Some((section, key)) => {
                if env_key(name).is_none() {
                    return Err(format!(
                        "environment variable {name}: unknown section {:?} (a configuration \
                         variable is SIKLUS_<SECTION>__<KEY>, the section one of {})",
                        section.to_ascii_lowercase(),
                        SECTIONS.join(", ")
                    ));
                }
                if key.is_empty() {
                    return Err(format!(
                        "environment variable {name}: no key after the section"
                    ));
                }
            }
            None => {
                let lower = rest.to_ascii_lowercase();
                // The longest section first: schema_registry before schemas.
                let mut by_len = SECTIONS;
                by_len.sort_by_key(|s| std::cmp::Reverse(s.len()));
                let single = by_len.iter().find(|s| {
                    lower
                        .strip_prefix(*s)
                        .is_some_and(|k| k.len() > 1 && k.starts_with('_'))
                });
                if let Some(section) = single {
                    let key = rest.get(section.len() + 1..).unwrap_or_default();
                    return Err(format!(
                        "environment variable {name}: a configuration key takes two \
                         underscores after the section: {ENV_PREFIX}{}__{key}",
                        section.to_ascii_uppercase()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether a librdkafka property holds a secret: its name contains
/// `password` or `secret`, or it is an inline private key
/// (`ssl.key.pem`, `ssl_key`) or the OAUTHBEARER configuration string
/// (`sasl.oauthbearer.config`, which may carry a client secret).
pub fn is_secret_kafka_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || ["ssl.key.pem", "ssl_key.pem", "sasl.oauthbearer.config"].contains(&k.as_str())
}

/// `text` with the password of every URL in it masked:
/// `https://user:pass@host/x` becomes `https://user:***@host/x`. A URL with
/// a user and no password is left as it is. When in doubt (a password with
/// an unescaped `/` or `@`), more is masked, never less.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // One URL: up to white space, a quote, a bracket or a comma (lists
        // such as bootstrap servers).
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ','))
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match (url.rfind('@'), url.find(':')) {
            // user:password@host: the password runs from the first colon to
            // the last `@` (an unescaped `@` or `/` in a password included).
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&url[..colon]);
                out.push(':');
                out.push_str(MASK);
                out.push_str(&url[at..]);
            }
            _ => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Whether a configuration key names a secret: a librdkafka secret
/// ([`is_secret_kafka_key`]: a name containing `password` or `secret`, …),
/// or a key ending in `token` (a bearer token).
pub fn is_secret_key(key: &str) -> bool {
    is_secret_kafka_key(key) || key.to_ascii_lowercase().ends_with("token")
}

/// Masks the set (non-empty) values of secret keys ([`is_secret_key`]) in
/// every table of `v` and the URL passwords in every string, and drops the
/// nulls TOML cannot represent (options that are not set).
fn redact_strings(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => *s = redact_url(s),
        Value::Array(a) => a.iter_mut().for_each(redact_strings),
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            for (k, v) in m.iter_mut() {
                match v {
                    Value::String(s) if !s.is_empty() && is_secret_key(k) => {
                        *s = MASK.to_string();
                    }
                    _ => redact_strings(v),
                }
            }
        }
        _ => {}
    }
}

/// A value of `[kafka]` as written in the file: a scalar, a list, or (for
/// unquoted dotted keys) a nested table.
enum KafkaValue {
    Scalar(String),
    List(Vec<String>),
    Table(BTreeMap<String, KafkaValue>),
}

impl<'de> Deserialize<'de> for KafkaValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KafkaValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a librdkafka property value: a string, number or boolean")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<KafkaValue, E> {
                Ok(KafkaValue::Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KafkaValue, E> {
                Ok(KafkaValue::Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<KafkaValue, E> {
                Ok(KafkaValue::Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<KafkaValue, E> {
                Ok(KafkaValue::Scalar(v.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KafkaValue, E> {
                Ok(KafkaValue::Scalar(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<KafkaValue, E> {
                Ok(KafkaValue::Scalar(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<KafkaValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<KafkaValue>()? {
                    match item {
                        KafkaValue::Scalar(s) => items.push(s),
                        _ => {
                            return Err(serde::de::Error::custom(
                                "a list in [kafka] holds strings, numbers or booleans only",
                            ))
                        }
                    }
                }
                Ok(KafkaValue::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<KafkaValue, A::Error> {
                let mut t = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, KafkaValue>()? {
                    // How figment hands over a TOML date or time.
                    if k.starts_with("$__toml_private") {
                        return Err(serde::de::Error::custom(
                            "a date or time is not a librdkafka property value (a string, \
                             number or boolean is)",
                        ));
                    }
                    t.insert(k, v);
                }
                Ok(KafkaValue::Table(t))
            }
        }
        d.deserialize_any(V)
    }
}

/// Flattens `[kafka]` into librdkafka's `name -> string` form. A name
/// given twice (quoted and as nested tables) is an error.
fn flatten_kafka(
    prefix: &str,
    t: BTreeMap<String, KafkaValue>,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for (k, v) in t {
        let name = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        let value = match v {
            KafkaValue::Scalar(s) => s,
            KafkaValue::List(items) => items.join(","),
            KafkaValue::Table(t) => {
                flatten_kafka(&name, t, out)?;
                continue;
            }
        };
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("kafka.\"{name}\" is given twice"));
        }
    }
    Ok(())
}

/// Reads `[kafka]`: strings, numbers, booleans and lists, under quoted or
/// unquoted dotted names, as librdkafka's string properties.
fn kafka_properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, KafkaValue>::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten_kafka("", table, &mut out).map_err(serde::de::Error::custom)?;
    Ok(out)
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
            "[processor]\nchangelog = true\nstandby_replicas = true\nexpire_churned_after_days = 400\nmax_write_buffers = 3\n[processing]\nguarantee = \"exactly_once\"\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        assert!(cfg.processor.changelog);
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
            // Exactly-once needs the changelog to repair a crash after a commit.
            "[processor]\nchangelog = false\n[processing]\nguarantee = \"exactly_once\"\n",
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

    #[test]
    fn kafka_accepts_numbers_booleans_lists_and_unquoted_dotted_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("siklus.toml");
        std::fs::write(
            &f,
            concat!(
                "[kafka]\n",
                "bootstrap.servers = \"b1:9092\"\n",
                "\"linger.ms\" = 5\n",
                "\"enable.idempotence\" = true\n",
                "\"batch.num.messages\" = 10000\n",
                "\"queue.buffering.backpressure.threshold\" = 1.5\n",
                "\"partition.assignment.strategy\" = [\"cooperative-sticky\", \"range\"]\n",
                "ssl.ca.location = \"/ca.pem\"\n",
            ),
        )
        .unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        assert_eq!(cfg.kafka["bootstrap.servers"], "b1:9092", "the file wins");
        assert_eq!(cfg.kafka["linger.ms"], "5");
        assert_eq!(cfg.kafka["enable.idempotence"], "true");
        assert_eq!(cfg.kafka["batch.num.messages"], "10000");
        assert_eq!(cfg.kafka["queue.buffering.backpressure.threshold"], "1.5");
        assert_eq!(
            cfg.kafka["partition.assignment.strategy"],
            "cooperative-sticky,range"
        );
        assert_eq!(cfg.kafka["ssl.ca.location"], "/ca.pem");
        assert!(!cfg.kafka.contains_key("bootstrap"));
        let client = crate::kafka::client_config(&cfg);
        assert_eq!(client.get("enable.idempotence"), Some("true"));

        // Without the key, the default broker stays.
        std::fs::write(&f, "[kafka]\n\"linger.ms\" = 5\n").unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        assert_eq!(cfg.kafka["bootstrap.servers"], "localhost:9092");

        for (bad, what) in [
            (
                "[kafka]\n\"bootstrap.servers\" = \"a\"\nbootstrap.servers = \"b\"\n",
                "twice",
            ),
            ("[kafka]\n\"x.y\" = [[1]]\n", "list"),
            (
                "[kafka]\n\"x.y\" = 1979-05-27\n",
                "string, number or boolean",
            ),
        ] {
            std::fs::write(&f, bad).unwrap();
            let err = Config::load(Some(&f)).unwrap_err();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }

    #[test]
    fn environment_names_follow_the_rule() {
        let ok = [
            "SIKLUS_CONFIG",
            "SIKLUS_LOG",
            "SIKLUS_LOG_FORMAT",
            "SIKLUS_FAULT_ABORT_AFTER_STEPS",
            "SIKLUS_CHAOS_SEED",
            "SIKLUS_MOCK_TXN_CHILD",
            "SIKLUS_BIN",
            "SIKLUS_PROCESSOR__GROUP_ID",
            "SIKLUS_KAFKA__SASL_USERNAME",
            "SIKLUS_SCHEMA_REGISTRY__URL",
            "SIKLUS_OUTPUTS__TRANSITION_STAGES",
            "siklus_rules__at_risk_after_ms",
            "OTHER_PROCESOR__GROUP_ID",
        ];
        check_env_names(ok).unwrap();
        for (bad, says) in [
            ("SIKLUS_PROCESOR__GROUP_ID", "unknown section \"procesor\""),
            ("SIKLUS_KAFKA__", "no key"),
            ("SIKLUS___X", "unknown section"),
            ("SIKLUS_PROCESSOR_GROUP_ID", "SIKLUS_PROCESSOR__GROUP_ID"),
            ("SIKLUS_SCHEMA_REGISTRY_URL", "SIKLUS_SCHEMA_REGISTRY__URL"),
            (
                "SIKLUS_KAFKA_BOOTSTRAP_SERVERS",
                "SIKLUS_KAFKA__BOOTSTRAP_SERVERS",
            ),
        ] {
            let err = check_env_names([bad]).unwrap_err();
            assert!(err.contains(bad) && err.contains(says), "{bad}: {err}");
        }
        assert_eq!(
            env_key("SIKLUS_SCHEMA_REGISTRY__BASIC_AUTH_USER_INFO"),
            Some(("schema_registry", "basic_auth_user_info".to_string()))
        );
        assert_eq!(env_key("SIKLUS_LOG"), None);
    }

    #[test]
    fn redact_url_masks_passwords_only() {
        for (text, shown) in [
            (
                "https://user:pass@host:8081/x",
                "https://user:***@host:8081/x",
            ),
            ("http://registry:8081", "http://registry:8081"),
            ("https://token@host/", "https://token@host/"),
            ("no url here", "no url here"),
            (
                "a https://u:p@h1 and http://v:q@h2/p?x=1 end",
                "a https://u:***@h1 and http://v:***@h2/p?x=1 end",
            ),
            ("https://u:p/a@ss@host/x", "https://u:***@host/x"),
            (
                "SASL_SSL://u:p@b1:9093,SASL_SSL://u:p@b2:9093",
                "SASL_SSL://u:***@b1:9093,SASL_SSL://u:***@b2:9093",
            ),
            ("\"https://u:p@h\"", "\"https://u:***@h\""),
            ("https://ü:ö@h", "https://ü:***@h"),
        ] {
            assert_eq!(redact_url(text), shown, "{text}");
        }
    }

    #[test]
    fn secret_keys_of_any_section_are_masked() {
        let mut v = serde_json::json!({
            "processor": {"http_token": "t0k3n", "group_id": "g", "empty_token": ""},
            "kafka": {"sasl.password": "pw", "sasl.oauthbearer.token.endpoint.url": "https://idp/t"},
            "other": {"url": "http://a:b@h", "list": ["https://c:d@h"], "unset": null},
        });
        redact_strings(&mut v);
        assert_eq!(
            v,
            serde_json::json!({
                "processor": {"http_token": "***", "group_id": "g", "empty_token": ""},
                "kafka": {"sasl.password": "***", "sasl.oauthbearer.token.endpoint.url": "https://idp/t"},
                "other": {"url": "http://a:***@h", "list": ["https://c:***@h"]},
            })
        );
    }

    #[test]
    fn redacted_toml_masks_every_secret_and_loads_back() {
        let secrets = [
            "sasl-secret-1",
            "key-secret-2",
            "keystore-secret-3",
            "truststore-secret-4",
            "oauth-secret-5",
            "custom-secret-6",
            "registry-secret-7",
            "url-secret-8",
            "pem-secret-9",
        ];
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("siklus.toml");
        std::fs::write(
            &f,
            format!(
                concat!(
                    "[kafka]\n",
                    "\"bootstrap.servers\" = \"b:9092\"\n",
                    "\"sasl.username\" = \"svc\"\n",
                    "\"sasl.password\" = \"{}\"\n",
                    "\"ssl.key.password\" = \"{}\"\n",
                    "\"ssl.keystore.password\" = \"{}\"\n",
                    "\"ssl.truststore.password\" = \"{}\"\n",
                    "\"sasl.oauthbearer.client.secret\" = \"{}\"\n",
                    "\"my.plugin.Secret\" = \"{}\"\n",
                    "\"ssl.key.pem\" = \"{}\"\n",
                    "[schema_registry]\n",
                    "url = \"https://svc:{}@registry:8081\"\n",
                    "basic_auth_user_info = \"svc:{}\"\n",
                ),
                secrets[0],
                secrets[1],
                secrets[2],
                secrets[3],
                secrets[4],
                secrets[5],
                secrets[8],
                secrets[7],
                secrets[6],
            ),
        )
        .unwrap();
        let cfg = Config::load(Some(&f)).unwrap();
        let shown = cfg.to_redacted_toml().unwrap();
        for s in secrets {
            assert!(!shown.contains(s), "{s} shown:\n{shown}");
        }
        assert!(shown.contains("\"sasl.username\" = \"svc\""), "{shown}");
        assert!(shown.contains("https://svc:***@registry:8081"), "{shown}");
        assert!(
            shown.contains("basic_auth_user_info = \"svc:***\""),
            "{shown}"
        );
        // Valid TOML, and a valid configuration file.
        let _: toml::Table = toml::from_str(&shown).unwrap();
        std::fs::write(&f, &shown).unwrap();
        let back = Config::load(Some(&f)).unwrap();
        assert_eq!(back.kafka["sasl.password"], "***");
        assert_eq!(back.topics, cfg.topics);
        assert_eq!(back.processor, cfg.processor);
        assert_eq!(back.rules, cfg.rules);
    }
}
