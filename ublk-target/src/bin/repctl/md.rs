//! The verbs that work on the resource file and this node's disk without
//! a running repd: `dump`, `create-md`, `dump-md`.

use std::fmt::Write as _;
use std::path::Path;

use rep_control::config::{Config, MetaDisk, Node};
use replication_proto::meta::{MetaFlags, BM_BLOCK_SIZE};
use serde_json::json;
use ublk_target::disk_lock::DiskLock;
use ublk_target::md::{flag_names, AlState, CreateParams, MdError, MetaDevice, MetaLocation};

use super::{eprintln_safe, print_out, CreateMdArgs, DumpArgs, DumpMdArgs, Failure, Target};

/// `repctl dump`: the checks `up` makes before it starts repd (the file,
/// then this node's entry) and nothing else; the disk is not looked at.
pub(super) fn dump(t: &Target, args: &DumpArgs) -> Result<(), Failure> {
    let cfg = t.load()?;
    let (me, peer) = cfg.local(t.node.as_deref())?;
    let cannot =
        |e: &dyn std::fmt::Display| Failure(format!("cannot print {}: {e}", t.config().display()));
    let text = if args.json {
        // Several: one object per line (JSON Lines); one: as it always was.
        let v = if t.several {
            cfg.to_json_line()
        } else {
            cfg.to_json()
        };
        let v = v.map_err(|e| cannot(&e))?;
        format!("{v}\n")
    } else {
        let body = cfg.to_toml().map_err(|e| cannot(&e))?;
        // Comments, so the output stays a valid resource file.
        format!(
            "# {:?} as repctl reads it for node \"{}\" (peer \"{}\"):\n\
             # every key with its effective value, defaults filled in.\n\n{body}",
            cfg.path, me.name, peer.name
        )
    };
    print_out(&text)
}

/// Load the config and find this node; the local disk must exist.
fn load_local(t: &Target) -> Result<(Config, Node), Failure> {
    let cfg = t.load()?;
    let me = cfg.local(t.node.as_deref())?.0.clone();
    cfg.check_local_disk(&me)?;
    Ok((cfg, me))
}

pub(super) fn create_md(t: &Target, args: &CreateMdArgs) -> Result<(), Failure> {
    let (cfg, me) = load_local(t)?;
    // A running repd holds this lock: fresh metadata under it would be
    // overwritten by its next metadata write, or mislead it.
    let _lock = DiskLock::acquire(&me).map_err(|e| Failure(format!("create-md: {e}")))?;
    let params = CreateParams::from_config(&cfg, &me);
    let dev = MetaDevice::create(&params, args.force)?;
    let l = dev.layout();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "repctl: wrote fresh metadata for resource \"{}\" on node \"{}\"",
        cfg.resource.name, me.name
    );
    let _ = match &me.meta_disk {
        MetaDisk::Internal => writeln!(
            s,
            "  meta-disk   internal: last {} of {}",
            human_bytes(l.md_bytes),
            me.disk.display()
        ),
        MetaDisk::External(p) => writeln!(
            s,
            "  meta-disk   {} ({})",
            p.display(),
            human_bytes(l.md_bytes)
        ),
    };
    let _ = writeln!(
        s,
        "  data        {} bytes ({}) of {}",
        l.data_bytes,
        human_bytes(l.data_bytes),
        me.disk.display()
    );
    let _ = writeln!(s, "  al-extents  {}", l.al_extents);
    let _ = writeln!(
        s,
        "The data is marked Inconsistent; the first connect to the peer decides which side's data is kept."
    );
    print_out(&s)
}

fn hex(u: u64) -> String {
    format!("{u:016X}")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024 && unit + 1 < UNITS.len() {
        if v % 1024 != 0 {
            // Not exact: one decimal.
            #[allow(clippy::cast_precision_loss)]
            let mut f = n as f64;
            let mut u = 0;
            while f >= 1024.0 && u + 1 < UNITS.len() {
                f /= 1024.0;
                u += 1;
            }
            return format!("{f:.1} {}", UNITS.get(u).unwrap_or(&"B"));
        }
        v /= 1024;
        unit += 1;
    }
    format!("{v} {}", UNITS.get(unit).unwrap_or(&"B"))
}

/// What the flags say about the local data, in DRBD's disk-state words.
fn disk_state(flags: MetaFlags) -> &'static str {
    if !flags.has(MetaFlags::CONSISTENT) {
        "Inconsistent"
    } else if flags.has(MetaFlags::WAS_UP_TO_DATE) {
        "UpToDate (when last attached)"
    } else {
        "Consistent or Outdated"
    }
}

pub(super) fn dump_md(t: &Target, args: &DumpMdArgs) -> Result<(), Failure> {
    let (cfg, me) = load_local(t)?;
    let loc = MetaLocation::of(&me);
    let mut dev = MetaDevice::open_read_only(&loc, &cfg.resource.name, &me.name)?;
    let al = dev.read_al();
    let text = if args.json {
        format!("{}\n", json_dump(&dev, &me, &al))
    } else {
        human_dump(&dev, &me, &al)
    };
    if let Err(e) = &al {
        eprintln_safe(&format!(
            "repctl: warning: {}{e}; if this node crashed while Primary, all of its data must be resynced",
            t.prefix()
        ));
    }
    print_out(&text)
}

