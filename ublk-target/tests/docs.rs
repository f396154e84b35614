//! `--generate-docs DIR`: repctl's and repd's man pages and completions,
//! checked against the binaries' own `--help`, and the hand-written
//! rep.toml(5) against the example resource file.

// Test helpers outside #[test] functions are not covered by clippy.toml's
// allow-*-in-tests settings.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rep_testkit::{help_subcommands, man_renders, man_text};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/r0.toml");
const REP_TOML_5: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/man/rep.toml.5");

/// Runs `bin --generate-docs DIR` into a fresh temp dir.
fn generate(bin: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin)
        .arg("--generate-docs")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{bin} --generate-docs failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    dir
}

#[test]
fn repctl_man_page_and_completions_cover_every_subcommand() {
    let bin = env!("CARGO_BIN_EXE_repctl");
    let dir = generate(bin);
    let page: PathBuf = dir.path().join("man8/repctl.8");
    let text = man_text(&page);
    man_renders(&page);
    let bash = fs::read_to_string(dir.path().join("completions/bash/repctl")).unwrap();
    for sub in help_subcommands(bin) {
        assert!(text.contains(&sub), "repctl.8 does not name `{sub}`");
        let sub_page = dir.path().join(format!("man8/repctl-{sub}.8"));
        assert!(sub_page.exists(), "{} is missing", sub_page.display());
        assert!(bash.contains(&sub), "the bash completion lacks `{sub}`");
    }
    for f in ["zsh/_repctl", "fish/repctl.fish"] {
        assert!(
            dir.path().join("completions").join(f).exists(),
            "{f} missing"
        );
    }
}

#[test]
fn repd_man_page_renders() {
    let dir = generate(env!("CARGO_BIN_EXE_repd"));
    let page = dir.path().join("man8/repd.8");
    assert!(man_text(&page).contains("--config"));
    man_renders(&page);
    assert!(dir.path().join("completions/bash/repd").exists());
}

#[test]
fn generate_docs_into_an_unwritable_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_repctl"))
        .arg("--generate-docs")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.starts_with("repctl: error: cannot write the docs"),
        "{err}"
    );
}

#[test]
fn rep_toml_5_names_every_table_of_the_example() {
    man_renders(Path::new(REP_TOML_5));
    let text = man_text(Path::new(REP_TOML_5));
    let example: toml::Table = fs::read_to_string(EXAMPLE).unwrap().parse().unwrap();
    for (table, value) in &example {
        let header = if value.is_array() {
            format!("[[{table}]]")
        } else {
            format!("[{table}]")
        };
        assert!(text.contains(&header), "rep.toml.5 lacks {header}");
    }
}
