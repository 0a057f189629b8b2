//! Restores of assigned partitions from the changelog, driven from the
//! processing loop so that other partitions keep being processed (and the
//! consumer keeps polling) while a partition is rebuilt.
//!
//! A partition assigned to this instance is paused on the input and handed
//! here. When the changelog holds records beyond what the local store
//! reflects, they are read and applied (whole committed steps only, see
//! [`crate::changelog`]); then the partition joins the engine and its input
//! resumes at the restored offset. Progress (records, records/s, ETA) is
//! logged every few seconds and exported as metrics.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use siklus_state::{Batch, Store};
use tracing::{info, warn};

use crate::changelog::{self, Restorer, INPUT_OFFSET_HEADER};
use crate::engine::EngineConfig;
use crate::metrics::Metrics;

/// Records applied between two store writes of a restore.
const RESTORE_BATCH: usize = 20_000;
/// How long one call of [`Restores::step`] reads at most.
const STEP_BUDGET: Duration = Duration::from_millis(200);
/// A restore that makes no progress for this long says so (each time its
/// progress is logged). It never gives up: continuing from the input would
/// leave a silent gap wherever the input's retention is shorter than the
/// history the changelog holds. The partition stays paused and `/readyz`
/// not ready until the changelog can be read to its end.
const STALL: Duration = Duration::from_secs(15);
/// Progress is logged this often per partition.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often a standby learns the owner's committed offsets.
const STANDBY_REFRESH: Duration = Duration::from_secs(2);
/// How often a standby writes the steps it applied.
const STANDBY_FLUSH: Duration = Duration::from_secs(2);
/// The most bytes a standby holds per partition while it waits for the
/// owner's commit: past it the changelog partition is paused, and resumed
/// once the held records fall under half of it.
const STANDBY_HELD_MAX_BYTES: usize = 64 << 20;

impl Follow {
    /// Applies the held records whose step the owner committed.
    fn drain(&mut self) -> anyhow::Result<()> {
        while self
            .held
            .front()
            .is_some_and(|h| h.input_next <= self.run.committed)
        {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.held_bytes = self.held_bytes.saturating_sub(h.size());
            self.run.restorer.apply(
                h.offset,
                &h.key,
                h.value.as_deref(),
                h.input_next,
                i64::MAX,
            )?;
            if self.run.restorer.at_boundary() && self.run.restorer.buffered() >= RESTORE_BATCH {
                self.run.restorer.flush()?;
                self.last_flush = Instant::now();
            }
        }
        Ok(())
    }
}

/// A partition waiting for, or in, its restore.
struct Pending {
    /// Where the input was assigned (to seek if the restore moves it).
    input_start: Offset,
    run: Option<Run>,
}

/// A running restore.
struct Run {
    restorer: Restorer,
    /// Input offset the group committed (steps beyond it are skipped).
    committed: i64,
    /// Changelog offset of the next record to apply.
    position: i64,
    /// The changelog's first offset (reads start no earlier).
    low: i64,
    /// Applied records already counted in the metrics.
    reported: u64,
    /// The changelog's end when the restore began.
    end: i64,
    first: i64,
    started: Instant,
    last_progress: Instant,
    last_log: Instant,
}

/// A changelog record a standby holds until the owner commits its step.
struct Held {
    offset: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    input_next: i64,
}

