//! Stage 2: the global merge of the partitions' partials.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Aggregate, CohortCell, Partial, WindowCounts};
use crate::time::Granularity;

/// The running state of one granularity at the merge stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Track {
    /// Start of the first window not closed yet; `None` until the first close.
    frontier: Option<i64>,
    /// Live customers (active or at_risk) after the last closed window.
    live: i64,
    /// `active` of the last closed window (0 before the first).
    prev_active: u64,
    /// Cumulative net revenue per currency.
    net_revenue: BTreeMap<String, i64>,
    /// Cumulative paying customers.
    paying: i64,
    /// Cumulative acquisition cohort sizes, by cohort start (week and month).
    cohort_sizes: BTreeMap<i64, u64>,
}

/// Sums the partials of every input partition and emits one final
/// [`Aggregate`] per window once the job watermark has passed its end.
///
/// One instance per job; persist it with postcard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merger {
    partitions: u32,
    /// Latest progress per partition.
    progress: BTreeMap<u32, i64>,
    /// Partitions marked idle by the runtime.
    idle: BTreeSet<u32>,
    /// The job watermark as of the last drain (never goes back).
    watermark: Option<i64>,
    /// Windows with data not closed yet, by (granularity, start).
    open: BTreeMap<(Granularity, i64), WindowCounts>,
    /// Per-granularity running state (day, week, month).
    tracks: BTreeMap<Granularity, Track>,
    /// Window partials that arrived for already closed windows.
    late_partials: u64,
    /// Per (partition, granularity), the start of the last window partial
    /// absorbed. A partition emits its windows in order, so a partial at or
    /// before it is a re-emission (after a crash, outputs are at least once)
    /// and must not be counted twice.
    absorbed: BTreeMap<(u32, Granularity), i64>,
    /// Re-emitted window partials that were ignored.
    duplicate_partials: u64,
}

/// `num / den`, or `None` on a zero denominator. One division of two exact
/// integers, so the result is the same on every machine.
fn ratio(num: u64, den: u64) -> Option<f64> {
    (den != 0).then(|| num as f64 / den as f64)
}

impl Merger {
    /// A merger for a job reading `partitions` input partitions.
    pub fn new(partitions: u32) -> Self {
        Merger {
            partitions,
            progress: BTreeMap::new(),
            idle: BTreeSet::new(),
            watermark: None,
            open: BTreeMap::new(),
            tracks: BTreeMap::new(),
            late_partials: 0,
            absorbed: BTreeMap::new(),
            duplicate_partials: 0,
        }
    }

    /// Re-emitted window partials that were ignored (each counted once).
    pub fn duplicate_partials(&self) -> u64 {
        self.duplicate_partials
    }

    /// The number of input partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition count grew to `partitions` (a smaller count is ignored:
    /// Kafka partitions are never removed). The new partitions hold the job
    /// watermark back until they report progress or are marked idle.
    pub fn set_partitions(&mut self, partitions: u32) {
        self.partitions = self.partitions.max(partitions);
    }

    /// The runtime marks a partition idle (or not). An idle partition does not
    /// hold the job watermark back; a progress marker from it clears the mark.
    pub fn set_idle(&mut self, partition: u32, idle: bool) {
        if idle {
            self.idle.insert(partition);
        } else {
            self.idle.remove(&partition);
        }
    }

    /// Window partials that arrived for windows already closed here.
    pub fn late_partials(&self) -> u64 {
        self.late_partials
    }

