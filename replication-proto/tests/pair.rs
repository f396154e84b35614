//! Two state machines wired back to back with instant, in-memory I/O: the
//! quinn-style `Pair` harness for scenarios the simulator does not aim at.

#![allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::panic
)]

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use replication_proto::gen::Generations;
use replication_proto::machine::{
    errno, Action, Admin, AdminError, AppId, ConnState, ErrorKind, Event, FenceOutcome, Fencing,
    Hook, Node, NodeConfig, Payload, Persisted, SplitBrainPolicy, Verb, VerifyRange,
};
use replication_proto::meta::MetaFlags;
use replication_proto::time::Millis;
use replication_proto::wire::{features, DiskState, Message, Protocol, Role};

const SIZE: u64 = 8 << 20;

struct Side {
    node: Node,
    disk: HashMap<u64, Bytes>,
    done: HashMap<u64, Result<Option<Bytes>, i32>>,
    connected: bool,
    want: bool,
    sent: Vec<Message>,
    /// Local writes touching these 4 KiB blocks fail with EIO (a bad disk).
    bad_blocks: std::ops::Range<u64>,
    /// The handlers the node asked for, in order.
    hooks: Vec<Hook>,
    /// Local reads touching these blocks fail with EIO until written.
    bad_reads: std::ops::Range<u64>,
    /// The node closed its disk (`Action::CloseDisk`): every local I/O fails.
    closed: bool,
    /// Metadata writes (superblock, activity log, bitmap) fail with EIO.
    meta_fails: bool,
}

struct Pair {
    s: [Side; 2],
    q: [VecDeque<Message>; 2],
    now: Millis,
    /// Frames from side i are dropped while true (a silent peer).
    mute: [bool; 2],
}

fn cfg(me: &str, peer: &str) -> NodeConfig {
    NodeConfig {
        resource: "r0".into(),
        node: me.into(),
        peer: peer.into(),
        protocol: Protocol::C,
        data_bytes: SIZE,
        secret: b"s3cret".to_vec(),
        timeout_ms: 100,
        ping_int_ms: 50,
        ko_count: 3,
        max_buffers: 64,
        resync_rate: 0,
        resync_control: replication_proto::machine::ResyncControl::default(),
        csums: false,
        al_extents: 7,
        split_brain: SplitBrainPolicy::default(),
        features: features::ALL,
        fencing: Fencing::DontCare,
        on_io_error_detach: false,
    }
}

fn fresh() -> Persisted {
    Persisted {
        gens: Generations::just_created(),
        flags: MetaFlags::default(),
        bitmap: vec![0; (SIZE / 4096 / 64) as usize],
        al_seq: 0,
        al_extents: vec![],
        promoted_at_ms: 0,
    }
}

impl Pair {
    fn new(a: NodeConfig, b: NodeConfig) -> Self {
        let mk = |c: NodeConfig, seed| Side {
            node: Node::new(c, fresh(), Millis::ZERO, seed),
            disk: HashMap::new(),
            done: HashMap::new(),
            connected: false,
            want: false,
            sent: Vec::new(),
            bad_blocks: 0..0,
            hooks: Vec::new(),
            bad_reads: 0..0,
            closed: false,
            meta_fails: false,
        };
        Self {
            s: [mk(a, 1), mk(b, 2)],
            q: [VecDeque::new(), VecDeque::new()],
            now: Millis::ZERO,
            mute: [false; 2],
        }
    }

    fn admin(&mut self, i: usize, cmd: Admin) -> Result<(), String> {
        let r = self.s[i]
            .node
            .admin(self.now, cmd)
            .map_err(|e| e.to_string());
        self.pump();
        r
    }

    fn read_local(&self, i: usize, offset: u64, len: u32) -> Bytes {
        let mut v = Vec::new();
        for b in 0..u64::from(len) / 4096 {
            match self.s[i].disk.get(&(offset / 4096 + b)) {
                Some(d) => v.extend_from_slice(d),
                None => v.extend_from_slice(&[0u8; 4096]),
            }
        }
        Bytes::from(v)
    }

    /// Run until nothing moves.
    fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..2 {
                while let Some(a) = self.s[i].node.poll_action() {
                    moved = true;
                    self.act(i, a);
                }
            }
            if !self.s[0].connected && self.s[0].want && self.s[1].want && !self.s[1].connected {
                self.s[0].connected = true;
                self.s[1].connected = true;
                self.s[0].node.handle(self.now, Event::TransportUp);
                self.s[1].node.handle(self.now, Event::TransportUp);
                moved = true;
            }
            for i in 0..2 {
                if let Some(m) = self.q[i].pop_front() {
                    moved = true;
                    if self.s[i].connected {
                        self.s[i].node.handle(self.now, Event::Frame(m));
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("pair did not settle");
    }

    fn act(&mut self, i: usize, a: Action) {
        let now = self.now;
        match a {
            Action::Connect => self.s[i].want = true,
            Action::CloseConnection => {
                self.s[i].want = false;
                if self.s[i].connected {
                    self.s[i].connected = false;
                    self.q[i].clear();
                    // Like TCP: what was sent arrives before the close.
                    while let Some(m) = self.q[1 - i].pop_front() {
                        if self.s[1 - i].connected {
                            self.s[1 - i].node.handle(now, Event::Frame(m));
                        }
                    }
                    if self.s[1 - i].connected {
                        self.s[1 - i].connected = false;
                        self.s[1 - i].node.handle(now, Event::TransportDown);
                    }
                }
            }
            Action::Send(m) => {
                self.s[i].sent.push(m.clone());
                if self.s[i].connected && !self.mute[i] {
                    self.q[1 - i].push_back(m);
                }
            }
            Action::LocalRead { token, offset, len } => {
                let blocks = offset / 4096..(offset + u64::from(len)) / 4096;
                let bad = &self.s[i].bad_reads;
                if self.s[i].closed || blocks.start < bad.end && bad.start < blocks.end {
                    self.s[i].node.handle(
                        now,
                        Event::LocalDone {
                            token,
                            result: Err(errno::EIO),
                        },
                    );
                    return;
                }
                let d = self.read_local(i, offset, len);
                self.s[i].node.handle(
                    now,
                    Event::LocalDone {
                        token,
                        result: Ok(Some(d)),
                    },
                );
            }
            Action::LocalWrite {
                token,
                offset,
                len,
                payload,
                ..
            } => {
                let blocks = offset / 4096..(offset + u64::from(len)) / 4096;
                let bad = &self.s[i].bad_blocks;
                if self.s[i].closed || blocks.start < bad.end && bad.start < blocks.end {
                    self.s[i].node.handle(
                        now,
                        Event::LocalDone {
                            token,
                            result: Err(errno::EIO),
                        },
                    );
                    return;
                }
                // A written sector reads again (remapped).
                self.s[i].bad_reads = 0..0;
                for b in 0..u64::from(len) / 4096 {
                    let blk = match &payload {
                        Payload::Data(d) => d.slice((b * 4096) as usize..((b + 1) * 4096) as usize),
                        _ => Bytes::from(vec![0u8; 4096]),
                    };
                    self.s[i].disk.insert(offset / 4096 + b, blk);
                }
                self.s[i].node.handle(
                    now,
                    Event::LocalDone {
                        token,
                        result: Ok(None),
                    },
                );
            }
            Action::LocalFlush { token } => self.s[i].node.handle(
                now,
                Event::LocalDone {
                    token,
                    result: Ok(None),
                },
            ),
            Action::WriteSuper { token, .. }
            | Action::WriteAl { token, .. }
            | Action::WriteBitmap { token, .. } => {
                let result = if self.s[i].meta_fails { Err(5) } else { Ok(()) };
                self.s[i]
                    .node
                    .handle(now, Event::MetaDone { token, result });
            }
            Action::Complete { id, result } => {
                self.s[i].done.insert(id.0, result);
            }
            Action::Hook(h) => self.s[i].hooks.push(h),
            // In-memory disks grow as asked; the new region out of sync
            // unless declared clean.
            Action::GrowDisk {
                data_bytes,
                assume_clean,
                ..
            } => {
                let old = self.s[i].node.status().data_bytes;
                let dirty_to = if assume_clean { old } else { data_bytes };
                let g = replication_proto::machine::Grown {
                    data_bytes,
                    dirty_from: old,
                    dirty_to,
                };
                self.s[i]
                    .node
                    .handle(self.now, Event::GrowDone { result: Ok(g) });
            }
            Action::SizeChanged { .. } => {}
            Action::CloseDisk => self.s[i].closed = true,
        }
    }

    fn write(
        &mut self,
        i: usize,
        id: u64,
        offset: u64,
        byte: u8,
        len: u32,
    ) -> Result<Option<Bytes>, i32> {
        let data = Bytes::from(vec![byte; len as usize]);
        self.s[i].node.handle(
            self.now,
            Event::AppWrite {
                id: AppId(id),
                offset,
                payload: Payload::Data(data),
                len,
                fua: false,
            },
        );
        self.pump();
        self.s[i].done.remove(&id).expect("write completed")
    }

    fn tick(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.now += 10;
            for i in 0..2 {
                self.s[i].node.handle(self.now, Event::Tick);
            }
            self.pump();
        }
    }

    fn up_and_synced(&mut self) {
        self.admin(
            0,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        )
        .unwrap();
        self.admin(
            1,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        )
        .unwrap();
        self.admin(0, Admin::Verb(Verb::Primary { force: true }))
            .unwrap();
        for i in 0..2 {
            assert_eq!(
                self.s[i].node.conn(),
                ConnState::Connected,
                "{:?}",
                self.s[i].node.status()
            );
            assert_eq!(self.s[i].node.disk(), DiskState::UpToDate);
        }
    }

    fn data_moved(&self) -> bool {
        self.s.iter().any(|s| {
            s.sent.iter().any(|m| {
                matches!(
                    m,
                    Message::Data { .. } | Message::ResyncData { .. } | Message::Bitmap { .. }
                )
            })
        })
    }
}

fn refused_both_ways(mut p: Pair, needle: &str) {
    p.admin(
        0,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert_eq!(st.connection, ConnState::StandAlone, "{st:?}");
        let err = st.last_error.unwrap_or_default();
        assert!(err.contains(needle), "side {i}: {err}");
    }
    assert!(
        !p.data_moved(),
        "no data may move before the handshake succeeds"
    );
}

#[test]
fn wrong_secret_is_refused_on_both_sides() {
    let mut b = cfg("beta", "alpha");
    b.secret = b"other".to_vec();
    refused_both_ways(Pair::new(cfg("alpha", "beta"), b), "secret");
}

#[test]
fn wrong_resource_is_refused_on_both_sides() {
    let mut b = cfg("beta", "alpha");
    b.resource = "r1".into();
    refused_both_ways(Pair::new(cfg("alpha", "beta"), b), "resource");
}

/// DRBD's rule: a peer of a different size connects with the smaller
/// size; the larger node says so in status.
#[test]
fn a_smaller_peer_connects_with_the_smaller_size() {
    let mut b = cfg("beta", "alpha");
    b.data_bytes = SIZE - (1 << 20);
    let mut p = Pair::new(cfg("alpha", "beta"), b);
    p.up_and_synced();
    for i in 0..2 {
        assert_eq!(p.s[i].node.status().data_bytes, SIZE - (1 << 20));
    }
    let note = p.s[0].node.status().size_note.unwrap_or_default();
    assert!(note.contains("smaller"), "{note}");
    // Beyond the agreed end, the larger node's Primary refuses I/O.
    let r = p.write(0, 1, SIZE - 4096, 7, 4096);
    assert!(r.is_err(), "{r:?}");
}

/// A Primary does not shrink under its users: a smaller peer is refused.
#[test]
fn a_primary_refuses_a_smaller_peer() {
    let mut b = cfg("beta", "alpha");
    b.data_bytes = SIZE - 4096;
    let mut p = Pair::new(cfg("alpha", "beta"), b);
    p.admin(0, Admin::Verb(Verb::Primary { force: true }))
        .unwrap();
    refused_both_ways(p, "size");
}

/// `repctl resize` between two in-memory nodes: the peer grows first,
/// then the asking node; both use the new size, the new region resyncs
/// from the Primary and its data replicates.
#[test]
fn resize_grows_both_and_resyncs_the_new_region() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    let grown = SIZE + (4 << 20);
    let shrink = Admin::Resize {
        room_bytes: grown,
        size_bytes: Some(SIZE - 4096),
        assume_clean: false,
    };
    assert!(p.admin(1, shrink).unwrap_err().contains("shrinking"));
    p.admin(
        1,
        Admin::Resize {
            room_bytes: grown,
            size_bytes: None,
            assume_clean: false,
        },
    )
    .unwrap();
    p.pump();
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert_eq!(st.data_bytes, grown, "side {i}: {st:?}");
        assert_eq!(st.out_of_sync_bytes, 0, "side {i}: {st:?}");
        assert_eq!(st.connection, ConnState::Connected, "side {i}: {st:?}");
    }
    assert!(p.s[0]
        .sent
        .iter()
        .any(|m| matches!(m, Message::ResyncData { .. })));
    // The new region takes writes and replicates them.
    p.write(0, 77, SIZE + 4096, 9, 4096).unwrap();
    assert_eq!(
        p.read_local(1, SIZE + 4096, 4096),
        p.read_local(0, SIZE + 4096, 4096)
    );
    let again = Admin::Resize {
        room_bytes: grown,
        size_bytes: None,
        assume_clean: false,
    };
    assert!(p.admin(0, again).unwrap_err().contains("nothing to grow"));
}

