//! JSON input and output.
//!
//! Decoding deserializes straight into [`InteractionEvent`]. Only when that
//! fails with a data error is the record parsed a second time, into a
//! `serde_json::Value`, to name the offending field precisely for the
//! dead-letter reason.

use serde_json::Value;

use crate::model::{InteractionEvent, StageTransition};
use crate::time::parse_rfc3339;

use super::{validate, DecodeError};

/// Decodes one JSON record (a Kafka value or a JSONL line) and validates it.
///
/// Unknown fields are ignored, `null` is accepted for optional fields, and
/// `occurred_at` may be RFC 3339, epoch milliseconds, or epoch milliseconds
/// in a string. A UTF-8 byte order mark and surrounding whitespace (including
/// the `\r` of a CRLF line) are ignored.
pub fn decode_json_line(line: &[u8]) -> Result<InteractionEvent, DecodeError> {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let event = decode_json_unvalidated(line)?;
    validate(&event)?;
    Ok(event)
}

/// Decodes without validating.
pub(crate) fn decode_json_unvalidated(bytes: &[u8]) -> Result<InteractionEvent, DecodeError> {
    // UTF-8 checked once for the line (not once per string field); a line
    // that is not UTF-8 gets serde_json's own error from the byte path.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<InteractionEvent>(text),
        Err(_) => serde_json::from_slice::<InteractionEvent>(bytes),
    };
    match parsed {
        Ok(e) => Ok(e),
        Err(err) => Err(explain(bytes, &err)),
    }
}

/// The field names of `siklus.InteractionEvent`, for `&'static str` lookups.
const FIELDS: [&str; 13] = [
    "event_id",
    "customer_id",
    "event_type",
    "occurred_at",
    "channel",
    "campaign_id",
    "order_id",
    "amount_minor",
    "currency",
    "survey_type",
    "score",
    "referee_id",
    "properties",
];

fn static_field(name: &str) -> Option<&'static str> {
    FIELDS.iter().copied().find(|f| *f == name)
}

/// Turns a serde error into a precise [`DecodeError`] (the slow path).
fn explain(bytes: &[u8], err: &serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Io | Category::Syntax | Category::Eof => {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return DecodeError::NotJson("empty record".to_string());
            }
            return DecodeError::NotJson(err.to_string());
        }
        Category::Data => {}
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return DecodeError::NotJson(e.to_string()),
    };
    let Value::Object(obj) = &value else {
        return DecodeError::NotJson(format!("expected a JSON object, found {}", kind_of(&value)));
    };
    for field in FIELDS {
        if let Err(e) = check_field(field, obj.get(field)) {
            return e;
        }
    }
    // Not found by the field checks (e.g. a duplicate key): use serde's message.
    let msg = err.to_string();
    for prefix in ["missing field `", "duplicate field `"] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some(f) = rest.split('`').next().and_then(static_field) {
                return if prefix.starts_with("missing") {
                    DecodeError::MissingField(f)
                } else {
                    DecodeError::InvalidField {
                        field: f,
                        reason: "duplicate field".to_string(),
                    }
                };
            }
        }
    }
    DecodeError::InvalidField {
        field: "record",
        reason: msg,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(field: &'static str, reason: String) -> DecodeError {
    DecodeError::InvalidField { field, reason }
}

/// Checks one field of a parsed JSON object against what the struct accepts.
fn check_field(field: &'static str, v: Option<&Value>) -> Result<(), DecodeError> {
    let required = matches!(
        field,
        "event_id" | "customer_id" | "event_type" | "occurred_at"
    );
    let v = match v {
        None | Some(Value::Null) if required => return Err(DecodeError::MissingField(field)),
        None | Some(Value::Null) => return Ok(()),
        Some(v) => v,
    };
    match field {
        "occurred_at" => match v {
            Value::Number(n) => {
                if n.as_i64().is_some()
                    || n.as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                {
                    Ok(())
                } else {
                    Err(invalid(
                        field,
                        format!("epoch milliseconds must be an integer in range, got {n}"),
                    ))
                }
            }
            Value::String(s) => {
                if parse_rfc3339(s).is_some() || s.parse::<i64>().is_ok() {
                    Ok(())
                } else {
                    Err(invalid(
                        field,
                        format!("cannot parse {s:?}: expected RFC 3339 or epoch milliseconds"),
                    ))
                }
            }
            other => Err(invalid(
                field,
                format!(
                    "expected an RFC 3339 string or epoch milliseconds, found {}",
                    kind_of(other)
                ),
            )),
        },
        "amount_minor" => match v.as_i64() {
            Some(_) => Ok(()),
            None => Err(invalid(
                field,
                format!("expected an integer (minor units), found {}", describe(v)),
            )),
        },
        "score" => match v.as_i64().map(i32::try_from) {
            Some(Ok(_)) => Ok(()),
            _ => Err(invalid(
                field,
                format!("expected an integer, found {}", describe(v)),
            )),
        },
        "properties" => match v {
            Value::Object(m) => match m.iter().find(|(_, v)| !v.is_string()) {
                None => Ok(()),
                Some((k, pv)) => Err(invalid(
                    field,
                    format!("property {k:?} must be a string, found {}", kind_of(pv)),
                )),
            },
            other => Err(invalid(
                field,
                format!("expected an object of strings, found {}", kind_of(other)),
            )),
        },
        _ => match v {
            Value::String(_) => Ok(()),
            other => Err(invalid(
                field,
                format!("expected a string, found {}", kind_of(other)),
            )),
        },
    }
}

/// A short description of a JSON value for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("number {n}"),
        other => kind_of(other).to_string(),
    }
}

