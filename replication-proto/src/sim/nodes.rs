//! The nodes' plumbing: start a node on its persisted metadata, feed it
//! events, carry out its actions (I/O on its disk, frames to the link,
//! metadata writes in issue order).

use rand::Rng;

use super::network::short;
use super::world::{Ev, IoOp, MetaW, World, MS};
use crate::machine::{Action, Admin, Event, Hook, IoToken, MetaToken, Node};
use crate::time::Millis;
use crate::wire::Message;

impl World {
    pub(super) fn start_node(&mut self, i: usize) {
        let p = self.nodes[i].meta.persisted();
        if self.trace_all {
            let s = format!(
                "{} starts from al={:?} flags={:?} gens={:x?} dirty={}",
                self.name(i),
                p.al_extents,
                p.flags,
                p.gens,
                p.bitmap.iter().map(|w| w.count_ones()).sum::<u32>()
            );
            self.log(s);
        }
        let seed = self.rng.gen();
        self.nodes[i].inc += 1;
        self.nodes[i].meta_q.clear();
        self.nodes[i].meta_busy = false;
        self.nodes[i].want = false;
        self.nodes[i].conn = None;
        self.nodes[i].next_tick = None;
        let _span = tracing::info_span!("node", name = %self.cfgs[i].node).entered();
        let now = Millis(self.now / MS);
        let mut node = Node::new(self.cfgs[i].clone(), p, now, seed);
        node.set_before_resync_target(self.sc.before_target);
        self.nodes[i].node = Some(node);
        self.drain(i);
    }

    pub(super) fn feed(&mut self, i: usize, ev: Event) {
        // The core logs without naming its node: the driver's span does.
        let _span = tracing::info_span!("node", name = %self.cfgs[i].node).entered();
        let now = Millis(self.now / MS);
        if let Some(n) = self.nd(i) {
            n.handle(now, ev);
        }
        self.drain(i);
    }

    pub(super) fn admin(&mut self, i: usize, cmd: Admin) -> bool {
        // The core logs without naming its node: the driver's span does.
        let _span = tracing::info_span!("node", name = %self.cfgs[i].node).entered();
        let now = Millis(self.now / MS);
        let r = match self.nd(i) {
            Some(n) => n.admin(now, cmd.clone()),
            None => return false,
        };
        let s = format!("{} admin {:?}: {:?}", self.name(i), cmd, r);
        self.log(s);
        self.drain(i);
        r.is_ok()
    }

    pub(super) fn drain(&mut self, i: usize) {
        loop {
            let Some(a) = self.nodes[i].node.as_mut().and_then(Node::poll_action) else {
                break;
            };
            self.act(i, a);
        }
        let t = self.nodes[i].node.as_ref().and_then(Node::poll_timeout);
        if let Some(t) = t {
            let t = (t.as_ms() * MS).max(self.now + 1);
            if self.nodes[i].next_tick.is_none_or(|x| t < x) {
                self.nodes[i].next_tick = Some(t);
                self.at(t, Ev::Tick(i));
            }
        }
    }

    pub(super) fn act(&mut self, i: usize, a: Action) {
        match a {
            Action::Connect => self.nodes[i].want = true,
            Action::CloseConnection => self.close_connection(i),
            Action::Send(m) => self.send(i, m),
            Action::LocalRead { token, offset, len } => {
                let t = self.now + self.lat(5, self.sc.rates.disk_us);
                self.disk_io(i, t, token, IoOp::Read { offset, len });
            }
            Action::LocalWrite {
                token,
                offset,
                len,
                payload,
                fua,
            } => {
                let t = self.now + self.lat(5, self.sc.rates.disk_us);
                let op = IoOp::Write {
                    offset,
                    len,
                    payload,
                    fua,
                };
                self.disk_io(i, t, token, op);
            }
            Action::LocalFlush { token } => {
                let t = self.now + self.lat(50, self.sc.rates.flush_us);
                self.disk_io(i, t, token, IoOp::Flush);
            }
            Action::WriteSuper {
                token,
                gens,
                flags,
                promoted_at_ms,
            } => self.meta_push(i, token, MetaW::Super(gens, flags, promoted_at_ms)),
            Action::WriteAl {
                token,
                seq,
                extents,
            } => self.meta_push(i, token, MetaW::Al(seq, extents)),
            Action::WriteBitmap {
                token,
                first_word,
                words,
            } => {
                self.meta_push(i, token, MetaW::Bitmap(first_word, words));
            }
            Action::Complete { id, result } => self.app_done(i, id, result),
            // The simulator never asks for a resize (no `Admin::Resize`),
            // and a grow needs a disk of its own size: refuse it.
            Action::GrowDisk { .. } => self.feed(
                i,
                Event::GrowDone {
                    result: Err("the simulator's disks do not grow".into()),
                },
            ),
            Action::SizeChanged { .. } => {}
            Action::CloseDisk => self.disk_closed(i),
            Action::Hook(h) => {
                let s = format!("{} hook {:?}", self.name(i), h);
                self.log(s);
                if h == Hook::FencePeer {
                    self.run_fence_peer(i);
                }
                if h == Hook::LocalIoError {
                    self.io_error_hook(i);
                }
                if h == Hook::BeforeResyncTarget {
                    self.run_before_resync_target(i);
                }
            }
        }
    }

