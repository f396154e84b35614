//! Unit tests that need crate-private knobs: a small per-SQE byte limit
//! forces every read and write through the resubmit-the-remainder path.
#![allow(clippy::cast_possible_truncation)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use bytes::Bytes;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn make_file(dir: &Path, len: u64) -> PathBuf {
    let path = dir.join("backing.img");
    let f = File::create(&path).unwrap();
    f.set_len(len).unwrap();
    path
}

/// A `data_bytes` backing file in /var/tmp (tmpfs has no O_DIRECT)
/// opened with O_DIRECT and `queue_depth`, and its path; the directory
/// lives as long as the returned guard.
fn direct_disk(data_bytes: u64, queue_depth: u32) -> (tempfile::TempDir, PathBuf, LocalDisk) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = make_file(dir.path(), data_bytes);
    let options = DiskOptions {
        direct: true,
        queue_depth,
    };
    let disk = LocalDisk::open(&path, data_bytes, options).unwrap();
    (dir, path, disk)
}

type Rx = mpsc::Receiver<(u64, IoResult)>;

fn start(disk: LocalDisk) -> (DiskHandle, Rx) {
    let (tx, rx) = mpsc::channel();
    let h = disk
        .start(move |t, r| {
            let _ = tx.send((t, r));
        })
        .unwrap();
    (h, rx)
}

fn run(h: &DiskHandle, rx: &Rx, token: u64, op: DiskOp) -> IoResult {
    h.submit(token, op);
    let (t, r) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(t, token);
    r
}

fn chunked_roundtrip(dir: &Path, direct: bool, chunk: usize) {
    let data_bytes = 1 << 20;
    let path = make_file(dir, data_bytes + 8192);
    let mut disk = LocalDisk::open(
        &path,
        data_bytes,
        DiskOptions {
            direct,
            queue_depth: 4,
        },
    )
    .unwrap();
    disk.set_max_chunk_for_test(chunk);
    let (h, rx) = start(disk);
    let data = Bytes::from(pattern(64 * 1024 + 512, 7));
    let r = run(
        &h,
        &rx,
        1,
        DiskOp::Write {
            offset: 8192,
            data: data.clone(),
            fua: true,
        },
    );
    assert_eq!(r, Ok(None));
    let r = run(
        &h,
        &rx,
        2,
        DiskOp::Read {
            offset: 8192,
            len: data.len() as u32,
        },
    );
    assert_eq!(r.unwrap().unwrap(), data);
    // Write-zeroes on part of it (fallocate ZERO_RANGE on ext4).
    let r = run(
        &h,
        &rx,
        3,
        DiskOp::WriteZeroes {
            offset: 8192,
            len: 4096,
        },
    );
    assert_eq!(r, Ok(None));
    let got = run(
        &h,
        &rx,
        4,
        DiskOp::Read {
            offset: 8192,
            len: 8192,
        },
    )
    .unwrap()
    .unwrap();
    assert!(got[..4096].iter().all(|&b| b == 0));
    assert_eq!(&got[4096..], &data[4096..8192]);
    h.shutdown();
    // Independent check through the page cache / disk.
    let mut f = File::open(&path).unwrap();
    f.seek(SeekFrom::Start(8192 + 8192)).unwrap();
    let mut back = vec![0; data.len() - 8192];
    f.read_exact(&mut back).unwrap();
    assert_eq!(&back[..], &data[8192..]);
}

#[test]
fn disk_chunked_io_resubmits_the_remainder_direct() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    chunked_roundtrip(dir.path(), true, 4096);
    chunked_roundtrip(dir.path(), true, 512);
}

#[test]
fn disk_chunked_io_resubmits_the_remainder_buffered() {
    let dir = tempfile::tempdir().unwrap();
    chunked_roundtrip(dir.path(), false, 1536);
}

