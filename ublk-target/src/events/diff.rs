//! What the event stream reports about a node ([`Snapshot`], taken after
//! each engine turn) and the events between two snapshots: one `change`
//! line per object whose fields changed, `call` lines for what happened
//! once (a verify finished with the ranges it found out of sync, a split
//! brain was found, the size changed), `create`/`change`/`destroy` lines
//! for the errors status keeps.

use rep_control::events::{Event, EventKind};
use rep_control::protocol::SyncProgress;
use replication_proto::machine::{ConnState, ErrorNote, Status, SuspendMode, VerifyNote};
use replication_proto::wire::{DiskState, Role};
use serde_json::Value;

/// The names every line carries: the resource and the peer (`conn-name`).
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) resource: String,
    pub(crate) peer: String,
}

/// What events2 reports about a node, and what the diff needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) role: Role,
    pub(crate) suspended: Option<SuspendMode>,
    pub(crate) resume: Option<String>,
    pub(crate) connection: ConnState,
    pub(crate) peer_role: Option<Role>,
    pub(crate) split_brain: bool,
    pub(crate) disk: DiskState,
    pub(crate) peer_disk: DiskState,
    /// Percent done of the resync or verify under way.
    pub(crate) done: Option<f64>,
    /// `repctl pause-sync` holds the resync here (events2's
    /// `resync-suspended:user`).
    pub(crate) sync_paused: bool,
    pub(crate) verified_bytes: u64,
    pub(crate) verify_out_of_sync_bytes: u64,
    /// The last verify's result (its ranges go out once, as it ends).
    pub(crate) last_verify: Option<VerifyNote>,
    /// The size in use (`repctl resize`, a smaller peer).
    pub(crate) data_bytes: u64,
    pub(crate) errors: Vec<ErrorNote>,
    /// The newest handlers that ended: (sequence number, handler, exit).
    pub(crate) handlers: Vec<HandlerEnded>,
}

