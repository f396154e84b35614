//! TLS keys of the resource file: `[net] tls` and `tls-ca`, each
//! `[[node]]`'s `tls-cert` and `tls-key` (DRBD 9.2's `tls yes;` with
//! certificates), and loading those PEM files into DER ([`TlsFiles`]) with
//! every check a user can get wrong: a missing or unreadable file, no PEM
//! in it, a key that does not belong to the certificate.
//!
//! The text alone is checked by [`validate`]; the files only by
//! [`Config::load_tls`], for the local node (the peer's key is not on this
//! machine), as [`Config::check_local_disk`] does for the disk.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Config, ConfigError, Node};

/// Largest PEM file read (a CA bundle of a few hundred certificates fits).
pub const PEM_MAX_BYTES: u64 = 1 << 20;

/// `[net] tls`: whether the replication link (and its ping connection)
/// runs over mutual TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP; the HMAC handshake authenticates the peer, nothing is
    /// encrypted.
    #[default]
    Off,
    /// Mutual TLS 1.3; the HMAC handshake stays as a second factor.
    On,
}

impl TlsMode {
    /// The word the resource file uses.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::On => "on",
        }
    }
}

/// One node's certificate and key files (`[[node]] tls-cert`, `tls-key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The validated TLS keys of a resource file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// `[net] tls`.
    pub mode: TlsMode,
    /// `[net] tls-ca`: the PEM bundle of the CA(s) that sign the nodes'
    /// certificates.
    pub ca: Option<PathBuf>,
    /// `[net] tls-psk-file`: the link authenticates with a pre-shared key
    /// (`identity:hexkey` lines, see `psk`) instead of certificates.
    pub psk_file: Option<PathBuf>,
    /// Each `[[node]]`'s files, in file order.
    pub node: [NodeTls; 2],
}

/// The crypto provider of every TLS connection of the workspace: *ring*.
/// It builds with the C compiler alone (aws-lc-rs needs cmake or a long C
/// build); rustls 0.23.48 deprecates it only because it has no
/// post-quantum key exchange, which a link between two known nodes with
/// X25519 does without.
#[must_use]
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS material, read from its PEM files and checked.
#[derive(Debug)]
pub struct TlsFiles {
    /// `[net] tls-ca`'s certificates (trust anchors for the peer's chain).
    pub ca: Vec<CertificateDer<'static>>,
    /// This node's certificate, then any intermediates (file order).
    pub cert: Vec<CertificateDer<'static>>,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PrivateKeyDer<'static>,
    /// This node's name: what its certificate must carry as a DNS
    /// subjectAltName for the peer to accept it.
    pub name: String,
}

/// Raw values to [`Tls`]: the checks that need no file.
pub(super) fn validate(
    path: &Path,
    mode: &str,
    ca: Option<PathBuf>,
    psk_file: Option<PathBuf>,
    node: [NodeTls; 2],
    names: [&str; 2],
) -> Result<Tls, ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };
    let mode = match mode {
        "off" => TlsMode::Off,
        "on" => TlsMode::On,
        other => {
            return Err(invalid(
                "net.tls".to_owned(),
                format!("unknown value \"{other}\"; expected \"off\" or \"on\""),
            ))
        }
    };
    check_psk(path, mode, ca.as_deref(), psk_file.as_deref())?;
    for (i, (n, name)) in node.iter().zip(names).enumerate() {
        let empty = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        if empty(&n.cert) || empty(&n.key) {
            return Err(invalid(
                format!("node[{i}].tls-cert"),
                format!("node \"{name}\": tls-cert and tls-key must not be empty"),
            ));
        }
        match (&n.cert, &n.key) {
            (Some(_), None) => {
                return Err(invalid(
                    format!("node[{i}].tls-key"),
                    format!("node \"{name}\": tls-cert is set but tls-key is not; give the PEM file of the certificate's private key"),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    format!("node[{i}].tls-cert"),
                    format!("node \"{name}\": tls-key is set but tls-cert is not; give the PEM file of the node's certificate"),
                ))
            }
            (None, None) if mode == TlsMode::On && psk_file.is_none() => {
                return Err(invalid(
                    format!("node[{i}].tls-cert"),
                    format!(
                        "node \"{name}\": net.tls = \"on\" needs tls-cert and tls-key on every [[node]] \
                         (a certificate with subjectAltName DNS:{name}, signed by net.tls-ca)"
                    ),
                ))
            }
            _ => {}
        }
    }
    if mode == TlsMode::On && ca.is_none() && psk_file.is_none() {
        return Err(invalid(
            "net.tls-ca".to_owned(),
            "net.tls = \"on\" needs tls-ca (the PEM file of the CA that signed both nodes' certificates) \
             or tls-psk-file (a pre-shared key)".to_owned(),
        ));
    }
    if ca.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(invalid(
            "net.tls-ca".to_owned(),
            "must not be empty".to_owned(),
        ));
    }
    Ok(Tls {
        mode,
        ca,
        psk_file,
        node,
    })
}

