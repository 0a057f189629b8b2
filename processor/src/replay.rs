//! Bounded replays from files: JSONL or Avro container input, the very same
//! engine with a fresh state, outputs to files. No broker.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use siklus_state::Store;

use crate::aggregate::{Aggregate, CohortCell, Merger};
use crate::codec::{self, DecodeError};
use crate::config::Config;
use crate::engine::{Counters, DeadLetter, Engine, Outputs, RawInput};
use crate::model::InteractionEvent;
use crate::topic_replay::Progress;

/// How event time advances during a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatermarkPolicy {
    /// Windows and timers wait for the end of the input: aggregates are exact
    /// whatever the order of the input.
    #[default]
    Bounded,
    /// The live policy, record for record (max event time − allowed
    /// lateness): outputs equal a live run's, byte for byte.
    Live,
}

/// Options of a file replay.
#[derive(Debug, Clone)]
pub struct FileReplay {
    /// JSONL or Avro container file.
    pub input: PathBuf,
    /// Where the output files go.
    pub output_dir: PathBuf,
    /// Advance event time to this instant at the end.
    pub until: Option<i64>,
    /// Time policy.
    pub watermark: WatermarkPolicy,
    /// State directory (default: a fresh temporary one).
    pub state_dir: Option<PathBuf>,
    /// Records per commit.
    pub commit_every: usize,
    /// Open the store as a bulk load (see [`open_replay`]).
    pub bulk_load: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    /// Input records read.
    pub records: u64,
    /// Engine counters.
    pub counters: Counters,
    /// Transitions written.
    pub transitions: u64,
    /// Aggregates written.
    pub aggregates: u64,
    /// Cohort cells written.
    pub cohort_cells: u64,
    /// Dead letters written.
    pub dead_letters: u64,
    /// Wall time.
    pub elapsed_secs: f64,
    /// Input records per second of wall time.
    pub records_per_sec: f64,
    /// With `--verify-against`: `identical`, or the first difference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
}

/// The JSONL output files of a replay.
pub struct FileOutputs {
    transitions: BufWriter<File>,
    aggregates: BufWriter<File>,
    cohorts: BufWriter<File>,
    dlq: BufWriter<File>,
    /// The line being written (one buffer for every line).
    line: Vec<u8>,
    /// Whether transition lines carry the profile snapshot (`outputs.snapshot`).
    pub snapshots: bool,
    /// Counts written.
    pub summary: ReplaySummary,
}

