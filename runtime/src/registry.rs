//! A slab whose keys carry a generation.
//!
//! A slab index is reused as soon as its entry is removed. An id handed out
//! earlier (to a handler, or as a poll key for an event still in flight) must
//! never reach the new occupant of the slot, so every id is
//! `(generation << 32) | index` and a lookup checks both halves. Generations
//! come from one counter that skips 0, so 0 is never a valid id.

use slab::Slab;

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: T,
}

/// Entries addressed by generation-tagged ids.
#[derive(Debug)]
pub(crate) struct Registry<T> {
    slab: Slab<Slot<T>>,
    next_generation: u32,
}

/// Splits an id into (slab index, generation).
fn split(id: u64) -> (usize, u32) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
}

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        Registry {
            slab: Slab::new(),
            next_generation: 1,
        }
    }

    /// Inserts the value `make` builds from its own id; returns the id.
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(u64) -> T) -> u64 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let entry = self.slab.vacant_entry();
        let index = entry.key();
        assert!(index <= u32::MAX as usize, "registry index overflow");
        let id = (u64::from(generation) << 32) | index as u64;
        entry.insert(Slot {
            generation,
            value: make(id),
        });
        id
    }

    pub(crate) fn get(&self, id: u64) -> Option<&T> {
        let (index, generation) = split(id);
        match self.slab.get(index) {
            Some(slot) if slot.generation == generation => Some(&slot.value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let (index, generation) = split(id);
        match self.slab.get_mut(index) {
            Some(slot) if slot.generation == generation => Some(&mut slot.value),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<T> {
        self.get(id)?;
        Some(self.slab.remove(split(id).0).value)
    }

    /// Every entry, in slab order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slab.iter().map(|(_, slot)| &slot.value)
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// Ids of every entry, for sweeps that mutate while they go.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.slab
            .iter()
            .map(|(index, slot)| (u64::from(slot.generation) << 32) | index as u64)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_miss_the_new_occupant() {
        let mut r = Registry::new();
        let a = r.insert_with(|_| "a");
        assert_ne!(a, 0);
        assert_eq!(r.remove(a), Some("a"));
        let b = r.insert_with(|_| "b");
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "slot reused");
        assert_ne!(a, b);
        assert_eq!(r.get(a), None);
        assert_eq!(r.get_mut(a), None);
        assert_eq!(r.remove(a), None);
        assert_eq!(r.get(b), Some(&"b"));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn make_sees_its_own_id() {
        let mut r = Registry::new();
        let id = r.insert_with(|id| id);
        assert_eq!(r.get(id), Some(&id));
        assert_eq!(r.get(0), None);
        assert_eq!(r.ids(), vec![id]);
    }

    #[test]
    fn generation_skips_zero_on_wrap() {
        let mut r: Registry<()> = Registry::new();
        r.next_generation = u32::MAX;
        let a = r.insert_with(|_| ());
        let b = r.insert_with(|_| ());
        assert_eq!(a >> 32, u64::from(u32::MAX));
        assert_eq!(b >> 32, 1);
    }
}
