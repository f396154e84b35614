//! Command-line options more than one benchmark takes: how big the backing
//! files are and how long fio runs, as a `clap` group to flatten in.

/// `--size`, `--runtime` and `--ramp-time`. Each benchmark has its own
/// defaults (and `--quick` ones), so the help of each option is set by the
/// binary that flattens this in (`mut_arg`), where those defaults are said.
#[derive(Debug, clap::Args)]
pub struct FioSizing {
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    #[arg(long, value_name = "SECONDS")]
    pub runtime: Option<u64>,
    #[arg(long, value_name = "SECONDS")]
    pub ramp_time: Option<u64>,
}
