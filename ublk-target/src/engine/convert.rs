//! From the resource file to the state machine's settings.

use replication_proto::machine::{AfterSb0, AfterSb1, AfterSb2, NodeConfig, SplitBrainPolicy};
use replication_proto::wire::features;

use crate::config::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, Config, Node};

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch now (0 on a clock before 1970).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms)
}

/// The state machine's settings for `me` talking to `peer`. Errors name the
/// setting that this build cannot honour.
pub fn node_config(
    cfg: &Config,
    me: &Node,
    peer: &Node,
    data_bytes: u64,
) -> Result<NodeConfig, String> {
    let sb = &cfg.split_brain;
    let after_sb_0pri = match &sb.after_sb_0pri {
        AfterSb0Pri::Disconnect => AfterSb0::Disconnect,
        AfterSb0Pri::DiscardZeroChanges => AfterSb0::DiscardZeroChanges,
        AfterSb0Pri::DiscardLeastChanges => AfterSb0::DiscardLeastChanges,
        AfterSb0Pri::DiscardNode(n) => AfterSb0::DiscardNode(n.clone()),
        AfterSb0Pri::DiscardYoungerPrimary => AfterSb0::DiscardYoungerPrimary,
        AfterSb0Pri::DiscardOlderPrimary => AfterSb0::DiscardOlderPrimary,
    };
    let after_sb_1pri = match sb.after_sb_1pri {
        AfterSb1Pri::Disconnect => AfterSb1::Disconnect,
        AfterSb1Pri::Consensus => AfterSb1::Consensus,
        AfterSb1Pri::DiscardSecondary => AfterSb1::DiscardSecondary,
        AfterSb1Pri::CallPriLostAfterSb => AfterSb1::CallPriLostAfterSb,
    };
    let after_sb_2pri = match sb.after_sb_2pri {
        AfterSb2Pri::Disconnect => AfterSb2::Disconnect,
        AfterSb2Pri::CallPriLostAfterSb => AfterSb2::CallPriLostAfterSb,
    };
    Ok(NodeConfig {
        resource: cfg.resource.name.clone(),
        node: me.name.clone(),
        peer: peer.name.clone(),
        protocol: cfg.resource.protocol,
        data_bytes,
        secret: cfg.net.secret.as_bytes().to_vec(),
        timeout_ms: ms(cfg.net.timeout),
        ping_int_ms: ms(cfg.net.ping_int),
        ko_count: cfg.net.ko_count,
        max_buffers: cfg.net.max_buffers,
        resync_rate: cfg.sync.rate,
        resync_control: cfg.sync.control,
        csums: cfg.net.csums,
        al_extents: cfg.sync.al_extents,
        split_brain: SplitBrainPolicy {
            after_sb_0pri,
            after_sb_1pri,
            after_sb_2pri,
        },
        features: features::ALL,
        fencing: cfg.net.fencing,
        on_io_error_detach: cfg.disk.on_io_error == crate::config::OnIoError::Detach,
    })
}
