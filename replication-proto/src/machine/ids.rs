//! Typed request ids and tokens: what names an application request, a local
//! data operation and a metadata write between the [`Node`] and its driver.
//!
//! Three spaces that were all `u64` once: a driver could hand a disk token
//! back as an application id and the compiler would not notice. Each has a
//! type of its own now.
//!
//! - [`AppId`]: named by the driver (the application's request), answered
//!   by [`Action::Complete`].
//! - [`IoToken`]: minted by the node for `LocalRead`/`LocalWrite`/
//!   `LocalFlush`, answered by [`Event::LocalDone`].
//! - [`MetaToken`]: minted by the node for `WriteSuper`/`WriteAl`/
//!   `WriteBitmap`, answered by [`Event::MetaDone`].
//!
//! The node mints both kinds of token from one counter, below
//! [`NODE_TOKEN_LIMIT`]: a driver that passes them through an untyped
//! layer (a ring's user data) may use the values from the limit up for
//! operations of its own, and [`IoToken::from_raw`] asserts (debug builds)
//! that it is not handed one of those.
//!
//! [`Node`]: crate::machine::Node
//! [`Action::Complete`]: crate::machine::Action::Complete
//! [`Event::LocalDone`]: crate::machine::Event::LocalDone
//! [`Event::MetaDone`]: crate::machine::Event::MetaDone

use std::fmt;

/// The node's tokens stay below this value; a driver may use the values
/// from here up for tokens of its own in the same space.
pub const NODE_TOKEN_LIMIT: u64 = 1 << 62;

/// An application request: the driver picks it when it hands the request
/// in ([`crate::machine::Event::AppWrite`], ...) and gets it back once, in
/// [`crate::machine::Action::Complete`]. The node only compares ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppId(pub u64);

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "app#{}", self.0)
    }
}

/// A local data operation the node asked for (`LocalRead`, `LocalWrite`,
/// `LocalFlush`); the driver hands it back once in
/// [`crate::machine::Event::LocalDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoToken(u64);

/// A metadata write the node asked for (`WriteSuper`, `WriteAl`,
/// `WriteBitmap`); the driver hands it back once in
/// [`crate::machine::Event::MetaDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetaToken(u64);

macro_rules! node_token {
    ($t:ident, $prefix:literal) => {
        impl $t {
            /// The value, for a driver carrying the token through an
            /// untyped layer (a ring's user data, a channel); always below
            /// [`NODE_TOKEN_LIMIT`].
            #[must_use]
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// The token whose [`Self::raw`] value is `raw`, coming back
            /// out of such a layer. `raw` must have come from `raw()`: a
            /// value from the driver's own space (from
            /// [`NODE_TOKEN_LIMIT`] up) is a bug of the driver.
            #[must_use]
            pub fn from_raw(raw: u64) -> Self {
                debug_assert!(
                    raw < NODE_TOKEN_LIMIT,
                    "{raw:#x} is a driver's own token, not the node's"
                );
                Self(raw)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "#{}"), self.0)
            }
        }
    };
}

node_token!(IoToken, "io");
node_token!(MetaToken, "meta");

/// Where the node's tokens come from: one counter for data and metadata
/// operations alike, from 1 up.
#[derive(Debug)]
pub(crate) struct TokenSource {
    next: u64,
}

impl Default for TokenSource {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl TokenSource {
    fn next(&mut self) -> u64 {
        let t = self.next;
        // 2^62 operations: centuries at any disk's rate.
        debug_assert!(t < NODE_TOKEN_LIMIT, "node tokens exhausted");
        self.next += 1;
        t
    }

    pub(crate) fn io(&mut self) -> IoToken {
        IoToken(self.next())
    }

    pub(crate) fn meta(&mut self) -> MetaToken {
        MetaToken(self.next())
    }
}