    /// The fence-peer handler: it answers after 1 to 200 ms with an exit
    /// code drawn from DRBD's (mostly fenced, sometimes failed, refused or
    /// killed); the settle phase resumes a Primary it left frozen, as an
    /// admin would.
    fn run_fence_peer(&mut self, i: usize) {
        let exit = match self.rng.gen_range(0..10) {
            0 => Some(1),
            1 => Some(6),
            2 => None,
            3 => Some(3),
            4 | 5 => Some(5),
            6 => Some(7),
            _ => Some(4),
        };
        let t = self.now + self.lat(MS, 200 * MS);
        let inc = self.nodes[i].inc;
        self.report.fences += 1;
        self.at(t, Ev::FenceDone { node: i, inc, exit });
    }

    /// The before-resync-target handler (a snapshot): it answers after 1
    /// to 200 ms, failing one run in eight (the resync then does not start
    /// and the node goes StandAlone until the settle phase connects it).
    fn run_before_resync_target(&mut self, i: usize) {
        let ok = self.rng.gen_range(0..8) != 0;
        let t = self.now + self.lat(MS, 200 * MS);
        let inc = self.nodes[i].inc;
        self.at(t, Ev::BeforeTargetDone { node: i, inc, ok });
    }

    /// Node `i` closes its end: the peer hears of it after a while.
    fn close_connection(&mut self, i: usize) {
        self.nodes[i].want = false;
        if let Some(c) = self.nodes[i].conn.take() {
            let other = 1 - i;
            if self.live_conn == Some(c) {
                self.live_conn = None;
            }
            let t = self.deliver_time(other, 50, 500);
            self.at(t, Ev::Down { to: other, conn: c });
        }
    }

    /// Node `i` sends `m` on its connection, if it has one.
    fn send(&mut self, i: usize, m: Message) {
        if let Some(c) = self.nodes[i].conn {
            let other = 1 - i;
            if self.trace_all {
                let s = format!("{} -> {}", self.name(i), short(&m));
                self.log(s);
            }
            let t = self.send_time(other, &m);
            self.at(
                t,
                Ev::Deliver {
                    to: other,
                    conn: c,
                    msg: m,
                },
            );
        }
    }

    /// A request on node `i`'s disk completes at `t` (if the node is still
    /// the same incarnation then).
    fn disk_io(&mut self, i: usize, t: u64, token: IoToken, op: IoOp) {
        let inc = self.nodes[i].inc;
        self.at(
            t,
            Ev::Io {
                node: i,
                inc,
                token,
                op,
            },
        );
    }

    pub(super) fn meta_push(&mut self, i: usize, token: MetaToken, m: MetaW) {
        self.nodes[i].meta_q.push_back((token, m));
        if !self.nodes[i].meta_busy {
            self.nodes[i].meta_busy = true;
            let t = self.now + self.lat(20, 400);
            let inc = self.nodes[i].inc;
            self.at(t, Ev::Meta { node: i, inc });
        }
    }

    pub(super) fn meta_complete(&mut self, i: usize) {
        let Some((token, m)) = self.nodes[i].meta_q.pop_front() else {
            self.nodes[i].meta_busy = false;
            return;
        };
        // A failed disk (`disk_fail_chaos`) fails its metadata writes too,
        // as a dead disk does: often the activity log's write is the first
        // to fail, before any data request.
        let failed = self.nodes[i].failed;
        let meta = &mut self.nodes[i].meta;
        match m {
            _ if failed => {}
            MetaW::Super(g, f, p) => {
                meta.gens = g;
                meta.flags = f;
                meta.promoted_at_ms = p;
            }
            MetaW::Al(seq, e) => {
                meta.al_seq = seq;
                meta.al_extents = e;
            }
            MetaW::Bitmap(first, words) => meta.write_bitmap(first, &words),
        }
        if self.nodes[i].meta_q.is_empty() {
            self.nodes[i].meta_busy = false;
        } else {
            let t = self.now + self.lat(20, 400);
            let inc = self.nodes[i].inc;
            self.at(t, Ev::Meta { node: i, inc });
        }
        self.feed(
            i,
            Event::MetaDone {
                token,
                result: if failed { Err(5) } else { Ok(()) },
            },
        );
    }
}
