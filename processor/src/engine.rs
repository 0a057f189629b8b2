//! The partition engine: drives the pure fold and the partition aggregator
//! over the RocksDB store, one input partition at a time, in input order.
//!
//! It is shared by every driver (the live Kafka runtime, file and topic
//! replays, the demo), so they all produce the same outputs for the same
//! input. The engine does no network I/O: the driver hands it records,
//! sends what it returns, and calls [`Engine::commit`] once the outputs are
//! acknowledged. A commit writes one RocksDB WriteBatch holding the state
//! changes and the next input offset of every partition touched, so state
//! and offsets always agree, whatever point a crash hits.
//!
//! Timers: each profile has at most one inactivity deadline, indexed by
//! deadline in the store. When a partition's watermark passes a deadline the
//! timer fires; before an event at time t is applied, the customer's own
//! deadlines earlier than t fire first (in the fold). Timers and window
//! closes are checked after every record, so the outputs are a function of
//! the input order alone, not of how the input was batched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use siklus_state::{Batch, StateError, Store};
use xxhash_rust::xxh3::xxh3_64;

use crate::aggregate::{Partial, PartitionAggregator};
use crate::changelog::{self, ChangeRecord};
use crate::codec::DecodeError;
use crate::fold::{self, FoldOutput};
use crate::model::{EventType, InteractionEvent, Profile, StageTransition};
use crate::rules::Rules;

/// Event-id hashes kept in the profile value itself. Older ones move to the
/// seen table, so a customer with at most this many events costs no seen-table
/// lookups or writes at all.
pub const RECENT_IDS: usize = 16;
/// Longest customer or event id accepted (bytes); longer ones are dead letters.
pub const MAX_ID_BYTES: usize = 1024;
/// Customers whose timers a bounded input's end fires per step: each step
/// holds their profiles and transitions in memory until its commit.
pub const TIMER_CHUNK: usize = 10_000;
/// Default of [`EngineConfig::cache_bytes`] (128 MiB).
pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;
/// Partition metadata: clock and aggregator.
const META_CLOCK: &str = "clock";
const META_AGG: &str = "aggregator";

/// Errors of the engine. Input problems are never errors: they become dead letters.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state store failed.
    #[error("state store: {0}")]
    State(#[from] StateError),
    /// A stored value could not be decoded.
    #[error("corrupt state for partition {partition}: {reason}")]
    Corrupt {
        /// Partition of the value.
        partition: u32,
        /// What was wrong.
        reason: String,
    },
    /// A record for a partition that is not assigned.
    #[error("partition {0} is not assigned")]
    NotAssigned(u32),
}

/// Engine parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// The lifecycle rules.
    pub rules: Rules,
    /// Watermark = max event time seen − this (ms).
    pub allowed_lateness_ms: i64,
    /// Whether the watermark follows the input record by record (live, and
    /// replays with `--watermark live`). When false (bounded replays),
    /// windows and timers wait for the end of the input.
    pub live_watermark: bool,
    /// An event more than this far ahead of its partition's confirmed event
    /// time does not move the partition's clock until a later record
    /// confirms it (ms; default 7 days; see [`Clock`]).
    pub max_time_jump_ms: i64,
    /// An event more than this far ahead of the wall clock (given by the
    /// driver with [`Engine::set_wall_clock`]) is a dead letter of kind
    /// `future` (ms; default one day).
    pub max_future_skew_ms: i64,
    /// Bytes of profiles kept in memory between commits, over all
    /// partitions (estimated; a cache of the store: a hit saves a RocksDB
    /// read and a decode). The least recently used profiles beyond it are
    /// dropped at each commit; profiles changed by the step in progress
    /// stay until its commit (see [`Engine::cache_full`]).
    pub cache_bytes: usize,
    /// Whether transitions carry the profile snapshot (`outputs.snapshot`);
    /// without it their `profile` is empty.
    pub snapshots: bool,
    /// Event-time expiry: a churned profile whose last activity is older
    /// than this (ms) when the watermark passes is deleted, as if erased
    /// (`None`: profiles are kept for ever).
    pub expire_churned_after_ms: Option<i64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rules: Rules::default(),
            allowed_lateness_ms: 3_600_000,
            live_watermark: true,
            max_time_jump_ms: 7 * crate::time::DAY_MS,
            max_future_skew_ms: crate::time::DAY_MS,
            cache_bytes: DEFAULT_CACHE_BYTES,
            snapshots: true,
            expire_churned_after_ms: None,
        }
    }
}

/// A record that could not be processed, for the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Input partition.
    pub partition: u32,
    /// Input offset.
    pub offset: i64,
    /// Short stable label of the error (for metrics and headers).
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
    /// The record's own key, value and headers, taken when the dead letter
    /// was created, so no later stage has to pair it with its bytes.
    pub record: RawInput,
}

/// The original bytes of an input record: what its dead letter carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawInput {
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value (for a file replay, the input line).
    pub payload: Option<Vec<u8>>,
    /// The record headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawInput {
    /// A record that is only a value (a file line).
    pub fn value(payload: Vec<u8>) -> RawInput {
        RawInput {
            key: None,
            payload: Some(payload),
            headers: Vec::new(),
        }
    }
}

/// What processing produced, to be sent before the next commit.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Stage transitions, in order.
    pub transitions: Vec<StageTransition>,
    /// Window partials and progress for the merge stage.
    pub partials: Vec<Partial>,
    /// Dead letters, each with its own record.
    pub dead_letters: Vec<DeadLetter>,
}

impl Outputs {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.transitions.is_empty() && self.partials.is_empty() && self.dead_letters.is_empty()
    }

    /// Empties the lists.
    pub fn clear(&mut self) {
        self.transitions.clear();
        self.partials.clear();
        self.dead_letters.clear();
    }
}

