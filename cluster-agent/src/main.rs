//! `cluster-agent`: heartbeat, failover and the resource chain for one
//! resource on one node. Runs in the foreground (logs to stderr), which is
//! what systemd wants; `cluster-agent status` asks a running agent.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cluster_agent::config::AgentConfig;
use cluster_agent::control::{self, Request};
use cluster_agent::daemon::{self, Options};
use rep_control::client::DEFAULT_RUN_DIR;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "cluster-agent",
    version,
    about = "The HA agent of one replicated resource: heartbeat, failover, resource chain",
    long_about = "The HA agent of one replicated resource (heartbeat from Linux-HA, done right).\n\n\
                  Without a command it runs in the foreground: it sends heartbeats to the peer's agent on \
                  every [[cluster.path]] of the resource file, watches the local repd through its control \
                  socket, and decides who holds the resources: the device's Primary role and the chain of \
                  [[cluster.resource]] entries on top of it, started left to right after the promotion and \
                  stopped right to left before the demotion. A peer silent on every path for deadtime-ms is \
                  dead; it is fenced with fence-command (if configured) before this node promotes.\n\n\
                  `cluster-agent status` shows members, paths, quorum, who holds what, the last transitions \
                  and why the agent did or did not promote.\n\n\
                  With `witness = \"IP:PORT\"` in [cluster], `cluster-agent --witness` on a third machine \
                  votes: a Primary that hears neither its peer nor the witness suspends its writes before \
                  the peer may take over with the witness's vote.\n\n\
                  See cluster-agent/examples/r0-cluster.toml for the [cluster] table."
)]
struct Cli {
    /// The resource configuration file (TOML) with its [cluster] table.
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "FILE",
        default_value = "/etc/rep/r0.toml"
    )]
    config: PathBuf,
    /// This node's name in the config [default: the host name].
    #[arg(
        long,
        short = 'n',
        global = true,
        value_name = "NAME",
        env = "REP_NODE"
    )]
    node: Option<String>,
    /// Run as the witness of the resource (a third machine, no disk): vote
    /// for quorum and remember each node's generations and Outdated marks.
    #[arg(long)]
    witness: bool,
    /// The witness listens here [default: the `witness` address of the config].
    #[arg(long, value_name = "IP:PORT", requires = "witness")]
    listen: Option<std::net::SocketAddr>,
    /// Where the witness keeps what it remembers [default: /var/lib/rep/<resource>.witness.json].
    #[arg(long, value_name = "FILE", requires = "witness")]
    state_file: Option<PathBuf>,
    /// Where the control sockets of repd and of the agent live.
    #[arg(long, global = true, value_name = "DIR", env = "REP_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground (the default)
    Run,
    /// Show the agent's view: members, paths, resources, transitions, why
    /// (with --witness: what the witness hears, remembers and voted)
    Status {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: this node (the holder) stops its chain right to
    /// left and demotes; the peer promotes and starts the chain. Waits until
    /// the peer holds the resources.
    Switchover {
        /// Return once the agent accepted it, without waiting for the peer
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the peer to hold the resources
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
    },
    /// Turn heartbeat's ha.cf, authkeys and haresources into the [cluster] table
    #[command(
        long_about = "Turn heartbeat's configuration (ha.cf, authkeys, haresources in DIR, \
        e.g. /etc/ha.d) into the [cluster] table of a resource file. With --resource FILE \
        (a resource file, e.g. from `repctl import-drbd-conf`), --out gets that file with the \
        table appended, and it is checked as the agent will load it; without, --out gets the \
        table alone, to append to the resource file on both nodes.\n\n\
        What maps: keepalive, warntime, deadtime, initdead (seconds, or NNNms) to *-ms; \
        auto_failback on/off (legacy: off, warned; nice_failback); node names, checked against \
        the resource's [[node]] names; ucast to [[cluster.path]] bind addresses, bcast, udp and \
        mcast to [[cluster.path]] entries whose addresses are to be filled in (rep's heartbeat \
        is unicast UDP); udpport to their port; ping and ping_group to ping-nodes (the agent \
        does ipfail's job), deadping to ping-dead-ms; authkeys' selected sha1/md5 key to \
        auth-key (rep signs with HMAC-SHA256; crc has no key, so it is to be filled in); \
        haresources' first field to preferred, drbddisk::NAME to the device, IPaddr / IPaddr2 \
        / a bare address to ip, Filesystem::DEV::DIR::TYPE::OPTIONS to filesystem (a \
        /dev/drbdN of the resource becomes this node's /dev/ublkbN), a bare name to a service \
        (DIR/resource.d/NAME if there, else /etc/init.d/NAME).\n\n\
        Every other key (serial, baud, watchdog, logfile, logfacility, apiauth, crm, stonith, \
        respawn of anything but ipfail, resources with arguments like LVM::vg, ...) is left \
        behind with a warning on stderr naming it with its FILE:LINE. Values the files lack \
        (an address on a broadcast medium, a key for crc, a prefix length) are written as \
        commented-out keys marked FILL IN, with a warning; nothing is made up.\n\n\
        --config and --node are not used."
    )]
    ImportHeartbeat(cluster_agent::import::cli::ImportArgs),
}

