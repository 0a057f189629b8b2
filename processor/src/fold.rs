//! The pure fold: `(profile, event) -> (profile', transitions, signals)` and
//! `(profile, time) -> (profile', transitions)` for the inactivity timers.
//! No I/O, no wall clock: the same input always gives the same output.

use std::borrow::Cow;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::model::{
    Activity, Dimension, EventType, InteractionEvent, LifecycleClass, Milestone, OrderRecord,
    Profile, ProfileSnapshot, Signal, StageTransition, TimedSignal,
};
use crate::rules::Rules;
use crate::time::Granularity;

/// Currency recorded for an amount that came without one (ISO 4217 "no currency").
pub const NO_CURRENCY: &str = "XXX";

/// What one fold step produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FoldOutput {
    /// Stage transitions, in the order they happened.
    pub transitions: Vec<StageTransition>,
    /// Signals for the aggregates.
    pub signals: Vec<TimedSignal>,
    /// Leave the profile snapshot of transitions empty (`outputs.snapshot =
    /// "none"`): nothing reads it.
    pub skip_snapshots: bool,
}

impl FoldOutput {
    /// Empties both lists, keeping their allocations.
    pub fn clear(&mut self) {
        self.transitions.clear();
        self.signals.clear();
    }
}

/// A deterministic transition id: a function of the customer and the
/// per-customer transition sequence number only, so a replay (or a
/// re-emission after a crash) yields the same id whatever the partitioning
/// or interleaving of the input.
pub fn transition_id(customer_id: &str, seq: u64) -> String {
    // The hash of customer id, a zero byte and seq: in one call on a stack
    // buffer for ids of usual length (the streaming hasher, which gives
    // the same value, cost a thousand instructions per transition).
    let id = customer_id.as_bytes();
    let v = if id.len() <= 128 {
        let mut buf = [0u8; 128 + 9];
        buf[..id.len()].copy_from_slice(id);
        buf[id.len() + 1..id.len() + 9].copy_from_slice(&seq.to_be_bytes());
        xxh3_128(&buf[..id.len() + 9])
    } else {
        let mut h = Xxh3::new();
        h.update(id);
        h.update(&[0]);
        h.update(&seq.to_be_bytes());
        h.digest128()
    };
    // 8-4-4-4-12 lowercase hex digits of the 128-bit hash, like a UUID.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut at = 0;
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            at += 1;
        }
        let nibble = (v >> (124 - 4 * i)) & 0xf;
        out[at] = HEX[nibble as usize];
        at += 1;
    }
    // ASCII by construction: the conversion cannot fail.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Checks that applying `e` keeps every sum of money of the profile in
/// range (checked arithmetic): `Err` says which sum would overflow, and the
/// event must then not be applied.
pub fn check_money(p: &Profile, e: &InteractionEvent) -> Result<(), String> {
    if EventType::parse(&e.event_type) != EventType::OrderCompleted {
        return Ok(());
    }
    let amount = e.amount_minor.unwrap_or(0);
    if amount <= 0 {
        return Ok(());
    }
    let currency = e.currency.as_deref().unwrap_or(NO_CURRENCY);
    let net = p.net_revenue.get(currency).copied().unwrap_or(0);
    match net.checked_add(amount) {
        Some(_) => Ok(()),
        None => Err(format!(
            "the customer's net revenue in {currency} ({net}) plus amount_minor {amount} \
             exceeds the largest amount (i64)"
        )),
    }
}