/// Counters of the engine since start (monotonic; exported as metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Events applied to profiles.
    pub events: u64,
    /// Records skipped because their offset was already applied (replayed after a crash).
    pub skipped_offsets: u64,
    /// Events ignored as duplicates of an earlier event id of the same customer.
    pub duplicates: u64,
    /// Records sent to the dead-letter output.
    pub dead_letters: u64,
    /// Events older than their partition's watermark.
    pub late_events: u64,
    /// Events of an unknown type.
    pub unknown_types: u64,
    /// Customers erased.
    pub erasures: u64,
    /// Churned profiles deleted by the event-time expiry.
    pub expired: u64,
    /// Transitions emitted.
    pub transitions: u64,
    /// Timers fired by the watermark.
    pub timers_fired: u64,
}

struct PartitionState {
    next_offset: Option<i64>,
    clock: Clock,
    clock_dirty: bool,
    aggregator: PartitionAggregator,
    /// Profiles in memory: this step's and a bounded cache of earlier ones.
    cache: CacheMap,
    /// Sum of the `bytes` of `cache`.
    cache_bytes: usize,
    /// The store held no profile of the partition when it was assigned,
    /// and no profile has left the cache since: a customer missing from the
    /// cache is then missing from the store too, and is not read.
    fresh: bool,
    /// Customers of `cache` touched since the last commit.
    dirty: Vec<String>,
    /// Whether the next offset moved since the last commit.
    offset_dirty: bool,
    /// Deadlines of the profiles in `cache` (the truth for those customers;
    /// the store's index may be stale for them until the commit).
    pending_timers: BTreeSet<(i64, String)>,
    /// `pending_timers` is out of date and is rebuilt from the cache before
    /// timers fire. A bounded replay fires timers only when it is told to
    /// (at its end), so it does not keep the set up to date event by event.
    pending_stale: bool,
    /// No deadline in the store index is earlier than this.
    store_timer_floor: Option<i64>,
    /// A watermark advance whose timers are not all fired yet (more than
    /// one chunk was due): the clock keeps the previous watermark until
    /// they are, and the windows close then.
    timers_due: Option<TimersDue>,
    /// How far the store's timer index has been read for the firing of
    /// timers due before some instant (see [`ScanCursor`]).
    scan_cursor: Option<ScanCursor>,
}

/// Where the next scan of the store's timer index for the same `before`
/// starts: every entry up to `key` was read, and its customer is in the
/// cache with its true deadline in `pending_timers` (or it fired). Firing a
/// bounded input's end in chunks then reads the index once, not once per
/// chunk over the deleted entries of the chunks before. A commit that
/// writes a timer at or below `key`, or an eviction of a customer due
/// before `before`, drops the cursor.
#[derive(Debug, Clone)]
struct ScanCursor {
    before: i64,
    key: (i64, String),
}

/// A watermark advance in progress (see [`Engine::timers_due`]).
#[derive(Debug, Clone, Copy)]
struct TimersDue {
    /// The watermark being advanced to.
    watermark: i64,
    /// The watermark before the advance.
    previous: Option<i64>,
}

/// Drives the fold over the store for the assigned partitions.
pub struct Engine {
    store: Arc<Store>,
    config: EngineConfig,
    partitions: BTreeMap<u32, PartitionState>,
    scratch: FoldOutput,
    /// Counters per input partition since start (kept after a revoke).
    counters: BTreeMap<u32, Counters>,
    /// Commits so far (the cache's clock).
    steps: u64,
    /// The wall clock as the driver last gave it (ms since the epoch), for
    /// the check of events from the future; `None`: no check. The engine
    /// never reads the clock itself.
    wall_clock: Option<i64>,
    /// Customers whose timers one call fires at most (see
    /// [`Engine::timers_due`]).
    timer_chunk: usize,
}

impl Engine {
    /// Gives the engine the wall clock (ms since the epoch): events more than
    /// `max_future_skew_ms` ahead of it become dead letters. Drivers call it
    /// once per step; `None` turns the check off.
    pub fn set_wall_clock(&mut self, now_ms: Option<i64>) {
        self.wall_clock = now_ms;
    }

    /// An engine over an open store.
    pub fn new(store: Arc<Store>, config: EngineConfig) -> Self {
        let scratch = FoldOutput {
            skip_snapshots: !config.snapshots,
            ..FoldOutput::default()
        };
        Engine {
            store,
            config,
            partitions: BTreeMap::new(),
            scratch,
            counters: BTreeMap::new(),
            steps: 0,
            wall_clock: None,
            timer_chunk: TIMER_CHUNK,
        }
    }

    /// Sets how many customers' timers one call fires at most (default
    /// [`TIMER_CHUNK`]; at least 1).
    pub fn set_timer_chunk(&mut self, customers: usize) {
        self.timer_chunk = customers.max(1);
    }

    /// Whether a watermark advance left timers due that the last call did
    /// not fire (more than a chunk of customers). The live driver commits
    /// the step and calls [`Engine::fire_due_timers`] until this is false,
    /// so one jump of time costs bounded memory per step. Other calls on
    /// the partition finish the advance first.
    pub fn timers_due(&self) -> bool {
        self.partitions.values().any(|s| s.timers_due.is_some())
    }

