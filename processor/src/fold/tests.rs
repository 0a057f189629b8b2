use proptest::prelude::*;

use super::*;
use crate::time::{parse_rfc3339, DAY_MS};

fn at(s: &str) -> i64 {
    parse_rfc3339(s).expect("test timestamp")
}

fn ev(id: &str, ty: &str, t: i64) -> InteractionEvent {
    InteractionEvent {
        event_id: id.into(),
        customer_id: "c1".into(),
        event_type: ty.into(),
        occurred_at: t,
        ..Default::default()
    }
}

fn order(id: &str, t: i64, amount: i64) -> InteractionEvent {
    InteractionEvent {
        order_id: Some(format!("o-{id}")),
        amount_minor: Some(amount),
        currency: Some("EUR".into()),
        ..ev(id, "order.completed", t)
    }
}

fn run(events: &[InteractionEvent], until: Option<i64>) -> (Profile, Vec<StageTransition>) {
    let rules = Rules::default();
    let mut p = Profile::new("c1");
    let mut out = FoldOutput::default();
    for e in events {
        apply_event(&mut p, e, &rules, &mut out);
    }
    if let Some(u) = until {
        advance_to(&mut p, u, &rules, &mut out);
    }
    (p, out.transitions)
}

fn steps(ts: &[StageTransition]) -> Vec<(String, Option<String>, String, String)> {
    ts.iter()
        .map(|t| {
            (
                t.dimension.as_str().to_string(),
                t.from_stage.as_ref().map(|s| s.to_string()),
                t.to_stage.to_string(),
                t.rule.to_string(),
            )
        })
        .collect()
}

fn s(
    d: &str,
    from: Option<&str>,
    to: &str,
    rule: &str,
) -> (String, Option<String>, String, String) {
    (d.into(), from.map(Into::into), to.into(), rule.into())
}

#[test]
fn impression_only_reaches_without_activity() {
    let (p, ts) = run(
        &[ev("e1", "ad.impression", at("2024-01-01T00:00:00Z"))],
        None,
    );
    assert_eq!(
        steps(&ts),
        vec![s("milestone", None, "reached", "first_touch")]
    );
    assert_eq!(p.activity, None);
    assert_eq!(p.impressions, 1);
}

