//! Avro binary encoding primitives and the Confluent wire-format header.
//!
//! The encoders here write the Avro binary encoding by hand, field by field in
//! schema order. That is faster than building an `apache_avro::types::Value`
//! and, unlike apache-avro's `Value::Map` (a `HashMap`), it writes map entries
//! in key order, so the same record always yields the same bytes.

use std::collections::BTreeMap;

use crate::model::{InteractionEvent, ProfileSnapshot, StageTransition};

use super::CodecError;

/// The Confluent wire-format magic byte.
pub const MAGIC: u8 = 0;

/// Length of the Confluent header: the magic byte and a 4-byte big-endian schema id.
pub const HEADER_LEN: usize = 5;

/// Writes the Confluent header: magic byte 0, then `schema_id` big-endian.
pub fn put_header(buf: &mut Vec<u8>, schema_id: u32) {
    buf.push(MAGIC);
    buf.extend_from_slice(&schema_id.to_be_bytes());
}

/// Splits a Confluent wire-format record into its schema id and Avro datum.
/// `None` when the magic byte is missing or the header is short.
pub fn split_header(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [MAGIC, a, b, c, d, rest @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => None,
    }
}

/// Writes an Avro `long` (zig-zag varint).
pub fn put_long(buf: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Writes an Avro `int` (same zig-zag varint as a long).
pub fn put_int(buf: &mut Vec<u8>, v: i32) {
    put_long(buf, i64::from(v));
}

/// Writes an Avro `string` (length, then UTF-8 bytes).
pub fn put_string(buf: &mut Vec<u8>, s: &str) {
    put_long(buf, s.len() as i64);
    buf.extend_from_slice(s.as_bytes());
}

/// Writes the branch index of a union.
pub fn put_union_index(buf: &mut Vec<u8>, index: i64) {
    put_long(buf, index);
}

/// Writes `["null", "string"]`.
pub fn put_opt_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_union_index(buf, 0),
        Some(s) => {
            put_union_index(buf, 1);
            put_string(buf, s);
        }
    }
}

/// Writes `["null", "long"]` (also `["null", timestamp-millis]`).
pub fn put_opt_long(buf: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => put_union_index(buf, 0),
        Some(v) => {
            put_union_index(buf, 1);
            put_long(buf, v);
        }
    }
}

/// Writes `["null", "int"]`.
pub fn put_opt_int(buf: &mut Vec<u8>, v: Option<i32>) {
    match v {
        None => put_union_index(buf, 0),
        Some(v) => {
            put_union_index(buf, 1);
            put_int(buf, v);
        }
    }
}

/// Writes a `map<string>` as one block in key order.
pub fn put_string_map(buf: &mut Vec<u8>, m: &BTreeMap<String, String>) {
    if !m.is_empty() {
        put_long(buf, m.len() as i64);
        for (k, v) in m {
            put_string(buf, k);
            put_string(buf, v);
        }
    }
    put_long(buf, 0);
}

/// Writes a `map<long>` as one block in key order.
pub fn put_long_map(buf: &mut Vec<u8>, m: &BTreeMap<String, i64>) {
    if !m.is_empty() {
        put_long(buf, m.len() as i64);
        for (k, v) in m {
            put_string(buf, k);
            put_long(buf, *v);
        }
    }
    put_long(buf, 0);
}

/// Appends the Avro binary datum of `e` (schema `siklus.InteractionEvent`).
pub fn put_event(buf: &mut Vec<u8>, e: &InteractionEvent) {
    put_string(buf, &e.event_id);
    put_string(buf, &e.customer_id);
    put_string(buf, &e.event_type);
    put_long(buf, e.occurred_at);
    put_opt_string(buf, e.channel.as_deref());
    put_opt_string(buf, e.campaign_id.as_deref());
    put_opt_string(buf, e.order_id.as_deref());
    put_opt_long(buf, e.amount_minor);
    put_opt_string(buf, e.currency.as_deref());
    put_opt_string(buf, e.survey_type.as_deref());
    put_opt_int(buf, e.score);
    put_opt_string(buf, e.referee_id.as_deref());
    match &e.properties {
        None => put_union_index(buf, 0),
        Some(m) => {
            put_union_index(buf, 1);
            put_string_map(buf, m);
        }
    }
}

fn put_snapshot(buf: &mut Vec<u8>, p: &ProfileSnapshot) {
    put_opt_string(buf, p.milestone.as_deref());
    put_opt_string(buf, p.activity.as_deref());
    put_opt_long(buf, p.first_seen_at);
    put_opt_long(buf, p.first_order_at);
    put_opt_long(buf, p.last_activity_at);
    put_long(buf, i64::from(p.order_count));
    put_long_map(buf, &p.net_revenue);
    put_long(buf, i64::from(p.refunds));
    put_long(buf, i64::from(p.open_tickets));
    put_long(buf, i64::from(p.csat_answers));
    put_long(buf, i64::from(p.csat_satisfied));
    put_opt_int(buf, p.last_nps);
    put_long(buf, i64::from(p.referrals_sent));
    put_long(buf, i64::from(p.referrals_converted));
    put_long(buf, p.impressions);
    put_long(buf, p.clicks);
    put_opt_long(buf, p.cohort_week);
    put_opt_long(buf, p.cohort_month);
    put_long_map(buf, &p.channels);
    put_long(buf, p.events);
}

/// Appends the Avro binary datum of `t` (schema `siklus.StageTransition`).
/// Fails only when `seq` does not fit an Avro long.
pub fn put_transition(buf: &mut Vec<u8>, t: &StageTransition) -> Result<(), CodecError> {
    let seq = i64::try_from(t.seq)
        .map_err(|_| CodecError::OutOfRange(format!("seq {} exceeds an Avro long", t.seq)))?;
    put_string(buf, &t.transition_id);
    put_string(buf, &t.customer_id);
    put_string(buf, t.dimension.as_str());
    put_opt_string(buf, t.from_stage.as_deref());
    put_string(buf, &t.to_stage);
    put_long(buf, t.occurred_at);
    put_opt_string(buf, t.triggering_event_id.as_deref());
    put_string(buf, &t.rule);
    put_long(buf, seq);
    put_snapshot(buf, &t.profile);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_matches_the_avro_spec() {
        let cases: [(i64, &[u8]); 7] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (
                i64::MAX,
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
            (
                i64::MIN,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for (v, want) in cases {
            let mut buf = Vec::new();
            put_long(&mut buf, v);
            assert_eq!(buf, want, "{v}");
        }
    }

    #[test]
    fn header_round_trip() {
        let mut buf = Vec::new();
        put_header(&mut buf, 0x0102_0304);
        buf.push(9);
        assert_eq!(buf[..5], [0, 1, 2, 3, 4]);
        assert_eq!(split_header(&buf), Some((0x0102_0304, &[9u8][..])));
        assert_eq!(split_header(&[0, 1, 2]), None);
        assert_eq!(split_header(b"{\"a\":1}"), None);
    }
}
