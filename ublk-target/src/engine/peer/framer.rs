//! Cuts the byte stream from the peer into frames ([`Framer`]): small
//! frames through a staging buffer, large ones straight into an aligned
//! buffer (partly by a ring receive), charged to the turn's [`RxBudget`].

use std::net::TcpStream;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{recv, MsgFlags};
use replication_proto::wire::codec::{decode_frame, peek_frame, DecodeError, HEADER_LEN};
use replication_proto::wire::Message;

use super::{PeerError, RxBudget};
use crate::disk::aligned::SECTOR;
use crate::disk::{AlignedBuf, InlineDisk};

/// Address alignment O_DIRECT wants for write data.
pub(super) const ALIGN: usize = 4096;

/// Size of the staging buffer small frames are received into; a small
/// frame longer than this (a big bitmap frame) grows it while it is read.
const STAGE_LEN: usize = 64 * 1024;

/// Payloads at least this large are received into an aligned buffer.
pub(super) const ALIGN_PAYLOAD_MIN: usize = 4096;

/// A large frame being received straight into its own aligned buffer.
struct Big {
    /// `None` while lent to the ring for a receive.
    buf: Option<AlignedBuf>,
    /// The frame is `buf[pad..pad + total]`, placed so that its bulk data
    /// starts at a 4096-aligned address.
    pad: usize,
    total: usize,
    have: usize,
}

/// Cuts the byte stream from the peer into frames across partial reads.
/// Small frames are received into a staging buffer, many per `recv`; the
/// data of a replicated write lands at a 4096-aligned address in a pooled
/// buffer, so the local disk writes it with O_DIRECT as it is: no copy
/// between the socket and the disk beyond what is already staged, and no
/// fresh allocation (with its page faults) per write.
pub(super) struct Framer {
    /// Received, not yet framed bytes: `stage[start..end]`.
    stage: Vec<u8>,
    start: usize,
    end: usize,
    big: Option<Big>,
}

/// What a `recv` gave.
enum Got {
    Bytes(usize),
    /// The socket has nothing now.
    Empty,
}

fn recv_some(stream: &TcpStream, into: &mut [u8]) -> Result<Got, PeerError> {
    loop {
        match recv(stream.as_raw_fd(), into, MsgFlags::MSG_DONTWAIT) {
            Ok(0) if !into.is_empty() => return Err(PeerError::Closed),
            Ok(n) => return Ok(Got::Bytes(n)),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(Got::Empty),
            Err(e) => return Err(PeerError::Receive(e.into())),
        }
    }
}

/// [`recv_some`] charged to `budget`: the bytes received, or `None` when
/// the socket had nothing (the budget then knows it is drained).
fn recv_counted(
    stream: &TcpStream,
    into: &mut [u8],
    budget: &mut RxBudget,
) -> Result<Option<usize>, PeerError> {
    let asked = into.len();
    match recv_some(stream, into)? {
        Got::Bytes(n) => {
            // A `recv` may take more than the budget has left (it asks for
            // what the frame or the stage needs): the turn is then spent.
            budget.bytes = budget.bytes.saturating_sub(n);
            budget.drained = n < asked;
            Ok(Some(n))
        }
        Got::Empty => {
            budget.drained = true;
            Ok(None)
        }
    }
}

impl Framer {
    pub(super) fn new() -> Self {
        Self {
            stage: vec![0; STAGE_LEN],
            start: 0,
            end: 0,
            big: None,
        }
    }

    /// The next whole frame, `None` when the socket is empty or the budget
    /// spent, or why the connection has to go (the text `PeerDown` always
    /// gave: EOF, receive error, malformed frame).
    pub(super) fn next(
        &mut self,
        stream: &TcpStream,
        budget: &mut RxBudget,
    ) -> Result<Option<Message>, PeerError> {
        if budget.frames == 0 {
            return Ok(None);
        }
        loop {
            if let Some(big) = &mut self.big {
                let Some(buf) = big.buf.as_mut() else {
                    // Lent to the ring: its completion hands it back.
                    return Ok(None);
                };
                if big.have == big.total {
                    let Some(Big {
                        buf: Some(buf),
                        pad,
                        total,
                        ..
                    }) = self.big.take()
                    else {
                        return Err(PeerError::internal("framer state lost"));
                    };
                    budget.frames -= 1;
                    let frame = buf.into_bytes().slice(pad..pad + total);
                    return decode_frame(frame).map(Some).map_err(PeerError::bad_frame);
                }
                if budget.exhausted() || budget.drained {
                    return Ok(None);
                }
                let want = buf
                    .as_mut_slice()
                    .get_mut(big.pad + big.have..big.pad + big.total)
                    .ok_or_else(|| PeerError::internal("frame buffer too short"))?;
                match recv_counted(stream, want, budget)? {
                    Some(n) => big.have += n,
                    None => return Ok(None),
                }
                continue;
            }
            if let Some(msg) = self.frame_from_stage()? {
                budget.frames -= 1;
                return Ok(Some(msg));
            }
            if self.big.is_some() {
                continue;
            }
            // The stage holds less than a frame: receive more.
            if budget.exhausted() || budget.drained {
                return Ok(None);
            }
            self.compact();
            let space = self
                .stage
                .get_mut(self.end..)
                .ok_or_else(|| PeerError::internal("staging buffer state lost"))?;
            match recv_counted(stream, space, budget)? {
                Some(n) => self.end += n,
                None => return Ok(None),
            }
        }
    }

