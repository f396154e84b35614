//! The heartbeat packet: one UDP datagram per path and keepalive.
//!
//! ```text
//! magic "RPHB" | version 1 | path | state | flags | role | disk | connected | 0
//! incarnation u64 | started-ms u64 | seq u64 | ack-incarnation u64 | ack-seq u64
//! resource-len u8 | resource | node-len u8 | node
//! HMAC-SHA256(auth-key, everything above) (32 bytes)
//! ```
//!
//! Flags: 1 eligible, 2 failback request, 4 ack present, 8 repd up,
//! 0x40 fence me (a stop failed here, `on-stop-failure = "fence"`),
//! 0x80 ping nodes lost.
//!
//! Integers are big-endian. The MAC covers the whole packet, so a packet
//! built with another key is dropped before anything in it is believed, and
//! the path index inside it ties it to the link it was sent on (a packet
//! recorded on one path and replayed on another fails the path check).
//! Decoding never panics: every malformed input is an error.

use hmac::Mac;
use replication_proto::wire::auth::{keyed, HmacSha256};
use replication_proto::wire::{DiskState, Role};

use crate::vocab::{Beat, BeatId, Incarnation, Seq, WireState};

pub const MAGIC: &[u8; 4] = b"RPHB";
pub const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// The largest packet a receiver reads (names are at most 255 bytes each).
pub const MAX_PACKET: usize = 4 + 4 + 4 + 40 + 2 + 255 + 255 + MAC_LEN + 8;

const FLAG_ELIGIBLE: u8 = 1;
const FLAG_FAILBACK: u8 = 2;
const FLAG_ACK: u8 = 4;
const FLAG_REPD: u8 = 8;
const FLAG_SUSPENDED: u8 = 16;
const FLAG_FENCE_ME: u8 = 0x40;
const FLAG_PING_LOST: u8 = 0x80;
const FLAG_OUTDATE_REQ: u8 = 32;

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("bad MAC (wrong auth-key, or tampered)")]
    BadMac,
    #[error("unsupported heartbeat version {0}")]
    Version(u8),
}

/// A packet that passed the MAC check: who sent it, for which resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub resource: String,
    pub node: String,
    pub beat: Beat,
}

/// HMAC-SHA256 keyed with `key`: the key derivation of the replication
/// link's handshake, shared so that the two cannot drift apart.
pub(crate) fn mac(key: &[u8]) -> HmacSha256 {
    keyed(key)
}

pub(crate) fn role_code(r: Option<Role>) -> u8 {
    match r {
        None => 0,
        Some(Role::Primary) => 1,
        Some(Role::Secondary) => 2,
    }
}

pub(crate) fn role_of(c: u8) -> Result<Option<Role>, DecodeError> {
    Ok(match c {
        0 => None,
        1 => Some(Role::Primary),
        2 => Some(Role::Secondary),
        _ => return Err(DecodeError::Malformed("role")),
    })
}

pub(crate) fn disk_code(d: Option<DiskState>) -> u8 {
    match d {
        None => 0,
        Some(DiskState::Diskless) => 1,
        Some(DiskState::Inconsistent) => 2,
        Some(DiskState::Outdated) => 3,
        Some(DiskState::DUnknown) => 4,
        Some(DiskState::Consistent) => 5,
        Some(DiskState::UpToDate) => 6,
    }
}

pub(crate) fn disk_of(c: u8) -> Result<Option<DiskState>, DecodeError> {
    Ok(match c {
        0 => None,
        1 => Some(DiskState::Diskless),
        2 => Some(DiskState::Inconsistent),
        3 => Some(DiskState::Outdated),
        4 => Some(DiskState::DUnknown),
        5 => Some(DiskState::Consistent),
        6 => Some(DiskState::UpToDate),
        _ => return Err(DecodeError::Malformed("disk")),
    })
}

