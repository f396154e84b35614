//! `repctl adjust` in the engine: compare the re-read resource file with
//! the running configuration, refuse the whole change when any part of it
//! cannot apply to a running node, else apply it (the state machine's
//! settings, the handlers) and say what changed and when it takes effect.

use std::path::Path;

use rep_control::protocol::{AdjustReply, ADJUST_MAX_LINES};
use replication_proto::machine::NodeConfig;

use super::{InputTx, Runner};
use crate::config::{format_rate, Config};

/// What `adjust` compares against and needs to rebuild the handlers.
pub(super) struct Running {
    /// The configuration the node runs: as started, then as adjusted.
    pub(super) cfg: Config,
    pub(super) tx: InputTx,
}

/// The activity log the node runs with: the file's `sync.al-extents`, but
/// no more than `create-md` made room for in the metadata (a transaction
/// naming more extents than a slot holds cannot be written, and every
/// write behind it would fail with EIO). DRBD likewise keeps al-extents
/// within what its metadata holds.
pub(super) fn fit_al_extents(ncfg: &mut NodeConfig, capacity: u32, file: &Path) {
    if ncfg.al_extents > capacity {
        tracing::warn!(
            "{}: sync.al-extents = {} but the metadata holds {capacity} (it was created with \
             that): using {capacity}; to use more, `repctl down`, then `repctl create-md \
             --force` (forgets the bitmap: a full resync follows) and `repctl up`",
            file.display(),
            ncfg.al_extents
        );
        ncfg.al_extents = capacity;
    }
}

/// When a changed setting takes effect.
#[derive(Clone, Copy)]
enum When {
    Now,
    NextConnection,
    NextStart,
    /// Not while running: the reason's remedy is `repctl down`, then `up`.
    Never,
}

/// What changed between two configurations, one line each.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) applied: Vec<String>,
    pub(super) refused: Vec<String>,
}

impl Plan {
    fn note(&mut self, name: &str, old: String, new: String, when: When) {
        if old == new {
            return;
        }
        let line = match when {
            When::Now => format!("{name} {old} -> {new} (now)"),
            When::NextConnection => format!("{name} {old} -> {new} (at the next connection)"),
            When::NextStart => format!("{name} {old} -> {new} (at the next start)"),
            When::Never => {
                return self.refused.push(format!(
                    "{name} {old} -> {new}: cannot change while running"
                ))
            }
        };
        self.applied.push(line);
    }
}

fn ms(d: std::time::Duration) -> String {
    d.as_millis().to_string()
}