/// A `[handlers]` command that ended: its sequence number (counted by the
/// engine from 1), name and exit ("0", "3", "killed", "timed-out").
pub(crate) type HandlerEnded = (u64, &'static str, String);

impl Snapshot {
    pub(crate) fn of(
        st: &Status,
        sync: Option<&SyncProgress>,
        handlers: Vec<HandlerEnded>,
    ) -> Self {
        Self {
            role: st.role,
            suspended: st.suspended,
            resume: st.resume.clone(),
            connection: st.connection,
            peer_role: st.peer_role,
            split_brain: st.split_brain,
            disk: st.disk,
            peer_disk: st.peer_disk,
            // The tracker notices a finished resync a moment after the
            // state machine: a percent belongs to a resync or verify state.
            done: sync
                .filter(|_| syncing(st.connection) || verifying(st.connection))
                .map(|s| s.percent),
            sync_paused: st.sync_paused_by_user,
            verified_bytes: st.stats.traffic.verified_bytes,
            verify_out_of_sync_bytes: st.stats.traffic.verify_out_of_sync_bytes,
            last_verify: st.last_verify.clone(),
            data_bytes: st.data_bytes,
            errors: st.errors.clone(),
            handlers,
        }
    }

    /// A Secondary, connected, both UpToDate, nothing wrong (for tests).
    #[cfg(test)]
    pub(crate) fn healthy() -> Self {
        Self {
            role: Role::Secondary,
            suspended: None,
            resume: None,
            connection: ConnState::Connected,
            peer_role: Some(Role::Secondary),
            split_brain: false,
            disk: DiskState::UpToDate,
            peer_disk: DiskState::UpToDate,
            done: None,
            sync_paused: false,
            verified_bytes: 0,
            verify_out_of_sync_bytes: 0,
            last_verify: None,
            data_bytes: 64 << 20,
            errors: Vec::new(),
            handlers: Vec::new(),
        }
    }

    /// Whole percent done, for throttling progress lines.
    pub(crate) fn done_whole(&self) -> Option<u64> {
        // Percent is 0..=100: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.done.map(|p| p.floor().max(0.0) as u64)
    }

    /// The `exists` lines of this state, in events2's order: resource,
    /// connection, device, peer-device, then the errors kept.
    pub(crate) fn exists(&self, n: &Names) -> Vec<Event> {
        let at = |object: &str| Event::now(EventKind::Exists, object, &n.resource);
        let mut resource = at("resource")
            .with("role", role(Some(self.role)))
            .with("suspended", suspended(self.suspended));
        if let Some(r) = &self.resume {
            resource = resource.with("resume", r.as_str());
        }
        let mut pd = at("peer-device")
            .with("conn-name", n.peer.as_str())
            .with("replication", replication(self.connection))
            .with("peer-disk", format!("{:?}", self.peer_disk));
        if let Some(d) = self.done {
            pd = pd.with("done", d);
        }
        // Named only while paused: the lines of a node nobody paused stay
        // as they were.
        if self.sync_paused {
            pd = pd.with("resync-suspended", "user");
        }
        let mut out = vec![
            resource,
            at("connection")
                .with("conn-name", n.peer.as_str())
                .with("connection", format!("{:?}", self.connection))
                .with("role", role(self.peer_role))
                .with("split-brain", self.split_brain),
            at("device").with("disk", format!("{:?}", self.disk)),
            pd,
        ];
        out.extend(
            self.errors
                .iter()
                .map(|e| error_line(EventKind::Exists, e, n)),
        );
        out
    }

    /// The `destroy` lines when repd stops: every object goes away.
    pub(crate) fn destroy(&self, n: &Names) -> Vec<Event> {
        let at = |object: &str| Event::now(EventKind::Destroy, object, &n.resource);
        let peer = || n.peer.as_str();
        vec![
            at("peer-device").with("conn-name", peer()),
            at("device"),
            at("connection").with("conn-name", peer()),
            at("resource"),
        ]
    }
}

/// The events from `prev` to `next`. `progress`: a peer-device line may
/// say how far the resync got even if nothing else changed (the caller
/// throttles it).
pub(crate) fn changes(prev: &Snapshot, next: &Snapshot, n: &Names, progress: bool) -> Vec<Event> {
    let mut out = Vec::new();
    let change = |object: &str| Event::now(EventKind::Change, object, &n.resource);
    let mut res = change("resource");
    if prev.role != next.role {
        res = res.with("role", role(Some(next.role)));
    }
    if prev.suspended != next.suspended {
        res = res.with("suspended", suspended(next.suspended));
    }
    if prev.resume != next.resume {
        res = res.with(
            "resume",
            next.resume.clone().map_or(Value::Null, Value::from),
        );
    }
    push_if_any(&mut out, res);
    let mut conn = change("connection");
    if prev.connection != next.connection {
        conn = conn.with("connection", format!("{:?}", next.connection));
    }
    if prev.peer_role != next.peer_role {
        conn = conn.with("role", role(next.peer_role));
    }
    if prev.split_brain != next.split_brain {
        conn = conn.with("split-brain", next.split_brain);
    }
    push_if_any(&mut out, conn.with_first("conn-name", &n.peer));
    if prev.disk != next.disk {
        out.push(change("device").with("disk", format!("{:?}", next.disk)));
    }
    out.extend(peer_device(prev, next, n, progress));
    out.extend(happenings(prev, next, n));
    out.extend(errors(prev, next, n));
    out
}

/// The peer-device line: replication state, peer disk, progress.
fn peer_device(prev: &Snapshot, next: &Snapshot, n: &Names, progress: bool) -> Option<Event> {
    let mut pd = Event::now(EventKind::Change, "peer-device", &n.resource);
    let (was, is) = (replication(prev.connection), replication(next.connection));
    if was != is {
        pd = pd.with("replication", is);
    }
    if prev.peer_disk != next.peer_disk {
        pd = pd.with("peer-disk", format!("{:?}", next.peer_disk));
    }
    if prev.sync_paused != next.sync_paused {
        pd = pd.with(
            "resync-suspended",
            if next.sync_paused { "user" } else { "no" },
        );
    }
    let moved = !pd.fields.is_empty();
    match next.done {
        Some(d) if moved || (progress && prev.done != next.done) => pd = pd.with("done", d),
        _ => {}
    }
    (!pd.fields.is_empty()).then(|| pd.with_first("conn-name", &n.peer))
}

/// What happened once: a verify ended (a line per range it found out of
/// sync, then its result), a split brain was found, the size changed.
fn happenings(prev: &Snapshot, next: &Snapshot, n: &Names) -> Vec<Event> {
    let call = |object: &str| {
        Event::now(EventKind::Call, object, &n.resource).with("conn-name", n.peer.as_str())
    };
    let mut out = Vec::new();
    if verifying(prev.connection) && !verifying(next.connection) {
        let mut done = call("verify")
            .with("verified", next.verified_bytes)
            .with("out-of-sync", next.verify_out_of_sync_bytes);
        // A new result: the verify ran to its end (a broken one leaves the
        // last result as it was).
        if let Some(v) = next
            .last_verify
            .as_ref()
            .filter(|_| prev.last_verify != next.last_verify)
        {
            out.extend(v.ranges.iter().map(|r| {
                call("out-of-sync")
                    .with("start-bytes", r.start)
                    .with("len-bytes", r.len_bytes)
            }));
            done = done.with("ranges", v.range_count);
        }
        out.push(done);
    }
    if prev.data_bytes != next.data_bytes {
        out.push(
            Event::now(EventKind::Call, "resize", &n.resource)
                .with("old-size-bytes", prev.data_bytes)
                .with("new-size-bytes", next.data_bytes),
        );
    }
    if !prev.split_brain && next.split_brain {
        out.push(call("split-brain"));
    }
    let seen = prev.handlers.iter().map(|h| h.0).max().unwrap_or(0);
    for (_, handler, exit) in next.handlers.iter().filter(|h| h.0 > seen) {
        out.push(
            call("handler")
                .with("handler", *handler)
                .with("exit", exit.as_str()),
        );
    }
    out
}

/// Errors that appeared, came again or ended, and those forgotten.
fn errors(prev: &Snapshot, next: &Snapshot, n: &Names) -> Vec<Event> {
    let mut out = Vec::new();
    for e in &next.errors {
        match prev.errors.iter().find(|p| p.kind == e.kind) {
            None => out.push(error_line(EventKind::Create, e, n)),
            Some(p) if p != e => out.push(error_line(EventKind::Change, e, n)),
            Some(_) => {}
        }
    }
    for p in &prev.errors {
        if !next.errors.iter().any(|e| e.kind == p.kind) {
            out.push(
                Event::now(EventKind::Destroy, "error", &n.resource).with("error", p.kind.name()),
            );
        }
    }
    out
}

fn error_line(kind: EventKind, e: &ErrorNote, n: &Names) -> Event {
    Event::now(kind, "error", &n.resource)
        .with("error", e.kind.name())
        .with("message", e.message.as_str())
        .with("count", e.count)
        .with("ended", e.ended)
}

fn push_if_any(out: &mut Vec<Event>, e: Event) {
    if !e.fields.is_empty() {
        out.push(e);
    }
}

/// Identity fields go in once something changed.
trait WithFirst {
    fn with_first(self, key: &str, value: &str) -> Self;
}

impl WithFirst for Event {
    fn with_first(self, key: &str, value: &str) -> Self {
        if self.fields.is_empty() {
            self
        } else {
            self.with(key, value)
        }
    }
}

fn role(r: Option<Role>) -> String {
    r.map_or_else(|| "Unknown".into(), |r| format!("{r:?}"))
}

fn suspended(s: Option<SuspendMode>) -> &'static str {
    match s {
        None => "no",
        Some(SuspendMode::Hold) => "hold",
        Some(SuspendMode::Fail) => "fail",
    }
}

fn syncing(c: ConnState) -> bool {
    matches!(c, ConnState::SyncSource | ConnState::SyncTarget)
}

fn verifying(c: ConnState) -> bool {
    matches!(c, ConnState::VerifySource | ConnState::VerifyTarget)
}

/// events2's `replication` of the peer device: `Off` without a
/// connection, `Established` when connected and idle, else the resync or
/// verify state (the connection state's name).
fn replication(c: ConnState) -> String {
    match c {
        ConnState::StandAlone
        | ConnState::Connecting
        | ConnState::Handshake
        | ConnState::Disconnecting => "Off".into(),
        ConnState::Connected => "Established".into(),
        other => format!("{other:?}"),
    }
}
