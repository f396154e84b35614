//! Waiting for what a daemon does in its own time.

use std::time::{Duration, Instant};

/// Call `probe` every `every` until it gives a value; after `secs` without
/// one, fail saying what was awaited and `debug()`.
pub fn poll<T>(
    what: &str,
    secs: u64,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
    debug: impl Fn() -> String,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            t0.elapsed() <= Duration::from_secs(secs),
            "timed out waiting for {what}\n{}",
            debug()
        );
        std::thread::sleep(every);
    }
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The scenarios of one test binary run one at a time, so that the times
/// they print are not the 2 cores' scheduling noise.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
