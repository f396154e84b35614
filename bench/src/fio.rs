//! fio: the command line of a write workload and its JSON result.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One fio workload (a single job, one thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Short name, used as fio's job name and in file names.
    pub name: &'static str,
    /// What the table calls it.
    pub title: &'static str,
    pub rw: &'static str,
    pub bs: &'static str,
    pub iodepth: u32,
}

pub const RANDWRITE_4K_QD32: Workload = Workload {
    name: "randwrite-4k-qd32",
    title: "4k random write, QD32",
    rw: "randwrite",
    bs: "4k",
    iodepth: 32,
};

pub const SEQWRITE_1M_QD4: Workload = Workload {
    name: "write-1m-qd4",
    title: "1M sequential write, QD4",
    rw: "write",
    bs: "1M",
    iodepth: 4,
};

impl Workload {
    /// The fio options that define it, as the table header shows them.
    pub fn options(&self) -> String {
        format!(
            "--rw={} --bs={} --iodepth={}",
            self.rw, self.bs, self.iodepth
        )
    }

    /// fio over NBD with the nbd engine; the JSON goes to `json_out`.
    pub fn command(&self, uri: &str, runtime_s: u64, ramp_s: u64, json_out: &Path) -> Command {
        let mut c = Command::new("fio");
        c.arg(format!("--name={}", self.name))
            .arg("--ioengine=nbd")
            .arg(format!("--uri={uri}"))
            .arg(format!("--rw={}", self.rw))
            .arg(format!("--bs={}", self.bs))
            .arg(format!("--iodepth={}", self.iodepth))
            .arg("--time_based")
            .arg(format!("--runtime={runtime_s}"))
            .arg(format!("--ramp_time={ramp_s}"))
            .arg("--output-format=json")
            .arg(format!("--output={}", json_out.display()));
        c
    }
}

/// What a write workload achieved, summed over fio's jobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteResult {
    pub iops: f64,
    /// Bytes per second.
    pub bw_bytes: f64,
    /// 99th percentile of the completion latency, in microseconds.
    pub p99_us: f64,
    /// fio's own CPU use (user + system), in % of one core.
    pub fio_cpu_pct: f64,
}

impl WriteResult {
    /// Decimal megabytes per second, as fio prints "MB/s".
    pub fn mb_s(&self) -> f64 {
        self.bw_bytes / 1e6
    }
}

fn num(v: Option<&Value>, what: &str) -> Result<f64, String> {
    v.and_then(Value::as_f64)
        .ok_or_else(|| format!("fio JSON: {what} is missing or not a number"))
}

/// Read fio's `--output-format=json` text. Anything before the JSON object
/// (the nbd engine prints "fio: connected to NBD server" on stdout) is
/// skipped. With several jobs, IOPS and bandwidth add up and the p99 is the
/// worst job's.
pub fn parse_write(text: &str) -> Result<WriteResult, String> {
    let start = text
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| text.starts_with('{').then_some(0));
    let json = start
        .and_then(|i| text.get(i..))
        .ok_or("fio printed no JSON object")?;
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("fio JSON does not parse: {e}"))?;
    let jobs = v
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or("fio JSON has no \"jobs\" array")?;
    if jobs.is_empty() {
        return Err("fio JSON has no job".into());
    }
    let mut r = WriteResult {
        iops: 0.0,
        bw_bytes: 0.0,
        p99_us: 0.0,
        fio_cpu_pct: 0.0,
    };
    for job in jobs {
        let name = job.get("jobname").and_then(Value::as_str).unwrap_or("?");
        let err = job.get("error").and_then(Value::as_i64).unwrap_or(0);
        if err != 0 {
            return Err(format!("fio job {name} failed with error {err}"));
        }
        let w = job
            .get("write")
            .ok_or_else(|| format!("fio job {name} has no write section"))?;
        r.iops += num(w.get("iops"), "write.iops")?;
        r.bw_bytes += num(w.get("bw_bytes"), "write.bw_bytes")?;
        let p99 = w.pointer("/clat_ns/percentile/99.000000").and_then(Value::as_f64).ok_or_else(|| {
            format!("fio job {name}: no write clat_ns percentile 99.000000 (did no write complete?)")
        })?;
        r.p99_us = r.p99_us.max(p99 / 1000.0);
        r.fio_cpu_pct += num(job.get("usr_cpu"), "usr_cpu")? + num(job.get("sys_cpu"), "sys_cpu")?;
    }
    if r.iops <= 0.0 {
        return Err("fio completed no write".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real fio 3.33 result (nbd engine, 4k randwrite QD32 against repd),
    /// trimmed to the fields that matter, with the line the engine prints.
    const SAMPLE: &str = r#"fio: connected to NBD server
{
  "fio version" : "fio-3.33",
  "timestamp" : 1795366248,
  "jobs" : [
    {
      "jobname" : "w",
      "groupid" : 0,
      "error" : 0,
      "job options" : {
        "ioengine" : "nbd",
        "uri" : "nbd://127.0.0.1:17809/r0",
        "rw" : "randwrite",
        "bs" : "4k",
        "iodepth" : "32"
      },
      "read" : {
        "io_bytes" : 0,
        "bw_bytes" : 0,
        "iops" : 0.000000,
        "clat_ns" : { "min" : 0, "max" : 0, "mean" : 0.000000, "stddev" : 0.000000, "N" : 0 }
      },
      "write" : {
        "io_bytes" : 105107456,
        "io_kbytes" : 102644,
        "bw_bytes" : 21008885,
        "bw" : 20516,
        "iops" : 5122.926244,
        "runtime" : 5003,
        "total_ios" : 25630,
        "clat_ns" : {
          "min" : 232169,
          "max" : 42025166,
          "mean" : 6225048.509684,
          "stddev" : 5096917.934589,
          "N" : 25661,
          "percentile" : {
            "1.000000" : 1302528,
            "50.000000" : 4489216,
            "90.000000" : 13434880,
            "99.000000" : 23461888,
            "99.900000" : 39583744
          }
        }
      },
      "job_runtime" : 5002,
      "usr_cpu" : 3.478609,
      "sys_cpu" : 5.197921,
      "ctx" : 8287
    }
  ]
}
"#;

    #[test]
    fn parses_a_real_fio_result() {
        let r = parse_write(SAMPLE).expect("parses");
        assert!((r.iops - 5122.926244).abs() < 1e-6);
        assert!((r.bw_bytes - 21008885.0).abs() < 1e-6);
        assert!((r.p99_us - 23461.888).abs() < 1e-6);
        assert!((r.mb_s() - 21.008885).abs() < 1e-6);
        assert!((r.fio_cpu_pct - 8.67653).abs() < 1e-6);
        // Without the engine's line in front, too.
        let bare = SAMPLE.split_once('\n').map(|(_, j)| j).unwrap_or_default();
        assert_eq!(parse_write(bare), Ok(r));
    }

    #[test]
    fn reports_what_is_wrong() {
        assert!(parse_write("fio: connected to NBD server\n").is_err());
        let failed = SAMPLE.replace("\"error\" : 0", "\"error\" : 5");
        assert!(parse_write(&failed).unwrap_err().contains("error 5"));
        let no_p99 = SAMPLE.replace("\"99.000000\"", "\"98.000000\"");
        assert!(parse_write(&no_p99).unwrap_err().contains("99.000000"));
        assert!(parse_write("{\"jobs\": []}").is_err());
    }
}
