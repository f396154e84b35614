//! One watcher's connection: the `events` answer line, then the lines of
//! its queue, written whole and only when the socket has room, so that a
//! client that stops reading never blocks anything but this thread, and a
//! cut-off or stopping watcher is noticed while its socket is full.

use std::io::{Read as _, Write as _};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, MsgFlags};
use rep_control::events::{Event, EventKind};
use rep_control::protocol::{ControlReply, Refusal};

use super::{Hub, Watch, WatchError, CLOSED, CUT, WATCHER_QUEUE_EVENTS};

/// How often an idle watcher looks whether its client hung up.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long a full socket is waited on before the watcher's state is
/// looked at again.
const ROOM_WAIT_MS: u16 = 200;
/// How long a cut-off watcher's client has to read what its socket holds,
/// so that the `lost-events` line fits after it.
const CUT_LINGER: Duration = Duration::from_secs(30);
/// How long a stopping repd still waits for room for a watcher's last
/// lines (the control server waits 2 s for its clients).
const CLOSE_GRACE: Duration = Duration::from_millis(1500);
/// A write to a socket that said it had room never takes longer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `events` on `conn` until the client hangs up, repd stops or the
/// watcher is cut off.
pub fn serve_watcher(conn: &UnixStream, hub: &Hub, now: bool) {
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    let watch = match hub.watch(now) {
        Ok(w) => w,
        Err(e) => {
            let refusal = match e {
                WatchError::Stopping => Refusal::Stopping,
                WatchError::TooMany => Refusal::BadRequest,
            };
            let reply = ControlReply::refused(e.to_string(), refusal, None);
            let _ = write_whole(conn, &serde_json::to_string(&reply).unwrap_or_default());
            return;
        }
    };
    let ok = ControlReply {
        ok: true,
        error: None,
        refusal: None,
        status: None,
    };
    if write_whole(conn, &serde_json::to_string(&ok).unwrap_or_default()) {
        pump(conn, &watch);
    }
    hub.forget(watch.id);
    if watch.state.load(Ordering::Acquire) == CUT {
        say_lost(conn, &watch);
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// The queue's lines onto the socket until the queue ends (repd stops),
/// the client hangs up, or the watcher is cut off.
fn pump(conn: &UnixStream, watch: &Watch) {
    loop {
        if watch.state.load(Ordering::Acquire) == CUT {
            return;
        }
        match watch.rx.recv_timeout(IDLE_CHECK) {
            Ok(line) => {
                if !wait_for_room(conn, watch, None) || !write_whole(conn, &line) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if hung_up(conn) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits until the socket has room for a line. Gives up at `until`, when
/// the watcher is cut off (unless `until` is given: the `lost-events` line
/// waits for room), and [`CLOSE_GRACE`] after repd began to stop.
fn wait_for_room(conn: &UnixStream, watch: &Watch, mut until: Option<Instant>) -> bool {
    let lost_line = until.is_some();
    loop {
        let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(ROOM_WAIT_MS)) {
            Ok(n) if n > 0 => {
                let ready = fds
                    .first()
                    .and_then(|f| f.revents())
                    .unwrap_or(PollFlags::empty());
                return ready.contains(PollFlags::POLLOUT)
                    && !ready.intersects(PollFlags::POLLERR | PollFlags::POLLHUP);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
        match watch.state.load(Ordering::Acquire) {
            CUT if !lost_line => return false,
            CLOSED => {
                until.get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
            }
            _ => {}
        }
        if until.is_some_and(|t| Instant::now() >= t) {
            return false;
        }
    }
}

fn write_whole(mut conn: &UnixStream, line: &str) -> bool {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    conn.write_all(&buf).is_ok()
}

/// Whether the client closed its end (it sends nothing after `events`;
/// anything it does send is read and dropped).
fn hung_up(mut conn: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut peek = [0u8; 64];
    match recv(
        conn.as_raw_fd(),
        &mut peek,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(n) => {
            let mut drop_buf = vec![0u8; n];
            conn.read_exact(&mut drop_buf).is_err()
        }
        Err(nix::errno::Errno::EAGAIN) => false,
        Err(_) => true,
    }
}

/// The last line of a watcher that was cut off, once its client read
/// what its socket holds (or [`CUT_LINGER`] passed).
fn say_lost(conn: &UnixStream, watch: &Watch) {
    let e = Event::now(EventKind::Call, "lost-events", &watch.resource)
        .with("queue-events", WATCHER_QUEUE_EVENTS)
        .with(
            "message",
            "this watcher fell behind and lost events; run `repctl events --now` again \
             for the current state",
        );
    if wait_for_room(conn, watch, Some(Instant::now() + CUT_LINGER)) {
        let _ = write_whole(conn, &serde_json::to_string(&e).unwrap_or_default());
    }
}
