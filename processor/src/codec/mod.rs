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
pub mod wire;

#[cfg(test)]
mod tests;

pub use avro::{
    decode_transition, decode_transition_avro, encode_event_avro_wire, event_from_value,
    event_to_value, interaction_event_schema, read_avro_container, stage_transition_schema,
    transition_from_value, write_avro_container, INTERACTION_EVENT_AVSC, STAGE_TRANSITION_AVSC,
};
pub use json::{decode_json_line, encode_event_json, transition_json};

use avro::WriterSchema;

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
}

impl DecodeError {
    /// A short stable label: `json`, `avro`, `schema_id`, `missing_field` or `invalid_field`.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "json",
            DecodeError::NotAvro(_) => "avro",
            DecodeError::UnknownSchemaId(_) => "schema_id",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
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

/// Decodes input records into validated [`InteractionEvent`]s.
///
/// Avro records carry a schema id (Confluent wire format). Each id maps to a
/// writer schema: by default id 1 is the embedded `siklus.InteractionEvent`
/// schema; configuration can map more ids to `.avsc` files, which are
/// resolved against the embedded (reader) schema with Avro schema resolution.
#[derive(Debug)]
pub struct Decoder {
    format: InputFormat,
    writers: BTreeMap<u32, WriterSchema>,
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
        let writer = self
            .writers
            .get(&id)
            .ok_or(DecodeError::UnknownSchemaId(id))?;
        writer.decode(datum)
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
}

impl TransitionEncoder {
    /// An encoder writing `format`; `schema_id` goes into the Confluent header of Avro output.
    pub fn new(format: OutputFormat, schema_id: u32) -> Result<Self, CodecError> {
        if format == OutputFormat::Avro {
            stage_transition_schema()?;
        }
        Ok(TransitionEncoder { format, schema_id })
    }

    /// The output format.
    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// Encodes one transition. Deterministic: the same transition always
    /// yields the same bytes.
    pub fn encode(&self, t: &StageTransition) -> Result<Vec<u8>, CodecError> {
        match self.format {
            OutputFormat::Json => Ok(transition_json(t)),
            OutputFormat::Avro => {
                let mut buf = Vec::with_capacity(256);
                wire::put_header(&mut buf, self.schema_id);
                wire::put_transition(&mut buf, t)?;
                Ok(buf)
            }
        }
    }
}
