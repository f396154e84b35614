//! The witness: a third voter on a machine without a disk (`cluster-agent
//! --witness`). Each node's agent asks it every keepalive, over UDP with the
//! heartbeat key (HMAC-SHA256, per-node incarnation and sequence numbers
//! against replays), and the witness answers:
//!
//! - **member**: whether it counts the node as part of the majority (me +
//!   witness). It says no to a node it remembers Outdated (the node said so,
//!   or the other node was granted a takeover while this one was silent) or
//!   whose data generation is older than what the witness has seen of the
//!   other node — so a node that lost quorum cannot come back and win with
//!   stale data.
//! - **vote**: asked by a node that wants to take over from a silent peer;
//!   granted only when that peer has been silent *to the witness* for
//!   deadtime too, and the asker is a member. Granting marks the silent
//!   peer Outdated (remembered on disk) until it is back in sync.
//!
//! The answer echoes the request's incarnation and sequence number, so the
//! node knows when the question was asked (its lease starts then) and an
//! old answer replayed is worthless.
//!
//! ```text
//! request: "RPWQ" | version 1 | kind 1 | flags | state | role | disk | 0 0
//!          incarnation u64 | started-ms u64 | seq u64
//!          gen-current u64 | gen-bitmap u64 | gen-history u64 u64
//!          resource-len u8 | resource | node-len u8 | node | HMAC (32)
//! reply:   "RPWQ" | version 1 | kind 2 | flags | 0 0 0 0 0
//!          witness-incarnation u64 | echo-incarnation u64 | echo-seq u64
//!          peer-silent-ms u64 (u64::MAX: never heard)
//!          resource-len u8 | resource | node-len u8 | node
//!          reason-len u8 | reason | HMAC (32)
//! ```
//!
//! [`WitnessCore`] is the sans-IO decision part (the simulator drives it);
//! [`run`] is the process around it.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use replication_proto::gen::Generations;
use replication_proto::wire::{DiskState, Role};
use serde::{Deserialize, Serialize};

use crate::vocab::{Millis, WireState};
use crate::wire::{self, DecodeError};

pub const MAGIC: &[u8; 4] = b"RPWQ";
pub const VERSION: u8 = 1;
const KIND_REQUEST: u8 = 1;
const KIND_REPLY: u8 = 2;
pub const MAX_PACKET: usize = 1024;

const RQ_WANT_VOTE: u8 = 1;
const RQ_CONNECTED: u8 = 2;
const RQ_REPD: u8 = 4;

const RP_MEMBER: u8 = 1;
const RP_VOTE: u8 = 2;
const RP_PEER_OUTDATED: u8 = 4;

/// A node's question to the witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub incarnation: u64,
    pub started_ms: u64,
    pub seq: u64,
    /// The node wants to take over from its silent peer.
    pub want_vote: bool,
    pub state: WireState,
    pub repd_up: bool,
    pub role: Option<Role>,
    pub disk: Option<DiskState>,
    /// The node's repd is connected to the peer's.
    pub connected: bool,
    pub gens: Generations,
}

/// The witness's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub witness_incarnation: u64,
    /// The (incarnation, seq) of the request answered.
    pub echo: (u64, u64),
    pub member: bool,
    pub vote: bool,
    /// The witness remembers the asker's peer Outdated (or its data older):
    /// the asker may promote a merely Consistent disk.
    pub peer_outdated: bool,
    /// How long the witness has not heard the asker's peer (`None`: never).
    pub peer_silent_ms: Option<u64>,
    /// Why not a member, or why the vote was refused (empty when all is well).
    pub reason: String,
}

/// A decoded packet: who it is from (request) or for (reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T> {
    pub resource: String,
    pub node: String,
    pub body: T,
}

fn state_code(s: WireState) -> u8 {
    s as u8
}