#[test]
fn wrong_peer_name_is_refused() {
    let b = cfg("gamma", "alpha");
    refused_both_ways(Pair::new(cfg("alpha", "beta"), b), "peer");
}

#[test]
fn initial_sync_then_replication_keeps_both_identical() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    assert_eq!(p.write(0, 1, 4096 * 10, 0xaa, 8192), Ok(None));
    assert_eq!(p.read_local(0, 0, 1 << 20), p.read_local(1, 0, 1 << 20));
    assert_eq!(p.read_local(1, 4096 * 10, 4096)[0], 0xaa);
}

#[test]
fn secondary_refuses_io() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    assert_eq!(p.write(1, 7, 0, 1, 4096), Err(errno::EROFS));
    p.s[1].node.handle(
        Millis::ZERO,
        Event::AppRead {
            id: AppId(8),
            offset: 0,
            len: 4096,
        },
    );
    p.pump();
    assert_eq!(p.s[1].done.remove(&8), Some(Err(errno::EROFS)));
}

#[test]
fn only_one_primary() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    let e = p
        .admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap_err();
    assert!(e.contains("only one Primary"), "{e}");
    let e = p
        .admin(1, Admin::Verb(Verb::Primary { force: true }))
        .unwrap_err();
    assert!(e.contains("only one Primary"), "{e}");
}

#[test]
fn verify_finds_and_repair_fixes_divergence() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    p.write(0, 1, 0, 0x11, 65536).unwrap();
    // Corrupt beta behind the replication's back.
    p.s[1].disk.insert(3, Bytes::from(vec![0xee; 4096]));
    p.admin(0, Admin::Verb(Verb::Verify { repair: false }))
        .unwrap();
    // The 128 KiB chunk differed; compared again block by block, only the
    // damaged 4 KiB block is flagged, on both sides, and counted once.
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert_eq!(
            st.stats.traffic.verify_out_of_sync_bytes, 4096,
            "only the 4 KiB block flagged: {st:?}"
        );
        assert_eq!(st.out_of_sync_bytes, 4096, "{st:?}");
        assert_eq!(st.stats.traffic.verified_bytes, SIZE, "{st:?}");
    }
    assert_ne!(p.read_local(0, 0, 65536), p.read_local(1, 0, 65536));
    p.admin(0, Admin::Verb(Verb::Verify { repair: true }))
        .unwrap();
    assert_eq!(p.read_local(0, 0, 1 << 20), p.read_local(1, 0, 1 << 20));
    assert_eq!(p.s[0].node.status().out_of_sync_bytes, 0);
    p.admin(1, Admin::Verb(Verb::Verify { repair: false }))
        .unwrap();
    assert_eq!(
        p.s[1].node.status().stats.traffic.verify_out_of_sync_bytes,
        0
    );
}

#[test]
fn invalidate_resyncs_everything_from_the_peer() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    p.write(0, 1, 0, 0x22, 4096).unwrap();
    let before = p.s[0].node.status().stats.traffic.resync_sent_bytes;
    p.s[1].disk.insert(100, Bytes::from(vec![0xee; 4096]));
    p.admin(1, Admin::Verb(Verb::Invalidate)).unwrap();
    let sent = p.s[0].node.status().stats.traffic.resync_sent_bytes - before;
    assert_eq!(sent, SIZE, "a full resync");
    assert_eq!(p.read_local(0, 0, 1 << 20), p.read_local(1, 0, 1 << 20));
    assert_eq!(p.s[1].node.disk(), DiskState::UpToDate);
    // invalidate-remote the other way round.
    p.admin(0, Admin::Verb(Verb::InvalidateRemote)).unwrap();
    assert_eq!(
        p.s[0].node.status().stats.traffic.resync_sent_bytes - before,
        2 * SIZE
    );
}

#[test]
fn a_silent_peer_is_dropped_and_its_writes_marked() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    p.mute[1] = true;
    let data = Bytes::from(vec![5u8; 4096]);
    p.s[0].node.handle(
        p.now,
        Event::AppWrite {
            id: AppId(9),
            offset: 0,
            payload: Payload::Data(data),
            len: 4096,
            fua: false,
        },
    );
    p.pump();
    assert!(
        !p.s[0].done.contains_key(&9),
        "protocol C waits for the peer"
    );
    p.tick(400);
    let st = p.s[0].node.status();
    assert_eq!(
        p.s[0].done.remove(&9),
        Some(Ok(None)),
        "completed once the peer was dropped"
    );
    assert_ne!(st.connection, ConnState::Connected);
    assert_eq!(st.out_of_sync_bytes, 4096, "{st:?}");
    let err = st.last_error.unwrap_or_default();
    assert!(
        err.contains("did not") || err.contains("timed out"),
        "{err}"
    );
    assert_eq!(p.s[0].node.role(), Role::Primary);
}

#[test]
fn split_brain_is_detected_and_discard_my_data_recovers() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    // beta was the initial sync's target: after-resync-target ran there.
    assert!(p.s[0].hooks.is_empty());
    assert_eq!(p.s[1].hooks, vec![Hook::AfterResyncTarget]);
    p.s[1].hooks.clear();
    p.admin(0, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    p.write(0, 1, 0, 0xa1, 4096).unwrap();
    p.write(1, 2, 8192, 0xb2, 4096).unwrap();
    p.admin(
        0,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert!(st.split_brain, "{st:?}");
        assert_eq!(st.connection, ConnState::StandAlone);
        assert!(st
            .last_error
            .unwrap_or_default()
            .contains("discard-my-data"));
    }
    assert_eq!(p.read_local(1, 8192, 4096)[0], 0xb2, "nothing merged");
    for i in 0..2 {
        // initial-split-brain first, then split-brain: no policy resolved it.
        let h = &p.s[i].hooks;
        assert!(
            matches!(
                h.as_slice(),
                [Hook::InitialSplitBrain, Hook::SplitBrain { .. }]
            ),
            "{h:?}"
        );
    }
    p.admin(1, Admin::Verb(Verb::Secondary)).unwrap();
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: true,
        }),
    )
    .unwrap();
    p.admin(
        0,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    assert_eq!(
        p.s[1].node.conn(),
        ConnState::Connected,
        "{:?}",
        p.s[1].node.status()
    );
    assert_eq!(p.read_local(0, 0, 1 << 20), p.read_local(1, 0, 1 << 20));
    assert_eq!(
        p.read_local(1, 8192, 4096)[0],
        0,
        "beta's change rolled back"
    );
    assert_eq!(p.read_local(1, 0, 4096)[0], 0xa1, "alpha's change kept");
}

fn submit_write(p: &mut Pair, i: usize, id: u64, byte: u8) {
    let data = Bytes::from(vec![byte; 4096]);
    p.s[i].node.handle(
        p.now,
        Event::AppWrite {
            id: AppId(id),
            offset: 0,
            payload: Payload::Data(data),
            len: 4096,
            fua: false,
        },
    );
    p.pump();
}

