//! Every metric the endpoint serves, from one status and the latency
//! histograms. Names follow drbd-reactor's prometheus plugin with `rep_`
//! for `drbd_`, and its labels: `name` (resource), `conn_name` (the peer),
//! `volume` (always "0": one volume per resource), `minor` (the ublk
//! device number). README.md ("Metrics") lists them with their reactor
//! counterparts.

use rep_control::protocol::NodeStatus;

use super::exposition::{Exposition, Kind};
use crate::engine::latency::Latencies;

const ROLES: [&str; 2] = ["Primary", "Secondary"];
const PEER_ROLES: [&str; 3] = ["Primary", "Secondary", "Unknown"];
const CONN_STATES: [&str; 11] = [
    "StandAlone",
    "Connecting",
    "Handshake",
    "WFBitMapS",
    "WFBitMapT",
    "Connected",
    "SyncSource",
    "SyncTarget",
    "VerifySource",
    "VerifyTarget",
    "Disconnecting",
];
const DISK_STATES: [&str; 6] = [
    "Diskless",
    "Inconsistent",
    "Outdated",
    "DUnknown",
    "Consistent",
    "UpToDate",
];

/// The exposition text of node status `st` and histograms `lat`; `minor`
/// is the ublk device number.
#[must_use]
pub fn render(st: &NodeStatus, lat: &Latencies, minor: u32) -> String {
    let mut e = Exposition::default();
    let minor = minor.to_string();
    let name = st.resource.as_str();
    let res = [("name", name)];
    let conn = [("name", name), ("conn_name", st.peer.as_str())];
    let dev = [("name", name), ("volume", "0"), ("minor", minor.as_str())];
    let peerdev = [
        ("name", name),
        ("conn_name", st.peer.as_str()),
        ("volume", "0"),
    ];
    resource(&mut e, st, &res);
    connection(&mut e, st, &conn);
    device(&mut e, st, &dev);
    peer_device(&mut e, st, &peerdev);
    sync(&mut e, st, &peerdev);
    last_verify(&mut e, st, &peerdev);
    latencies(&mut e, lat, &dev, &peerdev);
    e.finish()
}

fn resource(e: &mut Exposition, st: &NodeStatus, l: &[(&str, &str)]) {
    let k = "rep_resource_role";
    e.family(k, Kind::Gauge, "Role of this node (1 for the one it has)");
    e.enumeration(k, l, &ROLES, &format!("{:?}", st.role));
    let k = "rep_resource_suspended";
    e.family(k, Kind::Gauge, "Boolean whether new writes are suspended (suspend-io, e.g. by the cluster agent on quorum loss)");
    e.sample(k, l, u64::from(st.suspended.is_some()));
    let k = "rep_resource_suspended_failing";
    e.family(
        k,
        Kind::Gauge,
        "Boolean whether suspended writes fail with EIO instead of waiting (suspend-io --fail)",
    );
    let failing = st
        .suspended
        .is_some_and(|m| format!("{m:?}").eq_ignore_ascii_case("fail"));
    e.sample(k, l, u64::from(failing));
    let k = "rep_resource_split_brain";
    e.family(
        k,
        Kind::Gauge,
        "Boolean whether a split brain was detected and not resolved",
    );
    e.sample(k, l, u64::from(st.split_brain));
}

fn connection(e: &mut Exposition, st: &NodeStatus, l: &[(&str, &str)]) {
    let k = "rep_connection_state";
    e.family(
        k,
        Kind::Gauge,
        "Connection state to the peer (1 for the one it is in)",
    );
    e.enumeration(k, l, &CONN_STATES, &st.connection);
    let k = "rep_connection_peer_role";
    e.family(
        k,
        Kind::Gauge,
        "The peer's role as last reported (Unknown while not connected)",
    );
    let peer_role = st
        .peer_role
        .map_or("Unknown".to_owned(), |r| format!("{r:?}"));
    e.enumeration(k, l, &PEER_ROLES, &peer_role);
    let k = "rep_connection_pending";
    e.family(
        k,
        Kind::Gauge,
        "Requests sent to the peer and not answered yet (pe)",
    );
    e.sample(k, l, st.counters.pe);
    let k = "rep_connection_unacked";
    e.family(
        k,
        Kind::Gauge,
        "Requests received from the peer and not acknowledged yet (ua)",
    );
    e.sample(k, l, st.counters.ua);
}

