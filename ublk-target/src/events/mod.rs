//! The event stream (`repctl events`, like `drbdsetup events2`): the
//! [`Hub`] the engine thread publishes to and the watchers it feeds.
//!
//! The engine thread takes a [`diff::Snapshot`] of the node after each
//! turn and publishes one event per change ([`Hub::publish`]); the lines
//! are serialised once and shared. Each watcher (one `events` connection on
//! the control socket, served by `stream`) has its own bounded queue of
//! [`WATCHER_QUEUE_EVENTS`]: the engine never waits for a watcher. It
//! `try_send`s, and a watcher whose queue is full is cut off: it gets a
//! last `call lost-events` line (when its socket has room) and the
//! connection closes, so that it reconnects with `--now` for the state.

mod diff;
mod stream;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rep_control::events::{Event, EventKind};

pub(crate) use diff::{HandlerEnded, Names, Snapshot};
pub use stream::serve_watcher;

/// How many events a watcher may fall behind before it is cut off. Bursts
/// are short (a reconnect is about ten lines; resync progress is at most
/// one line a second), so only a watcher that stopped reading gets there.
pub const WATCHER_QUEUE_EVENTS: usize = 1024;
/// How many watchers one repd serves at once.
pub const MAX_WATCHERS: usize = 64;
/// Resync progress (`done:`) is published at most this often, and only
/// when the whole percent moved.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A watcher's state, shared between the hub and the thread serving it.
const LIVE: u8 = 0;
/// Its queue overflowed: it lost events.
const CUT: u8 = 1;
/// repd stops: the queue holds the last lines.
const CLOSED: u8 = 2;

/// Where the engine publishes and watchers subscribe.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    names: Names,
    /// The state last published: the base of the next diff and what
    /// `--now` prints.
    last: Option<Snapshot>,
    /// When the last progress line went out, and its whole percent.
    progress: Option<(Instant, u64)>,
    watchers: Vec<WatcherTx>,
    closed: bool,
    next_id: u64,
}

#[derive(Debug)]
struct WatcherTx {
    id: u64,
    tx: SyncSender<Arc<str>>,
    state: Arc<AtomicU8>,
}

/// One watcher's end: its queue and state (see `stream`).
#[derive(Debug)]
pub struct Watch {
    id: u64,
    resource: String,
    rx: Receiver<Arc<str>>,
    state: Arc<AtomicU8>,
}

/// Why a watcher was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("the daemon is stopping")]
    Stopping,
    #[error("too many event watchers ({MAX_WATCHERS}); stop one first")]
    TooMany,
}

impl Hub {
    #[must_use]
    pub(crate) fn new(resource: &str, peer: &str) -> Self {
        Self {
            inner: Mutex::new(Inner {
                names: Names {
                    resource: resource.into(),
                    peer: peer.into(),
                },
                last: None,
                progress: None,
                watchers: Vec::new(),
                closed: false,
                next_id: 1,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine's state after a turn: one event per change goes to
    /// every watcher. The first call sets the state without events.
    pub(crate) fn publish(&self, next: Snapshot) {
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(prev) = &inner.last else {
            inner.last = Some(next);
            return;
        };
        if *prev == next {
            return;
        }
        let now = Instant::now();
        let due = match (next.done_whole(), inner.progress) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(w), Some((at, was))) => w != was && now >= at + PROGRESS_EVERY,
        };
        let events = diff::changes(prev, &next, &inner.names, due);
        if events.iter().any(|e| e.fields.contains_key("done")) {
            inner.progress = next.done_whole().map(|w| (now, w));
        }
        inner.last = Some(next);
        inner.send(&events);
    }

    /// A new watcher; with `now` its queue starts with the current state
    /// and the `exists -` line.
    pub fn watch(&self, now: bool) -> Result<Watch, WatchError> {
        let mut g = self.lock();
        if g.closed {
            return Err(WatchError::Stopping);
        }
        if g.watchers.len() >= MAX_WATCHERS {
            return Err(WatchError::TooMany);
        }
        let (tx, rx) = mpsc::sync_channel(WATCHER_QUEUE_EVENTS);
        if now {
            let mut lines = g
                .last
                .as_ref()
                .map(|s| s.exists(&g.names))
                .unwrap_or_default();
            lines.push(Event::now(EventKind::Exists, "-", &g.names.resource));
            for e in lines {
                // A fresh queue holds far more than the state's few lines.
                let _ = tx.try_send(line(&e));
            }
        }
        let id = g.next_id;
        g.next_id += 1;
        let state = Arc::new(AtomicU8::new(LIVE));
        g.watchers.push(WatcherTx {
            id,
            tx,
            state: state.clone(),
        });
        tracing::info!(watcher = id, now, "event watcher added");
        Ok(Watch {
            id,
            resource: g.names.resource.clone(),
            rx,
            state,
        })
    }

    /// repd stops: the last lines say every object goes away, then the
    /// watchers' queues end.
    pub(crate) fn close(&self) {
        let mut g = self.lock();
        if g.closed {
            return;
        }
        let last = g
            .last
            .as_ref()
            .map(|s| s.destroy(&g.names))
            .unwrap_or_default();
        g.send(&last);
        g.closed = true;
        for w in g.watchers.drain(..) {
            w.state.store(CLOSED, Ordering::Release);
        }
    }

    /// A watcher that went away (its client hung up).
    fn forget(&self, id: u64) {
        self.lock().watchers.retain(|w| w.id != id);
    }
}

impl Inner {
    /// Each line to each watcher, without ever waiting: a full queue cuts
    /// its watcher off.
    fn send(&mut self, events: &[Event]) {
        if events.is_empty() || self.watchers.is_empty() {
            return;
        }
        let lines: Vec<Arc<str>> = events.iter().map(line).collect();
        self.watchers.retain(|w| {
            for l in &lines {
                match w.tx.try_send(l.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        tracing::warn!(
                            watcher = w.id,
                            queue_events = WATCHER_QUEUE_EVENTS,
                            "event watcher fell behind (it does not read): cut off"
                        );
                        w.state.store(CUT, Ordering::Release);
                        return false;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            true
        });
    }
}

/// An event as its JSON line.
fn line(e: &Event) -> Arc<str> {
    Arc::from(serde_json::to_string(e).unwrap_or_default())
}

#[cfg(test)]
mod tests;
