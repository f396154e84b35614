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

use common::{require, Cluster, Opts};
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
    require("nbdinfo", "libnbd-bin");
    require("nbdcopy", "libnbd-bin");
    let c = Cluster::new(Opts::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let server = make_leaf(dir.path(), &ca, "localhost", "alpha", 30);
    let from = format!("nbd = \"127.0.0.1:{}\"\n", c.nbd_port[0]);
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    assert!(text.contains(&from), "{text}");
    let text = text.replacen(
        &from,
        &format!(
            "{from}nbd-tls = \"{mode}\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
            server.cert.display(),
            server.key.display()
        ),
        1,
    );
    let text = text.replacen(
        "[net]\n",
        &format!("[net]\ntls-ca = \"{}\"\n", ca.cert.display()),
        1,
    );
    std::fs::write(&c.config[0], text).unwrap();
    c.up(0);
    c.ok(0, &["primary", "--force"]);
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn required_tls_serves_certificate_holders_and_refuses_plain_clients() {
    let t = tls_export("require");
    let uri = t.nbds(&t.client_dir);
    let info = t.run("nbdinfo", &["--size", &uri]);
    assert!(info.status.success(), "nbdinfo over TLS: {}", stderr(&info));
    assert_eq!(
        String::from_utf8_lossy(&info.stdout).trim(),
        t.c.data_bytes(0).to_string()
    );

    // Data both ways through the TLS session, 4 MiB of random bytes.
    let src = common::random_file(t.dir.path(), "src.bin", 4 << 20, 21);
    let w = t.run("nbdcopy", &[src.to_str().unwrap(), &uri]);
    assert!(
        w.status.success(),
        "nbdcopy into the export: {}",
        stderr(&w)
    );
    let back = t.dir.path().join("back.bin");
    let r = t.run("nbdcopy", &[&uri, back.to_str().unwrap()]);
    assert!(
        r.status.success(),
        "nbdcopy out of the export: {}",
        stderr(&r)
    );
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    assert!(
        b.len() >= a.len() && b[..a.len()] == a[..],
        "data read back differs"
    );

    // A plain client sees nothing but the refusal: nbdinfo reports
    // NBD_REP_ERR_TLS_REQD as "Operation not supported" and shows the
    // server's message only in libnbd's debug output.
    let mut plain = t.c.cmd(0, "nbdinfo");
    plain.env("LIBNBD_DEBUG", "1");
    plain.arg(format!("nbd://127.0.0.1:{}/r0", t.c.nbd_port[0]));
    let plain = plain.output().unwrap();
    assert!(!plain.status.success(), "a plain client was served");
    let err = stderr(&plain);
    assert!(
        err.contains("TLS required"),
        "the plain client is not told why: {err}"
    );
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
    let plain = t.run(
        "nbdinfo",
        &["--size", &format!("nbd://127.0.0.1:{}/r0", t.c.nbd_port[0])],
    );
    assert!(plain.status.success(), "plain client: {}", stderr(&plain));
    let tls = t.run("nbdinfo", &["--size", &t.nbds(&t.client_dir)]);
    assert!(tls.status.success(), "TLS client: {}", stderr(&tls));

    require("qemu-img", "qemu-utils");
    let creds = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        t.client_dir.display()
    );
    let image = format!(
        "driver=nbd,host=localhost,port={},export=r0,tls-creds=tls0",
        t.c.nbd_port[0]
    );
    let q = t.run(
        "qemu-img",
        &["info", "--object", &creds, "--image-opts", &image],
    );
    assert!(q.status.success(), "qemu-img over TLS: {}", stderr(&q));
    let out = String::from_utf8_lossy(&q.stdout);
    assert!(
        out.contains(&format!("({} bytes)", t.c.data_bytes(0))),
        "{out}"
    );
}
