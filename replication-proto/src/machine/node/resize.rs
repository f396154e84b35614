//! `repctl resize` (DRBD's online resize) and the size two nodes agree on.
//!
//! Online grow, negotiated over the connection (feature bit `RESIZE`):
//!
//! ```text
//!  node X (repctl resize)              node Y
//!  Resize{size, exact, clean} ------>  GrowDisk (its metadata grows, persisted)
//!                             <------  Resized{n}   (0 + message: refused)
//!  GrowDisk{n, exact}
//!  Resized{n} (final)         ------>  SizeChanged: frontends show n
//!  SizeChanged; StartSync     ------>  the new region resyncs from the Primary
//! ```
//!
//! Y grows first and X only to what Y reached, so neither ever holds less
//! than the other exposes; Y exposes the new size only after X grew, so
//! no write beyond X's end is ever replicated. A crash or a lost
//! connection in between leaves two sizes, and the next handshake takes
//! the smaller (below): running `resize` again finishes the job.
//!
//! The handshake's size rule (DRBD's): a peer of a different size
//! connects with the smaller of the two. The larger node shrinks what it
//! uses, in memory only (its metadata keeps its size), unless it is
//! Primary, which refuses: its device would shrink under its users.

use crate::machine::types::{Action, AdminError, ConnState, Grown};
use crate::wire::{features, DiskState, Message, Role};

use super::Node;

/// Where a resize stands on this node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Idle,
    /// X: `Resize` sent, waiting for the peer's `Resized`.
    AskedPeer { assume_clean: bool },
    /// X: the peer grew to `data_bytes`; this node's metadata is growing.
    GrowingMine { data_bytes: u64 },
    /// Y: the metadata grows for the peer's `Resize`.
    GrowingForPeer,
    /// Y: grown from `old` to `new`, waiting for X's final `Resized`.
    WaitingFinal { old: u64, new: u64 },
}

/// The resize under way, and what status says about sizes.
#[derive(Debug, Default)]
pub(super) struct Resizing {
    phase: Phase,
    /// The last resize's outcome, or the size agreed with a peer of a
    /// different size.
    pub(super) note: Option<String>,
}

impl Node {
    pub(super) fn admin_resize(
        &mut self,
        room_bytes: u64,
        size_bytes: Option<u64>,
        assume_clean: bool,
    ) -> Result<(), AdminError> {
        let current = self.cfg.data_bytes;
        let idle = self.conn == ConnState::Connected
            && self.sync.is_none()
            && self.resizing.phase == Phase::Idle;
        let Some(peer) = self.link.decided_peer().filter(|_| idle) else {
            return Err(AdminError::ResizeNeedsConnected);
        };
        if self.disk != DiskState::UpToDate || peer.disk != DiskState::UpToDate {
            return Err(AdminError::ResizeNeedsConnected);
        }
        if peer.hello.features & features::RESIZE == 0 {
            return Err(AdminError::PeerCannotResize);
        }
        let target = match size_bytes {
            Some(size) if size < current => {
                return Err(AdminError::ShrinkRefused { current, size });
            }
            Some(size) if size > room_bytes => {
                return Err(AdminError::NoRoom {
                    size,
                    room: room_bytes,
                })
            }
            Some(size) => size - size % crate::meta::BM_BLOCK_SIZE,
            None => room_bytes,
        };
        if target <= current {
            return Err(AdminError::NothingToGrow {
                current,
                room: room_bytes,
            });
        }
        tracing::info!(
            current,
            target,
            assume_clean,
            "resize: asking the peer to grow"
        );
        self.resizing.phase = Phase::AskedPeer { assume_clean };
        self.send(Message::Resize {
            data_bytes: target,
            exact: size_bytes.is_some(),
            assume_clean,
        });
        Ok(())
    }