fn device(e: &mut Exposition, st: &NodeStatus, l: &[(&str, &str)]) {
    let k = "rep_device_state";
    e.family(k, Kind::Gauge, "Local disk state (1 for the one it is in)");
    e.enumeration(k, l, &DISK_STATES, &format!("{:?}", st.disk));
    let s = &st.stats;
    for (k, kind, help, v) in [
        (
            "rep_device_size_bytes",
            Kind::Gauge,
            "Device size in bytes",
            st.data_bytes,
        ),
        (
            "rep_device_read_bytes_total",
            Kind::Counter,
            "Bytes read from the local disk (dr)",
            s.read_bytes,
        ),
        (
            "rep_device_written_bytes_total",
            Kind::Counter,
            "Bytes written to the local disk (dw)",
            s.written_bytes,
        ),
        (
            "rep_device_alwrites_total",
            Kind::Counter,
            "Activity-log transactions written (al)",
            st.counters.al,
        ),
        (
            "rep_device_bmwrites_total",
            Kind::Counter,
            "Bitmap writes to the metadata (bm)",
            st.counters.bm,
        ),
        (
            "rep_device_almisses_total",
            Kind::Counter,
            "Application writes that waited for an activity-log transaction (their extent was cold)",
            st.al_misses,
        ),
        (
            "rep_device_upperpending",
            Kind::Gauge,
            "Application requests received and not answered yet (ap)",
            st.counters.ap,
        ),
        (
            "rep_device_lowerpending",
            Kind::Gauge,
            "Requests to the local disk not completed yet (lo)",
            st.counters.lo,
        ),
        (
            "rep_device_nbd_clients",
            Kind::Gauge,
            "NBD clients connected to the export",
            u64::try_from(st.nbd_clients).unwrap_or(u64::MAX),
        ),
    ] {
        e.family(k, kind, help);
        e.sample(k, l, v);
    }
}

fn peer_device(e: &mut Exposition, st: &NodeStatus, l: &[(&str, &str)]) {
    let k = "rep_peerdevice_state";
    e.family(
        k,
        Kind::Gauge,
        "The peer's disk state as last reported (1 for the one it is in)",
    );
    e.enumeration(k, l, &DISK_STATES, &format!("{:?}", st.peer_disk));
    let s = &st.stats;
    for (k, kind, help, v) in [
        (
            "rep_peerdevice_outofsync_bytes",
            Kind::Gauge,
            "Bytes out of sync with the peer, by the bitmap (oos)",
            st.out_of_sync_bytes,
        ),
        (
            "rep_peerdevice_sent_bytes_total",
            Kind::Counter,
            "Bytes sent to the peer, replication and resync (ns)",
            s.sent_bytes,
        ),
        (
            "rep_peerdevice_received_bytes_total",
            Kind::Counter,
            "Bytes received from the peer, replication and resync (nr)",
            s.received_bytes,
        ),
        (
            "rep_peerdevice_resync_sent_bytes_total",
            Kind::Counter,
            "Resync bytes sent to the peer",
            s.resync_sent_bytes,
        ),
        (
            "rep_peerdevice_resync_received_bytes_total",
            Kind::Counter,
            "Resync bytes received from the peer",
            s.resync_received_bytes,
        ),
        (
            "rep_peerdevice_verified_bytes_total",
            Kind::Counter,
            "Bytes compared by online verify",
            s.verified_bytes,
        ),
        (
            "rep_peerdevice_verify_outofsync_bytes_total",
            Kind::Counter,
            "Bytes online verify found different",
            s.verify_out_of_sync_bytes,
        ),
    ] {
        e.family(k, kind, help);
        e.sample(k, l, v);
    }
}

