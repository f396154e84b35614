//! Who reaches the NBD export of a real repd: `nbd-allow` lets in only the
//! listed client addresses (nbdinfo from libnbd is the client; a refused
//! one is closed before any NBD byte and logged with its address), and an
//! export open to the network with no protection warns in the log and in
//! `repctl status` (text and --json).

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{require, Cluster, Opts};

/// Node 0's `nbd` line becomes `to` (plus any extra keys after it).
fn set_nbd(c: &Cluster, to: &str) {
    let from = format!("nbd = \"127.0.0.1:{}\"\n", c.nbd_port[0]);
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    assert!(text.contains(&from), "{from:?} not in the file:\n{text}");
    std::fs::write(&c.config[0], text.replacen(&from, to, 1)).unwrap();
}

fn nbdinfo(c: &Cluster, uri: &str) -> std::process::Output {
    c.client(0, "nbdinfo", &["--size", uri])
}

#[test]
fn only_addresses_on_the_allow_list_reach_the_export() {
    require("nbdinfo", "libnbd-bin");
    let c = Cluster::new(Opts::default());
    let port = c.nbd_port[0];
    // A dual-stack listener: IPv4 clients arrive as ::ffff:127.0.0.1 and
    // must be matched as 127.0.0.1 (here: refused).
    set_nbd(
        &c,
        &format!("nbd = \"[::]:{port}\"\nnbd-allow = [\"::1/128\", \"10.9.0.0/16\"]\n"),
    );
    c.up(0);
    c.ok(0, &["primary", "--force"]);

    let ok = nbdinfo(&c, &format!("nbd://[::1]:{port}/r0"));
    assert!(
        ok.status.success(),
        "a listed address is refused: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        c.data_bytes(0).to_string()
    );

    let refused = nbdinfo(&c, &format!("nbd://127.0.0.1:{port}/r0"));
    assert!(!refused.status.success(), "127.0.0.1 is not on the list");
    let log = c.log_tail(0);
    assert!(
        log.contains("not in nbd-allow") && log.contains("127.0.0.1"),
        "the refusal and the client's address are not in the log:\n{log}"
    );
    // Protected by its allow-list: no warning.
    assert!(c.status(0)["nbd_warning"].is_null(), "{}", c.status(0));
}

#[test]
fn an_export_open_to_the_network_warns_at_start_and_in_status() {
    let c = Cluster::new(Opts::default());
    set_nbd(&c, &format!("nbd = \"0.0.0.0:{}\"\n", c.nbd_port[0]));
    c.up(0);
    let w = c.status(0)["nbd_warning"].as_str().unwrap().to_owned();
    assert!(w.contains("0.0.0.0") && w.contains("nbd-allow"), "{w}");
    let text = c.ok(0, &["status"]);
    assert!(text.contains("WARNING: the NBD export"), "{text}");
    let log = c.log_tail(0);
    assert!(log.contains("open to every host"), "{log}");
}

#[test]
fn a_loopback_export_does_not_warn() {
    let c = Cluster::new(Opts::default());
    c.up(0);
    assert!(c.status(0)["nbd_warning"].is_null(), "{}", c.status(0));
    assert!(!c.ok(0, &["status"]).contains("WARNING"));
}