#[test]
fn suspended_io_holds_writes_and_their_acks_until_resumed() {
    use replication_proto::machine::SuspendMode;
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    // A write in flight (the peer is silent) when the suspension begins.
    p.mute[1] = true;
    submit_write(&mut p, 0, 1, 1);
    assert!(!p.s[0].done.contains_key(&1));
    p.admin(
        0,
        Admin::SuspendIo {
            mode: SuspendMode::Hold,
        },
    )
    .unwrap();
    assert_eq!(p.s[0].node.status().suspended, Some(SuspendMode::Hold));
    // A new write and a flush are held; the in-flight write finishes
    // (the peer is dropped) but its acknowledgement is held too.
    submit_write(&mut p, 0, 2, 2);
    p.s[0].node.handle(p.now, Event::AppFlush { id: AppId(3) });
    p.pump();
    p.tick(400);
    assert_ne!(p.s[0].node.conn(), ConnState::Connected);
    for id in 1..=3 {
        assert!(
            !p.s[0].done.contains_key(&id),
            "request {id} acked while suspended"
        );
    }
    assert_ne!(
        p.read_local(0, 0, 4096)[0],
        2,
        "a held write reached the disk"
    );
    // Reads go on.
    p.s[0].node.handle(
        p.now,
        Event::AppRead {
            id: AppId(4),
            offset: 0,
            len: 4096,
        },
    );
    p.pump();
    assert_eq!(p.s[0].done.remove(&4).unwrap().unwrap().unwrap()[0], 1);
    p.admin(0, Admin::ResumeIo).unwrap();
    assert_eq!(p.s[0].node.status().suspended, None);
    for id in 1..=3 {
        assert_eq!(p.s[0].done.remove(&id), Some(Ok(None)), "request {id}");
    }
    assert_eq!(p.read_local(0, 0, 4096)[0], 2);
}

#[test]
fn io_error_mode_fails_held_and_new_writes_and_demotion_fails_held_ones() {
    use replication_proto::machine::SuspendMode;
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    p.admin(
        0,
        Admin::SuspendIo {
            mode: SuspendMode::Hold,
        },
    )
    .unwrap();
    submit_write(&mut p, 0, 1, 1);
    assert!(!p.s[0].done.contains_key(&1));
    p.admin(
        0,
        Admin::SuspendIo {
            mode: SuspendMode::Fail,
        },
    )
    .unwrap();
    assert_eq!(p.s[0].done.remove(&1), Some(Err(errno::EIO)));
    assert_eq!(p.write(0, 2, 0, 2, 4096), Err(errno::EIO));
    // Hold again, then demote: what is held fails, the suspension ends.
    p.admin(
        0,
        Admin::SuspendIo {
            mode: SuspendMode::Hold,
        },
    )
    .unwrap();
    submit_write(&mut p, 0, 3, 3);
    p.admin(0, Admin::Verb(Verb::Secondary)).unwrap();
    assert_eq!(p.s[0].done.remove(&3), Some(Err(errno::EIO)));
    assert_eq!(p.s[0].node.status().suspended, None);
    assert_eq!(p.read_local(0, 0, 4096)[0], 0);
    assert_eq!(p.read_local(1, 0, 4096)[0], 0);
}

#[test]
fn an_outdated_node_refuses_primary_without_force() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    let e = p.admin(1, Admin::Verb(Verb::Outdate)).unwrap_err();
    assert!(e.contains("connected"), "{e}");
    let e = p.admin(0, Admin::Verb(Verb::Outdate)).unwrap_err();
    assert!(e.contains("Primary"), "{e}");
    p.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(1, Admin::Verb(Verb::Outdate)).unwrap();
    assert_eq!(p.s[1].node.disk(), DiskState::Outdated);
    assert!(!p.s[1].node.flags().has(MetaFlags::WAS_UP_TO_DATE));
    let e = p
        .admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap_err();
    assert!(e.contains("Outdated"), "{e}");
    // Reconnected, it resyncs from the Primary and is UpToDate again.
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.tick(200);
    assert_eq!(
        p.s[1].node.disk(),
        DiskState::UpToDate,
        "{:?}",
        p.s[1].node.status()
    );
}

#[test]
fn an_armed_primary_freezes_when_the_peer_is_lost() {
    use replication_proto::machine::SuspendMode;
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    p.admin(0, Admin::Verb(Verb::FreezeOnDisconnect { on: true }))
        .unwrap();
    assert!(p.s[0].node.status().freeze_on_disconnect);
    let before = p.s[0].node.gens();
    p.mute[1] = true;
    submit_write(&mut p, 0, 1, 1);
    p.tick(400);
    assert_ne!(p.s[0].node.conn(), ConnState::Connected);
    let st = p.s[0].node.status();
    assert_eq!(st.suspended, Some(SuspendMode::Hold));
    // The new generation is there before anything is acknowledged alone.
    assert_ne!(st.gens.current, before.current);
    assert_eq!(st.gens.bitmap, before.current);
    assert!(!p.s[0].done.contains_key(&1), "acked while frozen");
    submit_write(&mut p, 0, 2, 2);
    assert!(!p.s[0].done.contains_key(&2));
    // A resume decided before the freeze (for the old generation) is refused.
    let e = p
        .admin(
            0,
            Admin::ResumeIoAt {
                current: before.current,
            },
        )
        .unwrap_err();
    assert!(e.contains("froze again"), "{e}");
    assert!(!p.s[0].done.contains_key(&1));
    p.admin(
        0,
        Admin::ResumeIoAt {
            current: st.gens.current,
        },
    )
    .unwrap();
    assert_eq!(p.s[0].done.remove(&1), Some(Ok(None)));
    assert_eq!(p.s[0].done.remove(&2), Some(Ok(None)));
    // Promoted without the peer: frozen from the start.
    let mut q = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    q.up_and_synced();
    q.admin(1, Admin::Verb(Verb::FreezeOnDisconnect { on: true }))
        .unwrap();
    q.admin(0, Admin::Verb(Verb::Secondary)).unwrap();
    q.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    q.admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    assert_eq!(q.s[1].node.status().suspended, Some(SuspendMode::Hold));
    // Disarmed (the default), a lost peer does not freeze.
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    p.mute[1] = true;
    submit_write(&mut p, 0, 1, 1);
    p.tick(400);
    assert_eq!(p.s[0].node.status().suspended, None);
    assert_eq!(p.s[0].done.remove(&1), Some(Ok(None)));
}

#[test]
fn a_primary_that_crashed_while_resyncing_its_peer_finishes_that_resync_as_source() {
    let gens = Generations {
        current: 0x1234,
        bitmap: 0,
        history: [0, 0],
    };
    // Alpha: the crashed Primary, Consistent, extent 0 in its activity log.
    let mut a = fresh();
    a.gens = gens;
    a.flags = MetaFlags(MetaFlags::CONSISTENT | MetaFlags::CRASHED_PRIMARY);
    a.al_seq = 1;
    a.al_extents = vec![0];
    // Beta: the target of the interrupted resync, Inconsistent, the rest
    // of that resync (blocks 0-7) in its bitmap.
    let mut b = fresh();
    b.gens = gens;
    b.bitmap[0] = 0xff;
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.s[0].node = Node::new(cfg("alpha", "beta"), a, Millis::ZERO, 1);
    p.s[1].node = Node::new(cfg("beta", "alpha"), b, Millis::ZERO, 2);
    assert_eq!(p.s[0].node.disk(), DiskState::Consistent);
    assert_eq!(p.s[1].node.disk(), DiskState::Inconsistent);
    for blk in [3u64, 500] {
        p.s[0].disk.insert(blk, Bytes::from(vec![0xab; 4096]));
    }
    p.s[1].disk.insert(3, Bytes::from(vec![0x11; 4096]));
    for i in 0..2 {
        p.admin(
            i,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        )
        .unwrap();
    }
    p.tick(500);
    for i in 0..2 {
        assert_eq!(
            (p.s[i].node.conn(), p.s[i].node.disk()),
            (ConnState::Connected, DiskState::UpToDate),
            "{:?}",
            p.s[i].node.status()
        );
    }
    // The crashed Primary's activity-log extent and beta's bits came from
    // alpha, the only consistent copy.
    assert_eq!(p.read_local(0, 0, 4 << 20), p.read_local(1, 0, 4 << 20));
    assert!(!p.s[0].node.flags().has(MetaFlags::CRASHED_PRIMARY));
}

