//! The NBD server against real sockets: negotiation, refusals, requests,
//! errors, splitting, the in-flight cap and shutdown.
// Test values are small; truncating casts cannot bite.
#![allow(clippy::cast_possible_truncation)]

use super::negotiate::read_array;
use super::*;
use crate::frontend::{IoRequest, Reply};
use crate::nbd::proto::{self, *};
use bytes::Bytes;
use std::io::ErrorKind;
use std::io::{Read, Write};
use std::time::Instant;

/// In-memory backend completing requests inline, or holding them until
/// `release` (which completes them in reverse order).
struct TestBackend {
    data: Mutex<Vec<u8>>,
    writable: AtomicBool,
    hold: AtomicBool,
    held: Mutex<Vec<(IoRequest, Reply)>>,
    submitted: Mutex<Vec<IoRequest>>,
}

impl TestBackend {
    fn new(size: usize) -> Arc<TestBackend> {
        Arc::new(TestBackend {
            data: Mutex::new(vec![0; size]),
            writable: AtomicBool::new(true),
            hold: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            submitted: Mutex::new(Vec::new()),
        })
    }

    fn execute(&self, req: IoRequest, reply: Reply) {
        let mut d = self.data.lock().unwrap();
        let res = match req {
            IoRequest::Read { offset, len } => {
                let o = offset as usize;
                Ok(Some(Bytes::copy_from_slice(&d[o..o + len as usize])))
            }
            IoRequest::Write { offset, data, .. } => {
                let o = offset as usize;
                d[o..o + data.len()].copy_from_slice(&data);
                Ok(None)
            }
            IoRequest::Trim { offset, len } | IoRequest::WriteZeroes { offset, len, .. } => {
                let o = offset as usize;
                d[o..o + len as usize].fill(0);
                Ok(None)
            }
            IoRequest::Flush => Ok(None),
        };
        drop(d);
        reply(res);
    }

    /// Complete the held requests, newest first; how many there were.
    fn release(&self) -> usize {
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        let n = held.len();
        for (req, reply) in held.into_iter().rev() {
            self.execute(req, reply);
        }
        n
    }
}

impl BlockBackend for TestBackend {
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }
    fn submit(&self, req: IoRequest, reply: Reply) {
        self.submitted.lock().unwrap().push(req.clone());
        if self.hold.load(Ordering::SeqCst) {
            self.held.lock().unwrap().push((req, reply));
        } else {
            self.execute(req, reply);
        }
    }
}

const SIZE: usize = 8 << 20;

fn start(backend: Arc<TestBackend>) -> NbdServerHandle {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    NbdServer::bind(addr, "r0".into(), backend).unwrap().spawn()
}

fn connect(h: &NbdServerHandle) -> TcpStream {
    let s = TcpStream::connect(h.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read the greeting and send client flags.
fn greet(s: &mut TcpStream, client_flags: u32) {
    let g: [u8; 18] = read_array(s).unwrap();
    assert_eq!(g, proto::encode_greeting());
    s.write_all(&client_flags.to_be_bytes()).unwrap();
}

fn send_opt(s: &mut TcpStream, opt: u32, data: &[u8]) {
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
}

/// (option, reply type, data)
fn read_rep(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    let h: [u8; 20] = read_array(s).unwrap();
    let mut d = Decoder::new(&h);
    assert_eq!(d.u64().unwrap(), OPTION_REPLY_MAGIC);
    let opt = d.u32().unwrap();
    let ty = d.u32().unwrap();
    let mut data = vec![0; d.u32().unwrap() as usize];
    s.read_exact(&mut data).unwrap();
    (opt, ty, data)
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Send GO for `name`; the replies up to the final one.
fn go(s: &mut TcpStream, name: &str) -> Vec<(u32, Vec<u8>)> {
    send_opt(s, OPT_GO, &go_data(name, &[INFO_BLOCK_SIZE]));
    let mut out = Vec::new();
    loop {
        let (opt, ty, data) = read_rep(s);
        assert_eq!(opt, OPT_GO);
        out.push((ty, data));
        if ty != REP_INFO {
            return out;
        }
    }
}

fn open(h: &NbdServerHandle) -> TcpStream {
    let mut s = connect(h);
    greet(&mut s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    let reps = go(&mut s, "r0");
    assert_eq!(reps.last().unwrap().0, REP_ACK, "{reps:?}");
    s
}

fn send_req(s: &mut TcpStream, flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    s.write_all(&b).unwrap();
}

/// (error, handle)
fn read_reply(s: &mut TcpStream) -> (u32, u64) {
    let h: [u8; 16] = read_array(s).unwrap();
    let mut d = Decoder::new(&h);
    assert_eq!(d.u32().unwrap(), SIMPLE_REPLY_MAGIC);
    (d.u32().unwrap(), d.u64().unwrap())
}

fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue, // replies sent before the close
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the server to close the connection: {e}"),
        }
    }
}

fn write_read_ok(s: &mut TcpStream) {
    let payload = vec![0x5au8; 4096];
    send_req(s, CMD_FLAG_FUA, CMD_WRITE, 77, 8192, 4096);
    s.write_all(&payload).unwrap();
    assert_eq!(read_reply(s), (0, 77));
    send_req(s, 0, CMD_READ, 78, 8192, 4096);
    assert_eq!(read_reply(s), (0, 78));
    let mut back = vec![0u8; 4096];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, payload);
}

