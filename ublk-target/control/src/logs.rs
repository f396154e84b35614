//! Log setup shared by the daemons (`repd` and `cluster-agent`), so that
//! one variable tunes the logs of a node.

use tracing_subscriber::EnvFilter;

/// libublk logs through the `log` crate at INFO for things repd does
/// routinely: every control object it builds logs "ctrl: device N flags 0
/// created", and repd builds one each time it looks at a device (once a
/// second while a device left by a dead repd waits). repd logs what it does
/// with the device itself, so libublk's own lines are kept to warnings and
/// errors unless `$REP_LOG` names libublk.
const LIBUBLK_CAP: &str = "libublk=warn";

/// The filter directives for `$REP_LOG` (`None`: unset): `info` by
/// default, and libublk capped at warnings unless the variable names it
/// (`REP_LOG=debug,libublk=info` shows libublk's lines again).
#[must_use]
pub fn directives(rep_log: Option<&str>) -> String {
    let base = match rep_log.map(str::trim) {
        Some(s) if !s.is_empty() => s,
        _ => "info",
    };
    if base.contains("libublk") {
        base.to_owned()
    } else {
        format!("{base},{LIBUBLK_CAP}")
    }
}

/// Sends `tracing` events to stderr, filtered by `$REP_LOG` (an `EnvFilter`
/// directive such as `debug` or `ublk_target::engine=trace`; default `info`;
/// see [`directives`] for libublk's lines). No colours: the daemons' stderr
/// goes to files and the journal. A `$REP_LOG` that does not parse is
/// reported and the default used.
pub fn init() {
    let env = std::env::var("REP_LOG").ok();
    let filter = EnvFilter::try_new(directives(env.as_deref())).unwrap_or_else(|e| {
        eprintln!("REP_LOG={env:?} is not a valid log filter ({e}); logging at info");
        EnvFilter::new(directives(None))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events that get through the filter.
    struct Count(Arc<AtomicUsize>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many of libublk's INFO line, a libublk warning and one of
    /// repd's own INFO lines pass the filter for `$REP_LOG`.
    fn passed(rep_log: Option<&str>) -> [usize; 3] {
        let mut out = [0; 3];
        for (k, slot) in out.iter_mut().enumerate() {
            let n = Arc::new(AtomicUsize::new(0));
            let sub = tracing_subscriber::registry()
                .with(EnvFilter::try_new(directives(rep_log)).expect("valid directives"))
                .with(Count(n.clone()));
            tracing::subscriber::with_default(sub, || match k {
                // What tracing-log makes of libublk's `log::info!` in
                // UblkCtrl::new (target: its module path).
                0 => tracing::info!(target: "libublk::ctrl", "ctrl: device 1 flags 0 created"),
                1 => tracing::warn!(target: "libublk::ctrl", "Warn: async cmd"),
                _ => tracing::info!(target: "ublk_target::ublk", "Primary: started"),
            });
            *slot = n.load(Ordering::SeqCst);
        }
        out
    }

    #[test]
    fn libublk_info_lines_are_kept_out_of_the_default_log() {
        assert_eq!(passed(None), [0, 1, 1]);
        assert_eq!(passed(Some("")), [0, 1, 1]);
        assert_eq!(passed(Some("debug")), [0, 1, 1]);
    }

    #[test]
    fn rep_log_naming_libublk_shows_its_lines() {
        assert_eq!(passed(Some("info,libublk=info")), [1, 1, 1]);
        assert_eq!(directives(Some("libublk=debug")), "libublk=debug");
    }
}
