//! The skeleton the workspace's seeded simulators share (this crate's
//! [`sim`](crate::sim) and the cluster agent's): fault rates drawn from the
//! seed, the [`Violation`] a failing run reports, and the seed-range runner
//! with its command line, so that every simulator is run and replayed the
//! same way:
//!
//! ```text
//! NAME --seeds 2000              # seeds 0..2000
//! NAME --from 5000 --seeds 100   # seeds 5000..5100
//! NAME --seed 1234 --trace       # replay one seed, printing every event
//! NAME --seeds 20 --verbose      # each seed's scenario and fault rates, and its report
//! ```
//!
//! A simulator implements [`Simulator`]; its binary's `main` is
//! `simkit::main(name, usage, extra_flags, make_simulator)` (see `repsim`). A failure prints
//! the [`Violation`], whose last lines are `replay with: <command>`.
//!
//! The fault rates: as in TigerBeetle's VOPR, each seed draws its own rates
//! within bounds (some seeds hammer the link, others barely touch it), from
//! a [`rate_stream`] of its own, so adding or changing a rate changes no
//! other draw of the scenario. A simulator prints them with the scenario.

use std::fmt;
use std::ops::Range;
use std::process::ExitCode;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::time::Millis;

/// The random stream a seed's fault rates are drawn from: one of its own
/// (`salt` tells the simulators' streams apart), so the other draws of a
/// scenario stay what they were.
#[must_use]
pub fn rate_stream(seed: u64, salt: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ salt)
}

/// A broken invariant: which seed, when, what, and how to see it again.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    /// Simulated time of the step that found it.
    pub at: Millis,
    pub what: String,
    /// The scenario and fault rates the seed drew, on one line.
    pub scenario: String,
    /// The command that replays this seed with a full trace.
    pub replay: String,
    /// The last lines of the trace (all of them when tracing).
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} violated an invariant at {} ms: {}",
            self.seed,
            self.at.as_ms(),
            self.what
        )?;
        writeln!(f, "scenario: {}", self.scenario)?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        writeln!(f, "replay with: {}", self.replay)
    }
}

/// The message of a caught panic (`catch_unwind`'s payload), so that a
/// core that panics is reported as a [`Violation`] with its seed and
/// replay line instead of ending the seed run.
#[must_use]
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default()
}

/// The command that replays `seed` of the simulator binary `bin` in
/// `package` (behind the `sim` feature) with a full trace; `flags` are the
/// simulator's own switches the failing run had on.
#[must_use]
pub fn replay_command(package: &str, bin: &str, seed: u64, flags: &[&str]) -> String {
    let mut cmd = format!(
        "cargo run -q -p {package} --release --features sim --bin {bin} -- --seed {seed} --trace"
    );
    for f in flags {
        cmd.push(' ');
        cmd.push_str(f);
    }
    cmd
}

/// A seeded simulator, as the runner drives it.
pub trait Simulator {
    /// What one run counts; the runner sums it over the seeds.
    type Report: Default + fmt::Debug;
    /// The binary's name, for messages.
    fn name(&self) -> &'static str;
    /// The scenario and fault rates `seed` draws, on one line (`--verbose`).
    fn describe(&self, seed: u64) -> String;
    /// Runs one seed; `trace` prints every event as it happens.
    fn run(&self, seed: u64, trace: bool) -> Result<Self::Report, Violation>;
    /// Adds one run's counts to the total.
    fn add(&self, total: &mut Self::Report, one: &Self::Report);
    /// The closing line for a passing range (what the seeds exercised).
    fn summary(&self, total: &Self::Report, seeds: &Range<u64>) -> String;
}

/// The common command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub seeds: Range<u64>,
    /// Print each seed's scenario and rates, and its report.
    pub verbose: bool,
    /// Print every event (for a replay).
    pub trace: bool,
    /// The simulator's own switches that were given (from `extra_flags`).
    pub flags: Vec<String>,
}

impl Args {
    /// Whether the simulator's own switch `flag` was given.
    #[must_use]
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Why the command line was not run: help was asked for, or it is wrong
/// (the message says how).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    Help,
    Bad(String),
}

