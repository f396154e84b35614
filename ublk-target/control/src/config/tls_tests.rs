//! Tests of the TLS keys: the text checks, and loading real PEM files made
//! with `openssl` (each way a user can get one wrong).

use std::path::Path;

use rep_testkit::certs::{make_ca, make_leaf, Leaf};

use super::super::{Config, TlsMode};

/// A resource file with `tls` and the given CA and files for both nodes.
fn text(mode: &str, ca: Option<&Path>, alpha: Option<&Leaf>, beta: Option<&Leaf>) -> String {
    let mut t = format!("[resource]\nname = \"r0\"\n[net]\nsecret = \"s\"\ntls = \"{mode}\"\n");
    if let Some(ca) = ca {
        t += &format!("tls-ca = \"{}\"\n", ca.display());
    }
    for (i, (name, leaf)) in [("alpha", alpha), ("beta", beta)].into_iter().enumerate() {
        t += &format!(
            "[[node]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\ndisk = \"/tmp/{name}.img\"\n",
            7788 + i
        );
        if let Some(l) = leaf {
            t += &format!(
                "tls-cert = \"{}\"\ntls-key = \"{}\"\n",
                l.cert.display(),
                l.key.display()
            );
        }
    }
    t
}

fn parse(t: &str) -> Result<Config, String> {
    Config::from_str_named(t, "test.toml").map_err(|e| e.to_string())
}

#[test]
fn off_by_default_and_text_checks() {
    let c = parse(&text("off", None, None, None)).unwrap();
    assert_eq!(c.tls.mode, TlsMode::Off);
    let e = parse(&text("yes", None, None, None)).unwrap_err();
    assert!(
        e.contains("`net.tls`") && e.contains("\"off\" or \"on\""),
        "{e}"
    );
    let e = parse(&text("on", Some(Path::new("/ca.pem")), None, None)).unwrap_err();
    assert!(
        e.contains("node[0].tls-cert") && e.contains("DNS:alpha"),
        "{e}"
    );
    let leaf = Leaf {
        cert: "/a.pem".into(),
        key: "/a.key".into(),
    };
    let e = parse(&text("on", None, Some(&leaf), Some(&leaf))).unwrap_err();
    assert!(e.contains("net.tls-ca"), "{e}");
    let half = text("off", None, Some(&leaf), None).replace("tls-key = \"/a.key\"\n", "");
    let e = parse(&half).unwrap_err();
    assert!(
        e.contains("node[0].tls-key") && e.contains("tls-cert is set"),
        "{e}"
    );
    // Round trip through `repctl dump`.
    let c = parse(&text(
        "on",
        Some(Path::new("/ca.pem")),
        Some(&leaf),
        Some(&leaf),
    ))
    .unwrap();
    let again = parse(&c.to_toml().unwrap()).unwrap();
    assert_eq!(again.tls, c.tls);
}

#[test]
fn loads_files_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = make_ca(d, "ca");
    let alpha = make_leaf(d, &ca, "alpha", "alpha", 30);
    let beta = make_leaf(d, &ca, "beta", "beta", 30);
    let load = |t: String| {
        let c = parse(&t).unwrap();
        let me = c.nodes[0].clone();
        c.load_tls(&me, None).map_err(|e| e.to_string())
    };
    let files = load(text("on", Some(&ca.cert), Some(&alpha), Some(&beta)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (files.ca.len(), files.cert.len(), files.name.as_str()),
        (1, 1, "alpha")
    );

    let missing = d.join("missing.pem");
    let e = load(text("on", Some(&missing), Some(&alpha), Some(&beta))).unwrap_err();
    assert!(
        e.contains("missing.pem") && e.contains("cannot open"),
        "{e}"
    );

    let junk = d.join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let e = load(text("on", Some(&junk), Some(&alpha), Some(&beta))).unwrap_err();
    assert!(
        e.contains("junk.pem") && e.contains("no certificate"),
        "{e}"
    );

    let swapped = Leaf {
        cert: alpha.cert.clone(),
        key: beta.key.clone(),
    };
    let e = load(text("on", Some(&ca.cert), Some(&swapped), Some(&beta))).unwrap_err();
    assert!(e.contains("beta.key") && e.contains("does not fit"), "{e}");

    let keyless = Leaf {
        cert: alpha.cert.clone(),
        key: alpha.cert.clone(),
    };
    let e = load(text("on", Some(&ca.cert), Some(&keyless), Some(&beta))).unwrap_err();
    assert!(e.contains("no private key"), "{e}");
}

#[test]
fn a_psk_file_replaces_the_ca_and_certificates() {
    let psk = "tls-psk-file = \"/etc/rep/link.psk\"\n";
    let with = |mode: &str, ca: Option<&Path>| {
        text(mode, ca, None, None).replacen("[[node]]", &format!("{psk}[[node]]"), 1)
    };
    let c = parse(&with("on", None)).unwrap();
    assert_eq!(
        c.tls.psk_file.as_deref(),
        Some(Path::new("/etc/rep/link.psk"))
    );
    // Round trip through `repctl dump`.
    let again = parse(&c.to_toml().unwrap()).unwrap();
    assert_eq!(again.tls, c.tls);
    let e = parse(&with("on", Some(Path::new("/ca.pem")))).unwrap_err();
    assert!(
        e.contains("net.tls-psk-file") && e.contains("not both"),
        "{e}"
    );
    let e = parse(&with("off", None)).unwrap_err();
    assert!(e.contains("tls = \"on\""), "{e}");
}

#[test]
fn an_nbd_psk_file_replaces_the_client_ca() {
    let base = text("off", None, None, None).replacen(
        "disk = \"/tmp/alpha.img\"\n",
        "disk = \"/tmp/alpha.img\"\nnbd = \"127.0.0.1:10809\"\n",
        1,
    );
    let with = |keys: &str| {
        base.replacen(
            "nbd = \"127.0.0.1:10809\"\n",
            &format!("nbd = \"127.0.0.1:10809\"\n{keys}"),
            1,
        )
    };
    let c = parse(&with(
        "nbd-tls = \"require\"\nnbd-tls-psk-file = \"/etc/rep/nbd.psk\"\n",
    ))
    .unwrap();
    assert_eq!(
        c.nodes[0].nbd_access.tls_psk_file.as_deref(),
        Some(Path::new("/etc/rep/nbd.psk"))
    );
    let again = parse(&c.to_toml().unwrap()).unwrap();
    assert_eq!(again.nodes[0].nbd_access, c.nodes[0].nbd_access);
    let e = parse(&with("nbd-tls-psk-file = \"/etc/rep/nbd.psk\"\n")).unwrap_err();
    assert!(
        e.contains("node[0].nbd-tls-psk-file") && e.contains("\"off\""),
        "{e}"
    );
    let e = parse(&with(
        "nbd-tls = \"on\"\nnbd-tls-psk-file = \"/k\"\nnbd-tls-ca = \"/c.pem\"\n",
    ))
    .unwrap_err();
    assert!(e.contains("not both"), "{e}");
}
