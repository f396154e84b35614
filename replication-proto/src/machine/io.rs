//! Ordering of local data operations.
//!
//! Two operations on overlapping blocks must reach the disk in the order the
//! state machine decided on, or a resync read could overtake an application
//! write (sending stale data the peer then applies last), or two replicated
//! writes could land on the Secondary in the opposite order. io_uring gives no
//! ordering between requests in flight, so overlapping operations wait here:
//! an operation starts only when it overlaps nothing in flight and nothing
//! queued before it. Non-overlapping operations run concurrently.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    #[must_use]
    pub fn new(offset: u64, len: u64) -> Self {
        Self {
            start: offset,
            end: offset.saturating_add(len),
        }
    }
    #[must_use]
    pub fn overlaps(&self, o: &Span) -> bool {
        self.start < o.end && o.start < self.end
    }
    #[must_use]
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// FIFO-by-overlap queue of operations of type `T`, named by tokens of
/// type `K` (the node's [`crate::machine::IoToken`]).
#[derive(Debug)]
pub struct OrderedIo<K, T> {
    inflight: HashMap<K, (Span, T)>,
    waiting: VecDeque<(K, Span, T)>,
}

impl<K, T> Default for OrderedIo<K, T> {
    fn default() -> Self {
        Self {
            inflight: HashMap::new(),
            waiting: VecDeque::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, T> OrderedIo<K, T> {
    /// Queue an operation under `token`. Returns true when it may start now
    /// (it is then in flight); false when it waits for `completed` of an
    /// overlapping one.
    pub fn submit(&mut self, token: K, span: Span, op: T) -> bool {
        let blocked = self.inflight.values().any(|(s, _)| s.overlaps(&span))
            || self.waiting.iter().any(|(_, s, _)| s.overlaps(&span));
        if blocked {
            self.waiting.push_back((token, span, op));
            false
        } else {
            self.inflight.insert(token, (span, op));
            true
        }
    }

    /// An operation finished: remove it and return it, plus the waiting
    /// operations that may start now (already moved to in flight), in order.
    pub fn complete(&mut self, token: K) -> (Option<(Span, T)>, Vec<K>) {
        let done = self.inflight.remove(&token);
        let mut started = Vec::new();
        if done.is_some() {
            let mut i = 0;
            while i < self.waiting.len() {
                let Some((_, span, _)) = self.waiting.get(i) else {
                    break;
                };
                let span = *span;
                let blocked = self.inflight.values().any(|(s, _)| s.overlaps(&span))
                    || self
                        .waiting
                        .iter()
                        .take(i)
                        .any(|(_, s, _)| s.overlaps(&span));
                if blocked {
                    i += 1;
                } else if let Some((t, s, op)) = self.waiting.remove(i) {
                    self.inflight.insert(t, (s, op));
                    started.push(t);
                }
            }
        }
        (done, started)
    }

    #[must_use]
    pub fn get(&self, token: K) -> Option<&(Span, T)> {
        self.inflight.get(&token)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.inflight.len() + self.waiting.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every operation, in flight or waiting (for draining on shutdown).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Span, &T)> {
        self.inflight
            .iter()
            .map(|(t, (s, o))| (t, s, o))
            .chain(self.waiting.iter().map(|(t, s, o)| (t, s, o)))
    }

    /// Any operation overlapping `span` that satisfies `pred`?
    pub fn any_overlapping(&self, span: &Span, mut pred: impl FnMut(&T) -> bool) -> bool {
        self.iter().any(|(_, s, o)| s.overlaps(span) && pred(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ops_wait_in_order() {
        let mut q = OrderedIo::default();
        assert!(q.submit(1, Span::new(0, 4096), 'a'));
        assert!(!q.submit(2, Span::new(0, 8192), 'b'));
        assert!(!q.submit(3, Span::new(4096, 4096), 'c'));
        assert!(q.submit(4, Span::new(65536, 4096), 'd'));
        let (done, started) = q.complete(1);
        assert_eq!(done.map(|d| d.1), Some('a'));
        // 2 starts; 3 overlaps 2 which is ahead of it, so it still waits.
        assert_eq!(started, vec![2]);
        let (_, started) = q.complete(2);
        assert_eq!(started, vec![3]);
    }
}
