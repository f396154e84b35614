//! Where a node's ublk device appears (`/dev/ublkb<N>`), and whether the
//! ublk driver is loaded: what the cluster agent and `repctl` need to know
//! of the device without linking libublk.

use std::path::{Path, PathBuf};

/// The ublk control device; it exists only when ublk_drv is loaded.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Whether ublk_drv is loaded (its control device exists).
#[must_use]
pub fn driver_present() -> bool {
    Path::new(CONTROL_PATH).exists()
}

/// The block device path of ublk device `dev_id`.
#[must_use]
pub fn device_path(dev_id: u32) -> PathBuf {
    PathBuf::from(format!("/dev/ublkb{dev_id}"))
}
