//! Tests of the resource file: parsing, defaults, validation messages and
//! the `repctl dump` round trip.

use std::time::Duration;

use replication_proto::wire::Protocol;

use super::validate::check_name;
use super::*;

const MINIMAL: &str = r#"
[resource]
name = "r0"
[net]
secret = "s3cret"
[[node]]
name = "alpha"
address = "127.0.0.1:7788"
disk = "/tmp/a.img"
[[node]]
name = "beta"
address = "127.0.0.1:7789"
disk = "/tmp/b.img"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_named(text, "test.toml")
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.resource.name, "r0");
    assert_eq!(c.resource.protocol, Protocol::C);
    assert_eq!(c.net.timeout, Duration::from_millis(6000));
    assert_eq!(c.net.ping_int, Duration::from_millis(1000));
    assert_eq!(c.net.ko_count, 7);
    assert_eq!(c.net.max_buffers, 2048);
    assert!(!c.net.csums);
    assert_eq!(c.sync.rate, 100 << 20);
    assert_eq!(c.sync.al_extents, 1237);
    assert_eq!(c.sync.verify, VerifyAlg::Crc32c);
    assert_eq!(c.startup.wfc_timeout, None);
    assert_eq!(c.startup.degr_wfc_timeout, Some(Duration::from_secs(120)));
    assert_eq!(c.disk.on_io_error, OnIoError::PassOn);
    assert_eq!(c.split_brain, SplitBrain::default());
    assert_eq!(c.nodes[0].meta_disk, MetaDisk::Internal);
    assert_eq!(c.nodes[0].device, 0);
    assert_eq!(c.nodes[0].nbd, None);
    assert_eq!(c.path, PathBuf::from("test.toml"));
}

#[test]
fn resume_after_crash_defaults_and_the_cluster_agent_decides() {
    let with = |extra: &str| format!("{MINIMAL}{extra}");
    let get = |extra: &str| parse(&with(extra)).unwrap().startup.resume_after_crash;
    assert_eq!(get(""), ResumeAfterCrash::HeldDevice);
    for v in [
        ResumeAfterCrash::HeldDevice,
        ResumeAfterCrash::Always,
        ResumeAfterCrash::Never,
    ] {
        let t = format!("[startup]\nresume-after-crash = \"{}\"\n", v.as_str());
        assert_eq!(get(&t), v);
    }
    let e = err(&with("[startup]\nresume-after-crash = \"yes\"\n"));
    assert!(e.contains("held-device, always, never"), "{e}");
    // A [cluster] table: the agent decides, repd never by itself.
    let cluster = "[cluster]\nauth-key = \"k\"\n";
    assert_eq!(get(cluster), ResumeAfterCrash::Never);
    let never = format!("{cluster}[startup]\nresume-after-crash = \"never\"\n");
    assert_eq!(get(&never), ResumeAfterCrash::Never);
    for v in ["held-device", "always"] {
        let e = err(&with(&format!(
            "{cluster}[startup]\nresume-after-crash = \"{v}\"\n"
        )));
        assert!(e.contains("the cluster agent decides"), "{e}");
    }
}

#[test]
fn sample_file_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/r0.toml");
    let c = Config::load(path).unwrap();
    assert_eq!(c.resource.name, "r0");
    let (alpha, beta) = c.local(Some("alpha")).unwrap();
    assert_eq!(alpha.address, "127.0.0.1:7788".parse().unwrap());
    assert_eq!(beta.address, "127.0.0.1:7789".parse().unwrap());
    assert_eq!(alpha.disk, PathBuf::from("/var/lib/rep/alpha.img"));
    assert_eq!(beta.disk, PathBuf::from("/var/lib/rep/beta.img"));
    let (b, a) = c.local(Some("beta")).unwrap();
    assert_eq!((b.name.as_str(), a.name.as_str()), ("beta", "alpha"));
    assert!(c.node("alpha").is_some());
    assert!(c.node("gamma").is_none());
}

