//! DRBD's fencing: `fencing` (8.4 in `disk`, 9 in `net`) becomes `[net]
//! fencing`, the `fence-peer` and `unfence-peer` handlers (and 8.4's
//! `after-resync-target` crm-unfence-peer.sh) become `[handlers]`;
//! drbd-utils' crm scripts are replaced by rep's. A policy without a
//! fence-peer handler is written as a `# FILL IN` line, so that a file with
//! nothing to fill in still validates.

use replication_proto::machine::Fencing;

use super::{from, quote, Draft, Entry, Mapper, Stmt};

/// rep's Pacemaker handlers (`ocf/crm-fence-peer`, `ocf/crm-unfence-peer`
/// as the package installs them).
const REP_FENCE: &str = "/usr/lib/rep/crm-fence-peer";
const REP_UNFENCE: &str = "/usr/lib/rep/crm-unfence-peer";

/// drbd-utils' script names (8.4 and 9) that rep's scripts replace.
const DRBD_FENCE: [&str; 2] = ["crm-fence-peer.sh", "crm-fence-peer.9.sh"];
const DRBD_UNFENCE: [&str; 2] = ["crm-unfence-peer.sh", "crm-unfence-peer.9.sh"];

/// The file name of a command line's program (`crm-fence-peer.sh` of
/// `/usr/lib/drbd/crm-fence-peer.sh --timeout 30`) and its arguments.
fn program(cmd: &str) -> (&str, &str) {
    let cmd = cmd.trim_start();
    let (prog, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
    (prog.rsplit('/').next().unwrap_or(prog), rest.trim())
}

impl Mapper {
    /// `fencing POLICY` into `[net] fencing`.
    pub(super) fn fencing(&mut self, d: &mut Draft, s: &Stmt) {
        let Some(v) = self.one(s) else { return };
        match v.parse::<Fencing>() {
            Ok(f) => {
                d.net.value("fencing", f.as_str(), from(s));
                d.fencing_at = Some(s.loc.clone());
            }
            Err(e) => self.warn(
                s,
                format!(
                    "`{}`: rep does not have this policy ({e}); not imported (default dont-care)",
                    s.text()
                ),
            ),
        }
    }

    /// One statement of `handlers { ... }`.
    pub(super) fn handler(&mut self, d: &mut Draft, s: &Stmt) {
        let hint = match s.key() {
            "fence-peer" => return self.command(d, s, "fence-peer", &DRBD_FENCE, REP_FENCE),
            "unfence-peer" => {
                return self.command(d, s, "unfence-peer", &DRBD_UNFENCE, REP_UNFENCE)
            }
            "after-resync-target" => return self.after_resync_target(d, s),
            // repd runs these as DRBD does, with DRBD's environment.
            key @ ("split-brain"
            | "pri-lost-after-sb"
            | "initial-split-brain"
            | "before-resync-target") => return self.command(d, s, key, &[], ""),
            "local-io-error" => {
                self.command(d, s, "local-io-error", &[], "");
                self.warn(
                    s,
                    format!(
                        "`{}`: repd runs it under [disk] on-io-error = \
                         \"call-local-io-error\" (as DRBD does) and under \"detach\"",
                        s.text()
                    ),
                );
                return;
            }
            "pri-lost" => "[cluster] on-stop-failure / reboot-command of the cluster agent",
            _ => {
                "rep runs fence-peer, unfence-peer, split-brain, initial-split-brain, \
                 pri-lost-after-sb, local-io-error, before-resync-target and \
                 after-resync-target"
            }
        };
        self.left(s, "handlers", &format!("has no counterpart ({hint})"));
    }

    /// A handler's command line into `[handlers] KEY`: drbd-utils' crm
    /// script becomes rep's, another absolute command is kept, anything
    /// else is a `# FILL IN` line.
    fn command(&mut self, d: &mut Draft, s: &Stmt, key: &str, drbd: &[&str], rep: &str) {
        let Some(cmd) = self.one(s) else { return };
        let (prog, args) = program(cmd);
        if drbd.contains(&prog) {
            d.handlers.value(key, rep, from(s));
            let dropped = if args.is_empty() {
                String::new()
            } else {
                format!(" (its arguments `{args}` are not carried over)")
            };
            self.warn(
                s,
                format!(
                    "`{}`: drbd-utils' {prog} is replaced by rep's {rep}{dropped}, which does \
                     the same with Pacemaker's constraint drbd-fence-by-handler-RES-CLONE and \
                     takes --clone ID and --timeout SECS",
                    s.text()
                ),
            );
        } else if cmd.trim_start().starts_with('/') {
            d.handlers.value(key, cmd, from(s));
            if cmd.trim_start().starts_with("/usr/lib/drbd/") {
                self.warn(
                    s,
                    format!(
                        "`{}`: kept as written; repd runs it with DRBD's environment \
                         (DRBD_RESOURCE, DRBD_PEER, ...) and exit codes, but a drbd-utils script \
                         that calls drbdadm or drbdsetup will not find a rep resource: check it \
                         (`repctl outdate` is rep's `drbdadm outdate`)",
                        s.text()
                    ),
                );
            }
        } else {
            let why = format!(
                "{}: `{}`: rep needs the command to start with an absolute path (repd runs it \
                 with /bin/sh -c, from / and with a minimal PATH)",
                s.loc,
                s.text()
            );
            let example = quote(&format!("/PATH/TO/{}", cmd.trim()));
            d.handlers.fill_in(key, &example, why);
            self.warn(
                s,
                format!(
                    "`{}`: not an absolute path, which rep requires: fill in [handlers] {key}",
                    s.text()
                ),
            );
        }
    }

    /// DRBD 8.4 ran crm-unfence-peer.sh as the resync target's
    /// `after-resync-target`; rep runs `unfence-peer` on the node that fenced.
    /// Any other command stays `after-resync-target`.
    fn after_resync_target(&mut self, d: &mut Draft, s: &Stmt) {
        let Some(cmd) = self.one(s) else { return };
        let (prog, _) = program(cmd);
        if !DRBD_UNFENCE.contains(&prog) {
            self.command(d, s, "after-resync-target", &[], "");
            return;
        }
        d.handlers.value("unfence-peer", REP_UNFENCE, from(s));
        self.warn(
            s,
            format!(
                "`{}`: imported as [handlers] unfence-peer = \"{REP_UNFENCE}\"; rep runs it on \
                 the node that fenced once a resync made the peer UpToDate, not on the resync \
                 target",
                s.text()
            ),
        );
    }

    /// A policy other than dont-care needs a fence-peer handler: without one
    /// the policy becomes a `# FILL IN` line (the file would not validate).
    pub(super) fn fencing_needs_handler(&mut self, d: &mut Draft) {
        let Some(Entry::Value(toml::Value::String(policy), _)) = d.net.get("fencing") else {
            return;
        };
        if policy == Fencing::DontCare.as_str() || d.handlers.get("fence-peer").is_some() {
            return;
        }
        let policy = policy.clone();
        let loc = d.fencing_at.clone().unwrap_or_else(|| d.loc.clone());
        let msg = format!(
            "`fencing {policy}` needs a fence-peer handler and resource {} has none in \
             drbd.conf: fill in [handlers] fence-peer (\"{REP_FENCE}\" under Pacemaker) and \
             uncomment [net] fencing, or leave fencing at dont-care",
            d.name
        );
        d.net
            .fill_in("fencing", &quote(&policy), format!("{loc}: {msg}"));
        self.warnings.push(super::super::Warning {
            loc: loc.to_string(),
            option: "fencing".to_owned(),
            message: msg,
        });
    }
}
