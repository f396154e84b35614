//! The sync-handshake decision table (generation UUIDs → direction).

#![allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::panic
)]

use proptest::prelude::*;
use replication_proto::gen::{Generations, UUID_JUST_CREATED};
use replication_proto::machine::decide::{
    decide, AfterSb0, AfterSb1, Decision, SplitBrainPolicy, View,
};
use replication_proto::meta::MetaFlags;
use replication_proto::wire::{DiskState, Role};

fn view<'a>(node: &'a str, c: u64, b: u64, h: [u64; 2]) -> View<'a> {
    View {
        node,
        gens: Generations {
            current: c,
            bitmap: b,
            history: h,
        },
        flags: MetaFlags(MetaFlags::CONSISTENT | MetaFlags::WAS_UP_TO_DATE),
        role: Role::Secondary,
        disk: DiskState::UpToDate,
        dirty_bits: 0,
        discard_my_data: false,
        promoted_at_ms: 0,
    }
}

fn pol() -> SplitBrainPolicy {
    SplitBrainPolicy::default()
}

#[test]
fn equal_generations_need_no_sync() {
    let a = view("alpha", 0x10, 0, [0, 0]);
    let b = view("beta", 0x10, 0, [0, 0]);
    assert_eq!(decide(&a, &b, &pol()), Decision::NoSync);
}

#[test]
fn my_bitmap_is_peer_current_makes_me_source() {
    let a = view("alpha", 0x20, 0x10, [0, 0]);
    let b = view("beta", 0x10, 0, [0, 0]);
    assert_eq!(decide(&a, &b, &pol()), Decision::Source { full: false });
    assert_eq!(decide(&b, &a, &pol()), Decision::Target { full: false });
}

#[test]
fn fresh_metadata_syncs_in_full_from_the_forced_node() {
    let a = view("alpha", 0x20, 0, [0, 0]);
    let mut b = view("beta", UUID_JUST_CREATED, 0, [0, 0]);
    b.disk = DiskState::Inconsistent;
    assert_eq!(decide(&a, &b, &pol()), Decision::Source { full: true });
    assert_eq!(decide(&b, &a, &pol()), Decision::Target { full: true });
}

#[test]
fn both_moved_on_from_a_shared_generation_is_split_brain() {
    let mut a = view("alpha", 0x20, 0x10, [0, 0]);
    let mut b = view("beta", 0x30, 0x10, [0, 0]);
    a.dirty_bits = 5;
    b.dirty_bits = 3;
    assert!(matches!(
        decide(&a, &b, &pol()),
        Decision::SplitBrain { .. }
    ));
    assert!(matches!(
        decide(&b, &a, &pol()),
        Decision::SplitBrain { .. }
    ));
    // discard-my-data on beta resolves it: beta syncs from alpha.
    b.discard_my_data = true;
    assert!(matches!(
        decide(&a, &b, &pol()),
        Decision::SplitBrainResolved {
            i_am_source: true,
            ..
        }
    ));
    assert!(matches!(
        decide(&b, &a, &pol()),
        Decision::SplitBrainResolved {
            i_am_source: false,
            ..
        }
    ));
    // after-sb-0pri discard-least-changes: beta changed less, beta loses.
    b.discard_my_data = false;
    let p = SplitBrainPolicy {
        after_sb_0pri: AfterSb0::DiscardLeastChanges,
        ..pol()
    };
    assert!(matches!(
        decide(&a, &b, &p),
        Decision::SplitBrainResolved {
            i_am_source: true,
            ..
        }
    ));
    // after-sb-1pri discard-secondary never discards the Primary.
    a.role = Role::Primary;
    let p = SplitBrainPolicy {
        after_sb_1pri: AfterSb1::DiscardSecondary,
        ..pol()
    };
    assert!(matches!(
        decide(&a, &b, &p),
        Decision::SplitBrainResolved {
            i_am_source: true,
            ..
        }
    ));
    assert!(matches!(
        decide(&b, &a, &p),
        Decision::SplitBrainResolved {
            i_am_source: false,
            ..
        }
    ));
}

#[test]
fn unrelated_data_is_refused() {
    let a = view("alpha", 0x20, 0x18, [0x16, 0]);
    let b = view("beta", 0x30, 0x28, [0x26, 0]);
    assert_eq!(decide(&a, &b, &pol()), Decision::Unrelated);
}

