//! Properties of the wire codec and the bitmap run-length coding.

// Test code: panicking on a broken invariant is the point, and sizes here are
// small.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;

use replication_proto::gen::Generations;
use replication_proto::wire::codec::{
    decode, decode_frame, encode, encode_vectored, encoded_len, peek_frame, DecodeError,
    EncodeError, FrameDecoder, HEADER_LEN, MAGIC, MAX_BITMAP_RUNS, MAX_PAYLOAD, MAX_STRING_LEN,
};
use replication_proto::wire::rle::{bitmap_messages, BitmapReceiver, Progress};
use replication_proto::wire::{
    data_flags, features, DisconnectReason, DiskState, Hello, Message, Protocol, Role,
    PROTOCOL_VERSION,
};

// ----------------------------------------------------------------------------
// Strategies

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::A), Just(Protocol::B), Just(Protocol::C)]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Primary), Just(Role::Secondary)]
}

fn disk() -> impl Strategy<Value = DiskState> {
    prop_oneof![
        Just(DiskState::Diskless),
        Just(DiskState::Inconsistent),
        Just(DiskState::Outdated),
        Just(DiskState::DUnknown),
        Just(DiskState::Consistent),
        Just(DiskState::UpToDate),
    ]
}

fn reason() -> impl Strategy<Value = DisconnectReason> {
    use DisconnectReason::*;
    prop::sample::select(vec![
        Shutdown,
        Admin,
        UnsupportedVersion,
        AuthFailed,
        WrongResource,
        WrongSize,
        ConfigMismatch,
        SplitBrain,
        UnrelatedData,
        BothPrimary,
        NoGoodData,
        ProtocolError,
        Timeout,
        IoError,
    ])
}

fn gens() -> impl Strategy<Value = Generations> {
    (any::<u64>(), any::<u64>(), any::<[u64; 2]>()).prop_map(|(current, bitmap, history)| {
        Generations {
            current,
            bitmap,
            history,
        }
    })
}

/// Strings up to the wire limit, including multi-byte UTF-8.
fn wire_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{0,40}",
        prop::collection::vec(any::<char>(), 0..64)
            .prop_map(|cs| cs.into_iter().collect::<String>())
            .prop_filter("fits the wire", |s| s.len() <= MAX_STRING_LEN),
        Just("x".repeat(MAX_STRING_LEN)),
    ]
}

fn payload_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        (
            any::<u16>(),
            wire_string(),
            wire_string(),
            any::<u64>(),
            protocol(),
            role(),
            disk(),
        ),
        (
            gens(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (version, resource, node, data_bytes, protocol, role, disk),
                (gens, meta_flags, features, dirty_bits, nonce, discard_my_data),
            )| Hello {
                version,
                resource,
                node,
                data_bytes,
                protocol,
                role,
                disk,
                gens,
                meta_flags,
                features,
                dirty_bits,
                nonce,
                discard_my_data,
            },
        )
}

fn data_msg() -> impl Strategy<Value = Message> {
    let with_payload = (
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        payload_bytes(3000),
    )
        .prop_map(|(seq, offset, fua, data)| Message::Data {
            seq,
            offset,
            len: u32::try_from(data.len()).unwrap(),
            flags: if fua { data_flags::FUA } else { 0 },
            data,
        });
    // Every flag combination that includes TRIM or ZEROES: no payload.
    let no_payload_flags = (1u32..8).prop_filter_map("TRIM or ZEROES", |f| {
        (f & (data_flags::TRIM | data_flags::ZEROES) != 0).then_some(f)
    });
    let without = (any::<u64>(), any::<u64>(), any::<u32>(), no_payload_flags).prop_map(
        |(seq, offset, len, flags)| Message::Data {
            seq,
            offset,
            len,
            flags,
            data: Bytes::new(),
        },
    );
    prop_oneof![3 => with_payload, 1 => without]
}

fn bitmap_msg() -> impl Strategy<Value = Message> {
    let run = prop_oneof![0u64..200, any::<u64>(), Just(u64::MAX), Just(0)];
    (
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec(run, 0..50),
        any::<bool>(),
    )
        .prop_map(|(start_bit, first_set, runs, last)| Message::Bitmap {
            start_bit,
            first_set,
            runs,
            last,
        })
}