/// Applies one event: first fires the customer's deadlines earlier than the
/// event time (so the timeline is exact whatever else advanced event time),
/// then updates the facts and both dimensions.
///
/// `customer.erased` is not handled here: erasure deletes the profile, which
/// is the engine's job.
pub fn apply_event(p: &mut Profile, e: &InteractionEvent, r: &Rules, out: &mut FoldOutput) {
    let t = e.occurred_at;
    advance_to(p, t, r, out);
    let ty = EventType::parse(&e.event_type);
    p.events += 1;
    if ty == EventType::Unknown {
        // Accepted and counted, ignored by the stage rules.
        p.unknown_events += 1;
        return;
    }
    if ty == EventType::CustomerErased {
        return;
    }
    p.first_seen_at = Some(p.first_seen_at.map_or(t, |f| f.min(t)));
    p.last_event_at = Some(p.last_event_at.map_or(t, |l| l.max(t)));
    if let Some(ch) = &e.channel {
        // Found without copying the name (the common case).
        match p.channels.get_mut(ch.as_str()) {
            Some(n) => *n += 1,
            None => {
                p.channels.insert(ch.clone(), 1);
            }
        }
    }

    let mut milestone_rule: Option<&'static str> = None;
    let mut reverted = false;
    match ty {
        EventType::AdImpression => {
            p.impressions += 1;
            push(out, t, Signal::Impression);
        }
        EventType::AdClicked | EventType::MessageClicked => {
            p.clicks += 1;
            push(out, t, Signal::Click);
        }
        EventType::LeadCreated
        | EventType::AccountSignedUp
        | EventType::ConversationStarted
        | EventType::NewsletterSubscribed => milestone_rule = Some("acquisition"),
        EventType::OrderCompleted => complete_order(p, e, r, out),
        EventType::OrderCancelled | EventType::OrderRefunded | EventType::ReturnCompleted => {
            reverted = compensate(p, e, ty, out);
        }
        EventType::TicketOpened => p.open_tickets += 1,
        EventType::TicketResolved => p.open_tickets = p.open_tickets.saturating_sub(1),
        EventType::SurveyResponded => survey(p, e, out),
        EventType::ReferralSent => {
            p.referrals_sent += 1;
            for (i, g) in Granularity::ALL.iter().enumerate() {
                let w = g.start(t);
                if p.last_referral_window[i].is_none_or(|l| l < w) {
                    p.last_referral_window[i] = Some(w);
                    push(
                        out,
                        t,
                        Signal::Referred {
                            granularity: *g,
                            window: w,
                        },
                    );
                }
            }
        }
        EventType::ReferralConverted => p.referrals_converted += 1,
        _ => {}
    }

    // Milestone: the highest stage the facts now support, forward only.
    let before_milestone = p.milestone;
    let target = milestone_target(p, t, r, milestone_rule);
    let mut milestone_change = None;
    if reverted && p.milestone == Some(Milestone::Converted) && p.order_count == 0 {
        // A full refund or cancel of the only order takes converted back to acquired.
        p.milestone = Some(Milestone::Acquired);
        milestone_change = Some("order_reverted");
    } else if let Some((m, rule)) = target {
        if p.milestone.is_none_or(|cur| m > cur) {
            p.milestone = Some(m);
            milestone_change = Some(rule);
        }
    }
    if p.acquired_at.is_none() && p.milestone.is_some_and(|m| m >= Milestone::Acquired) {
        p.acquired_at = Some(t);
        push(
            out,
            t,
            Signal::CohortJoined {
                week: Granularity::Week.start(t),
                month: Granularity::Month.start(t),
            },
        );
    }

    // Activity: a customer-initiated event makes the customer active.
    let mut activity_change = None;
    let before_activity = p.activity;
    if r.is_activity(ty, &e.event_type) {
        for (i, g) in Granularity::ALL.iter().enumerate() {
            let w = g.start(t);
            let last = p.last_active_window[i];
            if last.is_some_and(|l| l >= w) {
                // Already active in this window (or an older, out-of-order event).
                continue;
            }
            let class = match last {
                None => LifecycleClass::New,
                Some(l) if l == g.prev(w) => LifecycleClass::Returning,
                Some(_) => LifecycleClass::Resurrecting,
            };
            let cohort = match g {
                Granularity::Day => None,
                Granularity::Week => p.cohort_week(),
                Granularity::Month => p.cohort_month(),
            };
            p.last_active_window[i] = Some(w);
            push(
                out,
                t,
                Signal::Active {
                    granularity: *g,
                    window: w,
                    class,
                    cohort,
                },
            );
        }
        p.last_activity_at = Some(p.last_activity_at.map_or(t, |l| l.max(t)));
        match p.activity {
            None => activity_change = Some("first_activity"),
            Some(Activity::AtRisk) | Some(Activity::Churned) => {
                activity_change = Some("reactivated")
            }
            Some(Activity::Active) => {}
        }
        p.activity = Some(Activity::Active);
    }

    if let Some(rule) = activity_change {
        emit(
            p,
            out,
            Dimension::Activity,
            before_activity.map(Activity::as_str),
            Activity::Active.as_str(),
            t,
            Some(&e.event_id),
            rule,
        );
    }
    if let (Some(rule), Some(m)) = (milestone_change, p.milestone) {
        emit(
            p,
            out,
            Dimension::Milestone,
            before_milestone.map(Milestone::as_str),
            m.as_str(),
            t,
            Some(&e.event_id),
            rule,
        );
    }
}

