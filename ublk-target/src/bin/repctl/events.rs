//! `repctl events`: the event stream of repd (like `drbdsetup events2`),
//! printed as the lines arrive: a merge of the streams of the resources
//! selected (`repctl events r1`, `all`, or every one when none is named,
//! like `drbdsetup events2 all`), one reader thread per control socket
//! feeding one printer.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;

use rep_control::client::ControlError;
use rep_control::events::{Event, EventKind};
use rep_control::protocol::{ControlCmd, ControlReply};
use rep_control::resources::Unnamed;

use super::targets::targets;
use super::{Cli, EventsArgs, Failure};

/// The longest event line read: lines are short, so a longer one means
/// the other end is not a repd.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// One stream to watch.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub(super) resource: String,
    pub(super) socket: PathBuf,
}

/// How a stream ended.
#[derive(Debug)]
enum End {
    /// repd stopped in order (its last line was `destroy resource`).
    Stopped,
    /// The watcher fell behind and lost events (`call lost-events`).
    Lost,
    /// The connection closed without either: repd died, or a bad line.
    Broken(String),
}

/// What a reader thread tells the printer.
enum Msg {
    Line(Event, String),
    Ended(String, End),
}

/// `repctl events [RESOURCE|all]` for this node: every resource unless
/// one is named.
pub(super) fn run(cli: &Cli, a: &EventsArgs) -> Result<(), Failure> {
    let sources = targets(cli, a.sel.resource.as_deref(), Unnamed::All)?
        .iter()
        .map(|t| {
            Ok(Source {
                resource: t.file.name.clone(),
                socket: t.socket()?,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    merge(&sources, a, &mut std::io::stdout().lock())
}

/// Watches every source at once and prints their lines to `out` in the
/// order they arrive; with `--now`, every source's state first, then one
/// `exists -`, then the changes. Ends when every stream ended: Ok if repd
/// stopped in order (or `out` was closed), else an error that says why.
pub(super) fn merge(
    sources: &[Source],
    a: &EventsArgs,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let (tx, rx) = mpsc::channel();
    for s in sources {
        let conn = subscribe(s, a.now)?;
        let (tx, resource) = (tx.clone(), s.resource.clone());
        std::thread::Builder::new()
            .name(format!("events-{resource}"))
            .spawn(move || read_stream(conn, &resource, &tx))
            .map_err(|e| Failure(format!("cannot start a thread: {e}")))?;
    }
    drop(tx);
    let mut states_left = if a.now { sources.len() } else { 0 };
    // Changes of a source whose state is out, while others' is not yet.
    let mut held = Vec::new();
    let mut failures = Vec::new();
    let show = |e: &Event, raw: String| if a.json { raw } else { e.text(a.timestamps) };
    for msg in rx {
        let lines = match msg {
            Msg::Line(e, raw) if e.is_end_of_state() => {
                states_left = states_left.saturating_sub(1);
                if states_left > 0 {
                    continue;
                }
                let mut lines = vec![show(&e, raw)];
                lines.append(&mut held);
                lines
            }
            Msg::Line(e, raw) if states_left > 0 && e.kind != EventKind::Exists => {
                held.push(show(&e, raw));
                continue;
            }
            Msg::Line(e, raw) => vec![show(&e, raw)],
            Msg::Ended(resource, end) => {
                match end {
                    End::Stopped => {}
                    End::Lost => failures.push(format!(
                        "{resource}: this watcher fell behind and lost events; run \
                         `repctl events --now` again for the current state"
                    )),
                    End::Broken(why) => failures.push(format!("{resource}: {why}")),
                }
                continue;
            }
        };
        for text in lines {
            // A closed stdout (`| head`) ends the watch quietly.
            if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    // A stream that ended before its state was complete.
    for text in held {
        if writeln!(out, "{text}").is_err() {
            return Ok(());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure(failures.join("\n")))
    }
}

/// Connects to `s` and asks for its stream; the connection is then the
/// stream.
fn subscribe(s: &Source, now: bool) -> Result<BufReader<UnixStream>, Failure> {
    let path = &s.socket;
    let conn = UnixStream::connect(path).map_err(|source| {
        let e = if source.kind() == std::io::ErrorKind::PermissionDenied {
            ControlError::Denied { path: path.clone() }
        } else {
            ControlError::NotRunning {
                path: path.clone(),
                source,
            }
        };
        Failure(format!("{}: {e}", s.resource))
    })?;
    let bad = |what: String| Failure(format!("{}: {what}", s.resource));
    let line =
        serde_json::to_string(&ControlCmd::Events { now }).map_err(|e| bad(e.to_string()))?;
    writeln!(&conn, "{line}").map_err(|e| bad(e.to_string()))?;
    let mut rd = BufReader::new(conn);
    let mut answer = String::new();
    rd.by_ref()
        .take(MAX_LINE_BYTES)
        .read_line(&mut answer)
        .map_err(|e| bad(e.to_string()))?;
    let reply: ControlReply = serde_json::from_str(&answer)
        .map_err(|e| bad(format!("repd did not answer properly: {e}: {answer:?}")))?;
    if !reply.ok {
        let why = reply.error.unwrap_or_default();
        return Err(bad(if why.contains("unknown variant `events`") {
            "this repd has no event stream (too old); restart it from this version".into()
        } else {
            why
        }));
    }
    Ok(rd)
}

/// One stream's lines to the printer, then how it ended.
fn read_stream(mut rd: BufReader<UnixStream>, resource: &str, tx: &mpsc::Sender<Msg>) {
    let mut end = End::Broken(
        "the connection to repd closed (did it die? see its log); run `repctl events --now` \
         again once it runs"
            .into(),
    );
    let mut line = String::new();
    loop {
        line.clear();
        match rd.by_ref().take(MAX_LINE_BYTES).read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if !line.ends_with('\n') => {
                end = End::Broken("a line from repd was cut short".into());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                end = End::Broken(format!("reading the stream failed: {e}"));
                break;
            }
        }
        let raw = line.trim_end().to_string();
        let Ok(e) = serde_json::from_str::<Event>(&raw) else {
            end = End::Broken(format!("repd sent a line that is not an event: {raw:?}"));
            break;
        };
        let last = match (e.kind, e.object.as_str()) {
            (EventKind::Destroy, "resource") => Some(End::Stopped),
            (EventKind::Call, "lost-events") => Some(End::Lost),
            _ => None,
        };
        if tx.send(Msg::Line(e, raw)).is_err() {
            return;
        }
        if let Some(l) = last {
            end = l;
            break;
        }
    }
    let _ = tx.send(Msg::Ended(resource.to_string(), end));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

    use std::os::unix::net::UnixListener;

    use super::*;

    /// A stand-in for repd: answers `events` with `lines`, then closes.
    fn fake_repd(dir: &std::path::Path, resource: &str, lines: Vec<String>) -> Source {
        let socket = dir.join(format!("{resource}.alpha.sock"));
        let l = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = l.accept().unwrap();
            let mut rd = BufReader::new(conn.try_clone().unwrap());
            let mut cmd = String::new();
            rd.read_line(&mut cmd).unwrap();
            assert_eq!(cmd.trim(), r#"{"cmd":"events","now":true}"#);
            let mut w = &conn;
            writeln!(w, r#"{{"ok":true,"status":null}}"#).unwrap();
            for l in lines {
                writeln!(w, "{l}").unwrap();
            }
        });
        Source {
            resource: resource.into(),
            socket,
        }
    }

    fn line(kind: EventKind, object: &str, resource: &str, role: Option<&str>) -> String {
        let mut e = Event::now(kind, object, resource);
        if let Some(r) = role {
            e = e.with("role", r);
        }
        serde_json::to_string(&e).unwrap()
    }

    fn stream(resource: &str, stops: bool) -> Vec<String> {
        let mut v = vec![
            line(EventKind::Exists, "resource", resource, Some("Secondary")),
            line(EventKind::Exists, "-", resource, None),
            line(EventKind::Change, "resource", resource, Some("Primary")),
        ];
        if stops {
            v.push(line(EventKind::Destroy, "resource", resource, None));
        }
        v
    }

    fn args() -> EventsArgs {
        EventsArgs {
            now: true,
            json: false,
            timestamps: false,
            sel: super::super::Select::default(),
        }
    }

    /// Two resources: both states, one `exists -`, then the changes; the
    /// watch ends well when both repds stopped in order.
    #[test]
    fn the_streams_of_several_resources_merge_like_events2_all() {
        let dir = tempfile::tempdir().unwrap();
        let sources = [
            fake_repd(dir.path(), "r0", stream("r0", true)),
            fake_repd(dir.path(), "r1", stream("r1", true)),
        ];
        let mut out = Vec::new();
        merge(&sources, &args(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        let sep = lines.iter().position(|l| *l == "exists -").unwrap();
        assert_eq!(sep, 2, "{text}");
        for r in ["r0", "r1"] {
            assert!(
                lines[..2].contains(&format!("exists resource name:{r} role:Secondary").as_str())
            );
            let change = format!("change resource name:{r} role:Primary");
            let destroy = format!("destroy resource name:{r}");
            let at = |l: &str| lines.iter().position(|x| *x == l).unwrap();
            assert!(sep < at(&change) && at(&change) < at(&destroy), "{text}");
        }
    }

    /// A stream that ends without `destroy resource` (repd died) is an
    /// error naming its resource, after the other's lines are out.
    #[test]
    fn a_stream_that_breaks_is_an_error_naming_its_resource() {
        let dir = tempfile::tempdir().unwrap();
        let sources = [
            fake_repd(dir.path(), "r0", stream("r0", true)),
            fake_repd(dir.path(), "r1", stream("r1", false)),
        ];
        let mut out = Vec::new();
        let Err(Failure(why)) = merge(&sources, &args(), &mut out) else {
            panic!("a broken stream ended well");
        };
        assert!(
            why.starts_with("r1: the connection to repd closed"),
            "{why}"
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("change resource name:r1 role:Primary"),
            "{text}"
        );
        assert!(text.contains("destroy resource name:r0"), "{text}");
    }
}