/// Build a request datagram.
#[must_use]
pub fn encode_request(key: &[u8], resource: &str, node: &str, r: &Request) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.push(KIND_REQUEST);
    let mut flags = 0;
    if r.want_vote {
        flags |= RQ_WANT_VOTE;
    }
    if r.connected {
        flags |= RQ_CONNECTED;
    }
    if r.repd_up {
        flags |= RQ_REPD;
    }
    v.push(flags);
    v.push(state_code(r.state));
    v.push(wire::role_code(r.role));
    v.push(wire::disk_code(r.disk));
    v.extend_from_slice(&[0, 0]);
    for x in [
        r.incarnation,
        r.started_ms,
        r.seq,
        r.gens.current,
        r.gens.bitmap,
        r.gens.history[0],
        r.gens.history[1],
    ] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    wire::push_name(&mut v, resource);
    wire::push_name(&mut v, node);
    wire::sign(key, v)
}

/// Build a reply datagram for `node`.
#[must_use]
pub fn encode_reply(key: &[u8], resource: &str, node: &str, r: &Reply) -> Vec<u8> {
    let mut v = Vec::with_capacity(160);
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.push(KIND_REPLY);
    let mut flags = 0;
    if r.member {
        flags |= RP_MEMBER;
    }
    if r.vote {
        flags |= RP_VOTE;
    }
    if r.peer_outdated {
        flags |= RP_PEER_OUTDATED;
    }
    v.push(flags);
    v.extend_from_slice(&[0, 0, 0, 0, 0]);
    for x in [
        r.witness_incarnation,
        r.echo.0,
        r.echo.1,
        r.peer_silent_ms.unwrap_or(u64::MAX),
    ] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    wire::push_name(&mut v, resource);
    wire::push_name(&mut v, node);
    // A reason never needs more than one length byte: cut at a char boundary.
    let mut reason = r.reason.as_str();
    while reason.len() > 255 {
        let mut cut = 255;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = reason.get(..cut).unwrap_or_default();
    }
    wire::push_name(&mut v, reason);
    wire::sign(key, v)
}

/// The MAC-checked body after the header, and the kind.
fn open<'a>(key: &[u8], buf: &'a [u8]) -> Result<(u8, wire::Reader<'a>), DecodeError> {
    let body = wire::verified(key, buf, MAGIC, 6, "not a witness packet")?;
    let mut r = wire::Reader::new(body, 4);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind = r.u8("kind")?;
    Ok((kind, r))
}

/// Check the MAC and decode a request.
///
/// # Errors
/// Why the datagram is dropped.
pub fn decode_request(key: &[u8], buf: &[u8]) -> Result<Packet<Request>, DecodeError> {
    let (kind, mut r) = open(key, buf)?;
    if kind != KIND_REQUEST {
        return Err(DecodeError::Malformed("not a witness request"));
    }
    let flags = r.u8("flags")?;
    let state = WireState::from_code(r.u8("state")?).ok_or(DecodeError::Malformed("state"))?;
    let role = wire::role_of(r.u8("role")?)?;
    let disk = wire::disk_of(r.u8("disk")?)?;
    r.take(2, "reserved")?;
    let incarnation = r.u64("incarnation")?;
    let started_ms = r.u64("started")?;
    let seq = r.u64("seq")?;
    let gens = Generations {
        current: r.u64("gens")?,
        bitmap: r.u64("gens")?,
        history: [r.u64("gens")?, r.u64("gens")?],
    };
    let resource = r.name("resource")?;
    let node = r.name("node")?;
    if !r.at_end() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok(Packet {
        resource,
        node,
        body: Request {
            incarnation,
            started_ms,
            seq,
            want_vote: flags & RQ_WANT_VOTE != 0,
            state,
            repd_up: flags & RQ_REPD != 0,
            role,
            disk,
            connected: flags & RQ_CONNECTED != 0,
            gens,
        },
    })
}

