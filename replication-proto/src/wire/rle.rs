//! Run-length coding of the dirty bitmap for the handshake's bitmap exchange.
//!
//! Bit `i` of a bitmap is `words[i / 64] >> (i % 64) & 1`. The sender cuts
//! its bitmap into alternating runs of clear and set bits and sends them in
//! [`Message::Bitmap`] chunks, in order, the last one flagged `last`. Each
//! chunk says where it starts and whether its first run is of set bits, so a
//! chunk boundary may fall anywhere. The receiver ORs the set bits into its
//! own bitmap: after the exchange both sides resync the union of the bits.
//!
//! Runs of whole zero (or all-ones) words are skipped word by word, so a
//! clean bitmap of a large device costs a few bytes and little time.

use thiserror::Error;

use super::codec::MAX_BITMAP_RUNS;
use super::message::Message;

/// Word `idx` of `words`; words past the end are all clear.
fn word_at(words: &[u64], idx: u64) -> u64 {
    usize::try_from(idx)
        .ok()
        .and_then(|i| words.get(i))
        .copied()
        .unwrap_or(0)
}

/// The first bit at or after `pos` (and before `nbits`) whose value is not
/// `value`, or `nbits` if there is none.
fn run_end(words: &[u64], pos: u64, nbits: u64, value: bool) -> u64 {
    let flip = if value { u64::MAX } else { 0 };
    let mut idx = pos / 64;
    // Bits of the first word below `pos` do not count.
    let mut w = (word_at(words, idx) ^ flip) & (u64::MAX << (pos % 64));
    let words_len = u64::try_from(words.len()).unwrap_or(u64::MAX);
    loop {
        if w != 0 {
            let end = idx * 64 + u64::from(w.trailing_zeros());
            return end.min(nbits);
        }
        idx += 1;
        if idx.saturating_mul(64) >= nbits {
            return nbits;
        }
        if idx >= words_len {
            // Past the stored words every bit is clear.
            return if value { idx * 64 } else { nbits }.min(nbits);
        }
        w = word_at(words, idx) ^ flip;
    }
}

/// Encodes bits `0..nbits` of `words` as [`Message::Bitmap`] chunks of at most
/// `max_runs_per_msg` runs each (clamped to `1..=`[`MAX_BITMAP_RUNS`] so each
/// chunk fits a frame). Bits past the end of `words` count as clear. There
/// is always at least one chunk, and the last one has `last: true`.
#[must_use]
pub fn bitmap_messages(words: &[u64], nbits: u64, max_runs_per_msg: usize) -> Vec<Message> {
    let max_runs = max_runs_per_msg.clamp(1, MAX_BITMAP_RUNS);
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut value = word_at(words, 0) & 1 != 0 && nbits > 0;
    let mut start_bit = 0u64;
    let mut first_set = value;
    let mut runs = Vec::new();
    while pos < nbits {
        if runs.len() == max_runs {
            out.push(Message::Bitmap {
                start_bit,
                first_set,
                runs: std::mem::take(&mut runs),
                last: false,
            });
            start_bit = pos;
            first_set = value;
        }
        let end = run_end(words, pos, nbits, value);
        runs.push(end - pos);
        pos = end;
        value = !value;
    }
    out.push(Message::Bitmap {
        start_bit,
        first_set,
        runs,
        last: true,
    });
    out
}

/// Why a received bitmap chunk is refused. Each is a protocol error by the
/// peer (or a mismatch between the two sides' device sizes).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RleError {
    #[error("expected a Bitmap message, got {0}")]
    NotBitmap(&'static str),
    #[error("bitmap chunk received after the last one")]
    AfterLast,
    #[error("bitmap chunk starts at bit {got}, but the previous chunks end at bit {expected}")]
    Discontinuous { expected: u64, got: u64 },
    #[error("bitmap chunk starting at bit {start} runs past the end of the {nbits}-bit bitmap")]
    Overrun { start: u64, nbits: u64 },
    #[error("last bitmap chunk ends at bit {end}, but the bitmap has {nbits} bits")]
    Incomplete { end: u64, nbits: u64 },
    #[error("local bitmap has {words} words, too few for {nbits} bits")]
    BitmapTooSmall { words: usize, nbits: u64 },
}

/// What [`BitmapReceiver::receive`] made of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More chunks are expected.
    More,
    /// The exchange is complete; `set_bits` set bits were received in all.
    Done { set_bits: u64 },
}