fn message() -> impl Strategy<Value = Message> {
    let range = || (any::<u64>(), any::<u64>(), any::<u32>());
    prop_oneof![
        hello().prop_map(Message::Hello),
        any::<[u8; 32]>().prop_map(|mac| Message::Auth { mac }),
        data_msg(),
        any::<u64>().prop_map(|seq| Message::RecvAck { seq }),
        any::<u64>().prop_map(|seq| Message::WriteAck { seq }),
        any::<u64>().prop_map(|seq| Message::NegAck { seq }),
        any::<u64>().prop_map(|id| Message::Barrier { id }),
        any::<u64>().prop_map(|id| Message::BarrierAck { id }),
        Just(Message::Ping),
        Just(Message::PingAck),
        (role(), disk()).prop_map(|(role, disk)| Message::State { role, disk }),
        gens().prop_map(|gens| Message::Uuids { gens }),
        gens().prop_map(|gens| Message::SkipSync { gens }),
        bitmap_msg(),
        range().prop_map(|(id, offset, len)| Message::ResyncRequest { id, offset, len }),
        (range(), any::<u32>()).prop_map(|((id, offset, len), digest)| {
            Message::ChecksumRequest {
                id,
                offset,
                len,
                digest,
            }
        }),
        (any::<u64>(), any::<u64>(), payload_bytes(3000))
            .prop_map(|(id, offset, data)| Message::ResyncData { id, offset, data }),
        range().prop_map(|(id, offset, len)| Message::InSync { id, offset, len }),
        range().prop_map(|(id, offset, len)| Message::ResyncNeg { id, offset, len }),
        range().prop_map(|(id, offset, len)| Message::ResyncAck { id, offset, len }),
        range().prop_map(|(id, offset, len)| Message::ReadRequest { id, offset, len }),
        (any::<u64>(), any::<u64>(), payload_bytes(3000))
            .prop_map(|(id, offset, data)| Message::ReadReply { id, offset, data }),
        range().prop_map(|(id, offset, len)| Message::ReadNeg { id, offset, len }),
        (range(), any::<u32>()).prop_map(|((id, offset, len), digest)| {
            Message::VerifyRequest {
                id,
                offset,
                len,
                digest,
            }
        }),
        (range(), any::<bool>()).prop_map(|((id, offset, len), in_sync)| {
            Message::VerifyReply {
                id,
                offset,
                len,
                in_sync,
            }
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Message::OutOfSync { offset, len }),
        Just(Message::SyncDone),
        (any::<bool>(), any::<bool>()).prop_map(|(sender_is_source, full)| Message::StartSync {
            sender_is_source,
            full
        }),
        (reason(), wire_string())
            .prop_map(|(reason, message)| Message::Disconnect { reason, message }),
    ]
}

fn encoded(msg: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(msg, &mut out).expect("valid message encodes");
    out.to_vec()
}

/// A frame with a correct header and checksum around an arbitrary payload.
fn raw_frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAGIC.to_le_bytes());
    f.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    f.push(ty);
    f.push(0);
    f.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&f), payload);
    f.extend_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ----------------------------------------------------------------------------
