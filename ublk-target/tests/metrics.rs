//! The Prometheus endpoint of two real `repd`s (`[[node]] metrics` in the
//! resource file), scraped over HTTP and read with two real parsers of the
//! text format: `promtool check metrics` (Debian's `prometheus`) and the
//! Python client's `text_string_to_metric_families`
//! (`python3-prometheus-client`). The numbers must move with a write
//! workload through the NBD export, a disconnect, a resync and role
//! changes; a real Prometheus server scrapes it too.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::float_cmp
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_ports, random_file, require, Cluster, Opts};
use serde_json::Value;

/// Debian's Python, where `python3-prometheus-client` installs (a `python3`
/// earlier on PATH, such as a pyenv shim, does not see Debian's modules).
const PYTHON: &str = "/usr/bin/python3";

/// Fail loudly when a parser is missing: a skipped check passes unnoticed.
fn parsers() {
    require("promtool", "prometheus");
    require("nbdcopy", "libnbd-bin");
    require("qemu-io", "qemu-utils");
    let ok = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "/usr/bin/python3 has no prometheus_client: apt-get install -y python3-prometheus-client \
         (scripts/test-all.sh does it)"
    );
}

/// A cluster whose nodes serve metrics on ports of their own (both run on
/// this host, so one `[metrics] listen` for both would clash).
fn cluster_with_metrics(o: Opts) -> (Cluster, [u16; 2]) {
    let c = Cluster::new(o);
    let ports = free_ports::<2>();
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    let mut out = String::new();
    let mut i = 0;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("nbd = ") {
            out.push_str(&format!("metrics = \"127.0.0.1:{}\"\n", ports[i]));
            i += 1;
        }
    }
    assert_eq!(i, 2, "{text}");
    std::fs::write(&c.config[0], out).unwrap();
    (c, ports)
}

/// One HTTP request; the status line, the head and the body.
fn http(port: u16, request: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, head.to_owned(), body.to_owned())
}

/// The samples of one scrape, as the Python client's parser read them.
struct Scrape {
    text: String,
    samples: Vec<Value>,
}

impl Scrape {
    /// The value of the one sample `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Value> = self
            .samples
            .iter()
            .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in\n{}", self.text);
        found[0]["value"].as_f64().unwrap()
    }
}

/// GET /metrics from `port`, checked by both parsers.
fn scrape(c: &Cluster, port: u16) -> Scrape {
    let (status, head, body) = http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let file = c.dir.path().join(format!("scrape-{port}.txt"));
    std::fs::write(&file, &body).unwrap();
    // promtool reads the exposition from stdin; lint findings fail it too.
    let o = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let py = "import sys, json\n\
              from prometheus_client.parser import text_string_to_metric_families as f\n\
              for fam in f(open(sys.argv[1]).read()):\n\
              \x20   for s in fam.samples:\n\
              \x20       print(json.dumps({'family': fam.name, 'type': fam.type, 'name': s.name, 'labels': s.labels, 'value': s.value}))\n";
    let o = Command::new(PYTHON)
        .args(["-c", py, file.to_str().unwrap()])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "prometheus_client parser: {}\n{body}",
        String::from_utf8_lossy(&o.stderr)
    );
    let samples = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Scrape {
        text: body,
        samples,
    }
}

fn one_of(s: &Scrape, family: &str, extra: &[(&str, &str)], value: &str) -> bool {
    let mut l = extra.to_vec();
    l.push((family, value));
    s.get(family, &l) == 1.0
}

fn write_count(s: &Scrape, name: &str) -> f64 {
    s.get(&format!("{name}_count"), &[("op", "write")])
}

/// The nodes' ports and the cluster, for the phases below.
struct Pair {
    c: Cluster,
    port: [u16; 2],
}

impl Pair {
    fn scrape(&self, i: usize) -> Scrape {
        scrape(&self.c, self.port[i])
    }

    /// Writes `bytes` of random data at offset 0 through node 0's export.
    fn write(&self, name: &str, bytes: usize, seed: u64) -> std::path::PathBuf {
        let src = random_file(self.c.dir.path(), name, bytes, seed);
        self.c.nbd_write(0, &src);
        self.c
            .wait(0, "the NBD client gone", 10, |s| s["nbd_clients"] == 0);
        src
    }
}