/// Parses `--seed N | [--from A] [--seeds COUNT]` (1000 seeds from 0 by
/// default), `--verbose`, `--trace`, and the simulator's own switches
/// `extra_flags`.
pub fn parse_args(
    args: impl IntoIterator<Item = String>,
    extra_flags: &[&str],
) -> Result<Args, ArgsError> {
    let (mut from, mut count, mut one) = (0u64, 1000u64, None);
    let mut out = Args {
        seeds: 0..0,
        verbose: false,
        trace: false,
        flags: Vec::new(),
    };
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut num = || -> Result<u64, ArgsError> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ArgsError::Bad(format!("{a} needs a number")))
        };
        match a.as_str() {
            "--from" => from = num()?,
            "--seeds" => count = num()?,
            "--seed" => one = Some(num()?),
            "--verbose" | "-v" => out.verbose = true,
            "--trace" => out.trace = true,
            "-h" | "--help" => return Err(ArgsError::Help),
            f if extra_flags.contains(&f) => out.flags.push(a),
            other => return Err(ArgsError::Bad(format!("unknown argument {other}"))),
        }
    }
    out.seeds = match one {
        Some(s) => s..s.saturating_add(1),
        None => from..from.saturating_add(count),
    };
    Ok(out)
}

/// Runs the seeds of `args`: stops at the first violation and prints it
/// (ending in its replay command); otherwise prints the summary.
pub fn run_seeds<S: Simulator>(sim: &S, args: &Args) -> ExitCode {
    let mut total = S::Report::default();
    for seed in args.seeds.clone() {
        if args.verbose || args.trace {
            println!("seed {seed}: {}", sim.describe(seed));
        }
        match sim.run(seed, args.trace) {
            Ok(r) => {
                if args.verbose || args.trace {
                    println!("seed {seed}: ok {r:?}");
                }
                sim.add(&mut total, &r);
            }
            Err(v) => {
                eprintln!("{v}");
                println!(
                    "{}: {} passed, 1 failed",
                    sim.name(),
                    seed - args.seeds.start
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{}", sim.summary(&total, &args.seeds));
    ExitCode::SUCCESS
}

/// A simulator binary's `main`: parses the common command line (plus the
/// simulator's own switches `extra`), prints `usage` for `--help`, makes
/// the simulator for those arguments and runs the seeds.
pub fn main<S: Simulator>(
    name: &str,
    usage: &str,
    extra: &[&str],
    make: impl FnOnce(&Args) -> S,
) -> ExitCode {
    match parse_args(std::env::args().skip(1), extra) {
        Ok(args) => run_seeds(&make(&args), &args),
        Err(ArgsError::Help) => {
            println!("{usage}");
            ExitCode::SUCCESS
        }
        Err(ArgsError::Bad(why)) => {
            eprintln!("{name}: {why} (try --help)");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, ArgsError> {
        parse_args(s.split_whitespace().map(String::from), &["--x"])
    }

    #[test]
    fn the_common_command_line() {
        assert_eq!(parse("").map(|a| a.seeds), Ok(0..1000));
        assert_eq!(parse("--seeds 20").map(|a| a.seeds), Ok(0..20));
        assert_eq!(
            parse("--from 5000 --seeds 100").map(|a| a.seeds),
            Ok(5000..5100)
        );
        let one = parse("--seed 7 --trace --x").expect("parses");
        assert_eq!(one.seeds, 7..8);
        assert!(one.trace && one.has("--x") && !one.verbose);
        assert!(parse("--verbose").is_ok_and(|a| a.verbose));
        assert!(matches!(parse("--seed"), Err(ArgsError::Bad(_))));
        assert!(matches!(parse("--y"), Err(ArgsError::Bad(_))));
        assert_eq!(parse("--help"), Err(ArgsError::Help));
    }

    #[test]
    fn a_violation_ends_in_its_replay_command() {
        let v = Violation {
            seed: 42,
            at: Millis::from_ms(1500),
            what: "two Primaries".into(),
            scenario: "Scenario { .. }".into(),
            replay: replay_command("p", "b", 42, &["--x"]),
            trace: vec!["line".into()],
        };
        let s = v.to_string();
        assert!(s.starts_with("seed 42 violated an invariant at 1500 ms: two Primaries\n"));
        assert!(s.ends_with(
            "replay with: cargo run -q -p p --release --features sim --bin b -- --seed 42 --trace --x\n"
        ));
    }
}
