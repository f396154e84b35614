//! Tests of the drbd.conf importer: the tokenizer and its errors with line
//! numbers, includes and limits, each mapped option and each warning.

use std::path::Path;

use super::drbd_parse::parse_text;
use super::*;
use crate::config::{Config, MetaDisk, OnIoError};

/// A two-node resource around `extra` (inside the resource section).
fn conf(extra: &str) -> String {
    format!(
        "resource r0 {{\n{extra}\n\
         on alpha {{ device /dev/drbd0; disk /d/a; address 10.0.0.1:7788; meta-disk internal; }}\n\
         on beta {{ device /dev/drbd0; disk /d/b; address 10.0.0.2:7788; meta-disk internal; }}\n\
         net {{ shared-secret \"s3cret\"; }}\n}}\n"
    )
}

/// Imports `text` written to `dir/drbd.conf`.
fn import_in(dir: &Path, text: &str) -> Result<DrbdImport, ImportError> {
    let p = dir.join("drbd.conf");
    std::fs::write(&p, text).unwrap();
    import_drbd_conf(&p)
}

fn import(text: &str) -> DrbdImport {
    let dir = tempfile::tempdir().unwrap();
    import_in(dir.path(), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn import_err(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let e = import_in(dir.path(), text).expect_err("import should fail");
    e.to_string()
        .replace(&dir.path().display().to_string(), "DIR")
}

/// The only resource, loaded as repctl does (it must have nothing to fill in).
fn loaded(i: &DrbdImport) -> Config {
    let r = &i.resources[0];
    assert_eq!(r.fill_ins, 0, "{}", r.text);
    Config::from_str_named(&r.text, "r0.toml").unwrap_or_else(|e| panic!("{e}\n{}", r.text))
}

/// The warnings as `OPTION: MESSAGE` (without the file and line).
fn warned(i: &DrbdImport) -> Vec<String> {
    i.warnings
        .iter()
        .map(|w| format!("{}: {}", w.option, w.message))
        .collect()
}

fn has_warning(i: &DrbdImport, option: &str, part: &str) {
    assert!(
        i.warnings
            .iter()
            .any(|w| w.option == option && w.message.contains(part)),
        "no warning on {option} containing {part:?}: {:#?}",
        warned(i)
    );
}

#[test]
fn tokens_comments_quotes_and_blocks() {
    let t = parse_text(
        "# comment\nresource r0 { # after\n  net { shared-secret \"a b;{}#\\\"c\"; }\n  on alpha {\n device /dev/drbd0; }\n}\n",
    )
    .unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].key(), "resource");
    assert_eq!(t[0].loc.line, 2);
    let body = t[0].block.as_ref().unwrap();
    let net = body[0].block.as_ref().unwrap();
    assert_eq!(net[0].args()[0].text, "a b;{}#\"c");
    assert_eq!(body[1].key(), "on");
    assert_eq!(body[1].block.as_ref().unwrap()[0].loc.line, 5);
    // A backslash-newline inside quotes continues the string (seed 001).
    let t = parse_text("x \"a ;\\\n b\";\ny 1;").unwrap();
    assert_eq!(t[0].args()[0].text, "a ; b");
    assert_eq!(t[1].loc.line, 3);
}

#[test]
fn syntax_errors_name_the_line() {
    let cases = [
        (
            "resource r0 {\n incon-degr-cmd \"x\"\n startup {\n } }",
            "drbd.conf:2: `incon-degr-cmd` is not ended by `;` (the `{` on line 3 after `startup`",
        ),
        (
            "resource r0 {\n protocol C\n}",
            "drbd.conf:2: `protocol` is not ended by `;` before the `}` on line 3",
        ),
        (
            "global {\n}\nminor-count 2",
            "drbd.conf:3: `minor-count` is not ended by `;` before the end of the file",
        ),
        (
            "resource r0 {\n on a {\n}\n",
            "drbd.conf:1: this `{` is never closed",
        ),
        ("}\n", "drbd.conf:1: a `}` closes no block"),
        ("x \"open\n\n", "drbd.conf:1: a quoted string is not closed"),
        ("\n{ }", "drbd.conf:2: a `{` without a section name"),
    ];
    for (text, want) in cases {
        let e = parse_text(text).expect_err(text).to_string();
        assert!(e.starts_with(want), "{text:?}: {e}");
    }
}

