//! `cluster-agent --generate-docs DIR`: its man pages and completions,
//! checked against its own `--help`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::process::Command;

use rep_testkit::{help_subcommands, man_renders, man_text};

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
    let text = man_text(&page);
    let bash = fs::read_to_string(dir.path().join("completions/bash/cluster-agent")).unwrap();
    for sub in help_subcommands(bin) {
        assert!(text.contains(&sub), "cluster-agent.8 does not name `{sub}`");
        assert!(bash.contains(&sub), "the bash completion lacks `{sub}`");
        assert!(dir
            .path()
            .join(format!("man8/cluster-agent-{sub}.8"))
            .exists());
    }
    man_renders(&page);
}
