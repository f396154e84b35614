//! Peer authentication: an HMAC-SHA256 challenge/response over the `Hello`
//! nonces.
//!
//! Both sides send a [`Hello`](super::Hello) carrying a fresh random 32-byte
//! nonce. Each then proves it knows the shared secret by sending
//! [`Auth`](super::Message::Auth) with
//!
//! ```text
//! mac = HMAC-SHA256(key = secret,
//!                   AUTH_CONTEXT || peer_nonce || own_nonce || own_node_name)
//! ```
//!
//! Putting the peer's nonce first binds the answer to the challenge of this
//! connection (no replay from an earlier one); putting the sender's own nonce
//! and name after it means an answer cannot be reflected back to its author,
//! since the author would verify it with the two nonces the other way round.

use hmac::digest::generic_array::GenericArray;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The MAC every authenticated packet of the workspace uses.
pub type HmacSha256 = Hmac<Sha256>;

/// Domain separation prefix of the authenticated message.
pub const AUTH_CONTEXT: &[u8] = b"repd-auth-v1\0";

/// HMAC-SHA256 keyed with `secret`. Builds the key block the way HMAC defines
/// it (keys longer than the block are hashed, shorter ones zero-padded) so
/// that construction cannot fail. Shared with the cluster agent's heartbeat
/// and witness packets, so that both crates derive the key the same way.
#[must_use]
pub fn keyed(secret: &[u8]) -> HmacSha256 {
    let mut block = GenericArray::<
        u8,
        <HmacSha256 as hmac::digest::crypto_common::KeySizeUser>::KeySize,
    >::default();
    if secret.len() > block.len() {
        let digest = Sha256::digest(secret);
        for (dst, src) in block.iter_mut().zip(digest.iter()) {
            *dst = *src;
        }
    } else {
        for (dst, src) in block.iter_mut().zip(secret) {
            *dst = *src;
        }
    }
    <HmacSha256 as KeyInit>::new(&block)
}

/// Domain separation prefix of [`bind_secret`].
pub const TLS_BINDING_CONTEXT: &[u8] = b"repd-tls-binding-v1\0";

/// The shared secret bound to one TLS session: HMAC-SHA256 keyed with
/// `secret` over `binding` (the session's exporter value, the same at both
/// ends of one session and different for any other). Used as the key of
/// the handshake and ping-connection MACs on a TLS link.
#[must_use]
pub fn bind_secret(secret: &[u8], binding: &[u8; 32]) -> Vec<u8> {
    let mut m = keyed(secret);
    m.update(TLS_BINDING_CONTEXT);
    m.update(binding);
    m.finalize().into_bytes().to_vec()
}

/// Domain separation prefix of the MAC that opens a ping connection: it
/// can never pass for a handshake `Auth`, nor the other way round.
pub const PING_CONN_CONTEXT: &[u8] = b"repd-ping-conn-v1\0";

/// The MAC of one handshake answer in the domain `context`: keyed with the
/// shared secret, over the challenge (the nonce the other side sent), the
/// responder's own nonce and its node name.
fn mac_with(
    context: &[u8],
    secret: &[u8],
    challenge: &[u8; 32],
    responder_nonce: &[u8; 32],
    responder: &str,
) -> HmacSha256 {
    let mut m = keyed(secret);
    m.update(context);
    m.update(challenge);
    m.update(responder_nonce);
    m.update(responder.as_bytes());
    m
}

