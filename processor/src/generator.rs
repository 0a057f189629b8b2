//! A deterministic, streaming generator of synthetic interaction events.
//!
//! [`Generator`] produces a time-ordered firehose of [`InteractionEvent`]s for a
//! population of customers, each following a *persona* (browser, lead,
//! one-time buyer, repeat buyer, advocate, churner, service user) so that every
//! stage and transition of the lifecycle model occurs. It is used by
//! `siklus demo`, by tests and by benchmarks.
//!
//! Properties:
//! - **Deterministic**: the output depends only on [`GeneratorConfig`]. The
//!   random numbers come from a SplitMix64 generator defined here, and only exact
//!   IEEE arithmetic (no `ln`, `exp`, …) is used, so the output is byte-stable
//!   across platforms and releases.
//! - **Time-ordered**: `occurred_at` never decreases across the whole stream.
//! - **Bounded memory**: customers are admitted in arrival order and kept in a
//!   binary heap keyed by their next event time, one small (~64 byte) entry per
//!   live customer; a customer leaves the heap when their event budget is used or
//!   the period ends.
//! - **Sized by volume**: the total number of events is close to
//!   `customers * events_per_customer`.

use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BTreeMap, BinaryHeap};

use crate::model::InteractionEvent;
use crate::time::DAY_MS;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Share of the period over which customers arrive (staggered acquisition).
const ARRIVAL_SHARE_PERMILLE: i64 = 600;
/// Largest population (keeps the arrival arithmetic within `u128`).
const MAX_CUSTOMERS: u64 = 1 << 32;
/// Longest per-customer plan of key events.
const PLAN_MAX: usize = 16;
/// Shortest at-risk silence (beyond the default 30-day at-risk threshold).
const AT_RISK_SILENCE_MIN: i64 = 35 * DAY_MS;
/// Longest at-risk silence (below the default 90-day churn threshold).
const AT_RISK_SILENCE_MAX: i64 = 60 * DAY_MS;
/// Shortest churn silence (beyond the default 90-day churn threshold).
const CHURN_SILENCE_MIN: i64 = 100 * DAY_MS;
/// Longest churn silence.
const CHURN_SILENCE_MAX: i64 = 200 * DAY_MS;

/// Parameters of a synthetic workload.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Number of customers in the population (at most 2^32; more are not generated).
    pub customers: u64,
    /// Seed: the same configuration always yields the same events.
    pub seed: u64,
    /// Start of the period, epoch milliseconds UTC.
    pub start: i64,
    /// Length of the period in days; no event occurs at or after its end.
    pub days: u32,
    /// Mean number of events per customer; the total is close to
    /// `customers * events_per_customer`.
    pub events_per_customer: f64,
}

impl Default for GeneratorConfig {
    /// 1000 customers, seed 42, from 2024-01-01T00:00:00Z for 365 days, 8 events per customer.
    fn default() -> Self {
        GeneratorConfig {
            customers: 1000,
            seed: 42,
            start: 1_704_067_200_000,
            days: 365,
            events_per_customer: 8.0,
        }
    }
}

impl GeneratorConfig {
    /// End of the period (exclusive), epoch milliseconds.
    pub fn end(&self) -> i64 {
        self.start.saturating_add(i64::from(self.days) * DAY_MS)
    }
}

// ---------------------------------------------------------------------------
// Randomness: SplitMix64, exact arithmetic only.

/// The SplitMix64 finalizer: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: 8 bytes of state, fast, good enough for a workload.
#[derive(Debug, Clone, Copy)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`; multiply-shift, no rejection).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo) as u64) as i64
    }

    /// True with probability `percent / 100`.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A positive, exponential-like variate with mean 1: a geometric integer
    /// part (leading zeros of a random word) plus a uniform fraction. Avoids
    /// `ln`, whose last bit may differ between platforms.
    fn exp1(&mut self) -> f64 {
        let g = self.next_u64().leading_zeros();
        (f64::from(g) + self.unit()) / 1.5
    }

    /// Picks from a weighted table.
    fn pick<T: Copy>(&mut self, table: &[(T, u32)]) -> T {
        let total: u32 = table.iter().map(|(_, w)| *w).sum();
        let mut x = self.below(u64::from(total.max(1))) as u32;
        for (item, w) in table {
            if x < *w {
                return *item;
            }
            x -= *w;
        }
        table[table.len() - 1].0
    }
}

