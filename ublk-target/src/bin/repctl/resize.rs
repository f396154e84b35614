//! `repctl resize` (drbdadm resize): ask repd to grow both nodes, then wait
//! until both hold the new size (or the resize failed) and print it.

use std::time::{Duration, Instant};

use clap::Args;
use rep_control::client::request;
use rep_control::config::parse_rate;
use rep_control::protocol::{ControlCmd, ControlReply, NodeStatus};
use rep_control::status_text::render;

use super::targets::{Select, Target};
use super::{print_out, Failure};

/// How long the two nodes may take to grow their metadata.
const GROW_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Args)]
pub(super) struct ResizeArgs {
    /// Grow to this size (bytes, or with a K/M/G suffix) instead of as far
    /// as both backing disks allow; a size below the current one is refused
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// Both grown regions are known identical (zeroed): declare them in sync
    /// instead of resyncing them (drbdadm resize --assume-clean)
    #[arg(long)]
    assume_clean: bool,
    /// Print the final status as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) sel: Select,
}

fn ask(t: &Target, cmd: &ControlCmd) -> Result<ControlReply, Failure> {
    request(&t.socket()?, cmd, None).map_err(|e| Failure(e.to_string()))
}

fn status_of(r: ControlReply) -> Result<NodeStatus, Failure> {
    match r.status {
        Some(st) if r.ok => Ok(st),
        _ => Err(Failure(
            r.error
                .unwrap_or_else(|| "repd answered without a status".into()),
        )),
    }
}

fn parse_size(s: &str) -> Result<u64, Failure> {
    match parse_rate(s) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Failure(format!(
            "invalid --size \"{s}\": expected a whole number of bytes with an optional K, M or G \
             suffix, e.g. \"2G\""
        ))),
    }
}

/// Ask for the resize, then wait until the size changed or the resize
/// failed; print the new size and the status.
pub(super) fn resize(t: &Target, a: &ResizeArgs) -> Result<(), Failure> {
    let size_bytes = a.size.as_deref().map(parse_size).transpose()?;
    let cmd = ControlCmd::Resize {
        size_bytes,
        assume_clean: a.assume_clean,
    };
    let before = status_of(ask(t, &cmd)?)?;
    let t0 = Instant::now();
    let last = loop {
        std::thread::sleep(Duration::from_millis(100));
        let st = status_of(ask(t, &ControlCmd::Status)?)?;
        let failed = st
            .size_note
            .as_deref()
            .is_some_and(|n| n.starts_with("resize failed") && st.size_note != before.size_note);
        if failed {
            return Err(Failure(format!(
                "{}{}",
                t.prefix(),
                st.size_note.unwrap_or_default()
            )));
        }
        if st.data_bytes != before.data_bytes {
            break st;
        }
        if t0.elapsed() > GROW_TIMEOUT {
            return Err(Failure(format!(
                "{}the resize did not finish within {} s; see `repctl status` and repd's log",
                t.prefix(),
                GROW_TIMEOUT.as_secs()
            )));
        }
    };
    if a.json {
        let text = serde_json::to_string_pretty(&last)
            .map_err(|e| Failure(format!("cannot print the status: {e}")))?;
        return print_out(&format!("{text}\n"));
    }
    print_out(&format!(
        "{}resized from {} to {} bytes{}\n{}",
        t.prefix(),
        before.data_bytes,
        last.data_bytes,
        if a.assume_clean {
            ""
        } else {
            "; the new region resyncs from the Primary (see `repctl status`)"
        },
        render(&last)
    ))
}
