//! A map that forgets its oldest entries beyond a fixed size: what the merge stage remembers
//! about spans already gone must not grow with traffic.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub(super) struct BoundedMap<K, V, const MAX: usize> {
    entries: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K, V, const MAX: usize> Default for BoundedMap<K, V, MAX> {
    fn default() -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new() }
    }
}

impl<K: Copy + Eq + Hash, V, const MAX: usize> BoundedMap<K, V, MAX> {
    /// Inserts or replaces; a new key may push the oldest one out.
    pub fn insert(&mut self, key: K, value: V) {
        if self.entries.insert(key, value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_key_goes_first_and_a_replaced_one_keeps_its_place() {
        let mut map: BoundedMap<u32, &str, 2> = BoundedMap::default();
        map.insert(1, "a");
        map.insert(2, "b");
        map.insert(1, "c");
        assert_eq!(map.get(&1), Some(&"c"));
        map.insert(3, "d");
        assert!(!map.contains(&1) && map.contains(&2) && map.contains(&3));
    }
}