/// tmpfs has PUNCH_HOLE but not ZERO_RANGE: write-zeroes falls back to
/// writing zeroes, here in 512-byte SQEs.
#[test]
fn disk_zero_fill_fallback_is_chunked() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let data_bytes = 256 * 1024;
    let path = make_file(dir.path(), data_bytes);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&vec![0xEE; data_bytes as usize]).unwrap();
    }
    let mut disk = LocalDisk::open(&path, data_bytes, DiskOptions::default()).unwrap();
    eprintln!(
        "tmpfs: O_DIRECT {}",
        if disk.is_direct() {
            "accepted"
        } else {
            "refused, buffered I/O"
        }
    );
    disk.set_max_chunk_for_test(512);
    let (h, rx) = start(disk);
    let r = run(
        &h,
        &rx,
        1,
        DiskOp::WriteZeroes {
            offset: 4096,
            len: 64 * 1024,
        },
    );
    assert_eq!(r, Ok(None));
    let got = run(
        &h,
        &rx,
        2,
        DiskOp::Read {
            offset: 0,
            len: 128 * 1024,
        },
    )
    .unwrap()
    .unwrap();
    assert!(got[..4096].iter().all(|&b| b == 0xEE));
    assert!(got[4096..4096 + 65536].iter().all(|&b| b == 0));
    assert!(got[4096 + 65536..].iter().all(|&b| b == 0xEE));
}

/// A regular file that ends inside the data area (truncated after open):
/// the read comes back short, then with 0 (EOF); the rest is zeroes.
#[test]
fn disk_read_across_eof_of_a_regular_file_zero_fills() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let data_bytes = 64 * 1024;
    let path = make_file(dir.path(), data_bytes);
    let disk = LocalDisk::open(&path, data_bytes, DiskOptions::default()).unwrap();
    let (h, rx) = start(disk);
    let data = Bytes::from(pattern(32 * 1024, 3));
    let r = run(
        &h,
        &rx,
        1,
        DiskOp::Write {
            offset: 16 * 1024,
            data: data.clone(),
            fua: false,
        },
    );
    assert_eq!(r, Ok(None));
    // Cut the file in the middle of what was written.
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(24 * 1024)
        .unwrap();
    let got = run(
        &h,
        &rx,
        2,
        DiskOp::Read {
            offset: 16 * 1024,
            len: 32 * 1024,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(got.len(), 32 * 1024);
    assert_eq!(&got[..8192], &data[..8192]);
    assert!(got[8192..].iter().all(|&b| b == 0));
}

#[test]
fn disk_open_rejects_bad_options_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_file(dir.path(), 4096);
    let e = LocalDisk::open(&path, 8192, DiskOptions::default()).unwrap_err();
    assert!(matches!(e, DiskError::TooSmall { .. }), "{e}");
    assert!(e.to_string().contains("backing.img"), "{e}");
    let e = LocalDisk::open(
        &path,
        4096,
        DiskOptions {
            direct: true,
            queue_depth: 0,
        },
    )
    .unwrap_err();
    assert!(matches!(e, DiskError::InvalidOption { .. }), "{e}");
    let e = LocalDisk::open(&path, 1000, DiskOptions::default()).unwrap_err();
    assert!(matches!(e, DiskError::InvalidOption { .. }), "{e}");
    let e = LocalDisk::open(&dir.path().join("missing"), 0, DiskOptions::default()).unwrap_err();
    assert!(matches!(e, DiskError::Open { .. }), "{e}");
    let e = LocalDisk::open(dir.path(), 0, DiskOptions::default()).unwrap_err();
    assert!(matches!(e, DiskError::NotFileOrBlockDevice { .. }), "{e}");
}

/// Waits until the inline disk has answered `n` ops (or 30 s pass).
fn inline_answers(d: &mut InlineDisk, n: usize) -> Vec<(u64, IoResult)> {
    let mut out = Vec::new();
    let t0 = std::time::Instant::now();
    while out.len() < n && t0.elapsed() < Duration::from_secs(30) {
        d.wait(Duration::from_millis(100), &mut out);
    }
    out
}