/// Receives a peer's bitmap chunks in order and ORs them into a local bitmap.
#[derive(Debug, Clone)]
pub struct BitmapReceiver {
    nbits: u64,
    next_bit: u64,
    set_bits: u64,
    done: bool,
}

/// Sets bits `start..end` (`end <= bitmap.len() * 64` checked by the caller).
fn set_range(bitmap: &mut [u64], start: u64, end: u64) {
    let mut pos = start;
    while pos < end {
        let bit = pos % 64;
        let n = (64 - bit).min(end - pos);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << bit
        };
        if let Some(w) = usize::try_from(pos / 64)
            .ok()
            .and_then(|i| bitmap.get_mut(i))
        {
            *w |= mask;
        }
        pos += n;
    }
}

impl BitmapReceiver {
    /// A receiver for a bitmap of `nbits` bits.
    #[must_use]
    pub fn new(nbits: u64) -> Self {
        Self {
            nbits,
            next_bit: 0,
            set_bits: 0,
            done: false,
        }
    }

    /// Set bits received so far.
    #[must_use]
    pub fn set_bits(&self) -> u64 {
        self.set_bits
    }

    /// Whether the last chunk has been received.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Takes one chunk: checks it continues the previous ones and stays within
    /// the bitmap, then ORs its set bits into `bitmap`. A chunk that fails the
    /// checks leaves `bitmap` untouched.
    pub fn receive(
        &mut self,
        start_bit: u64,
        first_set: bool,
        runs: &[u64],
        last: bool,
        bitmap: &mut [u64],
    ) -> Result<Progress, RleError> {
        if self.done {
            return Err(RleError::AfterLast);
        }
        let words = u64::try_from(bitmap.len()).unwrap_or(u64::MAX);
        if words.saturating_mul(64) < self.nbits {
            return Err(RleError::BitmapTooSmall {
                words: bitmap.len(),
                nbits: self.nbits,
            });
        }
        if start_bit != self.next_bit {
            return Err(RleError::Discontinuous {
                expected: self.next_bit,
                got: start_bit,
            });
        }
        let overrun = RleError::Overrun {
            start: start_bit,
            nbits: self.nbits,
        };
        let mut end = start_bit;
        for &r in runs {
            end = end
                .checked_add(r)
                .filter(|&e| e <= self.nbits)
                .ok_or(overrun.clone())?;
        }
        if last && end != self.nbits {
            return Err(RleError::Incomplete {
                end,
                nbits: self.nbits,
            });
        }
        let mut pos = start_bit;
        let mut value = first_set;
        for &r in runs {
            if value {
                set_range(bitmap, pos, pos + r);
                self.set_bits += r;
            }
            pos += r;
            value = !value;
        }
        self.next_bit = end;
        self.done = last;
        Ok(if last {
            Progress::Done {
                set_bits: self.set_bits,
            }
        } else {
            Progress::More
        })
    }

