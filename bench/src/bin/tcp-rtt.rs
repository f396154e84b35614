//! `tcp-rtt`: the native TCP round trip that protocol C's added latency is
//! read against (nbd-bench --floors): a client sends a 4 KiB message, the
//! server reads it whole and answers with a short one, as a replicated
//! write's `Data` frame and its `WriteAck` cross the link; one at a time,
//! `TCP_NODELAY` on both ends, as repd's peer sockets have it.
//!
//! Two processes (`--listen` and `--connect`) like two repd: each end's
//! wake-up on a blocking read is in the figure, as it is in repd's.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

/// Largest message either way (a resync-sized frame); more is refused.
const MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "tcp-rtt",
    about = "Native TCP ping-pong: the round trip protocol C's added latency is measured against",
    long_about = "With --listen, serves one client after another: reads --bytes, answers \
        --reply-bytes, until the client closes (prints `listening on ADDR` first). With \
        --connect, sends --count messages one at a time (after --warmup unmeasured ones) and \
        prints one JSON line: mean_us, p50_us, p99_us, min_us of the round trips.",
    after_help = "Example: tcp-rtt --listen 127.0.0.1:0 & tcp-rtt --connect 127.0.0.1:PORT --count 20000"
)]
struct Cli {
    /// Serve round trips on this address (port 0: any free one)
    #[arg(
        long,
        value_name = "ADDR:PORT",
        conflicts_with = "connect",
        required_unless_present = "connect"
    )]
    listen: Option<SocketAddr>,
    /// Measure round trips against a `--listen` server
    #[arg(long, value_name = "ADDR:PORT")]
    connect: Option<SocketAddr>,
    /// Bytes sent per round trip (a 4 KiB write's payload)
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    bytes: u32,
    /// Bytes answered per round trip (an ack's size)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    reply_bytes: u32,
    /// Measured round trips
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    count: u32,
    /// Round trips before measuring
    #[arg(long, default_value_t = 1_000)]
    warmup: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match (cli.listen, cli.connect) {
        (Some(addr), _) => serve(addr, &cli),
        (None, Some(addr)) => measure(addr, &cli),
        (None, None) => Err(io::Error::other("give --listen or --connect")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp-rtt: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sizes as buffer lengths (both are bounded by clap to `MAX_BYTES`).
fn sizes(cli: &Cli) -> (usize, usize) {
    let n = |v: u32| usize::try_from(v).unwrap_or(MAX_BYTES).min(MAX_BYTES);
    (n(cli.bytes), n(cli.reply_bytes))
}

fn serve(addr: SocketAddr, cli: &Cli) -> io::Result<()> {
    let l = TcpListener::bind(addr)?;
    println!("listening on {}", l.local_addr()?);
    io::stdout().flush()?;
    let (ask, answer) = sizes(cli);
    for conn in l.incoming() {
        let mut s = conn?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; ask];
        let reply = vec![0x5a_u8; answer];
        // One client at a time; it ends by closing.
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&reply).is_err() {
                break;
            }
        }
    }
    Ok(())
}

fn measure(addr: SocketAddr, cli: &Cli) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let (ask, answer) = sizes(cli);
    let msg = vec![0xa5_u8; ask];
    let mut back = vec![0u8; answer];
    let mut rtt_ns: Vec<u64> = Vec::with_capacity(usize::try_from(cli.count).unwrap_or(0));
    for i in 0..cli.warmup.saturating_add(cli.count) {
        let t0 = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        if i >= cli.warmup {
            rtt_ns.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    rtt_ns.sort_unstable();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((rtt_ns.len() as f64 - 1.0) * q).round() as usize;
        rtt_ns.get(i).copied().unwrap_or(0) as f64 / 1e3
    };
    #[allow(clippy::cast_precision_loss)]
    let mean = rtt_ns.iter().sum::<u64>() as f64 / rtt_ns.len().max(1) as f64 / 1e3;
    println!(
        "{{\"bytes\":{},\"reply_bytes\":{},\"count\":{},\"mean_us\":{mean:.2},\"p50_us\":{:.2},\"p99_us\":{:.2},\"min_us\":{:.2}}}",
        cli.bytes,
        cli.reply_bytes,
        rtt_ns.len(),
        at(0.5),
        at(0.99),
        at(0.0)
    );
    Ok(())
}
