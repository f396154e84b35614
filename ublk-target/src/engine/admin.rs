//! The engine's side of the control socket: a [`ControlCmd`] becomes an
//! [`Admin`] command for the state machine, after the checks only the
//! daemon can make (is the device in use?), and its answer.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use rep_control::protocol::Refusal;
use replication_proto::machine::{Admin, SuspendMode, Verb};
use replication_proto::time::Millis;

use super::{ControlCmd, ControlReply, Runner};

/// A command the daemon refuses before the state machine sees it.
#[derive(Debug)]
pub(super) struct Refused {
    /// In words, as `repctl` prints it.
    pub(super) why: String,
    pub(super) refusal: Refusal,
}

/// How long a forced `down` waits for the requests of the NBD clients it
/// disconnected to end before it gives up (held requests never end).
const FORCED_DOWN_WAIT: Duration = Duration::from_secs(10);

impl Runner {
    pub(super) fn control(&mut self, cmd: ControlCmd, reply: Sender<ControlReply>) {
        let admin = match self.admin_for(&cmd) {
            Ok(a) => a,
            Err(r) => return self.refuse(&reply, r.why, r.refusal),
        };
        let result = match admin {
            None => Ok(()),
            Some(a) => {
                tracing::info!(command = ?a, "admin");
                let now = Millis(self.now());
                self.node.admin(now, a)
            }
        };
        self.drain();
        if let ControlCmd::Down { force } = cmd {
            if self.answer_down_later(force, result.is_ok(), &reply) {
                return;
            }
        }
        match result {
            Ok(()) => {
                let _ = reply.send(ControlReply {
                    ok: true,
                    error: None,
                    refusal: None,
                    status: Some(self.status()),
                });
            }
            Err(e) => self.refuse(&reply, e.to_string(), e.into()),
        }
    }

    /// What the state machine is to do for `cmd` (`None`: nothing, e.g.
    /// `status`), or why the daemon refuses it.
    fn admin_for(&mut self, cmd: &ControlCmd) -> Result<Option<Admin>, Refused> {
        let admin = match cmd {
            ControlCmd::Status => return Ok(None),
            ControlCmd::Down { force } => self.down(*force)?,
            ControlCmd::SuspendIo { fail } => Admin::SuspendIo {
                mode: if *fail {
                    SuspendMode::Fail
                } else {
                    SuspendMode::Hold
                },
            },
            ControlCmd::ResumeIo { if_current: None } => Admin::ResumeIo,
            ControlCmd::ResumeIo {
                if_current: Some(h),
            } => match u64::from_str_radix(h, 16) {
                Ok(current) => Admin::ResumeIoAt { current },
                Err(_) => {
                    return Err(Refused {
                        why: format!("resume-io: \"{h}\" is not a hex generation"),
                        refusal: Refusal::BadArgument {
                            argument: "if_current".into(),
                            value: h.clone(),
                        },
                    })
                }
            },
            ControlCmd::Events { .. } => {
                return Err(Refused {
                    why: "events is a stream: the control socket serves it".into(),
                    refusal: Refusal::BadRequest,
                })
            }
            ControlCmd::Adjust { .. } => {
                return Err(Refused {
                    why: "adjust has an answer of its own: the control socket serves it".into(),
                    refusal: Refusal::BadRequest,
                })
            }
            ControlCmd::Attach => self.attach()?,
            ControlCmd::Verb(Verb::Secondary) => self.secondary()?,
            ControlCmd::Verb(verb) => Admin::Verb(verb.clone()),
        };
        Ok(Some(admin))
    }

    /// `secondary`: refused while anything uses the device.
    fn secondary(&self) -> Result<Admin, Refused> {
        match self.shared.users.in_use(false) {
            Some(u) => Err(Refused {
                refusal: u.refusal(),
                why: if u.clients() > 0 {
                    format!("{}; disconnect them first", u.why)
                } else {
                    u.why
                },
            }),
            None => Ok(Admin::Verb(Verb::Secondary)),
        }
    }

    /// `down`: refused while anything uses the device, except that a forced
    /// one disconnects the clients (NBD) instead.
    fn down(&self, force: bool) -> Result<Admin, Refused> {
        let users = &self.shared.users;
        if let Some(u) = users.in_use(force) {
            let hint = if u.clients() > 0 && !force {
                "disconnect them, or `repctl down --force` to cut them (the node stays up)"
            } else {
                "the node stays up"
            };
            return Err(Refused {
                why: format!("{}; {hint}", u.why),
                refusal: u.refusal(),
            });
        }
        let clients = users.clients();
        if force && clients > 0 {
            tracing::warn!(
                clients,
                "forced down: disconnecting the NBD clients (their next request fails)"
            );
            users.cut_clients();
        }
        Ok(Admin::Down)
    }