impl FileOutputs {
    /// Creates `transitions.jsonl`, `aggregates.jsonl`, `cohorts.jsonl` and `dlq.jsonl`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        Self::open(dir, None)
    }

    /// Opens the output files: new ones, or, to resume an interrupted
    /// replay, the existing ones cut back to the lengths of its last commit.
    pub fn open(dir: &Path, resume_at: Option<[u64; 4]>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut i = 0;
        let mut f = |n: &str| -> anyhow::Result<BufWriter<File>> {
            let p = dir.join(n);
            let file = match resume_at {
                None => File::create(&p).with_context(|| format!("creating {}", p.display()))?,
                Some(lens) => {
                    let mut file = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&p)
                        .with_context(|| format!("opening {}", p.display()))?;
                    file.set_len(lens[i])?;
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))?;
                    file
                }
            };
            i += 1;
            Ok(BufWriter::with_capacity(1 << 20, file))
        };
        Ok(FileOutputs {
            transitions: f("transitions.jsonl")?,
            aggregates: f("aggregates.jsonl")?,
            cohorts: f("cohorts.jsonl")?,
            dlq: f("dlq.jsonl")?,
            line: Vec::with_capacity(1024),
            snapshots: true,
            summary: ReplaySummary::default(),
        })
    }

    /// Writes a step's transitions and dead letters (each with its own input).
    pub fn write_step(&mut self, out: &mut Outputs) -> anyhow::Result<()> {
        for t in &out.transitions {
            self.line.clear();
            codec::write_transition_json(t, self.snapshots, &mut self.line);
            self.line.push(b'\n');
            self.transitions.write_all(&self.line)?;
        }
        self.summary.transitions += out.transitions.len() as u64;
        for dl in &out.dead_letters {
            write_dead_letter(&mut self.dlq, dl)?;
        }
        self.summary.dead_letters += out.dead_letters.len() as u64;
        out.transitions.clear();
        out.dead_letters.clear();
        Ok(())
    }

    /// Writes closed windows.
    pub fn write_aggregates(
        &mut self,
        aggs: &[Aggregate],
        cells: &[CohortCell],
    ) -> anyhow::Result<()> {
        for a in aggs {
            serde_json::to_writer(&mut self.aggregates, a)?;
            self.aggregates.write_all(b"\n")?;
        }
        for c in cells {
            serde_json::to_writer(&mut self.cohorts, c)?;
            self.cohorts.write_all(b"\n")?;
        }
        self.summary.aggregates += aggs.len() as u64;
        self.summary.cohort_cells += cells.len() as u64;
        Ok(())
    }

    /// Flushes every file and returns their lengths (to commit with the state).
    pub fn checkpoint(&mut self) -> anyhow::Result<[u64; 4]> {
        self.finish()?;
        let len =
            |w: &BufWriter<File>| -> anyhow::Result<u64> { Ok(w.get_ref().metadata()?.len()) };
        Ok([
            len(&self.transitions)?,
            len(&self.aggregates)?,
            len(&self.cohorts)?,
            len(&self.dlq)?,
        ])
    }

    /// Flushes every file.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.transitions.flush()?;
        self.aggregates.flush()?;
        self.cohorts.flush()?;
        self.dlq.flush()?;
        Ok(())
    }
}

fn write_dead_letter(w: &mut impl Write, dl: &DeadLetter) -> anyhow::Result<()> {
    let raw = dl
        .record
        .payload
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let raw: &str = &raw;
    #[derive(Serialize)]
    struct Line<'a> {
        line: i64,
        kind: &'a str,
        reason: &'a str,
        raw: &'a str,
    }
    serde_json::to_writer(
        &mut *w,
        &Line {
            line: dl.offset + 1,
            kind: dl.kind,
            reason: &dl.reason,
            raw,
        },
    )?;
    w.write_all(b"\n")?;
    Ok(())
}

/// How a file replay reports its progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressOptions {
    /// A bar (on a terminal, with `auto`), JSON lines, or nothing.
    pub mode: Progress,
    /// Time between two JSON lines.
    pub interval: Duration,
}

impl Default for ProgressOptions {
    fn default() -> Self {
        ProgressOptions {
            mode: Progress::None,
            interval: Duration::from_secs(2),
        }
    }
}

/// The progress of a file replay: a bar over the input's bytes for people,
/// or JSON lines for machines, each
/// `{"records":N,"bytes":B,"total_bytes":T,"elapsed_s":S,"records_per_sec":R,"done":false}`
/// every interval, and a last one with `"done":true`.
pub struct FileProgress {
    bar: Option<indicatif::ProgressBar>,
    json: bool,
    interval: Duration,
    total_bytes: u64,
    started: Instant,
    last: Instant,
}

