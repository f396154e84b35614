//! The sync handshake: from both nodes' generation UUIDs, flags and roles,
//! decide who syncs from whom, or that this is a split brain.
//!
//! Both nodes run the same function on the same inputs (their own view and
//! the peer's `Hello`), with the arguments swapped, and must reach mirrored
//! answers without another round trip. `decide(a, b)` is therefore required to
//! be the mirror of `decide(b, a)`; a test checks that over random inputs.

use serde::{Deserialize, Serialize};

use crate::gen::{Generations, UUID_JUST_CREATED};
use crate::meta::MetaFlags;
use crate::wire::{DiskState, Role};

/// What after-sb-0pri may do (no node is Primary at connect time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AfterSb0 {
    Disconnect,
    DiscardZeroChanges,
    DiscardLeastChanges,
    /// Discard the data of the named node.
    DiscardNode(String),
    /// Discard the data of the node that became Primary last (DRBD's
    /// `discard-younger-primary`: the Primary from before the split wins).
    DiscardYoungerPrimary,
    /// Discard the data of the node that became Primary first.
    DiscardOlderPrimary,
}

/// What after-sb-1pri may do (one node is Primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AfterSb1 {
    Disconnect,
    /// Apply after-sb-0pri if it discards the Secondary's data; else disconnect.
    Consensus,
    DiscardSecondary,
    /// Apply after-sb-0pri; if the Primary loses, it runs the pri-lost hook.
    CallPriLostAfterSb,
}

/// What after-sb-2pri may do (both Primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AfterSb2 {
    Disconnect,
    CallPriLostAfterSb,
}

/// Split-brain auto-recovery policies (DRBD's `after-sb-*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitBrainPolicy {
    pub after_sb_0pri: AfterSb0,
    pub after_sb_1pri: AfterSb1,
    pub after_sb_2pri: AfterSb2,
}

impl Default for SplitBrainPolicy {
    fn default() -> Self {
        Self {
            after_sb_0pri: AfterSb0::Disconnect,
            after_sb_1pri: AfterSb1::Disconnect,
            after_sb_2pri: AfterSb2::Disconnect,
        }
    }
}

/// One node's side of the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View<'a> {
    pub node: &'a str,
    pub gens: Generations,
    pub flags: MetaFlags,
    pub role: Role,
    pub disk: DiskState,
    pub dirty_bits: u64,
    pub discard_my_data: bool,
    /// When the node last became Primary (wall-clock ms since the epoch;
    /// 0: never, or a peer too old to say).
    pub promoted_at_ms: u64,
}

/// The outcome, from the point of view of the first argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Same data: no resync.
    NoSync,
    /// I send; the union of both bitmaps is resynced (all of it if `full`).
    Source { full: bool },
    /// I receive.
    Target { full: bool },
    /// Both sides changed data since they last shared it and no policy
    /// resolved it. `i_run_pri_lost_hook`: a policy chose this node, a
    /// Primary, as the victim; it must run its pri-lost-after-sb hook.
    SplitBrain {
        detail: String,
        i_run_pri_lost_hook: bool,
    },
    /// Split brain resolved by a policy (or discard-my-data); logged loudly.
    SplitBrainResolved { i_am_source: bool, how: String },
    /// The data sets share no history.
    Unrelated,
    /// The node that would have to be the source has no consistent data.
    NoGoodData { detail: String },
}

impl Decision {
    /// The mirror image: what the peer decides.
    #[must_use]
    pub fn mirrored(&self) -> Decision {
        match self {
            Decision::Source { full } => Decision::Target { full: *full },
            Decision::Target { full } => Decision::Source { full: *full },
            Decision::SplitBrainResolved { i_am_source, how } => Decision::SplitBrainResolved {
                i_am_source: !*i_am_source,
                how: how.clone(),
            },
            // Who runs the hook is not mirrorable from one side's answer.
            Decision::SplitBrain { detail, .. } => Decision::SplitBrain {
                detail: detail.clone(),
                i_run_pri_lost_hook: false,
            },
            other => other.clone(),
        }
    }
}

/// Raw generation comparison, DRBD's `uuid_compare` in spirit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Equal,
    BitmapSource,
    BitmapTarget,
    FullSource,
    FullTarget,
    SplitBrain,
    SplitBrainFar,
    Unrelated,
}

