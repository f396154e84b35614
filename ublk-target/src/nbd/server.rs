//! The NBD server: accept loop, per-client negotiation, and the
//! transmission phase (one reader thread + one writer thread per client).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, info_span, warn};

use super::proto::{self, *};
use crate::disk::AlignedBuf;
use crate::frontend::{BlockBackend, IoRequest, IoResult, Reply};

/// Requests in flight per connection (read, submitted, reply not yet
/// written). The reader stops reading requests at this many.
pub const MAX_IN_FLIGHT: usize = 128;
/// Payload bytes (write data read + read data expected) in flight per
/// connection; with [`MAX_IN_FLIGHT`] this bounds a client's memory.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// A client has this long to finish negotiation.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How often blocked threads look at the shutdown flag.
const POLL: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An NBD server bound to a socket, serving one export. Call
/// [`NbdServer::spawn`] to start it.
pub struct NbdServer {
    listener: TcpListener,
    export: Arc<Export>,
}

impl fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdServer")
            .field("addr", &self.listener.local_addr().ok())
            .field("export", &self.export.name)
            .finish()
    }
}

struct Export {
    name: String,
    backend: Arc<dyn BlockBackend>,
}

impl NbdServer {
    /// Bind the listening socket. `export_name` is the resource name
    /// clients ask for (an empty name in a request also selects it).
    pub fn bind(
        addr: SocketAddr,
        export_name: String,
        backend: Arc<dyn BlockBackend>,
    ) -> io::Result<NbdServer> {
        let listener = TcpListener::bind(addr)?;
        Ok(NbdServer {
            listener,
            export: Arc::new(Export {
                name: export_name,
                backend,
            }),
        })
    }

    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Start accepting clients on a background thread. Dropping the handle
    /// does not stop the server; call [`NbdServerHandle::shutdown`].
    pub fn spawn(self) -> NbdServerHandle {
        let local_addr = self
            .listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let shared = Arc::new(Shared {
            export: self.export,
            stopping: AtomicBool::new(false),
            clients: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let listener = self.listener;
        let acceptor = thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || accept_loop(&s, &listener))
            .map_err(|e| tracing::error!(error = %e, "cannot start the NBD accept thread"))
            .ok();
        info!(addr = %local_addr, export = %shared.export.name, "NBD server listening");
        NbdServerHandle {
            shared,
            local_addr,
            acceptor: Mutex::new(acceptor),
        }
    }
}

/// How long a client that just disconnected may take to leave the
/// server's list before `secondary` or `down` counts it as connected.
const LEAVE_GRACE: Duration = Duration::from_millis(200);

/// What makes the device in use through the export: its clients, which a
/// forced `down` (or SIGTERM) disconnects by shutting the server down.
impl crate::frontend::UserSource for NbdServerHandle {
    fn name(&self) -> &str {
        "NBD"
    }

    /// Not the count `status` shows (refreshed every 100 ms): a client
    /// that has just disconnected (an `nbdcopy` that exited a moment ago)
    /// may take a few ms to leave the list, so a count above 0 is looked at
    /// again for up to [`LEAVE_GRACE`] (this only delays a refusal).
    fn clients(&self) -> usize {
        let t0 = Instant::now();
        loop {
            let n = NbdServerHandle::clients(self);
            if n == 0 || t0.elapsed() >= LEAVE_GRACE {
                return n;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn cut(&self) {
        self.shutdown();
    }
}

/// Controls a running [`NbdServer`].
pub struct NbdServerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for NbdServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdServerHandle")
            .field("addr", &self.local_addr)
            .field("export", &self.shared.export.name)
            .field("clients", &self.clients())
            .finish()
    }
}

impl NbdServerHandle {
    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Clients currently connected (negotiating or transmitting).
    pub fn clients(&self) -> usize {
        lock(&self.shared.clients).len()
    }

    /// Stop accepting new clients and close every client socket. Requests
    /// in flight complete in the backend but their replies are dropped.
    /// Returns at once; [`NbdServerHandle::join`] waits for the threads.
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        info!(addr = %self.local_addr, "NBD server shutting down");
        // Wake the acceptor blocked in accept(): it sees `stopping` and
        // drops the connection.
        let wake = match self.local_addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        if let Err(e) = TcpStream::connect_timeout(&wake, Duration::from_secs(1)) {
            warn!(error = %e, "cannot wake the NBD accept thread");
        }
        for stream in lock(&self.shared.clients).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Wait for the accept thread and every client thread to finish
    /// (after [`NbdServerHandle::shutdown`], or this blocks for as long as
    /// the server runs).
    pub fn join(self) {
        if let Some(h) = lock(&self.acceptor).take() {
            let _ = h.join();
        }
        loop {
            let Some(h) = lock(&self.shared.threads).pop() else {
                break;
            };
            let _ = h.join();
        }
    }
}

struct Shared {
    export: Arc<Export>,
    stopping: AtomicBool,
    /// A clone of each client socket, so shutdown can close them.
    clients: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for conn in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: do not spin.
                warn!(error = %e, "NBD accept failed");
                thread::sleep(POLL);
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut clients = lock(&shared.clients);
            if shared.stopping() {
                break;
            }
            match stream.try_clone() {
                Ok(c) => {
                    clients.insert(id, c);
                }
                Err(e) => {
                    warn!(%peer, error = %e, "cannot clone client socket; dropping client");
                    continue;
                }
            }
        }
        let s = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("nbd-client-{id}"))
            .spawn(move || {
                run_client(&s, stream, peer);
                lock(&s.clients).remove(&id);
            });
        let mut threads = lock(&shared.threads);
        threads.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                warn!(%peer, error = %e, "cannot start client thread; dropping client");
                if let Some(c) = lock(&shared.clients).remove(&id) {
                    let _ = c.shutdown(Shutdown::Both);
                }
            }
        }
    }
    debug!("NBD accept loop stopped");
}

