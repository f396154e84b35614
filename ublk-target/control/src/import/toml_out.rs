//! Writing an imported file: TOML tables whose keys carry a comment saying
//! where each value came from, and `# FILL IN` lines for the values the old
//! configuration did not have. Written by hand rather than with serde: a
//! serializer cannot write comments, and the comments are the point (the
//! admin sees what became of each old line). Values are still quoted by
//! `toml::Value`, so the text is always valid TOML.

use std::fmt::Write as _;

/// The marker of a line the admin has to complete.
pub const FILL_IN: &str = "FILL IN";

/// One key of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A value and where it came from (`drbd.conf:12 rate 10M`).
    Value(toml::Value, String),
    /// A value the source lacks: written as a commented-out key with an
    /// example and the reason, `# key = EXAMPLE  # FILL IN: why`.
    FillIn { example: String, why: String },
}

/// A table in the order its keys were first set; setting a key again
/// replaces its value in place (a resource overriding `common`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    entries: Vec<(String, Entry)>,
}

impl Table {
    pub fn set(&mut self, key: &str, entry: Entry) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, e)) => *e = entry,
            None => self.entries.push((key.to_owned(), entry)),
        }
    }

    pub fn value(&mut self, key: &str, v: impl Into<toml::Value>, from: impl Into<String>) {
        self.set(key, Entry::Value(v.into(), from.into()));
    }

    pub fn fill_in(&mut self, key: &str, example: &str, why: impl Into<String>) {
        self.set(
            key,
            Entry::FillIn {
                example: example.to_owned(),
                why: why.into(),
            },
        );
    }

    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.retain(|(k, _)| k != key);
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many keys are left to fill in.
    #[must_use]
    pub fn fill_ins(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::FillIn { .. }))
            .count()
    }

    /// `[header]` (or `[[header]]` when `array`) and its keys, appended to `out`.
    pub fn write(&self, out: &mut String, header: &str, array: bool) {
        if array {
            let _ = writeln!(out, "[[{header}]]");
        } else {
            let _ = writeln!(out, "[{header}]");
        }
        for (key, e) in &self.entries {
            match e {
                Entry::Value(v, from) => {
                    let line = format!("{key} = {v}");
                    if from.is_empty() {
                        let _ = writeln!(out, "{line}");
                    } else {
                        let _ = writeln!(out, "{line:<32} # {}", one_line(from));
                    }
                }
                Entry::FillIn { example, why } => {
                    let _ = writeln!(out, "# {key} = {example}   # {FILL_IN}: {}", one_line(why));
                }
            }
        }
    }
}

/// Comments stay on one line whatever the source text held.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// A TOML string literal of `s`.
#[must_use]
pub fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
