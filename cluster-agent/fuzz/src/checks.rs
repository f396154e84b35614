//! What each fuzz target of `cluster-agent/fuzz` checks, one function per
//! target. The cargo-fuzz binaries (`fuzz_targets/`) call these, and the
//! regression test `cluster-agent/tests/fuzz_regressions.rs` includes this
//! file and replays every saved input (`fuzz/regressions/TARGET/`) through
//! the same functions under `cargo test`.
//!
//! Every function feeds the daemon's real decoding and validation code;
//! a panic, a failed assertion, a hang or an allocation over libFuzzer's
//! `-rss_limit_mb` is a finding.

use std::path::Path;

use cluster_agent::config::AgentConfig;
use cluster_agent::vocab::{Incarnation, RequestNo, WireState};
use cluster_agent::wire;
use cluster_agent::witness::codec::{self, Reply, Request};
use cluster_agent::witness::{Action, Input, Memory, NodeMemory, WitnessCore};
use hmac::Mac;
use rep_control::config::Config;
use replication_proto::gen::Generations;
use replication_proto::time::Millis;
use replication_proto::wire::auth::keyed;
use replication_proto::wire::{DiskState, Role};

/// The auth key every target signs with (the MAC is not what is fuzzed).
const KEY: &[u8] = b"fuzz-auth-key";
/// The resource file's largest size that the targets try (a real one is a
/// few KiB; libFuzzer's default -max_len is far below this anyway).
const RESOURCE_FILE_MAX_BYTES: usize = 64 * 1024;
/// Requests one `witness_core` input may carry.
const WITNESS_REQUESTS_MAX: usize = 64;

/// `body` followed by its HMAC under [`KEY`], as a sender builds a datagram.
fn signed(body: &[u8]) -> Vec<u8> {
    let mut m = keyed(KEY);
    m.update(body);
    let tag = m.finalize().into_bytes();
    let mut v = body.to_vec();
    v.extend_from_slice(&tag);
    v
}

/// The datagram an input stands for: the first byte odd means "sign the
/// rest", so the MAC passes and the field parser is reached; even means
/// "the rest as received". Cut at `max_len` bytes as the receiving
/// socket's buffer would.
fn datagram(data: &[u8], max_len: usize) -> Option<Vec<u8>> {
    let (&mode, rest) = data.split_first()?;
    let mut d = if mode & 1 == 1 {
        signed(rest)
    } else {
        rest.to_vec()
    };
    d.truncate(max_len);
    Some(d)
}

/// The heartbeat packet: whatever decodes re-encodes to a packet that
/// decodes to the same thing.
pub fn heartbeat(data: &[u8]) {
    let Some(d) = datagram(data, wire::MAX_PACKET) else {
        return;
    };
    match wire::decode(KEY, &d) {
        Ok(p) => {
            let again = wire::encode(KEY, &p.resource, &p.node, &p.beat);
            assert!(again.len() <= wire::MAX_PACKET, "encoded beyond MAX_PACKET");
            assert_eq!(wire::decode(KEY, &again).as_ref(), Ok(&p));
        }
        Err(e) => drop(e.to_string()),
    }
}

/// The witness's two packets, the same round trip as [`heartbeat`].
pub fn witness_packets(data: &[u8]) {
    let Some(d) = datagram(data, codec::MAX_PACKET) else {
        return;
    };
    match codec::decode_request(KEY, &d) {
        Ok(p) => {
            let again = codec::encode_request(KEY, &p.resource, &p.node, &p.body);
            assert_eq!(codec::decode_request(KEY, &again).as_ref(), Ok(&p));
        }
        Err(e) => drop(e.to_string()),
    }
    match codec::decode_reply(KEY, &d) {
        Ok(p) => {
            let again = codec::encode_reply(KEY, &p.resource, &p.node, &p.body);
            assert!(again.len() <= codec::MAX_PACKET, "reply beyond MAX_PACKET");
            assert_eq!(codec::decode_reply(KEY, &again).as_ref(), Ok(&p));
        }
        Err(e) => drop(e.to_string()),
    }
}

/// Reads fields of a structured request out of the fuzzer's bytes.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

