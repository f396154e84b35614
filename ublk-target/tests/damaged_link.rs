//! A link that damages data on its way: a proxy between the two `repd`
//! flips one bit in the bulk data of a `Data` frame. TCP's own checksum
//! would catch most such damage on a real link; what it misses (a NIC, a
//! router or memory that corrupts a buffer) is what our frame checksums
//! are for. The secondary writes a write's data while it checks it (wire
//! version 2), so this drives that path the way a user meets it: writes
//! through the export succeed, the secondary never acknowledges the damaged
//! write, goes Inconsistent, says why, and the pair heals by itself (both
//! marked the range) with the data identical.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{random_file, require, Cluster, Opts};

const HEADER_LEN: usize = 16;
/// Data's fixed fields before the bulk: seq, offset, len, flags, data_crc.
const DATA_FIXED_LEN: usize = 28;
const T_DATA: u8 = 3;

/// What the proxy has done, shared with the test.
#[derive(Default)]
struct Damage {
    /// Damage the next Data frame with at least this much bulk data (0: off).
    armed_min_bulk: AtomicUsize,
    damaged: AtomicUsize,
    connections: AtomicUsize,
    stop: AtomicBool,
}

/// Copies frames from `from` to `to`, damaging one Data frame when armed.
/// Frames are cut by their header only: the proxy trusts nothing else.
fn forward_frames(mut from: TcpStream, mut to: TcpStream, damage: &Damage) {
    let mut header = [0u8; HEADER_LEN];
    loop {
        if from.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        if from.read_exact(&mut payload).is_err() {
            break;
        }
        let min = damage.armed_min_bulk.load(Ordering::SeqCst);
        if header[6] == T_DATA && min > 0 && len >= DATA_FIXED_LEN + min {
            damage.armed_min_bulk.store(0, Ordering::SeqCst);
            // A bit in the middle of the data.
            payload[DATA_FIXED_LEN + (len - DATA_FIXED_LEN) / 2] ^= 0x10;
            damage.damaged.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&header).is_err() || to.write_all(&payload).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn forward_bytes(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Accepts alpha's connections on `listener` and joins each to `target`.
fn proxy(listener: TcpListener, target: String, damage: Arc<Damage>) {
    listener.set_nonblocking(true).unwrap();
    while !damage.stop.load(Ordering::SeqCst) {
        let Ok((down, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        down.set_nonblocking(false).unwrap();
        let Ok(up) = TcpStream::connect(&target) else {
            continue;
        };
        damage.connections.fetch_add(1, Ordering::SeqCst);
        let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let dmg = damage.clone();
        std::thread::spawn(move || forward_frames(down, up, &dmg));
        std::thread::spawn(move || forward_bytes(u2, d2));
    }
}

#[test]
fn a_bit_flipped_on_the_link_is_refused_and_healed_by_resync() {
    require("nbdcopy", "libnbd-bin");
    let mut c = Cluster::new(Opts::default());
    // Alpha dials beta (the first name dials): give alpha a config in
    // which beta's address is the proxy's.
    let text = std::fs::read_to_string(&c.config[1]).unwrap();
    let beta_addr = text
        .split("[[node]]")
        .nth(2)
        .and_then(|n| n.lines().find(|l| l.starts_with("address = ")))
        .map(|l| {
            l.trim_start_matches("address = ")
                .trim_matches('"')
                .to_string()
        })
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = listener.local_addr().unwrap().to_string();
    let alpha_cfg = c.dir.path().join("alpha-view.toml");
    std::fs::write(
        &alpha_cfg,
        text.replace(&format!("\"{beta_addr}\""), &format!("\"{proxy_addr}\"")),
    )
    .unwrap();
    c.config[0] = alpha_cfg;
    let damage = Arc::new(Damage::default());
    let d = damage.clone();
    let proxy_thread = std::thread::spawn(move || proxy(listener, beta_addr, d));

    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    assert!(damage.connections.load(Ordering::SeqCst) >= 1);

    // 16 MiB through the export in large writes; one of them is damaged
    // on the link.
    damage.armed_min_bulk.store(64 << 10, Ordering::SeqCst);
    let src = random_file(c.dir.path(), "rand.bin", 16 << 20, 11);
    // The application's writes succeed.
    c.nbd_write(0, &src);
    assert_eq!(
        damage.damaged.load(Ordering::SeqCst),
        1,
        "a frame was damaged"
    );

    // Beta said why it dropped the link, and the pair heals by itself:
    // reconnected, the damaged range resynced from alpha.
    let st = c.wait(1, "the damage reported", 20, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Data frame: bulk data checksum mismatch"))
    });
    let err = st["last_error"].as_str().unwrap();
    assert!(err.contains("Inconsistent until a resync"), "{err}");
    c.wait_synced(60);
    assert!(
        damage.connections.load(Ordering::SeqCst) >= 2,
        "reconnected"
    );
    c.wait(0, "nothing pending", 20, |s| {
        s["counters"]["pe"] == 0 && s["out_of_sync_bytes"] == 0
    });
    c.nbd_reads_back(0, &src);
    c.assert_identical();

    damage.stop.store(true, Ordering::SeqCst);
    drop(c);
    proxy_thread.join().unwrap();
}
