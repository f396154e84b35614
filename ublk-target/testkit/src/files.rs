//! Files a test writes: disks and data.

use std::path::{Path, PathBuf};

/// `dir/name` with `bytes` of xorshift noise from `seed` (the same seed
/// gives the same bytes).
pub fn random_file(dir: &Path, name: &str, bytes: usize, seed: u64) -> PathBuf {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(bytes);
    while v.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(bytes);
    let p = dir.join(name);
    std::fs::write(&p, v).unwrap();
    p
}

/// A sparse file of `bytes` at `path` (a disk image), created or truncated.
pub fn sparse_file(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

/// `path` with `text`, executable (a script a daemon under test runs).
pub fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}