#[test]
fn crashed_primary_takes_the_survivors_data() {
    let mut a = view("alpha", 0x20, 0, [0, 0]);
    a.flags.set(MetaFlags::CRASHED_PRIMARY, true);
    a.disk = DiskState::Consistent;
    let b = view("beta", 0x20, 0, [0, 0]);
    assert_eq!(decide(&a, &b, &pol()), Decision::Target { full: false });
    assert_eq!(decide(&b, &a, &pol()), Decision::Source { full: false });
}

#[test]
fn a_primary_that_crashed_while_resyncing_its_peer_is_the_source() {
    // The peer took the Primary's generation when its resync started and is
    // Inconsistent until it ends: only the crashed Primary has consistent
    // data (before this rule the pair refused to sync at all).
    let mut a = view("alpha", 0x20, 0, [0, 0]);
    a.flags.set(MetaFlags::CRASHED_PRIMARY, true);
    a.disk = DiskState::Consistent;
    let mut b = view("beta", 0x20, 0, [0, 0]);
    b.flags = MetaFlags::default();
    b.disk = DiskState::Inconsistent;
    assert_eq!(decide(&a, &b, &pol()), Decision::Source { full: false });
    assert_eq!(decide(&b, &a, &pol()), Decision::Target { full: false });
}

#[test]
fn an_inconsistent_source_is_no_good_data() {
    let mut a = view("alpha", 0x20, 0x10, [0, 0]);
    a.disk = DiskState::Inconsistent;
    let b = view("beta", 0x10, 0, [0, 0]);
    assert!(matches!(
        decide(&a, &b, &pol()),
        Decision::NoGoodData { .. }
    ));
}

type Arb = (u64, u64, [u64; 2], u8, u8, u64, bool, bool, bool, u64);

fn arb_view() -> impl Strategy<Value = Arb> {
    // Small UUID alphabet so the interesting equalities happen often.
    let u = prop_oneof![Just(0u64), Just(UUID_JUST_CREATED), 0x10u64..0x16];
    (
        u.clone(),
        u.clone(),
        [u.clone(), u],
        0u8..2,
        0u8..3,
        0u64..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u64..3,
    )
}

fn mk<'a>(node: &'a str, v: &Arb) -> View<'a> {
    let mut flags = MetaFlags::default();
    flags.set(MetaFlags::CRASHED_PRIMARY, v.6);
    flags.set(MetaFlags::UNACKED_GEN, v.8);
    View {
        node,
        gens: Generations {
            current: v.0,
            bitmap: v.1,
            history: v.2,
        },
        flags,
        role: if v.3 == 0 {
            Role::Secondary
        } else {
            Role::Primary
        },
        disk: [
            DiskState::UpToDate,
            DiskState::Inconsistent,
            DiskState::Consistent,
        ][usize::from(v.4)],
        dirty_bits: v.5,
        discard_my_data: v.7,
        promoted_at_ms: v.9,
    }
}

