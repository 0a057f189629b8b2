//! Windowed lifecycle aggregates, in two pure stages.
//!
//! 1. A [`PartitionAggregator`] per input partition turns the fold's transitions
//!    and signals into per-window [`WindowCounts`], and when the partition
//!    watermark passes a window's end it emits that window as a [`Partial`],
//!    followed by a [`Partial::Progress`] marker.
//! 2. One [`Merger`] for the job sums the partials of every partition and, once
//!    the job watermark (the minimum over the non-idle partitions' progress)
//!    passes a window's end, emits exactly one final [`Aggregate`] for it, plus
//!    the [`CohortCell`]s of every closed week and month window.
//!
//! Windows are days, ISO weeks and calendar months in UTC, on event time
//! ([`Granularity`]). Nothing here does I/O or reads a clock; every collection
//! that reaches an output is ordered, so the same input always yields the same
//! bytes.
//!
//! Counts (active, new, orders, …) of a contribution whose window is already
//! closed are dropped (a closed window never changes) and the event is counted
//! as late; gauge deltas (live customers, net revenue, paying customers, cohort
//! joins) move to the earliest open window of the same granularity, so the
//! cumulative gauges stay exact.
//!
//! The runtime must record the output of the timers it fires for a new
//! watermark *before* calling [`PartitionAggregator::advance`] with it, so that
//! a deadline's transitions land in the window that contains the deadline.

mod counts;
mod merge;
mod output;
mod partition;
mod windows;

#[cfg(test)]
mod tests;

pub use counts::WindowCounts;
pub use merge::Merger;
pub use output::{
    aggregate_schema, cohort_cell_schema, Aggregate, CohortCell, AGGREGATE_SCHEMA,
    COHORT_CELL_SCHEMA,
};
pub use partition::PartitionAggregator;

use serde::{Deserialize, Serialize};

use crate::time::Granularity;

/// Errors of the aggregates module (decoding partials, parsing the schemas).
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// An empty partial payload.
    #[error("empty partial payload")]
    Empty,
    /// A partial written by an unknown format version.
    #[error("unknown partial format version {0}")]
    UnknownVersion(u8),
    /// A partial payload that does not decode.
    #[error("undecodable partial: {0}")]
    Decode(String),
    /// An embedded Avro schema that does not parse.
    #[error("invalid Avro schema: {0}")]
    Schema(String),
}

/// What a partition sends to the merge stage over the internal topic.
// Almost every partial is a `Window`: boxing its counts would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Partial {
    /// The partition's counts for one window it has closed.
    Window {
        /// Input partition.
        partition: u32,
        /// Window size.
        granularity: Granularity,
        /// Window start (epoch ms).
        start: i64,
        /// The partition's contributions to the window.
        counts: WindowCounts,
    },
    /// The partition has emitted every window that ends at or before `watermark`.
    Progress {
        /// Input partition.
        partition: u32,
        /// The partition watermark (epoch ms).
        watermark: i64,
    },
}

/// Format version byte in front of every encoded [`Partial`].
const PARTIAL_FORMAT: u8 = 1;

impl Partial {
    /// The partition that sent it.
    pub fn partition(&self) -> u32 {
        match self {
            Partial::Window { partition, .. } | Partial::Progress { partition, .. } => *partition,
        }
    }

    /// Kafka key for the internal topic: `granularity/start` for a window,
    /// `progress/partition` for a progress marker.
    pub fn key(&self) -> String {
        match self {
            Partial::Window {
                granularity, start, ..
            } => format!(
                "{}/{}",
                granularity.as_str(),
                crate::time::format_rfc3339(*start)
            ),
            Partial::Progress { partition, .. } => format!("progress/{partition}"),
        }
    }

    /// Encodes as one format version byte followed by postcard.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![PARTIAL_FORMAT];
        // Serializing into a Vec cannot fail for these plain types.
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(_) => vec![PARTIAL_FORMAT],
        }
    }

    /// Decodes what [`Partial::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Partial, AggregateError> {
        let (&version, body) = bytes.split_first().ok_or(AggregateError::Empty)?;
        if version != PARTIAL_FORMAT {
            return Err(AggregateError::UnknownVersion(version));
        }
        let (p, rest) = postcard::take_from_bytes::<Partial>(body)
            .map_err(|e| AggregateError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(AggregateError::Decode(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(p)
    }
}