#[test]
fn full_values() {
    let text = r#"
[resource]
name = "web"
protocol = "A"
[net]
secret = "x"
timeout-ms = 100
ping-int-ms = 50
ko-count = 3
max-buffers = 64
csums = true
[sync]
rate = "10M"
al-extents = 257
verify = "crc32c"
[startup]
wfc-timeout = 30
degr-wfc-timeout = 0
[disk]
on-io-error = "pass-on"
[split-brain]
after-sb-0pri = "discard-node-beta"
after-sb-1pri = "consensus"
after-sb-2pri = "call-pri-lost-after-sb"
[[node]]
name = "alpha"
address = "[::1]:7788"
disk = "/dev/sdb1"
meta-disk = "/dev/sdc1"
device = 3
nbd = "127.0.0.1:10809"
[[node]]
name = "beta"
address = "10.0.0.2:7788"
disk = "/dev/sdb1"
nbd = "127.0.0.1:10810"
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.resource.protocol, Protocol::A);
    assert_eq!(c.net.timeout, Duration::from_millis(100));
    assert!(c.net.csums);
    assert_eq!(c.sync.rate, 10 << 20);
    assert_eq!(c.sync.al_extents, 257);
    assert_eq!(c.startup.wfc_timeout, Some(Duration::from_secs(30)));
    assert_eq!(c.startup.degr_wfc_timeout, None);
    assert_eq!(c.disk.on_io_error, OnIoError::PassOn);
    assert_eq!(
        c.split_brain.after_sb_0pri,
        AfterSb0Pri::DiscardNode("beta".into())
    );
    assert_eq!(c.split_brain.after_sb_1pri, AfterSb1Pri::Consensus);
    assert_eq!(c.split_brain.after_sb_2pri, AfterSb2Pri::CallPriLostAfterSb);
    assert_eq!(c.nodes[0].meta_disk, MetaDisk::External("/dev/sdc1".into()));
    assert_eq!(c.nodes[0].device_path(), PathBuf::from("/dev/ublkb3"));
    assert_eq!(c.nodes[0].nbd, Some("127.0.0.1:10809".parse().unwrap()));
}

#[test]
fn rates() {
    assert_eq!(parse_rate("0"), Ok(0));
    assert_eq!(parse_rate("4096"), Ok(4096));
    assert_eq!(parse_rate("10K"), Ok(10 << 10));
    assert_eq!(parse_rate("10k"), Ok(10 << 10));
    assert_eq!(parse_rate("100M"), Ok(100 << 20));
    assert_eq!(parse_rate("2G"), Ok(2 << 30));
    assert!(parse_rate("").is_err());
    assert!(parse_rate("M").is_err());
    assert!(parse_rate("10T").is_err());
    assert!(parse_rate("1.5M").is_err());
    assert!(parse_rate("-1").is_err());
    assert!(parse_rate("99999999999999999999G").is_err());
    let c = parse(&MINIMAL.replace(
        "[[node]]\nname = \"alpha\"",
        "[sync]\nrate = 1000\n[[node]]\nname = \"alpha\"",
    ))
    .unwrap();
    assert_eq!(c.sync.rate, 1000);
    assert_eq!(c.sync.rate_limit(), Some(1000));
    let c = parse(&MINIMAL.replace(
        "[[node]]\nname = \"alpha\"",
        "[sync]\nrate = \"0\"\n[[node]]\nname = \"alpha\"",
    ))
    .unwrap();
    assert_eq!(c.sync.rate_limit(), None);
    let e = err(&MINIMAL.replace(
        "[[node]]\nname = \"alpha\"",
        "[sync]\nrate = \"fast\"\n[[node]]\nname = \"alpha\"",
    ));
    assert!(e.contains("sync.rate") && e.contains("fast"), "{e}");
}

#[test]
fn format_rate_reads_back() {
    for (rate, text) in [
        (0, "0"),
        (1000, "1000"),
        (4096, "4K"),
        (100 << 20, "100M"),
        (1536 << 20, "1536M"),
        (2 << 30, "2G"),
    ] {
        assert_eq!(format_rate(rate), text);
        assert_eq!(parse_rate(text), Ok(rate));
    }
}

