//! siklus: a customer lifecycle stream processor.
//!
//! Interaction events are folded into per-customer profiles kept in RocksDB;
//! stage transitions and retention/churn aggregates are emitted. The core
//! ([`fold`], [`aggregate`]) is pure: no I/O, no wall clock, event time only.
#![warn(missing_docs)]

pub mod aggregate;
pub mod bench;
pub mod changelog;
pub mod codec;
pub mod config;
pub mod demo;
pub mod engine;
pub mod faults;
pub mod fold;
pub mod generator;
pub mod http;
pub mod instances;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod partitioner;
pub mod persist;
pub mod replay;
pub mod restore;
pub mod rules;
pub mod segment;
pub mod snapshot;
pub mod telemetry;
pub mod time;
pub mod topic_replay;

/// The wall clock in ms since the epoch: the one place the drivers read it,
/// for the engine's check of events from the future. The fold and the
/// aggregates never see it.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
