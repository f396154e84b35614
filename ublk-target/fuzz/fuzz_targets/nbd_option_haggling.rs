//! Feeds arbitrary client bytes to the NBD server's option haggling (the
//! real `greet` and `haggle`, through `ublk_target::nbd::fuzzing`).
//!
//! The first byte picks the server's setting (TLS offered, required,
//! already active; Primary or not); the rest is what the client sends. On
//! top of "no panic, no hang, no unbounded allocation", it checks:
//! - a client that has not upgraded to TLS on an export that requires it
//!   never reaches transmission and is never sent the export's details
//!   (no NBD_REP_INFO, no NBD_REP_SERVER);
//! - the server sends at most a few bytes per byte received (no
//!   amplification).

#![no_main]

use libfuzzer_sys::fuzz_target;
use ublk_target::nbd::fuzzing::option_haggling;
use ublk_target::nbd::proto::{OPTION_REPLY_MAGIC, REP_INFO, REP_SERVER};

/// The reply types in the server's output after the 18-byte greeting
/// (fixed newstyle replies: magic, option, type, length, data).
fn reply_types(sent: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = sent.get(18..).unwrap_or_default();
    while rest.len() >= 20 {
        let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
        let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
        assert_eq!(be64(&rest[..8]), OPTION_REPLY_MAGIC, "reply stream out of sync");
        out.push(be32(&rest[12..16]));
        let len = be32(&rest[16..20]) as usize;
        rest = rest.get(20 + len..).expect("reply shorter than its length");
    }
    assert!(rest.is_empty(), "trailing bytes after the last reply");
    out
}

fuzz_target!(|data: &[u8]| {
    let h = option_haggling(data);
    assert!(
        h.sent.len() <= 18 + 8 * data.len() + 256,
        "{} bytes sent for {} received",
        h.sent.len(),
        data.len()
    );
    if h.tls_required && !h.tls_active {
        assert_ne!(h.end, "transmit", "entered transmission without TLS");
        for t in reply_types(&h.sent) {
            assert!(
                t != REP_INFO && t != REP_SERVER,
                "export details sent before TLS"
            );
        }
    }
});
