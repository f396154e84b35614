//! What nbd-bench prints: each run's figures, the Markdown tables of the
//! medians, the ratios against the target, repd's peak RSS.

use std::fmt::Write as _;

use bench::fio::{Workload, WriteResult};
use bench::procfs::{self, CpuUsage};
use bench::rep::field;
use bench::util::{human_bytes, median};

use super::setup::Target;
use super::{Kind, C_VS_STANDALONE_TARGET, KINDS};

/// One fio run's figures.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) fio: WriteResult,
    pub(crate) cpu: Option<CpuUsage>,
    pub(crate) names: Vec<(u32, String)>,
}

impl Sample {
    pub(crate) fn server_cpu(&self) -> String {
        self.cpu
            .as_ref()
            .map_or("-".into(), |c| format!("{:.0}%", c.total_pct()))
    }

    pub(crate) fn busiest(&self) -> String {
        let Some((pid, comm, pct)) = self.cpu.as_ref().and_then(|c| c.busiest.clone()) else {
            return "-".into();
        };
        let who = self
            .names
            .iter()
            .find(|(p, _)| *p == pid)
            .map_or("?", |(_, n)| n.as_str());
        format!("{who}:{comm} {pct:.0}%")
    }

    /// Server CPU time per completed I/O, in µs.
    pub(crate) fn cpu_per_io(&self) -> String {
        match &self.cpu {
            Some(c) if self.fio.iops > 0.0 => {
                format!("{:.0}", c.total_pct() / 100.0 * 1e6 / self.fio.iops)
            }
            _ => "-".into(),
        }
    }

    pub(crate) fn host_cpu(&self) -> String {
        self.cpu
            .as_ref()
            .and_then(|c| c.host_pct)
            .map_or("-".into(), |h| format!("{h:.0}%"))
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.decimals$}"))
}

/// A Markdown table with aligned columns; a header starting with '<' is
/// left-aligned (the '<' is dropped), the others right-aligned.
fn md_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let left: Vec<bool> = headers.iter().map(|h| h.starts_with('<')).collect();
    let heads: Vec<String> = headers
        .iter()
        .map(|h| h.trim_start_matches('<').to_string())
        .collect();
    let mut width: Vec<usize> = heads.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut l = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            let pad = " ".repeat(w.saturating_sub(c.chars().count()));
            if left.get(i).copied().unwrap_or(true) {
                let _ = write!(l, " {c}{pad} |");
            } else {
                let _ = write!(l, " {pad}{c} |");
            }
        }
        l.push('\n');
        l
    };
    let mut s = line(&heads);
    let rule: Vec<String> = width
        .iter()
        .zip(&left)
        .map(|(w, l)| {
            if *l {
                format!(":{}", "-".repeat(w.saturating_sub(1)))
            } else {
                format!("{}:", "-".repeat(w.saturating_sub(1)))
            }
        })
        .collect();
    s.push_str(&line(&rule));
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

/// One workload's samples by kind (in `KINDS` order), and their medians.
struct Medians<'a> {
    per_kind: &'a [Vec<Sample>],
}

impl Medians<'_> {
    fn samples(&self, k: Kind) -> &[Sample] {
        KINDS
            .iter()
            .position(|x| *x == k)
            .and_then(|i| self.per_kind.get(i))
            .map_or(&[], Vec::as_slice)
    }

    fn med(&self, k: Kind, f: fn(&WriteResult) -> f64) -> Option<f64> {
        let v: Vec<f64> = self.samples(k).iter().map(|s| f(&s.fio)).collect();
        median(&v)
    }

    /// The round with the median IOPS: the CPU columns come from it.
    fn median_sample(&self, k: Kind) -> Option<Sample> {
        let mut v = self.samples(k).to_vec();
        v.sort_by(|a, b| a.fio.iops.total_cmp(&b.fio.iops));
        let mid = v.len().saturating_sub(1) / 2;
        v.get(mid).cloned()
    }

    fn iops(&self, k: Kind) -> Option<f64> {
        self.med(k, |r| r.iops)
    }
}

/// The table of one workload: medians over the rounds.
pub(crate) fn table(
    w: &Workload,
    per_kind: &[Vec<Sample>],
    kinds: &[Kind],
    targets: &[Target],
    rounds: u32,
) -> String {
    let m = Medians { per_kind };
    let rows: Vec<Vec<String>> = kinds.iter().map(|&k| row(&m, k, targets)).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## {} (fio {}, ioengine=nbd, 1 job; median of {rounds} round{})\n",
        w.title,
        w.options(),
        if rounds == 1 { "" } else { "s" }
    );
    s.push_str(&md_table(
        &[
            "<target",
            "IOPS",
            "MB/s",
            "p99 µs",
            "×nbdkit",
            "×nbdkit nc",
            "server CPU",
            "CPU µs/IO",
            "<busiest server thread",
            "wr amp",
            "host CPU",
            "fio CPU",
        ],
        &rows,
    ));
    let _ = writeln!(s);
    s.push_str(&ratio_lines(&m, kinds));
    s
}

