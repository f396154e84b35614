//! DRBD-style handlers (`[handlers]` in the resource file): the commands the
//! state machine asks for ([`Hook::FencePeer`], [`Hook::UnfencePeer`]), run
//! each on a thread of its own with a deadline, so the engine never waits
//! for one; the exit code comes back as an engine input (`HandlerDone`).
//!
//! A handler gets DRBD's environment (`DRBD_RESOURCE`, `DRBD_PEER`,
//! `DRBD_MINOR`, `DRBD_CONF`, ...) so that scripts written for DRBD find
//! what they look for, plus `REP_*` names of our own.

use std::process::{Command, Stdio};
use std::time::Duration;

use rep_control::protocol::HandlerRun;
use replication_proto::machine::Hook;
use wait_timeout::ChildExt;

use super::{Input, InputTx};
use crate::config::{Config, Handlers, Node, OnIoError};

/// Which handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    FencePeer,
    UnfencePeer,
    SplitBrain,
    InitialSplitBrain,
    PriLostAfterSb,
    LocalIoError,
    AfterResyncTarget,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::FencePeer => "fence-peer",
            Self::UnfencePeer => "unfence-peer",
            Self::SplitBrain => "split-brain",
            Self::InitialSplitBrain => "initial-split-brain",
            Self::PriLostAfterSb => "pri-lost-after-sb",
            Self::LocalIoError => "local-io-error",
            Self::AfterResyncTarget => "after-resync-target",
        }
    }
}

/// Runs the configured handlers on the engine's behalf.
pub(super) struct Runner {
    handlers: Handlers,
    /// `[disk] on-io-error = "call-local-io-error"`.
    call_local_io_error: bool,
    env: Vec<(String, String)>,
    tx: InputTx,
    /// The last run of each kind, for `repctl status` (so at most one
    /// entry per [`Kind`]).
    runs: Vec<HandlerRun>,
    /// The newest runs for the event stream, at most [`ENDED_KEPT`], and
    /// how many ended so far.
    ended: std::collections::VecDeque<crate::events::HandlerEnded>,
    ended_count: u64,
}

/// Handler ends kept for the event stream: more than end in one engine
/// turn (a turn takes every input waiting).
const ENDED_KEPT: usize = 16;

impl Runner {
    pub(super) fn new(cfg: &Config, me: &Node, peer: &Node, tx: InputTx) -> Self {
        let af = if peer.address.is_ipv6() {
            "ipv6"
        } else {
            "ipv4"
        };
        let env = [
            ("DRBD_RESOURCE", cfg.resource.name.clone()),
            ("DRBD_PEER", peer.name.clone()),
            ("DRBD_PEERS", peer.name.clone()),
            ("DRBD_PEER_ADDRESS", peer.address.ip().to_string()),
            ("DRBD_PEER_AF", af.to_owned()),
            ("DRBD_MY_ADDRESS", me.address.ip().to_string()),
            ("DRBD_MINOR", me.device.to_string()),
            ("DRBD_VOLUME", "0".to_owned()),
            ("DRBD_CONF", cfg.path.display().to_string()),
            ("DRBD_BACKING_DEV", me.disk.display().to_string()),
            ("REP_NODE", me.name.clone()),
            ("REP_RESOURCE_FILE", cfg.path.display().to_string()),
        ];
        Self {
            handlers: cfg.handlers.clone(),
            // Under `detach` too: DRBD's notify-io-error setups combine both.
            call_local_io_error: matches!(
                cfg.disk.on_io_error,
                OnIoError::CallLocalIoError | OnIoError::Detach
            ),
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            tx,
            runs: Vec::new(),
            ended: std::collections::VecDeque::new(),
            ended_count: 0,
        }
    }

