//! `repctl dump` end to end: the real binary on real files.

// Test helpers outside #[test] functions are not covered by clippy.toml's
// allow-*-in-tests settings.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use rep_control::client::socket_path;
use rep_control::config::Config;
use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/r0.toml");
const CLUSTER_EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../cluster-agent/examples/r0-cluster.toml"
);

/// repctl with its own (not yet existing) run dir: nothing of the host's.
fn repctl(config: &Path, run_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("repctl").unwrap();
    cmd.arg("--config")
        .arg(config)
        .arg("--run-dir")
        .arg(run_dir)
        .args(args);
    cmd
}

fn dump_ok(config: &Path, run_dir: &Path, node: &str, json: bool) -> String {
    let mut args = vec!["--node", node, "dump"];
    if json {
        args.push("--json");
    }
    let out = repctl(config, run_dir, &args)
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Dump `config`, write the dump to a file and load both: they must be the
/// same configuration, and dumping the dump prints the same keys again.
fn assert_round_trip(config: &Path, node: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let text = dump_ok(config, &run, node, false);
    let copy = dir.path().join("dumped.toml");
    fs::write(&copy, &text).unwrap();
    let original = Config::load(config).unwrap();
    let mut reloaded = Config::load(&copy).unwrap();
    reloaded.path.clone_from(&original.path);
    assert_eq!(reloaded, original, "{text}");
    // Only the header comment (which names the file) differs.
    let again = dump_ok(&copy, &run, node, false);
    let body = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(body(&again), body(&text));
    assert!(!run.exists(), "dump created the run dir");
    text
}

#[test]
fn example_dumps_and_reloads_equal() {
    let text = assert_round_trip(Path::new(EXAMPLE), "alpha");
    assert!(text.starts_with("# "), "{text}");
    assert!(
        text.contains("for node \"alpha\" (peer \"beta\")"),
        "{text}"
    );
    // The sections in the order of the example.
    let sections: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(
        sections,
        [
            "[resource]",
            "[net]",
            "[sync]",
            "[startup]",
            "[disk]",
            "[split-brain]",
            "[handlers]",
            "[[node]]",
            "[[node]]"
        ],
        "{text}"
    );
    assert_round_trip(Path::new(EXAMPLE), "beta");
}

#[test]
fn cluster_table_is_carried_over() {
    let text = assert_round_trip(Path::new(CLUSTER_EXAMPLE), "alpha");
    assert!(
        text.contains("[cluster]") && text.contains("[[cluster.path]]"),
        "{text}"
    );
    // The agent decides: repd's default with a [cluster] table is spelt out.
    assert!(
        text.lines().any(|l| l == "resume-after-crash = \"never\""),
        "{text}"
    );
}

/// A short file: the dump spells out every default, in TOML and in JSON,
/// and the JSON is the TOML's content.
#[test]
fn defaults_filled_in_and_json_is_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("r0.toml");
    fs::write(
        &config,
        r#"
[resource]
name = "r0"
[net]
secret = "s"
[sync]
rate = 8192
[[node]]
name = "alpha"
address = "127.0.0.1:7788"
disk = "/nonexistent/alpha.img"
[[node]]
name = "beta"
address = "127.0.0.1:7789"
disk = "/nonexistent/beta.img"
nbd = "127.0.0.1:10810"
"#,
    )
    .unwrap();
    let run = dir.path().join("run");
    let text = dump_ok(&config, &run, "beta", false);
    for line in [
        "protocol = \"C\"",
        "timeout-ms = 6000",
        "ping-int-ms = 1000",
        "ko-count = 7",
        "max-buffers = 2048",
        "csums = false",
        "rate = \"8K\"",
        "al-extents = 1237",
        "verify = \"crc32c\"",
        "wfc-timeout = 0",
        "degr-wfc-timeout = 120",
        "resume-after-crash = \"held-device\"",
        "on-io-error = \"pass-on\"",
        "after-sb-0pri = \"disconnect\"",
        "after-sb-1pri = \"disconnect\"",
        "after-sb-2pri = \"disconnect\"",
        "meta-disk = \"internal\"",
        "device = 0",
        "nbd = \"127.0.0.1:10810\"",
    ] {
        assert!(text.lines().any(|l| l == line), "`{line}` in\n{text}");
    }
    let json: Value = serde_json::from_str(&dump_ok(&config, &run, "beta", true)).unwrap();
    let from_toml = serde_json::to_value(toml::from_str::<toml::Value>(&text).unwrap()).unwrap();
    assert_eq!(json, from_toml);
    assert_eq!(json["net"]["timeout-ms"], 6000);
    assert_eq!(json["node"][1]["nbd"], "127.0.0.1:10810");
    assert!(json["node"][0].get("nbd").is_none(), "{json}");
}

