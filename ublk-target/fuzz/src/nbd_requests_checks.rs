//! The checks of the `nbd_requests` fuzz target, shared with the test that
//! replays its findings (ublk-target/tests/nbd_requests.rs includes this
//! file). A model of the NBD spec written apart from the server: it walks
//! the client's request stream itself, says what the server must answer
//! each request and hand the backend, and compares with what it did.

use ublk_target::frontend::IoRequest;
use ublk_target::nbd::fuzzing::{answer, requests, Answer, Served, EXPORT_SIZES};
use ublk_target::nbd::proto::{
    NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_EOVERFLOW, NBD_EPERM, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};

const HEADER: usize = 28;
const REPLY: usize = 16;
const BLOCK: u64 = 512;
/// The maximum payload the server advertises (NBD_INFO_BLOCK_SIZE).
const MAX_PAYLOAD: u32 = 1 << 20;
/// Writes longer than this the server may close on instead of draining.
const MAX_DRAINED: u32 = 32 << 20;
/// The backend requests one input may cause before the stream is cut
/// after the request that passes this many. A single request always runs
/// whole (a 4 GiB trim of the 1 TiB export is 4096 pieces), but an input
/// cannot stack dozens of them: the corpus had grown to ~7,400 pieces an
/// input, a few milliseconds each run, which put 10 million runs hours
/// beyond a session. Cutting at a request boundary is a client that stops
/// sending there, which the model and the server both handle.
const PIECE_BUDGET: usize = 1024;

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0, |acc, &x| (acc << 8) | u64::from(x))
}

/// One complete request of the client's stream and what must answer it.
#[derive(Debug)]
struct Expected {
    handle: u64,
    /// Read length when a successful reply carries data.
    read_len: Option<u32>,
    /// The error values allowed in the reply.
    errors: Vec<u32>,
    /// What the backend must be handed for it, in order.
    submits: Vec<IoRequest>,
}

/// How the client's stream ends.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    Disc,
    /// Bad magic, or a write too long to drain: the server closes.
    Broken,
    /// The bytes ran out (mid-header or mid-payload).
    Eof,
}

/// The error the backend double's answer turns into for a request that
/// reaches it (`read` for reads).
fn backend_error(a: Answer, read: bool) -> u32 {
    match a {
        Answer::Succeed => 0,
        Answer::FailEio => NBD_EIO,
        Answer::WrongReadLength if read => NBD_EIO,
        Answer::WrongReadLength => 0,
        Answer::FailErofs => NBD_EPERM,
    }
}

/// Splits a payload-less request into the server's 1 MiB pieces.
fn pieces(offset: u64, len: u32, make: impl Fn(u64, u32) -> IoRequest) -> Vec<IoRequest> {
    let mut out = Vec::new();
    let (mut off, mut left) = (offset, len);
    while left > 0 {
        let p = left.min(MAX_PAYLOAD);
        out.push(make(off, p));
        off += u64::from(p);
        left -= p;
    }
    out
}

/// What the spec (and the server's advertised limits) say of one request.
fn expect(
    size: u64,
    a: Answer,
    (flags, cmd, handle, offset, len): (u16, u16, u64, u64, u32),
    payload: Option<&[u8]>,
) -> Expected {
    const FUA: u16 = 1;
    const NO_HOLE: u16 = 2;
    let allowed = if cmd == 6 { FUA | NO_HOLE } else { FUA };
    let known = matches!(cmd, 0 | 1 | 3 | 4 | 6);
    let aligned = offset % BLOCK == 0 && u64::from(len) % BLOCK == 0;
    let inside = offset
        .checked_add(u64::from(len))
        .is_some_and(|e| e <= size);
    let oversize = matches!(cmd, 0 | 1) && len > MAX_PAYLOAD;
    let flush_args = cmd == 3 && (offset != 0 || len != 0);
    let mut e = Expected {
        handle,
        read_len: None,
        errors: vec![],
        submits: vec![],
    };
    let fua = flags & FUA != 0;
    e.errors = if !known || flags & !allowed != 0 || flush_args || (cmd != 3 && !aligned) {
        vec![NBD_EINVAL]
    } else if oversize {
        vec![NBD_EINVAL, NBD_EOVERFLOW]
    } else if cmd != 3 && !inside {
        // Writes past the end: ENOSPC; reads and trims: EINVAL.
        vec![if matches!(cmd, 1 | 6) {
            NBD_ENOSPC
        } else {
            NBD_EINVAL
        }]
    } else if cmd != 3 && len == 0 {
        vec![0]
    } else {
        e.submits = match cmd {
            0 => vec![IoRequest::Read { offset, len }],
            1 => vec![IoRequest::Write {
                offset,
                data: bytes::Bytes::copy_from_slice(payload.unwrap_or_default()),
                fua,
            }],
            3 => vec![IoRequest::Flush],
            4 => pieces(offset, len, |offset, len| IoRequest::Trim { offset, len }),
            _ => pieces(offset, len, |offset, len| IoRequest::WriteZeroes {
                offset,
                len,
                fua,
            }),
        };
        let err = backend_error(a, cmd == 0);
        if cmd == 0 && err == 0 {
            e.read_len = Some(len);
        }
        vec![err]
    };
    e
}