/// Build the datagram for `beat`.
#[must_use]
pub fn encode(key: &[u8], resource: &str, node: &str, beat: &Beat) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.push(beat.path);
    v.push(beat.state as u8);
    let flags = flag_bits(&[
        (beat.eligible, FLAG_ELIGIBLE),
        (beat.failback_request, FLAG_FAILBACK),
        (beat.ack.is_some(), FLAG_ACK),
        (beat.repd_up, FLAG_REPD),
        (beat.suspended, FLAG_SUSPENDED),
        (beat.fence_me, FLAG_FENCE_ME),
        (beat.ping_lost, FLAG_PING_LOST),
        (beat.outdate_request, FLAG_OUTDATE_REQ),
    ]);
    v.push(flags);
    v.push(role_code(beat.role));
    v.push(disk_code(beat.disk));
    v.push(u8::from(beat.connected));
    v.push(0);
    let (ai, aseq) = beat.ack.map_or((0, 0), |a| (a.incarnation.0, a.seq.0));
    for x in [beat.incarnation.0, beat.started_ms, beat.seq.0, ai, aseq] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    push_name(&mut v, resource);
    push_name(&mut v, node);
    sign(key, v)
}

/// A flags byte: the bit of every pair whose condition holds.
pub(crate) fn flag_bits(bits: &[(bool, u8)]) -> u8 {
    bits.iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, bit)| flags | bit)
}

/// A name as one length byte and at most 255 bytes.
pub(crate) fn push_name(v: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(255);
    v.push(u8::try_from(n).unwrap_or(u8::MAX));
    v.extend_from_slice(b.get(..n).unwrap_or_default());
}

/// Append the HMAC of everything in `v`.
pub(crate) fn sign(key: &[u8], mut v: Vec<u8>) -> Vec<u8> {
    let mut m = mac(key);
    m.update(&v);
    v.extend_from_slice(&m.finalize().into_bytes());
    v
}

/// The body of a datagram whose trailing HMAC matches; `what` names the
/// packet kind when the magic or the minimum length `min_body` is wrong.
pub(crate) fn verified<'a>(
    key: &[u8],
    buf: &'a [u8],
    magic: &[u8; 4],
    min_body: usize,
    what: &'static str,
) -> Result<&'a [u8], DecodeError> {
    if buf.len() < min_body + MAC_LEN || buf.get(..4) != Some(magic.as_slice()) {
        return Err(DecodeError::Malformed(what));
    }
    let split = buf.len() - MAC_LEN;
    let (body, tag) = (
        buf.get(..split).unwrap_or_default(),
        buf.get(split..).unwrap_or_default(),
    );
    let mut m = mac(key);
    m.update(body);
    if m.verify_slice(tag).is_err() {
        return Err(DecodeError::BadMac);
    }
    Ok(body)
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }
    pub(crate) fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Malformed(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Malformed(what))?;
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.take(1, what)?
            .first()
            .copied()
            .ok_or(DecodeError::Malformed(what))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let s = self.take(8, what)?;
        let a: [u8; 8] = s.try_into().map_err(|_| DecodeError::Malformed(what))?;
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn name(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let n = self.u8(what)?;
        let s = self.take(usize::from(n), what)?;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError::Malformed(what))
    }
}

