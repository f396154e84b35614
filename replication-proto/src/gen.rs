//! Generation UUIDs: how two nodes tell whose data is newer without clocks.
//!
//! Every node keeps a *current* UUID naming its data generation, a *bitmap*
//! UUID naming the generation its dirty bitmap counts changes from (0 when the
//! bitmap is not in use), and two *history* UUIDs for older generations. The
//! rules and the decision table follow DRBD 8.4 so its users can reason the
//! same way.

use serde::{Deserialize, Serialize};

/// The UUID a freshly created metadata carries: "no data generation yet".
pub const UUID_JUST_CREATED: u64 = 4;

/// The four generation identifiers one node keeps, as stored on disk and sent
/// in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Generations {
    pub current: u64,
    pub bitmap: u64,
    pub history: [u64; 2],
}

impl Generations {
    /// The generations of freshly created metadata.
    #[must_use]
    pub fn just_created() -> Self {
        Self {
            current: UUID_JUST_CREATED,
            bitmap: 0,
            history: [0, 0],
        }
    }
}
