//! `repctl adjust` on the control socket: the command carries the path of
//! the resource file repctl validated, repd re-reads that file, compares it
//! with the configuration it runs and answers with an [`AdjustReply`].

use serde::{Deserialize, Serialize};

/// Most lines an adjust answer carries (one per changed setting).
pub const ADJUST_MAX_LINES: usize = 256;

/// repd's answer to [`super::ControlCmd::Adjust`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustReply {
    /// Everything that changed was applied (or nothing changed).
    pub ok: bool,
    /// Why nothing was applied, when the file could not be read or a
    /// repd from before `adjust` answers ("unknown variant `adjust`").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// One line per changed setting: `sync.rate 4M -> 8M (now)`,
    /// `net.protocol C -> B (at the next connection)`, or, when refused,
    /// `node.disk: cannot change while running: ...`.
    #[serde(default)]
    pub changes: Vec<String>,
}
