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
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            input: "siklus.events".into(),
            transitions: "siklus.transitions".into(),
            aggregates: "siklus.aggregates".into(),
            cohorts: "siklus.cohorts".into(),
            dlq: "siklus.dlq".into(),
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
    /// HTTP listen address for `/metrics`, `/healthz`, `/readyz` (empty: off).
    pub http_listen: String,
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
}

impl Default for Processor {
    fn default() -> Self {
        Processor {
            group_id: "siklus".into(),
            state_dir: PathBuf::from("./siklus-state"),
            allowed_lateness_ms: 3_600_000,
            idle_timeout_ms: 30_000,
            commit_interval_ms: 1_000,
            max_batch: 5_000,
            input_format: InputFormat::Auto,
            output_format: OutputFormat::Json,
            output_schema_id: 2,
            topic_partitions: 8,
            replication_factor: 1,
            http_listen: String::new(),
            resume_rewind: 0,
            max_time_jump_ms: 400 * crate::time::DAY_MS,
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            profile_cache: crate::engine::DEFAULT_PROFILE_CACHE,
        }
    }
}

/// Schema ids of the Confluent wire format, without a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Schemas {
    /// Extra writer schemas by id (id 1 is the built-in InteractionEvent schema).
    pub ids: BTreeMap<u32, PathBuf>,
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
            ["topics.", "processor.", "rules.", "schemas."]
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
        }
    }

    /// The internal topic carrying window partials to the merge stage.
    pub fn partials_topic(&self) -> String {
        format!("siklus.{}.partials", self.processor.group_id)
    }

    /// RocksDB options from the processor section.
    pub fn store_options(&self) -> siklus_state::StoreOptions {
        siklus_state::StoreOptions {
            block_cache_bytes: self.processor.block_cache_bytes,
            write_buffer_bytes: self.processor.write_buffer_bytes,
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
}
