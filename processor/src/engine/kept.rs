//! A customer's last transitions as the hot table keeps them: stages and
//! rules as one-byte codes of their static lists, the transition id left
//! out (a function of the customer and `seq`). About 40 bytes and the
//! triggering event id each, against 144 bytes and four strings for a
//! [`RecentTransition`]. Encoded exactly as a list of [`RecentTransition`]
//! (the stored value does not change).

use serde::{Serialize, Serializer};

use super::RecentTransition;
use crate::model::{Dimension, StageTransition, RULE_NAMES, STAGE_NAMES};

/// Code of "no stage" (a first entry has no `from_stage`).
const NO_STAGE: u8 = u8::MAX;

/// One kept transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    seq: u64,
    occurred_at: i64,
    event_id: Option<Box<str>>,
    dimension: Dimension,
    from: u8,
    to: u8,
    rule: u8,
}

fn code(names: &[&str], name: &str) -> Option<u8> {
    names
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u8::try_from(i).ok())
}

impl Kept {
    /// The kept form of a transition of the fold, or why it has none (a
    /// stage or rule outside the static lists).
    pub(crate) fn new(t: &StageTransition) -> Result<Kept, String> {
        Self::build(
            t.seq,
            t.occurred_at,
            t.triggering_event_id.as_deref(),
            t.dimension,
            t.from_stage.as_deref(),
            &t.to_stage,
            &t.rule,
        )
    }

    /// The kept form of a decoded transition.
    pub(crate) fn from_recent(t: &RecentTransition) -> Result<Kept, String> {
        Self::build(
            t.seq,
            t.occurred_at,
            t.triggering_event_id.as_deref(),
            t.dimension,
            t.from_stage.as_deref(),
            &t.to_stage,
            &t.rule,
        )
    }

    fn build(
        seq: u64,
        occurred_at: i64,
        event_id: Option<&str>,
        dimension: Dimension,
        from: Option<&str>,
        to: &str,
        rule: &str,
    ) -> Result<Kept, String> {
        let stage = |s: &str| code(&STAGE_NAMES, s).ok_or_else(|| format!("unknown stage {s:?}"));
        Ok(Kept {
            seq,
            occurred_at,
            event_id: event_id.map(Box::from),
            dimension,
            from: match from {
                Some(s) => stage(s)?,
                None => NO_STAGE,
            },
            to: stage(to)?,
            rule: code(&RULE_NAMES, rule).ok_or_else(|| format!("unknown rule {rule:?}"))?,
        })
    }

    /// Heap bytes of the entry beyond its own size.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.event_id.as_ref().map_or(0, |e| e.len())
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            dimension: self.dimension,
            from_stage: STAGE_NAMES.get(usize::from(self.from)).copied(),
            to_stage: STAGE_NAMES[usize::from(self.to) % STAGE_NAMES.len()],
            occurred_at: self.occurred_at,
            triggering_event_id: self.event_id.as_deref(),
            rule: RULE_NAMES[usize::from(self.rule) % RULE_NAMES.len()],
            seq: self.seq,
        }
    }
}

/// The fields of [`RecentTransition`] as it is encoded (its id is skipped),
/// in its order, borrowed.
#[derive(Serialize)]
struct Wire<'a> {
    dimension: Dimension,
    from_stage: Option<&'a str>,
    to_stage: &'a str,
    occurred_at: i64,
    triggering_event_id: Option<&'a str>,
    rule: &'a str,
    seq: u64,
}

/// A list of kept transitions, serialized as a list of [`RecentTransition`].
pub(crate) struct KeptList<'a>(pub(crate) &'a [Kept]);

impl Serialize for KeptList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Kept::wire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Profile, ProfileSnapshot};

    fn transition(seq: u64, from: Option<&'static str>, to: &'static str) -> StageTransition {
        StageTransition {
            transition_id: crate::fold::transition_id("c", seq),
            customer_id: "c".into(),
            dimension: Dimension::Activity,
            from_stage: from.map(Into::into),
            to_stage: to.into(),
            occurred_at: 1_700_000_000_000 + seq as i64,
            triggering_event_id: (seq % 2 == 0).then(|| format!("e{seq}")),
            rule: RULE_NAMES[seq as usize % RULE_NAMES.len()].into(),
            seq,
            profile: ProfileSnapshot::default(),
        }
    }

    #[test]
    fn kept_transitions_encode_as_the_recent_transitions_they_stand_for() {
        let ts: Vec<StageTransition> = (1..=12)
            .map(|i| {
                let to = STAGE_NAMES[i % STAGE_NAMES.len()];
                let from = (i % 3 != 0).then(|| STAGE_NAMES[(i + 4) % STAGE_NAMES.len()]);
                transition(i as u64, from, to)
            })
            .collect();
        let recent: Vec<RecentTransition> = ts.iter().map(RecentTransition::from).collect();
        let kept: Vec<Kept> = ts.iter().map(|t| Kept::new(t).unwrap()).collect();
        assert_eq!(
            postcard::to_stdvec(&KeptList(&kept)).unwrap(),
            postcard::to_stdvec(&recent).unwrap()
        );
        let via_recent: Vec<Kept> = recent
            .iter()
            .map(|r| Kept::from_recent(r).unwrap())
            .collect();
        assert_eq!(via_recent, kept);
        // And as part of a whole profile value.
        let p = Profile::new("c");
        let seen = super::super::SeenIds::default();
        assert_eq!(
            super::super::encode_kept_profile(&p, &seen, &kept),
            super::super::encode_stored_profile(&p, &seen, &recent)
        );
    }

    #[test]
    fn names_outside_the_lists_are_refused() {
        let mut t = transition(1, None, "active");
        t.rule = "made_up".into();
        assert!(Kept::new(&t).is_err());
        let mut t = transition(1, None, "active");
        t.to_stage = "sideways".into();
        assert!(Kept::new(&t).is_err());
    }
}
