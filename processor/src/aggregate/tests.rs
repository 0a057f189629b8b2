//! Tests of the aggregates: hand-computed fixtures, lateness, the merge,
//! persistence and properties over simulated customers.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::model::{
    Dimension, LifecycleClass, ProfileSnapshot, Signal, StageTransition, TimedSignal,
};
use crate::time::{parse_rfc3339, Granularity, DAY_MS};

const HOUR: i64 = 3_600_000;

fn ms(s: &str) -> i64 {
    parse_rfc3339(s).unwrap()
}

fn day(d: &str) -> i64 {
    ms(&format!("{d}T00:00:00Z"))
}

fn tr(customer: &str, from: Option<&str>, to: &str, at: i64) -> StageTransition {
    StageTransition {
        transition_id: format!("{customer}-{to}-{at}"),
        customer_id: customer.into(),
        dimension: Dimension::Activity,
        from_stage: from.map(|s| s.to_string().into()),
        to_stage: to.to_string().into(),
        occurred_at: at,
        triggering_event_id: None,
        rule: "test".into(),
        seq: 0,
        profile: ProfileSnapshot::default(),
    }
}

fn ts(at: i64, signal: Signal) -> TimedSignal {
    TimedSignal { at, signal }
}

/// One `Active` signal of a customer's activity at `at`.
fn active1(
    at: i64,
    g: Granularity,
    class: LifecycleClass,
    cohort: Option<(i64, i64)>,
) -> TimedSignal {
    ts(
        at,
        Signal::Active {
            granularity: g,
            window: g.start(at),
            class,
            cohort: match g {
                Granularity::Day => None,
                Granularity::Week => cohort.map(|c| c.0),
                Granularity::Month => cohort.map(|c| c.1),
            },
        },
    )
}

/// The three `Active` signals of a customer's activity at `at`, with classes
/// per granularity (day, week, month) and the week/month cohort.
fn actives(at: i64, classes: [LifecycleClass; 3], cohort: Option<(i64, i64)>) -> Vec<TimedSignal> {
    Granularity::ALL
        .iter()
        .zip(classes)
        .map(|(&g, class)| active1(at, g, class, cohort))
        .collect()
}

fn find(aggs: &[Aggregate], g: Granularity, start: i64) -> &Aggregate {
    let hits: Vec<&Aggregate> = aggs
        .iter()
        .filter(|a| a.granularity == g && a.window_start == start)
        .collect();
    assert_eq!(hits.len(), 1, "exactly one {g:?} aggregate at {start}");
    hits[0]
}

/// One step of the input: an applied event (or a timer firing) with what the
/// fold produced for it.
#[derive(Debug, Clone)]
struct Step {
    t: i64,
    customer: usize,
    event: bool,
    transitions: Vec<StageTransition>,
    signals: Vec<TimedSignal>,
}

fn feed(agg: &mut PartitionAggregator, s: &Step) {
    if s.event {
        agg.record_event(s.t);
    }
    agg.record(&s.transitions, &s.signals);
}

// ---------------------------------------------------------------------------
// Hand-computed fixture
// ---------------------------------------------------------------------------

/// A: active Jan 1, dormant Jan 2, resurrecting Jan 3, back Feb 5.
/// B: active Jan 1 and 2, at_risk Jan 20, churned Jan 25.
/// C: active Jan 2 only, orders 1000 USD, refunds 400 on Jan 3.
fn fixture() -> Vec<Step> {
    use LifecycleClass::*;
    let cohort = Some((day("2024-01-01"), day("2024-01-01")));
    let join = |at| {
        ts(
            at,
            Signal::CohortJoined {
                week: day("2024-01-01"),
                month: day("2024-01-01"),
            },
        )
    };
    let (a1, b1) = (ms("2024-01-01T09:00:00Z"), ms("2024-01-01T10:00:00Z"));
    let (b2, c2) = (ms("2024-01-02T09:00:00Z"), ms("2024-01-02T11:00:00Z"));
    let (a3, c3) = (ms("2024-01-03T08:00:00Z"), ms("2024-01-03T12:00:00Z"));
    let b_risk = ms("2024-01-20T10:00:00Z");
    let b_churn = ms("2024-01-25T10:00:00Z");
    let a_feb = ms("2024-02-05T10:00:00Z");
    vec![
        Step {
            t: a1,
            customer: 0,
            event: true,
            transitions: vec![tr("A", None, "active", a1)],
            signals: [vec![join(a1)], actives(a1, [New; 3], cohort)].concat(),
        },
        Step {
            t: b1,
            customer: 1,
            event: true,
            transitions: vec![tr("B", None, "active", b1)],
            signals: [
                vec![join(b1), ts(b1, Signal::Impression), ts(b1, Signal::Click)],
                actives(b1, [New; 3], cohort),
            ]
            .concat(),
        },
        Step {
            t: b2,
            customer: 1,
            event: true,
            transitions: vec![],
            signals: [vec![
                active1(b2, Granularity::Day, Returning, cohort),
                ts(b2, Signal::Csat { satisfied: true }),
                ts(b2, Signal::Impression),
                ts(
                    b2,
                    Signal::Referred {
                        granularity: Granularity::Day,
                        window: day("2024-01-02"),
                    },
                ),
            ]]
            .concat(),
        },
        Step {
            t: c2,
            customer: 2,
            event: true,
            transitions: vec![tr("C", None, "active", c2)],
            signals: [
                vec![join(c2)],
                actives(c2, [New; 3], cohort),
                vec![
                    ts(
                        c2,
                        Signal::Order {
                            amount_minor: 1000,
                            currency: "USD".into(),
                        },
                    ),
                    ts(
                        c2,
                        Signal::RevenueDelta {
                            amount_minor: 1000,
                            currency: "USD".into(),
                        },
                    ),
                    ts(c2, Signal::PayingDelta(1)),
                    ts(c2, Signal::Csat { satisfied: false }),
                ],
            ]
            .concat(),
        },
        Step {
            t: a3,
            customer: 0,
            event: true,
            transitions: vec![],
            // Day: resurrecting; week and month: already active there.
            signals: vec![
                active1(a3, Granularity::Day, Resurrecting, cohort),
                ts(a3, Signal::Nps { score: 10 }),
            ],
        },
        Step {
            t: c3,
            customer: 2,
            event: true,
            transitions: vec![],
            signals: vec![
                ts(
                    c3,
                    Signal::RevenueDelta {
                        amount_minor: -400,
                        currency: "USD".into(),
                    },
                ),
                ts(c3, Signal::Nps { score: 3 }),
                ts(c3, Signal::Nps { score: 8 }),
            ],
        },
        Step {
            t: b_risk,
            customer: 1,
            event: false,
            transitions: vec![tr("B", Some("active"), "at_risk", b_risk)],
            signals: vec![],
        },
        Step {
            t: b_churn,
            customer: 1,
            event: false,
            transitions: vec![tr("B", Some("at_risk"), "churned", b_churn)],
            signals: vec![],
        },
        Step {
            t: a_feb,
            customer: 0,
            event: true,
            transitions: vec![],
            signals: actives(a_feb, [Resurrecting, Resurrecting, Returning], cohort),
        },
    ]
}

