//! The local disk layer end to end: real files (ext4 under the target dir
//! and the system temp dir, tmpfs under /dev/shm) and, when run as root, a
//! loop block device.

// Test helpers outside #[test] functions are not covered by clippy.toml's
// allow-*-in-tests settings; test sizes are small, casts cannot truncate.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::libc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ublk_target::disk::{
    is_aligned, BackingKind, DiskHandle, DiskOp, DiskOptions, IoResult, LocalDisk,
};

const TAIL: usize = 64 * 1024;
const TAIL_BYTE: u8 = 0xA5;
const TIMEOUT: Duration = Duration::from_secs(60);

type Rx = mpsc::Receiver<(u64, IoResult)>;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0; len];
    rng.fill(&mut v[..]);
    v
}

/// A backing file of `data_bytes` followed by a TAIL_BYTE-filled tail
/// standing in for the metadata.
fn make_backing(dir: &Path, data_bytes: u64) -> PathBuf {
    let path = dir.join("backing.img");
    let mut f = File::create(&path).unwrap();
    f.set_len(data_bytes).unwrap();
    f.seek(SeekFrom::Start(data_bytes)).unwrap();
    f.write_all(&[TAIL_BYTE; TAIL]).unwrap();
    f.sync_all().unwrap();
    path
}

fn assert_tail_untouched(path: &Path, data_bytes: u64) {
    let mut f = File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), data_bytes + TAIL as u64);
    f.seek(SeekFrom::Start(data_bytes)).unwrap();
    let mut tail = vec![0; TAIL];
    f.read_exact(&mut tail).unwrap();
    assert!(
        tail.iter().all(|&b| b == TAIL_BYTE),
        "bytes beyond data_bytes were modified"
    );
}

/// Opens with O_DIRECT if the filesystem takes it, says which mode is used.
fn open(path: &Path, data_bytes: u64, queue_depth: u32) -> LocalDisk {
    let disk = LocalDisk::open(
        path,
        data_bytes,
        DiskOptions {
            direct: true,
            queue_depth,
        },
    )
    .unwrap();
    if disk.is_direct() {
        eprintln!("{}: O_DIRECT", path.display());
    } else {
        eprintln!(
            "{}: the filesystem refused O_DIRECT, testing the buffered (direct: false) path",
            path.display()
        );
    }
    disk
}

fn start(disk: LocalDisk) -> (DiskHandle, Rx) {
    let (tx, rx) = mpsc::channel();
    let h = disk
        .start(move |token, res| {
            let _ = tx.send((token, res));
        })
        .unwrap();
    (h, rx)
}

/// Waits for exactly the tokens in `expected`, each once.
fn collect(rx: &Rx, expected: impl IntoIterator<Item = u64>) -> HashMap<u64, IoResult> {
    let mut want: Vec<u64> = expected.into_iter().collect();
    want.sort_unstable();
    let mut got = HashMap::new();
    let deadline = Instant::now() + TIMEOUT;
    while got.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (token, res) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("only {} of {} answers", got.len(), want.len()));
        assert!(
            want.binary_search(&token).is_ok(),
            "unexpected token {token}"
        );
        assert!(
            got.insert(token, res).is_none(),
            "token {token} answered twice"
        );
    }
    got
}

fn run(h: &DiskHandle, rx: &Rx, token: u64, op: DiskOp) -> IoResult {
    h.submit(token, op);
    collect(rx, [token]).remove(&token).unwrap()
}

fn read(h: &DiskHandle, rx: &Rx, offset: u64, len: u32) -> Bytes {
    let b = run(h, rx, u64::MAX, DiskOp::Read { offset, len })
        .unwrap()
        .unwrap();
    assert_eq!(b.len(), len as usize);
    assert!(is_aligned(&b), "read buffers are 4096-aligned");
    b
}

/// `Bytes` at a deliberately odd address (when `misalign`).
fn bytes_at(data: &[u8], misalign: bool) -> Bytes {
    if misalign {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(0);
        v.extend_from_slice(data);
        let b = Bytes::from(v).slice(1..);
        assert!(!is_aligned(&b));
        b
    } else {
        Bytes::copy_from_slice(data)
    }
}

