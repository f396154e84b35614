//! Feeds arbitrary bytes to the NBD server as a client's request stream
//! after a successful haggle: the real transmission phase (its reader and
//! writer threads, request decoding and dispatch) in front of a test
//! double of the backend the engine implements, through
//! `ublk_target::nbd::fuzzing::requests`.
//!
//! The first byte picks the export size and how the backend double
//! answers; the rest is the request stream. The checks (in
//! `src/nbd_requests_checks.rs`, shared with the regression test) walk the
//! stream with a model of the NBD spec: every complete request gets
//! exactly one simple reply with its handle and the error the spec asks
//! for (EINVAL for unknown commands and flags, misaligned or oversize
//! requests, reads and trims past the end; ENOSPC for writes past the
//! end), a read's successful reply carries exactly the bytes asked, the
//! backend is handed exactly the valid requests (trims and write-zeroes in
//! 1 MiB pieces), and the connection ends cleanly only on NBD_CMD_DISC.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/nbd_requests_checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::nbd_requests(data);
});