/// Runs steps through `parts` partitions (customer modulo parts), advancing
/// every partition to `advances` in turn, draining after each, then finishing.
fn run(
    steps: &[Step],
    parts: u32,
    advances: &[i64],
    end: i64,
) -> (Vec<Aggregate>, Vec<CohortCell>) {
    let mut aggs_p: Vec<PartitionAggregator> = (0..parts).map(PartitionAggregator::new).collect();
    let mut merger = Merger::new(parts);
    let (mut aggs, mut cells) = (vec![], vec![]);
    let mut i = 0;
    for &wm in advances {
        while i < steps.len() && steps[i].t < wm {
            feed(&mut aggs_p[steps[i].customer % parts as usize], &steps[i]);
            i += 1;
        }
        for p in aggs_p.iter_mut() {
            let mut out = vec![];
            p.advance(wm, &mut out);
            for x in out {
                merger.add(x);
            }
        }
        merger.drain(&mut aggs, &mut cells);
    }
    for s in &steps[i..] {
        feed(&mut aggs_p[s.customer % parts as usize], s);
    }
    for p in aggs_p.iter_mut() {
        let mut out = vec![];
        p.flush(&mut out);
        for x in out {
            merger.add(x);
        }
    }
    merger.finish(end, &mut aggs, &mut cells);
    (aggs, cells)
}

#[test]
fn fixture_day_week_month() {
    let steps = fixture();
    let (aggs, cells) = run(&steps, 1, &[day("2024-03-01")], day("2024-03-01"));
    let d = |s: &str| find(&aggs, Granularity::Day, day(s));

    let j1 = d("2024-01-01");
    assert_eq!(
        (j1.active, j1.new, j1.returning, j1.resurrecting),
        (2, 2, 0, 0)
    );
    assert_eq!(
        (j1.dormant, j1.active_at_start, j1.active_at_end),
        (0, 0, 2)
    );
    assert_eq!((j1.churn_rate, j1.retention_rate), (None, None));
    assert_eq!((j1.events, j1.ctr), (2, Some(1.0)));
    assert_eq!(j1.avg_clv, BTreeMap::new());
    assert!(j1.complete);

    let j2 = d("2024-01-02");
    assert_eq!(
        (j2.active, j2.new, j2.returning, j2.resurrecting),
        (2, 1, 1, 0)
    );
    assert_eq!(
        (j2.dormant, j2.active_at_start, j2.active_at_end),
        (1, 2, 3)
    );
    assert_eq!((j2.churn_rate, j2.retention_rate), (Some(0.0), Some(1.0)));
    assert_eq!(
        (j2.csat, j2.ctr, j2.referral_rate),
        (Some(0.5), Some(0.0), Some(0.5))
    );
    assert_eq!(j2.orders, 1);
    assert_eq!(j2.revenue, BTreeMap::from([("USD".to_string(), 1000)]));
    assert_eq!(j2.avg_clv, BTreeMap::from([("USD".to_string(), 1000.0)]));

    let j3 = d("2024-01-03");
    assert_eq!(
        (j3.active, j3.new, j3.returning, j3.resurrecting),
        (1, 0, 0, 1)
    );
    assert_eq!(
        (j3.dormant, j3.active_at_start, j3.active_at_end),
        (2, 3, 3)
    );
    // promoters 1, detractors 1 (score 3), passive 8: nps 0.
    assert_eq!(j3.nps, Some(0.0));
    assert_eq!(j3.avg_clv, BTreeMap::from([("USD".to_string(), 600.0)]));
    assert_eq!(j3.revenue, BTreeMap::new());

    let j4 = d("2024-01-04");
    assert_eq!((j4.active, j4.dormant, j4.events), (0, 1, 0));
    assert_eq!(j4.avg_clv, BTreeMap::from([("USD".to_string(), 600.0)]));
    let j5 = d("2024-01-05");
    assert_eq!(j5.dormant, 0);

    let j20 = d("2024-01-20");
    assert_eq!(
        (j20.at_risk_entered, j20.active_at_start, j20.active_at_end),
        (1, 3, 3)
    );
    let j25 = d("2024-01-25");
    assert_eq!(
        (j25.churned, j25.active_at_start, j25.active_at_end),
        (1, 3, 2)
    );
    assert_eq!(j25.churn_rate, Some(1.0 / 3.0));
    assert_eq!(j25.retention_rate, Some(2.0 / 3.0));
    let f5 = d("2024-02-05");
    assert_eq!((f5.active, f5.resurrecting, f5.active_at_start), (1, 1, 2));
    // Every day from Jan 1 to Feb 29, once each, in order.
    let days: Vec<i64> = aggs
        .iter()
        .filter(|a| a.granularity == Granularity::Day)
        .map(|a| a.window_start)
        .collect();
    let expected: Vec<i64> = (0..60).map(|i| day("2024-01-01") + i * DAY_MS).collect();
    assert_eq!(days, expected);

    let w = |s: &str| find(&aggs, Granularity::Week, day(s));
    let w1 = w("2024-01-01");
    assert_eq!(
        (w1.active, w1.new, w1.returning, w1.resurrecting),
        (3, 3, 0, 0)
    );
    assert_eq!(
        (w1.dormant, w1.active_at_start, w1.active_at_end),
        (0, 0, 3)
    );
    assert_eq!((w1.events, w1.churn_rate), (6, None));
    let w2 = w("2024-01-08");
    assert_eq!((w2.active, w2.dormant, w2.churn_rate), (0, 3, Some(0.0)));
    assert_eq!(w2.referral_rate, None);
    let w3 = w("2024-01-15");
    assert_eq!((w3.at_risk_entered, w3.dormant), (1, 0));
    let w4 = w("2024-01-22");
    assert_eq!(
        (w4.churned, w4.active_at_start, w4.active_at_end),
        (1, 3, 2)
    );
    assert_eq!(w4.churn_rate, Some(1.0 / 3.0));
    let w6 = w("2024-02-05");
    assert_eq!((w6.active, w6.resurrecting, w6.returning), (1, 1, 0));

    let m = |s: &str| find(&aggs, Granularity::Month, day(s));
    let jan = m("2024-01-01");
    assert_eq!(
        (jan.active, jan.new, jan.returning, jan.resurrecting),
        (3, 3, 0, 0)
    );
    assert_eq!(
        (jan.at_risk_entered, jan.churned, jan.reactivated),
        (1, 1, 0)
    );
    assert_eq!(
        (jan.active_at_start, jan.active_at_end, jan.churn_rate),
        (0, 2, None)
    );
    assert_eq!(jan.window_end, day("2024-02-01"));
    let feb = m("2024-02-01");
    assert_eq!((feb.active, feb.returning, feb.dormant), (1, 1, 2));
    assert_eq!(
        (feb.active_at_start, feb.churn_rate, feb.retention_rate),
        (2, Some(0.0), Some(1.0))
    );
    assert_eq!(
        aggs.iter()
            .filter(|a| a.granularity == Granularity::Month)
            .count(),
        2
    );

    let cell = |g, c: &str, off: i64| {
        let hits: Vec<&CohortCell> = cells
            .iter()
            .filter(|x| x.granularity == g && x.cohort_start == day(c) && x.offset == off)
            .collect();
        assert_eq!(hits.len(), 1);
        (hits[0].cohort_size, hits[0].retained)
    };
    assert_eq!(cell(Granularity::Week, "2024-01-01", 0), (3, 3));
    assert_eq!(cell(Granularity::Week, "2024-01-01", 1), (3, 0));
    assert_eq!(cell(Granularity::Week, "2024-01-01", 5), (3, 1));
    assert_eq!(cell(Granularity::Month, "2024-01-01", 0), (3, 3));
    assert_eq!(cell(Granularity::Month, "2024-01-01", 1), (3, 1));
    assert!(cells.iter().all(|c| c.complete));
    assert_eq!(cells[0].key(), "week/2024-01-01T00:00:00.000Z/0");
    assert_eq!(jan.key(), "month/2024-01-01T00:00:00.000Z");

    // The same through two partitions and daily watermarks.
    let advances: Vec<i64> = (1..=60).map(|i| day("2024-01-01") + i * DAY_MS).collect();
    let (aggs2, cells2) = run(&steps, 2, &advances, day("2024-03-01"));
    assert_eq!(sorted(aggs2, cells2), sorted(aggs, cells));
}

