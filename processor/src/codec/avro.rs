//! Avro input and output: the embedded schemas, the Confluent wire format,
//! container files, and the mapping between `apache_avro::types::Value` and
//! the model.
//!
//! Records written with exactly the embedded `siklus.InteractionEvent` schema
//! (the default) are decoded by a hand-written, bounds-checked reader; records
//! written with any other (evolved) writer schema are decoded by apache-avro
//! and resolved against the embedded reader schema.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::OnceLock;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::Schema;

use crate::model::{intern, Dimension, InteractionEvent, ProfileSnapshot, StageTransition};

use super::{validate, wire, CodecError, DecodeError};

/// The `siklus.InteractionEvent` schema, as embedded in the binary.
pub const INTERACTION_EVENT_AVSC: &str = include_str!("../../../schemas/InteractionEvent.avsc");

/// The `siklus.StageTransition` schema, as embedded in the binary.
pub const STAGE_TRANSITION_AVSC: &str = include_str!("../../../schemas/StageTransition.avsc");

fn parsed(
    cell: &'static OnceLock<Result<Schema, String>>,
    name: &str,
    text: &str,
) -> Result<&'static Schema, CodecError> {
    cell.get_or_init(|| Schema::parse_str(text).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|reason| CodecError::InvalidSchema {
            name: name.to_string(),
            reason: reason.clone(),
        })
}

/// The parsed embedded `siklus.InteractionEvent` schema (the reader schema).
pub fn interaction_event_schema() -> Result<&'static Schema, CodecError> {
    static CELL: OnceLock<Result<Schema, String>> = OnceLock::new();
    parsed(&CELL, "InteractionEvent.avsc", INTERACTION_EVENT_AVSC)
}

/// The parsed embedded `siklus.StageTransition` schema.
pub fn stage_transition_schema() -> Result<&'static Schema, CodecError> {
    static CELL: OnceLock<Result<Schema, String>> = OnceLock::new();
    parsed(&CELL, "StageTransition.avsc", STAGE_TRANSITION_AVSC)
}

/// How records of one schema id are decoded.
#[derive(Debug)]
pub(crate) enum WriterSchema {
    /// Written with the embedded schema itself: the fast hand-written path.
    Embedded,
    /// Written with another schema: decode with it, resolve against the embedded one.
    Other(Box<Schema>),
}

