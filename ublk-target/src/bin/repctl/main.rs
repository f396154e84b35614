//! `repctl`: the administration tool, like DRBD's `drbdadm`.
//!
//! Every verb reads the resource files it is given (a RESOURCE name or
//! `all` among `--config-dir`'s `NAME.toml`, default `/etc/rep`; or one
//! `--config FILE`) and acts for this node (`--node`, default the host
//! name), once per resource (`targets.rs`). Failures print
//! `repctl: error: ...` on stderr and exit with 1.

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rep_control::client::DEFAULT_RUN_DIR;
use rep_control::config::ConfigError;
use rep_control::protocol::{ControlCmd, Verb};
use rep_control::resources::{Unnamed, DEFAULT_CONFIG_DIR};
use ublk_target::md::MdError;

use targets::{Select, Target};

mod adjust;
mod events;
mod import;
mod latency;
mod md;
mod resize;
mod targets;

#[derive(Debug, Parser)]
#[command(
    name = "repctl",
    version,
    about = "Administer a replicated block device resource (the drbdadm of this project)",
    long_about = "Administer a replicated block device resource: a disk mirrored between two nodes, \
                  like DRBD 8.4, served locally as /dev/ublkbN.\n\n\
                  Each resource has its own file in --config-dir (default /etc/rep): r0.toml for \
                  resource r0 (TOML, identical on both nodes, like drbd.conf; see \
                  ublk-target/examples/r0.toml). Like drbdadm, a command takes the resource's name, \
                  or `all` for every one; without one, `status` and `dump` show all, and the other \
                  commands act on the only resource there is (with several, name one). --config FILE \
                  uses that one file instead. Each command acts for this node, chosen by --node \
                  (default: the host name, like DRBD's `on HOSTNAME` sections).\n\n\
                  First steps on each node:\n  \
                  repctl dump r0                # check the file, like `drbdadm dump r0`\n  \
                  repctl create-md r0           # like `drbdadm create-md r0`\n  \
                  repctl up all                 # one repd per resource, like `drbdadm up all`\n  \
                  repctl primary r1             # r1 only, like `drbdadm primary r1`\n  \
                  repctl status                 # every resource, like `drbdadm status`\n  \
                  repctl --config r0.toml dump-md   # one file anywhere",
    after_help = "On failure repctl prints `repctl: error: ...` on stderr and exits with status 1. \
                  With several resources it goes on with the next one after a failure, names the \
                  resource in each error, and if any failed, lists them on a last error line and \
                  exits with status 1."
)]
struct Cli {
    /// One resource file (TOML) to use instead of --config-dir's
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The directory of the resource files, one NAME.toml per resource
    #[arg(long, global = true, value_name = "DIR", env = "REP_CONFIG_DIR", default_value = DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,