// ---------------------------------------------------------------------------
// Event kinds, plans, personas.

/// What a customer emits next. More specific than the wire type: it also says
/// how to fill the fields (full or partial refund, promoter or not, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    AdImpression,
    MessageDelivered,
    MessageOpened,
    MessageClicked,
    PageViewed,
    AdClicked,
    StoreVisited,
    LeadCreated,
    SignedUp,
    Conversation,
    Newsletter,
    Order,
    Delivered,
    Cancel,
    RefundFull,
    RefundPartial,
    ReturnFull,
    ReturnPartial,
    TicketOpened,
    TicketResolved,
    Csat,
    NpsPromoter,
    NpsOther,
    ReferralSent,
    ReferralConverted,
    Review,
}

impl Ev {
    fn wire(self) -> &'static str {
        match self {
            Ev::AdImpression => "ad.impression",
            Ev::MessageDelivered => "message.delivered",
            Ev::MessageOpened => "message.opened",
            Ev::MessageClicked => "message.clicked",
            Ev::PageViewed => "page.viewed",
            Ev::AdClicked => "ad.clicked",
            Ev::StoreVisited => "store.visited",
            Ev::LeadCreated => "lead.created",
            Ev::SignedUp => "account.signed_up",
            Ev::Conversation => "conversation.started",
            Ev::Newsletter => "newsletter.subscribed",
            Ev::Order => "order.completed",
            Ev::Delivered => "order.delivered",
            Ev::Cancel => "order.cancelled",
            Ev::RefundFull | Ev::RefundPartial => "order.refunded",
            Ev::ReturnFull | Ev::ReturnPartial => "return.completed",
            Ev::TicketOpened => "ticket.opened",
            Ev::TicketResolved => "ticket.resolved",
            Ev::Csat | Ev::NpsPromoter | Ev::NpsOther => "survey.responded",
            Ev::ReferralSent => "referral.sent",
            Ev::ReferralConverted => "referral.converted",
            Ev::Review => "review.posted",
        }
    }

    fn is_acquisition(self) -> bool {
        matches!(
            self,
            Ev::LeadCreated | Ev::SignedUp | Ev::Conversation | Ev::Newsletter
        )
    }

    fn has_campaign(self) -> bool {
        matches!(
            self,
            Ev::AdImpression
                | Ev::AdClicked
                | Ev::MessageDelivered
                | Ev::MessageOpened
                | Ev::MessageClicked
        )
    }

    /// Whether the event refers to an earlier order of the customer.
    fn needs_order(self) -> bool {
        matches!(
            self,
            Ev::Delivered
                | Ev::Cancel
                | Ev::RefundFull
                | Ev::RefundPartial
                | Ev::ReturnFull
                | Ev::ReturnPartial
        )
    }

    fn channels(self) -> &'static [(&'static str, u32)] {
        const ADS: &[(&str, u32)] = &[
            ("social", 30),
            ("instagram", 25),
            ("facebook", 25),
            ("web", 20),
        ];
        const MESSAGES: &[(&str, u32)] =
            &[("email", 55), ("sms", 15), ("whatsapp", 15), ("app", 15)];
        const SITE: &[(&str, u32)] = &[("web", 65), ("app", 35)];
        const STORE: &[(&str, u32)] = &[("store", 1)];
        const LEAD: &[(&str, u32)] = &[
            ("web", 40),
            ("facebook", 25),
            ("instagram", 20),
            ("other", 15),
        ];
        const SIGNUP: &[(&str, u32)] = &[("web", 60), ("app", 40)];
        const CONVERSATION: &[(&str, u32)] = &[
            ("whatsapp", 40),
            ("facebook", 20),
            ("phone", 20),
            ("email", 20),
        ];
        const NEWSLETTER: &[(&str, u32)] = &[("web", 70), ("email", 30)];
        const ORDER: &[(&str, u32)] = &[("web", 55), ("app", 30), ("store", 10), ("phone", 5)];
        const DELIVERY: &[(&str, u32)] = &[("other", 1)];
        const CANCEL: &[(&str, u32)] = &[("web", 60), ("phone", 40)];
        const REFUND: &[(&str, u32)] = &[("web", 60), ("phone", 20), ("store", 20)];
        const RETURN: &[(&str, u32)] = &[("store", 50), ("web", 50)];
        const TICKET: &[(&str, u32)] =
            &[("email", 35), ("phone", 30), ("whatsapp", 20), ("web", 15)];
        const SURVEY: &[(&str, u32)] = &[("email", 70), ("sms", 30)];
        const REFERRAL: &[(&str, u32)] = &[("whatsapp", 40), ("email", 30), ("social", 30)];
        match self {
            Ev::AdImpression | Ev::AdClicked => ADS,
            Ev::MessageDelivered | Ev::MessageOpened | Ev::MessageClicked => MESSAGES,
            Ev::PageViewed | Ev::Review => SITE,
            Ev::StoreVisited => STORE,
            Ev::LeadCreated => LEAD,
            Ev::SignedUp => SIGNUP,
            Ev::Conversation => CONVERSATION,
            Ev::Newsletter => NEWSLETTER,
            Ev::Order => ORDER,
            Ev::Delivered => DELIVERY,
            Ev::Cancel => CANCEL,
            Ev::RefundFull | Ev::RefundPartial => REFUND,
            Ev::ReturnFull | Ev::ReturnPartial => RETURN,
            Ev::TicketOpened | Ev::TicketResolved => TICKET,
            Ev::Csat | Ev::NpsPromoter | Ev::NpsOther => SURVEY,
            Ev::ReferralSent => REFERRAL,
            Ev::ReferralConverted => SIGNUP,
        }
    }
}

