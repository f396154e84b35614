//! The hub and the diff without a daemon: which lines a change makes, that
//! every watcher gets the same ones, and that a watcher that does not read
//! is cut off without holding the publisher up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rep_control::events::Event;
use replication_proto::machine::{ConnState, ErrorKind, ErrorNote};
use replication_proto::wire::{DiskState, Role};

use super::diff::changes;
use super::*;

fn names() -> Names {
    Names {
        resource: "r0".into(),
        peer: "beta".into(),
    }
}

fn texts(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.text(false)).collect()
}

fn drain(w: &Watch) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(l) = w.rx.recv_timeout(Duration::from_millis(50)) {
        let e: Event = serde_json::from_str(&l).expect("an event line");
        out.push(e.text(false));
    }
    out
}

#[test]
fn a_promotion_is_one_resource_line() {
    let a = Snapshot::healthy();
    let b = Snapshot {
        role: Role::Primary,
        ..a.clone()
    };
    assert_eq!(
        texts(&changes(&a, &b, &names(), false)),
        ["change resource name:r0 role:Primary"]
    );
    assert!(changes(&a, &a, &names(), true).is_empty());
}

#[test]
fn a_disconnect_changes_connection_and_peer_device() {
    let a = Snapshot::healthy();
    let b = Snapshot {
        connection: ConnState::Connecting,
        peer_role: None,
        peer_disk: DiskState::DUnknown,
        ..a.clone()
    };
    assert_eq!(
        texts(&changes(&a, &b, &names(), false)),
        [
            "change connection name:r0 conn-name:beta connection:Connecting role:Unknown",
            "change peer-device name:r0 conn-name:beta replication:Off peer-disk:DUnknown",
        ]
    );
}

#[test]
fn resync_start_progress_and_end() {
    let a = Snapshot::healthy();
    let syncing = Snapshot {
        connection: ConnState::SyncSource,
        peer_disk: DiskState::Inconsistent,
        done: Some(0.0),
        ..a.clone()
    };
    let t = texts(&changes(&a, &syncing, &names(), false));
    assert_eq!(
        t,
        [
            "change connection name:r0 conn-name:beta connection:SyncSource",
            "change peer-device name:r0 conn-name:beta replication:SyncSource \
             peer-disk:Inconsistent done:0.00",
        ]
    );
    let later = Snapshot {
        done: Some(42.1),
        ..syncing.clone()
    };
    // Progress alone only when the caller says it is due.
    assert!(changes(&syncing, &later, &names(), false).is_empty());
    assert_eq!(
        texts(&changes(&syncing, &later, &names(), true)),
        ["change peer-device name:r0 conn-name:beta done:42.10"]
    );
    assert_eq!(
        texts(&changes(&later, &a, &names(), false)),
        [
            "change connection name:r0 conn-name:beta connection:Connected",
            "change peer-device name:r0 conn-name:beta replication:Established \
             peer-disk:UpToDate",
        ]
    );
}

/// The ranges a verify found go out once, one line each, before its
/// result; a verify whose connection broke (no new result) lists none.
#[test]
fn a_verify_lists_its_ranges_then_its_result() {
    use replication_proto::machine::{VerifyNote, VerifyRange};
    let a = Snapshot::healthy();
    let verifying = Snapshot {
        connection: ConnState::VerifyTarget,
        ..a.clone()
    };
    let note = VerifyNote {
        at_ms: 5,
        verified_bytes: 8 << 20,
        out_of_sync_bytes: 3 * 4096,
        range_count: 2,
        ranges: vec![
            VerifyRange {
                start: 0,
                len_bytes: 4096,
            },
            VerifyRange {
                start: 1 << 20,
                len_bytes: 8192,
            },
        ],
    };
    let done = Snapshot {
        verified_bytes: 8 << 20,
        verify_out_of_sync_bytes: 3 * 4096,
        last_verify: Some(note),
        ..a.clone()
    };
    assert_eq!(
        texts(&changes(&verifying, &done, &names(), false)),
        vec![
            "change connection name:r0 conn-name:beta connection:Connected",
            "change peer-device name:r0 conn-name:beta replication:Established",
            "call out-of-sync name:r0 conn-name:beta start-bytes:0 len-bytes:4096",
            "call out-of-sync name:r0 conn-name:beta start-bytes:1048576 len-bytes:8192",
            "call verify name:r0 conn-name:beta verified:8388608 out-of-sync:12288 ranges:2",
        ]
    );
    let broken = Snapshot {
        connection: ConnState::StandAlone,
        ..done.clone()
    };
    let again = Snapshot {
        connection: ConnState::VerifyTarget,
        ..done
    };
    let t = texts(&changes(&again, &broken, &names(), false));
    assert!(!t.iter().any(|l| l.contains("out-of-sync name")), "{t:?}");
    // The size changed (repctl resize): old and new.
    let grown = Snapshot {
        data_bytes: 96 << 20,
        ..a.clone()
    };
    assert_eq!(
        texts(&changes(&a, &grown, &names(), false)),
        vec!["call resize name:r0 old-size-bytes:67108864 new-size-bytes:100663296"]
    );
}