    /// Y: the peer asks to grow.
    pub(super) fn on_resize(&mut self, data_bytes: u64, exact: bool, assume_clean: bool) {
        let idle = self.conn == ConnState::Connected
            && self.sync.is_none()
            && self.resizing.phase == Phase::Idle;
        if !idle || data_bytes <= self.cfg.data_bytes {
            let why = if idle {
                format!(
                    "{data_bytes} bytes do not grow the {} in use",
                    self.cfg.data_bytes
                )
            } else {
                "the peer is busy (a resync, a verify or another resize)".to_owned()
            };
            self.send(Message::Resized {
                data_bytes: 0,
                message: why,
            });
            return;
        }
        self.resizing.phase = Phase::GrowingForPeer;
        self.actions.push_back(Action::GrowDisk {
            data_bytes,
            exact,
            assume_clean,
        });
    }

    /// The local metadata grew (or could not).
    pub(super) fn grow_done(&mut self, result: Result<Grown, String>) {
        let phase = std::mem::take(&mut self.resizing.phase);
        match (phase, result) {
            (Phase::GrowingForPeer, Ok(g)) => {
                let old = self.cfg.data_bytes;
                self.take_grown(g);
                self.resizing.phase = Phase::WaitingFinal {
                    old,
                    new: g.data_bytes,
                };
                self.send(Message::Resized {
                    data_bytes: g.data_bytes,
                    message: String::new(),
                });
            }
            (Phase::GrowingMine { data_bytes }, Ok(g)) if g.data_bytes == data_bytes => {
                self.take_grown(g);
                self.send(Message::Resized {
                    data_bytes,
                    message: String::new(),
                });
                self.grown_both(data_bytes);
                self.resync_grown_region();
            }
            (Phase::GrowingForPeer | Phase::GrowingMine { .. }, r) => {
                let why = match r {
                    Ok(g) => format!("grew to {} bytes, not the peer's size", g.data_bytes),
                    Err(e) => e,
                };
                self.resize_failed(format!("this node's metadata could not grow: {why}"));
                self.send(Message::Resized {
                    data_bytes: 0,
                    message: why,
                });
            }
            (_, r) => {
                // The connection went while the metadata grew: the next
                // handshake takes the smaller size.
                self.resizing.note = Some(format!(
                    "the connection was lost during a resize (local metadata: {r:?}); \
                     run `repctl resize` again"
                ));
            }
        }
    }

    /// The peer's `Resized`: its answer (X) or the final word (Y).
    pub(super) fn on_resized(&mut self, data_bytes: u64, message: String) {
        let phase = std::mem::take(&mut self.resizing.phase);
        match phase {
            Phase::AskedPeer { .. } if data_bytes == 0 => {
                self.resize_failed(format!("the peer refused to grow: {message}"));
            }
            Phase::AskedPeer { assume_clean } => {
                self.resizing.phase = Phase::GrowingMine { data_bytes };
                self.actions.push_back(Action::GrowDisk {
                    data_bytes,
                    exact: true,
                    assume_clean,
                });
            }
            Phase::WaitingFinal { old, new } if data_bytes == new => {
                let _ = old;
                self.grown_both(new);
            }
            Phase::WaitingFinal { old, .. } => {
                // The peer could not follow: back to the size both hold.
                self.cfg.data_bytes = old;
                self.bitmap.resize(old);
                self.resize_failed(format!(
                    "the peer could not grow ({message}); this node's metadata grew, the size \
                     in use stays {old} bytes; run `repctl resize` again"
                ));
            }
            _ => self.protocol_error("Resized without a resize under way"),
        }
    }

    /// Both nodes hold `data_bytes`: the frontends may show it.
    fn grown_both(&mut self, data_bytes: u64) {
        tracing::info!(data_bytes, "resize done: both nodes hold the new size");
        self.resizing.note = Some(format!("resized to {data_bytes} bytes"));
        self.actions.push_back(Action::SizeChanged { data_bytes });
    }

    fn resize_failed(&mut self, why: String) {
        tracing::warn!("resize: {why}");
        self.resizing.note = Some(format!("resize failed: {why}"));
    }

