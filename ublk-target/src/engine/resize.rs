//! `repctl resize` in the daemon: measuring this node's room, growing the
//! metadata on the metadata thread (`md::resize`), and showing the agreed
//! size to the frontends (see `replication_proto`'s `node/resize.rs` for
//! the negotiation).

use std::sync::atomic::Ordering;

use rep_control::protocol::Refusal;
use replication_proto::machine::{Admin, Event, Grown};
use replication_proto::time::Millis;

use super::Runner;
use crate::md::resize::{dirty_end, room_bytes, GrowOptions};
use crate::md::{MetaDevice, MetaLocation};

/// Test only: the metadata thread stops for good right after this step of
/// a move (`md::resize`), so a test can kill repd there (`kill -9`) and
/// check that it starts again. Never set outside tests.
pub const STOP_AFTER_STEP_ENV: &str = "REP_TEST_RESIZE_STOP_AFTER_STEP";

/// Where this node's metadata is, for growing it.
#[derive(Debug, Clone)]
pub(super) struct Setup {
    pub(super) location: MetaLocation,
    pub(super) al_extents: u32,
}

/// One grow, run on the metadata thread.
pub(crate) struct GrowJob {
    location: MetaLocation,
    al_extents: u32,
    data_bytes: u64,
    exact: bool,
    assume_clean: bool,
}

impl GrowJob {
    /// Grows `md` to the asked size (or what the disk has room for when
    /// not `exact`): the answer for `Event::GrowDone`.
    pub(super) fn run(self, md: &mut MetaDevice) -> Result<Grown, String> {
        let room = room_bytes(&self.location, self.al_extents).map_err(|e| e.to_string())?;
        let old = md.layout().data_bytes;
        let target = if self.exact {
            self.data_bytes
        } else {
            self.data_bytes.min(room)
        };
        if old >= target {
            // The metadata is already this large (it grew before a crash or
            // a lost connection, and a smaller peer kept the size in use
            // down): nothing to move. The state machine marks the region.
            return Ok(Grown {
                data_bytes: target,
                dirty_from: target,
                dirty_to: target,
            });
        }
        if target > room || target <= old {
            return Err(format!(
                "this disk ({}) has room for {room} bytes of data, {target} were asked (now {old}); \
                 grow it first (lvextend, truncate -s)",
                self.location.disk.display()
            ));
        }
        let opts = GrowOptions {
            assume_clean: self.assume_clean,
            stop_after_step: stop_after_step(),
        };
        let stop = opts.stop_after_step;
        let old_layout = *md.layout();
        let new = md
            .grow(&self.location, target, opts)
            .map_err(|e| e.to_string());
        if let (Some(step), Err(e)) = (stop, &new) {
            // The test hook: behave as if the process died here.
            tracing::error!("{e}: the metadata thread stops here (test hook, step {step})");
            loop {
                std::thread::park();
            }
        }
        let new = new?;
        Ok(Grown {
            data_bytes: new.data_bytes,
            dirty_from: old,
            dirty_to: dirty_end(&old_layout, new.data_bytes, self.assume_clean),
        })
    }
}

fn stop_after_step() -> Option<u32> {
    std::env::var(STOP_AFTER_STEP_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
}

impl Runner {
    /// `repctl resize`: the admin command, with this node's room measured.
    pub(super) fn resize_admin(
        &self,
        size_bytes: Option<u64>,
        assume_clean: bool,
    ) -> Result<Admin, (String, Refusal)> {
        let room = room_bytes(&self.grow.location, self.grow.al_extents).map_err(|e| {
            (
                format!("resize: cannot measure this node's disk: {e}"),
                Refusal::BadRequest,
            )
        })?;
        Ok(Admin::Resize {
            room_bytes: room,
            size_bytes,
            assume_clean,
        })
    }

    /// `Action::GrowDisk`: hand the grow to the metadata thread, behind the
    /// metadata writes already queued.
    pub(super) fn grow_disk(&mut self, data_bytes: u64, exact: bool, assume_clean: bool) {
        let job = GrowJob {
            location: self.grow.location.clone(),
            al_extents: self.grow.al_extents,
            data_bytes,
            exact,
            assume_clean,
        };
        self.meta.submit_grow(job);
    }

    /// The metadata thread's answer.
    pub(super) fn grow_done(&mut self, result: Result<Grown, String>) {
        if let Ok(g) = &result {
            // The local disk serves the new region from now on (the
            // frontends show it only once both nodes grew).
            self.disk.set_data_bytes(g.data_bytes);
        }
        let now = Millis(self.now());
        self.node.handle(now, Event::GrowDone { result });
    }

    /// `Action::SizeChanged`: what new NBD clients and `/dev/ublkbN` see.
    pub(super) fn size_changed(&mut self, data_bytes: u64) {
        let old = self.shared.data_bytes.swap(data_bytes, Ordering::Relaxed);
        if data_bytes > self.disk.data_bytes() {
            self.disk.set_data_bytes(data_bytes);
        }
        tracing::info!(old, data_bytes, "device size changed");
    }
}