/// Every difference between `old` and `new` and when it would apply.
pub(super) fn plan(old: &Config, new: &Config) -> Plan {
    use When::{Never, NextConnection, NextStart, Now};
    let mut p = Plan::default();
    let (o, n) = (old, new);
    p.note(
        "resource.name",
        o.resource.name.clone(),
        n.resource.name.clone(),
        Never,
    );
    let proto = |c: &Config| format!("{:?}", c.resource.protocol);
    p.note("resource.protocol", proto(o), proto(n), NextConnection);
    if o.net.secret != n.net.secret {
        p.note("net.secret", "(old)".into(), "(new)".into(), NextConnection);
    }
    p.note("net.timeout-ms", ms(o.net.timeout), ms(n.net.timeout), Now);
    p.note(
        "net.ping-int-ms",
        ms(o.net.ping_int),
        ms(n.net.ping_int),
        Now,
    );
    let num = |v: u32| v.to_string();
    p.note(
        "net.ko-count",
        num(o.net.ko_count),
        num(n.net.ko_count),
        Now,
    );
    p.note(
        "net.max-buffers",
        num(o.net.max_buffers),
        num(n.net.max_buffers),
        Now,
    );
    p.note(
        "net.csums",
        o.net.csums.to_string(),
        n.net.csums.to_string(),
        Now,
    );
    p.note(
        "net.fencing",
        o.net.fencing.to_string(),
        n.net.fencing.to_string(),
        Now,
    );
    p.note(
        "sync.rate",
        format_rate(o.sync.rate),
        format_rate(n.sync.rate),
        Now,
    );
    let ctl = |c: &Config| {
        let k = c.sync.control;
        [
            ("sync.c-plan-ahead", k.plan_ahead_ds.to_string()),
            ("sync.c-fill-target", format_rate(k.fill_target_bytes)),
            ("sync.c-delay-target", k.delay_target_ds.to_string()),
            ("sync.c-max-rate", format_rate(k.max_rate_bytes_per_s)),
            ("sync.c-min-rate", format_rate(k.min_rate_bytes_per_s)),
        ]
    };
    // The controller reads its settings at each step: a running resync
    // follows them from the next one.
    for ((name, a), (_, b)) in ctl(o).into_iter().zip(ctl(n)) {
        p.note(name, a, b, Now);
    }
    // The activity log is sized from al-extents when the node starts.
    let al = |c: &Config| num(c.sync.al_extents);
    p.note("sync.al-extents", al(o), al(n), Never);
    if o.sync.al_extents != n.sync.al_extents {
        p.refused.push(
            "sync.al-extents: the activity log is sized when repd starts, and never beyond \
             what create-md made room for in the metadata (repd warns and uses that)"
                .into(),
        );
    }
    let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
    p.note(
        "sync.verify",
        dbg(&o.sync.verify),
        dbg(&n.sync.verify),
        Never,
    );
    p.note("startup", dbg(&o.startup), dbg(&n.startup), NextStart);
    p.note(
        "disk.on-io-error",
        o.disk.on_io_error.to_string(),
        n.disk.on_io_error.to_string(),
        Never,
    );
    let sb = &(&o.split_brain, &n.split_brain);
    p.note(
        "split-brain.after-sb-0pri",
        sb.0.after_sb_0pri.to_string(),
        sb.1.after_sb_0pri.to_string(),
        Now,
    );
    p.note(
        "split-brain.after-sb-1pri",
        sb.0.after_sb_1pri.to_string(),
        sb.1.after_sb_1pri.to_string(),
        Now,
    );
    p.note(
        "split-brain.after-sb-2pri",
        sb.0.after_sb_2pri.to_string(),
        sb.1.after_sb_2pri.to_string(),
        Now,
    );
    if o.handlers != n.handlers {
        p.note("handlers", "(old)".into(), "(new)".into(), Now);
    }
    p.note("metrics", dbg(&o.metrics), dbg(&n.metrics), Never);
    if o.cluster != n.cluster {
        // The cluster agent's table: repd has nothing of it to apply.
        p.applied
            .push("cluster: changed (the cluster agent reads it when it starts)".into());
    }
    for (i, (a, b)) in o.nodes.iter().zip(&n.nodes).enumerate() {
        p.note(
            &format!("node[{i}].name"),
            a.name.clone(),
            b.name.clone(),
            Never,
        );
        let at = |what: &str| format!("node.{}.{what}", a.name);
        p.note(
            &at("address"),
            a.address.to_string(),
            b.address.to_string(),
            Never,
        );
        p.note(
            &at("disk"),
            a.disk.display().to_string(),
            b.disk.display().to_string(),
            Never,
        );
        p.note(
            &at("meta-disk"),
            a.meta_disk.to_string(),
            b.meta_disk.to_string(),
            Never,
        );
        p.note(
            &at("device"),
            a.device.to_string(),
            b.device.to_string(),
            Never,
        );
        p.note(&at("nbd"), dbg(&a.nbd), dbg(&b.nbd), Never);
    }
    p
}

