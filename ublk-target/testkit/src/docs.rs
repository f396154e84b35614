//! Checking the man pages and completions a binary writes with
//! `--generate-docs` (rep_control::docs) against its own `--help`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::tools::require;

/// The subcommands `bin --help` lists under "Commands:" (without `help`).
///
/// # Panics
/// When `bin --help` fails or lists no command.
#[must_use]
pub fn help_subcommands(bin: &str) -> Vec<String> {
    let o = Command::new(bin)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{bin} --help: {e}"));
    assert!(o.status.success(), "{bin} --help failed");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let names: Vec<String> = text
        .lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_owned)
        .collect();
    assert!(
        !names.is_empty(),
        "no commands found in {bin} --help:\n{text}"
    );
    names
}

/// A man page as text, roff's `\-` read as `-`.
///
/// # Panics
/// When the page cannot be read.
#[must_use]
pub fn man_text(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("\\-", "-")
}

/// `man -l` renders the page without an error (needs man-db).
///
/// # Panics
/// When `man` is missing or fails on the page.
pub fn man_renders(path: &Path) {
    require("man", "man-db");
    let o = Command::new("man")
        .arg("-l")
        .arg(path)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .unwrap_or_else(|e| panic!("man -l {}: {e}", path.display()));
    assert!(
        o.status.success() && !o.stdout.is_empty(),
        "man -l {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}