/// `repctl dump`: the written file loads to the same configuration,
/// defaults spelt out, and writing it again changes nothing.
#[test]
fn to_toml_round_trips() {
    let cluster = format!(
        "{MINIMAL}[cluster]\nauth-key = \"k\"\n[[cluster.path]]\nnode = \"alpha\"\n\
         address = \"127.0.0.1:7000\"\n[[cluster.resource]]\nkind = \"device\"\n"
    );
    let full = MINIMAL
        .replace("name = \"r0\"", "name = \"r0\"\nprotocol = \"a\"")
        .replace(
            "disk = \"/tmp/a.img\"",
            "disk = \"/tmp/a.img\"\nmeta-disk = \"/tmp/a.md\"\nnbd = \"[::1]:10809\"\ndevice = 4",
        )
        .replace(
            "[[node]]\nname = \"alpha\"",
            "[sync]\nrate = 3000\n[startup]\ndegr-wfc-timeout = 0\nwfc-timeout = 9\n\
             [split-brain]\nafter-sb-0pri = \"discard-node-beta\"\n[[node]]\nname = \"alpha\"",
        );
    // TOML's escapes: quotes, a comment sign, a newline, a space in a path.
    let odd = MINIMAL
        .replace("\"s3cret\"", "'a \"quoted\" #secret'")
        .replace("/tmp/b.img", "/tmp/b disk\\n.img");
    let c = parse(&odd).unwrap();
    assert_eq!(c.net.secret, "a \"quoted\" #secret");
    assert_eq!(c.nodes[1].disk, PathBuf::from("/tmp/b disk\n.img"));
    for text in [MINIMAL.to_owned(), full, cluster, odd] {
        let c = parse(&text).unwrap();
        let dumped = c.to_toml().unwrap();
        let again = parse(&dumped).unwrap_or_else(|e| panic!("{e}\n{dumped}"));
        assert_eq!(again, c, "{dumped}");
        assert_eq!(again.to_toml().unwrap(), dumped);
    }
    let dumped = parse(MINIMAL).unwrap().to_toml().unwrap();
    for line in [
        "protocol = \"C\"",
        "timeout-ms = 6000",
        "rate = \"100M\"",
        "degr-wfc-timeout = 120",
        "resume-after-crash = \"held-device\"",
        "on-io-error = \"pass-on\"",
        "after-sb-2pri = \"disconnect\"",
        "meta-disk = \"internal\"",
        "device = 0",
    ] {
        assert!(dumped.lines().any(|l| l == line), "{line} in\n{dumped}");
    }
    assert!(!dumped.contains("nbd"), "{dumped}");
}

#[test]
fn display_round_trips() {
    for s in [
        "disconnect",
        "discard-younger-primary",
        "discard-older-primary",
        "discard-zero-changes",
        "discard-least-changes",
        "discard-node-x",
    ] {
        assert_eq!(s.parse::<AfterSb0Pri>().unwrap().to_string(), s);
    }
    for s in [
        "disconnect",
        "consensus",
        "discard-secondary",
        "call-pri-lost-after-sb",
    ] {
        assert_eq!(s.parse::<AfterSb1Pri>().unwrap().to_string(), s);
    }
    for s in ["disconnect", "call-pri-lost-after-sb"] {
        assert_eq!(s.parse::<AfterSb2Pri>().unwrap().to_string(), s);
    }
    assert_eq!(
        "pass-on".parse::<OnIoError>().unwrap().to_string(),
        "pass-on"
    );
    assert!("discard-node-".parse::<AfterSb0Pri>().is_err());
    assert_eq!(MetaDisk::Internal.to_string(), "internal");
}

#[test]
fn unknown_key_is_named() {
    let e = err(&MINIMAL.replace("secret = \"s3cret\"", "secret = \"s3cret\"\ntimeout = 5"));
    assert!(
        e.contains("timeout") && e.contains("test.toml") && e.contains("unknown field"),
        "{e}"
    );
    let e = err(&MINIMAL.replace(
        "disk = \"/tmp/a.img\"",
        "disk = \"/tmp/a.img\"\nmeta_disk = \"internal\"",
    ));
    assert!(e.contains("meta_disk"), "{e}");
    let e = err(&format!("{MINIMAL}\n[syncer]\nrate = \"1M\"\n"));
    assert!(e.contains("syncer"), "{e}");
}

#[test]
fn syntax_error_names_file() {
    let e = err("[resource\nname = 1");
    assert!(e.contains("test.toml"), "{e}");
}

