//! The link: connections, delivery times (latency, partitions, a bandwidth
//! limit), resets, and frames damaged on the way.

use rand::Rng;

use super::scenario::Kind;
use super::world::{Ev, SimNode, World, MS};
use crate::machine::Event;
use crate::wire::{encoded_len, Message};

impl World {
    /// A frame arrives, unless it was lost with a crashed sender or its
    /// connection is gone.
    pub(super) fn deliver(&mut self, t: u64, to: usize, conn: u64, msg: Message) {
        let lost = self.cut[to].is_some_and(|(c, after)| c == conn && t > after);
        if !lost && self.nodes[to].conn == Some(conn) && self.nodes[to].node.is_some() {
            if self.trace_all {
                let s = format!("{} <- {}", self.name(to), short(&msg));
                self.log(s);
            }
            if self.damages(&msg) {
                self.refuse_damaged(to, conn);
            } else {
                self.feed(to, Event::Frame(msg));
            }
        }
    }

    /// When frame `m` sent now reaches node `to`: after the bytes queued
    /// before it on that direction have left, at the link's bandwidth,
    /// unless it rides the ping connection ([`Link`]).
    pub(super) fn send_time(&mut self, to: usize, m: &Message) -> u64 {
        let link = self.sc.link;
        if link.bytes_per_ms == 0 {
            return self.deliver_time(to, 20, self.sc.rates.net_us);
        }
        if link.ping_conn && matches!(m, Message::Ping | Message::PingAck) {
            // A connection of its own: no bulk ahead of it, and the order
            // with the data connection's frames is not kept.
            let base = self.now.max(self.partition_until);
            return base + self.lat(20, self.sc.rates.net_us);
        }
        let start = self.now.max(self.partition_until).max(self.link_free[to]);
        let bytes = encoded_len(m) as u64;
        self.link_free[to] = start + bytes * MS / link.bytes_per_ms;
        self.deliver_time(to, 20, self.sc.rates.net_us)
    }

    /// FIFO per direction; held while partitioned, and behind the bytes
    /// queued on a link with a bandwidth limit.
    pub(super) fn deliver_time(&mut self, to: usize, lo: u64, hi: u64) -> u64 {
        let base = self.now.max(self.partition_until).max(self.link_free[to]);
        let t = (base + self.lat(lo, hi)).max(self.last_deliver[to] + 1);
        self.last_deliver[to] = t;
        t
    }

    pub(super) fn maybe_connect(&mut self) {
        if self.live_conn.is_some() || self.now < self.partition_until {
            return;
        }
        let ready = |n: &SimNode| n.node.is_some() && n.want && n.conn.is_none();
        if ready(&self.nodes[0]) && ready(&self.nodes[1]) {
            self.conn_id += 1;
            let c = self.conn_id;
            self.live_conn = Some(c);
            self.nodes[0].conn = Some(c);
            self.nodes[1].conn = Some(c);
            self.last_deliver = [self.now, self.now];
            self.link_free = [self.now, self.now];
            self.log(format!("transport up #{c}"));
            self.feed(0, Event::TransportUp);
            self.feed(1, Event::TransportUp);
        }
    }

    pub(super) fn reset_link(&mut self) {
        if let Some(c) = self.live_conn.take() {
            self.report.resets += 1;
            self.log(format!("link reset #{c}"));
            for to in 0..2 {
                let t = self.now + self.lat(10, 300);
                self.at(t, Ev::Down { to, conn: c });
            }
        }
    }

    /// Whether the link damages this frame: one write's data in
    /// [`Rates::damage_one_in`](super::Rates::damage_one_in), in the network scenario only, the one whose
    /// invariants hold under link faults (with a Primary crash on top, a
    /// failover without fencing may rightly end in a split brain).
    pub(super) fn damages(&mut self, msg: &Message) -> bool {
        matches!(msg, Message::Data { data, .. } if !data.is_empty())
            && self.sc.kind == Kind::Network
            && self.rng.gen_range(0..self.sc.rates.damage_one_in) == 0
    }

    /// What the driver does with a frame whose checksum fails: it never
    /// reaches the node, the receiver drops the connection at once (with
    /// every frame behind it), the sender notices a little later.
    pub(super) fn refuse_damaged(&mut self, to: usize, conn: u64) {
        self.report.damaged += 1;
        let s = format!("{} refuses a damaged Data frame on #{conn}", self.name(to));
        self.log(s);
        if self.live_conn == Some(conn) {
            self.live_conn = None;
        }
        self.nodes[to].conn = None;
        self.feed(to, Event::TransportDown);
        let t = self.now + self.lat(10, 300);
        self.at(t, Ev::Down { to: 1 - to, conn });
    }
}

pub(super) fn short(m: &Message) -> String {
    match m {
        Message::Data {
            seq, offset, len, ..
        } => format!("Data seq={seq} off={offset} len={len}"),
        Message::ResyncData { id, offset, data } => {
            format!("ResyncData id={id} off={offset} len={}", data.len())
        }
        Message::Bitmap {
            start_bit,
            runs,
            last,
            ..
        } => format!("Bitmap start={start_bit} runs={} last={last}", runs.len()),
        Message::Hello(h) => format!(
            "Hello {} {:?} {:?} gens={:x?}",
            h.node, h.role, h.disk, h.gens
        ),
        other => format!("{other:?}"),
    }
}
