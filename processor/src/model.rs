//! The domain model: interaction events in, the per-customer profile, stage
//! transitions out, and the signals the fold hands to the aggregates.
//!
//! Every collection here is ordered (`BTreeMap`) so that encodings are
//! byte-for-byte deterministic.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Granularity;

/// One customer interaction, as decoded from Avro or JSON (`siklus.InteractionEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InteractionEvent {
    /// Unique id, used to ignore duplicates of the same event.
    pub event_id: String,
    /// The customer; also the Kafka key.
    pub customer_id: String,
    /// One of the types of [`EventType`]; unknown types are kept and ignored by the rules.
    pub event_type: String,
    /// Event time, epoch milliseconds UTC (RFC 3339 or epoch millis in JSON).
    #[serde(with = "crate::time::rfc3339")]
    pub occurred_at: i64,
    /// web, app, email, whatsapp, facebook, instagram, phone, sms, store, social, other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Marketing campaign, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Order the event refers to (orders, cancels, refunds, returns, deliveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Money in minor units (cents); never negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
    /// ISO 4217 currency of `amount_minor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// `csat` or `nps`, for `survey.responded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey_type: Option<String>,
    /// csat 1..=5, nps 0..=10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<i32>,
    /// The referred customer, for `referral.converted` (the key is the referrer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referee_id: Option<String>,
    /// Free-form pass-through properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

/// The known event types. Anything else is [`EventType::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum EventType {
    AdImpression,
    MessageDelivered,
    MessageOpened,
    PageViewed,
    StoreVisited,
    AdClicked,
    MessageClicked,
    LeadCreated,
    AccountSignedUp,
    ConversationStarted,
    NewsletterSubscribed,
    OrderCompleted,
    OrderCancelled,
    OrderRefunded,
    ReturnCompleted,
    OrderDelivered,
    TicketOpened,
    TicketResolved,
    SurveyResponded,
    ReferralSent,
    ReferralConverted,
    ReviewPosted,
    CustomerErased,
    Unknown,
}

impl EventType {
    /// Every known type with its wire name.
    pub const KNOWN: [(&'static str, EventType); 23] = [
        ("ad.impression", EventType::AdImpression),
        ("message.delivered", EventType::MessageDelivered),
        ("message.opened", EventType::MessageOpened),
        ("page.viewed", EventType::PageViewed),
        ("store.visited", EventType::StoreVisited),
        ("ad.clicked", EventType::AdClicked),
        ("message.clicked", EventType::MessageClicked),
        ("lead.created", EventType::LeadCreated),
        ("account.signed_up", EventType::AccountSignedUp),
        ("conversation.started", EventType::ConversationStarted),
        ("newsletter.subscribed", EventType::NewsletterSubscribed),
        ("order.completed", EventType::OrderCompleted),
        ("order.cancelled", EventType::OrderCancelled),
        ("order.refunded", EventType::OrderRefunded),
        ("return.completed", EventType::ReturnCompleted),
        ("order.delivered", EventType::OrderDelivered),
        ("ticket.opened", EventType::TicketOpened),
        ("ticket.resolved", EventType::TicketResolved),
        ("survey.responded", EventType::SurveyResponded),
        ("referral.sent", EventType::ReferralSent),
        ("referral.converted", EventType::ReferralConverted),
        ("review.posted", EventType::ReviewPosted),
        ("customer.erased", EventType::CustomerErased),
    ];

    /// Parses a wire name; unknown names give [`EventType::Unknown`].
    pub fn parse(s: &str) -> EventType {
        Self::KNOWN
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, t)| *t)
            .unwrap_or(EventType::Unknown)
    }

    /// The wire name (`"unknown"` for unknown types).
    pub fn as_str(self) -> &'static str {
        Self::KNOWN
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    /// The default activity set: every customer-initiated type. Company-initiated
    /// reach (`ad.impression`, `message.delivered`) and erasure do not count.
    pub fn default_activity(self) -> bool {
        !matches!(
            self,
            EventType::AdImpression
                | EventType::MessageDelivered
                | EventType::CustomerErased
                | EventType::Unknown
        )
    }
}