#[test]
fn full_path_to_loyal_and_timer_order() {
    let t0 = at("2024-01-01T10:00:00Z");
    let events = vec![
        ev("e1", "page.viewed", t0),
        ev("e2", "account.signed_up", t0 + DAY_MS),
        order("e3", t0 + 2 * DAY_MS, 1000),
        order("e4", t0 + 10 * DAY_MS, 2000),
        order("e5", t0 + 20 * DAY_MS, 500),
        // 100 days of silence, then a purchase: at_risk, churned, then the return.
        order("e6", t0 + 120 * DAY_MS, 700),
    ];
    let (p, ts) = run(&events, None);
    assert_eq!(
        steps(&ts),
        vec![
            s("activity", None, "active", "first_activity"),
            s("milestone", None, "reached", "first_touch"),
            s("milestone", Some("reached"), "acquired", "acquisition"),
            s("milestone", Some("acquired"), "converted", "first_order"),
            s("milestone", Some("converted"), "developing", "second_order"),
            s("milestone", Some("developing"), "loyal", "loyal_orders"),
            s("activity", Some("active"), "at_risk", "inactivity_at_risk"),
            s("activity", Some("at_risk"), "churned", "inactivity_churned"),
            s("activity", Some("churned"), "active", "reactivated"),
        ]
    );
    // Timer transitions carry their deadline and no triggering event.
    assert_eq!(ts[6].occurred_at, t0 + 50 * DAY_MS);
    assert_eq!(ts[6].triggering_event_id, None);
    assert_eq!(ts[7].occurred_at, t0 + 110 * DAY_MS);
    assert_eq!(ts[8].triggering_event_id.as_deref(), Some("e6"));
    assert_eq!(p.order_count, 4);
    assert_eq!(p.net_revenue.get("EUR"), Some(&4200));
    assert_eq!(p.cohort_week(), Some(at("2024-01-01T00:00:00Z")));
    let seqs: Vec<u64> = ts.iter().map(|t| t.seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
}

#[test]
fn refund_of_only_order_reverts_to_acquired() {
    let t0 = at("2024-03-01T00:00:00Z");
    let refund = InteractionEvent {
        order_id: Some("o-e2".into()),
        ..ev("e3", "order.refunded", t0 + DAY_MS)
    };
    let (p, ts) = run(
        &[ev("e1", "lead.created", t0), order("e2", t0, 999), refund],
        None,
    );
    let last = ts.last().expect("a transition");
    assert_eq!(
        (
            last.from_stage.as_deref(),
            last.to_stage.as_ref(),
            last.rule.as_ref()
        ),
        (Some("converted"), "acquired", "order_reverted")
    );
    assert_eq!(p.order_count, 0);
    assert_eq!(p.net_revenue.get("EUR"), Some(&0));
}

#[test]
fn partial_refund_does_not_revert() {
    let t0 = at("2024-03-01T00:00:00Z");
    let refund = InteractionEvent {
        order_id: Some("o-e2".into()),
        amount_minor: Some(100),
        ..ev("e3", "order.refunded", t0 + DAY_MS)
    };
    let (p, _) = run(&[order("e2", t0, 999), refund], None);
    assert_eq!(p.milestone, Some(Milestone::Converted));
    assert_eq!(p.net_revenue.get("EUR"), Some(&899));
}

#[test]
fn cancel_of_second_order_keeps_developing() {
    let t0 = at("2024-03-01T00:00:00Z");
    let cancel = InteractionEvent {
        order_id: Some("o-e2".into()),
        ..ev("e3", "order.cancelled", t0 + DAY_MS)
    };
    let (p, _) = run(&[order("e1", t0, 10), order("e2", t0, 20), cancel], None);
    assert_eq!(p.milestone, Some(Milestone::Developing));
    assert_eq!(p.order_count, 1);
}

#[test]
fn zero_amount_order_does_not_convert() {
    let t0 = at("2024-03-01T00:00:00Z");
    let (p, _) = run(&[order("e1", t0, 0)], None);
    assert_eq!(p.milestone, Some(Milestone::Reached));
    assert_eq!(p.order_count, 0);
}

#[test]
fn advocate_rules() {
    let t0 = at("2024-03-01T00:00:00Z");
    let (p, _) = run(&[ev("e1", "referral.converted", t0)], None);
    assert_eq!(p.milestone, Some(Milestone::Advocate));

    let nps = InteractionEvent {
        survey_type: Some("nps".into()),
        score: Some(9),
        ..ev("e2", "survey.responded", t0 + 1)
    };
    let (p, _) = run(&[ev("e1", "referral.sent", t0), nps.clone()], None);
    assert_eq!(p.milestone, Some(Milestone::Advocate));

    let detractor = InteractionEvent {
        score: Some(6),
        ..nps
    };
    let (p, _) = run(&[ev("e1", "referral.sent", t0), detractor], None);
    assert_ne!(p.milestone, Some(Milestone::Advocate));
}

#[test]
fn unknown_type_is_counted_and_ignored() {
    let (p, ts) = run(&[ev("e1", "something.else", 0)], None);
    assert!(ts.is_empty());
    assert_eq!(p.unknown_events, 1);
    assert_eq!(p.milestone, None);
}

#[test]
fn churned_once_however_often_time_advances() {
    let rules = Rules::default();
    let t0 = at("2024-01-01T00:00:00Z");
    let mut p = Profile::new("c1");
    let mut out = FoldOutput::default();
    apply_event(&mut p, &ev("e1", "page.viewed", t0), &rules, &mut out);
    for day in 1..200 {
        advance_to(&mut p, t0 + day * DAY_MS, &rules, &mut out);
    }
    let churns = out
        .transitions
        .iter()
        .filter(|t| t.to_stage == "churned")
        .count();
    assert_eq!(churns, 1);
    // The deadline itself is not yet past: a customer is churned only after 90 full days.
    let mut p2 = Profile::new("c1");
    let mut out2 = FoldOutput::default();
    apply_event(&mut p2, &ev("e1", "page.viewed", t0), &rules, &mut out2);
    advance_to(&mut p2, t0 + 90 * DAY_MS, &rules, &mut out2);
    assert_eq!(p2.activity, Some(Activity::AtRisk));
}

#[test]
fn reactivation_after_churn_emitted_once() {
    let t0 = at("2024-01-01T00:00:00Z");
    let (_, ts) = run(
        &[
            ev("e1", "page.viewed", t0),
            ev("e2", "page.viewed", t0 + 100 * DAY_MS),
            ev("e3", "page.viewed", t0 + 100 * DAY_MS + 1),
            ev("e4", "page.viewed", t0 + 101 * DAY_MS),
        ],
        None,
    );
    assert_eq!(ts.iter().filter(|t| t.rule == "reactivated").count(), 1);
}

#[test]
fn lifecycle_signals_classify_windows() {
    let rules = Rules::default();
    let d0 = at("2024-01-01T12:00:00Z");
    let mut p = Profile::new("c1");
    let mut out = FoldOutput::default();
    for (i, day) in [0, 0, 1, 3].iter().enumerate() {
        apply_event(
            &mut p,
            &ev(&format!("e{i}"), "page.viewed", d0 + day * DAY_MS),
            &rules,
            &mut out,
        );
    }
    let classes: Vec<LifecycleClass> = out
        .signals
        .iter()
        .filter_map(|s| match &s.signal {
            Signal::Active {
                granularity: Granularity::Day,
                class,
                ..
            } => Some(*class),
            _ => None,
        })
        .collect();
    assert_eq!(
        classes,
        vec![
            LifecycleClass::New,
            LifecycleClass::Returning,
            LifecycleClass::Resurrecting
        ]
    );
}

proptest! {
    /// The id is the hash of the customer id, a zero byte and seq, however
    /// long the id (the one-call path for short ids and the streaming one
    /// agree), formatted like a UUID.
    #[test]
    fn transition_ids_hash_the_customer_and_seq(id in "\\PC{0,200}", seq in any::<u64>()) {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(id.as_bytes());
        h.update(&[0]);
        h.update(&seq.to_be_bytes());
        let hex = format!("{:032x}", h.digest128());
        let want = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
        prop_assert_eq!(transition_id(&id, seq), want);
    }
}

#[test]
fn transition_ids_are_stable() {
    assert_eq!(transition_id("c1", 1), transition_id("c1", 1));
    assert_ne!(transition_id("c1", 1), transition_id("c1", 2));
    assert_ne!(transition_id("c1", 1), transition_id("c2", 1));
    assert_eq!(transition_id("c1", 1).len(), 36);
    // Pinned: ids must never change between versions (consumers deduplicate by them).
    assert_eq!(
        transition_id("cust-000000", 1),
        "70bc9282-0d0e-6159-69c4-f8bdf1677305"
    );
}

const TYPES: &[&str] = &[
    "ad.impression",
    "message.delivered",
    "page.viewed",
    "ad.clicked",
    "lead.created",
    "account.signed_up",
    "order.completed",
    "order.completed",
    "order.cancelled",
    "order.refunded",
    "return.completed",
    "ticket.opened",
    "ticket.resolved",
    "survey.responded",
    "referral.sent",
    "referral.converted",
    "review.posted",
    "mystery.type",
];

fn arb_events() -> impl Strategy<Value = Vec<InteractionEvent>> {
    prop::collection::vec(
        (
            0..TYPES.len(),
            0i64..(60 * DAY_MS),
            0i64..3000,
            0i32..11,
            0u8..4,
        ),
        1..40,
    )
    .prop_map(|raw| {
        let mut t = at("2024-01-01T00:00:00Z");
        raw.into_iter()
            .enumerate()
            .map(|(i, (ty, gap, amount, score, oid))| {
                t += gap;
                let ty = TYPES[ty];
                InteractionEvent {
                    event_id: format!("e{i}"),
                    customer_id: "c1".into(),
                    event_type: ty.into(),
                    occurred_at: t,
                    order_id: Some(format!("o{oid}")),
                    amount_minor: Some(amount),
                    currency: Some("USD".into()),
                    survey_type: Some(if score % 2 == 0 { "nps" } else { "csat" }.into()),
                    score: Some(score),
                    ..Default::default()
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn fold_is_deterministic(events in arb_events()) {
        let (p1, t1) = run(&events, Some(at("2026-01-01T00:00:00Z")));
        let (p2, t2) = run(&events, Some(at("2026-01-01T00:00:00Z")));
        prop_assert_eq!(serde_json::to_vec(&t1).unwrap(), serde_json::to_vec(&t2).unwrap());
        prop_assert_eq!(postcard::to_stdvec(&p1).unwrap(), postcard::to_stdvec(&p2).unwrap());
    }

    #[test]
    fn milestones_go_backwards_only_by_the_refund_rule(events in arb_events()) {
        let (_, ts) = run(&events, None);
        for t in ts.iter().filter(|t| t.dimension == Dimension::Milestone) {
            let rank = |s: &str| ["reached", "acquired", "converted", "developing", "loyal", "advocate"]
                .iter().position(|x| *x == s);
            if let Some(from) = &t.from_stage {
                if rank(&t.to_stage) < rank(from) {
                    prop_assert_eq!(t.rule.as_ref(), "order_reverted");
                    prop_assert_eq!(from.as_ref(), "converted");
                    prop_assert_eq!(t.to_stage.as_ref(), "acquired");
                }
            }
        }
    }

    #[test]
    fn activity_transitions_chain_and_seqs_are_dense(events in arb_events()) {
        let (_, ts) = run(&events, Some(at("2026-01-01T00:00:00Z")));
        let mut cur: Option<crate::model::Name> = None;
        for t in ts.iter().filter(|t| t.dimension == Dimension::Activity) {
            prop_assert_eq!(&t.from_stage, &cur);
            prop_assert_ne!(Some(&t.to_stage), cur.as_ref());
            cur = Some(t.to_stage.clone());
        }
        for (i, t) in ts.iter().enumerate() {
            prop_assert_eq!(t.seq, i as u64 + 1);
        }
        // Occurred-at never goes backwards for in-order input.
        for w in ts.windows(2) {
            prop_assert!(w[0].occurred_at <= w[1].occurred_at);
        }
    }

    /// Watermark-driven timers fired at any moments that never pass one of the
    /// customer's unprocessed events give exactly the transitions of the
    /// customer's events alone: the timeline does not depend on what else
    /// advanced event time.
    #[test]
    fn timers_fired_early_change_nothing(events in arb_events(), cuts in prop::collection::vec(0.0f64..1.0, 0..20)) {
        let rules = Rules::default();
        let end = at("2026-01-01T00:00:00Z");
        let (_, alone) = run(&events, Some(end));
        let mut p = Profile::new("c1");
        let mut out = FoldOutput::default();
        let mut prev = i64::MIN;
        for (i, e) in events.iter().enumerate() {
            // Advance to points between the previous and this event, never past it.
            for c in &cuts {
                let lo = if prev == i64::MIN { e.occurred_at } else { prev };
                let w = lo + ((e.occurred_at - lo) as f64 * c) as i64;
                if i % 2 == 0 { advance_to(&mut p, w, &rules, &mut out); }
            }
            apply_event(&mut p, e, &rules, &mut out);
            prev = e.occurred_at;
        }
        advance_to(&mut p, end, &rules, &mut out);
        prop_assert_eq!(serde_json::to_vec(&alone).unwrap(), serde_json::to_vec(&out.transitions).unwrap());
    }
}
