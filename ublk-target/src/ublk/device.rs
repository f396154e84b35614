//! One ublk device: adding or recovering it, its queue threads, stopping it.
//!
//! libublk keeps its control io_uring in a thread-local, so every control
//! command of a device is sent from one thread, the device's control thread
//! (`ublk<N>-ctl`). [`UblkDevice`] is the handle to that thread: `start`
//! waits until the device is up (or recovering), `prepare` until it is
//! added with its queues ready but not started (no `/dev/ublkb<N>` yet);
//! `go_live`, `end_recovery` and `stop` are requests it carries out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkFlags};

use super::queue;
use super::UblkError;
use crate::frontend::BlockBackend;

// Where the device appears and whether ublk_drv is loaded: shared with
// the tools that do not link libublk.
pub use rep_control::device::{device_path, driver_present, CONTROL_PATH};

/// The target name libublk records for our devices.
const TARGET_NAME: &str = "repd";

/// How a device is set up. `Default` is what repd uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UblkOptions {
    /// Hardware queues, one thread each; 0 = one per CPU, at most 4.
    pub nr_queues: u16,
    /// Requests in flight per queue.
    pub queue_depth: u16,
    /// Largest request in bytes (reads and writes; discards and write-zeroes
    /// get the same limit). A multiple of 4096.
    pub max_io_bytes: u32,
    /// When an existing device is recovered, leave it in recovery (its I/O
    /// held by the kernel) until [`UblkDevice::end_recovery`] is called,
    /// instead of ending the recovery as soon as the queues are ready. For
    /// the caller that must finish its own crash recovery (the activity-log
    /// resync) before the first request is served.
    pub defer_recovery_end: bool,
    /// Create the device for zero-copy reads when the driver offers it
    /// (`crate::zerocopy`; 6.16+). Default: off unless
    /// [`super::set_zero_copy`] turned it on (`repd --zero-copy`). A device
    /// taken over from a dead repd keeps the mode it was made with.
    pub zero_copy: bool,
}

impl Default for UblkOptions {
    fn default() -> Self {
        Self {
            nr_queues: 0,
            queue_depth: 128,
            max_io_bytes: 1 << 20,
            defer_recovery_end: false,
            zero_copy: super::zero_copy_wanted(),
        }
    }
}

impl UblkOptions {
    fn queues(&self) -> u16 {
        if self.nr_queues > 0 {
            return self.nr_queues;
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        u16::try_from(cpus.clamp(1, 4)).unwrap_or(1)
    }
}

/// A device state as the kernel reports it (`UBLK_S_DEV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevState {
    /// Added, not started (or stopped).
    Dead,
    Live,
    /// Its server went away; I/O is held until a new server recovers it.
    Quiesced,
    /// Its server went away; I/O fails until a new server recovers it.
    FailIo,
    Other(u16),
}

impl DevState {
    fn of(state: u16) -> Self {
        match u32::from(state) {
            sys::UBLK_S_DEV_DEAD => Self::Dead,
            sys::UBLK_S_DEV_LIVE => Self::Live,
            sys::UBLK_S_DEV_QUIESCED => Self::Quiesced,
            sys::UBLK_S_DEV_FAIL_IO => Self::FailIo,
            _ => Self::Other(state),
        }
    }
}

/// A ublk device that exists in the kernel, as [`probe`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    pub state: DevState,
    /// The server process recorded for it.
    pub pid: i32,
    /// Created with `UBLK_F_USER_RECOVERY`: a new server can take it over.
    pub recoverable: bool,
    nr_queues: u16,
    depth: u16,
    max_io_bytes: u32,
}

