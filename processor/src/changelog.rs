//! The changelog of the partition state: what a step changed, as records of
//! a compacted topic (`siklus.<group>.profiles-changelog`, one partition per
//! input partition), and how a store is rebuilt from them.
//!
//! Record keys (the changelog partition is the input partition):
//!
//! | key | value | store write on restore |
//! |-----|-------|------------------------|
//! | `P` customer | profile value, or a tombstone (erased, expired) | profile and its timer |
//! | `E` customer, event hash (u64 BE) | `[1]`, or a tombstone (erased) | seen table entry |
//! | `M` name | partition metadata (clock, aggregator) | metadata |
//! | `O` | next input offset (i64 BE) | input offset |
//!
//! Every record carries the header [`INPUT_OFFSET_HEADER`]: the next input
//! offset of its partition once the step that wrote it is applied. The
//! records of one step end with its `O` record. A step's records may reach
//! the changelog while its input offsets never get committed (a crash after
//! the flush): a restore applies only records whose step is covered by the
//! group's committed offset, so the restored state always matches an input
//! offset, and the steps after it are processed again from the input.
//!
//! Timers are not in the changelog: they follow from the profiles.

use std::collections::HashMap;
use std::sync::Arc;

use siklus_state::{Batch, StateError, Store};

use crate::engine::{self, EngineConfig};

/// Header of every changelog record: the next input offset (decimal) of
/// the partition after the step that wrote the record.
pub const INPUT_OFFSET_HEADER: &str = "siklus.input.next";

/// Partition metadata: the next changelog offset the local store reflects.
pub const META_CHANGELOG_NEXT: &str = "changelog.next";

const KEY_PROFILE: u8 = b'P';
const KEY_SEEN: u8 = b'E';
const KEY_META: u8 = b'M';
const KEY_OFFSET: u8 = b'O';

/// One change of a partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Input (and changelog) partition.
    pub partition: u32,
    /// Record key (see the module docs).
    pub key: Vec<u8>,
    /// Value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Next input offset of the partition after the step (0 when the
    /// partition has consumed nothing yet).
    pub input_next: i64,
}

/// Key of a customer's profile.
pub fn profile_key(customer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + customer.len());
    k.push(KEY_PROFILE);
    k.extend_from_slice(customer.as_bytes());
    k
}

/// Key of one seen event id of a customer.
pub fn seen_key(customer: &str, hash: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + customer.len());
    k.push(KEY_SEEN);
    k.extend_from_slice(customer.as_bytes());
    k.extend_from_slice(&hash.to_be_bytes());
    k
}

/// Key of a metadata blob.
pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![KEY_META];
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key of the input offset record.
pub fn offset_key() -> Vec<u8> {
    vec![KEY_OFFSET]
}

/// A decoded changelog key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKey {
    /// A profile.
    Profile(String),
    /// A seen event id.
    Seen(String, u64),
    /// A metadata blob.
    Meta(String),
    /// The input offset.
    Offset,
}

/// Decodes a changelog key; `None` for bytes no version of siklus writes.
pub fn decode_key(key: &[u8]) -> Option<ChangeKey> {
    let (&tag, rest) = key.split_first()?;
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_string);
    match tag {
        KEY_PROFILE => text(rest).map(ChangeKey::Profile),
        KEY_SEEN if rest.len() >= 8 => {
            let (c, h) = rest.split_at(rest.len() - 8);
            let hash = u64::from_be_bytes(h.try_into().ok()?);
            text(c).map(|c| ChangeKey::Seen(c, hash))
        }
        KEY_META => text(rest).map(ChangeKey::Meta),
        KEY_OFFSET if rest.is_empty() => Some(ChangeKey::Offset),
        _ => None,
    }
}

/// Why a changelog record could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The local store failed.
    #[error("state store: {0}")]
    State(#[from] StateError),
    /// A record that does not fit the changelog layout.
    #[error("changelog partition {partition} offset {offset}: {reason}")]
    Corrupt {
        /// Changelog partition.
        partition: u32,
        /// Changelog offset.
        offset: i64,
        /// What was wrong.
        reason: String,
    },
}

/// Rebuilds one partition of the local store from its changelog.
///
/// Records are applied in changelog order, a whole step at a time: the
/// records of a step are held until its `O` record arrives, so the store
/// never holds part of a step (a restore that stops in the middle of one,
/// at a high watermark reported below the true end, leaves it for the next
/// restore or for the input). [`Restorer::flush`] writes the complete steps
/// in one atomic batch with the changelog position they reach.
pub struct Restorer {
    store: Arc<Store>,
    config: EngineConfig,
    partition: u32,
    batch: Batch,
    /// Records of the step in progress (since the last `O` record).
    pending: Vec<(ChangeKey, Option<Vec<u8>>)>,
    /// Timer deadline of customers written in the current batch (the store
    /// does not show them until the batch is written).
    deadlines: HashMap<String, Option<i64>>,
    /// Whether the local store had nothing of the partition when the restore
    /// began (no old timers to look up).
    fresh: bool,
    /// Records applied so far (in complete steps).
    pub applied: u64,
    /// Records skipped: their step's input offsets were never committed.
    pub skipped: u64,
    /// The changelog offset after the last record of the last complete step.
    boundary: Option<i64>,
}

