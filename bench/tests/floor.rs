//! `floor-pair`, the benchmark's minimal protocol C pair: it must really
//! write both copies (or its figures would flatter the floor), and
//! `nbd-bench --floor --targets` must measure it and only what was asked.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_next_to, require, tmp_dir};

use rep_testkit::KillOnDrop as Kill;

fn port() -> u16 {
    rep_testkit::free_ports::<1>()[0]
}

#[test]
fn floor_pair_writes_both_copies_of_what_a_client_writes() {
    require("nbdcopy", "libnbd-bin");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_floor-pair"));
    let d = tempfile::tempdir_in(tmp_dir()).unwrap();
    let (a, b, src) = (
        d.path().join("a.img"),
        d.path().join("b.img"),
        d.path().join("src"),
    );
    for f in [&a, &b] {
        std::fs::File::create(f).unwrap().set_len(64 << 20).unwrap();
    }
    // 24 MiB of data no image starts with.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<u8> = (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    std::fs::File::create(&src)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let p = port();
    let _server = Kill(
        Command::new(&exe)
            .args(["--mode", "replicated", "--nbd", &format!("127.0.0.1:{p}")])
            .arg("--file")
            .arg(&a)
            .arg("--peer-file")
            .arg(&b)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "floor-pair never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = Command::new("nbdcopy")
        .arg(&src)
        .arg(format!("nbd://127.0.0.1:{p}/r0"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nbdcopy failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Every write was acknowledged after both copies were written.
    for img in [&a, &b] {
        let got = std::fs::read(img).unwrap();
        assert!(
            got[..data.len()] == data[..],
            "{} does not hold what the client wrote",
            img.display()
        );
    }
}

#[test]
fn a_replicated_floor_without_its_peer_file_is_refused() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_floor-pair"));
    let d = tempfile::tempdir_in(tmp_dir()).unwrap();
    let a = d.path().join("a.img");
    std::fs::File::create(&a).unwrap().set_len(1 << 20).unwrap();
    let o = Command::new(&exe)
        .args(["--mode", "replicated", "--nbd", "127.0.0.1:0", "--file"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--peer-file"), "stderr: {err}");
}

#[test]
fn nbd_bench_measures_the_floor_and_only_the_targets_asked_for() {
    require("fio", "fio");
    require("nbdkit", "nbdkit");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_nbd-bench"));
    let bin_dir = build_next_to(&exe, &["ublk-target"], &["repd", "repctl", "floor-pair"]);
    let tmp = tmp_dir();
    let o = Command::new(&exe)
        .args(["--quick", "--runtime", "2", "--floor", "--targets"])
        .arg("floor-c,floor-standalone,standalone")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--dir")
        .arg(&tmp)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{out}\n{err}");
    assert!(o.status.success(), "nbd-bench failed:\n{out}\n{err}");
    assert_eq!(
        out.matches("floor-pair C / floor-pair StandAlone (IOPS): ")
            .count(),
        2,
        "one floor ratio per workload"
    );
    assert!(!out.contains("floor-pair StandAlone (IOPS): -"));
    // A row per workload; repd StandAlone has one more in the RSS table.
    for (row, n) in [
        ("| floor-pair C ", 2),
        ("| floor-pair StandAlone ", 2),
        ("| repd StandAlone ", 3),
    ] {
        assert_eq!(out.matches(row).count(), n, "rows {row:?}");
    }
    // Not asked for: no rows, no ratio lines that could only say "-".
    for absent in [
        "| repd protocol C",
        "| nbdkit",
        "protocol C / StandAlone",
        "protocol A /",
    ] {
        assert!(!out.contains(absent), "{absent:?} printed:\n{out}");
    }
    let bad = Command::new(&exe)
        .args(["--quick", "--targets", "proto-z"])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown target \"proto-z\""));
}
