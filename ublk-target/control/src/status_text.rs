//! `repctl status` in words: drbdadm status plus the /proc/drbd counters.

use std::fmt::Write as _;

use replication_proto::wire::Role;

use crate::protocol::NodeStatus;

/// A size as /proc/drbd shows it: MiB with one decimal, but KiB below one
/// MiB, where "0.0M" would hide a few marked blocks (`oos:20` next to it).
fn size(b: u64) -> String {
    if b < 1 << 20 {
        format!("{}K", b.div_ceil(1024))
    } else {
        format!("{:.1}M", b as f64 / f64::from(1u32 << 20))
    }
}

/// Progress bar like /proc/drbd's `[=====>.......]`.
fn bar(percent: f64) -> String {
    let width = 20usize;
    // Full only when done: 97.3 % is 19 of 20 cells and the arrow.
    let filled = if percent >= 100.0 {
        width
    } else {
        (0..width - 1)
            .take_while(|&i| ((i + 1) as f64) * 5.0 <= percent)
            .count()
    };
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

/// An age as "42s", "5m12s", "3h04m".
fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs / 60) % 60),
    }
}

fn hms(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// The readable status of one node.
#[must_use]
pub fn render(st: &NodeStatus) -> String {
    let mut s = String::new();
    replication(&mut s, st);
    warnings(&mut s, st);
    let c = &st.counters;
    let _ = writeln!(
        s,
        "  ns:{} nr:{} dw:{} dr:{} al:{} bm:{} lo:{} pe:{} ua:{} ap:{} oos:{}",
        c.ns, c.nr, c.dw, c.dr, c.al, c.bm, c.lo, c.pe, c.ua, c.ap, c.oos
    );
    extras(&mut s, st);
    s
}

/// Both nodes' roles and disks, the connection, and a resync's progress.
fn replication(s: &mut String, st: &NodeStatus) {
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
        size(st.out_of_sync_bytes)
    );
    if let Some(p) = &st.sync {
        let eta = p.eta_s.map_or_else(|| "?".to_string(), hms);
        let _ = writeln!(
            s,
            "    {} {:>5.1}% {} ({}/{}) finish: {} speed: {} K/sec",
            bar(p.percent),
            p.percent,
            p.kind,
            size(p.total_bytes.saturating_sub(p.remaining_bytes)),
            size(p.total_bytes),
            eta,
            p.bytes_per_s / 1024
        );
        if let Some(want) = p.rate_target_bytes_per_s {
            // /proc/drbd's `want:` while the resync controller runs.
            let why = if p.throttled {
                "c-min-rate: application I/O"
            } else {
                "resync controller"
            };
            let _ = writeln!(s, "    want: {} K/sec ({why})", want / 1024);
        }
    }
    if st.sync_paused {
        let _ = writeln!(
            s,
            "    resync-suspended:user (`repctl pause-sync`; `repctl resume-sync` releases it)"
        );
    }
}