impl WriterSchema {
    /// Parses a writer schema and checks that the embedded reader schema can read it.
    pub(crate) fn parse(name: &str, text: &str) -> Result<WriterSchema, CodecError> {
        let reader = interaction_event_schema()?;
        let schema = Schema::parse_str(text).map_err(|e| CodecError::InvalidSchema {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        if &schema == reader {
            return Ok(WriterSchema::Embedded);
        }
        SchemaCompatibility::can_read(&schema, reader).map_err(|e| {
            CodecError::IncompatibleSchema {
                name: name.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(WriterSchema::Other(Box::new(schema)))
    }

    /// Decodes one datum (no header) into an event, without validating it.
    pub(crate) fn decode(&self, datum: &[u8]) -> Result<InteractionEvent, DecodeError> {
        match self {
            WriterSchema::Embedded => decode_event_datum(datum),
            WriterSchema::Other(schema) => {
                let reader =
                    interaction_event_schema().map_err(|e| DecodeError::NotAvro(e.to_string()))?;
                let mut cursor = datum;
                let value = apache_avro::from_avro_datum(schema, &mut cursor, Some(reader))
                    .map_err(|e| DecodeError::NotAvro(e.to_string()))?;
                if !cursor.is_empty() {
                    return Err(trailing(cursor.len()));
                }
                event_from_value(value)
            }
        }
    }
}

fn trailing(n: usize) -> DecodeError {
    DecodeError::NotAvro(format!(
        "{n} trailing byte(s) after the datum (wrong writer schema for this schema id?)"
    ))
}

// ---------------------------------------------------------------------------
// The fast path: a bounds-checked reader for the embedded schema.

struct Datum<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn truncated(field: &str) -> DecodeError {
    DecodeError::NotAvro(format!("truncated datum in field {field}"))
}

impl<'a> Datum<'a> {
    fn long(&mut self, field: &str) -> Result<i64, DecodeError> {
        let mut n: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or_else(|| truncated(field))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(DecodeError::NotAvro(format!(
                    "varint overflows a long in field {field}"
                )));
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn int(&mut self, field: &str) -> Result<i32, DecodeError> {
        let v = self.long(field)?;
        i32::try_from(v)
            .map_err(|_| DecodeError::NotAvro(format!("int out of range in field {field}")))
    }

    fn bytes(&mut self, field: &str) -> Result<&'a [u8], DecodeError> {
        let len = self.long(field)?;
        let len = usize::try_from(len)
            .map_err(|_| DecodeError::NotAvro(format!("negative length {len} in field {field}")))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| truncated(field))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| DecodeError::NotAvro(format!("invalid UTF-8 in field {field}")))
    }

    /// Reads the branch of a `["null", T]` union: `true` when T follows.
    fn present(&mut self, field: &str) -> Result<bool, DecodeError> {
        match self.long(field)? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(DecodeError::NotAvro(format!(
                "invalid union branch {i} in field {field}"
            ))),
        }
    }

    fn opt_string(&mut self, field: &str) -> Result<Option<String>, DecodeError> {
        if self.present(field)? {
            self.string(field).map(Some)
        } else {
            Ok(None)
        }
    }

    fn string_map(&mut self, field: &str) -> Result<BTreeMap<String, String>, DecodeError> {
        let mut m = BTreeMap::new();
        loop {
            let mut count = self.long(field)?;
            if count == 0 {
                return Ok(m);
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                count = count.checked_neg().ok_or_else(|| truncated(field))?;
                self.long(field)?;
            }
            for _ in 0..count {
                let k = self.string(field)?;
                let v = self.string(field)?;
                m.insert(k, v);
            }
        }
    }
}

/// Decodes a datum written with exactly the embedded `siklus.InteractionEvent`
/// schema, without validating it.
pub(crate) fn decode_event_datum(buf: &[u8]) -> Result<InteractionEvent, DecodeError> {
    let (e, used) = decode_event_prefix(buf)?;
    if used != buf.len() {
        return Err(trailing(buf.len() - used));
    }
    Ok(e)
}

/// Decodes the datum at the start of `buf` (embedded schema); returns the
/// event and the number of bytes it took.
fn decode_event_prefix(buf: &[u8]) -> Result<(InteractionEvent, usize), DecodeError> {
    let mut d = Datum { buf, pos: 0 };
    let e = InteractionEvent {
        event_id: d.string("event_id")?,
        customer_id: d.string("customer_id")?,
        event_type: d.string("event_type")?,
        occurred_at: d.long("occurred_at")?,
        channel: d.opt_string("channel")?,
        campaign_id: d.opt_string("campaign_id")?,
        order_id: d.opt_string("order_id")?,
        amount_minor: if d.present("amount_minor")? {
            Some(d.long("amount_minor")?)
        } else {
            None
        },
        currency: d.opt_string("currency")?,
        survey_type: d.opt_string("survey_type")?,
        score: if d.present("score")? {
            Some(d.int("score")?)
        } else {
            None
        },
        referee_id: d.opt_string("referee_id")?,
        properties: if d.present("properties")? {
            Some(d.string_map("properties")?)
        } else {
            None
        },
    };
    Ok((e, d.pos))
}

// ---------------------------------------------------------------------------
// Mapping from apache-avro values.

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Long(_) => "long",
        Value::Float(_) => "float",
        Value::Double(_) => "double",
        Value::Bytes(_) | Value::Fixed(..) => "bytes",
        Value::String(_) => "string",
        Value::Enum(..) => "enum",
        Value::Union(..) => "union",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Record(_) => "record",
        _ => "logical type",
    }
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => unwrap_union(*inner),
        v => v,
    }
}

