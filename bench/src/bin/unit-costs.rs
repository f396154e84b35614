//! `unit-costs`: what a few basic operations cost on this machine, to tell
//! which costs matter under emulation (run it on the host and in the VM:
//! `bash scripts/vm-run.sh -- target/release/unit-costs`). See
//! bench/notes/ublk-write-path.md, section 4.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Instant;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "unit-costs",
    about = "Time atomics, Arc, Mutex, mpsc and a 1 MiB memcpy on this machine",
    long_about = "Times a few operations the write path is made of, single-threaded, and \
        prints nanoseconds per operation. Under QEMU TCG the answers differ from real \
        hardware by very different factors per operation: run it on both to see which \
        costs matter in the VM benchmark.",
    after_help = "Example: bash scripts/vm-run.sh -- target/release/unit-costs"
)]
struct Cli {
    /// Operations per row (the 1 MiB copy runs 1/1000 as many times)
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
}

fn time<F: FnMut()>(name: &str, n: u64, mut f: F) {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
    println!("{name:42} {ns:12.1} ns/op");
}

fn main() {
    let cli = Cli::parse();
    let n = cli.ops.max(1);
    let a = AtomicU64::new(0);
    let flag = AtomicBool::new(false);
    let mut x = 0u64;
    time("plain add", n, || x = black_box(x + 1));
    time("atomic load (Acquire)", n, || {
        black_box(a.load(Ordering::Acquire));
    });
    time("atomic store (Release)", n, || {
        a.store(black_box(1), Ordering::Release)
    });
    time("atomic fetch_add (lock xadd)", n, || {
        a.fetch_add(1, Ordering::Relaxed);
    });
    time("AtomicBool swap (xchg)", n, || {
        black_box(flag.swap(black_box(true), Ordering::AcqRel));
    });
    time("compare_exchange (lock cmpxchg)", n, || {
        let _ = black_box(a.compare_exchange(0, 0, Ordering::AcqRel, Ordering::Acquire));
    });
    let arc = Arc::new(5u64);
    time("Arc clone + drop", n, || {
        black_box(Arc::clone(&arc));
    });
    let m = Mutex::new(0u64);
    time("Mutex lock + unlock", n, || {
        *m.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    });
    let (tx, rx) = mpsc::channel::<u64>();
    time("mpsc send + try_recv", n, || {
        let _ = tx.send(1);
        let _ = black_box(rx.try_recv());
    });
    latency_breakdown(n);
    let src = vec![7u8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    time("memcpy 1 MiB (user space)", (n / 1000).max(1), || {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    });
}

/// What repd's latency breakdown (`ublk_target::stages`, on by default)
/// adds to one request: the clock reads, the histogram updates and the
/// engine's maps of requests in flight (by request, local token, sequence
/// number), as a protocol C write does them.
fn latency_breakdown(n: u64) {
    use std::collections::HashMap;
    use ublk_target::stages::{Kind, Stage, Stages};
    time("Instant::now", n, || {
        black_box(Instant::now());
    });
    let st = Stages::default();
    let d = std::time::Duration::from_micros(150);
    time("stages observe (one histogram)", n, || {
        st.observe(Kind::Write, Stage::LocalIo, black_box(d));
    });
    let mut apps: HashMap<u64, Instant> = HashMap::new();
    let mut local: HashMap<u64, u64> = HashMap::new();
    let mut peer: HashMap<u64, u64> = HashMap::new();
    let mut id = 0u64;
    time("latency breakdown of one C write", n, || {
        id += 1;
        // Nine clock reads: received, taken in, local write issued, Data
        // sent, local done, ack, answer, reply queued, reply flushed; ten
        // histograms (seven stages and the three older ones).
        let t0 = Instant::now();
        apps.insert(id, black_box(Instant::now()));
        local.insert(id, id);
        let _ = black_box(Instant::now());
        peer.insert(id, id);
        let _ = black_box(Instant::now());
        local.remove(&id);
        let _ = black_box(Instant::now());
        peer.remove(&id);
        let _ = black_box(Instant::now());
        apps.remove(&id);
        let done = Instant::now();
        let _ = black_box(Instant::now());
        let d = black_box(Instant::now()).saturating_duration_since(t0);
        for stage in Stage::ALL {
            st.observe(Kind::Write, stage, d);
        }
        for _ in 0..3 {
            st.observe(Kind::Read, Stage::Peer, done.saturating_duration_since(t0));
        }
    });
}
