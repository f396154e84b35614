//! `cluster-agent import-heartbeat` end to end on the seed articles'
//! ha.cf, authkeys and haresources (tests/data/seeds/NNN-name/, golden
//! inputs): each imported into the resource file of its article with
//! `--resource` (the drbd.conf import of ublk-target's expected files where
//! the article has a drbd.conf, else a resource file the test writes), the
//! table and the warnings compared with tests/data/seeds/expected, what the
//! files lack supplied by the test, then the result loaded by the agent's
//! own validation (`AgentConfig::load`, and `cluster-agent status`, which
//! gets past the file to the missing socket).
//!
//! `REP_BLESS=1 cargo test -p cluster-agent --test import_heartbeat`
//! rewrites the expected files from the current output.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cluster_agent::config::AgentConfig;

const AGENT: &str = env!("CARGO_BIN_EXE_cluster-agent");

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seeds")
}

/// A drbd.conf import of ublk-target's golden test, with what that test
/// supplies (`[net] secret`, the addresses the article's page stripped).
fn drbd_import(rel: &str, supplied: &[(&str, &str)]) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ublk-target/tests/data/seeds/expected")
        .join(rel);
    let mut text = std::fs::read_to_string(&p).unwrap();
    for (from, to) in supplied {
        assert!(text.contains(from), "{} has no {from:?}", p.display());
        text = text.replacen(from, to, 1);
    }
    text
}

const SECRET: (&str, &str) = (
    "# secret = \"LONG RANDOM STRING\"",
    "secret = \"supplied by the test\"",
);

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

/// Imports seed `dir` for the resource file `resource`, run in the seeds'
/// directory as an admin in /etc would; compares the appended table and
/// the warnings; returns the merged file.
fn import(dir: &str, resource: &str, tmp: &Path) -> PathBuf {
    let res = tmp.join("resource.toml");
    std::fs::write(&res, resource).unwrap();
    let out = tmp.join("merged.toml");
    let o = Command::new(AGENT)
        .current_dir(seeds())
        .args(["import-heartbeat", dir, "--resource"])
        .arg(&res)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("cluster-agent: warning: ")),
        "{stderr}"
    );
    golden(&format!("{dir}/warnings.txt"), &stderr);
    let merged = std::fs::read_to_string(&out).unwrap();
    let table = merged
        .strip_prefix(resource.trim_end())
        .expect("the resource file comes first");
    golden(&format!("{dir}/cluster.toml"), table.trim_start());
    out
}

/// Fills in what the heartbeat files lacked (the n-th call hits the n-th
/// line still holding `from`), then checks nothing is left.
fn supply(path: &Path, values: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in values {
        assert!(text.contains(from), "{} has no {from:?}", path.display());
        text = text.replacen(from, to, 1);
    }
    let left = text
        .lines()
        .any(|l| l.starts_with("# ") && l.contains("# FILL IN:"));
    assert!(!left, "left to fill in:\n{text}");
    std::fs::write(path, text).unwrap();
}

/// The agent accepts the file for both nodes: its loader, and the binary,
/// which reads the file before it looks for the running agent's socket.
fn agent_accepts(path: &Path, nodes: [&str; 2], tmp: &Path) {
    for n in nodes {
        AgentConfig::load(path, Some(n)).unwrap_or_else(|e| panic!("{e}"));
        let o = Command::new(AGENT)
            .arg("--config")
            .arg(path)
            .args(["--node", n, "--run-dir"])
            .arg(tmp.join("run"))
            .arg("status")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no cluster-agent is running"), "{err}");
    }
}

const KEY: (&str, &str) = (
    "# auth-key = \"LONG RANDOM STRING\"",
    "auth-key = \"supplied key\"",
);
const BIND: &str = "# bind = \"ADDRESS-ON-";

#[test]
fn seed_000_openfiler_bcast_and_crc() {
    let tmp = tempfile::tempdir().unwrap();
    let res = drbd_import(
        "000-openfiler/cluster_metadata.toml",
        &[
            SECRET,
            ("# address = \"IP:PORT\"", "address = \"10.0.0.1:7788\""),
            ("# address = \"IP:PORT\"", "address = \"10.0.0.2:7788\""),
        ],
    );
    let merged = import("000-openfiler", &res, tmp.path());
    // crc has no key; `bcast eth1` names no address of either node.
    supply(
        &merged,
        &[
            KEY,
            (BIND, "bind = \"192.168.10.1:694\" # "),
            (BIND, "bind = \"192.168.10.2:694\" # "),
        ],
    );
    agent_accepts(
        &merged,
        ["drbd1.example.com", "drbd2.example.com"],
        tmp.path(),
    );
}