/// Filler events of a prospect (not yet acquired): mostly reach.
const FILL_PROSPECT: &[(Ev, u32)] = &[
    (Ev::AdImpression, 34),
    (Ev::MessageDelivered, 14),
    (Ev::MessageOpened, 8),
    (Ev::PageViewed, 26),
    (Ev::AdClicked, 8),
    (Ev::MessageClicked, 3),
    (Ev::StoreVisited, 7),
];

/// Filler events of an acquired customer who has not bought.
const FILL_ACQUIRED: &[(Ev, u32)] = &[
    (Ev::MessageDelivered, 26),
    (Ev::MessageOpened, 20),
    (Ev::MessageClicked, 8),
    (Ev::PageViewed, 28),
    (Ev::AdImpression, 12),
    (Ev::AdClicked, 3),
    (Ev::StoreVisited, 3),
];

/// Filler events of a paying customer.
const FILL_CUSTOMER: &[(Ev, u32)] = &[
    (Ev::PageViewed, 32),
    (Ev::MessageDelivered, 20),
    (Ev::MessageOpened, 14),
    (Ev::MessageClicked, 6),
    (Ev::AdImpression, 10),
    (Ev::AdClicked, 3),
    (Ev::StoreVisited, 10),
    (Ev::Review, 3),
    (Ev::Csat, 2),
];

/// One step of a customer's plan: a key event, or a long silence before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Event(Ev),
    /// 35-60 days without anything: at_risk, then reactivated.
    SilenceAtRisk,
    /// 100-200 days without anything: churned, then reactivated.
    SilenceChurn,
}

impl Item {
    /// The shortest length of a silence (0 for an event).
    fn silence_min(self) -> i64 {
        match self {
            Item::Event(_) => 0,
            Item::SilenceAtRisk => AT_RISK_SILENCE_MIN,
            Item::SilenceChurn => CHURN_SILENCE_MIN,
        }
    }
}

/// Customer archetypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persona {
    /// Reach only: impressions, messages, page views, clicks. Never acquired.
    Browser,
    /// Acquired (lead, newsletter, conversation) but never buys.
    Lead,
    /// One order; some cancel, refund or return it.
    OneTime,
    /// Two to five orders, often loyal.
    Repeat,
    /// Orders, promoter NPS, referrals.
    Advocate,
    /// Active, then silent for 100-200 days; some come back.
    Churner,
    /// Orders, tickets, CSAT surveys.
    Service,
}

/// Persona, share (percent) and relative event budget.
const PERSONAS: [(Persona, u32, f64); 7] = [
    (Persona::Browser, 30, 0.5),
    (Persona::Lead, 16, 0.8),
    (Persona::OneTime, 14, 1.0),
    (Persona::Repeat, 13, 1.6),
    (Persona::Advocate, 5, 1.9),
    (Persona::Churner, 12, 1.1),
    (Persona::Service, 10, 1.4),
];

/// Currencies: share and order-amount scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Currency {
    Eur,
    Usd,
    Idr,
}

