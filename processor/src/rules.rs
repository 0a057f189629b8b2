//! The configurable parameters of the lifecycle rules.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::EventType;
use crate::time::DAY_MS;

/// Parameters of the fold. Part of the job's identity: a replay must use the
/// same rules as the live run it is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// No activity for this long makes an active customer `at_risk` (ms; default 30 days).
    pub at_risk_after_ms: i64,
    /// No activity for this long makes a customer `churned` (ms; default 90 days).
    pub churn_after_ms: i64,
    /// Orders needed within `loyal_window_ms` to become `loyal` (default 3).
    pub loyal_orders: u32,
    /// Trailing window of the loyalty rule (ms; default 180 days).
    pub loyal_window_ms: i64,
    /// Event types that count as customer activity. `None` means the default
    /// set: every customer-initiated type (not `ad.impression`, `message.delivered`).
    pub activity_types: Option<BTreeSet<String>>,
    /// Orders kept per profile for the refund and loyalty rules.
    pub max_orders_kept: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            at_risk_after_ms: 30 * DAY_MS,
            churn_after_ms: 90 * DAY_MS,
            loyal_orders: 3,
            loyal_window_ms: 180 * DAY_MS,
            activity_types: None,
            max_orders_kept: 32,
        }
    }
}

impl Rules {
    /// Whether an event of this type (and wire name) counts as activity.
    pub fn is_activity(&self, ty: EventType, name: &str) -> bool {
        match &self.activity_types {
            Some(set) => set.contains(name),
            None => ty.default_activity(),
        }
    }

    /// Checks the parameters make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.at_risk_after_ms <= 0 {
            return Err("rules.at_risk_after_ms must be positive".into());
        }
        if self.churn_after_ms <= self.at_risk_after_ms {
            return Err("rules.churn_after_ms must be greater than rules.at_risk_after_ms".into());
        }
        if self.loyal_orders < 3 {
            return Err(
                "rules.loyal_orders must be at least 3 (developing is the second order)".into(),
            );
        }
        if self.loyal_window_ms <= 0 {
            return Err("rules.loyal_window_ms must be positive".into());
        }
        if self.max_orders_kept < self.loyal_orders as usize {
            return Err("rules.max_orders_kept must be at least rules.loyal_orders".into());
        }
        Ok(())
    }
}
