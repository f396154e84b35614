//! The framer against a real TCP socket: frames cut at every size,
//! large payloads landing aligned, and the errors that take the
//! connection down.
#![allow(clippy::cast_possible_truncation)]

use std::io::Write;
use std::net::TcpListener;

use replication_proto::wire::codec::{encode, HEADER_LEN};

use super::framer::{Framer, ALIGN, ALIGN_PAYLOAD_MIN};
use super::*;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

fn frame(m: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(m, &mut out).unwrap();
    out.to_vec()
}

fn data(seq: u64, len: usize) -> Message {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + seq) as u8).collect();
    Message::Data {
        seq,
        offset: seq * 4096,
        len: u32::try_from(len).unwrap(),
        flags: 0,
        data: Bytes::from(bytes),
    }
}

/// Receives until `n` frames or an error, renewing the budget whenever
/// a turn ends; gives the frames and the error, if any. With `disk`,
/// as the engine does: the rest of a large frame through a ring
/// receive; without, by non-blocking `recv`s only.
fn receive_with(
    rx: &mut Framer,
    s: &TcpStream,
    n: usize,
    mut disk: Option<&mut InlineDisk>,
) -> (Vec<Message>, Option<String>) {
    let mut ring_receives = 0;
    let r = receive_counting(rx, s, n, disk.as_deref_mut(), &mut ring_receives);
    if disk.is_none() {
        assert_eq!(ring_receives, 0);
    }
    r
}

