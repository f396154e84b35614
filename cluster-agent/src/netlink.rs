//! The service address, added and removed over rtnetlink in this process.
//!
//! Running `ip addr add` costs a process start, and `ip` links half a dozen
//! libraries: in the TCG guest that was 0.5 s per command, three commands per
//! address (look, add, look for arping), on the failover's critical path.
//! One `RTM_NEWADDR` / `RTM_DELADDR` request and its acknowledgement take a
//! fraction of a millisecond. The request is what `ip addr add A/N dev IF`
//! sends: the address as `IFA_LOCAL` and `IFA_ADDRESS`, the prefix length,
//! universe scope, no broadcast, no label.
//!
//! The socket is opened per request in the calling thread's network
//! namespace (the agent's, i.e. the node's).
//!
//! Why not a crate: `rtnetlink` needs an async runtime the agent does not
//! run, and `netlink-packet-route` + `netlink-sys` would bring two
//! fast-moving dependencies for two fixed request layouts and one reply
//! type (the ack), whose parsing here is bounds-checked and tested.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NLMSG_HDRLEN: usize = 16;

/// What to do with the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Add,
    Del,
}

/// Why an address could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("no network interface {0:?} in this node's network namespace")]
    NoInterface(String),
    #[error("prefix /{prefix} is too long for {address}")]
    BadPrefix { address: IpAddr, prefix: u8 },
    #[error("rtnetlink socket: {0}")]
    Socket(Errno),
    #[error("{what}: the kernel refused it: {errno} ({})", errno.desc())]
    Refused { what: String, errno: Errno },
    #[error("{what}: no answer from the kernel within {ms} ms")]
    NoAnswer { what: String, ms: u128 },
    #[error("{what}: malformed answer from the kernel")]
    Malformed { what: String },
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    // Attribute lengths are a few bytes here; the u16 always holds them.
    buf.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The request `ip addr add|del ADDRESS/PREFIX dev <index>` sends.
fn request(change: Change, address: IpAddr, prefix: u8, index: u32, seq: u32) -> Vec<u8> {
    let (family, bytes): (u8, Vec<u8>) = match address {
        IpAddr::V4(a) => (
            u8::try_from(libc::AF_INET).unwrap_or(2),
            a.octets().to_vec(),
        ),
        IpAddr::V6(a) => (
            u8::try_from(libc::AF_INET6).unwrap_or(10),
            a.octets().to_vec(),
        ),
    };
    let (kind, flags) = match change {
        // EXCL: an address already there answers EEXIST, which says the
        // resource runs (start is idempotent) without a separate lookup.
        Change::Add => (
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ),
        Change::Del => (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK),
    };
    let mut m = vec![0u8; NLMSG_HDRLEN];
    // struct ifaddrmsg: family, prefixlen, flags, scope (universe), index.
    m.extend_from_slice(&[family, prefix, 0, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    push_attr(&mut m, IFA_LOCAL, &bytes);
    push_attr(&mut m, IFA_ADDRESS, &bytes);
    let len = u32::try_from(m.len()).unwrap_or(u32::MAX);
    let mut hdr = Vec::with_capacity(NLMSG_HDRLEN);
    hdr.extend_from_slice(&len.to_ne_bytes());
    hdr.extend_from_slice(&kind.to_ne_bytes());
    hdr.extend_from_slice(&flags.to_ne_bytes());
    hdr.extend_from_slice(&seq.to_ne_bytes());
    hdr.extend_from_slice(&0u32.to_ne_bytes());
    m.splice(..NLMSG_HDRLEN, hdr);
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The errno of the acknowledgement of `seq` in a datagram (0 = success),
/// `None` when the datagram holds none.
fn ack_of(datagram: &[u8], seq: u32) -> Result<Option<i32>, ()> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let len = usize::try_from(u32_at(datagram, at).ok_or(())?).map_err(|_| ())?;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            return Err(());
        }
        let kind = u16_at(datagram, at + 4).ok_or(())?;
        let s = u32_at(datagram, at + 8).ok_or(())?;
        if kind == NLMSG_ERROR && s == seq {
            let e = u32_at(datagram, at + NLMSG_HDRLEN).ok_or(())?;
            return Ok(Some(i32::from_ne_bytes(e.to_ne_bytes())));
        }
        at += len.next_multiple_of(4);
    }
    Ok(None)
}

/// A bound NETLINK_ROUTE socket whose receive gives up after `timeout`.
fn route_socket(timeout: Duration) -> Result<OwnedFd, NetlinkError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(NetlinkError::Socket)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
    let micros = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::new(micros / 1_000_000, micros % 1_000_000),
    )
    .map_err(NetlinkError::Socket)?;
    Ok(fd)
}

