//! Feeds arbitrary bytes to the frame decoder.
//!
//! The first input byte picks a mode: odd means "the rest is a message type
//! byte and a payload", wrapped here in a valid header and checksum so the
//! payload parser gets exercised; even means "the rest is raw stream bytes".
//! Whatever decodes must re-encode to exactly the bytes it came from, and
//! `FrameDecoder` fed the same bytes in two pieces must agree with `decode`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use replication_proto::wire::codec::{decode, encode, FrameDecoder, MAGIC};
use replication_proto::wire::{Message, PROTOCOL_VERSION};

fn framed(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(16 + payload.len());
    f.extend_from_slice(&MAGIC.to_le_bytes());
    f.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    f.push(ty);
    f.push(0);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&f), payload);
    f.extend_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Decodes frames one after the other with `decode`, as a reader would.
fn decode_all(mut buf: &[u8]) -> (Vec<Message>, bool) {
    let mut msgs = Vec::new();
    loop {
        match decode(buf) {
            Ok(Some((msg, used))) => {
                assert!(used >= 16 && used <= buf.len());
                let mut out = BytesMut::new();
                encode(&msg, &mut out).expect("a decoded message re-encodes");
                assert_eq!(&out[..], &buf[..used], "encoding is canonical");
                let (again, n) = decode(&out).expect("re-decodes").expect("complete");
                assert_eq!(again, msg);
                assert_eq!(n, out.len());
                msgs.push(msg);
                buf = &buf[used..];
            }
            Ok(None) => return (msgs, false),
            Err(e) => {
                // Errors must render without panicking.
                let _ = e.to_string();
                return (msgs, true);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let owned;
    let stream: &[u8] = if mode & 1 == 1 {
        let Some((&ty, payload)) = rest.split_first() else { return };
        // Two copies, so the stream case covers a frame following another.
        let mut v = framed(ty, payload);
        if mode & 2 == 2 {
            v.extend_from_slice(&v.clone());
        }
        owned = v;
        &owned
    } else {
        rest
    };
    let (want, failed) = decode_all(stream);

    let split = usize::from(mode >> 2).min(stream.len());
    let mut d = FrameDecoder::new();
    let mut got = Vec::new();
    let mut failed_too = false;
    for piece in [&stream[..split], &stream[split..]] {
        d.push(piece);
        loop {
            match d.next() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(_) => {
                    failed_too = true;
                    break;
                }
            }
        }
        if failed_too {
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(failed_too, failed);
});