/// The forward-only milestone dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Milestone {
    /// Touched by any event.
    Reached,
    /// A lead, sign-up, customer-initiated conversation or subscription.
    Acquired,
    /// First completed order with an amount above zero.
    Converted,
    /// A second order.
    Developing,
    /// At least N orders within the trailing window.
    Loyal,
    /// Converted a referral, or a promoter (NPS 9-10) who sent a referral.
    Advocate,
}

impl Milestone {
    /// The stage name used in transitions.
    pub fn as_str(self) -> &'static str {
        match self {
            Milestone::Reached => "reached",
            Milestone::Acquired => "acquired",
            Milestone::Converted => "converted",
            Milestone::Developing => "developing",
            Milestone::Loyal => "loyal",
            Milestone::Advocate => "advocate",
        }
    }
}

/// The activity status dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Activity within `at_risk_after`.
    Active,
    /// No activity for `at_risk_after`.
    AtRisk,
    /// No activity for `churn_after`.
    Churned,
}

impl Activity {
    /// The stage name used in transitions.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Active => "active",
            Activity::AtRisk => "at_risk",
            Activity::Churned => "churned",
        }
    }
}

/// Every stage name of every dimension, as transitions spell them.
pub const STAGE_NAMES: [&str; 9] = [
    "reached",
    "acquired",
    "converted",
    "developing",
    "loyal",
    "advocate",
    "active",
    "at_risk",
    "churned",
];

/// A name from a closed set (a stage, a rule): borrowed from the static
/// list when the fold made it, owned only when decoded from an unknown
/// spelling. Encoded as the plain string.
pub type Name = Cow<'static, str>;

/// Every rule name the fold gives a transition.
pub const RULE_NAMES: [&str; 12] = [
    "first_touch",
    "acquisition",
    "first_order",
    "second_order",
    "loyal_orders",
    "referral_converted",
    "promoter_referrer",
    "order_reverted",
    "first_activity",
    "reactivated",
    "inactivity_at_risk",
    "inactivity_churned",
];

/// A decoded stage or rule name, borrowed from the static lists when it is
/// one of them (no allocation kept per transition).
pub fn intern(s: String) -> Name {
    STAGE_NAMES
        .iter()
        .chain(RULE_NAMES.iter())
        .find(|n| **n == s)
        .map_or(Cow::Owned(s), |n| Cow::Borrowed(*n))
}

/// Serde `deserialize_with` of a [`Name`]: interned.
pub fn de_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
    String::deserialize(d).map(intern)
}

/// Serde `deserialize_with` of an optional [`Name`]: interned.
pub fn de_opt_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Name>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(intern))
}

/// The canonical spelling of a stage name, or `None` when no dimension has it.
pub fn stage_from_name(name: &str) -> Option<&'static str> {
    STAGE_NAMES.iter().copied().find(|s| *s == name)
}

/// Which dimension a transition moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// reached → … → advocate.
    Milestone,
    /// active ↔ at_risk ↔ churned.
    Activity,
}

impl Dimension {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Milestone => "milestone",
            Dimension::Activity => "activity",
        }
    }
}

/// One completed order kept in the profile, for the refund and loyalty rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The order id, when the event carried one.
    pub order_id: Option<String>,
    /// Event time of `order.completed`.
    pub at: i64,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// Currency of the amount.
    pub currency: String,
    /// Refunded or returned so far, in minor units.
    pub refunded_minor: i64,
    /// Cancelled or fully refunded: no longer counts as an order.
    pub void: bool,
}