#[test]
fn a_verify_result_and_a_split_brain_are_calls() {
    let a = Snapshot::healthy();
    let verifying = Snapshot {
        connection: ConnState::VerifySource,
        ..a.clone()
    };
    let done = Snapshot {
        verified_bytes: 8 << 20,
        verify_out_of_sync_bytes: 4096,
        ..a.clone()
    };
    let t = texts(&changes(&verifying, &done, &names(), false));
    assert!(
        t.contains(&"call verify name:r0 conn-name:beta verified:8388608 out-of-sync:4096".into()),
        "{t:?}"
    );
    let sb = Snapshot {
        connection: ConnState::StandAlone,
        split_brain: true,
        ..a.clone()
    };
    let t = texts(&changes(&a, &sb, &names(), false));
    assert!(
        t.contains(&"call split-brain name:r0 conn-name:beta".into()),
        "{t:?}"
    );
    assert!(t.iter().any(|l| l.contains("split-brain:yes")), "{t:?}");
}

#[test]
fn errors_are_created_changed_and_destroyed() {
    let a = Snapshot::healthy();
    let note = |count, ended| ErrorNote {
        kind: ErrorKind::LocalIo,
        message: "local write of 4096 bytes at 0 failed".into(),
        at_ms: 5,
        count,
        ended,
    };
    let b = Snapshot {
        errors: vec![note(1, false)],
        ..a.clone()
    };
    let c = Snapshot {
        errors: vec![note(1, true)],
        ..a.clone()
    };
    assert_eq!(
        texts(&changes(&a, &b, &names(), false)),
        ["create error name:r0 error:local-io count:1 \
          message:\"local write of 4096 bytes at 0 failed\" ended:no"]
    );
    assert_eq!(
        texts(&changes(&b, &c, &names(), false)),
        ["change error name:r0 error:local-io count:1 \
          message:\"local write of 4096 bytes at 0 failed\" ended:yes"]
    );
    assert_eq!(
        texts(&changes(&c, &a, &names(), false)),
        ["destroy error name:r0 error:local-io"]
    );
    let t = texts(&b.exists(&names()));
    assert!(t
        .last()
        .is_some_and(|l| l.starts_with("exists error name:r0 error:local-io")));
}

