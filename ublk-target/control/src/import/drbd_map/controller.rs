//! DRBD's dynamic resync controller (`c-plan-ahead`, `c-fill-target`,
//! `c-delay-target`, `c-max-rate`, `c-min-rate`; 8.4 in `disk`, 8.3 in
//! `syncer`) into rep's `[sync]` keys of the same names, in DRBD's units:
//! tenths of a second as they are, a bare `c-fill-target` in sectors, a
//! bare rate in KiB/s (a K/M/G suffix as written).

use super::{from, Draft, Mapper, Stmt};
use crate::config::format_rate;

impl Mapper {
    /// Whether `s` is one of the controller's keys (and then maps it).
    pub(super) fn controller(&mut self, d: &mut Draft, s: &Stmt) -> bool {
        match s.key() {
            k @ ("c-plan-ahead" | "c-delay-target") => {
                if let Some(n) = self.number(s) {
                    d.sync.value(k, super::to_int(n), from(s));
                }
            }
            k @ ("c-fill-target" | "c-max-rate" | "c-min-rate") => {
                // A bare c-fill-target counts 512-byte sectors, a bare rate KiB/s.
                let bare_unit: u64 = if k == "c-fill-target" { 512 } else { 1024 };
                if let Some(bytes) = self.drbd_size(s, bare_unit) {
                    d.sync.value(k, format_rate(bytes), from(s));
                }
            }
            _ => return false,
        }
        true
    }

    /// A number with an optional k/K, m/M, g/G suffix (powers of 1024) or
    /// s (sectors); without one, `bare_unit` bytes each.
    fn drbd_size(&mut self, s: &Stmt, bare_unit: u64) -> Option<u64> {
        let v = self.one(s)?;
        let (digits, unit) = match v.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let unit = match c.to_ascii_uppercase() {
                    'S' => Some(512),
                    'K' => Some(1 << 10),
                    'M' => Some(1 << 20),
                    'G' => Some(1 << 30),
                    _ => None,
                };
                (v.get(..i).unwrap_or(""), unit)
            }
            _ => (v, Some(bare_unit)),
        };
        let n = digits.parse::<u64>().ok();
        match (n, unit) {
            (Some(n), Some(unit)) if n.checked_mul(unit).is_some() => Some(n * unit),
            _ => {
                self.warn(
                    s,
                    format!(
                        "`{}`: expected a number with an optional s, K, M or G; not imported",
                        s.text()
                    ),
                );
                None
            }
        }
    }
}
