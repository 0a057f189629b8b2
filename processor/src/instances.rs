//! The instance directory of a consumer group, for the read API.
//!
//! Each instance with an advertised HTTP address publishes an
//! [`InstanceRecord`] (its address, the input partitions it owns, whether it
//! runs the merge stage) to the compacted topic `siklus.<group>.instances`,
//! keyed by its address, whenever its assignment changes and every
//! [`REPUBLISH`] otherwise; it publishes a tombstone when it stops. Every
//! instance reads the topic, so it can tell a caller which instance owns a
//! customer's partition (the interactive-query model of Kafka Streams).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// How often an instance publishes its record even without a change.
pub const REPUBLISH: Duration = Duration::from_secs(30);

/// What one instance publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Base URL of the instance's HTTP endpoint (`http://host:port`).
    pub http: String,
    /// Input partitions assigned to it.
    pub partitions: Vec<u32>,
    /// Whether it runs the merge stage (serves `/aggregates/latest`).
    pub merge: bool,
    /// Wall-clock time of the record (epoch ms); the newest claim wins.
    pub updated_at_ms: i64,
}

/// The instances of the group as read from the topic, by address.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    instances: Arc<Mutex<BTreeMap<String, InstanceRecord>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Directory {
    /// Applies one record of the topic (`None`: a tombstone).
    pub fn apply(&self, key: &str, record: Option<InstanceRecord>) {
        let mut m = lock(&self.instances);
        match record {
            Some(r) => {
                m.insert(key.to_string(), r);
            }
            None => {
                m.remove(key);
            }
        }
    }

    /// The address of the instance that owns `partition` (the newest claim).
    pub fn owner_of(&self, partition: u32) -> Option<String> {
        lock(&self.instances)
            .values()
            .filter(|r| r.partitions.contains(&partition))
            .max_by_key(|r| r.updated_at_ms)
            .map(|r| r.http.clone())
    }

    /// The address of the instance that runs the merge stage.
    pub fn merge_owner(&self) -> Option<String> {
        lock(&self.instances)
            .values()
            .filter(|r| r.merge)
            .max_by_key(|r| r.updated_at_ms)
            .map(|r| r.http.clone())
    }

    /// Every known instance.
    pub fn all(&self) -> Vec<InstanceRecord> {
        lock(&self.instances).values().cloned().collect()
    }
}

/// Reads the instances topic from its beginning into `directory` on a
/// thread of its own until `stop` is set.
pub fn spawn_reader(
    cfg: &Config,
    directory: Directory,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut c = rdkafka::ClientConfig::new();
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c.set("group.id", format!("{}.instances", cfg.processor.group_id))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create().context("creating the instances reader")?;
    let topic = cfg.instances_topic();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let handle = std::thread::Builder::new()
        .name("instances".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let Ok(m) = msg else { continue };
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                match m.payload() {
                    None => directory.apply(key, None),
                    Some(p) => match serde_json::from_slice::<InstanceRecord>(p) {
                        Ok(r) => directory.apply(key, Some(r)),
                        Err(e) => tracing::debug!(error = %e, "unreadable instance record"),
                    },
                }
            }
        })?;
    Ok(handle)
}

/// The HTTP address this instance advertises: `processor.advertised_http`,
/// else the bound address when it is a concrete host, else `$HOSTNAME` with
/// the bound port; `None` when none of them names a reachable host.
pub fn advertised_address(cfg: &Config, bound: std::net::SocketAddr) -> Option<String> {
    let configured = cfg.processor.advertised_http.trim();
    if !configured.is_empty() {
        let url = if configured.contains("://") {
            configured.to_string()
        } else {
            format!("http://{configured}")
        };
        return Some(url.trim_end_matches('/').to_string());
    }
    if !bound.ip().is_unspecified() {
        return Some(format!("http://{bound}"));
    }
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}:{}", bound.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(http: &str, partitions: &[u32], merge: bool, at: i64) -> InstanceRecord {
        InstanceRecord {
            http: http.into(),
            partitions: partitions.to_vec(),
            merge,
            updated_at_ms: at,
        }
    }

    #[test]
    fn the_newest_claim_owns_a_partition_and_tombstones_remove() {
        let d = Directory::default();
        d.apply("a", Some(rec("http://a", &[0, 1], true, 10)));
        d.apply("b", Some(rec("http://b", &[1, 2], false, 20)));
        assert_eq!(d.owner_of(0).as_deref(), Some("http://a"));
        assert_eq!(d.owner_of(1).as_deref(), Some("http://b"));
        assert_eq!(d.owner_of(3), None);
        assert_eq!(d.merge_owner().as_deref(), Some("http://a"));
        d.apply("a", None);
        assert_eq!(d.owner_of(0), None);
        assert_eq!(d.merge_owner(), None);
    }

    #[test]
    fn advertised_address_prefers_the_configuration() {
        let mut cfg = Config::default();
        let bound: std::net::SocketAddr = "127.0.0.1:9464".parse().unwrap();
        assert_eq!(
            advertised_address(&cfg, bound).as_deref(),
            Some("http://127.0.0.1:9464")
        );
        cfg.processor.advertised_http = "siklus-1:9464".into();
        assert_eq!(
            advertised_address(&cfg, bound).as_deref(),
            Some("http://siklus-1:9464")
        );
        cfg.processor.advertised_http = "https://s.example/".into();
        assert_eq!(
            advertised_address(&cfg, bound).as_deref(),
            Some("https://s.example")
        );
    }
}