/// Why a client connection ended.
#[derive(Debug)]
enum Close {
    /// The client went away or asked to (ABORT, DISC, EOF).
    Normal(&'static str),
    /// The client broke the protocol; the message says how.
    Protocol(String),
    /// Socket error.
    Io(io::Error),
}

impl From<io::Error> for Close {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Close::Normal("client closed the connection")
        } else {
            Close::Io(e)
        }
    }
}

fn run_client(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let span = info_span!("nbd_client", %peer);
    let _entered = span.enter();
    debug!("client connected");
    let result = serve_client(shared, stream, &span);
    match result {
        Ok(()) => debug!("client disconnected"),
        Err(Close::Normal(why)) => debug!(why, "client disconnected"),
        Err(Close::Protocol(why)) => warn!(%why, "closing NBD client connection"),
        Err(Close::Io(e)) if shared.stopping() => debug!(error = %e, "client closed by shutdown"),
        Err(Close::Io(e)) => info!(error = %e, "NBD client connection failed"),
    }
}

fn serve_client(
    shared: &Arc<Shared>,
    stream: TcpStream,
    span: &tracing::Span,
) -> Result<(), Close> {
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(NEGOTIATION_TIMEOUT))?;
    let mut reader = BufReader::with_capacity(128 << 10, stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    let Some(size) = negotiate(&shared.export, &mut reader, &mut writer)? else {
        return Ok(());
    };
    stream.set_read_timeout(None)?;
    info!(size, "client entered transmission phase");
    transmission(shared, reader, stream, size, span)
}

