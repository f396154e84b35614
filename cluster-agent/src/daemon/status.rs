//! What `cluster-agent status` shows: the core's status with the
//! configuration, the paths' addresses and the chain around it.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::ms;
use crate::config::{AgentConfig, Link, NoQuorum};
use crate::core::Core;
use crate::vocab::Millis;

/// What status shows of split brains.
#[derive(Debug, Default)]
pub(super) struct SplitBrainView {
    /// repd's flag as last polled.
    pub(super) detected: bool,
    /// Rising edges seen since the agent started.
    pub(super) detections: u64,
    pub(super) hook_runs: u64,
    pub(super) last_hook: Option<String>,
}

pub(super) fn status_json(
    core: &Core,
    now: Millis,
    cfg: &AgentConfig,
    links: &[Link],
    device: &Path,
    clock: Instant,
    sb: &SplitBrainView,
) -> Value {
    let st = core.status(now);
    let mut v = serde_json::to_value(&st).unwrap_or(Value::Null);
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    obj.insert("resource".into(), json!(cfg.resource.resource.name));
    obj.insert("pid".into(), json!(std::process::id()));
    obj.insert("uptime_ms".into(), json!(ms(clock.elapsed())));
    // With uptime_ms this puts the transitions (`at`, agent clock) on the
    // wall clock, for scripts that time a failover against their own events.
    obj.insert(
        "unix_ms".into(),
        json!(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(ms)
            .unwrap_or(0)),
    );
    insert_settings(obj, cfg, sb);
    name_paths(obj, links);
    obj.insert("chain".into(), chain_json(cfg, device, &st));
    v
}

/// What the configuration says, and what the agent saw of split brains.
fn insert_settings(
    obj: &mut serde_json::Map<String, Value>,
    cfg: &AgentConfig,
    sb: &SplitBrainView,
) {
    obj.insert("fence_command".into(), json!(cfg.cluster.fence_command));
    obj.insert(
        "witness".into(),
        json!(cfg.cluster.witness.map(|w| w.to_string())),
    );
    obj.insert(
        "on_no_quorum".into(),
        json!(match cfg.cluster.on_no_quorum {
            NoQuorum::SuspendIo => "suspend-io",
            NoQuorum::IoError => "io-error",
        }),
    );
    obj.insert("auto_failback".into(), json!(cfg.cluster.auto_failback));
    obj.insert(
        "split_brain".into(),
        json!({
            "detected": sb.detected,
            "detections": sb.detections,
            "hook": cfg.cluster.ops.split_brain_command,
            "hook_runs": sb.hook_runs,
            "last_hook": sb.last_hook,
        }),
    );
    obj.insert(
        "ping_nodes".into(),
        json!(cfg
            .cluster
            .ops
            .ping_nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()),
    );
    obj.insert("preferred".into(), json!(cfg.cluster.preferred));
}

/// Each path's name and addresses, next to what the core says of it.
fn name_paths(obj: &mut serde_json::Map<String, Value>, links: &[Link]) {
    if let Some(paths) = obj.get_mut("paths").and_then(Value::as_array_mut) {
        for (p, l) in paths.iter_mut().zip(links) {
            if let Some(po) = p.as_object_mut() {
                po.insert("name".into(), json!(l.name));
                po.insert("local".into(), json!(l.local.to_string()));
                po.insert("peer".into(), json!(l.peer.to_string()));
            }
        }
    }
}

/// The device and each resource of the chain, with its state.
fn chain_json(cfg: &AgentConfig, device: &Path, st: &crate::core::CoreStatus) -> Value {
    let mut chain = vec![json!({
        "type": "device",
        "label": format!("device:{} ({})", device.display(), cfg.resource.resource.name),
        "state": if st.holds_role { "primary" } else { "secondary" },
    })];
    for (i, (r, s)) in cfg.cluster.resources.iter().zip(&st.resources).enumerate() {
        chain.push(json!({
            "index": i,
            "type": r.kind(),
            "label": r.label(),
            "state": s,
            "monitor": st.monitors.get(i),
            "monitor_timeout_ms": cfg.cluster.monitors.get(i).map(|m| ms(m.timeout)),
        }));
    }
    Value::Array(chain)
}