impl FileProgress {
    /// A reporter for an input of `total_bytes`.
    pub fn new(opts: ProgressOptions, total_bytes: u64) -> Self {
        use std::io::IsTerminal as _;
        let bar = match opts.mode {
            Progress::Bar => true,
            Progress::Auto => std::io::stderr().is_terminal(),
            Progress::Json | Progress::None => false,
        };
        let bar = bar.then(|| {
            let b = indicatif::ProgressBar::new(total_bytes);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes}  {binary_bytes_per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        let now = Instant::now();
        FileProgress {
            bar,
            json: opts.mode == Progress::Json,
            interval: opts.interval,
            total_bytes,
            started: now,
            last: now,
        }
    }

    /// The JSON line for `records` records and `bytes` bytes read.
    pub fn line(&self, records: u64, bytes: u64, done: bool) -> serde_json::Value {
        let secs = self.started.elapsed().as_secs_f64();
        serde_json::json!({
            "records": records,
            "bytes": bytes,
            "total_bytes": self.total_bytes,
            "elapsed_s": (secs * 1000.0).round() / 1000.0,
            "records_per_sec": (records as f64 / secs.max(1e-9)).round(),
            "done": done,
        })
    }

    /// Reports `records` read and `bytes` of the input consumed; cheap
    /// enough to call for every record.
    pub fn update(&mut self, records: u64, bytes: u64) {
        if records % 256 != 0 || (self.bar.is_none() && !self.json) {
            return;
        }
        if let Some(b) = &self.bar {
            b.set_position(bytes);
            b.set_message(format!("{records} records"));
        }
        if self.json && self.last.elapsed() >= self.interval {
            eprintln!("{}", self.line(records, bytes, false));
            self.last = Instant::now();
        }
    }

    /// The last report.
    pub fn finish(&self, records: u64, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_position(bytes);
            b.finish_and_clear();
        }
        if self.json {
            eprintln!("{}", self.line(records, bytes, true));
        }
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// One input record: its position in the file (line index for JSONL,
/// record index for Avro), the decoded event or why it is bad, and its raw
/// line (JSONL; empty for Avro), which its dead letter carries if the
/// record becomes one.
pub type InputRecord = (i64, Result<InteractionEvent, DecodeError>, Vec<u8>);

/// Reads input records from a JSONL or Avro container file.
pub fn read_input(path: &Path) -> anyhow::Result<Box<dyn Iterator<Item = InputRecord>>> {
    Ok(read_input_counted(path)?.0)
}

/// [`read_input`], with the count of input bytes consumed so far (exact
/// per line for JSONL; per block read for Avro), for progress reports.
pub fn read_input_counted(
    path: &Path,
) -> anyhow::Result<(Box<dyn Iterator<Item = InputRecord>>, Arc<AtomicU64>)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let consumed = Arc::new(AtomicU64::new(0));
    if n == 4 && &magic == b"Obj\x01" {
        let counting = Counting {
            inner: f,
            read: consumed.clone(),
        };
        let it = codec::read_avro_container(BufReader::new(counting))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok((
            Box::new(it.enumerate().map(|(i, r)| (i as i64, r, Vec::new()))),
            consumed,
        ));
    }
    let reader = BufReader::with_capacity(1 << 20, f);
    let count = consumed.clone();
    let it = reader
        .split(b'\n')
        .enumerate()
        .filter_map(move |(i, line)| {
            let i = i as i64;
            match line {
                Ok(mut l) => {
                    count.fetch_add(l.len() as u64 + 1, Ordering::Relaxed);
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    if l.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    let decoded = codec::decode_json_line(&l);
                    Some((i, decoded, l))
                }
                Err(e) => Some((
                    i,
                    Err(DecodeError::NotJson(format!("read error: {e}"))),
                    Vec::new(),
                )),
            }
        });
    Ok((Box::new(it), consumed))
}

/// The dead-letter record of a file input: its line, or for an Avro
/// container record (whose datum bytes the reader does not keep) the event
/// as JSON.
pub fn file_record(line: Vec<u8>, event: Option<&InteractionEvent>) -> RawInput {
    match event {
        Some(e) if line.is_empty() => RawInput::value(codec::encode_event_json(e)),
        _ => RawInput::value(line),
    }
}

/// What a replay commits with its state, so that an interrupted replay
/// started again with the same state dir continues where it stopped and
/// ends with the same outputs as an uninterrupted one.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Output file lengths at the commit (transitions, aggregates, cohorts, dlq).
    pub files: Option<[u64; 4]>,
    /// The in-process merge stage.
    pub merger: Merger,
    /// The replay reached its end.
    pub finished: bool,
}

const CHECKPOINT: &str = "replay.checkpoint";

/// Transitions a file replay holds before writing them out.
const WRITE_EVERY: usize = 4096;

/// Test hook: `SIKLUS_FAULT_ABORT_AFTER_STEPS=N` aborts the process at the
/// N-th commit, after the outputs were written and before the state was.
fn fault_injection() {
    static COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if let Some(n) = std::env::var("SIKLUS_FAULT_ABORT_AFTER_STEPS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        if COMMITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= n {
            tracing::error!("fault injection: aborting before the state write");
            std::process::abort();
        }
    }
}

