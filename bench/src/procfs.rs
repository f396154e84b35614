//! What /proc says: peak RSS, CPU time per process and per thread, and the
//! whole machine's CPU use.

use std::time::Instant;

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
pub const USER_HZ: f64 = 100.0;

/// `VmHWM` (peak resident set size) of a /proc/PID/status text, in bytes.
pub fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut it = line.split_whitespace().skip(1);
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => n.checked_mul(1024),
        _ => None,
    }
}

/// Peak RSS of a running process, in bytes.
pub fn read_vm_hwm(pid: u32) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    vm_hwm_bytes(&text).ok_or_else(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// The command name and utime + stime (ticks) of a /proc/.../stat line.
pub fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After ") ": state(3) ppid(4) ... utime(14) stime(15).
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// `write_bytes` (bytes sent to the storage layer) of a /proc/PID/io text.
pub fn parse_io_write_bytes(io: &str) -> Option<u64> {
    let line = io.lines().find(|l| l.starts_with("write_bytes:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy and total ticks of all CPUs from /proc/stat's first line.
pub fn parse_cpu_line(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// One thread's CPU time at one moment.
#[derive(Debug, Clone)]
pub struct ThreadTime {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub ticks: u64,
}

/// CPU times of some processes (whole process, including exited threads)
/// and of each of their live threads, plus the machine's, at one moment.
#[derive(Debug, Clone)]
pub struct CpuSample {
    pub at: Instant,
    pub procs: Vec<(u32, u64)>,
    pub threads: Vec<ThreadTime>,
    pub host: Option<(u64, u64)>,
    /// Bytes written to storage by each process so far (/proc/PID/io).
    pub written: Vec<(u32, u64)>,
}

pub fn sample(pids: &[u32]) -> CpuSample {
    let at = Instant::now();
    let mut procs = Vec::new();
    let mut threads = Vec::new();
    let mut written = Vec::new();
    for &pid in pids {
        if let Some(w) = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .as_deref()
            .and_then(parse_io_write_bytes)
        {
            written.push((pid, w));
        }
        if let Some((_, t)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            procs.push((pid, t));
        }
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            if let Some((comm, ticks)) = parse_stat(&stat) {
                threads.push(ThreadTime {
                    pid,
                    tid,
                    comm,
                    ticks,
                });
            }
        }
    }
    let host = std::fs::read_to_string("/proc/stat")
        .ok()
        .as_deref()
        .and_then(parse_cpu_line);
    CpuSample {
        at,
        procs,
        threads,
        host,
        written,
    }
}

/// CPU use between two samples, in % of one core.
#[derive(Debug, Clone, Default)]
pub struct CpuUsage {
    /// Per process (same order as the pids sampled).
    pub procs: Vec<(u32, f64)>,
    /// The busiest thread: pid, thread name, %.
    pub busiest: Option<(u32, String, f64)>,
    /// The whole machine (all processes, all cores; 200% = 2 cores busy).
    pub host_pct: Option<f64>,
    /// Bytes per second the processes wrote to storage (all of them together).
    pub written_per_s: Option<f64>,
}

impl CpuUsage {
    pub fn total_pct(&self) -> f64 {
        self.procs.iter().map(|(_, p)| p).sum()
    }
}

pub fn usage(a: &CpuSample, b: &CpuSample) -> CpuUsage {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return CpuUsage::default();
    }
    let pct = |ticks: u64| ticks as f64 / USER_HZ / secs * 100.0;
    let procs = b
        .procs
        .iter()
        .filter_map(|(pid, t1)| {
            let t0 = a.procs.iter().find(|(p, _)| p == pid)?.1;
            Some((*pid, pct(t1.saturating_sub(t0))))
        })
        .collect();
    let busiest = b
        .threads
        .iter()
        .filter_map(|t| {
            let t0 = a
                .threads
                .iter()
                .find(|x| x.tid == t.tid && x.pid == t.pid)?
                .ticks;
            Some((t.pid, t.comm.clone(), pct(t.ticks.saturating_sub(t0))))
        })
        .max_by(|x, y| x.2.total_cmp(&y.2));
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let host_pct = match (a.host, b.host) {
        (Some((busy0, tot0)), Some((busy1, tot1))) if tot1 > tot0 => {
            Some(busy1.saturating_sub(busy0) as f64 / (tot1 - tot0) as f64 * 100.0 * ncpu)
        }
        _ => None,
    };
    let written_per_s = (!b.written.is_empty()).then(|| {
        let bytes: u64 = b
            .written
            .iter()
            .filter_map(|(pid, w1)| {
                Some(w1.saturating_sub(a.written.iter().find(|(p, _)| p == pid)?.1))
            })
            .sum();
        bytes as f64 / secs
    });
    CpuUsage {
        procs,
        busiest,
        host_pct,
        written_per_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwm() {
        let s = "Name:\trepd\nVmPeak:\t  885092 kB\nVmHWM:\t    6292 kB\nVmRSS:\t    6100 kB\n";
        assert_eq!(vm_hwm_bytes(s), Some(6292 * 1024));
        assert_eq!(vm_hwm_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn stat_line_with_spaces_and_parens_in_the_name() {
        let s = "14040 (repd-engi (x) y) S 1 14033 14033 0 -1 4194624 100 0 0 0 181 27 0 0 20 0 12 0 5000 885092 1573 1";
        assert_eq!(parse_stat(s), Some(("repd-engi (x) y".into(), 208)));
    }

    #[test]
    fn io_written() {
        let s = "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 4096\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_io_write_bytes(s), Some(4096));
    }

    #[test]
    fn host_cpu() {
        let s = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_cpu_line(s), Some((161, 1181)));
    }
}
