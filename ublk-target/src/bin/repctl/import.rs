//! `repctl import-drbd-conf FILE --out DIR`: a drbd.conf into one resource
//! file per resource (the mapping is `rep_control::import`).

use std::path::{Path, PathBuf};

use clap::Args;
use rep_control::import::{import_drbd_conf, ImportedResource};

use super::{eprintln_safe, print_out, Failure};

#[derive(Debug, Args)]
pub(super) struct ImportDrbdConfArgs {
    /// The drbd.conf to read (its `include`s are followed, relative to its directory)
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The directory to write NAME.toml into, one file per resource (created if missing)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Overwrite resource files that exist already in DIR
    #[arg(long)]
    force: bool,
}

pub(super) fn import_drbd(a: &ImportDrbdConfArgs) -> Result<(), Failure> {
    let imported = import_drbd_conf(&a.file).map_err(|e| Failure(e.to_string()))?;
    for w in &imported.warnings {
        eprintln_safe(&format!("repctl: warning: {w}"));
    }
    let targets: Vec<(PathBuf, &ImportedResource)> = imported
        .resources
        .iter()
        .map(|r| Ok((target(&a.out, &r.name)?, r)))
        .collect::<Result<_, Failure>>()?;
    if !a.force {
        if let Some((p, _)) = targets.iter().find(|(p, _)| p.exists()) {
            return Err(Failure(format!(
                "{} exists already; nothing was written (pass --force to overwrite, or another --out)",
                p.display()
            )));
        }
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure(format!("cannot create {}: {e}", a.out.display())))?;
    let mut out = String::new();
    for (p, r) in &targets {
        std::fs::write(p, &r.text)
            .map_err(|e| Failure(format!("cannot write {}: {e}", p.display())))?;
        if r.fill_ins == 0 {
            out.push_str(&format!(
                "wrote {}: valid (check it with `repctl --config {} dump`)\n",
                p.display(),
                p.display()
            ));
        } else {
            out.push_str(&format!(
                "wrote {}: {} value(s) missing in drbd.conf: complete the lines marked FILL IN, \
                 then check it with `repctl --config {} dump`\n",
                p.display(),
                r.fill_ins,
                p.display()
            ));
        }
    }
    out.push_str(&format!(
        "{} option(s) not imported as they were: see the warnings above (on stderr)\n",
        imported.warnings.len()
    ));
    print_out(&out)
}

/// `DIR/NAME.toml`, for a name that cannot leave DIR.
fn target(dir: &Path, name: &str) -> Result<PathBuf, Failure> {
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !safe {
        return Err(Failure(format!(
            "resource name {name:?}: rep resource names are letters, digits, '-', '_' and '.'; \
             rename the resource in drbd.conf"
        )));
    }
    Ok(dir.join(format!("{name}.toml")))
}