/// The checkpoint of an earlier run in this state dir, if any.
pub fn load_checkpoint(engine: &Engine) -> anyhow::Result<Option<Checkpoint>> {
    match engine.store().global(CHECKPOINT)? {
        Some(b) => Ok(Some(
            crate::persist::decode(&b).map_err(|e| anyhow::anyhow!("replay checkpoint: {e}"))?,
        )),
        None => Ok(None),
    }
}

/// Flushes the files and commits the engine's step with the checkpoint, in one batch.
pub fn commit_checkpoint(
    engine: &mut Engine,
    files: Option<&mut FileOutputs>,
    merger: &Merger,
    finished: bool,
) -> anyhow::Result<()> {
    let lens = match files {
        Some(f) => Some(f.checkpoint()?),
        None => None,
    };
    fault_injection();
    let ckpt = Checkpoint {
        files: lens,
        merger: merger.clone(),
        finished,
    };
    let mut b = siklus_state::Batch::new();
    b.put_global(
        CHECKPOINT,
        &crate::persist::encode(&ckpt).map_err(|e| anyhow::anyhow!("replay checkpoint: {e}"))?,
    );
    engine.commit_with(b)?;
    tracing::debug!(
        profiles = engine.cached_profiles(),
        bytes = engine.cached_bytes(),
        "replay step committed"
    );
    Ok(())
}

