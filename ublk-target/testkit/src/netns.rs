//! Network namespaces and addresses for tests that run nodes apart.

use std::ffi::OsStr;
use std::process::Command;

use crate::tools::require;

/// `N` distinct free ports: each is held until all are picked (ports
/// asked for one at a time may repeat, and a resource file with one port
/// twice is refused).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
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
