//! The `[cluster]` table's tests: defaults, links, and every refusal with
//! its key and message.

use super::*;

const BASE: &str = r#"
[resource]
name = "r0"
[net]
secret = "s"
[[node]]
name = "alpha"
address = "10.0.0.1:7788"
disk = "/tmp/a.img"
[[node]]
name = "beta"
address = "10.0.0.2:7788"
disk = "/tmp/b.img"
"#;

const CLUSTER: &str = r#"
[cluster]
auth-key = "k"
[[cluster.path]]
node = "alpha"
bind = "10.0.0.1:694"
[[cluster.path]]
node = "beta"
bind = "10.0.0.2:694"
[[cluster.path]]
node = "alpha"
bind = "10.1.0.1:694"
name = "eth2"
[[cluster.path]]
node = "beta"
bind = "10.1.0.2:694"
"#;

fn load(extra: &str) -> Result<AgentConfig, String> {
    let text = format!("{BASE}{CLUSTER}{extra}");
    AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
        .map_err(|e| e.to_string())
}

#[test]
fn defaults_and_links() {
    let c = load("").unwrap();
    assert_eq!(c.cluster.keepalive, Duration::from_millis(200));
    assert_eq!(c.cluster.warntime, Duration::from_millis(1000));
    assert_eq!(c.cluster.deadtime, Duration::from_millis(2000));
    assert_eq!(c.cluster.initdead, Duration::from_millis(10000));
    assert!(!c.cluster.auto_failback);
    assert!(c.cluster.fence_command.is_none());
    assert!(c.cluster.resources.is_empty());
    let l = c.links();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].local, "10.0.0.1:694".parse().unwrap());
    assert_eq!(l[0].peer, "10.0.0.2:694".parse().unwrap());
    assert_eq!(l[0].name, "path0");
    assert_eq!(l[1].name, "eth2");
    assert_eq!(l[1].peer, "10.1.0.2:694".parse().unwrap());
    assert_eq!(c.peer, "beta");
}

#[test]
fn witness_settings() {
    let c = load("").unwrap();
    assert_eq!(c.cluster.witness, None);
    assert_eq!(c.cluster.on_no_quorum, NoQuorum::SuspendIo);
    let text = format!(
        "{BASE}{}",
        CLUSTER.replacen(
            "auth-key = \"k\"\n",
            "auth-key = \"k\"\nwitness = \"10.0.0.3:7790\"\non-no-quorum = \"io-error\"\n",
            1
        )
    );
    let c = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha")).unwrap();
    assert_eq!(c.cluster.witness, Some("10.0.0.3:7790".parse().unwrap()));
    assert_eq!(c.cluster.on_no_quorum, NoQuorum::IoError);
    // The witness reads the same file without a node of its own.
    let w = WitnessConfig::from_str_named(&text, Path::new("r0.toml")).unwrap();
    assert_eq!(w.nodes, ["alpha".to_string(), "beta".to_string()]);
    assert_eq!(w.resource, "r0");
    assert_eq!(w.witness, c.cluster.witness);
}

#[test]
fn the_example_parses() {
    let text = include_str!("../../examples/r0-cluster.toml");
    for n in ["alpha", "beta"] {
        let c = AgentConfig::from_str_named(text, Path::new("r0-cluster.toml"), Some(n))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.cluster.resources.len(), 3);
        assert_eq!(c.links().len(), 2);
    }
}

#[test]
fn unknown_keys_are_named() {
    let e = load("dedtime-ms = 3\n").unwrap_err();
    assert!(e.contains("dedtime-ms"), "{e}");
    let e = load("[[cluster.resource]]\ntype = \"service\"\nscript = \"/x\"\nscirpt = 1\n")
        .unwrap_err();
    assert!(e.contains("scirpt"), "{e}");
    let e = load("[[cluster.resource]]\ntype = \"service\"\nscript = \"/x\"\ninterface = \"e\"\n")
        .unwrap_err();
    assert!(e.contains("cluster.resource[0].interface"), "{e}");
}

