#!/usr/bin/env python3
"""The Quix Streams peer of the siklus benchmark.

An equivalent per-customer fold written the way a Quix Streams user would
write it: `sdf.apply(fold, stateful=True, expand=True)` with the profile kept
in Quix's RocksDB state under the record key (the customer id), and one JSON
transition record per change of the milestone or the activity stage sent to
an output topic.

    quix_peer.py run --broker HOST:PORT --topic T --output-topic O \
        --group G --state-dir DIR --expect N
        consumes T from the beginning and exits once N records were
        processed; prints {"records", "transitions", "secs"} as JSON.
    quix_peer.py check --input events.jsonl --against transitions.jsonl
        runs the same fold over a JSONL file in memory and compares its
        transitions with those of a siklus replay of the same file.

bench.py also uses `Transitions` and `compare` to check the Kafka Streams
peer (scripts/peers/kstreams) against siklus over the same topic.

The fold follows processor/src/fold.rs (DESIGN.md §1) rule for rule, with the
same defaults (at risk after 30 days, churned after 90, loyal = 3 orders in
180 days, the last 32 orders kept, the last 16 event ids kept for
deduplication). What it does not do, by design of the comparison:
  * inactivity timers fire only when the customer's next event arrives (a
    deadline earlier than the event is expired first, as siklus does); siklus
    also fires them when the partition watermark passes, which needs timers
    indexed by deadline;
  * no aggregates (windows, lifecycle counts, cohorts, partials, merge stage)
    and no dead-letter topic; siklus computes and emits those too.
"""

import argparse
import datetime as _dt
import hashlib
import json
import sys
import time

DAY_MS = 86_400_000
AT_RISK_AFTER = 30 * DAY_MS
CHURN_AFTER = 90 * DAY_MS
LOYAL_ORDERS = 3
LOYAL_WINDOW = 180 * DAY_MS
MAX_ORDERS_KEPT = 32
RECENT_IDS = 16

