//! Issue 16, item 8, in the simulator: a resync over a slow link. The link
//! model queues each direction's frames behind the bytes sent before them
//! at the link's bandwidth, so a ping in that queue waits behind resync
//! data, as it did in the daemon; on a connection of its own it does not.

#![allow(clippy::unwrap_used, clippy::panic)]

use replication_proto::sim::slow_link_resync;

/// One 128 KiB resync frame takes 128 ms at this rate, twice the
/// simulator's 60 ms timeout (at 2 Mbit/s it takes 524 ms, and a router's
/// queue of 400 ms comes on top, against `timeout-ms = 1000`).
const BYTES_PER_MS: u64 = 1024;
/// 16 MiB at that rate: the data alone.
const IDEAL_MS: u64 = (16 << 20) / BYTES_PER_MS;

#[test]
fn pings_on_their_own_connection_keep_a_slow_resync_connected() {
    let (r, outcome) = slow_link_resync(BYTES_PER_MS, true);
    eprintln!("ping connection: {r:?}");
    if let Err(v) = outcome {
        panic!("{v}");
    }
    assert_eq!(r.connections, 1, "the connection dropped: {r:?}");
    // Bitmap exchange, frame headers, one request's round trip per frame
    // while the window is small: well under twice the ideal.
    assert!(
        r.sim_ms < IDEAL_MS * 2,
        "{} ms for a sync the link does in {IDEAL_MS} ms",
        r.sim_ms
    );
}

/// The model shows the old behaviour: pings queued with the resync data
/// time out again and again (the daemon's log on a 2 Mbit/s link showed a
/// reconnect every ~1.6 s).
#[test]
fn pings_behind_resync_data_time_out_again_and_again() {
    let (r, outcome) = slow_link_resync(BYTES_PER_MS, false);
    eprintln!(
        "pings behind the data: {r:?}, {:?}",
        outcome.err().map(|v| v.what)
    );
    assert!(
        r.connections >= 5,
        "expected repeated reconnects with pings behind the data: {r:?}"
    );
}