    /// A `down` the state machine took is answered once the orderly
    /// shutdown finished; a forced one it refused while the cut clients'
    /// requests are still in the engine is tried again once they are done
    /// ([`Runner::retry_forced_down`]). True when `reply` was kept for later.
    fn answer_down_later(
        &mut self,
        force: bool,
        taken: bool,
        reply: &Sender<ControlReply>,
    ) -> bool {
        if taken {
            self.down_waiters.push(reply.clone());
            return true;
        }
        let pending = self.node.status().app_pending;
        if force && pending > 0 {
            tracing::info!(pending, "forced down: waiting for the requests in flight");
            self.forced_down = Some((reply.clone(), Instant::now() + FORCED_DOWN_WAIT));
            return true;
        }
        false
    }

    /// Answer a refused command: its reason in words (as `repctl` prints
    /// it), as the value callers branch on, and the state it was refused in.
    fn refuse(&self, reply: &Sender<ControlReply>, why: String, refusal: Refusal) {
        let _ = reply.send(ControlReply::refused(why, refusal, Some(self.status())));
    }

    /// A forced `down` waiting for the requests of the clients it cut:
    /// demote as soon as none is in flight, or give up at its deadline.
    pub(super) fn retry_forced_down(&mut self) {
        let Some((_, deadline)) = &self.forced_down else {
            return;
        };
        let deadline = *deadline;
        let now = Millis(self.now());
        let result = self.node.admin(now, Admin::Down);
        if result.is_err() && Instant::now() < deadline {
            return;
        }
        let Some((reply, _)) = self.forced_down.take() else {
            return;
        };
        self.drain();
        match result {
            Ok(()) => self.down_waiters.push(reply),
            Err(e) => self.refuse(&reply, e.to_string(), e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rep_control::protocol::{ClientCount, InUseBy};
    use replication_proto::machine::AdminError;

    use super::super::tests::start_alone;
    use super::*;
    use crate::frontend::UserSource;

    /// A frontend with one client connected.
    struct OneClient;

    impl UserSource for OneClient {
        fn name(&self) -> &str {
            "NBD"
        }
        fn clients(&self) -> usize {
            1
        }
    }

    /// Every refusal carries its value beside its unchanged words: the
    /// daemon's own (in use, a bad argument) and the state machine's.
    #[test]
    fn every_refusal_says_its_reason_as_a_value() {
        let dir = tempfile::tempdir().expect("temp dir");
        let eng = start_alone(dir.path(), "rf");
        let h = eng.handle.clone();
        let ask = |cmd| h.control(cmd).expect("reply");

        let r = ask(ControlCmd::Verb(Verb::Primary { force: true }));
        assert!(r.ok && r.refusal.is_none(), "{r:?}");
        let r = ask(ControlCmd::Verb(Verb::Invalidate));
        assert_eq!(
            r.refusal,
            Some(Refusal::Machine(AdminError::PrimaryCannotInvalidate))
        );
        assert_eq!(
            r.error,
            Some(AdminError::PrimaryCannotInvalidate.to_string())
        );
        let r = ask(ControlCmd::ResumeIo {
            if_current: Some("xyz".into()),
        });
        assert_eq!(
            r.error.as_deref(),
            Some("resume-io: \"xyz\" is not a hex generation")
        );
        assert_eq!(
            r.refusal,
            Some(Refusal::BadArgument {
                argument: "if_current".into(),
                value: "xyz".into()
            })
        );

        let client = h.users().register(Arc::new(OneClient));
        let in_use = Some(Refusal::InUse {
            by: InUseBy::Clients(vec![ClientCount {
                frontend: "NBD".into(),
                count: 1,
            }]),
        });
        let r = ask(ControlCmd::Verb(Verb::Secondary));
        assert_eq!(
            r.error.as_deref(),
            Some("the device is in use: 1 NBD client(s) connected; disconnect them first")
        );
        assert_eq!(r.refusal, in_use);
        let r = ask(ControlCmd::Down { force: false });
        assert_eq!(r.refusal, in_use, "{r:?}");
        drop(client);

        let r = ask(ControlCmd::Down { force: false });
        assert!(r.ok, "{r:?}");
        eng.thread.join().expect("engine thread");
    }
}