/// Kind `k`'s row of the table (why it has no figures, if it has none).
fn row(m: &Medians, k: Kind, targets: &[Target]) -> Vec<String> {
    let Some(ms) = m.median_sample(k) else {
        let why = if targets.iter().any(|t| t.kind == k) {
            "run failed"
        } else {
            "setup failed"
        };
        let mut r = vec![k.label().to_string(), why.to_string()];
        r.resize(12, String::new());
        return r;
    };
    // Only repd's O_DIRECT writes are counted exactly; for nbdkit's
    // buffered writes the kernel counts whole (large) page-cache folios.
    let amp = ms
        .cpu
        .as_ref()
        .and_then(|c| c.written_per_s)
        .filter(|_| !matches!(k, Kind::Nbdkit | Kind::NbdkitNoCache))
        .map(|b| b / ms.fio.bw_bytes);
    vec![
        k.label().to_string(),
        fmt_opt(m.iops(k), 0),
        fmt_opt(m.med(k, WriteResult::mb_s), 1),
        fmt_opt(m.med(k, |r| r.p99_us), 0),
        fmt_opt(ratio(m.iops(k), m.iops(Kind::Nbdkit)), 2),
        fmt_opt(ratio(m.iops(k), m.iops(Kind::NbdkitNoCache)), 2),
        ms.server_cpu(),
        ms.cpu_per_io(),
        ms.busiest(),
        fmt_opt(amp, 2),
        ms.host_cpu(),
        format!("{:.0}%", ms.fio.fio_cpu_pct),
    ]
}

/// The ratio lines under the table, only for targets that were selected
/// (--targets).
fn ratio_lines(m: &Medians, kinds: &[Kind]) -> String {
    let iops = |k: Kind| m.iops(k);
    let mut s = String::new();
    let both = |a: Kind, b: Kind| kinds.contains(&a) && kinds.contains(&b);
    let with_target = |num: Kind, what: &str| {
        let c = ratio(iops(num), iops(Kind::StandAlone));
        format!(
            "{what} / StandAlone (IOPS): {} — target >= {C_VS_STANDALONE_TARGET:.1}: {}",
            fmt_opt(c, 2),
            verdict(c)
        )
    };
    if both(Kind::RepC, Kind::StandAlone) {
        let _ = writeln!(s, "{}", with_target(Kind::RepC, "protocol C"));
    }
    if both(Kind::RepCPeerOwn, Kind::StandAlone) {
        let _ = writeln!(
            s,
            "{}",
            with_target(Kind::RepCPeerOwn, "protocol C, peer on --peer-dir")
        );
    }
    if both(Kind::RepCTls, Kind::RepC) {
        let _ = writeln!(
            s,
            "protocol C over TLS / plain protocol C (IOPS): {} (what TLS on the link costs)",
            fmt_opt(ratio(iops(Kind::RepCTls), iops(Kind::RepC)), 2)
        );
    }
    if both(Kind::RepCPsk, Kind::RepC) {
        let _ = writeln!(
            s,
            "protocol C over TLS-PSK / plain protocol C (IOPS): {} (the same with a pre-shared key, OpenSSL)",
            fmt_opt(ratio(iops(Kind::RepCPsk), iops(Kind::RepC)), 2)
        );
    }
    if both(Kind::FloorC, Kind::FloorStandAlone) {
        let _ = writeln!(
            s,
            "floor-pair C / floor-pair StandAlone (IOPS): {} (what a second copy costs here, with no engine)",
            fmt_opt(ratio(iops(Kind::FloorC), iops(Kind::FloorStandAlone)), 2)
        );
    }
    for c in [Kind::RepC, Kind::RepCPeerOwn] {
        if both(c, Kind::FloorC) {
            let _ = writeln!(
                s,
                "{} / floor-pair C (IOPS): {}",
                c.label(),
                fmt_opt(ratio(iops(c), iops(Kind::FloorC)), 2)
            );
        }
    }
    if both(Kind::RepA, Kind::StandAlone) {
        let _ = writeln!(
            s,
            "protocol A / StandAlone (IOPS): {}",
            fmt_opt(ratio(iops(Kind::RepA), iops(Kind::StandAlone)), 2)
        );
    }
    if both(Kind::StandAlone, Kind::Nbdkit) || both(Kind::StandAlone, Kind::NbdkitNoCache) {
        let _ = writeln!(
            s,
            "StandAlone / nbdkit file (IOPS): {}, / nbdkit file cache=none: {}",
            fmt_opt(ratio(iops(Kind::StandAlone), iops(Kind::Nbdkit)), 2),
            fmt_opt(ratio(iops(Kind::StandAlone), iops(Kind::NbdkitNoCache)), 2)
        );
    }
    s
}

/// Whether a protocol C / StandAlone ratio meets the target.
fn verdict(c: Option<f64>) -> &'static str {
    match c {
        Some(r) if r >= C_VS_STANDALONE_TARGET => "holds",
        Some(_) => "does NOT hold",
        None => "cannot tell (a target failed)",
    }
}

/// Peak RSS of every repd against 64 MiB + its bitmap.
pub(crate) fn rss_report(targets: &[Target]) -> String {
    let mut rows = Vec::new();
    for t in targets {
        for n in &t.nodes {
            let Some(pid) = n.pid else { continue };
            let data = n
                .status()
                .ok()
                .and_then(|st| field(&st, "data_bytes").as_u64());
            let hwm = procfs::read_vm_hwm(pid);
            let bitmap = data.map(|d| d.div_ceil(4096).div_ceil(8));
            let limit = bitmap.map(|b| (64u64 << 20) + b);
            let holds = match (&hwm, limit) {
                (Ok(h), Some(l)) if *h <= l => "yes",
                (Ok(_), Some(_)) => "NO",
                _ => "?",
            };
            rows.push(vec![
                t.kind.label().to_string(),
                n.name.clone(),
                hwm.as_ref().map_or("gone".into(), |h| human_bytes(*h)),
                bitmap.map_or("?".into(), human_bytes),
                limit.map_or("?".into(), human_bytes),
                holds.to_string(),
            ]);
        }
    }
    let mut s = String::from("\n## repd peak RSS (VmHWM, after all runs); limit: 64 MiB + bitmap (data bytes / 4096 / 8)\n\n");
    s.push_str(&md_table(
        &["<target", "<node", "VmHWM", "bitmap", "limit", "<holds"],
        &rows,
    ));
    s
}
