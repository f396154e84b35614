//! The agent's control socket, `<run-dir>/<resource>.<node>.agent.sock`: one
//! JSON request line, one JSON answer line, like repd's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

use rep_control::socket::{bind_private, serve_json_lines, BindError};
use serde::{Deserialize, Serialize};

/// The socket path of the agent of one resource on one node.
#[must_use]
pub fn socket_path(run_dir: &Path, resource: &str, node: &str) -> PathBuf {
    run_dir.join(format!("{resource}.{node}.agent.sock"))
}

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Hand the resources to the peer (planned switchover); only the holder
    /// accepts it.
    Switchover,
    /// Forget the monitor fail counts of `resource` (index in the chain
    /// after the device; all when absent) and this node's ban
    /// (`crm_resource --cleanup`).
    Cleanup {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<usize>,
    },
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// A request handed to the agent's main loop, with where to answer.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request,
    pub reply: Sender<Reply>,
}

/// Why the control socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The run directory could not be created.
    #[error("cannot create the run directory {}: {source}", dir.display())]
    RunDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process answers on the socket: an agent (or witness) of the
    /// same resource and node runs already.
    #[error("another cluster-agent already serves {} (it answers); stop it first", path.display())]
    AlreadyServed { path: PathBuf },
    /// The socket could not be bound.
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The accepting thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why a request to a running agent (or witness) got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nothing answers on the socket: no agent runs for this resource and
    /// node (or not with this run directory).
    #[error(
        "no cluster-agent is running for this resource and node (no answer on {}: {source}); \
         start it with `cluster-agent --config FILE --node NAME`",
        path.display()
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection could not be used.
    #[error("{0}")]
    Socket(#[source] std::io::Error),
    /// The request could not be encoded.
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    /// Sending the request or reading the answer failed.
    #[error("{}: {source}", path.display())]
    Exchange {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent closed the connection without answering.
    #[error("{}: the connection closed without an answer", path.display())]
    Closed { path: PathBuf },
    /// The answer is not a [`Reply`].
    #[error("{}: {source}: {answer}", path.display())]
    BadAnswer {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
        answer: String,
    },
}

/// Create the socket (refusing if another agent answers on it) and serve it
/// on a thread; requests go to `to_main`.
///
/// # Errors
/// [`ServeError`] saying what is wrong.
pub fn serve(path: &Path, to_main: Sender<Incoming>) -> Result<(), ServeError> {
    let listener = bind_private(path).map_err(|e| match e {
        BindError::RunDir { dir, source } => ServeError::RunDir { dir, source },
        BindError::Answers { path } => ServeError::AlreadyServed { path },
        BindError::Listen { path, source } => ServeError::Listen { path, source },
    })?;
    std::thread::Builder::new()
        .name("agent-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let tx = to_main.clone();
                let _ = std::thread::Builder::new()
                    .name("agent-control-client".into())
                    .spawn(move || client(conn, &tx));
            }
        })
        .map_err(ServeError::Thread)?;
    Ok(())
}

fn client(conn: UnixStream, to_main: &Sender<Incoming>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    serve_json_lines::<Request>(conn, |request| {
        let reply = match request {
            Ok(request) => {
                let (tx, rx) = std::sync::mpsc::channel();
                // The agent is stopping: hang up.
                to_main.send(Incoming { request, reply: tx }).ok()?;
                rx.recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| Reply {
                        ok: false,
                        error: Some("the agent did not answer".into()),
                        status: None,
                    })
            }
            Err(e) => Reply {
                ok: false,
                error: Some(format!("bad request: {e}")),
                status: None,
            },
        };
        Some(serde_json::to_string(&reply).unwrap_or_default())
    });
}

/// Send one request to a running agent.
///
/// # Errors
/// [`RequestError`]: whether no agent runs ([`RequestError::NotRunning`])
/// or it answered badly.
pub fn request(path: &Path, req: &Request) -> Result<Reply, RequestError> {
    let conn = UnixStream::connect(path).map_err(|source| RequestError::NotRunning {
        path: path.to_owned(),
        source,
    })?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
    let exchange = |source| RequestError::Exchange {
        path: path.to_owned(),
        source,
    };
    let mut wr = conn.try_clone().map_err(RequestError::Socket)?;
    let line = serde_json::to_string(req).map_err(RequestError::Encode)?;
    writeln!(wr, "{line}").map_err(exchange)?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .map_err(exchange)?;
    if answer.is_empty() {
        return Err(RequestError::Closed {
            path: path.to_owned(),
        });
    }
    serde_json::from_str(&answer).map_err(|source| RequestError::BadAnswer {
        path: path.to_owned(),
        source,
        answer,
    })
}
