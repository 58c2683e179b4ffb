//! A slot table with generation-checked ids.
//!
//! Everything the plugin hands to NCCL as a `void*` (contexts, comms,
//! requests) is an id from this table, not a pointer: NCCL only stores and
//! returns them. A stale, double-closed or made-up value is then detected
//! by lookup and reported, never dereferenced.
//!
//! An id is `generation << 32 | index`, with generations starting at 1, so
//! ids are never 0 (NULL) or 1 (NCCL's `NCCL_NET_OPTIONAL_RECV_COMPLETION`).

/// An object's id; also its `void*` value on the C side.
pub type Id = u64;

pub struct Table<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

impl<T> Table<T> {
    pub const fn new() -> Self {
        Table { slots: Vec::new(), free: Vec::new() }
    }

    pub fn insert(&mut self, value: T) -> Id {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push((0, None));
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[index as usize];
        slot.0 = slot.0.checked_add(1).unwrap_or(1);
        slot.1 = Some(value);
        (slot.0 as u64) << 32 | index as u64
    }

    fn slot(&self, id: Id) -> Option<usize> {
        let (generation, index) = ((id >> 32) as u32, (id & 0xffff_ffff) as usize);
        match self.slots.get(index) {
            Some((g, Some(_))) if *g == generation && generation != 0 => Some(index),
            _ => None,
        }
    }

    pub fn get(&self, id: Id) -> Option<&T> {
        self.slot(id).and_then(|i| self.slots[i].1.as_ref())
    }

    pub fn remove(&mut self, id: Id) -> Option<T> {
        let i = self.slot(id)?;
        self.free.push(i as u32);
        self.slots[i].1.take()
    }

    /// Removes the entry if it exists and `pred` accepts it.
    pub fn remove_if(&mut self, id: Id, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        if !pred(self.get(id)?) {
            return None;
        }
        self.remove(id)
    }

    /// Removes every entry for which `keep` is false; returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let mut removed = 0;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.1.as_ref().is_some_and(|v| !keep(v)) {
                slot.1 = None;
                self.free.push(i as u32);
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_never_null_or_one() {
        let mut t = Table::new();
        let a = t.insert("a");
        let b = t.insert("b");
        assert!(a > 1 && b > 1 && a != b);
        assert_eq!(t.get(a), Some(&"a"));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.get(a), None, "removed");
        assert_eq!(t.remove(a), None, "double remove");
        let c = t.insert("c");
        assert_ne!(c, a, "a reused slot gets a new generation");
        assert_eq!(t.get(a), None);
        for bogus in [0u64, 1, 0xdead_beef, 0x7fff_1234_5678, u64::MAX, c ^ (1 << 40)] {
            assert_eq!(t.get(bogus), None, "{bogus:#x}");
        }
        assert_eq!(t.retain(|v| *v != "b"), 1);
        assert_eq!(t.get(b), None);
        assert_eq!(t.get(c), Some(&"c"));
    }
}
