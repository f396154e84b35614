//! The NBD export driven by real NBD clients: nbdinfo, nbdcopy (libnbd-bin),
//! qemu-io (qemu-utils) and fio's nbd engine (fio). A missing tool fails the
//! test with the package to install.

// Test code: helpers outside #[test] fns are not covered by clippy.toml's
// allow-*-in-tests, and test sizes are small, so truncating casts cannot bite.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use ublk_target::frontend::{BlockBackend, IoRequest, IoResult, Reply};
use ublk_target::nbd::{NbdServer, NbdServerHandle};

/// An in-memory device whose requests complete on a worker thread, in
/// batches processed in shuffled order, so replies come back out of order.
struct MemBackend {
    data: Arc<Mutex<Vec<u8>>>,
    writable: AtomicBool,
    queue: Mutex<mpsc::Sender<(IoRequest, Reply)>>,
    /// Requests completed before one submitted earlier.
    reordered: Arc<AtomicUsize>,
    /// Requests seen, by kind: read, write, flush, trim, zeroes, fua.
    counts: Arc<[AtomicUsize; 6]>,
}

impl MemBackend {
    fn new(size: usize) -> Arc<MemBackend> {
        let data = Arc::new(Mutex::new(vec![0u8; size]));
        let reordered = Arc::new(AtomicUsize::new(0));
        let counts: Arc<[AtomicUsize; 6]> = Arc::new(Default::default());
        let (tx, rx) = mpsc::channel::<(IoRequest, Reply)>();
        let (d, r, c) = (data.clone(), reordered.clone(), counts.clone());
        thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            while let Ok(first) = rx.recv() {
                // Gather what the client has in flight (a short wait, so a
                // loaded machine still forms batches to reorder; with
                // try_recv alone a backend that keeps up sees one request
                // at a time and never reorders).
                let mut batch = vec![first];
                let until = Instant::now() + Duration::from_millis(2);
                while batch.len() < 64 {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                // Shuffle; count how many complete ahead of an older one.
                let mut order: Vec<usize> = (0..batch.len()).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.gen_range(0..=i));
                }
                let mut min_pending = 0;
                let mut done = vec![false; batch.len()];
                let mut slots: Vec<Option<(IoRequest, Reply)>> =
                    batch.into_iter().map(Some).collect();
                for i in order {
                    if i > min_pending {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                    done[i] = true;
                    while min_pending < done.len() && done[min_pending] {
                        min_pending += 1;
                    }
                    let (req, reply) = slots[i].take().unwrap();
                    let res = execute(&d, &c, req);
                    reply(res);
                }
            }
        });
        Arc::new(MemBackend {
            data,
            writable: AtomicBool::new(true),
            queue: Mutex::new(tx),
            reordered,
            counts,
        })
    }

    fn count(&self, kind: usize) -> usize {
        self.counts[kind].load(Ordering::Relaxed)
    }
}

const READS: usize = 0;
const WRITES: usize = 1;
const FLUSHES: usize = 2;
const TRIMS: usize = 3;
const ZEROES: usize = 4;
const FUAS: usize = 5;

fn execute(data: &Mutex<Vec<u8>>, counts: &[AtomicUsize; 6], req: IoRequest) -> IoResult {
    let mut d = data.lock().unwrap();
    let check = |offset: u64, len: usize, size: usize| {
        assert_eq!(offset % 512, 0, "unaligned offset reached the backend");
        assert_eq!(len % 512, 0, "unaligned length reached the backend");
        assert!(len <= 1 << 20, "request over 1 MiB reached the backend");
        assert!(
            offset as usize + len <= size,
            "out of range request reached the backend"
        );
        offset as usize
    };
    let size = d.len();
    match req {
        IoRequest::Read { offset, len } => {
            counts[READS].fetch_add(1, Ordering::Relaxed);
            let o = check(offset, len as usize, size);
            Ok(Some(Bytes::copy_from_slice(&d[o..o + len as usize])))
        }
        IoRequest::Write { offset, data, fua } => {
            counts[WRITES].fetch_add(1, Ordering::Relaxed);
            if fua {
                counts[FUAS].fetch_add(1, Ordering::Relaxed);
            }
            let o = check(offset, data.len(), size);
            d[o..o + data.len()].copy_from_slice(&data);
            Ok(None)
        }
        IoRequest::Flush => {
            counts[FLUSHES].fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        IoRequest::Trim { offset, len } => {
            counts[TRIMS].fetch_add(1, Ordering::Relaxed);
            let o = check(offset, len as usize, size);
            d[o..o + len as usize].fill(0);
            Ok(None)
        }
        IoRequest::WriteZeroes { offset, len, fua } => {
            counts[ZEROES].fetch_add(1, Ordering::Relaxed);
            if fua {
                counts[FUAS].fetch_add(1, Ordering::Relaxed);
            }
            let o = check(offset, len as usize, size);
            d[o..o + len as usize].fill(0);
            Ok(None)
        }
    }
}

impl BlockBackend for MemBackend {
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }
    fn submit(&self, req: IoRequest, reply: Reply) {
        if !self.writable() {
            reply(Err(nix::libc::EROFS));
            return;
        }
        if let Err(mpsc::SendError((_, reply))) = self.queue.lock().unwrap().send((req, reply)) {
            reply(Err(nix::libc::EIO));
        }
    }
}

