//! The engine's answer to `status`: the state machine's [`Status`] turned
//! into the control protocol's [`NodeStatus`]; and the same state as the
//! event stream's snapshot, published after each turn.

use std::sync::atomic::Ordering;

use rep_control::protocol::ErrorStatus;

use super::{Counters, GenerationsHex, NodeStatus, Runner, Status};

impl Runner {
    /// The state after this turn to the event stream, which publishes
    /// what changed (see [`crate::events`]).
    pub(super) fn publish_events(&self) {
        let st = self.node.status();
        let sync = self.progress.current();
        self.events.publish(crate::events::Snapshot::of(
            &st,
            sync.as_ref(),
            self.handlers.ended(),
        ));
    }

    /// What `repctl status` shows: the state machine's status plus what
    /// only the daemon knows (peer name, NBD, progress, wall-clock times).
    pub(super) fn status(&self) -> NodeStatus {
        let st: Status = self.node.status();
        let g = st.gens;
        let now_ms = self.now();
        let error_age_ms = st.last_error_at_ms.map(|at| now_ms.saturating_sub(at));
        let wall_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let hex = |x: u64| format!("{x:016X}");
        let cfg = self.node.config();
        NodeStatus {
            resource: st.resource.clone(),
            node: st.node.clone(),
            peer: self.peer_name.clone(),
            role: st.role,
            peer_role: st.peer_role,
            connection: format!("{:?}", st.connection),
            disk: st.disk,
            peer_disk: st.peer_disk,
            protocol: format!("{:?}", cfg.protocol),
            out_of_sync_bytes: st.out_of_sync_bytes,
            split_brain: st.split_brain,
            last_error: st.last_error.clone(),
            last_error_at: error_age_ms.map(|age| wall_s.saturating_sub(age / 1000)),
            last_error_age_s: error_age_ms.map(|age| age / 1000),
            errors: st
                .errors
                .iter()
                .map(|e| {
                    let age_s = now_ms.saturating_sub(e.at_ms) / 1000;
                    ErrorStatus {
                        kind: e.kind,
                        message: e.message.clone(),
                        at: wall_s.saturating_sub(age_s),
                        age_s,
                        count: e.count,
                        ended: e.ended,
                    }
                })
                .collect(),
            sync: self.progress.current(),
            generations: GenerationsHex {
                current: hex(g.current),
                bitmap: hex(g.bitmap),
                history: [hex(g.history[0]), hex(g.history[1])],
            },
            data_bytes: cfg.data_bytes,
            counters: Counters {
                ns: st.stats.traffic.sent_bytes / 1024,
                nr: st.stats.traffic.received_bytes / 1024,
                dw: st.stats.traffic.written_bytes / 1024,
                dr: st.stats.traffic.read_bytes / 1024,
                al: st.stats.al_writes,
                bm: st.stats.bm_writes,
                lo: st.local_pending,
                pe: st.peer_pending,
                ua: st.unacked,
                ap: st.app_pending,
                oos: st.out_of_sync_bytes / 1024,
            },
            stats: st.stats.traffic.clone(),
            al_misses: st.stats.al_misses,
            nbd: self.nbd_addr.clone(),
            nbd_warning: self.nbd_warning.clone(),
            nbd_clients: usize::try_from(self.shared.nbd_clients.load(Ordering::Relaxed))
                .unwrap_or(0),
            pid: std::process::id(),
            suspended: st.suspended,
            freeze_on_disconnect: st.freeze_on_disconnect,
            degraded_at_start: st.degraded_at_start,
            resume: st.resume,
            fencing: st.fencing,
            sync_paused: st.sync_paused_by_user,
            last_verify: st.last_verify.as_ref().map(|v| {
                let age_s = now_ms.saturating_sub(v.at_ms) / 1000;
                rep_control::protocol::LastVerify {
                    at: wall_s.saturating_sub(age_s),
                    age_s,
                    verified_bytes: v.verified_bytes,
                    out_of_sync_bytes: v.out_of_sync_bytes,
                    range_count: v.range_count,
                    ranges: v.ranges.clone(),
                }
            }),
            handlers: self.handlers.runs().to_vec(),
            size_note: st.size_note,
        }
    }
}