    /// Takes a whole small frame out of the stage, or moves the start of
    /// a large one into its aligned buffer (`self.big`), or makes room for
    /// a small frame longer than the stage. `None` when more bytes are
    /// needed (or a large frame was started).
    fn frame_from_stage(&mut self) -> Result<Option<Message>, PeerError> {
        let avail = self
            .stage
            .get(self.start..self.end)
            .ok_or_else(|| PeerError::internal("staging buffer state lost"))?;
        let peek = match peek_frame(avail) {
            Ok(Some(p)) => p,
            Ok(None) if avail.len() >= HEADER_LEN => {
                return Err(PeerError::bad_frame(DecodeError::FrameLength {
                    have: HEADER_LEN,
                    announced: HEADER_LEN,
                }))
            }
            Ok(None) => return Ok(None),
            Err(e) => return Err(PeerError::bad_frame(e)),
        };
        let total = peek.total;
        if let Some(at) = peek.bulk_at.filter(|at| total - at >= ALIGN_PAYLOAD_MIN) {
            let pad = (ALIGN - at % ALIGN) % ALIGN;
            let len = (pad + total).div_ceil(SECTOR) * SECTOR;
            let mut buf = AlignedBuf::for_overwrite(len)
                .map_err(|e| PeerError::Receive(std::io::Error::other(e)))?;
            let have = avail.len().min(total);
            buf.as_mut_slice()
                .get_mut(pad..pad + have)
                .ok_or_else(|| PeerError::internal("frame buffer too short"))?
                .copy_from_slice(
                    avail
                        .get(..have)
                        .ok_or_else(|| PeerError::internal("staging buffer state lost"))?,
                );
            self.consume(have);
            self.big = Some(Big {
                buf: Some(buf),
                pad,
                total,
                have,
            });
            return Ok(None);
        }
        if avail.len() >= total {
            let frame = Bytes::copy_from_slice(
                avail
                    .get(..total)
                    .ok_or_else(|| PeerError::internal("staging buffer state lost"))?,
            );
            self.consume(total);
            return decode_frame(frame).map(Some).map_err(PeerError::bad_frame);
        }
        if total > self.stage.len() {
            // peek_frame has bounded `total` by the largest frame the wire
            // allows.
            self.stage.resize(total, 0);
        }
        Ok(None)
    }

    /// [`Framer::next`], and when the socket ran dry inside a large frame,
    /// the rest of it lent to a ring receive on `disk` with `key`.
    pub(super) fn pull(
        &mut self,
        stream: &TcpStream,
        budget: &mut RxBudget,
        disk: &mut InlineDisk,
        key: u64,
    ) -> Result<Option<Message>, PeerError> {
        let got = self.next(stream, budget)?;
        if got.is_none() && budget.drained && !self.lent() {
            if let Some((buf, pos, len)) = self.lend() {
                disk.recv(stream, buf, pos, len, key)
                    .map_err(PeerError::Receive)?;
            }
        }
        Ok(got)
    }

    /// A large frame whose rest has to wait for the socket: its buffer
    /// and the range still to fill, for a ring receive.
    fn lend(&mut self) -> Option<(AlignedBuf, usize, usize)> {
        let big = self.big.as_mut()?;
        if big.have >= big.total {
            return None;
        }
        let buf = big.buf.take()?;
        Some((buf, big.pad + big.have, big.total - big.have))
    }

    /// A ring receive of [`Framer::lend`] ended with `res` (bytes or
    /// -errno): takes the buffer back.
    pub(super) fn give_back(&mut self, buf: AlignedBuf, res: i32) -> Result<(), PeerError> {
        let Some(big) = self.big.as_mut().filter(|b| b.buf.is_none()) else {
            return Err(PeerError::internal("framer state lost"));
        };
        big.buf = Some(buf);
        match usize::try_from(res) {
            Ok(0) => Err(PeerError::Closed),
            Ok(n) if n <= big.total - big.have => {
                big.have += n;
                Ok(())
            }
            Ok(_) => Err(PeerError::Receive(std::io::Error::other(
                "more bytes than asked for",
            ))),
            Err(_) if res == -libc::EINTR || res == -libc::EAGAIN => Ok(()),
            Err(_) => Err(PeerError::Receive(std::io::Error::from_raw_os_error(
                res.saturating_neg(),
            ))),
        }
    }

    /// Part of a frame is lent to the ring.
    pub(super) fn lent(&self) -> bool {
        self.big.as_ref().is_some_and(|b| b.buf.is_none())
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
            if self.stage.len() > STAGE_LEN {
                // The big small frame is through: give the memory back.
                self.stage = vec![0; STAGE_LEN];
            }
        }
    }

    /// Moves the unframed bytes to the front, so the rest of the stage is
    /// free to receive into.
    fn compact(&mut self) {
        if self.start > 0 {
            self.stage.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}
