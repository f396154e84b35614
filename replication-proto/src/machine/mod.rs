//! The sans-IO replication state machine.
//!
//! - `node`: the [`Node`] (one node of one resource) and its contract.
//! - [`types`]: what goes in and out ([`Event`], [`Action`], [`Admin`],
//!   [`AdminError`], [`Status`]).
//! - [`ids`]: the typed ids and tokens in them ([`AppId`], [`IoToken`],
//!   [`MetaToken`]).
//! - [`decide`]: the sync decision after a handshake (generations, split
//!   brain policies), a pure function.
//! - `fencing`: the fencing policy, the fence-peer handler's exit codes
//!   ([`Fencing`], [`FenceOutcome`], [`FenceStatus`]).
//! - `resume`: resuming the Primary role after a crash of the daemon alone.
//! - [`al`]: the activity log; [`bitmap`]: the dirty bitmap; [`io`]: the
//!   ordering of overlapping local operations; `sync_window`: how many
//!   resync requests are in flight; [`resync_controller`]: the dynamic
//!   resync rate (c-plan-ahead, c-fill-target, c-min-rate, ...).
//! - [`verify_ranges`]: the out-of-sync ranges a verify found, merged.

pub mod al;
pub mod bitmap;
pub mod decide;
mod fencing;
pub mod ids;
pub mod io;
mod node;
mod resume;
pub mod resync_controller;
mod sync_window;
pub mod types;
pub mod verify_ranges;

pub use decide::{AfterSb0, AfterSb1, AfterSb2, Decision, SplitBrainPolicy};
pub use fencing::{FenceOutcome, FenceStatus, Fencing};
pub use ids::{AppId, IoToken, MetaToken, NODE_TOKEN_LIMIT};
pub use node::{Applies, Node, ERROR_LINGER_MS, MAX_IO};
pub use resync_controller::ResyncControl;
pub use types::*;
pub use verify_ranges::{VerifyRange, VERIFY_RANGES_LISTED, VERIFY_RANGES_TRACKED};
