//! Persistent maps with full nodes.
//!
//! imbl's B-tree splits a full node at its middle. Keys inserted in order
//! (how a whole build fills its maps: the source hands objects over
//! sorted) always land in the right half, so every node but the last is
//! left half empty, and a node holds its entries inline: at 10,000
//! services the model's and the snapshot's maps took twice the memory of
//! their entries. Inserted every other key first, then the rest, the
//! second pass fills each half-empty node without splitting it.

use imbl::OrdMap;

/// Rebuilds `map` with its nodes full. Costs a pass over the entries
/// (moved, not cloned, when `map` is not shared): meant for maps built
/// whole, not for each change.
pub fn repack<K: Ord + Clone, V: Clone>(map: &mut OrdMap<K, V>) {
    let entries = std::mem::take(map);
    let mut odd = Vec::with_capacity(entries.len() / 2);
    for (index, (key, value)) in entries.into_iter().enumerate() {
        if index % 2 == 0 {
            map.insert(key, value);
        } else {
            odd.push((key, value));
        }
    }
    map.extend(odd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacking_keeps_every_entry_in_order() {
        let mut map: OrdMap<u32, String> = (0..1000u32).map(|k| (k, k.to_string())).collect();
        let before = map.clone();
        repack(&mut map);
        assert_eq!(map, before);
        assert!(map.iter().map(|(k, _)| *k).eq(0..1000u32));
        let mut empty: OrdMap<u32, u32> = OrdMap::new();
        repack(&mut empty);
        assert!(empty.is_empty());
    }
}
