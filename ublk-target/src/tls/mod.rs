//! TLS for repd's sockets, on rustls with the *ring* provider
//! ([`rep_control::config::crypto_provider`]): the server and client
//! configurations made from a node's checked PEM files
//! ([`TlsFiles`], from [`Config::load_tls`](rep_control::config::Config::load_tls)),
//! both sides verifying the other's certificate against a CA; the check
//! that a peer's certificate names the expected node; and refusal reasons
//! a user can act on ([`reason`]).
//!
//! - here: what any TLS listener or dialer of repd uses (the replication
//!   link, the NBD export's STARTTLS).
//! - `link`: the replication link's handshake (bounded by the peer
//!   timeout) and the relay that carries the engine's plain byte stream
//!   over the TLS session.
//!
//! - `session`: one TLS session whatever library runs it, the interface
//!   the relay and the NBD stream drive.
//! - `psk`: TLS with a pre-shared key on OpenSSL (rustls has no external
//!   PSKs): `[net] tls-psk-file` and `nbd-tls-psk-file`.
//!
//! In either mode the HMAC secret of `[net] secret` stays a second factor
//! bound to the TLS session.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{crypto_provider, TlsFiles};

pub(crate) mod link;
pub mod psk;
pub(crate) mod session;

/// A TLS configuration that cannot be built from the files (a CA
/// certificate rustls cannot use, a key type it does not support).
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(String);

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in ca {
        store.add(c.clone()).map_err(|e| {
            TlsError(format!(
                "the CA file holds a certificate rustls cannot use as a trust anchor: {e}"
            ))
        })?;
    }
    Ok(Arc::new(store))
}

/// A server configuration: shows `files.cert`, and requires a client
/// certificate that chains to `ca` (`files.ca` unless the caller has its
/// own CA, e.g. the NBD export's `nbd-tls-ca`). Which node or user the
/// client is, is the caller's check ([`peer_named`]). TLS 1.3 and 1.2.
///
/// # Errors
/// [`TlsError`] when rustls refuses the CA or the key.
pub fn server_config(
    files: &TlsFiles,
    ca: Option<&[CertificateDer<'static>]>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        roots(ca.unwrap_or(&files.ca))?,
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError(format!("cannot check client certificates: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(files.cert.clone(), files.key.clone_key())
        .map_err(|e| TlsError(format!("cannot use this node's certificate and key: {e}")))?;
    // Every connection is a full handshake: no session tickets to keep.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client configuration: shows `files.cert` as the client certificate
/// and checks the server's against `files.ca` and the name given to
/// [`rustls::ClientConnection::new`]. TLS 1.3 and 1.2.
///
/// # Errors
/// [`TlsError`] when rustls refuses the CA or the key.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(files.cert.clone(), files.key.clone_key())
        .map_err(|e| TlsError(format!("cannot use this node's certificate and key: {e}")))?;
    Ok(Arc::new(cfg))
}

/// The server name a node's certificate must carry: its `[[node]]` name
/// as a DNS subjectAltName.
///
/// # Errors
/// When the name is not a valid DNS name.
pub fn node_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| {
        TlsError(format!(
            "node name \"{name}\" cannot be a certificate's DNS name"
        ))
    })
}

/// Checks that the peer's (already verified) certificate names `name` as a
/// DNS subjectAltName: the client-certificate verifier checks the chain
/// only.
///
/// # Errors
/// Why not, for the log and the user.
pub fn peer_named(conn: &rustls::CommonState, name: &str) -> Result<(), String> {
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Err("the peer showed no certificate".to_owned());
    };
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("cannot parse the peer's certificate: {e}"))?;
    let want = node_server_name(name).map_err(|e| e.to_string())?;
    ee.verify_is_valid_for_subject_name(&want).map_err(|_| {
        format!(
            "the peer's certificate does not name \"{name}\" (it needs subjectAltName DNS:{name})"
        )
    })
}

/// What a TLS error means for the user.
#[must_use]
pub fn reason(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("the peer does not speak TLS (plain TCP? set [net] tls = \"on\" on both nodes) ({e})")
        }
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the peer's certificate is not signed by this node's CA (tls-ca) ({e})"
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the peer's certificate has expired ({e})")
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("the peer's certificate does not name the peer node ({e})")
        }
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::DecryptError) => format!(
            "the peer refused this node's certificate: not signed by its CA, or not naming this node ({e})"
        ),
        E::AlertReceived(A::CertificateExpired) => {
            format!("the peer refused this node's certificate: it has expired ({e})")
        }
        E::AlertReceived(A::CertificateRequired) => {
            format!("the peer requires a client certificate ({e})")
        }
        _ => format!("TLS failed: {e}"),
    }
}