/// The per-customer state: both dimensions and the facts they derive from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Profile {
    /// The customer.
    pub customer_id: String,
    /// Milestone stage, `None` before the first event.
    pub milestone: Option<Milestone>,
    /// Activity status, `None` before the first activity.
    pub activity: Option<Activity>,
    /// Events applied to this profile (the per-customer sequence).
    pub events: u64,
    /// Transitions emitted for this profile; the last one's `seq`.
    pub transitions: u64,
    /// Event time of the first event.
    pub first_seen_at: Option<i64>,
    /// Latest event time seen for this customer (any type).
    pub last_event_at: Option<i64>,
    /// Latest activity (customer-initiated event).
    pub last_activity_at: Option<i64>,
    /// Event time of the first completed order.
    pub first_order_at: Option<i64>,
    /// When the customer entered `acquired` or later; sets the cohort.
    pub acquired_at: Option<i64>,
    /// Completed orders with amount > 0 that were not cancelled or fully refunded.
    pub order_count: u32,
    /// Recent orders (bounded), for refunds and the loyalty window.
    pub orders: Vec<OrderRecord>,
    /// Net revenue per currency in minor units: the historical CLV.
    pub net_revenue: BTreeMap<String, i64>,
    /// Number of cancellations, refunds and returns.
    pub refunds: u32,
    /// Tickets opened and not yet resolved.
    pub open_tickets: u32,
    /// CSAT answers received.
    pub csat_answers: u32,
    /// CSAT answers at 4 or 5.
    pub csat_satisfied: u32,
    /// The latest NPS score.
    pub last_nps: Option<u8>,
    /// `referral.sent` events.
    pub referrals_sent: u32,
    /// `referral.converted` events as referrer.
    pub referrals_converted: u32,
    /// `ad.impression` events.
    pub impressions: u64,
    /// `ad.clicked` and `message.clicked` events.
    pub clicks: u64,
    /// Events per channel.
    pub channels: BTreeMap<String, u64>,
    /// Events of types the rules do not know.
    pub unknown_events: u64,
    /// Start of the last window (per granularity: day, week, month) with activity.
    pub last_active_window: [Option<i64>; 3],
    /// Start of the last window (per granularity) in which the customer sent a referral.
    pub last_referral_window: [Option<i64>; 3],
}

impl Profile {
    /// A new, empty profile.
    pub fn new(customer_id: &str) -> Self {
        Profile {
            customer_id: customer_id.to_string(),
            ..Default::default()
        }
    }

    /// Acquisition cohort: the start of the ISO week of `acquired_at`.
    pub fn cohort_week(&self) -> Option<i64> {
        self.acquired_at.map(|t| Granularity::Week.start(t))
    }

    /// Acquisition cohort: the start of the month of `acquired_at`.
    pub fn cohort_month(&self) -> Option<i64> {
        self.acquired_at.map(|t| Granularity::Month.start(t))
    }

    /// A snapshot of the facts, for transitions.
    pub fn snapshot(&self) -> ProfileSnapshot {
        ProfileSnapshot {
            milestone: self.milestone.map(|m| Cow::Borrowed(m.as_str())),
            activity: self.activity.map(|a| Cow::Borrowed(a.as_str())),
            first_seen_at: self.first_seen_at,
            first_order_at: self.first_order_at,
            last_activity_at: self.last_activity_at,
            order_count: self.order_count,
            net_revenue: self.net_revenue.clone(),
            refunds: self.refunds,
            open_tickets: self.open_tickets,
            csat_answers: self.csat_answers,
            csat_satisfied: self.csat_satisfied,
            last_nps: self.last_nps.map(i32::from),
            referrals_sent: self.referrals_sent,
            referrals_converted: self.referrals_converted,
            impressions: self.impressions as i64,
            clicks: self.clicks as i64,
            cohort_week: self.cohort_week(),
            cohort_month: self.cohort_month(),
            channels: self
                .channels
                .iter()
                .map(|(k, v)| (k.clone(), *v as i64))
                .collect(),
            events: self.events as i64,
        }
    }
}

