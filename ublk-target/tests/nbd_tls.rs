//! TLS on the NBD export of a real repd (`nbd-tls`), driven by real
//! clients: nbdinfo and nbdcopy with `nbds://` URIs and a client
//! certificate (libnbd's directory layout: ca-cert.pem, client-cert.pem,
//! client-key.pem), qemu-img with a `tls-creds-x509` object; a plain client
//! in `require` mode is told `TLS required`, and a client certificate from
//! another CA is refused with the reason in repd's log.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::nbd_tls::{
    export_with, plain_client_is_served, plain_client_is_told_tls_required,
    qemu_img_sees_the_export, size_and_data_round_trip, stderr,
};
use common::Cluster;
use rep_testkit::certs::{make_ca, make_leaf, Ca};

/// A node whose NBD export uses TLS: its certificate names "localhost"
/// (the host the clients dial, which they check the certificate against).
struct TlsExport {
    c: Cluster,
    /// libnbd/qemu credential directory with a client certificate the CA
    /// signed.
    client_dir: PathBuf,
    dir: tempfile::TempDir,
    ca: Ca,
}

fn client_dir(dir: &Path, name: &str, ca: &Ca, signer: &Ca) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let leaf = make_leaf(dir, signer, "client", name, 30);
    std::fs::copy(&ca.cert, d.join("ca-cert.pem")).unwrap();
    std::fs::copy(&leaf.cert, d.join("client-cert.pem")).unwrap();
    std::fs::copy(&leaf.key, d.join("client-key.pem")).unwrap();
    d
}

fn tls_export(mode: &str) -> TlsExport {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let server = make_leaf(dir.path(), &ca, "localhost", "alpha", 30);
    let c = export_with(
        &format!(
            "nbd-tls = \"{mode}\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
            server.cert.display(),
            server.key.display()
        ),
        &format!("tls-ca = \"{}\"\n", ca.cert.display()),
    );
    let client_dir = client_dir(dir.path(), "client", &ca, &ca);
    TlsExport {
        c,
        client_dir,
        dir,
        ca,
    }
}

impl TlsExport {
    fn nbds(&self, creds: &Path) -> String {
        format!(
            "nbds://localhost:{}/r0?tls-certificates={}",
            self.c.nbd_port[0],
            creds.display()
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.c.client(0, program, args)
    }
}

#[test]
fn required_tls_serves_certificate_holders_and_refuses_plain_clients() {
    let t = tls_export("require");
    size_and_data_round_trip(&t.c, t.dir.path(), &t.nbds(&t.client_dir), 21);
    plain_client_is_told_tls_required(&t.c);
    assert!(t.c.status(0)["nbd_warning"].is_null());
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_with_the_reason() {
    let t = tls_export("require");
    let other = make_ca(t.dir.path(), "other-ca");
    // Trusts the right CA for the server, but shows a certificate `other`
    // signed.
    let wrong = client_dir(t.dir.path(), "wrong", &t.ca, &other);
    let o = t.run("nbdinfo", &["--size", &t.nbds(&wrong)]);
    assert!(
        !o.status.success(),
        "a foreign client certificate was let in"
    );
    let log = t.c.log_tail(0);
    assert!(
        log.contains("TLS handshake failed") && log.contains("certificate"),
        "the reason is not in the log:\n{log}"
    );
    // Without any client certificate: refused as well.
    let none = t.dir.path().join("none");
    std::fs::create_dir_all(&none).unwrap();
    std::fs::copy(&t.ca.cert, none.join("ca-cert.pem")).unwrap();
    let o = t.run("nbdinfo", &["--size", &t.nbds(&none)]);
    assert!(
        !o.status.success(),
        "a client without a certificate was let in"
    );
}

#[test]
fn optional_tls_serves_plain_and_tls_clients_and_qemu() {
    let t = tls_export("on");
    plain_client_is_served(&t.c);
    let tls = t.run("nbdinfo", &["--size", &t.nbds(&t.client_dir)]);
    assert!(tls.status.success(), "TLS client: {}", stderr(&tls));
    qemu_img_sees_the_export(
        &t.c,
        &format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            t.client_dir.display()
        ),
    );
}
