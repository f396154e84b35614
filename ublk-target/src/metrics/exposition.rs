//! Prometheus' text exposition format (version 0.0.4), written by hand.
//!
//! Why not the `prometheus-client` crate: its encoder writes OpenMetrics
//! (`# EOF`, its own content type), and its histograms can only be fed
//! by `observe`, while ours are counted by the engine thread in atomics and
//! read as a snapshot here. The format needs only what is below (HELP and
//! TYPE lines, escaped label values, histogram series); the tests in
//! `ublk-target/tests/metrics.rs` check the output with two real parsers.

use std::fmt::Write as _;

use crate::engine::latency::{HistogramSnapshot, BUCKET_BOUNDS_US};
use crate::stages;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The text being written, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// A sample's labels: name and value pairs (values are escaped here).
pub type Labels<'a> = [(&'a str, &'a str)];

impl Exposition {
    /// Starts the family `name`: its HELP and TYPE lines. Every sample of
    /// the family follows before the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_name(name), "metric name {name}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of an integer value.
    pub fn sample(&mut self, name: &str, labels: &Labels<'_>, value: u64) {
        self.series(name, labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample of a real value.
    pub fn sample_f64(&mut self, name: &str, labels: &Labels<'_>, value: f64) {
        self.series(name, labels, None);
        let _ = writeln!(self.out, " {}", float(value));
    }

    /// A gauge that is 1 for the one value of an enumeration that holds and
    /// 0 for the others, labelled with the family's own name (the style of
    /// drbd-reactor's `drbd_resource_role{name="r0",drbd_resource_role="Primary"}`).
    pub fn enumeration(&mut self, name: &str, labels: &Labels<'_>, values: &[&str], current: &str) {
        let mut all: Vec<&str> = values.to_vec();
        if !all.contains(&current) {
            // A state this list lacks still shows as the one that holds.
            all.push(current);
        }
        for v in all {
            let mut l = labels.to_vec();
            l.push((name, v));
            self.sample(name, &l, u64::from(v == current));
        }
    }

    /// The series of a histogram family `name` for one set of labels:
    /// cumulative `_bucket`s up to `+Inf`, `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &Labels<'_>, h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (bound_us, count) in BUCKET_BOUNDS_US.iter().zip(h.cumulative) {
            #[allow(clippy::cast_precision_loss)] // bounds are at most 10^7
            let le = float(*bound_us as f64 / 1e6);
            self.series(&bucket, labels, Some(&le));
            let _ = writeln!(self.out, " {count}");
        }
        self.series(&bucket, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count);
        self.sample_f64(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }

    /// A stage histogram (`crate::stages`): its fine buckets summed into
    /// the exposed 1-2-5 bounds, cumulative up to `+Inf`, `_sum`, `_count`.
    pub fn stage_histogram(&mut self, name: &str, labels: &Labels<'_>, h: &stages::Snapshot) {
        let bucket = format!("{name}_bucket");
        let mut below = 0u64;
        for (bound_ns, count) in stages::BUCKET_BOUNDS_NS.iter().zip(h.counts) {
            below = below.saturating_add(count);
            if !stages::exposed_bound(*bound_ns) {
                continue;
            }
            #[allow(clippy::cast_precision_loss)] // bounds are at most 10^10
            let le = float(*bound_ns as f64 / 1e9);
            self.series(&bucket, labels, Some(&le));
            let _ = writeln!(self.out, " {below}");
        }
        let count = h.count();
        self.series(&bucket, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        #[allow(clippy::cast_precision_loss)] // ns sums stay far below 2^52
        let sum = h.sum_ns as f64 / 1e9;
        self.sample_f64(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }

    /// `name{labels}` (and `le` last, for a bucket), without the value.
    fn series(&mut self, name: &str, labels: &Labels<'_>, le: Option<&str>) {
        self.out.push_str(name);
        let le = le.map(|v| ("le", v));
        let all: Vec<(&str, &str)> = labels.iter().copied().chain(le).collect();
        if all.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in all.iter().enumerate() {
            debug_assert!(valid_name(k), "label name {k}");
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
        }
        self.out.push('}');
    }

    /// The text written so far.
    #[must_use]
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the format quotes it: backslash, double quote and
/// line feed escaped.
#[must_use]
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A float as the format writes it (Go's ParseFloat reads it back).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the format's metric and label names.
fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        let mut e = Exposition::default();
        e.family("rep_x", Kind::Gauge, "back\\slash\nand newline");
        e.sample("rep_x", &[("name", "r\"0")], 1);
        assert_eq!(
            e.finish(),
            "# HELP rep_x back\\\\slash\\nand newline\n# TYPE rep_x gauge\nrep_x{name=\"r\\\"0\"} 1\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_inf_sum_and_count() {
        let h = crate::engine::latency::Histogram::default();
        for us in [90, 200, 20_000_000] {
            h.observe(std::time::Duration::from_micros(us));
        }
        let mut e = Exposition::default();
        e.family("rep_h_seconds", Kind::Histogram, "h");
        e.histogram("rep_h_seconds", &[("op", "write")], &h.snapshot());
        let text = e.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"rep_h_seconds_bucket{op=\"write\",le=\"0.0001\"} 1"));
        assert!(lines.contains(&"rep_h_seconds_bucket{op=\"write\",le=\"0.00025\"} 2"));
        assert!(lines.contains(&"rep_h_seconds_bucket{op=\"write\",le=\"10\"} 2"));
        assert!(lines.contains(&"rep_h_seconds_bucket{op=\"write\",le=\"+Inf\"} 3"));
        assert!(lines.contains(&"rep_h_seconds_sum{op=\"write\"} 20.00029"));
        assert!(lines.contains(&"rep_h_seconds_count{op=\"write\"} 3"));
        let buckets = lines.iter().filter(|l| l.contains("_bucket")).count();
        assert_eq!(buckets, BUCKET_BOUNDS_US.len() + 1);
    }

    #[test]
    fn an_enumeration_marks_the_current_value() {
        let mut e = Exposition::default();
        e.enumeration(
            "rep_r",
            &[("name", "r0")],
            &["Primary", "Secondary"],
            "Secondary",
        );
        e.enumeration("rep_c", &[], &["A"], "Z");
        let text = e.finish();
        assert!(text.contains("rep_r{name=\"r0\",rep_r=\"Primary\"} 0\n"));
        assert!(text.contains("rep_r{name=\"r0\",rep_r=\"Secondary\"} 1\n"));
        assert!(text.contains("rep_c{rep_c=\"A\"} 0\nrep_c{rep_c=\"Z\"} 1\n"));
    }

    #[test]
    fn floats_and_names() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(0.0001), "0.0001");
        assert!(valid_name("rep_device_state"));
        assert!(!valid_name("1rep"));
        assert!(!valid_name("rep-x"));
    }
}