#[test]
fn go_info_list_and_roundtrip() {
    let b = TestBackend::new(SIZE);
    let h = start(b.clone());
    let mut s = connect(&h);
    greet(&mut s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);

    send_opt(&mut s, OPT_LIST, &[]);
    let (_, ty, data) = read_rep(&mut s);
    assert_eq!((ty, data), (REP_SERVER, proto::encode_rep_server("r0")));
    assert_eq!(read_rep(&mut s).1, REP_ACK);

    send_opt(&mut s, OPT_INFO, &go_data("", &[INFO_NAME]));
    let mut infos = Vec::new();
    loop {
        let (opt, ty, data) = read_rep(&mut s);
        assert_eq!(opt, OPT_INFO);
        if ty == REP_ACK {
            break;
        }
        assert_eq!(ty, REP_INFO);
        infos.push(data);
    }
    assert!(infos.contains(&proto::encode_info_export(SIZE as u64, TRANSMISSION_FLAGS)));
    assert!(infos.contains(&proto::encode_info_block_size()));
    assert!(infos.contains(&proto::encode_info_name("r0")));

    let reps = go(&mut s, "r0");
    assert_eq!(reps.last().unwrap().0, REP_ACK);
    assert_eq!(h.clients(), 1);
    write_read_ok(&mut s);
    assert_eq!(b.data.lock().unwrap()[8192..12288], [0x5a; 4096]);
    send_req(&mut s, 0, CMD_FLUSH, 79, 0, 0);
    assert_eq!(read_reply(&mut s), (0, 79));
    send_req(&mut s, 0, CMD_DISC, 80, 0, 0);
    assert_closed(&mut s);
    h.shutdown();
    h.join();
}

#[test]
fn export_name_old_style() {
    let h = start(TestBackend::new(SIZE));
    for no_zeroes in [true, false] {
        let mut s = connect(&h);
        greet(
            &mut s,
            FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 },
        );
        send_opt(&mut s, OPT_EXPORT_NAME, b"r0");
        let mut reply = vec![0u8; if no_zeroes { 10 } else { 134 }];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(
            reply,
            proto::encode_export_name_reply(SIZE as u64, TRANSMISSION_FLAGS, no_zeroes)
        );
        write_read_ok(&mut s);
    }
    // Wrong name: no error reply exists, the server closes.
    let mut s = connect(&h);
    greet(&mut s, FLAG_C_FIXED_NEWSTYLE);
    send_opt(&mut s, OPT_EXPORT_NAME, b"nope");
    assert_closed(&mut s);
    h.shutdown();
    h.join();
}

