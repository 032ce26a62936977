//! The difference between what a map holds and what it should hold.

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
}