// Codec properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn roundtrip(msg in message()) {
        let bytes = encoded(&msg);
        prop_assert_eq!(bytes.len(), encoded_len(&msg));
        let (back, used) = decode(&bytes).unwrap().expect("complete frame");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&back, &msg);

        // Trailing bytes of the next frame are left alone.
        let mut two = bytes.clone();
        two.extend_from_slice(&encoded(&Message::Ping));
        let (back, used) = decode(&two).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&back, &msg);

        // Peeking the header and decoding the whole frame in one buffer
        // gives the same message; the bulk data starts where peek says.
        let peek = peek_frame(&bytes).unwrap().expect("a whole header");
        prop_assert_eq!(peek.total, bytes.len());
        let frame = Bytes::from(bytes.clone());
        let back = decode_frame(frame.clone()).unwrap();
        prop_assert_eq!(&back, &msg);
        match (&back, peek.bulk_at) {
            (
                Message::Data { data, .. }
                | Message::ResyncData { data, .. }
                | Message::ReadReply { data, .. },
                Some(at),
            ) => {
                prop_assert_eq!(&frame[at..], &data[..]);
                if !data.is_empty() {
                    // A slice of the frame, not a copy.
                    prop_assert_eq!(data.as_ptr(), frame[at..].as_ptr());
                }
            }
            (
                Message::Data { .. } | Message::ResyncData { .. } | Message::ReadReply { .. },
                None,
            ) => {
                prop_assert!(false, "no bulk offset for a data frame");
            }
            (_, at) => prop_assert_eq!(at, None),
        }
        // A buffer that is not exactly one frame is refused.
        prop_assert!(decode_frame(Bytes::from(two.clone())).is_err());
        prop_assert!(decode_frame(frame.slice(..frame.len() - 1)).is_err());

        // Vectored encoding is the same bytes.
        let mut head = BytesMut::new();
        let bulk = encode_vectored(&msg, &mut head).unwrap();
        head.extend_from_slice(&bulk);
        prop_assert_eq!(&head[..], &bytes[..]);
    }

    #[test]
    fn every_prefix_needs_more(msg in message()) {
        let bytes = encoded(&msg);
        for n in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..n]), Ok(None), "prefix of {} bytes", n);
            prop_assert_eq!(peek_frame(&bytes[..n]).unwrap().is_some(), n >= HEADER_LEN);
        }
    }

    #[test]
    fn single_bit_flips_are_caught(msg in message(), bits in prop::collection::vec(any::<Index>(), 1..24)) {
        let bytes = encoded(&msg);
        let nbits = bytes.len() * 8;
        // Every header bit, plus a sample of the payload.
        let header_bits = 0..HEADER_LEN * 8;
        let sampled = bits.iter().map(|i| i.index(nbits));
        for bit in header_bits.chain(sampled) {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            match decode(&bad) {
                Err(_) | Ok(None) => {}
                Ok(Some((got, _))) => {
                    prop_assert!(false, "bit {} flipped decoded as {:?}", bit, got);
                }
            }
            if let Ok(got) = decode_frame(Bytes::from(bad)) {
                prop_assert!(false, "bit {} flipped decoded as {:?}", bit, got);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
        let _ = peek_frame(&bytes);
        let _ = decode_frame(Bytes::from(bytes.clone()));
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        let _ = d.next();
    }

    /// Valid framing around an arbitrary payload: the payload parser never
    /// panics, and whatever it accepts re-encodes to the very same bytes
    /// (every message has exactly one encoding).
    #[test]
    fn arbitrary_payloads_decode_canonically(
        ty in 0u8..30,
        payload in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        let frame = raw_frame(ty, &payload);
        if let Ok(Some((msg, used))) = decode(&frame) {
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(encoded(&msg), frame);
        }
    }

    /// Same, starting from a valid payload with a few bytes changed, which
    /// gets much deeper into the parser than random bytes.
    #[test]
    fn mutated_payloads_decode_canonically(
        msg in message(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        cut in any::<Index>(),
        truncate in any::<bool>(),
    ) {
        let bytes = encoded(&msg);
        let ty = bytes[6];
        let mut payload = bytes[HEADER_LEN..].to_vec();
        if !payload.is_empty() {
            for (i, v) in &edits {
                let i = i.index(payload.len());
                payload[i] = *v;
            }
            if truncate {
                payload.truncate(cut.index(payload.len()));
            }
        }
        let frame = raw_frame(ty, &payload);
        if let Ok(Some((back, _))) = decode(&frame) {
            prop_assert_eq!(encoded(&back), frame);
        }
    }

    #[test]
    fn frame_decoder_reassembles_pieces(
        msgs in prop::collection::vec(message(), 1..12),
        pieces in prop::collection::vec(1usize..700, 1..20),
    ) {
        let mut stream = BytesMut::new();
        for m in &msgs {
            encode(m, &mut stream).unwrap();
        }
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut sizes = pieces.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            d.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(m) = d.next().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(d.next(), Ok(None));
        prop_assert_eq!(d.buffered(), 0);
        prop_assert_eq!(got, msgs);
    }
}

// ----------------------------------------------------------------------------
// Golden frames: a change to any of these bytes is a wire format change and
// needs a PROTOCOL_VERSION bump.

fn golden_hello() -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        resource: "r0".into(),
        node: "alpha".into(),
        data_bytes: 1 << 30,
        protocol: Protocol::C,
        role: Role::Secondary,
        disk: DiskState::UpToDate,
        gens: Generations {
            current: 0x1111,
            bitmap: 0,
            history: [0x2222, 0x3333],
        },
        meta_flags: 0b101,
        features: features::CSUM_RESYNC | features::TRIM,
        dirty_bits: 7,
        nonce: std::array::from_fn(|i| u8::try_from(i).unwrap()),
        discard_my_data: true,
    })
}