/// Fires every inactivity deadline of the profile earlier than `t`: event
/// time (the customer's own next event, or the watermark) has passed them.
/// A transition fired here carries its deadline as `occurred_at`.
pub fn advance_to(p: &mut Profile, t: i64, r: &Rules, out: &mut FoldOutput) {
    while let Some(deadline) = next_deadline(p, r) {
        if deadline >= t {
            break;
        }
        let (from, to, rule) = match p.activity {
            Some(Activity::Active) => (Activity::Active, Activity::AtRisk, "inactivity_at_risk"),
            Some(Activity::AtRisk) => (Activity::AtRisk, Activity::Churned, "inactivity_churned"),
            _ => break,
        };
        p.activity = Some(to);
        emit(
            p,
            out,
            Dimension::Activity,
            Some(from.as_str()),
            to.as_str(),
            deadline,
            None,
            rule,
        );
    }
}

/// The profile's next inactivity deadline, if any: when an active customer
/// becomes at risk, or an at-risk one churns.
pub fn next_deadline(p: &Profile, r: &Rules) -> Option<i64> {
    let last = p.last_activity_at?;
    match p.activity? {
        Activity::Active => Some(last.saturating_add(r.at_risk_after_ms)),
        Activity::AtRisk => Some(last.saturating_add(r.churn_after_ms)),
        Activity::Churned => None,
    }
}

fn push(out: &mut FoldOutput, at: i64, signal: Signal) {
    out.signals.push(TimedSignal { at, signal });
}

#[allow(clippy::too_many_arguments)]
fn emit(
    p: &mut Profile,
    out: &mut FoldOutput,
    dimension: Dimension,
    from: Option<&'static str>,
    to: &'static str,
    at: i64,
    event_id: Option<&str>,
    rule: &'static str,
) {
    p.transitions += 1;
    out.transitions.push(StageTransition {
        transition_id: transition_id(&p.customer_id, p.transitions),
        customer_id: p.customer_id.clone(),
        dimension,
        from_stage: from.map(Cow::Borrowed),
        to_stage: Cow::Borrowed(to),
        occurred_at: at,
        triggering_event_id: event_id.map(str::to_string),
        rule: Cow::Borrowed(rule),
        seq: p.transitions,
        profile: if out.skip_snapshots {
            ProfileSnapshot::default()
        } else {
            p.snapshot()
        },
    });
}

fn milestone_target(
    p: &Profile,
    t: i64,
    r: &Rules,
    acquisition: Option<&'static str>,
) -> Option<(Milestone, &'static str)> {
    if p.referrals_converted > 0 {
        return Some((Milestone::Advocate, "referral_converted"));
    }
    if p.referrals_sent > 0 && p.last_nps.is_some_and(|s| s >= 9) {
        return Some((Milestone::Advocate, "promoter_referrer"));
    }
    let recent = p
        .orders
        .iter()
        .filter(|o| !o.void && o.at <= t && o.at > t.saturating_sub(r.loyal_window_ms))
        .count();
    if recent >= r.loyal_orders as usize {
        return Some((Milestone::Loyal, "loyal_orders"));
    }
    if p.order_count >= 2 {
        return Some((Milestone::Developing, "second_order"));
    }
    if p.order_count >= 1 {
        return Some((Milestone::Converted, "first_order"));
    }
    if let Some(rule) = acquisition {
        return Some((Milestone::Acquired, rule));
    }
    Some((Milestone::Reached, "first_touch"))
}

