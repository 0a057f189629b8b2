//! Stage 1: the per-partition aggregator.

use serde::{Deserialize, Serialize};

use super::windows::Windows;
use super::{Partial, WindowCounts};
use crate::model::{Dimension, LifecycleClass, Signal, StageTransition, TimedSignal};
use crate::time::Granularity;

/// Per-window counts of one input partition, closed as its watermark advances.
///
/// Persist it with postcard together with the partition's state; it holds only
/// the windows the partition has not closed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAggregator {
    partition: u32,
    /// The partition watermark: every window ending at or before it is closed.
    watermark: Option<i64>,
    /// Open windows with data, by (granularity, window start).
    windows: Windows,
    /// Events whose day window was already closed (for metrics).
    late_events: u64,
}

/// Whether an activity stage counts as a live customer (active or at_risk).
fn live(stage: Option<&str>) -> bool {
    matches!(stage, Some("active") | Some("at_risk"))
}

impl PartitionAggregator {
    /// An empty aggregator for input partition `partition`.
    pub fn new(partition: u32) -> Self {
        PartitionAggregator {
            partition,
            watermark: None,
            windows: Windows::default(),
            late_events: 0,
        }
    }

    /// The input partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The partition watermark passed to the last [`advance`](Self::advance),
    /// `None` before the first one.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Start of the first window of `g` that is still open here (the one that
    /// contains the watermark); `None` before the first advance.
    pub fn frontier(&self, g: Granularity) -> Option<i64> {
        self.watermark.map(|w| g.start(w))
    }

    /// Events that arrived for an already closed day window.
    pub fn late_events(&self) -> u64 {
        self.late_events
    }

    /// Whether the window of `g` starting at `start` is closed here.
    fn closed(&self, g: Granularity, start: i64) -> bool {
        self.watermark.is_some_and(|w| g.end(start) <= w)
    }

    /// Applies `f` to the counts of the window, unless it is closed (counts of
    /// a closed window are dropped).
    fn count(&mut self, g: Granularity, start: i64, f: impl FnOnce(&mut WindowCounts)) {
        if !self.closed(g, start) {
            f(self.windows.entry(g, start));
        }
    }

    /// Applies `f` to the window, or to the earliest open window of `g` when it
    /// is closed (gauges must not be lost).
    fn gauge(&mut self, g: Granularity, start: i64, f: impl FnOnce(&mut WindowCounts)) {
        let target = match self.watermark {
            Some(w) if g.end(start) <= w => g.start(w),
            _ => start,
        };
        f(self.windows.entry(g, target));
    }

    /// Counts one applied input event at event time `t`. In a granularity where
    /// the window of `t` is already closed here, the event is late: it counts
    /// as one `late_events` in the earliest open window of that granularity
    /// instead.
    pub fn record_event(&mut self, t: i64) {
        for g in Granularity::ALL {
            let start = g.start(t);
            if self.closed(g, start) {
                if g == Granularity::Day {
                    self.late_events += 1;
                }
                self.gauge(g, start, |c| c.late_events += 1);
            } else {
                self.count(g, start, |c| c.events += 1);
            }
        }
    }

    /// Counts what the fold produced for one event or one timer firing.
    pub fn record(&mut self, transitions: &[StageTransition], signals: &[TimedSignal]) {
        for tr in transitions {
            self.record_transition(tr);
        }
        for s in signals {
            self.record_signal(s);
        }
    }

    fn record_transition(&mut self, tr: &StageTransition) {
        if tr.dimension != Dimension::Activity {
            return;
        }
        let from = tr.from_stage.as_deref();
        let to = tr.to_stage.as_ref();
        let delta = i64::from(live(Some(to))) - i64::from(live(from));
        let reactivated = to == "active" && matches!(from, Some("at_risk") | Some("churned"));
        for g in Granularity::ALL {
            let start = g.start(tr.occurred_at);
            match to {
                "at_risk" => self.count(g, start, |c| c.at_risk_entered += 1),
                "churned" => self.count(g, start, |c| c.churned += 1),
                _ if reactivated => self.count(g, start, |c| c.reactivated += 1),
                _ => {}
            }
            if delta != 0 {
                self.gauge(g, start, |c| c.live_delta += delta);
            }
        }
    }