#[test]
fn missing_resource_section() {
    let e = err("[net]\nsecret = \"x\"\n");
    assert!(e.contains("resource"), "{e}");
}

#[test]
fn node_count() {
    let one = MINIMAL.split("[[node]]\nname = \"beta\"").next().unwrap();
    let e = err(one);
    assert!(e.contains("exactly two") && e.contains("found 1"), "{e}");
    let three = format!(
        "{MINIMAL}[[node]]\nname = \"gamma\"\naddress = \"127.0.0.1:7790\"\ndisk = \"/tmp/c\"\n"
    );
    let e = err(&three);
    assert!(e.contains("found 3"), "{e}");
    let none = "[resource]\nname = \"r0\"\n[net]\nsecret = \"x\"\n";
    assert!(err(none).contains("found 0"));
}

#[test]
fn duplicate_names_and_addresses() {
    let e = err(&MINIMAL.replace("name = \"beta\"", "name = \"alpha\""));
    assert!(
        e.contains("duplicate node name") && e.contains("alpha"),
        "{e}"
    );
    let e = err(&MINIMAL.replace("127.0.0.1:7789", "127.0.0.1:7788"));
    assert!(
        e.contains("duplicate address") && e.contains("127.0.0.1:7788"),
        "{e}"
    );
    let both_nbd = MINIMAL
        .replace(
            "disk = \"/tmp/a.img\"",
            "disk = \"/tmp/a.img\"\nnbd = \"127.0.0.1:10809\"",
        )
        .replace(
            "disk = \"/tmp/b.img\"",
            "disk = \"/tmp/b.img\"\nnbd = \"127.0.0.1:10809\"",
        );
    let e = err(&both_nbd);
    assert!(e.contains("duplicate nbd address"), "{e}");
    let clash = MINIMAL.replace(
        "disk = \"/tmp/a.img\"",
        "disk = \"/tmp/a.img\"\nnbd = \"127.0.0.1:7789\"",
    );
    let e = err(&clash);
    assert!(
        e.contains("node[0].nbd") && e.contains("replication address"),
        "{e}"
    );
}

#[test]
fn bad_addresses() {
    let e = err(&MINIMAL.replace("127.0.0.1:7789", "beta-host:7789"));
    assert!(
        e.contains("node[1].address") && e.contains("beta-host:7789"),
        "{e}"
    );
    let e = err(&MINIMAL.replace("127.0.0.1:7788", "127.0.0.1"));
    assert!(e.contains("node[0].address"), "{e}");
    let e = err(&MINIMAL.replace(
        "disk = \"/tmp/a.img\"",
        "disk = \"/tmp/a.img\"\nnbd = \"nowhere\"",
    ));
    assert!(e.contains("node[0].nbd") && e.contains("nowhere"), "{e}");
}

#[test]
fn unknown_local_node_lists_names() {
    let c = parse(MINIMAL).unwrap();
    let e = c.local(Some("gamma")).unwrap_err().to_string();
    assert!(
        e.contains("gamma")
            && e.contains("\"alpha\"")
            && e.contains("\"beta\"")
            && e.contains("--node"),
        "{e}"
    );
}

#[test]
fn local_defaults_to_host_name() {
    let host = host_name().unwrap();
    let short = host.split('.').next().unwrap().to_owned();
    if short.is_empty() || short == "beta" || check_name(Path::new("x"), "x", &short).is_err() {
        return;
    }
    let text = MINIMAL.replace("name = \"alpha\"", &format!("name = \"{short}\""));
    let c = parse(&text).unwrap();
    let (me, peer) = c.local(None).unwrap();
    assert_eq!(me.name, short);
    assert_eq!(peer.name, "beta");
}

#[test]
fn local_disk_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("alpha.img");
    let text = MINIMAL.replace("/tmp/a.img", disk.to_str().unwrap());
    let c = parse(&text).unwrap();
    let (me, _) = c.local(Some("alpha")).unwrap();
    let e = c.check_local_disk(me).unwrap_err().to_string();
    assert!(
        e.contains(disk.to_str().unwrap()) && e.contains("does not exist"),
        "{e}"
    );
    std::fs::write(&disk, b"").unwrap();
    c.check_local_disk(me).unwrap();
}