#[test]
fn a_failed_local_write_is_passed_on_and_its_range_resynced_later() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    p.s[0].bad_blocks = 16..17;
    // on-io-error pass-on: the application sees the disk's error...
    assert_eq!(p.write(0, 1, 15 * 4096, 0x33, 3 * 4096), Err(errno::EIO));
    let st = p.s[0].node.status();
    // ...the peer wrote it, this disk did not: the range is marked.
    assert_eq!(st.out_of_sync_bytes, 3 * 4096, "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("marked out of sync")),
        "{st:?}"
    );
    assert_ne!(
        p.read_local(0, 15 * 4096, 3 * 4096),
        p.read_local(1, 15 * 4096, 3 * 4096)
    );
    // The local-io-error hook once per episode: not again for the next
    // failure, again after a local write succeeded in between.
    assert_eq!(p.write(0, 5, 16 * 4096, 0x33, 4096), Err(errno::EIO));
    assert_eq!(p.s[0].hooks, vec![Hook::LocalIoError]);
    // Writes elsewhere go on.
    assert_eq!(p.write(0, 2, 0, 0x44, 4096), Ok(None));
    assert_eq!(p.write(0, 6, 16 * 4096, 0x33, 4096), Err(errno::EIO));
    assert_eq!(p.s[0].hooks, vec![Hook::LocalIoError, Hook::LocalIoError]);
    // The disk is replaced (or the error was transient); the next
    // connection resyncs the range and both copies are equal again.
    p.s[0].bad_blocks = 0..0;
    p.admin(0, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(
        0,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    assert_eq!(p.s[0].node.conn(), ConnState::Connected);
    assert_eq!(p.s[0].node.status().out_of_sync_bytes, 0);
    assert_eq!(p.read_local(0, 0, 1 << 20), p.read_local(1, 0, 1 << 20));
}

impl Pair {
    /// Power loss of side `i`: it restarts from what it had persisted (the
    /// harness completes metadata writes at once, so that is its state),
    /// with `al` as its activity log. The peer sees the connection drop.
    fn crash(&mut self, i: usize, al: Vec<u32>) {
        let n = &self.s[i].node;
        let p = Persisted {
            gens: n.gens(),
            flags: n.flags(),
            bitmap: n.bitmap_words().to_vec(),
            al_seq: 1,
            al_extents: al,
            promoted_at_ms: 0,
        };
        let cfg = n.config().clone();
        self.s[i].node = Node::new(cfg, p, self.now, 10 + i as u64);
        self.s[i].connected = false;
        self.s[i].want = false;
        self.q = [VecDeque::new(), VecDeque::new()];
        if self.s[1 - i].connected {
            self.s[1 - i].connected = false;
            self.s[1 - i].node.handle(self.now, Event::TransportDown);
        }
        self.pump();
    }

    fn connect_both(&mut self) {
        for i in 0..2 {
            if self.s[i].node.conn() == ConnState::StandAlone {
                self.admin(
                    i,
                    Admin::Verb(Verb::Connect {
                        discard_my_data: false,
                    }),
                )
                .unwrap();
            }
        }
    }

    fn assert_in_sync(&self) {
        for i in 0..2 {
            let st = self.s[i].node.status();
            assert_eq!(
                (st.connection, st.disk, st.peer_disk, st.split_brain),
                (
                    ConnState::Connected,
                    DiskState::UpToDate,
                    DiskState::UpToDate,
                    false
                ),
                "{st:?}"
            );
            assert_eq!(st.out_of_sync_bytes, 0, "{st:?}");
        }
        assert_eq!(
            self.read_local(0, 0, SIZE as u32),
            self.read_local(1, 0, SIZE as u32)
        );
    }
}

#[test]
fn the_new_primary_crashing_while_it_resyncs_the_old_one_is_still_the_source() {
    // issue 16 item 3: alpha Primary crashes, beta is promoted and writes,
    // alpha comes back and resyncs from beta (slowly), beta crashes mid-way.
    let slow = |me: &str, peer: &str| NodeConfig {
        resync_rate: 1 << 20,
        ..cfg(me, peer)
    };
    let mut p = Pair::new(slow("alpha", "beta"), slow("beta", "alpha"));
    p.connect_both();
    p.admin(0, Admin::Verb(Verb::Primary { force: true }))
        .unwrap();
    p.tick(10_000);
    p.assert_in_sync();
    assert_eq!(p.write(0, 1, 0, 0xa1, 4096), Ok(None));
    p.crash(0, vec![0]);
    assert_eq!(p.s[0].node.disk(), DiskState::Consistent);
    p.admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    // Both extents: beta's own write, and alpha's activity-log extent.
    assert_eq!(p.write(1, 2, 4 << 20, 0xb2, 8192), Ok(None));
    assert_eq!(p.write(1, 3, 0, 0xb3, 4096), Ok(None));
    p.connect_both();
    p.tick(20);
    assert_eq!(p.s[0].node.conn(), ConnState::SyncTarget);
    assert_eq!(p.s[1].node.conn(), ConnState::SyncSource);
    assert!(p.s[0].node.status().sync_remaining_bytes > 0);
    p.crash(1, vec![1]);
    assert_eq!(p.s[0].node.disk(), DiskState::Inconsistent);
    assert_eq!(p.s[1].node.disk(), DiskState::Consistent);
    p.connect_both();
    p.tick(10_000);
    // beta, the only consistent copy, was the source: everything converged
    // without an operator, and beta's writes are on alpha.
    p.assert_in_sync();
    assert_eq!(p.read_local(0, 0, 4096)[0], 0xb3);
    assert_eq!(p.read_local(0, 4 << 20, 4096)[0], 0xb2);
}

#[test]
fn a_frozen_primary_that_crashed_rejoins_as_target_without_a_split_brain() {
    // issue 16 item 4: both armed; beta stops answering; alpha freezes with
    // a write in flight (written locally, never acknowledged); alpha
    // crashes; beta is promoted (and resumed, as the agent would); alpha
    // comes back.
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    for i in 0..2 {
        p.admin(i, Admin::Verb(Verb::FreezeOnDisconnect { on: true }))
            .unwrap();
    }
    p.mute = [true, true];
    submit_write(&mut p, 0, 1, 0x66);
    p.tick(400);
    assert_ne!(p.s[0].node.conn(), ConnState::Connected);
    assert!(p.s[0].node.status().suspended.is_some());
    assert!(!p.s[0].done.contains_key(&1), "acknowledged while frozen");
    assert_eq!(p.read_local(0, 0, 4096)[0], 0x66, "the write was in flight");
    p.crash(0, vec![0]);
    p.mute = [false, false];
    p.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    p.admin(1, Admin::ResumeIo).unwrap();
    assert_eq!(p.write(1, 2, 4 << 20, 0xb2, 4096), Ok(None));
    p.connect_both();
    p.tick(2000);
    // No split brain: alpha took beta's data, the unacknowledged write is
    // gone, beta's write is there.
    p.assert_in_sync();
    assert_eq!(p.read_local(0, 0, 4096)[0], 0);
    assert_eq!(p.read_local(0, 4 << 20, 4096)[0], 0xb2);
}

#[test]
fn a_resumed_frozen_primary_acknowledges_only_after_the_resume_is_durable() {
    let persisted = Persisted {
        gens: Generations {
            current: 0x1234,
            bitmap: 0,
            history: [0, 0],
        },
        flags: MetaFlags(MetaFlags::CONSISTENT | MetaFlags::WAS_UP_TO_DATE),
        ..fresh()
    };
    let mut n = Node::new(cfg("alpha", "beta"), persisted, Millis::ZERO, 1);
    // Every action so far, with metadata writes answered at once.
    let run = |n: &mut Node, answer_meta: bool| -> Vec<Action> {
        let mut seen = Vec::new();
        while let Some(a) = n.poll_action() {
            match &a {
                Action::WriteSuper { token, .. }
                | Action::WriteAl { token, .. }
                | Action::WriteBitmap { token, .. }
                    if answer_meta =>
                {
                    n.handle(
                        Millis::ZERO,
                        Event::MetaDone {
                            token: *token,
                            result: Ok(()),
                        },
                    );
                }
                Action::LocalWrite { token, .. } => n.handle(
                    Millis::ZERO,
                    Event::LocalDone {
                        token: *token,
                        result: Ok(None),
                    },
                ),
                _ => {}
            }
            seen.push(a);
        }
        seen
    };
    n.admin(
        Millis::ZERO,
        Admin::Verb(Verb::FreezeOnDisconnect { on: true }),
    )
    .unwrap();
    n.admin(Millis::ZERO, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    run(&mut n, true);
    // Promoted alone, armed: frozen, in a new generation marked as holding
    // no acknowledged write.
    assert!(n.status().suspended.is_some());
    assert_ne!(n.gens().current, 0x1234);
    assert!(n.flags().has(MetaFlags::UNACKED_GEN));
    n.handle(
        Millis::ZERO,
        Event::AppWrite {
            id: AppId(7),
            offset: 0,
            payload: Payload::Data(Bytes::from(vec![1u8; 4096])),
            len: 4096,
            fua: false,
        },
    );
    assert!(
        run(&mut n, true).is_empty(),
        "a held write reached the disk"
    );
    n.admin(Millis::ZERO, Admin::ResumeIo).unwrap();
    let acts = run(&mut n, false);
    let supers: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::WriteSuper { token, flags, .. } => Some((*token, *flags)),
            _ => None,
        })
        .collect();
    assert_eq!(supers.len(), 1, "{acts:?}");
    assert!(!supers[0].1.has(MetaFlags::UNACKED_GEN));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::LocalWrite { .. } | Action::Complete { .. })),
        "held I/O went on before the resume was durable: {acts:?}"
    );
    assert!(n.status().suspended.is_some());
    n.handle(
        Millis::ZERO,
        Event::MetaDone {
            token: supers[0].0,
            result: Ok(()),
        },
    );
    let acts = run(&mut n, true);
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::Complete {
                id: AppId(7),
                result: Ok(None)
            }
        )),
        "{acts:?}"
    );
    assert_eq!(n.status().suspended, None);
}

/// Alpha's last run crashed while Primary in generation 0x1234 (PRIMARY_IND
/// in its superblock, extent 0 in its activity log); beta is the Secondary
/// that saw it go, or, with `beta_promoted`, was promoted since.
fn crashed_primary_pair(beta_promoted: bool) -> Pair {
    let gens = Generations {
        current: 0x1234,
        bitmap: 0,
        history: [0, 0],
    };
    let mut a = fresh();
    a.gens = gens;
    a.flags = MetaFlags(MetaFlags::CONSISTENT | MetaFlags::WAS_UP_TO_DATE | MetaFlags::PRIMARY_IND);
    a.al_seq = 1;
    a.al_extents = vec![0];
    let mut b = fresh();
    b.gens = gens;
    b.flags = MetaFlags(MetaFlags::CONSISTENT | MetaFlags::WAS_UP_TO_DATE);
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.s[0].node = Node::new(cfg("alpha", "beta"), a, Millis::ZERO, 1);
    p.s[1].node = Node::new(cfg("beta", "alpha"), b, Millis::ZERO, 2);
    // What alpha wrote before it died, and beta too (protocol C).
    for i in 0..2 {
        p.s[i].disk.insert(3, Bytes::from(vec![0xab; 4096]));
    }
    if beta_promoted {
        p.admin(1, Admin::Verb(Verb::Primary { force: false }))
            .unwrap();
        assert_eq!(p.write(1, 1, 3 * 4096, 0xcd, 4096), Ok(None));
    }
    p
}

fn connect_both(p: &mut Pair) {
    for i in 0..2 {
        p.admin(
            i,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        )
        .unwrap();
    }
    p.tick(500);
}

#[test]
fn an_armed_crashed_primary_resumes_once_its_activity_log_is_resynced() {
    let mut p = crashed_primary_pair(false);
    p.admin(0, Admin::Verb(Verb::ResumeAfterCrash)).unwrap();
    assert_eq!(p.s[0].node.role(), Role::Secondary, "not before the resync");
    connect_both(&mut p);
    let st = p.s[0].node.status();
    assert_eq!(st.role, Role::Primary, "{st:?}");
    assert_eq!(st.disk, DiskState::UpToDate);
    assert_eq!(st.gens.current, 0x1234, "the same generation goes on");
    assert_eq!(p.s[1].node.role(), Role::Secondary);
    // It writes, replicated, as before the crash.
    assert_eq!(p.write(0, 7, 3 * 4096, 0x5a, 4096), Ok(None));
    assert_eq!(
        p.read_local(1, 3 * 4096, 4096),
        p.read_local(0, 3 * 4096, 4096)
    );
}

#[test]
fn a_crashed_primary_that_is_not_armed_stays_secondary() {
    let mut p = crashed_primary_pair(false);
    connect_both(&mut p);
    assert_eq!(p.s[0].node.role(), Role::Secondary);
    assert_eq!(p.s[0].node.disk(), DiskState::UpToDate);
    assert_eq!(p.s[0].node.status().resume, None);
}