fn random_writes_read_back(dir: &Path) {
    let data_bytes: u64 = 16 << 20;
    let path = make_backing(dir, data_bytes);
    let disk = open(&path, data_bytes, 32);
    assert_eq!(disk.kind(), BackingKind::RegularFile);
    let (h, rx) = start(disk);

    // 256 non-overlapping extents: one per 64 KiB region, random aligned
    // position and length (512 B .. 64 KiB) inside it.
    let mut rng = StdRng::seed_from_u64(42);
    let regions = data_bytes / 65536;
    let mut extents = Vec::new();
    for r in 0..regions {
        let sectors = rng.gen_range(1..=128u64);
        let start = rng.gen_range(0..=128 - sectors);
        extents.push((r * 65536 + start * 512, (sectors * 512) as usize));
    }
    let datas: Vec<Vec<u8>> = extents
        .iter()
        .enumerate()
        .map(|(i, &(_, len))| pattern(len, i as u64))
        .collect();
    let mut peak = 0;
    for (i, (&(offset, _), data)) in extents.iter().zip(&datas).enumerate() {
        h.submit(
            i as u64,
            DiskOp::Write {
                offset,
                data: bytes_at(data, i % 2 == 1),
                fua: i % 7 == 0,
            },
        );
        peak = peak.max(h.in_flight());
    }
    eprintln!("peak in flight {peak} (queue depth 32)");
    let answers = collect(&rx, 0..extents.len() as u64);
    assert!(answers.values().all(|r| *r == Ok(None)), "{answers:?}");
    assert_eq!(h.in_flight(), 0);

    for (i, &(offset, len)) in extents.iter().enumerate() {
        h.submit(
            1000 + i as u64,
            DiskOp::Read {
                offset,
                len: len as u32,
            },
        );
    }
    let answers = collect(&rx, (0..extents.len() as u64).map(|i| 1000 + i));
    for (i, data) in datas.iter().enumerate() {
        let got = answers[&(1000 + i as u64)].clone().unwrap().unwrap();
        assert_eq!(&got[..], &data[..], "extent {i}");
    }
    h.shutdown();
    assert_tail_untouched(&path, data_bytes);
}

#[test]
fn disk_random_writes_many_in_flight_read_back_target_dir() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    random_writes_read_back(dir.path());
}

#[test]
fn disk_random_writes_many_in_flight_read_back_temp_dir() {
    let dir = tempfile::tempdir().unwrap();
    random_writes_read_back(dir.path());
}

#[test]
fn disk_random_writes_many_in_flight_read_back_var_tmp() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    random_writes_read_back(dir.path());
}

/// tmpfs: O_DIRECT is refused on older kernels (then the buffered path is
/// used, and the test says so), accepted on newer ones.
#[test]
fn disk_tmpfs_direct_or_buffered_fallback() {
    if !Path::new("/dev/shm").is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    random_writes_read_back(dir.path());
}

#[test]
fn disk_buffered_mode_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let data_bytes = 1 << 20;
    let path = make_backing(dir.path(), data_bytes);
    let disk = LocalDisk::open(
        &path,
        data_bytes,
        DiskOptions {
            direct: false,
            ..DiskOptions::default()
        },
    )
    .unwrap();
    assert!(!disk.is_direct());
    let (h, rx) = start(disk);
    let data = pattern(12288, 9);
    for (i, misalign) in [(0u64, false), (1, true)] {
        let off = i * 65536 + 512;
        let r = run(
            &h,
            &rx,
            i,
            DiskOp::Write {
                offset: off,
                data: bytes_at(&data, misalign),
                fua: misalign,
            },
        );
        assert_eq!(r, Ok(None));
        assert_eq!(&read(&h, &rx, off, 12288)[..], &data[..]);
    }
    assert_eq!(run(&h, &rx, 9, DiskOp::Flush), Ok(None));
    drop(h);
    assert_tail_untouched(&path, data_bytes);
}

#[test]
fn disk_fua_writes_and_flushes_complete() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes = 4 << 20;
    let path = make_backing(dir.path(), data_bytes);
    let (h, rx) = start(open(&path, data_bytes, 16));
    let mut tokens = Vec::new();
    for i in 0..64u64 {
        let op = if i % 8 == 7 {
            DiskOp::Flush
        } else {
            DiskOp::Write {
                offset: i * 4096,
                data: Bytes::from(pattern(4096, i)),
                fua: i % 2 == 0,
            }
        };
        h.submit(i, op);
        tokens.push(i);
    }
    let answers = collect(&rx, tokens);
    assert!(answers.values().all(|r| *r == Ok(None)), "{answers:?}");
    // A flush after everything was answered.
    assert_eq!(run(&h, &rx, 100, DiskOp::Flush), Ok(None));
    for i in (0..64u64).filter(|i| i % 8 != 7) {
        assert_eq!(&read(&h, &rx, i * 4096, 4096)[..], &pattern(4096, i)[..]);
    }
    drop(h);
    assert_tail_untouched(&path, data_bytes);
}

