//! When this node last became Primary, for the after-sb policies
//! discard-younger-primary and discard-older-primary: kept in the
//! superblock, stamped on every promotion, told to the peer during the
//! handshake (`PromotedAt`, between `Hello` and `Auth`).
//!
//! The two nodes are apart when both promote in a split brain, so only
//! a clock they share can order the two promotions: wall-clock time (NTP
//! keeps the nodes' clocks within far less than the minutes between a
//! split and a second promotion). The node never reads a clock: its driver
//! tells it where the wall clock stood at the origin of `now`
//! ([`Node::set_wall_clock_origin`]); the simulator leaves it at zero, so
//! its nodes share the simulated clock.

use crate::wire::{features, Message};

use super::Node;

/// The promotion stamp and the wall clock it is taken from.
#[derive(Debug, Default)]
pub(super) struct Promotion {
    /// Wall-clock ms since the epoch of the last promotion; 0: never.
    pub(super) at_ms: u64,
    /// Wall-clock ms since the epoch at `Millis::ZERO` of the driver's clock.
    wall_origin_ms: u64,
}

impl Promotion {
    pub(super) fn new(at_ms: u64) -> Self {
        Self {
            at_ms,
            wall_origin_ms: 0,
        }
    }
}

impl Node {
    /// Where the wall clock (ms since the Unix epoch) stood when the
    /// driver's monotonic clock was at zero; promotions are stamped with
    /// that plus `now`. A driver that does not call this stamps its
    /// monotonic time (the simulator, whose nodes share one clock).
    pub fn set_wall_clock_origin(&mut self, origin_ms: u64) {
        self.promotion.wall_origin_ms = origin_ms;
    }

    /// When this node last became Primary (wall-clock ms since the epoch;
    /// 0 if never since its metadata was created).
    #[must_use]
    pub fn promoted_at_ms(&self) -> u64 {
        self.promotion.at_ms
    }

    /// A promotion: stamp it (persisted with the superblock the promotion
    /// writes). Never 0, which means "never".
    pub(super) fn stamp_promotion(&mut self) {
        let wall = self.promotion.wall_origin_ms.saturating_add(self.now.0);
        self.promotion.at_ms = wall.max(1);
    }

    /// On the peer's Hello: tell it when this node became Primary, if it
    /// understands (before `Auth`, so it has it when it decides).
    pub(super) fn send_promoted_at(&mut self, peer_features: u64) {
        if peer_features & self.cfg.features & features::PROMOTED_AT != 0 {
            self.send(Message::PromotedAt {
                at_ms: self.promotion.at_ms,
            });
        }
    }

    /// The peer's promotion stamp, between its Hello and its Auth (the
    /// connection routes it here only before the decision).
    pub(super) fn on_promoted_at(&mut self, at_ms: u64) {
        match self.link.peer_mut() {
            Some(p) => p.promoted_at_ms = at_ms,
            None => self.protocol_error("PromotedAt before Hello"),
        }
    }
}