fn to_vec_infallible<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // The model serializes only strings, integers and string-keyed maps, which
    // serde_json cannot fail on; an empty object is the never-taken fallback.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// The JSON of a transition: fields in struct order, maps in key order,
/// timestamps as RFC 3339 UTC with milliseconds.
///
/// Written field by field (the bytes equal serde_json's serialization of
/// [`StageTransition`], which a proptest checks): serde's generic path was
/// a tenth of the CPU of a live run.
pub fn transition_json(t: &StageTransition) -> Vec<u8> {
    let mut buf = Vec::with_capacity(768);
    write_transition_json(t, true, &mut buf);
    buf
}

/// [`transition_json`], appended to `buf` (a writer reuses one buffer for
/// every transition); without `profile` when `snapshot` is false
/// (`outputs.snapshot = "none"`).
pub fn write_transition_json(t: &StageTransition, snapshot: bool, buf: &mut Vec<u8>) {
    let mut w = JsonOut(std::mem::take(buf));
    let p = &t.profile;
    w.raw("{\"transition_id\":");
    w.str(&t.transition_id);
    w.raw(",\"customer_id\":");
    w.str(&t.customer_id);
    w.raw(",\"dimension\":");
    w.str(t.dimension.as_str());
    w.raw(",\"from_stage\":");
    w.opt_str(t.from_stage.as_deref());
    w.raw(",\"to_stage\":");
    w.str(&t.to_stage);
    w.raw(",\"occurred_at\":");
    w.time(Some(t.occurred_at));
    w.raw(",\"triggering_event_id\":");
    w.opt_str(t.triggering_event_id.as_deref());
    w.raw(",\"rule\":");
    w.str(&t.rule);
    w.raw(",\"seq\":");
    w.int(t.seq);
    if !snapshot {
        w.raw("}");
        *buf = w.0;
        return;
    }
    w.raw(",\"profile\":{\"milestone\":");
    w.opt_str(p.milestone.as_deref());
    w.raw(",\"activity\":");
    w.opt_str(p.activity.as_deref());
    w.raw(",\"first_seen_at\":");
    w.time(p.first_seen_at);
    w.raw(",\"first_order_at\":");
    w.time(p.first_order_at);
    w.raw(",\"last_activity_at\":");
    w.time(p.last_activity_at);
    w.raw(",\"order_count\":");
    w.int(p.order_count);
    w.raw(",\"net_revenue\":");
    w.map(&p.net_revenue);
    w.raw(",\"refunds\":");
    w.int(p.refunds);
    w.raw(",\"open_tickets\":");
    w.int(p.open_tickets);
    w.raw(",\"csat_answers\":");
    w.int(p.csat_answers);
    w.raw(",\"csat_satisfied\":");
    w.int(p.csat_satisfied);
    w.raw(",\"last_nps\":");
    match p.last_nps {
        Some(n) => w.int(n),
        None => w.raw("null"),
    }
    w.raw(",\"referrals_sent\":");
    w.int(p.referrals_sent);
    w.raw(",\"referrals_converted\":");
    w.int(p.referrals_converted);
    w.raw(",\"impressions\":");
    w.int(p.impressions);
    w.raw(",\"clicks\":");
    w.int(p.clicks);
    w.raw(",\"cohort_week\":");
    w.time(p.cohort_week);
    w.raw(",\"cohort_month\":");
    w.time(p.cohort_month);
    w.raw(",\"channels\":");
    w.map(&p.channels);
    w.raw(",\"events\":");
    w.int(p.events);
    w.raw("}}");
    *buf = w.0;
}