fn complete_order(p: &mut Profile, e: &InteractionEvent, r: &Rules, out: &mut FoldOutput) {
    let amount = e.amount_minor.unwrap_or(0);
    if amount <= 0 {
        // Only orders with an amount above zero count as orders.
        return;
    }
    if let Some(id) = &e.order_id {
        if p.orders
            .iter()
            .any(|o| !o.void && o.order_id.as_deref() == Some(id))
        {
            // The same order completed twice under different event ids.
            return;
        }
    }
    let currency = e
        .currency
        .clone()
        .unwrap_or_else(|| NO_CURRENCY.to_string());
    let t = e.occurred_at;
    p.orders.push(OrderRecord {
        order_id: e.order_id.clone(),
        at: t,
        amount_minor: amount,
        currency: currency.clone(),
        refunded_minor: 0,
        void: false,
    });
    if p.orders.len() > r.max_orders_kept {
        let excess = p.orders.len() - r.max_orders_kept;
        p.orders.drain(..excess);
    }
    p.order_count += 1;
    p.first_order_at = Some(p.first_order_at.map_or(t, |f| f.min(t)));
    // check_money rejects an event that would overflow; saturating keeps the
    // fold total (no panic, no wrap) for a caller that did not check.
    let net = p.net_revenue.entry(currency.clone()).or_insert(0);
    *net = net.saturating_add(amount);
    push(
        out,
        t,
        Signal::Order {
            amount_minor: amount,
            currency: currency.clone(),
        },
    );
    push(
        out,
        t,
        Signal::RevenueDelta {
            amount_minor: amount,
            currency,
        },
    );
    if p.order_count == 1 {
        push(out, t, Signal::PayingDelta(1));
    }
}

/// Applies a cancel, refund or return. Returns whether an order became void.
fn compensate(p: &mut Profile, e: &InteractionEvent, ty: EventType, out: &mut FoldOutput) -> bool {
    p.refunds += 1;
    let t = e.occurred_at;
    let idx = match &e.order_id {
        Some(id) => p
            .orders
            .iter()
            .rposition(|o| !o.void && o.order_id.as_deref() == Some(id)),
        None => p.orders.iter().rposition(|o| !o.void),
    };
    let Some(idx) = idx else {
        return false;
    };
    let order = &mut p.orders[idx];
    let remaining = order.amount_minor - order.refunded_minor;
    let take = match (ty, e.amount_minor) {
        (EventType::OrderCancelled, _) | (_, None) => remaining,
        (_, Some(a)) => a.min(remaining),
    };
    order.refunded_minor += take;
    let currency = order.currency.clone();
    let voided = order.refunded_minor >= order.amount_minor;
    if voided {
        order.void = true;
    }
    if take > 0 {
        let net = p.net_revenue.entry(currency.clone()).or_insert(0);
        *net = net.saturating_sub(take);
        push(
            out,
            t,
            Signal::RevenueDelta {
                amount_minor: -take,
                currency,
            },
        );
    }
    if voided {
        p.order_count = p.order_count.saturating_sub(1);
        if p.order_count == 0 {
            push(out, t, Signal::PayingDelta(-1));
        }
    }
    voided
}

fn survey(p: &mut Profile, e: &InteractionEvent, out: &mut FoldOutput) {
    let Some(score) = e.score else { return };
    let t = e.occurred_at;
    match e.survey_type.as_deref() {
        Some("csat") if (1..=5).contains(&score) => {
            p.csat_answers += 1;
            let satisfied = score >= 4;
            if satisfied {
                p.csat_satisfied += 1;
            }
            push(out, t, Signal::Csat { satisfied });
        }
        Some("nps") if (0..=10).contains(&score) => {
            p.last_nps = Some(score as u8);
            push(out, t, Signal::Nps { score: score as u8 });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