fn pid_alive(pid: i32) -> bool {
    pid > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

impl Existing {
    /// Whether its server process still runs.
    pub fn server_alive(&self) -> bool {
        pid_alive(self.pid)
    }
}

fn ctrl_err(dev_id: u32, op: &'static str, e: libublk::UblkError) -> UblkError {
    UblkError::Ctrl {
        dev_id,
        op,
        detail: super::describe(&e),
    }
}

/// What the kernel knows of ublk device `dev_id`, or `None` when there is
/// no such device (or no driver).
pub fn probe(dev_id: u32) -> Result<Option<Existing>, UblkError> {
    if !driver_present() {
        return Err(UblkError::NoDriver);
    }
    if !Path::new(&format!("/sys/class/ublk-char/ublkc{dev_id}")).exists() {
        return Ok(None);
    }
    let id = i32::try_from(dev_id).map_err(|_| UblkError::BadId(dev_id))?;
    let ctrl = match UblkCtrl::new_simple(id) {
        Ok(c) => c,
        // Gone between the two looks.
        Err(libublk::UblkError::UringIOError(e)) if e == -libc::ENODEV => return Ok(None),
        Err(e) => return Err(ctrl_err(dev_id, "GET_DEV_INFO", e)),
    };
    let info = ctrl.dev_info();
    Ok(Some(Existing {
        state: DevState::of(info.state),
        pid: info.ublksrv_pid,
        recoverable: info.flags & u64::from(sys::UBLK_F_USER_RECOVERY) != 0,
        nr_queues: info.nr_hw_queues,
        depth: info.queue_depth,
        max_io_bytes: info.max_io_buf_bytes,
    }))
}

/// Remove ublk device `dev_id` that a dead server left behind (user
/// recovery keeps it, its I/O held) without serving it: STOP_DEV fails the
/// held requests with EIO and takes the disk away, then DEL_DEV. The
/// deletion does not wait for the last opener (a filesystem still mounted
/// on it keeps the id busy until it is unmounted; it sees only errors).
/// Refused while the device's server is alive.
pub fn remove_left_over(dev_id: u32) -> Result<(), UblkError> {
    let Some(e) = probe(dev_id)? else {
        return Ok(());
    };
    if e.server_alive() {
        return Err(UblkError::Busy {
            dev_id,
            pid: e.pid,
            state: e.state,
        });
    }
    let id = i32::try_from(dev_id).map_err(|_| UblkError::BadId(dev_id))?;
    let c = match UblkCtrl::new_simple(id) {
        Ok(c) => c,
        Err(libublk::UblkError::UringIOError(e)) if e == -libc::ENODEV => return Ok(()),
        Err(e) => return Err(ctrl_err(dev_id, "GET_DEV_INFO", e)),
    };
    c.kill_dev().map_err(|e| ctrl_err(dev_id, "STOP_DEV", e))?;
    c.del_dev_async()
        .map_err(|e| ctrl_err(dev_id, "DEL_DEV_ASYNC", e))?;
    Ok(())
}

/// Requests to the control thread.
enum Cmd {
    EndRecovery(Sender<Result<(), UblkError>>),
    GoLive(Sender<Result<(), UblkError>>),
    Stop(Sender<Result<(), UblkError>>),
    /// `UBLK_U_CMD_UPDATE_SIZE` (Linux 6.16 and later) to this many bytes.
    UpdateSize(u64, Sender<Result<(), UblkError>>),
}

/// What `start` learns from the control thread.
struct Started {
    recovered: bool,
    recovering: bool,
    live: bool,
}

/// A ublk device this process serves: `/dev/ublkb<dev_id>`.
#[derive(Debug)]
pub struct UblkDevice {
    dev_id: u32,
    recovered: bool,
    recovering: AtomicBool,
    /// Started: `/dev/ublkb<dev_id>` exists. False for a prepared device.
    live: AtomicBool,
    /// The size the kernel was given (`repctl resize` may change it).
    size_bytes: std::sync::atomic::AtomicU64,
    tx: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::EndRecovery(_) => "EndRecovery",
            Cmd::GoLive(_) => "GoLive",
            Cmd::Stop(_) => "Stop",
            Cmd::UpdateSize(..) => "UpdateSize",
        })
    }
}

impl UblkDevice {
    /// Add and start ublk device `dev_id` serving `backend`, or, when the
    /// kernel still has that device from a server that died (user recovery:
    /// its I/O is held, `QUIESCED`), take it over. Returns once the device
    /// serves I/O, or, with [`UblkOptions::defer_recovery_end`], once it is
    /// ready to.
    pub fn start(
        dev_id: u32,
        backend: Arc<dyn BlockBackend>,
        opts: UblkOptions,
    ) -> Result<UblkDevice, UblkError> {
        Self::spawn(dev_id, backend, opts, Mode::Start)
    }