/// Whether a string needs no escape in JSON as serde_json writes it: no
/// control character, quote, backslash or DEL. Eight bytes at a time.
fn plain(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `x` is zero (the classic bit trick: exact).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        let x = u64::from_le_bytes(a);
        // A byte below 0x20 with its high bit clear: (b | 0x80) - 0x20 keeps
        // the high bit exactly when b >= 0x20 or b >= 0x80.
        let low = !((x | HIGHS).wrapping_sub(0x20 * ONES)) & HIGHS & !x;
        if low != 0
            || has_zero(x ^ (u64::from(b'"') * ONES))
            || has_zero(x ^ (u64::from(b'\\') * ONES))
            || has_zero(x ^ (0x7f * ONES))
        {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f)
}

/// A small JSON writer for [`transition_json`].
struct JsonOut(Vec<u8>);

impl JsonOut {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn str(&mut self, s: &str) {
        if plain(s.as_bytes()) {
            self.0.push(b'"');
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(b'"');
        } else {
            // Escapes exactly as serde_json does; writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.0, s);
        }
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.raw("null"),
        }
    }

    fn int(&mut self, n: impl itoa::Integer) {
        let mut buf = itoa::Buffer::new();
        self.0.extend_from_slice(buf.format(n).as_bytes());
    }

    fn time(&mut self, ms: Option<i64>) {
        match ms {
            None => self.raw("null"),
            Some(ms) => {
                let mut buf = [0u8; 24];
                match crate::time::write_rfc3339_bytes(ms, &mut buf) {
                    // Digits and separators only: nothing to escape.
                    Some(text) => {
                        self.0.push(b'"');
                        self.0.extend_from_slice(text);
                        self.0.push(b'"');
                    }
                    None => self.str(&crate::time::format_rfc3339(ms)),
                }
            }
        }
    }

    fn map(&mut self, m: &std::collections::BTreeMap<String, i64>) {
        self.0.push(b'{');
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            self.str(k);
            self.0.push(b':');
            self.int(*v);
        }
        self.0.push(b'}');
    }
}

/// The JSON of an event (RFC 3339 `occurred_at`; absent optional fields omitted).
pub fn encode_event_json(e: &InteractionEvent) -> Vec<u8> {
    to_vec_infallible(e)
}

#[cfg(test)]
mod plain_tests {
    use proptest::prelude::*;

    proptest! {
        /// The eight-bytes-at-a-time check says what the byte loop says.
        #[test]
        fn plain_matches_the_byte_loop(s in proptest::collection::vec(any::<u8>(), 0..40)) {
            let want = s.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f);
            prop_assert_eq!(super::plain(&s), want);
        }

        #[test]
        fn plain_finds_one_bad_byte_anywhere(len in 1usize..40, at in 0usize..40, bad in prop::sample::select(vec![0u8, 0x1f, b'"', b'\\', 0x7f, 0x0a])) {
            let mut s = vec![b'a'; len];
            s[at % len] = bad;
            prop_assert!(!super::plain(&s));
            s[at % len] = 0xc3;
            prop_assert!(super::plain(&s));
        }
    }
}
