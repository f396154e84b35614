//! The guest kernels the VM harness can boot: [`Kernel`], named as
//! `scripts/vm-setup.sh --kernel` and `scripts/vm-run.sh --kernel` name them.

use std::fmt;
use std::str::FromStr;

/// A guest kernel `scripts/vm-setup.sh` prepares.
///
/// 6.12 is the default and what CI's scenarios run on; 6.17 (Debian's
/// trixie-backports image) adds ublk's newer features (`UBLK_F_UPDATE_SIZE`,
/// `UBLK_F_AUTO_BUF_REG`). Both ship DRBD 8.4.11 as `drbd.ko`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernel {
    /// Debian 12's `linux-image-6.12.107+deb12-amd64-unsigned`.
    #[default]
    V6_12,
    /// Debian 13 backports' `linux-image-6.17.13+deb13-amd64`.
    V6_17,
}

impl Kernel {
    /// Every kernel, the default first.
    pub const ALL: [Kernel; 2] = [Kernel::V6_12, Kernel::V6_17];

    /// The series as the scripts' `--kernel` takes it: `6.12`, `6.17`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::V6_12 => "6.12",
            Kernel::V6_17 => "6.17",
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown kernel {s:?}: the VM harness has 6.12 and 6.17"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for k in Kernel::ALL {
            assert_eq!(k.as_str().parse::<Kernel>(), Ok(k));
        }
        assert_eq!(Kernel::default(), Kernel::V6_12);
        let e = "6.16".parse::<Kernel>().err().unwrap_or_default();
        assert!(e.contains("6.12 and 6.17"), "{e}");
    }
}
