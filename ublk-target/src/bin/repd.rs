//! `repd`: the node daemon of one resource. Runs in the foreground (logs to
//! stderr, ends on SIGTERM with an orderly shutdown), which is what systemd
//! wants; `repctl up` starts it detached.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use rep_control::client::DEFAULT_RUN_DIR;
use rep_control::config::{Config, Node, ResumeAfterCrash};
use rep_control::protocol::ControlCmd;
use ublk_target::control::ControlServer;
use ublk_target::engine::{self, EngineHandle, EngineOptions};
use ublk_target::nbd::{NbdServer, NbdServerHandle, NbdTls, TlsKeys};

#[derive(Debug, Parser)]
#[command(
    name = "repd",
    version,
    about = "The node daemon of one replicated resource",
    long_about = "The node daemon of one replicated resource: it owns this node's backing disk and \
                  metadata, connects to the peer, replicates writes as the resource's protocol \
                  says, resyncs after outages, and serves the device (NBD export) while Primary.\n\n\
                  It starts Secondary and connects at once, like `drbdadm up`. Drive it with \
                  repctl (primary, secondary, status...). SIGTERM or SIGINT shut it down in order \
                  like `repctl down --force`: demote, flush, tell the peer, write clean metadata. \
                  Connected NBD clients are disconnected first (logged as a warning; their next \
                  request fails and they may reconnect to the new Primary): a stop that systemd \
                  asks for must end the daemon, and refusing would only turn it into the SIGKILL \
                  that follows TimeoutStopSec, which cuts them as well and skips the orderly \
                  shutdown. While /dev/ublkbN is mounted or open the signals are refused \
                  (logged): a SIGKILL then leaves the device to the kernel, which holds its I/O \
                  for the next repd.\n\n\
                  It holds an exclusive lock on the backing disk (and an external metadata \
                  file) while it runs: a second repd on the same disk, or `repctl create-md`, is \
                  refused and told the holder's pid.\n\n\
                  Usually started by `repctl up`; run it directly under systemd \
                  (rep@.service, Type=notify: READY=1 once the control socket answers, STATUS= \
                  with the role and connection). The node name may come from REP_NODE.\n\n\
                  Logs go to stderr; REP_LOG sets the filter (default `info`; e.g. `debug`, \
                  `ublk_target::engine=trace`). libublk's own lines show only from warnings up \
                  unless REP_LOG names libublk (`REP_LOG=info,libublk=info`).\n\n\
                  After a crash while Primary (kill -9: the kernel keeps /dev/ublkbN and holds \
                  its I/O), start it again and nothing else: it starts Secondary, resyncs its \
                  activity-log extents from the peer, and with [startup] resume-after-crash = \
                  \"held-device\" (the default) promotes itself once UpToDate if the peer is \
                  connected, Secondary and on the same data generation, so the held I/O goes \
                  on. If the peer is Primary or the data moved to another generation (the peer \
                  was promoted meanwhile) it stays Secondary and the held I/O fails; if the \
                  peer cannot be reached it waits (`repctl primary --force` resumes without \
                  it). `always` resumes without a held device too, `never` leaves it to an \
                  operator; with a [cluster] table the cluster agent decides (never). \
                  `repctl status --json` shows it as `resume`.\n\n\
                  With [metrics] listen (or a [[node]]'s metrics) in the resource file it serves \
                  Prometheus metrics at http://ADDR/metrics, named like drbd-reactor's \
                  (drbd_ becomes rep_); a port in use stops it at start.\n\n\
                  At start it times its two CRC32C implementations (CPU instruction, lookup \
                  tables) and uses the faster; REP_CRC32C=hardware|table16 forces one."
)]
struct Cli {
    /// The resource configuration file (TOML).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/rep/r0.toml"
    )]
    config: PathBuf,
    /// This node's name in the config [default: the host name].
    #[arg(long, short = 'n', value_name = "NAME", env = "REP_NODE")]
    node: Option<String>,
    /// Where the control socket goes.
    #[arg(long, value_name = "DIR", env = "REP_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Use buffered I/O on the backing disk instead of O_DIRECT.
    #[arg(long)]
    no_direct: bool,
    /// Start StandAlone instead of connecting to the peer.
    #[arg(long)]
    standalone: bool,
    /// Do not time requests per stage: `repctl status --latency` and the
    /// metrics' latency histograms stay empty (timing costs well under a
    /// microsecond of CPU per request; bench/RESULTS.md has the A/B)
    #[arg(long)]
    no_latency_stats: bool,
    /// Read the backing disk straight into the pages of reads on
    /// /dev/ublkbN instead of copying through repd (ublk zero copy, where
    /// the kernel offers it: Linux 6.16+; elsewhere ignored, with a log
    /// line). Off by default: the device mode it needs makes every write
    /// one copy syscall more, and the A/B in bench/RESULTS.md (run 14) did
    /// not show a win. A device taken over from a dead repd keeps the mode
    /// it was made with. The environment's REP_ZERO_COPY=1 does the same
    #[arg(long, env = "REP_ZERO_COPY", value_parser = clap::builder::FalseyValueParser::new())]
    zero_copy: bool,
}

