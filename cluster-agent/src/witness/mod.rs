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
//! - [`codec`]: the request and reply packets;
//! - [`core`]: [`WitnessCore`], the sans-IO decisions (the simulator and the
//!   process drive it alike);
//! - [`daemon`]: [`run`], the process around it, and its state file.

pub mod codec;
pub mod core;
pub mod daemon;
#[cfg(test)]
mod tests;

pub use self::codec::{
    decode_reply, decode_request, encode_reply, encode_request, Packet, Reply, Request, MAGIC,
    MAX_PACKET, VERSION,
};
pub use self::core::{Action, Input, Memory, NodeMemory, NodeView, WitnessCore};
pub use self::daemon::{
    default_state_file, load_memory, run, save_memory, socket_path, wall_ms, WitnessError,
    WitnessOptions,
};
