//! The out-of-sync ranges one online verify found: its 4 KiB blocks merged
//! into ranges of adjacent blocks, for status and the event stream.
//!
//! Blocks come in the order their comparisons finish, which is not disk
//! order (reads complete out of order), so a block may join the range
//! before it, the one after it, or both. Memory is bounded: at most
//! [`VERIFY_RANGES_TRACKED`] ranges are kept; once full, a block that joins
//! no kept range is only counted, as a range of its own (the count is then
//! an upper bound; a disk with that many separate differences needs a full
//! resync anyway).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many separate ranges one verify keeps while it runs.
pub const VERIFY_RANGES_TRACKED: usize = 4096;
/// How many of them (the first, in disk order) its result lists: in
/// `repctl status --json` and as one event line each.
pub const VERIFY_RANGES_LISTED: usize = 32;

/// Bytes `start..start + len_bytes` of the device differ between the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRange {
    pub start: u64,
    pub len_bytes: u64,
}

/// The ranges found so far (start -> end, exclusive, never adjacent).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OosRanges {
    ranges: BTreeMap<u64, u64>,
    /// Blocks that joined no kept range once the map was full.
    untracked: u64,
}

impl OosRanges {
    /// Notes `start..start + len` as out of sync.
    pub fn add(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (mut s, mut e) = (start, start.saturating_add(len));
        let mut joined = false;
        if let Some((&ps, &pe)) = self.ranges.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
                self.ranges.remove(&ps);
                joined = true;
            }
        }
        while let Some((&ns, &ne)) = self.ranges.range(s..).next() {
            if ns > e {
                break;
            }
            e = e.max(ne);
            self.ranges.remove(&ns);
            joined = true;
        }
        if !joined && self.ranges.len() >= VERIFY_RANGES_TRACKED {
            self.untracked = self.untracked.saturating_add(1);
            return;
        }
        self.ranges.insert(s, e);
    }

    /// How many ranges were found.
    #[must_use]
    pub fn count(&self) -> u64 {
        (self.ranges.len() as u64).saturating_add(self.untracked)
    }

    /// The first `VERIFY_RANGES_LISTED` ranges, in disk order.
    #[must_use]
    pub fn listed(&self) -> Vec<VerifyRange> {
        self.ranges
            .iter()
            .take(VERIFY_RANGES_LISTED)
            .map(|(&start, &end)| VerifyRange {
                start,
                len_bytes: end - start,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len_bytes: u64) -> VerifyRange {
        VerifyRange { start, len_bytes }
    }

    #[test]
    fn adjacent_blocks_merge_in_any_order() {
        let mut o = OosRanges::default();
        for b in [3u64, 1, 2, 7, 10, 9] {
            o.add(b * 4096, 4096);
        }
        assert_eq!(
            o.listed(),
            vec![r(4096, 3 * 4096), r(7 * 4096, 4096), r(9 * 4096, 2 * 4096)]
        );
        assert_eq!(o.count(), 3);
        // A block between two ranges joins both.
        o.add(8 * 4096, 4096);
        assert_eq!(o.listed(), vec![r(4096, 3 * 4096), r(7 * 4096, 4 * 4096)]);
        // The same block twice changes nothing.
        o.add(8 * 4096, 4096);
        assert_eq!(o.count(), 2);
    }

    #[test]
    fn memory_is_bounded_and_the_list_is_short() {
        let mut o = OosRanges::default();
        let n = VERIFY_RANGES_TRACKED as u64 + 10;
        for b in 0..n {
            o.add(b * 2 * 4096, 4096);
        }
        assert_eq!(o.count(), n);
        assert_eq!(o.ranges.len(), VERIFY_RANGES_TRACKED);
        assert_eq!(o.listed().len(), VERIFY_RANGES_LISTED);
        // Full, yet a block between two kept ranges still joins them.
        o.add(4096, 4096);
        assert_eq!(o.count(), n - 1);
        assert_eq!(o.listed().first(), Some(&r(0, 3 * 4096)));
    }
}