/// Check the MAC and decode a reply.
///
/// # Errors
/// Why the datagram is dropped.
pub fn decode_reply(key: &[u8], buf: &[u8]) -> Result<Packet<Reply>, DecodeError> {
    let (kind, mut r) = open(key, buf)?;
    if kind != KIND_REPLY {
        return Err(DecodeError::Malformed("not a witness reply"));
    }
    let flags = r.u8("flags")?;
    r.take(5, "reserved")?;
    let witness_incarnation = r.u64("incarnation")?;
    let echo = (r.u64("echo")?, r.u64("echo")?);
    let silent = r.u64("silent")?;
    let resource = r.name("resource")?;
    let node = r.name("node")?;
    let reason = r.name("reason")?;
    if !r.at_end() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok(Packet {
        resource,
        node,
        body: Reply {
            witness_incarnation,
            echo,
            member: flags & RP_MEMBER != 0,
            vote: flags & RP_VOTE != 0,
            peer_outdated: flags & RP_PEER_OUTDATED != 0,
            peer_silent_ms: (silent != u64::MAX).then_some(silent),
            reason,
        },
    })
}

// ---------------------------------------------------------------------------
// The decisions.

/// What the witness remembers of one node across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMemory {
    /// The newest generations the node reported.
    pub gens: Generations,
    /// Why the node counts as Outdated (cleared when it reports UpToDate
    /// while connected to its peer, i.e. in sync again).
    pub outdated: Option<String>,
}

/// The witness's state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub nodes: BTreeMap<String, NodeMemory>,
}

#[derive(Debug, Clone, Default)]
struct Live {
    incarnation: Option<(u64, u64)>,
    max_seq: u64,
    last_heard: Option<Millis>,
    last: Option<Request>,
}

/// What the witness process shows in its log and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub name: String,
    pub last_heard_ms_ago: Option<u64>,
    pub state: Option<WireState>,
    pub disk: Option<DiskState>,
    pub outdated: Option<String>,
    pub current_gen: String,
}

/// The sans-IO witness.
#[derive(Debug)]
pub struct WitnessCore {
    nodes: [String; 2],
    deadtime: u64,
    start: Millis,
    incarnation: u64,
    memory: Memory,
    live: [Live; 2],
    /// Requests dropped as replays.
    pub replays: u64,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answer this.
    Reply(Reply),
    /// Dropped (replayed or old); nothing to answer.
    Dropped(&'static str),
}

impl WitnessCore {
    #[must_use]
    pub fn new(
        nodes: [String; 2],
        deadtime: u64,
        memory: Memory,
        incarnation: u64,
        now: Millis,
    ) -> Self {
        Self {
            nodes,
            deadtime,
            start: now,
            incarnation,
            memory,
            live: [Live::default(), Live::default()],
            replays: 0,
        }
    }

    #[must_use]
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    fn index(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == node)
    }

    /// How long node `i` has been silent (`None`: never heard since the start).
    fn silent(&self, i: usize, now: Millis) -> Option<u64> {
        self.live
            .get(i)
            .and_then(|l| l.last_heard)
            .map(|t| now.ms_since_or_zero(t))
    }

    /// Why node `i` is not part of a majority with the witness, if it is not.
    fn not_member(&self, i: usize) -> Option<String> {
        let me = self.nodes.get(i)?;
        let peer = self.nodes.get(1 - i)?;
        let mine = self.memory.nodes.get(me).cloned().unwrap_or_default();
        if let Some(why) = &mine.outdated {
            return Some(format!("the witness remembers {me} Outdated: {why}"));
        }
        let theirs = self.memory.nodes.get(peer)?;
        let cur = mine.gens.current;
        let moved_on = theirs.gens.current != cur
            && cur != 0
            && (theirs.gens.bitmap == cur || theirs.gens.history.contains(&cur));
        moved_on.then(|| {
            format!(
                "{me}'s data generation {cur:016X} is older than {peer}'s {:016X} (seen by the witness)",
                theirs.gens.current
            )
        })
    }

    /// Whether the witness counts `node` as a member (not remembered
    /// Outdated, data not older than the other node's).
    #[must_use]
    pub fn counts(&self, node: &str) -> bool {
        self.index(node)
            .is_some_and(|i| self.not_member(i).is_none())
    }