#[test]
fn secret_required() {
    let e = err(&MINIMAL.replace("secret = \"s3cret\"", ""));
    assert!(e.contains("net.secret"), "{e}");
    let e = err(&MINIMAL.replace("secret = \"s3cret\"", "secret = \"\""));
    assert!(e.contains("net.secret"), "{e}");
}

#[test]
fn enum_values_checked() {
    let with = |section: &str, kv: &str| {
        MINIMAL.replace(
            "[[node]]\nname = \"alpha\"",
            &format!("[{section}]\n{kv}\n[[node]]\nname = \"alpha\""),
        )
    };
    let e = err(&with("sync", "verify = \"md5\""));
    assert!(e.contains("sync.verify") && e.contains("md5"), "{e}");
    let e = err(&with("sync", "al-extents = 6"));
    assert!(e.contains("sync.al-extents"), "{e}");
    let e = err(&with("sync", "al-extents = 65535"));
    assert!(e.contains("sync.al-extents"), "{e}");
    parse(&with("sync", "al-extents = 7")).unwrap();
    parse(&with("sync", "al-extents = 65534")).unwrap();
    let e = err(&with("disk", "on-io-error = \"panic\""));
    assert!(e.contains("disk.on-io-error") && e.contains("panic"), "{e}");
    // DRBD 8.4's default: accepted, with or without a handler.
    assert_eq!(
        parse(&with("disk", "on-io-error = \"detach\""))
            .unwrap()
            .disk
            .on_io_error,
        OnIoError::Detach
    );
    let e = err(&with(
        "split-brain",
        "after-sb-0pri = \"discard-node-gamma\"",
    ));
    assert!(
        e.contains("split-brain.after-sb-0pri") && e.contains("gamma"),
        "{e}"
    );
    let e = err(&with("split-brain", "after-sb-0pri = \"random\""));
    assert!(e.contains("split-brain.after-sb-0pri"), "{e}");
    let e = err(&with(
        "split-brain",
        "after-sb-1pri = \"discard-younger-primary\"",
    ));
    assert!(e.contains("split-brain.after-sb-1pri"), "{e}");
    let e = err(&with("split-brain", "after-sb-2pri = \"consensus\""));
    assert!(e.contains("split-brain.after-sb-2pri"), "{e}");
    let e = err(&MINIMAL.replace("name = \"r0\"", "name = \"r0\"\nprotocol = \"D\""));
    assert!(e.contains("resource.protocol"), "{e}");
    let e = err(&with("net", "ko-count = \"seven\"").replace("[net]\nsecret = \"s3cret\"\n", ""));
    assert!(e.contains("ko-count"), "{e}");
}

#[test]
fn names_checked() {
    let e = err(&MINIMAL.replace("name = \"r0\"", &format!("name = \"{}\"", "r".repeat(64))));
    assert!(e.contains("resource.name") && e.contains("63"), "{e}");
    let e = err(&MINIMAL.replace("name = \"beta\"", "name = \"be ta\""));
    assert!(e.contains("node[1].name"), "{e}");
    let e = err(&MINIMAL.replace("name = \"beta\"", "name = \"\""));
    assert!(e.contains("node[1].name"), "{e}");
}

#[test]
fn meta_disk_not_the_data_disk() {
    let e = err(&MINIMAL.replace(
        "disk = \"/tmp/a.img\"",
        "disk = \"/tmp/a.img\"\nmeta-disk = \"/tmp/a.img\"",
    ));
    assert!(e.contains("node[0].meta-disk"), "{e}");
}