#[test]
fn limits_on_nesting_size_words_and_includes() {
    let deep = format!(
        "{}{}",
        "disk { ".repeat(MAX_DEPTH + 2),
        "} ".repeat(MAX_DEPTH + 2)
    );
    assert!(parse_text(&deep)
        .unwrap_err()
        .to_string()
        .contains("nested more than"));
    let long = format!("x {};", "a".repeat(MAX_WORD_BYTES + 1));
    assert!(parse_text(&long)
        .unwrap_err()
        .to_string()
        .contains("too long"));
    let big = format!(
        "# {}\n",
        "x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap())
    );
    assert!(import_err(&big).contains("is not read"));
    // A file that includes itself stops at the include depth.
    let e = import_err("include \"drbd.conf\";\n");
    assert!(e.contains("includes nested more than"), "{e}");
}

#[test]
fn includes_are_globs_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("drbd.d")).unwrap();
    std::fs::write(
        dir.path().join("drbd.d/global_common.conf"),
        "common { syncer { rate 33M; } }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("drbd.d/r0.res"), conf("")).unwrap();
    std::fs::write(
        dir.path().join("drbd.d/r1.res"),
        conf("").replace("r0", "r1").replace("drbd0", "drbd1"),
    )
    .unwrap();
    std::fs::write(dir.path().join("drbd.d/r9.res.disabled"), "garbage {").unwrap();
    let i = import_in(
        dir.path(),
        "include \"drbd.d/global_common.conf\";\ninclude \"drbd.d/*.res\";\ninclude \"none/*.res\";\n",
    )
    .unwrap();
    let names: Vec<&str> = i.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r0", "r1"]);
    let c = Config::from_str_named(&i.resources[1].text, "r1.toml").unwrap();
    assert_eq!(c.sync.rate, 33 << 20);
    assert_eq!(c.nodes[0].device, 1);
    // The comment names the included file's line.
    assert!(i.resources[0]
        .text
        .contains("global_common.conf:1: rate 33M"));
}