#[test]
fn refusals_during_negotiation() {
    let b = TestBackend::new(SIZE);
    let h = start(b.clone());
    let mut s = connect(&h);
    greet(&mut s, FLAG_C_FIXED_NEWSTYLE);

    // Unknown export.
    let reps = go(&mut s, "r1");
    let (ty, msg) = reps.last().unwrap();
    assert_eq!(*ty, REP_ERR_UNKNOWN);
    let msg = String::from_utf8_lossy(msg);
    assert!(msg.contains("'r0'") && msg.contains("'r1'"), "{msg}");

    // Unsupported options, malformed INFO, LIST with data.
    for opt in [OPT_STRUCTURED_REPLY, 9, 10, 11, 0xdead] {
        send_opt(&mut s, opt, &[]);
        assert_eq!(read_rep(&mut s), (opt, REP_ERR_UNSUP, read_rep_msg(opt)));
    }
    // No TLS configured (NOTLS mode): STARTTLS is refused by policy.
    send_opt(&mut s, OPT_STARTTLS, &[]);
    let (opt, ty, msg) = read_rep(&mut s);
    assert_eq!((opt, ty), (OPT_STARTTLS, REP_ERR_POLICY));
    assert!(String::from_utf8_lossy(&msg).contains("nbd-tls"));
    send_opt(&mut s, OPT_INFO, &[0, 0, 0, 9, b'r']);
    assert_eq!(read_rep(&mut s).1, REP_ERR_INVALID);
    send_opt(&mut s, OPT_LIST, b"x");
    assert_eq!(read_rep(&mut s).1, REP_ERR_INVALID);
    // Oversize option data is drained and refused.
    send_opt(&mut s, 0x77, &vec![0u8; MAX_OPTION_LEN as usize + 1]);
    assert_eq!(read_rep(&mut s).1, REP_ERR_TOO_BIG);

    // Secondary.
    b.writable.store(false, Ordering::SeqCst);
    let reps = go(&mut s, "r0");
    let (ty, msg) = reps.last().unwrap();
    assert_eq!(*ty, REP_ERR_POLICY);
    assert_eq!(
        String::from_utf8_lossy(msg),
        "resource r0 is Secondary on this node; only the Primary serves I/O"
    );

    // Primary again: the same connection can still go.
    b.writable.store(true, Ordering::SeqCst);
    assert_eq!(go(&mut s, "").last().unwrap().0, REP_ACK);
    write_read_ok(&mut s);

    // ABORT gets an ACK and a close.
    let mut s = connect(&h);
    greet(&mut s, FLAG_C_FIXED_NEWSTYLE);
    send_opt(&mut s, OPT_ABORT, &[]);
    assert_eq!(read_rep(&mut s).1, REP_ACK);
    assert_closed(&mut s);
    h.shutdown();
    h.join();
}

fn read_rep_msg(opt: u32) -> Vec<u8> {
    match opt {
        OPT_STRUCTURED_REPLY => b"only simple replies are supported".to_vec(),
        _ => format!("option {opt} is not supported").into_bytes(),
    }
}

#[test]
fn malformed_handshakes_close_only_that_client() {
    let h = start(TestBackend::new(SIZE));
    let mut good = open(&h);

    // Unknown client flags.
    let mut s = connect(&h);
    greet(&mut s, 0x80);
    assert_closed(&mut s);

    // Bad option magic.
    let mut s = connect(&h);
    greet(&mut s, FLAG_C_FIXED_NEWSTYLE);
    s.write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0").unwrap();
    assert_closed(&mut s);

    // Garbage right away, then hang up mid-header.
    let mut s = connect(&h);
    let _: [u8; 18] = read_array(&mut s).unwrap();
    s.write_all(&[0xff; 7]).unwrap();
    drop(s);

    // Non-fixed-newstyle client sending GO (may not get error replies).
    let mut s = connect(&h);
    greet(&mut s, 0);
    send_opt(&mut s, OPT_GO, &go_data("r0", &[]));
    assert_closed(&mut s);

    write_read_ok(&mut good);
    h.shutdown();
    h.join();
}