impl Held {
    fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// A partition followed as a warm standby: its changelog is applied as the
/// owner commits, so a failover here restores only the last few steps.
struct Follow {
    run: Run,
    /// Records received whose step the owner has not committed yet, in order.
    held: VecDeque<Held>,
    /// Bytes of `held` (keys and values).
    held_bytes: usize,
    /// Whether its changelog partition is paused (too much held).
    paused: bool,
    last_flush: Instant,
}

/// The warm standbys of this instance.
struct Standby {
    partitions: u32,
    follows: BTreeMap<u32, Follow>,
    last_refresh: Instant,
}

/// A partition whose restore ended: its state is in the store.
pub struct Restored {
    /// The partition.
    pub partition: u32,
    /// Where its input was assigned before the restore.
    pub input_start: Offset,
    /// Changelog records applied (0 when the store was up to date).
    pub records: u64,
}

/// The restores of this instance.
pub struct Restores {
    consumer: BaseConsumer,
    topic: String,
    input_topic: String,
    rewind: i64,
    /// Under exactly-once the restore consumer reads committed records
    /// only, so no step needs the committed-offset filter.
    exactly_once: bool,
    parts: BTreeMap<u32, Pending>,
    /// Partitions whose restore ended in a [`Restores::step`] that then
    /// failed: the next step hands them over, so a failure never strands
    /// a restored partition paused.
    finished: Vec<Restored>,
    standby: Option<Standby>,
    /// Finds the true end of a changelog partition on brokers that report
    /// a high watermark below it (`resume_rewind` > 0 marks such brokers).
    probe: Option<BaseConsumer>,
}

impl Restores {
    /// A restore driver reading `topic` with a consumer of its own (no group).
    /// With `standby_of` (the input's partition count), every partition this
    /// instance neither owns nor restores is followed as a warm standby.
    pub fn new(
        mut cc: ClientConfig,
        topic: String,
        input_topic: String,
        rewind: i64,
        exactly_once: bool,
        standby_of: Option<u32>,
    ) -> anyhow::Result<Self> {
        let probe = if rewind > 0 {
            let mut pc = cc.clone();
            pc.set("enable.auto.commit", "false")
                .set("group.id", format!("{topic}.probe"));
            Some(pc.create().context("creating the changelog end probe")?)
        } else {
            None
        };
        cc.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("group.id", format!("{topic}.restore"));
        let consumer: BaseConsumer = cc.create().context("creating the restore consumer")?;
        Ok(Restores {
            consumer,
            topic,
            input_topic,
            rewind,
            exactly_once,
            parts: BTreeMap::new(),
            finished: Vec::new(),
            probe,
            standby: standby_of.map(|partitions| Standby {
                partitions,
                follows: BTreeMap::new(),
                last_refresh: Instant::now(),
            }),
        })
    }

    /// Takes a newly assigned partition (its input paused at `input_start`).
    pub fn add(&mut self, partition: u32, input_start: Offset) {
        if let Some(mut f) = self
            .standby
            .as_mut()
            .and_then(|s| s.follows.remove(&partition))
        {
            // The standby's complete steps are kept; the restore goes on
            // from there with the committed-offset check.
            match f.run.restorer.flush() {
                Ok(_) => info!(
                    partition,
                    applied = f.run.restorer.applied,
                    "standby partition assigned"
                ),
                Err(e) => warn!(partition, error = %e, "standby state not written"),
            }
        }
        self.parts.insert(
            partition,
            Pending {
                input_start,
                run: None,
            },
        );
    }

    /// Drops a revoked partition; what was written of its restore stays.
    pub fn remove(&mut self, partition: u32) -> bool {
        let before = self.finished.len();
        self.finished.retain(|r| r.partition != partition);
        let was_finished = self.finished.len() != before;
        let had = self.parts.remove(&partition);
        if had.as_ref().is_some_and(|p| p.run.is_some()) {
            self.reassign();
        }
        had.is_some() || was_finished
    }

    /// Drops every waiting partition (all were revoked).
    pub fn clear(&mut self) {
        self.parts.clear();
        self.finished.clear();
        self.reassign();
    }

    /// Whether no partition is waiting.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty() && self.finished.is_empty()
    }

    /// Whether partitions are followed as standbys (the driver must call
    /// [`Restores::step`] even when no restore waits).
    pub fn following(&self) -> bool {
        self.standby.is_some()
    }

    /// Whether `partition` waits for its restore.
    pub fn contains(&self, partition: u32) -> bool {
        self.parts.contains_key(&partition)
            || self.finished.iter().any(|r| r.partition == partition)
    }