fn main() -> ExitCode {
    if let Some(code) = rep_control::docs::generate_if_asked(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    ublk_target::alloc::tune();
    let cli = Cli::parse();
    rep_control::logs::init();
    if let Err(e) = ublk_target::crc_pick::choose_and_log() {
        eprintln!("repd: error: {e}");
        return ExitCode::FAILURE;
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("repd: error: {e}");
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let sigs = block_shutdown_signals()?;

    // ---- ublk (/dev/ublkbN), part 1 of 3: before any thread starts, a private
    // mount namespace when ublk_drv is there (nothing happens without it).
    ublk_target::ublk::prepare_daemon();
    // ---- end ublk part 1

    let cfg = Config::load(&cli.config).map_err(|e| e.to_string())?;
    let (me, _) = cfg.local(cli.node.as_deref()).map_err(|e| e.to_string())?;
    let me = me.clone();
    cfg.check_local_disk(&me).map_err(|e| e.to_string())?;
    // Held until the process exits (by the engine, below), except while
    // Diskless: no second repd (nor create-md) on this disk meanwhile.
    let disk_lock = ublk_target::disk_lock::DiskLock::acquire(&me).map_err(|e| e.to_string())?;
    // Bound before the engine starts: a port in use stops repd at once.
    let metrics = match cfg.metrics_listen(&me) {
        Some(l) => Some(ublk_target::metrics::MetricsListener::bind(&l, &cfg.path)?),
        None => None,
    };
    let opts = EngineOptions {
        direct: !cli.no_direct,
        connect: !cli.standalone,
    };
    let eng = engine::start(&cfg, Some(&me.name), &opts).map_err(|e| e.to_string())?;
    let handle = eng.handle.clone();
    if cli.zero_copy {
        ublk_target::ublk::set_zero_copy(true);
    }
    if !cli.no_latency_stats {
        handle.latencies().enable();
    }
    // The engine holds it from here: released while Diskless (`repctl
    // detach`), so that `repctl create-md` can prepare a replacement.
    handle.hold_disk_lock(disk_lock);

    let control = ControlServer::start(&cli.run_dir, &cfg.resource.name, &me.name, handle.clone())
        .map_err(|e| e.to_string())?;

    if let Some(m) = metrics {
        tracing::info!(addr = %m.addr(), "Prometheus metrics at http://{}/metrics", m.addr());
        m.serve(handle.clone(), me.device)?;
    }
    let nbd = start_nbd(&cfg, &me, &handle)?.map(Arc::new);
    // Its clients make the device in use: `secondary` and `down` refuse,
    // `down --force` cuts them.
    let _nbd_users = nbd.clone().map(|n| handle.users().register(n));
    // ---- ublk (/dev/ublkbN), part 2 of 3: the device follows the role (present
    // while Primary); without ublk_drv this warns once and ends.
    let ublk_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ublk = start_ublk(&cfg, &me, &handle, &ublk_stop)?;
    // ---- end ublk part 2
    if let Some(n) = nbd.clone() {
        spawn_nbd_count(n, handle.clone());
    }
    spawn_signal_waiter(sigs, handle.clone());
    println!(
        "repd: resource {} node {} running; control socket {}",
        cfg.resource.name,
        me.name,
        control.path().display()
    );
    ublk_target::notify::start(control.path(), handle.clone());
    if eng.thread.join().is_err() {
        // A bug ended the engine (its panic is logged above). Leave like a
        // crash, not like `down`: the kernel keeps holding /dev/ublkbN's
        // I/O, and systemd's Restart=on-failure starts a repd that resumes
        // it, where ending normally would remove the device and exit 0.
        tracing::error!("the engine thread panicked: aborting, a restarted repd resumes");
        std::process::abort();
    }
    ublk_target::notify::stopping();
    // ---- ublk (/dev/ublkbN), part 3 of 3: remove the device.
    ublk_stop.store(true, std::sync::atomic::Ordering::Release);
    handle.kick_role_waiters();
    let _ = ublk.join();
    // ---- end ublk part 3
    control.stop();
    if let Some(n) = nbd {
        n.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Blocks the shutdown signals in every thread (the ones started after
/// this inherit the mask); one thread waits for them.
fn block_shutdown_signals() -> Result<SigSet, String> {
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    Ok(sigs)
}

/// The NBD export, when this node has an `nbd` address.
fn start_nbd(
    cfg: &Config,
    me: &Node,
    handle: &EngineHandle,
) -> Result<Option<NbdServerHandle>, String> {
    let Some(addr) = me.nbd else {
        return Ok(None);
    };
    let srv = NbdServer::bind(addr, cfg.resource.name.clone(), Arc::new(handle.clone()))
        .map_err(|e| format!("cannot listen for NBD clients on {addr}: {e}"))?
        .with_access(me.nbd_access.clone());
    let srv = match nbd_tls(cfg, me)? {
        Some(tls) => srv.with_tls(tls),
        None => srv,
    };
    if let Some(w) = me.nbd_access.exposure_warning(addr) {
        tracing::warn!("{w}");
    }
    let h = srv.spawn();
    tracing::info!(%addr, export = %cfg.resource.name, "NBD export listening (serves only while Primary)");
    Ok(Some(h))
}

/// The export's TLS (`nbd-tls`): this node's certificate and key, client
/// certificates checked against `nbd-tls-ca` or `[net] tls-ca`; or the
/// clients' pre-shared keys (`nbd-tls-psk-file`).
fn nbd_tls(cfg: &Config, me: &Node) -> Result<Option<NbdTls>, String> {
    use rep_control::config::NbdTlsMode;
    use ublk_target::tls::psk::{PskTls, Versions};
    let a = &me.nbd_access;
    if a.tls == NbdTlsMode::Off {
        return Ok(None);
    }
    let require = a.tls == NbdTlsMode::Require;
    if let Some(file) = &a.tls_psk_file {
        let keys = cfg.load_psk(file).map_err(|e| e.to_string())?;
        let psk =
            PskTls::new(&keys, Versions::Tls12And13).map_err(|e| format!("NBD export: {e}"))?;
        tracing::info!(
            identities = keys.identities().len(),
            "NBD export: TLS with pre-shared keys from {}",
            file.display()
        );
        return Ok(Some(NbdTls {
            keys: TlsKeys::Psk(Arc::new(psk)),
            require,
        }));
    }
    let files = cfg
        .load_tls(me, a.tls_ca.as_deref())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "nbd-tls = \"{}\" needs this node's tls-cert and tls-key",
                a.tls
            )
        })?;
    let config =
        ublk_target::tls::server_config(&files, None).map_err(|e| format!("NBD export: {e}"))?;
    Ok(Some(NbdTls {
        keys: TlsKeys::Certs(config),
        require,
    }))
}

/// The thread that makes /dev/ublkbN follow the role until `stop`.
fn start_ublk(
    cfg: &Config,
    me: &Node,
    handle: &EngineHandle,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<()>, String> {
    let (h, stop, dev) = (handle.clone(), stop.clone(), me.device);
    let resume_held = cfg.startup.resume_after_crash == ResumeAfterCrash::HeldDevice;
    std::thread::Builder::new()
        .name("repd-ublk".into())
        .spawn(move || ublk_target::ublk::manage(dev, h, stop, resume_held))
        .map_err(|e| format!("cannot start a thread: {e}"))
}

/// Tells the engine the number of NBD clients every 100 ms (for status).
fn spawn_nbd_count(n: Arc<NbdServerHandle>, h: EngineHandle) {
    let _ = std::thread::Builder::new()
        .name("repd-nbd-count".into())
        .spawn(move || loop {
            h.set_nbd_clients(n.clients());
            std::thread::sleep(Duration::from_millis(100));
        });
}

/// The thread that turns SIGTERM/SIGINT into `down --force`, unless the
/// device is in use.
fn spawn_signal_waiter(sigs: SigSet, h: EngineHandle) {
    let _ = std::thread::Builder::new()
        .name("repd-signals".into())
        .spawn(move || {
            while let Ok(sig) = sigs.wait() {
                // Like `repctl down`: stopping would take /dev/ublkbN from
                // under a filesystem mounted on it. SIGKILL still ends
                // the daemon; the kernel then holds the device's I/O
                // for the next repd (user recovery).
                if let Some(why) = h.users().in_use(true).map(|u| u.why) {
                    tracing::error!(?sig, "not shutting down: {why}");
                    continue;
                }
                tracing::info!(?sig, "shutting down");
                // Forced: NBD clients are cut (the engine warns), see
                // the help text for why.
                match h.control(ControlCmd::Down { force: true }) {
                    Some(r) if !r.ok => {
                        tracing::error!(
                            "orderly shutdown refused: {}; stopping anyway",
                            r.error.unwrap_or_default()
                        );
                        std::process::exit(1);
                    }
                    _ => {}
                }
                break;
            }
        });
}