/// `[metrics] listen` applies to both nodes, a node's own `metrics` key
/// wins; both come back from `repctl dump`; bad values name their key.
#[test]
fn metrics_addresses() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.metrics, Metrics::default());
    assert_eq!(c.metrics_listen(&c.nodes[0]), None);

    let text = MINIMAL.replace(
        "[[node]]\nname = \"alpha\"",
        "[metrics]\nlisten = \"0.0.0.0:9942\"\n[[node]]\nname = \"alpha\"",
    );
    let text = text.replace(
        "disk = \"/tmp/b.img\"",
        "disk = \"/tmp/b.img\"\nmetrics = \"127.0.0.1:9943\"",
    );
    let c = parse(&text).unwrap();
    let alpha = c.metrics_listen(&c.nodes[0]).unwrap();
    assert_eq!(alpha.addr.to_string(), "0.0.0.0:9942");
    assert_eq!(alpha.key, "metrics.listen");
    let beta = c.metrics_listen(&c.nodes[1]).unwrap();
    assert_eq!(beta.addr.to_string(), "127.0.0.1:9943");
    assert_eq!(beta.key, "node[1].metrics");
    let dumped = c.to_toml().unwrap();
    assert!(
        dumped.contains("[metrics]\nlisten = \"0.0.0.0:9942\""),
        "{dumped}"
    );
    assert!(dumped.contains("metrics = \"127.0.0.1:9943\""), "{dumped}");
    assert_eq!(parse(&dumped).unwrap(), c);

    let e = err(&format!("{MINIMAL}[metrics]\nlisten = \"localhost\"\n"));
    assert!(
        e.contains("`metrics.listen`") && e.contains("IP:PORT"),
        "{e}"
    );
    let e = err(&MINIMAL.replace(
        "disk = \"/tmp/a.img\"",
        "disk = \"/tmp/a.img\"\nmetrics = \"9942\"",
    ));
    assert!(e.contains("`node[0].metrics`"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[metrics]\nlisten = \"127.0.0.1:7788\"\n"
    ));
    assert!(
        e.contains("`metrics.listen`") && e.contains("replication address"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[metrics]\nport = 9942\n"));
    assert!(e.contains("unknown field `port`"), "{e}");
}

#[test]
fn fencing_needs_a_fence_peer_handler_with_an_absolute_path() {
    use replication_proto::machine::Fencing;
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.net.fencing, Fencing::DontCare);
    assert_eq!(c.handlers, Handlers::default());
    let with = |net: &str, handlers: &str| {
        MINIMAL.replace("[net]\n", &format!("[net]\n{net}\n"))
            + &format!("[handlers]\n{handlers}\n")
    };
    let e = err(&with("fencing = \"resource-and-stonith\"", ""));
    assert!(
        e.contains("net.fencing") && e.contains("needs a fence-peer handler"),
        "{e}"
    );
    let e = err(&with("fencing = \"stonith\"", ""));
    assert!(e.contains("resource-only"), "{e}");
    let e = err(&with("", "fence-peer = \"crm-fence-peer\""));
    assert!(
        e.contains("handlers.fence-peer") && e.contains("absolute path"),
        "{e}"
    );
    let e = err(&with("", "unfence-peer = \"/x\"\ntimeout-ms = 0"));
    assert!(e.contains("handlers.timeout-ms"), "{e}");
    let text = with(
        "fencing = \"resource-only\"",
        "fence-peer = \"/usr/lib/rep/crm-fence-peer --clone ms_r0\"\n\
         unfence-peer = \"/usr/lib/rep/crm-unfence-peer\"\ntimeout-ms = 5000",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.net.fencing, Fencing::ResourceOnly);
    assert_eq!(
        c.handlers.fence_peer.as_deref(),
        Some("/usr/lib/rep/crm-fence-peer --clone ms_r0")
    );
    assert_eq!(c.handlers.timeout, Duration::from_millis(5000));
    // `repctl dump` writes it back so that it loads to the same.
    let dumped = c.to_toml().unwrap();
    assert!(dumped.contains("[handlers]"), "{dumped}");
    let again = parse(&dumped).unwrap();
    assert_eq!(again.net, c.net);
    assert_eq!(again.handlers, c.handlers);
}

#[test]
fn event_handlers_load_check_their_path_and_dump_back() {
    let with = |handlers: &str| format!("{MINIMAL}[handlers]\n{handlers}\n");
    for key in [
        "split-brain",
        "initial-split-brain",
        "pri-lost-after-sb",
        "local-io-error",
        "after-resync-target",
    ] {
        let e = err(&with(&format!("{key} = \"notify.sh\"")));
        assert!(
            e.contains(&format!("handlers.{key}")) && e.contains("absolute path"),
            "{e}"
        );
    }
    let c = parse(&with(
        "split-brain = \"/usr/lib/drbd/notify-split-brain.sh root\"\n\
         pri-lost-after-sb = \"/usr/lib/drbd/notify-pri-lost-after-sb.sh root\"",
    ))
    .unwrap();
    assert_eq!(
        c.handlers.split_brain.as_deref(),
        Some("/usr/lib/drbd/notify-split-brain.sh root")
    );
    assert_eq!(
        c.handlers.pri_lost_after_sb.as_deref(),
        Some("/usr/lib/drbd/notify-pri-lost-after-sb.sh root")
    );
    let dumped = c.to_toml().unwrap();
    assert!(dumped.contains("split-brain = "), "{dumped}");
    assert_eq!(parse(&dumped).unwrap().handlers, c.handlers);
}