    /// Fires the next chunk of the due timers of every partition with an
    /// advance in progress, and finishes the advances whose timers are all
    /// fired. Returns [`Engine::timers_due`].
    pub fn fire_due_timers(&mut self, out: &mut Outputs) -> Result<bool, EngineError> {
        let due: Vec<u32> = self
            .partitions
            .iter()
            .filter(|(_, s)| s.timers_due.is_some())
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.fire_due_chunk(p, out)?;
        }
        Ok(self.timers_due())
    }

    /// One chunk of a partition's advance in progress.
    fn fire_due_chunk(&mut self, partition: u32, out: &mut Outputs) -> Result<(), EngineError> {
        let Some(due) = self.state_mut(partition)?.timers_due.take() else {
            return Ok(());
        };
        let chunk = self.timer_chunk;
        if self.fire_timers(partition, due.watermark, chunk, out)? {
            self.state_mut(partition)?.timers_due = Some(due);
            return Ok(());
        }
        self.close_to(partition, due.watermark, due.previous, out)
    }

    /// Finishes a partition's advance in progress, however many timers are
    /// left (before any other work on the partition).
    fn finish_due(&mut self, partition: u32, out: &mut Outputs) -> Result<(), EngineError> {
        while self
            .partitions
            .get(&partition)
            .is_some_and(|s| s.timers_due.is_some())
        {
            self.fire_due_chunk(partition, out)?;
        }
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters since start, over every partition.
    pub fn counters(&self) -> Counters {
        let mut t = Counters::default();
        for c in self.counters.values() {
            t.events += c.events;
            t.skipped_offsets += c.skipped_offsets;
            t.duplicates += c.duplicates;
            t.dead_letters += c.dead_letters;
            t.late_events += c.late_events;
            t.unknown_types += c.unknown_types;
            t.erasures += c.erasures;
            t.expired += c.expired;
            t.transitions += c.transitions;
            t.timers_fired += c.timers_fired;
        }
        t
    }

    /// Counters since start, per input partition (including partitions
    /// revoked since).
    pub fn partition_counters(&self) -> &BTreeMap<u32, Counters> {
        &self.counters
    }

    /// Takes ownership of a partition: loads its offset, clock and aggregator.
    pub fn assign(&mut self, partition: u32) -> Result<(), EngineError> {
        if self.partitions.contains_key(&partition) {
            return Ok(());
        }
        let next_offset = self.store.offset(partition)?;
        let clock = match self.store.meta(partition, META_CLOCK)? {
            Some(b) => Clock::decode(&b).map_err(|e| EngineError::Corrupt {
                partition,
                reason: format!("clock: {e}"),
            })?,
            None => Clock::default(),
        };
        let aggregator = match self.store.meta(partition, META_AGG)? {
            Some(b) => crate::persist::decode(&b).map_err(|e| EngineError::Corrupt {
                partition,
                reason: format!("aggregator: {e}"),
            })?,
            None => PartitionAggregator::new(partition),
        };
        let floor = self.store_timer_floor(partition)?;
        let fresh = !self.store.has_profiles(partition)?;
        self.partitions.insert(
            partition,
            PartitionState {
                next_offset,
                clock,
                clock_dirty: false,
                aggregator,
                cache: CacheMap::default(),
                cache_bytes: 0,
                fresh,
                dirty: Vec::new(),
                offset_dirty: false,
                pending_timers: BTreeSet::new(),
                pending_stale: false,
                store_timer_floor: floor,
                timers_due: None,
                scan_cursor: None,
            },
        );
        Ok(())
    }

    /// Gives a partition up. Uncommitted work of the partition is dropped:
    /// call [`Engine::commit`] first to keep it.
    pub fn revoke(&mut self, partition: u32) {
        self.partitions.remove(&partition);
    }

    /// The partitions assigned to this engine.
    pub fn assigned(&self) -> Vec<u32> {
        self.partitions.keys().copied().collect()
    }

    /// The next input offset to read for a partition (from the store), if any was committed.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.next_offset)
    }

    /// The event-time clock of a partition.
    pub fn clock(&self, partition: u32) -> Option<Clock> {
        self.partitions.get(&partition).map(|p| p.clock)
    }

    /// Whether a record at this offset was already applied (a re-delivery after a crash).
    pub fn already_applied(&self, partition: u32, offset: i64) -> bool {
        self.partitions
            .get(&partition)
            .and_then(|p| p.next_offset)
            .is_some_and(|next| offset < next)
    }

    /// Counts and reports a record at an offset already applied (a
    /// re-delivery after a crash); such records must not be processed again.
    pub fn skip_if_applied(&mut self, partition: u32, offset: i64) -> bool {
        let applied = self.already_applied(partition, offset);
        if applied {
            self.counters.entry(partition).or_default().skipped_offsets += 1;
        }
        applied
    }

    /// [`Engine::process_raw`] for a record whose bytes are not at hand
    /// (tests): a dead letter then carries an empty record.
    #[cfg(test)]
    pub fn process(
        &mut self,
        partition: u32,
        offset: i64,
        record: Result<InteractionEvent, DecodeError>,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        self.process_raw(partition, offset, record, |_| RawInput::default(), out)
    }

    /// Processes one input record: a decoded event or the reason it could not
    /// be decoded. Records at offsets already applied are skipped.
    ///
    /// `raw` gives the record's original bytes (it is passed the decoded
    /// event, when there is one); it is called only when the record becomes
    /// a dead letter, whichever check rejected it, and the dead letter keeps
    /// what it returns.
    pub fn process_raw(
        &mut self,
        partition: u32,
        offset: i64,
        record: Result<InteractionEvent, DecodeError>,
        raw: impl FnOnce(Option<&InteractionEvent>) -> RawInput,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        if self.skip_if_applied(partition, offset) {
            return Ok(());
        }
        self.finish_due(partition, out)?;
        let state = self
            .partitions
            .get_mut(&partition)
            .ok_or(EngineError::NotAssigned(partition))?;
        state.next_offset = Some(offset + 1);
        state.offset_dirty = true;
        let rejection = match &record {
            Err(_) => None,
            Ok(e) => self.validate(e),
        };
        match (record, rejection) {
            (Err(e), _) => {
                self.dead_letter(partition, offset, &e, raw(None), out);
                Ok(())
            }
            (Ok(event), Some(e)) => {
                self.dead_letter(partition, offset, &e, raw(Some(&event)), out);
                Ok(())
            }
            (Ok(event), None) => {
                if let Some(e) = self.apply(partition, &event, out)? {
                    self.dead_letter(partition, offset, &e, raw(Some(&event)), out);
                    return Ok(());
                }
                if self.config.live_watermark {
                    self.observe_time(partition, event.occurred_at, out)?;
                } else {
                    self.note_time(partition, event.occurred_at);
                }
                Ok(())
            }
        }
    }

    /// Checks a decoded event against what the engine knows (id lengths,
    /// the wall clock); `Some` is why it is a dead letter.
    fn validate(&self, e: &InteractionEvent) -> Option<DecodeError> {
        if e.customer_id.len() > MAX_ID_BYTES || e.event_id.len() > MAX_ID_BYTES {
            return Some(DecodeError::InvalidField {
                field: "customer_id",
                reason: format!("customer_id and event_id must be at most {MAX_ID_BYTES} bytes"),
            });
        }
        let skew = self.config.max_future_skew_ms;
        if let Some(now) = self.wall_clock {
            if e.occurred_at.saturating_sub(now) > skew {
                return Some(DecodeError::Time {
                    kind: "future",
                    reason: format!(
                        "occurred_at {} is more than {} ms ahead of the wall clock ({})",
                        crate::time::format_rfc3339(e.occurred_at),
                        skew,
                        crate::time::format_rfc3339(now)
                    ),
                });
            }
        }
        None
    }

    /// The checks that need the customer's profile (loaded): an event far
    /// older than the customer's own timeline would emit transitions dated
    /// in the customer's past (a `reactivated` dated years back), and money
    /// that would overflow the customer's revenue is not wrapped.
    fn reject_for_customer(
        &self,
        partition: u32,
        customer: &str,
        event: &InteractionEvent,
    ) -> Option<DecodeError> {
        let profile = self
            .partitions
            .get(&partition)?
            .cache
            .get(customer)?
            .profile
            .as_ref()?;
        let lateness = self.config.allowed_lateness_ms;
        if let Some(last) = profile.last_event_at {
            if event.occurred_at < last.saturating_sub(lateness) {
                return Some(DecodeError::Time {
                    kind: "too_late",
                    reason: format!(
                        "occurred_at {} is more than the allowed lateness ({} ms) before \
                         the customer's latest event ({})",
                        crate::time::format_rfc3339(event.occurred_at),
                        lateness,
                        crate::time::format_rfc3339(last)
                    ),
                });
            }
        }
        fold::check_money(profile, event)
            .err()
            .map(DecodeError::Overflow)
    }

    /// Counts a dead letter and hands it out with its own record.
    fn dead_letter(
        &mut self,
        partition: u32,
        offset: i64,
        e: &DecodeError,
        record: RawInput,
        out: &mut Outputs,
    ) {
        self.counters.entry(partition).or_default().dead_letters += 1;
        out.dead_letters.push(DeadLetter {
            partition,
            offset,
            kind: e.kind(),
            reason: e.to_string(),
            record,
        });
    }

    /// Applies an event to its customer. `Some` is why the event was
    /// rejected instead, before anything changed: it is older than the
    /// customer's timeline allows, or it would overflow a sum of money.
    fn apply(
        &mut self,
        partition: u32,
        event: &InteractionEvent,
        out: &mut Outputs,
    ) -> Result<Option<DecodeError>, EngineError> {
        let hash = xxh3_64(event.event_id.as_bytes());
        let customer = event.customer_id.as_str();
        self.load(partition, customer)?;
        if self.is_duplicate(partition, customer, hash)? {
            self.counters.entry(partition).or_default().duplicates += 1;
            return Ok(None);
        }
        if let Some(e) = self.reject_for_customer(partition, customer, event) {
            return Ok(Some(e));
        }
        let ty = EventType::parse(&event.event_type);
        let lateness_wm = self
            .partitions
            .get(&partition)
            .and_then(|p| p.clock.watermark);
        if lateness_wm.is_some_and(|wm| event.occurred_at < wm) {
            self.counters.entry(partition).or_default().late_events += 1;
        }
        if ty == EventType::CustomerErased {
            let corrections = self.erase(partition, customer, event.occurred_at)?;
            self.counters.entry(partition).or_default().erasures += 1;
            let state = self.state_mut(partition)?;
            state.aggregator.record_event(event.occurred_at);
            state.aggregator.record(&[], &corrections);
            return Ok(None);
        }
        if ty == EventType::Unknown {
            self.counters.entry(partition).or_default().unknown_types += 1;
        }
        let config = &self.config;
        let rules = &config.rules;
        let scratch = &mut self.scratch;
        scratch.clear();
        let state = self
            .partitions
            .get_mut(&partition)
            .ok_or(EngineError::NotAssigned(partition))?;
        let Some(entry) = state.cache.get_mut(customer) else {
            return Err(EngineError::NotAssigned(partition));
        };
        if !entry.in_step {
            entry.in_step = true;
            state.dirty.push(customer.to_string());
        }
        let profile = entry.profile.get_or_insert_with(|| Profile::new(customer));
        let before = deadline(profile, config);
        fold::apply_event(profile, event, rules, scratch);
        let after = deadline(profile, config);
        entry.changed = true;
        if entry.seen.recent.len() >= RECENT_IDS {
            let oldest = entry.seen.recent.remove(0);
            entry.spill.push(oldest);
            entry.seen.spilled = true;
        }
        entry.seen.recent.push(hash);
        if before != after && !state.pending_stale {
            if !config.live_watermark {
                // Nothing fires before the driver advances the watermark.
                state.pending_stale = true;
            } else {
                if let Some(d) = before {
                    state.pending_timers.remove(&(d, customer.to_string()));
                }
                if let Some(d) = after {
                    state.pending_timers.insert((d, customer.to_string()));
                }
            }
        }
        state.aggregator.record_event(event.occurred_at);
        state
            .aggregator
            .record(&scratch.transitions, &scratch.signals);
        let c = self.counters.entry(partition).or_default();
        c.events += 1;
        c.transitions += scratch.transitions.len() as u64;
        if let Some(entry) = state.cache.get_mut(customer) {
            remember(&mut entry.transitions, &scratch.transitions)
                .map_err(|reason| EngineError::Corrupt { partition, reason })?;
        }
        out.transitions.append(&mut scratch.transitions);
        Ok(None)
    }

    fn state_mut(&mut self, partition: u32) -> Result<&mut PartitionState, EngineError> {
        self.partitions
            .get_mut(&partition)
            .ok_or(EngineError::NotAssigned(partition))
    }

    /// Whether a loaded customer already saw the event id with `hash`: in
    /// the recent ids of the profile, among the ids spilled in this step, or
    /// (only when older ids spilled) in the store's seen table.
    fn is_duplicate(&self, partition: u32, customer: &str, hash: u64) -> Result<bool, EngineError> {
        let Some(state) = self.partitions.get(&partition) else {
            return Err(EngineError::NotAssigned(partition));
        };
        let Some(entry) = state.cache.get(customer) else {
            return Err(EngineError::NotAssigned(partition));
        };
        if entry.seen.recent.contains(&hash) || entry.spill.contains(&hash) {
            return Ok(true);
        }
        if !entry.seen.spilled || entry.forget_seen {
            // Nothing older, or erased in this step (the store's entries are
            // about to be forgotten, and those spilled since are in `spill`).
            return Ok(false);
        }
        Ok(self.store.seen(partition, customer, hash)?)
    }

    /// Brings a customer's profile into memory (from the store if it is not cached).
    fn load(&mut self, partition: u32, customer: &str) -> Result<(), EngineError> {
        let state = self
            .partitions
            .get_mut(&partition)
            .ok_or(EngineError::NotAssigned(partition))?;
        let step = self.steps;
        if let Some(entry) = state.cache.get_mut(customer) {
            entry.used = step;
            return Ok(());
        }
        let stored = if state.fresh {
            None
        } else {
            self.store.profile(partition, customer)?
        };
        let (profile, seen, transitions) = match stored {
            Some(bytes) => {
                let stored = decode_stored_profile(&bytes)
                    .map_err(|reason| EngineError::Corrupt { partition, reason })?;
                let kept = stored
                    .transitions
                    .iter()
                    .map(Kept::from_recent)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| EngineError::Corrupt { partition, reason })?;
                (Some(stored.profile), stored.seen, kept)
            }
            None => (None, SeenIds::default(), Vec::new()),
        };
        let stored_deadline = profile.as_ref().and_then(|p| deadline(p, &self.config));
        if let Some(d) = stored_deadline.filter(|_| !state.pending_stale) {
            state.pending_timers.insert((d, customer.to_string()));
        }
        let mut entry = Entry {
            stored: profile.is_some(),
            profile,
            seen,
            spill: Vec::new(),
            transitions,
            stored_deadline,
            changed: false,
            forget_seen: false,
            in_step: false,
            used: step,
            bytes: 0,
        };
        entry.bytes = entry_bytes(customer, &entry);
        state.cache_bytes += entry.bytes;
        state.cache.insert(customer.to_string(), entry);
        Ok(())
    }

    /// Deletes a customer (erased or expired): profile, timer and dedup ids.
    /// Returns the gauge corrections for the aggregates (the customer leaves
    /// the live, paying and revenue totals).
    fn erase(
        &mut self,
        partition: u32,
        customer: &str,
        at: i64,
    ) -> Result<Vec<crate::model::TimedSignal>, EngineError> {
        use crate::model::{Activity, Signal, TimedSignal};
        self.load(partition, customer)?;
        let config = self.config.clone();
        let state = self.state_mut(partition)?;
        let mut corrections = Vec::new();
        if let Some(p) = state.cache.get(customer).and_then(|e| e.profile.as_ref()) {
            let mut push = |signal| corrections.push(TimedSignal { at, signal });
            if matches!(p.activity, Some(Activity::Active) | Some(Activity::AtRisk)) {
                push(Signal::LiveDelta(-1));
            }
            if p.order_count > 0 {
                push(Signal::PayingDelta(-1));
            }
            for (currency, v) in &p.net_revenue {
                if *v != 0 {
                    push(Signal::RevenueDelta {
                        amount_minor: -v,
                        currency: currency.clone(),
                    });
                }
            }
        }
        if let Some(entry) = state.cache.get_mut(customer) {
            if !entry.in_step {
                entry.in_step = true;
                state.dirty.push(customer.to_string());
            }
            if let Some(d) = entry.profile.as_ref().and_then(|p| deadline(p, &config)) {
                if !state.pending_stale {
                    state.pending_timers.remove(&(d, customer.to_string()));
                }
            }
            entry.profile = None;
            entry.changed = true;
            entry.forget_seen = true;
            entry.seen = SeenIds::default();
            entry.spill.clear();
            entry.transitions.clear();
        }
        Ok(corrections)
    }

    /// Records event time without moving the watermark (bounded replays);
    /// a far jump is held until confirmed (see [`Clock::observe`]).
    fn note_time(&mut self, partition: u32, t: i64) {
        let max_jump = self.config.max_time_jump_ms;
        if let Some(state) = self.partitions.get_mut(&partition) {
            if state.clock.observe(t, max_jump) {
                state.clock_dirty = true;
            }
        }
    }

    /// Records event time and advances the watermark (live policy).
    fn observe_time(
        &mut self,
        partition: u32,
        t: i64,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        self.note_time(partition, t);
        let lateness = self.config.allowed_lateness_ms;
        let max = self
            .partitions
            .get(&partition)
            .and_then(|s| s.clock.max_event_time);
        if let Some(max) = max {
            self.advance_in_chunks(partition, max.saturating_sub(lateness), out)?;
        }
        Ok(())
    }

    /// Moves a partition's watermark forward to `wm` (never backwards): fires
    /// the timers due before it, then closes the windows that end by it.
    /// Drivers call it directly for an idle partition and at the end of a
    /// bounded input. Every due timer fires in this call.
    pub fn advance_watermark(
        &mut self,
        partition: u32,
        wm: i64,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        self.advance_in_chunks(partition, wm, out)?;
        self.finish_due(partition, out)
    }

    /// [`Engine::advance_watermark`], firing at most one chunk of customers'
    /// timers: when more are due, the advance stays in progress
    /// ([`Engine::timers_due`]), and the watermark moves and the windows
    /// close once they have all fired. For drivers that commit and call
    /// [`Engine::fire_due_timers`] until none are due.
    pub fn advance_in_chunks(
        &mut self,
        partition: u32,
        wm: i64,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let state = self.state_mut(partition)?;
        let due = match state.timers_due {
            // An advance in progress goes further.
            Some(d) if wm <= d.watermark => return Ok(()),
            Some(d) => TimersDue {
                watermark: wm,
                previous: d.previous,
            },
            None if state.clock.watermark.is_some_and(|cur| wm <= cur) => return Ok(()),
            None => TimersDue {
                watermark: wm,
                previous: state.clock.watermark,
            },
        };
        state.timers_due = Some(due);
        self.fire_due_chunk(partition, out)
    }

    /// Sets the watermark of a partition whose due timers have all fired,
    /// and closes the windows that end by it.
    fn close_to(
        &mut self,
        partition: u32,
        wm: i64,
        previous: Option<i64>,
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let state = self.state_mut(partition)?;
        state.clock.watermark = Some(wm);
        state.clock_dirty = true;
        let before = out.partials.len();
        state.aggregator.advance(wm, &mut out.partials);
        // Progress markers matter to the merge stage only when a window can
        // close: keep one when windows were emitted or a day boundary was
        // crossed, not one per record.
        let emitted_window = out.partials[before..]
            .iter()
            .any(|p| matches!(p, Partial::Window { .. }));
        let crossed_day = previous.is_none_or(|p| {
            crate::time::Granularity::Day.start(p) != crate::time::Granularity::Day.start(wm)
        });
        if !emitted_window && !crossed_day {
            out.partials.truncate(before);
        }
        Ok(())
    }

    /// End of a bounded input: emits every window the partition still holds
    /// (those that end after the last watermark too), for `Merger::finish`.
    pub fn flush_windows(&mut self, partition: u32, out: &mut Outputs) -> Result<(), EngineError> {
        let state = self.state_mut(partition)?;
        state.aggregator.flush(&mut out.partials);
        Ok(())
    }

    /// Fires the timers of a partition due before `before`, for at most
    /// `limit` customers. Returns whether more may be due (call again after a
    /// commit to keep memory bounded).
    pub fn fire_timers(
        &mut self,
        partition: u32,
        before: i64,
        limit: usize,
        out: &mut Outputs,
    ) -> Result<bool, EngineError> {
        {
            let config = &self.config;
            let state = self
                .partitions
                .get_mut(&partition)
                .ok_or(EngineError::NotAssigned(partition))?;
            if state.pending_stale {
                state.pending_timers = state
                    .cache
                    .iter()
                    .filter_map(|(c, e)| {
                        let d = deadline(e.profile.as_ref()?, config)?;
                        Some((d, c.clone()))
                    })
                    .collect();
                state.pending_stale = false;
            }
        }
        let floor = self
            .partitions
            .get(&partition)
            .and_then(|s| s.store_timer_floor);
        let mut more = false;
        let fresh = self.partitions.get(&partition).is_some_and(|s| s.fresh);
        if let Some(floor) = floor.filter(|f| *f < before && !fresh) {
            // The store index may hold due timers of customers that are not
            // in memory (a fresh partition has every customer in memory).
            // Those are loaded, which puts their true deadline in the
            // pending set; the entries of customers in memory are stale.
            more = self.load_due_from_store(partition, floor, before, limit)?;
        }
        // The pending set now holds the truth for every customer that may
        // be due: the first `limit` fire, and more are due if it has more.
        let state = self.state_mut(partition)?;
        let mut due: BTreeSet<(i64, String)> = state
            .pending_timers
            .range(..(before, String::new()))
            .take(limit.saturating_add(1))
            .cloned()
            .collect();
        if due.len() > limit {
            more = true;
            due.pop_last();
        }
        let mut fired = 0usize;
        let mut customers_done: BTreeSet<String> = BTreeSet::new();
        for (_, customer) in due {
            if fired >= limit {
                more = true;
                break;
            }
            if !customers_done.insert(customer.clone()) {
                continue;
            }
            self.load(partition, &customer)?;
            let config = &self.config;
            let rules = &config.rules;
            let scratch = &mut self.scratch;
            scratch.clear();
            let Some(state) = self.partitions.get_mut(&partition) else {
                return Err(EngineError::NotAssigned(partition));
            };
            let Some(entry) = state.cache.get_mut(&customer) else {
                continue;
            };
            let Some(profile) = entry.profile.as_mut() else {
                continue;
            };
            let before_deadline = deadline(profile, config);
            fold::advance_to(profile, before, rules, scratch);
            let after_deadline = deadline(profile, config);
            let expires_at = expiry_deadline(profile, config).filter(|d| *d < before);
            if before_deadline != after_deadline || !scratch.transitions.is_empty() {
                entry.changed = true;
                if !entry.in_step {
                    entry.in_step = true;
                    state.dirty.push(customer.clone());
                }
            }
            if before_deadline != after_deadline {
                if let Some(d) = before_deadline {
                    state.pending_timers.remove(&(d, customer.clone()));
                }
                if let Some(d) = after_deadline {
                    state.pending_timers.insert((d, customer.clone()));
                }
            }
            if !scratch.transitions.is_empty() {
                fired += 1;
                state
                    .aggregator
                    .record(&scratch.transitions, &scratch.signals);
                let c = self.counters.entry(partition).or_default();
                c.timers_fired += 1;
                c.transitions += scratch.transitions.len() as u64;
                remember(&mut entry.transitions, &scratch.transitions)
                    .map_err(|reason| EngineError::Corrupt { partition, reason })?;
                out.transitions.append(&mut scratch.transitions);
            }
            if let Some(at) = expires_at {
                // Churned for longer than the retention period: the profile
                // goes, through the changelog too, as if erased.
                let corrections = self.erase(partition, &customer, at)?;
                let state = self.state_mut(partition)?;
                state.aggregator.record(&[], &corrections);
                self.counters.entry(partition).or_default().expired += 1;
                fired += 1;
            }
        }
        if !more && floor.is_some_and(|f| f < before) {
            // Everything before `before` has fired: the store holds nothing due
            // earlier than that any more (after this step's commit). The next
            // scan starts at the store's next deadline, so watermark moves that
            // reach no stored deadline cost no scan at all (the commit lowers
            // the floor again for deadlines it writes).
            let next = self.store.first_timer_from(partition, before)?;
            let state = self.state_mut(partition)?;
            state.store_timer_floor = next;
        }
        Ok(more)
    }

    /// Reads the store's timer index of a partition for timers due before
    /// `before`, from where the last read for the same `before` stopped
    /// (else from `floor`), and loads the customers that are not in memory,
    /// at most `limit` of them. Returns whether it stopped at the limit.
    fn load_due_from_store(
        &mut self,
        partition: u32,
        floor: i64,
        before: i64,
        limit: usize,
    ) -> Result<bool, EngineError> {
        let state = self
            .partitions
            .get_mut(&partition)
            .ok_or(EngineError::NotAssigned(partition))?;
        let read_to = state
            .scan_cursor
            .take()
            .filter(|c| c.before == before)
            .map(|c| c.key);
        let start = match &read_to {
            // Just after the last key read.
            Some((d, c)) => (*d, format!("{c}\0")),
            None => (floor, String::new()),
        };
        let mut found: Vec<String> = Vec::new();
        let mut last: Option<(i64, String)> = None;
        let mut full = false;
        let cache = &state.cache;
        self.store
            .scan_timers(partition, (start.0, &start.1), before, |d, c| {
                if found.len() >= limit {
                    full = true;
                    return false;
                }
                last = Some((d, c.to_string()));
                if !cache.contains_key(c) {
                    found.push(c.to_string());
                }
                true
            })?;
        for customer in &found {
            self.load(partition, customer)?;
        }
        let state = self.state_mut(partition)?;
        state.scan_cursor = last.or(read_to).map(|key| ScanCursor { before, key });
        Ok(full)
    }

    fn store_timer_floor(&self, partition: u32) -> Result<Option<i64>, EngineError> {
        Ok(self
            .store
            .due_timers(partition, i64::MAX, 1)?
            .first()
            .map(|(d, _)| *d))
    }

    /// Number of profiles changed by the current step (plus one per
    /// partition whose input offset moved): zero when a commit has nothing
    /// to write.
    pub fn step_size(&self) -> usize {
        self.partitions
            .values()
            .map(|s| s.dirty.len() + usize::from(s.offset_dirty))
            .sum()
    }

    /// Number of profiles held in memory (this step's and the cache).
    pub fn cached_profiles(&self) -> usize {
        self.partitions.values().map(|s| s.cache.len()).sum()
    }

    /// Estimated bytes of the profiles held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.partitions.values().map(|s| s.cache_bytes).sum()
    }

    /// Whether the profiles in memory exceed [`EngineConfig::cache_bytes`]:
    /// a driver that commits on its own schedule (a file replay, whose steps
    /// are long) commits now, so that the commit can drop profiles.
    pub fn cache_full(&self) -> bool {
        self.cached_bytes() > self.config.cache_bytes
    }

    /// Writes everything processed since the last commit, with the next input
    /// offsets, in one atomic batch. Call it only after the outputs of the
    /// step were acknowledged.
    pub fn commit(&mut self) -> Result<(), EngineError> {
        self.commit_with(Batch::new())
    }

    /// Like [`Engine::commit`], with more writes of the driver's in the same
    /// atomic batch (a replay's output positions and merge state).
    pub fn commit_with(&mut self, batch: Batch) -> Result<(), EngineError> {
        let batch = self.prepare_commit(batch, None)?;
        self.write_commit(batch)
    }

    /// The first half of a commit: adds everything processed since the last
    /// commit to `batch` and, when `changelog` is given, lists the same
    /// changes as changelog records (in step order, each partition's ending
    /// with its input offset record). The engine then holds the step as
    /// committed: write the returned batch with [`Engine::write_commit`] once
    /// the outputs and the changelog records are acknowledged, or call
    /// [`Engine::rollback`] if they are not.
    pub fn prepare_commit(
        &mut self,
        mut batch: Batch,
        mut changelog: Option<&mut Vec<ChangeRecord>>,
    ) -> Result<Batch, EngineError> {
        let config = self.config.clone();
        let per_partition = self.config.cache_bytes / self.partitions.len().max(1);
        let store = self.store.clone();
        let logging = changelog.is_some();
        for (&partition, state) in self.partitions.iter_mut() {
            let touched = !state.dirty.is_empty() || state.offset_dirty || state.clock_dirty;
            let input_next = state.next_offset.unwrap_or(0);
            let mut record = |key: Vec<u8>, value: Option<Vec<u8>>| {
                if let Some(c) = changelog.as_deref_mut() {
                    c.push(ChangeRecord {
                        partition,
                        key,
                        value,
                        input_next,
                    });
                }
            };
            for customer in state.dirty.drain(..) {
                let Some(entry) = state.cache.get_mut(&customer) else {
                    continue;
                };
                if entry.forget_seen {
                    if logging {
                        for h in store.seen_hashes(partition, &customer)? {
                            record(changelog::seen_key(&customer, h), None);
                        }
                    }
                    batch.forget_seen(partition, &customer);
                }
                let new_deadline = entry.profile.as_ref().and_then(|p| deadline(p, &config));
                if entry.stored_deadline != new_deadline {
                    if let Some(d) = entry.stored_deadline {
                        batch.delete_timer(partition, d, &customer);
                    }
                    if let Some(d) = new_deadline {
                        if state
                            .scan_cursor
                            .as_ref()
                            .is_some_and(|c| (d, customer.as_str()) <= (c.key.0, c.key.1.as_str()))
                        {
                            // Written behind the read position of the index.
                            state.scan_cursor = None;
                        }
                        batch.put_timer(partition, d, &customer);
                        state.store_timer_floor =
                            Some(state.store_timer_floor.map_or(d, |f| f.min(d)));
                    }
                }
                // After the range delete of an erasure, so ids spilled since stay.
                for h in &entry.spill {
                    batch.mark_seen(partition, &customer, *h);
                    // Not empty: consumers read an empty value as a tombstone.
                    record(changelog::seen_key(&customer, *h), Some(vec![1]));
                }
                if entry.changed {
                    match &entry.profile {
                        Some(p) => {
                            let value = encode_kept_profile(p, &entry.seen, &entry.transitions);
                            batch.put_profile(partition, &customer, &value);
                            record(changelog::profile_key(&customer), Some(value));
                        }
                        None if entry.stored => {
                            batch.delete_profile(partition, &customer);
                            record(changelog::profile_key(&customer), None);
                        }
                        None => {}
                    }
                }
                // From here on the entry equals the store (once the batch is written).
                entry.stored_deadline = new_deadline;
                entry.stored = entry.profile.is_some();
                entry.spill.clear();
                entry.changed = false;
                entry.forget_seen = false;
                entry.in_step = false;
                let bytes = entry_bytes(&customer, entry);
                state.cache_bytes = state.cache_bytes - entry.bytes + bytes;
                entry.bytes = bytes;
            }
            state.offset_dirty = false;
            if state.cache_bytes > per_partition {
                evict(state, per_partition - per_partition / 4, &config);
            }
            if state.clock_dirty {
                let clock = state.clock.encode().map_err(|e| EngineError::Corrupt {
                    partition,
                    reason: format!("clock: {e}"),
                })?;
                batch.put_meta(partition, META_CLOCK, &clock);
                record(changelog::meta_key(META_CLOCK), Some(clock));
                state.clock_dirty = false;
            }
            let agg =
                crate::persist::encode(&state.aggregator).map_err(|e| EngineError::Corrupt {
                    partition,
                    reason: format!("aggregator: {e}"),
                })?;
            batch.put_meta(partition, META_AGG, &agg);
            if touched {
                record(changelog::meta_key(META_AGG), Some(agg));
            }
            if let Some(next) = state.next_offset {
                batch.set_offset(partition, next);
            }
            if touched {
                // Last: it ends the partition's step (-1: nothing consumed yet).
                let next = state.next_offset.unwrap_or(-1);
                record(changelog::offset_key(), Some(next.to_be_bytes().to_vec()));
            }
        }
        Ok(batch)
    }

    /// The second half of a commit: writes a batch from
    /// [`Engine::prepare_commit`] (with the driver's own writes added).
    pub fn write_commit(&mut self, batch: Batch) -> Result<(), EngineError> {
        if crate::faults::state_write_fails() {
            return Err(EngineError::State(StateError::Corrupt(
                "injected state write failure (fault injection)".into(),
            )));
        }
        self.store.write(batch)?;
        self.steps += 1;
        Ok(())
    }

    /// Drops everything processed since the last commit (the outputs of the
    /// step could not be delivered): reloads the partitions from the store.
    pub fn rollback(&mut self) -> Result<(), EngineError> {
        let parts = self.assigned();
        self.partitions.clear();
        for p in parts {
            self.assign(p)?;
        }
        Ok(())
    }
}