    /// Handle one authenticated request from `node`; `changed` tells the
    /// driver to persist [`WitnessCore::memory`] before answering.
    pub fn handle(&mut self, now: Millis, node: &str, req: &Request) -> (Outcome, bool) {
        let Some(i) = self.index(node) else {
            return (Outcome::Dropped("unknown node"), false);
        };
        let deadtime = self.deadtime;
        let Some(live) = self.live.get_mut(i) else {
            return (Outcome::Dropped("unknown node"), false);
        };
        match live.incarnation {
            Some((inc, _)) if inc == req.incarnation => {}
            Some((_, started)) => {
                let silent = live
                    .last_heard
                    .is_none_or(|t| now.ms_since_or_zero(t) >= deadtime);
                if req.started_ms <= started && !silent {
                    self.replays += 1;
                    return (Outcome::Dropped("an older incarnation"), false);
                }
                live.incarnation = Some((req.incarnation, req.started_ms));
                live.max_seq = 0;
            }
            None => live.incarnation = Some((req.incarnation, req.started_ms)),
        }
        if req.seq <= live.max_seq {
            self.replays += 1;
            return (Outcome::Dropped("replayed sequence number"), false);
        }
        live.max_seq = req.seq;
        live.last_heard = Some(now);
        live.last = Some(req.clone());

        let me = node.to_string();
        let peer = self.nodes.get(1 - i).cloned().unwrap_or_default();
        let mut changed = false;
        let mem = self.memory.nodes.entry(me.clone()).or_default();
        if req.repd_up && req.gens != Generations::default() && mem.gens != req.gens {
            mem.gens = req.gens;
            changed = true;
        }
        match req.disk {
            Some(DiskState::Outdated) if mem.outdated.is_none() => {
                mem.outdated = Some("its disk reported Outdated".into());
                changed = true;
            }
            Some(DiskState::UpToDate) if req.connected && mem.outdated.is_some() => {
                // UpToDate while connected: the replication handshake found
                // it in sync with its peer.
                mem.outdated = None;
                changed = true;
            }
            _ => {}
        }

        let not_member = self.not_member(i);
        let peer_silent = self.silent(1 - i, now);
        let mut vote = false;
        let mut reason = not_member.clone().unwrap_or_default();
        if req.want_vote && not_member.is_none() {
            // Never heard since the witness started counts from the start:
            // a restarted witness waits deadtime before it votes.
            let silent_for = peer_silent.unwrap_or_else(|| now.ms_since_or_zero(self.start));
            if silent_for >= self.deadtime {
                vote = true;
                let pm = self.memory.nodes.entry(peer.clone()).or_default();
                if pm.outdated.is_none() {
                    pm.outdated = Some(format!(
                        "{me} was granted the takeover while {peer} was silent to the witness"
                    ));
                    changed = true;
                }
                reason.clear();
            } else {
                reason = format!(
                    "the witness still hears {peer} (last {silent_for} ms ago, deadtime {} ms)",
                    self.deadtime
                );
            }
        }
        let member = not_member.is_none();
        let peer_outdated = self.not_member(1 - i).is_some();
        (
            Outcome::Reply(Reply {
                witness_incarnation: self.incarnation,
                echo: (req.incarnation, req.seq),
                member,
                vote,
                peer_outdated,
                peer_silent_ms: peer_silent,
                reason,
            }),
            changed,
        )
    }