/// Header, then the payload field by field (checksum verified independently
/// with a bit-by-bit crc32c).
const GOLDEN_HELLO: &str = "
    4c504552 0100 01 00 6b000000 710b41eb
    0100 02 7230 05 616c706861 0000004000000000 02 01 05
    1111000000000000 0000000000000000 2222000000000000 3333000000000000
    05000000 0300000000000000 0700000000000000
    000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f 01";

fn golden_data() -> Message {
    Message::Data {
        seq: 42,
        offset: 4096,
        len: 8,
        flags: data_flags::FUA,
        data: Bytes::from_static(b"abcdefgh"),
    }
}

const GOLDEN_DATA: &str = "
    4c504552 0100 03 00 20000000 8c2b23af
    2a00000000000000 0010000000000000 08000000 01000000 6162636465666768";

#[test]
fn golden_frames() {
    for (msg, golden) in [(golden_hello(), GOLDEN_HELLO), (golden_data(), GOLDEN_DATA)] {
        let bytes = encoded(&msg);
        assert_eq!(
            hex(&bytes),
            golden.split_whitespace().collect::<String>(),
            "{msg:?}"
        );
        assert_eq!(decode(&unhex(golden)), Ok(Some((msg, bytes.len()))));
    }
}

// ----------------------------------------------------------------------------
// Errors, with their messages

fn header(magic: u32, version: u16, ty: u8, reserved: u8, len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&magic.to_le_bytes());
    h.extend_from_slice(&version.to_le_bytes());
    h.push(ty);
    h.push(reserved);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    let e = decode(bytes).expect_err("must be refused");
    // FrameDecoder agrees, and the error sticks.
    let mut d = FrameDecoder::new();
    d.push(bytes);
    assert_eq!(d.next(), Err(e.clone()));
    assert_eq!(d.next(), Err(e.clone()));
    e
}

#[test]
fn header_errors() {
    let e = decode_err(b"GET / HTTP/1.1\r\n");
    assert!(matches!(e, DecodeError::BadMagic { .. }));
    assert!(
        e.to_string().starts_with("bad frame magic 0x20544547"),
        "{e}"
    );
    // Detected from the first wrong byte.
    assert_eq!(decode(b"LPE"), Ok(None));
    assert_eq!(
        decode_err(b"LPX"),
        DecodeError::BadMagic { found: 0x0058_504c }
    );
    assert!(matches!(decode_err(b"X"), DecodeError::BadMagic { .. }));

    let e = decode_err(&header(MAGIC, 2, 1, 0, 0)[..6]);
    assert_eq!(
        e,
        DecodeError::UnsupportedVersion {
            peer: 2,
            ours: PROTOCOL_VERSION
        }
    );
    assert_eq!(
        e.to_string(),
        "unsupported wire version: peer speaks wire version 2, this build speaks 1"
    );

    let e = decode_err(&header(MAGIC, PROTOCOL_VERSION, 0, 0, 0)[..7]);
    assert_eq!(e, DecodeError::UnknownType(0));
    assert_eq!(e.to_string(), "unknown message type 0");
    assert_eq!(
        decode_err(&header(MAGIC, PROTOCOL_VERSION, 200, 0, 0)),
        DecodeError::UnknownType(200)
    );

    let e = decode_err(&header(MAGIC, PROTOCOL_VERSION, 9, 1, 0)[..8]);
    assert_eq!(e, DecodeError::ReservedNotZero(1));

    // Refused from the header alone, before any payload arrives.
    let e = decode_err(&header(MAGIC, PROTOCOL_VERSION, 3, 0, u32::MAX)[..12]);
    assert_eq!(
        e,
        DecodeError::PayloadTooLarge {
            len: u32::MAX,
            max: MAX_PAYLOAD
        }
    );
    assert_eq!(
        e.to_string(),
        format!(
            "frame payload of 4294967295 bytes is larger than the maximum of {MAX_PAYLOAD} bytes"
        )
    );
    let max = u32::try_from(MAX_PAYLOAD).unwrap();
    assert_eq!(
        decode(&header(MAGIC, PROTOCOL_VERSION, 3, 0, max)),
        Ok(None)
    );
    assert!(matches!(
        decode_err(&header(MAGIC, PROTOCOL_VERSION, 3, 0, max + 1)),
        DecodeError::PayloadTooLarge { .. }
    ));

    let mut f = encoded(&Message::Ping);
    f[12] ^= 0xff;
    let e = decode_err(&f);
    assert!(matches!(e, DecodeError::ChecksumMismatch { .. }));
    assert!(
        e.to_string()
            .starts_with("frame checksum mismatch: stored 0x"),
        "{e}"
    );
}

