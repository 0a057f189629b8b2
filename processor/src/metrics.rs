//! Process metrics: counters and gauges shared by the runtime, the HTTP
//! endpoint and the OpenTelemetry exporter, rendered in the Prometheus text
//! format. Labels never carry customer ids: the per-partition families carry
//! `partition`, the transition counts `dimension` and `to_stage`, the window
//! gauges `granularity`, and the cohort heatmap `granularity`, `cohort` (a
//! date) and `period` (a bounded number of recent cohorts and periods).
//!
//! Every family is listed by [`Metrics::families`], whether or not it has a
//! sample yet, so the Prometheus text and the OTLP instruments always carry
//! the same names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::aggregate::{Aggregate, CohortCell};
use crate::engine::Counters;
use crate::model::StageTransition;
use crate::time::{format_rfc3339, Granularity};

/// Cohorts per granularity kept for the `siklus_cohort_retention` heatmap.
pub const HEATMAP_COHORTS: usize = 12;
/// Periods (offsets from the cohort's window) kept for the heatmap.
pub const HEATMAP_PERIODS: i64 = 12;

/// Live figures of one input partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionFigures {
    /// Records read from the input topic.
    pub records_in: u64,
    /// Input offsets skipped by the broker between two records.
    pub offset_gaps: u64,
    /// Next offset to process (0 before the first record).
    pub position: i64,
    /// The broker's high watermark, from the consumer statistics (-1 unknown).
    pub high_watermark: i64,
    /// Event-time watermark (epoch ms), if any.
    pub watermark: Option<i64>,
    /// Records read to rebuild the state of a partition assigned with its
    /// local state missing or behind: changelog records (or, with the
    /// changelog off, input records from the start of the partition).
    pub restored_records: u64,
    /// Records left to read before that rebuild is done (0 when restored).
    pub restore_remaining: u64,
    /// Restore speed of the running restore (records/s, 0 when none runs).
    pub restore_rate: u64,
    /// Estimated seconds left of the running restore.
    pub restore_eta_secs: u64,
    /// Restores from the changelog completed.
    pub restores: u64,
    /// Whether the partition is assigned to this instance.
    pub assigned: bool,
}

/// What the merge stage of this instance last closed: the gauges of the
/// latest complete window per granularity and the recent cohort cells.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LatestWindows {
    /// The latest closed window per granularity.
    pub aggregates: BTreeMap<Granularity, Aggregate>,
    /// Retention of recent cohorts: (granularity, cohort start, period) to cell.
    pub cohorts: BTreeMap<(Granularity, i64, i64), CohortCell>,
}

impl LatestWindows {
    /// Takes the windows and cells a merge step emitted (complete ones only).
    pub fn absorb(&mut self, aggs: &[Aggregate], cells: &[CohortCell]) {
        for a in aggs.iter().filter(|a| a.complete) {
            let newer = self
                .aggregates
                .get(&a.granularity)
                .is_none_or(|old| old.window_start <= a.window_start);
            if newer {
                self.aggregates.insert(a.granularity, a.clone());
            }
        }
        for c in cells.iter().filter(|c| c.complete) {
            if c.offset < HEATMAP_PERIODS {
                self.cohorts
                    .insert((c.granularity, c.cohort_start, c.offset), c.clone());
            }
        }
        // Keep the most recent cohorts of each granularity only.
        for g in Granularity::ALL {
            let cohorts: std::collections::BTreeSet<i64> = self
                .cohorts
                .keys()
                .filter(|k| k.0 == g)
                .map(|k| k.1)
                .collect();
            let drop = cohorts.len().saturating_sub(HEATMAP_COHORTS);
            for old in cohorts.into_iter().take(drop) {
                self.cohorts.retain(|k, _| !(k.0 == g && k.1 == old));
            }
        }
    }
}