fn nz(x: u64) -> bool {
    x != 0
}

/// The decision table on generation UUIDs: the rules in the order they are
/// tried, the first that matches decides. The numbers are those of the same
/// rule in DRBD 8.4's `drbd_uuid_compare`, for reference; the order is not
/// DRBD's (50, 60, 70, 80, 90, 100): here the bitmap rules 50, 70 and 90 come
/// before the history rules 60 and 80, and tests/decide_table.rs pins it.
/// The table stays in one function so it reads top to bottom; the two rules
/// with a sub-table of their own (40 and 90) are functions below.
fn cmp_uuids(me: &View<'_>, peer: &View<'_>) -> Cmp {
    let (m, p) = (&me.gens, &peer.gens);
    let (sc, pc) = (m.current, p.current);
    // Rules 10, 20, 30: fresh metadata on one side or both.
    if sc == UUID_JUST_CREATED && pc == UUID_JUST_CREATED {
        return Cmp::Equal;
    }
    if sc == UUID_JUST_CREATED {
        return Cmp::FullTarget;
    }
    if pc == UUID_JUST_CREATED {
        return Cmp::FullSource;
    }
    // Rule 40: the same current generation.
    if sc == pc {
        return same_generation(me, peer);
    }
    // Rules 50 and 70: one side's bitmap counts from the other's current
    // generation. Each rule is checked both ways at once: inputs where both
    // directions hold (cyclic histories) would make the two nodes disagree,
    // so they count as split brain.
    let behind = nz(p.bitmap) && sc == p.bitmap;
    let ahead = nz(m.bitmap) && pc == m.bitmap;
    match (behind, ahead) {
        (true, false) => return Cmp::BitmapTarget,
        (false, true) => return Cmp::BitmapSource,
        (true, true) => return Cmp::SplitBrainFar,
        (false, false) => {}
    }
    // Rule 90: both moved on from the same generation.
    if nz(m.bitmap) && m.bitmap == p.bitmap {
        return same_bitmap(me, peer);
    }
    // Rules 60 and 80: one side's current generation is in the other's
    // history (older than its bitmap): only a full sync is known to cover it.
    let behind = p.history.iter().any(|&h| nz(h) && h == sc);
    let ahead = m.history.iter().any(|&h| nz(h) && h == pc);
    match (behind, ahead) {
        (true, false) => return Cmp::FullTarget,
        (false, true) => return Cmp::FullSource,
        (true, true) => return Cmp::SplitBrainFar,
        (false, false) => {}
    }
    // Rule 100: some older generation in common.
    let mine = [m.bitmap, m.history[0], m.history[1]];
    let theirs = [p.bitmap, p.history[0], p.history[1]];
    if mine.iter().any(|&a| nz(a) && theirs.contains(&a)) {
        return Cmp::SplitBrainFar;
    }
    Cmp::Unrelated
}

/// Rule 40, the same current generation on both sides: equal, unless a
/// Primary crashed.
///
/// A Primary that crashed may hold writes the peer never saw, and the peer
/// may hold writes the crashed node's volatile cache lost. DRBD makes the
/// crashed Primary the source; we make the survivor the source instead,
/// because only it is sure to hold every write that was acknowledged under
/// protocol C (its cache did not die). The activity-log extents of the
/// crashed node are in its bitmap, so the resync covers every block either
/// side may differ in. A survivor whose own data is Inconsistent (the
/// Primary crashed while resyncing it) cannot be the source: then the
/// crashed Primary's copy is the only consistent one, as in DRBD.
fn same_generation(me: &View<'_>, peer: &View<'_>) -> Cmp {
    let mcp = me.flags.has(MetaFlags::CRASHED_PRIMARY);
    let pcp = peer.flags.has(MetaFlags::CRASHED_PRIMARY);
    match (mcp, pcp) {
        (false, false) => Cmp::Equal,
        (true, false) if consistent(peer.disk) => Cmp::BitmapTarget,
        (true, false) => Cmp::BitmapSource,
        (false, true) if consistent(me.disk) => Cmp::BitmapSource,
        (false, true) => Cmp::BitmapTarget,
        // Both crashed (a common power failure): nothing survived in a
        // cache, so either consistent copy is as good. An Inconsistent
        // one (a resync target when the power went; metadata written
        // before targets dropped the flag) cannot be the source.
        (true, true) => match (consistent(me.disk), consistent(peer.disk)) {
            (true, false) => Cmp::BitmapSource,
            (false, true) => Cmp::BitmapTarget,
            _ if me.node < peer.node => Cmp::BitmapSource,
            _ => Cmp::BitmapTarget,
        },
    }
}

