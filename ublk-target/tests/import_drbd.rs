//! `repctl import-drbd-conf` end to end: the seed articles' drbd.conf files
//! (golden inputs in tests/data/seeds, expected outputs and warnings in
//! tests/data/seeds/expected, to be read by a reviewer), the values they
//! lack supplied by the test and `repctl dump` accepting the result; and a
//! drbd.conf written for the test brought up on two nodes from its import;
//! DRBD's fencing and crm handlers imported as rep's.
//!
//! `REP_BLESS=1 cargo test -p ublk-target --test import_drbd` rewrites the
//! expected files from the current output (then read the diff).

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rep_testkit::{free_ports, is_synced, poll, sparse_file, Repctl};

const REPCTL: &str = env!("CARGO_BIN_EXE_repctl");

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seeds")
}

/// `repctl import-drbd-conf NAME --out OUT` run in `dir`, as a user in
/// /etc would: warnings then name `NAME:LINE`.
fn import(dir: &Path, name: &str, out: &Path) -> Output {
    Command::new(REPCTL)
        .current_dir(dir)
        .args(["import-drbd-conf", name, "--out"])
        .arg(out)
        .output()
        .unwrap()
}

/// `got` equals the expected file `seeds/expected/<rel>` (or becomes it
/// with REP_BLESS=1).
fn golden(rel: &str, got: &str) {
    let p = seeds().join("expected").join(rel);
    if std::env::var_os("REP_BLESS").is_some() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (REP_BLESS=1 writes it)", p.display()));
    assert_eq!(got, want, "{} differs from the output", p.display());
}

/// Imports seed `stem` from `dir`; compares the warnings and every
/// resource file with the expected ones; returns the files' paths.
fn import_seed(dir: &Path, stem: &str, out: &Path, resources: &[&str]) -> Vec<PathBuf> {
    let o = import(dir, &format!("{stem}.drbd.conf"), out);
    let stderr = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.lines().all(|l| l.starts_with("repctl: warning: ")),
        "{stderr}"
    );
    golden(&format!("{stem}/warnings.txt"), &stderr);
    resources
        .iter()
        .map(|r| {
            let p = out.join(format!("{r}.toml"));
            golden(
                &format!("{stem}/{r}.toml"),
                &std::fs::read_to_string(&p).unwrap(),
            );
            p
        })
        .collect()
}

/// Fills in what the source lacked: each `(line, replacement)` replaces the
/// first line still holding `line`, once (the n-th call hits the n-th node).
fn supply(path: &Path, values: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in values {
        assert!(text.contains(from), "{} has no {from:?}", path.display());
        text = text.replacen(from, to, 1);
    }
    // A supplied line keeps its `# FILL IN: why` comment after the value.
    let left = text
        .lines()
        .any(|l| l.starts_with("# ") && l.contains("# FILL IN:"));
    assert!(!left, "left to fill in:\n{text}");
    std::fs::write(path, text).unwrap();
}