impl Currency {
    fn code(self) -> &'static str {
        match self {
            Currency::Eur => "EUR",
            Currency::Usd => "USD",
            Currency::Idr => "IDR",
        }
    }
}

/// The key events of a customer, built once on arrival and cut to the budget.
struct PlanBuilder {
    items: [Item; PLAN_MAX],
    len: usize,
    events: u32,
    cap: u32,
}

impl PlanBuilder {
    fn new(cap: u32) -> Self {
        PlanBuilder {
            items: [Item::SilenceAtRisk; PLAN_MAX],
            len: 0,
            events: 0,
            cap,
        }
    }

    fn full(&self) -> bool {
        self.len >= PLAN_MAX || self.events >= self.cap
    }

    fn ev(&mut self, e: Ev) {
        if !self.full() {
            self.items[self.len] = Item::Event(e);
            self.len += 1;
            self.events += 1;
        }
    }

    fn silence(&mut self, s: Item) {
        // A silence needs room for at least one event after it.
        if !self.full() && self.len + 1 < PLAN_MAX {
            self.items[self.len] = s;
            self.len += 1;
        }
    }

    /// Drops trailing silences (nothing follows them).
    fn finish(mut self) -> ([Item; PLAN_MAX], u8, u8) {
        while self.len > 0 && !matches!(self.items[self.len - 1], Item::Event(_)) {
            self.len -= 1;
        }
        (self.items, self.len as u8, self.events as u8)
    }
}

fn build_plan(persona: Persona, budget: u32, rng: &mut Rng) -> ([Item; PLAN_MAX], u8, u8) {
    let mut p = PlanBuilder::new(budget);
    match persona {
        Persona::Browser => {}
        Persona::Lead => {
            let first = rng.pick(&[
                (Ev::LeadCreated, 35),
                (Ev::Newsletter, 30),
                (Ev::Conversation, 35),
            ]);
            p.ev(first);
            if rng.chance(25) {
                p.ev(if first == Ev::Newsletter {
                    Ev::Conversation
                } else {
                    Ev::Newsletter
                });
            }
            if rng.chance(10) {
                p.ev(Ev::SignedUp);
            }
        }
        Persona::OneTime => {
            p.ev(rng.pick(&[
                (Ev::SignedUp, 85),
                (Ev::Conversation, 10),
                (Ev::LeadCreated, 5),
            ]));
            p.ev(Ev::Order);
            if rng.chance(10) {
                p.ev(Ev::Cancel);
            } else {
                p.ev(Ev::Delivered);
                match rng.below(100) {
                    0..=11 => p.ev(Ev::RefundFull),
                    12..=17 => p.ev(Ev::ReturnFull),
                    18..=25 => p.ev(Ev::ReturnPartial),
                    26..=29 => p.ev(Ev::RefundPartial),
                    _ => {}
                }
                if rng.chance(30) {
                    p.ev(Ev::Review);
                }
                if rng.chance(15) {
                    p.ev(Ev::Csat);
                }
            }
        }
        Persona::Repeat => {
            p.ev(rng.pick(&[(Ev::SignedUp, 90), (Ev::Newsletter, 10)]));
            let orders = 2 + rng.below(4);
            let mut silenced = false;
            for i in 0..orders {
                if i > 0 && !silenced && rng.chance(20) {
                    p.silence(Item::SilenceAtRisk);
                    silenced = true;
                }
                p.ev(Ev::Order);
                if rng.chance(95) {
                    p.ev(Ev::Delivered);
                    if rng.chance(8) {
                        p.ev(Ev::ReturnPartial);
                    } else if i > 0 && rng.chance(5) {
                        p.ev(Ev::RefundFull);
                    }
                }
            }
            if rng.chance(20) {
                p.ev(Ev::Review);
            }
            if rng.chance(10) {
                p.ev(Ev::Csat);
            }
        }
        Persona::Advocate => {
            p.ev(Ev::SignedUp);
            let orders = 2 + rng.below(2);
            for _ in 0..orders {
                p.ev(Ev::Order);
                p.ev(Ev::Delivered);
            }
            let promoter = rng.chance(85);
            p.ev(if promoter {
                Ev::NpsPromoter
            } else {
                Ev::NpsOther
            });
            p.ev(Ev::ReferralSent);
            if rng.chance(55) || !promoter {
                p.ev(Ev::ReferralConverted);
            }
            if rng.chance(50) {
                p.ev(Ev::Review);
            }
        }
        Persona::Churner => {
            p.ev(rng.pick(&[
                (Ev::SignedUp, 70),
                (Ev::LeadCreated, 15),
                (Ev::Conversation, 15),
            ]));
            if rng.chance(75) {
                p.ev(Ev::Order);
                p.ev(Ev::Delivered);
                if rng.chance(30) {
                    p.ev(Ev::Order);
                    p.ev(Ev::Delivered);
                }
            }
            if rng.chance(55) {
                // Comes back after a long silence.
                p.silence(Item::SilenceChurn);
                if rng.chance(60) {
                    p.ev(Ev::Order);
                    p.ev(Ev::Delivered);
                } else {
                    p.ev(Ev::PageViewed);
                }
            }
        }
        Persona::Service => {
            p.ev(Ev::SignedUp);
            p.ev(Ev::Order);
            p.ev(Ev::Delivered);
            let tickets = if rng.chance(40) { 2 } else { 1 };
            for _ in 0..tickets {
                p.ev(Ev::TicketOpened);
                if rng.chance(90) {
                    p.ev(Ev::TicketResolved);
                }
                p.ev(Ev::Csat);
            }
            if rng.chance(30) {
                p.ev(Ev::NpsOther);
            }
            if rng.chance(25) {
                p.silence(Item::SilenceAtRisk);
                p.ev(Ev::Order);
                p.ev(Ev::Delivered);
            }
        }
    }
    p.finish()
}