#[test]
fn every_watcher_sees_the_same_lines_and_now_starts_with_the_state() {
    let hub = Hub::new("r0", "beta");
    hub.publish(Snapshot::healthy());
    let w1 = hub.watch(true).expect("watch");
    let w2 = hub.watch(true).expect("watch");
    let plain = hub.watch(false).expect("watch");
    let primary = Snapshot {
        role: Role::Primary,
        ..Snapshot::healthy()
    };
    hub.publish(primary.clone());
    hub.publish(primary);
    hub.publish(Snapshot::healthy());
    let (l1, l2) = (drain(&w1), drain(&w2));
    assert_eq!(l1, l2);
    assert_eq!(
        l1,
        [
            "exists resource name:r0 role:Secondary suspended:no",
            "exists connection name:r0 conn-name:beta connection:Connected role:Secondary \
             split-brain:no",
            "exists device name:r0 disk:UpToDate",
            "exists peer-device name:r0 conn-name:beta replication:Established \
             peer-disk:UpToDate",
            "exists -",
            "change resource name:r0 role:Primary",
            "change resource name:r0 role:Secondary",
        ]
    );
    assert_eq!(drain(&plain), l1.get(5..).unwrap_or_default());
    hub.close();
    assert_eq!(
        drain(&w1),
        [
            "destroy peer-device name:r0 conn-name:beta",
            "destroy device name:r0",
            "destroy connection name:r0 conn-name:beta",
            "destroy resource name:r0",
        ]
    );
    assert!(matches!(
        w1.rx.recv_timeout(Duration::from_millis(10)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    ));
    assert_eq!(hub.watch(true).err(), Some(WatchError::Stopping));
}

/// A watcher that does not read costs the publisher nothing: once its queue
/// is full it is cut off, and the others go on.
#[test]
fn a_watcher_that_does_not_read_is_cut_off() {
    let hub = Hub::new("r0", "beta");
    hub.publish(Snapshot::healthy());
    let stalled = hub.watch(false).expect("watch");
    let reader = hub.watch(false).expect("watch");
    let flips = WATCHER_QUEUE_EVENTS + 10;
    let mut seen = 0;
    for i in 0..flips {
        let role = if i % 2 == 0 {
            Role::Primary
        } else {
            Role::Secondary
        };
        hub.publish(Snapshot {
            role,
            ..Snapshot::healthy()
        });
        while reader.rx.try_recv().is_ok() {
            seen += 1;
        }
    }
    assert_eq!(seen, flips);
    assert_eq!(stalled.state.load(Ordering::Acquire), CUT);
    assert_eq!(reader.state.load(Ordering::Acquire), LIVE);
    assert_eq!(hub.lock().watchers.len(), 1);
    // What it had queued stays readable, then the queue ends.
    let mut queued = 0;
    while stalled.rx.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(queued, WATCHER_QUEUE_EVENTS);
}

/// A client that hangs up is noticed while nothing happens, and its
/// watcher forgotten; the hub serves at most MAX_WATCHERS at once.
#[test]
fn a_client_that_hangs_up_is_forgotten_and_watchers_are_limited() {
    use std::io::{BufRead, BufReader};
    let hub = Arc::new(Hub::new("r0", "beta"));
    hub.publish(Snapshot::healthy());
    let (client, server) = std::os::unix::net::UnixStream::pair().expect("pair");
    let h = hub.clone();
    let t = std::thread::spawn(move || serve_watcher(&server, &h, true));
    let mut rd = BufReader::new(client);
    let mut first = String::new();
    rd.read_line(&mut first).expect("answer");
    assert!(first.contains(r#""ok":true"#), "{first}");
    let mut line = String::new();
    while !line.contains(r#""object":"-""#) {
        line.clear();
        assert!(rd.read_line(&mut line).expect("state") > 0);
    }
    assert_eq!(hub.lock().watchers.len(), 1);
    drop(rd);
    t.join().expect("the watcher's thread ends");
    assert!(hub.lock().watchers.is_empty());

    let held: Vec<Watch> = (0..MAX_WATCHERS)
        .map(|_| hub.watch(false).expect("watch"))
        .collect();
    assert_eq!(hub.watch(false).err(), Some(WatchError::TooMany));
    drop(held);
}

/// `pause-sync` and `resume-sync` show as events2's `resync-suspended`.
#[test]
fn a_paused_resync_says_resync_suspended_user() {
    let syncing = Snapshot {
        connection: ConnState::SyncTarget,
        disk: DiskState::Inconsistent,
        ..Snapshot::healthy()
    };
    let paused = Snapshot {
        sync_paused: true,
        ..syncing.clone()
    };
    assert_eq!(
        texts(&changes(&syncing, &paused, &names(), false)),
        ["change peer-device name:r0 conn-name:beta resync-suspended:user"]
    );
    assert_eq!(
        texts(&changes(&paused, &syncing, &names(), false)),
        ["change peer-device name:r0 conn-name:beta resync-suspended:no"]
    );
    assert!(texts(&paused.exists(&names()))
        .iter()
        .any(|l| l.starts_with("exists peer-device") && l.ends_with("resync-suspended:user")));
}

#[test]
fn each_handler_that_ended_is_one_call_line() {
    let a = Snapshot::healthy();
    let one = Snapshot {
        handlers: vec![(1, "split-brain", "0".to_owned())],
        ..a.clone()
    };
    let two = Snapshot {
        handlers: vec![
            (1, "split-brain", "0".to_owned()),
            (2, "initial-split-brain", "timed-out".to_owned()),
            (3, "split-brain", "1".to_owned()),
        ],
        ..a.clone()
    };
    assert_eq!(
        texts(&changes(&a, &one, &names(), false)),
        ["call handler name:r0 conn-name:beta exit:0 handler:split-brain"]
    );
    assert_eq!(
        texts(&changes(&one, &two, &names(), false)),
        [
            "call handler name:r0 conn-name:beta exit:timed-out handler:initial-split-brain",
            "call handler name:r0 conn-name:beta exit:1 handler:split-brain",
        ]
    );
    assert!(changes(&two, &two, &names(), false).is_empty());
}