/// Read until the kernel acknowledges request `seq`: `Ok(true)` changed,
/// `Ok(false)` already so.
fn await_ack(fd: &OwnedFd, seq: u32, change: Change, what: String) -> Result<bool, NetlinkError> {
    let mut buf = vec![0u8; 8192];
    let t0 = std::time::Instant::now();
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                return Err(NetlinkError::NoAnswer {
                    what,
                    ms: t0.elapsed().as_millis(),
                })
            }
            Err(e) => return Err(NetlinkError::Socket(e)),
        };
        let ack = ack_of(buf.get(..n).unwrap_or_default(), seq)
            .map_err(|()| NetlinkError::Malformed { what: what.clone() })?;
        match ack {
            None => {}
            Some(0) => return Ok(true),
            Some(e) => {
                let errno = Errno::from_raw(e.saturating_neg());
                return match (change, errno) {
                    (Change::Add, Errno::EEXIST) | (Change::Del, Errno::EADDRNOTAVAIL) => Ok(false),
                    _ => Err(NetlinkError::Refused { what, errno }),
                };
            }
        }
    }
}

/// Add or remove `address/prefix` on `interface`. `Ok(true)` when it
/// changed, `Ok(false)` when it already was so (added: the address exists;
/// removed: it does not).
///
/// # Errors
/// No such interface, a refusal by the kernel (with its errno), or no
/// answer within `timeout`.
pub fn change_address(
    change: Change,
    interface: &str,
    address: IpAddr,
    prefix: u8,
    timeout: Duration,
) -> Result<bool, NetlinkError> {
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(NetlinkError::BadPrefix { address, prefix });
    }
    let what = format!(
        "{} {address}/{prefix} {} {interface}",
        if change == Change::Add {
            "adding"
        } else {
            "removing"
        },
        if change == Change::Add { "on" } else { "from" },
    );
    let index = nix::net::if_::if_nametoindex(interface)
        .map_err(|_| NetlinkError::NoInterface(interface.to_owned()))?;
    let fd = route_socket(timeout)?;
    let seq: u32 = rand::random();
    let msg = request(change, address, prefix, index, seq);
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(NetlinkError::Socket)?;
    await_ack(&fd, seq, change, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_what_ip_addr_add_sends() {
        let m = request(Change::Add, "10.97.0.100".parse().unwrap(), 24, 7, 42);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32_at(&m, 0), Some(40));
        assert_eq!(u16_at(&m, 4), Some(RTM_NEWADDR));
        assert_eq!(
            u16_at(&m, 6),
            Some(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        );
        assert_eq!(u32_at(&m, 8), Some(42));
        assert_eq!(&m[16..20], &[2, 24, 0, 0]);
        assert_eq!(u32_at(&m, 20), Some(7));
        assert_eq!(u16_at(&m, 24), Some(8));
        assert_eq!(u16_at(&m, 26), Some(IFA_LOCAL));
        assert_eq!(&m[28..32], &[10, 97, 0, 100]);
        assert_eq!(u16_at(&m, 34), Some(IFA_ADDRESS));
        let d = request(Change::Del, "fd00::1".parse().unwrap(), 64, 3, 1);
        assert_eq!(d.len(), 16 + 8 + 20 + 20);
        assert_eq!(u16_at(&d, 4), Some(RTM_DELADDR));
        assert_eq!(u16_at(&d, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(d[16], 10);
    }

    #[test]
    fn acks_are_found_by_sequence_number() {
        let mut m = vec![0u8; 36];
        m[0..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[8..12].copy_from_slice(&5u32.to_ne_bytes());
        m[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(ack_of(&m, 5), Ok(Some(-17)));
        assert_eq!(ack_of(&m, 6), Ok(None));
        m[0..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(ack_of(&m, 5), Err(()));
    }

    /// In a network namespace of a thread's own (root only): add, add again
    /// (already there), remove, remove again (already gone), and the errors.
    #[test]
    fn adds_and_removes_an_address_idempotently() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a network namespace needs root");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let t = Duration::from_secs(5);
            let a: IpAddr = "10.123.0.7".parse().unwrap();
            assert!(change_address(Change::Add, "lo", a, 24, t).unwrap());
            assert!(!change_address(Change::Add, "lo", a, 24, t).unwrap());
            let fib = std::fs::read_to_string("/proc/thread-self/net/fib_trie").unwrap();
            assert!(fib.contains("10.123.0.7"), "{fib}");
            assert!(change_address(Change::Del, "lo", a, 24, t).unwrap());
            assert!(!change_address(Change::Del, "lo", a, 24, t).unwrap());
            let fib = std::fs::read_to_string("/proc/thread-self/net/fib_trie").unwrap();
            assert!(!fib.contains("10.123.0.7"), "{fib}");
            let v6: IpAddr = "fd00:5::7".parse().unwrap();
            // lo is down in a new namespace; IPv6 still takes the address.
            assert!(change_address(Change::Add, "lo", v6, 64, t).unwrap());
            assert!(change_address(Change::Del, "lo", v6, 64, t).unwrap());
            let e = change_address(Change::Add, "nope0", a, 24, t).unwrap_err();
            assert!(
                e.to_string().contains("no network interface \"nope0\""),
                "{e}"
            );
            let e = change_address(Change::Add, "lo", a, 33, t).unwrap_err();
            assert!(e.to_string().contains("too long"), "{e}");
        })
        .join()
        .unwrap();
    }
}