    fn reassign(&self) {
        let mut tpl = TopicPartitionList::new();
        let follows = self.standby.iter().flat_map(|s| s.follows.iter());
        let runs = self
            .parts
            .iter()
            .filter_map(|(p, pending)| pending.run.as_ref().map(|r| (p, r)))
            .chain(follows.map(|(p, f)| (p, &f.run)));
        for (p, run) in runs {
            // Earlier than needed on brokers that cannot fetch from the
            // middle of a batch; records before `position` are skipped.
            let from = (run.position - self.rewind).max(run.low);
            let _ = tpl.add_partition_offset(&self.topic, *p as i32, Offset::Offset(from));
        }
        if let Err(e) = self.consumer.assign(&tpl) {
            warn!(error = %e, "restore consumer assignment failed");
        }
    }

    /// Starts waiting restores, reads for a while, and returns the
    /// partitions whose restore ended.
    /// `owned`: the partitions in the engine (not followed as standbys).
    ///
    /// A partition whose restore ended is handed over even when a later
    /// part of the same step fails (a changelog partition without a leader
    /// yet, a broker outage): the error is returned, and the next call
    /// returns the partition.
    pub fn step<C: ConsumerContext>(
        &mut self,
        store: &Arc<Store>,
        config: &EngineConfig,
        group: &BaseConsumer<C>,
        metrics: &Metrics,
        owned: &[u32],
    ) -> anyhow::Result<Vec<Restored>> {
        let mut done = std::mem::take(&mut self.finished);
        // Restored and about to be handed over: owned, not for a standby.
        let mut owned = owned.to_vec();
        owned.extend(done.iter().map(|r| r.partition));
        let result = self.step_into(&mut done, store, config, group, metrics, &owned);
        match result {
            Ok(()) => Ok(done),
            Err(e) => {
                // Runs started before the failure must still be read.
                self.reassign();
                self.finished = done;
                Err(e)
            }
        }
    }

    fn step_into<C: ConsumerContext>(
        &mut self,
        done: &mut Vec<Restored>,
        store: &Arc<Store>,
        config: &EngineConfig,
        group: &BaseConsumer<C>,
        metrics: &Metrics,
        owned: &[u32],
    ) -> anyhow::Result<()> {
        let changed = self.update_standby(store, config, group, owned)?;
        let waiting: Vec<u32> = self
            .parts
            .iter()
            .filter(|(_, p)| p.run.is_none())
            .map(|(p, _)| *p)
            .collect();
        let mut started = false;
        for p in waiting {
            let run = self.start(p, store, config, group)?;
            if run.position < run.end {
                info!(
                    partition = p,
                    from = run.position,
                    to = run.end,
                    records = run.end - run.position,
                    "restoring partition from the changelog"
                );
                metrics.with_partition(p, |f| {
                    f.assigned = true;
                    f.restore_remaining = (run.end - run.position).max(0) as u64;
                });
                if let Some(pending) = self.parts.get_mut(&p) {
                    pending.run = Some(run);
                }
                started = true;
            } else if let Some(pending) = self.parts.remove(&p) {
                done.push(Restored {
                    partition: p,
                    input_start: pending.input_start,
                    records: 0,
                });
            }
        }
        if started || changed {
            self.reassign();
        }
        let following = self.standby.as_ref().is_some_and(|s| !s.follows.is_empty());
        if self.parts.values().all(|p| p.run.is_none()) && !following {
            return Ok(());
        }
        self.read(metrics)?;
        let finished: Vec<u32> = self
            .parts
            .iter()
            .filter_map(|(p, pending)| {
                let run = pending.run.as_ref()?;
                (run.position >= run.end).then_some(*p)
            })
            .collect();
        for p in &finished {
            let Some(pending) = self.parts.remove(p) else {
                continue;
            };
            let Some(mut run) = pending.run else { continue };
            run.restorer.flush()?;
            let secs = run.started.elapsed().as_secs_f64();
            let read = (run.position - run.first).max(0) as f64;
            info!(
                partition = p,
                records = run.restorer.applied,
                skipped_uncommitted = run.restorer.skipped,
                secs = format!("{secs:.2}"),
                records_per_sec = (read / secs.max(1e-3)) as u64,
                "partition restored from the changelog"
            );
            metrics.with_partition(*p, |f| {
                f.restores += 1;
                f.restore_remaining = 0;
                f.restore_rate = 0;
                f.restore_eta_secs = 0;
            });
            done.push(Restored {
                partition: *p,
                input_start: pending.input_start,
                records: run.restorer.applied,
            });
        }
        if !finished.is_empty() {
            self.reassign();
        }
        Ok(())
    }