// ---------------------------------------------------------------------------
// Per-customer state.

/// One live customer: ~64 bytes, the heap entry itself.
#[derive(Debug, Clone)]
struct Cust {
    /// Time of the next event.
    at: i64,
    /// Customer index (the id's number).
    idx: u64,
    rng: Rng,
    /// Events emitted so far.
    n: u32,
    /// Events this customer will emit at most.
    budget: u32,
    plan: [Item; PLAN_MAX],
    plan_len: u8,
    plan_pos: u8,
    /// Event items left in the plan (silences excluded).
    keys_left: u8,
    /// Orders placed so far (the latest order's number).
    orders: u8,
    /// Tickets opened and not yet resolved.
    open_tickets: u8,
    /// The event emitted at `at`.
    next: Ev,
    currency: Currency,
    acquired: bool,
}

impl PartialEq for Cust {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.idx == other.idx
    }
}

impl Eq for Cust {}

impl PartialOrd for Cust {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cust {
    /// Reversed, so that the max-heap yields the earliest event (then the lowest index).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.idx.cmp(&self.idx))
    }
}

/// The immutable parameters shared by every customer.
#[derive(Debug, Clone)]
struct Ctx {
    cfg: GeneratorConfig,
    end: i64,
    /// Width of the zero-padded customer number.
    width: usize,
    /// Mean event budget per persona, in the order of [`PERSONAS`].
    budget_mean: [f64; PERSONAS.len()],
}

/// A deterministic stream of synthetic [`InteractionEvent`]s in non-decreasing
/// `occurred_at` order. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Generator {
    ctx: Ctx,
    heap: BinaryHeap<Cust>,
    /// The next customer to arrive, if any.
    pending: Option<Cust>,
}

impl Generator {
    /// A generator for this configuration.
    pub fn new(cfg: GeneratorConfig) -> Self {
        let weighted: f64 = PERSONAS.iter().map(|(_, w, f)| f64::from(*w) * f).sum();
        let total_w: f64 = PERSONAS.iter().map(|(_, w, _)| f64::from(*w)).sum();
        let epc = if cfg.events_per_customer.is_finite() {
            cfg.events_per_customer.max(0.0)
        } else {
            0.0
        };
        let mut budget_mean = [0.0; PERSONAS.len()];
        for (m, (_, _, f)) in budget_mean.iter_mut().zip(PERSONAS.iter()) {
            *m = epc * f * total_w / weighted;
        }
        let mut width = 6;
        let mut max = cfg.customers.saturating_sub(1) / 1_000_000;
        while max > 0 {
            width += 1;
            max /= 10;
        }
        let ctx = Ctx {
            end: cfg.end(),
            cfg,
            width,
            budget_mean,
        };
        let pending = ctx.arrival(0);
        Generator {
            ctx,
            heap: BinaryHeap::new(),
            pending,
        }
    }

