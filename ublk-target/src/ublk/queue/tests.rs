//! Decoding, the mailbox and its leases, and a queue ring woken by the
//! mailbox's eventfd.

use super::*;

const MIB: u32 = 1 << 20;
const SIZE: u64 = 256 << 20;

#[test]
fn decodes_each_op() {
    let r = decode(sys::UBLK_IO_OP_READ, 8, 8, MIB, SIZE).unwrap();
    assert_eq!(
        r,
        Pending {
            kind: Kind::Read,
            offset: 4096,
            len: 4096
        }
    );
    let w = decode(sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA, 0, 1, MIB, SIZE).unwrap();
    assert_eq!(w.kind, Kind::Write { fua: true });
    let w = decode(sys::UBLK_IO_OP_WRITE, 0, 1, MIB, SIZE).unwrap();
    assert_eq!(w.kind, Kind::Write { fua: false });
    let f = decode(sys::UBLK_IO_OP_FLUSH, 0, 0, MIB, SIZE).unwrap();
    assert_eq!(f.kind, Kind::Flush);
    assert_eq!(f.full_result(), 0);
    let t = decode(sys::UBLK_IO_OP_DISCARD, 16, 2048, MIB, SIZE).unwrap();
    assert_eq!((t.kind, t.len), (Kind::Trim, MIB));
    let z = decode(
        sys::UBLK_IO_OP_WRITE_ZEROES | sys::UBLK_IO_F_FUA | sys::UBLK_IO_F_NOUNMAP,
        0,
        8,
        MIB,
        SIZE,
    )
    .unwrap();
    assert_eq!(z.kind, Kind::WriteZeroes { fua: true });
    assert_eq!(
        to_request(&z, None),
        IoRequest::WriteZeroes {
            offset: 0,
            len: 4096,
            fua: true
        }
    );
}

#[test]
fn refuses_what_cannot_be_served() {
    // Larger than the buffer.
    assert_eq!(
        decode(sys::UBLK_IO_OP_READ, 0, 2049, MIB, SIZE),
        Err(-libc::EINVAL)
    );
    assert_eq!(
        decode(sys::UBLK_IO_OP_DISCARD, 0, 4096, MIB, SIZE),
        Err(-libc::EINVAL)
    );
    // Past the end.
    assert_eq!(
        decode(sys::UBLK_IO_OP_WRITE, (SIZE >> 9) - 1, 2, MIB, SIZE),
        Err(-libc::EINVAL)
    );
    assert!(decode(sys::UBLK_IO_OP_WRITE, (SIZE >> 9) - 2, 2, MIB, SIZE).is_ok());
    assert_eq!(
        decode(sys::UBLK_IO_OP_READ, u64::MAX, 1, MIB, SIZE),
        Err(-libc::EINVAL)
    );
    // Empty.
    assert_eq!(
        decode(sys::UBLK_IO_OP_READ, 0, 0, MIB, SIZE),
        Err(-libc::EINVAL)
    );
    // Unknown ops.
    assert_eq!(
        decode(sys::UBLK_IO_OP_WRITE_SAME, 0, 1, MIB, SIZE),
        Err(-libc::EOPNOTSUPP)
    );
    assert_eq!(
        decode(sys::UBLK_IO_OP_ZONE_APPEND, 0, 1, MIB, SIZE),
        Err(-libc::EOPNOTSUPP)
    );
}