/// Counters and gauges of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Transitions delivered.
    pub transitions_out: AtomicU64,
    /// Aggregates delivered by the merge stage of this instance.
    pub aggregates_out: AtomicU64,
    /// Cohort cells delivered by the merge stage of this instance.
    pub cohort_cells_out: AtomicU64,
    /// Steps whose outputs could not be delivered and were redone.
    pub failed_steps: AtomicU64,
    /// Consumer errors.
    pub consumer_errors: AtomicU64,
    /// Output records the broker can never accept (too large, not
    /// authorised) that were skipped under `production_error_policy = "skip"`.
    pub production_skipped: AtomicU64,
    /// Dead letters whose original value was cut to fit the broker's limit.
    pub dead_letters_truncated: AtomicU64,
    /// Schema Registry calls that failed (unreachable, 5xx) and were retried.
    pub registry_retries: AtomicU64,
    /// Input partitions assigned to this instance.
    pub assigned: AtomicU64,
    /// Bytes of the state store on disk and in memtables.
    pub state_size_bytes: AtomicU64,
    /// RocksDB's estimate of the live data in the state store.
    pub state_live_bytes: AtomicU64,
    /// Profiles in the hot table (`processor.state_cache_bytes`).
    pub cache_profiles: AtomicU64,
    /// Estimated bytes of the profiles in the hot table.
    pub cache_bytes: AtomicU64,
    /// Whether the processor consumes with every assigned partition restored
    /// (for `/readyz`).
    pub ready: AtomicBool,
    /// Whether the input consumer reaches no broker (librdkafka reported
    /// all brokers down, and its statistics show none up since). Not ready
    /// meanwhile.
    pub brokers_down: AtomicBool,
    /// Whether this instance runs the merge stage.
    pub merge_owner: AtomicBool,
    /// Per-partition figures.
    partitions: Mutex<BTreeMap<u32, PartitionFigures>>,
    /// Engine counters per partition (the latest copy).
    engine: Mutex<BTreeMap<u32, Counters>>,
    /// Delivered transitions by (dimension, to_stage).
    by_stage: Mutex<BTreeMap<(&'static str, crate::model::Name), u64>>,
    /// The latest windows closed by the merge stage of this instance.
    latest: Mutex<LatestWindows>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prometheus metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic count.
    Counter,
    /// Value that goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// One metric family with its current samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Prometheus name (counters end in `_total`).
    pub name: &'static str,
    /// One-line description.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Samples: labels and value.
    pub samples: Vec<(Labels, f64)>,
}