#[test]
fn a_crashed_primary_does_not_resume_when_the_peer_was_promoted_meanwhile() {
    let mut p = crashed_primary_pair(true);
    p.admin(0, Admin::Verb(Verb::ResumeAfterCrash)).unwrap();
    connect_both(&mut p);
    let st = p.s[0].node.status();
    assert_eq!(st.role, Role::Secondary, "{st:?}");
    assert!(
        st.resume
            .as_deref()
            .unwrap_or_default()
            .contains("not resumed"),
        "{st:?}"
    );
    assert_eq!(p.s[1].node.role(), Role::Primary);
    // Beta's write reached alpha, which resynced from it.
    assert_eq!(
        p.read_local(0, 3 * 4096, 4096),
        p.read_local(1, 3 * 4096, 4096)
    );
    // Beta demotes: alpha still does not take the role by itself.
    p.admin(1, Admin::Verb(Verb::Secondary)).unwrap();
    p.tick(200);
    assert_eq!(p.s[0].node.role(), Role::Secondary);
}

#[test]
fn a_crashed_primary_does_not_resume_when_the_peer_wrote_and_was_demoted_meanwhile() {
    let mut p = crashed_primary_pair(true);
    p.admin(1, Admin::Verb(Verb::Secondary)).unwrap();
    p.admin(0, Admin::Verb(Verb::ResumeAfterCrash)).unwrap();
    connect_both(&mut p);
    let st = p.s[0].node.status();
    assert_eq!(st.role, Role::Secondary, "{st:?}");
    assert!(
        st.resume.as_deref().unwrap_or_default().contains("moved"),
        "{st:?}"
    );
    assert_eq!(
        p.read_local(0, 3 * 4096, 4096),
        p.read_local(1, 3 * 4096, 4096)
    );
}

#[test]
fn a_crashed_primary_waits_for_an_unreachable_peer_then_resumes() {
    let mut p = crashed_primary_pair(false);
    p.admin(0, Admin::Verb(Verb::ResumeAfterCrash)).unwrap();
    p.admin(
        0,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.tick(2000);
    let st = p.s[0].node.status();
    assert_eq!(st.role, Role::Secondary, "{st:?}");
    assert!(
        st.resume
            .as_deref()
            .unwrap_or_default()
            .contains("waiting for the peer"),
        "{st:?}"
    );
    // The peer comes back, still Secondary: now it resumes.
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.tick(500);
    assert_eq!(
        p.s[0].node.role(),
        Role::Primary,
        "{:?}",
        p.s[0].node.status()
    );
}

#[test]
fn resuming_is_refused_when_the_last_run_was_not_primary() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    let e = p.admin(0, Admin::Verb(Verb::ResumeAfterCrash)).unwrap_err();
    assert!(e.contains("did not end as Primary"), "{e}");
}

#[test]
fn an_operator_resumes_a_waiting_crashed_primary_with_force_and_the_generation_continues() {
    let mut p = crashed_primary_pair(false);
    p.admin(0, Admin::Verb(Verb::ResumeAfterCrash)).unwrap();
    p.admin(
        0,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.tick(500);
    assert_eq!(p.s[0].node.role(), Role::Secondary);
    assert_eq!(p.s[0].node.disk(), DiskState::Consistent);
    // The peer is known to be down for good: the operator forces it.
    p.admin(0, Admin::Verb(Verb::Primary { force: true }))
        .unwrap();
    let st = p.s[0].node.status();
    assert_eq!(st.role, Role::Primary, "{st:?}");
    // Not a new full-sync generation: the data the held I/O was meant for
    // goes on (the old current moved to the bitmap UUID, as for any
    // Primary without its peer), and only its activity log is out of sync.
    assert!(
        st.gens.current == 0x1234 || st.gens.bitmap == 0x1234,
        "{:x?}",
        st.gens
    );
    assert_eq!(st.out_of_sync_bytes, 4 << 20, "{st:?}");
    assert!(
        st.resume
            .as_deref()
            .unwrap_or_default()
            .contains("promoted by an admin"),
        "{st:?}"
    );
}

/// Issue 16 item 5: writes the peer confirmed but had not flushed when the
/// Primary went down are marked out of sync; the generations stay equal
/// (the node was demoted first), so the next handshake must resync those
/// bits, not leave them set on a Connected UpToDate pair.
#[test]
fn unflushed_writes_marked_at_down_are_resynced_on_the_next_connection() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    for k in 0..5u64 {
        assert_eq!(p.write(0, 100 + k, k << 20, 0x30 + k as u8, 4096), Ok(None));
    }
    p.admin(0, Admin::Verb(Verb::Secondary)).unwrap();
    p.admin(0, Admin::Down).unwrap();
    let bits = p.s[0].node.status().out_of_sync_bytes;
    println!("marked at down: {bits} bytes");
    // Restart alpha from what it persisted.
    let persisted = Persisted {
        gens: p.s[0].node.gens(),
        flags: p.s[0].node.flags(),
        bitmap: p.s[0].node.bitmap_words().to_vec(),
        al_seq: 0,
        al_extents: vec![],
        promoted_at_ms: 0,
    };
    p.s[0].node = Node::new(cfg("alpha", "beta"), persisted, p.now, 9);
    p.admin(
        0,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.tick(200);
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert_eq!(p.s[i].node.conn(), ConnState::Connected, "{st:?}");
        assert_eq!(p.s[i].node.disk(), DiskState::UpToDate, "{st:?}");
        assert_eq!(st.out_of_sync_bytes, 0, "node {i}: {st:?}");
    }
    for k in 0..5u64 {
        assert_eq!(
            p.read_local(1, k << 20, 4096),
            p.read_local(0, k << 20, 4096)
        );
    }
}

/// Every frame a node sent encodes: in particular each Disconnect, whose
/// reason text may hold names and details of any length.
fn all_sent_frames_encode(p: &Pair) -> usize {
    let mut disconnects = 0;
    for (i, side) in p.s.iter().enumerate() {
        for m in &side.sent {
            let mut out = bytes::BytesMut::new();
            if let Err(e) = replication_proto::wire::encode(m, &mut out) {
                panic!("side {i} sent a frame that cannot be encoded: {e}: {m:?}");
            }
            if let Message::Disconnect { message, .. } = m {
                disconnects += 1;
                assert!(!message.is_empty());
            }
        }
    }
    disconnects
}

fn long_name(c: char, bytes: usize) -> String {
    std::iter::repeat_n(c, bytes / c.len_utf8()).collect()
}

/// Issue 16 item 6: the longest Disconnect reason each refusal can produce,
/// with names as long as the Hello carries them (multi-byte characters, so
/// a cut in the wrong place would split one), still reaches the peer.
#[test]
fn every_disconnect_reason_fits_the_wire() {
    let (a, b) = (long_name('ä', 240), long_name('ö', 240));
    let mk = |me: &str, peer: &str| {
        let mut c = cfg(me, peer);
        c.resource = long_name('é', 250);
        c
    };
    // Wrong resource: both names in the text.
    let mut cb = mk(&b, &a);
    cb.resource = long_name('ü', 250);
    let mut p = Pair::new(mk(&a, &b), cb);
    refused_both_ways_quiet(&mut p);
    assert!(all_sent_frames_encode(&p) >= 1);
    assert_peer_heard(&p, "resource");
    // Wrong peer name, different protocol, wrong secret (a different size
    // connects with the smaller: `a_smaller_peer_connects_with_the_smaller_size`).
    type Edit = Box<dyn Fn(&mut NodeConfig)>;
    let variants: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c: &mut NodeConfig| c.node = long_name('ß', 250)),
            "calls itself",
        ),
        (
            Box::new(|c: &mut NodeConfig| c.protocol = Protocol::A),
            "protocol",
        ),
        (
            Box::new(|c: &mut NodeConfig| c.secret = b"other".to_vec()),
            "challenge",
        ),
    ];
    for (edit, needle) in variants {
        let mut cb = mk(&b, &a);
        edit(&mut cb);
        let mut p = Pair::new(mk(&a, &b), cb);
        refused_both_ways_quiet(&mut p);
        assert!(all_sent_frames_encode(&p) >= 1, "{needle}");
        assert_peer_heard(&p, needle);
    }
    // Split brain with the longest names: the detail names both.
    let mut p = Pair::new(mk(&a, &b), mk(&b, &a));
    p.up_and_synced();
    p.admin(0, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    p.write(0, 1, 0, 0xa1, 4096).unwrap();
    p.write(1, 2, 8192, 0xb2, 4096).unwrap();
    p.s[0].sent.clear();
    p.s[1].sent.clear();
    // Both decide it; each tells the other why, in a frame that encodes.
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.admin(
        0,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    assert!(all_sent_frames_encode(&p) >= 1);
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert!(st.split_brain, "{st:?}");
    }
}

fn refused_both_ways_quiet(p: &mut Pair) {
    for i in 0..2 {
        p.admin(
            i,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        )
        .unwrap();
    }
    for i in 0..2 {
        assert_eq!(p.s[i].node.conn(), ConnState::StandAlone);
    }
}

