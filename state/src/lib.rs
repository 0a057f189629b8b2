//! RocksDB store of siklus' per-partition state.
//!
//! Values are opaque bytes to this crate. The processor applies one step of
//! work in memory and then commits one atomic [`Batch`] holding all state
//! changes *and* the consumed input offset ([`Batch::set_offset`]), so state
//! and offset always agree after a crash: the write-ahead log replays whole
//! batches or nothing. With [`StoreOptions::sync_writes`] off, a machine
//! crash may lose the most recent batches, but never splits one.
//!
//! The key layout lives in [`keys`].

#![warn(missing_docs)]

pub mod keys;

use std::collections::BTreeSet;
use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, ErrorKind, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

use keys::{Key, LAYOUT_VERSION, PARTITION_TABLES, TABLE_OFFSET, TABLE_PROFILE};

/// Name of the global metadata entry holding the layout version (a `u32`
/// big-endian). Its key, `[1]['G']"siklus.layout"`, is fixed for all future
/// layouts so any version of siklus can find it. Reserved: [`Batch::put_global`]
/// and [`Batch::put_raw`] refuse to write it.
pub const LAYOUT_MARKER: &str = "siklus.layout";

/// Tuning of a [`Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Capacity of the shared LRU block cache (default 64 MiB).
    pub block_cache_bytes: usize,
    /// Size of one memtable (default 32 MiB).
    pub write_buffer_bytes: usize,
    /// Maximum number of memtables (default 2).
    pub max_write_buffers: i32,
    /// fsync the write-ahead log on every [`Store::write`] (default false).
    pub sync_writes: bool,
    /// Tune the store as a bulk load, for bounded replays (default false):
    /// no write-ahead log, memtables of at least [`BULK_WRITE_BUFFER_BYTES`],
    /// and more background threads. A batch is still applied whole or not
    /// at all, but a crash loses the batches written since the last
    /// memtable flush: the store then holds an earlier, consistent state
    /// (a replay resumes from the checkpoint in it). [`Store::flush`]
    /// before closing keeps everything.
    pub bulk_load: bool,
}

/// Smallest memtable of a bulk-loading store (64 MiB).
pub const BULK_WRITE_BUFFER_BYTES: usize = 64 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            max_write_buffers: 2,
            sync_writes: false,
            bulk_load: false,
        }
    }
}

/// Errors of the state store.
#[derive(thiserror::Error, Debug)]
pub enum StateError {
    /// An error reported by RocksDB.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Stored (or imported) bytes that do not fit the layout.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// A store written with an unknown layout, or a value the layout cannot
    /// represent.
    #[error("state layout: {0}")]
    Layout(String),
    /// [`Store::open_read_only`] found no store at the path (it never
    /// creates one).
    #[error("{0}")]
    Missing(String),
}

impl StateError {
    /// Whether retrying the same operation later may succeed (transient
    /// RocksDB conditions such as `Busy` or `TryAgain`).
    pub fn is_retriable(&self) -> bool {
        match self {
            StateError::Rocks(e) => matches!(
                e.kind(),
                ErrorKind::Busy | ErrorKind::TryAgain | ErrorKind::TimedOut | ErrorKind::Incomplete
            ),
            StateError::Corrupt(_) | StateError::Layout(_) | StateError::Missing(_) => false,
        }
    }
}

/// The RocksDB state store of all partitions of one processor.
pub struct Store {
    db: DB,
    write_opts: WriteOptions,
    _cache: Cache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

/// Reads the 6-byte `[version][table][partition]` head of a partition key.
fn key_partition(key: &[u8]) -> Result<u32, StateError> {
    key.get(2..6)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| StateError::Corrupt(format!("key {} too short", keys::hex(key))))
}

fn decode_offset(value: &[u8]) -> Result<i64, StateError> {
    value
        .try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| StateError::Corrupt(format!("offset value of {} bytes", value.len())))
}