    /// [`BitmapReceiver::receive`] for a [`Message::Bitmap`]; any other
    /// message is an error.
    pub fn receive_message(
        &mut self,
        msg: &Message,
        bitmap: &mut [u64],
    ) -> Result<Progress, RleError> {
        match msg {
            Message::Bitmap {
                start_bit,
                first_set,
                runs,
                last,
            } => self.receive(*start_bit, *first_set, runs, *last, bitmap),
            other => Err(RleError::NotBitmap(super::codec::message_name(other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive_all(msgs: &[Message], nbits: u64) -> (Vec<u64>, u64) {
        let mut bm = vec![0u64; usize::try_from(nbits.div_ceil(64)).unwrap()];
        let mut rx = BitmapReceiver::new(nbits);
        let mut result = None;
        for m in msgs {
            assert!(result.is_none());
            if let Progress::Done { set_bits } = rx.receive_message(m, &mut bm).unwrap() {
                result = Some(set_bits);
            }
        }
        (bm, result.unwrap())
    }

    #[test]
    fn clean_huge_bitmap_is_one_run() {
        let nbits = 1u64 << 28; // 1 TiB of 4 KiB blocks
        let words = vec![0u64; (nbits / 64) as usize];
        let msgs = bitmap_messages(&words, nbits, 1000);
        assert_eq!(
            msgs,
            vec![Message::Bitmap {
                start_bit: 0,
                first_set: false,
                runs: vec![nbits],
                last: true
            }]
        );
        assert!(crate::wire::encoded_len(&msgs[0]) < 40);
    }

    #[test]
    fn full_bitmap_and_tail_bits_ignored() {
        let words = vec![u64::MAX; 3];
        let msgs = bitmap_messages(&words, 130, 10);
        assert_eq!(
            msgs,
            vec![Message::Bitmap {
                start_bit: 0,
                first_set: true,
                runs: vec![130],
                last: true
            }]
        );
        let (bm, set) = receive_all(&msgs, 130);
        assert_eq!(set, 130);
        assert_eq!(bm, vec![u64::MAX, u64::MAX, 0b11]);
    }

    #[test]
    fn empty_bitmap_gives_one_message() {
        let msgs = bitmap_messages(&[], 0, 10);
        assert_eq!(
            msgs,
            vec![Message::Bitmap {
                start_bit: 0,
                first_set: false,
                runs: vec![],
                last: true
            }]
        );
        assert_eq!(receive_all(&msgs, 0), (vec![], 0));
    }

    #[test]
    fn missing_words_are_clear() {
        let msgs = bitmap_messages(&[1], 200, 10);
        assert_eq!(
            msgs,
            vec![Message::Bitmap {
                start_bit: 0,
                first_set: true,
                runs: vec![1, 199],
                last: true
            }]
        );
        let msgs = bitmap_messages(&[u64::MAX], 200, 10);
        assert_eq!(
            msgs,
            vec![Message::Bitmap {
                start_bit: 0,
                first_set: true,
                runs: vec![64, 136],
                last: true
            }]
        );
    }

    #[test]
    fn chunking_one_run_per_message() {
        let words = [0b1011_0110u64];
        let msgs = bitmap_messages(&words, 10, 1);
        // runs: 0 (1 clear), 1..3 set, 3 clear, 4..6 set, 6 clear, 7 set, 8..10 clear
        assert_eq!(msgs.len(), 7);
        let (bm, set) = receive_all(&msgs, 10);
        assert_eq!(bm, vec![0b1011_0110]);
        assert_eq!(set, 5);
    }

    #[test]
    fn receiver_ors_into_existing_bits() {
        let msgs = bitmap_messages(&[0b1100], 4, 10);
        let mut bm = vec![0b0011u64];
        let mut rx = BitmapReceiver::new(4);
        assert_eq!(
            rx.receive_message(&msgs[0], &mut bm),
            Ok(Progress::Done { set_bits: 2 })
        );
        assert_eq!(bm, vec![0b1111]);
    }

    #[test]
    fn receiver_errors() {
        let mut bm = vec![0u64; 2];
        let mut rx = BitmapReceiver::new(100);
        assert_eq!(
            rx.receive(5, false, &[10], false, &mut bm),
            Err(RleError::Discontinuous {
                expected: 0,
                got: 5
            })
        );
        assert_eq!(
            rx.receive(0, true, &[50, 51], false, &mut bm),
            Err(RleError::Overrun {
                start: 0,
                nbits: 100
            })
        );
        assert_eq!(
            rx.receive(0, true, &[u64::MAX, 2], false, &mut bm),
            Err(RleError::Overrun {
                start: 0,
                nbits: 100
            })
        );
        assert_eq!(bm, vec![0, 0], "failed chunks leave the bitmap alone");
        assert_eq!(
            rx.receive(0, true, &[50, 40], true, &mut bm),
            Err(RleError::Incomplete {
                end: 90,
                nbits: 100
            })
        );
        assert_eq!(
            rx.receive(0, true, &[50], false, &mut bm),
            Ok(Progress::More)
        );
        assert_eq!(
            rx.receive(50, false, &[50], true, &mut bm),
            Ok(Progress::Done { set_bits: 50 })
        );
        assert_eq!(
            rx.receive(100, false, &[], true, &mut bm),
            Err(RleError::AfterLast)
        );
        assert_eq!(
            BitmapReceiver::new(129).receive(0, false, &[129], true, &mut bm),
            Err(RleError::BitmapTooSmall {
                words: 2,
                nbits: 129
            })
        );
        assert_eq!(
            BitmapReceiver::new(1).receive_message(&Message::Ping, &mut bm),
            Err(RleError::NotBitmap("Ping"))
        );
        let err = RleError::Discontinuous {
            expected: 64,
            got: 70,
        };
        assert_eq!(
            err.to_string(),
            "bitmap chunk starts at bit 70, but the previous chunks end at bit 64"
        );
    }
}