    /// Add ublk device `dev_id` and make its queues ready, without starting
    /// it: the control device `/dev/ublkc<dev_id>` exists, the block device
    /// `/dev/ublkb<dev_id>` does not, so nothing can send it I/O. [`Self::go_live`]
    /// then only has to start it (START_DEV), which is what a promotion
    /// waits for: adding the device and setting up its queues took most of
    /// the time (0.1-0.5 s in the TCG guest). Refused, as `Busy`, when the
    /// kernel has the device already (a dead server's is taken over by
    /// [`Self::start`] only).
    pub fn prepare(
        dev_id: u32,
        backend: Arc<dyn BlockBackend>,
        opts: UblkOptions,
    ) -> Result<UblkDevice, UblkError> {
        Self::spawn(dev_id, backend, opts, Mode::Prepare)
    }

    fn spawn(
        dev_id: u32,
        backend: Arc<dyn BlockBackend>,
        opts: UblkOptions,
        mode: Mode,
    ) -> Result<UblkDevice, UblkError> {
        if !driver_present() {
            return Err(UblkError::NoDriver);
        }
        let size = backend.size_bytes();
        if size == 0 || size % 4096 != 0 {
            return Err(UblkError::BadSize(size));
        }
        if opts.max_io_bytes == 0 || opts.max_io_bytes % 4096 != 0 || opts.queue_depth == 0 {
            return Err(UblkError::BadOptions(format!("{opts:?}")));
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("ublk{dev_id}-ctl"))
            .spawn(move || control_thread(dev_id, backend, opts, size, mode, &ready_tx, &rx))
            .map_err(UblkError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(s)) => Ok(UblkDevice {
                dev_id,
                recovered: s.recovered,
                recovering: AtomicBool::new(s.recovering),
                live: AtomicBool::new(s.live),
                size_bytes: std::sync::atomic::AtomicU64::new(size),
                tx,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(UblkError::Gone(dev_id))
            }
        }
    }

    /// Start a prepared device (START_DEV): `/dev/ublkb<dev_id>` appears and
    /// serves I/O. Does nothing when it is live already. After an error the
    /// device is in an unknown state: [`Self::stop`] it.
    pub fn go_live(&self) -> Result<(), UblkError> {
        if self.is_live() {
            return Ok(());
        }
        self.request(Cmd::GoLive)?;
        self.live.store(true, Ordering::Release);
        Ok(())
    }

    /// The size the kernel knows the device by.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    /// Grow the live device to `bytes` (`repctl resize`) with
    /// `UBLK_U_CMD_UPDATE_SIZE`. Kernels before 6.16 do not know the
    /// command: the error says so, and the device keeps its size until it
    /// is re-created (the next demote and promote).
    pub fn update_size(&self, bytes: u64) -> Result<(), UblkError> {
        self.request(|tx| Cmd::UpdateSize(bytes, tx))?;
        self.size_bytes.store(bytes, Ordering::Release);
        Ok(())
    }

    /// Whether the block device exists (started, or taken over from a dead
    /// server); false for a prepared device.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    /// `/dev/ublkb<dev_id>`.
    pub fn path(&self) -> PathBuf {
        device_path(self.dev_id)
    }

    /// Whether `start` took over a device a dead server left.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// Whether the device waits for [`Self::end_recovery`] (its I/O held).
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    fn request(
        &self,
        make: impl FnOnce(Sender<Result<(), UblkError>>) -> Cmd,
    ) -> Result<(), UblkError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| UblkError::Gone(self.dev_id))?;
        rx.recv().map_err(|_| UblkError::Gone(self.dev_id))?
    }

    /// End a deferred recovery: the held I/O is served from now on. Does
    /// nothing when the device is not recovering.
    pub fn end_recovery(&self) -> Result<(), UblkError> {
        if !self.is_recovering() {
            return Ok(());
        }
        self.request(Cmd::EndRecovery)?;
        self.recovering.store(false, Ordering::Release);
        Ok(())
    }

    /// Stop and remove the device: `/dev/ublkb<dev_id>` goes away. Requests
    /// in flight are answered first (the backend answers each one).
    pub fn stop(mut self) -> Result<(), UblkError> {
        let r = self.request(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for UblkDevice {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let (tx, rx) = mpsc::channel();
            if self.tx.send(Cmd::Stop(tx)).is_ok() {
                let _ = rx.recv();
            }
            let _ = t.join();
        }
    }
}

