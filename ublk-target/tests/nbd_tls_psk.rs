//! TLS with pre-shared keys on the NBD export of a real repd
//! (`nbd-tls-psk-file`), driven by real clients: the key file made with
//! GnuTLS' `psktool`; nbdinfo and nbdcopy with libnbd's
//! `nbds://ID@HOST/...?tls-psk-file=FILE` URIs; qemu-img with a
//! `tls-creds-psk` object. A plain client in `require` mode is told `TLS
//! required`; a wrong key and an unknown identity are refused with the
//! reason in repd's log.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::nbd_tls::{
    export_with, plain_client_is_served, plain_client_is_told_tls_required,
    qemu_img_sees_the_export, size_and_data_round_trip, stderr,
};
use common::{require, Cluster};

/// A node whose NBD export takes PSK clients.
struct PskExport {
    c: Cluster,
    /// The key file the clients use (the same file as the server's).
    keys: PathBuf,
    dir: tempfile::TempDir,
}

/// `psktool -u ID -p FILE` with a 32-byte key; the file made private.
fn psktool(dir: &Path, name: &str, id: &str) -> PathBuf {
    require("psktool", "gnutls-bin");
    let p = dir.join(name);
    let o = Command::new("psktool")
        .args(["-u", id, "-p"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "psktool: {}", stderr(&o));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn psk_export(mode: &str) -> PskExport {
    let dir = tempfile::tempdir().unwrap();
    let keys = psktool(dir.path(), "nbd.psk", "alice");
    let c = export_with(
        &format!(
            "nbd-tls = \"{mode}\"\nnbd-tls-psk-file = \"{}\"\n",
            keys.display()
        ),
        "",
    );
    PskExport { c, keys, dir }
}

impl PskExport {
    fn nbds(&self, keys: &Path, user: &str) -> String {
        // libnbd takes the PSK identity from the URI's user part.
        format!(
            "nbds://{user}@localhost:{}/r0?tls-psk-file={}",
            self.c.nbd_port[0],
            keys.display()
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.c.client(0, program, args)
    }
}

#[test]
fn required_psk_tls_serves_key_holders_and_refuses_plain_clients() {
    let t = psk_export("require");
    size_and_data_round_trip(&t.c, t.dir.path(), &t.nbds(&t.keys, "alice"), 23);
    plain_client_is_told_tls_required(&t.c);
}

#[test]
fn a_wrong_key_or_identity_is_refused_with_the_reason() {
    let t = psk_export("require");
    // The right identity, another key.
    let wrong = psktool(t.dir.path(), "wrong.psk", "alice");
    let o = t.run("nbdinfo", &["--size", &t.nbds(&wrong, "alice")]);
    assert!(!o.status.success(), "a wrong key was let in");
    let log = t.c.log_tail(0);
    assert!(
        log.contains("TLS handshake failed") && log.contains("differs from this node's"),
        "the reason is not in the log:\n{log}"
    );
    // An identity the server's file does not have.
    let mallory = psktool(t.dir.path(), "mallory.psk", "mallory");
    let o = t.run("nbdinfo", &["--size", &t.nbds(&mallory, "mallory")]);
    assert!(!o.status.success(), "an unknown identity was let in");
    let log = t.c.log_tail(0);
    assert!(
        log.contains("\"mallory\" is not in this node's PSK file"),
        "the reason is not in the log:\n{log}"
    );
}

#[test]
fn optional_psk_tls_serves_plain_clients_and_qemu() {
    let t = psk_export("on");
    plain_client_is_served(&t.c);
    // qemu's PSK credentials: a directory with keys.psk.
    let creds_dir = t.dir.path().join("qemu");
    std::fs::create_dir_all(&creds_dir).unwrap();
    std::fs::copy(&t.keys, creds_dir.join("keys.psk")).unwrap();
    qemu_img_sees_the_export(
        &t.c,
        &format!(
            "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
            creds_dir.display()
        ),
    );
}