fn receive_counting(
    rx: &mut Framer,
    s: &TcpStream,
    n: usize,
    mut disk: Option<&mut InlineDisk>,
    ring_receives: &mut usize,
) -> (Vec<Message>, Option<String>) {
    let mut got = Vec::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n && Instant::now() < deadline {
        let mut budget = RxBudget::per_turn();
        while got.len() < n {
            let r = match disk.as_deref_mut() {
                Some(d) => rx.pull(s, &mut budget, d, 6),
                None => rx.next(s, &mut budget),
            };
            match r {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(e) => return (got, Some(e.to_string())),
            }
        }
        match disk.as_deref_mut() {
            Some(d) => {
                let mut done = Vec::new();
                d.wait(Duration::from_millis(1), &mut done);
                d.take_polls(&mut events);
                for ev in events.drain(..) {
                    assert_eq!(ev.key, 6);
                    *ring_receives += 1;
                    if let Err(e) = rx.give_back(ev.buf.unwrap(), ev.res) {
                        return (got, Some(e.to_string()));
                    }
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    (got, None)
}

fn receive(rx: &mut Framer, s: &TcpStream, n: usize) -> (Vec<Message>, Option<String>) {
    receive_with(rx, s, n, None)
}

fn inline_disk(dir: &std::path::Path) -> InlineDisk {
    let path = dir.join("d.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    crate::disk::LocalDisk::open(&path, 1 << 20, crate::disk::DiskOptions::default())
        .unwrap()
        .inline()
        .unwrap()
}

#[test]
fn frames_cut_anywhere_arrive_whole_and_large_payloads_aligned() {
    frames_cut_anywhere(false);
}

#[test]
fn frames_cut_anywhere_arrive_whole_through_ring_receives() {
    frames_cut_anywhere(true);
}

fn frames_cut_anywhere(ring: bool) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut disk = ring.then(|| inline_disk(dir.path()));
    let (mut tx, rx_sock) = pair();
    let msgs = vec![
        Message::WriteAck { seq: 1 },
        data(2, 4096),
        Message::Ping,
        data(3, 512),
        data(4, 1 << 20),
        Message::WriteAck { seq: 5 },
        data(6, 64 * 1024),
    ];
    let bytes: Vec<u8> = msgs.iter().flat_map(frame).collect();
    let writer = std::thread::spawn(move || {
        // Odd, growing pieces: headers and payloads split everywhere.
        let (mut at, mut step) = (0, 1);
        while at < bytes.len() {
            let end = (at + step).min(bytes.len());
            tx.write_all(&bytes[at..end]).unwrap();
            at = end;
            step = step * 3 + 1;
            if step > 200_000 {
                step = 5;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let mut rx = Framer::new();
    let mut ring_receives = 0;
    let (got, err) = receive_counting(
        &mut rx,
        &rx_sock,
        msgs.len(),
        disk.as_mut(),
        &mut ring_receives,
    );
    writer.join().unwrap();
    // The writer pauses inside the large frames: their rests were
    // received by the ring.
    assert_eq!(ring, ring_receives > 0, "{ring_receives} ring receives");
    assert_eq!(err, None);
    assert_eq!(got, msgs);
    for m in &got {
        if let Message::Data { data, .. } = m {
            if data.len() >= ALIGN_PAYLOAD_MIN {
                assert_eq!(
                    data.as_ptr() as usize % ALIGN,
                    0,
                    "payload of {} bytes",
                    data.len()
                );
            }
        }
    }
}

#[test]
fn a_turn_hands_over_at_most_its_budget_of_frames() {
    let (mut tx, rx_sock) = pair();
    let n = RX_FRAMES_PER_TURN + 50;
    let bytes: Vec<u8> = (0..n as u64)
        .flat_map(|seq| frame(&Message::WriteAck { seq }))
        .collect();
    tx.write_all(&bytes).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut rx = Framer::new();
    let mut budget = RxBudget::per_turn();
    let mut first = 0;
    while let Ok(Some(_)) = rx.next(&rx_sock, &mut budget) {
        first += 1;
    }
    assert_eq!(first, RX_FRAMES_PER_TURN);
    assert_eq!(budget.frames, 0);
    // The rest come in the next turn, even though they are all staged
    // already (no poll would report them).
    let (rest, err) = receive(&mut rx, &rx_sock, n - first);
    assert_eq!(err, None);
    assert_eq!(rest.len(), n - first);
}

#[test]
fn garbage_bad_checksum_and_eof_take_the_connection_down() {
    let (mut tx, rx_sock) = pair();
    tx.write_all(&[0xAB; HEADER_LEN]).unwrap();
    let (got, err) = receive(&mut Framer::new(), &rx_sock, 1);
    assert!(got.is_empty());
    let err = err.unwrap();
    assert!(
        err.starts_with("malformed frame from the peer: bad frame magic"),
        "{err}"
    );

    let (mut tx, rx_sock) = pair();
    let mut bad = frame(&data(9, 8192));
    let last = bad.len() - 1;
    bad[last] ^= 1;
    tx.write_all(&frame(&Message::Ping)).unwrap();
    tx.write_all(&bad).unwrap();
    let (got, err) = receive(&mut Framer::new(), &rx_sock, 2);
    assert_eq!(got, vec![Message::Ping]);
    let err = err.unwrap();
    assert!(err.contains("checksum mismatch"), "{err}");

    let (mut tx, rx_sock) = pair();
    let half = frame(&data(10, 4096));
    tx.write_all(&half[..100]).unwrap();
    drop(tx);
    let (got, err) = receive(&mut Framer::new(), &rx_sock, 1);
    assert!(got.is_empty());
    assert_eq!(err.as_deref(), Some("peer closed the connection"));

    // The same with the rest of the frame lent to a ring receive, which
    // ends early at EOF.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut disk = inline_disk(dir.path());
    let (mut tx, rx_sock) = pair();
    tx.write_all(&half[..100]).unwrap();
    let mut rx = Framer::new();
    let mut budget = RxBudget::per_turn();
    assert!(rx
        .pull(&rx_sock, &mut budget, &mut disk, 6)
        .unwrap()
        .is_none());
    assert!(rx.lent());
    drop(tx);
    let (got, err) = receive_with(&mut rx, &rx_sock, 1, Some(&mut disk));
    assert!(got.is_empty());
    assert_eq!(err.as_deref(), Some("peer closed the connection"));
}
