//! Record codecs: decoding and validating input events (JSON, Avro in the
//! Confluent wire format, Avro container files) and encoding transitions
//! (JSON or Avro).
//!
//! Every decode failure is a [`DecodeError`] whose message is the reason put
//! on the dead-letter record, and whose [`DecodeError::kind`] is a short,
//! stable label for metrics and headers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{InteractionEvent, StageTransition};

mod avro;
mod json;
pub mod registry;
pub mod wire;

#[cfg(test)]
mod tests;

pub use avro::{
    decode_transition, decode_transition_avro, encode_event_avro_wire, event_from_value,
    event_to_value, interaction_event_schema, read_avro_container, stage_transition_schema,
    transition_from_value, write_avro_container, INTERACTION_EVENT_AVSC, STAGE_TRANSITION_AVSC,
};
pub use json::{decode_json_line, encode_event_json, transition_json, write_transition_json};

use avro::WriterSchema;
use registry::{RegistryClient, RegistryError};

/// The schema id of the embedded `siklus.InteractionEvent` schema when no
/// Schema Registry is configured.
pub const DEFAULT_EVENT_SCHEMA_ID: u32 = 1;

/// How input records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Confluent magic byte 0 means Avro wire format; anything else is JSON.
    #[default]
    Auto,
    /// JSON objects only.
    Json,
    /// Avro in the Confluent wire format only.
    Avro,
}

/// How transitions are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// JSON with RFC 3339 timestamps.
    #[default]
    Json,
    /// Avro in the Confluent wire format.
    Avro,
}

/// Why an input record was rejected. The message is the dead-letter reason.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    /// Not a JSON object (syntax error, truncated, empty, or another JSON type).
    #[error("not a JSON event: {0}")]
    NotJson(String),
    /// Not a decodable Avro record (missing header, truncated or malformed datum).
    #[error("not an Avro event: {0}")]
    NotAvro(String),
    /// The Confluent header names a schema id with no known writer schema.
    #[error("unknown Avro schema id {0}")]
    UnknownSchemaId(u32),
    /// The Schema Registry answered that it has no schema with this id.
    #[error("Avro schema id {0} is not in the schema registry")]
    SchemaNotInRegistry(u32),
    /// The registry's schema for this id cannot be read as
    /// `siklus.InteractionEvent` (not Avro, not valid, or incompatible).
    #[error("Avro schema id {id} cannot be read as siklus.InteractionEvent: {reason}")]
    UnusableSchema {
        /// The schema id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// A required field is absent, null or empty.
    #[error("missing required field {0}")]
    MissingField(&'static str),
    /// A field is present but its value is not acceptable.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The Kafka record key is missing or is not the event's `customer_id`
    /// (a customer's state lives in the partition of its key).
    #[error("record key: {0}")]
    Key(String),
    /// The event time is not one the engine accepts: from the future, far
    /// ahead of the partition's event time, or far behind the customer's.
    #[error("{reason}")]
    Time {
        /// `future`, `time_jump` or `too_late`.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// Applying the event would overflow a counter or a sum of money.
    #[error("arithmetic overflow: {0}")]
    Overflow(String),
}

/// The key rule of every driver that reads Kafka: a record must have a key,
/// and it must be the event's `customer_id`.
pub fn check_record_key(
    key: Option<&[u8]>,
    decoded: Result<InteractionEvent, DecodeError>,
) -> Result<InteractionEvent, DecodeError> {
    let e = decoded?;
    match key {
        None => Err(DecodeError::Key(
            "the record has no key (the key must be the customer_id)".into(),
        )),
        Some(k) if k != e.customer_id.as_bytes() => Err(DecodeError::Key(
            "does not match customer_id (the key must be the customer_id)".into(),
        )),
        Some(_) => Ok(e),
    }
}

impl DecodeError {
    /// A short stable label: `json`, `avro`, `schema_id` (unknown id),
    /// `schema` (unusable writer schema), `missing_field`, `invalid_field`,
    /// `key`, `future`, `time_jump`, `too_late` or `overflow`.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "json",
            DecodeError::NotAvro(_) => "avro",
            DecodeError::UnknownSchemaId(_) | DecodeError::SchemaNotInRegistry(_) => "schema_id",
            DecodeError::UnusableSchema { .. } => "schema",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::Key(_) => "key",
            DecodeError::Time { kind, .. } => kind,
            DecodeError::Overflow(_) => "overflow",
        }
    }

    /// The field concerned, for missing and invalid fields.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            DecodeError::MissingField(f) | DecodeError::InvalidField { field: f, .. } => Some(f),
            _ => None,
        }
    }
}