#[test]
fn bad_requests_get_errors_not_crashes() {
    let b = TestBackend::new(SIZE);
    let h = start(b.clone());
    let mut s = open(&h);
    let size = SIZE as u64;

    // Unknown commands (CACHE, BLOCK_STATUS, 42).
    for (i, cmd) in [5u16, 7, 42].into_iter().enumerate() {
        send_req(&mut s, 0, cmd, i as u64, 0, 4096);
        assert_eq!(read_reply(&mut s), (NBD_EINVAL, i as u64));
    }
    // Out of range, unaligned, overflowing offset+len, too long reads.
    let cases: [(u16, u64, u32); 7] = [
        (CMD_READ, size, 512),
        (CMD_READ, size - 512, 1024),
        (CMD_READ, 100, 512),
        (CMD_READ, 0, 100),
        (CMD_READ, u64::MAX - 511, 1024),
        (CMD_READ, 0, MAX_PAYLOAD + 512),
        (CMD_TRIM, size - 512, 1024),
    ];
    for (i, (cmd, off, len)) in cases.into_iter().enumerate() {
        send_req(&mut s, 0, cmd, 100 + i as u64, off, len);
        assert_eq!(
            read_reply(&mut s),
            (NBD_EINVAL, 100 + i as u64),
            "{cmd} {off} {len}"
        );
    }
    // Unknown flags (DF on read: not negotiated), NO_HOLE on TRIM,
    // flush with a length.
    send_req(&mut s, 1 << 2, CMD_READ, 200, 0, 512);
    assert_eq!(read_reply(&mut s), (NBD_EINVAL, 200));
    send_req(&mut s, CMD_FLAG_NO_HOLE, CMD_TRIM, 201, 0, 512);
    assert_eq!(read_reply(&mut s), (NBD_EINVAL, 201));
    send_req(&mut s, 0, CMD_FLUSH, 202, 0, 512);
    assert_eq!(read_reply(&mut s), (NBD_EINVAL, 202));
    // An out-of-range write: payload consumed, ENOSPC (as the spec
    // says), stream in sync.
    send_req(&mut s, 0, CMD_WRITE, 203, size, 4096);
    s.write_all(&[1u8; 4096]).unwrap();
    assert_eq!(read_reply(&mut s), (NBD_ENOSPC, 203));
    send_req(&mut s, 0, CMD_WRITE_ZEROES, 206, size - 512, 1024);
    assert_eq!(read_reply(&mut s), (NBD_ENOSPC, 206));
    // Oversize write (2 MiB): drained, EINVAL, stream in sync.
    send_req(&mut s, 0, CMD_WRITE, 204, 0, 2 << 20);
    s.write_all(&vec![1u8; 2 << 20]).unwrap();
    assert_eq!(read_reply(&mut s), (NBD_EINVAL, 204));
    // Zero-length requests succeed without touching the backend.
    send_req(&mut s, 0, CMD_READ, 205, 0, 0);
    assert_eq!(read_reply(&mut s), (0, 205));
    write_read_ok(&mut s);
    assert!(b.data.lock().unwrap().iter().all(|&x| x == 0 || x == 0x5a));
    h.shutdown();
    h.join();
}

/// A backend that fails every request with a fixed errno.
struct FailingBackend(i32);
impl BlockBackend for FailingBackend {
    fn size_bytes(&self) -> u64 {
        SIZE as u64
    }
    fn writable(&self) -> bool {
        true
    }
    fn submit(&self, _req: IoRequest, reply: Reply) {
        reply(Err(self.0));
    }
}

#[test]
fn backend_errors_are_mapped() {
    use nix::libc;
    for (errno, nbd) in [
        (libc::EROFS, NBD_EPERM),
        (libc::EIO, NBD_EIO),
        (libc::ENOSPC, NBD_ENOSPC),
        (libc::EBUSY, NBD_EIO),
    ] {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let h = NbdServer::bind(addr, "r0".into(), Arc::new(FailingBackend(errno)))
            .unwrap()
            .spawn();
        let mut s = open(&h);
        send_req(&mut s, 0, CMD_READ, 1, 0, 4096);
        assert_eq!(read_reply(&mut s), (nbd, 1));
        send_req(&mut s, 0, CMD_WRITE, 2, 0, 512);
        s.write_all(&[0u8; 512]).unwrap();
        assert_eq!(read_reply(&mut s), (nbd, 2));
        send_req(&mut s, 0, CMD_TRIM, 3, 0, 3 << 20);
        assert_eq!(read_reply(&mut s), (nbd, 3));
        h.shutdown();
        h.join();
    }
}

#[test]
fn fatal_requests_close_only_that_client() {
    let h = start(TestBackend::new(SIZE));
    let mut good = open(&h);

    // Bad request magic.
    let mut s = open(&h);
    s.write_all(&[0xee; REQUEST_HEADER_LEN]).unwrap();
    assert_closed(&mut s);

    // A write too long to drain (64 MiB).
    let mut s = open(&h);
    send_req(&mut s, 0, CMD_WRITE, 1, 0, 64 << 20);
    assert_closed(&mut s);

    // Hang up in the middle of a write payload.
    let mut s = open(&h);
    send_req(&mut s, 0, CMD_WRITE, 1, 0, 1 << 20);
    s.write_all(&[1u8; 1000]).unwrap();
    drop(s);

    write_read_ok(&mut good);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.clients() != 1 {
        assert!(Instant::now() < deadline, "clients: {}", h.clients());
        thread::sleep(Duration::from_millis(10));
    }
    h.shutdown();
    h.join();
}