/// Rule 90, both moved on from the same generation: a split brain, unless
/// a side changed nothing worth keeping.
///
/// A side that froze when it lost the peer and acknowledged nothing since
/// (UNACKED_GEN) made no change worth keeping, and its bitmap counts from
/// that same generation: it syncs from the other side instead of a split
/// brain.
fn same_bitmap(me: &View<'_>, peer: &View<'_>) -> Cmp {
    let mu = me.flags.has(MetaFlags::UNACKED_GEN);
    let pu = peer.flags.has(MetaFlags::UNACKED_GEN);
    match (mu, pu) {
        (false, false) => Cmp::SplitBrain,
        (true, false) => Cmp::BitmapTarget,
        (false, true) => Cmp::BitmapSource,
        // Neither acknowledged anything alone: any consistent side may
        // be the source; a Primary, which cannot be a target, first.
        (true, true) => {
            let rank = |v: &View<'_>| (consistent(v.disk), v.role == Role::Primary);
            match rank(me).cmp(&rank(peer)) {
                std::cmp::Ordering::Greater => Cmp::BitmapSource,
                std::cmp::Ordering::Less => Cmp::BitmapTarget,
                std::cmp::Ordering::Equal if me.node < peer.node => Cmp::BitmapSource,
                std::cmp::Ordering::Equal => Cmp::BitmapTarget,
            }
        }
    }
}

fn consistent(d: DiskState) -> bool {
    matches!(
        d,
        DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
    )
}

/// Decide the sync direction for `me` connecting to `peer` under `policy`.
#[must_use]
pub fn decide(me: &View<'_>, peer: &View<'_>, policy: &SplitBrainPolicy) -> Decision {
    let d = match cmp_uuids(me, peer) {
        Cmp::Equal => {
            // Same generation: an Inconsistent side (interrupted sync,
            // invalidate) needs data, from a consistent peer.
            match (consistent(me.disk), consistent(peer.disk)) {
                (true, false) => Decision::Source { full: false },
                (false, true) => Decision::Target { full: false },
                (true, true) if me.dirty_bits > 0 || peer.dirty_bits > 0 => {
                    equal_but_marked(me, peer)
                }
                _ => Decision::NoSync,
            }
        }
        Cmp::BitmapSource => Decision::Source { full: false },
        Cmp::BitmapTarget => Decision::Target { full: false },
        Cmp::FullSource => Decision::Source { full: true },
        Cmp::FullTarget => Decision::Target { full: true },
        Cmp::SplitBrain => split_brain(me, peer, policy),
        // The bitmaps count from different points (e.g. a forced promotion
        // during the split brain began another generation): the admin's
        // discard-my-data resolves it as for a near split brain, but only a
        // full sync can make the victim equal. No policy applies: the
        // blocks changed are not known.
        Cmp::SplitBrainFar => match (me.discard_my_data, peer.discard_my_data) {
            (true, false) if me.role == Role::Secondary => Decision::Target { full: true },
            (false, true) if peer.role == Role::Secondary => Decision::Source { full: true },
            _ => Decision::SplitBrain {
                detail: format!(
                    "both {} and {} changed data since they last shared a generation, and \
                     one of them began another since (a promotion during the split brain), \
                     so the victim will be resynced in full",
                    me.node, peer.node
                ),
                i_run_pri_lost_hook: false,
            },
        },
        Cmp::Unrelated => Decision::Unrelated,
    };
    // Whoever is chosen as the source must have consistent data.
    match &d {
        Decision::Source { .. }
        | Decision::SplitBrainResolved {
            i_am_source: true, ..
        } if !consistent(me.disk) => Decision::NoGoodData {
            detail: format!(
                "{} would be the sync source but its disk is {:?}",
                me.node, me.disk
            ),
        },
        Decision::Target { .. }
        | Decision::SplitBrainResolved {
            i_am_source: false, ..
        } if !consistent(peer.disk) => Decision::NoGoodData {
            detail: format!(
                "{} would be the sync source but its disk is {:?}",
                peer.node, peer.disk
            ),
        },
        _ => d,
    }
}