MILESTONES = ["reached", "acquired", "converted", "developing", "loyal", "advocate"]
RANK = {m: i for i, m in enumerate(MILESTONES)}
NOT_ACTIVITY = {"ad.impression", "message.delivered", "customer.erased"}
KNOWN = {
    "ad.impression", "message.delivered", "message.opened", "page.viewed", "store.visited",
    "ad.clicked", "message.clicked",
    "lead.created", "account.signed_up", "conversation.started", "newsletter.subscribed",
    "order.completed", "order.cancelled", "order.refunded", "return.completed",
    "order.delivered", "ticket.opened", "ticket.resolved", "survey.responded",
    "referral.sent", "referral.converted", "review.posted", "customer.erased",
}
ACQUISITION = {"lead.created", "account.signed_up", "conversation.started", "newsletter.subscribed"}
CLICKS = {"ad.clicked", "message.clicked"}
COMPENSATIONS = {"order.cancelled", "order.refunded", "return.completed"}
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def parse_ms(s):
    """RFC 3339 (or epoch milliseconds) to epoch milliseconds."""
    if isinstance(s, int):
        return s
    d = _dt.datetime.fromisoformat(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return (d - EPOCH) // _dt.timedelta(milliseconds=1)


def fmt_ms(ms):
    if ms is None:
        return None
    d = EPOCH + _dt.timedelta(milliseconds=ms)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def week_start(t):
    days = t // DAY_MS
    return ((days + 3) // 7 * 7 - 3) * DAY_MS


def month_start(t):
    d = EPOCH + _dt.timedelta(milliseconds=t)
    return (_dt.datetime(d.year, d.month, 1, tzinfo=_dt.timezone.utc) - EPOCH) // _dt.timedelta(milliseconds=1)


def transition_id(customer, seq):
    h = hashlib.blake2b(customer.encode() + b"\0" + seq.to_bytes(8, "big"), digest_size=16).hexdigest()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def new_profile():
    # Timestamps are kept as epoch ms and as the RFC 3339 text they came in,
    # so a snapshot needs no formatting.
    return {
        "m": None, "a": None, "ev": 0, "tr": 0,
        "fs": None, "fs_s": None, "le": None,
        "la": None, "la_s": None, "fo": None, "fo_s": None,
        "acq": None, "cw": None, "cm": None,
        "oc": 0, "orders": [], "rev": {}, "ref": 0, "tickets": 0,
        "csat": 0, "csat_ok": 0, "nps": None, "rs": 0, "rc": 0,
        "imp": 0, "clk": 0, "ch": {}, "unk": 0, "ids": [],
    }


def snapshot(p):
    return {
        "milestone": p["m"], "activity": p["a"],
        "first_seen_at": p["fs_s"], "first_order_at": p["fo_s"], "last_activity_at": p["la_s"],
        "order_count": p["oc"], "net_revenue": dict(sorted(p["rev"].items())),
        "refunds": p["ref"], "open_tickets": p["tickets"],
        "csat_answers": p["csat"], "csat_satisfied": p["csat_ok"], "last_nps": p["nps"],
        "referrals_sent": p["rs"], "referrals_converted": p["rc"],
        "impressions": p["imp"], "clicks": p["clk"],
        "cohort_week": p["cw"], "cohort_month": p["cm"],
        "channels": dict(sorted(p["ch"].items())), "events": p["ev"],
    }


def emit(p, cid, out, dimension, frm, to, at, at_s, event_id, rule):
    p["tr"] += 1
    out.append({
        "transition_id": transition_id(cid, p["tr"]), "customer_id": cid,
        "dimension": dimension, "from_stage": frm, "to_stage": to,
        "occurred_at": at_s if at_s is not None else fmt_ms(at),
        "triggering_event_id": event_id, "rule": rule, "seq": p["tr"],
        "profile": snapshot(p),
    })


def next_deadline(p):
    if p["la"] is None:
        return None
    if p["a"] == "active":
        return p["la"] + AT_RISK_AFTER
    if p["a"] == "at_risk":
        return p["la"] + CHURN_AFTER
    return None


def advance_to(p, cid, t, out):
    """Expires the customer's inactivity deadlines earlier than t."""
    while True:
        d = next_deadline(p)
        if d is None or d >= t:
            return
        frm = p["a"]
        to, rule = ("at_risk", "inactivity_at_risk") if frm == "active" else ("churned", "inactivity_churned")
        p["a"] = to
        emit(p, cid, out, "activity", frm, to, d, None, None, rule)


def milestone_target(p, t, acquisition_rule):
    if p["rc"] > 0:
        return "advocate", "referral_converted"
    if p["rs"] > 0 and p["nps"] is not None and p["nps"] >= 9:
        return "advocate", "promoter_referrer"
    lo = t - LOYAL_WINDOW
    recent = sum(1 for o in p["orders"] if not o[5] and lo < o[1] <= t)
    if recent >= LOYAL_ORDERS:
        return "loyal", "loyal_orders"
    if p["oc"] >= 2:
        return "developing", "second_order"
    if p["oc"] >= 1:
        return "converted", "first_order"
    if acquisition_rule:
        return "acquired", acquisition_rule
    return "reached", "first_touch"


def apply_event(p, e, out):
    """(profile, event) -> profile', appending the transitions to out.
    Returns the profile, or None when the customer was erased."""
    cid = e["customer_id"]
    ts = e["occurred_at"]
    t = parse_ms(ts)
    if not isinstance(ts, str):
        ts = fmt_ms(t)
    eid = e["event_id"]
    ids = p["ids"]
    if eid in ids:
        return p  # duplicate event id
    if len(ids) >= RECENT_IDS:
        del ids[0]
    ids.append(eid)
    ty = e["event_type"]
    if ty == "customer.erased":
        return None
    advance_to(p, cid, t, out)
    p["ev"] += 1
    if ty not in KNOWN:
        p["unk"] += 1
        return p
    if p["fs"] is None or t < p["fs"]:
        p["fs"], p["fs_s"] = t, ts
    if p["le"] is None or t > p["le"]:
        p["le"] = t
    ch = e.get("channel")
    if ch is not None:
        p["ch"][ch] = p["ch"].get(ch, 0) + 1

    acquisition_rule = None
    reverted = False
    if ty == "ad.impression":
        p["imp"] += 1
    elif ty in CLICKS:
        p["clk"] += 1
    elif ty in ACQUISITION:
        acquisition_rule = "acquisition"
    elif ty == "order.completed":
        complete_order(p, e, t, ts)
    elif ty in COMPENSATIONS:
        reverted = compensate(p, e, ty)
    elif ty == "ticket.opened":
        p["tickets"] += 1
    elif ty == "ticket.resolved":
        p["tickets"] = max(0, p["tickets"] - 1)
    elif ty == "survey.responded":
        score = e.get("score")
        st = e.get("survey_type")
        if score is not None:
            if st == "csat" and 1 <= score <= 5:
                p["csat"] += 1
                if score >= 4:
                    p["csat_ok"] += 1
            elif st == "nps" and 0 <= score <= 10:
                p["nps"] = score
    elif ty == "referral.sent":
        p["rs"] += 1
    elif ty == "referral.converted":
        p["rc"] += 1

    before_m = p["m"]
    m_rule = None
    if reverted and p["m"] == "converted" and p["oc"] == 0:
        p["m"] = "acquired"
        m_rule = "order_reverted"
    else:
        target, rule = milestone_target(p, t, acquisition_rule)
        if p["m"] is None or RANK[target] > RANK[p["m"]]:
            p["m"] = target
            m_rule = rule
    if p["acq"] is None and p["m"] is not None and RANK[p["m"]] >= 1:
        p["acq"] = t
        p["cw"] = fmt_ms(week_start(t))
        p["cm"] = fmt_ms(month_start(t))

    a_rule = None
    before_a = p["a"]
    if ty not in NOT_ACTIVITY:
        if p["la"] is None or t > p["la"]:
            p["la"], p["la_s"] = t, ts
        if before_a is None:
            a_rule = "first_activity"
        elif before_a != "active":
            a_rule = "reactivated"
        p["a"] = "active"
    if a_rule:
        emit(p, cid, out, "activity", before_a, "active", t, ts, eid, a_rule)
    if m_rule:
        emit(p, cid, out, "milestone", before_m, p["m"], t, ts, eid, m_rule)
    return p


def complete_order(p, e, t, ts):
    amount = e.get("amount_minor") or 0
    if amount <= 0:
        return
    oid = e.get("order_id")
    orders = p["orders"]
    if oid is not None and any(not o[5] and o[0] == oid for o in orders):
        return
    cur = e.get("currency") or "XXX"
    orders.append([oid, t, amount, cur, 0, False])
    if len(orders) > MAX_ORDERS_KEPT:
        del orders[: len(orders) - MAX_ORDERS_KEPT]
    p["oc"] += 1
    if p["fo"] is None or t < p["fo"]:
        p["fo"], p["fo_s"] = t, ts
    p["rev"][cur] = p["rev"].get(cur, 0) + amount


def compensate(p, e, ty):
    p["ref"] += 1
    oid = e.get("order_id")
    orders = p["orders"]
    idx = None
    for i in range(len(orders) - 1, -1, -1):
        o = orders[i]
        if not o[5] and (oid is None or o[0] == oid):
            idx = i
            break
    if idx is None:
        return False
    o = orders[idx]
    remaining = o[2] - o[4]
    amount = e.get("amount_minor")
    take = remaining if ty == "order.cancelled" or amount is None else min(amount, remaining)
    o[4] += take
    voided = o[4] >= o[2]
    if voided:
        o[5] = True
    if take > 0:
        p["rev"][o[3]] = p["rev"].get(o[3], 0) - take
    if voided:
        p["oc"] = max(0, p["oc"] - 1)
    return voided


# --------------------------------------------------------------------------


def run(a):
    from quixstreams import Application, State  # noqa: F401  (fail loudly if missing)

    app = Application(
        broker_address=a.broker,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        state_dir=a.state_dir,
        # No changelog topic: bench.py compares this run with siklus's run
        # with its changelog off. Commits every second, as siklus does.
        use_changelog_topics=False,
        commit_interval=1.0,
        loglevel="WARNING",
    )
    inp = app.topic(a.topic, value_deserializer="json", key_deserializer="str")
    out_topic = app.topic(a.output_topic, value_serializer="json", key_serializer="str")
    counts = {"records": 0, "transitions": 0, "first": None}

    def fold(event, state):
        if counts["first"] is None:
            counts["first"] = time.monotonic()
        counts["records"] += 1
        out = []
        p = state.get("p")
        if p is None:
            p = new_profile()
        p2 = apply_event(p, event, out)
        if p2 is None:
            state.delete("p")
        else:
            state.set("p", p2)
        counts["transitions"] += len(out)
        if counts["records"] >= a.expect:
            app.stop()
        return out

    sdf = app.dataframe(inp)
    sdf = sdf.apply(fold, stateful=True, expand=True)
    sdf.to_topic(out_topic)
    start = time.monotonic()
    app.run(timeout=a.idle_timeout)
    end = time.monotonic()
    first = counts["first"] or end
    print(json.dumps({
        "records": counts["records"], "transitions": counts["transitions"],
        "secs": end - first, "wall_secs": end - start,
        "timed_out": counts["records"] < a.expect,
    }))
    if counts["records"] < a.expect:
        sys.exit(f"quix peer: saw {counts['records']} of {a.expect} records before going idle")


def transition_key(t):
    """What two folds must agree on for one transition (its id and seq are
    each fold's own numbering)."""
    return (t["customer_id"], t["dimension"], t["from_stage"], t["to_stage"],
            t["occurred_at"], t["triggering_event_id"], t["rule"])


def _digest(text):
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class Transitions:
    """The transitions of one fold by key (a key seen twice, e.g. from two
    runs or an at-least-once repeat, counts once), split into event-triggered
    and timer ones, each with a digest of its profile snapshot. Digests keep
    the memory small when millions of transitions are read from a topic."""

    def __init__(self):
        self.event = {}
        self.timer = {}

    def add(self, t):
        side = self.event if t["triggering_event_id"] else self.timer
        side[_digest(repr(transition_key(t)))] = _digest(json.dumps(t["profile"], sort_keys=True))


def compare(reference, peer):
    """Counts of a peer's transitions against siklus's (the reference)."""
    ev_same = reference.event.keys() & peer.event.keys()
    return {
        "event_transitions": len(reference.event), "event_transitions_peer": len(peer.event),
        "event_transitions_same": len(ev_same),
        "event_snapshots_same": sum(1 for k in ev_same if reference.event[k] == peer.event[k]),
        "timer_transitions": len(reference.timer), "timer_transitions_peer": len(peer.timer),
        "timer_transitions_same": len(reference.timer.keys() & peer.timer.keys()),
    }


def check(a):
    profiles = {}
    ours = []
    with open(a.input) as f:
        for line in f:
            e = json.loads(line)
            cid = e["customer_id"]
            p = profiles.get(cid) or new_profile()
            p2 = apply_event(p, e, ours)
            if p2 is None:
                profiles.pop(cid, None)
            else:
                profiles[cid] = p2
    mine = Transitions()
    for t in ours:
        mine.add(t)
    theirs = Transitions()
    with open(a.against) as f:
        for line in f:
            theirs.add(json.loads(line))
    c = compare(theirs, mine)
    out = {"events": sum(p["ev"] for p in profiles.values())}
    out.update({k.replace("_peer", "_quix"): v for k, v in c.items()})
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--broker", required=True)
    r.add_argument("--topic", required=True)
    r.add_argument("--output-topic", required=True)
    r.add_argument("--group", required=True)
    r.add_argument("--state-dir", required=True)
    r.add_argument("--expect", type=int, required=True)
    r.add_argument("--idle-timeout", type=float, default=60.0)
    c = sub.add_parser("check")
    c.add_argument("--input", required=True)
    c.add_argument("--against", required=True)
    a = ap.parse_args()
    run(a) if a.cmd == "run" else check(a)


if __name__ == "__main__":
    main()