/// Walks the client's request stream as the spec frames it, up to the end
/// of the request in which the backend pieces pass [`PIECE_BUDGET`]
/// (the stream is then cut there: `Eof`). Returns the expectations, how
/// the stream ends and how many of its bytes that takes.
fn model(size: u64, a: Answer, stream: &[u8]) -> (Vec<Expected>, StreamEnd, usize) {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut pieces = 0;
    loop {
        let used = stream.len() - rest.len();
        if pieces > PIECE_BUDGET {
            return (out, StreamEnd::Eof, used);
        }
        let Some(h) = rest.get(..HEADER) else {
            return (out, StreamEnd::Eof, used);
        };
        rest = rest.get(HEADER..).unwrap_or_default();
        let magic = be(&h[..4]);
        let flags = be(&h[4..6]) as u16;
        let cmd = be(&h[6..8]) as u16;
        let (handle, offset, len) = (be(&h[8..16]), be(&h[16..24]), be(&h[24..28]) as u32);
        if magic != u64::from(REQUEST_MAGIC) {
            return (out, StreamEnd::Broken, stream.len());
        }
        if cmd == 2 {
            return (out, StreamEnd::Disc, stream.len());
        }
        let mut payload = None;
        if cmd == 1 {
            if len > MAX_DRAINED {
                return (out, StreamEnd::Broken, stream.len());
            }
            let Some(p) = rest.get(..len as usize) else {
                return (out, StreamEnd::Eof, stream.len());
            };
            rest = rest.get(len as usize..).unwrap_or_default();
            payload = Some(p);
        }
        let e = expect(size, a, (flags, cmd, handle, offset, len), payload);
        pieces += e.submits.len();
        out.push(e);
    }
}

/// Runs `input` through the server and checks its replies and what it
/// handed the backend against the model.
pub fn nbd_requests(input: &[u8]) {
    let setting = input.first().copied().unwrap_or(0);
    let a = answer(setting);
    let size = EXPORT_SIZES[usize::from(setting & 3)];
    let (expected, stream_end, used) = model(size, a, input.get(1..).unwrap_or_default());
    let served: Served = requests(input.get(..1 + used).unwrap_or(input));
    assert_eq!(served.size, size, "the export's size");
    // The end: DISC ends cleanly, anything else closes with a reason.
    match stream_end {
        StreamEnd::Disc => assert_eq!(served.end, "disc"),
        StreamEnd::Broken | StreamEnd::Eof => assert_ne!(served.end, "disc", "{stream_end:?}"),
    }
    assert!(
        served.hung_up,
        "the connection was not shut down at its end"
    );
    // Exactly one well-formed simple reply per complete request, in order
    // (the backend double answers at once), handle for handle.
    let mut sent = served.sent.as_slice();
    for (i, e) in expected.iter().enumerate() {
        let r = sent
            .get(..REPLY)
            .unwrap_or_else(|| panic!("no reply to request {i} ({e:?}); end: {}", served.end));
        assert_eq!(
            be(&r[..4]),
            u64::from(SIMPLE_REPLY_MAGIC),
            "reply {i}: bad magic"
        );
        let error = be(&r[4..8]) as u32;
        assert_eq!(be(&r[8..16]), e.handle, "reply {i}: handle");
        assert!(
            e.errors.contains(&error),
            "reply {i}: error {error}, expected {e:?}"
        );
        sent = &sent[REPLY..];
        if let (0, Some(len)) = (error, e.read_len) {
            // Exactly the bytes asked for; the next reply's magic (or the
            // end of the stream) must follow.
            sent = sent
                .get(len as usize..)
                .unwrap_or_else(|| panic!("reply {i}: fewer than {len} read bytes"));
        }
    }
    assert!(
        sent.is_empty(),
        "{} bytes sent beyond the replies",
        sent.len()
    );
    // The backend got exactly the valid requests, split as advertised.
    let submits: Vec<&IoRequest> = expected.iter().flat_map(|e| &e.submits).collect();
    let got: Vec<&IoRequest> = served.submitted.iter().collect();
    assert_eq!(got.len(), submits.len(), "backend requests");
    for (g, s) in got.iter().zip(&submits) {
        assert_eq!(g, s, "backend request");
    }
}
