//! Bounded replays from Kafka history: every partition of the input topic
//! between two positions, through the same engine with its own state dir,
//! without a consumer group (nothing the live group sees is touched).
//! Outputs go to files or to topics named by the user.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::aggregate::Merger;
use crate::codec::DecodeError;
use crate::config::Config;
use crate::engine::Outputs;
use crate::replay::{commit_checkpoint, FileOutputs, ReplaySummary, WatermarkPolicy};

/// A position in every partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The first retained record.
    Earliest,
    /// The end of each partition when the replay starts.
    LatestAtStart,
    /// The first record with a timestamp at or after this instant (epoch ms).
    Timestamp(i64),
    /// Explicit offsets per partition (partitions not named: earliest for a
    /// start, latest-at-start for an end).
    Offsets(BTreeMap<i32, i64>),
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => return Ok(Position::Earliest),
            "latest-at-start" | "latest" => return Ok(Position::LatestAtStart),
            _ => {}
        }
        if let Some(t) = crate::time::parse_rfc3339(s) {
            return Ok(Position::Timestamp(t));
        }
        let mut m = BTreeMap::new();
        for part in s.split(',') {
            let (p, o) = part
                .split_once(':')
                .ok_or_else(|| format!("{s:?}: expected earliest, latest-at-start, an RFC 3339 time, or PARTITION:OFFSET,…"))?;
            let p: i32 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad partition in {part:?}"))?;
            let o: i64 = o
                .trim()
                .parse()
                .map_err(|_| format!("bad offset in {part:?}"))?;
            if p < 0 || o < 0 {
                return Err(format!("negative partition or offset in {part:?}"));
            }
            m.insert(p, o);
        }
        Ok(Position::Offsets(m))
    }
}

/// Options of a replay from a topic.
#[derive(Debug, Clone)]
pub struct TopicReplay {
    /// Where to start in every partition.
    pub start: Position,
    /// Where to stop (exclusive) in every partition.
    pub end: Position,
    /// Time policy.
    pub watermark: WatermarkPolicy,
    /// Advance event time to this instant at the end.
    pub until: Option<i64>,
    /// Files output directory; when `None`, outputs go to the topics of the
    /// configuration (`topics.transitions`, …), which the caller should have
    /// renamed for a backfill.
    pub output_dir: Option<std::path::PathBuf>,
    /// State directory: an existing one resumes an interrupted replay.
    pub state_dir: Option<std::path::PathBuf>,
    /// Compare the replay's transitions with this topic instead of writing them.
    pub verify_against: Option<String>,
    /// How to report progress.
    pub progress: Progress,
}

/// Progress reporting of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Progress {
    /// A progress bar on a terminal, otherwise nothing.
    #[default]
    Auto,
    /// A bar (events per second, ETA).
    Bar,
    /// A JSON line on stderr every few seconds.
    Json,
    /// Nothing.
    None,
}

/// Reports progress: a bar for people, JSON lines for machines.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    json: bool,
    last: Instant,
    started: Instant,
}