/// `[net] tls-psk-file`: only with `tls = "on"`, and instead of `tls-ca`.
fn check_psk(
    path: &Path,
    mode: TlsMode,
    ca: Option<&Path>,
    psk_file: Option<&Path>,
) -> Result<(), ConfigError> {
    let Some(psk) = psk_file else {
        return Ok(());
    };
    let invalid = |message: &str| ConfigError::Invalid {
        path: path.to_owned(),
        key: "net.tls-psk-file".to_owned(),
        message: message.to_owned(),
    };
    if psk.as_os_str().is_empty() {
        return Err(invalid("must not be empty"));
    }
    if mode == TlsMode::Off {
        return Err(invalid(
            "tls-psk-file is set but net.tls is \"off\"; set tls = \"on\" (or remove tls-psk-file)",
        ));
    }
    if ca.is_some() {
        return Err(invalid(
            "the link authenticates with certificates (tls-ca) or with a pre-shared key \
             (tls-psk-file), not both; remove one of them",
        ));
    }
    Ok(())
}

impl Config {
    /// `node`'s `tls-cert`/`tls-key` entry.
    #[must_use]
    pub fn node_tls(&self, node: &Node) -> Option<&NodeTls> {
        let i = self.nodes.iter().position(|n| n.name == node.name)?;
        self.tls.node.get(i)
    }

    /// Reads and checks the local node's TLS files: `ca` (the bundle the
    /// peer's certificate must chain to; `[net] tls-ca` unless a caller
    /// has its own, e.g. the NBD export's `nbd-tls-ca`) and `node`'s
    /// certificate and key. `Ok(None)` when `node` has no certificate.
    ///
    /// # Errors
    /// [`ConfigError::Tls`] naming the file and what is wrong with it.
    pub fn load_tls(
        &self,
        node: &Node,
        ca: Option<&Path>,
    ) -> Result<Option<TlsFiles>, ConfigError> {
        let Some(NodeTls {
            cert: Some(cert),
            key: Some(key),
        }) = self.node_tls(node)
        else {
            return Ok(None);
        };
        let Some(ca) = ca.or(self.tls.ca.as_deref()) else {
            return Err(self.tls_error(
                cert,
                "there is no CA to check the peer with; set [net] tls-ca",
            ));
        };
        let text = |p: &Path| read_pem(p).map_err(|m| self.tls_error(p, &m));
        let ca_text = text(ca)?;
        let ca_certs = certs(&ca_text).map_err(|m| self.tls_error(ca, &m))?;
        let cert_text = text(cert)?;
        let cert_chain = certs(&cert_text).map_err(|m| self.tls_error(cert, &m))?;
        let key_text = text(key)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
            self.tls_error(key, &format!("no private key in PEM form ({e}); expected a \"-----BEGIN PRIVATE KEY-----\" block"))
        })?;
        rustls::sign::CertifiedKey::from_der(cert_chain.clone(), key_der.clone_key(), &crypto_provider())
            .map_err(|e| {
                self.tls_error(
                    key,
                    &format!("does not fit the certificate in {} ({e}); give the key the certificate was made for", cert.display()),
                )
            })?;
        Ok(Some(TlsFiles {
            ca: ca_certs,
            cert: cert_chain,
            key: key_der,
            name: node.name.clone(),
        }))
    }

    fn tls_error(&self, file: &Path, message: &str) -> ConfigError {
        ConfigError::Tls {
            path: self.path.clone(),
            file: file.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// The file's bytes, at most [`PEM_MAX_BYTES`].
fn read_pem(p: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(p).map_err(|e| format!("cannot open it: {e}"))?;
    let mut buf = Vec::new();
    f.take(PEM_MAX_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > PEM_MAX_BYTES {
        return Err(format!(
            "larger than {PEM_MAX_BYTES} bytes; is it really a PEM file?"
        ));
    }
    Ok(buf)
}

/// Every certificate of a PEM text; at least one.
fn certs(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let all = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if all.is_empty() {
        return Err(
            "holds no certificate; expected a \"-----BEGIN CERTIFICATE-----\" block".to_owned(),
        );
    }
    Ok(all)
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
