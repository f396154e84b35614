//! Importers of old configurations: `repctl import-drbd-conf` turns a
//! drbd.conf into resource files; the pieces here (warnings, the TOML
//! writer with its `# FILL IN` lines) are shared with the cluster agent's
//! `import-heartbeat`.
//!
//! The rule of every importer: an option with a counterpart maps to it, an
//! option without one becomes a [`Warning`] that names it (never dropped in
//! silence), and a value the old file lacks (an empty `address;`, no
//! shared secret) is never invented: the key is written commented out with
//! `# FILL IN` and a warning says what to put there.
//!
//! - `drbd_parse`: drbd.conf's tokens and statement tree, `include`, limits.
//! - `drbd_map`: the statements mapped onto the resource file's tables
//!   (`drbd_map/node.rs` the nodes, `drbd_map/fencing.rs` fencing and handlers).
//! - [`toml_out`]: tables written with comments and `# FILL IN` lines.

use std::fmt;
use std::path::PathBuf;

mod drbd_map;
mod drbd_parse;
pub mod toml_out;

#[cfg(test)]
mod tests;

pub use drbd_map::{import_drbd_conf, DrbdImport, ImportedResource};
pub use drbd_parse::{MAX_DEPTH, MAX_FILES, MAX_FILE_BYTES, MAX_INCLUDE_DEPTH, MAX_WORD_BYTES};

/// An option left behind or changed on the way, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// `FILE:LINE` of the option.
    pub loc: String,
    /// The option's name as the old file spells it (`minor-count`).
    pub option: String,
    /// What happened to it and what to do.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.loc, self.option, self.message)
    }
}

/// Why an import failed: nothing is written then.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// The old file does not parse; `loc` is `FILE:LINE`.
    #[error("{loc}: {message}")]
    Syntax { loc: String, message: String },
    /// A size, nesting or include limit.
    #[error("{0}")]
    Limit(String),
    /// The old file parses but cannot become a resource file.
    #[error("{loc}: {message}")]
    Unsupported { loc: String, message: String },
    /// The file written does not pass validation although nothing was left
    /// to fill in: the message of the validation.
    #[error("the imported resource {resource} does not pass validation: {message}")]
    Invalid { resource: String, message: String },
}