/// A configuration or encoding failure (not a per-record input problem).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CodecError {
    /// A schema file could not be read.
    #[error("cannot read schema file {path}: {reason}")]
    SchemaFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A schema is not valid Avro.
    #[error("invalid Avro schema {name}: {reason}")]
    InvalidSchema {
        /// Where the schema came from.
        name: String,
        /// The parse error.
        reason: String,
    },
    /// A writer schema cannot be resolved against the embedded reader schema.
    #[error("schema {name} cannot be read as siklus.InteractionEvent: {reason}")]
    IncompatibleSchema {
        /// Where the schema came from.
        name: String,
        /// Why schema resolution fails.
        reason: String,
    },
    /// An apache-avro failure (container files).
    #[error("Avro: {0}")]
    Avro(String),
    /// A value that the output schema cannot represent.
    #[error("value out of range: {0}")]
    OutOfRange(String),
}

/// At most this many schema ids are remembered as rejected; past it the
/// memory is cleared (a flood of garbage ids must not grow it without bound).
const MAX_REJECTED_IDS: usize = 10_000;

/// Decodes input records into validated [`InteractionEvent`]s.
///
/// Avro records carry a schema id (Confluent wire format). Each id maps to a
/// writer schema: by default id 1 is the embedded `siklus.InteractionEvent`
/// schema; configuration can map more ids to `.avsc` files, which are
/// resolved against the embedded (reader) schema with Avro schema resolution.
///
/// With a Schema Registry ([`Decoder::with_registry`]), the writer schemas of
/// ids not known yet are fetched by [`Decoder::fetch_schema`] and kept; the
/// registry's schemas replace the embedded id 1 and the configured files.
#[derive(Debug)]
pub struct Decoder {
    format: InputFormat,
    writers: BTreeMap<u32, WriterSchema>,
    /// The registry writer schemas come from, when there is one.
    registry: Option<RegistryClient>,
    /// Ids the registry does not know or whose schema siklus cannot read,
    /// with the reason given to each of their records.
    rejected: BTreeMap<u32, DecodeError>,
    /// Failed registry calls that were retried.
    registry_retries: u64,
}

