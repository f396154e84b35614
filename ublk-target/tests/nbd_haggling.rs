//! The NBD option haggling's TLS rules, through the same entry point as
//! the `nbd_option_haggling` fuzz target (ublk-target/fuzz), and the replay
//! of every input kept in `fuzz/regressions/nbd_option_haggling/` (crashes
//! the fuzzer found, and seeds), with the target's checks.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use ublk_target::nbd::fuzzing::{option_haggling, Haggled};
use ublk_target::nbd::proto::*;

/// Setting byte bits (see `option_haggling`).
const OFFERED: u8 = 1;
const REQUIRED: u8 = 2;
const ACTIVE: u8 = 4;
const PRIMARY: u8 = 8;

fn opt(o: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&o.to_be_bytes());
    v.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn go_data() -> Vec<u8> {
    let mut d = 2u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"r0");
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_NAME.to_be_bytes());
    d
}

/// Setting, fixed-newstyle client flags, then `opts`.
fn run(setting: u8, opts: &[Vec<u8>]) -> Haggled {
    let mut input = vec![setting];
    input.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
    for o in opts {
        input.extend_from_slice(o);
    }
    option_haggling(&input)
}

/// (option, reply type, message) of each reply after the greeting.
fn replies(sent: &[u8]) -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    let mut rest = &sent[18..];
    while rest.len() >= 20 {
        let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
        assert_eq!(&rest[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        let len = be32(&rest[16..20]) as usize;
        let data = String::from_utf8_lossy(&rest[20..20 + len]).into_owned();
        out.push((be32(&rest[8..12]), be32(&rest[12..16]), data));
        rest = &rest[20 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes after the last reply");
    out
}

#[test]
fn require_mode_answers_tls_required_until_starttls() {
    let go = go_data();
    let h = run(
        REQUIRED | PRIMARY,
        &[
            opt(OPT_INFO, &go),
            opt(OPT_LIST, &[]),
            opt(OPT_GO, &go),
            opt(OPT_STARTTLS, b"x"),
            opt(OPT_STARTTLS, &[]),
        ],
    );
    let r = replies(&h.sent);
    let types: Vec<u32> = r.iter().map(|x| x.1).collect();
    assert_eq!(
        types,
        [
            REP_ERR_TLS_REQD,
            REP_ERR_TLS_REQD,
            REP_ERR_TLS_REQD,
            REP_ERR_INVALID,
            REP_ACK
        ]
    );
    assert!(r[0].2.contains("TLS required"), "{}", r[0].2);
    assert_eq!(h.end, "starttls");
}

#[test]
fn require_mode_closes_on_export_name_and_lets_abort_through() {
    let h = run(REQUIRED | PRIMARY, &[opt(OPT_EXPORT_NAME, b"r0")]);
    assert!(h.end.contains("requires TLS"), "{}", h.end);
    assert_eq!(h.sent.len(), 18, "nothing but the greeting was sent");
    let h = run(REQUIRED | PRIMARY, &[opt(OPT_ABORT, &[])]);
    assert_eq!(h.end, "aborted");
    // A client without fixed newstyle cannot be told: closed.
    let mut input = vec![REQUIRED | PRIMARY];
    input.extend_from_slice(&0u32.to_be_bytes());
    input.extend_from_slice(&opt(OPT_EXPORT_NAME, b"r0"));
    assert!(option_haggling(&input).end.contains("requires TLS"));
}

#[test]
fn inside_tls_the_haggling_starts_over() {
    let go = go_data();
    let h = run(
        REQUIRED | ACTIVE | PRIMARY,
        &[opt(OPT_STARTTLS, &[]), opt(OPT_GO, &go)],
    );
    let r = replies(&h.sent);
    assert_eq!(
        (r[0].1, r[0].2.as_str()),
        (REP_ERR_INVALID, "TLS is already negotiated")
    );
    assert!(r[1..].iter().any(|x| x.1 == REP_INFO));
    assert_eq!(h.end, "transmit");
}

#[test]
fn optional_and_off_modes() {
    let go = go_data();
    // "on": plain clients are served; STARTTLS is accepted.
    assert_eq!(run(OFFERED | PRIMARY, &[opt(OPT_GO, &go)]).end, "transmit");
    assert_eq!(
        run(OFFERED | PRIMARY, &[opt(OPT_STARTTLS, &[])]).end,
        "starttls"
    );
    // "off": refused by policy, the client may go on in plain.
    let h = run(PRIMARY, &[opt(OPT_STARTTLS, &[]), opt(OPT_GO, &go)]);
    let r = replies(&h.sent);
    assert_eq!(r[0].1, REP_ERR_POLICY);
    assert_eq!(h.end, "transmit");
}

/// The fuzz target's checks (ublk-target/fuzz/fuzz_targets/).
fn fuzz_checks(input: &[u8]) {
    let h = option_haggling(input);
    assert!(h.sent.len() <= 18 + 8 * input.len() + 256);
    if h.tls_required && !h.tls_active {
        assert_ne!(h.end, "transmit");
        for (_, t, _) in replies(&h.sent) {
            assert!(t != REP_INFO && t != REP_SERVER);
        }
    }
}

#[test]
fn fuzz_regressions_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/nbd_option_haggling");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let input = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| fuzz_checks(&input));
        assert!(r.is_ok(), "{} fails again", p.display());
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
