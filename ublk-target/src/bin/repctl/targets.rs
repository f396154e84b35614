//! Which resources a command acts on (`repctl primary r1`, `repctl status`,
//! `all`), and running a verb for each of them in turn, like drbdadm.
//!
//! [`targets`] turns the command line into [`Target`]s with
//! `rep_control::resources`: `--config FILE` is that file (one resource, as
//! before there were directories); otherwise the RESOURCE argument names a
//! file of `--config-dir`, `all` takes every one, and naming none takes all
//! for `status` and `dump` and the only one for the other verbs. A verb
//! gets one [`Target`] at a time ([`each`]): its file, this node's name,
//! the run directory, and whether other resources run in the same command
//! (then its output names the resource where it would not otherwise).

use std::path::PathBuf;

use clap::Args;
use rep_control::client::socket_path;
use rep_control::config::Config;
use rep_control::resources::{self, ResourceFile, ResourcesError, Unnamed};

use super::{eprintln_safe, Cli, Failure};

/// The RESOURCE argument every verb that acts on a resource takes
/// (flattened into its arguments).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Select {
    /// The resource: NAME for --config-dir's NAME.toml, or `all` [default:
    /// the only one there; status and dump: all]
    #[arg(value_name = "RESOURCE")]
    pub(crate) resource: Option<String>,
}

/// One resource a command acts on.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The resource's name and its file.
    pub(crate) file: ResourceFile,
    /// `--node`: this node's name in the file (None: the host name).
    pub(crate) node: Option<String>,
    /// `--run-dir`: where the daemons' sockets and logs are.
    pub(crate) run_dir: PathBuf,
    /// Whether the command acts on other resources too.
    pub(crate) several: bool,
}

impl Target {
    /// The resource file, read, validated and checked to configure the
    /// resource it is named for.
    pub(crate) fn load(&self) -> Result<Config, Failure> {
        Ok(self.file.load()?)
    }

    /// The resource file's path (for messages and for repd's `--config`).
    pub(crate) fn config(&self) -> &std::path::Path {
        &self.file.path
    }

    /// The resource's and this node's names, from the file.
    pub(crate) fn names(&self) -> Result<(String, String), Failure> {
        let cfg = self.load()?;
        let me = cfg.local(self.node.as_deref())?.0.name.clone();
        Ok((cfg.resource.name, me))
    }

    /// This node's control socket for the resource.
    pub(crate) fn socket(&self) -> Result<PathBuf, Failure> {
        let (r, n) = self.names()?;
        Ok(socket_path(&self.run_dir, &r, &n))
    }

    /// `"r0: "` when the command acts on several resources, else nothing:
    /// for output lines that do not name the resource themselves.
    pub(crate) fn prefix(&self) -> String {
        if self.several {
            format!("{}: ", self.file.name)
        } else {
            String::new()
        }
    }
}

/// The resources the command line selects (see the module's doc), in
/// order of their names: `wanted` is the RESOURCE argument, `unnamed` what
/// naming none means for the verb.
pub(crate) fn targets(
    cli: &Cli,
    wanted: Option<&str>,
    unnamed: Unnamed,
) -> Result<Vec<Target>, Failure> {
    let files = resources::resolve(cli.config.as_deref(), &cli.config_dir, wanted, unnamed)?;
    let several = files.len() > 1;
    Ok(files
        .into_iter()
        .map(|file| Target {
            file,
            node: cli.node.clone(),
            run_dir: cli.run_dir.clone(),
            several,
        })
        .collect())
}

/// Runs `verb` for each resource `sel` selects ([`targets`]), in turn.
/// One resource: its result. Several: like drbdadm, it goes on after a
/// failure, printing it with the resource's name, and fails at the end
/// naming those that failed.
pub(crate) fn each(
    cli: &Cli,
    sel: &Select,
    unnamed: Unnamed,
    mut verb: impl FnMut(&Target) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let targets = targets(cli, sel.resource.as_deref(), unnamed)?;
    if let [one] = targets.as_slice() {
        return verb(one);
    }
    let mut failed = Vec::new();
    for t in &targets {
        if let Err(Failure(msg)) = verb(t) {
            eprintln_safe(&format!("repctl: error: {}{msg}", t.prefix()));
            failed.push(t.file.name.as_str());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure(format!(
            "{} of {} resources failed: {}",
            failed.len(),
            targets.len(),
            failed.join(", ")
        )))
    }
}

impl From<ResourcesError> for Failure {
    fn from(e: ResourcesError) -> Self {
        match e {
            ResourcesError::Config(e) => e.into(),
            e => Failure(e.to_string()),
        }
    }
}
