//! `sync.rate`: bytes per second with an optional K/M/G suffix.

/// Parse a rate: an integer number of bytes per second, optionally followed by
/// `K`, `M` or `G` (powers of 1024, case-insensitive). `"0"` means unlimited.
///
/// # Errors
/// A message saying what is wrong with the text.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => {
                    return Err(format!(
                        "invalid rate \"{s}\": unknown suffix `{c}` (use K, M or G, e.g. \"100M\")"
                    ))
                }
            };
            (t.get(..i).unwrap_or(""), mult)
        }
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid rate \"{s}\": expected a whole number with an optional K/M/G suffix, e.g. \"100M\" (\"0\" = unlimited)"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid rate \"{s}\": number too large"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid rate \"{s}\": number too large"))
}

/// The shortest text [`parse_rate`] reads back as `rate`: the largest of
/// G, M, K that divides it exactly, else plain bytes; `"0"` = unlimited.
#[must_use]
pub fn format_rate(rate: u64) -> String {
    if rate == 0 {
        return "0".to_owned();
    }
    for (shift, suffix) in [(30, 'G'), (20, 'M'), (10, 'K')] {
        if rate % (1u64 << shift) == 0 {
            return format!("{}{suffix}", rate >> shift);
        }
    }
    rate.to_string()
}