fn wrong_type(field: &'static str, expected: &str, v: &Value) -> DecodeError {
    DecodeError::InvalidField {
        field,
        reason: format!("expected {expected}, found Avro {}", kind_of(v)),
    }
}

fn opt_string(field: &'static str, v: Value) -> Result<Option<String>, DecodeError> {
    match unwrap_union(v) {
        Value::Null => Ok(None),
        Value::String(s) | Value::Enum(_, s) => Ok(Some(s)),
        Value::Uuid(u) => Ok(Some(u.to_string())),
        other => Err(wrong_type(field, "a string", &other)),
    }
}

fn opt_long(field: &'static str, v: Value) -> Result<Option<i64>, DecodeError> {
    match unwrap_union(v) {
        Value::Null => Ok(None),
        Value::Long(n)
        | Value::TimestampMillis(n)
        | Value::LocalTimestampMillis(n)
        | Value::TimeMicros(n) => Ok(Some(n)),
        Value::Int(n) | Value::TimeMillis(n) | Value::Date(n) => Ok(Some(i64::from(n))),
        other => Err(wrong_type(field, "a long", &other)),
    }
}

fn required<T>(field: &'static str, v: Option<T>) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::MissingField(field))
}

fn record_fields(v: Value) -> Result<Vec<(String, Value)>, DecodeError> {
    match unwrap_union(v) {
        Value::Record(fields) => Ok(fields),
        other => Err(DecodeError::NotAvro(format!(
            "expected a record, found Avro {}",
            kind_of(&other)
        ))),
    }
}

fn string_map(
    field: &'static str,
    m: HashMap<String, Value>,
) -> Result<BTreeMap<String, String>, DecodeError> {
    m.into_iter()
        .map(|(k, v)| Ok((k, required(field, opt_string(field, v)?)?)))
        .collect()
}

fn long_map(field: &'static str, v: Value) -> Result<BTreeMap<String, i64>, DecodeError> {
    match unwrap_union(v) {
        Value::Null => Ok(BTreeMap::new()),
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Ok((k, required(field, opt_long(field, v)?)?)))
            .collect(),
        other => Err(wrong_type(field, "a map", &other)),
    }
}

/// Maps a decoded (and resolved) `siklus.InteractionEvent` value to the model,
/// without validating it. Unknown fields are ignored.
pub fn event_from_value(v: Value) -> Result<InteractionEvent, DecodeError> {
    let mut e = InteractionEvent::default();
    let (mut id, mut customer, mut ty, mut at) = (None, None, None, None);
    for (name, v) in record_fields(v)? {
        match name.as_str() {
            "event_id" => id = opt_string("event_id", v)?,
            "customer_id" => customer = opt_string("customer_id", v)?,
            "event_type" => ty = opt_string("event_type", v)?,
            "occurred_at" => at = opt_long("occurred_at", v)?,
            "channel" => e.channel = opt_string("channel", v)?,
            "campaign_id" => e.campaign_id = opt_string("campaign_id", v)?,
            "order_id" => e.order_id = opt_string("order_id", v)?,
            "amount_minor" => e.amount_minor = opt_long("amount_minor", v)?,
            "currency" => e.currency = opt_string("currency", v)?,
            "survey_type" => e.survey_type = opt_string("survey_type", v)?,
            "score" => {
                e.score = opt_long("score", v)?
                    .map(|n| {
                        i32::try_from(n).map_err(|_| DecodeError::InvalidField {
                            field: "score",
                            reason: format!("{n} is out of range for an int"),
                        })
                    })
                    .transpose()?
            }
            "referee_id" => e.referee_id = opt_string("referee_id", v)?,
            "properties" => {
                e.properties = match unwrap_union(v) {
                    Value::Null => None,
                    Value::Map(m) => Some(string_map("properties", m)?),
                    other => return Err(wrong_type("properties", "a map of strings", &other)),
                }
            }
            _ => {}
        }
    }
    e.event_id = required("event_id", id)?;
    e.customer_id = required("customer_id", customer)?;
    e.event_type = required("event_type", ty)?;
    e.occurred_at = required("occurred_at", at)?;
    Ok(e)
}

