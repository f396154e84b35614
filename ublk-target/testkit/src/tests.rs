//! The helpers' own checks (the ones that need no root, network or daemon).

use std::time::Duration;

use crate::{ensure_dir, free_ports, log_tail, poll, random_file, sparse_file};

/// A folder for these checks (distinct file names per test; unit tests have no
/// CARGO_TARGET_TMPDIR).
fn scratch() -> std::path::PathBuf {
    ensure_dir(std::env::temp_dir().join("rep-testkit-unit"))
}

#[test]
fn random_files_are_the_seeds_and_the_size_asked_for() {
    let dir = scratch();
    let a = random_file(&dir, "tk-a.bin", 1001, 7);
    let b = random_file(&dir, "tk-b.bin", 1001, 7);
    let c = random_file(&dir, "tk-c.bin", 1001, 8);
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert_eq!(a.len(), 1001);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn sparse_files_have_their_length() {
    let p = scratch().join("tk-sparse.img");
    sparse_file(&p, 3 << 20);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 3 << 20);
}

#[test]
fn free_ports_are_distinct() {
    let p = free_ports::<8>();
    let mut q = p.to_vec();
    q.sort_unstable();
    q.dedup();
    assert_eq!(q.len(), 8, "{p:?}");
}

#[test]
fn log_tail_keeps_the_last_lines() {
    let p = scratch().join("tk-log.txt");
    std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
    assert_eq!(log_tail(&p, 2), "3\n4");
    assert_eq!(log_tail(&p, 10), "1\n2\n3\n4");
    assert_eq!(log_tail(&p.with_extension("missing"), 3), "");
}

#[test]
fn poll_returns_the_first_value() {
    let mut n = 0;
    let v = poll(
        "the third probe",
        5,
        Duration::from_millis(1),
        || {
            n += 1;
            (n == 3).then_some(n)
        },
        String::new,
    );
    assert_eq!(v, 3);
}

#[test]
fn node_address_and_contains() {
    let text = "[net]\nsecret = \"s\"\n[[node]]\nname = \"alpha\"\naddress = \"10.0.0.1:7788\"\n\
                [[node]]\nname = \"beta\"\naddress = \"10.0.0.2:7789\"\n";
    assert_eq!(crate::link::node_address(text, 0), "10.0.0.1:7788");
    assert_eq!(crate::link::node_address(text, 1), "10.0.0.2:7789");
    assert!(crate::link::contains(b"xxabcxx", b"abc"));
    assert!(!crate::link::contains(b"xxabxcx", b"abc"));
}
