//! Test tooling shared by the workspace's test suites (a dev-dependency only).
//!
//! What the suites of `ublk-target`, `cluster-agent`, `bench` and
//! `vm-tests` used to copy: checking that a tool is installed, temp files on
//! a real filesystem, building the workspace's binaries, network namespaces,
//! running `repctl` for a node, killing and reaping processes, waiting for a
//! condition. repd, repctl and cluster-agent are driven as processes, by
//! their paths: this crate links none of the workspace's crates.
//!
//! Modules:
//! - [`tools`]: `require` a tool, the cargo target's temp dir, building the
//!   workspace's binaries for a test.
//! - [`certs`]: a CA and node certificates made with `openssl`.
//! - [`docs`]: the man pages and completions of `--generate-docs`
//!   against a binary's `--help`.
//! - [`files`]: random and sparse files.
//! - [`link`]: the replication link from outside: a block pattern, a
//!   tcpdump capture, a node's address, waiting for an event.
//! - [`netns`]: `ip`, network namespaces, a pair joined by a veth link.
//! - [`process`]: signals, kill -9 and waiting until a pid is gone.
//! - [`repctl`]: one node's `repctl` command line, its status JSON, the
//!   checks on two nodes' data.
//! - [`wait`]: polling until a condition holds; running scenarios one at a time.
//! - `tests`: the helpers' own checks.

// Helpers for tests: a failed step is a failed test, said loudly.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

pub mod certs;
pub mod docs;
pub mod files;
pub mod link;
pub mod netns;
pub mod process;
pub mod repctl;
pub mod tools;
pub mod wait;

#[cfg(test)]
mod tests;

pub use docs::{help_subcommands, man_renders, man_text};
pub use files::{random_file, sparse_file, write_exec};
pub use netns::{free_ports, in_netns, ip, send_from_ns, Netns};
pub use process::{gone, kill9_and_reap, signal, wait_gone, KillOnDrop};
pub use repctl::{assert_same_data, is_synced, log_tail, Repctl};
pub use tools::{build_bins, ensure_dir, fio_json, profile_dir, require, workspace_root};
pub use wait::{poll, serial};