impl Decoder {
    /// A decoder for `format`, with `schema_ids` mapping extra (or overriding)
    /// schema ids to writer-schema files. Fails when a file cannot be read,
    /// is not valid Avro, or cannot be read as `siklus.InteractionEvent`.
    pub fn new(
        format: InputFormat,
        schema_ids: &BTreeMap<u32, PathBuf>,
    ) -> Result<Decoder, CodecError> {
        interaction_event_schema()?;
        let mut d = Decoder {
            format,
            writers: BTreeMap::new(),
            registry: None,
            rejected: BTreeMap::new(),
            registry_retries: 0,
        };
        d.writers
            .insert(DEFAULT_EVENT_SCHEMA_ID, WriterSchema::Embedded);
        for (id, path) in schema_ids {
            let text = std::fs::read_to_string(path).map_err(|e| CodecError::SchemaFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            d.register_schema(*id, &path.display().to_string(), &text)?;
        }
        Ok(d)
    }

    /// Maps `schema_id` to a writer schema given as Avro JSON (e.g. fetched from
    /// a Schema Registry). `name` is only used in error messages.
    pub fn register_schema(
        &mut self,
        schema_id: u32,
        name: &str,
        schema_json: &str,
    ) -> Result<(), CodecError> {
        let w = WriterSchema::parse(name, schema_json)?;
        self.writers.insert(schema_id, w);
        Ok(())
    }

    /// Whether `schema_id` has a writer schema.
    pub fn knows_schema(&self, schema_id: u32) -> bool {
        self.writers.contains_key(&schema_id)
    }

    /// Takes writer schemas from `registry`: every schema id is the
    /// registry's, so the embedded id 1 and configured files are dropped.
    pub fn with_registry(mut self, registry: RegistryClient) -> Decoder {
        self.writers.clear();
        self.registry = Some(registry);
        self
    }

    /// Failed registry calls retried so far (a metric).
    pub fn registry_retries(&self) -> u64 {
        self.registry_retries
    }

    /// Makes sure [`Decoder::decode`] can decode `bytes`: for an Avro record
    /// whose schema id is new, fetches the writer schema from the registry.
    ///
    /// An unreachable registry (connection refused, timeout, 5xx, a refused
    /// login) is retried with exponential backoff until it answers: the
    /// record is never blamed for it. A definite answer is kept: a schema
    /// siklus can read is used for every record of its id; an id the
    /// registry does not know, or a schema that cannot be resolved against
    /// `siklus.InteractionEvent`, makes `decode` reject the id's records
    /// with the reason (they go to the dead-letter topic).
    ///
    /// Without a registry, or for JSON and for known ids, does nothing.
    /// Fails only when `stop` returned true while the registry was
    /// unreachable; the record is then not decodable yet.
    pub fn fetch_schema(
        &mut self,
        bytes: &[u8],
        stop: &dyn Fn() -> bool,
    ) -> Result<(), RegistryError> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        if self.format == InputFormat::Json {
            return Ok(());
        }
        let Some((id, _)) = wire::split_header(bytes) else {
            return Ok(());
        };
        if self.writers.contains_key(&id) || self.rejected.contains_key(&id) {
            return Ok(());
        }
        let mut retries = 0u64;
        let fetched = registry.retrying(
            stop,
            |e, wait| {
                retries += 1;
                tracing::warn!(
                    schema_id = id,
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "schema registry unavailable; retrying"
                );
            },
            |r| r.schema_by_id(id),
        );
        self.registry_retries += retries;
        let outcome = match fetched {
            Ok(s) if s.schema_type.eq_ignore_ascii_case("AVRO") => {
                WriterSchema::parse(&format!("registry schema id {id}"), &s.schema).map_err(|e| {
                    DecodeError::UnusableSchema {
                        id,
                        reason: match e {
                            CodecError::InvalidSchema { reason, .. }
                            | CodecError::IncompatibleSchema { reason, .. } => reason,
                            other => other.to_string(),
                        },
                    }
                })
            }
            Ok(s) => Err(DecodeError::UnusableSchema {
                id,
                reason: format!("it is a {} schema, not Avro", s.schema_type),
            }),
            Err(RegistryError::NotFound { .. }) => Err(DecodeError::SchemaNotInRegistry(id)),
            Err(e) if e.is_retriable() => return Err(e),
            Err(e) => Err(DecodeError::UnusableSchema {
                id,
                reason: e.to_string(),
            }),
        };
        match outcome {
            Ok(w) => {
                tracing::info!(schema_id = id, "writer schema fetched from the registry");
                self.writers.insert(id, w);
            }
            Err(reason) => {
                tracing::warn!(schema_id = id, %reason, "schema id rejected");
                if self.rejected.len() >= MAX_REJECTED_IDS {
                    self.rejected.clear();
                }
                self.rejected.insert(id, reason);
            }
        }
        Ok(())
    }

    /// The configured input format.
    pub fn format(&self) -> InputFormat {
        self.format
    }

    /// Decodes and validates one record.
    pub fn decode(&self, bytes: &[u8]) -> Result<InteractionEvent, DecodeError> {
        let avro = match self.format {
            InputFormat::Auto => bytes.first() == Some(&wire::MAGIC),
            InputFormat::Json => false,
            InputFormat::Avro => true,
        };
        if avro {
            let event = self.decode_avro_unvalidated(bytes)?;
            validate(&event)?;
            Ok(event)
        } else {
            decode_json_line(bytes)
        }
    }

    fn decode_avro_unvalidated(&self, bytes: &[u8]) -> Result<InteractionEvent, DecodeError> {
        let (id, datum) = wire::split_header(bytes).ok_or_else(|| {
            DecodeError::NotAvro(match bytes.first() {
                None => "empty record".to_string(),
                Some(&wire::MAGIC) => format!(
                    "{}-byte record is shorter than the 5-byte Confluent header",
                    bytes.len()
                ),
                Some(b) => format!("expected Confluent magic byte 0x00, found 0x{b:02x}"),
            })
        })?;
        match self.writers.get(&id) {
            Some(writer) => writer.decode(datum),
            None => Err(self
                .rejected
                .get(&id)
                .cloned()
                .unwrap_or(DecodeError::UnknownSchemaId(id))),
        }
    }
}

