//! Log setup shared by the daemons (`repd`, and `cluster-agent`, which
//! depends on this crate), so that one variable tunes the logs of a node.

/// Sends `tracing` events to stderr, filtered by `$REP_LOG` (an `EnvFilter`
/// directive such as `debug` or `ublk_target::engine=trace`; default `info`).
/// No colours: the daemons' stderr goes to files and the journal.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