/// Same generation, both consistent, and bits set on one side or both: the
/// bits are blocks that may differ although no new generation began, e.g.
/// writes the peer confirmed but had not flushed when the connection went
/// (a clean `secondary` + `down` right after writes without a flush), or a
/// write the peer failed. DRBD logs "No resync, but N bits in bitmap" and
/// leaves them set forever; here the marked blocks are resynced (the union
/// of both bitmaps, so both end clear). The source: a Primary (its data is
/// what its users see, and it cannot be a target); else the side that
/// marked blocks (it held the writes); else the lower node name. Mirrored
/// by construction: each rule reads both views symmetrically.
fn equal_but_marked(me: &View<'_>, peer: &View<'_>) -> Decision {
    let source = match (me.role, peer.role) {
        // Two Primaries are refused after the handshake, not resynced.
        (Role::Primary, Role::Primary) => return Decision::NoSync,
        (Role::Primary, _) => true,
        (_, Role::Primary) => false,
        _ => match (me.dirty_bits > 0, peer.dirty_bits > 0) {
            (true, false) => true,
            (false, true) => false,
            _ => me.node < peer.node,
        },
    };
    if source {
        Decision::Source { full: false }
    } else {
        Decision::Target { full: false }
    }
}

/// Which side loses its changes, as "me" (true) or "peer" (false), if any.
fn sb0(me: &View<'_>, peer: &View<'_>, p: &AfterSb0) -> Option<(bool, String)> {
    match p {
        AfterSb0::Disconnect => None,
        AfterSb0::DiscardZeroChanges => match (me.dirty_bits == 0, peer.dirty_bits == 0) {
            (true, false) => Some((true, "discard-zero-changes".into())),
            (false, true) => Some((false, "discard-zero-changes".into())),
            // Neither changed anything: any direction loses nothing.
            (true, true) => Some((
                me.node > peer.node,
                "discard-zero-changes (no changes on either)".into(),
            )),
            (false, false) => None,
        },
        AfterSb0::DiscardLeastChanges => {
            let me_loses = match me.dirty_bits.cmp(&peer.dirty_bits) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => me.node > peer.node,
            };
            Some((me_loses, "discard-least-changes".into()))
        }
        AfterSb0::DiscardNode(name) => {
            if name == me.node {
                Some((true, format!("discard-node-{name}")))
            } else if name == peer.node {
                Some((false, format!("discard-node-{name}")))
            } else {
                None
            }
        }
        AfterSb0::DiscardYoungerPrimary => by_promotion(me, peer, true),
        AfterSb0::DiscardOlderPrimary => by_promotion(me, peer, false),
    }
}

/// discard-younger-primary (`younger`) or discard-older-primary: the loser
/// by when each node last became Primary. When that does not tell (a side
/// never promoted or too old to say, or the same millisecond), DRBD falls
/// through to discard-least-changes: so does this, and says so.
fn by_promotion(me: &View<'_>, peer: &View<'_>, younger: bool) -> Option<(bool, String)> {
    let name = if younger {
        "discard-younger-primary"
    } else {
        "discard-older-primary"
    };
    let (m, p) = (me.promoted_at_ms, peer.promoted_at_ms);
    if m == 0 || p == 0 || m == p {
        let (me_loses, how) = sb0(me, peer, &AfterSb0::DiscardLeastChanges)?;
        return Some((
            me_loses,
            format!("{name} (the promotion times do not tell: {how})"),
        ));
    }
    // The younger Primary became Primary later.
    let me_loses = (m > p) == younger;
    Some((me_loses, name.into()))
}