#[test]
fn seed_001_xen_ucast_serial_and_a_placeholder_key() {
    let tmp = tempfile::tempdir().unwrap();
    let res = drbd_import("001-xen/cluster.toml", &[SECRET]);
    let merged = import("001-xen", &res, tmp.path());
    // `ucast eth0 10.0.0.5` is xenamo5's address; xenamo4's is in its own ha.cf.
    supply(&merged, &[(BIND, "bind = \"10.0.0.4:694\" # ")]);
    let text = std::fs::read_to_string(&merged).unwrap();
    assert!(text.contains("bind = \"10.0.0.5:694\""), "{text}");
    agent_accepts(&merged, ["xenamo4", "xenamo5"], tmp.path());
}

#[test]
fn seed_002_lb_one_group_for_two_resources() {
    let tmp = tempfile::tempdir().unwrap();
    let res = drbd_import("002-lb/www.toml", &[SECRET]);
    let merged = import("002-lb", &res, tmp.path());
    supply(
        &merged,
        &[
            KEY,
            (BIND, "bind = \"172.16.1.247:694\" # "),
            (BIND, "bind = \"172.16.1.248:694\" # "),
            (
                "# address = \"172.16.1.254/24\"",
                "address = \"172.16.1.254/24\"",
            ),
            ("# interface = \"eth0\"", "interface = \"eth0\""),
        ],
    );
    let text = std::fs::read_to_string(&merged).unwrap();
    assert!(
        !text.contains("/var/lib/mysql"),
        "mysql's filesystem belongs to the mysql resource"
    );
    agent_accepts(&merged, ["lb1", "lb2"], tmp.path());
}

/// A resource file for an article without drbd.conf (a shared SCSI disk):
/// written by the test, with the article's node names.
fn written_resource(a: &str, b: &str) -> String {
    format!(
        "# Written by the test: the article has no drbd.conf.\n[resource]\nname = \"r0\"\n\
         [net]\nsecret = \"test\"\n\
         [[node]]\nname = \"{a}\"\naddress = \"10.9.0.1:7788\"\ndisk = \"/dev/sdb1\"\n\
         [[node]]\nname = \"{b}\"\naddress = \"10.9.0.2:7788\"\ndisk = \"/dev/sdb1\"\n"
    )
}

#[test]
fn seed_003_fileserver_md5_serial_and_udp() {
    let tmp = tempfile::tempdir().unwrap();
    let merged = import(
        "003-fileserver",
        &written_resource("ttisrv1", "ttisrv2"),
        tmp.path(),
    );
    supply(
        &merged,
        &[
            (BIND, "bind = \"10.9.1.1:694\" # "),
            (BIND, "bind = \"10.9.1.2:694\" # "),
            (
                "# address = \"192.168.0.100/24\"",
                "address = \"192.168.0.100/24\"",
            ),
            ("# interface = \"eth0\"", "interface = \"eth0\""),
        ],
    );
    agent_accepts(&merged, ["ttisrv1", "ttisrv2"], tmp.path());
}

#[test]
fn seed_004_opengfs_haresources_only() {
    let tmp = tempfile::tempdir().unwrap();
    let merged = import(
        "004-opengfs",
        &written_resource("fred", "barney"),
        tmp.path(),
    );
    // No ha.cf and no authkeys in the article: the key and the paths.
    supply(
        &merged,
        &[
            KEY,
            (BIND, "bind = \"192.168.1.1:694\" # "),
            (BIND, "bind = \"192.168.1.2:694\" # "),
            (
                "# address = \"192.168.1.100/24\"",
                "address = \"192.168.1.100/24\"",
            ),
            ("# interface = \"eth0\"", "interface = \"eth0\""),
        ],
    );
    agent_accepts(&merged, ["fred", "barney"], tmp.path());
}

#[test]
fn a_resource_file_with_a_cluster_table_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("r.toml");
    std::fs::write(&res, format!("{}[cluster]\n", written_resource("a", "b"))).unwrap();
    let o = Command::new(AGENT)
        .current_dir(seeds())
        .args(["import-heartbeat", "003-fileserver", "--resource"])
        .arg(&res)
        .arg("--out")
        .arg(tmp.path().join("out.toml"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("has a [cluster] table already"));
    assert!(!tmp.path().join("out.toml").exists());
}
