//! The final records of the merge stage, with their JSON and Avro forms.

use std::collections::{BTreeMap, HashMap};

use apache_avro::types::Value;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::AggregateError;
use crate::time::{format_rfc3339, Granularity};

/// The Avro schema of [`Aggregate`] (`siklus.Aggregate`).
pub const AGGREGATE_SCHEMA: &str = include_str!("../../../schemas/Aggregate.avsc");

/// The Avro schema of [`CohortCell`] (`siklus.CohortCell`).
pub const COHORT_CELL_SCHEMA: &str = include_str!("../../../schemas/CohortCell.avsc");

/// Parses [`AGGREGATE_SCHEMA`].
pub fn aggregate_schema() -> Result<Schema, AggregateError> {
    Schema::parse_str(AGGREGATE_SCHEMA).map_err(|e| AggregateError::Schema(e.to_string()))
}

/// Parses [`COHORT_CELL_SCHEMA`].
pub fn cohort_cell_schema() -> Result<Schema, AggregateError> {
    Schema::parse_str(COHORT_CELL_SCHEMA).map_err(|e| AggregateError::Schema(e.to_string()))
}

/// The final record of one window (`siklus.Aggregate`), global across partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// day, week or month.
    pub granularity: Granularity,
    /// Window start (inclusive).
    #[serde(with = "crate::time::rfc3339")]
    pub window_start: i64,
    /// Window end (exclusive).
    #[serde(with = "crate::time::rfc3339")]
    pub window_end: i64,
    /// False only for the still-open windows a bounded input ended in.
    pub complete: bool,
    /// Input events applied in time for this window.
    pub events: u64,
    /// Customers active in the window.
    pub active: u64,
    /// Active in their first-ever active window.
    pub new: u64,
    /// Active now and in the previous window.
    pub returning: u64,
    /// Active now, not new, not active in the previous window.
    pub resurrecting: u64,
    /// Active in the previous window, not in this one.
    pub dormant: u64,
    /// Live customers (active or at_risk) at the window start.
    pub active_at_start: u64,
    /// Live customers at the window end.
    pub active_at_end: u64,
    /// Customers who entered at_risk.
    pub at_risk_entered: u64,
    /// Customers who churned.
    pub churned: u64,
    /// Customers who came back from at_risk or churned.
    pub reactivated: u64,
    /// churned / active_at_start; null when nobody was live at the start.
    pub churn_rate: Option<f64>,
    /// (active_at_end − new) / active_at_start; null when nobody was live at the start.
    pub retention_rate: Option<f64>,
    /// Share of CSAT answers at 4 or 5; null without answers.
    pub csat: Option<f64>,
    /// % of NPS promoters − % of detractors; null without answers.
    pub nps: Option<f64>,
    /// clicks / impressions; null without impressions.
    pub ctr: Option<f64>,
    /// Customers who sent a referral / active customers; null when nobody was active.
    pub referral_rate: Option<f64>,
    /// Completed orders.
    pub orders: u64,
    /// Order amounts per currency (minor units).
    pub revenue: BTreeMap<String, i64>,
    /// Average historical CLV per currency as of the window end: cumulative net
    /// revenue / paying customers (minor units); empty when nobody paid.
    pub avg_clv: BTreeMap<String, f64>,
    /// Late events counted while this was the earliest open window.
    pub late_events: u64,
}

/// One cell of the acquisition cohort retention triangle (`siklus.CohortCell`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortCell {
    /// week or month.
    pub granularity: Granularity,
    /// Start of the acquisition cohort's window.
    #[serde(with = "crate::time::rfc3339")]
    pub cohort_start: i64,
    /// Windows from the cohort's window to the observed one.
    pub offset: i64,
    /// Customers in the cohort so far.
    pub cohort_size: u64,
    /// Customers of the cohort active in window cohort + offset.
    pub retained: u64,
    /// False only for a still-open window at the end of a bounded input.
    pub complete: bool,
}

fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn long(v: u64) -> Value {
    Value::Long(sat(v))
}

/// Avro `long`: zig-zag, then a little-endian base-128 varint.
fn put_long(b: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        b.push((z & 0x7f) as u8 | 0x80);
        z >>= 7;
    }
    b.push(z as u8);
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_long(b, s.len() as i64);
    b.extend_from_slice(s.as_bytes());
}

/// Avro `map`: one block of all entries (in key order), then the empty block.
fn put_map<V>(b: &mut Vec<u8>, m: &BTreeMap<String, V>, put: impl Fn(&mut Vec<u8>, &V)) {
    if !m.is_empty() {
        put_long(b, m.len() as i64);
        for (k, v) in m {
            put_str(b, k);
            put(b, v);
        }
    }
    put_long(b, 0);
}

