//! What a frontend (the NBD export, the ublk device) sees of a replicated
//! resource: a block device that accepts requests and answers each once,
//! and what a frontend tells the engine about the device's users.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::stages::{Kind, Stages};

/// The answer to one request: data for reads, nothing otherwise, or a
/// positive errno (EIO, EROFS, EINVAL, ENOSPC...).
pub type IoResult = Result<Option<Bytes>, i32>;

/// Called exactly once with the request's result, from any thread.
pub type Reply = Box<dyn FnOnce(IoResult) + Send + 'static>;

/// One block request. Offsets and lengths are in bytes and multiples of 512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoRequest {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    /// Complete only once everything completed before is durable.
    Flush,
    Trim {
        offset: u64,
        len: u32,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
    },
}

/// A block device a frontend serves.
pub trait BlockBackend: Send + Sync + 'static {
    /// Size of the device in bytes.
    fn size_bytes(&self) -> u64;
    /// Whether I/O is accepted now (the node is Primary). A frontend refuses
    /// new clients while this is false; requests in flight then fail with
    /// EROFS from `submit`.
    fn writable(&self) -> bool;
    /// Queue a request; `reply` is called once when it completes.
    fn submit(&self, req: IoRequest, reply: Reply);
    /// [`BlockBackend::submit`] of a request the frontend received at
    /// `received` (the start of its `frontend_in` stage).
    fn submit_received(&self, req: IoRequest, reply: Reply, received: Instant) {
        let _ = received;
        self.submit(req, reply);
    }
    /// A read whose data may land straight in ublk request `dst` (zero
    /// copy, `crate::zerocopy`): the answer is then a
    /// [`landed`](crate::zerocopy::landed) marker instead of the data. A
    /// backend without zero copy serves it as an ordinary read.
    fn submit_read_into(
        &self,
        offset: u64,
        len: u32,
        dst: crate::zerocopy::ZcDest,
        reply: Reply,
        received: Instant,
    ) {
        let _ = dst;
        self.submit_received(IoRequest::Read { offset, len }, reply, received);
    }
    /// Where a frontend counts the stages it measures (`frontend_out`),
    /// when requests are timed.
    fn stages(&self) -> Option<Arc<Stages>> {
        None
    }
}

impl IoRequest {
    /// Its kind in the latency breakdown.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            IoRequest::Read { .. } => Kind::Read,
            IoRequest::Write { .. } => Kind::Write,
            IoRequest::Flush => Kind::Flush,
            IoRequest::Trim { .. } => Kind::Discard,
            IoRequest::WriteZeroes { .. } => Kind::WriteZeroes,
        }
    }
}

/// Lets a frontend that follows the role (the ublk manager) sleep until
/// the role changes, instead of polling [`BlockBackend::writable`].
pub trait RoleWait {
    /// A counter that moves whenever the role may have changed. Read it
    /// before looking at the role, then pass it to
    /// [`RoleWait::wait_role_change`], so a change in between is not missed.
    fn role_changes(&self) -> u64;
    /// Sleeps until [`RoleWait::role_changes`] is no longer `seen`, or for
    /// `timeout` at most.
    fn wait_role_change(&self, seen: u64, timeout: std::time::Duration);
}

/// One frontend's users of the device, as the engine's registry
/// ([`Users`](crate::engine::Users)) asks about them before `secondary` and
/// `down`.
pub trait UserSource: Send + Sync + 'static {
    /// What its clients are called in a refusal ("NBD" in "2 NBD
    /// client(s) connected").
    fn name(&self) -> &str;
    /// Clients a forced `down` may disconnect, connected now. May wait a
    /// moment for a client that is just leaving.
    fn clients(&self) -> usize {
        0
    }
    /// Disconnects every client [`UserSource::clients`] counts.
    fn cut(&self) {}
    /// Why users that cannot be disconnected hold the device (mounted,
    /// open), or `None`. Asked from the engine thread, which serves the
    /// device's I/O: it must not wait for that I/O, and gives up (with a
    /// refusal) after a few seconds.
    fn held(&self) -> Option<String> {
        None
    }
}
