//! Shared pieces of the benchmarks: running `repd` nodes through `repctl`,
//! running fio and reading its JSON, and what `/proc` says about CPU and
//! memory.
//!
//! The binaries (`nbd-bench`, ...) compose these; every failure is a
//! `String` that says what went wrong, so a benchmark can report a failed
//! target and go on with the others.

pub mod cli;
pub mod fio;
pub mod procfs;
pub mod rep;
pub mod util;
