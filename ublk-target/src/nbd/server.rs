//! The NBD server: accept loop and one thread per client, which
//! negotiates ([`negotiate`](mod@negotiate)) and then serves requests ([`transmission`](mod@transmission):
//! its reader, plus one writer thread per client).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, info_span, warn};

pub mod fuzzing;
mod negotiate;
mod tls_stream;
pub use tls_stream::TlsKeys;
mod transmission;

use negotiate::{greet, haggle, Outcome, TlsState};
use transmission::transmission;

use crate::frontend::BlockBackend;
use rep_control::config::NbdAccess;

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
    access: NbdAccess,
    tls: Option<NbdTls>,
}

/// TLS on the export (`nbd-tls`): the server configuration (certificate,
/// key, the CA client certificates must chain to) and whether clients
/// must use it.
#[derive(Clone)]
pub struct NbdTls {
    pub keys: TlsKeys,
    /// `nbd-tls = "require"`: no export without STARTTLS.
    pub require: bool,
}

impl fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdTls")
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
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
            access: NbdAccess::default(),
            tls: None,
        })
    }

    /// Offer (or with `require`, insist on) TLS through NBD_OPT_STARTTLS.
    #[must_use]
    pub fn with_tls(mut self, tls: NbdTls) -> NbdServer {
        self.tls = Some(tls);
        self
    }

    /// Let in only the clients `access` allows (default: every address).
    #[must_use]
    pub fn with_access(mut self, access: NbdAccess) -> NbdServer {
        self.access = access;
        self
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
            access: self.access,
            tls: self.tls,
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
    access: NbdAccess,
    tls: Option<NbdTls>,
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
        if !shared.access.allows(peer.ip()) {
            // Closed before any NBD byte: the client learns nothing, not
            // even that an NBD server listens here.
            warn!(%peer, "NBD client refused: its address is not in nbd-allow");
            drop(stream);
            continue;
        }
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
    let client = greet(&mut reader, &mut writer)?;
    let mut tls = TlsState {
        offered: shared.tls.is_some(),
        required: shared.tls.as_ref().is_some_and(|t| t.require),
        active: false,
    };
    let export = &shared.export;
    let size = match haggle(export, &client, tls, &mut reader, &mut writer)? {
        Outcome::Aborted => return Ok(()),
        Outcome::Transmit(size) => size,
        Outcome::StartTls => {
            // Bytes the client sent after STARTTLS but before the
            // handshake would be read as if they came over TLS: a
            // plaintext injection (nbdkit's CVE-2021-3716). The client
            // must wait for our ACK, so there are none unless it cheats.
            if !reader.buffer().is_empty() {
                return Err(Close::Protocol(
                    "data after NBD_OPT_STARTTLS before the TLS handshake".to_owned(),
                ));
            }
            let keys = shared.tls.as_ref().map(|t| &t.keys);
            let keys = keys.ok_or(Close::Normal("TLS is not configured"))?;
            let (r, mut w) =
                tls_stream::accept(&stream, keys, NEGOTIATION_TIMEOUT).map_err(Close::Protocol)?;
            debug!("TLS session established");
            tls.active = true;
            let mut r = BufReader::with_capacity(128 << 10, r);
            return match haggle(export, &client, tls, &mut r, &mut w)? {
                Outcome::Transmit(size) => {
                    stream.set_read_timeout(None)?;
                    info!(size, "client entered transmission phase over TLS");
                    let stream = Arc::new(stream);
                    transmission(shared, Box::new(r), Box::new(w), stream, size, span)
                }
                // STARTTLS inside TLS is refused by haggle.
                Outcome::Aborted | Outcome::StartTls => Ok(()),
            };
        }
    };
    stream.set_read_timeout(None)?;
    info!(size, "client entered transmission phase");
    transmission(
        shared,
        Box::new(reader),
        Box::new(writer),
        Arc::new(stream),
        size,
        span,
    )
}

#[cfg(test)]
mod tests;
