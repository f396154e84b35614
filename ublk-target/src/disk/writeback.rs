//! A write-back error the kernel still holds for a disk repd let go of
//! (Diskless) and takes back (`repctl attach`).
//!
//! Linux keeps one error cursor per file or block device (its page cache's
//! `errseq_t`) and reports an error once to every open file description
//! that was open when the error happened, on that description's next
//! fsync, fdatasync or synced write, even an O_DIRECT one. When a disk
//! dies, the metadata writer's buffered writes fail in write-back ("lost
//! async page write"); the data descriptor, which repd keeps open across
//! the detach (it lives in the engine's io_uring ring), has not seen that
//! error yet. Without clearing it, the first flush after `attach` of the
//! repaired or replaced disk fails with EIO and the node detaches again
//! at once (seen in the VM: dm-error, then a fresh disk under the same
//! device-mapper name).

use std::fs::File;
use std::io;

/// Syncs `file` and, if that reports an error, syncs it again: an error
/// the kernel kept from before is reported only once, so a second failure
/// means the disk fails now. `Ok(true)` when an old error was cleared.
/// Only for a disk nothing is written to meanwhile (Diskless until the
/// caller hands it back), so the error cleared cannot be a new write's.
pub(crate) fn clear_stale_error(file: &File) -> io::Result<bool> {
    let Err(first) = file.sync_data() else {
        return Ok(false);
    };
    file.sync_data()?;
    tracing::info!(
        error = %first,
        "a write-back error from before the detach was reported once and cleared"
    );
    Ok(true)
}