fn sorted(
    mut aggs: Vec<Aggregate>,
    mut cells: Vec<CohortCell>,
) -> (Vec<Aggregate>, Vec<CohortCell>) {
    aggs.sort_by_key(|a| (a.granularity, a.window_start));
    cells.sort_by_key(|c| (c.granularity, c.cohort_start, c.offset));
    (aggs, cells)
}

#[test]
fn finish_marks_open_windows_incomplete() {
    let steps = fixture();
    // The input ends on Feb 10: February is still open.
    let (aggs, cells) = run(&steps, 1, &[], day("2024-02-10"));
    let feb = find(&aggs, Granularity::Month, day("2024-02-01"));
    assert!(!feb.complete);
    assert_eq!(feb.active, 1);
    assert!(find(&aggs, Granularity::Month, day("2024-01-01")).complete);
    assert!(find(&aggs, Granularity::Day, day("2024-02-05")).complete);
    // The input ends inside the week of Feb 5.
    let w = find(&aggs, Granularity::Week, day("2024-02-05"));
    assert!(!w.complete);
    assert_eq!(w.active, 1);
    assert!(find(&aggs, Granularity::Week, day("2024-01-29")).complete);
    // Empty open windows after the end are not emitted.
    assert!(!aggs
        .iter()
        .any(|a| a.granularity == Granularity::Day && a.window_start >= day("2024-02-10")));
    let c = cells
        .iter()
        .find(|c| c.granularity == Granularity::Month && c.offset == 1)
        .unwrap();
    assert!(!c.complete);
}

// ---------------------------------------------------------------------------
// Lateness
// ---------------------------------------------------------------------------