#[test]
fn payload_errors() {
    let e = decode_err(&raw_frame(2, &[0; 31]));
    assert_eq!(
        e,
        DecodeError::Truncated {
            message: "Auth",
            field: "mac"
        }
    );
    assert_eq!(e.to_string(), "Auth frame: payload ends inside field `mac`");

    let e = decode_err(&raw_frame(9, &[0]));
    assert_eq!(
        e,
        DecodeError::TrailingBytes {
            message: "Ping",
            count: 1
        }
    );
    assert_eq!(
        e.to_string(),
        "Ping frame: 1 trailing bytes after the last field"
    );

    let e = decode_err(&raw_frame(11, &[0, 9]));
    assert_eq!(
        e,
        DecodeError::UnknownEnumValue {
            message: "State",
            field: "disk",
            value: 9
        }
    );
    assert_eq!(
        e.to_string(),
        "State frame: field `disk` has unknown value 9"
    );

    let e = decode_err(&raw_frame(24, &[14, 0]));
    assert_eq!(
        e,
        DecodeError::UnknownEnumValue {
            message: "Disconnect",
            field: "reason",
            value: 14
        }
    );
    let e = decode_err(&raw_frame(24, &[0, 2, 0xc3, 0x28]));
    assert_eq!(
        e,
        DecodeError::InvalidUtf8 {
            message: "Disconnect",
            field: "message"
        }
    );
    assert_eq!(
        e.to_string(),
        "Disconnect frame: field `message` is not valid UTF-8"
    );
    let e = decode_err(&raw_frame(24, &[0, 3, b'a']));
    assert_eq!(
        e,
        DecodeError::Truncated {
            message: "Disconnect",
            field: "message"
        }
    );

    // Hello's strings and bool.
    let mut hello = encoded(&golden_hello())[HEADER_LEN..].to_vec();
    hello[3] = 0xff; // first byte of "r0"
    assert_eq!(
        decode_err(&raw_frame(1, &hello)),
        DecodeError::InvalidUtf8 {
            message: "Hello",
            field: "resource"
        }
    );
    let mut hello = encoded(&golden_hello())[HEADER_LEN..].to_vec();
    *hello.last_mut().unwrap() = 2;
    assert_eq!(
        decode_err(&raw_frame(1, &hello)),
        DecodeError::UnknownEnumValue {
            message: "Hello",
            field: "discard_my_data",
            value: 2
        }
    );
}

fn data_payload(len: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&1u64.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&len.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(data);
    p
}