/// The facts carried by every transition (`siklus.ProfileSnapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProfileSnapshot {
    /// Milestone after the transition.
    #[serde(deserialize_with = "de_opt_name")]
    pub milestone: Option<Name>,
    /// Activity status after the transition.
    #[serde(deserialize_with = "de_opt_name")]
    pub activity: Option<Name>,
    /// First event time.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub first_seen_at: Option<i64>,
    /// First completed order.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub first_order_at: Option<i64>,
    /// Latest activity.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub last_activity_at: Option<i64>,
    /// Valid completed orders.
    pub order_count: u32,
    /// Net revenue per currency (minor units).
    pub net_revenue: BTreeMap<String, i64>,
    /// Cancels, refunds and returns.
    pub refunds: u32,
    /// Unresolved tickets.
    pub open_tickets: u32,
    /// CSAT answers.
    pub csat_answers: u32,
    /// CSAT answers at 4 or 5.
    pub csat_satisfied: u32,
    /// Latest NPS score.
    pub last_nps: Option<i32>,
    /// Referrals sent.
    pub referrals_sent: u32,
    /// Referrals converted.
    pub referrals_converted: u32,
    /// Ad impressions.
    pub impressions: i64,
    /// Clicks.
    pub clicks: i64,
    /// Acquisition cohort week start.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub cohort_week: Option<i64>,
    /// Acquisition cohort month start.
    #[serde(with = "crate::time::rfc3339_opt")]
    pub cohort_month: Option<i64>,
    /// Events per channel.
    pub channels: BTreeMap<String, i64>,
    /// Events applied.
    pub events: i64,
}

/// A stage change (`siklus.StageTransition`), emitted only when a value really changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTransition {
    /// Deterministic id: the same input always yields the same id.
    pub transition_id: String,
    /// The customer.
    pub customer_id: String,
    /// milestone or activity.
    pub dimension: Dimension,
    /// Stage before; `None` on first entry.
    #[serde(deserialize_with = "de_opt_name")]
    pub from_stage: Option<Name>,
    /// Stage after.
    #[serde(deserialize_with = "de_name")]
    pub to_stage: Name,
    /// Event time of the change; for a timer, its deadline.
    #[serde(with = "crate::time::rfc3339")]
    pub occurred_at: i64,
    /// The event that caused it; `None` for a timer.
    pub triggering_event_id: Option<String>,
    /// Name of the rule that fired.
    #[serde(deserialize_with = "de_name")]
    pub rule: Name,
    /// Per-customer transition sequence number, from 1.
    pub seq: u64,
    /// The profile facts after the change (empty when the output left it
    /// out: `outputs.snapshot = "none"`).
    #[serde(default)]
    pub profile: ProfileSnapshot,
}

/// Lifecycle class of a customer's first activity in a window (PostHog / Amplitude meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleClass {
    /// First-ever active window.
    New,
    /// Active in the previous window too.
    Returning,
    /// Not new, not active in the previous window.
    Resurrecting,
}

/// What the fold tells the aggregates about one step, beyond the transitions.
/// Each signal carries the event time it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    /// The customer's first activity in a window of this granularity.
    Active {
        /// Window size.
        granularity: Granularity,
        /// Window start.
        window: i64,
        /// new / returning / resurrecting.
        class: LifecycleClass,
        /// Acquisition cohort start in this granularity (week or month), if acquired.
        cohort: Option<i64>,
    },
    /// The customer joined an acquisition cohort (entered `acquired` or later).
    CohortJoined {
        /// ISO week start of the cohort.
        week: i64,
        /// Month start of the cohort.
        month: i64,
    },
    /// The customer's first `referral.sent` in a window of this granularity.
    Referred {
        /// Window size.
        granularity: Granularity,
        /// Window start.
        window: i64,
    },
    /// A CSAT answer.
    Csat {
        /// Score 4 or 5.
        satisfied: bool,
    },
    /// An NPS answer.
    Nps {
        /// 0..=10.
        score: u8,
    },
    /// An ad impression.
    Impression,
    /// A click.
    Click,
    /// A completed order (amount > 0).
    Order {
        /// Minor units.
        amount_minor: i64,
        /// ISO 4217.
        currency: String,
    },
    /// Net revenue changed (orders add, refunds subtract): the CLV gauge.
    RevenueDelta {
        /// Minor units, signed.
        amount_minor: i64,
        /// ISO 4217.
        currency: String,
    },
    /// The number of paying customers (order_count > 0) changed by this much.
    PayingDelta(i32),
    /// The number of live customers (active or at risk) changed by this much
    /// outside a transition (an erased customer leaves the population).
    LiveDelta(i32),
}

/// A signal with the event time it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedSignal {
    /// Event time.
    pub at: i64,
    /// What happened.
    pub signal: Signal,
}