fn trim_and_zeroes(h: &DiskHandle, rx: &Rx, data_bytes: u64, trim_zeroes: bool) {
    let len = 256 * 1024;
    let data = pattern(len, 5);
    // Fill the first 256 KiB and the last 256 KiB of the data area.
    for (t, off) in [(1, 0), (2, data_bytes - len as u64)] {
        let r = run(
            h,
            rx,
            t,
            DiskOp::Write {
                offset: off,
                data: Bytes::from(data.clone()),
                fua: false,
            },
        );
        assert_eq!(r, Ok(None));
    }
    // Trim [64K, 128K), write-zeroes [160K, 192K), and write-zeroes the very
    // end of the data area (next to the "metadata").
    let end = data_bytes - 8192;
    h.submit(
        3,
        DiskOp::Trim {
            offset: 65536,
            len: 65536,
        },
    );
    h.submit(
        4,
        DiskOp::WriteZeroes {
            offset: 160 * 1024,
            len: 32 * 1024,
        },
    );
    h.submit(
        5,
        DiskOp::WriteZeroes {
            offset: end,
            len: 8192,
        },
    );
    let answers = collect(rx, [3, 4, 5]);
    assert!(answers.values().all(|r| *r == Ok(None)), "{answers:?}");

    let got = read(h, rx, 0, len as u32);
    assert_eq!(&got[..65536], &data[..65536]);
    if trim_zeroes {
        assert!(got[65536..131072].iter().all(|&b| b == 0), "trim then read");
    }
    assert_eq!(&got[131072..160 * 1024], &data[131072..160 * 1024]);
    assert!(got[160 * 1024..192 * 1024].iter().all(|&b| b == 0));
    assert_eq!(&got[192 * 1024..], &data[192 * 1024..]);
    let got = read(h, rx, data_bytes - len as u64, len as u32);
    assert_eq!(&got[..len - 8192], &data[..len - 8192]);
    assert!(got[len - 8192..].iter().all(|&b| b == 0));
}

#[test]
fn disk_trim_and_write_zeroes_read_back_zeroes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes = 4 << 20;
    let path = make_backing(dir.path(), data_bytes);
    let (h, rx) = start(open(&path, data_bytes, 8));
    trim_and_zeroes(&h, &rx, data_bytes, true);
    drop(h);
    assert_tail_untouched(&path, data_bytes);
}

#[test]
fn disk_out_of_range_and_misaligned_are_einval() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes = 1 << 20;
    let path = make_backing(dir.path(), data_bytes);
    let (h, rx) = start(open(&path, data_bytes, 8));
    let w = |offset, len| DiskOp::Write {
        offset,
        data: Bytes::from(vec![0xFF; len]),
        fua: false,
    };
    let bad = [
        DiskOp::Read {
            offset: data_bytes,
            len: 512,
        },
        DiskOp::Read {
            offset: data_bytes - 512,
            len: 1024,
        },
        DiskOp::Read {
            offset: u64::MAX - 511,
            len: 1024,
        },
        DiskOp::Read {
            offset: 100,
            len: 512,
        },
        DiskOp::Read {
            offset: 0,
            len: 100,
        },
        w(data_bytes - 4096, 8192),
        w(data_bytes, 512),
        w(512, 513),
        w(3, 512),
        DiskOp::Trim {
            offset: data_bytes - 4096,
            len: 8192,
        },
        DiskOp::Trim {
            offset: 0,
            len: u64::MAX - 511,
        },
        DiskOp::WriteZeroes {
            offset: data_bytes,
            len: 512,
        },
        DiskOp::WriteZeroes {
            offset: 512,
            len: 100,
        },
    ];
    let n = bad.len() as u64;
    for (i, op) in bad.into_iter().enumerate() {
        h.submit(i as u64, op);
    }
    let answers = collect(&rx, 0..n);
    for (t, r) in &answers {
        assert_eq!(*r, Err(libc::EINVAL), "op {t}");
    }
    // The very last sector is fine.
    let r = run(&h, &rx, 99, w(data_bytes - 512, 512));
    assert_eq!(r, Ok(None));
    // Zero-length ops are no-ops.
    assert_eq!(
        run(&h, &rx, 100, DiskOp::Read { offset: 0, len: 0 }),
        Ok(Some(Bytes::new()))
    );
    drop(h);
    assert_tail_untouched(&path, data_bytes);
}

