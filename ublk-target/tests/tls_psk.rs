//! The replication link over TLS with a pre-shared key (`[net] tls = "on"`
//! with `tls-psk-file`), driven as a user would: a key file in psktool's
//! `identity:hexkey` form, two repd in network namespaces, writes through
//! the NBD export, the link captured with tcpdump on the veth. Then the
//! refusals: a wrong key, a wrong identity, a plain-TCP peer, each refused
//! with the reason on both sides and the Secondary's file unchanged; and a
//! key file other users can read, refused at start.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{require, Cluster, Netns, Opts};
use rep_testkit::link::{contains, PATTERN};

const KEY: &str = "8d2c1a9f0b7e6d5c4b3a29180f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c";
const OTHER_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f08d2c1a9f0b7e6d5c4b3a29180f1e2d3c";

/// A private key file `name` in `dir` holding `line`.
fn psk_file(dir: &Path, name: &str, line: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{line}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// `text` with the link over TLS with the key file `psk`.
fn with_psk(text: &str, psk: &Path) -> String {
    text.replacen(
        "[net]\n",
        &format!(
            "[net]\ntls = \"on\"\ntls-psk-file = \"{}\"\n",
            psk.display()
        ),
        1,
    )
}

#[test]
fn block_content_crosses_the_link_only_encrypted() {
    require("nbdcopy", "libnbd-bin");
    let ns = Netns::new("pk");
    let mut c = Cluster::new(ns.opts());
    let psk = psk_file(c.dir.path(), "link.psk", &format!("r0-link:{KEY}"));
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    std::fs::write(&c.config[0], with_psk(&text, &psk)).unwrap();
    c.config[1] = c.config[0].clone();
    let captured = common::link_tls::replicate_captured(
        &c,
        &ns,
        Some("replication link over TLS (pre-shared key"),
    );
    assert!(
        !contains(&captured, PATTERN),
        "with a PSK the block content must not cross the link in the clear"
    );
}

/// How beta's side is set up wrong.
enum Wrong {
    /// The same identity, another key.
    Key,
    /// The same key under another identity.
    Identity,
    /// Beta runs plain TCP.
    Plain,
}

/// Alpha (right) and beta (set up `wrong`) are refused with the reasons
/// `why[0]`, `why[1]` in their status and events; alpha, Primary alone,
/// writes, and beta's file does not change.
fn refused(wrong: Wrong, why: [&str; 2]) {
    require("nbdcopy", "libnbd-bin");
    let mut c = Cluster::new(Opts::default());
    let dir = c.dir.path().to_owned();
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    let good = psk_file(&dir, "alpha.psk", &format!("r0-link:{KEY}"));
    std::fs::write(&c.config[0], with_psk(&text, &good)).unwrap();
    let beta_text = match wrong {
        Wrong::Key => with_psk(
            &text,
            &psk_file(&dir, "beta.psk", &format!("r0-link:{OTHER_KEY}")),
        ),
        Wrong::Identity => with_psk(&text, &psk_file(&dir, "beta.psk", &format!("other:{KEY}"))),
        Wrong::Plain => text,
    };
    let beta_cfg = dir.join("beta.toml");
    std::fs::write(&beta_cfg, beta_text).unwrap();
    c.config[1] = beta_cfg;
    common::link_tls::assert_refused(&c, why, true);
}

#[test]
fn a_wrong_key_is_refused_on_both_sides() {
    refused(
        Wrong::Key,
        [
            "the peer refused this node's pre-shared key",
            "differs from this node's",
        ],
    );
}

#[test]
fn a_wrong_identity_is_refused_on_both_sides() {
    refused(
        Wrong::Identity,
        [
            "the peer refused this node's PSK identity \"r0-link\"",
            "the peer's PSK identity \"r0-link\" is not in this node's PSK file",
        ],
    );
}

#[test]
fn a_plain_tcp_peer_is_refused_on_both_sides() {
    refused(
        Wrong::Plain,
        [
            "tls = \"on\"",
            "the peer speaks TLS and this node plain TCP",
        ],
    );
}

#[test]
fn a_key_file_other_users_can_read_is_refused_at_start() {
    let c = Cluster::new(Opts::default());
    let psk = psk_file(c.dir.path(), "link.psk", &format!("r0-link:{KEY}"));
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    std::fs::write(&c.config[0], with_psk(&text, &psk)).unwrap();
    let o = c.repctl(0, &["up"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success(),
        "repd started with a readable key: {out}"
    );
    assert!(
        out.contains("mode 644") && out.contains(&format!("chmod 600 {}", psk.display())),
        "{out}\n{}",
        c.log_tail(0)
    );
    // `repctl dump` shows the key's file, not the key.
    let dump = c.ok(0, &["dump"]);
    assert!(dump.contains("tls-psk-file = "), "{dump}");
    assert!(!dump.contains(KEY), "{dump}");
}