impl Reporter {
    fn new(mode: Progress, total: u64) -> Self {
        use std::io::IsTerminal;
        let bar = match mode {
            Progress::Bar => true,
            Progress::Auto => std::io::stderr().is_terminal(),
            _ => false,
        };
        let bar = bar.then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} records  {per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Reporter {
            bar,
            json: mode == Progress::Json,
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    fn update(&mut self, records: u64, total: u64, partitions_done: usize, partitions: usize) {
        if let Some(b) = &self.bar {
            b.set_position(records);
            b.set_message(format!("{partitions_done}/{partitions} partitions done"));
        }
        if self.json && self.last.elapsed() > Duration::from_secs(2) {
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            let rate = records as f64 / secs;
            let eta = if rate > 0.0 {
                total.saturating_sub(records) as f64 / rate
            } else {
                0.0
            };
            eprintln!(
                "{}",
                serde_json::json!({"records": records, "total": total, "records_per_sec": rate.round(),
                    "eta_secs": eta.round(), "partitions_done": partitions_done, "partitions": partitions})
            );
            self.last = Instant::now();
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Transitions keyed by (customer, seq), as JSON text.
type TransitionMap = BTreeMap<(String, u64), String>;

/// Reads every transition of a topic (deduplicated by id) for `--verify-against`.
fn read_transitions(cfg: &Config, topic: &str) -> anyhow::Result<Result<TransitionMap, String>> {
    let mut cc = ClientConfig::new();
    for (k, v) in &cfg.kafka {
        cc.set(k, v);
    }
    cc.set("group.id", format!("siklus-verify-{}", std::process::id()))
        .set("enable.auto.commit", "false");
    let c: BaseConsumer = cc.create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let ends = resolve(&c, topic, parts, &Position::LatestAtStart, true)?;
    let mut tpl = TopicPartitionList::new();
    let mut done = BTreeMap::new();
    for (p, end) in &ends {
        done.insert(*p, *end == 0);
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut out = TransitionMap::new();
    let mut last = Instant::now();
    while done.values().any(|d| !d) {
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            // Ends at transaction markers (an exactly-once run wrote the
            // topic) deliver no record: the position passes them.
            for (p, pos) in consumed_to(&c, topic) {
                if ends.get(&p).is_some_and(|e| pos >= *e) {
                    done.insert(p, true);
                }
            }
            if last.elapsed() > Duration::from_secs(60) {
                bail!("{topic}: no records for 60 s before the end of the topic");
            }
            continue;
        };
        let m = m?;
        last = Instant::now();
        if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(0) {
            done.insert(m.partition(), true);
        }
        let Some(v) = m.payload() else { continue };
        let t = match crate::codec::decode_transition(v) {
            Ok(t) => t,
            Err(e) => {
                return Ok(Err(format!(
                    "{topic} partition {} offset {}: not a transition: {e}",
                    m.partition(),
                    m.offset()
                )))
            }
        };
        let text = String::from_utf8_lossy(&crate::codec::transition_json(&t)).into_owned();
        if let Some(prev) = out.insert((t.customer_id.clone(), t.seq), text.clone()) {
            if prev != text {
                return Ok(Err(format!(
                    "{topic} holds two different transitions for customer {:?} seq {}",
                    t.customer_id, t.seq
                )));
            }
        }
    }
    Ok(Ok(out))
}

fn first_difference(want: &TransitionMap, got: &TransitionMap) -> String {
    let keys: std::collections::BTreeSet<&(String, u64)> = want.keys().chain(got.keys()).collect();
    for k in keys {
        match (want.get(k), got.get(k)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                return format!(
                    "first difference at customer {:?} seq {}:\n  topic:  {}\n  replay: {}",
                    k.0,
                    k.1,
                    a.map_or("(none)", String::as_str),
                    b.map_or("(none)", String::as_str)
                )
            }
        }
    }
    "identical".to_string()
}

/// The records to read in one partition: offsets `[start, end)`, and for
/// timestamp positions, from the first record at or after `start_ts` to the
/// first record at or after `end_ts` (exclusive). Timestamps are checked on
/// the records themselves: some brokers resolve a timestamp only to a batch
/// (tansu 0.6 answers offset 0), so the broker's answer is only a lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First offset to read.
    pub start: i64,
    /// First offset not to read.
    pub end: i64,
    /// Skip records until one has a timestamp at or after this.
    pub start_ts: Option<i64>,
    /// Stop at the first record with a timestamp at or after this.
    pub end_ts: Option<i64>,
}

/// The end of a partition: one past the last record of the batch that
/// holds offset `high − 1`. On Apache Kafka that is `high` itself; a broker
/// that reports the last batch's base offset + 1 as its high watermark
/// (tansu 0.6) still yields the true end.
pub(crate) fn true_end(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    high: i64,
) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(high - 1))?;
    consumer.assign(&tpl)?;
    let mut end = high;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(if seen { 300 } else { 1000 })) {
            Some(Ok(m)) if m.partition() == partition => {
                seen = true;
                end = end.max(m.offset() + 1);
            }
            Some(_) => {}
            None if seen => break,
            None => {}
        }
    }
    consumer.unassign()?;
    Ok(end)
}

/// The position of each assigned partition of `topic`: the offset of the
/// next record it would deliver, past transaction markers and aborted
/// records already skipped.
pub(crate) fn consumed_to<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> BTreeMap<i32, i64> {
    let Ok(tpl) = consumer.position() else {
        return BTreeMap::new();
    };
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .filter_map(|e| match e.offset() {
            Offset::Offset(n) => Some((e.partition(), n)),
            _ => None,
        })
        .collect()
}

