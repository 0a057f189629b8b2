//! The profile value as the store keeps it: a version byte, the profile,
//! the customer's recent event-id hashes and last transitions (postcard).
//! Every version written by an earlier release is read.

use serde::{Deserialize, Serialize};

use super::kept::{Kept, KeptList};
use crate::fold;
use crate::model::{Dimension, Name, Profile, StageTransition};

/// Version byte of profile values that carry no event ids (older stores):
/// their ids are all in the seen table.
pub(super) const PROFILE_VERSION_1: u8 = 1;
/// Version byte of profile values: the profile, then the customer's most
/// recent event-id hashes and whether older ones spilled to the seen table.
pub(super) const PROFILE_VERSION: u8 = 2;
/// Transitions of each customer kept in the store for the read API.
pub const RECENT_TRANSITIONS: usize = 10;

/// A transition as the store keeps it for the read API: the transition
/// without its profile snapshot (the profile itself is next to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentTransition {
    /// Deterministic id of the transition. Not stored (it is a function of
    /// the customer and `seq`): empty after decoding until
    /// [`StoredProfile::fill_transition_ids`].
    #[serde(skip)]
    pub transition_id: String,
    /// milestone or activity.
    pub dimension: Dimension,
    /// Stage before; `None` on first entry.
    #[serde(deserialize_with = "crate::model::de_opt_name")]
    pub from_stage: Option<Name>,
    /// Stage after.
    #[serde(deserialize_with = "crate::model::de_name")]
    pub to_stage: Name,
    /// Event time of the change (epoch ms).
    pub occurred_at: i64,
    /// The event that caused it; `None` for a timer.
    pub triggering_event_id: Option<String>,
    /// Name of the rule that fired.
    #[serde(deserialize_with = "crate::model::de_name")]
    pub rule: Name,
    /// Per-customer transition sequence number.
    pub seq: u64,
}

impl From<&StageTransition> for RecentTransition {
    fn from(t: &StageTransition) -> Self {
        RecentTransition {
            // A function of the customer and `seq`, not kept in memory
            // (see [`StoredProfile::fill_transition_ids`]).
            transition_id: String::new(),
            dimension: t.dimension,
            from_stage: t.from_stage.clone(),
            to_stage: t.to_stage.clone(),
            occurred_at: t.occurred_at,
            triggering_event_id: t.triggering_event_id.clone(),
            rule: t.rule.clone(),
            seq: t.seq,
        }
    }
}

/// The deduplication memory of one customer that travels with its profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenIds {
    /// Hashes of the most recent event ids, oldest first (at most [`RECENT_IDS`](super::RECENT_IDS)).
    pub recent: Vec<u64>,
    /// Whether older hashes live in the store's seen table.
    pub spilled: bool,
}

impl StoredProfile {
    /// Computes the ids of the last transitions (they are not stored).
    pub fn fill_transition_ids(&mut self) {
        for t in &mut self.transitions {
            t.transition_id = fold::transition_id(&self.profile.customer_id, t.seq);
        }
    }
}

/// A profile value as stored: the profile and its dedup memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredProfile {
    /// The profile.
    pub profile: Profile,
    /// Recent event ids of the customer.
    pub seen: SeenIds,
    /// The customer's last transitions, oldest first (at most
    /// [`RECENT_TRANSITIONS`]), for the read API.
    pub transitions: Vec<RecentTransition>,
}

/// Appends a step's transitions to a customer's last ones, keeping at most
/// [`RECENT_TRANSITIONS`].
pub(super) fn remember(kept: &mut Vec<Kept>, new: &[StageTransition]) -> Result<(), String> {
    if new.is_empty() {
        return Ok(());
    }
    for t in new {
        kept.push(Kept::new(t)?);
    }
    let excess = kept.len().saturating_sub(RECENT_TRANSITIONS);
    kept.drain(..excess);
    Ok(())
}

/// Encodes a profile value with no recent event ids or transitions (tests
/// and imports).
pub fn encode_profile(p: &Profile) -> Vec<u8> {
    encode_stored_profile(p, &SeenIds::default(), &[])
}

/// Encodes a profile value: a version byte, then postcard of the profile, of
/// its recent event ids and of its last transitions.
pub fn encode_stored_profile(
    p: &Profile,
    seen: &SeenIds,
    transitions: &[RecentTransition],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    buf.push(PROFILE_VERSION);
    // Serializing plain structs into a Vec cannot fail.
    let _ = postcard::to_io(p, &mut buf);
    let _ = postcard::to_io(seen, &mut buf);
    let _ = postcard::to_io(transitions, &mut buf);
    buf
}

/// [`encode_stored_profile`] from the hot table's kept transitions (the
/// same bytes).
pub(super) fn encode_kept_profile(p: &Profile, seen: &SeenIds, transitions: &[Kept]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    buf.push(PROFILE_VERSION);
    // Serializing plain structs into a Vec cannot fail.
    let _ = postcard::to_io(p, &mut buf);
    let _ = postcard::to_io(seen, &mut buf);
    let _ = postcard::to_io(&KeptList(transitions), &mut buf);
    buf
}

/// Decodes the profile of a value written by [`encode_stored_profile`].
pub fn decode_profile(bytes: &[u8]) -> Result<Profile, String> {
    decode_stored_profile(bytes).map(|s| s.profile)
}

/// Decodes a profile value with its recent event ids. A value of the first
/// version has all its ids in the seen table (`spilled`).
pub fn decode_stored_profile(bytes: &[u8]) -> Result<StoredProfile, String> {
    match bytes.split_first() {
        Some((&PROFILE_VERSION, body)) => {
            let (profile, rest) =
                postcard::take_from_bytes(body).map_err(|e| format!("profile: {e}"))?;
            let (seen, rest) =
                postcard::take_from_bytes(rest).map_err(|e| format!("profile ids: {e}"))?;
            let transitions =
                postcard::from_bytes(rest).map_err(|e| format!("profile transitions: {e}"))?;
            Ok(StoredProfile {
                profile,
                seen,
                transitions,
            })
        }
        Some((&PROFILE_VERSION_1, body)) => Ok(StoredProfile {
            profile: postcard::from_bytes(body).map_err(|e| format!("profile: {e}"))?,
            seen: SeenIds {
                recent: Vec::new(),
                spilled: true,
            },
            transitions: Vec::new(),
        }),
        Some((v, _)) => Err(format!("profile value version {v} is not supported")),
        None => Err("empty profile value".into()),
    }
}