/// The Disconnect frames sent name the cause. (Both sides detect these
/// refusals themselves; which one's frame arrives first is a race.)
fn assert_peer_heard(p: &Pair, needle: &str) {
    let sent: Vec<String> =
        p.s.iter()
            .flat_map(|s| s.sent.iter())
            .filter_map(|m| match m {
                Message::Disconnect { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect();
    assert!(
        !sent.is_empty() && sent.iter().all(|m| m.contains(needle)),
        "{needle}: {sent:?}"
    );
}

fn fenced_pair(policy: Fencing) -> Pair {
    let with = |me: &str, peer: &str| NodeConfig {
        fencing: policy,
        ..cfg(me, peer)
    };
    let mut p = Pair::new(with("alpha", "beta"), with("beta", "alpha"));
    p.up_and_synced();
    // The initial sync's after-resync-target is not what these tests check.
    assert_eq!(p.s[1].hooks, vec![Hook::AfterResyncTarget]);
    p.s[1].hooks.clear();
    p
}

/// Cuts the link under a write of alpha's (beta stops answering).
fn cut_under_a_write(p: &mut Pair, id: u64) {
    p.mute[1] = true;
    submit_write(p, 0, id, 1);
    p.tick(400);
    assert_ne!(p.s[0].node.conn(), ConnState::Connected);
}

#[test]
fn resource_and_stonith_holds_writes_until_the_peer_is_fenced() {
    use replication_proto::machine::SuspendMode;
    let mut p = fenced_pair(Fencing::ResourceAndStonith);
    cut_under_a_write(&mut p, 1);
    assert_eq!(p.s[0].hooks, vec![Hook::FencePeer]);
    let st = p.s[0].node.status();
    assert_eq!(st.suspended, Some(SuspendMode::Hold));
    assert!(st.fencing.running && st.fencing.frozen, "{:?}", st.fencing);
    assert!(
        !p.s[0].done.contains_key(&1),
        "acked before the peer was fenced"
    );
    submit_write(&mut p, 0, 2, 2);
    assert!(
        !p.s[0].done.contains_key(&2),
        "written alone before fencing"
    );
    // Exit 4: the peer is outdated; held writes go, and the peer counts
    // as Outdated (persisted) until a resync.
    p.s[0]
        .node
        .handle(p.now, Event::FenceDone { exit: Some(4) });
    p.pump();
    assert_eq!(p.s[0].done.remove(&1), Some(Ok(None)));
    assert_eq!(p.s[0].done.remove(&2), Some(Ok(None)));
    let st = p.s[0].node.status();
    assert_eq!(st.suspended, None);
    assert!(st.fencing.peer_fenced && !st.fencing.running);
    assert_eq!(st.fencing.last_outcome, Some(FenceOutcome::PeerOutdated));
    assert_eq!(st.peer_disk, DiskState::Outdated);
    assert!(st.flags.has(MetaFlags::PEER_OUTDATED));
    // Lost again while the peer is known Outdated: no second handler.
    p.s[0].hooks.clear();
    // Back: the resync makes both UpToDate, and the fencing is undone.
    p.mute[1] = false;
    p.tick(2_000);
    assert_eq!(p.s[0].node.conn(), ConnState::Connected);
    assert_eq!(p.s[1].node.disk(), DiskState::UpToDate);
    assert_eq!(p.s[0].hooks, vec![Hook::UnfencePeer]);
    let st = p.s[0].node.status();
    assert!(!st.fencing.peer_fenced && !st.flags.has(MetaFlags::PEER_OUTDATED));
    p.assert_in_sync();
}

#[test]
fn a_failed_fence_keeps_io_frozen_until_an_admin_resumes() {
    let mut p = fenced_pair(Fencing::ResourceAndStonith);
    cut_under_a_write(&mut p, 1);
    p.s[0]
        .node
        .handle(p.now, Event::FenceDone { exit: Some(1) });
    p.pump();
    let st = p.s[0].node.status();
    assert!(st.suspended.is_some() && st.fencing.frozen, "{st:?}");
    assert!(!st.fencing.peer_fenced);
    assert_eq!(st.fencing.last_outcome, Some(FenceOutcome::Failed(Some(1))));
    let err = st.last_error.unwrap_or_default();
    assert!(err.contains("exit 1") && err.contains("resume-io"), "{err}");
    assert!(!p.s[0].done.contains_key(&1));
    // Exit 6 (the peer is Primary) does not let anything go either; a late
    // answer of a handler that is no longer running changes nothing.
    p.s[0]
        .node
        .handle(p.now, Event::FenceDone { exit: Some(4) });
    p.pump();
    assert!(p.s[0].node.status().suspended.is_some());
    p.admin(0, Admin::ResumeIo).unwrap();
    assert_eq!(p.s[0].done.remove(&1), Some(Ok(None)));
    assert!(!p.s[0].node.status().fencing.frozen);
}

#[test]
fn resource_only_fences_without_freezing() {
    let mut p = fenced_pair(Fencing::ResourceOnly);
    cut_under_a_write(&mut p, 1);
    assert_eq!(p.s[0].hooks, vec![Hook::FencePeer]);
    assert_eq!(p.s[0].node.status().suspended, None);
    assert_eq!(p.s[0].done.remove(&1), Some(Ok(None)));
    p.s[0]
        .node
        .handle(p.now, Event::FenceDone { exit: Some(7) });
    p.pump();
    let st = p.s[0].node.status();
    assert!(st.fencing.peer_fenced);
    assert_eq!(st.fencing.last_outcome, Some(FenceOutcome::PeerStonithed));
}

#[test]
fn no_fencing_without_a_policy_or_for_a_secondary_or_an_outdated_peer() {
    // dont-care: nothing runs.
    let mut p = fenced_pair(Fencing::DontCare);
    cut_under_a_write(&mut p, 1);
    assert!(p.s[0].hooks.is_empty() && p.s[1].hooks.is_empty());
    // The Secondary that loses its Primary fences nobody.
    let mut p = fenced_pair(Fencing::ResourceAndStonith);
    cut_under_a_write(&mut p, 1);
    assert!(p.s[1].hooks.is_empty(), "{:?}", p.s[1].hooks);
    // Promoted alone with the peer's data unknown: fence it first.
    let mut q = fenced_pair(Fencing::ResourceAndStonith);
    q.admin(0, Admin::Verb(Verb::Secondary)).unwrap();
    q.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    q.admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    assert_eq!(q.s[1].hooks, vec![Hook::FencePeer]);
    assert!(q.s[1].node.status().fencing.frozen);
}

#[test]
fn held_for_fencing_writes_go_on_once_the_peer_is_back() {
    // resource-only holds nothing on a lost link, but a promotion without
    // the peer holds writes until the peer is fenced, or back.
    let mut q = fenced_pair(Fencing::ResourceOnly);
    q.admin(0, Admin::Verb(Verb::Secondary)).unwrap();
    q.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    q.admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    assert!(q.s[1].node.status().fencing.frozen);
    submit_write(&mut q, 1, 1, 7);
    assert!(!q.s[1].done.contains_key(&1));
    q.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    q.tick(1_000);
    assert_eq!(q.s[1].done.remove(&1), Some(Ok(None)));
    assert!(!q.s[1].node.status().fencing.frozen);
    // The handler's late answer is recorded, nothing else.
    q.s[1]
        .node
        .handle(q.now, Event::FenceDone { exit: Some(5) });
    q.pump();
    let st = q.s[1].node.status();
    assert_eq!(st.fencing.last_outcome, Some(FenceOutcome::PeerUnreachable));
    q.tick(1_000);
    q.assert_in_sync();
}

/// `pause-sync` on either node holds a running resync (the target asks for
/// nothing, the source answers nothing) and `resume-sync` releases it.
#[test]
fn pause_sync_on_either_node_holds_the_resync_until_resume() {
    for who in 0..2 {
        let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
        p.up_and_synced();
        p.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
        for b in 0..64 {
            p.write(0, 100 + b, b * 65536, 0x5a, 4096).unwrap();
        }
        assert_eq!(
            p.admin(who, Admin::Verb(Verb::ResumeSync)),
            Err(AdminError::SyncNotPaused.to_string())
        );
        p.admin(who, Admin::Verb(Verb::PauseSync)).unwrap();
        assert_eq!(
            p.admin(who, Admin::Verb(Verb::PauseSync)),
            Err(AdminError::SyncAlreadyPaused.to_string())
        );
        assert!(p.s[who].node.status().sync_paused_by_user);
        p.admin(
            1,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        )
        .unwrap();
        p.tick(200);
        let oos = p.s[1].node.status().out_of_sync_bytes;
        assert_eq!(p.s[1].node.conn(), ConnState::SyncTarget, "pause on {who}");
        assert!(oos > 0, "pause on {who}: nothing left to sync");
        p.tick(1000);
        assert_eq!(p.s[1].node.conn(), ConnState::SyncTarget, "still connected");
        assert_eq!(p.s[1].node.status().out_of_sync_bytes, oos, "held");
        p.admin(who, Admin::Verb(Verb::ResumeSync)).unwrap();
        p.tick(200);
        assert!(!p.s[who].node.status().sync_paused_by_user);
        assert_eq!(p.s[1].node.conn(), ConnState::Connected);
        assert_eq!(p.s[1].node.disk(), DiskState::UpToDate);
        assert_eq!(p.s[1].node.status().out_of_sync_bytes, 0);
        assert_eq!(p.read_local(0, 0, 1 << 22), p.read_local(1, 0, 1 << 22));
    }
}

/// `new-current-uuid --clear-bitmap` on two fresh, connected Secondaries:
/// both UpToDate on one new generation, no data moved; refused otherwise.
#[test]
fn new_current_uuid_clear_bitmap_skips_the_initial_sync() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    let skip = Admin::Verb(Verb::NewCurrentUuid { clear_bitmap: true });
    assert_eq!(
        p.admin(0, skip.clone()),
        Err(AdminError::SkipSyncNeedsConnected.to_string())
    );
    for i in 0..2 {
        p.admin(
            i,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        )
        .unwrap();
    }
    for i in 0..2 {
        assert_eq!(p.s[i].node.conn(), ConnState::Connected);
        assert_eq!(p.s[i].node.disk(), DiskState::Inconsistent);
    }
    assert_eq!(
        p.admin(
            0,
            Admin::Verb(Verb::NewCurrentUuid {
                clear_bitmap: false
            })
        ),
        Err(AdminError::NewUuidNeedsClearBitmap.to_string())
    );
    p.admin(1, skip.clone()).unwrap();
    p.tick(200);
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert_eq!(st.connection, ConnState::Connected, "{st:?}");
        assert_eq!(st.disk, DiskState::UpToDate, "{st:?}");
        assert_eq!(st.peer_disk, DiskState::UpToDate, "{st:?}");
        assert_eq!(st.out_of_sync_bytes, 0);
        assert!(p.s[i].node.flags().has(MetaFlags::CONSISTENT));
    }
    assert_eq!(p.s[0].node.gens(), p.s[1].node.gens());
    assert!(!p.data_moved(), "no data may move");
    // Not fresh any more: refused, with what to use instead.
    let again = p.admin(0, skip.clone()).unwrap_err();
    assert!(again.contains("invalidate-remote"), "{again}");
    // The pair replicates from here on.
    p.admin(0, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    assert_eq!(
        p.admin(1, skip),
        Err(AdminError::SkipSyncNeedsSecondaries.to_string())
    );
    p.write(0, 1, 4096, 0x77, 4096).unwrap();
    assert_eq!(p.read_local(1, 4096, 4096), Bytes::from(vec![0x77; 4096]));
    // A reconnect finds the same generation: no full resync.
    p.tick(200);
    p.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    assert_eq!(p.s[1].node.conn(), ConnState::Connected);
    assert_eq!(p.s[1].node.status().stats.traffic.resync_received_bytes, 0);
}

/// Both sides of a verify keep how it ended (what was compared, what
/// differed, when) for status.
#[test]
fn the_last_verify_is_kept_on_both_sides() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    assert_eq!(p.s[0].node.status().last_verify, None);
    p.write(0, 1, 0, 0x11, 4096).unwrap();
    // Blocks 95 and 96 are adjacent across a 128 KiB chunk boundary: one
    // range; block 100 alone another.
    for b in [100, 96, 95] {
        p.s[1].disk.insert(b, Bytes::from(vec![0xee; 4096]));
    }
    p.tick(100);
    p.admin(0, Admin::Verb(Verb::Verify { repair: false }))
        .unwrap();
    p.tick(100);
    for i in 0..2 {
        let v = p.s[i].node.status().last_verify.expect("kept");
        assert_eq!(v.verified_bytes, SIZE, "node {i}");
        assert_eq!(v.out_of_sync_bytes, 3 * 4096, "node {i}: {v:?}");
        assert_eq!(v.range_count, 2, "node {i}: {v:?}");
        assert_eq!(
            v.ranges,
            vec![
                VerifyRange {
                    start: 95 * 4096,
                    len_bytes: 2 * 4096
                },
                VerifyRange {
                    start: 100 * 4096,
                    len_bytes: 4096
                }
            ],
            "node {i}"
        );
        assert!(v.at_ms > 0 && v.at_ms <= p.now.0);
    }
    p.admin(1, Admin::Verb(Verb::Verify { repair: true }))
        .unwrap();
    p.tick(100);
    p.admin(1, Admin::Verb(Verb::Verify { repair: false }))
        .unwrap();
    for i in 0..2 {
        let v = p.s[i].node.status().last_verify.expect("kept");
        assert_eq!(v.out_of_sync_bytes, 0, "node {i} after the repair: {v:?}");
        assert_eq!((v.range_count, v.ranges.len()), (0, 0), "node {i}");
    }
}

/// A split brain an after-sb policy resolves (discard-secondary: beta, the
/// Secondary, becomes the sync target) runs initial-split-brain on both
/// nodes, and neither split-brain nor pri-lost-after-sb; beta runs
/// after-resync-target once the resync made it UpToDate.
#[test]
fn a_resolved_split_brain_runs_only_initial_split_brain() {
    use replication_proto::machine::AfterSb1;
    let with = |me, peer| {
        let mut c = cfg(me, peer);
        c.split_brain.after_sb_1pri = AfterSb1::DiscardSecondary;
        c
    };
    let mut p = Pair::new(with("alpha", "beta"), with("beta", "alpha"));
    p.up_and_synced();
    p.admin(0, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    p.admin(1, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    p.write(0, 1, 0, 0xa1, 4096).unwrap();
    p.write(1, 2, 8192, 0xb2, 4096).unwrap();
    p.admin(1, Admin::Verb(Verb::Secondary)).unwrap();
    p.s[0].hooks.clear();
    p.s[1].hooks.clear();
    p.connect_both();
    p.tick(2000);
    assert_eq!(p.s[0].hooks, vec![Hook::InitialSplitBrain]);
    assert_eq!(
        p.s[1].hooks,
        vec![Hook::InitialSplitBrain, Hook::AfterResyncTarget]
    );
    for i in 0..2 {
        assert!(!p.s[i].node.status().split_brain);
    }
    assert_eq!(p.s[1].node.conn(), ConnState::Connected);
    assert_ne!(
        p.read_local(1, 8192, 4096)[0],
        0xb2,
        "beta's change rolled back"
    );
}

/// `--assume-clean` with nothing marked: both grow, the (empty) resync
/// ends at once, no data moves.
#[test]
fn resize_assume_clean_moves_no_data() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    for s in &mut p.s {
        s.sent.clear();
    }
    let grown = SIZE + (4 << 20);
    p.admin(
        0,
        Admin::Resize {
            room_bytes: grown,
            size_bytes: Some(grown),
            assume_clean: true,
        },
    )
    .unwrap();
    p.pump();
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert_eq!(st.data_bytes, grown, "side {i}: {st:?}");
        assert_eq!(st.out_of_sync_bytes, 0, "side {i}: {st:?}");
        assert_eq!(st.connection, ConnState::Connected, "side {i}: {st:?}");
        assert_eq!(st.disk, DiskState::UpToDate, "side {i}: {st:?}");
        assert!(st.size_note.unwrap_or_default().contains("resized to"));
    }
    for side in &p.s {
        let moved = side
            .sent
            .iter()
            .any(|m| matches!(m, Message::ResyncData { .. } | Message::Data { .. }));
        assert!(!moved, "no data may move");
    }
}
// ----- Diskless: detach, remote reads, attach (node/diskless.rs) -----------

impl Pair {
    fn read(&mut self, i: usize, id: u64, offset: u64, len: u32) -> Result<Option<Bytes>, i32> {
        self.s[i].node.handle(
            self.now,
            Event::AppRead {
                id: AppId(id),
                offset,
                len,
            },
        );
        self.pump();
        self.s[i].done.remove(&id).expect("read completed")
    }

    /// What the node's metadata holds now (the harness keeps no metadata
    /// of its own): what `attach` reads back from a disk detached cleanly.
    fn persisted(&self, i: usize) -> Persisted {
        let n = &self.s[i].node;
        Persisted {
            gens: n.gens(),
            flags: n.flags(),
            bitmap: n.bitmap_words().to_vec(),
            al_seq: 0,
            al_extents: vec![],
            promoted_at_ms: 0,
        }
    }

    fn resync_bytes_sent(&self, i: usize) -> u64 {
        self.s[i]
            .sent
            .iter()
            .map(|m| match m {
                Message::ResyncData { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

#[test]
fn a_detached_primary_reads_and_writes_through_its_peer_and_attach_resyncs_what_it_missed() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    assert_eq!(p.write(0, 1, 0, 0xaa, 8192), Ok(None));
    let before = p.persisted(0);
    p.admin(0, Admin::Verb(Verb::Detach)).unwrap();
    assert!(p.s[0].closed, "the disk is closed once idle");
    let st = p.s[0].node.status();
    assert_eq!(
        (st.disk, st.peer_disk),
        (DiskState::Diskless, DiskState::UpToDate)
    );
    assert_eq!(
        p.admin(0, Admin::Verb(Verb::Detach)),
        Err(AdminError::AlreadyDiskless.to_string())
    );
    // Reads come from the peer, writes go to the peer only.
    assert_eq!(p.read(0, 2, 0, 4096).unwrap().unwrap()[0], 0xaa);
    assert_eq!(p.write(0, 3, 64 * 4096, 0xbb, 4096), Ok(None));
    assert_eq!(p.read(0, 4, 64 * 4096, 4096).unwrap().unwrap()[0], 0xbb);
    assert_eq!(p.read_local(1, 64 * 4096, 4096)[0], 0xbb);
    assert_eq!(
        p.read_local(0, 64 * 4096, 4096)[0],
        0,
        "nothing on the detached disk"
    );
    // The peer keeps what the detached disk misses.
    assert!(p.s[1].node.status().out_of_sync_bytes >= 4096);
    // Attach on a Primary is refused; made Secondary, the same disk
    // resyncs only what changed (the bitmap), not all of it.
    assert_eq!(
        p.admin(0, Admin::Attach(before.clone())),
        Err(AdminError::AttachNeedsSecondary.to_string())
    );
    p.admin(0, Admin::Verb(Verb::Secondary)).unwrap();
    p.s[0].closed = false;
    p.admin(0, Admin::Attach(before)).unwrap();
    p.tick(200);
    for i in 0..2 {
        let st = p.s[i].node.status();
        assert_eq!(st.disk, DiskState::UpToDate, "{st:?}");
        assert_eq!(st.out_of_sync_bytes, 0, "{st:?}");
    }
    assert_eq!(p.read_local(0, 0, 1 << 20), p.read_local(1, 0, 1 << 20));
    let sent = p.resync_bytes_sent(1);
    // The detached node's activity-log extent (4 MiB), not the whole disk.
    assert!(
        sent > 0 && sent <= 4 << 20,
        "only the changed extents: {sent}"
    );
}

#[test]
fn a_fresh_disk_attached_after_detach_resyncs_in_full() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    assert_eq!(p.write(0, 1, 4096, 0xcc, 4096), Ok(None));
    p.admin(1, Admin::Verb(Verb::Detach)).unwrap();
    assert_eq!(p.s[0].node.peer_disk(), DiskState::Diskless);
    // Writes on the Primary go on, marked for the missing disk.
    assert_eq!(p.write(0, 2, 8192, 0xdd, 4096), Ok(None));
    p.s[1].disk.clear();
    p.s[1].closed = false;
    let initial = p.resync_bytes_sent(0);
    p.admin(1, Admin::Attach(fresh())).unwrap();
    p.tick(200);
    assert_eq!(p.s[1].node.disk(), DiskState::UpToDate);
    assert_eq!(
        p.read_local(0, 0, SIZE as u32),
        p.read_local(1, 0, SIZE as u32)
    );
    assert_eq!(p.resync_bytes_sent(0) - initial, SIZE);
}

#[test]
fn a_read_error_on_the_primary_is_served_by_the_peer_and_rewritten() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    assert_eq!(p.write(0, 1, 32 * 4096, 0xee, 4096), Ok(None));
    p.s[0].disk.insert(32, Bytes::from(vec![0x11; 4096])); // garbage under a bad sector
    p.s[0].bad_reads = 32..33;
    assert_eq!(p.read(0, 2, 32 * 4096, 4096).unwrap().unwrap()[0], 0xee);
    assert_eq!(p.read_local(0, 32 * 4096, 4096)[0], 0xee, "rewritten");
    assert_eq!(p.s[0].hooks, vec![Hook::LocalIoError]);
    assert_eq!(
        p.s[0].node.disk(),
        DiskState::UpToDate,
        "pass-on keeps the disk"
    );
    // Without the peer, the error reaches the application.
    p.s[0].bad_reads = 32..33;
    p.admin(0, Admin::Verb(Verb::Disconnect)).unwrap();
    assert_eq!(p.read(0, 3, 32 * 4096, 4096), Err(errno::EIO));
}

#[test]
fn on_io_error_detach_turns_a_failed_write_into_diskless_service() {
    let detach = |me: &str, peer: &str| NodeConfig {
        on_io_error_detach: true,
        ..cfg(me, peer)
    };
    let mut p = Pair::new(detach("alpha", "beta"), detach("beta", "alpha"));
    p.up_and_synced();
    p.s[0].bad_blocks = 0..(SIZE / 4096);
    // The peer holds the write: the application sees no error.
    assert_eq!(p.write(0, 1, 0, 0x5a, 4096), Ok(None));
    assert_eq!(p.s[0].node.disk(), DiskState::Diskless);
    assert!(p.s[0].closed);
    assert!(p.s[0].hooks.contains(&Hook::LocalIoError));
    assert_eq!(p.write(0, 2, 4096, 0x5b, 4096), Ok(None));
    assert_eq!(p.read(0, 3, 0, 8192).unwrap().unwrap()[4096], 0x5b);
    // Alone, a Diskless Primary has nothing to serve from.
    p.admin(0, Admin::Verb(Verb::Disconnect)).unwrap();
    assert_eq!(p.write(0, 4, 0, 1, 4096), Err(errno::EIO));
    assert_eq!(p.read(0, 5, 0, 4096), Err(errno::EIO));
    p.admin(0, Admin::Verb(Verb::Secondary)).unwrap();
    assert_eq!(
        p.admin(0, Admin::Verb(Verb::Primary { force: false })),
        Err(AdminError::DisklessNeedsPeer.to_string())
    );
}

/// A dead disk often fails the activity log's write first, before any data
/// request: under detach the writes waiting for that transaction go to the
/// peer (they failed with EIO before the VM scenario showed it).
#[test]
fn on_io_error_detach_serves_the_writes_whose_activity_log_write_failed() {
    let detach = |me: &str, peer: &str| NodeConfig {
        on_io_error_detach: true,
        ..cfg(me, peer)
    };
    let mut p = Pair::new(detach("alpha", "beta"), detach("beta", "alpha"));
    p.up_and_synced();
    p.s[0].bad_blocks = 0..(SIZE / 4096);
    p.s[0].meta_fails = true;
    // The last extent of the disk: not in the activity log yet, so the
    // write waits for an activity-log transaction, which fails.
    assert_eq!(p.write(0, 1, SIZE - 4096, 0x5c, 4096), Ok(None));
    assert_eq!(p.s[0].node.disk(), DiskState::Diskless);
    assert!(p.s[0].hooks.contains(&Hook::LocalIoError));
    assert_eq!(p.read(0, 2, SIZE - 4096, 4096).unwrap().unwrap()[0], 0x5c);
}

/// Under pass-on / call-local-io-error (no detach), a failed metadata
/// write asks for the local-io-error handler too, once for the episode;
/// a metadata write that succeeds ends it.
#[test]
fn a_failed_metadata_write_runs_the_local_io_error_hook_once_per_episode() {
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    p.s[0].meta_fails = true;
    // The last extent: not in the activity log, so its transaction fails.
    let _ = p.write(0, 1, SIZE - 4096, 0x5c, 4096);
    assert_eq!(p.s[0].hooks, vec![Hook::LocalIoError]);
    let _ = p.write(0, 2, SIZE - 4096, 0x5d, 4096);
    assert_eq!(p.s[0].hooks, vec![Hook::LocalIoError], "same episode");
    let st = p.s[0].node.status();
    assert!(
        st.errors
            .iter()
            .any(|e| e.kind == ErrorKind::Metadata && !e.ended),
        "{st:?}"
    );
    p.s[0].meta_fails = false;
    assert_eq!(p.write(0, 3, SIZE - 4096, 0x5e, 4096), Ok(None));
    let st = p.s[0].node.status();
    assert!(
        st.errors
            .iter()
            .all(|e| e.kind != ErrorKind::Metadata || e.ended),
        "{st:?}"
    );
}
/// The resync target's disk dies in the middle of the resync: it goes
/// Diskless and both sides connect again, Diskless/UpToDate. Told
/// ConfigMismatch (before), the source stayed StandAlone and refused every
/// reconnection, so the Diskless node could not reach the good data (seen
/// in the VM scenario `ublk-disk-detach.sh`).
#[test]
fn a_resync_target_whose_disk_dies_reconnects_diskless() {
    let detach = |me: &str, peer: &str| NodeConfig {
        on_io_error_detach: true,
        ..cfg(me, peer)
    };
    let mut p = Pair::new(detach("alpha", "beta"), detach("beta", "alpha"));
    p.up_and_synced();
    p.admin(1, Admin::Verb(Verb::Disconnect)).unwrap();
    assert_eq!(p.write(0, 1, 0, 0x77, 1 << 20), Ok(None));
    p.s[1].bad_blocks = 0..(SIZE / 4096);
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.tick(2000);
    let (a, b) = (p.s[0].node.status(), p.s[1].node.status());
    assert_eq!(b.disk, DiskState::Diskless, "{b:?}");
    assert!(p.s[1].closed, "the dead disk is closed");
    assert_eq!(a.connection, ConnState::Connected, "{a:?}");
    assert_eq!(b.connection, ConnState::Connected, "{b:?}");
    assert_eq!(a.peer_disk, DiskState::Diskless, "{a:?}");
}

/// Seed 001's VM setup: two fresh disks skip the initial sync
/// (`new-current-uuid --clear-bitmap` on alpha), alpha is promoted and its
/// whole disk dies under writes: they go to the peer. alpha had kept the
/// peer's generation from the handshake (the one before the skip), so once
/// Diskless it judged the peer unable to serve its data and failed the
/// writes with EIO (fio saw it in the VM scenario `ublk-disk-detach.sh`).
#[test]
fn a_diskless_primary_serves_through_the_peer_after_the_initial_sync_was_skipped() {
    let detach = |me: &str, peer: &str| NodeConfig {
        on_io_error_detach: true,
        ..cfg(me, peer)
    };
    let mut p = Pair::new(detach("alpha", "beta"), detach("beta", "alpha"));
    for i in 0..2 {
        p.admin(
            i,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        )
        .unwrap();
    }
    p.admin(0, Admin::Verb(Verb::NewCurrentUuid { clear_bitmap: true }))
        .unwrap();
    p.tick(200);
    p.admin(0, Admin::Verb(Verb::Primary { force: false }))
        .unwrap();
    p.s[0].bad_blocks = 0..(SIZE / 4096);
    p.s[0].meta_fails = true;
    assert_eq!(p.write(0, 1, SIZE - 4096, 0x5d, 4096), Ok(None));
    assert_eq!(p.s[0].node.disk(), DiskState::Diskless);
    assert_eq!(p.write(0, 2, 0, 0x5e, 4096), Ok(None));
    assert_eq!(p.read(0, 3, SIZE - 4096, 4096).unwrap().unwrap()[0], 0x5d);
    assert_eq!(p.read(0, 4, 0, 4096).unwrap().unwrap()[0], 0x5e);
}

#[test]
fn a_peer_without_remote_reads_is_refused_clearly_when_a_node_is_diskless() {
    let old = |me: &str, peer: &str| NodeConfig {
        features: features::ALL & !features::REMOTE_READ,
        ..cfg(me, peer)
    };
    let mut p = Pair::new(cfg("alpha", "beta"), old("beta", "alpha"));
    p.up_and_synced();
    // The Primary cannot detach onto a peer that cannot serve it.
    assert_eq!(
        p.admin(0, Admin::Verb(Verb::Detach)),
        Err(AdminError::DetachNeedsPeer.to_string())
    );
    p.admin(0, Admin::Verb(Verb::Secondary)).unwrap();
    p.admin(0, Admin::Verb(Verb::Detach)).unwrap();
    // The old peer is told why and stops; connecting again, the handshake
    // refuses it, naming the feature.
    assert_eq!(p.s[1].node.conn(), ConnState::StandAlone);
    p.admin(
        1,
        Admin::Verb(Verb::Connect {
            discard_my_data: false,
        }),
    )
    .unwrap();
    p.tick(100);
    let st = p.s[0].node.status();
    assert_eq!(st.connection, ConnState::StandAlone, "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("REMOTE_READ")),
        "{st:?}"
    );
}

/// The resync controller on (c-plan-ahead 10) with a slow fixed rate that
/// it replaces: the resync runs at c-max-rate, status shows the target;
/// application writes on the Primary (replicated to the target) hold it at
/// c-min-rate; once they stop it finishes.
#[test]
fn the_resync_controller_runs_at_c_max_rate_and_yields_to_application_writes() {
    use replication_proto::machine::ResyncControl;
    let ctl = |me: &str, peer: &str| NodeConfig {
        resync_rate: 256 << 10,
        resync_control: ResyncControl {
            plan_ahead_ds: 10,
            fill_target_bytes: 1 << 20,
            delay_target_ds: 10,
            max_rate_bytes_per_s: 4 << 20,
            min_rate_bytes_per_s: 512 << 10,
        },
        ..cfg(me, peer)
    };
    let mut p = Pair::new(cfg("alpha", "beta"), cfg("beta", "alpha"));
    p.up_and_synced();
    // Turned on as `repctl adjust` does.
    for (i, (me, peer)) in [("alpha", "beta"), ("beta", "alpha")]
        .into_iter()
        .enumerate()
    {
        p.s[i].node.reconfigure(ctl(me, peer)).unwrap();
    }
    p.admin(0, Admin::Verb(Verb::Disconnect)).unwrap();
    for k in 0..6u64 {
        assert_eq!(p.write(0, 100 + k, k << 20, 0xc0, 1 << 20), Ok(None));
    }
    p.connect_both();
    p.tick(1000);
    let st = p.s[1].node.status();
    assert_eq!(st.connection, ConnState::SyncTarget);
    assert_eq!(st.sync_rate_target_bytes_per_s, Some(4 << 20));
    assert!(!st.sync_throttled);
    assert_eq!(
        p.s[0].node.status().sync_rate_target_bytes_per_s,
        None,
        "the source runs none"
    );
    let done = (6 << 20) - st.sync_remaining_bytes;
    // About a second at 4 MiB/s (the fixed rate would have done 256 KiB).
    assert!(
        ((5 << 19)..=(5 << 20)).contains(&done),
        "{done} bytes in 1 s"
    );
    // 64 KiB of writes every 10 ms, outside the region being resynced.
    let left = st.sync_remaining_bytes;
    for k in 0..100u64 {
        assert_eq!(p.write(0, 200 + k, 7 << 20, 0xd0, 64 << 10), Ok(None));
        p.tick(10);
    }
    let st = p.s[1].node.status();
    assert!(st.sync_throttled, "{st:?}");
    assert_eq!(st.sync_rate_target_bytes_per_s, Some(512 << 10));
    let slow = left - st.sync_remaining_bytes;
    // About a second at c-min-rate (512 KiB), plus the step before the
    // writes were seen.
    assert!(
        (256 << 10..=1 << 20).contains(&slow),
        "{slow} bytes in 1 s under writes"
    );
    p.tick(3000);
    p.assert_in_sync();
    assert_eq!(p.s[1].node.status().sync_rate_target_bytes_per_s, None);
}