/// The end of every partition as of now: the high watermark, or with
/// `probe` the true end (see `true_end`).
///
/// `probe`: read the last batch of each partition for its true end, on a
/// broker that reports a high watermark below it (tansu 0.6; configured by
/// `processor.resume_rewind` > 0). Apache Kafka needs no probe.
pub fn ends_at_start(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    probe: bool,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    resolve_probing(
        consumer,
        topic,
        partitions,
        &Position::LatestAtStart,
        true,
        probe,
    )
}

fn resolve(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    pos: &Position,
    is_end: bool,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    resolve_probing(consumer, topic, partitions, pos, is_end, false)
}

fn resolve_probing(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    pos: &Position,
    is_end: bool,
    probe: bool,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let timeout = Duration::from_secs(10);
    let mut out = BTreeMap::new();
    let marks: BTreeMap<i32, (i64, i64)> = (0..partitions)
        .map(|p| consumer.fetch_watermarks(topic, p, timeout).map(|w| (p, w)))
        .collect::<Result<_, _>>()?;
    match pos {
        Position::Earliest => {
            for (p, (low, _)) in &marks {
                out.insert(*p, *low);
            }
        }
        Position::LatestAtStart => {
            for (p, (low, high)) in &marks {
                let end = if is_end && probe && high > low {
                    true_end(consumer, topic, *p, *high)?
                } else {
                    *high
                };
                out.insert(*p, end);
            }
        }
        Position::Offsets(m) => {
            for (p, (low, high)) in &marks {
                let default = if is_end { *high } else { *low };
                out.insert(
                    *p,
                    m.get(p)
                        .copied()
                        .unwrap_or(default)
                        .clamp(*low, (*high).max(*low)),
                );
            }
        }
        Position::Timestamp(t) => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(topic, p, Offset::Offset(*t))?;
            }
            let found = consumer.offsets_for_times(tpl, timeout)?;
            for e in found.elements() {
                let (_, high) = marks.get(&e.partition()).copied().unwrap_or((0, 0));
                let off = match e.offset() {
                    Offset::Offset(o) => o,
                    // No record at or after the time: the partition's end.
                    _ => high,
                };
                out.insert(e.partition(), off);
            }
        }
    }
    Ok(out)
}

