//! The difference between what a map holds and what it should hold.

use imbl::ordmap::{DiffItem, OrdMap};
use std::collections::BTreeMap;

#[derive(Debug, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    /// Keys that are new or whose value changed.
    pub upserts: Vec<(K, V)>,
    /// Keys that should no longer be there.
    pub deletes: Vec<K>,
}

impl<K, V> MapDiff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// [`diff`] of persistent maps: the parts the two share (one compiled from
/// the other) are skipped unvisited, so the cost is that of the change.
pub fn diff_shared<K: Ord + Clone, V: PartialEq + Clone>(
    current: &OrdMap<K, V>,
    desired: &OrdMap<K, V>,
) -> MapDiff<K, V> {
    let mut out = MapDiff { upserts: Vec::new(), deletes: Vec::new() };
    for item in current.diff(desired) {
        match item {
            DiffItem::Add(key, value) | DiffItem::Update { new: (key, value), .. } => {
                out.upserts.push((key.clone(), value.clone()))
            }
            DiffItem::Remove(key, _) => out.deletes.push(key.clone()),
        }
    }
    out
}

pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(current: &BTreeMap<K, V>, desired: &BTreeMap<K, V>) -> MapDiff<K, V> {
    let upserts =
        desired.iter().filter(|(k, v)| current.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let deletes = current.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
    MapDiff { upserts, deletes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_are_written() {
        let current = BTreeMap::from([(1, "a"), (2, "b"), (3, "c")]);
        let desired = BTreeMap::from([(1, "a"), (2, "B"), (4, "d")]);
        let d = diff(&current, &desired);
        assert_eq!(d.upserts, vec![(2, "B"), (4, "d")]);
        assert_eq!(d.deletes, vec![3]);
        assert!(diff(&desired, &desired).is_empty());
    }

    #[test]
    fn persistent_maps_diff_alike() {
        let current: OrdMap<u32, u32> = (0..10_000u32).map(|i| (i, i)).collect();
        let mut desired = current.clone();
        desired.insert(5, 50);
        desired.insert(20_000, 1);
        desired.remove(&7);
        let d = diff_shared(&current, &desired);
        assert_eq!(d.upserts, vec![(5, 50), (20_000, 1)]);
        assert_eq!(d.deletes, vec![7]);
        assert!(diff_shared(&desired, &desired).is_empty());
    }
}
