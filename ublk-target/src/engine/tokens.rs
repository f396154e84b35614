//! The tokens of the engine's disk ops: the state machine's [`IoToken`]s and
//! the engine's own, sharing the disk layer's one `u64` space.
//!
//! The disk layer hands each op's `u64` back untouched. Most ops are the
//! state machine's, carried by [`IoToken::raw`]; a few are the engine's
//! (the flush that follows a FUA write-zeroes, which the disk has no FUA
//! for). The node's tokens stay below [`NODE_TOKEN_LIMIT`], so the engine
//! mints its own from there up and [`DiskTag::of`] tells the two apart by
//! value alone, without a lookup that could mistake one for the other.

use replication_proto::machine::{IoToken, NODE_TOKEN_LIMIT};

/// A disk op the engine issued itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct OwnToken(u64);

impl OwnToken {
    /// The value handed to the disk layer.
    pub(super) fn raw(self) -> u64 {
        self.0
    }
}

/// Where the engine's own tokens come from: [`NODE_TOKEN_LIMIT`] up.
#[derive(Debug)]
pub(super) struct OwnTokens {
    next: u64,
}

impl Default for OwnTokens {
    fn default() -> Self {
        Self {
            next: NODE_TOKEN_LIMIT,
        }
    }
}

impl OwnTokens {
    pub(super) fn next(&mut self) -> OwnToken {
        self.next += 1;
        debug_assert!(self.next > NODE_TOKEN_LIMIT, "own disk tokens wrapped");
        OwnToken(self.next)
    }
}

/// Whose a finished disk op is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DiskTag {
    Node(IoToken),
    Own(OwnToken),
}

impl DiskTag {
    /// The owner of the disk token `raw`, by its value.
    pub(super) fn of(raw: u64) -> Self {
        if raw >= NODE_TOKEN_LIMIT {
            DiskTag::Own(OwnToken(raw))
        } else {
            DiskTag::Node(IoToken::from_raw(raw))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_tokens_never_pass_for_the_nodes() {
        let mut own = OwnTokens::default();
        let t = own.next();
        assert_eq!(DiskTag::of(t.raw()), DiskTag::Own(t));
        let node = IoToken::from_raw(NODE_TOKEN_LIMIT - 1);
        assert_eq!(DiskTag::of(node.raw()), DiskTag::Node(node));
    }
}