#[test]
fn long_trim_and_zeroes_are_split() {
    let b = TestBackend::new(SIZE);
    b.data.lock().unwrap().fill(0xff);
    let h = start(b.clone());
    let mut s = open(&h);
    send_req(&mut s, CMD_FLAG_FUA, CMD_TRIM, 1, 512, (3 << 20) + 1024);
    assert_eq!(read_reply(&mut s), (0, 1));
    send_req(
        &mut s,
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_WRITE_ZEROES,
        2,
        4 << 20,
        SIZE as u32 - (4 << 20),
    );
    assert_eq!(read_reply(&mut s), (0, 2));
    let sub = b.submitted.lock().unwrap().clone();
    assert_eq!(
        sub,
        vec![
            IoRequest::Trim {
                offset: 512,
                len: 1 << 20
            },
            IoRequest::Trim {
                offset: 512 + (1 << 20),
                len: 1 << 20
            },
            IoRequest::Trim {
                offset: 512 + (2 << 20),
                len: 1 << 20
            },
            IoRequest::Trim {
                offset: 512 + (3 << 20),
                len: 1024
            },
            IoRequest::WriteZeroes {
                offset: 4 << 20,
                len: 1 << 20,
                fua: true
            },
            IoRequest::WriteZeroes {
                offset: 5 << 20,
                len: 1 << 20,
                fua: true
            },
            IoRequest::WriteZeroes {
                offset: 6 << 20,
                len: 1 << 20,
                fua: true
            },
            IoRequest::WriteZeroes {
                offset: 7 << 20,
                len: 1 << 20,
                fua: true
            },
        ]
    );
    let d = b.data.lock().unwrap();
    assert_eq!(d[..512], [0xff; 512]);
    assert!(d[512..(3 << 20) + 1536].iter().all(|&x| x == 0));
    assert!(d[(3 << 20) + 1536..4 << 20].iter().all(|&x| x == 0xff));
    assert!(d[4 << 20..].iter().all(|&x| x == 0));
    drop(d);
    h.shutdown();
    h.join();
}

#[test]
fn in_flight_is_capped_and_replies_match_handles() {
    let b = TestBackend::new(SIZE);
    b.hold.store(true, Ordering::SeqCst);
    let h = start(b.clone());
    let mut s = open(&h);
    let n = MAX_IN_FLIGHT as u64 + 50;
    // Distinct content per block so mismatched handles would show.
    {
        let mut d = b.data.lock().unwrap();
        for i in 0..n as usize {
            d[i * 4096..(i + 1) * 4096].fill(i as u8);
        }
    }
    let mut w = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        for i in 0..n {
            send_req(&mut w, 0, CMD_READ, 1000 + i, i * 4096, 4096);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.held.lock().unwrap().len() < MAX_IN_FLIGHT {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(b.held.lock().unwrap().len(), MAX_IN_FLIGHT, "cap exceeded");
    let mut seen = std::collections::HashSet::new();
    let mut released = 0;
    while seen.len() < n as usize {
        while released == seen.len() {
            released += b.release();
            assert!(Instant::now() < deadline + Duration::from_secs(5));
            thread::yield_now();
        }
        let (err, handle) = read_reply(&mut s);
        assert_eq!(err, 0);
        let i = handle - 1000;
        let mut data = vec![0u8; 4096];
        s.read_exact(&mut data).unwrap();
        assert!(
            data.iter().all(|&x| x == i as u8),
            "data for handle {handle}"
        );
        assert!(seen.insert(handle));
    }
    sender.join().unwrap();
    h.shutdown();
    h.join();
}

#[test]
fn shutdown_closes_clients_and_stops_accepting() {
    let b = TestBackend::new(SIZE);
    let h = start(b.clone());
    let mut a = open(&h);
    let mut negotiating = connect(&h);
    let _: [u8; 18] = read_array(&mut negotiating).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.clients() != 2 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    // A request stuck in the backend does not keep shutdown waiting.
    b.hold.store(true, Ordering::SeqCst);
    send_req(&mut a, 0, CMD_FLUSH, 1, 0, 0);
    let addr = h.local_addr();
    h.shutdown();
    assert_closed(&mut a);
    assert_closed(&mut negotiating);
    h.join();
    // Nothing accepts any more (connect may succeed on a lingering
    // backlog on some systems, but no greeting ever comes).
    if let Ok(mut s) = TcpStream::connect(addr) {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut g = [0u8; 18];
        assert!(s.read_exact(&mut g).is_err());
    }
    b.release();
}
