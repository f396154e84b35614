//! The errors `status` shows: the last one of each kind, with its time,
//! kept while its condition lasts and forgotten [`ERROR_LINGER_MS`] after
//! it ended (a look right after a quick heal still sees why the link
//! dropped; the log keeps everything).

use crate::machine::types::{Action, ConnState, ErrorKind, ErrorNote, Hook};
use crate::meta::MetaFlags;
use crate::time::Millis;

use super::{Node, ERROR_LINGER_MS};

/// The last error of one kind.
#[derive(Debug)]
pub(super) struct Slot {
    message: String,
    at: Millis,
    /// Errors of this kind since the condition began.
    count: u64,
    /// When the condition ended (see [`Node::error_ended`]).
    ended_at: Option<Millis>,
}

/// The errors of each kind, for status.
#[derive(Debug, Default)]
pub(super) struct Health {
    slots: [Option<Slot>; ErrorKind::ALL.len()],
}

impl Health {
    fn slot(&mut self, kind: ErrorKind) -> &mut Option<Slot> {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        // `i` comes from ALL, whose length sizes `slots`.
        #[allow(clippy::indexing_slicing)]
        &mut self.slots[i]
    }

    /// The errors kept, in [`ErrorKind::ALL`]'s order.
    pub(super) fn notes(&self) -> Vec<ErrorNote> {
        ErrorKind::ALL
            .iter()
            .zip(&self.slots)
            .filter_map(|(kind, s)| {
                s.as_ref().map(|s| ErrorNote {
                    kind: *kind,
                    message: s.message.clone(),
                    at_ms: s.at.as_ms(),
                    count: s.count,
                    ended: s.ended_at.is_some(),
                })
            })
            .collect()
    }
}

impl Node {
    /// Records an error of `kind`: logged, and shown by status until its
    /// condition ends (see [`ErrorKind`] for when each kind's does).
    pub(super) fn error(&mut self, kind: ErrorKind, msg: String) {
        tracing::warn!("{msg}");
        let now = self.now;
        // The local-io-error handler runs once per episode of a failing
        // disk, whether a data or a metadata write failed first (DRBD calls
        // it for both: a dead disk often fails the activity-log write
        // first).
        let other_disk_error = match kind {
            ErrorKind::LocalIo => Some(ErrorKind::Metadata),
            ErrorKind::Metadata => Some(ErrorKind::LocalIo),
            _ => None,
        }
        .is_some_and(|k| {
            self.health
                .slot(k)
                .as_ref()
                .is_some_and(|s| s.ended_at.is_none())
        });
        let slot = self.health.slot(kind);
        let count = match slot {
            Some(s) if s.ended_at.is_none() => s.count.saturating_add(1),
            _ => 1,
        };
        if matches!(kind, ErrorKind::LocalIo | ErrorKind::Metadata)
            && count == 1
            && !other_disk_error
        {
            self.actions.push_back(Action::Hook(Hook::LocalIoError));
        }
        *slot = Some(Slot {
            message: msg,
            at: now,
            count,
            ended_at: None,
        });
    }

    /// The condition behind errors of `kind` ended (a write succeeded, the
    /// peer is connected again): they are forgotten after the linger.
    pub(super) fn error_ended(&mut self, kind: ErrorKind) {
        let now = self.now;
        if let Some(s) = self.health.slot(kind) {
            s.ended_at.get_or_insert(now);
        }
    }

    /// On every tick: ends the conditions that are states (connected,
    /// nothing out of sync, no split brain) and forgets errors whose
    /// condition ended [`ERROR_LINGER_MS`] ago.
    pub(super) fn age_errors(&mut self) {
        let connected = self.link.decided();
        let in_sync = self.bitmap.count() == 0 && self.conn == ConnState::Connected;
        for (kind, ended) in [
            (ErrorKind::Connection, connected),
            (ErrorKind::SplitBrain, in_sync && !self.split_brain),
            (ErrorKind::Verify, in_sync),
            (
                ErrorKind::Fencing,
                connected || self.flags.has(MetaFlags::PEER_OUTDATED),
            ),
        ] {
            if ended {
                self.error_ended(kind);
            } else if let Some(s) = self.health.slot(kind) {
                // The condition is back (a new connection failed): it
                // lasts again.
                s.ended_at = None;
            }
        }
        let now = self.now;
        for s in &mut self.health.slots {
            if s.as_ref()
                .and_then(|s| s.ended_at)
                .is_some_and(|t| now >= t + ERROR_LINGER_MS)
            {
                tracing::info!("condition over: error cleared");
                *s = None;
            }
        }
    }

    /// The newest error kept: status's `last_error`.
    pub(super) fn last_error(&self) -> Option<ErrorNote> {
        self.health.notes().into_iter().max_by_key(|n| n.at_ms)
    }
}