/// Converts an event to an apache-avro value of the embedded schema.
pub fn event_to_value(e: &InteractionEvent) -> Value {
    fn opt_s(s: &Option<String>) -> Value {
        match s {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        }
    }
    let union = |v: Option<Value>| match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    };
    Value::Record(vec![
        ("event_id".into(), Value::String(e.event_id.clone())),
        ("customer_id".into(), Value::String(e.customer_id.clone())),
        ("event_type".into(), Value::String(e.event_type.clone())),
        ("occurred_at".into(), Value::TimestampMillis(e.occurred_at)),
        ("channel".into(), opt_s(&e.channel)),
        ("campaign_id".into(), opt_s(&e.campaign_id)),
        ("order_id".into(), opt_s(&e.order_id)),
        (
            "amount_minor".into(),
            union(e.amount_minor.map(Value::Long)),
        ),
        ("currency".into(), opt_s(&e.currency)),
        ("survey_type".into(), opt_s(&e.survey_type)),
        ("score".into(), union(e.score.map(Value::Int))),
        ("referee_id".into(), opt_s(&e.referee_id)),
        (
            "properties".into(),
            union(e.properties.as_ref().map(|m| {
                Value::Map(
                    m.iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                )
            })),
        ),
    ])
}

fn count_u32(field: &'static str, v: Value) -> Result<u32, DecodeError> {
    let n = required(field, opt_long(field, v)?)?;
    u32::try_from(n).map_err(|_| DecodeError::InvalidField {
        field,
        reason: format!("{n} is out of range"),
    })
}

fn snapshot_from_value(v: Value) -> Result<ProfileSnapshot, DecodeError> {
    let mut p = ProfileSnapshot::default();
    for (name, v) in record_fields(v)? {
        match name.as_str() {
            "milestone" => p.milestone = opt_string("milestone", v)?.map(intern),
            "activity" => p.activity = opt_string("activity", v)?.map(intern),
            "first_seen_at" => p.first_seen_at = opt_long("first_seen_at", v)?,
            "first_order_at" => p.first_order_at = opt_long("first_order_at", v)?,
            "last_activity_at" => p.last_activity_at = opt_long("last_activity_at", v)?,
            "order_count" => p.order_count = count_u32("order_count", v)?,
            "net_revenue" => p.net_revenue = long_map("net_revenue", v)?,
            "refunds" => p.refunds = count_u32("refunds", v)?,
            "open_tickets" => p.open_tickets = count_u32("open_tickets", v)?,
            "csat_answers" => p.csat_answers = count_u32("csat_answers", v)?,
            "csat_satisfied" => p.csat_satisfied = count_u32("csat_satisfied", v)?,
            "last_nps" => {
                p.last_nps = opt_long("last_nps", v)?
                    .map(|n| {
                        i32::try_from(n).map_err(|_| DecodeError::InvalidField {
                            field: "last_nps",
                            reason: format!("{n} is out of range"),
                        })
                    })
                    .transpose()?
            }
            "referrals_sent" => p.referrals_sent = count_u32("referrals_sent", v)?,
            "referrals_converted" => p.referrals_converted = count_u32("referrals_converted", v)?,
            "impressions" => p.impressions = required("impressions", opt_long("impressions", v)?)?,
            "clicks" => p.clicks = required("clicks", opt_long("clicks", v)?)?,
            "cohort_week" => p.cohort_week = opt_long("cohort_week", v)?,
            "cohort_month" => p.cohort_month = opt_long("cohort_month", v)?,
            "channels" => p.channels = long_map("channels", v)?,
            "events" => p.events = required("events", opt_long("events", v)?)?,
            _ => {}
        }
    }
    Ok(p)
}

