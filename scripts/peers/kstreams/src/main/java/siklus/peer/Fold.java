package siklus.peer;

import com.fasterxml.jackson.core.JsonGenerator;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;

/**
 * The per-customer fold, rule for rule as scripts/quix_peer.py (which follows
 * processor/src/fold.rs and DESIGN.md section 1), with the same defaults: at
 * risk after 30 days, churned after 90, loyal = 3 orders in 180 days, the last
 * 32 orders kept, the last 16 event ids kept for deduplication.
 *
 * <p>Pure: (profile, event) and (profile, time) to (profile', transitions); the
 * processor does the store and the topics.
 */
final class Fold {
    static final long AT_RISK_AFTER = 30 * Times.DAY_MS;
    static final long CHURN_AFTER = 90 * Times.DAY_MS;
    static final int LOYAL_ORDERS = 3;
    static final long LOYAL_WINDOW = 180 * Times.DAY_MS;
    static final int MAX_ORDERS_KEPT = 32;
    static final int RECENT_IDS = 16;

    static final String[] MILESTONES = {"reached", "acquired", "converted", "developing", "loyal", "advocate"};
    static final int REACHED = 0, ACQUIRED = 1, CONVERTED = 2, DEVELOPING = 3, LOYAL = 4, ADVOCATE = 5;
    static final String[] ACTIVITY = {"active", "at_risk", "churned"};
    static final int ACTIVE = 0, AT_RISK = 1, CHURNED = 2;

    static final Set<String> NOT_ACTIVITY = Set.of("ad.impression", "message.delivered", "customer.erased");
    static final Set<String> KNOWN = Set.of(
            "ad.impression", "message.delivered", "message.opened", "page.viewed", "store.visited",
            "ad.clicked", "message.clicked",
            "lead.created", "account.signed_up", "conversation.started", "newsletter.subscribed",
            "order.completed", "order.cancelled", "order.refunded", "return.completed",
            "order.delivered", "ticket.opened", "ticket.resolved", "survey.responded",
            "referral.sent", "referral.converted", "review.posted", "customer.erased");
    static final Set<String> ACQUISITION =
            Set.of("lead.created", "account.signed_up", "conversation.started", "newsletter.subscribed");

    /** What applying an event did. */
    enum Outcome { APPLIED, DUPLICATE, ERASED }

    /** One emitted transition: its time and its JSON record. */
    record Transition(long at, byte[] json) {}

    private Fold() {}

    /** The profile's next inactivity deadline, or Profile.NONE. */
    static long nextDeadline(Profile p) {
        if (p.lastActivity == Profile.NONE) {
            return Profile.NONE;
        }
        if (p.activity == ACTIVE) {
            return p.lastActivity + AT_RISK_AFTER;
        }
        if (p.activity == AT_RISK) {
            return p.lastActivity + CHURN_AFTER;
        }
        return Profile.NONE;
    }

    /** Expires the customer's inactivity deadlines earlier than t. */
    static void advanceTo(Profile p, String cid, long t, List<Transition> out) {
        while (true) {
            long d = nextDeadline(p);
            if (d == Profile.NONE || d >= t) {
                return;
            }
            int from = p.activity;
            int to = from == ACTIVE ? AT_RISK : CHURNED;
            String rule = from == ACTIVE ? "inactivity_at_risk" : "inactivity_churned";
            p.activity = to;
            emit(p, cid, out, "activity", ACTIVITY[from], ACTIVITY[to], d, null, rule);
        }
    }