#[test]
fn data_errors() {
    let e = decode_err(&raw_frame(
        3,
        &data_payload(0, 1 << 7 | data_flags::FUA, &[]),
    ));
    assert_eq!(
        e,
        DecodeError::UnknownDataFlags {
            flags: 0x81,
            unknown: 0x80
        }
    );
    assert_eq!(
        e.to_string(),
        "Data frame: unknown flag bits 0x80 (flags 0x81)"
    );

    let e = decode_err(&raw_frame(3, &data_payload(4, 0, b"abc")));
    assert_eq!(
        e,
        DecodeError::DataLengthMismatch {
            len: 4,
            flags: 0,
            payload: 3,
            expected: 4
        }
    );
    assert_eq!(
        e.to_string(),
        "Data frame: len is 4 with flags 0x0 but 3 bytes of data follow (expected 4)"
    );
    let e = decode_err(&raw_frame(3, &data_payload(4, data_flags::TRIM, b"abcd")));
    assert_eq!(
        e,
        DecodeError::DataLengthMismatch {
            len: 4,
            flags: data_flags::TRIM,
            payload: 4,
            expected: 0
        }
    );
    assert!(decode(&raw_frame(
        3,
        &data_payload(1 << 20, data_flags::ZEROES, &[])
    ))
    .unwrap()
    .is_some());

    // Encoding refuses what decoding would refuse.
    let mut out = BytesMut::new();
    let bad = Message::Data {
        seq: 1,
        offset: 0,
        len: 5,
        flags: 0,
        data: Bytes::from_static(b"abc"),
    };
    assert_eq!(
        encode(&bad, &mut out),
        Err(EncodeError::DataLengthMismatch {
            len: 5,
            flags: 0,
            data: 3,
            expected: 5
        })
    );
    let bad = Message::Data {
        seq: 1,
        offset: 0,
        len: 3,
        flags: data_flags::TRIM,
        data: Bytes::from_static(b"abc"),
    };
    assert!(matches!(
        encode(&bad, &mut out),
        Err(EncodeError::DataLengthMismatch { .. })
    ));
    let bad = Message::Data {
        seq: 1,
        offset: 0,
        len: 0,
        flags: 1 << 9,
        data: Bytes::new(),
    };
    assert!(matches!(
        encode(&bad, &mut out),
        Err(EncodeError::UnknownDataFlags { .. })
    ));
    assert!(out.is_empty(), "failed encodes write nothing");

    // 1 MiB of data fits; the payload limit is enforced on encode too.
    let mib = Bytes::from(vec![7u8; 1 << 20]);
    let ok = Message::Data {
        seq: 1,
        offset: 0,
        len: 1 << 20,
        flags: 0,
        data: mib.clone(),
    };
    encode(&ok, &mut out).unwrap();
    let mut d = FrameDecoder::new();
    d.push(&out);
    assert_eq!(d.next(), Ok(Some(ok)));
    let huge = Message::ResyncData {
        id: 1,
        offset: 0,
        data: Bytes::from(vec![0u8; MAX_PAYLOAD]),
    };
    let mut out = BytesMut::new();
    assert!(matches!(
        encode(&huge, &mut out),
        Err(EncodeError::PayloadTooLarge {
            message: "ResyncData",
            ..
        })
    ));
}

#[test]
fn string_limits() {
    let mut out = BytesMut::new();
    let long = "é".repeat(128); // 256 bytes
    let e = encode(
        &Message::Disconnect {
            reason: DisconnectReason::Admin,
            message: long,
        },
        &mut out,
    )
    .unwrap_err();
    assert_eq!(
        e,
        EncodeError::StringTooLong {
            message: "Disconnect",
            field: "message",
            len: 256
        }
    );
    assert_eq!(
        e.to_string(),
        "Disconnect.message is 256 bytes long; the wire allows at most 255"
    );
    // The helper cuts at a character boundary so the message always encodes.
    let m = replication_proto::wire::disconnect(DisconnectReason::Admin, &"é".repeat(200));
    let Message::Disconnect { message, .. } = &m else {
        unreachable!()
    };
    assert_eq!(message.len(), 254);
    encode(&m, &mut out).unwrap();
    assert_eq!(decode(&out).unwrap().unwrap().0, m);
    out.clear();
    let Message::Hello(mut h) = golden_hello() else {
        unreachable!()
    };
    h.node = "n".repeat(300);
    assert!(matches!(
        encode(&Message::Hello(h), &mut out),
        Err(EncodeError::StringTooLong {
            message: "Hello",
            field: "node",
            len: 300
        })
    ));
}

