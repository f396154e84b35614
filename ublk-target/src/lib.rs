//! The node side of the replicated block device: resource configuration,
//! on-disk metadata, and (later) the ublk target and the replication daemon.
//!
//! - [`config`]: the resource file (`/etc/rep/r0.toml`), DRBD's `drbd.conf`.
//! - [`md`]: superblock, activity log and dirty bitmap, DRBD's meta-data.
//! - [`frontend`]: the block-device interface the NBD export and ublk serve.

pub mod config;
pub mod frontend;
pub mod md;
