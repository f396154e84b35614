//! The witness's tests: its packets, its decisions, its state file.

use replication_proto::gen::Generations;
use replication_proto::time::Millis;
use replication_proto::wire::{DiskState, Role};

use super::*;
use crate::vocab::{Incarnation, RequestNo, WireState};
use crate::wire::DecodeError;

/// What one request comes to.
#[derive(Debug)]
enum Outcome {
    Reply(Reply),
    Dropped(&'static str),
}

/// Feed one request at `now` and collect its outcome, and whether the core
/// asked for its memory to be persisted.
fn handle(w: &mut WitnessCore, now: u64, node: &str, req: &Request) -> (Outcome, bool) {
    w.handle(
        Millis(now),
        Input::Request {
            node: node.into(),
            req: req.clone(),
        },
    );
    let (mut outcome, mut changed) = (None, false);
    while let Some(a) = w.poll_action() {
        match a {
            Action::Persist(m) => {
                assert!(outcome.is_none(), "persisted after answering");
                assert_eq!(&m, w.memory());
                changed = true;
            }
            Action::Reply { reply, .. } => outcome = Some(Outcome::Reply(reply)),
            Action::Dropped { why, .. } => outcome = Some(Outcome::Dropped(why)),
        }
    }
    (outcome.expect("an answer or a drop"), changed)
}

fn req(seq: u64, cur: u64) -> Request {
    Request {
        incarnation: Incarnation(7),
        started_ms: 100,
        seq: RequestNo(seq),
        want_vote: false,
        state: WireState::Idle,
        repd_up: true,
        role: Some(Role::Secondary),
        disk: Some(DiskState::UpToDate),
        connected: true,
        gens: Generations {
            current: cur,
            bitmap: 0,
            history: [0, 0],
        },
    }
}

fn reply(o: Outcome) -> Reply {
    match o {
        Outcome::Reply(r) => r,
        Outcome::Dropped(w) => panic!("dropped: {w}"),
    }
}

fn core() -> WitnessCore {
    WitnessCore::new(
        ["alpha".into(), "beta".into()],
        1000,
        Memory::default(),
        Incarnation(1),
        Millis::ZERO,
    )
}

#[test]
fn round_trip_and_bad_mac() {
    let mut r = req(3, 0xabc);
    r.want_vote = true;
    r.state = WireState::Holding;
    let p = encode_request(b"k", "r0", "alpha", &r);
    let d = decode_request(b"k", &p).unwrap();
    assert_eq!((d.resource.as_str(), d.node.as_str()), ("r0", "alpha"));
    assert_eq!(d.body, r);
    assert_eq!(decode_request(b"x", &p), Err(DecodeError::BadMac));
    assert!(decode_reply(b"k", &p).is_err());
    let rep = Reply {
        witness_incarnation: Incarnation(9),
        echo: (Incarnation(7), RequestNo(3)),
        member: true,
        vote: false,
        peer_outdated: true,
        peer_silent_ms: None,
        reason: "é".repeat(300),
    };
    let p = encode_reply(b"k", "r0", "beta", &rep);
    let d = decode_reply(b"k", &p).unwrap();
    assert_eq!(d.body.echo, (Incarnation(7), RequestNo(3)));
    assert!(d.body.member && !d.body.vote && d.body.peer_silent_ms.is_none());
    assert!(d.body.peer_outdated);
    assert!(d.body.reason.len() <= 255 && d.body.reason.starts_with('é'));
    for i in 4..p.len() {
        let mut q = p.clone();
        q[i] ^= 1;
        assert!(decode_reply(b"k", &q).is_err(), "byte {i}");
    }
    for cut in 0..p.len() {
        assert!(decode_reply(b"k", &p[..cut]).is_err());
    }
}

/// The bytes on the wire are the protocol: a change of a field's type must
/// not change them.
#[test]
fn golden_bytes() {
    const REQUEST: &str = "5250575101010700020600000000000000000007000000000000006400000000\
                           000000030000000000000abc00000000000000000000000000000000000000\
                           000000000002723005616c706861dd6754549d7e4213fe8064250b4ef7047b\
                           608e853ba16970e2afa388b143c21d";
    const REPLY: &str = "5250575101020300000000000000000000000009000000000000000700000000\
                         0000000300000000000005dc02723005616c706861026f6becc7c7dba308767a\
                         6d3a4959dc3dc3388f978dfd030a502d67062534246de972";
    let hex = |p: &[u8]| -> String { p.iter().map(|b| format!("{b:02x}")).collect() };
    let mut r = req(3, 0xabc);
    r.want_vote = true;
    let p = encode_request(b"k", "r0", "alpha", &r);
    assert_eq!(hex(&p), REQUEST);
    assert_eq!(decode_request(b"k", &p).unwrap().body, r);
    let rep = Reply {
        witness_incarnation: Incarnation(9),
        echo: (Incarnation(7), RequestNo(3)),
        member: true,
        vote: true,
        peer_outdated: false,
        peer_silent_ms: Some(1500),
        reason: "ok".into(),
    };
    let p = encode_reply(b"k", "r0", "alpha", &rep);
    assert_eq!(hex(&p), REPLY);
    assert_eq!(decode_reply(b"k", &p).unwrap().body, rep);
}

#[test]
fn replays_are_dropped() {
    let mut w = core();
    reply(handle(&mut w, 10, "alpha", &req(5, 0x10)).0);
    assert!(matches!(
        handle(&mut w, 11, "alpha", &req(5, 0x10)).0,
        Outcome::Dropped(_)
    ));
    assert!(matches!(
        handle(&mut w, 11, "alpha", &req(4, 0x10)).0,
        Outcome::Dropped(_)
    ));
    // An older incarnation while the current one talks: a replay.
    let mut old = req(99, 0x10);
    old.incarnation = Incarnation(6);
    old.started_ms = 50;
    assert!(matches!(
        handle(&mut w, 12, "alpha", &old).0,
        Outcome::Dropped(_)
    ));
    assert!(matches!(
        handle(&mut w, 12, "gamma", &req(1, 1)).0,
        Outcome::Dropped(_)
    ));
    assert_eq!(w.replays, 3);
}

#[test]
fn votes_only_when_the_peer_is_silent_and_marks_it_outdated() {
    let mut w = core();
    reply(handle(&mut w, 10, "alpha", &req(1, 0x10)).0);
    let mut b = req(1, 0x10);
    b.incarnation = Incarnation(8);
    b.want_vote = true;
    let r = reply(handle(&mut w, 500, "beta", &b).0);
    assert!(r.member && !r.vote, "{r:?}");
    assert!(r.reason.contains("still hears alpha"), "{}", r.reason);
    b.seq = RequestNo(2);
    let (o, changed) = handle(&mut w, 1010, "beta", &b);
    let r = reply(o);
    assert!(r.vote && changed, "{r:?}");
    b.seq = RequestNo(3);
    assert!(reply(handle(&mut w, 1020, "beta", &b).0).peer_outdated);
    // alpha comes back: remembered Outdated, not a member, no vote.
    let mut a = req(2, 0x10);
    a.want_vote = true;
    a.connected = false;
    let r = reply(handle(&mut w, 1100, "alpha", &a).0);
    assert!(!r.member && !r.vote, "{r:?}");
    assert!(r.reason.contains("Outdated"), "{}", r.reason);
    // Back in sync (UpToDate while connected): trusted again.
    let mut a = req(3, 0x20);
    a.connected = true;
    let r = reply(handle(&mut w, 1200, "alpha", &a).0);
    assert!(r.member, "{r:?}");
}

#[test]
fn a_node_with_older_generations_is_refused() {
    let mut w = core();
    // beta wrote on alone: its bitmap generation is alpha's current.
    let mut b = req(1, 0x30);
    b.incarnation = Incarnation(8);
    b.gens.bitmap = 0x10;
    reply(handle(&mut w, 10, "beta", &b).0);
    let mut a = req(1, 0x10);
    a.want_vote = true;
    a.connected = false;
    let r = reply(handle(&mut w, 5000, "alpha", &a).0);
    assert!(!r.member && !r.vote, "{r:?}");
    assert!(r.reason.contains("older"), "{}", r.reason);
}

#[test]
fn a_restarted_witness_waits_deadtime_before_voting_and_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.json");
    let mut w = core();
    let mut b = req(1, 0x10);
    b.want_vote = true;
    assert!(!reply(handle(&mut w, 500, "beta", &b).0).vote);
    b.seq = RequestNo(2);
    let (o, changed) = handle(&mut w, 1000, "beta", &b);
    assert!(reply(o).vote && changed);
    save_memory(&f, w.memory()).unwrap();
    let m = load_memory(&f).unwrap();
    assert!(m.nodes["alpha"].outdated.is_some());
    let mut w2 = WitnessCore::new(
        ["alpha".into(), "beta".into()],
        1000,
        m,
        Incarnation(2),
        Millis::ZERO,
    );
    let mut a = req(1, 0x10);
    a.incarnation = Incarnation(9);
    a.connected = false;
    let r = reply(handle(&mut w2, 10, "alpha", &a).0);
    assert!(!r.member, "{r:?}");
    std::fs::write(&f, "{ nonsense").unwrap();
    let e = load_memory(&f).unwrap_err().to_string();
    assert!(e.contains("damaged"), "{e}");
    assert_eq!(
        load_memory(&dir.path().join("none.json")).unwrap(),
        Memory::default()
    );
}