    /// The witness's view of both nodes.
    #[must_use]
    pub fn view(&self, now: Millis) -> Vec<NodeView> {
        (0..2)
            .map(|i| {
                let name = self.nodes.get(i).cloned().unwrap_or_default();
                let mem = self.memory.nodes.get(&name).cloned().unwrap_or_default();
                let last = self.live.get(i).and_then(|l| l.last.clone());
                NodeView {
                    last_heard_ms_ago: self.silent(i, now),
                    state: last.as_ref().map(|r| r.state),
                    disk: last.as_ref().and_then(|r| r.disk),
                    outdated: mem.outdated,
                    current_gen: format!("{:016X}", mem.gens.current),
                    name,
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The process.

/// Why the witness could not start or keep its memory.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Control(String),
    #[error("cannot bind the witness socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the witness state file {path}: {source}")]
    ReadState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the witness state file {path} is damaged ({message}); move it away to start with an empty memory (every node is then trusted again)")]
    BadState { path: PathBuf, message: String },
    #[error("cannot write the witness state file {path}: {source}")]
    WriteState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Read the state file (missing: an empty memory).
///
/// # Errors
/// A damaged or unreadable file.
pub fn load_memory(path: &Path) -> Result<Memory, WitnessError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| WitnessError::BadState {
            path: path.to_owned(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Memory::default()),
        Err(source) => Err(WitnessError::ReadState {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Write the state file durably: a temporary file, fsync, rename, fsync of
/// the directory — a crash leaves the old or the new memory, never half.
///
/// # Errors
/// The write, sync or rename failed.
pub fn save_memory(path: &Path, m: &Memory) -> Result<(), WitnessError> {
    use std::io::Write;
    let err = |source| WitnessError::WriteState {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(m).unwrap_or_default();
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How the witness process is started.
#[derive(Debug, Clone)]
pub struct WitnessOptions {
    pub config: PathBuf,
    /// Where the status socket goes ([`socket_path`]).
    pub run_dir: PathBuf,
    /// Listen here instead of the configured `witness` address.
    pub listen: Option<SocketAddr>,
    pub state_file: Option<PathBuf>,
}

/// The status socket of a resource's witness: `<run-dir>/<resource>.witness.sock`
/// (one JSON request line, one JSON answer line, as the agents' sockets).
#[must_use]
pub fn socket_path(run_dir: &Path, resource: &str) -> PathBuf {
    run_dir.join(format!("{resource}.witness.sock"))
}

/// The default state file of a resource's witness.
#[must_use]
pub fn default_state_file(resource: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/rep/{resource}.witness.json"))
}

/// Run the witness in the foreground until killed.
///
/// # Errors
/// Why it could not start, or could not persist its memory (it stops then:
/// a witness that forgets what it promised must not answer).
pub fn run(opts: &WitnessOptions) -> Result<(), WitnessError> {
    let cfg = crate::config::WitnessConfig::load(&opts.config)
        .map_err(|e| WitnessError::Config(e.to_string()))?;
    let addr = match opts.listen.or(cfg.witness) {
        Some(a) => a,
        None => {
            return Err(WitnessError::Config(format!(
                "{}: [cluster] has no `witness = \"IP:PORT\"` (and no --listen given)",
                opts.config.display()
            )))
        }
    };
    let state_file = opts
        .state_file
        .clone()
        .unwrap_or_else(|| default_state_file(&cfg.resource));
    let memory = load_memory(&state_file)?;
    let sock = UdpSocket::bind(addr).map_err(|source| WitnessError::Bind { addr, source })?;
    let control_path = socket_path(&opts.run_dir, &cfg.resource);
    let (to_main, requests) = std::sync::mpsc::channel();
    crate::control::serve(&control_path, to_main).map_err(WitnessError::Control)?;
    let span = tracing::info_span!("witness", resource = %cfg.resource);
    let _g = span.enter();
    let clock = Instant::now();
    let now = || Millis::from_ms(u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX));
    let incarnation: u64 = rand::random();
    let deadtime = u64::try_from(cfg.deadtime.as_millis()).unwrap_or(u64::MAX);
    let mut core = WitnessCore::new(cfg.nodes.clone(), deadtime, memory, incarnation, now());
    for n in core.view(now()) {
        if let Some(why) = &n.outdated {
            tracing::info!(node = %n.name, "remembered Outdated: {why}");
        }
    }
    tracing::info!(listen = %addr, state = %state_file.display(), nodes = ?cfg.nodes, "witness running");
    println!(
        "cluster-agent witness: resource {} on {addr}, state {}",
        cfg.resource,
        state_file.display()
    );
    let mut buf = vec![0u8; MAX_PACKET];
    let mut dropped = 0u64;
    let mut last_votes: BTreeMap<String, (bool, String)> = BTreeMap::new();
    // Short, so that a status request waits at most this long when no
    // heartbeat request comes in.
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    loop {
        while let Ok(inc) = requests.try_recv() {
            let reply = match inc.request {
                crate::control::Request::Status => crate::control::Reply {
                    ok: true,
                    error: None,
                    status: Some(witness_status(&WitnessStatus {
                        resource: &cfg.resource,
                        listen: addr,
                        state_file: &state_file,
                        uptime_ms: now().as_ms(),
                        deadtime_ms: deadtime,
                        nodes: core.view(now()),
                        last_votes: &last_votes,
                        dropped,
                        replays: core.replays,
                    })),
                },
                crate::control::Request::Switchover => crate::control::Reply {
                    ok: false,
                    error: Some(
                        "this is the witness: it holds no resources; ask the holder's agent".into(),
                    ),
                    status: None,
                },
            };
            let _ = inc.reply.send(reply);
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::trace!("witness receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        let p = match decode_request(&cfg.auth_key, data) {
            Ok(p) if p.resource == cfg.resource => p,
            Ok(p) => {
                dropped += 1;
                if dropped <= 10 || dropped.is_power_of_two() {
                    tracing::warn!(%from, "dropped a request of resource {}", p.resource);
                }
                continue;
            }
            Err(e) => {
                dropped += 1;
                if dropped <= 10 || dropped.is_power_of_two() {
                    tracing::warn!(%from, dropped, "dropped a packet: {e}");
                }
                continue;
            }
        };
        let (outcome, changed) = core.handle(now(), &p.node, &p.body);
        if changed {
            // Persisted before the answer leaves: a vote the witness gave
            // survives its crash.
            save_memory(&state_file, core.memory())?;
            for v in core.view(now()) {
                tracing::info!(node = %v.name, gen = %v.current_gen, outdated = ?v.outdated, "witness memory updated");
            }
        }
        match outcome {
            Outcome::Reply(r) => {
                if p.body.want_vote && last_votes.get(&p.node).map(|v| v.0) != Some(r.vote) {
                    if r.vote {
                        tracing::warn!(node = %p.node, "vote granted: its peer has been silent to the witness for deadtime");
                    } else {
                        tracing::info!(node = %p.node, "vote refused: {}", r.reason);
                    }
                }
                if p.body.want_vote {
                    last_votes.insert(p.node.clone(), (r.vote, r.reason.clone()));
                }
                let out = encode_reply(&cfg.auth_key, &cfg.resource, &p.node, &r);
                if let Err(e) = sock.send_to(&out, from) {
                    tracing::debug!(%from, "reply not sent: {e}");
                }
            }
            Outcome::Dropped(why) => {
                dropped += 1;
                if dropped <= 10 || dropped.is_power_of_two() {
                    tracing::warn!(%from, node = %p.node, "dropped a request: {why}");
                }
            }
        }
    }
}

/// What `cluster-agent --witness status` shows.
struct WitnessStatus<'a> {
    resource: &'a str,
    listen: SocketAddr,
    state_file: &'a Path,
    uptime_ms: u64,
    deadtime_ms: u64,
    nodes: Vec<NodeView>,
    last_votes: &'a BTreeMap<String, (bool, String)>,
    dropped: u64,
    replays: u64,
}

fn witness_status(w: &WitnessStatus<'_>) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = w
        .nodes
        .iter()
        .map(|n| {
            let mut v = serde_json::to_value(n).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "last_vote".into(),
                    w.last_votes
                        .get(&n.name)
                        .map_or(serde_json::Value::Null, |(granted, reason)| {
                            serde_json::json!({ "granted": granted, "reason": reason })
                        }),
                );
            }
            v
        })
        .collect();
    serde_json::json!({
        "role": "witness",
        "resource": w.resource,
        "listen": w.listen.to_string(),
        "state_file": w.state_file.display().to_string(),
        "uptime_ms": w.uptime_ms,
        "unix_ms": wall_ms(),
        "deadtime_ms": w.deadtime_ms,
        "nodes": nodes,
        "dropped_packets": w.dropped,
        "replays": w.replays,
    })
}

/// The wall clock in ms since the epoch (for incarnation ordering).
#[must_use]
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(seq: u64, cur: u64) -> Request {
        Request {
            incarnation: 7,
            started_ms: 100,
            seq,
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
            1,
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
            witness_incarnation: 9,
            echo: (7, 3),
            member: true,
            vote: false,
            peer_outdated: true,
            peer_silent_ms: None,
            reason: "é".repeat(300),
        };
        let p = encode_reply(b"k", "r0", "beta", &rep);
        let d = decode_reply(b"k", &p).unwrap();
        assert_eq!(d.body.echo, (7, 3));
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

    #[test]
    fn replays_are_dropped() {
        let mut w = core();
        reply(w.handle(Millis(10), "alpha", &req(5, 0x10)).0);
        assert!(matches!(
            w.handle(Millis(11), "alpha", &req(5, 0x10)).0,
            Outcome::Dropped(_)
        ));
        assert!(matches!(
            w.handle(Millis(11), "alpha", &req(4, 0x10)).0,
            Outcome::Dropped(_)
        ));
        // An older incarnation while the current one talks: a replay.
        let mut old = req(99, 0x10);
        old.incarnation = 6;
        old.started_ms = 50;
        assert!(matches!(
            w.handle(Millis(12), "alpha", &old).0,
            Outcome::Dropped(_)
        ));
        assert!(matches!(
            w.handle(Millis(12), "gamma", &req(1, 1)).0,
            Outcome::Dropped(_)
        ));
        assert_eq!(w.replays, 3);
    }

    #[test]
    fn votes_only_when_the_peer_is_silent_and_marks_it_outdated() {
        let mut w = core();
        reply(w.handle(Millis(10), "alpha", &req(1, 0x10)).0);
        let mut b = req(1, 0x10);
        b.incarnation = 8;
        b.want_vote = true;
        let r = reply(w.handle(Millis(500), "beta", &b).0);
        assert!(r.member && !r.vote, "{r:?}");
        assert!(r.reason.contains("still hears alpha"), "{}", r.reason);
        b.seq = 2;
        let (o, changed) = w.handle(Millis(1010), "beta", &b);
        let r = reply(o);
        assert!(r.vote && changed, "{r:?}");
        b.seq = 3;
        assert!(reply(w.handle(Millis(1020), "beta", &b).0).peer_outdated);
        // alpha comes back: remembered Outdated, not a member, no vote.
        let mut a = req(2, 0x10);
        a.want_vote = true;
        a.connected = false;
        let r = reply(w.handle(Millis(1100), "alpha", &a).0);
        assert!(!r.member && !r.vote, "{r:?}");
        assert!(r.reason.contains("Outdated"), "{}", r.reason);
        // Back in sync (UpToDate while connected): trusted again.
        let mut a = req(3, 0x20);
        a.connected = true;
        let r = reply(w.handle(Millis(1200), "alpha", &a).0);
        assert!(r.member, "{r:?}");
    }

    #[test]
    fn a_node_with_older_generations_is_refused() {
        let mut w = core();
        // beta wrote on alone: its bitmap generation is alpha's current.
        let mut b = req(1, 0x30);
        b.incarnation = 8;
        b.gens.bitmap = 0x10;
        reply(w.handle(Millis(10), "beta", &b).0);
        let mut a = req(1, 0x10);
        a.want_vote = true;
        a.connected = false;
        let r = reply(w.handle(Millis(5000), "alpha", &a).0);
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
        assert!(!reply(w.handle(Millis(500), "beta", &b).0).vote);
        b.seq = 2;
        let (o, changed) = w.handle(Millis(1000), "beta", &b);
        assert!(reply(o).vote && changed);
        save_memory(&f, w.memory()).unwrap();
        let m = load_memory(&f).unwrap();
        assert!(m.nodes["alpha"].outdated.is_some());
        let mut w2 = WitnessCore::new(["alpha".into(), "beta".into()], 1000, m, 2, Millis::ZERO);
        let mut a = req(1, 0x10);
        a.incarnation = 9;
        a.connected = false;
        let r = reply(w2.handle(Millis(10), "alpha", &a).0);
        assert!(!r.member, "{r:?}");
        std::fs::write(&f, "{ nonsense").unwrap();
        let e = load_memory(&f).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        assert_eq!(
            load_memory(&dir.path().join("none.json")).unwrap(),
            Memory::default()
        );
    }
}
