//! `repctl`: the administration tool, like DRBD's `drbdadm`.
//!
//! Every verb reads the resource configuration (`--config`, default
//! `/etc/rep/r0.toml`) and acts for this node (`--node`, default the host
//! name). Failures print `repctl: error: ...` on stderr and exit with 1.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use replication_proto::meta::{MetaFlags, BM_BLOCK_SIZE};
use serde_json::json;
use ublk_target::config::{Config, ConfigError, MetaDisk, Node};
use ublk_target::md::{flag_names, AlState, CreateParams, MdError, MetaDevice, MetaLocation};

/// Default configuration file.
const DEFAULT_CONFIG: &str = "/etc/rep/r0.toml";

#[derive(Debug, Parser)]
#[command(
    name = "repctl",
    version,
    about = "Administer a replicated block device resource (the drbdadm of this project)",
    long_about = "Administer a replicated block device resource: a disk mirrored between two nodes, \
                  like DRBD 8.4, served locally as /dev/ublkbN.\n\n\
                  Every command reads the resource file given by --config (TOML, identical on both \
                  nodes, like drbd.conf; see ublk-target/examples/r0.toml) and acts for this node, \
                  chosen by --node (default: the host name, like DRBD's `on HOSTNAME` sections).\n\n\
                  First steps on each node:\n  \
                  repctl --config r0.toml create-md      # like `drbdadm create-md r0`\n  \
                  repctl --config r0.toml dump-md        # like `drbdadm dump-md r0`",
    after_help = "On failure repctl prints `repctl: error: ...` on stderr and exits with status 1."
)]
struct Cli {
    /// The resource configuration file (TOML).
    #[arg(long, short = 'c', global = true, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,

    #[arg(
        long,
        short = 'n',
        global = true,
        value_name = "NAME",
        help = "This node's name: which [[node]] entry of the config is \"us\" \
                [default: the host name, or its first label]"
    )]
    node: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write fresh metadata for this node's disk (drbdadm create-md)
    #[command(
        long_about = "Write fresh metadata for this node's disk (like `drbdadm create-md`).\n\n\
        With meta-disk = \"internal\" the metadata (superblock, activity log, dirty bitmap) takes \
        the end of the backing disk, so the replicated device is slightly smaller than the disk; \
        with a path, it goes into that file (created if missing) and the whole disk holds data.\n\n\
        Fresh metadata marks the data Inconsistent with no data generation yet: the first \
        connect decides which side's data is used and syncs the other.\n\n\
        Refuses to overwrite existing metadata (valid or corrupt) unless --force is given: \
        overwriting forgets the data generations, so the next connect needs a full sync. \
        The data itself is not touched."
    )]
    CreateMd(CreateMdArgs),

    /// Print this node's metadata (drbdadm dump-md)
    #[command(
        long_about = "Print this node's metadata (like `drbdadm dump-md`): the superblock \
        (data size, generation identifiers, flags), the newest activity-log transaction and a \
        summary of the dirty bitmap.\n\n\
        Reads only; never writes. A damaged superblock is reported (\"checksum mismatch\") and \
        the command fails. Damaged bitmap pages are counted as bad pages (their blocks count as \
        dirty) and do not make it fail."
    )]
    DumpMd(DumpMdArgs),
}

#[derive(Debug, Args)]
struct CreateMdArgs {
    /// Overwrite existing metadata (forgets the data generations and the bitmap)
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct DumpMdArgs {
    /// Print one JSON object instead of the readable form
    #[arg(long)]
    json: bool,
}

/// A failure to report: the message says what went wrong and what to do.
#[derive(Debug)]
struct Failure(String);

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        let hint = match &e {
            ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                format!("; pass --config FILE (the default is {DEFAULT_CONFIG}; see ublk-target/examples/r0.toml)")
            }
            _ => String::new(),
        };
        Failure(format!("{e}{hint}"))
    }
}

impl From<MdError> for Failure {
    fn from(e: MdError) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_failure(&e),
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln_safe(&format!("repctl: error: {msg}"));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout with status 0; usage errors become
/// `repctl: error: ...` with status 1.
fn clap_failure(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = io::stdout().write_all(e.render().to_string().as_bytes());
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = io::stderr().write_all(e.render().to_string().as_bytes());
            eprintln_safe("repctl: error: a command is required (see `repctl --help`)");
            ExitCode::FAILURE
        }
        _ => {
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprintln_safe(&format!("repctl: error: {}", text.trim_end()));
            ExitCode::FAILURE
        }
    }
}

fn eprintln_safe(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

fn print_out(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Failure(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::CreateMd(args) => create_md(cli, args),
        Command::DumpMd(args) => dump_md(cli, args),
    }
}

/// Load the config and find this node; the local disk must exist.
fn load_local(cli: &Cli) -> Result<(Config, Node), Failure> {
    let cfg = Config::load(&cli.config)?;
    let me = cfg.local(cli.node.as_deref())?.0.clone();
    cfg.check_local_disk(&me)?;
    Ok((cfg, me))
}

fn create_md(cli: &Cli, args: &CreateMdArgs) -> Result<(), Failure> {
    let (cfg, me) = load_local(cli)?;
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

fn dump_md(cli: &Cli, args: &DumpMdArgs) -> Result<(), Failure> {
    let (cfg, me) = load_local(cli)?;
    let loc = MetaLocation::of(&me);
    let mut dev = MetaDevice::open_read_only(&loc, &cfg.resource.name, &me.name)?;
    let al = dev.read_al();
    let sb = dev.superblock().clone();
    let l = sb.layout;
    let dirty = dev.dirty_bits();
    let bad = dev.bad_bitmap_pages();
    let meta_disk = me.meta_disk.to_string();
    let g = sb.generations;
    let text = if args.json {
        let al_json = match &al {
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
        };
        let v = json!({
            "resource": sb.resource,
            "node": sb.node,
            "format_version": sb.format_version,
            "superblock_seq": sb.seq,
            "disk": me.disk,
            "meta_disk": meta_disk,
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
            "al": al_json,
            "bitmap": {
                "bits": l.bm_bits(),
                "bytes": l.bm_words() * 8,
                "pages": l.bm_pages,
                "dirty_bits": dirty,
                "dirty_bytes": dirty * BM_BLOCK_SIZE,
                "bad_pages": bad,
            },
        });
        format!("{v}\n")
    } else {
        human_dump(&dev, &me, &al)
    };
    if let Err(e) = &al {
        eprintln_safe(&format!(
            "repctl: warning: {e}; if this node crashed while Primary, all of its data must be resynced"
        ));
    }
    print_out(&text)
}

fn human_dump(dev: &MetaDevice, me: &Node, al: &Result<AlState, MdError>) -> String {
    let sb = dev.superblock();
    let l = sb.layout;
    let g = sb.generations;
    let mut s = String::new();
    let path: &Path = dev.path();
    let _ = writeln!(
        s,
        "# repctl dump-md: resource \"{}\", node \"{}\"",
        sb.resource, sb.node
    );
    let _ = writeln!(s, "format-version   {}", sb.format_version);
    let _ = writeln!(s, "superblock-seq   {}", sb.seq);
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
    s
}