impl Restorer {
    /// A restorer of `partition`. `fresh` when the store holds nothing of it.
    pub fn new(store: Arc<Store>, config: EngineConfig, partition: u32, fresh: bool) -> Self {
        Restorer {
            store,
            config,
            partition,
            batch: Batch::new(),
            pending: Vec::new(),
            deadlines: HashMap::new(),
            fresh,
            applied: 0,
            skipped: 0,
            boundary: None,
        }
    }

    /// Store operations buffered since the last flush.
    pub fn buffered(&self) -> usize {
        self.batch.len()
    }

    /// Whether no step is in progress (every record read so far belongs to a
    /// complete step or was skipped).
    pub fn at_boundary(&self) -> bool {
        self.pending.is_empty()
    }

    fn stored_deadline(&self, customer: &str) -> Result<Option<i64>, RestoreError> {
        if let Some(d) = self.deadlines.get(customer) {
            return Ok(*d);
        }
        if self.fresh {
            return Ok(None);
        }
        let Some(bytes) = self.store.profile(self.partition, customer)? else {
            return Ok(None);
        };
        // An undecodable old value has no timer we could find: its entry stays.
        Ok(engine::decode_profile(&bytes)
            .ok()
            .and_then(|p| engine::deadline(&p, &self.config)))
    }

    /// Takes one record at changelog `offset`, if its step's input offset
    /// is covered by `committed` (the group's committed offset of the
    /// partition); otherwise it is skipped.
    pub fn apply(
        &mut self,
        offset: i64,
        key: &[u8],
        value: Option<&[u8]>,
        input_next: i64,
        committed: i64,
    ) -> Result<(), RestoreError> {
        if input_next > committed {
            self.skipped += 1;
            if self.pending.is_empty() {
                self.boundary = Some(offset + 1);
            }
            return Ok(());
        }
        let corrupt = |reason: String| RestoreError::Corrupt {
            partition: self.partition,
            offset,
            reason,
        };
        let key = decode_key(key).ok_or_else(|| corrupt("unknown key".into()))?;
        let end = key == ChangeKey::Offset;
        if let ChangeKey::Profile(_) = key {
            if let Some(v) = value {
                engine::decode_profile(v).map_err(corrupt)?;
            }
        }
        if end && value.is_none_or(|v| v.len() != 8) {
            return Err(corrupt("offset value is not 8 bytes".into()));
        }
        self.pending.push((key, value.map(<[u8]>::to_vec)));
        if end {
            self.materialize()?;
            self.boundary = Some(offset + 1);
        }
        Ok(())
    }

    /// Moves the completed step into the batch.
    fn materialize(&mut self) -> Result<(), RestoreError> {
        let p = self.partition;
        for (key, value) in std::mem::take(&mut self.pending) {
            self.applied += 1;
            match key {
                ChangeKey::Profile(customer) => {
                    let old = self.stored_deadline(&customer)?;
                    let new = match &value {
                        Some(v) => {
                            self.batch.put_profile(p, &customer, v);
                            engine::decode_profile(v)
                                .ok()
                                .and_then(|profile| engine::deadline(&profile, &self.config))
                        }
                        None => {
                            self.batch.delete_profile(p, &customer);
                            None
                        }
                    };
                    if old != new {
                        if let Some(d) = old {
                            self.batch.delete_timer(p, d, &customer);
                        }
                        if let Some(d) = new {
                            self.batch.put_timer(p, d, &customer);
                        }
                    }
                    self.deadlines.insert(customer, new);
                }
                ChangeKey::Seen(customer, hash) => match value {
                    Some(_) => self.batch.mark_seen(p, &customer, hash),
                    None => self.batch.delete_seen(p, &customer, hash),
                },
                ChangeKey::Meta(name) => {
                    if let Some(v) = value {
                        self.batch.put_meta(p, &name, &v);
                    }
                }
                ChangeKey::Offset => {
                    let next = value
                        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                        .map_or(-1, i64::from_be_bytes);
                    // Negative: the partition had consumed nothing yet.
                    if next >= 0 {
                        self.batch.set_offset(p, next);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the complete steps read so far, with the changelog position
    /// after the last of them. Returns that position (`None`: nothing read).
    pub fn flush(&mut self) -> Result<Option<i64>, RestoreError> {
        let Some(position) = self.boundary else {
            return Ok(None);
        };
        let mut batch = std::mem::take(&mut self.batch);
        batch.put_meta(self.partition, META_CHANGELOG_NEXT, &position.to_be_bytes());
        self.store.write(batch)?;
        self.deadlines.clear();
        // The store now holds profiles of this restore, with their timers.
        self.fresh = false;
        Ok(Some(position))
    }
}

/// The changelog position the local store reflects for a partition (0 when
/// it never wrote or restored one).
pub fn stored_position(store: &Store, partition: u32) -> Result<i64, StateError> {
    Ok(store
        .meta(partition, META_CHANGELOG_NEXT)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, i64::from_be_bytes))
}

/// Reads [`INPUT_OFFSET_HEADER`]'s value.
pub fn parse_input_next(value: Option<&[u8]>) -> Option<i64> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