/// The timer deadline of a profile: its next inactivity deadline, or, for a
/// churned profile with expiry on, when it expires.
pub fn deadline(p: &Profile, config: &EngineConfig) -> Option<i64> {
    fold::next_deadline(p, &config.rules).or_else(|| expiry_deadline(p, config))
}

/// When a churned or never-active profile expires (expiry on).
///
/// A customer who was never active (impressions only, company-initiated
/// messages, unknown event types) has no activity timer and would never
/// churn; such a profile expires the same time after its last event.
fn expiry_deadline(p: &Profile, config: &EngineConfig) -> Option<i64> {
    let after = config.expire_churned_after_ms?;
    match (p.activity, p.last_activity_at) {
        (Some(crate::model::Activity::Churned), Some(last)) => Some(last.saturating_add(after)),
        (None, None) => Some(p.last_event_at?.saturating_add(after)),
        _ => None,
    }
}

mod clock;
mod kept;
mod table;
mod value;

use kept::Kept;
use table::{entry_bytes, evict, CacheMap, Entry};
#[cfg(test)]
use value::PROFILE_VERSION_1;
pub use value::{
    decode_profile, decode_stored_profile, encode_profile, encode_stored_profile, RecentTransition,
    SeenIds, StoredProfile, RECENT_TRANSITIONS,
};
use value::{encode_kept_profile, remember};

pub use clock::Clock;

#[cfg(test)]
mod chunk_tests;
#[cfg(test)]
mod tests;
