//! The witness process: a UDP socket and a status socket around the
//! [`WitnessCore`], and the state file that keeps its memory across restarts.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use replication_proto::time::Millis;

use super::codec::{decode_request, encode_reply, Packet, MAX_PACKET};
use super::core::{Action, Input, Memory, NodeView, WitnessCore};
use crate::control::{Incoming, ServeError};
use crate::vocab::Incarnation;
use rep_control::config::ConfigError;

/// Why the witness could not start or keep its memory.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The resource file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Neither `--listen` nor the configuration's `witness` says where to listen.
    #[error("{}: [cluster] has no `witness = \"IP:PORT\"` (and no --listen given)", config.display())]
    NoListenAddress { config: PathBuf },
    /// The status socket could not be served.
    #[error(transparent)]
    Control(#[from] ServeError),
    /// The UDP address is not local or in use.
    #[error("cannot bind the witness socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but cannot be read.
    #[error("cannot read the witness state file {path}: {source}")]
    ReadState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state file is not what the witness wrote.
    #[error("the witness state file {path} is damaged ({message}); move it away to start with an empty memory (every node is then trusted again)")]
    BadState { path: PathBuf, message: String },
    /// The memory could not be persisted: the witness stops rather than
    /// answer with a promise it may forget.
    #[error("cannot write the witness state file {path}: {source}")]
    WriteState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Read the state file (missing: an empty memory).
///
/// # Errors
/// A damaged or unreadable file.
pub fn load_memory(path: &Path) -> Result<Memory, WitnessError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| WitnessError::BadState {
            path: path.to_owned(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Memory::default()),
        Err(source) => Err(WitnessError::ReadState {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Write the state file durably: a temporary file, fsync, rename, fsync of
/// the directory — a crash leaves the old or the new memory, never half.
///
/// # Errors
/// The write, sync or rename failed.
pub fn save_memory(path: &Path, m: &Memory) -> Result<(), WitnessError> {
    use std::io::Write;
    let err = |source| WitnessError::WriteState {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(m).unwrap_or_default();
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How the witness process is started.
#[derive(Debug, Clone)]
pub struct WitnessOptions {
    pub config: PathBuf,
    /// Where the status socket goes ([`socket_path`]).
    pub run_dir: PathBuf,
    /// Listen here instead of the configured `witness` address.
    pub listen: Option<SocketAddr>,
    pub state_file: Option<PathBuf>,
}

/// The status socket of a resource's witness: `<run-dir>/<resource>.witness.sock`
/// (one JSON request line, one JSON answer line, as the agents' sockets).
#[must_use]
pub fn socket_path(run_dir: &Path, resource: &str) -> PathBuf {
    run_dir.join(format!("{resource}.witness.sock"))
}

/// The default state file of a resource's witness.
#[must_use]
pub fn default_state_file(resource: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/rep/{resource}.witness.json"))
}

/// Run the witness in the foreground until killed.
///
/// # Errors
/// Why it could not start, or could not persist its memory (it stops then:
/// a witness that forgets what it promised must not answer).
pub fn run(opts: &WitnessOptions) -> Result<(), WitnessError> {
    let mut w = Witness::start(opts)?;
    let span = tracing::info_span!("witness", resource = %w.cfg.resource);
    let _g = span.enter();
    w.log_start();
    let mut buf = vec![0u8; MAX_PACKET];
    // Short, so that a status request waits at most this long when no
    // heartbeat request comes in.
    let _ = w.sock.set_read_timeout(Some(Duration::from_millis(100)));
    loop {
        w.answer_status_requests();
        let Some((n, from)) = w.receive(&mut buf) else {
            continue;
        };
        w.on_datagram(buf.get(..n).unwrap_or_default(), from)?;
    }
}

/// The running witness process.
struct Witness {
    cfg: crate::config::WitnessConfig,
    listen: SocketAddr,
    state_file: PathBuf,
    sock: UdpSocket,
    requests: Receiver<Incoming>,
    core: WitnessCore,
    clock: Instant,
    deadtime_ms: u64,
    /// Each node's last vote asked: granted, and why not.
    last_votes: BTreeMap<String, (bool, String)>,
    /// Datagrams and requests dropped.
    dropped: u64,
}

impl Witness {
    /// Read the configuration and the memory, bind the sockets.
    fn start(opts: &WitnessOptions) -> Result<Self, WitnessError> {
        let cfg = crate::config::WitnessConfig::load(&opts.config)?;
        let listen = opts
            .listen
            .or(cfg.witness)
            .ok_or_else(|| WitnessError::NoListenAddress {
                config: opts.config.clone(),
            })?;
        let state_file = opts
            .state_file
            .clone()
            .unwrap_or_else(|| default_state_file(&cfg.resource));
        let memory = load_memory(&state_file)?;
        let sock = UdpSocket::bind(listen).map_err(|source| WitnessError::Bind {
            addr: listen,
            source,
        })?;
        let control_path = socket_path(&opts.run_dir, &cfg.resource);
        let (to_main, requests) = std::sync::mpsc::channel();
        crate::control::serve(&control_path, to_main)?;
        let clock = Instant::now();
        let incarnation = Incarnation(rand::random());
        let deadtime_ms = u64::try_from(cfg.deadtime.as_millis()).unwrap_or(u64::MAX);
        let core = WitnessCore::new(
            cfg.nodes.clone(),
            deadtime_ms,
            memory,
            incarnation,
            Millis::ZERO,
        );
        Ok(Self {
            cfg,
            listen,
            state_file,
            sock,
            requests,
            core,
            clock,
            deadtime_ms,
            last_votes: BTreeMap::new(),
            dropped: 0,
        })
    }

    fn log_start(&self) {
        for n in self.core.view(self.now()) {
            if let Some(why) = &n.outdated {
                tracing::info!(node = %n.name, "remembered Outdated: {why}");
            }
        }
        tracing::info!(listen = %self.listen, state = %self.state_file.display(), nodes = ?self.cfg.nodes, "witness running");
        println!(
            "cluster-agent witness: resource {} on {}, state {}",
            self.cfg.resource,
            self.listen,
            self.state_file.display()
        );
    }

    /// The witness's clock: milliseconds since it started.
    fn now(&self) -> Millis {
        Millis(u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Answer what came in on the status socket.
    fn answer_status_requests(&self) {
        while let Ok(inc) = self.requests.try_recv() {
            let reply = match inc.request {
                crate::control::Request::Status => crate::control::Reply {
                    ok: true,
                    error: None,
                    status: Some(witness_status(&WitnessStatus {
                        resource: &self.cfg.resource,
                        listen: self.listen,
                        state_file: &self.state_file,
                        uptime_ms: self.now().as_ms(),
                        deadtime_ms: self.deadtime_ms,
                        nodes: self.core.view(self.now()),
                        last_votes: &self.last_votes,
                        dropped: self.dropped,
                        replays: self.core.replays,
                    })),
                },
                crate::control::Request::Switchover | crate::control::Request::Cleanup { .. } => {
                    crate::control::Reply {
                        ok: false,
                        error: Some(
                            "this is the witness: it holds no resources; ask the holder's agent"
                                .into(),
                        ),
                        status: None,
                    }
                }
            };
            let _ = inc.reply.send(reply);
        }
    }

    /// One datagram, or `None` after the read timeout or an error.
    fn receive(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        match self.sock.recv_from(buf) {
            Ok(x) => Some(x),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(e) => {
                tracing::trace!("witness receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
                None
            }
        }
    }

    /// Decode a datagram, hand it to the core and do what the core says.
    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) -> Result<(), WitnessError> {
        let p = match decode_request(&self.cfg.auth_key, data) {
            Ok(p) if p.resource == self.cfg.resource => p,
            Ok(p) => {
                self.dropped += 1;
                if self.log_drop() {
                    tracing::warn!(%from, "dropped a request of resource {}", p.resource);
                }
                return Ok(());
            }
            Err(e) => {
                self.dropped += 1;
                if self.log_drop() {
                    tracing::warn!(%from, dropped = self.dropped, "dropped a packet: {e}");
                }
                return Ok(());
            }
        };
        let want_vote = p.body.want_vote;
        let Packet { node, body, .. } = p;
        self.core
            .handle(self.now(), Input::Request { node, req: body });
        while let Some(a) = self.core.poll_action() {
            self.act(a, want_vote, from)?;
        }
        Ok(())
    }

    /// Whether to log the latest drop (the first ten, then every power of two).
    fn log_drop(&self) -> bool {
        self.dropped <= 10 || self.dropped.is_power_of_two()
    }

    fn act(&mut self, a: Action, want_vote: bool, from: SocketAddr) -> Result<(), WitnessError> {
        match a {
            Action::Persist(memory) => {
                // Persisted before the answer leaves: a vote the witness gave
                // survives its crash.
                save_memory(&self.state_file, &memory)?;
                for v in self.core.view(self.now()) {
                    tracing::info!(node = %v.name, gen = %v.current_gen, outdated = ?v.outdated, "witness memory updated");
                }
            }
            Action::Reply { node, reply } => {
                if want_vote {
                    self.note_vote(&node, reply.vote, &reply.reason);
                }
                let out = encode_reply(&self.cfg.auth_key, &self.cfg.resource, &node, &reply);
                if let Err(e) = self.sock.send_to(&out, from) {
                    tracing::debug!(%from, "reply not sent: {e}");
                }
            }
            Action::Dropped { node, why } => {
                self.dropped += 1;
                if self.log_drop() {
                    tracing::warn!(%from, node = %node, "dropped a request: {why}");
                }
            }
        }
        Ok(())
    }

    /// Log a vote that changed since the node last asked, and keep it for status.
    fn note_vote(&mut self, node: &str, vote: bool, reason: &str) {
        if self.last_votes.get(node).map(|v| v.0) != Some(vote) {
            if vote {
                tracing::warn!(node = %node, "vote granted: its peer has been silent to the witness for deadtime");
            } else {
                tracing::info!(node = %node, "vote refused: {reason}");
            }
        }
        self.last_votes
            .insert(node.to_string(), (vote, reason.to_string()));
    }
}

/// What `cluster-agent --witness status` shows.
struct WitnessStatus<'a> {
    resource: &'a str,
    listen: SocketAddr,
    state_file: &'a Path,
    uptime_ms: u64,
    deadtime_ms: u64,
    nodes: Vec<NodeView>,
    last_votes: &'a BTreeMap<String, (bool, String)>,
    dropped: u64,
    replays: u64,
}

fn witness_status(w: &WitnessStatus<'_>) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = w
        .nodes
        .iter()
        .map(|n| {
            let mut v = serde_json::to_value(n).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "last_vote".into(),
                    w.last_votes
                        .get(&n.name)
                        .map_or(serde_json::Value::Null, |(granted, reason)| {
                            serde_json::json!({ "granted": granted, "reason": reason })
                        }),
                );
            }
            v
        })
        .collect();
    serde_json::json!({
        "role": "witness",
        "resource": w.resource,
        "listen": w.listen.to_string(),
        "state_file": w.state_file.display().to_string(),
        "uptime_ms": w.uptime_ms,
        "unix_ms": wall_ms(),
        "deadtime_ms": w.deadtime_ms,
        "nodes": nodes,
        "dropped_packets": w.dropped,
        "replays": w.replays,
    })
}

/// The wall clock in ms since the epoch (for incarnation ordering).
#[must_use]
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
