//! `cluster-agent import-heartbeat DIR --out FILE [--resource RES]`: the
//! command around [`super::import_heartbeat`]: reading the resource file,
//! writing the table or the whole resource file, validating it as the agent
//! will.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{import_heartbeat, ResourceInfo};
use crate::config::AgentConfig;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// heartbeat's configuration directory, with ha.cf, authkeys and haresources (/etc/ha.d)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where to write: the [cluster] table alone, or with --resource the whole resource file
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The resource file the table is for (e.g. one `repctl import-drbd-conf` wrote): its node
    /// names and addresses are checked and used, and --out gets it with the [cluster] table
    /// appended
    #[arg(long, value_name = "RESOURCE_FILE")]
    pub resource: Option<PathBuf>,
    /// Overwrite --out if it exists
    #[arg(long)]
    pub force: bool,
}

/// Lines still to fill in: commented-out keys marked FILL IN.
fn left_to_fill(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("# ") && l.contains("# FILL IN:"))
        .count()
}

/// Runs the import; warnings go to stderr, the summary to stdout.
///
/// # Errors
/// A message saying what went wrong; nothing is written then.
pub fn run(a: &ImportArgs) -> Result<(), String> {
    let res_text = match &a.resource {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let info = match (&res_text, &a.resource) {
        (Some(t), Some(p)) => Some(
            ResourceInfo::from_toml(t)
                .map_err(|e| format!("resource file {}: {e}", p.display()))?,
        ),
        _ => None,
    };
    let imported = import_heartbeat(&a.dir, info.as_ref()).map_err(|e| e.to_string())?;
    for w in &imported.warnings {
        eprintln!("cluster-agent: warning: {w}");
    }
    let text = match &res_text {
        Some(t) => format!("{}\n\n{}", t.trim_end(), imported.text),
        None => imported.text.clone(),
    };
    if a.out.exists() && !a.force {
        return Err(format!(
            "{} exists already; nothing was written (pass --force to overwrite it)",
            a.out.display()
        ));
    }
    let missing = left_to_fill(&text);
    if missing == 0 {
        if let Some(i) = &info {
            validate(&text, &a.out, i)?;
        }
    }
    std::fs::write(&a.out, &text).map_err(|e| format!("cannot write {}: {e}", a.out.display()))?;
    println!(
        "{}",
        summary(
            &a.out,
            a.resource.is_some(),
            missing,
            imported.warnings.len()
        )
    );
    Ok(())
}

/// The merged file loads as the agent loads it, for each node.
fn validate(text: &str, out: &Path, info: &ResourceInfo) -> Result<(), String> {
    for (node, _) in &info.nodes {
        AgentConfig::from_str_named(text, out, Some(node)).map_err(|e| {
            format!("the merged resource file does not pass the agent's validation: {e}")
        })?;
    }
    Ok(())
}

fn summary(out: &Path, merged: bool, missing: usize, warnings: usize) -> String {
    let what = if merged {
        format!(
            "wrote {} (the resource file with its [cluster] table)",
            out.display()
        )
    } else {
        format!(
            "wrote {}: append it to the resource file (`cat {} >> /etc/rep/NAME.toml`, on both nodes)",
            out.display(),
            out.display()
        )
    };
    let state = match (missing, merged) {
        (0, true) => "it passes the agent's validation".to_owned(),
        (0, false) => "give --resource to check it against the resource file".to_owned(),
        (n, _) => format!(
            "{n} value(s) missing in the heartbeat files: complete the lines marked FILL IN"
        ),
    };
    format!(
        "{what}; {state}\n{warnings} option(s) not imported as they were: see the warnings above (on stderr)"
    )
}
