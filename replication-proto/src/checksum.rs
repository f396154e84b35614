//! CRC32C (Castagnoli), the checksum of every frame and of the block digests
//! of verify and checksum-based resync, with two implementations that give
//! the same values and differ only in speed:
//!
//! * [`Backend::Hardware`]: the `crc32c` crate, which uses the CPU's CRC
//!   instruction (SSE4.2 `crc32`, ARMv8 `crc32c*`): ~20 GB/s on our hosts.
//! * [`Backend::Table16`]: slice-by-16 lookup tables: ~2.5 GB/s.
//!
//! Why two: under QEMU's TCG emulator, which runs our VM tests and the VM
//! benchmark, the `crc32` instruction is emulated one bit at a time. Measured
//! in that guest: 7.3 ms per MiB with the instruction, 1.6 ms per MiB with the
//! tables (a memcpy: 0.5 ms). A replicated 1 MiB write is checksummed twice
//! (sender and receiver), so the instruction cost ~15 ms of CPU per MiB there.
//! The daemon measures both once at start and uses the faster (the Linux
//! kernel chooses its xor and raid6 routines the same way at boot); this crate
//! has no clock, so the caller measures and calls [`set_backend`]. The choice
//! is process-wide and may change at any time: every call gives the same value
//! whichever backend runs it, so frames from either side always check.
//!
//! The tables are written here, not taken from the `crc` crate: its
//! `Table<16>` reads the input a byte at a time, and under TCG every load is
//! an emulated memory access; reading 8 bytes per load measured 2.5 ms/MiB
//! against the crate's 4.1 ms/MiB in the same guest (natively both ~0.3 ms).

use std::sync::atomic::{AtomicU8, Ordering};

/// One implementation of CRC32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The CPU's CRC instruction, through the `crc32c` crate (portable
    /// fallback included where the CPU has none).
    Hardware,
    /// Slice-by-16 lookup tables (16 KiB), 8 bytes per memory load.
    Table16,
}

impl Backend {
    /// Both backends, in the order [`pick_fastest`] tries them.
    pub const ALL: [Backend; 2] = [Backend::Hardware, Backend::Table16];

    /// The name used in logs and in the `REP_CRC32C` override.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Hardware => "hardware",
            Backend::Table16 => "table16",
        }
    }

    /// Parses [`Backend::name`].
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The CRC32C of `data` appended to a CRC32C `crc` of earlier bytes
    /// (`crc32c_append(crc32c(a), b) == crc32c(a ++ b)`), with this backend.
    pub fn append(self, crc: u32, data: &[u8]) -> u32 {
        match self {
            Backend::Hardware => crc32c::crc32c_append(crc, data),
            Backend::Table16 => !slice16(!crc, data),
        }
    }
}

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// `TABLES[k][b]`: the register contribution of byte `b` followed by `k` zero
/// bytes, so 16 input bytes fold into the register with 16 lookups.
static TABLES: [[u32; 256]; 16] = tables();

