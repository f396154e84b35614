//! Tests of the heartbeat importer: each ha.cf key, authkeys, each
//! haresources resource kind, the timing rules, node names and the
//! validation of a complete import.

use std::path::Path;

use super::hacf::parse_ms;
use super::*;
use crate::config::{AgentConfig, ResourceEntry};

/// The resource the tables are for: alpha 10.0.0.1, beta 10.0.0.2, device 0.
const RES: &str = "[resource]\nname = \"r0\"\n[net]\nsecret = \"s\"\n\
    [[node]]\nname = \"alpha\"\naddress = \"10.0.0.1:7788\"\ndisk = \"/d/a\"\ndevice = 0\n\
    [[node]]\nname = \"beta\"\naddress = \"10.0.0.2:7788\"\ndisk = \"/d/b\"\ndevice = 0\n";

/// A heartbeat directory with these files (`None`: absent).
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

fn run(files: &[(&str, &str)], res: bool) -> HeartbeatImport {
    let d = dir_with(files);
    let info = ResourceInfo::from_toml(RES).unwrap();
    import_heartbeat(d.path(), res.then_some(&info)).unwrap()
}

fn has_warning(i: &HeartbeatImport, option: &str, part: &str) {
    assert!(
        i.warnings
            .iter()
            .any(|w| w.option == option && w.message.contains(part)),
        "no warning on {option} with {part:?}:\n{}",
        i.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The resource file with the table appended, as the agent loads it.
fn load(i: &HeartbeatImport) -> AgentConfig {
    assert_eq!(i.fill_ins, 0, "{}", i.text);
    let text = format!("{RES}\n{}", i.text);
    AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const AUTH: (&str, &str) = ("authkeys", "auth 1\n1 sha1 k3y\n");

#[test]
fn times_in_seconds_or_milliseconds() {
    assert_eq!(parse_ms("2"), Some(2000));
    assert_eq!(parse_ms("2s"), Some(2000));
    assert_eq!(parse_ms("500ms"), Some(500));
    assert_eq!(parse_ms("1.5"), Some(1500));
    assert_eq!(parse_ms("0.25"), Some(250));
    for bad in ["", "x", "1.2345", "-1", "1e3", ".5"] {
        assert_eq!(parse_ms(bad), None, "{bad}");
    }
}

#[test]
fn a_complete_heartbeat_configuration_maps_without_anything_to_fill_in() {
    let ha = "# comment\nkeepalive 500ms\nwarntime 2\ndeadtime 5\ninitdead 30\nudpport 695\n\
              node alpha beta\nucast eth1 10.0.0.1\nucast eth1 10.0.0.2\nauto_failback on\n\
              ping 10.0.0.254\nping_group g 10.0.1.254 10.0.2.254\nrespawn hacluster /usr/lib/heartbeat/ipfail\n\
              deadping 20\n";
    let hr = "alpha drbddisk::r0 IPaddr2::192.168.0.100/24/eth0 Filesystem::/dev/drbd0::/srv::ext4::noatime svc\n";
    let i = run(
        &[
            ("ha.cf", ha),
            AUTH,
            ("haresources", hr),
            ("resource.d/svc", "#!/bin/sh\n"),
        ],
        true,
    );
    let c = load(&i).cluster;
    assert_eq!(c.keepalive.as_millis(), 500);
    assert_eq!(c.warntime.as_millis(), 2000);
    assert_eq!(c.deadtime.as_millis(), 5000);
    assert_eq!(c.initdead.as_millis(), 30_000);
    assert_eq!(c.auth_key, b"k3y");
    assert!(c.auto_failback);
    assert_eq!(c.preferred.as_deref(), Some("alpha"));
    assert_eq!(c.paths.len(), 2);
    assert_eq!(c.paths[0].bind.to_string(), "10.0.0.1:695");
    assert_eq!(c.paths[1].bind.to_string(), "10.0.0.2:695");
    assert_eq!(c.paths[0].name.as_deref(), Some("eth1"));
    assert_eq!(c.ops.ping_nodes.len(), 3);
    assert_eq!(c.ops.ping_dead.as_millis(), 20_000);
    assert!(
        matches!(&c.resources[0], ResourceEntry::Ip { interface, prefix: 24, .. } if interface == "eth0")
    );
    assert!(
        matches!(&c.resources[1], ResourceEntry::Filesystem { device: None, fstype: Some(f), options: Some(o), .. } if f == "ext4" && o == "noatime")
    );
    assert!(
        matches!(&c.resources[2], ResourceEntry::Service { script, .. } if script.ends_with("resource.d/svc"))
    );
    assert!(i.text.contains("type = \"device\""));
    has_warning(&i, "sha1", "HMAC-SHA256");
    has_warning(&i, "ping_group", "one group");
}

#[test]
fn keys_without_counterpart_are_named_with_their_line() {
    let ha = "keepalive 1\ndeadtime 10\nserial /dev/ttyS0\nbaud 19200\nwatchdog /dev/watchdog\n\
              logfile /var/log/ha-log\nlogfacility local0\ndebugfile /x\nuse_logd yes\napiauth ipfail uid=x\n\
              crm no\nstonith_host * baytech 10.0.0.3 mylogin\nrespawn hacluster /usr/bin/mon\nhopfudge 1\n\
              bcast eth0\nnode alpha\nnode beta\n";
    let i = run(&[("ha.cf", ha), AUTH], true);
    for (key, line, part) in [
        ("serial", 3, "UDP only"),
        ("baud", 4, "UDP only"),
        ("watchdog", 5, "watchdog"),
        ("logfile", 6, "journal"),
        ("logfacility", 7, "journal"),
        ("debugfile", 8, "journal"),
        ("use_logd", 9, "journal"),
        ("apiauth", 10, "API"),
        ("crm", 11, "CRM"),
        ("stonith_host", 12, "fence-command"),
        ("respawn", 13, "systemd"),
        ("hopfudge", 14, "no counterpart"),
    ] {
        assert!(
            i.warnings.iter().any(|w| w.option == key
                && w.loc.ends_with(&format!("ha.cf:{line}"))
                && w.message.contains(part)),
            "{key}: {:#?}",
            i.warnings
        );
    }
}

#[test]
fn broadcast_media_and_unknown_addresses_are_fill_ins() {
    let ha = "keepalive 1\ndeadtime 10\nnode alpha\nnode beta\nbcast eth0 eth1\nmcast eth2 225.0.0.1 694 1 0\n\
              ucast eth3 10.0.0.2\nucast eth4 10.9.9.9\n";
    let i = run(&[("ha.cf", ha), AUTH], true);
    // eth0, eth1, eth2: both sides; eth3: alpha's side; eth4: both.
    assert_eq!(i.fill_ins, 2 + 2 + 2 + 1 + 2, "{}", i.text);
    assert!(i.text.contains("bind = \"10.0.0.2:694\""));
    assert!(i
        .text
        .contains("# bind = \"ADDRESS-ON-eth2:694\"   # FILL IN"));
    has_warning(&i, "bcast", "unicast UDP");
    has_warning(&i, "mcast", "no broadcast or multicast");
    has_warning(&i, "ucast", "gives no address of alpha on eth3");
    has_warning(
        &i,
        "ucast",
        "10.9.9.9 is the replication address of neither node",
    );
}

#[test]
fn failback_words_and_their_old_spelling() {
    for (line, on, warned) in [
        ("auto_failback on", true, false),
        ("auto_failback off", false, false),
        ("auto_failback legacy", false, true),
        ("nice_failback on", false, false),
        ("nice_failback off", true, false),
    ] {
        let ha =
            format!("{line}\nnode alpha\nnode beta\nucast eth0 10.0.0.1\nucast eth0 10.0.0.2\n");
        let i = run(&[("ha.cf", &ha), AUTH, ("haresources", "beta svc\n")], true);
        assert_eq!(load(&i).cluster.auto_failback, on, "{line}");
        assert_eq!(
            i.warnings.iter().any(|w| w.message.contains("legacy")),
            warned,
            "{line}"
        );
    }
    // auto_failback on without haresources: preferred is to be filled in.
    let i = run(&[("ha.cf", "auto_failback on\nbcast eth0\n"), AUTH], true);
    assert!(i.text.contains("# preferred = \"NODE\""), "{}", i.text);
    has_warning(&i, "auto_failback", "fill in [cluster] preferred");
}

#[test]
fn authkeys_methods_and_selection() {
    let cases: [(&str, Option<&str>, &str, &str); 4] = [
        (
            "auth 3\n1 crc\n3 md5 secret\n",
            Some("secret"),
            "crc",
            "not the key in use",
        ),
        ("auth 1\n1 crc\n", None, "crc", "authenticates nothing"),
        (
            "auth 2\n2 sha1 <your-password>\n",
            Some("<your-password>"),
            "sha1",
            "placeholder",
        ),
        ("1 sha1 k\n", None, "auth-key", "no `auth N` line"),
    ];
    for (text, key, option, part) in cases {
        let i = run(&[("authkeys", text), ("ha.cf", "bcast eth0\n")], true);
        match key {
            Some(k) => assert!(
                i.text.contains(&format!("auth-key = \"{k}\"")),
                "{}",
                i.text
            ),
            None => assert!(i.text.contains("# auth-key = "), "{}", i.text),
        }
        has_warning(&i, option, part);
        assert!(
            !i.warnings.iter().any(|w| w.message.contains("secret")),
            "a warning shows the key"
        );
    }
}

#[test]
fn haresources_kinds_groups_and_continuations() {
    let hr = "# comment\nbeta 10.0.0.9 \\\n  drbddisk::r0 \\\n  IPaddr::10.0.0.8/24/eth0/10.0.0.255 LVM::vg0 \
              Filesystem::/dev/drbd1::/other::ext3 Filesystem::/dev/sdc1::/shared Filesystem::/dev/drbd0 \
              drbddisk::r1 MailTo::a@b\n\
              alpha drbddisk::r9 httpd\n";
    let i = run(
        &[("haresources", hr), AUTH, ("ha.cf", "bcast eth0\n")],
        true,
    );
    assert!(i.text.contains("preferred = \"beta\""));
    assert!(i.text.contains("address = \"10.0.0.8/24\""));
    assert!(i.text.contains("# address = \"10.0.0.9/24\""));
    assert!(i.text.contains("device = \"/dev/sdc1\""));
    assert!(!i.text.contains("/other"));
    assert!(!i.text.contains("httpd"));
    for (opt, part) in [
        ("IPaddr", "broadcast address"),
        ("IPaddr", "no prefix length"),
        ("drbddisk", "rep starts the device first"),
        ("drbddisk", "resource r1 is not r0"),
        ("LVM", "take no arguments"),
        ("MailTo", "take no arguments"),
        ("Filesystem", "not the device of resource r0"),
        ("Filesystem", "not a DRBD device"),
        ("Filesystem", "expected Filesystem::DEVICE::MOUNTPOINT"),
        ("alpha", "another resource group"),
    ] {
        has_warning(&i, opt, part);
    }
    // The group of this resource is the one with its drbddisk, wherever it is.
    let i = run(
        &[
            ("haresources", "alpha drbddisk::r9 a\nbeta drbddisk::r0 b\n"),
            AUTH,
        ],
        true,
    );
    assert!(
        i.text.contains("preferred = \"beta\"") && i.text.contains("/etc/init.d/b"),
        "{}",
        i.text
    );
}

#[test]
fn timing_missing_values_fit_the_given_ones() {
    // heartbeat's common keepalive 2 / deadtime 30 without warntime: rep's
    // default 1 s would be shorter than a keepalive.
    let i = run(
        &[("ha.cf", "keepalive 2\ndeadtime 30\nbcast eth0\n"), AUTH],
        true,
    );
    assert!(i.text.contains("warntime-ms = 15000"), "{}", i.text);
    assert!(i.text.contains("initdead-ms = 30000"), "{}", i.text);
    has_warning(&i, "warntime", "half of deadtime");
    has_warning(&i, "initdead", "deadtime");
    let i = run(&[("ha.cf", "keepalive 5\nbcast eth0\n"), AUTH], true);
    assert!(i.text.contains("deadtime-ms = 20000"), "{}", i.text);
    // Given values the agent refuses: an error that says what to fix.
    let d = dir_with(&[("ha.cf", "keepalive 5\nwarntime 2\ndeadtime 10\n")]);
    let e = import_heartbeat(d.path(), None).unwrap_err().to_string();
    assert!(e.contains("keepalive <= warntime < deadtime"), "{e}");
    let i = run(&[("ha.cf", "keepalive soon\nbcast eth0\n"), AUTH], true);
    has_warning(&i, "keepalive", "expected a time");
}

#[test]
fn node_names_are_checked_against_the_resource() {
    let ha = "node alpha.example.com\nnode gamma\nbcast eth0\n";
    let i = run(&[("ha.cf", ha), AUTH, ("haresources", "gamma svc\n")], true);
    has_warning(
        &i,
        "node",
        "alpha.example.com is taken as the resource's node alpha",
    );
    has_warning(&i, "node", "gamma is not a [[node]] of resource r0");
    // The paths use the resource's names; preferred is not written.
    assert!(i.text.contains("node = \"alpha\"") && i.text.contains("node = \"beta\""));
    assert!(!i.text.contains("preferred"));
    // Without --resource the names are ha.cf's.
    let i = run(
        &[("ha.cf", "node a\nnode b\nnode c\nbcast eth0\n"), AUTH],
        false,
    );
    assert!(i.text.contains("node = \"a\"") && i.text.contains("node = \"b\""));
    has_warning(&i, "node", "3 nodes");
}

#[test]
fn missing_files_and_bad_directories() {
    let i = run(&[], true);
    has_warning(&i, "ha.cf", "there is no ha.cf");
    has_warning(&i, "authkeys", "there is no authkeys");
    has_warning(&i, "haresources", "there is no haresources");
    assert!(i.text.contains("# auth-key = "));
    let e = import_heartbeat(Path::new("/nonexistent/ha.d"), None).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    let e = ResourceInfo::from_toml("[resource]\nname = \"r0\"\n[cluster]\n").unwrap_err();
    assert!(e.contains("[cluster] table already"), "{e}");
}