    /// Moves arriving customers into the heap while they are due no later
    /// than the earliest scheduled event.
    fn admit(&mut self) {
        while let Some(p) = &self.pending {
            if self.heap.peek().is_some_and(|top| top.at < p.at) {
                break;
            }
            let idx = p.idx;
            if let Some(c) = self.pending.take() {
                self.heap.push(c);
            }
            self.pending = self.ctx.arrival(idx + 1);
        }
    }
}

impl Iterator for Generator {
    type Item = InteractionEvent;

    fn next(&mut self) -> Option<InteractionEvent> {
        self.admit();
        let mut top = self.heap.peek_mut()?;
        let event = self.ctx.emit(&mut top);
        if self.ctx.schedule(&mut top) {
            // Dropping the PeekMut sifts the entry to its new place.
            drop(top);
        } else {
            PeekMut::pop(top);
        }
        Some(event)
    }
}

impl Ctx {
    /// Customer `idx`, with its first event scheduled at its arrival time;
    /// `None` past the population or the period.
    fn arrival(&self, idx: u64) -> Option<Cust> {
        let n = self.cfg.customers.min(MAX_CUSTOMERS);
        if idx >= n {
            return None;
        }
        let mut rng = Rng(mix(
            self.cfg.seed ^ mix(idx.wrapping_add(0x5851_F42D_4C95_7F2D))
        ));
        // Stratified arrival: customer idx arrives in the idx-th slice of the
        // arrival span, at a random point in it. Monotone in idx by construction.
        let span = (self.end - self.cfg.start) / 1000 * ARRIVAL_SHARE_PERMILLE;
        let frac = (u128::from(idx) << 32) + u128::from(rng.next_u64() >> 32);
        let offset = (span.max(0) as u128 * frac / (u128::from(n) << 32)) as i64;
        let at = self.cfg.start + offset;
        if at >= self.end {
            return None;
        }
        let which = rng.below(100) as u32;
        let mut acc = 0;
        let mut k = 0;
        for (i, (_, w, _)) in PERSONAS.iter().enumerate() {
            acc += w;
            k = i;
            if which < acc {
                break;
            }
        }
        let persona = PERSONAS[k].0;
        let mean = self.budget_mean[k];
        // Budget: 1 + (mean - 1) * X with E[X] = 1, rounded stochastically.
        let x = 0.3 + 0.7 * rng.exp1();
        let v = (mean - 1.0).max(0.0) * x;
        let whole = (v as u32).min(u32::MAX - 2);
        let budget = 1 + whole + u32::from(rng.unit() < v - f64::from(whole));
        let currency = rng.pick(&[(Currency::Eur, 80), (Currency::Usd, 12), (Currency::Idr, 8)]);
        let (plan, plan_len, keys_left) = build_plan(persona, budget, &mut rng);
        let mut c = Cust {
            at,
            idx,
            rng,
            n: 0,
            budget,
            plan,
            plan_len,
            plan_pos: 0,
            keys_left,
            orders: 0,
            open_tickets: 0,
            next: Ev::PageViewed,
            currency,
            acquired: false,
        };
        let (first, _) = self.choose(&mut c);
        c.next = first;
        Some(c)
    }

    /// Picks the customer's next event: the next key of the plan with
    /// probability keys left / events left (spreading the keys uniformly among
    /// the fillers; a follow-up such as a delivery always comes next), else a
    /// filler for the customer's stage. Also returns the
    /// silence that precedes it, if any.
    fn choose(&self, c: &mut Cust) -> (Ev, Option<Item>) {
        let left = u64::from(c.budget.saturating_sub(c.n));
        let keys = u64::from(c.keys_left);
        // A follow-up (delivery, cancel, resolution) comes right after the key it follows.
        let follow_up = matches!(
            c.plan.get(usize::from(c.plan_pos)),
            Some(Item::Event(Ev::Delivered | Ev::Cancel | Ev::TicketResolved))
        );
        if keys > 0 && (follow_up || keys >= left || c.rng.below(left) < keys) {
            let mut silence = None;
            while usize::from(c.plan_pos) < usize::from(c.plan_len) {
                let item = c.plan[usize::from(c.plan_pos)];
                c.plan_pos += 1;
                match item {
                    Item::Event(e) => {
                        c.keys_left -= 1;
                        return (e, silence);
                    }
                    s => silence = Some(s),
                }
            }
        }
        let table = if c.orders > 0 {
            FILL_CUSTOMER
        } else if c.acquired {
            FILL_ACQUIRED
        } else {
            FILL_PROSPECT
        };
        (c.rng.pick(table), None)
    }