#[test]
fn call_local_io_error_needs_its_handler_and_panic_says_what_replaced_it() {
    let with = |disk: &str, handlers: &str| {
        format!("{MINIMAL}[disk]\non-io-error = \"{disk}\"\n[handlers]\n{handlers}\n")
    };
    let e = err(&with("call-local-io-error", ""));
    assert!(
        e.contains("disk.on-io-error") && e.contains("needs a local-io-error handler"),
        "{e}"
    );
    let c = parse(&with(
        "call-local-io-error",
        "local-io-error = \"/bin/true\"",
    ))
    .unwrap();
    assert_eq!(c.disk.on_io_error, OnIoError::CallLocalIoError);
    assert_eq!(c.handlers.local_io_error.as_deref(), Some("/bin/true"));
    let again = parse(&c.to_toml().unwrap()).unwrap();
    assert_eq!(again.disk, c.disk);
    assert_eq!(again.handlers, c.handlers);
    let e = err(&with("panic", ""));
    assert!(
        e.contains("removed in DRBD 8.4") && e.contains("call-local-io-error"),
        "{e}"
    );
    let c = parse(&with("detach", "local-io-error = \"/bin/true\"")).unwrap();
    assert_eq!(c.disk.on_io_error, OnIoError::Detach);
    assert_eq!(parse(&c.to_toml().unwrap()).unwrap().disk, c.disk);
}

/// The resync controller's keys: off by default with DRBD 8.4.3's other
/// values, read with K/M/G like `rate`, dumped back, and each out-of-range
/// value refused with its key and its range.
#[test]
fn resync_controller_keys() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.sync.control,
        replication_proto::machine::ResyncControl::default()
    );
    assert!(!c.sync.control.enabled());
    let with = |keys: &str| {
        MINIMAL.replace(
            "[[node]]\nname = \"alpha\"",
            &format!("[sync]\n{keys}\n[[node]]\nname = \"alpha\""),
        )
    };
    let on = parse(&with(
        "c-plan-ahead = 20\nc-fill-target = \"1M\"\nc-delay-target = 5\nc-max-rate = \"40M\"\nc-min-rate = 4194304",
    ))
    .unwrap();
    let p = on.sync.control;
    assert!(p.enabled());
    assert_eq!(
        (p.plan_ahead_ds, p.fill_target_bytes, p.delay_target_ds),
        (20, 1 << 20, 5)
    );
    assert_eq!(
        (p.max_rate_bytes_per_s, p.min_rate_bytes_per_s),
        (40 << 20, 4 << 20)
    );
    let dumped = on.to_toml().unwrap();
    for line in [
        "c-plan-ahead = 20",
        "c-fill-target = \"1M\"",
        "c-min-rate = \"4M\"",
    ] {
        assert!(dumped.lines().any(|l| l == line), "{line} in {dumped}");
    }
    assert_eq!(parse(&dumped).unwrap().sync.control, p);
    for (keys, want) in [
        ("c-plan-ahead = 301", "sync.c-plan-ahead"),
        ("c-delay-target = 0", "sync.c-delay-target"),
        ("c-fill-target = \"1G\"", "sync.c-fill-target"),
        ("c-max-rate = \"100K\"", "sync.c-max-rate"),
        (
            "c-max-rate = \"10M\"\nc-min-rate = \"20M\"",
            "sync.c-min-rate",
        ),
        ("c-min-rate = \"fast\"", "sync.c-min-rate"),
    ] {
        let e = err(&with(keys));
        assert!(e.contains(want), "{keys}: {e}");
    }
    assert!(err(&with("c-max-rate = \"100K\"")).contains("250K..=4G"));
}