fn serve(backend: Arc<MemBackend>) -> (NbdServerHandle, String) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ublk_target=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let h = NbdServer::bind(addr, "r0".into(), backend).unwrap().spawn();
    let uri = format!("nbd://127.0.0.1:{}/r0", h.local_addr().port());
    (h, uri)
}

fn stop(h: NbdServerHandle) {
    h.shutdown();
    h.join();
}

use rep_testkit::require;

/// Run a command with a 120 s limit.
fn run(cmd: &str, args: &[&str]) -> Output {
    run_env(cmd, args, &[])
}

fn run_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("120")
        .arg(cmd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    eprintln!(
        "$ {cmd} {} ({:.2?}): {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        started.elapsed(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_ok(cmd: &str, args: &[&str]) -> Output {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn nbd_export_nbdinfo_shows_size_and_features() {
    require("nbdinfo", "libnbd-bin");
    let b = MemBackend::new(16 << 20);
    let (h, uri) = serve(b);
    let out = run_ok("nbdinfo", &["--json", &uri]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "r0");
    assert_eq!(e["export-size"], 16 << 20);
    for feature in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[feature], true, "{feature} in {e}");
    }
    for feature in ["is_read_only", "can_df", "can_cache", "can_fast_zero"] {
        assert_eq!(e[feature], false, "{feature} in {e}");
    }
    assert_eq!(e["block_size_minimum"], 512);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 1 << 20);

    // Human output too, as a user would read it; and the list of exports.
    let out = run_ok("nbdinfo", &[&uri]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("export-size: 16777216"), "{text}");
    let port = h.local_addr().port().to_string();
    let out = run_ok("nbdinfo", &["--list", &format!("nbd://127.0.0.1:{port}")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("export=\"r0\""));
    stop(h);
}

const SECONDARY_MSG: &str = "resource r0 is Secondary on this node; only the Primary serves I/O";

