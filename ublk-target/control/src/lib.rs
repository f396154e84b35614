//! What repd, `repctl` and the cluster agent share, without the daemon's
//! machinery (no libublk, no io_uring): a program that only reads the
//! resource file or talks to a running repd depends on this crate alone.
//!
//! - [`config`]: the resource file (`/etc/rep/r0.toml`), DRBD's `drbd.conf`.
//! - [`protocol`]: the control protocol, [`protocol::ControlCmd`] and its
//!   answer [`protocol::ControlReply`] with the node's
//!   [`protocol::NodeStatus`] (`repctl status --json`).
//! - [`client`]: the client side of the control socket (its path, one
//!   request and its answer); repd's `ublk_target::control` serves it.
//! - [`socket`]: what the servers of repd and the agent share: a private
//!   Unix socket and one JSON answer line per request line.
//! - [`status_text`]: `repctl status` in words.
//! - [`device`]: where the ublk device of a node appears, and whether
//!   ublk_drv is loaded.
//! - [`logs`]: the daemons' log setup (`$REP_LOG`).
//! - [`resources`]: several resources per host: the files of `/etc/rep`,
//!   and which of them `r1`, `all` or nothing selects.
//! - [`import`]: `repctl import-drbd-conf`, a drbd.conf into resource files;
//!   its warnings and TOML writer serve the cluster agent's heartbeat import too.
//! - [`events`]: the event stream's lines (`repctl events`, like
//!   `drbdsetup events2`), JSON and text.
//! - [`docs`]: `--generate-docs DIR`, the man pages and shell completions
//!   each binary writes from its clap definition.

pub mod client;
pub mod config;
pub mod device;
pub mod docs;
pub mod events;
pub mod import;
pub mod logs;
pub mod protocol;
pub mod resources;
pub mod socket;
pub mod status_text;