fn family(name: &'static str, help: &'static str, kind: Kind) -> Family {
    Family {
        name,
        help,
        kind,
        samples: Vec::new(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn date(ms: i64) -> String {
    format_rfc3339(ms).chars().take(10).collect()
}

impl Metrics {
    /// Updates one partition's figures.
    pub fn with_partition(&self, partition: u32, f: impl FnOnce(&mut PartitionFigures)) {
        let mut parts = lock(&self.partitions);
        f(parts.entry(partition).or_insert(PartitionFigures {
            high_watermark: -1,
            ..Default::default()
        }));
    }

    /// A copy of the per-partition figures.
    pub fn partitions(&self) -> BTreeMap<u32, PartitionFigures> {
        lock(&self.partitions).clone()
    }

    /// Copies the engine's per-partition counters.
    pub fn set_counters(&self, counters: &BTreeMap<u32, Counters>) {
        let mut c = lock(&self.engine);
        c.clone_from(counters);
    }

    /// Counts delivered transitions by dimension and target stage.
    pub fn count_transitions(&self, transitions: &[StageTransition]) {
        if transitions.is_empty() {
            return;
        }
        self.transitions_out
            .fetch_add(transitions.len() as u64, Ordering::Relaxed);
        let mut m = lock(&self.by_stage);
        for t in transitions {
            // Found without building a key: stage names are borrowed.
            match m.get_mut(&(t.dimension.as_str(), t.to_stage.clone())) {
                Some(n) => *n += 1,
                None => {
                    m.insert((t.dimension.as_str(), t.to_stage.clone()), 1);
                }
            }
        }
    }

    /// Records the windows and cells the merge stage delivered.
    pub fn absorb_windows(&self, aggs: &[Aggregate], cells: &[CohortCell]) {
        self.aggregates_out
            .fetch_add(aggs.len() as u64, Ordering::Relaxed);
        self.cohort_cells_out
            .fetch_add(cells.len() as u64, Ordering::Relaxed);
        lock(&self.latest).absorb(aggs, cells);
    }

    /// The latest windows closed by the merge stage of this instance.
    pub fn latest(&self) -> LatestWindows {
        lock(&self.latest).clone()
    }

    /// Replaces the latest windows (the merge stage restored from the store).
    pub fn set_latest(&self, latest: LatestWindows) {
        *lock(&self.latest) = latest;
    }

    /// Every metric family with its samples; the same names in every call.
    pub fn families(&self) -> Vec<Family> {
        self.families_at(now_ms())
    }

    /// [`Metrics::families`] with `now` (epoch ms) for the watermark delay.
    pub fn families_at(&self, now: i64) -> Vec<Family> {
        use Kind::{Counter, Gauge};
        let parts = self.partitions();
        let engine = lock(&self.engine).clone();
        let mut out = Vec::new();

        // Per partition, from the engine.
        type Pick = fn(&Counters) -> u64;
        let engine_families: [(&'static str, &'static str, Pick); 10] = [
            (
                "siklus_events_applied_total",
                "Events applied to profiles",
                |c| c.events,
            ),
            (
                "siklus_transitions_emitted_total",
                "Stage transitions emitted by the engine (a redone step counts again)",
                |c| c.transitions,
            ),
            (
                "siklus_dead_letters_total",
                "Records sent to the dead-letter topic",
                |c| c.dead_letters,
            ),
            (
                "siklus_duplicates_total",
                "Duplicate event ids ignored",
                |c| c.duplicates,
            ),
            (
                "siklus_late_events_total",
                "Events older than the partition watermark",
                |c| c.late_events,
            ),
            (
                "siklus_unknown_event_types_total",
                "Events of unknown types",
                |c| c.unknown_types,
            ),
            (
                "siklus_skipped_offsets_total",
                "Records skipped as already applied",
                |c| c.skipped_offsets,
            ),
            (
                "siklus_timers_fired_total",
                "Inactivity timers fired by the watermark",
                |c| c.timers_fired,
            ),
            ("siklus_erasures_total", "Customers erased", |c| c.erasures),
            (
                "siklus_expired_profiles_total",
                "Churned profiles deleted by the event-time expiry",
                |c| c.expired,
            ),
        ];
        for (name, help, pick) in engine_families {
            let mut f = family(name, help, Counter);
            for (p, c) in &engine {
                f.samples
                    .push((vec![("partition", p.to_string())], pick(c) as f64));
            }
            out.push(f);
        }

        // Per partition, from the runtime.
        let mut records = family(
            "siklus_records_in_total",
            "Records read from the input topic",
            Counter,
        );
        let mut gaps = family(
            "siklus_input_offset_gaps_total",
            "Input offsets never delivered between two records (transaction markers or a broker fault)",
            Counter,
        );
        let mut restored = family(
            "siklus_restored_records_total",
            "Records read to rebuild a partition's state: from the changelog, or from the input when the changelog is off",
            Counter,
        );
        let mut restores = family(
            "siklus_changelog_restores_total",
            "Restores of a partition's state from the changelog completed",
            Counter,
        );
        let mut rate = family(
            "siklus_restore_records_per_second",
            "Speed of the running restore of a partition (0: none runs)",
            Gauge,
        );
        let mut eta = family(
            "siklus_restore_eta_seconds",
            "Estimated time left of the running restore of a partition",
            Gauge,
        );
        let mut remaining = family(
            "siklus_restore_remaining_records",
            "Records left before a partition's state is rebuilt (0: restored)",
            Gauge,
        );
        let mut lag = family(
            "siklus_consumer_lag",
            "Records between the partition's high watermark and the next offset to process",
            Gauge,
        );
        let mut position = family(
            "siklus_partition_position",
            "Next input offset to process",
            Gauge,
        );
        let mut wm = family(
            "siklus_watermark_seconds",
            "Event-time watermark of the partition (Unix seconds)",
            Gauge,
        );
        let mut delay = family(
            "siklus_watermark_delay_seconds",
            "Wall clock minus the partition's event-time watermark",
            Gauge,
        );
        for (p, f) in &parts {
            let l = || vec![("partition", p.to_string())];
            records.samples.push((l(), f.records_in as f64));
            gaps.samples.push((l(), f.offset_gaps as f64));
            restored.samples.push((l(), f.restored_records as f64));
            restores.samples.push((l(), f.restores as f64));
            if !f.assigned {
                continue;
            }
            remaining.samples.push((l(), f.restore_remaining as f64));
            rate.samples.push((l(), f.restore_rate as f64));
            eta.samples.push((l(), f.restore_eta_secs as f64));
            position.samples.push((l(), f.position as f64));
            if f.high_watermark >= 0 {
                lag.samples
                    .push((l(), (f.high_watermark - f.position).max(0) as f64));
            }
            if let Some(w) = f.watermark {
                wm.samples.push((l(), w as f64 / 1000.0));
                delay.samples.push((l(), (now - w) as f64 / 1000.0));
            }
        }
        out.extend([
            records, gaps, restored, restores, remaining, rate, eta, lag, position, wm, delay,
        ]);

        let mut by_stage = family(
            "siklus_transitions_out_total",
            "Stage transitions delivered, by dimension and target stage",
            Counter,
        );
        for ((d, s), n) in lock(&self.by_stage).iter() {
            by_stage.samples.push((
                vec![("dimension", d.to_string()), ("to_stage", s.to_string())],
                *n as f64,
            ));
        }
        out.push(by_stage);

        let scalars: [(&'static str, &'static str, Kind, f64); 15] = [
            (
                "siklus_aggregates_out_total",
                "Aggregates delivered by the merge stage",
                Counter,
                self.aggregates_out.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_cohort_cells_out_total",
                "Cohort cells delivered by the merge stage",
                Counter,
                self.cohort_cells_out.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_failed_steps_total",
                "Steps redone after an undelivered output",
                Counter,
                self.failed_steps.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_consumer_errors_total",
                "Consumer errors",
                Counter,
                self.consumer_errors.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_production_skipped_total",
                "Output records the broker can never accept, skipped by the production error policy",
                Counter,
                self.production_skipped.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_dead_letters_truncated_total",
                "Dead letters whose original value was cut to the size limit",
                Counter,
                self.dead_letters_truncated.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_schema_registry_retries_total",
                "Schema Registry calls that failed and were retried",
                Counter,
                self.registry_retries.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_assigned_partitions",
                "Input partitions assigned",
                Gauge,
                self.assigned.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_state_size_bytes",
                "State store size: SST files and memtables",
                Gauge,
                self.state_size_bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_state_live_data_bytes",
                "State store live data (RocksDB estimate)",
                Gauge,
                self.state_live_bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_state_cache_profiles",
                "Profiles held in memory (the hot table)",
                Gauge,
                self.cache_profiles.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_state_cache_bytes",
                "Estimated bytes of the profiles held in memory (bounded by processor.state_cache_bytes)",
                Gauge,
                self.cache_bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "siklus_ready",
                "1 when consuming with every assigned partition restored",
                Gauge,
                u8::from(self.ready.load(Ordering::Relaxed)) as f64,
            ),
            (
                "siklus_brokers_reachable",
                "1 while the input consumer is connected to a broker",
                Gauge,
                u8::from(!self.brokers_down.load(Ordering::Relaxed)) as f64,
            ),
            (
                "siklus_merge_owner",
                "1 when this instance runs the merge stage",
                Gauge,
                u8::from(self.merge_owner.load(Ordering::Relaxed)) as f64,
            ),
        ];
        for (name, help, kind, v) in scalars {
            let mut f = family(name, help, kind);
            f.samples.push((Vec::new(), v));
            out.push(f);
        }

        // The latest closed windows of the merge stage.
        let latest = self.latest();
        let mut window_start = family(
            "siklus_window_start_seconds",
            "Start of the latest closed window (Unix seconds)",
            Gauge,
        );
        let mut churn = family(
            "siklus_churn_rate",
            "Churn rate of the latest closed window",
            Gauge,
        );
        let mut retention = family(
            "siklus_retention_rate",
            "Retention rate of the latest closed window",
            Gauge,
        );
        let mut active = family(
            "siklus_window_active_customers",
            "Active customers in the latest closed window",
            Gauge,
        );
        let mut new = family(
            "siklus_window_new_customers",
            "New customers in the latest closed window",
            Gauge,
        );
        let mut churned = family(
            "siklus_window_churned_customers",
            "Customers who churned in the latest closed window",
            Gauge,
        );
        for (g, a) in &latest.aggregates {
            let l = || vec![("granularity", g.as_str().to_string())];
            window_start
                .samples
                .push((l(), a.window_start as f64 / 1000.0));
            if let Some(r) = a.churn_rate {
                churn.samples.push((l(), r));
            }
            if let Some(r) = a.retention_rate {
                retention.samples.push((l(), r));
            }
            active.samples.push((l(), a.active as f64));
            new.samples.push((l(), a.new as f64));
            churned.samples.push((l(), a.churned as f64));
        }
        let mut cohort = family(
            "siklus_cohort_retention",
            "Share of an acquisition cohort active `period` windows after its own (recent cohorts)",
            Gauge,
        );
        for ((g, start, offset), c) in &latest.cohorts {
            if c.cohort_size == 0 {
                continue;
            }
            cohort.samples.push((
                vec![
                    ("granularity", g.as_str().to_string()),
                    ("cohort", date(*start)),
                    ("period", offset.to_string()),
                ],
                c.retained as f64 / c.cohort_size as f64,
            ));
        }
        out.extend([window_start, churn, retention, active, new, churned, cohort]);
        out
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        render_families(&self.families())
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders families in the Prometheus text format (version 0.0.4).
pub fn render_families(families: &[Family]) -> String {
    let mut s = String::new();
    for f in families {
        let _ = writeln!(s, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(s, "# TYPE {} {}", f.name, f.kind.as_str());
        for (labels, v) in &f.samples {
            s.push_str(f.name);
            if !labels.is_empty() {
                s.push('{');
                for (i, (k, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    let _ = write!(s, "{k}=\"{}\"", escape(val));
                }
                s.push('}');
            }
            let _ = writeln!(s, " {v}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_partition_labels() {
        let m = Metrics::default();
        let mut c = BTreeMap::new();
        c.insert(
            3,
            Counters {
                dead_letters: 2,
                ..Default::default()
            },
        );
        m.set_counters(&c);
        m.with_partition(3, |p| {
            p.assigned = true;
            p.records_in = 7;
            p.position = 7;
            p.high_watermark = 10;
            p.watermark = Some(1_000);
        });
        let text = render_families(&m.families_at(4_000));
        assert!(text.contains("# TYPE siklus_dead_letters_total counter\n"));
        assert!(text.contains("siklus_dead_letters_total{partition=\"3\"} 2\n"));
        assert!(text.contains("siklus_records_in_total{partition=\"3\"} 7\n"));
        assert!(text.contains("siklus_consumer_lag{partition=\"3\"} 3\n"));
        assert!(text.contains("siklus_watermark_delay_seconds{partition=\"3\"} 3\n"));
        assert!(text.contains("siklus_ready 0\n"));
        m.cache_bytes.store(4096, Ordering::Relaxed);
        let text = render_families(&m.families_at(4_000));
        assert!(text.contains("# TYPE siklus_state_cache_bytes gauge\n"));
        assert!(text.contains("siklus_state_cache_bytes 4096\n"));
        assert!(text.contains("siklus_state_cache_profiles 0\n"));
    }

    #[test]
    fn the_same_families_with_or_without_samples() {
        let names = |m: &Metrics| -> Vec<&'static str> {
            m.families_at(0).iter().map(|f| f.name).collect()
        };
        let empty = Metrics::default();
        let full = Metrics::default();
        full.with_partition(0, |p| p.assigned = true);
        assert_eq!(names(&empty), names(&full));
    }

    #[test]
    fn latest_windows_keep_recent_cohorts_only() {
        let mut l = LatestWindows::default();
        let week = crate::time::DAY_MS * 7;
        let cells: Vec<CohortCell> = (0..20)
            .map(|i| CohortCell {
                granularity: Granularity::Week,
                cohort_start: i * week,
                offset: 20 - i,
                cohort_size: 4,
                retained: 1,
                complete: true,
            })
            .collect();
        l.absorb(&[], &cells);
        let cohorts: std::collections::BTreeSet<i64> = l.cohorts.keys().map(|k| k.1).collect();
        assert!(cohorts.len() <= HEATMAP_COHORTS);
        assert!(l.cohorts.keys().all(|k| k.2 < HEATMAP_PERIODS));
    }
}
