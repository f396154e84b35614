//! Which CRC32C implementation this process uses: measured once at start.
//!
//! Both give the same values (see `replication_proto::checksum` for why there
//! are two); the CPU instruction wins by 10x on real hardware and loses by 4x
//! under an emulator (QEMU TCG emulates it bit by bit), so we time both
//! rather than guess. `REP_CRC32C=hardware|table16` overrides the choice, for
//! A/B benchmarks.

use std::time::{Duration, Instant};

use replication_proto::checksum::{self, Backend};

/// The environment variable that forces a backend.
pub const OVERRIDE_ENV: &str = "REP_CRC32C";

/// How the backend was chosen, for the start-up log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Measured: the cost of each backend per MiB.
    Measured(Vec<(Backend, Duration)>),
    /// Forced by [`OVERRIDE_ENV`].
    Forced,
}

/// Times every backend over the same buffer and installs the fastest, unless
/// [`OVERRIDE_ENV`] names one. Costs ~0.1 ms natively, ~15 ms under TCG.
pub fn choose() -> Result<(Backend, Choice), String> {
    if let Ok(name) = std::env::var(OVERRIDE_ENV) {
        let b = Backend::from_name(name.trim()).ok_or_else(|| {
            format!(
                "{OVERRIDE_ENV}={name:?} is not a CRC32C backend; use one of: {}",
                Backend::ALL.map(Backend::name).join(", ")
            )
        })?;
        checksum::set_backend(b);
        return Ok((b, Choice::Forced));
    }
    const LEN: usize = 256 * 1024;
    let buf: Vec<u8> = (0..LEN)
        .map(|i| (i.wrapping_mul(131) >> 3).to_le_bytes()[0])
        .collect();
    let mut costs = Vec::new();
    let best = checksum::pick_fastest(|b| {
        // One pass warms caches and tables; the best of the rest is the cost.
        std::hint::black_box(b.append(0, std::hint::black_box(&buf)));
        let per_mib = (0..4)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(b.append(0, std::hint::black_box(&buf)));
                t.elapsed() * 4
            })
            .min()
            .unwrap_or(Duration::MAX);
        costs.push((b, per_mib));
        per_mib
    });
    checksum::set_backend(best);
    Ok((best, Choice::Measured(costs)))
}

/// Chooses (see [`choose`]) and logs the choice.
pub fn choose_and_log() -> Result<Backend, String> {
    let (b, how) = choose()?;
    match how {
        Choice::Forced => tracing::info!(backend = b.name(), "crc32c: forced by {OVERRIDE_ENV}"),
        Choice::Measured(costs) => {
            let costs: Vec<String> = costs
                .iter()
                .map(|(b, d)| format!("{} {:.3} ms/MiB", b.name(), d.as_secs_f64() * 1e3))
                .collect();
            tracing::info!(backend = b.name(), "crc32c: measured {}", costs.join(", "));
        }
    }
    Ok(b)
}