#[test]
fn bitmap_errors() {
    let mut p = Vec::new();
    p.extend_from_slice(&0u64.to_le_bytes());
    p.push(0);
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    p.extend_from_slice(&[1, 2, 3]);
    let e = decode_err(&raw_frame(13, &p));
    assert_eq!(
        e,
        DecodeError::TooManyBitmapRuns {
            runs: u32::MAX,
            remaining: 3
        }
    );
    assert_eq!(
        e.to_string(),
        "Bitmap frame: 4294967295 runs announced but only 3 payload bytes remain"
    );

    let bitmap = |flags: u8, runs: &[&[u8]]| {
        let mut p = Vec::new();
        p.extend_from_slice(&0u64.to_le_bytes());
        p.push(flags);
        p.extend_from_slice(&u32::try_from(runs.len()).unwrap().to_le_bytes());
        for r in runs {
            p.extend_from_slice(r);
        }
        raw_frame(13, &p)
    };
    assert!(matches!(
        decode_err(&bitmap(4, &[])),
        DecodeError::UnknownEnumValue { field: "flags", .. }
    ));
    // Overlong varint encodings and values over 64 bits.
    for bad in [
        &[0x80, 0x00][..],
        &[0xff; 10],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
    ] {
        assert_eq!(
            decode_err(&bitmap(0, &[bad])),
            DecodeError::InvalidVarint {
                message: "Bitmap",
                field: "runs"
            }
        );
    }
    let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_eq!(
        decode(&bitmap(3, &[&max, &[0], &[0x80, 0x01]]))
            .unwrap()
            .unwrap()
            .0,
        Message::Bitmap {
            start_bit: 0,
            first_set: true,
            runs: vec![u64::MAX, 0, 128],
            last: true
        }
    );
    assert_eq!(
        decode_err(&bitmap(0, &[&[0x80]])),
        DecodeError::Truncated {
            message: "Bitmap",
            field: "runs"
        }
    );

    // The largest chunk bitmap_messages makes fits a frame.
    let runs = vec![u64::MAX; MAX_BITMAP_RUNS];
    let msg = Message::Bitmap {
        start_bit: 0,
        first_set: false,
        runs,
        last: false,
    };
    let mut out = BytesMut::new();
    encode(&msg, &mut out).unwrap();
    assert!(out.len() <= HEADER_LEN + MAX_PAYLOAD);
}

#[test]
fn frame_decoder_data_shares_buffer() {
    let msg = golden_data();
    let bytes = encoded(&msg);
    let mut d = FrameDecoder::new();
    d.push(&bytes);
    d.push(&bytes[..3]);
    assert_eq!(d.next(), Ok(Some(msg)));
    assert_eq!(d.next(), Ok(None));
    assert_eq!(d.buffered(), 3);
}

// ----------------------------------------------------------------------------
// Bitmap run-length coding

fn bit(words: &[u64], i: u64) -> bool {
    words
        .get((i / 64) as usize)
        .is_some_and(|w| w >> (i % 64) & 1 != 0)
}

/// A bitmap with `nbits` bits, and its words with bits past `nbits` cleared.
fn bitmap() -> impl Strategy<Value = (Vec<u64>, u64)> {
    let dense = prop::collection::vec(any::<u64>(), 0..20);
    let sparse = (0usize..40, prop::collection::vec(any::<Index>(), 0..10)).prop_map(|(n, ix)| {
        let mut w = vec![0u64; n];
        if n > 0 {
            for i in ix {
                let b = i.index(n * 64);
                w[b / 64] |= 1 << (b % 64);
            }
        }
        w
    });
    let runs = prop::collection::vec(1u64..300, 0..20).prop_map(|lens| {
        let total: u64 = lens.iter().sum();
        let mut w = vec![0u64; total.div_ceil(64) as usize];
        let mut pos = 0;
        for (k, len) in lens.iter().enumerate() {
            if k % 2 == 1 {
                for b in pos..pos + len {
                    w[(b / 64) as usize] |= 1 << (b % 64);
                }
            }
            pos += len;
        }
        w
    });
    let full = (0usize..6).prop_map(|n| vec![u64::MAX; n]);
    (
        prop_oneof![dense, sparse, runs, full],
        any::<Index>(),
        any::<bool>(),
    )
        .prop_map(|(words, cut, exact)| {
            let cap = words.len() as u64 * 64;
            let nbits = if exact || cap == 0 {
                cap
            } else {
                cut.index(cap as usize + 1) as u64
            };
            (words, nbits)
        })
}