/// Suspended I/O and a split brain: what holds the device, and what ends it.
fn warnings(s: &mut String, st: &NodeStatus) {
    let alone = !st.peer_connected();
    match st.suspended {
        // The fencing rule, not a fault: say why and what ends it.
        Some(replication_proto::machine::SuspendMode::Hold)
            if st.freeze_on_disconnect && alone && st.role == Role::Primary =>
        {
            let _ = writeln!(
                s,
                "  I/O FROZEN: this Primary runs without its peer and freeze-on-disconnect is armed, \
                 so it acknowledges nothing alone; new writes are held until `repctl resume-io` \
                 (run it once the peer is known to be down or outdated; the cluster agent does \
                 after its witness acknowledged this node's new data generation)"
            );
        }
        Some(replication_proto::machine::SuspendMode::Hold) if st.fencing.frozen => {
            let _ = writeln!(
                s,
                "  I/O FROZEN for fencing: new writes are held until the fence-peer handler \
                 says the peer is fenced, the peer is back, or `repctl resume-io`"
            );
        }
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
}

/// Fencing, when a policy is set: the handler running, the peer fenced,
/// the last handler's exit code.
fn fencing(s: &mut String, f: &replication_proto::machine::FenceStatus) {
    if f.policy == replication_proto::machine::Fencing::DontCare && !f.peer_fenced {
        return;
    }
    let state = if f.running {
        "fence-peer handler running"
    } else if f.peer_fenced {
        "peer fenced (Outdated until a resync)"
    } else {
        "peer not fenced"
    };
    let last = match (f.last_exit, f.last_outcome) {
        (Some(code), Some(o)) => format!("; last handler exit {code} ({o:?})"),
        (None, Some(_)) => "; last handler did not exit by itself".to_owned(),
        _ => String::new(),
    };
    let _ = writeln!(s, "  fencing {}: {state}{last}", f.policy);
}

/// The `[handlers]` commands that ran: how each last ended.
fn handler_runs(s: &mut String, runs: &[crate::protocol::HandlerRun]) {
    for r in runs {
        let how = match (r.exit, r.timed_out) {
            (_, true) => "KILLED at timeout-ms".to_owned(),
            (Some(code), _) => format!("exit {code}"),
            (None, false) => "did not exit by itself (a signal, or it could not start)".to_owned(),
        };
        let _ = writeln!(s, "  handler {}: {how} (at {})", r.name, r.at);
    }
}

/// The lines shown only when they apply: crash resume, the NBD export, the
/// last error.
fn extras(s: &mut String, st: &NodeStatus) {
    if let Some(r) = &st.resume {
        // A restarted repd that may take back the Primary role of the run
        // that crashed: what it waits for, or what became of it.
        let _ = writeln!(s, "  after a crash: {r}");
    }
    fencing(s, &st.fencing);
    handler_runs(s, &st.handlers);
    if let Some(n) = &st.nbd {
        let _ = writeln!(
            s,
            "  nbd export: nbd://{}/{} ({} client{})",
            n,
            st.resource,
            st.nbd_clients,
            if st.nbd_clients == 1 { "" } else { "s" }
        );
    }
    match &st.size_note {
        Some(n) => {
            let _ = writeln!(s, "  size: {} ({n})", size(st.data_bytes));
        }
        None => {
            let _ = writeln!(s, "  size: {}", size(st.data_bytes));
        }
    }
    if let Some(w) = &st.nbd_warning {
        let _ = writeln!(s, "  WARNING: {w}");
    }
    if let Some(v) = &st.last_verify {
        last_verify(s, v);
    }
    if let Some(e) = &st.last_error {
        match st.last_error_age_s {
            Some(age) => {
                let _ = writeln!(s, "  last error ({} ago): {e}", ago(age));
            }
            None => {
                let _ = writeln!(s, "  last error: {e}");
            }
        }
    }
}

/// How many of the last verify's ranges the text names (`--json` lists
/// more).
const VERIFY_RANGES_SHOWN: usize = 4;

fn last_verify(s: &mut String, v: &crate::protocol::LastVerify) {
    let ranges = match v.range_count {
        0 => String::new(),
        1 => " in 1 range".to_owned(),
        n => format!(" in {n} ranges"),
    };
    let _ = writeln!(
        s,
        "  last verify ({} ago): {} compared, {} out of sync{ranges}",
        ago(v.age_s),
        size(v.verified_bytes),
        size(v.out_of_sync_bytes)
    );
    if v.ranges.is_empty() {
        return;
    }
    let shown: Vec<String> = v
        .ranges
        .iter()
        .take(VERIFY_RANGES_SHOWN)
        .map(|r| format!("start={} len_bytes={}", r.start, r.len_bytes))
        .collect();
    let more = v.range_count.saturating_sub(shown.len() as u64);
    let _ = writeln!(
        s,
        "    out of sync: {}{}",
        shown.join(", "),
        if more > 0 {
            format!(
                " and {more} more (status --json lists the first {})",
                v.ranges.len()
            )
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_shapes() {
        assert_eq!(bar(0.0), "[>...................]");
        assert_eq!(bar(50.0), "[==========>.........]");
        assert_eq!(bar(100.0), "[====================]");
        // Not full before the end (issue 16: full at 97.3 %).
        assert_eq!(bar(97.3), "[===================>]");
        assert_eq!(bar(99.99), "[===================>]");
        assert_eq!(bar(5.0), "[=>..................]");
        assert_eq!(hms(3725), "1:02:05");
    }

    #[test]
    fn sizes_below_a_mib_are_in_kib() {
        assert_eq!(size(0), "0K");
        assert_eq!(size(20480), "20K");
        assert_eq!(size(512), "1K");
        assert_eq!(size(1 << 20), "1.0M");
        assert_eq!(size(3 << 19), "1.5M");
        assert_eq!(ago(42), "42s");
        assert_eq!(ago(312), "5m12s");
        assert_eq!(ago(3 * 3600 + 240), "3h04m");
    }
}
