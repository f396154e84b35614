//! The node side of the replicated block device: on-disk metadata, the
//! replication daemon `repd` and its frontends. The resource file, the
//! control protocol and its client, and the log setup are in the
//! `rep_control` crate (`ublk-target/control/`), which `repctl` and the
//! cluster agent use without linking this one.
//!
//! - [`md`]: superblock, activity log and dirty bitmap, DRBD's meta-data.
//! - [`disk`]: the local backing disk, through io_uring.
//! - [`disk_lock`]: one owner per backing disk (repd, create-md).
//! - [`engine`]: the thread that runs the replication state machine and the
//!   peer connection, the metadata writer, the control commands, and the
//!   registry of what makes the device in use.
//! - [`frontend`]: the block-device interface the NBD export and ublk serve,
//!   and how each registers its users with the engine.
//! - [`nbd`]: the NBD export.
//! - [`metrics`]: the Prometheus endpoint (`[metrics] listen`).
//! - [`stages`]: the latency breakdown per stage and request kind.
//! - [`ublk`]: the ublk device, `/dev/ublkb<N>`.
//! - [`control`]: the server side of the control socket `repctl` talks to.
//! - [`events`]: the event stream (`repctl events`): the hub the engine
//!   publishes state changes to, and the watchers it feeds.
//! - [`tls`]: TLS configurations from the resource file's certificates,
//!   and the replication link's TLS.
//! - [`crc_pick`]: which CRC32C implementation runs (measured at start).
//! - [`alloc`]: allocator settings for the daemon.

// The modules here name the resource file's types as `crate::config`.
pub(crate) use rep_control::config;

pub mod alloc;
pub mod control;
pub mod crc_pick;
pub mod disk;
pub mod disk_lock;
pub mod engine;
pub mod events;
pub mod frontend;
pub mod md;
pub mod metrics;
pub mod nbd;
pub mod notify;
pub mod stages;
pub mod tls;
pub mod ublk;
pub mod zerocopy;
