//! [`ConfigError`]: everything that can be wrong with a resource file.

use std::path::PathBuf;

/// Everything that can be wrong with a configuration file. Every message
/// names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax errors, unknown keys, values of the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value that parsed but is not acceptable.
    #[error("config file {path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "config file {path}: no [[node]] is named `{name}` (taken from {source_of_name}); the nodes are {known}; \
         pass --node with one of those names"
    )]
    UnknownNode {
        path: PathBuf,
        name: String,
        known: String,
        source_of_name: &'static str,
    },
    #[error(
        "config file {path}: node `{node}`: disk {disk} does not exist; create it (for a test, e.g. \
         `truncate -s 1G {disk}`) or fix `disk` in the [[node]] entry of `{node}`"
    )]
    DiskMissing {
        path: PathBuf,
        node: String,
        disk: PathBuf,
    },
    /// A TLS file (`tls-ca`, `tls-cert`, `tls-key`) that cannot be used.
    #[error("config file {path}: TLS file {file}: {message}")]
    Tls {
        path: PathBuf,
        file: PathBuf,
        message: String,
    },
    #[error("cannot determine this machine's host name ({message}); pass --node NAME")]
    Hostname { message: String },
}