/// The control thread's device: the control handle, the data device and
/// the queue threads.
struct Running {
    dev_id: u32,
    ctrl: UblkCtrl,
    dev: Option<Arc<UblkDev>>,
    queues: Vec<JoinHandle<()>>,
}

impl Running {
    /// STOP_DEV (the disk goes away once the requests in flight are
    /// answered; the queues then see their commands aborted and end), then
    /// DEL_DEV once nothing holds `/dev/ublkcN` open.
    fn teardown(mut self) -> Result<(), UblkError> {
        let stop = self.ctrl.kill_dev();
        for q in self.queues.drain(..) {
            let _ = q.join();
        }
        self.dev = None;
        let del = self.ctrl.del_dev();
        stop.map_err(|e| ctrl_err(self.dev_id, "STOP_DEV", e))?;
        del.map_err(|e| ctrl_err(self.dev_id, "DEL_DEV", e))?;
        Ok(())
    }

    fn update_size(&self, bytes: u64) -> Result<(), UblkError> {
        match self.ctrl.update_size(bytes) {
            Ok(r) if r >= 0 => Ok(()),
            Ok(r) => Err(ctrl_err(
                self.dev_id,
                "UPDATE_SIZE (Linux 6.16 and later)",
                libublk::UblkError::UringIOError(r),
            )),
            Err(e) => Err(ctrl_err(
                self.dev_id,
                "UPDATE_SIZE (Linux 6.16 and later)",
                e,
            )),
        }
    }

    fn go_live(&self) -> Result<(), UblkError> {
        let Some(dev) = &self.dev else {
            return Err(UblkError::Gone(self.dev_id));
        };
        match self.ctrl.start_dev(dev) {
            Ok(r) if r >= 0 => Ok(()),
            Ok(r) => Err(ctrl_err(
                self.dev_id,
                "START_DEV",
                libublk::UblkError::UringIOError(r),
            )),
            Err(e) => Err(ctrl_err(self.dev_id, "START_DEV", e)),
        }
    }

    fn end_recovery(&self) -> Result<(), UblkError> {
        let Some(dev) = &self.dev else {
            return Err(UblkError::Gone(self.dev_id));
        };
        let r = self
            .ctrl
            .start_dev(dev)
            .map_err(|e| ctrl_err(self.dev_id, "END_USER_RECOVERY", e))?;
        if r < 0 {
            return Err(ctrl_err(
                self.dev_id,
                "END_USER_RECOVERY",
                libublk::UblkError::UringIOError(r),
            ));
        }
        Ok(())
    }
}

/// What `spawn` asks of the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Add (or take over) and start.
    Start,
    /// Add with the queues ready; start on `GoLive`.
    Prepare,
}

fn control_thread(
    dev_id: u32,
    backend: Arc<dyn BlockBackend>,
    opts: UblkOptions,
    size: u64,
    mode: Mode,
    ready: &Sender<Result<Started, UblkError>>,
    rx: &Receiver<Cmd>,
) {
    let (run, started) = match bring_up(dev_id, backend, &opts, size, mode) {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(started));
    loop {
        match rx.recv() {
            Ok(Cmd::EndRecovery(reply)) => {
                let _ = reply.send(run.end_recovery());
            }
            Ok(Cmd::GoLive(reply)) => {
                let _ = reply.send(run.go_live());
            }
            Ok(Cmd::Stop(reply)) => {
                let _ = reply.send(run.teardown());
                return;
            }
            Ok(Cmd::UpdateSize(bytes, reply)) => {
                let _ = reply.send(run.update_size(bytes));
            }
            Err(_) => {
                let _ = run.teardown();
                return;
            }
        }
    }
}

