//! `repctl create-md` / `dump-md` end to end, on sparse temp files.

// Test helpers outside #[test] functions are not covered by clippy.toml's
// allow-*-in-tests settings.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

const SIZE: u64 = 64 << 20;

struct Setup {
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    /// Two nodes with 64 MiB sparse disks; `external` gives alpha an
    /// external metadata file.
    fn new(external: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        for n in ["alpha", "beta"] {
            fs::File::create(dir.path().join(format!("{n}.img")))
                .unwrap()
                .set_len(SIZE)
                .unwrap();
        }
        let d = dir.path().display();
        let meta = if external {
            format!("{d}/alpha.md")
        } else {
            "internal".to_owned()
        };
        let text = format!(
            r#"
[resource]
name = "r0"
protocol = "C"
[net]
secret = "test-secret"
[sync]
al-extents = 257
[[node]]
name = "alpha"
address = "127.0.0.1:7788"
disk = "{d}/alpha.img"
meta-disk = "{meta}"
device = 0
[[node]]
name = "beta"
address = "127.0.0.1:7789"
disk = "{d}/beta.img"
device = 1
"#
        );
        let config = dir.path().join("r0.toml");
        fs::write(&config, text).unwrap();
        Setup { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn repctl(&self, node: &str, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("repctl").unwrap();
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(node)
            .args(args);
        cmd
    }

    fn dump_json(&self, node: &str) -> Value {
        let out = self
            .repctl(node, &["dump-md", "--json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        serde_json::from_slice(&out).unwrap()
    }
}

fn stderr_of(cmd: &mut Command) -> String {
    let out = cmd.assert().failure().code(1).get_output().clone();
    String::from_utf8(out.stderr).unwrap()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[usize::try_from(offset).unwrap()] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn create_then_dump_internal() {
    let s = Setup::new(false);
    s.repctl("alpha", &["create-md"]).assert().success();
    let v = s.dump_json("alpha");
    assert_eq!(v["resource"], "r0");
    assert_eq!(v["node"], "alpha");
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["meta_disk"], "internal");
    let data = v["data_bytes"].as_u64().unwrap();
    let md = v["md_bytes"].as_u64().unwrap();
    assert!(data < SIZE && data % 4096 == 0 && data + md <= SIZE, "{v}");
    assert_eq!(v["superblock_offset"].as_u64().unwrap(), SIZE - 4096);
    assert_eq!(v["generations"]["current"], "0000000000000004");
    assert_eq!(v["generations"]["bitmap"], "0000000000000000");
    assert_eq!(
        v["generations"]["history"],
        serde_json::json!(["0000000000000000", "0000000000000000"])
    );
    assert_eq!(v["flags"], serde_json::json!([]));
    assert_eq!(v["al"]["extents_max"], 257);
    assert_eq!(v["al"]["seq"], 0);
    assert_eq!(v["al"]["active_extents"], serde_json::json!([]));
    assert_eq!(v["bitmap"]["bits"].as_u64().unwrap(), data / 4096);
    assert!(v["bitmap"]["bytes"].as_u64().unwrap() * 8 >= data / 4096);
    assert_eq!(v["bitmap"]["dirty_bits"], 0);
    assert_eq!(v["bitmap"]["dirty_bytes"], 0);
    assert_eq!(v["bitmap"]["bad_pages"], 0);
    assert_eq!(v["superblock_seq"], 1);
    assert_eq!(fs::metadata(s.path("alpha.img")).unwrap().len(), SIZE);

    // The readable form.
    let out = s
        .repctl("alpha", &["dump-md"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("0000000000000004") && text.contains("Inconsistent"),
        "{text}"
    );

    // beta is untouched; its disk has no metadata yet.
    let e = stderr_of(&mut s.repctl("beta", &["dump-md"]));
    assert!(
        e.starts_with("repctl: error: ") && e.contains("run create-md"),
        "{e}"
    );
    s.repctl("beta", &["create-md"]).assert().success();
    assert_eq!(s.dump_json("beta")["node"], "beta");
}

#[test]
fn create_refuses_existing_unless_forced() {
    let s = Setup::new(false);
    s.repctl("alpha", &["create-md"]).assert().success();
    let before = fs::read(s.path("alpha.img")).unwrap();
    let e = stderr_of(&mut s.repctl("alpha", &["create-md"]));
    assert!(
        e.starts_with("repctl: error: ") && e.contains("--force") && e.contains("already"),
        "{e}"
    );
    assert!(
        fs::read(s.path("alpha.img")).unwrap() == before,
        "refusal wrote something"
    );
    s.repctl("alpha", &["create-md", "--force"])
        .assert()
        .success();
    assert_eq!(
        s.dump_json("alpha")["generations"]["current"],
        "0000000000000004"
    );
}

#[test]
fn corrupt_superblock_is_refused_and_untouched() {
    let s = Setup::new(false);
    s.repctl("alpha", &["create-md"]).assert().success();
    let disk = s.path("alpha.img");
    // Internal metadata: the superblock is the last 4 KiB block; flip a byte
    // of the node name.
    flip_byte(&disk, SIZE - 4096 + 90);
    let before = fs::read(&disk).unwrap();
    for args in [&["dump-md"][..], &["dump-md", "--json"][..]] {
        let mut cmd = s.repctl("alpha", args);
        let out = cmd.assert().failure().code(1).get_output().clone();
        let e = String::from_utf8(out.stderr).unwrap();
        assert!(
            e.starts_with("repctl: error: ") && e.contains("checksum"),
            "{e}"
        );
        assert!(out.stdout.is_empty(), "nothing printed on stdout");
    }
    assert!(fs::read(&disk).unwrap() == before, "file changed");
    // create-md without --force calls it corrupt and refuses; --force repairs.
    let e = stderr_of(&mut s.repctl("alpha", &["create-md"]));
    assert!(e.contains("corrupt") && e.contains("--force"), "{e}");
    assert!(fs::read(&disk).unwrap() == before, "file changed");
    s.repctl("alpha", &["create-md", "--force"])
        .assert()
        .success();
    s.dump_json("alpha");
}

#[test]
fn external_meta_disk() {
    let s = Setup::new(true);
    s.repctl("alpha", &["create-md"]).assert().success();
    let md = s.path("alpha.md");
    let v = s.dump_json("alpha");
    assert_eq!(v["meta_disk"], md.display().to_string());
    assert_eq!(
        v["data_bytes"].as_u64().unwrap(),
        SIZE,
        "the whole disk is data"
    );
    assert_eq!(v["superblock_offset"], 0);
    assert_eq!(
        fs::metadata(&md).unwrap().len(),
        v["md_bytes"].as_u64().unwrap()
    );
    assert!(
        fs::read(s.path("alpha.img"))
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "data disk untouched"
    );

    let e = stderr_of(&mut s.repctl("alpha", &["create-md"]));
    assert!(e.contains("--force"), "{e}");

    flip_byte(&md, 30);
    let before = fs::read(&md).unwrap();
    for args in [&["dump-md"][..], &["dump-md", "--json"][..]] {
        let e = stderr_of(&mut s.repctl("alpha", args));
        assert!(e.contains("checksum"), "{e}");
    }
    assert!(fs::read(&md).unwrap() == before);
    fs::remove_file(&md).unwrap();
    let e = stderr_of(&mut s.repctl("alpha", &["dump-md"]));
    assert!(
        e.contains("does not exist") && e.contains("create-md"),
        "{e}"
    );
}

#[test]
fn config_errors() {
    let s = Setup::new(false);
    let text = fs::read_to_string(&s.config).unwrap();

    // Unknown key: named.
    fs::write(
        &s.config,
        text.replace("protocol = \"C\"", "protocol = \"C\"\nprotocoll = \"A\""),
    )
    .unwrap();
    let e = stderr_of(&mut s.repctl("alpha", &["dump-md"]));
    assert!(
        e.starts_with("repctl: error: ") && e.contains("protocoll"),
        "{e}"
    );

    // Unknown node: lists the names.
    fs::write(&s.config, &text).unwrap();
    let e = stderr_of(&mut s.repctl("gamma", &["create-md"]));
    assert!(
        e.contains("gamma") && e.contains("\"alpha\"") && e.contains("\"beta\""),
        "{e}"
    );

    // Missing disk: named.
    fs::remove_file(s.path("beta.img")).unwrap();
    let e = stderr_of(&mut s.repctl("beta", &["create-md"]));
    assert!(
        e.contains(&s.path("beta.img").display().to_string()) && e.contains("does not exist"),
        "{e}"
    );

    // Missing config file.
    let mut cmd = Command::cargo_bin("repctl").unwrap();
    cmd.args([
        "--config",
        "/nonexistent/r0.toml",
        "--node",
        "alpha",
        "dump-md",
    ]);
    let e = stderr_of(&mut cmd);
    assert!(
        e.contains("/nonexistent/r0.toml") && e.contains("--config"),
        "{e}"
    );

    // One node only.
    let one = text.split("[[node]]\nname = \"beta\"").next().unwrap();
    fs::write(&s.config, one).unwrap();
    let e = stderr_of(&mut s.repctl("alpha", &["dump-md"]));
    assert!(e.contains("exactly two") && e.contains("found 1"), "{e}");
}

#[test]
fn disk_too_small() {
    let s = Setup::new(false);
    fs::File::create(s.path("alpha.img"))
        .unwrap()
        .set_len(64 << 10)
        .unwrap();
    let e = stderr_of(&mut s.repctl("alpha", &["create-md"]));
    assert!(e.contains("too small"), "{e}");
}

#[test]
fn usage_errors_and_help() {
    let mut cmd = Command::cargo_bin("repctl").unwrap();
    cmd.arg("frobnicate");
    let e = stderr_of(&mut cmd);
    assert!(e.starts_with("repctl: error: "), "{e}");

    let mut cmd = Command::cargo_bin("repctl").unwrap();
    let e = stderr_of(&mut cmd);
    assert!(e.contains("repctl: error: a command is required"), "{e}");

    let out = Command::cargo_bin("repctl")
        .unwrap()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(out).unwrap();
    assert!(
        help.contains("create-md") && help.contains("dump-md") && help.contains("drbdadm"),
        "{help}"
    );
    let out = Command::cargo_bin("repctl")
        .unwrap()
        .args(["create-md", "--help"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(out).unwrap();
    assert!(
        help.contains("--force") && help.contains("internal"),
        "{help}"
    );
}
