//! Allocator settings for the daemon.
//!
//! glibc raises its mmap threshold after large blocks are freed, after which
//! 1 MiB write buffers come from per-thread heaps that are kept, not returned:
//! RSS then grows to several times the data actually in flight (the bench saw
//! 70 MiB on a protocol A Secondary with 8 MiB in flight). A fixed threshold
//! keeps large buffers in mmap (freed at once) and two arenas bound the rest.

/// Apply the settings; call once, early, before threads allocate.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::libc::{mallopt, M_ARENA_MAX, M_MMAP_THRESHOLD};
        // SAFETY: mallopt only changes allocator parameters; both values are
        // valid for these options and it is called before other threads run.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 128 * 1024);
            mallopt(M_ARENA_MAX, 2);
        }
    }
}