/// Add or recover the device and start its queues.
fn bring_up(
    dev_id: u32,
    backend: Arc<dyn BlockBackend>,
    opts: &UblkOptions,
    size: u64,
    mode: Mode,
) -> Result<(Running, Started), UblkError> {
    let id = i32::try_from(dev_id).map_err(|_| UblkError::BadId(dev_id))?;
    let recover = to_take_over(dev_id, id, mode)?;
    let ctrl = match recover {
        None => add_ctrl(dev_id, id, opts)?,
        Some(e) => recover_ctrl(dev_id, id, &e, size)?,
    };
    let run = start_queues(dev_id, ctrl, backend, opts, size)?;
    let recovering = recover.is_some();
    if recovering && opts.defer_recovery_end {
        // The queues have fetched their tags; END_USER_RECOVERY (which lets
        // the held requests through) waits for `end_recovery`.
        return Ok((
            run,
            Started {
                recovered: true,
                recovering: true,
                live: true,
            },
        ));
    }
    if mode == Mode::Prepare {
        // Every queue thread has been handed its tags to fetch; START_DEV
        // (in `go_live`) waits until they all did.
        return Ok((
            run,
            Started {
                recovered: false,
                recovering: false,
                live: false,
            },
        ));
    }
    start_dev(run, recovering)
}

/// What is at `dev_id` now: `Some` a device a dead server left, to take
/// over; `None` nothing (a dead server's unstarted device is removed), or
/// why the id is not ours to use.
fn to_take_over(dev_id: u32, id: i32, mode: Mode) -> Result<Option<Existing>, UblkError> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let Some(e) = probe(dev_id)? else {
        return Ok(None);
    };
    let busy = || UblkError::Busy {
        dev_id,
        pid: e.pid,
        state: e.state,
    };
    // A dead server's device is taken over only to serve it at once.
    if mode == Mode::Prepare && !(e.state == DevState::Dead && (e.pid == me || !e.server_alive())) {
        return Err(busy());
    }
    match e.state {
        // Its server died: I/O is held (or failed) until we take over.
        DevState::Quiesced | DevState::FailIo if e.recoverable => Ok(Some(e)),
        // Its server died a moment ago: the kernel is still quiescing it
        // (START_USER_RECOVERY waits for that).
        DevState::Live if e.recoverable && !e.server_alive() => Ok(Some(e)),
        // Added but never started by a server that is gone: remove it.
        DevState::Dead if e.pid == me || !e.server_alive() => {
            tracing::warn!(
                dev = dev_id,
                pid = e.pid,
                "removing ublk device {dev_id}, left unstarted by a server that is gone"
            );
            let c = UblkCtrl::new_simple(id).map_err(|e| ctrl_err(dev_id, "GET_DEV_INFO", e))?;
            c.del_dev().map_err(|e| ctrl_err(dev_id, "DEL_DEV", e))?;
            Ok(None)
        }
        _ => Err(busy()),
    }
}

/// Adds a new device (with user recovery, so a next server can take it
/// over if this one dies).
fn add_ctrl(dev_id: u32, id: i32, opts: &UblkOptions) -> Result<UblkCtrl, UblkError> {
    let mut flags = u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE);
    if zero_copy_flags(opts) {
        flags |= crate::zerocopy::DEVICE_FLAGS;
    }
    UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .id(id)
        .nr_queues(opts.queues())
        .depth(opts.queue_depth)
        .io_buf_bytes(opts.max_io_bytes)
        .ctrl_flags(flags)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()
        .map_err(|e| ctrl_err(dev_id, "ADD_DEV", e))
}

/// Whether a new device gets the zero-copy flags: wanted, and the driver
/// offers them (its feature bits, asked once per process). Says which
/// once.
fn zero_copy_flags(opts: &UblkOptions) -> bool {
    static FEATURES: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static SAID: AtomicBool = AtomicBool::new(false);
    let features = *FEATURES.get_or_init(UblkCtrl::get_features);
    let offered = features
        .is_some_and(|f| f & crate::zerocopy::NEEDED_FEATURES == crate::zerocopy::NEEDED_FEATURES);
    let on = opts.zero_copy && offered;
    if !SAID.swap(true, Ordering::Relaxed) {
        let why = match (opts.zero_copy, offered) {
            (true, true) => "on: local reads land in the requests' pages",
            (false, _) => "off (repd --zero-copy not given): reads are copied",
            (true, false) => {
                "off: the driver lacks SUPPORT_ZERO_COPY, USER_COPY or BUF_REG_OFF_DAEMON \
                 (Linux 6.16+): reads are copied"
            }
        };
        tracing::info!(features = ?features.map(|f| format!("{f:#x}")), "ublk zero copy {why}");
    }
    on
}