/// Runs a bounded replay of the configured input topic.
pub fn replay_topic(cfg: &Config, opts: &TopicReplay) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let topic = cfg.topics.input.clone();
    let mut cc = ClientConfig::new();
    for (k, v) in &cfg.kafka {
        cc.set(k, v);
    }
    // A group id is required by librdkafka, but nothing is ever committed.
    cc.set("group.id", format!("siklus-replay-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let consumer: BaseConsumer = cc.create().context("creating the replay consumer")?;
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    if partitions == 0 {
        bail!("topic {topic} does not exist or has no partitions");
    }
    let starts = resolve(&consumer, &topic, partitions, &opts.start, false)?;
    let end_pos = match &opts.end {
        Position::Timestamp(_) => &Position::LatestAtStart,
        other => other,
    };
    let ends = resolve_probing(
        &consumer,
        &topic,
        partitions,
        end_pos,
        true,
        cfg.processor.resume_rewind > 0,
    )?;
    let start_ts = match opts.start {
        Position::Timestamp(t) => Some(t),
        _ => None,
    };
    let end_ts = match opts.end {
        Position::Timestamp(t) => Some(t),
        _ => None,
    };

    let (mut engine, ckpt, _tmp) =
        crate::replay::open_replay(cfg, opts.state_dir.as_deref(), opts.watermark, false)?;
    let mut decoder = crate::kafka::input_decoder(cfg)?;

    // Where each partition starts: its stored offset when resuming.
    let mut ranges: BTreeMap<i32, Range> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        engine.assign(p as u32)?;
        let start = starts.get(&p).copied().unwrap_or(0);
        let end = ends.get(&p).copied().unwrap_or(start);
        let resumed = engine.next_offset(p as u32);
        let from = resumed.map_or(start, |n| n.max(start));
        ranges.insert(
            p,
            Range {
                start: from,
                end,
                // A resumed partition is past its start already.
                start_ts: if resumed.is_some() { None } else { start_ts },
                end_ts,
            },
        );
        if from < end {
            let rewind = (from - cfg.processor.resume_rewind).max(start);
            tpl.add_partition_offset(&topic, p, Offset::Offset(rewind))?;
        }
    }
    let mut files = match &opts.output_dir {
        Some(d) => Some(FileOutputs::open(d, ckpt.as_ref().and_then(|c| c.files))?),
        None => None,
    };
    // Only compared: nothing is written anywhere.
    let sink = match (&opts.output_dir, &opts.verify_against) {
        (None, None) => Some(crate::kafka::OutputSink::new(cfg)?),
        _ => None,
    };
    engine.set_wall_clock(Some(crate::wall_clock_ms()));
    let mut merger = ckpt.map_or_else(|| Merger::new(partitions as u32), |c| c.merger);
    let mut out = Outputs::default();
    let mut aggs = Vec::new();
    let mut cells = Vec::new();
    let mut summary = ReplaySummary::default();
    let mut done: BTreeMap<i32, bool> =
        ranges.iter().map(|(p, r)| (*p, r.start >= r.end)).collect();
    if tpl.count() > 0 {
        consumer.assign(&tpl)?;
    }
    let mut last_progress = Instant::now();
    let mut last_record = Instant::now();
    let total: i64 = ranges.values().map(|r| (r.end - r.start).max(0)).sum();
    let mut since_commit = 0usize;
    let mut verify_map: Option<TransitionMap> =
        opts.verify_against.as_ref().map(|_| TransitionMap::new());
    let mut reporter = Reporter::new(opts.progress, total.max(0) as u64);
    while done.values().any(|d| !d) {
        let msg = consumer.poll(Duration::from_millis(200));
        match msg {
            None => {
                // A partition whose last offsets are transaction markers (a
                // transactional producer wrote it) or aborted records has
                // no record left to deliver: the consumer's position is past
                // its end.
                for (p, pos) in consumed_to(&consumer, &topic) {
                    if ranges.get(&p).is_some_and(|r| pos >= r.end) {
                        done.insert(p, true);
                    }
                }
                if last_record.elapsed() > Duration::from_secs(30) {
                    let behind: Vec<i32> =
                        done.iter().filter(|(_, d)| !**d).map(|(p, _)| *p).collect();
                    tracing::warn!(
                        partitions = ?behind,
                        "no records for 30 s before the end of these partitions (is the broker reachable?); waiting"
                    );
                    last_record = Instant::now();
                }
            }
            Some(Err(e)) => bail!("replay consumer: {e}"),
            Some(Ok(m)) => {
                last_record = Instant::now();
                let p = m.partition();
                let Some(range) = ranges.get(&p).copied() else {
                    continue;
                };
                let offset = m.offset();
                let ts = m.timestamp().to_millis();
                let past_end = range.end_ts.is_some_and(|e| ts.is_some_and(|t| t >= e));
                if offset >= range.end || past_end {
                    done.insert(p, true);
                    let mut one = TopicPartitionList::new();
                    one.add_partition(&topic, p);
                    let _ = consumer.pause(&one);
                    continue;
                }
                if offset < range.start || engine.skip_if_applied(p as u32, offset) {
                    continue;
                }
                if let Some(st) = range.start_ts {
                    if ts.is_some_and(|t| t < st) {
                        continue;
                    }
                    // The first record in the range: the rest of the partition follows.
                    if let Some(r) = ranges.get_mut(&p) {
                        r.start_ts = None;
                    }
                }
                let decoded = match m.payload() {
                    None => Err(DecodeError::MissingField("value")),
                    Some(b) => {
                        // An unreachable registry is waited for, never blamed on the record.
                        decoder.fetch_schema(b, &|| false)?;
                        crate::codec::check_record_key(m.key(), decoder.decode(b))
                    }
                };
                engine.process_raw(
                    p as u32,
                    offset,
                    decoded,
                    |_| crate::kafka::raw_input(&m),
                    &mut out,
                )?;
                summary.records += 1;
                since_commit += 1;
                if offset + 1 >= range.end {
                    done.insert(p, true);
                }
            }
        }
        for part in out.partials.drain(..) {
            merger.add(part);
        }
        merger.drain(&mut aggs, &mut cells);
        if let Some(m) = verify_map.as_mut() {
            collect(m, &mut out);
        }
        reporter.update(
            summary.records,
            total.max(0) as u64,
            done.values().filter(|d| **d).count(),
            done.len(),
        );
        if since_commit >= cfg.processor.max_batch || done.values().all(|d| *d) {
            emit(
                &mut files,
                sink.as_ref(),
                &mut out,
                &mut aggs,
                &mut cells,
                &mut summary,
            )?;
            commit_checkpoint(&mut engine, files.as_mut(), &merger, false)?;
            since_commit = 0;
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                records = summary.records,
                total,
                per_sec = (summary.records as f64 / secs) as u64,
                "replaying"
            );
            last_progress = Instant::now();
        }
    }
    // The end of the bounded input.
    let end = opts.until.or(match opts.watermark {
        WatermarkPolicy::Bounded => (0..partitions as u32)
            .filter_map(|p| engine.clock(p).and_then(|c| c.max_event_time))
            .max(),
        WatermarkPolicy::Live => None,
    });
    if let Some(end) = end {
        for p in 0..partitions as u32 {
            while engine.fire_timers(p, end, crate::engine::TIMER_CHUNK, &mut out)? {
                emit(
                    &mut files,
                    sink.as_ref(),
                    &mut out,
                    &mut aggs,
                    &mut cells,
                    &mut summary,
                )?;
                commit_checkpoint(&mut engine, files.as_mut(), &merger, false)?;
            }
            engine.advance_watermark(p, end, &mut out)?;
            if opts.watermark == WatermarkPolicy::Bounded {
                engine.flush_windows(p, &mut out)?;
            }
        }
    }
    for part in out.partials.drain(..) {
        merger.add(part);
    }
    match (opts.watermark, end) {
        (WatermarkPolicy::Bounded, Some(end)) => merger.finish(end, &mut aggs, &mut cells),
        _ => merger.drain(&mut aggs, &mut cells),
    }
    reporter.finish();
    if let Some(m) = verify_map.as_mut() {
        collect(m, &mut out);
    }
    emit(
        &mut files,
        sink.as_ref(),
        &mut out,
        &mut aggs,
        &mut cells,
        &mut summary,
    )?;
    commit_checkpoint(&mut engine, files.as_mut(), &merger, true)?;
    if let Some(f) = files.as_mut() {
        let s = f.summary.clone();
        summary.transitions = s.transitions;
        summary.aggregates = s.aggregates;
        summary.cohort_cells = s.cohort_cells;
        summary.dead_letters = s.dead_letters;
    }
    summary.counters = engine.counters();
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    summary.records_per_sec = summary.records as f64 / summary.elapsed_secs.max(1e-9);
    if let (Some(topic), Some(got)) = (&opts.verify_against, &verify_map) {
        summary.verify = Some(match read_transitions(cfg, topic)? {
            Ok(want) => first_difference(&want, got),
            Err(e) => e,
        });
    }
    Ok(summary)
}