    fn record_signal(&mut self, s: &TimedSignal) {
        match &s.signal {
            Signal::Active {
                granularity,
                window,
                class,
                cohort,
            } => {
                let g = *granularity;
                let cohort = if g == Granularity::Day { None } else { *cohort };
                let class = *class;
                self.count(g, *window, |c| {
                    c.active += 1;
                    match class {
                        LifecycleClass::New => c.new += 1,
                        LifecycleClass::Returning => c.returning += 1,
                        LifecycleClass::Resurrecting => c.resurrecting += 1,
                    }
                    if let Some(cohort) = cohort {
                        *c.cohort_active.entry(cohort).or_default() += 1;
                    }
                });
            }
            Signal::Referred {
                granularity,
                window,
            } => self.count(*granularity, *window, |c| c.referrers += 1),
            Signal::CohortJoined { week, month } => {
                for (g, cohort) in [(Granularity::Week, *week), (Granularity::Month, *month)] {
                    self.gauge(g, g.start(s.at), |c| {
                        *c.cohort_joins.entry(cohort).or_default() += 1;
                    });
                }
            }
            Signal::Csat { satisfied } => {
                let sat = u64::from(*satisfied);
                self.each(s.at, |c| {
                    c.csat_answers += 1;
                    c.csat_satisfied += sat;
                });
            }
            Signal::Nps { score } => {
                let score = *score;
                self.each(s.at, |c| {
                    c.nps_answers += 1;
                    if score >= 9 {
                        c.nps_promoters += 1;
                    } else if score <= 6 {
                        c.nps_detractors += 1;
                    }
                });
            }
            Signal::Impression => self.each(s.at, |c| c.impressions += 1),
            Signal::Click => self.each(s.at, |c| c.clicks += 1),
            Signal::Order {
                amount_minor,
                currency,
            } => self.each(s.at, |c| {
                c.orders += 1;
                let r = c.revenue.entry(currency.clone()).or_default();
                *r = r.saturating_add(*amount_minor);
            }),
            Signal::RevenueDelta {
                amount_minor,
                currency,
            } => {
                for g in Granularity::ALL {
                    self.gauge(g, g.start(s.at), |c| {
                        let r = c.revenue_delta.entry(currency.clone()).or_default();
                        *r = r.saturating_add(*amount_minor);
                    });
                }
            }
            Signal::PayingDelta(d) => {
                let d = i64::from(*d);
                for g in Granularity::ALL {
                    self.gauge(g, g.start(s.at), |c| c.paying_delta += d);
                }
            }
            Signal::LiveDelta(d) => {
                let d = i64::from(*d);
                for g in Granularity::ALL {
                    self.gauge(g, g.start(s.at), |c| c.live_delta += d);
                }
            }
        }
    }

    /// Applies a count to the window containing `t` in every granularity.
    fn each(&mut self, t: i64, f: impl Fn(&mut WindowCounts)) {
        for g in Granularity::ALL {
            self.count(g, g.start(t), &f);
        }
    }

    /// The partition watermark advanced to `watermark`: emits a
    /// [`Partial::Window`] for every window with data that ends at or before it
    /// (days, then weeks, then months, each in window order), then a
    /// [`Partial::Progress`]. A watermark below the current one is ignored and
    /// emits nothing.
    pub fn advance(&mut self, watermark: i64, out: &mut Vec<Partial>) {
        if self.watermark.is_some_and(|w| watermark < w) {
            return;
        }
        self.watermark = Some(watermark);
        let closing = self
            .windows
            .drain_prefix(|g, start| g.end(start) <= watermark);
        self.emit(closing, out);
        out.push(Partial::Progress {
            partition: self.partition,
            watermark,
        });
    }

    /// End of a bounded input: emits every window that still has data, in the
    /// same order as [`advance`](Self::advance), without a progress marker.
    /// Follow it with [`Merger::finish`](super::Merger::finish).
    pub fn flush(&mut self, out: &mut Vec<Partial>) {
        let all = self.windows.drain_prefix(|_, _| true);
        self.emit(all, out);
    }

    fn emit(&self, closed: Vec<(Granularity, i64, WindowCounts)>, out: &mut Vec<Partial>) {
        for (granularity, start, counts) in closed {
            if !counts.is_empty() {
                out.push(Partial::Window {
                    partition: self.partition,
                    granularity,
                    start,
                    counts,
                });
            }
        }
    }
}
