//! Changing the settings of a running node (`repctl adjust`, DRBD's
//! `drbdadm adjust`): what applies now, what waits for the next
//! connection, and what a running node cannot change at all.

use super::Node;
use crate::machine::types::NodeConfig;

/// When a new setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Already in effect when [`Node::reconfigure`] returns.
    Now,
    /// At the next handshake: the protocol and the secret are agreed on
    /// when a connection starts and stay fixed for its lifetime.
    NextConnection,
}

impl Node {
    /// Take `new` as this node's settings. Timeouts, ping interval,
    /// ko-count, max-buffers, the resync rate, csums, the split-brain
    /// policies and fencing apply at once; the protocol and the secret at
    /// the next connection (the current one keeps what both sides agreed
    /// on). Fencing applies the next time the peer is lost or this node is
    /// promoted alone: a fence-peer handler already running is still
    /// answered, and I/O it holds stays held until it ends, as before.
    ///
    /// # Errors
    /// The name of the first setting a running node cannot change (the
    /// resource, the node names, the data size, al-extents, the features);
    /// nothing is changed then.
    pub fn reconfigure(&mut self, new: NodeConfig) -> Result<Applies, &'static str> {
        let old = &self.cfg;
        let fixed: [(&'static str, bool); 6] = [
            ("resource", old.resource == new.resource),
            ("node", old.node == new.node),
            ("peer", old.peer == new.peer),
            ("data size", old.data_bytes == new.data_bytes),
            ("al-extents", old.al_extents == new.al_extents),
            ("features", old.features == new.features),
        ];
        if let Some((name, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(name);
        }
        let later = old.protocol != new.protocol || old.secret != new.secret;
        // Tokens earned so far are earned at the old rate.
        self.refill();
        if !later {
            self.cfg = new;
            return Ok(Applies::Now);
        }
        if !self.connected_states() {
            // No connection agreed on anything yet: the next one uses it.
            self.cfg = new;
            self.next_connection = None;
            return Ok(Applies::NextConnection);
        }
        let mut live = new;
        let next = (live.protocol, std::mem::take(&mut live.secret));
        live.protocol = self.cfg.protocol;
        live.secret = std::mem::take(&mut self.cfg.secret);
        self.cfg = live;
        self.next_connection = Some(next);
        Ok(Applies::NextConnection)
    }

    /// A connection starts: settings kept for it by [`Node::reconfigure`]
    /// take effect now, before this node's Hello.
    pub(super) fn take_next_connection_settings(&mut self) {
        if let Some((protocol, secret)) = self.next_connection.take() {
            self.cfg.protocol = protocol;
            self.cfg.secret = secret;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::gen::Generations;
    use crate::machine::types::{Action, Event, Persisted, Verb};
    use crate::machine::{Fencing, SplitBrainPolicy};
    use crate::meta::MetaFlags;
    use crate::time::Millis;
    use crate::wire::{features, Message, Protocol};

    fn cfg() -> NodeConfig {
        NodeConfig {
            resource: "r0".into(),
            node: "alpha".into(),
            peer: "beta".into(),
            protocol: Protocol::C,
            data_bytes: 8 << 20,
            secret: b"s".to_vec(),
            timeout_ms: 100,
            ping_int_ms: 50,
            ko_count: 3,
            max_buffers: 64,
            resync_rate: 1 << 20,
            resync_control: crate::machine::ResyncControl::default(),
            csums: false,
            al_extents: 7,
            split_brain: SplitBrainPolicy::default(),
            features: features::ALL,
            fencing: Fencing::DontCare,
            on_io_error_detach: false,
        }
    }

    fn node() -> Node {
        let p = Persisted {
            gens: Generations::just_created(),
            flags: MetaFlags::default(),
            bitmap: vec![0; 32],
            al_seq: 0,
            al_extents: vec![],
            promoted_at_ms: 0,
        };
        Node::new(cfg(), p, Millis::ZERO, 1)
    }

    /// The protocol in the Hello this node sends on a new connection.
    fn hello_protocol(n: &mut Node) -> Protocol {
        n.handle(Millis::ZERO, Event::TransportUp);
        while let Some(a) = n.poll_action() {
            if let Action::Send(Message::Hello(h)) = a {
                return h.protocol;
            }
        }
        panic!("no Hello sent");
    }

    #[test]
    fn live_settings_apply_at_once_and_fixed_ones_are_refused() {
        let mut n = node();
        let mut new = cfg();
        new.resync_rate = 8 << 20;
        new.timeout_ms = 300;
        new.ko_count = 9;
        new.fencing = Fencing::ResourceOnly;
        assert_eq!(n.reconfigure(new), Ok(Applies::Now));
        assert_eq!(n.config().resync_rate, 8 << 20);
        assert_eq!(n.config().timeout_ms, 300);
        assert_eq!(n.status().fencing.policy, Fencing::ResourceOnly);
        for (name, change) in [
            (
                "data size",
                Box::new(|c: &mut NodeConfig| c.data_bytes *= 2) as Box<dyn Fn(&mut NodeConfig)>,
            ),
            (
                "al-extents",
                Box::new(|c: &mut NodeConfig| c.al_extents = 100),
            ),
        ] {
            let mut bad = n.config().clone();
            bad.resync_rate = 1;
            change(&mut bad);
            assert_eq!(n.reconfigure(bad), Err(name));
            assert_eq!(n.config().resync_rate, 8 << 20, "nothing applied");
        }
    }

    #[test]
    fn a_new_protocol_waits_for_the_next_connection() {
        let mut n = node();
        n.admin(
            Millis::ZERO,
            Verb::Connect {
                discard_my_data: false,
            }
            .into(),
        )
        .unwrap();
        assert_eq!(hello_protocol(&mut n), Protocol::C);
        let mut new = cfg();
        new.protocol = Protocol::B;
        new.secret = b"other".to_vec();
        assert_eq!(n.reconfigure(new), Ok(Applies::NextConnection));
        assert_eq!(n.config().protocol, Protocol::C, "the connection keeps C");
        assert_eq!(n.config().secret, b"s".to_vec());
        n.handle(Millis::ZERO, Event::TransportDown);
        while n.poll_action().is_some() {}
        assert_eq!(hello_protocol(&mut n), Protocol::B);
        assert_eq!(n.config().secret, b"other".to_vec());
    }
}