/// The engine of a replay over its state dir (or a fresh temporary one,
/// returned so that it lives as long as the engine) and the checkpoint of an
/// earlier run there. A replay that already finished is not run again over
/// its own outputs.
///
/// `bulk` opens the store as a bulk load ([`siklus_state::StoreOptions::bulk_load`]):
/// for a replay whose outputs are files, cut back to the checkpoint of the
/// state when it resumes, so a crash that loses the latest batches loses
/// only work.
pub fn open_replay(
    cfg: &Config,
    state_dir: Option<&Path>,
    watermark: WatermarkPolicy,
    bulk: bool,
) -> anyhow::Result<(Engine, Option<Checkpoint>, Option<tempfile::TempDir>)> {
    let (dir, tmp): (PathBuf, _) = match state_dir {
        Some(d) => (d.to_path_buf(), None),
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let options = siklus_state::StoreOptions {
        bulk_load: bulk,
        ..cfg.store_options()
    };
    let store = Arc::new(Store::open(&dir, &options)?);
    let engine = Engine::new(store, cfg.engine(watermark == WatermarkPolicy::Live));
    let ckpt = load_checkpoint(&engine)?;
    if ckpt.as_ref().is_some_and(|c| c.finished) {
        anyhow::bail!(
            "the replay in {} already finished; use a fresh --state-dir",
            dir.display()
        );
    }
    Ok((engine, ckpt, tmp))
}

/// Runs a file replay.
pub fn replay_file(cfg: &Config, opts: &FileReplay) -> anyhow::Result<ReplaySummary> {
    replay_file_with_progress(cfg, opts, ProgressOptions::default())
}

/// Runs a file replay, reporting its progress on stderr as `progress` asks.
pub fn replay_file_with_progress(
    cfg: &Config,
    opts: &FileReplay,
    progress: ProgressOptions,
) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let (mut engine, ckpt, _tmp) = open_replay(
        cfg,
        opts.state_dir.as_deref(),
        opts.watermark,
        opts.bulk_load,
    )?;
    engine.assign(0)?;
    engine.set_wall_clock(Some(crate::wall_clock_ms()));
    let mut files = FileOutputs::open(&opts.output_dir, ckpt.as_ref().and_then(|c| c.files))?;
    files.snapshots = cfg.outputs.snapshot == crate::config::SnapshotMode::Full;
    let mut merger = ckpt.map_or_else(|| Merger::new(1), |c| c.merger);
    let mut out = Outputs::default();
    let mut aggs = Vec::new();
    let mut cells = Vec::new();
    let mut records = 0u64;
    let mut last_report = Instant::now();
    let total_bytes = std::fs::metadata(&opts.input).map_or(0, |m| m.len());
    let mut reporter = FileProgress::new(progress, total_bytes);
    let (input, consumed) = read_input_counted(&opts.input)?;
    let mut read = 0u64;
    let bytes = || consumed.load(Ordering::Relaxed).min(total_bytes);
    for (i, decoded, text) in input {
        read += 1;
        reporter.update(read, bytes());
        if engine.skip_if_applied(0, i) {
            // Resuming with an existing state dir: already applied.
            continue;
        }
        engine.process_raw(0, i, decoded, |e| file_record(text, e), &mut out)?;
        records += 1;
        if !out.partials.is_empty() {
            for p in out.partials.drain(..) {
                merger.add(p);
            }
            merger.drain(&mut aggs, &mut cells);
            files.write_aggregates(&aggs, &cells)?;
            aggs.clear();
            cells.clear();
        }
        if out.transitions.len() >= WRITE_EVERY {
            // Written as they come: a resumed replay cuts the files back to
            // the lengths of its checkpoint.
            files.write_step(&mut out)?;
        }
        if records % opts.commit_every.max(1) as u64 == 0 || engine.cache_full() {
            files.write_step(&mut out)?;
            commit_checkpoint(&mut engine, Some(&mut files), &merger, false)?;
            if last_report.elapsed() > Duration::from_secs(5) {
                tracing::info!(records, "replaying");
                last_report = Instant::now();
            }
        }
    }
    // The end of a bounded input.
    let end = opts.until.or(match opts.watermark {
        WatermarkPolicy::Bounded => engine.clock(0).and_then(|c| c.max_event_time),
        WatermarkPolicy::Live => None,
    });
    if let Some(end) = end {
        // Fire due timers in chunks so memory stays bounded.
        while engine.fire_timers(0, end, crate::engine::TIMER_CHUNK, &mut out)? {
            files.write_step(&mut out)?;
            commit_checkpoint(&mut engine, Some(&mut files), &merger, false)?;
        }
        engine.advance_watermark(0, end, &mut out)?;
        if opts.watermark == WatermarkPolicy::Bounded {
            engine.flush_windows(0, &mut out)?;
        }
    }
    for p in out.partials.drain(..) {
        merger.add(p);
    }
    match (opts.watermark, end) {
        (WatermarkPolicy::Bounded, Some(end)) => merger.finish(end, &mut aggs, &mut cells),
        _ => merger.drain(&mut aggs, &mut cells),
    }
    files.write_aggregates(&aggs, &cells)?;
    files.write_step(&mut out)?;
    commit_checkpoint(&mut engine, Some(&mut files), &merger, true)?;
    // The store wrote no log: its memtables go to disk now.
    engine.store().flush()?;
    reporter.finish(read, bytes());
    let mut summary = files.summary.clone();
    summary.records = records;
    summary.counters = engine.counters();
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    summary.records_per_sec = summary.records as f64 / summary.elapsed_secs.max(1e-9);
    Ok(summary)
}