/// Takes over the device `e` a dead server left, if it has this size.
fn recover_ctrl(dev_id: u32, id: i32, e: &Existing, size: u64) -> Result<UblkCtrl, UblkError> {
    tracing::info!(
        dev = dev_id,
        old_pid = e.pid,
        state = ?e.state,
        "recovering /dev/ublkb{dev_id} left by a server that died"
    );
    let c = UblkCtrl::new(
        Some(TARGET_NAME.to_string()),
        id,
        u32::from(e.nr_queues),
        u32::from(e.depth),
        e.max_io_bytes,
        0,
        0,
        UblkFlags::UBLK_DEV_F_RECOVER_DEV,
    )
    .map_err(|e| ctrl_err(dev_id, "GET_DEV_INFO", e))?;
    let mut p = sys::ublk_params::default();
    c.get_params(&mut p)
        .map_err(|e| ctrl_err(dev_id, "GET_PARAMS", e))?;
    if p.basic.dev_sectors << 9 != size {
        return Err(UblkError::Mismatch {
            dev_id,
            have: p.basic.dev_sectors << 9,
            want: size,
        });
    }
    // Waits (up to 30 s) for the kernel to finish quiescing it.
    match c.start_user_recover() {
        Ok(r) if r >= 0 => Ok(c),
        Ok(r) => Err(ctrl_err(
            dev_id,
            "START_USER_RECOVERY",
            libublk::UblkError::UringIOError(r),
        )),
        Err(e) => Err(ctrl_err(dev_id, "START_USER_RECOVERY", e)),
    }
}

/// Opens `/dev/ublkcN` and starts one thread per queue, each configured
/// (affinity, tags) once it reports its thread id.
fn start_queues(
    dev_id: u32,
    ctrl: UblkCtrl,
    backend: Arc<dyn BlockBackend>,
    opts: &UblkOptions,
    size: u64,
) -> Result<Running, UblkError> {
    let max_sectors = opts.max_io_bytes >> 9;
    let dev = UblkDev::new(
        TARGET_NAME.to_string(),
        |d: &mut UblkDev| {
            let depth = d.dev_info.queue_depth;
            // Room for every tag's command plus the eventfd poll.
            d.tgt.sq_depth = depth.saturating_mul(2);
            d.tgt.cq_depth = depth.saturating_mul(4);
            d.tgt.dev_size = size;
            d.tgt.params = params(size, max_sectors);
            Ok(())
        },
        &ctrl,
    )
    .map_err(|e| ctrl_err(dev_id, "open /dev/ublkcN", e))?;
    let dev = Arc::new(dev);
    let nr_queues = dev.dev_info.nr_hw_queues;
    let (tid_tx, tid_rx) = mpsc::channel();
    let mut queues = Vec::new();
    for qid in 0..nr_queues {
        match spawn_queue(dev_id, qid, &dev, backend.clone(), size, tid_tx.clone()) {
            Ok(h) => queues.push(h),
            Err(e) => {
                // The queues already started wait for commands: remove the
                // device to end them.
                let run = Running {
                    dev_id,
                    ctrl,
                    dev: Some(dev),
                    queues,
                };
                let _ = run.teardown();
                return Err(UblkError::Thread(e));
            }
        }
    }
    drop(tid_tx);
    configure_queues(dev_id, &ctrl, &dev, nr_queues, &tid_rx);
    Ok(Running {
        dev_id,
        ctrl,
        dev: Some(dev),
        queues,
    })
}