#[test]
fn results_are_full_or_errno() {
    let r = Pending {
        kind: Kind::Read,
        offset: 0,
        len: 4096,
    };
    let (res, data) = commit_result(&r, Ok(Some(Bytes::from(vec![7u8; 4096]))));
    assert_eq!(res, 4096);
    assert_eq!(data.map(|d| d.len()), Some(4096));
    // A short read is an error, not a short count.
    assert_eq!(
        commit_result(&r, Ok(Some(Bytes::from(vec![0u8; 512])))).0,
        -libc::EIO
    );
    assert_eq!(commit_result(&r, Ok(None)).0, -libc::EIO);
    assert_eq!(commit_result(&r, Err(libc::EROFS)).0, -libc::EROFS);
    assert_eq!(commit_result(&r, Err(0)).0, -libc::EIO);
    assert_eq!(commit_result(&r, Err(-3)).0, -libc::EIO);
    let w = Pending {
        kind: Kind::Write { fua: false },
        offset: 0,
        len: 8192,
    };
    assert_eq!(commit_result(&w, Ok(None)), (8192, None));
    let f = Pending {
        kind: Kind::Flush,
        offset: 0,
        len: 0,
    };
    assert_eq!(commit_result(&f, Ok(None)), (0, None));
}

/// The eventfd counter, without blocking (0 when nothing is pending).
fn efd_count(m: &Mailbox) -> u64 {
    let mut fds = [libc::pollfd {
        fd: m.efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    if n == 1 {
        m.efd.read().unwrap()
    } else {
        0
    }
}

fn tag_buf(len: usize, fill: u8) -> IoBuf<u8> {
    let mut b = IoBuf::<u8>::new(len);
    b.as_mut_slice().fill(fill);
    b
}

#[test]
fn mailbox_wakes_once_per_batch() {
    let m = Arc::new(Mailbox::new(4).unwrap());
    let m2 = m.clone();
    std::thread::spawn(move || {
        m2.answer(3, Ok(None), false);
        m2.answer(1, Err(libc::EIO), false);
    })
    .join()
    .unwrap();
    // One wakeup for both answers.
    assert_eq!(efd_count(&m), 1);
    let mut out = Vec::new();
    m.take(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].tag, out[1].tag), (3, 1));
    assert!(out[0].buf.is_none());
    let mut again = Vec::new();
    m.take(&mut again);
    assert!(again.is_empty());
    assert_eq!(efd_count(&m), 0);
    // The next answer finds the box empty and wakes the ring again.
    m.answer(2, Ok(None), false);
    assert_eq!(efd_count(&m), 1);
    // A tag past the depth is refused, not stored.
    m.answer(9, Ok(None), false);
    m.take(&mut again);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].tag, 2);
}

#[test]
fn a_lent_tag_is_ready_only_with_its_answer_and_its_buffer() {
    let m = Arc::new(Mailbox::new(4).unwrap());
    let mut out = Vec::new();

    // Answer first, then the lease goes: ready only after the release.
    let buf = tag_buf(8192, 0x5a);
    let ptr = buf.as_ptr();
    let lease = TagLease::new(buf, 4096, 2, m.clone()).unwrap();
    let data = Bytes::from_owner(lease);
    assert_eq!(
        data.as_ptr(),
        ptr,
        "the write's data is the tag buffer, not a copy"
    );
    assert_eq!(data.len(), 4096);
    assert!(crate::disk::is_aligned(&data), "O_DIRECT takes it as it is");
    assert!(data.iter().all(|&b| b == 0x5a));
    let clone = data.slice(512..1024);
    m.answer(2, Ok(None), true);
    m.take(&mut out);
    assert!(out.is_empty(), "no commit while the buffer is lent");
    assert_eq!(efd_count(&m), 0, "and no wakeup for nothing");
    drop(data);
    m.take(&mut out);
    assert!(out.is_empty(), "a clone still holds the buffer");
    drop(clone);
    assert_eq!(efd_count(&m), 1);
    m.take(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].tag, 2);
    assert_eq!(out[0].res, Ok(None));
    let back = out.pop().unwrap().buf.unwrap();
    assert_eq!(back.as_ptr(), ptr);
    assert_eq!(back.len(), 8192);

    // The lease goes first (the usual order: the engine drops the data
    // before it answers): ready with the answer, one wakeup.
    let lease = TagLease::new(back, 8192, 0, m.clone()).unwrap();
    drop(Bytes::from_owner(lease));
    m.take(&mut out);
    assert!(out.is_empty());
    assert_eq!(efd_count(&m), 0);
    m.answer(0, Err(libc::EIO), true);
    assert_eq!(efd_count(&m), 1);
    m.take(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].res, Err(libc::EIO));
    assert_eq!(out[0].buf.as_ref().map(IoBuf::as_ptr), Some(ptr));

    // A lease longer than the buffer is refused and the buffer handed back.
    let back = out.pop().unwrap().buf.unwrap();
    let back = TagLease::new(back, 8193, 0, m.clone()).err().unwrap();
    assert_eq!(back.as_ptr(), ptr);
}

