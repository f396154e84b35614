//! Command-line options more than one benchmark takes: how big the backing
//! files are and how long fio runs, as a `clap` group to flatten in.

/// `--size`, `--runtime` and `--ramp-time`. Each benchmark has its own
/// defaults (and `--quick` ones), so the help of each option is set by the
/// binary that flattens this in ([`FioSizingHelp::fio_sizing_help`]), where
/// those defaults are said.
#[derive(Debug, clap::Args)]
pub struct FioSizing {
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    #[arg(long, value_name = "SECONDS")]
    pub runtime: Option<u64>,
    #[arg(long, value_name = "SECONDS")]
    pub ramp_time: Option<u64>,
}

/// Sets the help lines of [`FioSizing`]'s options, for `#[command(...)]`.
pub trait FioSizingHelp {
    /// The help of `--size`, `--runtime` and `--ramp-time`, in that order.
    #[must_use]
    fn fio_sizing_help(self, help: [&'static str; 3]) -> Self;
}

impl FioSizingHelp for clap::Command {
    fn fio_sizing_help(self, [size, runtime, ramp]: [&'static str; 3]) -> Self {
        self.mut_arg("size", |a| a.help(size))
            .mut_arg("runtime", |a| a.help(runtime))
            .mut_arg("ramp_time", |a| a.help(ramp))
    }
}
