//! `repctl status` in words: drbdadm status plus the /proc/drbd counters.

use std::fmt::Write as _;

use crate::engine::NodeStatus;

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / f64::from(1u32 << 20))
}

/// Progress bar like /proc/drbd's `[=====>.......]`.
fn bar(percent: f64) -> String {
    let width = 20usize;
    let filled = (0..=width)
        .take_while(|&i| (i as f64) * 5.0 < percent)
        .count();
    let mut s = String::from("[");
    for i in 0..width {
        s.push(if i < filled {
            '='
        } else if i == filled {
            '>'
        } else {
            '.'
        });
    }
    s.push(']');
    s
}

fn hms(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// The readable status of one node.
#[must_use]
pub fn render(st: &NodeStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} role:{:?} protocol:{}",
        st.resource, st.role, st.protocol
    );
    let _ = writeln!(s, "  disk:{:?}", st.disk);
    let peer_role = st
        .peer_role
        .map_or_else(|| "Unknown".to_string(), |r| format!("{r:?}"));
    let _ = writeln!(
        s,
        "  {} connection:{} role:{}",
        st.peer, st.connection, peer_role
    );
    let _ = writeln!(
        s,
        "    peer-disk:{:?} out-of-sync:{}",
        st.peer_disk,
        mib(st.out_of_sync_bytes)
    );
    if let Some(p) = &st.sync {
        let eta = p.eta_s.map_or_else(|| "?".to_string(), hms);
        let _ = writeln!(
            s,
            "    {} {:>5.1}% {} ({}/{}) finish: {} speed: {} K/sec",
            bar(p.percent),
            p.percent,
            p.kind,
            mib(p.total_bytes.saturating_sub(p.remaining_bytes)),
            mib(p.total_bytes),
            eta,
            p.bytes_per_s / 1024
        );
    }
    match st.suspended {
        Some(replication_proto::machine::SuspendMode::Hold) => {
            let _ = writeln!(
                s,
                "  I/O SUSPENDED: new writes are held until `repctl resume-io`"
            );
        }
        Some(replication_proto::machine::SuspendMode::Fail) => {
            let _ = writeln!(
                s,
                "  I/O SUSPENDED: new writes fail with EIO until `repctl resume-io`"
            );
        }
        None => {}
    }
    if st.split_brain {
        let _ = writeln!(
            s,
            "  SPLIT BRAIN: this node refuses to connect until an admin resolves it"
        );
    }
    let c = &st.counters;
    let _ = writeln!(
        s,
        "  ns:{} nr:{} dw:{} dr:{} al:{} bm:{} lo:{} pe:{} ua:{} ap:{} oos:{}",
        c.ns, c.nr, c.dw, c.dr, c.al, c.bm, c.lo, c.pe, c.ua, c.ap, c.oos
    );
    if let Some(n) = &st.nbd {
        let _ = writeln!(
            s,
            "  nbd export: nbd://{}/{} ({} clients)",
            n, st.resource, st.nbd_clients
        );
    }
    if let Some(e) = &st.last_error {
        let _ = writeln!(s, "  last error: {e}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_shapes() {
        assert_eq!(bar(0.0), "[>...................]");
        assert_eq!(bar(50.0), "[==========>.........]");
        assert_eq!(bar(100.0), "[====================]");
        assert_eq!(hms(3725), "1:02:05");
    }
}