/// Maps a decoded `siklus.StageTransition` value to the model.
pub fn transition_from_value(v: Value) -> Result<StageTransition, DecodeError> {
    let (mut id, mut customer, mut dim, mut to, mut at, mut rule, mut seq, mut profile) =
        (None, None, None, None, None, None, None, None);
    let (mut from_stage, mut trigger) = (None, None);
    for (name, v) in record_fields(v)? {
        match name.as_str() {
            "transition_id" => id = opt_string("transition_id", v)?,
            "customer_id" => customer = opt_string("customer_id", v)?,
            "dimension" => {
                dim = match opt_string("dimension", v)?.as_deref() {
                    None => None,
                    Some("milestone") => Some(Dimension::Milestone),
                    Some("activity") => Some(Dimension::Activity),
                    Some(other) => {
                        return Err(DecodeError::InvalidField {
                            field: "dimension",
                            reason: format!("{other:?} is not milestone or activity"),
                        })
                    }
                }
            }
            "from_stage" => from_stage = opt_string("from_stage", v)?,
            "to_stage" => to = opt_string("to_stage", v)?,
            "occurred_at" => at = opt_long("occurred_at", v)?,
            "triggering_event_id" => trigger = opt_string("triggering_event_id", v)?,
            "rule" => rule = opt_string("rule", v)?,
            "seq" => {
                seq = opt_long("seq", v)?
                    .map(|n| {
                        u64::try_from(n).map_err(|_| DecodeError::InvalidField {
                            field: "seq",
                            reason: format!("{n} is negative"),
                        })
                    })
                    .transpose()?
            }
            "profile" => profile = Some(snapshot_from_value(v)?),
            _ => {}
        }
    }
    Ok(StageTransition {
        transition_id: required("transition_id", id)?,
        customer_id: required("customer_id", customer)?,
        dimension: required("dimension", dim)?,
        from_stage: from_stage.map(intern),
        to_stage: intern(required("to_stage", to)?),
        occurred_at: required("occurred_at", at)?,
        triggering_event_id: trigger,
        rule: intern(required("rule", rule)?),
        seq: required("seq", seq)?,
        profile: required("profile", profile)?,
    })
}

/// Decodes a transition from the Confluent wire format (any schema id; the
/// datum must be written with the embedded `siklus.StageTransition` schema).
/// For consumers of the transitions topic and for comparing runs.
pub fn decode_transition_avro(bytes: &[u8]) -> Result<StageTransition, DecodeError> {
    let (_, mut datum) = wire::split_header(bytes).ok_or_else(|| {
        DecodeError::NotAvro("missing Confluent header (magic byte 0, 4-byte schema id)".into())
    })?;
    let schema = stage_transition_schema().map_err(|e| DecodeError::NotAvro(e.to_string()))?;
    let value = apache_avro::from_avro_datum(schema, &mut datum, None)
        .map_err(|e| DecodeError::NotAvro(e.to_string()))?;
    if !datum.is_empty() {
        return Err(trailing(datum.len()));
    }
    transition_from_value(value)
}

/// Decodes a transition written as JSON ([`super::transition_json`]) or in the
/// Confluent Avro wire format (magic byte 0).
pub fn decode_transition(bytes: &[u8]) -> Result<StageTransition, DecodeError> {
    if bytes.first() == Some(&wire::MAGIC) {
        decode_transition_avro(bytes)
    } else {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))
    }
}

// ---------------------------------------------------------------------------
// Wire format and container files.

/// Encodes an event in the Confluent wire format: magic byte, `schema_id`,
/// then the Avro datum of the embedded schema.
pub fn encode_event_avro_wire(e: &InteractionEvent, schema_id: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + e.event_id.len() + e.customer_id.len());
    wire::put_header(&mut buf, schema_id);
    wire::put_event(&mut buf, e);
    buf
}