fn opt_double(v: Option<f64>) -> Value {
    match v {
        Some(x) => Value::Union(1, Box::new(Value::Double(x))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

impl Aggregate {
    /// The Kafka key: `granularity/window start`, e.g. `day/2024-01-01T00:00:00.000Z`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.granularity.as_str(),
            format_rfc3339(self.window_start)
        )
    }

    /// The record as an Avro binary datum of [`AGGREGATE_SCHEMA`], with map
    /// entries in key order. Unlike encoding [`to_avro_value`](Self::to_avro_value)
    /// (whose maps are `HashMap`s), the bytes are the same on every run.
    pub fn to_avro_datum(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        put_str(&mut b, self.granularity.as_str());
        put_long(&mut b, self.window_start);
        put_long(&mut b, self.window_end);
        b.push(u8::from(self.complete));
        for v in [
            self.events,
            self.active,
            self.new,
            self.returning,
            self.resurrecting,
            self.dormant,
            self.active_at_start,
            self.active_at_end,
            self.at_risk_entered,
            self.churned,
            self.reactivated,
        ] {
            put_long(&mut b, sat(v));
        }
        for r in [
            self.churn_rate,
            self.retention_rate,
            self.csat,
            self.nps,
            self.ctr,
            self.referral_rate,
        ] {
            match r {
                None => put_long(&mut b, 0),
                Some(x) => {
                    put_long(&mut b, 1);
                    b.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        put_long(&mut b, sat(self.orders));
        put_map(&mut b, &self.revenue, |b, v| put_long(b, *v));
        put_map(&mut b, &self.avg_clv, |b, v| {
            b.extend_from_slice(&v.to_le_bytes())
        });
        put_long(&mut b, sat(self.late_events));
        b
    }

    /// The record as an Avro value of [`AGGREGATE_SCHEMA`].
    pub fn to_avro_value(&self) -> Value {
        let revenue: HashMap<String, Value> = self
            .revenue
            .iter()
            .map(|(k, v)| (k.clone(), Value::Long(*v)))
            .collect();
        let avg_clv: HashMap<String, Value> = self
            .avg_clv
            .iter()
            .map(|(k, v)| (k.clone(), Value::Double(*v)))
            .collect();
        Value::Record(vec![
            (
                "granularity".into(),
                Value::String(self.granularity.as_str().into()),
            ),
            (
                "window_start".into(),
                Value::TimestampMillis(self.window_start),
            ),
            ("window_end".into(), Value::TimestampMillis(self.window_end)),
            ("complete".into(), Value::Boolean(self.complete)),
            ("events".into(), long(self.events)),
            ("active".into(), long(self.active)),
            ("new".into(), long(self.new)),
            ("returning".into(), long(self.returning)),
            ("resurrecting".into(), long(self.resurrecting)),
            ("dormant".into(), long(self.dormant)),
            ("active_at_start".into(), long(self.active_at_start)),
            ("active_at_end".into(), long(self.active_at_end)),
            ("at_risk_entered".into(), long(self.at_risk_entered)),
            ("churned".into(), long(self.churned)),
            ("reactivated".into(), long(self.reactivated)),
            ("churn_rate".into(), opt_double(self.churn_rate)),
            ("retention_rate".into(), opt_double(self.retention_rate)),
            ("csat".into(), opt_double(self.csat)),
            ("nps".into(), opt_double(self.nps)),
            ("ctr".into(), opt_double(self.ctr)),
            ("referral_rate".into(), opt_double(self.referral_rate)),
            ("orders".into(), long(self.orders)),
            ("revenue".into(), Value::Map(revenue)),
            ("avg_clv".into(), Value::Map(avg_clv)),
            ("late_events".into(), long(self.late_events)),
        ])
    }
}

impl CohortCell {
    /// The Kafka key: `granularity/cohort start/offset`, e.g.
    /// `week/2024-01-01T00:00:00.000Z/3`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.granularity.as_str(),
            format_rfc3339(self.cohort_start),
            self.offset
        )
    }

    /// The record as an Avro value of [`COHORT_CELL_SCHEMA`].
    pub fn to_avro_value(&self) -> Value {
        Value::Record(vec![
            (
                "granularity".into(),
                Value::String(self.granularity.as_str().into()),
            ),
            (
                "cohort_start".into(),
                Value::TimestampMillis(self.cohort_start),
            ),
            ("offset".into(), Value::Long(self.offset)),
            ("cohort_size".into(), long(self.cohort_size)),
            ("retained".into(), long(self.retained)),
            ("complete".into(), Value::Boolean(self.complete)),
        ])
    }
}