/// `dump-md --json`: the superblock, the activity log and the bitmap.
fn json_dump(dev: &MetaDevice, me: &Node, al: &Result<AlState, MdError>) -> serde_json::Value {
    let sb = dev.superblock();
    let l = sb.layout;
    let dirty = dev.dirty_bits();
    let g = sb.generations;
    json!({
        "resource": sb.resource,
        "node": sb.node,
        "format_version": sb.format_version,
        "superblock_seq": sb.seq,
        "disk": me.disk,
        "meta_disk": me.meta_disk.to_string(),
        "meta_path": dev.path(),
        "superblock_offset": dev.superblock_offset(),
        "md_offset": l.md_offset,
        "md_bytes": l.md_bytes,
        "data_bytes": l.data_bytes,
        "device_id": sb.device_id,
        "generations": {
            "current": hex(g.current),
            "bitmap": hex(g.bitmap),
            "history": [hex(g.history[0]), hex(g.history[1])],
        },
        "flags": flag_names(sb.flags),
        "disk_state": disk_state(sb.flags),
        "al": json_al(dev, al),
        "bitmap": {
            "bits": l.bm_bits(),
            "bytes": l.bm_words() * 8,
            "pages": l.bm_pages,
            "dirty_bits": dirty,
            "dirty_bytes": dirty * BM_BLOCK_SIZE,
            "bad_pages": dev.bad_bitmap_pages(),
        },
    })
}

/// The `al` object of `dump-md --json`; an unreadable log has nulls and
/// the error.
fn json_al(dev: &MetaDevice, al: &Result<AlState, MdError>) -> serde_json::Value {
    let l = dev.superblock().layout;
    match al {
        Ok(AlState {
            seq,
            extents,
            torn_slots,
        }) => json!({
            "extents_max": l.al_extents,
            "slots": l.al_slots,
            "seq": seq,
            "active_extents": extents,
            "torn_slots": torn_slots,
        }),
        Err(e) => json!({
            "extents_max": l.al_extents,
            "slots": l.al_slots,
            "seq": null,
            "active_extents": null,
            "error": e.to_string(),
        }),
    }
}

/// `dump-md` for people: one `key   value` line per field, in the order
/// of the on-disk layout.
fn human_dump(dev: &MetaDevice, me: &Node, al: &Result<AlState, MdError>) -> String {
    let sb = dev.superblock();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# repctl dump-md: resource \"{}\", node \"{}\"",
        sb.resource, sb.node
    );
    let _ = writeln!(s, "format-version   {}", sb.format_version);
    let _ = writeln!(s, "superblock-seq   {}", sb.seq);
    human_layout(&mut s, dev, me);
    human_generations(&mut s, dev);
    human_al(&mut s, dev, al);
    human_bitmap(&mut s, dev);
    s
}

/// Where the metadata and the data are, and their sizes.
fn human_layout(s: &mut String, dev: &MetaDevice, me: &Node) {
    let sb = dev.superblock();
    let l = sb.layout;
    let path: &Path = dev.path();
    let _ = match &me.meta_disk {
        MetaDisk::Internal => writeln!(
            s,
            "meta-disk        internal (the end of {})",
            me.disk.display()
        ),
        MetaDisk::External(p) => writeln!(s, "meta-disk        {}", p.display()),
    };
    let _ = writeln!(
        s,
        "superblock       offset {} in {}",
        dev.superblock_offset(),
        path.display()
    );
    let _ = writeln!(
        s,
        "data-bytes       {} ({})",
        l.data_bytes,
        human_bytes(l.data_bytes)
    );
    let _ = writeln!(
        s,
        "md-bytes         {} ({}) at offset {}",
        l.md_bytes,
        human_bytes(l.md_bytes),
        l.md_offset
    );
    let _ = writeln!(s, "device           /dev/ublkb{}", sb.device_id);
}

/// The data generations, the flags and the disk state they give.
fn human_generations(s: &mut String, dev: &MetaDevice) {
    let sb = dev.superblock();
    let g = sb.generations;
    let _ = writeln!(s, "generations      current  {}", hex(g.current));
    let _ = writeln!(s, "                 bitmap   {}", hex(g.bitmap));
    let _ = writeln!(
        s,
        "                 history  {} {}",
        hex(g.history[0]),
        hex(g.history[1])
    );
    let names = flag_names(sb.flags);
    let _ = writeln!(
        s,
        "flags            {}",
        if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.join(" ")
        }
    );
    let _ = writeln!(s, "disk-state       {}", disk_state(sb.flags));
}

/// The activity log's last transaction and its active extents.
fn human_al(s: &mut String, dev: &MetaDevice, al: &Result<AlState, MdError>) {
    let l = dev.superblock().layout;
    match al {
        Ok(a) => {
            let _ = writeln!(
                s,
                "activity-log     transaction {}, {} of {} extents active ({} slots{})",
                a.seq,
                a.extents.len(),
                l.al_extents,
                l.al_slots,
                if a.torn_slots > 0 {
                    format!(", {} torn", a.torn_slots)
                } else {
                    String::new()
                }
            );
            if !a.extents.is_empty() {
                let list: Vec<String> = a.extents.iter().map(u32::to_string).collect();
                let _ = writeln!(s, "                 extents: {}", list.join(" "));
            }
        }
        Err(e) => {
            let _ = writeln!(s, "activity-log     UNREADABLE: {e}");
        }
    }
}

/// The bitmap's size and how much of it is dirty.
fn human_bitmap(s: &mut String, dev: &MetaDevice) {
    let l = dev.superblock().layout;
    let dirty = dev.dirty_bits();
    let _ = writeln!(
        s,
        "bitmap           {} bits ({} in {} page{}), {} dirty ({}), {} bad pages",
        l.bm_bits(),
        human_bytes(l.bm_words() * 8),
        l.bm_pages,
        if l.bm_pages == 1 { "" } else { "s" },
        dirty,
        human_bytes(dirty * BM_BLOCK_SIZE),
        dev.bad_bitmap_pages()
    );
}