#[test]
fn metrics_parse_and_move_with_writes_a_resync_and_roles() {
    parsers();
    let o = Opts {
        disk_mib: 24,
        rate: "4M",
        ..Opts::default()
    };
    let (c, port) = cluster_with_metrics(o);
    let dump = c.ok(0, &["dump"]);
    assert!(
        dump.contains(&format!("metrics = \"127.0.0.1:{}\"", port[1])),
        "{dump}"
    );
    let p = Pair { c, port };
    initial_sync_shows_progress(&p);
    let before = [p.scrape(0), p.scrape(1)];
    let src = p.write("w.bin", 4 << 20, 7);
    writes_move_counters_and_histograms(&p, &before);
    reads_move_the_read_histograms(&p, &src);
    a_disconnected_write_is_out_of_sync_until_the_resync(&p);
    roles_follow_repctl(&p);
}

/// Up both, alpha forced Primary: the full sync (24 MiB at 4 MiB/s) shows its
/// progress while it runs, then the pair is Connected and UpToDate.
fn initial_sync_shows_progress(p: &Pair) {
    p.c.up(0);
    p.c.up(1);
    let s = p.scrape(0);
    assert!(one_of(&s, "rep_resource_role", &[], "Secondary"));
    assert_eq!(s.get("rep_resource_split_brain", &[]), 0.0);
    p.c.ok(0, &["primary", "--force"]);
    let t0 = Instant::now();
    loop {
        let s = p.scrape(0);
        if s.get("rep_peerdevice_sync_active", &[("kind", "resync")]) == 1.0 {
            assert!(one_of(&s, "rep_connection_state", &[], "SyncSource"));
            assert!(s.get("rep_peerdevice_sync_remaining_bytes", &[]) > 0.0);
            assert!(s.get("rep_peerdevice_sync_total_bytes", &[]) > 0.0);
            assert!(s.get("rep_peerdevice_sync_progress_ratio", &[]) < 1.0);
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no resync seen:\n{}",
            s.text
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.c.wait_synced(60);
    let (b, b1) = (p.scrape(0), p.scrape(1));
    assert!(one_of(
        &b,
        "rep_resource_role",
        &[("name", "r0")],
        "Primary"
    ));
    let beta = [("conn_name", "beta")];
    assert!(one_of(&b, "rep_connection_state", &beta, "Connected"));
    assert!(one_of(&b, "rep_connection_peer_role", &[], "Secondary"));
    assert!(one_of(
        &b,
        "rep_device_state",
        &[("minor", "0")],
        "UpToDate"
    ));
    assert!(one_of(&b, "rep_peerdevice_state", &[], "UpToDate"));
    assert_eq!(b.get("rep_peerdevice_outofsync_bytes", &[]), 0.0);
    assert_eq!(b.get("rep_peerdevice_sync_progress_ratio", &[]), 1.0);
    assert!(b.get("rep_peerdevice_resync_sent_bytes_total", &[]) > 0.0);
    assert!(b1.get("rep_peerdevice_resync_received_bytes_total", &[]) > 0.0);
}

/// After 4 MiB written through the export (`before`: the scrapes of both
/// nodes before it): bytes on both sides, and every write histogram.
fn writes_move_counters_and_histograms(p: &Pair, before: &[Scrape; 2]) {
    let after = [p.scrape(0), p.scrape(1)];
    let (a, b) = (&after[0], &before[0]);
    let grew = |n: &str, i: usize| after[i].get(n, &[]) - before[i].get(n, &[]);
    assert!(grew("rep_device_written_bytes_total", 0) >= (4 << 20) as f64);
    assert!(grew("rep_peerdevice_sent_bytes_total", 0) >= (4 << 20) as f64);
    assert!(grew("rep_peerdevice_received_bytes_total", 1) >= (4 << 20) as f64);
    assert!(grew("rep_device_written_bytes_total", 1) >= (4 << 20) as f64);
    for h in [
        "rep_device_request_seconds",
        "rep_device_local_completion_seconds",
        "rep_peerdevice_completion_seconds",
    ] {
        assert!(write_count(a, h) > write_count(b, h), "{h}:\n{}", a.text);
        let inf = a.get(&format!("{h}_bucket"), &[("op", "write"), ("le", "+Inf")]);
        assert_eq!(inf, write_count(a, h), "{h}");
        assert!(a.get(&format!("{h}_sum"), &[("op", "write")]) > 0.0, "{h}");
    }
    // The per-stage breakdown: every write stage of protocol C counted
    // the workload's writes, its fine buckets summed up to +Inf.
    let k = "rep_device_stage_seconds";
    for stage in [
        "frontend_in",
        "al_wait",
        "local_io",
        "peer",
        "peer_after_local",
        "frontend_out",
    ] {
        let l = [("op", "write"), ("stage", stage)];
        let n = |s: &Scrape| s.get(&format!("{k}_count"), &l);
        assert!(n(a) > n(b), "{stage}:\n{}", a.text);
        let inf = a.get(&format!("{k}_bucket"), &[l[0], l[1], ("le", "+Inf")]);
        assert_eq!(inf, n(a), "{stage}");
        let us = a.get(&format!("{k}_bucket"), &[l[0], l[1], ("le", "0.000001")]);
        assert!(us <= inf, "{stage}");
    }
    // The workload's first write found its extent outside the activity
    // log (empty after create-md): a miss, and a transaction for it.
    assert!(a.get("rep_device_almisses_total", &[]) >= 1.0, "{}", a.text);
    assert!(a.get("rep_device_alwrites_total", &[]) >= 1.0, "{}", a.text);
}

/// Reading `src` back through the export: timed, and counted as read bytes.
fn reads_move_the_read_histograms(p: &Pair, src: &std::path::Path) {
    let before = p.scrape(0);
    p.c.nbd_reads_back(0, src);
    p.c.wait(0, "the NBD client gone", 10, |s| s["nbd_clients"] == 0);
    let r = p.scrape(0);
    for h in [
        "rep_device_request_seconds",
        "rep_device_local_completion_seconds",
    ] {
        let count = |s: &Scrape| s.get(&format!("{h}_count"), &[("op", "read")]);
        assert!(count(&r) > count(&before), "{h}:\n{}", r.text);
    }
    let read = |s: &Scrape| s.get("rep_device_read_bytes_total", &[]);
    assert!(read(&r) - read(&before) >= (4 << 20) as f64);
}

/// Disconnected, a write leaves bytes out of sync; the resync after the
/// reconnect sends them and brings the count back to 0.
fn a_disconnected_write_is_out_of_sync_until_the_resync(p: &Pair) {
    p.c.ok(0, &["disconnect"]);
    let s = p.scrape(0);
    assert!(one_of(&s, "rep_connection_state", &[], "StandAlone"));
    assert!(one_of(&s, "rep_connection_peer_role", &[], "Unknown"));
    p.write("w2.bin", 1 << 20, 8);
    let s = p.scrape(0);
    let oos = s.get("rep_peerdevice_outofsync_bytes", &[]);
    assert!(oos >= (1 << 20) as f64, "{}", s.text);
    let resynced = s.get("rep_peerdevice_resync_sent_bytes_total", &[]);
    p.c.ok(0, &["connect"]);
    p.c.wait_synced(60);
    let s = p.scrape(0);
    assert_eq!(s.get("rep_peerdevice_outofsync_bytes", &[]), 0.0);
    let sent = s.get("rep_peerdevice_resync_sent_bytes_total", &[]);
    assert!(sent >= resynced + (1 << 20) as f64, "{}", s.text);
}

/// The role gauges follow `repctl secondary` and `repctl primary`.
fn roles_follow_repctl(p: &Pair) {
    p.c.ok(0, &["secondary"]);
    p.c.ok(1, &["primary"]);
    let (s0, s1) = (p.scrape(0), p.scrape(1));
    assert!(one_of(&s0, "rep_resource_role", &[], "Secondary"));
    assert!(one_of(&s0, "rep_connection_peer_role", &[], "Primary"));
    assert!(one_of(&s1, "rep_resource_role", &[], "Primary"));
    let alpha = [("conn_name", "alpha")];
    assert!(one_of(&s1, "rep_connection_state", &alpha, "Connected"));
    p.c.ok(1, &["secondary"]);
}

/// Only GET/HEAD of /metrics is served; malformed, oversized and silent
/// clients get an answer or are dropped without holding the endpoint.
#[test]
fn the_endpoint_refuses_what_is_not_a_scrape() {
    parsers();
    let (c, port) = cluster_with_metrics(Opts::default());
    c.up(0);
    let p = port[0];
    let (st, _, body) = http(p, "GET / HTTP/1.1\r\n\r\n");
    assert!(st.starts_with("HTTP/1.1 404"), "{st}");
    assert!(body.contains("/metrics"), "{body}");
    let (st, head, _) = http(p, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(st.starts_with("HTTP/1.1 405"), "{st}");
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (st, _, _) = http(p, "hello\r\n\r\n");
    assert!(st.starts_with("HTTP/1.1 400"), "{st}");
    let big = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(big.as_bytes());
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let (st, head, body) = http(p, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(st.starts_with("HTTP/1.1 200"), "{st}");
    assert!(head.contains("Content-Length: "), "{head}");
    assert!(body.is_empty());

    // A client that connects and says nothing holds the endpoint at most
    // its deadline: a scrape behind it is still answered.
    let _silent = TcpStream::connect(("127.0.0.1", p)).unwrap();
    let t0 = Instant::now();
    let s = scrape(&c, p);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(one_of(&s, "rep_resource_role", &[], "Secondary"));
}

/// A metrics port in use stops repd at start, with the key to change:
/// a node's own `metrics` key, and `[metrics] listen` (which the node
/// without a key of its own then serves on, once the port is free).
#[test]
fn a_metrics_port_in_use_fails_the_start_naming_the_key() {
    parsers();
    let (c, port) = cluster_with_metrics(Opts::default());
    let taken = std::net::TcpListener::bind(("127.0.0.1", port[0])).unwrap();
    let o = c.repctl(0, &["up"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("`node[0].metrics`") && err.contains(&port[0].to_string()),
        "{err}"
    );
    drop(taken);

    let c = Cluster::new(Opts::default());
    let [shared] = free_ports::<1>();
    let mut text = std::fs::read_to_string(&c.config[0]).unwrap();
    text.push_str(&format!("[metrics]\nlisten = \"127.0.0.1:{shared}\"\n"));
    std::fs::write(&c.config[0], text).unwrap();
    let taken = std::net::TcpListener::bind(("127.0.0.1", shared)).unwrap();
    let o = c.repctl(0, &["up"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("`metrics.listen`"), "{err}");
    drop(taken);
    c.up(0);
    let s = scrape(&c, shared);
    assert!(one_of(&s, "rep_resource_role", &[], "Secondary"));
}

/// A real Prometheus server (Debian's `prometheus`) scrapes a repd every
/// second: the target is up and its series are queryable.
#[test]
fn a_prometheus_server_scrapes_repd() {
    parsers();
    require("prometheus", "prometheus");
    let (c, port) = cluster_with_metrics(Opts::default());
    c.up(0);
    let [web] = free_ports::<1>();
    let dir = c.dir.path();
    let yml = dir.join("prometheus.yml");
    std::fs::write(
        &yml,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: rep\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            port[0]
        ),
    )
    .unwrap();
    let _server = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", yml.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> Option<Value> {
        // Not listening yet: no answer.
        TcpStream::connect(("127.0.0.1", web)).ok()?;
        let req =
            format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, _, body) = http(web, &req);
        if !status.contains(" 200 ") {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let first = v["data"]["result"].get(0)?.clone();
        Some(first)
    };
    let t0 = Instant::now();
    let found = loop {
        // up{job="rep"} == 1 and the role series, once scraped.
        let up = query("up");
        let role = query("rep_resource_role%7Brep_resource_role%3D%22Secondary%22%7D");
        if let (Some(up), Some(role)) = (up, role) {
            if up["value"][1] == "1" && role["value"][1] == "1" {
                break Some(role);
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let role = found.unwrap_or_else(|| panic!("Prometheus never scraped repd:\n{log}"));
    assert_eq!(role["metric"]["name"], "r0", "{role}");
    assert_eq!(role["metric"]["job"], "rep", "{role}");
}

/// A child process killed (and reaped) when the test ends, also by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
