//! The event stream (`repctl events`, like `drbdsetup events2`): one
//! [`Event`] per line, the JSON repd writes on the control socket after
//! [`crate::protocol::ControlCmd::Events`], and its text form.
//!
//! An event names its kind (`exists`, `create`, `change`, `destroy` as in
//! events2, and `call` for a one-off happening such as a verify result),
//! its object (`resource`, `connection`, `device`, `peer-device`, `error`,
//! `verify`, `out-of-sync` (a range a verify found), `resize`,
//! `split-brain`, `lost-events`; `-` on the `exists -` line that
//! ends the current state), the resource (`name`) and the fields of the
//! object that changed, with events2's names (`role`, `conn-name`,
//! `connection`, `disk`, `peer-disk`, `replication`, `done`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an event says about its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The object's state at the time the watcher asked (`--now`).
    Exists,
    /// The object appeared (an error condition began).
    Create,
    /// Some of the object's fields changed: only those are listed.
    Change,
    /// The object went away (an error condition cleared, repd stopped).
    Destroy,
    /// A one-off happening: a verify result, a split brain found, this
    /// watcher lost events.
    Call,
}

impl EventKind {
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Self::Exists => "exists",
            Self::Create => "create",
            Self::Change => "change",
            Self::Destroy => "destroy",
            Self::Call => "call",
        }
    }
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When repd saw it: RFC 3339 in UTC with milliseconds
    /// (`2026-12-06T16:03:37.123Z`).
    pub time: String,
    pub kind: EventKind,
    pub object: String,
    /// The resource.
    pub name: String,
    /// The object's fields (those that changed, for `change`); strings,
    /// numbers (bytes, `done` in percent) and booleans.
    #[serde(flatten)]
    pub fields: BTreeMap<String, Value>,
}

/// The order fields are printed in the text form: the object's identity
/// first, as events2 does, then its state; any other field after these,
/// alphabetically.
const FIELD_ORDER: &[&str] = &[
    "conn-name",
    "error",
    "connection",
    "role",
    "suspended",
    "split-brain",
    "disk",
    "replication",
    "peer-disk",
    "done",
    "resume",
    "verified",
    "out-of-sync",
    "ranges",
    "start-bytes",
    "len-bytes",
    "old-size-bytes",
    "new-size-bytes",
    "count",
    "message",
];

impl Event {
    /// An event stamped now.
    #[must_use]
    pub fn now(kind: EventKind, object: &str, name: &str) -> Self {
        Self {
            time: rfc3339_now(),
            kind,
            object: object.into(),
            name: name.into(),
            fields: BTreeMap::new(),
        }
    }

    /// Adds a field (builder style).
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// The `exists -` line that ends the current state.
    #[must_use]
    pub fn is_end_of_state(&self) -> bool {
        self.kind == EventKind::Exists && self.object == "-"
    }

    /// The text form, like events2: `change connection name:r0
    /// conn-name:beta connection:Connected role:Secondary`; with
    /// `timestamp` the time comes first, as `drbdsetup events2
    /// --timestamps` prints it. Strings with spaces or quotes are quoted
    /// (JSON string syntax); booleans read `yes`/`no`; `done` has two
    /// decimals.
    #[must_use]
    pub fn text(&self, timestamp: bool) -> String {
        let mut s = String::new();
        if timestamp {
            s.push_str(&self.time);
            s.push(' ');
        }
        s.push_str(self.kind.word());
        s.push(' ');
        s.push_str(&self.object);
        if self.is_end_of_state() {
            return s;
        }
        let _ = write!(s, " name:{}", quoted(&self.name));
        let known = FIELD_ORDER
            .iter()
            .filter_map(|k| self.fields.get_key_value(*k));
        let others = self
            .fields
            .iter()
            .filter(|(k, _)| !FIELD_ORDER.contains(&k.as_str()));
        for (k, v) in known.chain(others) {
            let v = match v {
                Value::String(t) => quoted(t),
                Value::Bool(b) => (if *b { "yes" } else { "no" }).to_string(),
                Value::Number(n) if k == "done" => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
                Value::Null => "none".into(),
                other => other.to_string(),
            };
            let _ = write!(s, " {k}:{v}");
        }
        s
    }
}

/// A value as it goes into a text line: as it is, unless a space, a quote
/// or nothing at all would make the line ambiguous.
fn quoted(t: &str) -> String {
    if t.is_empty() || t.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
        serde_json::to_string(t).unwrap_or_default()
    } else {
        t.to_string()
    }
}

/// Now as RFC 3339 in UTC with milliseconds.
#[must_use]
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(kind: EventKind, object: &str) -> Event {
        let mut e = Event::now(kind, object, "r0");
        e.time = "2026-12-06T16:03:37.123Z".into();
        e
    }

    /// The text form prints identity before state, in events2's words,
    /// whatever order the fields were added in.
    #[test]
    fn text_lines_read_like_events2() {
        let e = at(EventKind::Change, "peer-device")
            .with("peer-disk", "Inconsistent")
            .with("done", 42.1)
            .with("replication", "SyncSource")
            .with("conn-name", "beta");
        assert_eq!(
            e.text(false),
            "change peer-device name:r0 conn-name:beta replication:SyncSource \
             peer-disk:Inconsistent done:42.10"
        );
        assert_eq!(
            e.text(true),
            format!("2026-12-06T16:03:37.123Z {}", e.text(false))
        );
        let e = at(EventKind::Exists, "resource")
            .with("role", "Primary")
            .with("suspended", false);
        assert_eq!(
            e.text(false),
            "exists resource name:r0 role:Primary suspended:no"
        );
        assert_eq!(at(EventKind::Exists, "-").text(false), "exists -");
        let e = at(EventKind::Create, "error")
            .with("error", "local-io")
            .with("message", "local write of 4096 bytes at 0 failed");
        assert_eq!(
            e.text(false),
            "create error name:r0 error:local-io message:\"local write of 4096 bytes at 0 failed\""
        );
    }

    /// The JSON is flat (fields beside time, kind, object and name) and
    /// reads back to the same event.
    #[test]
    fn json_lines_are_flat_and_read_back() {
        let e = at(EventKind::Change, "connection")
            .with("conn-name", "beta")
            .with("connection", "Connected");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"time":"2026-12-06T16:03:37.123Z","kind":"change","object":"connection","name":"r0","conn-name":"beta","connection":"Connected"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }

    #[test]
    fn the_time_is_rfc3339_utc_with_milliseconds() {
        let t = rfc3339_now();
        assert_eq!(t.len(), "2026-12-06T16:03:37.123Z".len(), "{t}");
        assert!(
            t.ends_with('Z') && t.as_bytes().get(10) == Some(&b'T'),
            "{t}"
        );
    }
}