/// Reads an Avro object container file of `siklus.InteractionEvent` records
/// (any compatible writer schema, resolved against the embedded one). Each
/// record is mapped and validated; after a read error the iterator ends.
///
/// A file written with exactly the embedded schema and no compression (what
/// `siklus bench write-avro` and [`write_avro_container`] write) is decoded
/// block by block with the hand-written datum reader; any other file goes
/// through apache-avro with schema resolution.
///
/// Fails up front when the header is not an Avro container header or its
/// schema cannot be read as `siklus.InteractionEvent`.
pub fn read_avro_container<R: Read>(mut reader: R) -> Result<ContainerEvents<R>, CodecError> {
    let schema = interaction_event_schema()?;
    let mut tee = Tee {
        inner: &mut reader,
        seen: Vec::new(),
    };
    let header = read_container_header(&mut tee);
    let seen = tee.seen;
    if let Ok(h) = &header {
        let plain = matches!(h.codec.as_deref(), None | Some("null"));
        let embedded = Schema::parse_str(&h.schema).is_ok_and(|w| &w == schema);
        if plain && embedded {
            return Ok(ContainerEvents(Inner::Fast(FastBlocks {
                reader,
                sync: h.sync,
                block: Vec::new(),
                pos: 0,
                remaining: 0,
                done: false,
            })));
        }
    }
    // Everything else (and every malformed header, for apache-avro's error
    // message): apache-avro over the bytes read so far and the rest.
    let r = apache_avro::Reader::with_schema(schema, std::io::Cursor::new(seen).chain(reader))
        .map_err(|e| CodecError::Avro(format!("not an Avro container file: {e}")))?;
    SchemaCompatibility::can_read(r.writer_schema(), schema).map_err(|e| {
        CodecError::IncompatibleSchema {
            name: "container file".to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(ContainerEvents(Inner::Resolved(Box::new(r))))
}

/// The events of an Avro container file, from [`read_avro_container`].
pub struct ContainerEvents<R: Read>(Inner<R>);

enum Inner<R: Read> {
    Fast(FastBlocks<R>),
    // Boxed: apache-avro's reader is several hundred bytes.
    Resolved(Box<apache_avro::Reader<'static, std::io::Chain<std::io::Cursor<Vec<u8>>, R>>>),
}

impl<R: Read> Iterator for ContainerEvents<R> {
    type Item = Result<InteractionEvent, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Inner::Fast(f) => f.next(),
            Inner::Resolved(r) => r.next().map(|item| {
                let value = item.map_err(|e| DecodeError::NotAvro(e.to_string()))?;
                let event = event_from_value(value)?;
                validate(&event)?;
                Ok(event)
            }),
        }
    }
}

/// Records every byte read through it (so a header can be read twice).
struct Tee<'r, R: Read> {
    inner: &'r mut R,
    seen: Vec<u8>,
}

impl<R: Read> Tee<'_, R> {
    fn byte(&mut self) -> std::io::Result<u8> {
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b)?;
        self.seen.push(b[0]);
        Ok(b[0])
    }

    fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.inner.read_exact(&mut v)?;
        self.seen.extend_from_slice(&v);
        Ok(v)
    }
}

/// Reads an Avro `long` from a byte source.
fn read_varint(mut byte: impl FnMut() -> std::io::Result<u8>) -> std::io::Result<i64> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = byte()?;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "varint longer than 10 bytes",
    ))
}

struct ContainerHeader {
    schema: String,
    codec: Option<String>,
    sync: [u8; 16],
}

