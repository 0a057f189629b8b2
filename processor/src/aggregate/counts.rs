//! The per-window counters shared by both stages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one partition (or the sum of all of them) counted in one window.
///
/// Counts describe the window itself and are dropped when they arrive too late;
/// the gauge deltas (`live_delta`, `revenue_delta`, `paying_delta`,
/// `cohort_joins`) move to the earliest open window instead, so that the
/// cumulative gauges stay exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounts {
    /// Input events applied in time for this window.
    pub events: u64,
    /// Events (or whole partials) that arrived for an already closed window
    /// while this one was the earliest open window.
    pub late_events: u64,
    /// Customers active in the window.
    pub active: u64,
    /// Active customers in their first-ever active window.
    pub new: u64,
    /// Active customers who were active in the previous window too.
    pub returning: u64,
    /// Active customers, not new, not active in the previous window.
    pub resurrecting: u64,
    /// Activity transitions to `at_risk`.
    pub at_risk_entered: u64,
    /// Activity transitions to `churned`.
    pub churned: u64,
    /// Activity transitions from `at_risk` or `churned` back to `active`.
    pub reactivated: u64,
    /// Gauge: change in the number of live customers (active or at_risk).
    pub live_delta: i64,
    /// CSAT answers.
    pub csat_answers: u64,
    /// CSAT answers at 4 or 5.
    pub csat_satisfied: u64,
    /// NPS answers.
    pub nps_answers: u64,
    /// NPS answers at 9 or 10.
    pub nps_promoters: u64,
    /// NPS answers at 0 to 6.
    pub nps_detractors: u64,
    /// Ad impressions.
    pub impressions: u64,
    /// Clicks.
    pub clicks: u64,
    /// Customers who sent a referral in the window.
    pub referrers: u64,
    /// Completed orders.
    pub orders: u64,
    /// Order amounts per currency (minor units).
    pub revenue: BTreeMap<String, i64>,
    /// Gauge: change of the net revenue per currency (minor units).
    pub revenue_delta: BTreeMap<String, i64>,
    /// Gauge: change of the number of paying customers.
    pub paying_delta: i64,
    /// Gauge (week and month only): customers who joined each acquisition
    /// cohort, keyed by cohort start.
    pub cohort_joins: BTreeMap<i64, u64>,
    /// Week and month only: customers of each cohort (by cohort start) active
    /// in this window.
    pub cohort_active: BTreeMap<i64, u64>,
}

impl WindowCounts {
    /// Whether nothing at all was counted.
    pub fn is_empty(&self) -> bool {
        *self == WindowCounts::default()
    }

    /// Adds everything of `other` (both counts and gauges).
    pub fn absorb(&mut self, other: &WindowCounts) {
        self.events += other.events;
        self.late_events += other.late_events;
        self.active += other.active;
        self.new += other.new;
        self.returning += other.returning;
        self.resurrecting += other.resurrecting;
        self.at_risk_entered += other.at_risk_entered;
        self.churned += other.churned;
        self.reactivated += other.reactivated;
        self.csat_answers += other.csat_answers;
        self.csat_satisfied += other.csat_satisfied;
        self.nps_answers += other.nps_answers;
        self.nps_promoters += other.nps_promoters;
        self.nps_detractors += other.nps_detractors;
        self.impressions += other.impressions;
        self.clicks += other.clicks;
        self.referrers += other.referrers;
        self.orders += other.orders;
        add_map(&mut self.revenue, &other.revenue, i64::saturating_add);
        add_map(
            &mut self.cohort_active,
            &other.cohort_active,
            u64::saturating_add,
        );
        self.absorb_gauges(other);
    }

    /// Adds only the gauge deltas of `other` (for a late contribution).
    pub fn absorb_gauges(&mut self, other: &WindowCounts) {
        self.live_delta = self.live_delta.saturating_add(other.live_delta);
        self.paying_delta = self.paying_delta.saturating_add(other.paying_delta);
        add_map(
            &mut self.revenue_delta,
            &other.revenue_delta,
            i64::saturating_add,
        );
        add_map(
            &mut self.cohort_joins,
            &other.cohort_joins,
            u64::saturating_add,
        );
    }
}

/// Adds `from` into `into` key by key (money saturates rather than overflowing
/// on absurd input amounts).
fn add_map<K: Ord + Clone, V: Copy + Default>(
    into: &mut BTreeMap<K, V>,
    from: &BTreeMap<K, V>,
    add: fn(V, V) -> V,
) {
    for (k, v) in from {
        let slot = into.entry(k.clone()).or_default();
        *slot = add(*slot, *v);
    }
}