    #[arg(
        long,
        short = 'n',
        global = true,
        value_name = "NAME",
        env = "REP_NODE",
        help = "This node's name: which [[node]] entry of the config is \"us\" \
                [default: the host name, or its first label]"
    )]
    node: Option<String>,

    /// Where the daemons' control sockets and logs live.
    #[arg(long, global = true, value_name = "DIR", env = "REP_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the resource file and print it with every default filled in (drbdadm dump)
    #[command(
        long_about = "Check the resource file and print it normalised, like `drbdadm dump`: \
        read the resource's file, validate it with the checks of `repctl up` and repd (all but \
        the disk's existence), find this node's \
        [[node]] entry (--node), then print every section and key with the value that takes \
        effect, defaults filled in, in the layout of examples/r0.toml. The output is itself a \
        valid resource file that loads to the same configuration: use it to see what a short \
        file really means, or to compare the files of both nodes (`diff` the two dumps).\n\n\
        It touches nothing: no disk or metadata file is opened, no daemon is asked, nothing \
        is written. The backing disks need not exist (like drbdadm dump, it does not look at \
        them), so a file can be checked before the disks are made or on another machine; \
        `repctl up` and `create-md` check that this node's disk exists.\n\n\
        The [cluster] table belongs to the cluster agent: its keys are printed as written \
        (sorted, its defaults not filled in) and `cluster-agent` checks it. The output \
        contains the [net] secret, as the file does.\n\n\
        Exits 0 when the file is valid; otherwise prints the error `repctl up` would print \
        and exits 1.\n\n\
        Without a RESOURCE (or with `all`) it dumps every file of --config-dir in turn, like \
        `drbdadm dump` prints every resource (--json: one object per line)."
    )]
    Dump(DumpArgs),

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

    /// Start this node's daemon and connect to the peer (drbdadm up)
    #[command(
        long_about = "Start this node's daemon (repd) in the background and connect to the \
        peer, like `drbdadm up`: attach the disk, start Secondary, try to reach the peer and \
        resync whatever the generations say. Returns once the daemon answers on its control \
        socket. The daemon logs to <run-dir>/<resource>.<node>.log.\n\n\
        After repd died while Primary (kill -9), `up` is all it takes: the restarted daemon \
        resyncs its activity log from the peer and, when the kernel still holds /dev/ublkbN \
        ([startup] resume-after-crash = \"held-device\", the default), becomes Primary by \
        itself once UpToDate, if the peer is connected, Secondary and on the same data \
        generation: the held I/O goes on. It stays Secondary if the peer is Primary or the \
        data moved to another generation (the peer was promoted meanwhile), and waits while \
        the peer cannot be reached (`repctl primary --force` resumes without it). \
        \"always\" resumes without a held device too, \"never\" (and any resource file with a \
        [cluster] table: the agent decides) leaves it to you. `status --json` shows it as \
        `resume`."
    )]
    Up(UpArgs),
    /// Stop this node's daemon in order (drbdadm down)
    #[command(
        long_about = "Stop this node's daemon in order, like `drbdadm down`: demote if \
        Primary (refused while requests are in flight), flush, tell the peer, write clean \
        metadata, exit. Waits until the daemon is gone.\n\n\
        Refused while the device is in use: NBD clients connected, or /dev/ublkbN mounted \
        or open (\"Device is held open by someone\"): the daemon then keeps running and the \
        command exits with status 1. --force cuts the NBD clients."
    )]
    Down(DownArgs),
    /// Make this node Primary: it serves the device (drbdadm primary)
    #[command(
        long_about = "Make this node Primary: its NBD export (and /dev/ublkbN) accept I/O \
        and every write is replicated to the peer.\n\n\
        Needs UpToDate data, and the peer must not be Primary. --force declares this node's \
        data the good copy even if it is Inconsistent or Outdated and starts a full sync to \
        the peer (DRBD's `primary --force` / --overwrite-data-of-peer): use it for the first \
        promotion after create-md, or to run on when the peer is lost for good.\n\n\
        With freeze-on-disconnect armed and the peer not connected, the new Primary starts \
        frozen (the fencing rule: it acknowledges nothing alone before whoever decides \
        failovers knows it runs alone); status says so, and `repctl resume-io` lets writes in."
    )]
    Primary(PrimaryArgs),
    /// Make this node Secondary: stop serving I/O (drbdadm secondary)
    Secondary(Select),
    /// Connect to the peer (drbdadm connect)
    #[command(
        long_about = "Connect to the peer again after a disconnect or a split brain, \
        like `drbdadm connect`.\n\n\
        After a split brain, on the node whose changes are to be thrown away (the victim) \
        run `repctl secondary` then `repctl connect --discard-my-data`; on the survivor \
        `repctl connect`. The victim then resyncs from the survivor."
    )]
    Connect(ConnectArgs),
    /// Disconnect from the peer and stay StandAlone (drbdadm disconnect)
    Disconnect(Select),
    /// Wait until the peer is connected (drbdadm wait-connect; [startup] timeouts)
    #[command(
        long_about = "Wait until this node is connected to its peer (Connected, or syncing, \
        or verifying), like `drbdadm wait-connect` and the wait of DRBD's init script at boot: \
        run it after `repctl up` in a boot script before anything uses the device.\n\n\
        How long: --timeout if given, else [startup] of the resource file: `wfc-timeout`, or \
        `degr-wfc-timeout` if this node's last run ended while it was Primary without its peer \
        (a degraded cluster, whose peer is less likely to come back soon; `status --json` shows \
        it as degraded_at_start). 0 waits forever.\n\n\
        Exits 0 once connected, printing the status; exits 1 when the time is up, or at once \
        when the node is StandAlone (after `disconnect` or a split brain it will not connect \
        by itself: see `repctl connect`)."
    )]
    WaitConnect(WaitConnectArgs),
    /// Throw away this node's data and resync all of it from the peer
    Invalidate(Select),
    /// Resync all of the peer's data from this node
    InvalidateRemote(Select),
    /// Compare both nodes' data online, block by block (drbdadm verify)
    #[command(
        long_about = "Compare both nodes' data online by checksums (crc32c), like \
        `drbdadm verify`. Blocks that differ are marked out of sync and reported; with \
        --repair they are resynced right after (from the Primary, or from this node). \
        Waits until the verify (and repair) finished, then prints what it found.\n\n\
        Both nodes report the ranges of adjacent 4 KiB blocks that differ: in the log, in \
        `repctl events` (`call out-of-sync ... start-bytes:N len-bytes:N` for the first 32, \
        then `call verify ... ranges:N`) and in `repctl status` (`last_verify` in --json: \
        when it finished, bytes compared and out of sync, the number of ranges and the \
        first 32). Without --repair, a reconnect of the Primary (`repctl disconnect; repctl connect`) or \
        `repctl verify --repair` resyncs them.\n\n\
        Exit status: 0 only when both copies are in sync at the end (nothing found, or \
        everything found resynced by --repair); 1 when blocks differ (or the verify could \
        not run or was cut off), so a script can act on it."
    )]
    Verify(VerifyArgs),
    /// Show the resources' state (drbdadm status, /proc/drbd)
    #[command(
        long_about = "Show this node's state of each resource, like `drbdadm status` with the \
        counters of /proc/drbd: roles, disks, connection, resync progress, the last error.\n\n\
        Without a RESOURCE (or with `all`) it shows every resource of --config-dir; one whose \
        repd does not run shows as `not running` (`\"running\": false` in --json) and is no \
        error. A single resource whose repd does not run is an error, as before.\n\n\
        --json prints one object per resource: for one resource pretty-printed, for several \
        one per line.\n\n\
        --latency shows instead where requests spend their time in repd, per request kind and \
        stage (frontend, activity log, local disk, peer, reply), as count, mean, p50 and p99 in \
        µs since repd started or the last `--latency --reset`; DRBD has no equivalent (its \
        debugfs `req_timing` comes closest). README.md, \"Latency breakdown\", says what each \
        stage covers."
    )]
    Status(StatusArgs),
    /// Apply the changed resource file to the running node (drbdadm adjust)
    #[command(
        long_about = "Apply what changed in the resource file to the running repd, like \
        `drbdadm adjust`: repctl validates the file, then repd re-reads the same file, compares \
        it with the configuration it runs, and applies the difference. Each changed setting is \
        printed with when it takes effect:\n\n\
        now: sync.rate, the resync controller's sync.c-plan-ahead, c-fill-target, \
        c-delay-target, c-max-rate and c-min-rate (a running resync follows them from its next \
        0.1 s step), net.timeout-ms, net.ping-int-ms, net.ko-count, net.max-buffers, \
        net.csums, the [split-brain] policies, [handlers];\n\
        at the next connection: resource.protocol and net.secret (the current connection keeps \
        what both nodes agreed on; `repctl disconnect` and `connect` to apply them now);\n\
        at the next start: [startup];\n\
        never while running: the resource name, the [[node]] entries (names, addresses, disks, \
        meta-disk, device, nbd), sync.al-extents (the activity log is sized at start), \
        sync.verify, net.fencing, disk.on-io-error, [metrics]: such a change is refused with \
        the reason, and `repctl down`, then `up` applies it.\n\n\
        All or nothing: when any change is refused, none is applied and repctl exits 1. With \
        nothing changed it prints `no changes` and exits 0. Edit the file on both nodes and \
        adjust both (the protocol and the secret must agree at the next handshake)."
    )]
    Adjust(Select),
    /// Print a line for each change of state, as it happens (drbdsetup events2)
    #[command(
        long_about = "Print one line for each change of this node's state as it happens, \
        like `drbdsetup events2 r0` (run until interrupted), for the resource named, `all`, \
        or every resource of --config-dir when none is named (`drbdsetup events2 all`: the \
        streams are merged, with one `exists -` after every resource's state): the role, the connection and \
        the peer's role, the disk and the peer's disk, the resync (start, progress at most \
        once a second per whole percent, end), verify results (one `call out-of-sync` line \
        per range of adjacent 4 KiB blocks found different, for the first 32, then `call \
        verify`), size changes (`call resize` with the old and new size), split brains, I/O \
        and other errors, suspended I/O.\n\n\
        Lines read like events2's: `change connection name:r0 conn-name:beta \
        connection:Connected role:Secondary`, `change peer-device name:r0 conn-name:beta \
        replication:SyncSource peer-disk:Inconsistent done:42.10`, `call verify name:r0 \
        conn-name:beta verified:8388608 out-of-sync:0`, `create error name:r0 \
        error:local-io ...` (errors are objects: created, changed, destroyed when they \
        clear). --now prints the current state first as `exists` lines ended by \
        `exists -`, then goes on with the changes (drbdsetup events2 prints the state \
        always and stops after it with --now; here --now asks for it and the watch goes \
        on). --json prints each event as one JSON object per line with its time (RFC 3339, \
        UTC, milliseconds); --timestamps puts that time first on text lines.\n\n\
        Several watchers may run at once; repd never waits for one. A watcher that stops \
        reading and falls 1024 events behind is cut off: its last line is `call \
        lost-events` and repctl exits 1; run it again with --now for the current state. \
        When repd stops in order the last lines are `destroy ...` and repctl exits 0; if \
        the connection closes otherwise (repd died) it exits 1."
    )]
    Events(EventsArgs),
    /// Grow both nodes online after their backing disks grew (drbdadm resize)
    #[command(
        long_about = "Grow the replicated device online, like `drbdadm resize`: first grow the \
        backing disk on both nodes (`lvextend`, `truncate -s`), then run this on either node \
        while both are connected and UpToDate. Both nodes move their internal metadata to the \
        new end of their disk (crash-safe: a crash at any point leaves the old or the new \
        layout, and repd starts on it) and grow the bitmap; the new size is the smaller of \
        what both disks allow (or --size). The new region is resynced from the Primary, or \
        with --assume-clean declared in sync (only when both grown regions are known \
        identical, e.g. zeroed; the old metadata area, which becomes data, is resynced \
        anyway). New NBD clients see the new size at once; clients already connected keep \
        theirs until they reconnect. Both nodes print `call resize` with the old and new \
        size in `repctl events`.\n\n\
        A disk grown while repd was stopped (DRBD's `drbdmeta check-resize` case) starts on \
        its metadata where it was, below the new end (repd looks up to 64 GiB below it), \
        serving the old size; run this command then to move the metadata and grow.\n\n\
        Shrinking is refused: repd cannot know how much of the device a filesystem uses \
        (DRBD shrinks with `drbdadm resize --size` and trusts the admin to have shrunk the \
        filesystem first). A peer whose disk is smaller connects with the smaller size \
        (DRBD's rule) and `repctl status` says so; a Primary refuses a smaller peer.\n\n\
        Waits until both nodes hold the new size, then prints it; exits 1 when refused or \
        when the resize failed (the status's size note says why)."
    )]
    Resize(resize::ResizeArgs),
    /// Mark this node's data Outdated (drbdadm outdate)
    #[command(
        long_about = "Mark this node's data Outdated, like `drbdadm outdate`: it is then \
        refused as a Primary (`primary` without --force) until a resync from the peer makes \
        it UpToDate again. Only on a Secondary that is not connected to the peer. The cluster \
        agent runs it when the peer's agent asks (outdate-peer over a heartbeat path)."
    )]
    Outdate(Select),
    /// Drop the local disk and go on Diskless through the peer (drbdadm detach)
    #[command(
        long_about = "Detach the backing disk, like `drbdadm detach`: the node goes Diskless \
        and keeps serving through its peer: reads are fetched from the peer, writes go to the \
        peer only (it marks what this disk misses). repd stops writing the metadata, closes it \
        and releases the disk lock, so the disk can be checked, replaced, or given new metadata \
        with `repctl create-md`. `[disk] on-io-error = \"detach\"` does the same by itself on \
        a local I/O error. A Primary may detach only while connected to an UpToDate peer. \
        `repctl status` then shows `disk:Diskless` and the peer `UpToDate`; \
        `repctl attach` brings the disk back."
    )]
    Detach(Select),
    /// Take the disk back after detach; it resyncs from the peer (drbdadm attach)
    #[command(
        long_about = "Attach the backing disk the resource file names, like `drbdadm \
        attach`, on a Diskless node: repd takes the disk lock, reads and checks the metadata \
        (none: run `repctl create-md` first; the wrong size or another resource's: refused \
        with the reason) and reconnects; the handshake then resyncs the disk from the peer: \
        only what changed while it was away when it is the disk that was detached, all of it \
        for a fresh one (after create-md). Only on a Secondary (`repctl secondary` first on a \
        Diskless Primary). The disk must be the same file or device node repd started with \
        (a device-mapper table swapped under it, a file rewritten in place); a disk at \
        another inode needs `repctl down` and `repctl up`."
    )]
    Attach(Select),
    /// Hold a running resync (drbdadm pause-sync)
    #[command(
        long_about = "Hold the resync, like `drbdadm pause-sync` (DRBD's user flag, shown \
        as `resync-suspended:user`): run on either node, it stops the resync: a sync target \
        asks for no more blocks, a sync source answers no more requests, so the out-of-sync \
        bytes stop shrinking. The connection stays up and replication of new writes goes on. \
        Without a resync running it holds the next one. Only the node that paused shows it \
        in `repctl status`; `repctl resume-sync` on that node releases it. Refused when \
        already paused. The flag lives in repd: restarting repd clears it."
    )]
    PauseSync(Select),
    /// Release a resync held by pause-sync (drbdadm resume-sync)
    #[command(
        long_about = "Release the resync `repctl pause-sync` held on this node, like \
        `drbdadm resume-sync`: it goes on where it stopped. Refused when this node did not \
        pause it."
    )]
    ResumeSync(Select),
    /// Skip the initial sync of two fresh identical disks (drbdadm new-current-uuid --clear-bitmap)
    #[command(
        long_about = "Skip the initial full sync when both disks are known identical (new \
        zeroed or thin volumes), like `drbdadm new-current-uuid --clear-bitmap` on a \
        Connected Secondary/Secondary pair in DRBD's guide: this node starts a new current \
        data generation with an empty bitmap and tells the peer, and both become UpToDate \
        without moving any data. Then promote one with `repctl primary` (no --force).\n\n\
        Only right after `create-md` on both nodes: it is refused unless both nodes are \
        connected, both Secondary, and both Inconsistent with no data generation yet. Data \
        that differs stays different (until a `repctl verify` finds it): use it only for \
        disks you know hold the same bytes."
    )]
    NewCurrentUuid(NewCurrentUuidArgs),
    /// Hold (or fail) new writes: what the cluster agent does on quorum loss
    #[command(
        long_about = "Stop accepting new writes and flushes, like DRBD 9's on-no-quorum: \
        they are held (the client waits, per its own timeouts), and so are the \
        acknowledgements of writes in flight; with --fail they end with EIO instead. \
        Reads go on. `resume-io` lets the held requests in; a demotion fails them. \
        The cluster agent does this when its node loses quorum."
    )]
    SuspendIo(SuspendArgs),
    /// Let held writes in again (after suspend-io, freeze-on-disconnect or a failed fence-peer)
    ResumeIo(Select),
    /// Freeze a Primary's I/O when its peer is lost (DRBD's fencing resource-only)
    #[command(
        long_about = "With `on`, a Primary that loses its connection to the peer suspends \
        I/O at once, the acknowledgements of writes the peer did not confirm included, until \
        `repctl resume-io`: nothing is acknowledged by this node alone before whoever decides \
        failovers (the cluster agent and its witness) knows it runs alone. `off` disarms it \
        (the default: the Primary goes on alone, as DRBD without fencing). The cluster agent \
        arms it when a witness is configured."
    )]
    FreezeOnDisconnect(FreezeArgs),
    /// Turn a drbd.conf into resource files, one per resource (from DRBD 8.x / 0.7)
    #[command(
        long_about = "Turn a drbd.conf (DRBD 8.x or 0.7 syntax: global, common, resource, on HOST, \
        floating, startup, disk, net, syncer, handlers, include, skip) into one resource file per \
        resource, DIR/NAME.toml. It takes no resource name; --config, --config-dir and --node are \
        not used.\n\n\
        What maps: protocol; startup wfc-timeout and degr-wfc-timeout; disk on-io-error \
        (pass_on; detach and others become \"pass-on\" with a warning: rep has no diskless mode \
        yet); syncer rate / disk resync-rate (a number without K/M/G is KiB/s, as in DRBD) and \
        al-extents; the resync controller's c-plan-ahead, c-fill-target (a bare number counts \
        512-byte sectors), c-delay-target, c-max-rate and c-min-rate (bare: KiB/s) from disk \
        (8.4) or syncer (8.3) into [sync]; net timeout (DRBD counts tenths of a second: timeout 60 is timeout-ms = 6000), \
        ping-int (seconds), ko-count, max-buffers, shared-secret (with cram-hmac-alg: rep uses \
        HMAC-SHA256), csums-alg and verify-alg (rep's digest is crc32c), after-sb-0pri/1pri/2pri; \
        fencing (8.4 in disk, DRBD 9 in net) as [net] fencing; handlers fence-peer and \
        unfence-peer as [handlers] (drbd-utils' crm-fence-peer.sh / crm-unfence-peer.sh and their \
        .9.sh become rep's /usr/lib/rep/crm-fence-peer / crm-unfence-peer with a warning; another \
        command is kept as written, it gets DRBD's environment, and must start with an absolute \
        path), 8.4's after-resync-target crm-unfence-peer.sh as unfence-peer (which rep runs on \
        the node that fenced, not on the resync target); \
        in each `on HOST`: device /dev/drbdN (or minor N) as device = N (/dev/ublkbN), disk, \
        address (ipv4/ipv6 IP:PORT), meta-disk internal or a path. Keys set at the resource \
        level go to both nodes; `common` applies to every resource.\n\n\
        Every other option (global usage-count and minor-count, syncer group and after, \
        incon-degr-cmd, the other handlers, ...) is left behind with a warning on stderr that names it \
        with its FILE:LINE. A value drbd.conf lacks is never made up: an empty `address;`, a \
        missing shared-secret (rep requires one), a meta-disk index, a handler without an absolute \
        path, a fencing policy without fence-peer handler are written as commented-out \
        keys marked FILL IN, with a warning; complete them, then check the file with \
        `repctl --config DIR/NAME.toml dump`. A file with nothing to fill in has passed that \
        validation already.\n\n\
        Syntax errors name the file and line; nothing is written then. Existing files in DIR are \
        not overwritten without --force. For heartbeat's ha.cf, haresources and authkeys see \
        `cluster-agent import-heartbeat`."
    )]
    ImportDrbdConf(import::ImportDrbdConfArgs),
}