#[test]
fn inline_disk_answers_every_op_once_and_wakes_on_demand() {
    let data_bytes = 1 << 20;
    let (_dir, path, disk) = direct_disk(data_bytes, 2);
    let mut d = disk.inline().unwrap();
    // More ops than the queue depth, in one batch: the rest wait their turn.
    let blocks: Vec<Bytes> = (0..6u8).map(|i| Bytes::from(pattern(4096, i))).collect();
    for (i, b) in blocks.iter().enumerate() {
        d.submit(
            i as u64,
            DiskOp::Write {
                offset: i as u64 * 8192,
                data: b.clone(),
                fua: false,
            },
        );
    }
    assert_eq!(d.in_flight(), 6);
    let mut got = inline_answers(&mut d, 6);
    got.sort_by_key(|(t, _)| *t);
    assert_eq!(got.len(), 6);
    for (i, (t, r)) in got.iter().enumerate() {
        assert_eq!((*t, r), (i as u64, &Ok(None)));
    }
    d.submit(100, DiskOp::Flush);
    d.submit(
        101,
        DiskOp::Read {
            offset: 8192 * 3,
            len: 4096,
        },
    );
    let got = inline_answers(&mut d, 2);
    assert_eq!(got.len(), 2);
    for (t, r) in got {
        match t {
            100 => assert_eq!(r, Ok(None)),
            101 => assert_eq!(r.unwrap().unwrap(), blocks[3]),
            other => panic!("unexpected token {other}"),
        }
    }
    assert_eq!(d.in_flight(), 0);

    // Nothing in flight: a wait lasts its timeout, unless woken.
    let mut out = Vec::new();
    let t0 = std::time::Instant::now();
    d.wait(Duration::from_millis(300), &mut out);
    assert!(t0.elapsed() >= Duration::from_millis(250) && out.is_empty());
    let waker = d.waker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake();
    });
    let t0 = std::time::Instant::now();
    d.wait(Duration::from_secs(20), &mut out);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the waker ends the wait"
    );
    t.join().unwrap();
    // A wake that came before the wait began still ends it.
    d.waker().wake();
    let t0 = std::time::Instant::now();
    d.wait(Duration::from_secs(20), &mut out);
    assert!(t0.elapsed() < Duration::from_secs(10));

    // Bad ops are answered, not dropped.
    d.submit(
        7,
        DiskOp::Read {
            offset: data_bytes,
            len: 4096,
        },
    );
    assert_eq!(inline_answers(&mut d, 1), vec![(7, Err(libc::EINVAL))]);

    // After shutdown: answered with ESHUTDOWN.
    d.submit(8, DiskOp::Flush);
    d.shutdown();
    d.submit(9, DiskOp::Flush);
    let mut out = Vec::new();
    d.wait(Duration::from_millis(10), &mut out);
    assert_eq!(out, vec![(9, Err(libc::ESHUTDOWN))]);
    drop(d);
    let mut f = File::open(&path).unwrap();
    let mut back = vec![0u8; 4096];
    f.seek(SeekFrom::Start(8192 * 5)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert_eq!(Bytes::from(back), blocks[5]);
}

