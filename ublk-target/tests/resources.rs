//! Several resources per host, drbdadm-style (issue 18): two resource files
//! in one configuration directory, both up on two nodes, and `repctl`
//! without `--config`: `status` shows both, `primary r1` acts on r1 only,
//! `all` acts on both, and the selection errors list what exists. Real repd
//! processes on 127.0.0.1, driven by repctl as a user would.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{config_text, free_ports, Cluster, Opts, NODES};
use serde_json::Value;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A host's view: the configuration directory and the run directory that
/// node `node` uses, with no `--config`.
struct Host<'a> {
    config_dir: &'a Path,
    run_dir: &'a Path,
}

impl Host<'_> {
    /// `repctl --config-dir DIR --node NODE --run-dir RUN ARGS...`.
    fn run(&self, node: usize, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_repctl"))
            .arg("--config-dir")
            .arg(self.config_dir)
            .args(["--node", NODES[node], "--run-dir"])
            .arg(self.run_dir)
            .args(args)
            .output()
            .unwrap()
    }

    /// The same, and it must succeed; its stdout.
    fn ok(&self, node: usize, args: &[&str]) -> String {
        let o = self.run(node, args);
        assert!(
            o.status.success(),
            "repctl {} on {} failed:\n{}{}",
            args.join(" "),
            NODES[node],
            out(&o),
            err(&o)
        );
        out(&o)
    }

    /// `repctl status --json` of every resource: one object per line.
    fn statuses(&self, node: usize) -> Vec<Value> {
        self.ok(node, &["status", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The roles of r0 and r1 on `node`, from `status --json` (all).
    fn roles(&self, node: usize) -> Vec<(String, String)> {
        self.statuses(node)
            .iter()
            .map(|s| {
                (
                    s["resource"].as_str().unwrap().to_owned(),
                    s["role"].as_str().unwrap_or("-").to_owned(),
                )
            })
            .collect()
    }

    /// Waits until `f` holds for the status of every resource on `node`.
    fn wait_all(&self, node: usize, what: &str, f: impl Fn(&Value) -> bool) {
        rep_testkit::poll(
            what,
            60,
            std::time::Duration::from_millis(100),
            || self.statuses(node).iter().all(&f).then_some(()),
            || format!("{:#?}", self.statuses(node)),
        );
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Two resources r0 and r1 sharing `run_dir`, their files (r1's on other
/// ublk device numbers) copied into `config_dir` as r0.toml and r1.toml.
fn two_clusters(config_dir: &Path, run_dir: &Path) -> [Cluster; 2] {
    let mk = |r| {
        Cluster::new(Opts {
            resource: r,
            disk_mib: 16,
            run_dir: Some(run_dir.to_owned()),
            ..Opts::default()
        })
    };
    let (a, b) = (mk("r0"), mk("r1"));
    let t = std::fs::read_to_string(&b.config[0])
        .unwrap()
        .replace("device = 1", "device = 3")
        .replace("device = 0", "device = 2");
    std::fs::write(&b.config[0], t).unwrap();
    for c in [&a, &b] {
        std::fs::copy(
            &c.config[0],
            config_dir.join(format!("{}.toml", c.resource)),
        )
        .unwrap();
    }
    [a, b]
}

#[test]
fn two_resources_up_status_primary_one_and_all() {
    let tmp = tempfile::tempdir_in(common::target_tmp()).unwrap();
    let (config_dir, run_dir) = (tmp.path().join("etc"), tmp.path().join("run"));
    std::fs::create_dir(&config_dir).unwrap();
    let _clusters = two_clusters(&config_dir, &run_dir);
    let h = Host {
        config_dir: &config_dir,
        run_dir: &run_dir,
    };
    up_all_and_status(&h);
    primary_one_then_all(&h);
    down_all(&h);
}

/// `up all` on both nodes, then `status` without an argument shows both.
fn up_all_and_status(h: &Host) {
    // One repd per resource.
    for i in 0..2 {
        let o = h.ok(i, &["up", "all"]);
        assert!(
            o.contains("r0 role:Secondary") && o.contains("r1 role:Secondary"),
            "{o}"
        );
    }
    h.wait_all(0, "both connected", |s| s["connection"] == "Connected");

    // `status` with no argument: both, in words and as JSON lines. The
    // directory from the environment, as a service's would be.
    let o = Command::new(env!("CARGO_BIN_EXE_repctl"))
        .env("REP_CONFIG_DIR", h.config_dir)
        .args(["--node", "alpha", "--run-dir"])
        .arg(h.run_dir)
        .arg("status")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(text.starts_with("r0 role:Secondary"), "{text}");
    assert!(text.contains("\nr1 role:Secondary"), "{text}");
    assert_eq!(
        h.roles(0),
        pairs(&[("r0", "Secondary"), ("r1", "Secondary")])
    );
}

/// A verb without a name is refused, `primary r1` promotes r1 alone, and
/// `all` goes on after one resource fails.
fn primary_one_then_all(h: &Host) {
    let both = pairs(&[("r0", "Secondary"), ("r1", "Secondary")]);
    // With two resources a verb that changes something must be told which.
    let o = h.run(0, &["primary", "--force"]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("several resources (r0, r1)"),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("`all`"), "{}", err(&o));
    assert_eq!(h.roles(0), both, "an ambiguous command changed nothing");

    // `primary r1` acts on r1 only (the first time with --force: both are
    // Inconsistent; then again without, once r1 is UpToDate).
    h.ok(0, &["primary", "--force", "r1"]);
    assert_eq!(h.roles(0), pairs(&[("r0", "Secondary"), ("r1", "Primary")]));
    let r1_synced = |s: &Value| s["resource"] != "r1" || rep_testkit::is_synced(s);
    h.wait_all(0, "r1 synced", r1_synced);
    h.ok(0, &["secondary", "r1"]);
    let o = h.ok(0, &["primary", "r1"]);
    assert!(o.starts_with("r1 role:Primary"), "{o}");
    assert_eq!(h.roles(0), pairs(&[("r0", "Secondary"), ("r1", "Primary")]));
    assert_eq!(h.roles(1), both, "beta: both still Secondary");

    // `all` goes on after a failure: r0 (still Inconsistent) is refused,
    // named on stderr; r1 is promoted all the same; exit 1.
    h.ok(0, &["secondary", "all"]);
    assert_eq!(h.roles(0), both);
    let o = h.run(0, &["primary", "all"]);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(err(&o).starts_with("repctl: error: r0: "), "{}", err(&o));
    assert!(!err(&o).contains("r1: "), "{}", err(&o));
    assert!(
        err(&o).ends_with("repctl: error: 1 of 2 resources failed: r0\n"),
        "{}",
        err(&o)
    );
    assert_eq!(h.roles(0), pairs(&[("r0", "Secondary"), ("r1", "Primary")]));
    h.ok(0, &["secondary", "all"]);
    assert_eq!(h.roles(0), both);
}

fn down_all(h: &Host) {
    // `down all` stops both; `status` (all) then shows both not running
    // and succeeds, while a named resource that does not run is an error.
    for i in 0..2 {
        let o = h.ok(i, &["down", "all"]);
        assert_eq!(o, "r0: repd stopped\nr1: repd stopped\n");
    }
    let text = h.ok(0, &["status"]);
    assert!(text.starts_with("r0 not running"), "{text}");
    assert!(text.contains("\nr1 not running"), "{text}");
    let st = h.statuses(0);
    assert_eq!(st.len(), 2);
    assert!(st.iter().all(|s| s["running"] == false), "{st:?}");
    let o = h.run(0, &["status", "r1"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("no repd is running"), "{}", err(&o));
}

/// A directory of resource files that need no disks (dump reads only).
fn files_dir(names: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for n in names {
        let text = config_text(
            &Opts::default(),
            d.path(),
            free_ports::<2>(),
            free_ports::<2>(),
            "s",
            n,
        );
        std::fs::write(d.path().join(format!("{n}.toml")), text).unwrap();
    }
    d
}

#[test]
fn the_selection_errors_name_what_exists() {
    let d = files_dir(&["r0", "r1"]);
    let run = d.path().join("run");
    let h = Host {
        config_dir: d.path(),
        run_dir: &run,
    };
    let o = h.run(0, &["primary", "r7"]);
    assert!(!o.status.success());
    let e = err(&o);
    assert!(e.contains("no resource `r7`"), "{e}");
    assert!(e.contains("the resources there are: r0, r1"), "{e}");
    let o = h.run(0, &["secondary"]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("several resources (r0, r1)"),
        "{}",
        err(&o)
    );

    // RESOURCE with --config must be the file's resource.
    let r0: PathBuf = d.path().join("r0.toml");
    let o = h.run(0, &["--config", r0.to_str().unwrap(), "dump", "r1"]);
    assert!(!o.status.success());
    let e = err(&o);
    assert!(e.contains("resource `r1` was named"), "{e}");
    assert!(e.contains("configures resource `r0`"), "{e}");
    for sel in ["r0", "all"] {
        h.ok(0, &["--config", r0.to_str().unwrap(), "dump", sel]);
    }

    // `dump` of all: each file in turn; JSON one object per line.
    let all = h.ok(0, &["dump"]);
    assert_eq!(all.matches("[resource]\nname = ").count(), 2, "{all}");
    assert!(
        all.find("name = \"r0\"") < all.find("name = \"r1\""),
        "{all}"
    );
    let json: Vec<Value> = h
        .ok(0, &["dump", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 2);
    assert_eq!(json[1]["resource"]["name"], "r1");

    // A file named for another resource is refused, naming both; `all`
    // still dumps the others and exits 1.
    std::fs::copy(&r0, d.path().join("r2.toml")).unwrap();
    let o = h.run(0, &["dump"]);
    assert!(!o.status.success());
    let e = err(&o);
    assert!(e.contains("r2: "), "{e}");
    assert!(e.contains("named for resource `r2`"), "{e}");
    assert!(e.contains("[resource] name is `r0`"), "{e}");
    assert_eq!(out(&o), all, "r0 and r1 are dumped all the same");
    let o = h.run(0, &["dump", "r2"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("named for resource `r2`"), "{}", err(&o));

    let nope = d.path().join("nope");
    let o = Host {
        config_dir: &nope,
        run_dir: &run,
    }
    .run(0, &["status"]);
    assert!(!o.status.success());
    let e = err(&o);
    assert!(e.contains("cannot read the configuration directory"), "{e}");
    assert!(e.contains("--config-dir DIR"), "{e}");
}

#[test]
fn one_resource_in_the_directory_behaves_as_before() {
    let d = files_dir(&["r0"]);
    let run = d.path().join("run");
    let h = Host {
        config_dir: d.path(),
        run_dir: &run,
    };
    let r0 = d.path().join("r0.toml");
    for args in [&["dump"][..], &["dump", "--json"]] {
        let by_dir = h.ok(0, args);
        let mut with_file = vec!["--config", r0.to_str().unwrap()];
        with_file.extend_from_slice(args);
        assert_eq!(by_dir, h.ok(0, &with_file), "{args:?}");
    }
    // A verb without a name acts on the only resource; a daemon verb says
    // its repd does not run, as it did with the default --config.
    let o = h.run(0, &["secondary"]);
    assert!(!o.status.success());
    let e = err(&o);
    assert!(e.starts_with("repctl: error: no repd is running"), "{e}");
    let o = h.run(0, &["status", "--json"]);
    assert!(!o.status.success(), "one resource not running is an error");
}