    /// The bitmap covers the grown data, the new region's bits as the
    /// metadata marked them.
    fn take_grown(&mut self, g: Grown) {
        let old = self.cfg.data_bytes;
        self.cfg.data_bytes = g.data_bytes;
        self.bitmap.resize(g.data_bytes);
        if g.dirty_to > g.dirty_from {
            self.bitmap
                .set_range(g.dirty_from, g.dirty_to - g.dirty_from);
        }
        if g.dirty_from > old {
            // The metadata was larger than the size in use (a smaller peer
            // kept it down): that part was never replicated. Persisted
            // here, since the metadata grow did not mark it.
            self.bitmap.set_range(old, g.dirty_from - old);
            self.persist_bitmap_all(None);
        }
    }

    /// X, after both grew: resync what the grow marked, from the Primary
    /// (or from here when neither is), as `verify --repair` does. The
    /// bitmap exchange merges both sides' marks.
    fn resync_grown_region(&mut self) {
        if self.conn != ConnState::Connected || self.sync.is_some() {
            return;
        }
        let i_am_source = self.role == Role::Primary
            || !self.link.peer().is_some_and(|p| p.role == Role::Primary);
        self.send(Message::StartSync {
            sender_is_source: i_am_source,
            full: false,
        });
        let role = if i_am_source {
            super::state::SyncRole::Source
        } else {
            super::state::SyncRole::Target
        };
        self.start_sync(role, false);
    }

    /// The connection ended: a resize waiting for the peer is over.
    pub(super) fn resize_connection_lost(&mut self) {
        match self.resizing.phase {
            Phase::AskedPeer { .. } => {
                self.resizing.phase = Phase::Idle;
                self.resize_failed("the connection was lost before the peer grew".into());
            }
            Phase::WaitingFinal { old, .. } => {
                self.resizing.phase = Phase::Idle;
                self.cfg.data_bytes = old;
                self.bitmap.resize(old);
                self.resize_failed(format!(
                    "the connection was lost before the peer grew; the size in use stays {old} bytes"
                ));
            }
            // A grow in flight ends in grow_done.
            Phase::Idle | Phase::GrowingMine { .. } | Phase::GrowingForPeer => {}
        }
    }

    /// The handshake's size rule: `None` when the sizes fit (this node
    /// shrinks what it uses to a smaller peer's), or why not.
    pub(super) fn agree_size(&mut self, peer_bytes: u64, peer_features: u64) -> Option<String> {
        let mine = self.cfg.data_bytes;
        let size_note = |n: &String| n.starts_with("the peer's disk");
        if peer_bytes == mine && self.resizing.note.as_ref().is_some_and(size_note) {
            // Equal now: what an earlier connection agreed no longer holds.
            self.resizing.note = None;
        }
        if peer_bytes >= mine {
            if peer_bytes > mine {
                self.resizing.note = Some(format!(
                    "the peer's disk holds {peer_bytes} bytes: using this node's smaller {mine}"
                ));
                tracing::info!(
                    peer_bytes,
                    mine,
                    "the peer is larger: it uses this node's size"
                );
            }
            return None;
        }
        if self.role == Role::Primary || peer_features & features::RESIZE == 0 {
            return Some(format!(
                "the peer's data size is {peer_bytes} bytes, this node's {mine} bytes{}; grow the \
                 peer's disk and run `repctl resize`",
                if self.role == Role::Primary {
                    ", and a Primary's device cannot shrink under its users"
                } else {
                    " (and the peer's repd is too old to agree on the smaller size)"
                }
            ));
        }
        tracing::warn!(
            peer_bytes,
            mine,
            "the peer's disk is smaller: using its size (DRBD's rule), this disk's end unused"
        );
        self.resizing.note = Some(format!(
            "the peer's disk is smaller: using {peer_bytes} bytes of this node's {mine}"
        ));
        self.cfg.data_bytes = peer_bytes;
        self.bitmap.resize(peer_bytes);
        self.actions.push_back(Action::SizeChanged {
            data_bytes: peer_bytes,
        });
        None
    }
}
