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

use common::{require, Cluster, Opts};

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
    require("nbdinfo", "libnbd-bin");
    require("nbdcopy", "libnbd-bin");
    let c = Cluster::new(Opts::default());
    let dir = tempfile::tempdir().unwrap();
    let keys = psktool(dir.path(), "nbd.psk", "alice");
    let from = format!("nbd = \"127.0.0.1:{}\"\n", c.nbd_port[0]);
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    assert!(text.contains(&from), "{text}");
    let text = text.replacen(
        &from,
        &format!(
            "{from}nbd-tls = \"{mode}\"\nnbd-tls-psk-file = \"{}\"\n",
            keys.display()
        ),
        1,
    );
    std::fs::write(&c.config[0], text).unwrap();
    c.up(0);
    c.ok(0, &["primary", "--force"]);
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn required_psk_tls_serves_key_holders_and_refuses_plain_clients() {
    let t = psk_export("require");
    let uri = t.nbds(&t.keys, "alice");
    let info = t.run("nbdinfo", &["--size", &uri]);
    assert!(
        info.status.success(),
        "nbdinfo with a PSK: {}",
        stderr(&info)
    );
    assert_eq!(
        String::from_utf8_lossy(&info.stdout).trim(),
        t.c.data_bytes(0).to_string()
    );
    // Data both ways through the session, 4 MiB of random bytes.
    let src = common::random_file(t.dir.path(), "src.bin", 4 << 20, 23);
    let w = t.run("nbdcopy", &[src.to_str().unwrap(), &uri]);
    assert!(w.status.success(), "nbdcopy in: {}", stderr(&w));
    let back = t.dir.path().join("back.bin");
    let r = t.run("nbdcopy", &[&uri, back.to_str().unwrap()]);
    assert!(r.status.success(), "nbdcopy out: {}", stderr(&r));
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    assert!(
        b.len() >= a.len() && b[..a.len()] == a[..],
        "data read back differs"
    );

    let mut plain = t.c.cmd(0, "nbdinfo");
    plain.env("LIBNBD_DEBUG", "1");
    plain.arg(format!("nbd://127.0.0.1:{}/r0", t.c.nbd_port[0]));
    let plain = plain.output().unwrap();
    assert!(!plain.status.success(), "a plain client was served");
    assert!(
        stderr(&plain).contains("TLS required"),
        "{}",
        stderr(&plain)
    );
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
    let plain = t.run(
        "nbdinfo",
        &["--size", &format!("nbd://127.0.0.1:{}/r0", t.c.nbd_port[0])],
    );
    assert!(plain.status.success(), "plain client: {}", stderr(&plain));
    // qemu's PSK credentials: a directory with keys.psk.
    require("qemu-img", "qemu-utils");
    let creds_dir = t.dir.path().join("qemu");
    std::fs::create_dir_all(&creds_dir).unwrap();
    std::fs::copy(&t.keys, creds_dir.join("keys.psk")).unwrap();
    let creds = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
        creds_dir.display()
    );
    let image = format!(
        "driver=nbd,host=localhost,port={},export=r0,tls-creds=tls0",
        t.c.nbd_port[0]
    );
    let q = t.run(
        "qemu-img",
        &["info", "--object", &creds, "--image-opts", &image],
    );
    assert!(q.status.success(), "qemu-img with a PSK: {}", stderr(&q));
    let out = String::from_utf8_lossy(&q.stdout);
    assert!(
        out.contains(&format!("({} bytes)", t.c.data_bytes(0))),
        "{out}"
    );
}