#[test]
fn inline_disk_polls_end_a_wait_when_the_socket_is_ready() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let data_bytes = 1 << 20;
    let path = make_file(dir.path(), data_bytes);
    let mut d = LocalDisk::open(&path, data_bytes, DiskOptions::default())
        .unwrap()
        .inline()
        .unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    let mut out = Vec::new();
    let mut polls = Vec::new();

    // Nothing to read: the poll stays armed through a whole wait.
    d.poll(&b, libc::POLLIN, 42).unwrap();
    d.wait(Duration::from_millis(200), &mut out);
    d.take_polls(&mut polls);
    assert!(polls.is_empty() && out.is_empty());

    // Data arrives during the wait: the poll ends it, with its key.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        a.write_all(b"x").unwrap();
        a
    });
    let t0 = std::time::Instant::now();
    d.wait(Duration::from_secs(20), &mut out);
    d.take_polls(&mut polls);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the poll ends the wait"
    );
    assert_eq!(polls.len(), 1);
    assert_eq!(polls[0].key, 42);
    assert!(polls[0].res & i32::from(libc::POLLIN) != 0, "{:?}", polls);
    assert!(polls[0].buf.is_none());
    let a = t.join().unwrap();

    // One-shot: already readable when armed again, it fires right away.
    polls.clear();
    d.poll(&b, libc::POLLIN, 43).unwrap();
    d.wait(Duration::from_secs(20), &mut out);
    d.take_polls(&mut polls);
    assert_eq!(polls.iter().map(|p| p.key).collect::<Vec<_>>(), vec![43]);

    // A writable socket fires POLLOUT; a key too large is refused.
    polls.clear();
    d.poll(&a, libc::POLLOUT, 7).unwrap();
    d.wait(Duration::from_secs(20), &mut out);
    d.take_polls(&mut polls);
    assert_eq!(polls.iter().map(|p| p.key).collect::<Vec<_>>(), vec![7]);
    assert!(d.poll(&a, libc::POLLIN, u64::MAX >> 1).is_err());

    // A receive ends only when every byte asked for is in: the "x" still
    // unread plus 8191 bytes sent in pieces.
    polls.clear();
    let mut buf = AlignedBuf::zeroed(8192).unwrap();
    buf.as_mut_slice()[0] = 0xEE;
    d.recv(&b, buf, 0, 8192, 50).unwrap();
    let mut a2 = a.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        for chunk in pattern(8191, 3).chunks(1000) {
            std::thread::sleep(Duration::from_millis(5));
            a2.write_all(chunk).unwrap();
        }
    });
    let t0 = std::time::Instant::now();
    while polls.is_empty() && t0.elapsed() < Duration::from_secs(20) {
        d.wait(Duration::from_millis(100), &mut out);
        d.take_polls(&mut polls);
    }
    t.join().unwrap();
    assert_eq!(polls.len(), 1, "one completion for the whole receive");
    let ev = polls.pop().unwrap();
    assert_eq!((ev.key, ev.res), (50, 8192));
    let got = ev.buf.unwrap();
    assert_eq!(got.as_slice()[0], b'x');
    assert_eq!(&got.as_slice()[1..], &pattern(8191, 3)[..]);

    // A receive still pending when the socket is shut down ends with what
    // it had (here nothing).
    d.recv(&b, AlignedBuf::zeroed(4096).unwrap(), 0, 4096, 51)
        .unwrap();
    d.wait(Duration::from_millis(50), &mut out);
    b.shutdown(std::net::Shutdown::Both).unwrap();
    let t0 = std::time::Instant::now();
    while polls.is_empty() && t0.elapsed() < Duration::from_secs(20) {
        d.wait(Duration::from_millis(100), &mut out);
        d.take_polls(&mut polls);
    }
    let ev = polls.pop().unwrap();
    assert_eq!((ev.key, ev.res), (51, 0));

    // A poll still armed does not hold up the shutdown.
    d.poll(&b, libc::POLLOUT | libc::POLLIN, 44).unwrap();
    d.poll(&a, libc::POLLIN, 45).unwrap();
    d.shutdown();
    assert!(d.poll(&a, libc::POLLIN, 46).is_err());
    assert!(out.is_empty());
}

/// A zero-copy read whose registration the kernel refuses (the descriptor
/// is not a ublk device) falls back to the copy: it is answered with the
/// data, not the landed marker, and the buffer indices come back (more
/// reads than a chain leaves in flight at once all succeed). The landing
/// itself needs ublk_drv: the VM's smoke scenario covers it on 6.17.
#[test]
fn disk_read_into_a_refused_registration_falls_back_to_the_data() {
    let (_dir, _, disk) = direct_disk(1 << 20, 4);
    let (h, rx) = start(disk);
    let data = Bytes::from(pattern(64 * 1024, 3));
    let w = DiskOp::Write {
        offset: 4096,
        data: data.clone(),
        fua: false,
    };
    assert_eq!(run(&h, &rx, 1, w), Ok(None));
    let not_ublk = std::fs::File::open("/dev/null").unwrap();
    let dst = crate::zerocopy::ZcDest {
        cdev: Arc::new(std::os::fd::OwnedFd::from(not_ublk)),
        qid: 0,
        tag: 5,
    };
    for token in 2..40u64 {
        let op = DiskOp::ReadInto {
            offset: 4096,
            len: data.len() as u32,
            dst: dst.clone(),
        };
        let got = run(&h, &rx, token, op).unwrap().unwrap();
        assert!(!crate::zerocopy::is_landed(&got));
        assert_eq!(got, data);
    }
    h.shutdown();
}
