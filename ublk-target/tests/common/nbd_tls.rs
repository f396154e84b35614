//! What the NBD-export TLS suites (`nbd_tls.rs` with certificates,
//! `nbd_tls_psk.rs` with pre-shared keys) share: an export set up from
//! resource-file lines, and the client runs each suite makes the same way
//! (nbdinfo and nbdcopy through a TLS URI, a plain client refused, qemu-img
//! with TLS credentials).

use std::path::Path;
use std::process::Output;

use super::{random_file, require, Cluster, Opts};

/// A cluster whose node 0 exports with `node_lines` after its `nbd` key
/// (and `net_lines` after `[net]`); node 0 is up and Primary.
pub fn export_with(node_lines: &str, net_lines: &str) -> Cluster {
    require("nbdinfo", "libnbd-bin");
    require("nbdcopy", "libnbd-bin");
    let c = Cluster::new(Opts::default());
    let from = format!("nbd = \"127.0.0.1:{}\"\n", c.nbd_port[0]);
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    assert!(text.contains(&from), "{text}");
    let text = text
        .replacen(&from, &format!("{from}{node_lines}"), 1)
        .replacen("[net]\n", &format!("[net]\n{net_lines}"), 1);
    std::fs::write(&c.config[0], text).unwrap();
    c.up(0);
    c.ok(0, &["primary", "--force"]);
    c
}

/// A client's stderr, for messages.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Through `uri`: nbdinfo tells the export's size, and 4 MiB of random
/// bytes (from `seed`) go in with nbdcopy and come back out the same.
pub fn size_and_data_round_trip(c: &Cluster, dir: &Path, uri: &str, seed: u64) {
    let info = c.client(0, "nbdinfo", &["--size", uri]);
    assert!(info.status.success(), "nbdinfo over TLS: {}", stderr(&info));
    assert_eq!(
        String::from_utf8_lossy(&info.stdout).trim(),
        c.data_bytes(0).to_string()
    );
    let src = random_file(dir, "src.bin", 4 << 20, seed);
    let w = c.client(0, "nbdcopy", &[src.to_str().unwrap(), uri]);
    assert!(
        w.status.success(),
        "nbdcopy into the export: {}",
        stderr(&w)
    );
    let back = dir.join("back.bin");
    let r = c.client(0, "nbdcopy", &[uri, back.to_str().unwrap()]);
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
}

/// A plain client sees nothing but the refusal: nbdinfo reports
/// NBD_REP_ERR_TLS_REQD as "Operation not supported" and shows the
/// server's message only in libnbd's debug output.
pub fn plain_client_is_told_tls_required(c: &Cluster) {
    let mut plain = c.cmd(0, "nbdinfo");
    plain.env("LIBNBD_DEBUG", "1");
    plain.arg(format!("nbd://127.0.0.1:{}/r0", c.nbd_port[0]));
    let plain = plain.output().unwrap();
    assert!(!plain.status.success(), "a plain client was served");
    let err = stderr(&plain);
    assert!(
        err.contains("TLS required"),
        "the plain client is not told why: {err}"
    );
}

/// A plain client is served (`nbd-tls = "on"`).
pub fn plain_client_is_served(c: &Cluster) {
    let plain = c.client(
        0,
        "nbdinfo",
        &["--size", &format!("nbd://127.0.0.1:{}/r0", c.nbd_port[0])],
    );
    assert!(plain.status.success(), "plain client: {}", stderr(&plain));
}

/// `qemu-img info` with the TLS credentials object `creds` (whose id is
/// `tls0`) sees the export's size.
pub fn qemu_img_sees_the_export(c: &Cluster, creds: &str) {
    require("qemu-img", "qemu-utils");
    let image = format!(
        "driver=nbd,host=localhost,port={},export=r0,tls-creds=tls0",
        c.nbd_port[0]
    );
    let q = c.client(
        0,
        "qemu-img",
        &["info", "--object", creds, "--image-opts", &image],
    );
    assert!(q.status.success(), "qemu-img over TLS: {}", stderr(&q));
    let out = String::from_utf8_lossy(&q.stdout);
    assert!(
        out.contains(&format!("({} bytes)", c.data_bytes(0))),
        "{out}"
    );
}
