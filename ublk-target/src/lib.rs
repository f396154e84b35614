//! The node side of the replicated block device: resource configuration,
//! on-disk metadata, the replication daemon `repd` and its frontends.
//!
//! - [`config`]: the resource file (`/etc/rep/r0.toml`), DRBD's `drbd.conf`.
//! - [`md`]: superblock, activity log and dirty bitmap, DRBD's meta-data.
//! - [`disk`]: the local backing disk, through io_uring.
//! - [`disk_lock`]: one owner per backing disk (repd, create-md).
//! - [`engine`]: the thread that runs the replication state machine and the
//!   peer connection.
//! - [`frontend`]: the block-device interface the NBD export and ublk serve.
//! - [`nbd`]: the NBD export.
//! - [`ublk`]: the ublk device, `/dev/ublkb<N>`.
//! - [`control`]: the control socket `repctl` talks to.
//! - [`logs`]: the daemons' log setup (`$REP_LOG`).
//! - [`crc_pick`]: which CRC32C implementation runs (measured at start).

pub mod alloc;
pub mod config;
pub mod control;
pub mod crc_pick;
pub mod disk;
pub mod disk_lock;
pub mod engine;
pub mod frontend;
pub mod logs;
pub mod md;
pub mod nbd;
pub mod status_text;
pub mod ublk;