// --- negotiation --------------------------------------------------------------

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn drain(r: &mut impl Read, len: u64) -> io::Result<()> {
    let n = io::copy(&mut r.take(len), &mut io::sink())?;
    if n < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn send_rep(w: &mut impl Write, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    w.write_all(&proto::encode_option_reply(option, reply, data))
}

/// Why an export request is refused, if it is.
fn check_export(export: &Export, name: &[u8]) -> Result<(), (u32, String)> {
    if !name.is_empty() && name != export.name.as_bytes() {
        return Err((
            REP_ERR_UNKNOWN,
            format!(
                "no export named '{}'; this server exports '{}'",
                String::from_utf8_lossy(name),
                export.name
            ),
        ));
    }
    if !export.backend.writable() {
        return Err((
            REP_ERR_POLICY,
            format!(
                "resource {} is Secondary on this node; only the Primary serves I/O",
                export.name
            ),
        ));
    }
    Ok(())
}

/// Fixed newstyle negotiation. `Ok(Some(size))` to enter transmission,
/// `Ok(None)` if the client aborted.
fn negotiate(export: &Export, r: &mut impl Read, w: &mut impl Write) -> Result<Option<u64>, Close> {
    w.write_all(&proto::encode_greeting())?;
    let client_flags = u32::from_be_bytes(read_array(r)?);
    if client_flags & !KNOWN_CLIENT_FLAGS != 0 {
        return Err(Close::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let fixed = client_flags & FLAG_C_FIXED_NEWSTYLE != 0;
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;

    loop {
        let hdr = OptionHeader::parse(&read_array(r)?);
        if hdr.magic != IHAVEOPT {
            return Err(Close::Protocol(format!(
                "bad option magic {:#x}",
                hdr.magic
            )));
        }
        let opt = hdr.option;
        if hdr.len > MAX_OPTION_LEN {
            if opt == OPT_EXPORT_NAME || !fixed {
                return Err(Close::Protocol(format!(
                    "option {opt} with {} bytes of data",
                    hdr.len
                )));
            }
            drain(r, u64::from(hdr.len))?;
            send_rep(w, opt, REP_ERR_TOO_BIG, b"option data too long")?;
            continue;
        }
        let mut data = vec![0u8; usize::try_from(hdr.len).unwrap_or(0)];
        r.read_exact(&mut data)?;
        let size = export.backend.size_bytes();

        if opt == OPT_EXPORT_NAME {
            // No way to report an error: close.
            if let Err((_, msg)) = check_export(export, &data) {
                return Err(Close::Protocol(format!(
                    "NBD_OPT_EXPORT_NAME refused: {msg}"
                )));
            }
            w.write_all(&proto::encode_export_name_reply(
                size,
                TRANSMISSION_FLAGS,
                no_zeroes,
            ))?;
            return Ok(Some(size));
        }
        if !fixed {
            // Without fixed newstyle we may not send error replies.
            return Err(Close::Protocol(format!(
                "option {opt} from a client without fixed newstyle"
            )));
        }
        match opt {
            OPT_ABORT => {
                // The client may already have closed; ignore errors.
                let _ = send_rep(w, opt, REP_ACK, &[]);
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    send_rep(w, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                    continue;
                }
                send_rep(w, opt, REP_SERVER, &proto::encode_rep_server(&export.name))?;
                send_rep(w, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some(req) = proto::parse_info_request(&data) else {
                    send_rep(w, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO data")?;
                    continue;
                };
                if let Err((rep, msg)) = check_export(export, &req.name) {
                    debug!(%msg, "export refused");
                    send_rep(w, opt, rep, msg.as_bytes())?;
                    continue;
                }
                send_rep(
                    w,
                    opt,
                    REP_INFO,
                    &proto::encode_info_export(size, TRANSMISSION_FLAGS),
                )?;
                // Always sent: we enforce non-default constraints.
                send_rep(w, opt, REP_INFO, &proto::encode_info_block_size())?;
                if req.requests.contains(&INFO_NAME) {
                    send_rep(w, opt, REP_INFO, &proto::encode_info_name(&export.name))?;
                }
                send_rep(w, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return Ok(Some(size));
                }
            }
            OPT_STRUCTURED_REPLY => {
                send_rep(w, opt, REP_ERR_UNSUP, b"only simple replies are supported")?;
            }
            OPT_STARTTLS => {
                send_rep(w, opt, REP_ERR_UNSUP, b"TLS is not supported")?;
            }
            _ => {
                send_rep(
                    w,
                    opt,
                    REP_ERR_UNSUP,
                    format!("option {opt} is not supported").as_bytes(),
                )?;
            }
        }
    }
}

// --- transmission: flow control -----------------------------------------------

/// Bounds what one connection has in flight: a request takes one slot and
/// its payload bytes, released when its reply has been written (or
/// dropped).
struct Limiter {
    state: Mutex<(usize, usize)>,
    cv: Condvar,
}

impl Limiter {
    fn new() -> Arc<Limiter> {
        Arc::new(Limiter {
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
        })
    }

    /// Block until the request fits; `None` if the server shuts down.
    /// A request always fits when nothing else is in flight.
    fn acquire(self: &Arc<Self>, bytes: usize, stop: &AtomicBool) -> Option<Credit> {
        let mut st = lock(&self.state);
        loop {
            let (n, b) = *st;
            if n == 0 || (n < MAX_IN_FLIGHT && b.saturating_add(bytes) <= MAX_IN_FLIGHT_BYTES) {
                *st = (n + 1, b.saturating_add(bytes));
                return Some(Credit {
                    limiter: Arc::clone(self),
                    bytes,
                });
            }
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            st = self
                .cv
                .wait_timeout(st, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A slot in the [`Limiter`], given back on drop.
struct Credit {
    limiter: Arc<Limiter>,
    bytes: usize,
}

impl Drop for Credit {
    fn drop(&mut self) {
        let mut st = lock(&self.limiter.state);
        st.0 = st.0.saturating_sub(1);
        st.1 = st.1.saturating_sub(self.bytes);
        drop(st);
        self.limiter.cv.notify_one();
    }
}

/// A reply for the writer thread.
struct ReplyMsg {
    handle: u64,
    /// NBD error value, 0 for success.
    error: u32,
    /// Read data (only with `error == 0`).
    data: Option<Bytes>,
    _credit: Credit,
}

// --- transmission: reader and writer ---------------------------------------------

fn transmission(
    shared: &Arc<Shared>,
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    size: u64,
    span: &tracing::Span,
) -> Result<(), Close> {
    let (tx, rx) = mpsc::channel::<ReplyMsg>();
    let wstream = stream.try_clone()?;
    let wshared = Arc::clone(shared);
    let wspan = span.clone();
    let writer = thread::Builder::new()
        .name("nbd-writer".into())
        .spawn(move || {
            let _e = wspan.enter();
            writer_loop(&wshared, &rx, wstream);
        })?;
    let mut conn = Conn {
        backend: Arc::clone(&shared.export.backend),
        shared: Arc::clone(shared),
        limiter: Limiter::new(),
        tx,
        size,
        reader,
    };
    let result = conn.reader_loop();
    if result.is_err() {
        // Do not wait for replies nobody will read.
        let _ = stream.shutdown(Shutdown::Both);
    }
    // The writer ends once every reply sender (ours and the backend's
    // in-flight closures) is gone, i.e. after the last reply.
    drop(conn);
    let _ = writer.join();
    let _ = stream.shutdown(Shutdown::Both);
    result
}

fn writer_loop(shared: &Shared, rx: &mpsc::Receiver<ReplyMsg>, stream: TcpStream) {
    let mut w = BufWriter::with_capacity(256 << 10, &stream);
    let mut broken = false;
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                // Nothing queued: push out what we have, then wait.
                if !broken && w.flush().is_err() {
                    broken = true;
                    let _ = stream.shutdown(Shutdown::Both);
                }
                match rx.recv_timeout(POLL) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        if shared.stopping() {
                            // Replies still in the backend are dropped.
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        if broken {
            continue; // just release the credit
        }
        let res = w
            .write_all(&proto::encode_simple_reply(msg.error, msg.handle))
            .and_then(|()| match &msg.data {
                Some(d) => w.write_all(d),
                None => Ok(()),
            });
        if let Err(e) = res {
            debug!(error = %e, "writing reply failed");
            broken = true;
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
    if !broken {
        let _ = w.flush();
    }
}

struct Conn {
    shared: Arc<Shared>,
    backend: Arc<dyn BlockBackend>,
    limiter: Arc<Limiter>,
    tx: mpsc::Sender<ReplyMsg>,
    size: u64,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn credit(&self, bytes: usize) -> Result<Credit, Close> {
        self.limiter
            .acquire(bytes, &self.shared.stopping)
            .ok_or(Close::Normal("server shutting down"))
    }

    /// Queue a reply that needs no backend.
    fn reply_now(&self, handle: u64, error: u32) -> Result<(), Close> {
        let credit = self.credit(0)?;
        self.send(ReplyMsg {
            handle,
            error,
            data: None,
            _credit: credit,
        })
    }

    fn send(&self, msg: ReplyMsg) -> Result<(), Close> {
        self.tx
            .send(msg)
            .map_err(|_| Close::Normal("reply writer stopped"))
    }

    /// Build the backend completion for request `handle`: it sends the
    /// reply to the writer. `read_len` is the data length a read must
    /// return.
    fn completion(&self, handle: u64, read_len: Option<u32>, credit: Credit) -> Reply {
        let tx = self.tx.clone();
        Box::new(move |res: IoResult| {
            let (error, data) = match (res, read_len) {
                (Ok(Some(d)), Some(len)) if d.len() as u64 == u64::from(len) => (0, Some(d)),
                (Ok(d), Some(len)) => {
                    warn!(
                        handle,
                        expected = len,
                        got = d.map(|d| d.len()),
                        "backend returned the wrong read length; replying EIO"
                    );
                    (NBD_EIO, None)
                }
                (Ok(_), None) => (0, None),
                (Err(errno), _) => (proto::nbd_error(errno), None),
            };
            // The connection may be gone; then the reply is dropped.
            let _ = tx.send(ReplyMsg {
                handle,
                error,
                data,
                _credit: credit,
            });
        })
    }

    fn reader_loop(&mut self) -> Result<(), Close> {
        loop {
            let mut hdr = [0u8; REQUEST_HEADER_LEN];
            match self.reader.read_exact(&mut hdr) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Close::Normal(
                        "client closed the connection without NBD_CMD_DISC",
                    ));
                }
                Err(e) => return Err(Close::Io(e)),
            }
            let req = Request::parse(&hdr)
                .map_err(|m| Close::Protocol(format!("bad request magic {m:#x}")))?;
            if req.cmd == CMD_DISC {
                debug!("client sent NBD_CMD_DISC");
                return Ok(());
            }
            self.handle_request(req)?;
        }
    }

    fn handle_request(&mut self, req: Request) -> Result<(), Close> {
        let Request {
            flags,
            cmd,
            handle,
            offset,
            len,
        } = req;
        // FUA is valid on every command (the spec says so; it is a no-op
        // where nothing is written).
        let allowed = match cmd {
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            _ => CMD_FLAG_FUA,
        };
        let fua = flags & CMD_FLAG_FUA != 0;
        let bad_flags = flags & !allowed != 0;
        let in_range = proto::range_ok(offset, len, self.size);
        let reject = |why: &str| {
            debug!(
                cmd = proto::command_name(cmd),
                flags, offset, len, why, "rejecting request with EINVAL"
            );
        };

        match cmd {
            CMD_WRITE => {
                if len > MAX_PAYLOAD {
                    if len > MAX_DRAINED_WRITE {
                        return Err(Close::Protocol(format!(
                            "write of {len} bytes (limit {MAX_PAYLOAD}); too large to drain"
                        )));
                    }
                    reject("write longer than the maximum payload");
                    drain(&mut self.reader, u64::from(len))?;
                    return self.reply_now(handle, NBD_EINVAL);
                }
                let n = usize::try_from(len).unwrap_or(usize::MAX);
                // Take the credit before allocating: memory stays bounded.
                let credit = self.credit(n)?;
                // Straight into an aligned (pooled) buffer: O_DIRECT then
                // writes it without another copy.
                let data = match AlignedBuf::for_overwrite(n) {
                    Ok(mut buf) => {
                        self.reader.read_exact(buf.as_mut_slice())?;
                        buf.into_bytes()
                    }
                    // Not a multiple of 512: refused below, only read.
                    Err(_) => {
                        let mut buf = vec![0u8; n];
                        self.reader.read_exact(&mut buf)?;
                        Bytes::from(buf)
                    }
                };
                if bad_flags || !in_range {
                    reject(if bad_flags {
                        "unknown flags"
                    } else {
                        "bad range"
                    });
                    return self.send(ReplyMsg {
                        handle,
                        error: NBD_EINVAL,
                        data: None,
                        _credit: credit,
                    });
                }
                if len == 0 {
                    return self.send(ReplyMsg {
                        handle,
                        error: 0,
                        data: None,
                        _credit: credit,
                    });
                }
                let reply = self.completion(handle, None, credit);
                self.backend
                    .submit(IoRequest::Write { offset, data, fua }, reply);
                Ok(())
            }
            CMD_READ => {
                if bad_flags || !in_range || len > MAX_PAYLOAD {
                    reject("bad flags, range or length");
                    return self.reply_now(handle, NBD_EINVAL);
                }
                if len == 0 {
                    return self.reply_now(handle, 0);
                }
                let credit = self.credit(usize::try_from(len).unwrap_or(usize::MAX))?;
                let reply = self.completion(handle, Some(len), credit);
                self.backend.submit(IoRequest::Read { offset, len }, reply);
                Ok(())
            }
            CMD_FLUSH => {
                if bad_flags || offset != 0 || len != 0 {
                    reject("flush with flags, offset or length");
                    return self.reply_now(handle, NBD_EINVAL);
                }
                let credit = self.credit(0)?;
                let reply = self.completion(handle, None, credit);
                self.backend.submit(IoRequest::Flush, reply);
                Ok(())
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                if bad_flags || !in_range {
                    reject("bad flags or range");
                    return self.reply_now(handle, NBD_EINVAL);
                }
                if len == 0 {
                    return self.reply_now(handle, 0);
                }
                // FUA on TRIM is ignored: a trim that is lost in a crash is
                // indistinguishable from one the device chose to ignore,
                // which the protocol allows (and the backend's Trim has no
                // FUA).
                self.submit_split(handle, offset, len, |offset, len| {
                    if cmd == CMD_TRIM {
                        IoRequest::Trim { offset, len }
                    } else {
                        IoRequest::WriteZeroes { offset, len, fua }
                    }
                })
            }
            _ => {
                reject("unknown command");
                self.reply_now(handle, NBD_EINVAL)
            }
        }
    }

    /// Submit a payload-less request (TRIM, WRITE_ZEROES) as pieces of at
    /// most [`MAX_PAYLOAD`] bytes, the largest the backend takes, and reply
    /// once when all are done (with the first error, if any). The spec lets
    /// clients send these longer than the maximum payload (Linux sends
    /// whole-device discards), so refusing them would break mkfs/fstrim.
    /// Each piece takes its own in-flight slot, so a huge trim cannot queue
    /// unbounded work.
    fn submit_split(
        &self,
        handle: u64,
        offset: u64,
        len: u32,
        make: impl Fn(u64, u32) -> IoRequest,
    ) -> Result<(), Close> {
        let pieces = len.div_ceil(MAX_PAYLOAD);
        let agg = Arc::new(Aggregate {
            remaining: AtomicUsize::new(usize::try_from(pieces).unwrap_or(usize::MAX)),
            error: AtomicI32::new(0),
            handle,
            tx: self.tx.clone(),
        });
        let mut off = offset;
        let mut left = len;
        while left > 0 {
            let piece = left.min(MAX_PAYLOAD);
            let credit = self.credit(0)?;
            let agg = Arc::clone(&agg);
            let reply: Reply = Box::new(move |res: IoResult| agg.complete(res, credit));
            self.backend.submit(make(off, piece), reply);
            off += u64::from(piece);
            left -= piece;
        }
        Ok(())
    }
}

/// Collects the completions of a split request.
struct Aggregate {
    remaining: AtomicUsize,
    /// First errno seen, 0 if none.
    error: AtomicI32,
    handle: u64,
    tx: mpsc::Sender<ReplyMsg>,
}

impl Aggregate {
    fn complete(&self, res: IoResult, credit: Credit) {
        if let Err(errno) = res {
            let errno = if errno == 0 { nix::libc::EIO } else { errno };
            let _ = self
                .error
                .compare_exchange(0, errno, Ordering::SeqCst, Ordering::SeqCst);
        }
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            let errno = self.error.load(Ordering::SeqCst);
            let error = if errno == 0 {
                0
            } else {
                proto::nbd_error(errno)
            };
            // The last piece's credit goes with the reply, so the queued
            // reply is still accounted for.
            let _ = self.tx.send(ReplyMsg {
                handle: self.handle,
                error,
                data: None,
                _credit: credit,
            });
        }
    }
}

#[cfg(test)]
// Test values are small; truncating casts cannot bite.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::time::Instant;

    /// In-memory backend completing requests inline, or holding them until
    /// `release` (which completes them in reverse order).
    struct TestBackend {
        data: Mutex<Vec<u8>>,
        writable: AtomicBool,
        hold: AtomicBool,
        held: Mutex<Vec<(IoRequest, Reply)>>,
        submitted: Mutex<Vec<IoRequest>>,
    }

    impl TestBackend {
        fn new(size: usize) -> Arc<TestBackend> {
            Arc::new(TestBackend {
                data: Mutex::new(vec![0; size]),
                writable: AtomicBool::new(true),
                hold: AtomicBool::new(false),
                held: Mutex::new(Vec::new()),
                submitted: Mutex::new(Vec::new()),
            })
        }

        fn execute(&self, req: IoRequest, reply: Reply) {
            let mut d = self.data.lock().unwrap();
            let res = match req {
                IoRequest::Read { offset, len } => {
                    let o = offset as usize;
                    Ok(Some(Bytes::copy_from_slice(&d[o..o + len as usize])))
                }
                IoRequest::Write { offset, data, .. } => {
                    let o = offset as usize;
                    d[o..o + data.len()].copy_from_slice(&data);
                    Ok(None)
                }
                IoRequest::Trim { offset, len } | IoRequest::WriteZeroes { offset, len, .. } => {
                    let o = offset as usize;
                    d[o..o + len as usize].fill(0);
                    Ok(None)
                }
                IoRequest::Flush => Ok(None),
            };
            drop(d);
            reply(res);
        }

        /// Complete the held requests, newest first; how many there were.
        fn release(&self) -> usize {
            let held = std::mem::take(&mut *self.held.lock().unwrap());
            let n = held.len();
            for (req, reply) in held.into_iter().rev() {
                self.execute(req, reply);
            }
            n
        }
    }

    impl BlockBackend for TestBackend {
        fn size_bytes(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn writable(&self) -> bool {
            self.writable.load(Ordering::SeqCst)
        }
        fn submit(&self, req: IoRequest, reply: Reply) {
            self.submitted.lock().unwrap().push(req.clone());
            if self.hold.load(Ordering::SeqCst) {
                self.held.lock().unwrap().push((req, reply));
            } else {
                self.execute(req, reply);
            }
        }
    }

    const SIZE: usize = 8 << 20;

    fn start(backend: Arc<TestBackend>) -> NbdServerHandle {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        NbdServer::bind(addr, "r0".into(), backend).unwrap().spawn()
    }

    fn connect(h: &NbdServerHandle) -> TcpStream {
        let s = TcpStream::connect(h.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Read the greeting and send client flags.
    fn greet(s: &mut TcpStream, client_flags: u32) {
        let g: [u8; 18] = read_array(s).unwrap();
        assert_eq!(g, proto::encode_greeting());
        s.write_all(&client_flags.to_be_bytes()).unwrap();
    }

    fn send_opt(s: &mut TcpStream, opt: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        s.write_all(&b).unwrap();
    }

    /// (option, reply type, data)
    fn read_rep(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
        let h: [u8; 20] = read_array(s).unwrap();
        let mut d = Decoder::new(&h);
        assert_eq!(d.u64().unwrap(), OPTION_REPLY_MAGIC);
        let opt = d.u32().unwrap();
        let ty = d.u32().unwrap();
        let mut data = vec![0; d.u32().unwrap() as usize];
        s.read_exact(&mut data).unwrap();
        (opt, ty, data)
    }

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// Send GO for `name`; the replies up to the final one.
    fn go(s: &mut TcpStream, name: &str) -> Vec<(u32, Vec<u8>)> {
        send_opt(s, OPT_GO, &go_data(name, &[INFO_BLOCK_SIZE]));
        let mut out = Vec::new();
        loop {
            let (opt, ty, data) = read_rep(s);
            assert_eq!(opt, OPT_GO);
            out.push((ty, data));
            if ty != REP_INFO {
                return out;
            }
        }
    }

    fn open(h: &NbdServerHandle) -> TcpStream {
        let mut s = connect(h);
        greet(&mut s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        let reps = go(&mut s, "r0");
        assert_eq!(reps.last().unwrap().0, REP_ACK, "{reps:?}");
        s
    }

    fn send_req(s: &mut TcpStream, flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&handle.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        s.write_all(&b).unwrap();
    }

    /// (error, handle)
    fn read_reply(s: &mut TcpStream) -> (u32, u64) {
        let h: [u8; 16] = read_array(s).unwrap();
        let mut d = Decoder::new(&h);
        assert_eq!(d.u32().unwrap(), SIMPLE_REPLY_MAGIC);
        (d.u32().unwrap(), d.u64().unwrap())
    }

    fn assert_closed(s: &mut TcpStream) {
        let mut b = [0u8; 1];
        loop {
            match s.read(&mut b) {
                Ok(0) => return,
                Ok(_) => continue, // replies sent before the close
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected the server to close the connection: {e}"),
            }
        }
    }

    fn write_read_ok(s: &mut TcpStream) {
        let payload = vec![0x5au8; 4096];
        send_req(s, CMD_FLAG_FUA, CMD_WRITE, 77, 8192, 4096);
        s.write_all(&payload).unwrap();
        assert_eq!(read_reply(s), (0, 77));
        send_req(s, 0, CMD_READ, 78, 8192, 4096);
        assert_eq!(read_reply(s), (0, 78));
        let mut back = vec![0u8; 4096];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, payload);
    }

    #[test]
    fn go_info_list_and_roundtrip() {
        let b = TestBackend::new(SIZE);
        let h = start(b.clone());
        let mut s = connect(&h);
        greet(&mut s, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);

        send_opt(&mut s, OPT_LIST, &[]);
        let (_, ty, data) = read_rep(&mut s);
        assert_eq!((ty, data), (REP_SERVER, proto::encode_rep_server("r0")));
        assert_eq!(read_rep(&mut s).1, REP_ACK);

        send_opt(&mut s, OPT_INFO, &go_data("", &[INFO_NAME]));
        let mut infos = Vec::new();
        loop {
            let (opt, ty, data) = read_rep(&mut s);
            assert_eq!(opt, OPT_INFO);
            if ty == REP_ACK {
                break;
            }
            assert_eq!(ty, REP_INFO);
            infos.push(data);
        }
        assert!(infos.contains(&proto::encode_info_export(SIZE as u64, TRANSMISSION_FLAGS)));
        assert!(infos.contains(&proto::encode_info_block_size()));
        assert!(infos.contains(&proto::encode_info_name("r0")));

        let reps = go(&mut s, "r0");
        assert_eq!(reps.last().unwrap().0, REP_ACK);
        assert_eq!(h.clients(), 1);
        write_read_ok(&mut s);
        assert_eq!(b.data.lock().unwrap()[8192..12288], [0x5a; 4096]);
        send_req(&mut s, 0, CMD_FLUSH, 79, 0, 0);
        assert_eq!(read_reply(&mut s), (0, 79));
        send_req(&mut s, 0, CMD_DISC, 80, 0, 0);
        assert_closed(&mut s);
        h.shutdown();
        h.join();
    }

    #[test]
    fn export_name_old_style() {
        let h = start(TestBackend::new(SIZE));
        for no_zeroes in [true, false] {
            let mut s = connect(&h);
            greet(
                &mut s,
                FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 },
            );
            send_opt(&mut s, OPT_EXPORT_NAME, b"r0");
            let mut reply = vec![0u8; if no_zeroes { 10 } else { 134 }];
            s.read_exact(&mut reply).unwrap();
            assert_eq!(
                reply,
                proto::encode_export_name_reply(SIZE as u64, TRANSMISSION_FLAGS, no_zeroes)
            );
            write_read_ok(&mut s);
        }
        // Wrong name: no error reply exists, the server closes.
        let mut s = connect(&h);
        greet(&mut s, FLAG_C_FIXED_NEWSTYLE);
        send_opt(&mut s, OPT_EXPORT_NAME, b"nope");
        assert_closed(&mut s);
        h.shutdown();
        h.join();
    }

    #[test]
    fn refusals_during_negotiation() {
        let b = TestBackend::new(SIZE);
        let h = start(b.clone());
        let mut s = connect(&h);
        greet(&mut s, FLAG_C_FIXED_NEWSTYLE);

        // Unknown export.
        let reps = go(&mut s, "r1");
        let (ty, msg) = reps.last().unwrap();
        assert_eq!(*ty, REP_ERR_UNKNOWN);
        let msg = String::from_utf8_lossy(msg);
        assert!(msg.contains("'r0'") && msg.contains("'r1'"), "{msg}");

        // Unsupported options, malformed INFO, LIST with data.
        for opt in [OPT_STRUCTURED_REPLY, OPT_STARTTLS, 9, 10, 11, 0xdead] {
            send_opt(&mut s, opt, &[]);
            assert_eq!(read_rep(&mut s), (opt, REP_ERR_UNSUP, read_rep_msg(opt)));
        }
        send_opt(&mut s, OPT_INFO, &[0, 0, 0, 9, b'r']);
        assert_eq!(read_rep(&mut s).1, REP_ERR_INVALID);
        send_opt(&mut s, OPT_LIST, b"x");
        assert_eq!(read_rep(&mut s).1, REP_ERR_INVALID);
        // Oversize option data is drained and refused.
        send_opt(&mut s, 0x77, &vec![0u8; MAX_OPTION_LEN as usize + 1]);
        assert_eq!(read_rep(&mut s).1, REP_ERR_TOO_BIG);

        // Secondary.
        b.writable.store(false, Ordering::SeqCst);
        let reps = go(&mut s, "r0");
        let (ty, msg) = reps.last().unwrap();
        assert_eq!(*ty, REP_ERR_POLICY);
        assert_eq!(
            String::from_utf8_lossy(msg),
            "resource r0 is Secondary on this node; only the Primary serves I/O"
        );

        // Primary again: the same connection can still go.
        b.writable.store(true, Ordering::SeqCst);
        assert_eq!(go(&mut s, "").last().unwrap().0, REP_ACK);
        write_read_ok(&mut s);

        // ABORT gets an ACK and a close.
        let mut s = connect(&h);
        greet(&mut s, FLAG_C_FIXED_NEWSTYLE);
        send_opt(&mut s, OPT_ABORT, &[]);
        assert_eq!(read_rep(&mut s).1, REP_ACK);
        assert_closed(&mut s);
        h.shutdown();
        h.join();
    }

    fn read_rep_msg(opt: u32) -> Vec<u8> {
        match opt {
            OPT_STRUCTURED_REPLY => b"only simple replies are supported".to_vec(),
            OPT_STARTTLS => b"TLS is not supported".to_vec(),
            _ => format!("option {opt} is not supported").into_bytes(),
        }
    }

    #[test]
    fn malformed_handshakes_close_only_that_client() {
        let h = start(TestBackend::new(SIZE));
        let mut good = open(&h);

        // Unknown client flags.
        let mut s = connect(&h);
        greet(&mut s, 0x80);
        assert_closed(&mut s);

        // Bad option magic.
        let mut s = connect(&h);
        greet(&mut s, FLAG_C_FIXED_NEWSTYLE);
        s.write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0").unwrap();
        assert_closed(&mut s);

        // Garbage right away, then hang up mid-header.
        let mut s = connect(&h);
        let _: [u8; 18] = read_array(&mut s).unwrap();
        s.write_all(&[0xff; 7]).unwrap();
        drop(s);

        // Non-fixed-newstyle client sending GO (may not get error replies).
        let mut s = connect(&h);
        greet(&mut s, 0);
        send_opt(&mut s, OPT_GO, &go_data("r0", &[]));
        assert_closed(&mut s);

        write_read_ok(&mut good);
        h.shutdown();
        h.join();
    }

    #[test]
    fn bad_requests_get_errors_not_crashes() {
        let b = TestBackend::new(SIZE);
        let h = start(b.clone());
        let mut s = open(&h);
        let size = SIZE as u64;

        // Unknown commands (CACHE, BLOCK_STATUS, 42).
        for (i, cmd) in [5u16, 7, 42].into_iter().enumerate() {
            send_req(&mut s, 0, cmd, i as u64, 0, 4096);
            assert_eq!(read_reply(&mut s), (NBD_EINVAL, i as u64));
        }
        // Out of range, unaligned, overflowing offset+len, too long reads.
        let cases: [(u16, u64, u32); 7] = [
            (CMD_READ, size, 512),
            (CMD_READ, size - 512, 1024),
            (CMD_READ, 100, 512),
            (CMD_READ, 0, 100),
            (CMD_READ, u64::MAX - 511, 1024),
            (CMD_READ, 0, MAX_PAYLOAD + 512),
            (CMD_TRIM, size - 512, 1024),
        ];
        for (i, (cmd, off, len)) in cases.into_iter().enumerate() {
            send_req(&mut s, 0, cmd, 100 + i as u64, off, len);
            assert_eq!(
                read_reply(&mut s),
                (NBD_EINVAL, 100 + i as u64),
                "{cmd} {off} {len}"
            );
        }
        // Unknown flags (DF on read: not negotiated), NO_HOLE on TRIM,
        // flush with a length.
        send_req(&mut s, 1 << 2, CMD_READ, 200, 0, 512);
        assert_eq!(read_reply(&mut s), (NBD_EINVAL, 200));
        send_req(&mut s, CMD_FLAG_NO_HOLE, CMD_TRIM, 201, 0, 512);
        assert_eq!(read_reply(&mut s), (NBD_EINVAL, 201));
        send_req(&mut s, 0, CMD_FLUSH, 202, 0, 512);
        assert_eq!(read_reply(&mut s), (NBD_EINVAL, 202));
        // An out-of-range write: payload consumed, EINVAL, stream in sync.
        send_req(&mut s, 0, CMD_WRITE, 203, size, 4096);
        s.write_all(&[1u8; 4096]).unwrap();
        assert_eq!(read_reply(&mut s), (NBD_EINVAL, 203));
        // Oversize write (2 MiB): drained, EINVAL, stream in sync.
        send_req(&mut s, 0, CMD_WRITE, 204, 0, 2 << 20);
        s.write_all(&vec![1u8; 2 << 20]).unwrap();
        assert_eq!(read_reply(&mut s), (NBD_EINVAL, 204));
        // Zero-length requests succeed without touching the backend.
        send_req(&mut s, 0, CMD_READ, 205, 0, 0);
        assert_eq!(read_reply(&mut s), (0, 205));
        write_read_ok(&mut s);
        assert!(b.data.lock().unwrap().iter().all(|&x| x == 0 || x == 0x5a));
        h.shutdown();
        h.join();
    }

    /// A backend that fails every request with a fixed errno.
    struct FailingBackend(i32);
    impl BlockBackend for FailingBackend {
        fn size_bytes(&self) -> u64 {
            SIZE as u64
        }
        fn writable(&self) -> bool {
            true
        }
        fn submit(&self, _req: IoRequest, reply: Reply) {
            reply(Err(self.0));
        }
    }

    #[test]
    fn backend_errors_are_mapped() {
        use nix::libc;
        for (errno, nbd) in [
            (libc::EROFS, NBD_EPERM),
            (libc::EIO, NBD_EIO),
            (libc::ENOSPC, NBD_ENOSPC),
            (libc::EBUSY, NBD_EIO),
        ] {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let h = NbdServer::bind(addr, "r0".into(), Arc::new(FailingBackend(errno)))
                .unwrap()
                .spawn();
            let mut s = open(&h);
            send_req(&mut s, 0, CMD_READ, 1, 0, 4096);
            assert_eq!(read_reply(&mut s), (nbd, 1));
            send_req(&mut s, 0, CMD_WRITE, 2, 0, 512);
            s.write_all(&[0u8; 512]).unwrap();
            assert_eq!(read_reply(&mut s), (nbd, 2));
            send_req(&mut s, 0, CMD_TRIM, 3, 0, 3 << 20);
            assert_eq!(read_reply(&mut s), (nbd, 3));
            h.shutdown();
            h.join();
        }
    }

    #[test]
    fn fatal_requests_close_only_that_client() {
        let h = start(TestBackend::new(SIZE));
        let mut good = open(&h);

        // Bad request magic.
        let mut s = open(&h);
        s.write_all(&[0xee; REQUEST_HEADER_LEN]).unwrap();
        assert_closed(&mut s);

        // A write too long to drain (64 MiB).
        let mut s = open(&h);
        send_req(&mut s, 0, CMD_WRITE, 1, 0, 64 << 20);
        assert_closed(&mut s);

        // Hang up in the middle of a write payload.
        let mut s = open(&h);
        send_req(&mut s, 0, CMD_WRITE, 1, 0, 1 << 20);
        s.write_all(&[1u8; 1000]).unwrap();
        drop(s);

        write_read_ok(&mut good);
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.clients() != 1 {
            assert!(Instant::now() < deadline, "clients: {}", h.clients());
            thread::sleep(Duration::from_millis(10));
        }
        h.shutdown();
        h.join();
    }

    #[test]
    fn long_trim_and_zeroes_are_split() {
        let b = TestBackend::new(SIZE);
        b.data.lock().unwrap().fill(0xff);
        let h = start(b.clone());
        let mut s = open(&h);
        send_req(&mut s, CMD_FLAG_FUA, CMD_TRIM, 1, 512, (3 << 20) + 1024);
        assert_eq!(read_reply(&mut s), (0, 1));
        send_req(
            &mut s,
            CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            CMD_WRITE_ZEROES,
            2,
            4 << 20,
            SIZE as u32 - (4 << 20),
        );
        assert_eq!(read_reply(&mut s), (0, 2));
        let sub = b.submitted.lock().unwrap().clone();
        assert_eq!(
            sub,
            vec![
                IoRequest::Trim {
                    offset: 512,
                    len: 1 << 20
                },
                IoRequest::Trim {
                    offset: 512 + (1 << 20),
                    len: 1 << 20
                },
                IoRequest::Trim {
                    offset: 512 + (2 << 20),
                    len: 1 << 20
                },
                IoRequest::Trim {
                    offset: 512 + (3 << 20),
                    len: 1024
                },
                IoRequest::WriteZeroes {
                    offset: 4 << 20,
                    len: 1 << 20,
                    fua: true
                },
                IoRequest::WriteZeroes {
                    offset: 5 << 20,
                    len: 1 << 20,
                    fua: true
                },
                IoRequest::WriteZeroes {
                    offset: 6 << 20,
                    len: 1 << 20,
                    fua: true
                },
                IoRequest::WriteZeroes {
                    offset: 7 << 20,
                    len: 1 << 20,
                    fua: true
                },
            ]
        );
        let d = b.data.lock().unwrap();
        assert_eq!(d[..512], [0xff; 512]);
        assert!(d[512..(3 << 20) + 1536].iter().all(|&x| x == 0));
        assert!(d[(3 << 20) + 1536..4 << 20].iter().all(|&x| x == 0xff));
        assert!(d[4 << 20..].iter().all(|&x| x == 0));
        drop(d);
        h.shutdown();
        h.join();
    }

    #[test]
    fn in_flight_is_capped_and_replies_match_handles() {
        let b = TestBackend::new(SIZE);
        b.hold.store(true, Ordering::SeqCst);
        let h = start(b.clone());
        let mut s = open(&h);
        let n = MAX_IN_FLIGHT as u64 + 50;
        // Distinct content per block so mismatched handles would show.
        {
            let mut d = b.data.lock().unwrap();
            for i in 0..n as usize {
                d[i * 4096..(i + 1) * 4096].fill(i as u8);
            }
        }
        let mut w = s.try_clone().unwrap();
        let sender = thread::spawn(move || {
            for i in 0..n {
                send_req(&mut w, 0, CMD_READ, 1000 + i, i * 4096, 4096);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.held.lock().unwrap().len() < MAX_IN_FLIGHT {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(100));
        assert_eq!(b.held.lock().unwrap().len(), MAX_IN_FLIGHT, "cap exceeded");
        let mut seen = std::collections::HashSet::new();
        let mut released = 0;
        while seen.len() < n as usize {
            while released == seen.len() {
                released += b.release();
                assert!(Instant::now() < deadline + Duration::from_secs(5));
                thread::yield_now();
            }
            let (err, handle) = read_reply(&mut s);
            assert_eq!(err, 0);
            let i = handle - 1000;
            let mut data = vec![0u8; 4096];
            s.read_exact(&mut data).unwrap();
            assert!(
                data.iter().all(|&x| x == i as u8),
                "data for handle {handle}"
            );
            assert!(seen.insert(handle));
        }
        sender.join().unwrap();
        h.shutdown();
        h.join();
    }

    #[test]
    fn shutdown_closes_clients_and_stops_accepting() {
        let b = TestBackend::new(SIZE);
        let h = start(b.clone());
        let mut a = open(&h);
        let mut negotiating = connect(&h);
        let _: [u8; 18] = read_array(&mut negotiating).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.clients() != 2 {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(5));
        }
        // A request stuck in the backend does not keep shutdown waiting.
        b.hold.store(true, Ordering::SeqCst);
        send_req(&mut a, 0, CMD_FLUSH, 1, 0, 0);
        let addr = h.local_addr();
        h.shutdown();
        assert_closed(&mut a);
        assert_closed(&mut negotiating);
        h.join();
        // Nothing accepts any more (connect may succeed on a lingering
        // backlog on some systems, but no greeting ever comes).
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut g = [0u8; 18];
            assert!(s.read_exact(&mut g).is_err());
        }
        b.release();
    }
}
