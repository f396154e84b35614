//! ublk zero copy for local reads: where a read's data is to land (a
//! request of `/dev/ublkbN`, named by its queue and tag) and the marker the
//! disk layer answers with once it has landed there.
//!
//! How a zero-copy read goes (kernels with `UBLK_F_SUPPORT_ZERO_COPY` and
//! `UBLK_F_BUF_REG_OFF_DAEMON`, 6.16+): the ublk queue thread hands the
//! engine a [`ZcDest`] with the read; when the engine's state machine sends
//! that read to the local disk (a Primary whose disk serves it; a Diskless
//! node's reads go to the peer and never get here), the disk ring pushes
//! three linked SQEs: `UBLK_U_IO_REGISTER_IO_BUF` on `/dev/ublkcN` puts the
//! request's own pages into the ring's buffer table, a `READ_FIXED` from
//! the backing file fills them, `UBLK_U_IO_UNREGISTER_IO_BUF` gives them
//! back. No byte goes through repd's memory. The read is answered with
//! [`landed`], a `Bytes` of the right length over a static zero page that
//! nobody reads: the state machine checks the length, the queue thread sees
//! [`is_landed`] and commits without copying. Anything else (a peer's data,
//! a fallback read) is real data the queue copies into the request.
//!
//! Writes keep their copy: repd computes the frame CRC over every byte it
//! sends to the peer, so it must read the data anyway
//! (bench/notes/ublk-zero-copy.md).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;

/// The largest read that can land zero-copy: the ublk device's largest
/// request (1 MiB, `UblkOptions::max_io_bytes`' default and the disk
/// layer's `MAX_IO_BYTES`).
pub const MAX_LANDED_BYTES: usize = 1 << 20;

/// Never read by anyone: [`landed`]'s bytes are a length, not data. A
/// static (in .bss) so that the marker costs no allocation and no page is
/// ever touched.
static LANDED: [u8; MAX_LANDED_BYTES] = [0; MAX_LANDED_BYTES];

/// "The data of this read is already in the request's pages": `len` bytes
/// that are not the data. `None` over [`MAX_LANDED_BYTES`].
#[must_use]
pub fn landed(len: usize) -> Option<Bytes> {
    LANDED.get(..len).map(Bytes::from_static)
}

/// Whether `b` is a [`landed`] marker (the data went straight into the
/// request), not data to copy.
#[must_use]
pub fn is_landed(b: &Bytes) -> bool {
    !b.is_empty() && std::ptr::eq(b.as_ptr(), LANDED.as_ptr())
}

/// Where a read's data is to land: request `tag` of queue `qid` of the
/// ublk device whose char device `/dev/ublkcN` is `cdev`.
#[derive(Debug, Clone)]
pub struct ZcDest {
    /// A duplicate of the queue's `/dev/ublkcN` descriptor: open as long as
    /// any read that names it.
    pub cdev: Arc<OwnedFd>,
    pub qid: u16,
    pub tag: u16,
}

/// The same request of the same device (descriptor, queue, tag).
impl PartialEq for ZcDest {
    fn eq(&self, other: &Self) -> bool {
        self.raw_fd() == other.raw_fd() && self.qid == other.qid && self.tag == other.tag
    }
}
impl Eq for ZcDest {}

impl ZcDest {
    /// The `ublksrv_io_cmd` (16 bytes: q_id, tag, result, addr) of a
    /// `UBLK_U_IO_REGISTER_IO_BUF`/`UNREGISTER` that puts this request's
    /// pages at `index` of the ring's buffer table.
    #[must_use]
    pub fn io_cmd(&self, index: u16) -> [u8; 16] {
        io_cmd(self.qid, self.tag, index)
    }

    #[must_use]
    pub fn raw_fd(&self) -> RawFd {
        self.cdev.as_raw_fd()
    }
}

/// See [`ZcDest::io_cmd`]; the layout of `struct ublksrv_io_cmd` in
/// `<linux/ublk_cmd.h>`, native endian.
#[must_use]
pub fn io_cmd(qid: u16, tag: u16, index: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    let fields = qid
        .to_ne_bytes()
        .into_iter()
        .chain(tag.to_ne_bytes())
        .chain(0i32.to_ne_bytes())
        .chain(u64::from(index).to_ne_bytes());
    for (dst, b) in c.iter_mut().zip(fields) {
        *dst = b;
    }
    c
}

/// `UBLK_U_IO_REGISTER_IO_BUF`: `_IOWR('u', 0x23, struct ublksrv_io_cmd)`.
pub const REGISTER_IO_BUF: u32 = libublk::sys::UBLK_U_IO_REGISTER_IO_BUF;
/// `UBLK_U_IO_UNREGISTER_IO_BUF`: `_IOWR('u', 0x24, struct ublksrv_io_cmd)`.
pub const UNREGISTER_IO_BUF: u32 = libublk::sys::UBLK_U_IO_UNREGISTER_IO_BUF;

/// The device flags a zero-copy device is created with: the kernel
/// registers request pages on request (`SUPPORT_ZERO_COPY`), from a thread
/// other than the queue's (`BUF_REG_OFF_DAEMON`: the engine's disk ring
/// does it), and repd copies the data of writes and of reads that do not
/// land zero-copy with `pread`/`pwrite` on `/dev/ublkcN` (`USER_COPY`).
pub const DEVICE_FLAGS: u64 =
    (libublk::sys::UBLK_F_SUPPORT_ZERO_COPY | libublk::sys::UBLK_F_USER_COPY) as u64;
/// What the driver must offer for [`DEVICE_FLAGS`] to be usable.
pub const NEEDED_FEATURES: u64 = DEVICE_FLAGS | libublk::sys::UBLK_F_BUF_REG_OFF_DAEMON as u64;

/// Whether a device with `flags` (its `dev_info.flags`) serves reads zero-copy.
#[must_use]
pub fn device_is_zero_copy(flags: u64) -> bool {
    flags & DEVICE_FLAGS == DEVICE_FLAGS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_a_length_and_recognised() {
        let m = landed(4096).expect("4 KiB fits");
        assert_eq!(m.len(), 4096);
        assert!(is_landed(&m));
        assert!(is_landed(&m.clone()));
        assert!(!is_landed(&Bytes::from(vec![0u8; 4096])));
        assert!(!is_landed(&Bytes::new()));
        assert!(landed(MAX_LANDED_BYTES).is_some());
        assert!(landed(MAX_LANDED_BYTES + 1).is_none());
    }

    #[test]
    fn io_cmd_layout() {
        let c = io_cmd(3, 0x0102, 7);
        assert_eq!(&c[0..2], &3u16.to_ne_bytes());
        assert_eq!(&c[2..4], &0x0102u16.to_ne_bytes());
        assert_eq!(&c[4..8], &[0, 0, 0, 0]);
        assert_eq!(&c[8..16], &7u64.to_ne_bytes());
    }

    #[test]
    fn flags() {
        assert!(device_is_zero_copy(DEVICE_FLAGS | 0x40));
        assert!(!device_is_zero_copy(
            libublk::sys::UBLK_F_SUPPORT_ZERO_COPY as u64
        ));
        assert_eq!(NEEDED_FEATURES & DEVICE_FLAGS, DEVICE_FLAGS);
    }
}
