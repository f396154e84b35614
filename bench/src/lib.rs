//! Shared pieces of the benchmarks: running `repd` nodes through `repctl`,
//! running fio and reading its JSON, and what `/proc` says about CPU and
//! memory.
//!
//! The binaries (`nbd-bench`, ...) compose these; every failure is a
//! `String` that says what went wrong, so a benchmark can report a failed
//! target and go on with the others.
//!
//! - [`cli`]: the fio sizing options (`--size`, `--runtime`, `--ramp-time`)
//!   nbd-bench and vm-bench share;
//! - [`rep`]: `repd` nodes driven with `repctl`, as a user would;
//! - [`fio`]: a write workload's command line and its JSON result;
//! - [`procfs`]: peak RSS and CPU time per process and thread;
//! - [`util`]: sizes, medians, ports, commands with a time limit, Ctrl-C.

pub mod cli;
pub mod fio;
pub mod procfs;
pub mod rep;
pub mod util;
