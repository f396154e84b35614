//! fio's nbd engine driving a node's export at queue depth 1, as the
//! latency and resync-controller suites measure application writes.

use serde_json::Value;

use super::Cluster;

/// fio's 4 KiB random writes at queue depth 1 through node 0's NBD export
/// (a 16 MiB region), run under `wrapper` (such as `chrt --fifo 10`, or
/// nothing) and ended by `end` (`--number_ios=N`, or `--time_based` with
/// `--runtime=S`). Returns fio's report of the writes (`jobs[0].write`).
pub fn fio_qd1_randwrite(c: &Cluster, wrapper: &[&str], end: &[&str]) -> Value {
    super::require("fio", "fio");
    let uri = format!("--uri={}", c.nbd_uri(0));
    let mut args: Vec<&str> = wrapper.iter().skip(1).copied().collect();
    let program = wrapper.first().copied().unwrap_or("fio");
    if !wrapper.is_empty() {
        args.push("fio");
    }
    args.extend([
        "--name=qd1-4k",
        "--ioengine=nbd",
        &uri,
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=1",
        "--size=16M",
        "--output-format=json",
    ]);
    args.extend(end);
    let o = c.client(0, program, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rep_testkit::fio_json(&o)["jobs"][0]["write"].clone()
}
