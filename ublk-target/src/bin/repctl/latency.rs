//! `repctl status --latency [--reset]`: the latency breakdown repd counts
//! per request kind and stage, as a table or JSON.

use rep_control::protocol::{ControlCmd, LatencyReply};

use super::targets::Target;
use super::{print_out, Failure};

/// Ask repd for the breakdown (and to reset it) and print it.
pub(super) fn show(t: &Target, json: bool, reset: bool) -> Result<(), Failure> {
    let mut reply: LatencyReply = super::adjust::ask(t, &ControlCmd::Latency { reset })?;
    if !reply.ok {
        let why = reply.error.unwrap_or_default();
        return Err(Failure(if why.contains("unknown variant `latency`") {
            "this repd does not count latencies (too old); restart it from this version".into()
        } else {
            why
        }));
    }
    let (name, _) = t.names()?;
    reply.resource.clone_from(&name);
    if json {
        let text = if t.several {
            serde_json::to_string(&reply)
        } else {
            serde_json::to_string_pretty(&reply)
        };
        return print_out(&format!("{}\n", text.map_err(|e| Failure(e.to_string()))?));
    }
    print_out(&reply.render(&name))
}
