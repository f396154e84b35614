//! Test certificates made with the `openssl` command line, the way the
//! README tells users to make theirs: a CA, node certificates it signs
//! (subjectAltName DNS:NAME), expired ones, and ones from another CA.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA's files in a directory: `NAME.pem` and `NAME.key`.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A node's certificate and key files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A self-signed P-256 CA named `name` in `dir`, valid 30 days.
pub fn make_ca(dir: &Path, name: &str) -> Ca {
    crate::tools::require("openssl", "openssl");
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-subj",
        &format!("/CN={name}"),
        "-days",
        "30",
    ]);
    Ca { cert, key }
}

/// A certificate for node `name` (subjectAltName DNS:`name`) signed by
/// `ca`, valid for `days` from now; a negative `days` makes one that
/// expired a day ago. Files `FILE.pem` and `FILE.key` in `dir`.
pub fn make_leaf(dir: &Path, ca: &Ca, name: &str, file: &str, days: i32) -> Leaf {
    let cert = dir.join(format!("{file}.pem"));
    let key = dir.join(format!("{file}.key"));
    let csr = dir.join(format!("{file}.csr"));
    let ext = dir.join(format!("{file}.ext"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:{name}\n\
             extendedKeyUsage=serverAuth,clientAuth\n"
        ),
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&csr),
        "-subj",
        &format!("/CN={name}"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        s(&csr),
        "-CA",
        s(&ca.cert),
        "-CAkey",
        s(&ca.key),
        "-CAcreateserial",
        "-days",
        &days.to_string(),
        "-extfile",
        s(&ext),
        "-out",
        s(&cert),
    ]);
    Leaf { cert, key }
}