fn bad_header(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads the header of a container file: magic, metadata map, sync marker.
fn read_container_header<R: Read>(t: &mut Tee<'_, R>) -> std::io::Result<ContainerHeader> {
    if t.exact(4)? != b"Obj\x01" {
        return Err(bad_header("no Avro container magic"));
    }
    let (mut schema, mut codec) = (None, None);
    loop {
        let mut count = read_varint(|| t.byte())?;
        if count == 0 {
            break;
        }
        if count < 0 {
            count = -count;
            read_varint(|| t.byte())?; // the block's size in bytes
        }
        for _ in 0..count {
            let klen = read_varint(|| t.byte())?;
            let key = t.exact(usize::try_from(klen).map_err(|_| bad_header("key length"))?)?;
            let vlen = read_varint(|| t.byte())?;
            if !(0..1 << 24).contains(&vlen) {
                return Err(bad_header("metadata value length"));
            }
            let value = t.exact(vlen as usize)?;
            let text = String::from_utf8(value).map_err(|_| bad_header("metadata not UTF-8"))?;
            match key.as_slice() {
                b"avro.schema" => schema = Some(text),
                b"avro.codec" => codec = Some(text),
                _ => {}
            }
        }
    }
    let sync: [u8; 16] = t
        .exact(16)?
        .try_into()
        .map_err(|_| bad_header("sync marker"))?;
    Ok(ContainerHeader {
        schema: schema.ok_or_else(|| bad_header("no avro.schema"))?,
        codec,
        sync,
    })
}

/// Uncompressed blocks of embedded-schema datums.
struct FastBlocks<R: Read> {
    reader: R,
    sync: [u8; 16],
    block: Vec<u8>,
    pos: usize,
    remaining: i64,
    done: bool,
}

impl<R: Read> FastBlocks<R> {
    /// Reads the next block; `Ok(false)` at a clean end of file.
    fn next_block(&mut self) -> Result<bool, DecodeError> {
        let io = |e: std::io::Error| DecodeError::NotAvro(format!("container block: {e}"));
        let mut first = [0u8; 1];
        if self.reader.read(&mut first).map_err(io)? == 0 {
            return Ok(false);
        }
        let mut pending = Some(first[0]);
        let reader = &mut self.reader;
        let mut byte = || -> std::io::Result<u8> {
            if let Some(b) = pending.take() {
                return Ok(b);
            }
            let mut b = [0u8; 1];
            reader.read_exact(&mut b)?;
            Ok(b[0])
        };
        let count = read_varint(&mut byte).map_err(io)?;
        let size = read_varint(&mut byte).map_err(io)?;
        if count < 0 || !(0..1 << 31).contains(&size) {
            return Err(DecodeError::NotAvro(format!(
                "container block of {count} records in {size} bytes"
            )));
        }
        self.block.resize(size as usize, 0);
        self.reader.read_exact(&mut self.block).map_err(io)?;
        let mut sync = [0u8; 16];
        self.reader.read_exact(&mut sync).map_err(io)?;
        if sync != self.sync {
            return Err(DecodeError::NotAvro(
                "container block does not end with the file's sync marker".into(),
            ));
        }
        self.pos = 0;
        self.remaining = count;
        Ok(true)
    }

    fn step(&mut self) -> Option<Result<InteractionEvent, DecodeError>> {
        while self.remaining == 0 {
            if self.pos != self.block.len() {
                return Some(Err(trailing(self.block.len() - self.pos)));
            }
            match self.next_block() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
        self.remaining -= 1;
        Some(
            decode_event_prefix(&self.block[self.pos..]).and_then(|(e, used)| {
                self.pos += used;
                validate(&e)?;
                Ok(e)
            }),
        )
    }
}

impl<R: Read> Iterator for FastBlocks<R> {
    type Item = Result<InteractionEvent, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        match &item {
            None => self.done = true,
            // A datum that does not decode leaves the rest of its block
            // unreadable; an invalid (but decoded) event does not.
            Some(Err(DecodeError::NotAvro(_))) => self.done = true,
            Some(_) => {}
        }
        item
    }
}

/// Writes events to an Avro object container file (embedded schema, no
/// compression) and returns the inner writer, flushed.
pub fn write_avro_container<'a, W: Write>(
    events: impl IntoIterator<Item = &'a InteractionEvent>,
    writer: W,
) -> Result<W, CodecError> {
    let schema = interaction_event_schema()?;
    let mut w = apache_avro::Writer::new(schema, writer);
    for e in events {
        w.append(event_to_value(e))
            .map_err(|err| CodecError::Avro(format!("event {:?}: {err}", e.event_id)))?;
    }
    w.into_inner().map_err(|e| CodecError::Avro(e.to_string()))
}
