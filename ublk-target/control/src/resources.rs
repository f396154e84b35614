//! Several resources per host, drbdadm-style: the resource files of a
//! configuration directory (`/etc/rep/*.toml`, one resource per file, named
//! after it) and which of them a command acts on (`r1`, `all`, or none).
//!
//! - [`list`]: the resource files of a directory, sorted by name. It reads
//!   the directory only; each file is read by [`ResourceFile::load`], which
//!   refuses a file whose `[resource] name` is not its file name, so that
//!   `repctl primary r1` can never act on a file that configures `r0`.
//! - [`select`]: a user's choice (a name, `all`, or nothing) in a directory.
//! - [`from_config_file`]: the same for one file given by `--config FILE`.
//! - [`resolve`]: either of the two, as `repctl` does it.
//!
//! A service that runs one resource (`repd --config /etc/rep/r0.toml` from
//! a `rep@r0` unit) needs none of this; [`ResourceFile::in_dir`] names the
//! file of a resource, and [`ResourceFile::load`] reads it with the check.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// Where the resource files are unless `--config-dir` says otherwise.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/rep";

/// The word that selects every resource, as in `drbdadm up all`.
pub const ALL: &str = "all";

/// The most resource files a directory may hold: more is a mistake (a
/// directory of other files) rather than a host's resources.
pub const MAX_RESOURCES: usize = 1024;

/// One resource and the file that configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFile {
    /// The resource's name: the file's name without `.toml` in a
    /// configuration directory, or the `[resource] name` of a file given
    /// by `--config`.
    pub name: String,
    /// The resource file.
    pub path: PathBuf,
}

/// What the user named nothing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unnamed {
    /// Every resource (`repctl status`, `repctl dump`).
    All,
    /// The only resource of the directory; with several, an error that
    /// lists them (a verb that changes something must not guess).
    OnlyOne,
}

/// Why the resources to act on could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error(
        "cannot read the configuration directory {}: {source}; it holds one file per \
         resource (r0.toml, ...): pass --config-dir DIR, or --config FILE for one file",
        dir.display()
    )]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no resource files (*.toml) in {}: write one per resource, named after it \
         (r0.toml for resource r0; see ublk-target/examples/r0.toml), or pass --config FILE",
        dir.display()
    )]
    Empty { dir: PathBuf },
    #[error(
        "{} holds more than {MAX_RESOURCES} *.toml files; is it the right --config-dir?",
        dir.display()
    )]
    TooMany { dir: PathBuf },
    #[error(
        "{}: `{ALL}` means every resource, so no resource file can be called {ALL}.toml; \
         rename it (and its [resource] name)",
        path.display()
    )]
    Reserved { path: PathBuf },
    #[error("no resource `{name}` in {}; the resources there are: {known}", dir.display())]
    Unknown {
        name: String,
        dir: PathBuf,
        known: String,
    },
    #[error(
        "{} holds several resources ({known}): name the one to act on after the command \
         (e.g. `{first}`), or `{ALL}` for every one",
        dir.display()
    )]
    Ambiguous {
        dir: PathBuf,
        known: String,
        first: String,
    },
    #[error(
        "{}: the file is named for resource `{stem}` but its [resource] name is `{name}`; \
         a resource's file must be called after it: rename the file to {name}.toml or fix \
         its [resource] name",
        path.display()
    )]
    NameMismatch {
        path: PathBuf,
        stem: String,
        name: String,
    },
    #[error(
        "resource `{wanted}` was named, but {} (--config) configures resource `{name}`; \
         name `{name}`, or drop --config to find `{wanted}` in the configuration directory",
        path.display()
    )]
    NotInFile {
        wanted: String,
        path: PathBuf,
        name: String,
    },
    /// The file itself is wrong (unreadable, invalid): the message is the
    /// one `repd` would print.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ResourceFile {
    /// The file of resource `name` in the configuration directory `dir`:
    /// `dir/name.toml` (which may not exist).
    #[must_use]
    pub fn in_dir(dir: &Path, name: &str) -> ResourceFile {
        ResourceFile {
            name: name.to_owned(),
            path: dir.join(format!("{name}.toml")),
        }
    }

    /// Read and validate the file ([`Config::load`]), and check that it
    /// configures the resource it is named for.
    ///
    /// # Errors
    /// [`ResourcesError::Config`] for an unreadable or invalid file,
    /// [`ResourcesError::NameMismatch`] naming both names.
    pub fn load(&self) -> Result<Config, ResourcesError> {
        let cfg = Config::load(&self.path)?;
        if cfg.resource.name != self.name {
            return Err(ResourcesError::NameMismatch {
                path: self.path.clone(),
                stem: self.name.clone(),
                name: cfg.resource.name,
            });
        }
        Ok(cfg)
    }
}