/// One request from the fuzzer's bytes: a structured one (node picked from
/// the two configured names plus a stranger, fields from the bytes, encoded
/// by the node's encoder) or a raw signed body. Both go through
/// `decode_request`, as the witness daemon does.
fn next_request(c: &mut Cursor<'_>) -> Option<Vec<u8>> {
    let kind = c.u8()?;
    if kind & 1 == 1 {
        let len = usize::from(c.u8()?);
        return Some(signed(c.bytes(len)?));
    }
    let node = *["alpha", "beta", "gamma"].get(usize::from(kind >> 1) % 3)?;
    let flags = c.u8()?;
    let req = Request {
        incarnation: Incarnation(c.u64()? % 4),
        started_ms: c.u64()? % 4,
        seq: RequestNo(c.u64()? % 16),
        want_vote: flags & 1 != 0,
        state: WireState::from_code(c.u8()? % 5)?,
        repd_up: flags & 2 != 0,
        role: *[None, Some(Role::Primary), Some(Role::Secondary)]
            .get(usize::from(flags >> 2) % 3)?,
        disk: *[
            None,
            Some(DiskState::Diskless),
            Some(DiskState::Inconsistent),
            Some(DiskState::Outdated),
            Some(DiskState::UpToDate),
        ]
        .get(usize::from(flags >> 4) % 5)?,
        connected: flags & 0x80 != 0,
        gens: Generations {
            current: c.u64()? % 8,
            bitmap: c.u64()? % 8,
            history: [c.u64()? % 8, c.u64()? % 8],
        },
    };
    Some(codec::encode_request(KEY, "r0", node, &req))
}

/// The witness: a run of requests, each after a delay from the input, fed
/// to [`WitnessCore`] the way its daemon does. Checks the core's contract:
/// at most one answer per request, a changed memory handed out to persist
/// before the answer that depends on it, only configured nodes remembered.
pub fn witness_core(data: &[u8]) {
    let Some((&deadtime, rest)) = data.split_first() else {
        return;
    };
    let deadtime_ms = 100 + u64::from(deadtime) * 20;
    let nodes = ["alpha".to_owned(), "beta".to_owned()];
    let mut now = Millis::from_ms(1_000);
    let mut core = WitnessCore::new(nodes, deadtime_ms, Memory::default(), Incarnation(7), now);
    let mut c = Cursor(rest);
    for _ in 0..WITNESS_REQUESTS_MAX {
        let Some(delay) = c.u8() else { break };
        let Some(d) = next_request(&mut c) else { break };
        now = now.plus_ms(u64::from(delay) * 10);
        let Ok(p) = codec::decode_request(KEY, &d) else {
            continue;
        };
        let before = meaningful(core.memory());
        core.handle(
            now,
            Input::Request {
                node: p.node.clone(),
                req: p.body,
            },
        );
        let (mut replies, mut persisted) = (0, false);
        while let Some(a) = core.poll_action() {
            match a {
                Action::Persist(m) => {
                    assert_eq!(replies, 0, "persist after the answer that depends on it");
                    assert_eq!(&m, core.memory());
                    persisted = true;
                }
                Action::Reply { node, reply } => {
                    assert_eq!(node, p.node);
                    replies += 1;
                    check_reply(&reply);
                }
                Action::Dropped { node, .. } => assert_eq!(node, p.node),
            }
        }
        assert!(replies <= 1, "{replies} answers to one request");
        assert!(
            persisted || meaningful(core.memory()) == before,
            "memory changed unpersisted"
        );
        assert!(core
            .memory()
            .nodes
            .keys()
            .all(|n| n == "alpha" || n == "beta"));
        drop(core.view(now));
    }
}

/// The memory as a restarted witness would read it back: the core reads an
/// absent node as `NodeMemory::default()`, so a default entry it adds in
/// memory (the first request of a node that reports nothing to keep) need
/// not be persisted. (An early run of this target flagged exactly that.)
fn meaningful(m: &Memory) -> Memory {
    let mut m = m.clone();
    m.nodes.retain(|_, n| *n != NodeMemory::default());
    m
}

/// An answer the witness sends must fit its packet and re-decode.
fn check_reply(reply: &Reply) {
    let d = codec::encode_reply(KEY, "r0", "alpha", reply);
    assert!(d.len() <= codec::MAX_PACKET, "reply of {} bytes", d.len());
    assert_eq!(
        codec::decode_reply(KEY, &d).map(|p| p.body).as_ref(),
        Ok(reply)
    );
}

/// The resource file: repd's validation and the agent's on top of it.
/// Whatever validates is written back (`repctl dump`) and must load to the
/// same configuration.
pub fn resource_file(data: &[u8]) {
    if data.len() > RESOURCE_FILE_MAX_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent/fuzz/r0.toml");
    match Config::from_str_named(text, path) {
        Ok(cfg) => {
            let dumped = cfg.to_toml().expect("a loaded config dumps");
            let again = Config::from_str_named(&dumped, path).map_err(|e| e.to_string());
            assert_eq!(
                again,
                Ok(cfg),
                "the dump loads to another config:\n{dumped}"
            );
        }
        Err(e) => drop(e.to_string()),
    }
    match AgentConfig::from_str_named(text, path, None) {
        Ok(_) => {}
        Err(e) => drop(e.to_string()),
    }
}