    /// Schedules the customer's next event after the one at `c.at`. Returns
    /// false when the customer is done (budget used or period over).
    fn schedule(&self, c: &mut Cust) -> bool {
        let left = i64::from(c.budget.saturating_sub(c.n));
        if left == 0 {
            return false;
        }
        let now = c.at;
        let (next, silence) = self.choose(c);
        let avail = self.end - now;
        let gap = match silence {
            Some(s) => {
                let (lo, hi) = match s {
                    Item::SilenceChurn => (CHURN_SILENCE_MIN, CHURN_SILENCE_MAX),
                    _ => (AT_RISK_SILENCE_MIN, AT_RISK_SILENCE_MAX),
                };
                // Leave room for the rest of the budget after the silence.
                let room = avail - left * HOUR_MS;
                if room > lo {
                    Some(c.rng.range(lo, hi.min(room)))
                } else {
                    None
                }
            }
            None => None,
        };
        let gap = match gap {
            Some(g) => g,
            None => {
                let g = self.regular_gap(c, next);
                // Fit the rest of the budget (and any silence still ahead) into the period.
                let reserve = c.plan[usize::from(c.plan_pos)..usize::from(c.plan_len)]
                    .iter()
                    .map(|i| i.silence_min())
                    .find(|m| *m > 0)
                    .unwrap_or(0);
                let limit = (avail - reserve) / (left + 1);
                g.min(limit).max(1_000)
            }
        };
        c.at = now + gap;
        c.next = next;
        c.at < self.end
    }

    /// A gap before `next` in milliseconds: mostly minutes to hours, some days,
    /// a few weeks; follow-ups have their own rhythm.
    fn regular_gap(&self, c: &mut Cust, next: Ev) -> i64 {
        let r = &mut c.rng;
        match next {
            Ev::Delivered => r.range(DAY_MS, 5 * DAY_MS),
            Ev::Cancel => r.range(10 * MINUTE_MS, DAY_MS),
            Ev::TicketResolved => r.range(2 * HOUR_MS, 3 * DAY_MS),
            Ev::ReferralConverted => r.range(2 * DAY_MS, 20 * DAY_MS),
            Ev::RefundFull | Ev::RefundPartial | Ev::ReturnFull | Ev::ReturnPartial => {
                r.range(2 * DAY_MS, 14 * DAY_MS)
            }
            _ => {
                let mean = match r.below(100) {
                    0..=54 => 3 * HOUR_MS,
                    55..=87 => 5 * DAY_MS / 2,
                    _ => 10 * DAY_MS,
                };
                (mean as f64 * r.exp1()) as i64
            }
        }
    }