    static Outcome applyEvent(Profile p, Event e, List<Transition> out) {
        String cid = e.customerId;
        long t = e.occurredAt;
        if (p.recentIds.contains(e.eventId)) {
            return Outcome.DUPLICATE;
        }
        if (p.recentIds.size() >= RECENT_IDS) {
            p.recentIds.remove(0);
        }
        p.recentIds.add(e.eventId);
        String ty = e.eventType;
        if (ty.equals("customer.erased")) {
            return Outcome.ERASED;
        }
        advanceTo(p, cid, t, out);
        p.events++;
        if (!KNOWN.contains(ty)) {
            p.unknown++;
            return Outcome.APPLIED;
        }
        if (p.firstSeen == Profile.NONE || t < p.firstSeen) {
            p.firstSeen = t;
        }
        if (p.lastEvent == Profile.NONE || t > p.lastEvent) {
            p.lastEvent = t;
        }
        if (e.channel != null) {
            p.channels.merge(e.channel, 1L, Long::sum);
        }

        String acquisitionRule = null;
        boolean reverted = false;
        switch (ty) {
            case "ad.impression":
                p.impressions++;
                break;
            case "ad.clicked":
            case "message.clicked":
                p.clicks++;
                break;
            case "lead.created":
            case "account.signed_up":
            case "conversation.started":
            case "newsletter.subscribed":
                acquisitionRule = "acquisition";
                break;
            case "order.completed":
                completeOrder(p, e, t);
                break;
            case "order.cancelled":
            case "order.refunded":
            case "return.completed":
                reverted = compensate(p, e, ty);
                break;
            case "ticket.opened":
                p.openTickets++;
                break;
            case "ticket.resolved":
                p.openTickets = Math.max(0, p.openTickets - 1);
                break;
            case "survey.responded":
                if (e.hasScore) {
                    if ("csat".equals(e.surveyType) && e.score >= 1 && e.score <= 5) {
                        p.csat++;
                        if (e.score >= 4) {
                            p.csatOk++;
                        }
                    } else if ("nps".equals(e.surveyType) && e.score >= 0 && e.score <= 10) {
                        p.nps = e.score;
                    }
                }
                break;
            case "referral.sent":
                p.referralsSent++;
                break;
            case "referral.converted":
                p.referralsConverted++;
                break;
            default:
                break;
        }

        int beforeM = p.milestone;
        String mRule = null;
        if (reverted && p.milestone == CONVERTED && p.orderCount == 0) {
            p.milestone = ACQUIRED;
            mRule = "order_reverted";
        } else {
            int target;
            String rule;
            if (p.referralsConverted > 0) {
                target = ADVOCATE;
                rule = "referral_converted";
            } else if (p.referralsSent > 0 && p.nps >= 9) {
                target = ADVOCATE;
                rule = "promoter_referrer";
            } else if (recentOrders(p, t) >= LOYAL_ORDERS) {
                target = LOYAL;
                rule = "loyal_orders";
            } else if (p.orderCount >= 2) {
                target = DEVELOPING;
                rule = "second_order";
            } else if (p.orderCount >= 1) {
                target = CONVERTED;
                rule = "first_order";
            } else if (acquisitionRule != null) {
                target = ACQUIRED;
                rule = acquisitionRule;
            } else {
                target = REACHED;
                rule = "first_touch";
            }
            if (p.milestone < 0 || target > p.milestone) {
                p.milestone = target;
                mRule = rule;
            }
        }
        if (p.acquiredAt == Profile.NONE && p.milestone >= ACQUIRED) {
            p.acquiredAt = t;
        }

        String aRule = null;
        int beforeA = p.activity;
        if (!NOT_ACTIVITY.contains(ty)) {
            if (p.lastActivity == Profile.NONE || t > p.lastActivity) {
                p.lastActivity = t;
            }
            if (beforeA < 0) {
                aRule = "first_activity";
            } else if (beforeA != ACTIVE) {
                aRule = "reactivated";
            }
            p.activity = ACTIVE;
        }
        if (aRule != null) {
            emit(p, cid, out, "activity", beforeA < 0 ? null : ACTIVITY[beforeA], "active", t, e.eventId, aRule);
        }
        if (mRule != null) {
            emit(p, cid, out, "milestone", beforeM < 0 ? null : MILESTONES[beforeM], MILESTONES[p.milestone], t,
                    e.eventId, mRule);
        }
        return Outcome.APPLIED;
    }

    private static int recentOrders(Profile p, long t) {
        long lo = t - LOYAL_WINDOW;
        int n = 0;
        for (Profile.Order o : p.orders) {
            if (!o.isVoid && lo < o.at && o.at <= t) {
                n++;
            }
        }
        return n;
    }

    private static void completeOrder(Profile p, Event e, long t) {
        long amount = e.hasAmount ? e.amountMinor : 0;
        if (amount <= 0) {
            return;
        }
        String oid = e.orderId;
        if (oid != null) {
            for (Profile.Order o : p.orders) {
                if (!o.isVoid && oid.equals(o.orderId)) {
                    return;
                }
            }
        }
        String cur = e.currency != null ? e.currency : "XXX";
        Profile.Order o = new Profile.Order();
        o.orderId = oid;
        o.at = t;
        o.amount = amount;
        o.currency = cur;
        p.orders.add(o);
        while (p.orders.size() > MAX_ORDERS_KEPT) {
            p.orders.remove(0);
        }
        p.orderCount++;
        if (p.firstOrder == Profile.NONE || t < p.firstOrder) {
            p.firstOrder = t;
        }
        p.revenue.merge(cur, amount, Long::sum);
    }

