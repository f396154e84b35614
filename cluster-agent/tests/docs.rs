//! `cluster-agent --generate-docs DIR`: its man pages and completions,
//! checked against its own `--help`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::process::Command;

use rep_testkit::require;

/// The subcommands `--help` lists under "Commands:" (without `help`).
fn help_subcommands(bin: &str) -> Vec<String> {
    let o = Command::new(bin).arg("--help").output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
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
    assert!(!names.is_empty(), "no commands found in --help:\n{text}");
    names
}

#[test]
fn man_page_and_completions_cover_every_subcommand() {
    let bin = env!("CARGO_BIN_EXE_cluster-agent");
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin)
        .arg("--generate-docs")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = dir.path().join("man8/cluster-agent.8");
    let text = fs::read_to_string(&page).unwrap().replace("\\-", "-");
    let bash = fs::read_to_string(dir.path().join("completions/bash/cluster-agent")).unwrap();
    for sub in help_subcommands(bin) {
        assert!(text.contains(&sub), "cluster-agent.8 does not name `{sub}`");
        assert!(bash.contains(&sub), "the bash completion lacks `{sub}`");
        assert!(dir
            .path()
            .join(format!("man8/cluster-agent-{sub}.8"))
            .exists());
    }
    require("man", "man-db");
    let o = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    assert!(
        o.status.success() && !o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