    /// Keep how a handler ended for `repctl status`.
    pub(super) fn record(&mut self, kind: Kind, exit: Option<i32>, timed_out: bool) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.ended_count += 1;
        let how = match (exit, timed_out) {
            (_, true) => "timed-out".to_owned(),
            (Some(code), _) => code.to_string(),
            (None, false) => "killed".to_owned(),
        };
        if self.ended.len() >= ENDED_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back((self.ended_count, kind.name(), how));
        self.runs.retain(|r| r.name != kind.name());
        self.runs.push(HandlerRun {
            name: kind.name().to_owned(),
            exit,
            timed_out,
            at,
        });
    }

    pub(super) fn runs(&self) -> &[HandlerRun] {
        &self.runs
    }

    /// The newest handler ends, for [`crate::events::Snapshot`].
    pub(super) fn ended(&self) -> Vec<crate::events::HandlerEnded> {
        self.ended.iter().cloned().collect()
    }

    /// Carry out a hook the state machine asked for. A fence-peer hook
    /// always gets its answer (`None` when there is no handler to run).
    pub(super) fn hook(&self, hook: &Hook) {
        let (kind, cmd) = match hook {
            Hook::FencePeer => (Kind::FencePeer, self.handlers.fence_peer.clone()),
            Hook::UnfencePeer => (Kind::UnfencePeer, self.handlers.unfence_peer.clone()),
            Hook::InitialSplitBrain => (
                Kind::InitialSplitBrain,
                self.handlers.initial_split_brain.clone(),
            ),
            Hook::SplitBrain { .. } => (Kind::SplitBrain, self.handlers.split_brain.clone()),
            Hook::PriLostAfterSb => (
                Kind::PriLostAfterSb,
                self.handlers.pri_lost_after_sb.clone(),
            ),
            // DRBD runs it only under `on-io-error call-local-io-error`.
            Hook::LocalIoError if self.call_local_io_error => {
                (Kind::LocalIoError, self.handlers.local_io_error.clone())
            }
            Hook::LocalIoError => return,
            Hook::AfterResyncTarget => (
                Kind::AfterResyncTarget,
                self.handlers.after_resync_target.clone(),
            ),
        };
        let Some(cmd) = cmd else {
            if kind == Kind::FencePeer {
                // Validation makes fencing need a handler; answer anyway.
                self.done(kind, None);
            }
            return;
        };
        let (env, tx, timeout) = (self.env.clone(), self.tx.clone(), self.handlers.timeout);
        let spawned = std::thread::Builder::new()
            .name(format!("repd-{}", kind.name()))
            .spawn(move || {
                let started = std::time::Instant::now();
                let exit = run(kind, &cmd, &env, timeout);
                let timed_out = exit.is_none() && started.elapsed() >= timeout;
                let _ = tx.send(Input::HandlerDone {
                    kind,
                    exit,
                    timed_out,
                });
            });
        if let Err(e) = spawned {
            tracing::error!(handler = kind.name(), "cannot start a thread: {e}");
            self.done(kind, None);
        }
    }

    fn done(&self, kind: Kind, exit: Option<i32>) {
        let _ = self.tx.send(Input::HandlerDone {
            kind,
            exit,
            timed_out: false,
        });
    }
}

/// Runs `cmd` with `/bin/sh -c` in a process group of its own; kills the
/// group at the deadline. The exit code, `None` when it did not exit by
/// itself (a signal, the deadline, or it could not start).
fn run(kind: Kind, cmd: &str, env: &[(String, String)], timeout: Duration) -> Option<i32> {
    use std::os::unix::process::CommandExt;
    tracing::info!(handler = kind.name(), cmd, "running handler");
    let started = std::time::Instant::now();
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("REP_HANDLER", kind.name())
        .current_dir("/")
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(handler = kind.name(), cmd, "cannot start: {e}");
            return None;
        }
    };
    let status = match child.wait_timeout(timeout) {
        Ok(Some(st)) => st,
        Ok(None) | Err(_) => {
            tracing::error!(handler = kind.name(), ?timeout, "handler timed out: killed");
            if let Ok(pid) = i32::try_from(child.id()) {
                // The whole group: a script's own children go too.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait();
            return None;
        }
    };
    let ms = started.elapsed().as_millis();
    // fence-peer answers with its exit code (3..7); for the others anything
    // but 0 is a failure the operator should see.
    if status.code() == Some(0) || matches!(kind, Kind::FencePeer) {
        tracing::info!(handler = kind.name(), exit = ?status.code(), ms, "handler ended");
    } else {
        tracing::warn!(handler = kind.name(), exit = ?status.code(), ms, "handler failed");
    }
    status.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![("DRBD_RESOURCE".to_owned(), "r9".to_owned())]
    }

    #[test]
    fn the_exit_code_and_the_environment_come_through() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("env");
        let cmd = format!(
            "/bin/sh -c 'echo \"$DRBD_RESOURCE $REP_HANDLER $(pwd)\" > {}; exit 4'",
            out.display()
        );
        let exit = run(Kind::FencePeer, &cmd, &env(), Duration::from_secs(30));
        assert_eq!(exit, Some(4));
        let seen = std::fs::read_to_string(&out).expect("handler output");
        assert_eq!(seen.trim(), "r9 fence-peer /");
    }

    /// A handler that hangs is killed at its deadline with its children (a
    /// `sleep` it started would otherwise hold the group), and counts as
    /// failed; a command that cannot run is a failure too.
    #[test]
    fn a_hanging_handler_is_killed_at_the_deadline() {
        let t0 = std::time::Instant::now();
        let exit = run(
            Kind::UnfencePeer,
            "/bin/sleep 30 & wait",
            &env(),
            Duration::from_millis(300),
        );
        assert_eq!(exit, None);
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let exit = run(
            Kind::FencePeer,
            "/nonexistent/handler",
            &env(),
            Duration::from_secs(5),
        );
        assert_eq!(exit, Some(127), "sh: not found");
    }
}
