//! The NBD transmission phase through the same entry point and checks as
//! the `nbd_requests` fuzz target (ublk-target/fuzz): a few request
//! streams written by hand, and the replay of every input kept in
//! `fuzz/regressions/nbd_requests/` (seeds, and anything the fuzzer found).

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

#[path = "../fuzz/src/nbd_requests_checks.rs"]
mod checks;

use ublk_target::frontend::IoRequest;
use ublk_target::nbd::fuzzing::requests;
use ublk_target::nbd::proto::*;

fn req(flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&cmd.to_be_bytes());
    v.extend_from_slice(&handle.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// (error, handle) of each 16-byte reply, skipping `data[i]` bytes after
/// reply `i`.
fn replies(mut sent: &[u8], data: &[usize]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    while sent.len() >= 16 {
        assert_eq!(sent[..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
        let e = u32::from_be_bytes(sent[4..8].try_into().unwrap());
        let h = u64::from_be_bytes(sent[8..16].try_into().unwrap());
        sent = &sent[16 + data.get(out.len()).copied().unwrap_or(0)..];
        out.push((e, h));
    }
    assert!(sent.is_empty());
    out
}

/// Setting 0: a 64 KiB export whose backend succeeds.
#[test]
fn errors_follow_the_spec() {
    let size = 64 << 10;
    let mut input = vec![0u8];
    input.extend(req(0, CMD_WRITE, 1, 0, 512));
    input.extend([7u8; 512]);
    input.extend(req(0, CMD_WRITE, 2, size - 512, 1024)); // past the end
    input.extend([7u8; 1024]);
    input.extend(req(0, CMD_WRITE_ZEROES, 3, size, 512)); // past the end
    input.extend(req(0, CMD_TRIM, 4, size, 512)); // past the end
    input.extend(req(0, CMD_READ, 5, size, 512)); // past the end
    input.extend(req(0, CMD_READ, 6, 1, 512)); // misaligned
    input.extend(req(4, CMD_READ, 7, 0, 512)); // unknown flag (DF)
    input.extend(req(0, 9, 8, 0, 512)); // unknown command
    input.extend(req(0, CMD_READ, 9, 0, 4096));
    input.extend(req(0, CMD_DISC, 10, 0, 0));
    let s = requests(&input);
    assert_eq!(s.end, "disc");
    let r = replies(&s.sent, &[0, 0, 0, 0, 0, 0, 0, 0, 4096]);
    assert_eq!(
        r,
        [
            (0, 1),
            (NBD_ENOSPC, 2),
            (NBD_ENOSPC, 3),
            (NBD_EINVAL, 4),
            (NBD_EINVAL, 5),
            (NBD_EINVAL, 6),
            (NBD_EINVAL, 7),
            (NBD_EINVAL, 8),
            (0, 9),
        ]
    );
    assert_eq!(s.submitted.len(), 2);
    assert!(
        matches!(&s.submitted[0], IoRequest::Write { offset: 0, data, fua: false } if data[..] == [7u8; 512])
    );
    checks::nbd_requests(&input);
}

/// Setting 2: a 1 TiB export; a 3.5 MiB trim reaches the backend as four
/// pieces and is answered once. Setting bit 2: the backend fails (EIO).
#[test]
fn long_trims_are_split_and_answered_once() {
    for setting in [2u8, 2 | 4] {
        let mut input = vec![setting];
        input.extend(req(0, CMD_TRIM, 77, 1 << 20, 7 << 19));
        let s = requests(&input);
        assert_ne!(s.end, "disc");
        let want = if setting & 4 != 0 { NBD_EIO } else { 0 };
        assert_eq!(replies(&s.sent, &[]), [(want, 77)]);
        assert_eq!(s.submitted.len(), 4);
        checks::nbd_requests(&input);
    }
}

/// A backend that returns the wrong read length: the client gets EIO, not
/// the wrong number of bytes.
#[test]
fn wrong_read_length_is_eio() {
    let mut input = vec![8u8];
    input.extend(req(0, CMD_READ, 1, 0, 4096));
    input.extend(req(0, CMD_READ, 2, 0, 4096));
    let s = requests(&input);
    assert_eq!(replies(&s.sent, &[]), [(NBD_EIO, 1), (NBD_EIO, 2)]);
    checks::nbd_requests(&input);
}

/// A bad magic or a truncated write closes the connection; requests before
/// it were answered.
#[test]
fn broken_streams_close() {
    let mut input = vec![0u8];
    input.extend(req(0, CMD_FLUSH, 1, 0, 0));
    let mut bad = req(0, CMD_READ, 2, 0, 512);
    bad[0] ^= 1;
    input.extend(bad);
    let s = requests(&input);
    assert!(s.end.contains("magic"), "{}", s.end);
    assert_eq!(replies(&s.sent, &[]), [(0, 1)]);
    let mut input = vec![0u8];
    input.extend(req(0, CMD_WRITE, 1, 0, 4096));
    input.extend([0u8; 100]);
    let s = requests(&input);
    assert_ne!(s.end, "disc");
    assert!(s.sent.is_empty() && s.submitted.is_empty());
}

#[test]
fn fuzz_regressions_replay() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/nbd_requests");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let input = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| checks::nbd_requests(&input));
        assert!(r.is_ok(), "{} fails again", p.display());
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