/// The channels an event may name.
pub const CHANNELS: [&str; 11] = [
    "web",
    "app",
    "email",
    "whatsapp",
    "facebook",
    "instagram",
    "phone",
    "sms",
    "store",
    "social",
    "other",
];

/// 1970-01-01T00:00:00Z.
const MIN_OCCURRED_AT: i64 = 0;
/// 9999-12-31T23:59:59.999Z.
const MAX_OCCURRED_AT: i64 = 253_402_300_799_999;

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// Checks an event against the contract (DESIGN §1).
///
/// - `event_id`, `customer_id` and `event_type` are required and not blank
///   (an unknown `event_type` is valid);
/// - `occurred_at` lies in years 1970..=9999;
/// - `amount_minor` is not negative;
/// - `score` is in range for `survey_type` (csat 1..=5, nps 0..=10) when both are given;
/// - `currency` is three uppercase ASCII letters;
/// - `channel` is one of [`CHANNELS`].
pub fn validate(e: &InteractionEvent) -> Result<(), DecodeError> {
    if blank(&e.event_id) {
        return Err(DecodeError::MissingField("event_id"));
    }
    if blank(&e.customer_id) {
        return Err(DecodeError::MissingField("customer_id"));
    }
    if blank(&e.event_type) {
        return Err(DecodeError::MissingField("event_type"));
    }
    if !(MIN_OCCURRED_AT..=MAX_OCCURRED_AT).contains(&e.occurred_at) {
        return Err(DecodeError::InvalidField {
            field: "occurred_at",
            reason: format!(
                "{} ms ({}) is outside years 1970..=9999",
                e.occurred_at,
                crate::time::format_rfc3339(e.occurred_at)
            ),
        });
    }
    if let Some(a) = e.amount_minor {
        if a < 0 {
            return Err(DecodeError::InvalidField {
                field: "amount_minor",
                reason: format!("{a} is negative"),
            });
        }
    }
    if let (Some(kind), Some(score)) = (e.survey_type.as_deref(), e.score) {
        let range = match kind {
            "csat" => Some(1..=5),
            "nps" => Some(0..=10),
            _ => None,
        };
        if let Some(range) = range {
            if !range.contains(&score) {
                return Err(DecodeError::InvalidField {
                    field: "score",
                    reason: format!(
                        "{score} is outside {}..={} for {kind}",
                        range.start(),
                        range.end()
                    ),
                });
            }
        }
    }
    if let Some(c) = e.currency.as_deref() {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(DecodeError::InvalidField {
                field: "currency",
                reason: format!("{c:?} is not a 3-letter uppercase ISO 4217 code"),
            });
        }
    }
    if let Some(ch) = e.channel.as_deref() {
        if !CHANNELS.contains(&ch) {
            return Err(DecodeError::InvalidField {
                field: "channel",
                reason: format!("{ch:?} is not one of {}", CHANNELS.join(", ")),
            });
        }
    }
    Ok(())
}

/// Encodes transitions for the transitions topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionEncoder {
    format: OutputFormat,
    schema_id: u32,
    snapshot: bool,
}

impl TransitionEncoder {
    /// An encoder writing `format`; `schema_id` goes into the Confluent header of Avro output.
    pub fn new(format: OutputFormat, schema_id: u32) -> Result<Self, CodecError> {
        if format == OutputFormat::Avro {
            stage_transition_schema()?;
        }
        Ok(TransitionEncoder {
            format,
            schema_id,
            snapshot: true,
        })
    }

    /// Whether JSON transitions carry the profile snapshot (default true;
    /// `outputs.snapshot`). Avro transitions always do (the schema requires it).
    pub fn with_snapshot(self, snapshot: bool) -> Self {
        TransitionEncoder { snapshot, ..self }
    }

    /// The output format.
    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// Encodes one transition. Deterministic: the same transition always
    /// yields the same bytes.
    pub fn encode(&self, t: &StageTransition) -> Result<Vec<u8>, CodecError> {
        match self.format {
            OutputFormat::Json => {
                let mut buf = Vec::with_capacity(if self.snapshot { 768 } else { 256 });
                write_transition_json(t, self.snapshot, &mut buf);
                Ok(buf)
            }
            OutputFormat::Avro => {
                let mut buf = Vec::with_capacity(256);
                wire::put_header(&mut buf, self.schema_id);
                wire::put_transition(&mut buf, t)?;
                Ok(buf)
            }
        }
    }
}