/// The resource files of `dir` (`*.toml`, directories and hidden files
/// left out), sorted by name. Reads the directory, not the files.
///
/// # Errors
/// [`ResourcesError::ReadDir`], [`ResourcesError::Empty`],
/// [`ResourcesError::TooMany`], or [`ResourcesError::Reserved`] for a file
/// called `all.toml`.
pub fn list(dir: &Path) -> Result<Vec<ResourceFile>, ResourcesError> {
    let read_err = |source| ResourcesError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let Some(stem) = resource_stem(&path) else {
            continue;
        };
        if found.len() == MAX_RESOURCES {
            return Err(ResourcesError::TooMany {
                dir: dir.to_owned(),
            });
        }
        if stem == ALL {
            return Err(ResourcesError::Reserved { path });
        }
        found.push(ResourceFile { name: stem, path });
    }
    if found.is_empty() {
        return Err(ResourcesError::Empty {
            dir: dir.to_owned(),
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The resource name of `path` if it is a resource file: `NAME.toml`, not
/// hidden, and a file (or a link to one), not a directory.
fn resource_stem(path: &Path) -> Option<String> {
    let file_name = path.file_name()?.to_string_lossy();
    let stem = file_name.strip_suffix(".toml")?;
    if stem.is_empty() || stem.starts_with('.') || !path.is_file() {
        return None;
    }
    Some(stem.to_owned())
}

/// The resources of `dir` a command acts on: `wanted` is the name the user
/// gave (or [`ALL`]); `None` means what `unnamed` says.
///
/// # Errors
/// Those of [`list`]; [`ResourcesError::Unknown`] for a name without a
/// file, [`ResourcesError::Ambiguous`] for [`Unnamed::OnlyOne`] with
/// several resources; both list the resources there are.
pub fn select(
    dir: &Path,
    wanted: Option<&str>,
    unnamed: Unnamed,
) -> Result<Vec<ResourceFile>, ResourcesError> {
    let all = list(dir)?;
    let known = || {
        all.iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (wanted, unnamed) {
        (Some(ALL), _) | (None, Unnamed::All) => Ok(all),
        (Some(name), _) => match all.iter().find(|r| r.name == name) {
            Some(r) => Ok(vec![r.clone()]),
            None => Err(ResourcesError::Unknown {
                name: name.to_owned(),
                dir: dir.to_owned(),
                known: known(),
            }),
        },
        (None, Unnamed::OnlyOne) => match all.as_slice() {
            [_] => Ok(all),
            _ => Err(ResourcesError::Ambiguous {
                dir: dir.to_owned(),
                known: known(),
                first: all.first().map(|r| r.name.clone()).unwrap_or_default(),
            }),
        },
    }
}

/// The resource of one file given by `--config FILE`: its name is the one
/// in the file, which `wanted` (if given, and not [`ALL`]) must equal.
///
/// # Errors
/// [`ResourcesError::Config`] when the file cannot be read or is invalid,
/// [`ResourcesError::NotInFile`] when it configures another resource.
pub fn from_config_file(path: &Path, wanted: Option<&str>) -> Result<ResourceFile, ResourcesError> {
    let cfg = Config::load(path)?;
    let name = cfg.resource.name;
    match wanted {
        Some(w) if w != ALL && w != name => Err(ResourcesError::NotInFile {
            wanted: w.to_owned(),
            path: path.to_owned(),
            name,
        }),
        _ => Ok(ResourceFile {
            name,
            path: path.to_owned(),
        }),
    }
}

/// `repctl`'s choice: the file `config` if given (`--config FILE`, one
/// resource as before there were directories), else [`select`] in `dir`.
///
/// # Errors
/// Those of [`from_config_file`] or [`select`].
pub fn resolve(
    config: Option<&Path>,
    dir: &Path,
    wanted: Option<&str>,
    unnamed: Unnamed,
) -> Result<Vec<ResourceFile>, ResourcesError> {
    match config {
        Some(path) => Ok(vec![from_config_file(path, wanted)?]),
        None => select(dir, wanted, unnamed),
    }
}

#[cfg(test)]
mod tests;
