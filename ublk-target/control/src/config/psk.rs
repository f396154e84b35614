//! TLS pre-shared key files (`[net] tls-psk-file`, `[[node]]
//! nbd-tls-psk-file`): the `identity:hexkey` lines that GnuTLS' `psktool`,
//! nbdkit, qemu and libnbd use, read with every check a user can get
//! wrong: a key file other users can read, a line that is not
//! `identity:hexkey`, a key too short to be a key, the same identity twice.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Config, ConfigError};

/// Largest PSK file read.
pub const PSK_FILE_MAX_BYTES: u64 = 64 << 10;
/// Most `identity:key` lines in one file.
pub const PSK_LINES_MAX: usize = 1024;
/// Shortest key accepted: 128 bits (`psktool` makes 256).
pub const PSK_KEY_MIN_BYTES: usize = 16;
/// Longest key accepted (OpenSSL's own limit is 512 bytes).
pub const PSK_KEY_MAX_BYTES: usize = 64;
/// Longest identity accepted (OpenSSL 3 takes 256 bytes, older ones 128).
pub const PSK_IDENTITY_MAX_BYTES: usize = 128;

/// One `identity:key` line.
#[derive(Clone, PartialEq, Eq)]
pub struct PskEntry {
    pub identity: String,
    pub key: Vec<u8>,
}

impl fmt::Debug for PskEntry {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskEntry")
            .field("identity", &self.identity)
            .field("key_bytes", &self.key.len())
            .finish()
    }
}

/// The keys of a PSK file, in file order; at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PskKeys {
    entries: Vec<PskEntry>,
}

impl PskKeys {
    /// The first line: the identity and key this node offers when it dials.
    #[must_use]
    pub fn first(&self) -> Option<&PskEntry> {
        self.entries.first()
    }

    /// The key of `identity`, if the file has it.
    #[must_use]
    pub fn key_for(&self, identity: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.identity.as_bytes() == identity)
            .map(|e| e.key.as_slice())
    }

    /// Every identity, for messages.
    #[must_use]
    pub fn identities(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.identity.as_str()).collect()
    }

    /// Parses the text of a PSK file.
    ///
    /// # Errors
    /// What is wrong, naming the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<PskEntry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if entries.len() == PSK_LINES_MAX {
                return Err(format!("more than {PSK_LINES_MAX} keys"));
            }
            let entry = parse_line(line).map_err(|m| format!("line {}: {m}", n + 1))?;
            if entries.iter().any(|e| e.identity == entry.identity) {
                return Err(format!(
                    "line {}: identity \"{}\" appears twice; give each identity one key",
                    n + 1,
                    entry.identity
                ));
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err("holds no key; expected lines \"identity:hexkey\" \
                 (make one with `psktool -u IDENTITY -p FILE`)"
                .to_owned());
        }
        Ok(Self { entries })
    }

    /// Reads and checks a PSK file: owned by someone, readable by no one
    /// else, at most [`PSK_FILE_MAX_BYTES`], well formed.
    ///
    /// # Errors
    /// What is wrong with the file and how to fix it.
    pub fn load(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
        let meta = f.metadata().map_err(|e| format!("cannot stat it: {e}"))?;
        if !meta.is_file() {
            return Err("is not a regular file".to_owned());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(format!(
                "other users can read or change this key (mode {mode:03o}); \
                 make it private: chmod 600 {}",
                path.display()
            ));
        }
        let mut buf = Vec::new();
        f.take(PSK_FILE_MAX_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if u64::try_from(buf.len()).unwrap_or(u64::MAX) > PSK_FILE_MAX_BYTES {
            return Err(format!(
                "larger than {PSK_FILE_MAX_BYTES} bytes; is it really a PSK file?"
            ));
        }
        let text = String::from_utf8(buf).map_err(|_| "is not text".to_owned())?;
        Self::parse(&text)
    }
}

impl Config {
    /// Reads and checks the PSK file `file` (`[net] tls-psk-file` or a
    /// node's `nbd-tls-psk-file`), at start, as [`Config::load_tls`] does
    /// for certificates.
    ///
    /// # Errors
    /// [`ConfigError::Tls`] naming the file and what is wrong with it.
    pub fn load_psk(&self, file: &Path) -> Result<PskKeys, ConfigError> {
        PskKeys::load(file).map_err(|message| ConfigError::Tls {
            path: self.path.clone(),
            file: file.to_owned(),
            message,
        })
    }
}

/// One `identity:hexkey` line.
fn parse_line(line: &str) -> Result<PskEntry, String> {
    let Some((identity, hex)) = line.split_once(':') else {
        return Err("expected \"identity:hexkey\" (no ':' in the line)".to_owned());
    };
    if identity.is_empty() || identity.len() > PSK_IDENTITY_MAX_BYTES {
        return Err(format!(
            "the identity must have 1 to {PSK_IDENTITY_MAX_BYTES} characters"
        ));
    }
    if !identity.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "identity \"{}\": use letters, digits and punctuation only (no spaces)",
            identity.escape_debug()
        ));
    }
    let hex = hex.trim();
    let key = decode_hex(hex).ok_or_else(|| {
        format!(
            "identity \"{identity}\": the key is not hexadecimal (an even number of 0-9a-f digits)"
        )
    })?;
    if key.len() < PSK_KEY_MIN_BYTES || key.len() > PSK_KEY_MAX_BYTES {
        return Err(format!(
            "identity \"{identity}\": the key has {} bytes; it needs {PSK_KEY_MIN_BYTES} to \
             {PSK_KEY_MAX_BYTES} (`psktool -u {identity} -p FILE` makes 32, \
             `openssl rand -hex 32` too)",
            key.len()
        ));
    }
    Ok(PskEntry {
        identity: identity.to_owned(),
        key,
    })
}

/// Hexadecimal text to bytes; `None` when it is not (a dozen lines: not
/// worth a crate).
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY32: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn psktool_lines_parse() {
        let k = PskKeys::parse(&format!("alice:{KEY32}\n\n# comment\nbob:{KEY32}\r\n")).unwrap();
        assert_eq!(k.identities(), ["alice", "bob"]);
        assert_eq!(k.first().unwrap().identity, "alice");
        assert_eq!(k.key_for(b"bob").unwrap().len(), 32);
        assert!(k.key_for(b"carol").is_none());
        assert!(!format!("{k:?}").contains("aabb"), "Debug hides keys");
    }

    #[test]
    fn bad_lines_are_named() {
        let e = |t: &str| PskKeys::parse(t).unwrap_err();
        assert!(e("").contains("holds no key"));
        assert!(e(&format!("x\n{KEY32}")).contains("line 1: expected"));
        assert!(
            e(&format!("a:{KEY32}\nb:zz")).contains("line 2: identity \"b\": the key is not hex")
        );
        assert!(e("a:0011").contains("the key has 2 bytes"));
        assert!(e(&format!("a b:{KEY32}")).contains("no spaces"));
        assert!(e(&format!(":{KEY32}")).contains("1 to 128"));
        assert!(e(&format!("a:{KEY32}\na:{KEY32}")).contains("appears twice"));
    }

    #[test]
    fn a_world_readable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.psk");
        std::fs::write(&p, format!("a:{KEY32}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PskKeys::load(&p).unwrap_err();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(PskKeys::load(&p).unwrap().identities(), ["a"]);
        let e = PskKeys::load(&dir.path().join("none")).unwrap_err();
        assert!(e.contains("cannot open"), "{e}");
    }
}
