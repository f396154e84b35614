//! `repctl status --latency` on the control socket: the latency breakdown
//! per request kind and stage since repd started or the last reset, with
//! its text form.

use serde::{Deserialize, Serialize};

/// repd's answer to [`super::ControlCmd::Latency`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyReply {
    pub ok: bool,
    /// The resource (repctl fills it in for `--json`).
    #[serde(default)]
    pub resource: String,
    /// Why there is no breakdown (a repd from before it answers "unknown
    /// variant `latency`").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether repd times requests (false under `repd --no-latency-stats`).
    #[serde(default)]
    pub enabled: bool,
    /// Seconds the figures cover: since repd started or the last reset.
    #[serde(default)]
    pub seconds: f64,
    /// One row per kind and stage that counted a request, kinds and
    /// stages in the order requests pass them.
    #[serde(default)]
    pub stages: Vec<StageLatency>,
}

/// One stage of one request kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageLatency {
    /// `read`, `write`, `flush`, `discard`, `write_zeroes`.
    pub kind: String,
    /// `frontend_in`, `al_wait`, `local_io`, `peer`, `peer_after_local`,
    /// `engine_other`, `frontend_out`.
    pub stage: String,
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Whether it follows the kind's other sequential stages (all but
    /// `peer`, which runs beside `local_io`): those means add up.
    pub sequential: bool,
}

impl LatencyReply {
    /// The text `repctl status --latency` prints for resource `name`.
    #[must_use]
    pub fn render(&self, name: &str) -> String {
        let mut out = format!(
            "{name} latency over the last {:.1}s (since repd started or `--reset`), in µs:\n",
            self.seconds
        );
        if !self.enabled {
            out.push_str("  not measured: repd runs with --no-latency-stats\n");
            return out;
        }
        if self.stages.is_empty() {
            out.push_str("  no requests since\n");
            return out;
        }
        out.push_str(&format!(
            "  {:<12} {:<17} {:>9} {:>10} {:>10} {:>10}\n",
            "kind", "stage", "count", "mean", "p50", "p99"
        ));
        let mut kind = "";
        for s in &self.stages {
            if s.kind != kind && !kind.is_empty() {
                out.push_str(&self.sum_line(kind));
            }
            kind = &s.kind;
            out.push_str(&format!(
                "  {:<12} {:<17} {:>9} {:>10.1} {:>10.1} {:>10.1}\n",
                s.kind, s.stage, s.count, s.mean_us, s.p50_us, s.p99_us
            ));
        }
        out.push_str(&self.sum_line(kind));
        out
    }

    /// The sum of a kind's sequential means: its mean time in repd.
    #[must_use]
    pub fn sequential_sum_us(&self, kind: &str) -> f64 {
        self.stages
            .iter()
            .filter(|s| s.kind == kind && s.sequential)
            .map(|s| s.mean_us)
            .sum()
    }

    fn sum_line(&self, kind: &str) -> String {
        format!(
            "  {:<12} {:<17} {:>9} {:>10.1}   (sum of the means, `peer` left out: it overlaps local_io)\n",
            kind,
            "in repd",
            "",
            self.sequential_sum_us(kind)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, stage: &str, mean_us: f64, sequential: bool) -> StageLatency {
        StageLatency {
            kind: kind.into(),
            stage: stage.into(),
            count: 3,
            mean_us,
            p50_us: mean_us,
            p99_us: mean_us,
            sequential,
        }
    }

    #[test]
    fn the_text_sums_each_kinds_sequential_means() {
        let r = LatencyReply {
            ok: true,
            resource: "r0".into(),
            error: None,
            enabled: true,
            seconds: 2.0,
            stages: vec![
                row("read", "local_io", 10.0, true),
                row("write", "local_io", 20.0, true),
                row("write", "peer", 50.0, false),
                row("write", "peer_after_local", 25.0, true),
            ],
        };
        assert!((r.sequential_sum_us("write") - 45.0).abs() < 1e-9);
        let text = r.render("r0");
        let sums: Vec<&str> = text.lines().filter(|l| l.contains("in repd")).collect();
        assert_eq!(sums.len(), 2, "{text}");
        assert!(
            sums[0].contains("10.0") && sums[1].contains("45.0"),
            "{text}"
        );
        let off = LatencyReply {
            enabled: false,
            stages: Vec::new(),
            ..r
        };
        assert!(off.render("r0").contains("--no-latency-stats"));
    }
}