#[test]
fn nbd_export_secondary_and_wrong_name_are_refused() {
    require("nbdinfo", "libnbd-bin");
    require("qemu-io", "qemu-utils");
    let b = MemBackend::new(1 << 20);
    b.writable.store(false, Ordering::SeqCst);
    let (h, uri) = serve(b.clone());
    let out = run("nbdinfo", &[&uri]);
    assert!(
        !out.status.success(),
        "nbdinfo succeeded against a Secondary"
    );
    // libnbd shows the server's error text only in its debug output (it
    // maps NBD_REP_ERR_POLICY to a generic errno otherwise).
    let out = run_env("nbdinfo", &[&uri], &[("LIBNBD_DEBUG", "1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(SECONDARY_MSG), "{err}");
    // qemu prints it as it is.
    let out = run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &uri]);
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains(SECONDARY_MSG), "{all}");

    b.writable.store(true, Ordering::SeqCst);
    let wrong = uri.replace("/r0", "/r7");
    let out = run("nbdinfo", &[&wrong]);
    assert!(
        !out.status.success(),
        "nbdinfo succeeded with a wrong export name"
    );
    let out = run_env("nbdinfo", &[&wrong], &[("LIBNBD_DEBUG", "1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no export named 'r7'; this server exports 'r0'"),
        "{err}"
    );
    // The default export (empty name) is r0.
    let default = uri.trim_end_matches("r0").to_string();
    let out = run_ok("nbdinfo", &["--json", &default]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exports"][0]["export-size"], 1 << 20);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.clients() != 0 {
        assert!(Instant::now() < deadline, "clients linger: {}", h.clients());
        thread::sleep(Duration::from_millis(10));
    }
    stop(h);
}

#[test]
fn nbd_export_nbdcopy_roundtrip() {
    require("nbdcopy", "libnbd-bin");
    const SIZE: usize = 8 << 20;
    let b = MemBackend::new(SIZE);
    let (h, uri) = serve(b.clone());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let mut data = vec![0u8; SIZE];
    rand::rngs::StdRng::seed_from_u64(42).fill_bytes(&mut data);
    std::fs::File::create(&src)
        .unwrap()
        .write_all(&data)
        .unwrap();

    let (src_s, dst_s) = (src.to_str().unwrap(), dst.to_str().unwrap());
    run_ok("nbdcopy", &["--flush", src_s, &uri]);
    assert!(
        *b.data.lock().unwrap() == data,
        "export content differs from the source"
    );
    assert!(b.count(FLUSHES) >= 1);
    run_ok("nbdcopy", &[&uri, dst_s]);
    let back = std::fs::read(&dst).unwrap();
    assert!(back == data, "copied-out file differs from the source");
    stop(h);
}

#[test]
fn nbd_export_qemu_io_pattern() {
    require("qemu-io", "qemu-utils");
    let b = MemBackend::new(16 << 20);
    let (h, uri) = serve(b.clone());
    let out = run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "write -f -P 0xcd 1M 64k",
            "-c",
            "read -P 0xcd 1M 64k",
            "-c",
            "write -z 2M 3M",
            "-c",
            "read -P 0 2M 3M",
            "-c",
            "discard 8M 4M",
            "-c",
            "flush",
            &uri,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("fail") && !text.contains("error"), "{text}");
    assert!(
        text.contains("wrote 1048576/1048576 bytes at offset 0"),
        "{text}"
    );
    assert!(
        text.contains("read 1048576/1048576 bytes at offset 0"),
        "{text}"
    );
    assert!(
        text.contains("read 3145728/3145728 bytes at offset 2097152"),
        "{text}"
    );
    let d = b.data.lock().unwrap();
    assert!(d[..1 << 20].iter().all(|&x| x == 0xab));
    assert!(d[1 << 20..(1 << 20) + (64 << 10)]
        .iter()
        .all(|&x| x == 0xcd));
    drop(d);
    assert!(b.count(FUAS) >= 1, "qemu-io write -f should send FUA");
    assert!(b.count(ZEROES) >= 1 && b.count(TRIMS) >= 1 && b.count(FLUSHES) >= 1);

    // Reading it back through a second, fresh connection.
    let out = run_ok(
        "qemu-io",
        &["-f", "raw", "-r", "-c", "read -P 0xab 0 1M", &uri],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("fail"));
    stop(h);
}

#[test]
fn nbd_export_fio_randwrite_qd32_verify() {
    require("fio", "fio");
    let engines = run("fio", &["--enghelp"]);
    assert!(
        String::from_utf8_lossy(&engines.stdout).contains("nbd"),
        "this fio has no nbd engine; install Debian's `fio` package (built with libnbd)"
    );
    let b = MemBackend::new(16 << 20);
    let (h, uri) = serve(b.clone());
    let out = run_ok(
        "fio",
        &[
            "--name=nbd-randwrite",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=8M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
        ],
    );
    let v = rep_testkit::fio_json(&out);
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    let written = job["write"]["io_bytes"].as_u64().unwrap();
    let verified = job["read"]["io_bytes"].as_u64().unwrap();
    assert_eq!(written, 8 << 20);
    assert_eq!(
        verified,
        8 << 20,
        "fio did not read everything back to verify"
    );
    eprintln!(
        "fio over NBD: randwrite 4k QD32 {} KiB/s ({} IOPS), verify read {} KiB/s; \
         {} requests completed out of order",
        job["write"]["bw"],
        job["write"]["iops"],
        job["read"]["bw"],
        b.reordered.load(Ordering::Relaxed)
    );
    assert!(b.count(WRITES) >= 2048 && b.count(READS) >= 2048);
    assert!(
        b.reordered.load(Ordering::Relaxed) > 0,
        "the backend never completed requests out of order"
    );
    stop(h);
}

#[test]
fn nbd_export_many_clients_and_shutdown() {
    require("nbdinfo", "libnbd-bin");
    let b = MemBackend::new(4 << 20);
    let (h, uri) = serve(b);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let uri = uri.clone();
            thread::spawn(move || run("nbdinfo", &[&uri]).status.success())
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.clients() != 0 {
        assert!(Instant::now() < deadline, "clients: {}", h.clients());
        thread::sleep(Duration::from_millis(10));
    }
    stop(h);
    let out = run("nbdinfo", &[&uri]);
    assert!(!out.status.success(), "server still answers after shutdown");
}