/// RocksDB options of a store (the same for read-write and read-only
/// opens), with the block cache they use.
fn db_options(opts: &StoreOptions) -> (Options, Cache) {
    let cache = Cache::new_lru_cache(opts.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    // Whole-key bloom filter: profile / seen / offset / meta reads are
    // point lookups on full keys.
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    // Index and filter blocks live in the bounded block cache, so memory
    // stays bounded as state grows. They are partitioned into small blocks:
    // a whole-file filter of a large SST (megabytes) evicted from the
    // cache would be read and checksummed again on every point lookup.
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);

    let mut db_opts = Options::default();
    db_opts.set_block_based_table_factory(&table);
    db_opts.set_compression_type(DBCompressionType::Lz4);
    db_opts.set_write_buffer_size(opts.write_buffer_bytes);
    db_opts.set_max_write_buffer_number(opts.max_write_buffers);
    db_opts.set_level_compaction_dynamic_level_bytes(true);
    if opts.bulk_load {
        // Few, large flushes; compactions run on threads of their own (the
        // processing thread only fills memtables).
        db_opts.set_write_buffer_size(opts.write_buffer_bytes.max(BULK_WRITE_BUFFER_BYTES));
        db_opts.set_max_background_jobs(4);
    }

    (db_opts, cache)
}

impl Store {
    /// Opens (creating if missing) the store in `dir`.
    ///
    /// A new store gets the layout marker; an existing store must carry the
    /// marker of [`LAYOUT_VERSION`], else [`StateError::Layout`].
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Store, StateError> {
        let (mut db_opts, cache) = db_options(opts);
        db_opts.create_if_missing(true);
        let db = DB::open(&db_opts, dir)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(opts.sync_writes && !opts.bulk_load);
        write_opts.disable_wal(opts.bulk_load);
        let store = Store {
            db,
            write_opts,
            _cache: cache,
        };
        store.check_layout(dir, true)?;
        Ok(store)
    }

    /// Opens the existing store in `dir` for reading only: it never creates
    /// the directory or the store, never writes, and does not take RocksDB's
    /// `LOCK`, so it works while a running instance holds the store open
    /// (it then sees the state as of this call: the write-ahead log is
    /// replayed in memory). For `siklus inspect` and exports.
    ///
    /// Fails with [`StateError::Missing`] when `dir` holds no store, and
    /// with [`StateError::Layout`] as [`Store::open`] does. Writes through
    /// the returned store fail.
    pub fn open_read_only(dir: &Path, opts: &StoreOptions) -> Result<Store, StateError> {
        if !dir.is_dir() {
            return Err(StateError::Missing(format!(
                "no state directory at {}",
                dir.display()
            )));
        }
        if !dir.join("CURRENT").is_file() {
            return Err(StateError::Missing(format!(
                "{} holds no siklus state (no RocksDB store in it)",
                dir.display()
            )));
        }
        let (db_opts, cache) = db_options(opts);
        let db = DB::open_for_read_only(&db_opts, dir, false)?;
        let store = Store {
            db,
            write_opts: WriteOptions::default(),
            _cache: cache,
        };
        store.check_layout(dir, false)?;
        Ok(store)
    }

    fn check_layout(&self, dir: &Path, write_marker: bool) -> Result<(), StateError> {
        match self.db.get(keys::global(LAYOUT_MARKER))? {
            Some(v) => {
                let version: [u8; 4] = v.as_slice().try_into().map_err(|_| {
                    StateError::Layout(format!(
                        "store at {} has a malformed layout marker ({} bytes)",
                        dir.display(),
                        v.len()
                    ))
                })?;
                let version = u32::from_be_bytes(version);
                if version != u32::from(LAYOUT_VERSION) {
                    return Err(StateError::Layout(format!(
                        "store at {} has layout version {version}, this build supports {LAYOUT_VERSION}",
                        dir.display()
                    )));
                }
                Ok(())
            }
            None => {
                let mut it = self.db.raw_iterator();
                it.seek_to_first();
                let empty = !it.valid();
                it.status()?;
                drop(it);
                if !empty {
                    return Err(StateError::Layout(format!(
                        "store at {} holds data but no layout marker",
                        dir.display()
                    )));
                }
                if !write_marker {
                    // Read-only: an empty store reads as empty.
                    return Ok(());
                }
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                self.db.put_opt(
                    keys::global(LAYOUT_MARKER),
                    u32::from(LAYOUT_VERSION).to_be_bytes(),
                    &sync,
                )?;
                Ok(())
            }
        }
    }

