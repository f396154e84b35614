//! A link that damages data on its way: a proxy between the two `repd`
//! flips one bit in the bulk data of a `Data` frame. TCP's own checksum
//! would catch most such damage on a real link; what it misses (a NIC, a
//! router or memory that corrupts a buffer) is what our frame checksums
//! are for. This drives that path the way a user meets it: writes through
//! the export succeed, the secondary refuses the damaged frame before
//! anything in it is written or acknowledged, says why, and the pair heals
//! by itself (the Primary marked what the peer did not acknowledge) with
//! the data identical.

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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{random_file, require, Cluster, Opts};

const HEADER_LEN: usize = 16;
/// Data's fixed fields before the bulk: seq, offset, len, flags.
const DATA_FIXED_LEN: usize = 24;
const T_DATA: u8 = 3;
const T_RECV_ACK: u8 = 4;
const T_WRITE_ACK: u8 = 5;

/// What the proxy has done, shared with the test.
#[derive(Default)]
struct Damage {
    /// Damage the next Data frame with at least this much bulk data (0: off).
    armed_min_bulk: AtomicUsize,
    damaged: AtomicUsize,
    /// The damaged frame: (connection number, seq).
    damaged_write: Mutex<Option<(usize, u64)>>,
    /// RecvAcks and WriteAcks beta sent for the damaged write.
    acks_of_damaged: AtomicUsize,
    connections: AtomicUsize,
    stop: AtomicBool,
}

fn seq_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().unwrap())
}

/// Reads one frame (header and payload), cut by its header only: the proxy
/// trusts nothing else.
fn read_frame(from: &mut TcpStream) -> Option<([u8; HEADER_LEN], Vec<u8>)> {
    let mut header = [0u8; HEADER_LEN];
    from.read_exact(&mut header).ok()?;
    let len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).ok()?;
    Some((header, payload))
}

/// Copies alpha's frames on connection `conn` to beta, damaging one Data
/// frame when armed.
fn alpha_to_beta(mut from: TcpStream, mut to: TcpStream, conn: usize, damage: &Damage) {
    while let Some((header, mut payload)) = read_frame(&mut from) {
        let len = payload.len();
        let min = damage.armed_min_bulk.load(Ordering::SeqCst);
        if header[6] == T_DATA && min > 0 && len >= DATA_FIXED_LEN + min {
            damage.armed_min_bulk.store(0, Ordering::SeqCst);
            // A bit in the middle of the data.
            payload[DATA_FIXED_LEN + (len - DATA_FIXED_LEN) / 2] ^= 0x10;
            *damage.damaged_write.lock().unwrap() = Some((conn, seq_of(&payload)));
            damage.damaged.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&header).is_err() || to.write_all(&payload).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Copies beta's frames on connection `conn` back, counting acks of the
/// damaged write.
fn beta_to_alpha(mut from: TcpStream, mut to: TcpStream, conn: usize, damage: &Damage) {
    while let Some((header, payload)) = read_frame(&mut from) {
        if matches!(header[6], T_RECV_ACK | T_WRITE_ACK)
            && *damage.damaged_write.lock().unwrap() == Some((conn, seq_of(&payload)))
        {
            damage.acks_of_damaged.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&header).is_err() || to.write_all(&payload).is_err() {
            break;
        }
    }
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
        let conn = damage.connections.fetch_add(1, Ordering::SeqCst);
        let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let (dmg, dmg2) = (damage.clone(), damage.clone());
        std::thread::spawn(move || alpha_to_beta(down, up, conn, &dmg));
        std::thread::spawn(move || beta_to_alpha(u2, d2, conn, &dmg2));
    }
}

/// A synced pair whose link runs through a damaging proxy.
struct DamagedPair {
    c: Cluster,
    damage: Arc<Damage>,
    proxy: Option<std::thread::JoinHandle<()>>,
}

impl DamagedPair {
    fn new(protocol: &'static str) -> Self {
        require("nbdcopy", "libnbd-bin");
        let mut c = Cluster::new(Opts {
            protocol,
            ..Opts::default()
        });
        // Alpha dials beta (the first name dials): give alpha a config in
        // which beta's address is the proxy's.
        let text = std::fs::read_to_string(&c.config[1]).unwrap();
        let beta_addr = rep_testkit::link::node_address(&text, 1);
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
        let proxy = Some(std::thread::spawn(move || proxy(listener, beta_addr, d)));
        c.up(0);
        c.up(1);
        c.ok(0, &["primary", "--force"]);
        c.wait_synced(60);
        assert!(damage.connections.load(Ordering::SeqCst) >= 1);
        Self { c, damage, proxy }
    }

    /// Beta said `why` it dropped the link, and the pair healed by itself:
    /// reconnected, the damaged range resynced from alpha, `src` reads back
    /// and both data regions are identical.
    fn heals(mut self, why: &str, src: &std::path::Path) -> serde_json::Value {
        assert_eq!(
            self.damage.damaged.load(Ordering::SeqCst),
            1,
            "a frame was damaged"
        );
        assert_eq!(
            self.damage.acks_of_damaged.load(Ordering::SeqCst),
            0,
            "beta acknowledged the damaged write"
        );
        let st = self.c.wait(1, "the damage reported", 20, |s| {
            s["last_error"].as_str().is_some_and(|e| e.contains(why))
        });
        self.c.wait_synced(60);
        assert!(
            self.damage.connections.load(Ordering::SeqCst) >= 2,
            "reconnected"
        );
        self.c.wait(0, "nothing pending", 20, |s| {
            s["counters"]["pe"] == 0 && s["out_of_sync_bytes"] == 0
        });
        self.c.nbd_reads_back(0, src);
        self.c.assert_identical();
        self.damage.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.proxy.take() {
            t.join().unwrap();
        }
        st
    }
}

fn write_damaged(protocol: &'static str) {
    let p = DamagedPair::new(protocol);
    // 16 MiB through the export in large writes; one of them is damaged
    // on the link. The application's writes succeed.
    p.damage.armed_min_bulk.store(64 << 10, Ordering::SeqCst);
    let src = random_file(p.c.dir.path(), "rand.bin", 16 << 20, 11);
    p.c.nbd_write(0, &src);
    let st = p.heals(
        "connection dropped: malformed frame from the peer: frame checksum mismatch",
        &src,
    );
    // Refused before it was written: beta's data stayed consistent.
    let err = st["last_error"].as_str().unwrap();
    assert!(!err.contains("Inconsistent"), "{err}");
}

#[test]
fn a_bit_flipped_on_the_link_is_refused_and_healed_by_resync() {
    write_damaged("C");
}

/// Protocol B acknowledges on receipt: not even that for a damaged write.
#[test]
fn under_protocol_b_a_damaged_write_gets_no_receive_ack() {
    write_damaged("B");
}
