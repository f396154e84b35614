//! Bitmap run-length coding: whatever the bitmap and chunk size, the chunks
//! survive the wire and rebuild exactly the bitmap; and a receiver fed
//! arbitrary chunks never panics nor writes outside its bitmap's bits.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use replication_proto::wire::codec::{decode, encode};
use replication_proto::wire::rle::{bitmap_messages, BitmapReceiver, Progress};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let max_runs = usize::from(data[0] % 16) + 1;
    let spare_bits = u64::from(data[1] % 64);
    let extra_words = usize::from(data[2] % 4);
    let body = &data[3..];
    let words: Vec<u64> = body
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    // nbits may end inside the last word, or go past the stored words.
    let nbits = (words.len() as u64 * 64).saturating_sub(spare_bits) + extra_words as u64 * 64;
    let nwords = nbits.div_ceil(64) as usize;

    let msgs = bitmap_messages(&words, nbits, max_runs);
    let mut got = vec![0u64; nwords];
    let mut rx = BitmapReceiver::new(nbits);
    let mut done = None;
    for m in &msgs {
        let mut out = BytesMut::new();
        encode(m, &mut out).expect("bitmap chunk encodes");
        let (back, _) = decode(&out).expect("decodes").expect("complete");
        assert_eq!(&back, m);
        if let Progress::Done { set_bits } = rx.receive_message(&back, &mut got).expect("accepted") {
            done = Some(set_bits);
        }
    }
    let mut ones = 0u64;
    for i in 0..nbits {
        let want = words.get((i / 64) as usize).is_some_and(|w| w >> (i % 64) & 1 == 1);
        let have = got[(i / 64) as usize] >> (i % 64) & 1 == 1;
        assert_eq!(want, have, "bit {i}");
        ones += u64::from(want);
    }
    assert_eq!(done, Some(ones));
    if nbits % 64 != 0 {
        assert_eq!(got[nwords - 1] >> (nbits % 64), 0, "no bits past nbits");
    }

    // Arbitrary chunk sequences, read from the same bytes as runs.
    let mut bm = vec![0u64; nwords];
    let mut rx = BitmapReceiver::new(nbits);
    let mut start = 0u64;
    for (k, c) in body.chunks(3).enumerate() {
        let runs: Vec<u64> = c.iter().map(|&b| u64::from(b) * 7).collect();
        let last = k % 5 == 4;
        match rx.receive(start, c.len() % 2 == 0, &runs, last, &mut bm) {
            Ok(_) => start += runs.iter().sum::<u64>(),
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
    if nbits % 64 != 0 {
        assert_eq!(bm[nwords - 1] >> (nbits % 64), 0, "no bits past nbits");
    }
});