#[test]
fn disk_tokens_come_back_exactly_once() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes = 4 << 20;
    let path = make_backing(dir.path(), data_bytes);
    let (h, rx) = start(open(&path, data_bytes, 8));
    let mut rng = StdRng::seed_from_u64(7);
    let mut tokens = Vec::new();
    for i in 0..2000u64 {
        let token = i * 1_000_003 + 17;
        let offset = rng.gen_range(0..data_bytes / 4096) * 4096;
        let op = match rng.gen_range(0..6) {
            0 | 1 => DiskOp::Read { offset, len: 4096 },
            2 | 3 => DiskOp::Write {
                offset,
                data: Bytes::from(vec![i as u8; 4096]),
                fua: rng.gen(),
            },
            4 => DiskOp::Flush,
            _ => DiskOp::Read {
                offset: data_bytes,
                len: 4096,
            },
        };
        h.submit(token, op);
        tokens.push(token);
    }
    let answers = collect(&rx, tokens);
    assert_eq!(answers.len(), 2000);
    assert_eq!(h.in_flight(), 0);
    drop(h);
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "extra answers"
    );
}

#[test]
fn disk_shutdown_drains_then_answers_eshutdown() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes = 4 << 20;
    let path = make_backing(dir.path(), data_bytes);
    let (h, rx) = start(open(&path, data_bytes, 4));
    let other = h.clone();
    for i in 0..200u64 {
        h.submit(
            i,
            DiskOp::Write {
                offset: (i % 1024) * 4096,
                data: Bytes::from(vec![1; 4096]),
                fua: false,
            },
        );
    }
    h.shutdown();
    // Everything submitted before shutdown() was answered before it returned.
    assert_eq!(h.in_flight(), 0);
    let answers: Vec<_> = rx.try_iter().collect();
    assert_eq!(answers.len(), 200);
    assert!(answers.iter().all(|(_, r)| *r == Ok(None)));
    // Later ops, from any clone, are refused.
    assert_eq!(run(&other, &rx, 500, DiskOp::Flush), Err(libc::ESHUTDOWN));
    h.shutdown();
    drop(h);
    drop(other);
    assert_tail_untouched(&path, data_bytes);
}

#[test]
fn disk_dropping_the_last_handle_drains() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes = 4 << 20;
    let path = make_backing(dir.path(), data_bytes);
    let (h, rx) = start(open(&path, data_bytes, 4));
    let h2 = h.clone();
    for i in 0..100u64 {
        h2.submit(
            i,
            DiskOp::Write {
                offset: i * 4096,
                data: Bytes::from(vec![i as u8; 4096]),
                fua: false,
            },
        );
    }
    drop(h2);
    drop(h);
    // The drop waited for the thread: all answers are there already.
    let answers: Vec<_> = rx.try_iter().collect();
    assert_eq!(answers.len(), 100);
    let mut f = File::open(&path).unwrap();
    let mut block = vec![0; 4096];
    f.seek(SeekFrom::Start(99 * 4096)).unwrap();
    f.read_exact(&mut block).unwrap();
    assert!(block.iter().all(|&b| b == 99));
}