// Evaluated at compile time: an index out of bounds would fail the build.
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
const fn tables() -> [[u32; 256]; 16] {
    let mut t = [[0u32; 256]; 16];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 16 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// Folds `data` into the (uncomplemented) register `reg`.
// Every index is a u8 into a 256-entry table: always in bounds.
#[allow(clippy::indexing_slicing)]
fn slice16(mut reg: u32, data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut chunks = data.chunks_exact(16);
    for chunk in &mut chunks {
        let (lo, hi) = chunk.split_at(8);
        let lo = u64::from_le_bytes(lo.try_into().unwrap_or([0; 8])) ^ u64::from(reg);
        let hi = u64::from_le_bytes(hi.try_into().unwrap_or([0; 8]));
        let [a0, a1, a2, a3, a4, a5, a6, a7] = lo.to_le_bytes();
        let [b0, b1, b2, b3, b4, b5, b6, b7] = hi.to_le_bytes();
        reg = t[15][usize::from(a0)]
            ^ t[14][usize::from(a1)]
            ^ t[13][usize::from(a2)]
            ^ t[12][usize::from(a3)]
            ^ t[11][usize::from(a4)]
            ^ t[10][usize::from(a5)]
            ^ t[9][usize::from(a6)]
            ^ t[8][usize::from(a7)]
            ^ t[7][usize::from(b0)]
            ^ t[6][usize::from(b1)]
            ^ t[5][usize::from(b2)]
            ^ t[4][usize::from(b3)]
            ^ t[3][usize::from(b4)]
            ^ t[2][usize::from(b5)]
            ^ t[1][usize::from(b6)]
            ^ t[0][usize::from(b7)];
    }
    for &byte in chunks.remainder() {
        let [low, ..] = reg.to_le_bytes();
        reg = t[0][usize::from(low ^ byte)] ^ (reg >> 8);
    }
    reg
}

const HARDWARE: u8 = 0;
const TABLE: u8 = 1;

static BACKEND: AtomicU8 = AtomicU8::new(HARDWARE);

/// Makes every later checksum in this process run on `backend`.
pub fn set_backend(backend: Backend) {
    let v = match backend {
        Backend::Hardware => HARDWARE,
        Backend::Table16 => TABLE,
    };
    BACKEND.store(v, Ordering::Relaxed);
}

/// The backend in use ([`Backend::Hardware`] unless [`set_backend`] said otherwise).
pub fn backend() -> Backend {
    match BACKEND.load(Ordering::Relaxed) {
        TABLE => Backend::Table16,
        _ => Backend::Hardware,
    }
}

/// The CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    backend().append(0, data)
}

/// The CRC32C of `data` appended to the CRC32C `crc` of earlier bytes.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    backend().append(crc, data)
}

/// The backend whose `cost` is lowest (the first on a tie). `cost` is the
/// caller's measurement, e.g. the best of a few timed runs over a buffer.
pub fn pick_fastest<C: PartialOrd>(mut cost: impl FnMut(Backend) -> C) -> Backend {
    let mut best: Option<(Backend, C)> = None;
    for b in Backend::ALL {
        let c = cost(b);
        let better = match &best {
            Some((_, bc)) => c < *bc,
            None => true,
        };
        if better {
            best = Some((b, c));
        }
    }
    best.map_or(Backend::Hardware, |(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        for b in Backend::ALL {
            assert_eq!(b.append(0, &[0u8; 32]), 0x8A91_36AA, "{}", b.name());
            assert_eq!(b.append(0, b"123456789"), 0xE306_9283, "{}", b.name());
            assert_eq!(b.append(0, b""), 0, "{}", b.name());
        }
    }

    proptest! {
        #[test]
        fn backends_agree_and_append_composes(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cut in any::<prop::sample::Index>(),
            seed in any::<u32>(),
        ) {
            let at = cut.index(data.len() + 1);
            let (a, b) = data.split_at(at);
            let whole = Backend::Hardware.append(seed, &data);
            for be in Backend::ALL {
                prop_assert_eq!(be.append(seed, &data), whole);
                prop_assert_eq!(be.append(be.append(seed, a), b), whole);
            }
        }
    }

    #[test]
    fn pick_fastest_takes_the_cheaper_and_the_first_on_a_tie() {
        let hw_slow = |b: Backend| if b == Backend::Hardware { 7.3 } else { 1.6 };
        assert_eq!(pick_fastest(hw_slow), Backend::Table16);
        let hw_fast = |b: Backend| if b == Backend::Hardware { 0.05 } else { 0.4 };
        assert_eq!(pick_fastest(hw_fast), Backend::Hardware);
        assert_eq!(pick_fastest(|_| 1), Backend::Hardware);
    }

    #[test]
    fn names_round_trip() {
        for b in Backend::ALL {
            assert_eq!(Backend::from_name(b.name()), Some(b));
        }
        assert_eq!(Backend::from_name("sse"), None);
    }
}
