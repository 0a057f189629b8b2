//! The hot table: the profiles a partition holds in memory, bounded in
//! (estimated) bytes, and its eviction.

use std::collections::HashMap;

use super::kept::Kept;
use super::{deadline, EngineConfig, PartitionState, SeenIds};
use crate::model::Profile;

/// A customer's profile held in memory: loaded for the current step, or kept
/// from earlier steps as a cache of the store (then it equals the store).
pub(super) struct Entry {
    /// `None` once erased.
    pub(super) profile: Option<Profile>,
    /// Recent event ids (travels with the profile value).
    pub(super) seen: SeenIds,
    /// Hashes pushed out of `seen.recent` in this step, for the seen table.
    pub(super) spill: Vec<u64>,
    /// Last transitions (travel with the profile value).
    pub(super) transitions: Vec<Kept>,
    /// The deadline the store's timer index holds for this customer.
    pub(super) stored_deadline: Option<i64>,
    /// Whether the store holds a profile for the customer.
    pub(super) stored: bool,
    /// Whether this step changed the profile.
    pub(super) changed: bool,
    /// Whether the customer's dedup entries must be forgotten (erasure).
    pub(super) forget_seen: bool,
    /// Whether the entry is in the current step's dirty list.
    pub(super) in_step: bool,
    /// The step that last used the entry (for eviction).
    pub(super) used: u64,
    /// Estimated memory of the entry (see [`entry_bytes`]), as of its load
    /// or its last commit.
    pub(super) bytes: usize,
}

/// The hasher of the profile table: customer ids are hashed once or twice
/// per event, and SipHash (the standard one) showed in profiles. foldhash
/// is seeded per table, so the layout still differs from run to run.
pub(super) type CacheMap = HashMap<String, Entry, foldhash::fast::RandomState>;

/// Shrinks a partition's cache (all clean, right after a commit) to at
/// most `keep` bytes, dropping the least recently used entries and their
/// pending timers.
pub(super) fn evict(state: &mut PartitionState, keep: usize, config: &EngineConfig) {
    if state.cache_bytes <= keep {
        return;
    }
    let mut ages: Vec<(u64, usize, &String)> = state
        .cache
        .iter()
        .map(|(k, e)| (e.used, e.bytes, k))
        .collect();
    // Oldest first; the key breaks ties so the victims do not depend on
    // the table's hash order.
    ages.sort_unstable_by(|a, b| (a.0, a.2).cmp(&(b.0, b.2)));
    let mut over = state.cache_bytes - keep;
    let mut victims = Vec::new();
    for (_, bytes, k) in ages {
        if over == 0 {
            break;
        }
        over = over.saturating_sub(bytes);
        victims.push(k.clone());
    }
    if !victims.is_empty() {
        // A customer missing from the cache may be in the store now.
        state.fresh = false;
    }
    for customer in victims {
        if let Some(entry) = state.cache.remove(&customer) {
            state.cache_bytes -= entry.bytes;
            if let Some(d) = entry.profile.as_ref().and_then(|p| deadline(p, config)) {
                if state.scan_cursor.as_ref().is_some_and(|c| d < c.before) {
                    // A due customer leaves memory: the index is read again.
                    state.scan_cursor = None;
                }
                if !state.pending_stale {
                    state.pending_timers.remove(&(d, customer));
                }
            }
        }
    }
}

/// Estimated memory of a cached profile: the table slot, the key, the
/// profile with its orders, revenue and channels, the recent event ids and
/// transitions, and the pending timer that names it. An estimate (heap
/// blocks round up), used only to bound the cache.
pub(super) fn entry_bytes(customer: &str, e: &Entry) -> usize {
    use std::mem::size_of;
    const MAP_NODE: usize = 64;
    let mut n = size_of::<String>() + size_of::<Entry>() + 2 * customer.len() + MAP_NODE;
    if let Some(p) = &e.profile {
        n += size_of::<Profile>();
        n += p
            .orders
            .iter()
            .map(|o| {
                size_of::<crate::model::OrderRecord>()
                    + o.order_id.as_ref().map_or(0, String::len)
                    + o.currency.len()
            })
            .sum::<usize>();
        n += (p.net_revenue.len() + p.channels.len()) * MAP_NODE;
        // The pending timer: deadline and a copy of the id.
        n += MAP_NODE + customer.len();
    }
    n += e.seen.recent.capacity() * size_of::<u64>() + e.spill.capacity() * size_of::<u64>();
    n += e.transitions.capacity() * size_of::<Kept>();
    n += e.transitions.iter().map(Kept::heap_bytes).sum::<usize>();
    n
}
