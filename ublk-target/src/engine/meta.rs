//! The metadata writer: one thread, one queue, so metadata writes land in the
//! order the state machine issued them (it relies on that: an Inconsistent
//! superblock before the bitmap of a starting resync).

use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use replication_proto::gen::Generations;
use replication_proto::machine::MetaToken;
use replication_proto::meta::MetaFlags;

use super::{Input, InputTx};
use crate::md::MetaDevice;

pub(crate) enum MetaOp {
    Super {
        gens: Generations,
        flags: MetaFlags,
        promoted_at_ms: u64,
    },
    Al {
        seq: u64,
        extents: Vec<u32>,
    },
    Bitmap {
        first_word: u64,
        words: Vec<u64>,
    },
    /// `repctl resize` (see `super::resize`): answered with
    /// `Input::GrowDone`, not `MetaDone`; its token is never used.
    Grow(super::resize::GrowJob),
}

pub(crate) struct MetaWriter {
    tx: Option<Sender<(MetaToken, MetaOp)>>,
    thread: Option<JoinHandle<()>>,
}

const EIO: i32 = 5;

/// Test only: while the file this names exists, every metadata write
/// (superblock, activity log, bitmap) fails with EIO without touching the
/// disk, as on a disk whose metadata area went bad; data I/O is
/// unaffected. A test creates and removes the file to start and end the
/// failure. Never set outside tests.
pub const FAIL_META_WHILE_EXISTS_ENV: &str = "REP_TEST_FAIL_META_WHILE_EXISTS";

impl MetaWriter {
    pub(crate) fn start(mut md: MetaDevice, done: InputTx) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(MetaToken, MetaOp)>();
        let span = tracing::Span::current();
        let fail_while = std::env::var_os(FAIL_META_WHILE_EXISTS_ENV).map(std::path::PathBuf::from);
        let thread = std::thread::Builder::new()
            .name("repd-meta".into())
            .spawn(move || {
                let _g = span.enter();
                for (token, op) in rx {
                    let failing = fail_while.as_deref().is_some_and(std::path::Path::exists);
                    if failing && !matches!(op, MetaOp::Grow(_)) {
                        tracing::error!(
                            "metadata write failed: test fault ({FAIL_META_WHILE_EXISTS_ENV})"
                        );
                        let _ = done.send(Input::MetaDone {
                            token,
                            result: Err(EIO),
                        });
                        continue;
                    }
                    let r = match op {
                        MetaOp::Grow(job) => {
                            let result = job.run(&mut md);
                            let _ = done.send(Input::GrowDone { result });
                            continue;
                        }
                        MetaOp::Super {
                            gens,
                            flags,
                            promoted_at_ms,
                        } => {
                            let mut sb = md.superblock().clone();
                            sb.generations = gens;
                            sb.flags = flags;
                            sb.promoted_at_ms = promoted_at_ms;
                            md.write_superblock(&mut sb)
                        }
                        MetaOp::Al { seq, extents } => md.write_al(seq, &extents),
                        MetaOp::Bitmap { first_word, words } => {
                            md.write_bitmap_words(first_word, &words)
                        }
                    };
                    let result = r.map_err(|e| {
                        tracing::error!("metadata write failed: {e}");
                        EIO
                    });
                    let _ = done.send(Input::MetaDone { token, result });
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub(crate) fn submit(&self, token: MetaToken, op: MetaOp) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((token, op));
        }
    }

    /// Queue a grow (`repctl resize`) behind the writes already queued.
    pub(crate) fn submit_grow(&self, job: super::resize::GrowJob) {
        // The token is never answered: the grow answers `Input::GrowDone`.
        self.submit(MetaToken::from_raw(0), MetaOp::Grow(job));
    }

    /// Finish the queued writes and stop.
    pub(crate) fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
