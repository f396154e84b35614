//! The engine's answer to `status`: the state machine's [`Status`] turned
//! into the control protocol's [`NodeStatus`].

use std::sync::atomic::Ordering;

use super::{Counters, GenerationsHex, NodeStatus, Runner, Status};

impl Runner {
    /// What `repctl status` shows: the state machine's status plus what
    /// only the daemon knows (peer name, NBD, progress, wall-clock times).
    pub(super) fn status(&self) -> NodeStatus {
        let st: Status = self.node.status();
        let g = st.gens;
        let error_age_ms = st.last_error_at_ms.map(|at| self.now().saturating_sub(at));
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
            last_error_at: error_age_ms.map(|age| {
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                wall.as_secs().saturating_sub(age / 1000)
            }),
            last_error_age_s: error_age_ms.map(|age| age / 1000),
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
            nbd: self.nbd_addr.clone(),
            nbd_clients: usize::try_from(self.shared.nbd_clients.load(Ordering::Relaxed))
                .unwrap_or(0),
            pid: std::process::id(),
            suspended: st.suspended,
            freeze_on_disconnect: st.freeze_on_disconnect,
            degraded_at_start: st.degraded_at_start,
            resume: st.resume,
            fencing: st.fencing,
        }
    }
}