/// A split brain (rule 90 without a side that changed nothing), resolved
/// in DRBD's order: the admin's `--discard-my-data`, then the after-sb
/// policy for the number of Primaries, which never discards a Primary.
fn split_brain(me: &View<'_>, peer: &View<'_>, policy: &SplitBrainPolicy) -> Decision {
    if let Some(d) = discard_my_data(me, peer) {
        return d;
    }
    let primaries = u8::from(me.role == Role::Primary) + u8::from(peer.role == Role::Primary);
    let loser = match primaries {
        0 => sb0(me, peer, &policy.after_sb_0pri).map(|(l, h)| (l, h, false)),
        1 => sb1(me, peer, policy),
        _ => sb2(me, peer, policy),
    };
    match loser {
        Some((me_loses, how, hook)) => discard_loser(me, peer, me_loses, how, hook),
        None => Decision::SplitBrain {
            i_run_pri_lost_hook: false,
            detail: format!(
                "both {} and {} changed data since they last shared a generation \
                 ({} and {} blocks out of sync); no after-sb policy resolved it",
                me.node, peer.node, me.dirty_bits, peer.dirty_bits
            ),
        },
    }
}

/// The admin's word first: `connect --discard-my-data` on the victim, if
/// it is a Secondary.
fn discard_my_data(me: &View<'_>, peer: &View<'_>) -> Option<Decision> {
    match (me.discard_my_data, peer.discard_my_data) {
        (true, false) if me.role == Role::Secondary => Some(Decision::SplitBrainResolved {
            i_am_source: false,
            how: format!("{} discards its data (connect --discard-my-data)", me.node),
        }),
        (false, true) if peer.role == Role::Secondary => Some(Decision::SplitBrainResolved {
            i_am_source: true,
            how: format!(
                "{} discards its data (connect --discard-my-data)",
                peer.node
            ),
        }),
        _ => None,
    }
}

/// after-sb-1pri (one Primary): who loses, how it was chosen, and whether
/// the loser runs the pri-lost hook.
fn sb1(me: &View<'_>, peer: &View<'_>, policy: &SplitBrainPolicy) -> Option<(bool, String, bool)> {
    let me_is_sec = me.role == Role::Secondary;
    match policy.after_sb_1pri {
        AfterSb1::Disconnect => None,
        AfterSb1::DiscardSecondary => Some((me_is_sec, "discard-secondary".into(), false)),
        AfterSb1::Consensus => match sb0(me, peer, &policy.after_sb_0pri) {
            // Only if after-sb-0pri would discard the Secondary too.
            Some((me_loses, how)) if me_loses == me_is_sec => {
                Some((me_loses, format!("consensus ({how})"), false))
            }
            _ => None,
        },
        AfterSb1::CallPriLostAfterSb => sb0(me, peer, &policy.after_sb_0pri)
            .map(|(me_loses, how)| (me_loses, format!("call-pri-lost-after-sb ({how})"), true)),
    }
}

/// after-sb-2pri (both Primary), as [`sb1`].
fn sb2(me: &View<'_>, peer: &View<'_>, policy: &SplitBrainPolicy) -> Option<(bool, String, bool)> {
    match policy.after_sb_2pri {
        AfterSb2::Disconnect => None,
        // Two Primaries cannot be resynced while both hold the device:
        // the victim runs its hook (which should demote or reboot it) and
        // the connection drops until an admin reconnects.
        AfterSb2::CallPriLostAfterSb => sb0(me, peer, &policy.after_sb_0pri)
            .map(|(me_loses, how)| (me_loses, format!("call-pri-lost-after-sb ({how})"), true)),
    }
}

/// The policy chose a loser. A Primary is never rolled back under its
/// users: it cannot be a sync target while it serves I/O. The pri-lost
/// variants tell the victim to run its hook (which demotes or reboots it);
/// the connection drops until an admin reconnects.
fn discard_loser(
    me: &View<'_>,
    peer: &View<'_>,
    me_loses: bool,
    how: String,
    hook: bool,
) -> Decision {
    let victim_role = if me_loses { me.role } else { peer.role };
    if victim_role == Role::Primary {
        let victim = if me_loses { me.node } else { peer.node };
        return Decision::SplitBrain {
            detail: format!(
                "{how} picks {victim}, a Primary, as the victim; {}",
                if hook {
                    "it runs its pri-lost-after-sb hook"
                } else {
                    "refusing to discard a Primary's data"
                }
            ),
            i_run_pri_lost_hook: hook && me_loses,
        };
    }
    Decision::SplitBrainResolved {
        i_am_source: !me_loses,
        how,
    }
}