    /// Starts and stops standbys so that they cover every partition neither
    /// owned nor restored here, and refreshes the committed offsets they
    /// apply up to. Returns whether the followed set changed.
    fn update_standby<C: ConsumerContext>(
        &mut self,
        store: &Arc<Store>,
        config: &EngineConfig,
        group: &BaseConsumer<C>,
        owned: &[u32],
    ) -> anyhow::Result<bool> {
        let Some(partitions) = self.standby.as_ref().map(|s| s.partitions) else {
            return Ok(false);
        };
        let wanted: Vec<u32> = (0..partitions)
            .filter(|p| !owned.contains(p) && !self.parts.contains_key(p))
            .collect();
        let mut changed = false;
        let dropped: Vec<u32> = self
            .standby
            .iter()
            .flat_map(|s| s.follows.keys())
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        for p in dropped {
            if let Some(mut f) = self.standby.as_mut().and_then(|s| s.follows.remove(&p)) {
                f.run.restorer.flush()?;
                changed = true;
            }
        }
        for p in wanted {
            if self
                .standby
                .as_ref()
                .is_some_and(|s| s.follows.contains_key(&p))
            {
                continue;
            }
            let run = self.start(p, store, config, group)?;
            info!(
                partition = p,
                from = run.position,
                "following partition as a standby"
            );
            if let Some(s) = self.standby.as_mut() {
                s.follows.insert(
                    p,
                    Follow {
                        run,
                        held: VecDeque::new(),
                        held_bytes: 0,
                        paused: false,
                        last_flush: Instant::now(),
                    },
                );
            }
            changed = true;
        }
        let refresh = self
            .standby
            .as_ref()
            .is_some_and(|s| !s.follows.is_empty() && s.last_refresh.elapsed() >= STANDBY_REFRESH);
        if refresh {
            let mut tpl = TopicPartitionList::new();
            for p in self.standby.iter().flat_map(|s| s.follows.keys()) {
                tpl.add_partition(&self.input_topic, *p as i32);
            }
            // Under exactly-once the changelog holds committed steps only
            // (read_committed): everything read may be applied. Otherwise a
            // step may be applied once the owner committed its input offset;
            // when that cannot be read (a broker outage), nothing more is
            // applied until it can: an unknown offset is not "all committed".
            let committed = if self.exactly_once {
                Ok(None)
            } else {
                group
                    .committed_offsets(tpl, Duration::from_secs(5))
                    .map(Some)
            };
            if let Err(e) = &committed {
                warn!(error = %e, "standby: cannot read the committed offsets; applying nothing new until it can");
            }
            if let Some(s) = self.standby.as_mut() {
                s.last_refresh = Instant::now();
            }
            if let (Some(s), Ok(committed)) = (self.standby.as_mut(), committed) {
                for (p, f) in &mut s.follows {
                    f.run.committed = match &committed {
                        None => i64::MAX,
                        Some(c) => match c
                            .find_partition(&self.input_topic, *p as i32)
                            .map(|e| e.offset())
                        {
                            Some(Offset::Offset(n)) => n,
                            _ => f.run.committed,
                        },
                    };
                }
            }
        }
        // Apply what the owner committed meanwhile, and write it now and then.
        if let Some(s) = self.standby.as_mut() {
            for (p, f) in s.follows.iter_mut() {
                f.drain()?;
                if f.paused && f.held_bytes <= STANDBY_HELD_MAX_BYTES / 2 {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&self.topic, *p as i32);
                    match self.consumer.resume(&tpl) {
                        Ok(()) => f.paused = false,
                        Err(e) => warn!(partition = p, error = %e, "standby: cannot resume"),
                    }
                }
                if f.run.restorer.at_boundary() && f.last_flush.elapsed() >= STANDBY_FLUSH {
                    f.run.restorer.flush()?;
                    f.last_flush = Instant::now();
                }
            }
        }
        Ok(changed)
    }

    /// Where a restore of `p` starts and ends (`position >= end`: the store
    /// is up to date).
    fn start<C: ConsumerContext>(
        &self,
        p: u32,
        store: &Arc<Store>,
        config: &EngineConfig,
        group: &BaseConsumer<C>,
    ) -> anyhow::Result<Run> {
        let timeout = Duration::from_secs(10);
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, p as i32, timeout)
            .with_context(|| format!("changelog watermarks of partition {p}"))?;
        let mut local = changelog::stored_position(store, p)?;
        let high = match &self.probe {
            Some(probe) if high > low => {
                crate::topic_replay::true_end(probe, &self.topic, p as i32, high)?
            }
            _ => high,
        };
        let needed = high > local;
        let committed = if self.exactly_once {
            i64::MAX
        } else if !needed {
            // Nothing to apply now (a standby learns it on its next refresh).
            0
        } else {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.input_topic, p as i32);
            let c = group
                .committed_offsets(tpl, timeout)
                .with_context(|| format!("committed offset of partition {p}"))?;
            match c
                .find_partition(&self.input_topic, p as i32)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(n)) => n,
                _ => 0,
            }
        };
        let local_offset = store.offset(p)?;
        if needed && local_offset.is_some_and(|o| o > committed) && local > 0 {
            // This store got ahead of what the group committed, and another
            // instance has written to the changelog since: its state and the
            // changelog's follow different step boundaries. Start over.
            warn!(
                partition = p,
                local_offset, committed, "local state ahead of the group's committed offset: rebuilding it from the changelog"
            );
            let mut b = Batch::new();
            b.drop_partition(p);
            store.write(b)?;
            local = 0;
        }
        let fresh = local == 0 && store.offset(p)?.is_none();
        let position = local.max(low);
        let now = Instant::now();
        Ok(Run {
            restorer: Restorer::new(store.clone(), config.clone(), p, fresh),
            committed,
            position,
            low,
            reported: 0,
            end: high,
            first: position,
            started: now,
            last_progress: now,
            last_log: now,
        })
    }

    /// Reads changelog records for up to [`STEP_BUDGET`].
    fn read(&mut self, metrics: &Metrics) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP_BUDGET;
        let mut timeout = Duration::from_millis(50);
        while Instant::now() < deadline {
            let Some(msg) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "changelog read error");
                    break;
                }
            };
            let p = m.partition() as u32;
            if let Some(f) = self.standby.as_mut().and_then(|s| s.follows.get_mut(&p)) {
                if m.offset() < f.run.position {
                    continue;
                }
                let input_next = input_next_of(&m).unwrap_or(i64::MAX);
                let h = Held {
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().map(<[u8]>::to_vec),
                    input_next,
                };
                f.held_bytes += h.size();
                f.held.push_back(h);
                f.run.position = m.offset() + 1;
                f.drain()?;
                if !f.paused && f.held_bytes > STANDBY_HELD_MAX_BYTES {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&self.topic, p as i32);
                    match self.consumer.pause(&tpl) {
                        Ok(()) => f.paused = true,
                        Err(e) => warn!(partition = p, error = %e, "standby: cannot pause"),
                    }
                }
                continue;
            }
            let Some(run) = self.parts.get_mut(&p).and_then(|x| x.run.as_mut()) else {
                continue;
            };
            if m.offset() < run.position {
                continue;
            }
            let input_next = input_next_of(&m).ok_or_else(|| {
                anyhow::anyhow!(
                    "changelog partition {p} offset {} has no {INPUT_OFFSET_HEADER} header",
                    m.offset()
                )
            })?;
            let key = m.key().unwrap_or_default();
            run.restorer
                .apply(m.offset(), key, m.payload(), input_next, run.committed)?;
            run.position = m.offset() + 1;
            run.last_progress = Instant::now();
            if run.restorer.at_boundary() && run.restorer.buffered() >= RESTORE_BATCH {
                run.restorer.flush()?;
            }
        }
        // Transaction markers and compacted-away records take offsets no
        // record is returned for: the consumer position is the truth.
        if let Ok(pos) = self.consumer.position() {
            for e in pos.elements() {
                if let (Offset::Offset(o), Some(run)) = (
                    e.offset(),
                    self.parts
                        .get_mut(&(e.partition() as u32))
                        .and_then(|x| x.run.as_mut()),
                ) {
                    if o > run.position && run.restorer.at_boundary() {
                        run.position = o;
                        run.last_progress = Instant::now();
                    }
                }
            }
        }
        for (p, pending) in &mut self.parts {
            let Some(run) = pending.run.as_mut() else {
                continue;
            };
            let secs = run.started.elapsed().as_secs_f64().max(1e-3);
            let read = (run.position - run.first).max(0) as f64;
            let rate = read / secs;
            let remaining = (run.end - run.position).max(0);
            let eta = if rate > 0.0 {
                (remaining as f64 / rate) as u64
            } else {
                0
            };
            metrics.with_partition(*p, |f| {
                f.restore_remaining = remaining as u64;
                f.restore_rate = rate as u64;
                f.restore_eta_secs = eta;
                f.restored_records += run.restorer.applied - run.reported;
            });
            run.reported = run.restorer.applied;
            if run.last_log.elapsed() >= PROGRESS_EVERY && run.last_progress.elapsed() >= STALL {
                warn!(
                    partition = p,
                    position = run.position,
                    end = run.end,
                    stalled_secs = run.last_progress.elapsed().as_secs(),
                    "changelog restore makes no progress (is the broker reachable?); waiting"
                );
            }
            if run.last_log.elapsed() >= PROGRESS_EVERY {
                run.last_log = Instant::now();
                info!(
                    partition = p,
                    restored = run.restorer.applied,
                    remaining,
                    records_per_sec = rate as u64,
                    eta_secs = eta,
                    "restore progress"
                );
            }
        }
        Ok(())
    }
}

