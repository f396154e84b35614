//! Diskless in repd (`on-io-error = "detach"`, `repctl detach` and
//! `repctl attach`): the state machine decides (its `node/diskless.rs`);
//! here the engine lets go of the disk when told (`Action::CloseDisk`) and
//! takes it back on `attach` after checking its metadata.
//!
//! Letting go: the metadata writer stops (its file is closed), the disk
//! lock is released (so `repctl create-md` may write a replacement's
//! metadata), and every data operation is answered EIO without reaching
//! the disk. The data file's descriptor stays with the engine's io_uring
//! ring, which is also the engine's wake-up and socket poller: `attach`
//! reads the data through that descriptor again, so a replacement disk
//! must be the same file or device node (a device-mapper table swapped
//! under it, a file rewritten in place); another inode needs a restart of
//! repd (`repctl down`, `repctl up`). Before that, `attach` clears the
//! write-back error the kernel may still hold for that descriptor from the
//! failure (`disk/writeback.rs`): it would fail the first flush of the
//! repaired disk and detach it again.

use rep_control::protocol::Refusal;
use replication_proto::machine::{Admin, AdminError, Event};
use replication_proto::time::Millis;
use replication_proto::wire::{DiskState, Role};

use super::admin::Refused;
use super::{meta, read_metadata, Runner};

impl Runner {
    /// `Action::CloseDisk`: the node is Diskless and nothing is in flight.
    pub(super) fn close_disk(&mut self) {
        tracing::warn!("Diskless: metadata closed, disk lock released; I/O goes to the peer");
        self.disk_closed = true;
        self.meta.stop();
        self.disk_lock = None;
    }

    /// A data operation asked of a closed disk: EIO at once.
    pub(super) fn closed_disk_op(&mut self, token: replication_proto::machine::IoToken) {
        let now = Millis(self.now());
        self.node.handle(
            now,
            Event::LocalDone {
                token,
                result: Err(libc::EIO),
            },
        );
    }

    /// `repctl attach`: re-open and check the disk's metadata, then hand it
    /// to the state machine.
    pub(super) fn attach(&mut self) -> Result<Admin, Refused> {
        let refuse = |e: AdminError| Refused {
            why: e.to_string(),
            refusal: Refusal::Machine(e),
        };
        if self.node.disk() != DiskState::Diskless || !self.disk_closed {
            return Err(refuse(AdminError::NotDiskless));
        }
        if self.node.role() == Role::Primary {
            return Err(refuse(AdminError::AttachNeedsSecondary));
        }
        let bad = |why: String| Refused {
            refusal: Refusal::BadArgument {
                argument: "disk".into(),
                value: self.me.disk.display().to_string(),
            },
            why,
        };
        let lock = match &self.disk_lock {
            Some(_) => None,
            None => Some(
                crate::disk_lock::DiskLock::acquire(&self.me)
                    .map_err(|e| bad(format!("attach: {e}")))?,
            ),
        };
        // The data descriptor stayed open across the detach: an error the
        // dead disk's write-back left would fail its first flush now.
        let disk = self.me.disk.display().to_string();
        let flush_fails = |e: std::io::Error| {
            bad(format!(
                "attach: {disk} fails a flush: {e} (repair or replace the disk, then attach again)"
            ))
        };
        self.disk.clear_stale_write_error().map_err(flush_fails)?;
        let (md, stored) =
            read_metadata(&self.running.cfg, &self.me).map_err(|e| bad(format!("attach: {e}")))?;
        md.clear_stale_write_error().map_err(flush_fails)?;
        let running = self.node.config().data_bytes;
        if stored.data_bytes != running {
            return Err(bad(format!(
                "attach: the metadata on {} describes {} bytes of data, this resource has {}: \
                 the wrong disk, or a disk of another size (run `repctl create-md` for a new one)",
                self.me.disk.display(),
                stored.data_bytes,
                running
            )));
        }
        self.meta = meta::MetaWriter::start(md, self.running.tx.clone())
            .map_err(|e| bad(format!("attach: cannot start the metadata writer: {e}")))?;
        if lock.is_some() {
            self.disk_lock = lock;
        }
        self.disk_closed = false;
        tracing::info!(disk = %self.me.disk.display(), "attaching the disk");
        Ok(Admin::Attach(stored.persisted))
    }
}