    /// The job watermark: the minimum of the latest progress of every non-idle
    /// partition (`None` while a non-idle partition was never heard from). When
    /// every partition is idle it is the maximum progress of any of them, as in
    /// Flink. It never goes back.
    pub fn job_watermark(&self) -> Option<i64> {
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for p in 0..self.partitions {
            if self.idle.contains(&p) {
                continue;
            }
            any_active = true;
            match self.progress.get(&p) {
                Some(&w) => min = Some(min.map_or(w, |m| m.min(w))),
                None => return self.watermark,
            }
        }
        let computed = if any_active {
            min
        } else {
            self.progress.values().copied().max()
        };
        match (self.watermark, computed) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Adds one partial. Partials of different partitions may interleave in
    /// any way; those of one partition must come in the order it sent them.
    /// A partial from a partition beyond the known count grows the count.
    /// A window partial for a window already closed here is late: its counts
    /// are dropped, its events are counted as `late_events` and its gauge
    /// deltas move to the earliest open window of its granularity.
    pub fn add(&mut self, p: Partial) {
        let partition = p.partition();
        if partition >= self.partitions {
            self.partitions = partition.saturating_add(1);
        }
        match p {
            Partial::Progress {
                partition,
                watermark,
            } => {
                let w = self.progress.entry(partition).or_insert(watermark);
                *w = (*w).max(watermark);
                self.idle.remove(&partition);
            }
            Partial::Window {
                granularity,
                start,
                counts,
                ..
            } => {
                let last = self
                    .absorbed
                    .entry((partition, granularity))
                    .or_insert(i64::MIN);
                if start <= *last {
                    self.duplicate_partials += 1;
                    return;
                }
                *last = start;
                let frontier = self.tracks.get(&granularity).and_then(|t| t.frontier);
                match frontier {
                    Some(f) if start < f => {
                        // A closed window never changes: only the gauges and
                        // the fact that something was late survive.
                        self.late_partials += 1;
                        let target = self.open.entry((granularity, f)).or_default();
                        target.late_events += counts.events + counts.late_events;
                        target.absorb_gauges(&counts);
                    }
                    _ => self
                        .open
                        .entry((granularity, start))
                        .or_default()
                        .absorb(&counts),
                }
            }
        }
    }

    /// Closes every window whose end is at or before the job watermark, in
    /// order per granularity (days, then weeks, then months), with one
    /// [`Aggregate`] each (empty windows after the first window ever seen
    /// included) and, for weeks and months, the [`CohortCell`]s of the window.
    pub fn drain(&mut self, aggs: &mut Vec<Aggregate>, cells: &mut Vec<CohortCell>) {
        let Some(wm) = self.job_watermark() else {
            return;
        };
        self.watermark = Some(wm);
        for g in Granularity::ALL {
            self.close_through(g, wm, None, aggs, cells);
        }
    }

    /// End of a bounded input (a replay), after every partition's
    /// [`flush`](super::PartitionAggregator::flush) was added: closes every
    /// window that ends at or before `end_time` (or the job watermark, if
    /// later) whatever the progress, then emits the windows that still have
    /// data with `complete: false`. Anything added afterwards is late.
    pub fn finish(
        &mut self,
        end_time: i64,
        aggs: &mut Vec<Aggregate>,
        cells: &mut Vec<CohortCell>,
    ) {
        let limit = self.job_watermark().map_or(end_time, |w| w.max(end_time));
        self.watermark = Some(limit);
        for g in Granularity::ALL {
            let last = self
                .open
                .range((g, i64::MIN)..=(g, i64::MAX))
                .next_back()
                .map(|(k, _)| k.1);
            self.close_through(g, limit, last, aggs, cells);
        }
    }

    /// Closes the windows of `g` that end at or before `limit` (complete), then
    /// those up to the window starting at `incomplete_through` (incomplete;
    /// emitted only when they have data).
    fn close_through(
        &mut self,
        g: Granularity,
        limit: i64,
        incomplete_through: Option<i64>,
        aggs: &mut Vec<Aggregate>,
        cells: &mut Vec<CohortCell>,
    ) {
        let track = self.tracks.entry(g).or_default();
        let first_open = self
            .open
            .range((g, i64::MIN)..=(g, i64::MAX))
            .next()
            .map(|(k, _)| k.1);
        let Some(mut start) = track.frontier.or(first_open) else {
            return;
        };
        let mut closed_any = false;
        loop {
            let complete = g.end(start) <= limit;
            if !complete && incomplete_through.is_none_or(|l| start > l) {
                break;
            }
            let counts = self.open.remove(&(g, start));
            let emit = complete || counts.is_some();
            close_window(
                track,
                g,
                start,
                counts.unwrap_or_default(),
                complete,
                emit,
                aggs,
                cells,
            );
            closed_any = true;
            start = g.next(start);
        }
        if closed_any {
            track.frontier = Some(start);
        }
    }
}

/// Closes one window: updates the running gauges and emits its record(s).
#[allow(clippy::too_many_arguments)]
fn close_window(
    track: &mut Track,
    g: Granularity,
    start: i64,
    c: WindowCounts,
    complete: bool,
    emit: bool,
    aggs: &mut Vec<Aggregate>,
    cells: &mut Vec<CohortCell>,
) {
    let active_at_start = u64::try_from(track.live).unwrap_or(0);
    track.live = track.live.saturating_add(c.live_delta);
    let active_at_end = u64::try_from(track.live).unwrap_or(0);
    let dormant = track.prev_active.saturating_sub(c.returning);
    track.prev_active = c.active;
    for (cur, d) in &c.revenue_delta {
        let r = track.net_revenue.entry(cur.clone()).or_default();
        *r = r.saturating_add(*d);
    }
    track.paying = track.paying.saturating_add(c.paying_delta);
    for (cohort, n) in &c.cohort_joins {
        let s = track.cohort_sizes.entry(*cohort).or_default();
        *s = s.saturating_add(*n);
    }
    if !emit {
        return;
    }
    let avg_clv = if track.paying > 0 {
        let paying = track.paying as f64;
        track
            .net_revenue
            .iter()
            .map(|(cur, r)| (cur.clone(), *r as f64 / paying))
            .collect()
    } else {
        BTreeMap::new()
    };
    let retention_rate = (active_at_start != 0)
        .then(|| (active_at_end as i128 - c.new as i128) as f64 / active_at_start as f64);
    let nps = (c.nps_answers != 0).then(|| {
        ((c.nps_promoters as i128 - c.nps_detractors as i128) * 100) as f64 / c.nps_answers as f64
    });
    if g != Granularity::Day {
        for (&cohort, &size) in track.cohort_sizes.range(..=start) {
            if size == 0 {
                continue;
            }
            cells.push(CohortCell {
                granularity: g,
                cohort_start: cohort,
                offset: g.offset(cohort, start),
                cohort_size: size,
                retained: c.cohort_active.get(&cohort).copied().unwrap_or(0),
                complete,
            });
        }
    }
    aggs.push(Aggregate {
        granularity: g,
        window_start: start,
        window_end: g.end(start),
        complete,
        events: c.events,
        active: c.active,
        new: c.new,
        returning: c.returning,
        resurrecting: c.resurrecting,
        dormant,
        active_at_start,
        active_at_end,
        at_risk_entered: c.at_risk_entered,
        churned: c.churned,
        reactivated: c.reactivated,
        churn_rate: ratio(c.churned, active_at_start),
        retention_rate,
        csat: ratio(c.csat_satisfied, c.csat_answers),
        nps,
        ctr: ratio(c.clicks, c.impressions),
        referral_rate: ratio(c.referrers, c.active),
        orders: c.orders,
        revenue: c.revenue,
        avg_clv,
        late_events: c.late_events,
    });
}