fn answer(
    context: &[u8],
    secret: &[u8],
    peer_nonce: &[u8; 32],
    own_nonce: &[u8; 32],
    own_node: &str,
) -> [u8; 32] {
    mac_with(context, secret, peer_nonce, own_nonce, own_node)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks an answer in constant time.
fn check(
    context: &[u8],
    secret: &[u8],
    my_nonce: &[u8; 32],
    peer_nonce: &[u8; 32],
    peer_node: &str,
    mac: &[u8; 32],
) -> bool {
    mac_with(context, secret, my_nonce, peer_nonce, peer_node)
        .verify_slice(mac)
        .is_ok()
}

/// The MAC this node sends in its `Auth`: its answer to `peer_nonce` (the
/// nonce in the peer's `Hello`), bound to its own nonce and node name.
#[must_use]
pub fn auth_mac(
    secret: &[u8],
    peer_nonce: &[u8; 32],
    own_nonce: &[u8; 32],
    own_node: &str,
) -> [u8; 32] {
    answer(AUTH_CONTEXT, secret, peer_nonce, own_nonce, own_node)
}

/// Checks the peer's `Auth` answer: `my_nonce` is the nonce this node sent
/// (the challenge the peer answers), `peer_nonce` and `peer_node` come from
/// the peer's `Hello`. The comparison takes constant time.
#[must_use]
pub fn verify_auth(
    secret: &[u8],
    my_nonce: &[u8; 32],
    peer_nonce: &[u8; 32],
    peer_node: &str,
    mac: &[u8; 32],
) -> bool {
    check(AUTH_CONTEXT, secret, my_nonce, peer_nonce, peer_node, mac)
}

/// The MAC each side sends first on the ping connection (the second TCP
/// connection that carries only Ping and PingAck): bound to the nonces of
/// the data connection's handshake, which the peer answered with the shared
/// secret already, so the ping connection belongs to that session and to
/// no other (a ping connection left over from an earlier session fails).
#[must_use]
pub fn ping_conn_mac(
    secret: &[u8],
    peer_nonce: &[u8; 32],
    own_nonce: &[u8; 32],
    own_node: &str,
) -> [u8; 32] {
    answer(PING_CONN_CONTEXT, secret, peer_nonce, own_nonce, own_node)
}

/// Checks the peer's [`ping_conn_mac`]; arguments as for [`verify_auth`].
#[must_use]
pub fn verify_ping_conn(
    secret: &[u8],
    my_nonce: &[u8; 32],
    peer_nonce: &[u8; 32],
    peer_node: &str,
    mac: &[u8; 32],
) -> bool {
    check(
        PING_CONN_CONTEXT,
        secret,
        my_nonce,
        peer_nonce,
        peer_node,
        mac,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";
    const NA: [u8; 32] = [0xaa; 32];
    const NB: [u8; 32] = [0xbb; 32];

    #[test]
    fn right_secret_verifies() {
        // B answers A's challenge; A checks it.
        let mac = auth_mac(SECRET, &NA, &NB, "bob");
        assert!(verify_auth(SECRET, &NA, &NB, "bob", &mac));
        // And the other way round.
        let mac = auth_mac(SECRET, &NB, &NA, "alice");
        assert!(verify_auth(SECRET, &NB, &NA, "alice", &mac));
    }

    #[test]
    fn wrong_secret_fails() {
        let mac = auth_mac(b"wrong", &NA, &NB, "bob");
        assert!(!verify_auth(SECRET, &NA, &NB, "bob", &mac));
        let mac = auth_mac(SECRET, &NA, &NB, "bob");
        assert!(!verify_auth(b"", &NA, &NB, "bob", &mac));
        assert!(!verify_auth(
            &[SECRET, b"x"].concat(),
            &NA,
            &NB,
            "bob",
            &mac
        ));
    }

    #[test]
    fn swapped_nonces_fail() {
        // A reflected answer: A's own MAC sent back to A as if from B.
        let a_answer = auth_mac(SECRET, &NB, &NA, "alice");
        assert!(!verify_auth(SECRET, &NA, &NB, "alice", &a_answer));
        assert!(!verify_auth(SECRET, &NA, &NB, "bob", &a_answer));
        // B's answer replayed on a connection where A chose another nonce.
        let b_answer = auth_mac(SECRET, &NA, &NB, "bob");
        assert!(!verify_auth(SECRET, &[0xcc; 32], &NB, "bob", &b_answer));
        // Same answer claimed by another node name.
        assert!(!verify_auth(SECRET, &NA, &NB, "mallory", &b_answer));
        // Tampered MAC.
        let mut bad = b_answer;
        bad[31] ^= 1;
        assert!(!verify_auth(SECRET, &NA, &NB, "bob", &bad));
    }

    #[test]
    fn a_ping_connection_mac_is_no_handshake_mac() {
        let mac = ping_conn_mac(SECRET, &NA, &NB, "bob");
        assert!(verify_ping_conn(SECRET, &NA, &NB, "bob", &mac));
        // Neither passes for the other: a handshake answer seen on the
        // wire cannot open a ping connection, nor the other way round.
        assert!(!verify_auth(SECRET, &NA, &NB, "bob", &mac));
        let auth = auth_mac(SECRET, &NA, &NB, "bob");
        assert!(!verify_ping_conn(SECRET, &NA, &NB, "bob", &auth));
        // Another session's nonces, another secret, another name: refused.
        assert!(!verify_ping_conn(SECRET, &[0xcc; 32], &NB, "bob", &mac));
        assert!(!verify_ping_conn(b"other", &NA, &NB, "bob", &mac));
        assert!(!verify_ping_conn(SECRET, &NA, &NB, "mallory", &mac));
        // A's own MAC reflected back to A.
        let a_mac = ping_conn_mac(SECRET, &NB, &NA, "alice");
        assert!(!verify_ping_conn(SECRET, &NA, &NB, "bob", &a_mac));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn key_block_matches_standard_hmac() {
        // RFC 4231 test case 2 (short key) and 6 (key longer than the block).
        let mut m = keyed(b"Jefe");
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut m = keyed(&[0xaa; 131]);
        m.update(b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // Same as the hmac crate's own keying, for a few lengths.
        for len in [0usize, 1, 32, 63, 64, 65, 200] {
            let key = vec![7u8; len];
            let mut ours = keyed(&key);
            let mut theirs = <HmacSha256 as Mac>::new_from_slice(&key).unwrap();
            ours.update(b"x");
            theirs.update(b"x");
            assert_eq!(ours.finalize().into_bytes(), theirs.finalize().into_bytes());
        }
    }

    #[test]
    fn bound_secrets_differ_per_session_and_from_the_secret() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(bind_secret(b"s", &a), bind_secret(b"s", &a));
        assert_ne!(bind_secret(b"s", &a), bind_secret(b"s", &b));
        assert_ne!(bind_secret(b"s", &a), bind_secret(b"t", &a));
        let (n1, n2) = ([3u8; 32], [4u8; 32]);
        // An answer made in one TLS session does not pass in another.
        let mac = auth_mac(&bind_secret(b"s", &a), &n1, &n2, "beta");
        assert!(verify_auth(&bind_secret(b"s", &a), &n1, &n2, "beta", &mac));
        assert!(!verify_auth(&bind_secret(b"s", &b), &n1, &n2, "beta", &mac));
    }
}