#[test]
fn disk_handle_is_shared_across_threads_and_callback_may_submit() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<DiskHandle>();

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes = 4 << 20;
    let path = make_backing(dir.path(), data_bytes);
    let disk = open(&path, data_bytes, 16);
    let (tx, rx) = mpsc::channel();
    let slot: Arc<OnceLock<DiskHandle>> = Arc::new(OnceLock::new());
    let from_cb = Arc::clone(&slot);
    let h = disk
        .start(move |token, res| {
            // Tokens >= 1_000_000 chain one follow-up read from the callback.
            if (1_000_000..1_000_010).contains(&token) {
                if let Some(h) = from_cb.get() {
                    h.submit(
                        token + 1,
                        DiskOp::Read {
                            offset: 0,
                            len: 4096,
                        },
                    );
                }
            }
            let _ = tx.send((token, res));
        })
        .unwrap();
    slot.set(h.clone()).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..250u64 {
                    h.submit(
                        t * 1000 + i,
                        DiskOp::Write {
                            offset: (t * 250 + i) * 4096,
                            data: Bytes::from(vec![t as u8; 4096]),
                            fua: false,
                        },
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    h.submit(
        1_000_000,
        DiskOp::Read {
            offset: 0,
            len: 4096,
        },
    );
    let expected = (0..4u64)
        .flat_map(|t| (0..250).map(move |i| t * 1000 + i))
        .chain(1_000_000..=1_000_010);
    let answers = collect(&rx, expected);
    assert!(answers.values().all(Result::is_ok));
    // The callback holds a handle (a cycle): shutdown() closes the disk.
    h.shutdown();
}

/// Loop device over a file: BLKDISCARD / BLKZEROOUT on a real block device.
/// Needs root and losetup; skipped otherwise.
#[test]
fn disk_block_device_via_loop() {
    struct Loop(String);
    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: loop device test skipped");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes: u64 = 8 << 20;
    let backing = make_backing(dir.path(), data_bytes);
    let out = match std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
    {
        Ok(o) if o.status.success() => o,
        other => {
            eprintln!("losetup unavailable ({other:?}): loop device test skipped");
            return;
        }
    };
    let dev = Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    eprintln!("loop device {}", dev.0);
    let disk = open(Path::new(&dev.0), data_bytes, 16);
    assert_eq!(disk.kind(), BackingKind::BlockDevice);
    let (h, rx) = start(disk);
    for i in 0..32u64 {
        h.submit(
            i,
            DiskOp::Write {
                offset: i * 8192 + 4096,
                data: bytes_at(&pattern(4096, i), i % 2 == 0),
                fua: i % 3 == 0,
            },
        );
    }
    let answers = collect(&rx, 0..32);
    assert!(answers.values().all(|r| *r == Ok(None)), "{answers:?}");
    for i in 0..32u64 {
        assert_eq!(
            &read(&h, &rx, i * 8192 + 4096, 4096)[..],
            &pattern(4096, i)[..]
        );
    }
    // A loop device discards by punching holes in its file: reads give
    // zeroes, so the full check applies.
    trim_and_zeroes(&h, &rx, data_bytes, true);
    assert_eq!(run(&h, &rx, 50, DiskOp::Flush), Ok(None));
    let r = run(
        &h,
        &rx,
        51,
        DiskOp::Read {
            offset: data_bytes,
            len: 4096,
        },
    );
    assert_eq!(r, Err(libc::EINVAL));
    h.shutdown();
    drop(h);
    drop(dev);
    assert_tail_untouched(&backing, data_bytes);
}

/// Prints (does not assert) 4 KiB random-write IOPS at queue depth 32 for
/// one second, on a real filesystem.
#[test]
fn disk_throughput_4k_random_writes_qd32() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_bytes: u64 = 64 << 20;
    let path = make_backing(dir.path(), data_bytes);
    // Write the whole area first so the numbers are about overwriting
    // (a block device's steady state), not block allocation or extent
    // conversion.
    {
        let mut f = File::options().write(true).open(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..data_bytes >> 20 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    for direct in [true, false] {
        let disk = LocalDisk::open(
            &path,
            data_bytes,
            DiskOptions {
                direct,
                queue_depth: 32,
            },
        )
        .unwrap();
        let mode = if disk.is_direct() {
            "O_DIRECT"
        } else {
            "buffered"
        };
        let (h, rx) = start(disk);
        let mut rng = StdRng::seed_from_u64(1);
        let blocks = data_bytes / 4096;
        let data = ublk_target::disk::AlignedBuf::copy_from(&pattern(4096, 3))
            .unwrap()
            .into_bytes();
        let submit = |rng: &mut StdRng, token| {
            h.submit(
                token,
                DiskOp::Write {
                    offset: rng.gen_range(0..blocks) * 4096,
                    data: data.clone(),
                    fua: false,
                },
            );
        };
        let mut next = 0u64;
        for _ in 0..32 {
            submit(&mut rng, next);
            next += 1;
        }
        let start_t = Instant::now();
        let mut done = 0u64;
        let mut errors = 0u64;
        while start_t.elapsed() < Duration::from_secs(1) {
            let (_, r) = rx.recv_timeout(TIMEOUT).unwrap();
            errors += u64::from(r.is_err());
            done += 1;
            submit(&mut rng, next);
            next += 1;
        }
        let secs = start_t.elapsed().as_secs_f64();
        for _ in 0..32 {
            let _ = rx.recv_timeout(TIMEOUT).unwrap();
        }
        assert_eq!(errors, 0);
        eprintln!(
            "4k random writes QD32 {mode}: {:.0} IOPS ({done} in {secs:.2}s)",
            done as f64 / secs
        );
        h.shutdown();
    }
}
