//! Who uses the device: the one place `secondary`, `down` and repd's signal
//! handler ask before they take the device from its users.
//!
//! Each frontend registers what makes the device "in use" through it: the
//! NBD export its connected clients (which a forced `down` may cut), the
//! ublk frontend a served `/dev/ublkbN` (mounted or open, which nothing
//! here can undo), each as a [`UserSource`]. The engine owns the registry
//! ([`Users`]) and knows no frontend by name; DRBD's equivalent is the
//! kernel's open count on the device ("Device is held open by someone").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rep_control::protocol::{ClientCount, InUseBy, Refusal};

use crate::frontend::UserSource;

/// Why the device must not be taken from its users now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// The refusal, as the operator reads it.
    pub why: String,
    /// Who holds it, as the refusal's value ([`Refusal::InUse`]).
    pub by: InUseBy,
}

impl InUse {
    /// How many of the users are clients a forced `down` would cut (0
    /// when the device is held otherwise).
    #[must_use]
    pub fn clients(&self) -> usize {
        match &self.by {
            InUseBy::Clients(c) => c.iter().map(|c| c.count).sum(),
            InUseBy::Held => 0,
        }
    }

    /// The refusal as callers branch on it.
    #[must_use]
    pub fn refusal(&self) -> Refusal {
        Refusal::InUse {
            by: self.by.clone(),
        }
    }
}

type Entries = Mutex<Vec<(u64, Arc<dyn UserSource>)>>;

/// The registry of [`UserSource`]s. Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct Users {
    entries: Arc<Entries>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .sources()
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        f.debug_struct("Users").field("sources", &names).finish()
    }
}

/// A registered [`UserSource`]; dropping it unregisters the source.
#[derive(Debug)]
#[must_use = "dropping the registration unregisters the source at once"]
pub struct Registration {
    entries: Weak<Entries>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(entries) = self.entries.upgrade() {
            let mut e = entries.lock().unwrap_or_else(PoisonError::into_inner);
            let before = e.len();
            e.retain(|(id, _)| *id != self.id);
            debug_assert_eq!(e.len() + 1, before, "a registration is removed once");
        }
    }
}

impl Users {
    /// Adds `source` until the returned [`Registration`] is dropped.
    pub fn register(&self, source: Arc<dyn UserSource>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, source));
        Registration {
            entries: Arc::downgrade(&self.entries),
            id,
        }
    }

    /// The sources now, so that none is asked with the registry locked
    /// (a check may take seconds; a frontend may unregister meanwhile).
    fn sources(&self) -> Vec<Arc<dyn UserSource>> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Clients a forced `down` would cut, connected now.
    pub fn clients(&self) -> usize {
        self.sources().iter().map(|s| s.clients()).sum()
    }

    /// Disconnects every client of every source (a forced `down`).
    pub fn cut_clients(&self) {
        for s in self.sources() {
            s.cut();
        }
    }

    /// Why the device must not be taken from its users now: clients are
    /// connected (unless `cut_clients`: a forced `down` disconnects them),
    /// or the device is held (mounted, open). What `secondary`, `down` and
    /// a shutdown signal refuse on; `None` when nothing uses the device.
    pub fn in_use(&self, cut_clients: bool) -> Option<InUse> {
        let sources = self.sources();
        if !cut_clients {
            if let Some(u) = connected(&sources) {
                return Some(u);
            }
        }
        sources.iter().find_map(|s| s.held()).map(|why| InUse {
            why,
            by: InUseBy::Held,
        })
    }
}

/// The clients connected through `sources`, as a refusal.
fn connected(sources: &[Arc<dyn UserSource>]) -> Option<InUse> {
    let counts: Vec<ClientCount> = sources
        .iter()
        .map(|s| ClientCount {
            frontend: s.name().to_string(),
            count: s.clients(),
        })
        .filter(|c| c.count > 0)
        .collect();
    if counts.is_empty() {
        return None;
    }
    let what = counts
        .iter()
        .map(|c| format!("{} {} client(s)", c.count, c.frontend))
        .collect::<Vec<_>>()
        .join(", ");
    Some(InUse {
        why: format!("the device is in use: {what} connected"),
        by: InUseBy::Clients(counts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Fake {
        clients: AtomicUsize,
        held: Option<String>,
    }

    impl UserSource for Fake {
        fn name(&self) -> &str {
            "NBD"
        }
        fn clients(&self) -> usize {
            self.clients.load(Ordering::Relaxed)
        }
        fn cut(&self) {
            self.clients.store(0, Ordering::Relaxed);
        }
        fn held(&self) -> Option<String> {
            self.held.clone()
        }
    }

    #[test]
    fn nothing_registered_is_not_in_use() {
        let u = Users::default();
        assert_eq!(u.in_use(false), None);
        assert_eq!(u.in_use(true), None);
        assert_eq!(u.clients(), 0);
    }

    #[test]
    fn clients_come_first_and_a_forced_down_skips_them() {
        let u = Users::default();
        let nbd = Arc::new(Fake {
            clients: AtomicUsize::new(2),
            held: None,
        });
        let _n = u.register(nbd.clone());
        let held = u.register(Arc::new(Fake {
            clients: AtomicUsize::new(0),
            held: Some("Device is held open by someone".into()),
        }));
        let busy = u.in_use(false).expect("in use");
        assert_eq!(busy.why, "the device is in use: 2 NBD client(s) connected");
        assert_eq!(busy.clients(), 2);
        assert_eq!(
            busy.refusal(),
            Refusal::InUse {
                by: InUseBy::Clients(vec![ClientCount {
                    frontend: "NBD".into(),
                    count: 2
                }])
            }
        );
        let forced = u.in_use(true).expect("held");
        assert_eq!(
            (forced.why.as_str(), forced.clients()),
            ("Device is held open by someone", 0)
        );
        assert_eq!(forced.refusal(), Refusal::InUse { by: InUseBy::Held });
        drop(held);
        assert_eq!(u.in_use(true), None);
        u.cut_clients();
        assert_eq!(nbd.clients(), 0);
        assert_eq!(u.in_use(false), None);
    }
}
