//! `cluster-agent`: the HA layer of the replicated block device — heartbeat
//! from Linux-HA done right. One agent per node watches its peer over
//! several UDP heartbeat paths (HMAC-SHA256 authenticated, replay-protected),
//! decides who holds the resources (the device's Primary role and the chain
//! on top of it: filesystem, service address, services), fences a dead peer
//! before taking over, and tells why in `cluster-agent status`.
//!
//! - [`vocab`]: the shared vocabulary (time, heartbeat content, states), a leaf module;
//! - [`config`]: the `[cluster]` table of the resource file;
//! - [`core`]: the sans-IO decision core (events in, actions out);
//! - [`wire`]: the heartbeat packet;
//! - `sim`: the seeded simulator of two agents (test tooling, built only
//!   with the `sim` feature; its binary is `agentsim`);
//! - [`witness`]: the third voter (`cluster-agent --witness`): its packets,
//!   its sans-IO core and its process;
//! - [`import`]: `cluster-agent import-heartbeat`, heartbeat's ha.cf,
//!   authkeys and haresources into the `[cluster]` table;
//! - [`daemon`], [`resources`], [`netlink`], [`control`]: the agent process around the core.

pub mod config;
pub mod control;
pub mod core;
pub mod daemon;
pub mod import;
pub mod netlink;
pub mod resources;
#[cfg(feature = "sim")]
pub mod sim;
pub mod vocab;
pub mod wire;
pub mod witness;