    /// Calls `f` on every key/value in `[lower, upper)` in key order until it
    /// returns `Ok(false)`.
    fn scan(
        &self,
        lower: &[u8],
        upper: Vec<u8>,
        snapshot: Option<&rocksdb::Snapshot<'_>>,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StateError>,
    ) -> Result<(), StateError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        if let Some(s) = snapshot {
            ro.set_snapshot(s);
        }
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(lower);
        while let Some((k, v)) = it.item() {
            if !f(k, v)? {
                return Ok(());
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// The profile bytes of `customer` in `partition`.
    pub fn profile(&self, partition: u32, customer: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.db.get(keys::profile(partition, customer))?)
    }

    /// The recent transitions of `customer` in `partition` (opaque bytes).
    pub fn recent(&self, partition: u32, customer: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.db.get(keys::recent(partition, customer))?)
    }

    /// The next input offset to consume of `partition`, if one was committed.
    pub fn offset(&self, partition: u32) -> Result<Option<i64>, StateError> {
        self.db
            .get_pinned(keys::offset(partition))?
            .map(|v| decode_offset(&v))
            .transpose()
    }

    /// Whether the event with `event_hash` of `customer` was marked seen.
    /// Fails with [`StateError::Layout`] for customer ids longer than
    /// [`keys::MAX_SEEN_CUSTOMER_LEN`] bytes.
    pub fn seen(
        &self,
        partition: u32,
        customer: &str,
        event_hash: u64,
    ) -> Result<bool, StateError> {
        let key = keys::seen(partition, customer, event_hash)?;
        Ok(self.db.get_pinned(key)?.is_some())
    }

