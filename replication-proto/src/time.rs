//! The one time type of the workspace's sans-IO cores.
//!
//! Every core (the replication [`Node`](crate::machine::Node), the cluster
//! agent's `Core`, the witness core) is driven with `handle(now, input)` and
//! tells its driver when to call again with `poll_timeout() -> Option<Millis>`.
//! `Millis` is a point on the *driver's* monotonic clock: the daemon counts
//! from its start, the simulator from zero. The core never reads a clock.
//!
//! Points and lengths are kept apart on purpose: a point is a `Millis`, a
//! length of time is a plain `u64` whose name ends in `_ms`. Adding a length to
//! a point gives a point; subtracting two points gives a length.
//!
//! Contract for drivers: time only moves forward. A core keeps the largest
//! `now` it was given (`max`), and `ms_since` asserts in debug builds that the
//! earlier point is not in the future.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

/// A point on the driver's monotonic clock, in milliseconds from an origin the
/// driver picks (its start, or zero in the simulator).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// The origin of the clock.
    pub const ZERO: Millis = Millis(0);
    /// A point no timer reaches; used as "never" where an `Option` would not do.
    pub const NEVER: Millis = Millis(u64::MAX);

    /// The point `ms` milliseconds after the origin.
    pub const fn from_ms(ms: u64) -> Self {
        Millis(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_ms(self) -> u64 {
        self.0
    }

    /// The point `len_ms` later; saturates at [`Millis::NEVER`] so that a
    /// timeout of `u64::MAX` means "never" instead of wrapping into the past.
    pub const fn plus_ms(self, len_ms: u64) -> Self {
        Millis(self.0.saturating_add(len_ms))
    }

    /// Milliseconds from `earlier` to `self`.
    ///
    /// `earlier` must not be later than `self` (time only moves forward);
    /// debug builds assert it, release builds answer 0.
    pub fn ms_since(self, earlier: Millis) -> u64 {
        debug_assert!(
            earlier <= self,
            "time went backwards: {earlier} is after {self}"
        );
        self.0.saturating_sub(earlier.0)
    }

    /// Milliseconds from `earlier` to `self`, 0 when `earlier` is later.
    ///
    /// For the few places where the two points come from different sources
    /// (a peer's report, a time stored before a restart) and order is not an
    /// invariant. Prefer [`Millis::ms_since`].
    pub fn ms_since_or_zero(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<u64> for Millis {
    type Output = Millis;
    fn add(self, len_ms: u64) -> Millis {
        self.plus_ms(len_ms)
    }
}

impl AddAssign<u64> for Millis {
    fn add_assign(&mut self, len_ms: u64) {
        *self = self.plus_ms(len_ms);
    }
}

impl Sub for Millis {
    type Output = u64;
    /// The length from `rhs` to `self` in milliseconds; see [`Millis::ms_since`].
    fn sub(self, rhs: Millis) -> u64 {
        self.ms_since(rhs)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_and_lengths() {
        let t = Millis::from_ms(1_000);
        assert_eq!((t + 250).as_ms(), 1_250);
        assert_eq!((t + 250) - t, 250);
        assert_eq!(Millis::NEVER + 1, Millis::NEVER);
        assert_eq!(t.ms_since_or_zero(t + 5), 0);
        assert_eq!(t.to_string(), "1000ms");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "time went backwards")]
    fn backwards_is_caught_in_debug() {
        let t = Millis::from_ms(10);
        let _ = t.ms_since(t + 1);
    }
}