/// `repctl --config FILE --node NODE dump` succeeds.
fn dump_accepts(path: &Path, node: &str) {
    let o = Command::new(REPCTL)
        .arg("--config")
        .arg(path)
        .args(["--node", node, "dump"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "repctl dump refused {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

const SECRET: (&str, &str) = (
    "# secret = \"LONG RANDOM STRING\"",
    "secret = \"supplied by the test\"",
);
const ADDRESS: &str = "# address = \"IP:PORT\"";

#[test]
fn seed_000_openfiler_two_resources_without_addresses() {
    let out = tempfile::tempdir().unwrap();
    let files = import_seed(
        &seeds(),
        "000-openfiler",
        out.path(),
        &["cluster_metadata", "vg0_drbd"],
    );
    // The article's page stripped every `address`; the secret is new in rep.
    supply(
        &files[0],
        &[
            SECRET,
            (ADDRESS, "address = \"10.0.0.1:7788\""),
            (ADDRESS, "address = \"10.0.0.2:7788\""),
        ],
    );
    supply(
        &files[1],
        &[
            SECRET,
            (ADDRESS, "address = \"10.0.0.1:7789\""),
            (ADDRESS, "address = \"10.0.0.2:7789\""),
        ],
    );
    for f in &files {
        dump_accepts(f, "drbd1.example.com");
    }
}

#[test]
fn seed_001_xen_missing_semicolon_is_an_error_with_its_line() {
    let out = tempfile::tempdir().unwrap();
    let o = import(&seeds(), "001-xen.drbd.conf", out.path());
    assert!(!o.status.success());
    golden("001-xen/error.txt", &String::from_utf8(o.stderr).unwrap());
    assert!(
        !out.path().join("cluster.toml").exists(),
        "nothing is written"
    );
    // Supplied: the `;` after incon-degr-cmd's value, in a copy.
    let fixed = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(seeds().join("001-xen.drbd.conf")).unwrap();
    let text = text.replacen("halt -f\"\n", "halt -f\";\n", 1);
    std::fs::write(fixed.path().join("001-xen.drbd.conf"), text).unwrap();
    let files = import_seed(fixed.path(), "001-xen", out.path(), &["cluster"]);
    supply(&files[0], &[SECRET]);
    dump_accepts(&files[0], "xenamo4");
}

#[test]
fn seed_002_lb_two_resources_on_their_own_ports() {
    let out = tempfile::tempdir().unwrap();
    let files = import_seed(&seeds(), "002-lb", out.path(), &["www", "mysql"]);
    for f in &files {
        supply(f, &[SECRET]);
        dump_accepts(f, "lb1");
    }
}

#[test]
fn existing_files_are_not_overwritten_without_force() {
    let out = tempfile::tempdir().unwrap();
    assert!(import(&seeds(), "002-lb.drbd.conf", out.path())
        .status
        .success());
    let o = import(&seeds(), "002-lb.drbd.conf", out.path());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists already; nothing was written"));
}

/// `repctl --config FILE --node NODE dump`'s output.
fn dump(path: &Path, node: &str) -> String {
    dump_accepts(path, node);
    let o = Command::new(REPCTL)
        .arg("--config")
        .arg(path)
        .args(["--node", node, "dump"])
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap()
}

/// A DRBD 8.4 Pacemaker setup (as the DRBD user's guide has it): the crm
/// scripts become rep's, and a policy without fence-peer is left to fill in
/// while the file as written still loads.
#[test]
fn drbd_fencing_and_crm_handlers_become_reps() {
    let d = tempfile::tempdir().unwrap();
    let node = |h: &str, n: u8| {
        format!("on {h} {{ device /dev/drbd0; disk /d/{h}; address 10.0.0.{n}:7788; meta-disk internal; }}")
    };
    let text = format!(
        "resource r0 {{\n disk {{ fencing resource-and-stonith; }}\n handlers {{\n  \
         fence-peer \"/usr/lib/drbd/crm-fence-peer.sh\";\n  \
         after-resync-target \"/usr/lib/drbd/crm-unfence-peer.sh\";\n }}\n \
         net {{ shared-secret \"x\"; }}\n {}\n {}\n}}\n\
         resource r1 {{\n net {{ fencing resource-only; shared-secret \"x\"; }}\n {}\n {}\n}}\n",
        node("alpha", 1),
        node("beta", 2),
        node("alpha", 1).replace("7788", "7789"),
        node("beta", 2).replace("7788", "7789"),
    );
    std::fs::write(d.path().join("drbd.conf"), text).unwrap();
    let out = d.path().join("out");
    let o = import(d.path(), "drbd.conf", &out);
    let stderr = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{stderr}");
    for part in [
        "drbd.conf:4: fence-peer: `fence-peer /usr/lib/drbd/crm-fence-peer.sh`: drbd-utils' \
         crm-fence-peer.sh is replaced by rep's /usr/lib/rep/crm-fence-peer",
        "drbd.conf:5: after-resync-target: ",
        "rep runs it on the node that fenced",
        "drbd.conf:12: fencing: `fencing resource-only` needs a fence-peer handler",
    ] {
        assert!(stderr.contains(part), "no {part:?} in:\n{stderr}");
    }
    let r0 = dump(&out.join("r0.toml"), "alpha");
    for line in [
        "fencing = \"resource-and-stonith\"",
        "[handlers]\nfence-peer = \"/usr/lib/rep/crm-fence-peer\"\n\
         unfence-peer = \"/usr/lib/rep/crm-unfence-peer\"",
    ] {
        assert!(r0.contains(line), "no {line:?} in:\n{r0}");
    }
    let r1 = out.join("r1.toml");
    let written = std::fs::read_to_string(&r1).unwrap();
    assert!(
        written.contains("# fencing = \"resource-only\"   # FILL IN:"),
        "{written}"
    );
    assert!(dump(&r1, "alpha").contains("fencing = \"dont-care\""));
}

/// A drbd.conf in DRBD 8.4 style written for the test: two nodes on
/// loopback, file-backed disks. Imported, then brought up as DRBD's
/// `drbdadm create-md`, `up`, `primary --force` would be; data written
/// through alpha's NBD export reaches beta's disk.
#[test]
fn a_two_node_resource_comes_up_from_an_imported_file() {
    rep_testkit::require("nbdcopy", "libnbd-bin");
    let _one = rep_testkit::serial();
    let dir = tempfile::Builder::new()
        .prefix("rep-import-")
        .tempdir_in(rep_testkit::target_tmp!())
        .unwrap();
    let d = dir.path();
    let [pa, pb, na, nb] = free_ports::<4>();
    for n in ["alpha", "beta"] {
        sparse_file(&d.join(format!("{n}.img")), 32 << 20);
    }
    std::fs::write(d.join("drbd.conf"), two_node_conf(d, pa, pb)).unwrap();
    let o = import(d, "drbd.conf", &d.join("rep"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let warnings = String::from_utf8_lossy(&o.stderr);
    assert!(warnings.contains("drbd.conf:1: usage-count:"), "{warnings}");
    assert!(
        warnings.contains("cram-hmac-alg: `cram-hmac-alg sha1`"),
        "{warnings}"
    );
    let config = d.join("rep/r7.toml");
    // drbd.conf has no NBD export (DRBD serves /dev/drbdN): the test adds
    // one per node, the only lines not written by the import.
    add_nbd_exports(&config, [na, nb]);
    let run = d.join("run");
    let node = |name| Repctl {
        bin: Path::new(REPCTL),
        config: &config,
        node: name,
        run_dir: &run,
        netns: None,
    };
    let (a, b) = (node("alpha"), node("beta"));
    let _down = Down([a, b]);
    for n in [a, b] {
        n.ok(&["create-md"]);
        n.ok(&["up"]);
    }
    a.ok(&["primary", "--force"]);
    for n in [a, b] {
        wait_for(n, "Connected UpToDate/UpToDate", is_synced);
    }
    let st = b.status().unwrap();
    assert_eq!(st["role"], "Secondary");
    assert_eq!(st["peer_role"], "Primary");
    // 4 MiB through alpha's export, read back, then on beta's disk too.
    let src = rep_testkit::random_file(d, "data.bin", 4 << 20, 18);
    let uri = format!("nbd://127.0.0.1:{na}/r7");
    nbdcopy(src.to_str().unwrap(), &uri);
    let back = d.join("back.bin");
    nbdcopy(&uri, back.to_str().unwrap());
    let (x, y) = (std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    assert!(
        y.len() >= x.len() && y[..x.len()] == x[..],
        "read back differs"
    );
    wait_for(a, "nothing pending", |s| {
        s["counters"]["pe"] == 0 && s["out_of_sync_bytes"] == 0
    });
    rep_testkit::assert_same_data(&d.join("alpha.img"), &d.join("beta.img"), 4 << 20);
}

fn two_node_conf(d: &Path, pa: u16, pb: u16) -> String {
    format!(
        "global {{ usage-count no; }}\n\
         common {{\n  net {{ protocol C; cram-hmac-alg sha1; shared-secret \"imported\"; timeout 20; ping-int 1; }}\n\
           syncer {{ rate 200M; al-extents 61; }}\n}}\n\
         resource r7 {{\n  startup {{ wfc-timeout 10; }}\n\
           on alpha {{ device /dev/drbd40; disk {d}/alpha.img; address 127.0.0.1:{pa}; meta-disk internal; }}\n\
           on beta {{ device minor 41; disk {d}/beta.img; address ipv4 127.0.0.1:{pb}; meta-disk internal; }}\n}}\n",
        d = d.display()
    )
}

/// `nbd = "127.0.0.1:PORT"` after each node's `device` line.
fn add_nbd_exports(config: &Path, ports: [u16; 2]) {
    let mut text = String::new();
    let mut k = 0;
    for line in std::fs::read_to_string(config).unwrap().lines() {
        text.push_str(line);
        text.push('\n');
        if line.starts_with("device = ") {
            text.push_str(&format!("nbd = \"127.0.0.1:{}\"\n", ports[k]));
            k += 1;
        }
    }
    assert_eq!(k, 2, "{text}");
    std::fs::write(config, text).unwrap();
}

fn nbdcopy(from: &str, to: &str) {
    let o = Command::new("nbdcopy").args([from, to]).output().unwrap();
    assert!(
        o.status.success(),
        "nbdcopy {from} {to}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn wait_for(n: Repctl<'_>, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    poll(
        what,
        60,
        Duration::from_millis(100),
        || n.status().filter(|s| f(s)),
        || format!("{:?}", n.status()),
    );
}

/// Stops both daemons at the end, also when the test failed.
struct Down<'a>([Repctl<'a>; 2]);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = n.output(&["down", "--force"]);
        }
    }
}