/// No disk or metadata file is opened or created (they need not exist, as
/// for drbdadm dump), no daemon is asked, nothing is written.
#[test]
fn dump_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let m = missing.display();
    let config = dir.path().join("r0.toml");
    fs::write(
        &config,
        format!(
            r#"
[resource]
name = "r0"
[net]
secret = "s"
[[node]]
name = "alpha"
address = "127.0.0.1:7788"
disk = "{m}/alpha.img"
meta-disk = "{m}/alpha.md"
[[node]]
name = "beta"
address = "127.0.0.1:7789"
disk = "{m}/beta.img"
"#
        ),
    )
    .unwrap();
    // A "daemon" that would see any control request.
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    let sock = socket_path(&run, "r0", "alpha");
    let listener = UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let before = fs::read(&config).unwrap();

    let text = dump_ok(&config, &run, "alpha", false);
    assert!(
        text.contains(&format!("disk = \"{m}/alpha.img\"")),
        "{text}"
    );
    dump_ok(&config, &run, "alpha", true);

    assert!(!missing.exists(), "dump created {m}");
    let e = listener.accept().unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::WouldBlock,
        "dump asked the daemon"
    );
    let in_run: Vec<PathBuf> = fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(in_run, [sock]);
    assert_eq!(fs::read(&config).unwrap(), before);
}

/// An invalid file: dump exits 1 with exactly the error `up` gives, and
/// prints nothing on stdout.
#[test]
fn invalid_files_fail_like_up() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let good = fs::read_to_string(EXAMPLE).unwrap();
    let cases: [(&str, String, &str, &str); 5] = [
        (
            "unknown key",
            good.replace("ko-count = 7", "ko-count = 7\nko-cuont = 7"),
            "alpha",
            "ko-cuont",
        ),
        (
            "bad value",
            good.replace("al-extents = 1237", "al-extents = 3"),
            "alpha",
            "sync.al-extents",
        ),
        (
            "bad address",
            good.replace("127.0.0.1:7789", "beta-host:7789"),
            "alpha",
            "node[1].address",
        ),
        (
            "missing node",
            good.clone(),
            "gamma",
            "no [[node]] is named `gamma`",
        ),
        (
            "syntax error",
            good.replace("[net]", "[net"),
            "alpha",
            "r0.toml",
        ),
    ];
    for (what, text, node, needle) in cases {
        let config = dir.path().join("r0.toml");
        fs::write(&config, &text).unwrap();
        let run_one = |verb: &[&str]| {
            let mut args = vec!["--node", node];
            args.extend_from_slice(verb);
            let out = repctl(&config, &run, &args)
                .assert()
                .failure()
                .code(1)
                .get_output()
                .clone();
            (
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        };
        let (out, err) = run_one(&["dump"]);
        assert!(out.is_empty(), "{what}: {out}");
        assert!(
            err.starts_with("repctl: error: ") && err.contains(needle),
            "{what}: {err}"
        );
        let (_, up_err) = run_one(&["up", "--repd", "/nonexistent/repd"]);
        assert_eq!(err, up_err, "{what}");
        let (_, json_err) = run_one(&["dump", "--json"]);
        assert_eq!(err, json_err, "{what}");
    }
    // A missing file too (with up's hint about --config).
    let absent = dir.path().join("absent.toml");
    let err = |verb: &str| {
        let out = repctl(&absent, &run, &["--node", "alpha", verb])
            .assert()
            .failure()
            .code(1)
            .get_output()
            .clone();
        String::from_utf8(out.stderr).unwrap()
    };
    let e = err("dump");
    assert!(
        e.contains("cannot read config file") && e.contains("--config"),
        "{e}"
    );
    assert_eq!(e, err("up"));
}
