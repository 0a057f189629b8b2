//! The open windows of a partition aggregator: per granularity, a vector
//! sorted by window start, with the window last used checked first. Input is
//! mostly in time order, so nearly every count lands in the window of the
//! count before it, or in a new one at the end: no tree walk per count.
//!
//! Encoded as the map it replaced (`(granularity, start) -> counts`, in key
//! order), so stored aggregators read as before.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::WindowCounts;
use crate::time::Granularity;

/// Open windows with data, by granularity and start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Windows {
    /// Index by [`slot`]: windows sorted by start.
    by: [Vec<(i64, WindowCounts)>; 3],
    /// Index of the window last used, per granularity.
    last: [usize; 3],
}

fn slot(g: Granularity) -> usize {
    match g {
        Granularity::Day => 0,
        Granularity::Week => 1,
        Granularity::Month => 2,
    }
}

impl Windows {
    /// The counts of the window of `g` starting at `start`, created empty if
    /// missing.
    pub(crate) fn entry(&mut self, g: Granularity, start: i64) -> &mut WindowCounts {
        let s = slot(g);
        let v = &mut self.by[s];
        let i = match v.get(self.last[s]) {
            Some((st, _)) if *st == start => self.last[s],
            _ => match v.binary_search_by_key(&start, |(st, _)| *st) {
                Ok(i) => i,
                Err(i) => {
                    v.insert(i, (start, WindowCounts::default()));
                    i
                }
            },
        };
        self.last[s] = i;
        &mut v[i].1
    }

    /// Removes and returns, in key order (days, weeks, months, each by
    /// start), the windows for which `take(g, start)` holds; it must hold
    /// for a prefix of each granularity's windows (those that end by some
    /// instant).
    pub(crate) fn drain_prefix(
        &mut self,
        mut take: impl FnMut(Granularity, i64) -> bool,
    ) -> Vec<(Granularity, i64, WindowCounts)> {
        let mut out = Vec::new();
        for g in Granularity::ALL {
            let s = slot(g);
            let v = &mut self.by[s];
            let n = v.iter().take_while(|(st, _)| take(g, *st)).count();
            out.extend(v.drain(..n).map(|(st, c)| (g, st, c)));
            self.last[s] = 0;
        }
        out
    }

    /// Every window, in key order.
    fn iter(&self) -> impl Iterator<Item = ((Granularity, i64), &WindowCounts)> {
        Granularity::ALL
            .into_iter()
            .flat_map(move |g| self.by[slot(g)].iter().map(move |(st, c)| ((g, *st), c)))
    }
}

/// Equal when they hold the same windows (whichever was used last).
impl PartialEq for Windows {
    fn eq(&self, other: &Self) -> bool {
        self.by == other.by
    }
}

impl Eq for Windows {}

impl Serialize for Windows {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The length first, as the map's encoding has it.
        let mut m = s.serialize_map(Some(self.by.iter().map(Vec::len).sum()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(&k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Windows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<(Granularity, i64), WindowCounts>::deserialize(d)?;
        let mut w = Windows::default();
        // Key order: each granularity's windows arrive sorted.
        for ((g, start), counts) in map {
            w.by[slot(g)].push((start, counts));
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gran() -> impl Strategy<Value = Granularity> {
        prop::sample::select(Granularity::ALL.to_vec())
    }

    proptest! {
        /// Counting into the table, draining prefixes and encoding it give
        /// what the ordered map it replaced gives.
        #[test]
        fn windows_behave_as_the_ordered_map(
            ops in prop::collection::vec((gran(), 0i64..40, 1u64..5), 0..120),
            cut in 0i64..45,
        ) {
            let mut w = Windows::default();
            let mut m: BTreeMap<(Granularity, i64), WindowCounts> = BTreeMap::new();
            for (g, start, n) in &ops {
                w.entry(*g, *start).events += n;
                m.entry((*g, *start)).or_default().events += n;
            }
            prop_assert_eq!(postcard::to_stdvec(&w).unwrap(), postcard::to_stdvec(&m).unwrap());
            let back: Windows = postcard::from_bytes(&postcard::to_stdvec(&m).unwrap()).unwrap();
            prop_assert_eq!(back.iter().map(|(k, c)| (k, c.clone())).collect::<Vec<_>>(),
                            m.iter().map(|(k, c)| (*k, c.clone())).collect::<Vec<_>>());
            let drained = w.drain_prefix(|_, st| st < cut);
            let want: Vec<(Granularity, i64, WindowCounts)> = m
                .iter()
                .filter(|((_, st), _)| *st < cut)
                .map(|((g, st), c)| (*g, *st, c.clone()))
                .collect();
            prop_assert_eq!(drained, want);
            m.retain(|(_, st), _| *st >= cut);
            prop_assert_eq!(postcard::to_stdvec(&w).unwrap(), postcard::to_stdvec(&m).unwrap());
        }
    }
}