#[derive(Debug, Args)]
struct WaitConnectArgs {
    /// Seconds to wait (0 = forever) [default: wfc-timeout or degr-wfc-timeout]
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct FreezeArgs {
    /// on | off
    #[arg(value_parser = ["on", "off"])]
    state: String,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct SuspendArgs {
    /// Fail new writes with EIO instead of holding them (on-no-quorum = io-error)
    #[arg(long)]
    fail: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Use buffered I/O on the backing disk instead of O_DIRECT
    #[arg(long)]
    no_direct: bool,
    /// The repd binary to run [default: next to repctl, then $PATH]
    #[arg(long, value_name = "PATH")]
    repd: Option<PathBuf>,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct DownArgs {
    /// Stop even with NBD clients connected: their connections are closed
    /// first (their next request fails; they may reconnect to the new
    /// Primary). A mounted or open /dev/ublkbN still refuses: a filesystem
    /// must not lose its disk.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct PrimaryArgs {
    /// Promote even without UpToDate data; this node's data wins (full sync to the peer)
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct ConnectArgs {
    /// After a split brain: throw away this node's changes and resync from the peer
    #[arg(long)]
    discard_my_data: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Resync the blocks found out of sync
    #[arg(long)]
    repair: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct NewCurrentUuidArgs {
    /// Clear the bitmap and declare both disks UpToDate (required: the only
    /// form rep supports, DRBD's skip of the initial sync)
    #[arg(long, required = true)]
    clear_bitmap: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print one JSON object per resource (several: one per line)
    #[arg(long)]
    json: bool,
    /// Show the latency breakdown per request kind and stage instead
    #[arg(long)]
    latency: bool,
    /// With --latency: start counting anew after showing it
    #[arg(long, requires = "latency")]
    reset: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Print the current state first, as `exists` lines ended by `exists -`
    #[arg(long)]
    now: bool,
    /// Print one JSON object per event (with its time) instead of text
    #[arg(long)]
    json: bool,
    /// Start each text line with the event's time (drbdsetup events2 --timestamps)
    #[arg(long)]
    timestamps: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct CreateMdArgs {
    /// Overwrite existing metadata (forgets the data generations and the bitmap)
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct DumpArgs {
    /// Print JSON with the same sections, keys and values instead of TOML (several: one object per line)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sel: Select,
}

#[derive(Debug, Args)]
struct DumpMdArgs {
    /// Print one JSON object instead of the readable form
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sel: Select,
}

/// A failure to report: the message says what went wrong and what to do.
#[derive(Debug)]
struct Failure(String);

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        let hint = match &e {
            ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                "; check the path given to --config, or drop --config to use the resource files of \
                 --config-dir (see ublk-target/examples/r0.toml)"
                    .to_owned()
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
    if let Some(code) = rep_control::docs::generate_if_asked(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
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
    use targets::each;
    use Unnamed::{All, OnlyOne};
    match &cli.command {
        // Like `drbdadm dump` and `drbdadm status`: every resource unless named.
        Command::Dump(a) => each(cli, &a.sel, All, |t| md::dump(t, a)),
        Command::CreateMd(a) => each(cli, &a.sel, OnlyOne, |t| md::create_md(t, a)),
        Command::DumpMd(a) => each(cli, &a.sel, OnlyOne, |t| md::dump_md(t, a)),
        Command::Up(a) => each(cli, &a.sel, OnlyOne, |t| daemon::up(t, a)),
        Command::Down(a) => each(cli, &a.sel, OnlyOne, |t| daemon::down(t, a.force)),
        Command::Primary(a) => each(cli, &a.sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::Primary { force: a.force }))
        }),
        Command::Secondary(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::Secondary))
        }),
        Command::Connect(a) => each(cli, &a.sel, OnlyOne, |t| {
            daemon::simple(
                t,
                ControlCmd::Verb(Verb::Connect {
                    discard_my_data: a.discard_my_data,
                }),
            )
        }),
        Command::Disconnect(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::Disconnect))
        }),
        Command::WaitConnect(a) => each(cli, &a.sel, OnlyOne, |t| daemon::wait_connect(t, a)),
        Command::Invalidate(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::Invalidate))
        }),
        Command::InvalidateRemote(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::InvalidateRemote))
        }),
        Command::Verify(a) => each(cli, &a.sel, OnlyOne, |t| daemon::verify(t, a)),
        Command::Status(a) => each(cli, &a.sel, All, |t| daemon::status(t, a)),
        Command::Events(a) => events::run(cli, a),
        Command::Outdate(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::Outdate))
        }),
        Command::Detach(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::Detach))
        }),
        Command::Attach(sel) => each(cli, sel, OnlyOne, |t| daemon::simple(t, ControlCmd::Attach)),
        Command::PauseSync(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::PauseSync))
        }),
        Command::ResumeSync(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::Verb(Verb::ResumeSync))
        }),
        Command::NewCurrentUuid(a) => each(cli, &a.sel, OnlyOne, |t| {
            daemon::simple(
                t,
                ControlCmd::Verb(Verb::NewCurrentUuid {
                    clear_bitmap: a.clear_bitmap,
                }),
            )
        }),
        Command::SuspendIo(a) => each(cli, &a.sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::SuspendIo { fail: a.fail })
        }),
        Command::ResumeIo(sel) => each(cli, sel, OnlyOne, |t| {
            daemon::simple(t, ControlCmd::ResumeIo { if_current: None })
        }),
        Command::ImportDrbdConf(a) => import::import_drbd(a),
        Command::Adjust(sel) => each(cli, sel, OnlyOne, adjust::adjust),
        Command::Resize(a) => each(cli, &a.sel, OnlyOne, |t| resize::resize(t, a)),
        Command::FreezeOnDisconnect(a) => each(cli, &a.sel, OnlyOne, |t| {
            daemon::simple(
                t,
                ControlCmd::Verb(Verb::FreezeOnDisconnect {
                    on: a.state == "on",
                }),
            )
        }),
    }
}

