//! PSK handshakes between two OpenSSL sessions over a loopback TCP
//! connection: the same key agrees on the exporter value; a wrong key and
//! an unknown identity are refused with a reason on both sides.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rep_control::config::PskKeys;

use super::{PskTls, Versions};
use crate::tls::session::HandshakeError;

const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn tls(line: &str) -> PskTls {
    PskTls::new(&PskKeys::parse(line).unwrap(), Versions::Tls13).unwrap()
}

fn why(r: Result<(), HandshakeError>) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(HandshakeError::Tls(w)) => w,
        Err(HandshakeError::Io(e)) => format!("io: {e}"),
    }
}

/// Client with `client`'s file, server with `server`'s: both results and
/// the two exporter values.
fn run(client: &PskTls, server: &PskTls) -> (String, String, [u8; 32], [u8; 32]) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s_sess = server.server().unwrap();
    let srv = std::thread::spawn(move || {
        let (mut tcp, _) = l.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = why(s_sess.handshake(&mut tcp, deadline));
        let mut x = [0u8; 32];
        let _ = s_sess.export(&mut x, b"EXPORTER-test");
        (r, x)
    });
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c_sess = client.client().unwrap();
    let c = why(c_sess.handshake(&mut tcp, deadline));
    let mut cx = [0u8; 32];
    let _ = c_sess.export(&mut cx, b"EXPORTER-test");
    drop(tcp);
    let (s, sx) = srv.join().unwrap();
    (c, s, cx, sx)
}

#[test]
fn the_same_key_agrees_on_the_exporter() {
    let t = tls(&format!("alpha:{KEY_A}\n"));
    let (c, s, cx, sx) = run(&t, &t);
    assert_eq!((c.as_str(), s.as_str()), ("ok", "ok"));
    assert_eq!(cx, sx);
    assert_ne!(cx, [0u8; 32]);
}

#[test]
fn a_wrong_key_is_refused_on_both_sides() {
    let (c, s, _, _) = run(
        &tls(&format!("alpha:{KEY_B}\n")),
        &tls(&format!("alpha:{KEY_A}\n")),
    );
    assert!(s.contains("differs from this node's"), "server: {s}");
    assert!(
        c.contains("refused this node's pre-shared key"),
        "client: {c}"
    );
}

#[test]
fn an_unknown_identity_is_refused_on_both_sides() {
    let (c, s, _, _) = run(
        &tls(&format!("mallory:{KEY_A}\n")),
        &tls(&format!("alpha:{KEY_A}\n")),
    );
    assert!(
        s.contains("\"mallory\" is not in this node's PSK file"),
        "server: {s}"
    );
    assert!(
        c.contains("refused this node's PSK identity \"mallory\""),
        "client: {c}"
    );
}

/// NBD clients that stop at TLS 1.2 get an ECDHE-PSK suite.
#[test]
fn a_tls12_client_is_served_with_an_ecdhe_psk_suite() {
    let keys = PskKeys::parse(&format!("alice:{KEY_A}\n")).unwrap();
    let server = PskTls::new(&keys, Versions::Tls12And13).unwrap();
    let (mut b, identity) = super::client_builder(&keys, Versions::Tls12And13).unwrap();
    b.set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))
        .unwrap();
    let client = PskTls {
        client: b.build(),
        server: PskTls::new(&keys, Versions::Tls12And13).unwrap().server,
        identity,
    };
    let (c, s, cx, sx) = run(&client, &server);
    assert_eq!((c.as_str(), s.as_str()), ("ok", "ok"));
    assert_eq!(cx, sx);
    // A TLS 1.3-only server (the link) refuses it.
    let link = tls(&format!("alice:{KEY_A}\n"));
    let (c, _, _, _) = run(&client, &link);
    assert_ne!(c, "ok");
}