    /** A cancel, refund or return; whether an order became void. */
    private static boolean compensate(Profile p, Event e, String ty) {
        p.refunds++;
        String oid = e.orderId;
        Profile.Order o = null;
        for (int i = p.orders.size() - 1; i >= 0; i--) {
            Profile.Order x = p.orders.get(i);
            if (!x.isVoid && (oid == null || oid.equals(x.orderId))) {
                o = x;
                break;
            }
        }
        if (o == null) {
            return false;
        }
        long remaining = o.amount - o.refunded;
        long take = ty.equals("order.cancelled") || !e.hasAmount ? remaining : Math.min(e.amountMinor, remaining);
        o.refunded += take;
        boolean voided = o.refunded >= o.amount;
        if (voided) {
            o.isVoid = true;
        }
        if (take > 0) {
            p.revenue.merge(o.currency, -take, Long::sum);
        }
        if (voided) {
            p.orderCount = Math.max(0, p.orderCount - 1);
        }
        return voided;
    }

    // --- transitions ---------------------------------------------------------

    /** A deterministic id: a name-based UUID of the customer and its transition seq. */
    static String transitionId(String cid, long seq) {
        byte[] c = cid.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(c.length + 9);
        b.put(c).put((byte) 0).putLong(seq);
        return UUID.nameUUIDFromBytes(b.array()).toString();
    }

    private static void emit(Profile p, String cid, List<Transition> out, String dimension, String from, String to,
            long at, String eventId, String rule) {
        p.transitions++;
        ByteArrayOutputStream buf = new ByteArrayOutputStream(1024);
        try (JsonGenerator g = Event.JSON.createGenerator(buf)) {
            g.writeStartObject();
            g.writeStringField("transition_id", transitionId(cid, p.transitions));
            g.writeStringField("customer_id", cid);
            g.writeStringField("dimension", dimension);
            g.writeStringField("from_stage", from);
            g.writeStringField("to_stage", to);
            g.writeStringField("occurred_at", Times.format(at));
            g.writeStringField("triggering_event_id", eventId);
            g.writeStringField("rule", rule);
            g.writeNumberField("seq", p.transitions);
            g.writeFieldName("profile");
            snapshot(p, g);
            g.writeEndObject();
        } catch (IOException ex) {
            throw new UncheckedIOException(ex);
        }
        out.add(new Transition(at, buf.toByteArray()));
    }

    private static void time(JsonGenerator g, String field, long ms) throws IOException {
        g.writeStringField(field, ms == Profile.NONE ? null : Times.format(ms));
    }

    private static void snapshot(Profile p, JsonGenerator g) throws IOException {
        g.writeStartObject();
        g.writeStringField("milestone", p.milestone < 0 ? null : MILESTONES[p.milestone]);
        g.writeStringField("activity", p.activity < 0 ? null : ACTIVITY[p.activity]);
        time(g, "first_seen_at", p.firstSeen);
        time(g, "first_order_at", p.firstOrder);
        time(g, "last_activity_at", p.lastActivity);
        g.writeNumberField("order_count", p.orderCount);
        g.writeFieldName("net_revenue");
        g.writeStartObject();
        for (Map.Entry<String, Long> r : p.revenue.entrySet()) {
            g.writeNumberField(r.getKey(), r.getValue());
        }
        g.writeEndObject();
        g.writeNumberField("refunds", p.refunds);
        g.writeNumberField("open_tickets", p.openTickets);
        g.writeNumberField("csat_answers", p.csat);
        g.writeNumberField("csat_satisfied", p.csatOk);
        if (p.nps < 0) {
            g.writeNullField("last_nps");
        } else {
            g.writeNumberField("last_nps", p.nps);
        }
        g.writeNumberField("referrals_sent", p.referralsSent);
        g.writeNumberField("referrals_converted", p.referralsConverted);
        g.writeNumberField("impressions", p.impressions);
        g.writeNumberField("clicks", p.clicks);
        time(g, "cohort_week", p.acquiredAt == Profile.NONE ? Profile.NONE : Times.weekStart(p.acquiredAt));
        time(g, "cohort_month", p.acquiredAt == Profile.NONE ? Profile.NONE : Times.monthStart(p.acquiredAt));
        g.writeFieldName("channels");
        g.writeStartObject();
        for (Map.Entry<String, Long> c : p.channels.entrySet()) {
            g.writeNumberField(c.getKey(), c.getValue());
        }
        g.writeEndObject();
        g.writeNumberField("events", p.events);
        g.writeEndObject();
    }
}