/// Resync and verify progress: zeros (and a ratio of 1) when neither runs.
fn sync(e: &mut Exposition, st: &NodeStatus, l: &[(&str, &str)]) {
    // The engine refreshes its progress every 50 ms: right after the end
    // it may still hold the last sample; the connection state is current.
    let running = matches!(
        st.connection.as_str(),
        "SyncSource" | "SyncTarget" | "VerifySource" | "VerifyTarget"
    );
    let p = st.sync.as_ref().filter(|_| running);
    let k = "rep_peerdevice_sync_active";
    e.family(
        k,
        Kind::Gauge,
        "Boolean whether a resync or an online verify runs, by kind",
    );
    for kind in ["resync", "verify"] {
        let mut lk = l.to_vec();
        lk.push(("kind", kind));
        e.sample(k, &lk, u64::from(p.is_some_and(|p| p.kind == kind)));
    }
    let k = "rep_peerdevice_sync_progress_ratio";
    e.family(
        k,
        Kind::Gauge,
        "Share of the running resync or verify done, 0 to 1 (1 when none runs)",
    );
    e.sample_f64(k, l, p.map_or(1.0, |p| (p.percent / 100.0).clamp(0.0, 1.0)));
    gauges(
        e,
        l,
        &[
            (
                "rep_peerdevice_sync_remaining_bytes",
                "Bytes the running resync or verify has left",
                p.map_or(0, |p| p.remaining_bytes),
            ),
            (
                "rep_peerdevice_sync_total_bytes",
                "Bytes the running resync or verify covers in all",
                p.map_or(0, |p| p.total_bytes),
            ),
            (
                "rep_peerdevice_sync_speed_bytes_per_second",
                "Recent speed of the running resync or verify",
                p.map_or(0, |p| p.bytes_per_s),
            ),
            (
                "rep_peerdevice_sync_eta_seconds",
                "Estimated time the running resync or verify has left (0 when unknown)",
                p.and_then(|p| p.eta_s).unwrap_or(0),
            ),
        ],
    );
}

/// One gauge family per `(name, help, value)`, each with the one sample
/// labelled `l`.
fn gauges(e: &mut Exposition, l: &[(&str, &str)], list: &[(&str, &str, u64)]) {
    for &(k, help, v) in list {
        e.family(k, Kind::Gauge, help);
        e.sample(k, l, v);
    }
}

/// How the last online verify ended: when, and what it found (zeros
/// before the first).
fn last_verify(e: &mut Exposition, st: &NodeStatus, l: &[(&str, &str)]) {
    let v = st.last_verify.as_ref();
    gauges(
        e,
        l,
        &[
            (
                "rep_peerdevice_last_verify_timestamp_seconds",
                "When the last online verify finished, Unix time (0: none yet)",
                v.map_or(0, |v| v.at),
            ),
            (
                "rep_peerdevice_last_verify_outofsync_bytes",
                "Bytes the last online verify found different",
                v.map_or(0, |v| v.out_of_sync_bytes),
            ),
            (
                "rep_peerdevice_last_verify_outofsync_ranges",
                "Ranges of adjacent 4 KiB blocks the last online verify found different",
                v.map_or(0, |v| v.range_count),
            ),
        ],
    );
}

fn latencies(e: &mut Exposition, lat: &Latencies, dev: &[(&str, &str)], peerdev: &[(&str, &str)]) {
    let k = "rep_device_request_seconds";
    e.family(
        k,
        Kind::Histogram,
        "Application requests: from arrival at repd to the answer",
    );
    for (op, h) in [
        ("read", &lat.request_read),
        ("write", &lat.request_write),
        ("flush", &lat.request_flush),
    ] {
        let mut l = dev.to_vec();
        l.push(("op", op));
        e.histogram(k, &l, &h.snapshot());
    }
    let k = "rep_device_local_completion_seconds";
    e.family(
        k,
        Kind::Histogram,
        "Application reads and writes: from arrival at repd to the local disk's completion",
    );
    for (op, h) in [("read", &lat.local_read), ("write", &lat.local_write)] {
        let mut l = dev.to_vec();
        l.push(("op", op));
        e.histogram(k, &l, &h.snapshot());
    }
    let k = "rep_peerdevice_completion_seconds";
    e.family(k, Kind::Histogram, "Replicated application writes: from arrival at repd to the peer's acknowledgement that it wrote them");
    let mut l = peerdev.to_vec();
    l.push(("op", "write"));
    e.histogram(k, &l, &lat.peer_write.snapshot());
    let k = "rep_device_stage_seconds";
    e.family(
        k,
        Kind::Histogram,
        "Time requests spend in each stage of repd, per kind (op) and stage; \
         all stages but `peer` follow one another (README: Latency breakdown)",
    );
    for row in lat.stages.totals() {
        let mut l = dev.to_vec();
        l.push(("op", row.kind.name()));
        l.push(("stage", row.stage.name()));
        e.stage_histogram(k, &l, &row.snap);
    }
}