fn main() -> ExitCode {
    if let Some(code) = rep_control::docs::generate_if_asked(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        None | Some(Command::Run) if cli.witness => {
            rep_control::logs::init();
            cluster_agent::witness::run(&cluster_agent::witness::WitnessOptions {
                config: cli.config.clone(),
                run_dir: cli.run_dir.clone(),
                listen: cli.listen,
                state_file: cli.state_file.clone(),
            })
            .map_err(|e| e.to_string())
        }
        Some(Command::Status { json }) if cli.witness => witness_status(&cli, *json),
        Some(_) if cli.witness => {
            Err("the witness holds no resources: ask the holder's agent to switch over".into())
        }
        None | Some(Command::Run) => {
            rep_control::logs::init();
            daemon::run(&Options {
                config: cli.config.clone(),
                node: cli.node.clone(),
                run_dir: cli.run_dir.clone(),
            })
        }
        Some(Command::ImportHeartbeat(a)) => cluster_agent::import::cli::run(a),
        Some(Command::Status { json }) => status(&cli, *json),
        Some(Command::Switchover { no_wait, timeout }) => switchover(&cli, *no_wait, *timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cluster-agent --witness status`: what the witness hears and remembers.
fn witness_status(cli: &Cli, json: bool) -> Result<(), String> {
    let cfg = cluster_agent::config::WitnessConfig::load(&cli.config).map_err(|e| e.to_string())?;
    let path = cluster_agent::witness::socket_path(&cli.run_dir, &cfg.resource);
    let reply = control::request(&path, &Request::Status).map_err(|e| match e {
        control::RequestError::NotRunning { .. } => format!(
            "no witness of resource {} answers on {}; start it with `cluster-agent --witness --config FILE` \
             (with the same --run-dir)",
            cfg.resource,
            path.display()
        ),
        other => other.to_string(),
    })?;
    print_status(reply, "the witness refused", json, witness_text)
}

/// Prints a status answer as JSON or as `text` renders it.
fn print_status(
    reply: control::Reply,
    refused: &str,
    json: bool,
    text: fn(&Value) -> String,
) -> Result<(), String> {
    if !reply.ok {
        return Err(reply.error.unwrap_or_else(|| refused.into()));
    }
    let st = reply.status.unwrap_or(Value::Null);
    if json {
        println!("{st}");
    } else {
        print!("{}", text(&st));
    }
    Ok(())
}

fn witness_text(st: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "witness of {} on {}, up {} s, deadtime {} ms",
        s(&st["resource"]),
        s(&st["listen"]),
        st["uptime_ms"].as_u64().unwrap_or(0) / 1000,
        st["deadtime_ms"]
    );
    for n in st["nodes"].as_array().into_iter().flatten() {
        let heard = match n["last_heard_ms_ago"].as_u64() {
            Some(ms) => format!("heard {ms} ms ago"),
            None => "never heard".into(),
        };
        let vote = match &n["last_vote"] {
            Value::Null => "no vote asked".to_string(),
            v if v["granted"] == true => "last vote: granted".to_string(),
            v => format!("last vote: refused ({})", s(&v["reason"])),
        };
        let _ = writeln!(
            out,
            "  {:<10} {:<20} {:<10} {:<12} gen {}  {}",
            s(&n["name"]),
            heard,
            n["state"].as_str().unwrap_or("-"),
            n["disk"].as_str().unwrap_or("-"),
            s(&n["current_gen"]),
            vote
        );
        if let Some(why) = n["outdated"].as_str() {
            let _ = writeln!(out, "             remembered Outdated: {why}");
        }
    }
    let _ = writeln!(
        out,
        "dropped packets: {}, replayed requests: {}; state file {}",
        st["dropped_packets"],
        st["replays"],
        s(&st["state_file"])
    );
    out
}

fn status(cli: &Cli, json: bool) -> Result<(), String> {
    let cfg = AgentConfig::load(&cli.config, cli.node.as_deref()).map_err(|e| e.to_string())?;
    let path = control::socket_path(&cli.run_dir, &cfg.resource.resource.name, &cfg.me);
    let reply = control::request(&path, &Request::Status).map_err(|e| e.to_string())?;
    print_status(reply, "the agent refused", json, text)
}

fn switchover(cli: &Cli, no_wait: bool, timeout: u64) -> Result<(), String> {
    let cfg = AgentConfig::load(&cli.config, cli.node.as_deref()).map_err(|e| e.to_string())?;
    let path = control::socket_path(&cli.run_dir, &cfg.resource.resource.name, &cfg.me);
    let reply = control::request(&path, &Request::Switchover).map_err(|e| e.to_string())?;
    if !reply.ok {
        return Err(reply
            .error
            .unwrap_or_else(|| "the agent refused the switchover".into()));
    }
    let t0 = std::time::Instant::now();
    println!(
        "{}: switchover accepted: stopping the chain and demoting, then {} takes over",
        cfg.me, cfg.peer
    );
    if no_wait {
        return Ok(());
    }
    let limit = std::time::Duration::from_secs(timeout);
    let mut last = String::new();
    loop {
        let reply = control::request(&path, &Request::Status).map_err(|e| e.to_string())?;
        let owned = reply.status.unwrap_or(Value::Null);
        let st = &owned;
        let peer = &st["peer"];
        let line = format!(
            "{}: {}; {}: {}",
            cfg.me,
            s(&st["state"]),
            cfg.peer,
            s(&peer["state"])
        );
        if line != last {
            println!("  {:>6.1} s  {line}", t0.elapsed().as_secs_f64());
            last = line;
        }
        if let Some(why) = st["stop_failed"].as_str() {
            return Err(format!("the switchover is stuck: {why}"));
        }
        if st["state"] == "Idle" && peer["state"] == "Holding" {
            println!(
                "switchover done in {:.1} s: {} holds the resources",
                t0.elapsed().as_secs_f64(),
                cfg.peer
            );
            return Ok(());
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "{} did not take the resources within {timeout} s; `cluster-agent status` says why",
                cfg.peer
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ago(v: &Value) -> String {
    match v.as_u64() {
        None => "never".into(),
        Some(ms) if ms < 10_000 => format!("{ms} ms ago"),
        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
    }
}

/// The readable form of the status.
fn text(st: &Value) -> String {
    let mut o = String::new();
    text_headline(&mut o, st);
    text_quorum(&mut o, st);
    text_conditions(&mut o, st);
    text_local_and_peer(&mut o, st);
    text_paths_and_chain(&mut o, st);
    text_counters(&mut o, st);
    text_history(&mut o, st);
    o
}

/// The first lines: state, decision, fencing.
fn text_headline(o: &mut String, st: &Value) {
    let _ = writeln!(
        o,
        "{} on {}: {} for {:.1} s{}",
        s(&st["resource"]),
        s(&st["node"]),
        s(&st["state"]),
        st["state_for_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        if st["holds_role"] == true {
            ", holds the Primary role"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "decision: {}", s(&st["decision"]));
    let _ = writeln!(o, "fencing:  {}", s(&st["fencing"]));
    if !st["last_fence"].is_null() {
        let _ = writeln!(o, "last fence: {}", s(&st["last_fence"]));
    }
}

/// With a witness: the votes and the witness's last answer.
fn text_quorum(o: &mut String, st: &Value) {
    let q = &st["quorum"];
    if q["witness_configured"] == true {
        let _ = writeln!(
            o,
            "quorum:   {} ({} of 3 votes: self{}{}), on-no-quorum {}{}",
            if q["has_quorum"] == true { "yes" } else { "NO" },
            s(&q["votes"]),
            if q["peer_vote"] == true {
                " + peer"
            } else {
                ""
            },
            if q["witness_vote"] == true {
                " + witness"
            } else {
                ""
            },
            s(&st["on_no_quorum"]),
            if q["io_suspended"] == true {
                "; WRITES SUSPENDED"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "witness:  {} {}, last answer {}{}",
            s(&st["witness"]),
            if q["witness_reachable"] == true {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            ago(&q["witness_last_reply_ms_ago"]),
            if q["witness_says"].is_null() {
                String::new()
            } else {
                format!("; it says: {}", s(&q["witness_says"]))
            }
        );
    }
}

/// What holds the node back or went wrong: failure-timeout, a failed stop, a handover, ping nodes, a split brain.
fn text_conditions(o: &mut String, st: &Value) {
    if let Some(ms) = st["failure_timeout_left_ms"].as_u64() {
        let _ = writeln!(
            o,
            "failure-timeout: {ms} ms left before this node may take over again"
        );
    }
    if !st["stop_failed"].is_null() {
        let _ = writeln!(
            o,
            "STOP FAILED: {} (on-stop-failure: {})",
            s(&st["stop_failed"]),
            s(&st["on_stop_failure"])
        );
    }
    if !st["handover"].is_null() {
        let _ = writeln!(o, "last handover: {}", s(&st["handover"]));
    }
    if let Some(nodes) = st["ping_nodes"].as_array().filter(|a| !a.is_empty()) {
        let p = &st["ping"];
        let names: Vec<String> = nodes.iter().map(s).collect();
        let _ = writeln!(
            o,
            "ping nodes: {} ({})",
            names.join(", "),
            if p.is_null() {
                "no answer yet".to_string()
            } else {
                format!("{} of {} answer", s(&p["reachable"]), s(&p["configured"]))
            }
        );
    }
    let sb = &st["split_brain"];
    if sb["detections"].as_u64().unwrap_or(0) > 0 || sb["detected"] == true {
        let _ = writeln!(
            o,
            "SPLIT BRAIN: {} (seen {} time(s); hook ran {} time(s){})",
            if sb["detected"] == true {
                "reported by repd now"
            } else {
                "resolved"
            },
            s(&sb["detections"]),
            s(&sb["hook_runs"]),
            sb["last_hook"]
                .as_str()
                .map(|h| format!("; last: {h}"))
                .unwrap_or_default()
        );
    }
}

/// The local repd and the peer.
fn text_local_and_peer(o: &mut String, st: &Value) {
    let l = &st["local"];
    if l.is_null() {
        let _ = writeln!(o, "local repd: not running");
    } else {
        let _ = writeln!(
            o,
            "local repd: {} {} {}",
            s(&l["role"]),
            s(&l["disk"]),
            if l["connected"] == true {
                "connected"
            } else {
                "not connected"
            }
        );
    }
    let p = &st["peer"];
    let alive = match p["alive"].as_bool() {
        Some(true) => "alive",
        Some(false) => "DEAD",
        None => "not heard yet",
    };
    let _ = writeln!(
        o,
        "peer {}: {alive}, {}agent {}, repd {} {}, last heard {}",
        s(&p["name"]),
        if p["alive"] == false {
            "last known: "
        } else {
            ""
        },
        s(&p["state"]),
        s(&p["role"]),
        s(&p["disk"]),
        ago(&p["last_heard_ms_ago"])
    );
}

/// Each heartbeat path and each resource of the chain.
fn text_paths_and_chain(o: &mut String, st: &Value) {
    let _ = writeln!(o, "paths:");
    for p in st["paths"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {} {:<8} {} -> {}  {:<4} last heard {} ({} received)",
            s(&p["index"]),
            s(&p["name"]),
            s(&p["local"]),
            s(&p["peer"]),
            if p["up"] == true {
                if p["late"] == true {
                    "late"
                } else {
                    "up"
                }
            } else {
                "DOWN"
            },
            ago(&p["last_heard_ms_ago"]),
            s(&p["received"])
        );
    }
    let _ = writeln!(o, "chain:");
    for r in st["chain"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  {:<40} {}", s(&r["label"]), s(&r["state"]));
    }
}

/// The heartbeat counters.
fn text_counters(o: &mut String, st: &Value) {
    let c = &st["counters"];
    let _ = writeln!(
        o,
        "heartbeats: sent {} received {}; dropped: bad-mac {} replay {} malformed {} foreign {}; peer restarts {}",
        s(&c["sent"]),
        s(&c["received"]),
        s(&c["bad_mac"]),
        s(&c["replay"]),
        s(&c["malformed"]),
        s(&c["foreign"]),
        s(&c["peer_restarts"])
    );
}

/// The last transitions and events, in seconds ago.
fn text_history(o: &mut String, st: &Value) {
    let up = st["uptime_ms"].as_u64().unwrap_or(0);
    let _ = writeln!(o, "last transitions:");
    for t in st["transitions"].as_array().into_iter().flatten() {
        let at = t["at"].as_u64().unwrap_or(0);
        let count = t["count"].as_u64().unwrap_or(1);
        let _ = writeln!(
            o,
            "  {:>8.1} s ago  {} -> {}: {}{}",
            up.saturating_sub(at) as f64 / 1000.0,
            s(&t["from"]),
            s(&t["to"]),
            s(&t["reason"]),
            if count > 1 {
                format!(" ({count} times, the last shown)")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(o, "events:");
    let events: Vec<&Value> = st["events"].as_array().into_iter().flatten().collect();
    for e in events.iter().rev().take(10).rev() {
        let at = e["at"].as_u64().unwrap_or(0);
        let _ = writeln!(
            o,
            "  {:>8.1} s ago  {}",
            up.saturating_sub(at) as f64 / 1000.0,
            s(&e["what"])
        );
    }
}