/// One queue's thread: it reports its thread id on `tid`, then serves.
fn spawn_queue(
    dev_id: u32,
    qid: u16,
    dev: &Arc<UblkDev>,
    backend: Arc<dyn BlockBackend>,
    size: u64,
    tid: Sender<(u16, i32)>,
) -> std::io::Result<JoinHandle<()>> {
    let d = dev.clone();
    std::thread::Builder::new()
        .name(format!("ublk{dev_id}-q{qid}"))
        .spawn(move || {
            let t = UblkCtrl::init_queue_thread();
            let _ = tid.send((qid, t));
            if let Err(e) = queue::run(qid, &d, backend, size) {
                tracing::error!(dev = dev_id, qid, "ublk queue failed: {e}");
                // Unblock START_DEV: it waits for every queue.
                d.notify_buffer_registration_complete(true);
            }
        })
}

/// Configures each queue as its thread reports in (10 s for all).
fn configure_queues(
    dev_id: u32,
    ctrl: &UblkCtrl,
    dev: &UblkDev,
    nr_queues: u16,
    tid_rx: &Receiver<(u16, i32)>,
) {
    let t0 = Instant::now();
    let mut configured = 0;
    while configured < nr_queues {
        match tid_rx.recv_timeout(Duration::from_secs(10).saturating_sub(t0.elapsed())) {
            Ok((qid, tid)) => {
                ctrl.set_thread_affinity(qid, tid);
                if let Err(e) = ctrl.configure_queue(dev, qid, tid) {
                    tracing::warn!(
                        dev = dev_id,
                        qid,
                        "configure_queue: {}",
                        super::describe(&e)
                    );
                }
                configured += 1;
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// START_DEV (END_USER_RECOVERY when `recovering`): the block device
/// appears, or the held I/O goes on.
fn start_dev(run: Running, recovering: bool) -> Result<(Running, Started), UblkError> {
    let dev_id = run.dev_id;
    let op = if recovering {
        "END_USER_RECOVERY"
    } else {
        "START_DEV"
    };
    let started = match &run.dev {
        Some(dev) => run.ctrl.start_dev(dev),
        None => Err(libublk::UblkError::OtherError(-libc::ENODEV)),
    };
    match started {
        Ok(r) if r >= 0 => Ok((
            run,
            Started {
                recovered: recovering,
                recovering: false,
                live: true,
            },
        )),
        Ok(r) => {
            let _ = run.teardown();
            Err(ctrl_err(dev_id, op, libublk::UblkError::UringIOError(r)))
        }
        Err(e) => {
            let _ = run.teardown();
            Err(ctrl_err(dev_id, op, e))
        }
    }
}

/// The device parameters: 512-byte logical and 4096-byte physical blocks,
/// `max_sectors` per request, a volatile write cache with FUA (so FLUSH and
/// FUA reach the backend), discard and write-zeroes.
pub(crate) fn params(size: u64, max_sectors: u32) -> sys::ublk_params {
    sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 12,
            max_sectors,
            dev_sectors: size >> 9,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: 4096,
            max_discard_sectors: max_sectors,
            max_write_zeroes_sectors: max_sectors,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_advertise_what_the_brief_asks() {
        let p = params(256 << 20, 2048);
        assert_eq!(p.basic.dev_sectors, (256 << 20) >> 9);
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.max_sectors, 2048);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_FUA, 0);
        assert_ne!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(p.discard.discard_granularity, 4096);
        assert_eq!(p.discard.max_discard_sectors, 2048);
        assert_eq!(p.discard.max_write_zeroes_sectors, 2048);
    }

    #[test]
    fn default_options() {
        let o = UblkOptions::default();
        assert_eq!(o.queue_depth, 128);
        assert_eq!(o.max_io_bytes, 1 << 20);
        let q = o.queues();
        assert!((1..=4).contains(&q));
    }

    #[test]
    fn states() {
        assert_eq!(DevState::of(0), DevState::Dead);
        assert_eq!(DevState::of(1), DevState::Live);
        assert_eq!(DevState::of(2), DevState::Quiesced);
        assert_eq!(DevState::of(3), DevState::FailIo);
        assert_eq!(DevState::of(9), DevState::Other(9));
        assert!(pid_alive(i32::try_from(std::process::id()).unwrap()));
        assert!(!pid_alive(0));
    }
}