/// Check the MAC and decode. The MAC is checked before any field is
/// interpreted (only the header is looked at to reject non-heartbeats).
///
/// # Errors
/// [`DecodeError`] saying why the datagram is dropped.
pub fn decode(key: &[u8], buf: &[u8]) -> Result<Packet, DecodeError> {
    let body = verified(key, buf, MAGIC, 4 + 1, "not a heartbeat")?;
    let mut r = Reader { buf: body, pos: 4 };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let path = r.u8("path")?;
    let state = WireState::from_code(r.u8("state")?).ok_or(DecodeError::Malformed("state"))?;
    let flags = r.u8("flags")?;
    let role = role_of(r.u8("role")?)?;
    let disk = disk_of(r.u8("disk")?)?;
    let connected = match r.u8("connected")? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::Malformed("connected")),
    };
    let _reserved = r.u8("reserved")?;
    let incarnation = Incarnation(r.u64("incarnation")?);
    let started_ms = r.u64("started")?;
    let seq = Seq(r.u64("seq")?);
    let ai = Incarnation(r.u64("ack")?);
    let aseq = Seq(r.u64("ack")?);
    let resource = r.name("resource")?;
    let node = r.name("node")?;
    if r.pos != body.len() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok(Packet {
        resource,
        node,
        beat: Beat {
            path,
            incarnation,
            started_ms,
            seq,
            ack: (flags & FLAG_ACK != 0).then_some(BeatId {
                incarnation: ai,
                seq: aseq,
            }),
            state,
            eligible: flags & FLAG_ELIGIBLE != 0,
            failback_request: flags & FLAG_FAILBACK != 0,
            repd_up: flags & FLAG_REPD != 0,
            role,
            disk,
            connected,
            suspended: flags & FLAG_SUSPENDED != 0,
            ping_lost: flags & FLAG_PING_LOST != 0,
            fence_me: flags & FLAG_FENCE_ME != 0,
            outdate_request: flags & FLAG_OUTDATE_REQ != 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat() -> Beat {
        Beat {
            path: 1,
            incarnation: Incarnation(0xdead_beef),
            started_ms: 123,
            seq: Seq(42),
            ack: Some(BeatId {
                incarnation: Incarnation(7),
                seq: Seq(9),
            }),
            state: WireState::Holding,
            eligible: true,
            failback_request: false,
            repd_up: true,
            role: Some(Role::Primary),
            disk: Some(DiskState::UpToDate),
            connected: true,
            suspended: false,
            ping_lost: false,
            fence_me: true,
            outdate_request: true,
        }
    }

    #[test]
    fn round_trip() {
        let b = beat();
        let p = encode(b"key", "r0", "alpha", &b);
        let d = decode(b"key", &p).unwrap();
        assert_eq!(d.beat, b);
        assert_eq!(d.resource, "r0");
        assert_eq!(d.node, "alpha");
        let mut b2 = b.clone();
        b2.ack = None;
        b2.role = None;
        b2.disk = None;
        b2.state = WireState::Idle;
        b2.suspended = true;
        b2.ping_lost = true;
        b2.fence_me = false;
        let p = encode(b"key", "r0", "beta", &b2);
        assert_eq!(decode(b"key", &p).unwrap().beat, b2);
    }

    /// The bytes on the wire are the protocol: a change of a field's type
    /// must not change them (agents of two versions talk to each other).
    #[test]
    fn golden_bytes() {
        const GOLDEN: &str = "525048420101036d0106010000000000deadbeef000000000000007b\
                              000000000000002a0000000000000007000000000000000902723005\
                              616c706861fc9cd771f3b14f757b057770d6cad0f7c8a4fc4502b018\
                              ea4dd0979ccdd8deba";
        let p = encode(b"key", "r0", "alpha", &beat());
        let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN);
        assert_eq!(decode(b"key", &p).unwrap().beat, beat());
    }

    #[test]
    fn wrong_key_and_tampering_are_bad_mac() {
        let p = encode(b"key", "r0", "alpha", &beat());
        assert_eq!(decode(b"other", &p), Err(DecodeError::BadMac));
        for i in 4..p.len() {
            let mut q = p.clone();
            q[i] ^= 0x10;
            assert_eq!(decode(b"key", &q), Err(DecodeError::BadMac), "byte {i}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let good = encode(b"key", "r0", "alpha", &beat());
        for _ in 0..20_000 {
            let n = rng.gen_range(0..200);
            let mut v: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) && v.len() >= 4 {
                v[..4].copy_from_slice(MAGIC);
            }
            let _ = decode(b"key", &v);
            // Truncations and extensions of a good packet.
            let cut = rng.gen_range(0..good.len());
            assert!(decode(b"key", &good[..cut]).is_err());
        }
        // A validly signed packet with nonsense fields is malformed, not a panic.
        let mut body = good[..good.len() - 32].to_vec();
        body[6] = 99; // state
        let mut m = mac(b"key");
        m.update(&body);
        body.extend_from_slice(&m.finalize().into_bytes());
        assert_eq!(decode(b"key", &body), Err(DecodeError::Malformed("state")));
    }
}
