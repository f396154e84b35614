//! Network namespaces and addresses for tests that run nodes apart.

use std::ffi::OsStr;
use std::process::Command;

use crate::tools::require;

/// Where [`free_ports`] looks: below Linux's default ephemeral range
/// (32768-60999), so that the source port of some client's outgoing
/// connection cannot take a port between the pick and the daemon's bind
/// (CI saw exactly that: a metrics port "already in use").
const PORTS: std::ops::Range<u32> = 20_000..32_768;

/// `N` distinct free ports: each is held until all are picked (ports
/// asked for one at a time may repeat, and a resource file with one port
/// twice is refused). A process-wide cursor, started at a place drawn
/// from the pid and the clock, walks [`PORTS`], so threads of one test
/// binary never get a port another was given a moment ago and two test
/// binaries start far apart.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = PORTS.end - PORTS.start;
    if CURSOR.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
        let _ =
            CURSOR.compare_exchange(u32::MAX, seed % span, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut held = Vec::with_capacity(N);
    for _ in 0..span {
        if held.len() == N {
            break;
        }
        let p = PORTS.start + CURSOR.fetch_add(1, Ordering::Relaxed) % span;
        let p = u16::try_from(p).expect("PORTS lies within u16");
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", p)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), N, "no {N} free ports in {PORTS:?} on 127.0.0.1");
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&held) {
        *p = l.local_addr().unwrap().port();
    }
    ports
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 is installed (apt-get install iproute2)");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `program` run inside namespace `ns` (`ip netns exec`), or right here.
pub fn in_netns(ns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A fresh namespace `name` with its loopback up (one left over from a
/// crashed run is removed first).
pub fn add_netns(name: &str) {
    del_netns(name);
    ip(&["netns", "add", name]);
    ip(&["-n", name, "link", "set", "lo", "up"]);
}

/// Remove namespace `name`, if it exists (for `Drop`: never fails).
pub fn del_netns(name: &str) {
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Two network namespaces joined by a veth pair.
#[derive(Debug)]
pub struct Netns {
    pub names: [String; 2],
    pub ips: [String; 2],
    pub veth: [String; 2],
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require("ip", "iproute2");
        // Unique per process and per test (tests run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id() % 200 + 20;
        let _ = tag;
        let names = [format!("rep{id}-{k}a"), format!("rep{id}-{k}b")];
        let ips = [format!("10.{id}.{k}.1"), format!("10.{id}.{k}.2")];
        let (va, vb) = (format!("rv{id}x{k}a"), format!("rv{id}x{k}b"));
        for n in &names {
            add_netns(n);
        }
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &names[0]]);
        ip(&["link", "set", &vb, "netns", &names[1]]);
        for (i, (n, v)) in names.iter().zip([&va, &vb]).enumerate() {
            ip(&["-n", n, "addr", "add", &format!("{}/24", ips[i]), "dev", v]);
            ip(&["-n", n, "link", "set", v, "up"]);
        }
        Netns {
            names,
            ips,
            veth: [va, vb],
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            del_netns(n);
        }
    }
}

/// Send raw datagrams from inside namespace `ns` (a thread that joins it).
pub fn send_from_ns(ns: &str, to: std::net::SocketAddr, packets: Vec<Vec<u8>>) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for p in packets {
            s.send_to(&p, to).unwrap();
        }
    })
    .join()
    .unwrap();
}
