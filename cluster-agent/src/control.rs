//! The agent's control socket, `<run-dir>/<resource>.<node>.agent.sock`: one
//! JSON request line, one JSON answer line, like repd's.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

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

/// Create the socket (refusing if another agent answers on it) and serve it
/// on a thread; requests go to `to_main`.
///
/// # Errors
/// A message saying what is wrong.
pub fn serve(path: &Path, to_main: Sender<Incoming>) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the run directory {}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another cluster-agent already serves {} (it answers); stop it first",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
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
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    Ok(())
}

fn client(conn: UnixStream, to_main: &Sender<Incoming>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut wr) = conn.try_clone() else { return };
    let mut rd = BufReader::new(conn);
    let mut line = String::new();
    while rd
        .by_ref()
        .take(64 * 1024)
        .read_line(&mut line)
        .unwrap_or(0)
        > 0
    {
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => {
                let (tx, rx) = std::sync::mpsc::channel();
                if to_main.send(Incoming { request, reply: tx }).is_err() {
                    return;
                }
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
        let text = serde_json::to_string(&reply).unwrap_or_default();
        if writeln!(wr, "{text}").is_err() {
            return;
        }
        line.clear();
    }
}

/// Send one request to a running agent.
///
/// # Errors
/// A message saying whether no agent runs or it answered badly.
pub fn request(path: &Path, req: &Request) -> Result<Reply, String> {
    let conn = UnixStream::connect(path).map_err(|e| {
        format!(
            "no cluster-agent is running for this resource and node (no answer on {}: {e}); \
             start it with `cluster-agent --config FILE --node NAME`",
            path.display()
        )
    })?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
    let mut wr = conn.try_clone().map_err(|e| e.to_string())?;
    let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    writeln!(wr, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if answer.is_empty() {
        return Err(format!(
            "{}: the connection closed without an answer",
            path.display()
        ));
    }
    serde_json::from_str(&answer).map_err(|e| format!("{}: {e}: {answer}", path.display()))
}