mod daemon {
    //! The verbs that talk to a running repd.

    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command as Proc, Stdio};
    use std::time::{Duration, Instant};

    use super::{
        held_open, print_out, Failure, StatusArgs, Target, UpArgs, VerifyArgs, WaitConnectArgs,
    };
    use rep_control::client::{log_path, request, socket_path, ControlError};
    use rep_control::protocol::{ControlCmd, ControlReply, NodeStatus, Verb};
    use rep_control::status_text::render;

    fn ask(t: &Target, cmd: &ControlCmd) -> Result<ControlReply, Failure> {
        request(&t.socket()?, cmd, None).map_err(|e| Failure(e.to_string()))
    }

    fn state(r: &ControlReply) -> Result<&NodeStatus, Failure> {
        r.status.as_ref().ok_or_else(|| {
            Failure(
                r.error
                    .clone()
                    .unwrap_or_else(|| "no status in the answer".into()),
            )
        })
    }

    /// Run a command; on refusal say why and show the state it was refused in.
    pub(super) fn simple(t: &Target, cmd: ControlCmd) -> Result<(), Failure> {
        let r = ask(t, &cmd)?;
        if !r.ok {
            let why = r.error.clone().unwrap_or_default();
            let st = r.status.as_ref().map(render).unwrap_or_default();
            return Err(Failure(format!("{why}\n{st}")));
        }
        print_out(&render(state(&r)?))
    }

    /// With several resources, one whose repd does not run is shown as
    /// such (drbdadm status shows the others); alone, it is an error.
    pub(super) fn status(t: &Target, a: &StatusArgs) -> Result<(), Failure> {
        if a.latency {
            return super::latency::show(t, a.json, a.reset);
        }
        let sock = t.socket()?;
        let r = match request(&sock, &ControlCmd::Status, None) {
            Err(ControlError::NotRunning { .. }) if t.several => {
                return print_out(&not_running(t, &sock, a.json)?);
            }
            r => r.map_err(|e| Failure(e.to_string()))?,
        };
        let st = state(&r)?;
        if a.json {
            // Several: one object per line (JSON Lines); one: as it always was.
            let text = if t.several {
                serde_json::to_string(st)
            } else {
                serde_json::to_string_pretty(st)
            };
            let text = text.map_err(|e| Failure(e.to_string()))?;
            print_out(&format!("{text}\n"))
        } else {
            print_out(&render(st))
        }
    }

    /// `status` of a resource whose repd does not answer, among several.
    fn not_running(t: &Target, sock: &Path, json: bool) -> Result<String, Failure> {
        let (res, node) = t.names()?;
        Ok(if json {
            let v = serde_json::json!({"resource": res, "node": node, "running": false});
            format!("{v}\n")
        } else {
            format!(
                "{res} not running (no repd answers on {}; `repctl up {res}` starts it)\n",
                sock.display()
            )
        })
    }

    /// Why a node is StandAlone, and what helps: `connect` only where a
    /// new attempt can succeed.
    fn standalone_why(st: &NodeStatus) -> String {
        if st.split_brain {
            return "a split brain was detected; see the status for how to recover".into();
        }
        match st.last_error.as_deref() {
            // The handshake found the two resource files (or versions) at
            // odds: every new attempt is refused the same way, and repd
            // reads its file only at start.
            Some(e) if refused_by_config(e) => format!(
                "the connection was refused ({e}). The two nodes' resource files must \
                 agree (same [net] secret, resource name, protocol and data size; see \
                 `repctl dump-md` for the size): fix the file on the node where it is \
                 wrong, then restart that node's daemon (`repctl down`, `repctl up`); \
                 `repctl connect` alone would be refused again"
            ),
            Some(e) => format!(
                "it stopped connecting after: {e}; once that is dealt with, run `repctl connect`"
            ),
            None => "it does not try to connect: run `repctl connect`".into(),
        }
    }

    /// A refusal no retry can cure: the handshake's checks of the secret,
    /// resource, size, protocol or version (on either side).
    fn refused_by_config(err: &str) -> bool {
        err.contains("handshake refused")
            || [
                "AuthFailed",
                "WrongResource",
                "WrongSize",
                "UnsupportedVersion",
                "ConfigMismatch",
            ]
            .iter()
            .any(|r| err.contains(&format!("peer disconnected: {r}")))
    }

    pub(super) fn wait_connect(t: &Target, a: &WaitConnectArgs) -> Result<(), Failure> {
        let cfg = t.load()?;
        let first = ask(t, &ControlCmd::Status)?;
        let st = state(&first)?;
        let (limit, why) = match a.timeout {
            Some(0) => (None, "--timeout 0"),
            Some(s) => (Some(Duration::from_secs(s)), "--timeout"),
            None if st.degraded_at_start => (
                cfg.startup.degr_wfc_timeout,
                "degr-wfc-timeout: the last run ended as a Primary without its peer",
            ),
            None => (cfg.startup.wfc_timeout, "wfc-timeout"),
        };
        let t0 = Instant::now();
        loop {
            let r = ask(t, &ControlCmd::Status)?;
            let st = state(&r)?;
            if st.peer_connected() {
                return print_out(&render(st));
            }
            if st.connection == "StandAlone" {
                let why = standalone_why(st);
                return Err(Failure(format!(
                    "{} is StandAlone: {why}\n{}",
                    st.node,
                    render(st)
                )));
            }
            if let Some(l) = limit {
                if t0.elapsed() >= l {
                    return Err(Failure(format!(
                        "the peer {} did not connect within {} s ({why}); {} goes on as {:?} \
                         with disk {:?}\n{}",
                        st.peer,
                        l.as_secs(),
                        st.node,
                        st.role,
                        st.disk,
                        render(st)
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(super) fn verify(t: &Target, a: &VerifyArgs) -> Result<(), Failure> {
        let r = ask(t, &ControlCmd::Verb(Verb::Verify { repair: a.repair }))?;
        if !r.ok {
            return Err(Failure(r.error.unwrap_or_default()));
        }
        let _ = state(&r)?;
        // Wait until the connection is idle again (verify, then the repair).
        let busy = [
            "VerifySource",
            "VerifyTarget",
            "SyncSource",
            "SyncTarget",
            "WFBitMapS",
            "WFBitMapT",
        ];
        let last = loop {
            std::thread::sleep(Duration::from_millis(100));
            let r = ask(t, &ControlCmd::Status)?;
            let st = state(&r)?.clone();
            if !busy.contains(&st.connection.as_str()) {
                break st;
            }
        };
        let found = last.stats.verify_out_of_sync_bytes;
        let mut out = format!(
            "{}verify: {} bytes compared, {} bytes out of sync{}\n",
            t.prefix(),
            last.stats.verified_bytes,
            found,
            if found > 0 && a.repair {
                " (resynced)"
            } else {
                ""
            }
        );
        out.push_str(&render(&last));
        print_out(&out)?;
        if last.connection != "Connected" {
            return Err(Failure(format!(
                "the connection broke during verify: {}",
                last.connection
            )));
        }
        // Exit 0 only when the copies are in sync now: none found, or all
        // of them resynced by --repair.
        let repaired = a.repair && last.out_of_sync_bytes == 0;
        if found > 0 && !repaired {
            return Err(Failure(format!(
                "the copies differ: {found} bytes out of sync ({} still marked); run \
                 `repctl verify --repair` (or `repctl invalidate` on the node with the bad copy)",
                last.out_of_sync_bytes
            )));
        }
        Ok(())
    }

    pub(super) fn up(t: &Target, a: &UpArgs) -> Result<(), Failure> {
        let (res, node) = t.names()?;
        let sock = socket_path(&t.run_dir, &res, &node);
        refuse_if_running(&sock, &res, &node)?;
        std::fs::create_dir_all(&t.run_dir)
            .map_err(|e| Failure(format!("cannot create {}: {e}", t.run_dir.display())))?;
        let log = log_path(&t.run_dir, &res, &node);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Failure(format!("cannot open the log {}: {e}", log.display())))?;
        // Where this attempt's lines start: a failure shows only them, not
        // those of earlier failed starts appended before.
        let log_start = logf.metadata().map(|m| m.len()).unwrap_or(0);
        let child = spawn_repd(t, a, &node, logf)?;
        wait_started(&sock, child, &log, log_start)
    }

    /// An answer on the socket means a repd runs already; a socket we may
    /// not use is an error of its own.
    fn refuse_if_running(sock: &Path, res: &str, node: &str) -> Result<(), Failure> {
        match request(sock, &ControlCmd::Status, Some(Duration::from_secs(2))) {
            Ok(_) => Err(Failure(format!(
                "repd for {res} on {node} is already running (socket {})",
                sock.display()
            ))),
            Err(e @ ControlError::Denied { .. }) => Err(Failure(e.to_string())),
            Err(_) => Ok(()),
        }
    }

    /// Starts repd detached, its stdout and stderr to `logf`: `--repd`, else
    /// the repd next to this executable, else the one on PATH.
    fn spawn_repd(t: &Target, a: &UpArgs, node: &str, logf: File) -> Result<Child, Failure> {
        let errf = logf.try_clone().map_err(|e| Failure(e.to_string()))?;
        let repd = match &a.repd {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("repd")))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("repd")),
        };
        let mut cmd = Proc::new(&repd);
        cmd.arg("--config")
            .arg(t.config())
            .arg("--node")
            .arg(node)
            .arg("--run-dir")
            .arg(&t.run_dir);
        if a.no_direct {
            cmd.arg("--no-direct");
        }
        // Its own process group: a Ctrl-C in this terminal must not reach it.
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(logf)
            .stderr(errf)
            .process_group(0);
        cmd.spawn()
            .map_err(|e| Failure(format!("cannot start {}: {e}", repd.display())))
    }

    /// Until repd answers on its socket (then its status is printed), exits
    /// (then the last lines it logged are the error), or 20 s pass.
    fn wait_started(
        sock: &Path,
        mut child: Child,
        log: &Path,
        log_start: u64,
    ) -> Result<(), Failure> {
        let t0 = Instant::now();
        loop {
            if let Ok(r) = request(sock, &ControlCmd::Status, Some(Duration::from_secs(2))) {
                if let Some(st) = &r.status {
                    return print_out(&format!(
                        "repd started (pid {}), log {}\n{}",
                        st.pid,
                        log.display(),
                        render(st)
                    ));
                }
            }
            if let Ok(Some(code)) = child.try_wait() {
                return Err(Failure(format!(
                    "repd exited ({code}) during start:\n{}",
                    last_lines(log, log_start, 5)
                )));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                // It may still be starting (looking for the metadata of a
                // grown disk, say): its last lines say what it is doing.
                return Err(Failure(format!(
                    "repd (pid {}) did not answer within 20 s; it may still be starting. \
                     Its last lines:\n{}\nsee {}",
                    child.id(),
                    last_lines(log, log_start, 3),
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of `log` written since byte `start`.
    fn last_lines(log: &Path, start: u64, n: usize) -> String {
        let text = read_from(log, start);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        lines.get(from..).unwrap_or_default().join("\n")
    }

    /// The text of `path` from byte `start` on (lossy; empty if unreadable).
    fn read_from(path: &std::path::Path, start: u64) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            if f.seek(SeekFrom::Start(start)).is_ok() {
                let _ = f.read_to_end(&mut buf);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    pub(super) fn down(t: &Target, force: bool) -> Result<(), Failure> {
        let cfg = t.load()?;
        let me = cfg.local(t.node.as_deref())?.0.clone();
        let sock = socket_path(&t.run_dir, &cfg.resource.name, &me.name);
        let st = request(&sock, &ControlCmd::Status, None).map_err(|e| Failure(e.to_string()))?;
        if let Some(pid) = st.status.as_ref().map(|s| s.pid) {
            if let Some(why) = held_open(me.device, pid) {
                return Err(Failure(format!(
                    "{}: Device is held open by someone: {why}; unmount or close it, then \
                     `repctl down` again (the node stays up)",
                    cfg.resource.name
                )));
            }
        }
        let r = request(&sock, &ControlCmd::Down { force }, None)
            .map_err(|e| Failure(e.to_string()))?;
        if !r.ok {
            return Err(Failure(r.error.unwrap_or_default()));
        }
        let pid = r.status.as_ref().map(|s| s.pid);
        // The answer comes when the shutdown is done; wait for the process too.
        let t0 = Instant::now();
        while let Some(pid) = pid {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| !s.contains(") Z "))
                    .unwrap_or(false);
            if !alive || t0.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        print_out(&format!("{}repd stopped\n", t.prefix()))
    }
}

/// Why `down` must not stop the daemon `pid`: the ublk device it serves is
/// mounted or open (stopping it would take the disk from under its users,
/// like `drbdadm down` on an open DRBD device). A device left by a repd that
/// died is not this daemon's: its stop changes nothing there.
fn held_open(dev_id: u32, pid: u32) -> Option<String> {
    use ublk_target::ublk;
    let e = ublk::probe(dev_id).ok()??;
    if u32::try_from(e.pid).ok() != Some(pid) {
        return None;
    }
    ublk::in_use_reason(dev_id)
        .map(|why| format!("{} is {why}", ublk::device_path(dev_id).display()))
}
