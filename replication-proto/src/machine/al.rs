//! The activity log: the set of 4 MiB extents that may hold writes in flight.
//!
//! A write to an extent outside the set must wait until a transaction adding
//! the extent is durable. After a crash of the Primary every extent in the
//! last durable set is resynced, so the log bounds the resync after a crash
//! to `al-extents` × 4 MiB instead of the whole disk. Extents leave the set
//! least-recently-used first, and only when no write to them is in flight;
//! their bitmap bits are persisted before the transaction that drops them.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone)]
pub struct ActivityLog {
    capacity: usize,
    /// Extents in the last durable transaction, with their last use.
    active: HashMap<u32, u64>,
    /// Writes in flight per extent.
    refs: HashMap<u32, u32>,
    /// Extents added by the transaction being written.
    adding: BTreeSet<u32>,
    clock: u64,
    seq: u64,
}

/// A transaction to write: the new full set, and which extents it drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlPlan {
    pub seq: u64,
    pub evicted: Vec<u32>,
    pub extents: Vec<u32>,
}

impl ActivityLog {
    #[must_use]
    pub fn new(capacity: u32, seq: u64, extents: &[u32]) -> Self {
        let active = extents.iter().map(|&e| (e, 0)).collect();
        Self {
            capacity: (capacity as usize).max(1),
            active,
            refs: HashMap::new(),
            adding: BTreeSet::new(),
            clock: 0,
            seq,
        }
    }

    #[must_use]
    pub fn extents(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.active.keys().copied().collect();
        v.sort_unstable();
        v
    }

    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    #[must_use]
    pub fn busy(&self) -> bool {
        !self.adding.is_empty()
    }

    /// Whether extents `first..=last` are all in the durable set (a write
    /// to them needs no transaction).
    #[must_use]
    pub fn is_hot(&self, first: u32, last: u32) -> bool {
        (first..=last).all(|e| self.active.contains_key(&e))
    }

    /// Take a reference on extents `first..=last` if all are in the durable
    /// set. Returns false (and takes nothing) otherwise.
    pub fn try_acquire(&mut self, first: u32, last: u32) -> bool {
        if !(first..=last).all(|e| self.active.contains_key(&e)) {
            return false;
        }
        self.clock += 1;
        for e in first..=last {
            self.active.insert(e, self.clock);
            *self.refs.entry(e).or_insert(0) += 1;
        }
        true
    }

    /// Another reference on extents already held (a replicated write keeps
    /// its extents until the peer confirmed it, even after it completed to
    /// the application: until then only the log says where it may differ).
    pub fn add_ref(&mut self, first: u32, last: u32) {
        for e in first..=last {
            *self.refs.entry(e).or_insert(0) += 1;
        }
    }

    pub fn release(&mut self, first: u32, last: u32) {
        for e in first..=last {
            debug_assert!(
                self.refs.contains_key(&e),
                "release of unreferenced extent {e}"
            );
            if let Some(r) = self.refs.get_mut(&e) {
                // Entries are removed at zero, so a present count is >= 1.
                *r -= 1;
                if *r == 0 {
                    self.refs.remove(&e);
                }
            }
        }
    }

    /// Plan one transaction that brings in as many of `wanted` (in order) as
    /// fit, evicting idle extents least recently used first. None when nothing
    /// can be added now (all slots busy) or nothing is wanted.
    pub fn plan(&mut self, wanted: &[u32]) -> Option<AlPlan> {
        if self.busy() {
            return None;
        }
        let mut want: Vec<u32> = Vec::new();
        for &e in wanted {
            if !self.active.contains_key(&e) && !want.contains(&e) {
                want.push(e);
            }
        }
        if want.is_empty() {
            return None;
        }
        let mut idle: Vec<(u64, u32)> = self
            .active
            .iter()
            .filter(|(e, _)| !self.refs.contains_key(e) && !wanted.contains(e))
            .map(|(&e, &t)| (t, e))
            .collect();
        idle.sort_unstable();
        // Clamps legitimately: the log found at start may hold more extents
        // than a smaller `al-extents` configured since.
        let free = self.capacity.saturating_sub(self.active.len());
        let mut evicted = Vec::new();
        let mut adding = Vec::new();
        let mut idle_iter = idle.into_iter();
        for e in want {
            if adding.len() < free {
                adding.push(e);
            } else if let Some((_, victim)) = idle_iter.next() {
                evicted.push(victim);
                adding.push(e);
            } else {
                break;
            }
        }
        if adding.is_empty() {
            return None;
        }
        for v in &evicted {
            self.active.remove(v);
        }
        self.adding = adding.iter().copied().collect();
        self.seq += 1;
        let mut extents: Vec<u32> = self
            .active
            .keys()
            .copied()
            .chain(adding.iter().copied())
            .collect();
        extents.sort_unstable();
        Some(AlPlan {
            seq: self.seq,
            evicted,
            extents,
        })
    }

    /// The planned transaction is durable: its extents are usable.
    pub fn committed(&mut self) {
        for e in std::mem::take(&mut self.adding) {
            self.active.insert(e, self.clock);
        }
    }

    /// The planned transaction failed: forget the additions.
    pub fn failed(&mut self) {
        self.adding.clear();
    }

    /// Drop every idle extent (clean demotion / shutdown). Returns the
    /// transaction to write, if the set changes.
    pub fn plan_empty(&mut self) -> Option<AlPlan> {
        if self.busy() || !self.refs.is_empty() || self.active.is_empty() {
            return None;
        }
        let evicted = self.extents();
        self.active.clear();
        self.seq += 1;
        Some(AlPlan {
            seq: self.seq,
            evicted,
            extents: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_eviction_spares_busy_extents() {
        let mut al = ActivityLog::new(2, 0, &[]);
        let p = al.plan(&[1, 2]).unwrap();
        assert_eq!(p.extents, vec![1, 2]);
        al.committed();
        assert!(al.try_acquire(1, 1));
        assert!(al.try_acquire(2, 2));
        al.release(2, 2);
        // 1 is busy, 2 idle: 3 replaces 2.
        let p = al.plan(&[3]).unwrap();
        assert_eq!(p.evicted, vec![2]);
        assert_eq!(p.extents, vec![1, 3]);
        assert!(!al.try_acquire(3, 3), "not durable yet");
        al.committed();
        assert!(al.try_acquire(3, 3));
        // Everything busy: nothing can come in.
        assert!(al.plan(&[4]).is_none());
    }
}