impl Runner {
    /// `repctl adjust`: all or nothing.
    pub(super) fn adjust(&mut self, path: &Path) -> AdjustReply {
        let refuse = |error: String, changes: Vec<String>| AdjustReply {
            ok: false,
            error: Some(error),
            changes,
        };
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => return refuse(e.to_string(), Vec::new()),
        };
        let mut p = plan(&self.running.cfg, &new);
        p.refused.truncate(ADJUST_MAX_LINES);
        p.applied.truncate(ADJUST_MAX_LINES);
        let name = &self.running.cfg.resource.name;
        if !p.refused.is_empty() {
            return refuse(
                format!(
                    "nothing applied: a running node cannot change that; `repctl down {name}`, \
                     then `repctl up {name}` starts it with the file as it is now"
                ),
                p.refused,
            );
        }
        let me = self.node.config().node.clone();
        let data = self.node.config().data_bytes;
        let ncfg = match new
            .local(Some(&me))
            .map(|(m, peer)| super::node_config(&new, m, peer, data))
        {
            Ok(Ok(mut c)) => {
                // Unchanged in the file (see `plan`); the node may run with
                // less than the file says (`fit_al_extents`).
                c.al_extents = self.node.config().al_extents;
                c
            }
            Ok(Err(e)) => return refuse(e, Vec::new()),
            Err(e) => return refuse(e.to_string(), Vec::new()),
        };
        if let Err(what) = self.node.reconfigure(ncfg) {
            return refuse(format!("{what}: cannot change while running"), Vec::new());
        }
        if self.running.cfg.handlers != new.handlers {
            if let Ok((m, peer)) = new.local(Some(&me)) {
                let tx = self.running.tx.clone();
                self.handlers = super::handlers::Runner::new(&new, m, peer, tx);
                let before_target = self.handlers.runs_before_resync_target();
                self.node.set_before_resync_target(before_target);
            }
        }
        for line in &p.applied {
            tracing::info!("adjust: {line}");
        }
        self.running.cfg = new;
        AdjustReply {
            ok: true,
            error: None,
            changes: p.applied,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use rep_control::protocol::{ControlCmd, Verb};

    use crate::config::Config;
    use crate::engine::{start, EngineOptions};
    use crate::frontend::{BlockBackend, IoRequest};
    use crate::md::{CreateParams, MetaDevice};

    fn config(dir: &std::path::Path, al_extents: u32) -> Config {
        let disk = dir.join("alpha.img");
        let text = format!(
            "[resource]\nname = \"al\"\n[net]\nsecret = \"s\"\n[sync]\nal-extents = {al_extents}\n\
             [[node]]\nname = \"alpha\"\naddress = \"127.0.0.1:1\"\ndisk = \"{}\"\nmeta-disk = \"internal\"\ndevice = 0\n\
             [[node]]\nname = \"beta\"\naddress = \"127.0.0.1:2\"\ndisk = \"/nonexistent\"\nmeta-disk = \"internal\"\ndevice = 1\n",
            disk.display()
        );
        Config::from_str_named(&text, "al.toml").unwrap()
    }

    /// al-extents raised in the file after create-md: the node keeps to
    /// the activity log its metadata has room for, so writes to more
    /// extents than that still succeed (they failed with EIO before).
    #[test]
    fn al_extents_above_the_metadata_capacity_do_not_fail_writes() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("alpha.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        let small = config(dir.path(), 7);
        let (me, _) = small.local(Some("alpha")).unwrap();
        MetaDevice::create(&CreateParams::from_config(&small, me), false).unwrap();
        let opts = EngineOptions {
            direct: false,
            connect: false,
        };
        let eng = start(&config(dir.path(), 64), Some("alpha"), &opts).unwrap();
        let h = eng.handle.clone();
        let r = h.control(ControlCmd::Verb(Verb::Primary { force: true }));
        assert!(r.unwrap().ok);
        // One 4 KiB write in each of 12 activity-log extents (4 MiB each).
        for extent in 0..12u64 {
            let (tx, rx) = std::sync::mpsc::channel();
            let req = IoRequest::Write {
                offset: extent << 22,
                data: bytes::Bytes::from(vec![7u8; 4096]),
                fua: false,
            };
            h.submit(req, Box::new(move |r| tx.send(r).unwrap()));
            let r = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            assert!(r.is_ok(), "write to extent {extent}: {r:?}");
        }
        let _ = h.control(ControlCmd::Down { force: false });
        eng.thread.join().unwrap();
    }

    /// Each kind of change lands in its class; al-extents is refused with
    /// the reason.
    #[test]
    fn plan_sorts_changes_by_when_they_apply() {
        let dir = tempfile::tempdir().unwrap();
        let old = config(dir.path(), 7);
        let mut new = old.clone();
        new.sync.rate = 8 << 20;
        new.sync.control.plan_ahead_ds = 20;
        new.sync.control.min_rate_bytes_per_s = 4 << 20;
        new.resource.protocol = replication_proto::wire::Protocol::B;
        let p = super::plan(&old, &new);
        assert!(p.refused.is_empty());
        assert_eq!(
            p.applied,
            [
                "resource.protocol C -> B (at the next connection)",
                "sync.rate 100M -> 8M (now)",
                "sync.c-plan-ahead 0 -> 20 (now)",
                "sync.c-min-rate 250K -> 4M (now)"
            ]
        );
        new.sync.al_extents = 100;
        let p = super::plan(&old, &new);
        assert_eq!(p.refused.len(), 2, "{:?}", p.refused);
        assert!(p.refused[1].contains("what create-md made room for"));
    }
}