#[test]
fn late_contribution_changes_no_closed_window() {
    use LifecycleClass::New;
    let a1 = ms("2024-01-01T09:00:00Z");
    let late = ms("2024-01-01T12:00:00Z");
    let base = Step {
        t: a1,
        customer: 0,
        event: true,
        transitions: vec![tr("A", None, "active", a1)],
        signals: actives(a1, [New; 3], None),
    };
    let late_step = Step {
        t: late,
        customer: 1,
        event: true,
        transitions: vec![tr("D", None, "active", late)],
        signals: [
            actives(late, [New; 3], None),
            vec![ts(late, Signal::Click), ts(late, Signal::PayingDelta(1))],
        ]
        .concat(),
    };

    let drive = |with_late: bool| {
        let mut p = PartitionAggregator::new(0);
        let mut m = Merger::new(1);
        let (mut aggs, mut cells) = (vec![], vec![]);
        feed(&mut p, &base);
        let mut out = vec![];
        p.advance(day("2024-01-03"), &mut out);
        if with_late {
            feed(&mut p, &late_step);
            assert_eq!(p.late_events(), 1);
            assert_eq!(p.frontier(Granularity::Day), Some(day("2024-01-03")));
        }
        p.advance(day("2024-01-04"), &mut out);
        for x in out {
            m.add(x);
        }
        m.drain(&mut aggs, &mut cells);
        aggs
    };
    let clean = drive(false);
    let late_aggs = drive(true);
    for d in ["2024-01-01", "2024-01-02"] {
        let g = Granularity::Day;
        assert_eq!(find(&late_aggs, g, day(d)), find(&clean, g, day(d)));
    }
    let j1 = find(&late_aggs, Granularity::Day, day("2024-01-01"));
    assert_eq!(
        (j1.active, j1.events, j1.late_events, j1.ctr),
        (1, 1, 0, None)
    );
    let j3 = find(&late_aggs, Granularity::Day, day("2024-01-03"));
    // The late event is counted, its counts are dropped, its gauges land here.
    assert_eq!((j3.late_events, j3.events, j3.active, j3.new), (1, 0, 0, 0));
    assert_eq!((j3.active_at_start, j3.active_at_end), (1, 2));
    assert_eq!(j3.ctr, None);
    let j3_clean = find(&clean, Granularity::Day, day("2024-01-03"));
    assert_eq!((j3_clean.late_events, j3_clean.active_at_end), (0, 1));
    // The week is still open: the event is on time there.
    let mut p = PartitionAggregator::new(0);
    feed(&mut p, &base);
    p.advance(day("2024-01-03"), &mut vec![]);
    feed(&mut p, &late_step);
    let mut out = vec![];
    p.flush(&mut out);
    let week = out
        .iter()
        .find_map(|x| match x {
            Partial::Window {
                granularity: Granularity::Week,
                counts,
                ..
            } => Some(counts.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (week.events, week.late_events, week.active, week.clicks),
        (2, 0, 2, 1)
    );
}

// ---------------------------------------------------------------------------
// Merge
// ---------------------------------------------------------------------------

fn one_event(p: &mut PartitionAggregator, t: i64) {
    p.record_event(t);
    p.record(&[], &actives(t, [LifecycleClass::New; 3], None));
}

#[test]
fn merge_waits_for_every_partition_and_skips_idle_ones() {
    let mut p0 = PartitionAggregator::new(0);
    let mut p1 = PartitionAggregator::new(1);
    let mut m = Merger::new(2);
    let (mut aggs, mut cells) = (vec![], vec![]);
    let mut out = vec![];
    one_event(&mut p0, ms("2024-01-01T10:00:00Z"));
    one_event(&mut p1, ms("2024-01-01T11:00:00Z"));
    p0.advance(day("2024-01-03"), &mut out);
    out.drain(..).for_each(|x| m.add(x));
    m.drain(&mut aggs, &mut cells);
    assert!(aggs.is_empty(), "partition 1 was never heard from");
    assert_eq!(m.job_watermark(), None);

    p1.advance(day("2024-01-02"), &mut out);
    out.drain(..).for_each(|x| m.add(x));
    m.drain(&mut aggs, &mut cells);
    assert_eq!(m.job_watermark(), Some(day("2024-01-02")));
    assert_eq!(aggs.len(), 1, "only Jan 1 ends before both watermarks");
    assert_eq!(
        (aggs[0].window_start, aggs[0].active),
        (day("2024-01-01"), 2)
    );

    // Partition 1 goes idle: partition 0 alone drives the job watermark.
    m.set_idle(1, true);
    m.drain(&mut aggs, &mut cells);
    assert_eq!(aggs.len(), 2);
    assert_eq!(aggs[1].window_start, day("2024-01-02"));
    assert_eq!(aggs[1].active, 0);

    // It wakes up with data for the already closed Jan 2.
    one_event(&mut p1, ms("2024-01-02T20:00:00Z"));
    p1.advance(day("2024-01-03"), &mut out);
    out.drain(..).for_each(|x| m.add(x));
    assert_eq!(m.late_partials(), 1);
    m.drain(&mut aggs, &mut cells);
    assert_eq!(
        aggs.len(),
        2,
        "nothing new closes and Jan 2 is not re-emitted"
    );

    // Not idle any more: it holds the watermark back again.
    p0.advance(day("2024-01-10"), &mut out);
    out.drain(..).for_each(|x| m.add(x));
    m.drain(&mut aggs, &mut cells);
    assert_eq!(aggs.len(), 2);
    p1.advance(day("2024-01-10"), &mut out);
    out.drain(..).for_each(|x| m.add(x));
    m.drain(&mut aggs, &mut cells);
    let days: Vec<&Aggregate> = aggs
        .iter()
        .filter(|a| a.granularity == Granularity::Day)
        .collect();
    assert_eq!(days.len(), 9);
    assert_eq!(
        (days[2].window_start, days[2].late_events),
        (day("2024-01-03"), 1)
    );
    assert_eq!(days[1].active, 0);
    // Week of Jan 1 closes on Jan 8 and has all three events on time.
    let w = find(&aggs, Granularity::Week, day("2024-01-01"));
    assert_eq!((w.events, w.late_events, w.active), (3, 0, 3));
    assert!(cells.is_empty(), "no cohort joins here");
}

/// After a crash a partition re-emits the partials it had already delivered
/// (outputs are at least once): the merger must count them once, whether the
/// window is still open or already closed when the copy arrives.
#[test]
fn re_emitted_partials_are_counted_once() {
    let mut part = PartitionAggregator::new(0);
    let mut out = vec![];
    one_event(&mut part, ms("2024-01-01T10:00:00Z"));
    one_event(&mut part, ms("2024-01-02T10:00:00Z"));
    part.advance(day("2024-01-03"), &mut out);
    let sent = out.clone();

    let (mut once, mut once_cells) = (vec![], vec![]);
    let mut m = Merger::new(1);
    sent.iter().cloned().for_each(|x| m.add(x));
    m.drain(&mut once, &mut once_cells);

    // The copy arrives before the windows close…
    let (mut twice, mut twice_cells) = (vec![], vec![]);
    let mut m2 = Merger::new(1);
    sent.iter().cloned().for_each(|x| m2.add(x));
    sent.iter().cloned().for_each(|x| m2.add(x));
    m2.drain(&mut twice, &mut twice_cells);
    assert_eq!(once, twice);
    assert!(m2.duplicate_partials() > 0);

    // …or after they closed: no late counts, no shifted gauges.
    sent.iter().cloned().for_each(|x| m.add(x));
    assert_eq!(m.late_partials(), 0);
    let day1 = find(&once, Granularity::Day, day("2024-01-01"));
    assert_eq!(day1.active, 1);
}

#[test]
fn merger_grows_partitions() {
    let mut m = Merger::new(1);
    m.add(Partial::Progress {
        partition: 0,
        watermark: 10,
    });
    assert_eq!(m.job_watermark(), Some(10));
    let (mut aggs, mut cells) = (vec![], vec![]);
    m.drain(&mut aggs, &mut cells);
    m.set_partitions(2);
    // Stays: it never goes back, and does not advance until partition 1 reports.
    assert_eq!(m.job_watermark(), Some(10));
    m.add(Partial::Progress {
        partition: 0,
        watermark: 20,
    });
    assert_eq!(m.job_watermark(), Some(10));
    m.add(Partial::Progress {
        partition: 1,
        watermark: 15,
    });
    assert_eq!(m.job_watermark(), Some(15));
    // Every partition idle: the maximum, as in Flink.
    m.set_idle(0, true);
    m.set_idle(1, true);
    assert_eq!(m.job_watermark(), Some(20));
}

// ---------------------------------------------------------------------------
// Rates, encodings
// ---------------------------------------------------------------------------

#[test]
fn rates_are_null_on_zero_denominators() {
    let mut m = Merger::new(1);
    m.add(Partial::Window {
        partition: 0,
        granularity: Granularity::Day,
        start: day("2024-01-01"),
        counts: WindowCounts {
            churned: 1,
            new: 1,
            csat_satisfied: 0,
            ..Default::default()
        },
    });
    m.add(Partial::Progress {
        partition: 0,
        watermark: day("2024-01-02"),
    });
    let (mut aggs, mut cells) = (vec![], vec![]);
    m.drain(&mut aggs, &mut cells);
    assert_eq!(aggs.len(), 1);
    let a = &aggs[0];
    assert_eq!(a.active_at_start, 0);
    for r in [
        a.churn_rate,
        a.retention_rate,
        a.csat,
        a.nps,
        a.ctr,
        a.referral_rate,
    ] {
        assert_eq!(r, None);
    }
    assert!(a.avg_clv.is_empty());
    let json = serde_json::to_value(a).unwrap();
    assert_eq!(json["churn_rate"], serde_json::Value::Null);
    assert_eq!(json["window_start"], "2024-01-01T00:00:00.000Z");
    assert_eq!(json["granularity"], "day");
    let back: Aggregate = serde_json::from_value(json).unwrap();
    assert_eq!(&back, a);
}

fn sample_aggregate() -> Aggregate {
    Aggregate {
        granularity: Granularity::Week,
        window_start: day("2024-01-01"),
        window_end: day("2024-01-08"),
        complete: true,
        events: 10,
        active: 4,
        new: 1,
        returning: 2,
        resurrecting: 1,
        dormant: 3,
        active_at_start: 7,
        active_at_end: 6,
        at_risk_entered: 2,
        churned: 1,
        reactivated: 1,
        churn_rate: Some(1.0 / 7.0),
        retention_rate: Some(5.0 / 7.0),
        csat: None,
        nps: Some(-12.5),
        ctr: Some(0.25),
        referral_rate: None,
        orders: 3,
        revenue: BTreeMap::from([("EUR".into(), 250), ("USD".into(), -1)]),
        avg_clv: BTreeMap::from([("EUR".into(), 83.5), ("USD".into(), 1e9)]),
        late_events: u64::MAX,
    }
}

#[test]
fn avro_encodes_with_the_schemas() {
    let schema = aggregate_schema().unwrap();
    let a = sample_aggregate();
    let lib = apache_avro::to_avro_datum(&schema, a.to_avro_value()).unwrap();
    let ours = a.to_avro_datum();
    assert_eq!(lib.len(), ours.len());
    let decoded = apache_avro::from_avro_datum(&schema, &mut &ours[..], None).unwrap();
    assert_eq!(decoded, a.to_avro_value());
    // With at most one entry per map the library's bytes are deterministic too.
    let mut one = a.clone();
    one.revenue.remove("USD");
    one.avg_clv.remove("USD");
    assert_eq!(
        apache_avro::to_avro_datum(&schema, one.to_avro_value()).unwrap(),
        one.to_avro_datum()
    );

    let cs = cohort_cell_schema().unwrap();
    let c = CohortCell {
        granularity: Granularity::Month,
        cohort_start: day("2024-01-01"),
        offset: 3,
        cohort_size: 10,
        retained: 4,
        complete: false,
    };
    let bytes = apache_avro::to_avro_datum(&cs, c.to_avro_value()).unwrap();
    let back = apache_avro::from_avro_datum(&cs, &mut &bytes[..], None).unwrap();
    assert_eq!(back, c.to_avro_value());
    assert_eq!(c.key(), "month/2024-01-01T00:00:00.000Z/3");
}

#[test]
fn partial_round_trips() {
    let p = Partial::Window {
        partition: 3,
        granularity: Granularity::Month,
        start: day("2024-02-01"),
        counts: WindowCounts {
            events: 5,
            live_delta: -2,
            revenue: BTreeMap::from([("IDR".into(), 1_500_000)]),
            cohort_joins: BTreeMap::from([(day("2024-01-01"), 2)]),
            ..Default::default()
        },
    };
    assert_eq!(Partial::decode(&p.encode()).unwrap(), p);
    let q = Partial::Progress {
        partition: 1,
        watermark: -5,
    };
    assert_eq!(Partial::decode(&q.encode()).unwrap(), q);
    assert_eq!(p.key(), "month/2024-02-01T00:00:00.000Z");
    assert!(matches!(Partial::decode(&[]), Err(AggregateError::Empty)));
    assert!(matches!(
        Partial::decode(&[9, 0]),
        Err(AggregateError::UnknownVersion(9))
    ));
    assert!(Partial::decode(&[1, 0xff]).is_err());
    let mut bytes = q.encode();
    bytes.push(0);
    assert!(Partial::decode(&bytes).is_err());
}

// ---------------------------------------------------------------------------
// Simulated customers, for the properties
// ---------------------------------------------------------------------------

const AT_RISK: i64 = 6 * DAY_MS;
const CHURN: i64 = 20 * DAY_MS;

/// A tiny per-customer model that emits transitions and signals the way the
/// fold does: deadlines first, then the event; one `Active` per window per
/// granularity, classed against the customer's previous active window.
#[derive(Default)]
struct Customer {
    activity: Option<&'static str>,
    last_activity: Option<i64>,
    last_window: [Option<i64>; 3],
    cohort: Option<(i64, i64)>,
    paying: bool,
}

impl Customer {
    fn timers(&mut self, id: usize, before: i64, steps: &mut Vec<Step>) {
        let Some(last) = self.last_activity else {
            return;
        };
        let name = format!("c{id}");
        for (deadline, from, to) in [
            (last + AT_RISK, "active", "at_risk"),
            (last + CHURN, "at_risk", "churned"),
        ] {
            if deadline < before && self.activity == Some(from) {
                self.activity = Some(to);
                steps.push(Step {
                    t: deadline,
                    customer: id,
                    event: false,
                    transitions: vec![tr(&name, Some(from), to, deadline)],
                    signals: vec![],
                });
            }
        }
    }

    fn event(&mut self, id: usize, t: i64, kind: u8, steps: &mut Vec<Step>) {
        self.timers(id, t, steps);
        let name = format!("c{id}");
        let mut s = Step {
            t,
            customer: id,
            event: true,
            transitions: vec![],
            signals: vec![],
        };
        if kind == 0 {
            // Company-initiated: an impression, no activity.
            s.signals.push(ts(t, Signal::Impression));
            steps.push(s);
            return;
        }
        if self.activity != Some("active") {
            s.transitions.push(tr(&name, self.activity, "active", t));
            self.activity = Some("active");
        }
        self.last_activity = Some(t);
        if self.cohort.is_none() {
            let c = (Granularity::Week.start(t), Granularity::Month.start(t));
            self.cohort = Some(c);
            s.signals.push(ts(
                t,
                Signal::CohortJoined {
                    week: c.0,
                    month: c.1,
                },
            ));
        }
        for (i, g) in Granularity::ALL.into_iter().enumerate() {
            let w = g.start(t);
            let class = match self.last_window[i] {
                Some(prev) if prev == w => continue,
                None => LifecycleClass::New,
                Some(prev) if prev == g.prev(w) => LifecycleClass::Returning,
                Some(_) => LifecycleClass::Resurrecting,
            };
            self.last_window[i] = Some(w);
            let cohort = self.cohort.and_then(|c| match g {
                Granularity::Day => None,
                Granularity::Week => Some(c.0),
                Granularity::Month => Some(c.1),
            });
            s.signals.push(ts(
                t,
                Signal::Active {
                    granularity: g,
                    window: w,
                    class,
                    cohort,
                },
            ));
            if kind == 3 {
                s.signals.push(ts(
                    t,
                    Signal::Referred {
                        granularity: g,
                        window: w,
                    },
                ));
            }
        }
        match kind {
            2 => {
                let cur = if t % 2 == 0 { "USD" } else { "EUR" };
                s.signals.push(ts(
                    t,
                    Signal::Order {
                        amount_minor: 100 + t.rem_euclid(1000),
                        currency: cur.into(),
                    },
                ));
                s.signals.push(ts(
                    t,
                    Signal::RevenueDelta {
                        amount_minor: 100 + t.rem_euclid(1000),
                        currency: cur.into(),
                    },
                ));
                if !self.paying {
                    self.paying = true;
                    s.signals.push(ts(t, Signal::PayingDelta(1)));
                }
            }
            4 => s.signals.push(ts(
                t,
                Signal::Nps {
                    score: (t % 11) as u8,
                },
            )),
            5 => s.signals.push(ts(
                t,
                Signal::Csat {
                    satisfied: t % 3 != 0,
                },
            )),
            6 => s.signals.push(ts(t, Signal::Click)),
            _ => {}
        }
        steps.push(s);
    }
}

/// Steps of several simulated customers, sorted by time (stable).
fn simulate(customers: &[Vec<(u32, u32, u8)>], end: i64) -> Vec<Step> {
    let base = day("2024-01-01");
    let mut steps = vec![];
    for (id, evs) in customers.iter().enumerate() {
        let mut times: Vec<(i64, u8)> = evs
            .iter()
            .map(|&(d, h, k)| (base + i64::from(d) * DAY_MS + i64::from(h) * HOUR, k))
            .collect();
        times.sort();
        let mut c = Customer::default();
        for (t, k) in times {
            c.event(id, t, k, &mut steps);
        }
        c.timers(id, end, &mut steps);
    }
    steps.sort_by_key(|s| s.t);
    steps
}

fn customers_strategy() -> impl Strategy<Value = Vec<Vec<(u32, u32, u8)>>> {
    prop::collection::vec(
        prop::collection::vec((0u32..100, 0u32..24, 0u8..8), 1..12),
        1..10,
    )
}

/// Drives steps through `assign.len()`-many... partitions: customer `i` goes to
/// partition `assign[i % assign.len()] % parts`. The partitions advance every
/// `every` steps to the next step's time (so nothing is late); the partials of
/// each round are interleaved across partitions by `mix`, with a drain after
/// every add. `roundtrip_at` persists everything with postcard at that round.
fn drive(
    steps: &[Step],
    parts: u32,
    assign: &[u32],
    every: usize,
    mix: &[u8],
    roundtrip_at: Option<usize>,
    end: i64,
) -> (Vec<Aggregate>, Vec<CohortCell>) {
    let part_of = |c: usize| (assign[c % assign.len()] % parts) as usize;
    let mut ps: Vec<PartitionAggregator> = (0..parts).map(PartitionAggregator::new).collect();
    let mut m = Merger::new(parts);
    let (mut aggs, mut cells) = (vec![], vec![]);
    let mut mix_i = 0;
    let mut deliver = |m: &mut Merger,
                       queues: Vec<Vec<Partial>>,
                       aggs: &mut Vec<Aggregate>,
                       cells: &mut Vec<CohortCell>| {
        let mut queues: Vec<std::collections::VecDeque<Partial>> =
            queues.into_iter().map(Into::into).collect();
        loop {
            let live: Vec<usize> = (0..queues.len())
                .filter(|&i| !queues[i].is_empty())
                .collect();
            if live.is_empty() {
                break;
            }
            let pick = live[mix.get(mix_i).copied().unwrap_or(0) as usize % live.len()];
            mix_i += 1;
            if let Some(p) = queues[pick].pop_front() {
                m.add(p);
            }
            m.drain(aggs, cells);
        }
    };
    let chunks: Vec<&[Step]> = steps.chunks(every.max(1)).collect();
    for (round, chunk) in chunks.iter().enumerate() {
        for s in *chunk {
            feed(&mut ps[part_of(s.customer)], s);
        }
        let next = steps.get((round + 1) * every.max(1)).map(|s| s.t);
        if let Some(wm) = next {
            let queues = ps
                .iter_mut()
                .map(|p| {
                    let mut out = vec![];
                    p.advance(wm, &mut out);
                    out
                })
                .collect();
            deliver(&mut m, queues, &mut aggs, &mut cells);
        }
        if roundtrip_at == Some(round) {
            ps = ps
                .iter()
                .map(|p| postcard::from_bytes(&postcard::to_allocvec(p).unwrap()).unwrap())
                .collect();
            m = postcard::from_bytes(&postcard::to_allocvec(&m).unwrap()).unwrap();
        }
    }
    let queues = ps
        .iter_mut()
        .map(|p| {
            let mut out = vec![];
            p.flush(&mut out);
            out
        })
        .collect();
    deliver(&mut m, queues, &mut aggs, &mut cells);
    m.finish(end, &mut aggs, &mut cells);
    assert_eq!(m.late_partials(), 0);
    (aggs, cells)
}

fn end_of(steps: &[Step]) -> i64 {
    steps.last().map_or(0, |s| s.t) + 1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn one_or_four_partitions_agree(
        customers in customers_strategy(),
        assign in prop::collection::vec(0u32..4, 1..8),
        every in 1usize..6,
        mix in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let end = day("2024-04-20");
        let steps = simulate(&customers, end);
        let one = drive(&steps, 1, &[0], every, &[], None, end);
        let four = drive(&steps, 4, &assign, every, &mix, None, end);
        prop_assert!(!one.0.is_empty());
        prop_assert_eq!(sorted(four.0, four.1), sorted(one.0, one.1));
    }

    #[test]
    fn lifecycle_counts_add_up_and_cells_fit(
        customers in customers_strategy(),
        assign in prop::collection::vec(0u32..4, 1..8),
        every in 1usize..6,
    ) {
        let end = end_of(&simulate(&customers, day("2024-04-20")));
        let steps = simulate(&customers, end);
        let (aggs, cells) = drive(&steps, 3, &assign, every, &[], None, end);
        let n_events = steps.iter().filter(|s| s.event).count() as u64;
        for g in Granularity::ALL {
            let windows: Vec<&Aggregate> = aggs.iter().filter(|a| a.granularity == g).collect();
            prop_assert_eq!(windows.iter().map(|a| a.events).sum::<u64>(), n_events);
            for w in windows.windows(2) {
                prop_assert_eq!(w[1].window_start, g.next(w[0].window_start));
                prop_assert_eq!(w[1].active_at_start, w[0].active_at_end);
                prop_assert_eq!(w[1].dormant + w[1].returning, w[0].active);
            }
            for a in windows {
                prop_assert_eq!(a.active, a.new + a.returning + a.resurrecting);
                prop_assert!(a.late_events == 0);
            }
        }
        let total_new = aggs.iter().filter(|a| a.granularity == Granularity::Day).map(|a| a.new).sum::<u64>();
        prop_assert_eq!(total_new as usize, customers.iter().filter(|c| c.iter().any(|e| e.2 != 0)).count());
        for c in &cells {
            prop_assert!(c.retained <= c.cohort_size, "{:?}", c);
            prop_assert!(c.offset >= 0);
        }
    }

    #[test]
    fn postcard_round_trip_mid_stream_changes_nothing(
        customers in customers_strategy(),
        assign in prop::collection::vec(0u32..4, 1..8),
        every in 1usize..6,
        at in 0usize..20,
    ) {
        let end = day("2024-04-20");
        let steps = simulate(&customers, end);
        let plain = drive(&steps, 2, &assign, every, &[], None, end);
        let persisted = drive(&steps, 2, &assign, every, &[], Some(at), end);
        prop_assert_eq!(persisted, plain);
    }
}

// ---------------------------------------------------------------------------
// Through the real fold
// ---------------------------------------------------------------------------

#[test]
fn fixture_through_the_fold() {
    use crate::fold::{advance_to, apply_event, FoldOutput};
    use crate::model::{InteractionEvent, Profile};
    use crate::rules::Rules;

    let ev = |id: &str, customer: &str, ty: &str, at: &str| InteractionEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: ty.into(),
        occurred_at: ms(at),
        ..Default::default()
    };
    let mut events = vec![
        ev("e1", "c1", "account.signed_up", "2024-01-01T09:00:00Z"),
        ev("e2", "c2", "page.viewed", "2024-01-01T10:00:00Z"),
        ev("e3", "c2", "page.viewed", "2024-01-02T08:00:00Z"),
        ev("e4", "c3", "ad.impression", "2024-01-02T11:00:00Z"),
        ev("e5", "c3", "ad.clicked", "2024-01-02T12:00:00Z"),
        InteractionEvent {
            survey_type: Some("nps".into()),
            score: Some(10),
            ..ev("e6", "c3", "survey.responded", "2024-01-02T12:30:00Z")
        },
        ev("e7", "c1", "page.viewed", "2024-01-03T10:00:00Z"),
        InteractionEvent {
            order_id: Some("o1".into()),
            amount_minor: Some(100),
            currency: Some("USD".into()),
            ..ev("e8", "c1", "order.completed", "2024-01-03T10:05:00Z")
        },
        ev("e9", "c2", "page.viewed", "2024-04-15T10:00:00Z"),
    ];
    events.sort_by_key(|e| e.occurred_at);
    let rules = Rules::default();
    let mut profiles: BTreeMap<String, Profile> = BTreeMap::new();
    let mut part = PartitionAggregator::new(0);
    let mut merger = Merger::new(1);
    let (mut aggs, mut cells) = (vec![], vec![]);
    let mut out = FoldOutput::default();
    // The engine: timers up to the new watermark, then the windows close, then the event.
    let mut tick = |t: i64,
                    profiles: &mut BTreeMap<String, Profile>,
                    part: &mut PartitionAggregator,
                    merger: &mut Merger,
                    aggs: &mut Vec<Aggregate>,
                    cells: &mut Vec<CohortCell>| {
        for p in profiles.values_mut() {
            out.clear();
            advance_to(p, t, &rules, &mut out);
            part.record(&out.transitions, &out.signals);
        }
        let mut partials = vec![];
        part.advance(t, &mut partials);
        partials.into_iter().for_each(|x| merger.add(x));
        merger.drain(aggs, cells);
    };
    for e in &events {
        tick(
            e.occurred_at,
            &mut profiles,
            &mut part,
            &mut merger,
            &mut aggs,
            &mut cells,
        );
        let p = profiles
            .entry(e.customer_id.clone())
            .or_insert_with(|| Profile::new(&e.customer_id));
        let mut o = FoldOutput::default();
        apply_event(p, e, &rules, &mut o);
        part.record_event(e.occurred_at);
        part.record(&o.transitions, &o.signals);
    }
    let end = day("2024-05-01");
    tick(
        end,
        &mut profiles,
        &mut part,
        &mut merger,
        &mut aggs,
        &mut cells,
    );
    let mut rest = vec![];
    part.flush(&mut rest);
    rest.into_iter().for_each(|x| merger.add(x));
    merger.finish(end, &mut aggs, &mut cells);

    let d = |s: &str| find(&aggs, Granularity::Day, day(s));
    let j1 = d("2024-01-01");
    assert_eq!(
        (j1.active, j1.new, j1.active_at_start, j1.active_at_end),
        (2, 2, 0, 2)
    );
    let j2 = d("2024-01-02");
    assert_eq!(
        (j2.active, j2.new, j2.returning, j2.resurrecting),
        (2, 1, 1, 0)
    );
    assert_eq!(
        (j2.dormant, j2.active_at_start, j2.active_at_end),
        (1, 2, 3)
    );
    assert_eq!((j2.events, j2.ctr, j2.nps), (4, Some(1.0), Some(100.0)));
    assert_eq!(j2.churn_rate, Some(0.0));
    let j3 = d("2024-01-03");
    assert_eq!((j3.active, j3.resurrecting, j3.dormant), (1, 1, 2));
    assert_eq!((j3.orders, j3.events), (1, 2));
    assert_eq!(j3.revenue, BTreeMap::from([("USD".to_string(), 100)]));
    assert_eq!(j3.avg_clv, BTreeMap::from([("USD".to_string(), 100.0)]));
    assert_eq!(d("2024-02-01").at_risk_entered, 2);
    assert_eq!(d("2024-02-02").at_risk_entered, 1);
    let a1 = d("2024-04-01");
    assert_eq!(
        (a1.churned, a1.active_at_start, a1.active_at_end),
        (2, 3, 1)
    );
    assert_eq!(a1.churn_rate, Some(2.0 / 3.0));
    let a2 = d("2024-04-02");
    assert_eq!(
        (a2.churned, a2.churn_rate, a2.active_at_end),
        (1, Some(1.0), 0)
    );
    let a15 = d("2024-04-15");
    assert_eq!((a15.active, a15.resurrecting, a15.reactivated), (1, 1, 1));
    assert_eq!(
        (a15.active_at_start, a15.active_at_end, a15.churn_rate),
        (0, 1, None)
    );

    let w = |s: &str| find(&aggs, Granularity::Week, day(s));
    let w1 = w("2024-01-01");
    assert_eq!(
        (w1.active, w1.new, w1.events, w1.active_at_end),
        (3, 3, 8, 3)
    );
    assert_eq!(w("2024-01-08").dormant, 3);
    let w15 = w("2024-04-15");
    assert_eq!((w15.active, w15.resurrecting, w15.reactivated), (1, 1, 1));

    let m = |s: &str| find(&aggs, Granularity::Month, day(s));
    let jan = m("2024-01-01");
    assert_eq!((jan.active, jan.new, jan.active_at_end), (3, 3, 3));
    let feb = m("2024-02-01");
    assert_eq!((feb.active, feb.dormant, feb.at_risk_entered), (0, 3, 3));
    assert_eq!(
        (feb.active_at_start, feb.churn_rate, feb.retention_rate),
        (3, Some(0.0), Some(1.0))
    );
    let apr = m("2024-04-01");
    assert_eq!(
        (apr.churned, apr.reactivated, apr.active, apr.resurrecting),
        (3, 1, 1, 1)
    );
    assert_eq!(
        (apr.active_at_start, apr.active_at_end, apr.churn_rate),
        (3, 1, Some(1.0))
    );
    assert!(aggs.iter().all(|a| a.complete && a.late_events == 0));
    assert_eq!(
        aggs.iter()
            .filter(|a| a.granularity == Granularity::Month)
            .count(),
        4
    );

    // Only c1 was acquired (signed up): cohort of the week and month of Jan 1.
    let month_cells: Vec<(i64, u64, u64)> = cells
        .iter()
        .filter(|c| c.granularity == Granularity::Month)
        .map(|c| (c.offset, c.cohort_size, c.retained))
        .collect();
    assert_eq!(
        month_cells,
        vec![(0, 1, 1), (1, 1, 0), (2, 1, 0), (3, 1, 0)]
    );
    let week0 = cells
        .iter()
        .find(|c| c.granularity == Granularity::Week && c.offset == 0)
        .unwrap();
    assert_eq!((week0.cohort_size, week0.retained), (1, 1));
}