/// The [`INPUT_OFFSET_HEADER`] of a changelog record.
fn input_next_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<i64> {
    m.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == INPUT_OFFSET_HEADER)
            .and_then(|h| changelog::parse_input_next(h.value))
    })
}

/// What [`restore_all`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    /// Partitions restored (or found up to date).
    pub partitions: Vec<u32>,
    /// Changelog records applied.
    pub records: u64,
    /// Seconds the restore took.
    pub secs: f64,
    /// Records applied per second.
    pub records_per_sec: f64,
}

/// Brings a state directory up to date with the changelog of the group,
/// without joining the group (`siklus state restore`): to rebuild a lost
/// state directory, or to warm up a new instance before it joins. Only
/// steps whose input offsets the group committed are applied, as in a
/// restore on assignment.
pub fn restore_all(
    cfg: &crate::config::Config,
    store: Arc<Store>,
    partitions: Option<Vec<u32>>,
) -> anyhow::Result<RestoreSummary> {
    let admin: BaseConsumer = crate::kafka::client_config(cfg)
        .set("group.id", &cfg.processor.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a client for the committed offsets")?;
    let md = admin
        .fetch_metadata(Some(&cfg.changelog_topic()), Duration::from_secs(10))
        .context("changelog metadata")?;
    let count = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len() as u32);
    anyhow::ensure!(
        count > 0,
        "the changelog topic {} does not exist",
        cfg.changelog_topic()
    );
    let wanted: Vec<u32> = partitions.unwrap_or_else(|| (0..count).collect());
    let mut restores = Restores::new(
        crate::kafka::client_config(cfg),
        cfg.changelog_topic(),
        cfg.topics.input.clone(),
        cfg.processor.resume_rewind,
        cfg.processing.guarantee == crate::config::Guarantee::ExactlyOnce,
        None,
    )?;
    for p in &wanted {
        restores.add(*p, Offset::Beginning);
    }
    let metrics = Metrics::default();
    let config = cfg.engine(true);
    let started = Instant::now();
    let mut records = 0;
    while !restores.is_empty() {
        for done in restores.step(&store, &config, &admin, &metrics, &[])? {
            records += done.records;
        }
    }
    store.flush()?;
    let secs = started.elapsed().as_secs_f64();
    Ok(RestoreSummary {
        partitions: wanted,
        records,
        secs,
        records_per_sec: records as f64 / secs.max(1e-9),
    })
}