#[test]
fn a_plain_two_node_resource_maps_completely() {
    let i = import(&conf(
        "protocol A;\nstartup { wfc-timeout 30; degr-wfc-timeout 60; }\n\
         disk { on-io-error pass_on; }\nsyncer { rate 1000; al-extents 257; }\n\
         net { timeout 60; ping-int 10; ko-count 4; max-buffers 8000; \
         after-sb-0pri discard-zero-changes; after-sb-1pri consensus; after-sb-2pri call-pri-lost-after-sb; }",
    ));
    assert!(i.warnings.is_empty(), "{:#?}", warned(&i));
    let c = loaded(&i);
    assert_eq!(c.resource.name, "r0");
    assert_eq!(format!("{:?}", c.resource.protocol), "A");
    assert_eq!(
        c.startup.wfc_timeout,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(
        c.startup.degr_wfc_timeout,
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(c.disk.on_io_error, OnIoError::PassOn);
    assert_eq!(c.sync.rate, 1000 << 10, "a rate without suffix is KiB/s");
    assert_eq!(c.sync.al_extents, 257);
    assert_eq!(c.net.timeout.as_millis(), 6000, "timeout counts 0.1 s");
    assert_eq!(
        c.net.ping_int.as_millis(),
        10_000,
        "ping-int counts seconds"
    );
    assert_eq!((c.net.ko_count, c.net.max_buffers), (4, 8000));
    assert_eq!(c.net.secret, "s3cret");
    assert_eq!(
        c.split_brain.after_sb_0pri.to_string(),
        "discard-zero-changes"
    );
    assert_eq!(c.split_brain.after_sb_1pri.to_string(), "consensus");
    assert_eq!(
        c.split_brain.after_sb_2pri.to_string(),
        "call-pri-lost-after-sb"
    );
    assert_eq!(c.nodes[0].name, "alpha");
    assert_eq!(c.nodes[1].address.to_string(), "10.0.0.2:7788");
    assert_eq!(c.nodes[1].disk, Path::new("/d/b"));
    assert_eq!(c.nodes[0].meta_disk, MetaDisk::Internal);
}

#[test]
fn drbd_8_4_placement_protocol_in_net_rate_in_disk() {
    let i = import(&conf(
        "net { protocol B; cram-hmac-alg sha1; csums-alg md5; verify-alg sha1; }\n\
         disk { resync-rate 40M; al-extents 1000; }",
    ));
    let c = loaded(&i);
    assert_eq!(format!("{:?}", c.resource.protocol), "B");
    assert_eq!(c.sync.rate, 40 << 20);
    assert_eq!(c.sync.al_extents, 1000);
    assert!(c.net.csums);
    has_warning(&i, "cram-hmac-alg", "HMAC-SHA256");
    has_warning(&i, "csums-alg", "crc32c, not md5");
    has_warning(&i, "verify-alg", "crc32c, not sha1");
}

/// The resync controller's keys in DRBD's units: 8.4's `disk` with
/// suffixes, 8.3's `syncer` with bare numbers (sectors, KiB/s).
#[test]
fn resync_controller_keys_keep_their_meaning() {
    let i = import(&conf(
        "disk { c-plan-ahead 10; c-max-rate 330M; c-min-rate 0; c-fill-target 10M; c-delay-target 20; }",
    ));
    let p = loaded(&i).sync.control;
    assert_eq!(
        (p.plan_ahead_ds, p.fill_target_bytes, p.delay_target_ds),
        (10, 10 << 20, 20)
    );
    assert_eq!(
        (p.max_rate_bytes_per_s, p.min_rate_bytes_per_s),
        (330 << 20, 0)
    );
    let i = import(&conf(
        "syncer { rate 10M; c-plan-ahead 20; c-fill-target 100; c-max-rate 102400; c-min-rate 250; }",
    ));
    let p = loaded(&i).sync.control;
    assert_eq!((p.plan_ahead_ds, p.fill_target_bytes), (20, 100 * 512));
    assert_eq!(
        (p.max_rate_bytes_per_s, p.min_rate_bytes_per_s),
        (100 << 20, 250 << 10)
    );
    let i = import(&conf("disk { c-max-rate fast; }"));
    has_warning(&i, "c-max-rate", "optional s, K, M or G");
}

#[test]
fn options_without_counterpart_are_named_in_warnings() {
    let i = import(&format!(
        "global {{ usage-count yes; minor-count 4; }}\ncommon {{ handlers {{ fence-peer \"/x\"; split-brain \"/y\"; before-resync-target \"/z\"; }} }}\n{}",
        conf(
            "incon-degr-cmd \"halt\";\nsyncer { group 1; after r9; cpu-mask 3; }\n\
             net { allow-two-primaries; ping-timeout 5; sndbuf-size 0; }\n\
             disk { fencing resource-only; no-disk-flushes; }\nstartup { become-primary-on alpha; }\n\
             options { cpu-mask 1; }"
        )
    ));
    let c = loaded(&i);
    // Handlers repd runs are imported from common too.
    assert_eq!(c.handlers.split_brain.as_deref(), Some("/y"));
    assert_eq!(c.handlers.before_resync_target.as_deref(), Some("/z"));
    for (opt, part) in [
        ("usage-count", "global"),
        ("minor-count", "global"),
        ("incon-degr-cmd", "primary --force"),
        ("group", "resyncs on its own"),
        ("after", "resyncs on its own"),
        ("cpu-mask", "syncer"),
        ("allow-two-primaries", "two Primaries"),
        ("ping-timeout", "timeout-ms"),
        ("sndbuf-size", "net"),
        ("no-disk-flushes", "disk"),
        ("become-primary-on", "preferred"),
        ("cpu-mask", "section `options` of the resource"),
    ] {
        has_warning(&i, opt, part);
    }
    assert!(i.warnings.iter().all(|w| w.loc.contains("drbd.conf:")));
}

#[test]
fn values_rep_cannot_take_are_warned_and_left_at_the_default() {
    let i = import(&conf(
        "disk { on-io-error panic; }\nsyncer { al-extents 3; rate 10X; }\n\
         net { ko-count 0; timeout 0; after-sb-1pri violently-as0p; }\nprotocol D;",
    ));
    let c = loaded(&i);
    assert_eq!(c.disk.on_io_error, OnIoError::PassOn);
    assert_eq!((c.sync.al_extents, c.net.ko_count), (1237, 7));
    has_warning(
        &i,
        "on-io-error",
        "replaced `panic` by the local-io-error handler",
    );
    has_warning(&i, "al-extents", "out of rep's range");
    has_warning(&i, "rate", "K, M or G");
    has_warning(&i, "ko-count", "ko-count 0");
    has_warning(&i, "timeout", "0 is not accepted");
    has_warning(&i, "after-sb-1pri", "violently-as0p");
    has_warning(&i, "protocol", "unknown protocol");
}

#[test]
fn node_keys_in_their_drbd_forms() {
    let text = "resource r0 {\n device minor 3;\n meta-disk /var/md/r0;\n net { shared-secret x; }\n\
                on alpha { disk /d/a; address ipv6 [fd00::1]:7788; }\n\
                on beta { device /dev/drbd_r0 minor 3; disk /d/b; address ipv4 10.0.0.2:7788; }\n}\n";
    let i = import(text);
    let c = loaded(&i);
    assert_eq!(
        (c.nodes[0].device, c.nodes[1].device),
        (3, 3),
        "resource-level device inherited"
    );
    assert_eq!(c.nodes[0].address.to_string(), "[fd00::1]:7788");
    assert_eq!(
        c.nodes[1].meta_disk,
        MetaDisk::External("/var/md/r0".into())
    );
}

#[test]
fn missing_values_become_fill_in_lines_with_a_warning() {
    let alpha = "on alpha { device /dev/drbd0; disk /d/a; address; meta-disk /dev/md [2]; }";
    let beta =
        "on beta { device /dev/drbd0; disk none; address sdp 10.0.0.2:7788; meta-disk internal; }";
    let floating = "floating 10.0.0.3:7788 { device /dev/drbd0; disk /d/c; }";
    let e = import_err(&format!(
        "resource r0 {{\n{alpha}\n{beta}\n{floating}\n}}\n"
    ));
    assert!(
        e.contains("has 3 `on` sections; a rep resource has exactly two nodes"),
        "{e}"
    );
    let i = import(&format!(
        "resource r0 {{\n{alpha}\nskip {beta}\n{floating}\n}}\n"
    ));
    let r = &i.resources[0];
    // secret, alpha's address and meta-disk, the floating node's name.
    assert_eq!(r.fill_ins, 4, "{}", r.text);
    assert!(r.text.contains("# address = \"IP:PORT\"   # FILL IN: "));
    assert!(r.text.contains("drbd.conf:2: node alpha has no address"));
    assert!(r.text.contains("# meta-disk = \"/dev/md\"   # FILL IN"));
    assert!(r.text.contains("# name = \"HOST\"   # FILL IN"));
    assert!(r.text.contains("address = \"10.0.0.3:7788\""));
    has_warning(&i, "address", "node alpha has no address");
    has_warning(&i, "meta-disk", "slot [2]");
    has_warning(&i, "floating", "fill in the [[node]] name");
    has_warning(&i, "shared-secret", "fill in [net] secret");
    has_warning(&i, "skip", "skipped");
    // The filled-in file is valid.
    let filled = r
        .text
        .replace("# address = \"IP:PORT\"", "address = \"10.0.0.1:7788\"")
        .replace("# meta-disk = \"/dev/md\"", "meta-disk = \"/dev/md-r0\"")
        .replace("# name = \"HOST\"", "name = \"gamma\"")
        .replace("# secret = \"LONG RANDOM STRING\"", "secret = \"x\"");
    Config::from_str_named(&filled, "r0.toml").unwrap();
    // A diskless node and an unusable address family are fill-ins too.
    let i = import(&format!("resource r0 {{\n{alpha}\n{beta}\n}}\n"));
    has_warning(&i, "disk", "diskless");
    has_warning(&i, "address", "address family sdp");
}

#[test]
fn common_applies_to_every_resource_and_resources_override_it() {
    let r1 = conf("syncer { rate 5M; }")
        .replace("r0", "r1")
        .replace("drbd0", "drbd1");
    let i = import(&format!(
        "common {{ protocol B; syncer {{ rate 20M; group 1; }} }}\n{}{r1}",
        conf("")
    ));
    let a = Config::from_str_named(&i.resources[0].text, "r0.toml").unwrap();
    let b = Config::from_str_named(&i.resources[1].text, "r1.toml").unwrap();
    assert_eq!((a.sync.rate, b.sync.rate), (20 << 20, 5 << 20));
    assert_eq!(format!("{:?}", b.resource.protocol), "B");
    // The warning on `group` in common is given once, not once per resource.
    assert_eq!(i.warnings.iter().filter(|w| w.option == "group").count(), 1);
}

#[test]
fn a_file_without_resources_is_an_error() {
    let e = import_err("global { usage-count no; }\n");
    assert!(e.contains("no `resource` section found"), "{e}");
    let e = import_err("resource { }\n");
    assert!(e.contains("`resource` takes one name"), "{e}");
}

#[test]
fn drbd_8_4_volume_0_is_the_resource_volume() {
    let text = "resource r0 {\n net { shared-secret x; }\n volume 0 { device minor 5; meta-disk internal; }\n\
                volume 1 { device minor 6; disk /d/v1; }\n\
                on alpha { address 10.0.0.1:7788; volume 0 { disk /d/a; } }\n\
                on beta { address 10.0.0.2:7788; volume 0 { disk /d/b; } }\n}\n";
    let i = import(text);
    let c = loaded(&i);
    assert_eq!((c.nodes[0].device, c.nodes[1].device), (5, 5));
    assert_eq!(c.nodes[1].disk, Path::new("/d/b"));
    has_warning(&i, "device", "one volume");
    has_warning(&i, "disk", "one volume");
}

#[test]
fn drbd_8_4_fencing_and_crm_scripts_map_to_reps() {
    use replication_proto::machine::Fencing;
    let i = import(&conf(
        "disk { fencing resource-and-stonith; }\n\
         handlers { fence-peer \"/usr/lib/drbd/crm-fence-peer.sh\";\n\
         after-resync-target \"/usr/lib/drbd/crm-unfence-peer.sh\"; }",
    ));
    let c = loaded(&i);
    assert_eq!(c.net.fencing, Fencing::ResourceAndStonith);
    let h = &c.handlers;
    assert_eq!(h.fence_peer.as_deref(), Some("/usr/lib/rep/crm-fence-peer"));
    assert_eq!(
        h.unfence_peer.as_deref(),
        Some("/usr/lib/rep/crm-unfence-peer")
    );
    has_warning(
        &i,
        "fence-peer",
        "crm-fence-peer.sh is replaced by rep's /usr/lib/rep/crm-fence-peer,",
    );
    has_warning(&i, "after-resync-target", "on the node that fenced");
    has_warning(&i, "after-resync-target", "not on the resync target");
    assert!(!warned(&i).iter().any(|w| w.starts_with("fencing")));
    let text = &i.resources[0].text;
    assert!(text.contains("\n[handlers]\nfence-peer = \"/usr/lib/rep/crm-fence-peer\""));
}

#[test]
fn drbd_9_fencing_in_net_and_unfence_peer() {
    use replication_proto::machine::Fencing;
    let i = import(&conf(
        "net { fencing resource-only; }\n\
         handlers { fence-peer \"/usr/lib/drbd/crm-fence-peer.9.sh --timeout 30\";\n\
         unfence-peer \"/usr/lib/drbd/crm-unfence-peer.9.sh\"; }",
    ));
    let c = loaded(&i);
    assert_eq!(c.net.fencing, Fencing::ResourceOnly);
    assert_eq!(
        c.handlers.fence_peer.as_deref(),
        Some("/usr/lib/rep/crm-fence-peer")
    );
    assert_eq!(
        c.handlers.unfence_peer.as_deref(),
        Some("/usr/lib/rep/crm-unfence-peer")
    );
    has_warning(
        &i,
        "fence-peer",
        "arguments `--timeout 30` are not carried over",
    );
    has_warning(&i, "unfence-peer", "crm-unfence-peer.9.sh is replaced");
    let dc = import(&conf("disk { fencing dont-care; }"));
    assert_eq!(loaded(&dc).net.fencing, Fencing::DontCare);
    let bad = import(&conf("disk { fencing stonith; }"));
    assert_eq!(loaded(&bad).net.fencing, Fencing::DontCare);
    has_warning(&bad, "fencing", "rep does not have this policy");
}

#[test]
fn other_absolute_handlers_are_kept_as_written() {
    let i = import(&conf(
        "disk { fencing resource-only; }\n\
         handlers { fence-peer \"/usr/local/sbin/fence-it --hard\";\n\
         unfence-peer \"/usr/lib/drbd/outdate-peer.sh\"; }",
    ));
    let c = loaded(&i);
    assert_eq!(
        c.handlers.fence_peer.as_deref(),
        Some("/usr/local/sbin/fence-it --hard")
    );
    assert_eq!(
        c.handlers.unfence_peer.as_deref(),
        Some("/usr/lib/drbd/outdate-peer.sh")
    );
    assert!(!warned(&i).iter().any(|w| w.starts_with("fence-peer")));
    has_warning(&i, "unfence-peer", "drbdadm");
}

#[test]
fn a_relative_handler_is_a_fill_in_line() {
    let i = import(&conf(
        "disk { fencing resource-only; }\nhandlers { fence-peer \"fence-it -q\"; }",
    ));
    let r = &i.resources[0];
    assert_eq!(r.fill_ins, 1, "{}", r.text);
    assert!(
        r.text
            .contains("# fence-peer = \"/PATH/TO/fence-it -q\"   # FILL IN:"),
        "{}",
        r.text
    );
    assert!(r.text.contains("fencing = \"resource-only\""), "{}", r.text);
    has_warning(&i, "fence-peer", "not an absolute path");
    // Completing the line makes it valid.
    let done = r.text.replace(
        "# fence-peer = \"/PATH/TO/fence-it -q\"",
        "fence-peer = \"/sbin/fence-it -q\" #",
    );
    let c = Config::from_str_named(&done, "r0.toml").unwrap_or_else(|e| panic!("{e}\n{done}"));
    assert_eq!(c.handlers.fence_peer.as_deref(), Some("/sbin/fence-it -q"));
}

#[test]
fn a_fencing_policy_without_fence_peer_is_a_fill_in_line() {
    use replication_proto::machine::Fencing;
    let i = import(&conf(
        "disk { fencing resource-and-stonith; }\nhandlers { unfence-peer \"/u\"; }",
    ));
    let r = &i.resources[0];
    assert_eq!(r.fill_ins, 1, "{}", r.text);
    assert!(
        r.text
            .contains("# fencing = \"resource-and-stonith\"   # FILL IN:"),
        "{}",
        r.text
    );
    has_warning(&i, "fencing", "needs a fence-peer handler");
    // As written (the policy commented out) the file is valid: dont-care.
    let c = Config::from_str_named(&r.text, "r0.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.net.fencing, Fencing::DontCare);
}

#[test]
fn handlers_repd_runs_are_imported_and_the_others_warned() {
    let i = import(&conf(
        "handlers { after-resync-target \"/usr/local/bin/notify\";\n\
         pri-on-incon-degr \"/x\"; local-io-error \"/y\"; pri-lost-after-sb \"/z\";\n\
         split-brain \"/usr/lib/drbd/notify-split-brain.sh root\";\n\
         initial-split-brain \"/w\"; before-resync-target \"/s snap\"; pri-lost \"/p\"; }",
    ));
    let c = loaded(&i);
    let h = &c.handlers;
    assert_eq!(h.unfence_peer, None);
    assert_eq!(
        h.after_resync_target.as_deref(),
        Some("/usr/local/bin/notify")
    );
    assert_eq!(h.local_io_error.as_deref(), Some("/y"));
    assert_eq!(h.pri_lost_after_sb.as_deref(), Some("/z"));
    assert_eq!(
        h.split_brain.as_deref(),
        Some("/usr/lib/drbd/notify-split-brain.sh root")
    );
    assert_eq!(h.initial_split_brain.as_deref(), Some("/w"));
    assert_eq!(h.before_resync_target.as_deref(), Some("/s snap"));
    has_warning(&i, "pri-on-incon-degr", "rep runs fence-peer, unfence-peer");
    has_warning(&i, "local-io-error", "call-local-io-error");
    has_warning(&i, "split-brain", "drbdadm");
    has_warning(&i, "pri-lost", "reboot-command");
}