    /// The event hashes of `customer` in the seen table, ascending (for the
    /// tombstones of an erasure). Empty for an id too long for seen keys.
    pub fn seen_hashes(&self, partition: u32, customer: &str) -> Result<Vec<u64>, StateError> {
        let Ok(prefix) = keys::seen_customer_prefix(partition, customer) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let upper = keys::prefix_end(&prefix);
        self.scan(&prefix, upper, None, |k, _| {
            let hash = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StateError::Corrupt(format!("seen key {}", keys::hex(k))))?;
            out.push(hash);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Timers of `partition` with deadline `< before` (strictly), ascending by
    /// `(deadline, customer)`, at most `limit`.
    pub fn due_timers(
        &self,
        partition: u32,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StateError> {
        self.timers_between(partition, i64::MIN, before, limit)
    }

    /// Timers with `from <= deadline < before`, ascending, at most `limit`.
    /// Starting at a known lower bound skips the deleted entries of timers
    /// that already fired (the index is consumed from its low end).
    pub fn timers_between(
        &self,
        partition: u32,
        from: i64,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StateError> {
        let mut out = Vec::new();
        if limit == 0 || from >= before {
            return Ok(out);
        }
        let lower = keys::timer_deadline_prefix(partition, from);
        let upper = keys::timer_deadline_prefix(partition, before);
        self.scan(&lower, upper, None, |k, _| match keys::decode(k)? {
            Key::Timer {
                deadline, customer, ..
            } => {
                out.push((deadline, customer));
                Ok(out.len() < limit)
            }
            other => Err(StateError::Corrupt(format!(
                "non-timer key {other:?} in the timer range"
            ))),
        })?;
        Ok(out)
    }

    /// Visits the timers of `partition` from the key `(from, customer)`
    /// (inclusive) up to deadline `before` (exclusive), ascending by
    /// `(deadline, customer)`, until `f` returns `false`.
    pub fn scan_timers(
        &self,
        partition: u32,
        from: (i64, &str),
        before: i64,
        mut f: impl FnMut(i64, &str) -> bool,
    ) -> Result<(), StateError> {
        if from.0 >= before {
            return Ok(());
        }
        let lower = keys::timer(partition, from.0, from.1);
        let upper = keys::timer_deadline_prefix(partition, before);
        self.scan(&lower, upper, None, |k, _| match keys::decode(k)? {
            Key::Timer {
                deadline, customer, ..
            } => Ok(f(deadline, &customer)),
            other => Err(StateError::Corrupt(format!(
                "non-timer key {other:?} in the timer range"
            ))),
        })
    }

    /// The earliest timer with a deadline at or after `from`, if any.
    pub fn first_timer_from(&self, partition: u32, from: i64) -> Result<Option<i64>, StateError> {
        Ok(self
            .timers_between(partition, from, i64::MAX, 1)?
            .first()
            .map(|(d, _)| *d))
    }

    /// The metadata blob `name` of `partition`.
    pub fn meta(&self, partition: u32, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.db.get(keys::meta(partition, name))?)
    }

    /// The global metadata blob `name`.
    pub fn global(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.db.get(keys::global(name))?)
    }

    /// Atomically applies `batch`. Fails without writing anything if the
    /// batch recorded an invalid operation (see [`Batch`]).
    pub fn write(&self, batch: Batch) -> Result<(), StateError> {
        if let Some(e) = batch.error {
            return Err(e);
        }
        self.db.write_opt(batch.inner, &self.write_opts)?;
        Ok(())
    }

    /// Partitions that have a committed offset or any profile, ascending.
    pub fn partitions(&self) -> Result<Vec<u32>, StateError> {
        let mut found = BTreeSet::new();
        let offsets = keys::table_prefix(TABLE_OFFSET);
        self.scan(&offsets, keys::prefix_end(&offsets), None, |k, _| {
            found.insert(key_partition(k)?);
            Ok(true)
        })?;
        // Skip-scan the profile table: one seek per partition.
        let profiles = keys::table_prefix(TABLE_PROFILE);
        let end = keys::prefix_end(&profiles);
        let mut from = profiles;
        loop {
            let mut next = None;
            self.scan(&from, end.clone(), None, |k, _| {
                next = Some(key_partition(k)?);
                Ok(false)
            })?;
            match next {
                Some(p) => {
                    found.insert(p);
                    match p.checked_add(1) {
                        Some(q) => from = keys::partition_prefix(TABLE_PROFILE, q),
                        None => break,
                    }
                }
                None => break,
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Calls `f(customer, bytes)` on every profile of `partition` in customer
    /// id order until `f` returns false.
    pub fn for_each_profile(
        &self,
        partition: u32,
        mut f: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let prefix = keys::partition_prefix(TABLE_PROFILE, partition);
        let skip = prefix.len();
        self.scan(&prefix, keys::prefix_end(&prefix), None, |k, v| {
            let customer = keys::customer_suffix(k, skip)?;
            Ok(f(&customer, v))
        })
    }

    /// Whether the store holds any profile of a partition.
    pub fn has_profiles(&self, partition: u32) -> Result<bool, StateError> {
        let mut any = false;
        self.for_each_profile(partition, |_, _| {
            any = true;
            false
        })?;
        Ok(any)
    }

    /// All profiles of `partition`, ordered by customer id.
    pub fn profiles(&self, partition: u32) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut out = Vec::new();
        self.for_each_profile(partition, |c, v| {
            out.push((c.to_owned(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Finds `customer` in any partition (lowest partition first); returns
    /// its partition and profile bytes.
    pub fn find_profile(&self, customer: &str) -> Result<Option<(u32, Vec<u8>)>, StateError> {
        for p in self.partitions()? {
            if let Some(v) = self.profile(p, customer)? {
                return Ok(Some((p, v)));
            }
        }
        Ok(None)
    }

    /// Calls `f(key, value)` on every key of `partition` in all
    /// partition-scoped tables (profiles, timers, seen ids, offset, meta), in
    /// key order, from one consistent snapshot. Global keys are not included.
    /// Feeding the pairs to [`Batch::put_raw`] recreates the partition.
    pub fn export_partition(
        &self,
        partition: u32,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), StateError> {
        let snapshot = self.db.snapshot();
        for table in PARTITION_TABLES {
            let prefix = keys::partition_prefix(table, partition);
            self.scan(
                &prefix,
                keys::prefix_end(&prefix),
                Some(&snapshot),
                |k, v| {
                    f(k, v);
                    Ok(true)
                },
            )?;
        }
        Ok(())
    }

    /// Flushes the memtables to disk (graceful shutdown).
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }

    /// An integer RocksDB property such as `rocksdb.total-sst-files-size`
    /// or `rocksdb.estimate-live-data-size` (0 if unavailable).
    pub fn property(&self, name: &str) -> u64 {
        self.db.property_int_value(name).ok().flatten().unwrap_or(0)
    }

    /// Approximate bytes used: SST files plus memtables (0 if unavailable).
    pub fn approximate_size_bytes(&self) -> u64 {
        let prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        prop("rocksdb.total-sst-files-size").saturating_add(prop("rocksdb.cur-size-all-mem-tables"))
    }
}

/// An atomic set of state changes, applied by [`Store::write`].
///
/// Operations the layout cannot represent (a seen entry for a customer id
/// longer than [`keys::MAX_SEEN_CUSTOMER_LEN`] bytes, a [`Batch::put_raw`]
/// key outside the layout, writing the reserved [`LAYOUT_MARKER`]) are not
/// queued; the first such error is kept and [`Store::write`] returns it
/// without writing anything. See [`Batch::error`].
#[derive(Default)]
pub struct Batch {
    inner: WriteBatch,
    count: usize,
    error: Option<StateError>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.count)
            .field("bytes", &self.inner.size_in_bytes())
            .field("error", &self.error)
            .finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    fn fail(&mut self, e: StateError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.inner.put(key, value);
        self.count += 1;
    }

    fn delete(&mut self, key: &[u8]) {
        self.inner.delete(key);
        self.count += 1;
    }

    fn delete_prefix(&mut self, prefix: &[u8]) {
        self.inner.delete_range(prefix, &keys::prefix_end(prefix));
    }

    /// Sets the profile bytes of `customer`.
    pub fn put_profile(&mut self, partition: u32, customer: &str, value: &[u8]) {
        self.put(&keys::profile(partition, customer), value);
    }

    /// Deletes the profile of `customer`.
    pub fn delete_profile(&mut self, partition: u32, customer: &str) {
        self.delete(&keys::profile(partition, customer));
    }

    /// Sets the recent transitions of `customer`.
    pub fn put_recent(&mut self, partition: u32, customer: &str, value: &[u8]) {
        self.put(&keys::recent(partition, customer), value);
    }

    /// Deletes the recent transitions of `customer`.
    pub fn delete_recent(&mut self, partition: u32, customer: &str) {
        self.delete(&keys::recent(partition, customer));
    }

    /// Adds a timer of `customer` at `deadline`.
    pub fn put_timer(&mut self, partition: u32, deadline: i64, customer: &str) {
        self.put(&keys::timer(partition, deadline, customer), &[]);
    }

    /// Removes the timer of `customer` at `deadline`.
    pub fn delete_timer(&mut self, partition: u32, deadline: i64, customer: &str) {
        self.delete(&keys::timer(partition, deadline, customer));
    }

    /// Marks the event with `event_hash` of `customer` as seen.
    pub fn mark_seen(&mut self, partition: u32, customer: &str, event_hash: u64) {
        match keys::seen(partition, customer, event_hash) {
            Ok(k) => self.put(&k, &[]),
            Err(e) => self.fail(e),
        }
    }

    /// Removes one seen event of `customer`.
    pub fn delete_seen(&mut self, partition: u32, customer: &str, event_hash: u64) {
        // An id too long for a seen key can have no seen entries: no-op.
        if let Ok(k) = keys::seen(partition, customer, event_hash) {
            self.delete(&k);
        }
    }

    /// Range-deletes every seen entry of `customer` (and only that customer:
    /// ids that merely start with `customer` are untouched).
    pub fn forget_seen(&mut self, partition: u32, customer: &str) {
        // An id too long for a seen key can have no seen entries: no-op.
        if let Ok(prefix) = keys::seen_customer_prefix(partition, customer) {
            self.delete_prefix(&prefix);
            self.count += 1;
        }
    }

    /// Sets the next input offset to consume of `partition`.
    pub fn set_offset(&mut self, partition: u32, next_offset: i64) {
        self.put(&keys::offset(partition), &next_offset.to_be_bytes());
    }

    /// Sets the metadata blob `name` of `partition`.
    pub fn put_meta(&mut self, partition: u32, name: &str, value: &[u8]) {
        self.put(&keys::meta(partition, name), value);
    }

    /// Sets the global metadata blob `name` ([`LAYOUT_MARKER`] is reserved).
    pub fn put_global(&mut self, name: &str, value: &[u8]) {
        if name == LAYOUT_MARKER {
            self.fail(StateError::Layout(format!(
                "global name {LAYOUT_MARKER:?} is reserved"
            )));
            return;
        }
        self.put(&keys::global(name), value);
    }

    /// Range-deletes every key of `partition` in all partition-scoped tables
    /// (counts as one operation). Other partitions and global keys stay.
    pub fn drop_partition(&mut self, partition: u32) {
        for table in PARTITION_TABLES {
            self.delete_prefix(&keys::partition_prefix(table, partition));
        }
        self.count += 1;
    }

    /// Puts a raw key/value as produced by [`Store::export_partition`]. The
    /// key must decode as a layout key (an offset value must be 8 bytes, the
    /// [`LAYOUT_MARKER`] is refused); otherwise the batch fails with
    /// [`StateError::Corrupt`] / [`StateError::Layout`].
    pub fn put_raw(&mut self, key: &[u8], value: &[u8]) {
        match keys::decode(key) {
            Ok(Key::Global { name }) if name == LAYOUT_MARKER => self.fail(StateError::Layout(
                format!("global name {LAYOUT_MARKER:?} is reserved"),
            )),
            Ok(Key::Offset { .. }) if value.len() != 8 => self.fail(StateError::Corrupt(format!(
                "offset value of {} bytes for key {}",
                value.len(),
                keys::hex(key)
            ))),
            Ok(_) => self.put(key, value),
            Err(e) => self.fail(e),
        }
    }

    /// The first invalid operation recorded, if any ([`Store::write`] will
    /// return it).
    pub fn error(&self) -> Option<&StateError> {
        self.error.as_ref()
    }

    /// Number of operations queued (a range delete counts as one).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no operation is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod read_only_tests {
    use super::*;

    #[test]
    fn a_read_only_open_reads_a_store_held_open_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let rw = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut b = Batch::new();
        b.put_profile(3, "ana", b"profile");
        b.set_offset(3, 42);
        rw.write(b).unwrap();
        // The writer holds the LOCK: a second writer cannot open...
        assert!(Store::open(dir.path(), &StoreOptions::default()).is_err());
        // ...a reader can, and sees what was written (from the WAL).
        let ro = Store::open_read_only(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(
            ro.profile(3, "ana").unwrap().as_deref(),
            Some(&b"profile"[..])
        );
        assert_eq!(ro.offset(3).unwrap(), Some(42));
        assert_eq!(ro.find_profile("ana").unwrap().map(|(p, _)| p), Some(3));
        let mut b = Batch::new();
        b.put_profile(3, "bob", b"x");
        assert!(ro.write(b).is_err(), "a read-only store never writes");
        drop(rw);
        assert_eq!(ro.profile(3, "bob").unwrap(), None);
    }

    #[test]
    fn a_read_only_open_never_creates_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        match Store::open_read_only(&missing, &StoreOptions::default()) {
            Err(StateError::Missing(m)) => assert!(m.contains("no state directory at"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!missing.exists());
        match Store::open_read_only(dir.path(), &StoreOptions::default()) {
            Err(e @ StateError::Missing(_)) => assert!(!e.is_retriable()),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // An empty store (created, never written but for its marker) reads as empty.
        drop(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        let ro = Store::open_read_only(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(ro.partitions().unwrap(), Vec::<u32>::new());
    }
}
