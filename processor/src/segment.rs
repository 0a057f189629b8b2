//! Segment-style audience events: each stage transition is also told as a
//! Segment `track` event, `Audience Exited` for the stage left (when there
//! is one) and then `Audience Entered` for the stage entered, with
//! `audience_key = "lifecycle_<stage>"`, the way Segment Engage reports
//! audience membership to its destinations.
//!
//! The mapping is a pure function of the transition, so a replay yields the
//! same bytes: `messageId` derives from the transition id, `timestamp` is
//! the transition's event time, and fields serialize in a fixed order.

use serde::Serialize;

use crate::model::StageTransition;
use crate::time::format_rfc3339;

/// The event name for a customer entering a stage.
pub const AUDIENCE_ENTERED: &str = "Audience Entered";
/// The event name for a customer leaving a stage.
pub const AUDIENCE_EXITED: &str = "Audience Exited";

/// The audience key of a stage: `lifecycle_<stage>`.
pub fn audience_key(stage: &str) -> String {
    format!("lifecycle_{stage}")
}

/// A Segment `track` event (the fields of the Segment Spec that siklus fills).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudienceEvent {
    /// Always `track`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// [`AUDIENCE_ENTERED`] or [`AUDIENCE_EXITED`].
    pub event: &'static str,
    /// The customer id.
    #[serde(rename = "userId")]
    pub user_id: String,
    /// `<transition_id>-entered` or `<transition_id>-exited`: deterministic,
    /// so a re-sent event deduplicates downstream.
    #[serde(rename = "messageId")]
    pub message_id: String,
    /// The transition's event time, RFC 3339 with milliseconds, UTC.
    pub timestamp: String,
    /// What the audience is and why the customer moved.
    pub properties: AudienceProperties,
    /// Where the event comes from.
    pub context: AudienceContext,
}

/// The properties of an [`AudienceEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudienceProperties {
    /// `lifecycle_<stage>`.
    pub audience_key: String,
    /// The stage this audience stands for.
    pub stage: String,
    /// `milestone` or `activity`.
    pub dimension: &'static str,
    /// The stage before the transition (absent on first entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_stage: Option<crate::model::Name>,
    /// The stage after the transition.
    pub to_stage: crate::model::Name,
    /// The rule that fired.
    pub rule: crate::model::Name,
    /// The transition this event tells.
    pub transition_id: String,
    /// The event that caused it (absent for a timer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triggering_event_id: Option<String>,
    /// The customer's transition sequence number.
    pub seq: u64,
}

/// The context of an [`AudienceEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudienceContext {
    /// The library that produced the event.
    pub library: Library,
}

/// The producing library (no version: replays across versions stay identical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Library {
    /// Always `siklus`.
    pub name: &'static str,
}

impl AudienceEvent {
    /// The event as one line of JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain strings and integers only: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The audience events of one transition: `Audience Exited` for the stage
/// left (when there is one), then `Audience Entered` for the stage entered.
pub fn audience_events(t: &StageTransition) -> Vec<AudienceEvent> {
    let event = |name: &'static str, suffix: &str, stage: &str| AudienceEvent {
        kind: "track",
        event: name,
        user_id: t.customer_id.clone(),
        message_id: format!("{}-{suffix}", t.transition_id),
        timestamp: format_rfc3339(t.occurred_at),
        properties: AudienceProperties {
            audience_key: audience_key(stage),
            stage: stage.to_string(),
            dimension: t.dimension.as_str(),
            from_stage: t.from_stage.clone(),
            to_stage: t.to_stage.clone(),
            rule: t.rule.clone(),
            transition_id: t.transition_id.clone(),
            triggering_event_id: t.triggering_event_id.clone(),
            seq: t.seq,
        },
        context: AudienceContext {
            library: Library { name: "siklus" },
        },
    };
    let mut out = Vec::with_capacity(2);
    if let Some(from) = &t.from_stage {
        out.push(event(AUDIENCE_EXITED, "exited", from));
    }
    out.push(event(AUDIENCE_ENTERED, "entered", &t.to_stage));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dimension, ProfileSnapshot};

    fn transition(from: Option<&str>, to: &str, trigger: Option<&str>) -> StageTransition {
        StageTransition {
            transition_id: "alice:3".into(),
            customer_id: "alice".into(),
            dimension: Dimension::Milestone,
            from_stage: from.map(|s| s.to_string().into()),
            to_stage: to.to_string().into(),
            occurred_at: crate::time::parse_rfc3339("2024-01-03T09:00:00Z").unwrap(),
            triggering_event_id: trigger.map(str::to_string),
            rule: "first_order".into(),
            seq: 3,
            profile: ProfileSnapshot::default(),
        }
    }

    #[test]
    fn a_change_of_stage_is_an_exit_then_an_entry() {
        let t = transition(Some("acquired"), "converted", Some("e-42"));
        let evs = audience_events(&t);
        assert_eq!(evs.len(), 2);
        let text: Vec<String> = evs
            .iter()
            .map(|e| String::from_utf8(e.to_json()).unwrap())
            .collect();
        assert_eq!(
            text[0],
            r#"{"type":"track","event":"Audience Exited","userId":"alice","messageId":"alice:3-exited","timestamp":"2024-01-03T09:00:00.000Z","properties":{"audience_key":"lifecycle_acquired","stage":"acquired","dimension":"milestone","from_stage":"acquired","to_stage":"converted","rule":"first_order","transition_id":"alice:3","triggering_event_id":"e-42","seq":3},"context":{"library":{"name":"siklus"}}}"#
        );
        assert_eq!(
            text[1],
            r#"{"type":"track","event":"Audience Entered","userId":"alice","messageId":"alice:3-entered","timestamp":"2024-01-03T09:00:00.000Z","properties":{"audience_key":"lifecycle_converted","stage":"converted","dimension":"milestone","from_stage":"acquired","to_stage":"converted","rule":"first_order","transition_id":"alice:3","triggering_event_id":"e-42","seq":3},"context":{"library":{"name":"siklus"}}}"#
        );
    }

    #[test]
    fn a_first_entry_has_no_exit_and_timers_have_no_trigger() {
        let mut t = transition(None, "at_risk", None);
        t.dimension = Dimension::Activity;
        let evs = audience_events(&t);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].event, AUDIENCE_ENTERED);
        assert_eq!(evs[0].properties.audience_key, "lifecycle_at_risk");
        let v: serde_json::Value = serde_json::from_slice(&evs[0].to_json()).unwrap();
        assert_eq!(v["properties"]["dimension"], "activity");
        assert!(v["properties"].get("from_stage").is_none());
        assert!(v["properties"].get("triggering_event_id").is_none());
    }

    #[test]
    fn the_mapping_is_deterministic_and_ids_are_unique() {
        let t = transition(Some("converted"), "developing", Some("e-7"));
        let a: Vec<Vec<u8>> = audience_events(&t).iter().map(|e| e.to_json()).collect();
        let b: Vec<Vec<u8>> = audience_events(&t.clone())
            .iter()
            .map(|e| e.to_json())
            .collect();
        assert_eq!(a, b);
        let ids: std::collections::BTreeSet<String> = audience_events(&t)
            .into_iter()
            .map(|e| e.message_id)
            .collect();
        assert_eq!(ids.len(), 2);
    }
}