fn kind(d: &Decision) -> String {
    match d {
        Decision::SplitBrain { .. } => "SplitBrain".into(),
        Decision::NoGoodData { .. } => "NoGoodData".into(),
        Decision::SplitBrainResolved { i_am_source, .. } => format!("Resolved({i_am_source})"),
        other => format!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    /// Both nodes decide independently; their answers must mirror each other.
    #[test]
    fn decisions_mirror(a in arb_view(), b in arb_view(), p0 in 0u8..6, p1 in 0u8..4) {
        let pol = SplitBrainPolicy {
            after_sb_0pri: match p0 { 0 => AfterSb0::Disconnect, 1 => AfterSb0::DiscardZeroChanges,
                                      2 => AfterSb0::DiscardLeastChanges, 3 => AfterSb0::DiscardYoungerPrimary,
                                      4 => AfterSb0::DiscardOlderPrimary, _ => AfterSb0::DiscardNode("beta".into()) },
            after_sb_1pri: match p1 { 0 => AfterSb1::Disconnect, 1 => AfterSb1::Consensus,
                                      2 => AfterSb1::DiscardSecondary, _ => AfterSb1::CallPriLostAfterSb },
            ..SplitBrainPolicy::default()
        };
        let (va, vb) = (mk("alpha", &a), mk("beta", &b));
        let da = decide(&va, &vb, &pol);
        let db = decide(&vb, &va, &pol);
        prop_assert_eq!(kind(&da), kind(&db.mirrored()), "alpha {:?} / beta {:?}", da, db);
        // A split-brain policy never picks a Primary as the victim.
        if va.role == Role::Primary {
            let victim = matches!(da, Decision::SplitBrainResolved { i_am_source: false, .. });
            prop_assert!(!victim, "Primary alpha discarded by {:?}", da);
        }
    }
}

#[test]
fn of_two_crashed_nodes_only_a_consistent_one_is_the_source() {
    // beta was the new Primary and crashed while alpha, the old crashed
    // Primary, resynced from it: alpha is Inconsistent. Metadata written
    // before sync targets dropped CRASHED_PRIMARY still carries it on alpha;
    // the name order alone picked alpha, and the pair refused to sync.
    let mut a = view("alpha", 0x20, 0, [0x10, 0]);
    a.flags = MetaFlags(MetaFlags::CRASHED_PRIMARY);
    a.disk = DiskState::Inconsistent;
    let mut b = view("beta", 0x20, 0x10, [0, 0]);
    b.flags.set(MetaFlags::CRASHED_PRIMARY, true);
    b.disk = DiskState::Consistent;
    assert_eq!(decide(&a, &b, &pol()), Decision::Target { full: false });
    assert_eq!(decide(&b, &a, &pol()), Decision::Source { full: false });
}

#[test]
fn a_frozen_primary_that_acknowledged_nothing_alone_rejoins_as_target() {
    // alpha froze when it lost beta and started 0x30 from 0x10 without
    // acknowledging anything; beta was promoted and started 0x20 from 0x10.
    let mut a = view("alpha", 0x30, 0x10, [0, 0]);
    a.flags.set(MetaFlags::UNACKED_GEN, true);
    a.dirty_bits = 1024;
    let mut b = view("beta", 0x20, 0x10, [0, 0]);
    b.role = Role::Primary;
    assert_eq!(decide(&a, &b, &pol()), Decision::Target { full: false });
    assert_eq!(decide(&b, &a, &pol()), Decision::Source { full: false });
    // beta, promoted alone with the freeze armed, froze too: neither
    // acknowledged anything, the Primary is the source.
    b.flags.set(MetaFlags::UNACKED_GEN, true);
    assert_eq!(decide(&a, &b, &pol()), Decision::Target { full: false });
    assert_eq!(decide(&b, &a, &pol()), Decision::Source { full: false });
    // Once alpha acknowledged a write (it was resumed), it is a split brain.
    a.flags.set(MetaFlags::UNACKED_GEN, false);
    b.flags.set(MetaFlags::UNACKED_GEN, false);
    assert!(matches!(
        decide(&a, &b, &pol()),
        Decision::SplitBrain { .. }
    ));
}

/// discard-younger-primary discards the node promoted last, older the one
/// promoted first; promotion times that do not tell fall through to
/// discard-least-changes, as in DRBD.
#[test]
fn younger_and_older_primary_go_by_promotion_time() {
    // A split brain (rule 90), both Secondary again at connect time.
    let mut a = view("alpha", 0x20, 0x10, [0, 0]);
    let mut b = view("beta", 0x30, 0x10, [0, 0]);
    a.dirty_bits = 5;
    b.dirty_bits = 9;
    a.promoted_at_ms = 1_000;
    b.promoted_at_ms = 2_000;
    let younger = SplitBrainPolicy {
        after_sb_0pri: AfterSb0::DiscardYoungerPrimary,
        ..pol()
    };
    let older = SplitBrainPolicy {
        after_sb_0pri: AfterSb0::DiscardOlderPrimary,
        ..pol()
    };
    let src = |d: Decision| match d {
        Decision::SplitBrainResolved { i_am_source, how } => (i_am_source, how),
        other => panic!("not resolved: {other:?}"),
    };
    // beta became Primary later: younger discards beta, older alpha.
    assert!(src(decide(&a, &b, &younger)).0);
    assert!(!src(decide(&b, &a, &younger)).0);
    assert!(!src(decide(&a, &b, &older)).0);
    assert!(src(decide(&b, &a, &older)).0);
    // Unknown on one side: discard-least-changes (alpha changed less).
    b.promoted_at_ms = 0;
    let (i_am_source, how) = src(decide(&a, &b, &younger));
    assert!(!i_am_source, "{how}");
    assert!(how.contains("discard-least-changes"), "{how}");
    // One Primary under after-sb-1pri consensus: the younger Secondary loses.
    b.promoted_at_ms = 2_000;
    a.role = Role::Primary;
    let consensus = SplitBrainPolicy {
        after_sb_1pri: AfterSb1::Consensus,
        ..younger
    };
    assert!(src(decide(&a, &b, &consensus)).0);
    // A younger Primary is never discarded: consensus disconnects.
    a.role = Role::Secondary;
    b.role = Role::Primary;
    assert!(matches!(
        decide(&a, &b, &consensus),
        Decision::SplitBrain { .. }
    ));
}