#[test]
fn resources_parse_and_device_comes_first() {
    let c = load(
        r#"
[[cluster.resource]]
type = "device"
[[cluster.resource]]
type = "filesystem"
mount-point = "/srv"
fstype = "ext4"
[[cluster.resource]]
type = "ip"
address = "192.168.0.100/24"
interface = "eth0"
[[cluster.resource]]
type = "service"
script = "/etc/init.d/smb"
timeout-ms = 5000
"#,
    )
    .unwrap();
    assert_eq!(c.cluster.resources.len(), 3);
    assert_eq!(c.cluster.resources[1].label(), "ip:192.168.0.100/24");
    assert_eq!(
        c.cluster.resources[2].timeout(),
        Duration::from_millis(5000)
    );
    let e = load(
        "[[cluster.resource]]\ntype = \"service\"\nscript = \"/x\"\n[[cluster.resource]]\ntype = \"device\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("cluster.resource[1].type") && e.contains("first"),
        "{e}"
    );
    let e = load("[[cluster.resource]]\ntype = \"drbddisk\"\n").unwrap_err();
    assert!(e.contains("unknown resource type"), "{e}");
    let e = load("[[cluster.resource]]\ntype = \"ip\"\naddress = \"1.2.3.4\"\ninterface = \"e\"\n")
        .unwrap_err();
    assert!(e.contains("cluster.resource[0].address"), "{e}");
}

#[test]
fn operation_keys_parse_and_are_checked() {
    use crate::vocab::StopFailure;
    let with = |extra: &str| {
        let text = format!(
            "{BASE}{}",
            CLUSTER.replacen(
                "auth-key = \"k\"\n",
                &format!("auth-key = \"k\"\n{extra}"),
                1
            )
        );
        AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
            .map_err(|e| e.to_string())
    };
    let c = with("").unwrap();
    assert!(c.cluster.ops.ping_nodes.is_empty());
    assert_eq!(c.cluster.ops.on_stop_failure, StopFailure::Block);
    assert_eq!(c.cluster.ops.ping_dead, Duration::from_millis(3000));
    let c = with(
        "ping-nodes = [\"10.0.0.254\", \"fd00::1\"]\nping-interval-ms = 500\n\
         on-stop-failure = \"reboot-hook\"\nreboot-command = \"echo b > /proc/sysrq-trigger\"\n\
         split-brain-command = \"/bin/true\"\n",
    )
    .unwrap();
    assert_eq!(c.cluster.ops.ping_nodes.len(), 2);
    assert_eq!(c.cluster.ops.ping_dead, Duration::from_millis(1500));
    assert_eq!(c.cluster.ops.on_stop_failure, StopFailure::RebootHook);
    assert_eq!(
        c.cluster.ops.split_brain_command.as_deref(),
        Some("/bin/true")
    );
    let c = with("fence-command = \"/bin/true\"\non-stop-failure = \"fence\"\n").unwrap();
    assert_eq!(c.cluster.ops.on_stop_failure, StopFailure::Fence);
    let cases: &[(&str, &str)] = &[
        (
            "ping-nodes = [\"10.0.0.254:80\"]\n",
            "cluster.ping-nodes[0]",
        ),
        (
            "ping-nodes = [\"1.2.3.4\", \"1.2.3.4\"]\n",
            "cluster.ping-nodes[1]",
        ),
        ("ping-interval-ms = 0\n", "cluster.ping-interval-ms"),
        (
            "ping-interval-ms = 1000\nping-dead-ms = 500\n",
            "cluster.ping-dead-ms",
        ),
        ("on-stop-failure = \"panic\"\n", "cluster.on-stop-failure"),
        ("on-stop-failure = \"fence\"\n", "fence-command"),
        ("on-stop-failure = \"reboot-hook\"\n", "reboot-command"),
        (
            "split-brain-command = \"\"\n",
            "cluster.split-brain-command",
        ),
    ];
    for (extra, needle) in cases {
        let e = with(extra).unwrap_err();
        assert!(e.contains(needle), "{extra}: {e}");
    }
}