    /// Builds the customer's event due at `c.at` and updates its state.
    fn emit(&self, c: &mut Cust) -> InteractionEvent {
        let mut kind = c.next;
        // Guards: a plan is a prefix of a coherent sequence, but never refer to
        // an order or a ticket that does not exist.
        if (kind.needs_order() && c.orders == 0)
            || (kind == Ev::TicketResolved && c.open_tickets == 0)
        {
            kind = Ev::PageViewed;
        }
        c.n += 1;
        let t = c.at;

        let mut customer_id = String::with_capacity(5 + self.width);
        customer_id.push_str("cust-");
        push_uint(&mut customer_id, c.idx, self.width);
        let mut event_id = String::with_capacity(5 + self.width + 6);
        event_id.push_str("ev-");
        push_uint(&mut event_id, c.idx, self.width);
        event_id.push('-');
        push_uint(&mut event_id, u64::from(c.n), 0);

        let mut e = InteractionEvent {
            event_id,
            customer_id,
            event_type: kind.wire().to_string(),
            occurred_at: t,
            channel: Some(c.rng.pick(kind.channels()).to_string()),
            ..Default::default()
        };

        if kind.has_campaign() {
            // Campaigns run weekly, four at a time.
            let week = (t - self.cfg.start).max(0) / (7 * DAY_MS);
            let mut s = String::with_capacity(12);
            s.push_str("cmp-");
            push_uint(&mut s, week as u64, 3);
            s.push('-');
            push_uint(&mut s, c.rng.below(4), 0);
            e.campaign_id = Some(s);
        }

        match kind {
            Ev::PageViewed if c.rng.chance(10) => {
                let mut path = String::with_capacity(16);
                path.push_str("/products/");
                push_uint(&mut path, c.rng.below(500), 0);
                e.properties = Some(BTreeMap::from([("path".to_string(), path)]));
            }
            Ev::Order => {
                c.orders = c.orders.saturating_add(1);
                self.order_fields(c, &mut e, c.orders);
            }
            Ev::Delivered => {
                e.order_id = Some(self.order_id(c.idx, c.orders));
            }
            Ev::Cancel | Ev::RefundFull | Ev::ReturnFull => {
                self.order_fields(c, &mut e, c.orders);
            }
            Ev::RefundPartial | Ev::ReturnPartial => {
                self.order_fields(c, &mut e, c.orders);
                let share = c.rng.range(20, 81);
                e.amount_minor = e.amount_minor.map(|a| a * share / 100);
            }
            Ev::TicketOpened => c.open_tickets = c.open_tickets.saturating_add(1),
            Ev::TicketResolved => c.open_tickets = c.open_tickets.saturating_sub(1),
            Ev::Csat => {
                e.survey_type = Some("csat".to_string());
                e.score = Some(c.rng.pick(&[(5, 40), (4, 25), (3, 15), (2, 10), (1, 10)]));
            }
            Ev::NpsPromoter => {
                e.survey_type = Some("nps".to_string());
                e.score = Some(9 + c.rng.below(2) as i32);
            }
            Ev::NpsOther => {
                e.survey_type = Some("nps".to_string());
                e.score = Some(c.rng.pick(&[
                    (8, 25),
                    (7, 25),
                    (6, 15),
                    (5, 10),
                    (4, 8),
                    (3, 6),
                    (2, 4),
                    (1, 4),
                    (0, 3),
                ]));
            }
            Ev::ReferralConverted => {
                let n = self.cfg.customers.max(1);
                let mut referee = c.rng.below(n);
                if referee == c.idx {
                    referee += 1;
                }
                let mut s = String::with_capacity(5 + self.width);
                s.push_str("cust-");
                push_uint(&mut s, referee, self.width);
                e.referee_id = Some(s);
            }
            _ => {}
        }
        if kind.is_acquisition() {
            c.acquired = true;
        }
        e
    }

    /// `ord-<customer>-<k>`.
    fn order_id(&self, idx: u64, k: u8) -> String {
        let mut s = String::with_capacity(8 + self.width);
        s.push_str("ord-");
        push_uint(&mut s, idx, self.width);
        s.push('-');
        push_uint(&mut s, u64::from(k), 0);
        s
    }

    /// Sets order id, full amount and currency of the customer's order `k`.
    fn order_fields(&self, c: &Cust, e: &mut InteractionEvent, k: u8) {
        e.order_id = Some(self.order_id(c.idx, k));
        e.amount_minor = Some(self.order_amount(c, k));
        e.currency = Some(c.currency.code().to_string());
    }

    /// The amount of the customer's order `k`: a pure function of the seed, the
    /// customer and `k`, so that refunds can repeat it without storing it.
    fn order_amount(&self, c: &Cust, k: u8) -> i64 {
        let mut r = Rng(mix(
            self.cfg.seed ^ mix(c.idx ^ (u64::from(k) << 56) ^ 0x0DE5_u64)
        ));
        let x = r.exp1();
        match c.currency {
            Currency::Eur | Currency::Usd => {
                // 5.00 .. 500.00, mostly a few tens, priced at .99
                let v = 500 + ((x * 6_000.0) as i64).min(49_400);
                v / 100 * 100 + 99
            }
            Currency::Idr => {
                // IDR 50,000 .. 3,000,000 in whole thousands (minor units: ×100)
                let v = 5_000_000 + ((x * 40_000_000.0) as i64).min(295_000_000);
                v / 100_000 * 100_000
            }
        }
    }
}

/// Appends `v` in decimal, left-padded with zeros to `width` digits.
fn push_uint(s: &mut String, mut v: u64, width: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for _ in (buf.len() - i)..width {
        s.push('0');
    }
    for &b in &buf[i..] {
        s.push(char::from(b));
    }
}

#[cfg(test)]
mod tests;
