//! The sans-IO replication state machine.

pub mod al;
pub mod bitmap;
pub mod decide;
pub mod io;
mod node;
mod resume;
mod sync_window;
pub mod types;

pub use decide::{AfterSb0, AfterSb1, AfterSb2, Decision, SplitBrainPolicy};
pub use node::{Node, ERROR_LINGER_MS, MAX_IO};
pub use types::*;