/// Moves a step's transitions into the verification map.
fn collect(m: &mut TransitionMap, out: &mut Outputs) {
    for t in out.transitions.drain(..) {
        let text = String::from_utf8_lossy(&crate::codec::transition_json(&t)).into_owned();
        m.insert((t.customer_id.clone(), t.seq), text);
    }
}

#[allow(clippy::too_many_arguments)]
fn emit(
    files: &mut Option<FileOutputs>,
    sink: Option<&crate::kafka::OutputSink>,
    out: &mut Outputs,
    aggs: &mut Vec<crate::aggregate::Aggregate>,
    cells: &mut Vec<crate::aggregate::CohortCell>,
    summary: &mut ReplaySummary,
) -> anyhow::Result<()> {
    if let Some(f) = files.as_mut() {
        f.write_aggregates(aggs, cells)?;
        f.write_step(out)?;
    } else if let Some(s) = sink {
        summary.transitions += out.transitions.len() as u64;
        summary.dead_letters += out.dead_letters.len() as u64;
        summary.aggregates += aggs.len() as u64;
        summary.cohort_cells += cells.len() as u64;
        s.send_replay(out, aggs, cells)?;
        out.transitions.clear();
        out.dead_letters.clear();
    }
    aggs.clear();
    cells.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!("earliest".parse::<Position>(), Ok(Position::Earliest));
        assert_eq!(
            "latest-at-start".parse::<Position>(),
            Ok(Position::LatestAtStart)
        );
        assert_eq!(
            "2024-01-01T00:00:00Z".parse::<Position>(),
            Ok(Position::Timestamp(1_704_067_200_000))
        );
        assert_eq!(
            "0:10,3:7".parse::<Position>(),
            Ok(Position::Offsets([(0, 10), (3, 7)].into_iter().collect()))
        );
        assert!("0:-1".parse::<Position>().is_err());
        assert!("soon".parse::<Position>().is_err());
    }
}
