//! The witness's packets: a node's [`Request`] and the witness's [`Reply`],
//! HMAC-signed with the heartbeat key (the layout is in the [module
//! docs](super)). Decoding checks the MAC before it believes a field and
//! never panics.

use replication_proto::gen::Generations;
use replication_proto::wire::{DiskState, Role};

use crate::vocab::{Incarnation, RequestNo, WireState};
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
    pub incarnation: Incarnation,
    pub started_ms: u64,
    pub seq: RequestNo,
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
    pub witness_incarnation: Incarnation,
    /// The (incarnation, seq) of the request answered.
    pub echo: (Incarnation, RequestNo),
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
    let flags = wire::flag_bits(&[
        (r.want_vote, RQ_WANT_VOTE),
        (r.connected, RQ_CONNECTED),
        (r.repd_up, RQ_REPD),
    ]);
    v.push(flags);
    v.push(state_code(r.state));
    v.push(wire::role_code(r.role));
    v.push(wire::disk_code(r.disk));
    v.extend_from_slice(&[0, 0]);
    for x in [
        r.incarnation.0,
        r.started_ms,
        r.seq.0,
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
    let flags = wire::flag_bits(&[
        (r.member, RP_MEMBER),
        (r.vote, RP_VOTE),
        (r.peer_outdated, RP_PEER_OUTDATED),
    ]);
    v.push(flags);
    v.extend_from_slice(&[0, 0, 0, 0, 0]);
    for x in [
        r.witness_incarnation.0,
        r.echo.0 .0,
        r.echo.1 .0,
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
    let incarnation = Incarnation(r.u64("incarnation")?);
    let started_ms = r.u64("started")?;
    let seq = RequestNo(r.u64("seq")?);
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
    let witness_incarnation = Incarnation(r.u64("incarnation")?);
    let echo = (Incarnation(r.u64("echo")?), RequestNo(r.u64("echo")?));
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
