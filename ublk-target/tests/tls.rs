//! The replication link over TLS (`[net] tls = "on"`), driven as a user
//! would: certificates made with `openssl` as the README says, two repd in
//! network namespaces, writes through the NBD export, the link captured
//! with tcpdump on the veth between the namespaces. Then the refusals: a
//! peer whose certificate another CA signed, an expired certificate, a
//! plain-TCP peer: each refused with the reason on both sides, and the
//! Secondary's file unchanged.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{require, Cluster, Netns, Opts, NODES};
use rep_testkit::certs::{make_ca, make_leaf, Ca, Leaf};
use rep_testkit::link::{contains, node_address, PATTERN};

/// `text` with TLS turned on: `ca` as tls-ca, `leaves[i]` for node i.
fn with_tls(text: &str, ca: &Path, leaves: [&Leaf; 2]) -> String {
    let mut t = text.replacen(
        "[net]\n",
        &format!("[net]\ntls = \"on\"\ntls-ca = \"{}\"\n", ca.display()),
        1,
    );
    for (name, leaf) in NODES.iter().zip(leaves) {
        t = t.replacen(
            &format!("name = \"{name}\"\n"),
            &format!(
                "name = \"{name}\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
                leaf.cert.display(),
                leaf.key.display()
            ),
            1,
        );
    }
    t
}

/// A CA and a certificate for each node, in `dir`.
fn pki(dir: &Path) -> (Ca, [Leaf; 2]) {
    let ca = make_ca(dir, "ca");
    let leaves = NODES.map(|n| make_leaf(dir, &ca, n, n, 30));
    (ca, leaves)
}

/// Two nodes in namespaces, `tls` on or off; the pattern written through
/// alpha's export while the link is captured. Returns the capture.
fn replicate_and_capture(tag: &str, tls: bool) -> Vec<u8> {
    require("nbdcopy", "libnbd-bin");
    let ns = Netns::new(tag);
    let mut c = Cluster::new(ns.opts());
    if tls {
        let (ca, leaves) = pki(c.dir.path());
        let text = std::fs::read_to_string(&c.config[0]).unwrap();
        std::fs::write(
            &c.config[0],
            with_tls(&text, &ca.cert, [&leaves[0], &leaves[1]]),
        )
        .unwrap();
        c.config[1] = c.config[0].clone();
    }
    common::link_tls::replicate_captured(&c, &ns, tls.then_some("replication link over TLS"))
}

#[test]
fn block_content_crosses_the_link_only_encrypted() {
    let plain = replicate_and_capture("tp", false);
    assert!(
        contains(&plain, PATTERN),
        "the check can fail: without TLS the pattern is in the capture"
    );
    let tls = replicate_and_capture("tt", true);
    assert!(
        !contains(&tls, PATTERN),
        "with TLS the block content must not cross the link in the clear"
    );
}

/// How beta's side is set up wrong.
enum Wrong {
    /// Beta's certificate is signed by another CA.
    OtherCa,
    /// Beta's certificate expired yesterday.
    Expired,
    /// Beta runs plain TCP.
    Plain,
    /// Beta's certificate is good, its shared secret is not: the HMAC
    /// challenge is still a second factor.
    Secret,
}

/// Alpha (right) and beta (set up `wrong`) are refused with the reasons
/// `why[0]`, `why[1]` in their status; alpha, Primary alone, writes, and
/// beta's file does not change.
fn refused(wrong: Wrong, why: [&str; 2]) {
    require("nbdcopy", "libnbd-bin");
    let mut c = Cluster::new(Opts::default());
    let dir = c.dir.path().to_owned();
    let (ca, leaves) = pki(&dir);
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    let beta_leaf = match wrong {
        Wrong::OtherCa => {
            let other = make_ca(&dir, "other-ca");
            make_leaf(&dir, &other, "beta", "beta-other", 30)
        }
        Wrong::Expired => make_leaf(&dir, &ca, "beta", "beta-expired", -1),
        Wrong::Plain | Wrong::Secret => leaves[1].clone(),
    };
    std::fs::write(
        &c.config[0],
        with_tls(&text, &ca.cert, [&leaves[0], &leaves[1]]),
    )
    .unwrap();
    let beta_cfg = dir.join("beta.toml");
    let beta_text = match wrong {
        Wrong::Plain => text,
        Wrong::Secret => with_tls(&text, &ca.cert, [&leaves[0], &beta_leaf])
            .replace("secret = \"test-secret\"", "secret = \"other\""),
        _ => with_tls(&text, &ca.cert, [&leaves[0], &beta_leaf]),
    };
    std::fs::write(&beta_cfg, beta_text).unwrap();
    c.config[1] = beta_cfg;
    // A TLS refusal leaves the dialer trying again each second, and each
    // refusal is an event (a wrong secret ends in StandAlone).
    common::link_tls::assert_refused(&c, why, !matches!(wrong, Wrong::Secret));
}

#[test]
fn a_peer_signed_by_another_ca_is_refused_on_both_sides() {
    refused(
        Wrong::OtherCa,
        [
            "not signed by this node's CA",
            "the peer refused this node's certificate",
        ],
    );
}

#[test]
fn an_expired_certificate_is_refused_on_both_sides() {
    refused(
        Wrong::Expired,
        [
            "certificate has expired",
            "refused this node's certificate: it has expired",
        ],
    );
}

#[test]
fn a_plain_tcp_peer_is_refused_on_both_sides() {
    refused(
        Wrong::Plain,
        // Alpha either reads beta's plain Hello as a broken TLS record or
        // sees beta close first: both reasons say what to set.
        [
            "tls = \"on\"",
            "the peer speaks TLS and this node plain TCP",
        ],
    );
}

#[test]
fn a_stalled_tls_handshake_does_not_hold_up_the_link() {
    let mut c = Cluster::new(Opts::default());
    let (ca, leaves) = pki(c.dir.path());
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    std::fs::write(
        &c.config[0],
        with_tls(&text, &ca.cert, [&leaves[0], &leaves[1]]),
    )
    .unwrap();
    c.config[1] = c.config[0].clone();
    let beta_addr = node_address(&text, 1);
    c.up(1);
    // Connects to beta and says nothing: a handshake that never moves.
    let stalled = std::net::TcpStream::connect(&beta_addr).unwrap();
    c.up(0);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    // timeout-ms is 1000 in these tests: beta gave the stalled one up.
    c.wait(1, "the stalled handshake's reason", 10, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("stalled the TLS handshake"))
    });
    drop(stalled);
}

#[test]
fn over_tls_a_wrong_secret_is_still_refused() {
    refused(Wrong::Secret, ["secret", "secret"]);
}