#[test]
fn bad_values_are_refused_with_the_key() {
    let cases: &[(&str, &str)] = &[
        ("deadtime-ms = 300\n", "cluster.deadtime-ms"),
        ("warntime-ms = 100\n", "cluster.warntime-ms"),
        ("initdead-ms = 1000\n", "cluster.initdead-ms"),
        ("preferred = \"gamma\"\n", "cluster.preferred"),
        ("auto-failback = true\n", "cluster.auto-failback"),
        ("witness = \"nowhere\"\n", "cluster.witness"),
        ("fence-command = \" \"\n", "cluster.fence-command"),
        ("on-no-quorum = \"freeze\"\n", "cluster.on-no-quorum"),
        ("on-no-quorum = \"io-error\"\n", "cluster.on-no-quorum"),
    ];
    for (extra, key) in cases {
        // Top-level keys must come before the [[cluster.path]] tables.
        let text = format!(
            "{BASE}{}",
            CLUSTER.replacen(
                "auth-key = \"k\"\n",
                &format!("auth-key = \"k\"\n{extra}"),
                1
            )
        );
        let e = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
    let text = format!("{BASE}{}", CLUSTER.replace("auth-key = \"k\"\n", ""));
    let e = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.auth-key"), "{e}");
    let text = format!("{BASE}[cluster]\nauth-key = \"k\"\n[[cluster.path]]\nnode = \"alpha\"\nbind = \"10.0.0.1:694\"\n");
    let e = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.path"), "{e}");
    let e = AgentConfig::from_str_named(BASE, Path::new("r0.toml"), Some("alpha"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[cluster]"), "{e}");
    let text = format!("{BASE}{}", CLUSTER.replace("10.1.0.2:694", "10.0.0.2:7788"));
    let e = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("replication"), "{e}");
}

/// `load` with `keys` in the [cluster] table itself and `extra` after it.
fn load_with(keys: &str, extra: &str) -> Result<AgentConfig, String> {
    let cluster = CLUSTER.replacen(
        "auth-key = \"k\"\n",
        &format!("auth-key = \"k\"\n{keys}"),
        1,
    );
    let text = format!("{BASE}{cluster}{extra}");
    AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
        .map_err(|e| e.to_string())
}

#[test]
fn monitor_settings_default_and_override_per_resource() {
    let two = "[[cluster.resource]]\ntype = \"device\"\n\
               [[cluster.resource]]\ntype = \"service\"\nscript = \"/a\"\n\
               [[cluster.resource]]\ntype = \"service\"\nscript = \"/b\"\nmonitor-interval-ms = 0\n\
               [[cluster.resource]]\ntype = \"ip\"\naddress = \"10.0.0.9/24\"\ninterface = \"e\"\n\
               migration-threshold = 1\nmonitor-timeout-ms = 500\n";
    let c = load(two).unwrap();
    let m = &c.cluster.monitors;
    assert_eq!(m.len(), 3, "the device has no entry");
    let d = MonitorSettings {
        interval: Duration::from_millis(10_000),
        timeout: Duration::from_millis(20_000),
        threshold: 3,
    };
    assert_eq!(m[0], d);
    assert_eq!(m[1].interval, Duration::ZERO);
    assert_eq!(
        (m[2].threshold, m[2].timeout),
        (1, Duration::from_millis(500))
    );
    // [cluster] sets the defaults of every resource.
    let c = load_with(
        "monitor-interval-ms = 2000\nmigration-threshold = 0\nmonitor-timeout-ms = 900\n",
        two,
    )
    .unwrap();
    let m = &c.cluster.monitors;
    assert_eq!(m[0].interval, Duration::from_millis(2000));
    assert_eq!(m[0].threshold, 0);
    assert_eq!(m[0].timeout, Duration::from_millis(900));
    assert_eq!(m[1].interval, Duration::ZERO);
    assert_eq!(m[2].threshold, 1);
}

#[test]
fn monitor_settings_refused() {
    let e = load_with("monitor-interval-ms = 50\n", "").unwrap_err();
    assert!(e.contains("cluster.monitor-interval-ms"), "{e}");
    assert!(e.contains("at least 100"), "{e}");
    let e =
        load("[[cluster.resource]]\ntype = \"service\"\nscript = \"/x\"\nmonitor-timeout-ms = 0\n")
            .unwrap_err();
    assert!(e.contains("cluster.resource[0].monitor-timeout-ms"), "{e}");
    let e = load("[[cluster.resource]]\ntype = \"device\"\nmigration-threshold = 2\n").unwrap_err();
    assert!(e.contains("cluster.resource[0].migration-threshold"), "{e}");
    let e = load_with("migration-threshold = -1\n", "").unwrap_err();
    assert!(e.contains("migration-threshold"), "{e}");
}