fn masked(words: &[u64], nbits: u64) -> Vec<u64> {
    let n = nbits.div_ceil(64) as usize;
    let mut v: Vec<u64> = words.iter().copied().take(n).collect();
    v.resize(n, 0);
    if nbits & 63 != 0 {
        if let Some(last) = v.last_mut() {
            *last &= (1u64 << (nbits & 63)) - 1;
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bitmap_roundtrip((words, nbits) in bitmap(), max_runs in 1usize..6, base in prop::collection::vec(any::<u64>(), 20)) {
        let msgs = bitmap_messages(&words, nbits, max_runs);
        prop_assert!(!msgs.is_empty());
        let nwords = nbits.div_ceil(64) as usize;
        let mut got = vec![0u64; nwords];
        let mut rx = BitmapReceiver::new(nbits);
        let mut done = None;
        for (k, m) in msgs.iter().enumerate() {
            let Message::Bitmap { runs, last, .. } = m else { panic!("not a bitmap: {m:?}") };
            prop_assert!(runs.len() <= max_runs);
            prop_assert_eq!(*last, k + 1 == msgs.len());
            prop_assert!(runs.iter().all(|&r| r > 0), "no empty runs: {:?}", runs);
            // Every chunk survives the wire.
            let mut out = BytesMut::new();
            encode(m, &mut out).unwrap();
            prop_assert_eq!(&decode(&out).unwrap().unwrap().0, m);
            match rx.receive_message(m, &mut got).unwrap() {
                Progress::More => prop_assert!(!*last),
                Progress::Done { set_bits } => done = Some(set_bits),
            }
        }
        let expect = masked(&words, nbits);
        prop_assert_eq!(&got, &expect);
        let ones: u64 = expect.iter().map(|w| u64::from(w.count_ones())).sum();
        prop_assert_eq!(done, Some(ones));
        prop_assert_eq!(rx.set_bits(), ones);
        for i in 0..nbits {
            prop_assert_eq!(bit(&got, i), bit(&words, i));
        }

        // Received into a bitmap that already has bits: the union.
        let mut union: Vec<u64> = base.iter().copied().take(nwords).collect();
        union.resize(nwords, 0);
        let before = union.clone();
        let mut rx = BitmapReceiver::new(nbits);
        for m in &msgs {
            rx.receive_message(m, &mut union).unwrap();
        }
        let want: Vec<u64> = before.iter().zip(&expect).map(|(a, b)| a | b).collect();
        prop_assert_eq!(union, want);
    }

    /// Dropping, repeating or reordering chunks is detected.
    #[test]
    fn bitmap_chunks_must_be_in_order((words, nbits) in bitmap(), skip in any::<Index>()) {
        let msgs = bitmap_messages(&words, nbits, 1);
        prop_assume!(msgs.len() >= 2);
        let skip = skip.index(msgs.len());
        let mut got = vec![0u64; nbits.div_ceil(64) as usize];
        let mut rx = BitmapReceiver::new(nbits);
        let mut result = Ok(Progress::More);
        for (k, m) in msgs.iter().enumerate() {
            if k == skip {
                continue;
            }
            result = rx.receive_message(m, &mut got);
            if result.is_err() {
                break;
            }
        }
        prop_assert!(result.is_err() || !rx.is_done());
    }
}

#[test]
fn large_clean_bitmap_is_cheap() {
    let nbits = 1u64 << 28; // 1 TiB at 4 KiB per bit
    let mut words = vec![0u64; (nbits / 64) as usize];
    words[1000] = 1 << 5;
    let msgs = bitmap_messages(&words, nbits, 4096);
    assert_eq!(
        msgs,
        vec![Message::Bitmap {
            start_bit: 0,
            first_set: false,
            runs: vec![64_005, 1, nbits - 64_006],
            last: true
        }]
    );
    assert!(encoded_len(&msgs[0]) < 40);
}