#[test]
fn leases_out_long_after_their_answer_are_reported_once() {
    let m = Arc::new(Mailbox::new(4).unwrap());
    let held = Bytes::from_owner(TagLease::new(tag_buf(4096, 1), 4096, 1, m.clone()).unwrap());
    let soon = Bytes::from_owner(TagLease::new(tag_buf(4096, 2), 4096, 3, m.clone()).unwrap());
    m.answer(1, Ok(None), true);
    let now = Instant::now();
    assert!(m.overdue(now, LEASE_WARN).is_empty(), "not overdue yet");
    let late = m.overdue(now + LEASE_WARN, LEASE_WARN);
    assert_eq!(late.len(), 1, "only the answered one: {late:?}");
    assert_eq!(late[0].0, 1);
    assert!(
        m.overdue(now + 2 * LEASE_WARN, LEASE_WARN).is_empty(),
        "reported once"
    );
    drop(held);
    let mut out = Vec::new();
    m.take(&mut out);
    assert_eq!(out.len(), 1);
    drop(soon);
    m.answer(3, Ok(None), true);
    m.take(&mut out);
    assert_eq!(out.len(), 2);
    assert!(m.overdue(now + 3 * LEASE_WARN, LEASE_WARN).is_empty());
}

#[test]
fn an_io_uring_read_of_the_eventfd_wakes_the_ring() {
    let mut ring = io_uring::IoUring::new(4).unwrap();
    let m = Arc::new(Mailbox::new(4).unwrap());
    let sqe = m.read_sqe(7);
    // SAFETY: the Read targets `m.wake_buf`, which `m` keeps alive until
    // after the CQE is reaped below.
    unsafe { ring.submission().push(&sqe).unwrap() };
    ring.submit().unwrap();
    assert_eq!(
        ring.completion().len(),
        0,
        "nothing posted yet: the read waits"
    );
    let m2 = m.clone();
    let t = std::thread::spawn(move || m2.answer(0, Ok(None), false));
    ring.submit_and_wait(1).unwrap();
    t.join().unwrap();
    let cqe = ring.completion().next().unwrap();
    assert_eq!((cqe.user_data(), cqe.result()), (7, 8));
    // The Read consumed the counter.
    assert_eq!(efd_count(&m), 0);
    let mut out = Vec::new();
    m.take(&mut out);
    assert_eq!(out.len(), 1);
}

/// The user-copy offset of a request's data is libublk's (and so the
/// kernel's `ublk_pos_to_hwq`/`ublk_pos_to_tag` read it back).
#[test]
fn user_copy_positions_match_libublk() {
    for (q, t) in [(0u16, 0u16), (0, 127), (3, 5), (3, 4095)] {
        let ours = u64::try_from(user_copy_pos(q, t).unwrap()).unwrap();
        assert_eq!(
            ours,
            UblkIOCtx::ublk_user_copy_pos(q, t, 0),
            "q {q} tag {t}"
        );
    }
}

#[test]
fn each_request_kind_has_its_latency_kind() {
    use crate::stages::Kind as K;
    assert_eq!(Kind::Read.stage_kind(), K::Read);
    assert_eq!(Kind::Write { fua: true }.stage_kind(), K::Write);
    assert_eq!(Kind::Trim.stage_kind(), K::Discard);
    assert_eq!(
        Kind::WriteZeroes { fua: false }.stage_kind(),
        K::WriteZeroes
    );
    assert_eq!(Kind::Flush.stage_kind(), K::Flush);
}
