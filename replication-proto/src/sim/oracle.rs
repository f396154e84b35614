//! What the application was told, and therefore what the data must show.

use std::collections::HashMap;

/// One application write to one block.
#[derive(Debug, Clone)]
struct BlockWrite {
    tag: u64,
    acked: bool,
    /// Acknowledged while the peer held it too (replicated to an UpToDate
    /// peer) or covered by a completed flush: survives any single crash.
    protected: bool,
    /// Acknowledged while replicated to an UpToDate peer.
    replicated: bool,
    node: usize,
    /// Acked, unprotected, and its node lost power before a flush: the
    /// write may legitimately be gone.
    at_risk: bool,
}

#[derive(Debug, Default)]
pub struct Oracle {
    blocks: HashMap<u64, Vec<BlockWrite>>,
    /// Acked-unprotected writes per node, to protect on flush or endanger on crash.
    /// Each entry is a block and the index of the write in its history:
    /// tags do not name a write (every zeroing write has tag 0).
    unflushed: [Vec<(u64, usize)>; 2],
    /// How many entries of `unflushed` were taken off its front so far: a
    /// flush covers the writes acknowledged before it was issued, counted
    /// from the first ever, so a flush that completes after an earlier one
    /// drained the list does not cover writes acknowledged after it.
    drained: [usize; 2],
}

/// The tag a block holds: 0 for zeroes / never written.
pub fn tag_of(block: &[u8]) -> u64 {
    block
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Block contents for a tag: the tag, the block number, then filler.
pub fn block_for(tag: u64, block: u64) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    v[..8].copy_from_slice(&tag.to_le_bytes());
    v[8..16].copy_from_slice(&block.to_le_bytes());
    for (i, b) in v[16..].iter_mut().enumerate() {
        *b = (tag as u8).wrapping_add(i as u8);
    }
    v
}

impl Oracle {
    pub fn issued(&mut self, node: usize, tag: u64, first_block: u64, nblocks: u64) {
        for b in first_block..first_block + nblocks {
            self.blocks.entry(b).or_default().push(BlockWrite {
                tag,
                acked: false,
                protected: false,
                replicated: false,
                node,
                at_risk: false,
            });
        }
    }

    pub fn acked(&mut self, tag: u64, first_block: u64, nblocks: u64, protected: bool) {
        for b in first_block..first_block + nblocks {
            if let Some(ws) = self.blocks.get_mut(&b) {
                if let Some(i) = ws.iter().rposition(|w| w.tag == tag) {
                    let w = &mut ws[i];
                    w.acked = true;
                    w.protected = protected;
                    w.replicated = protected;
                    if !protected {
                        self.unflushed[w.node].push((b, i));
                    }
                }
            }
        }
    }

    /// A flush issued when [`Oracle::unflushed_len`] was `upto` completed on
    /// `node`: the writes acknowledged before it are durable.
    pub fn flushed(&mut self, node: usize, upto: usize) {
        // Not a clamp of an impossible case: a flush that completes after a
        // later one (or a power loss) drained past its mark covers nothing more.
        let n = upto
            .saturating_sub(self.drained[node])
            .min(self.unflushed[node].len());
        self.drained[node] += n;
        let list: Vec<(u64, usize)> = self.unflushed[node].drain(..n).collect();
        for (b, i) in list {
            if let Some(w) = self.blocks.get_mut(&b).and_then(|ws| ws.get_mut(i)) {
                w.protected = true;
            }
        }
    }

    /// The mark a flush issued now passes to [`Oracle::flushed`].
    pub fn unflushed_len(&self, node: usize) -> usize {
        self.drained[node] + self.unflushed[node].len()
    }

    /// `node` lost power: its unflushed, unreplicated acked writes may be gone.
    pub fn power_loss(&mut self, node: usize) {
        self.drained[node] += self.unflushed[node].len();
        for (b, i) in self.unflushed[node].drain(..) {
            if let Some(w) = self.blocks.get_mut(&b).and_then(|ws| ws.get_mut(i)) {
                if !w.protected {
                    w.at_risk = true;
                }
            }
        }
    }

    /// A split-brain victim's own changes (acknowledged while it was alone)
    /// are discarded on purpose: they may vanish.
    pub fn discard_node_unprotected(&mut self, node: usize) {
        for ws in self.blocks.values_mut() {
            for w in ws.iter_mut().filter(|w| w.node == node && !w.replicated) {
                w.at_risk = true;
            }
        }
        self.drained[node] += self.unflushed[node].len();
        self.unflushed[node].clear();
    }

    /// Check one block's final tag. Err describes the violation.
    pub fn check(&self, block: u64, tag: u64) -> Result<(), String> {
        let Some(ws) = self.blocks.get(&block) else {
            return if tag == 0 {
                Ok(())
            } else {
                Err(format!("block {block} holds tag {tag} nobody wrote"))
            };
        };
        // Writes to one block never overlap in time (the workload waits),
        // so issue order is completion order.
        let last_required = ws.iter().rposition(|w| w.acked && !w.at_risk);
        let allowed: Vec<u64> = match last_required {
            Some(i) => ws[i..].iter().map(|w| w.tag).collect(),
            None => std::iter::once(0).chain(ws.iter().map(|w| w.tag)).collect(),
        };
        if allowed.contains(&tag) {
            Ok(())
        } else {
            let w = last_required.map(|i| &ws[i]);
            Err(format!(
                "block {block}: holds tag {tag}, but the last acknowledged write was tag {:?} \
                 (protected: {:?}); allowed {:?}",
                w.map(|w| w.tag),
                w.map(|w| w.protected),
                allowed
            ))
        }
    }
}
