//! The targets nbd-bench measures: repd pairs and StandAlone nodes, nbdkit,
//! floor-pair; each set up in the state it is measured in.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bench::rep::{field, is_synced, Binaries, Node, NodeSpec, ResourceSpec};
use bench::util::{file_tail, free_port, free_ports, prefill, wait_tcp, KillOnDrop};

use super::Kind;

/// A server fio can write to, with the processes behind it. Dropping it
/// takes the repd nodes down and kills nbdkit.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) kind: Kind,
    pub(crate) uri: String,
    /// repd nodes, the Primary first.
    pub(crate) nodes: Vec<Node>,
    pub(crate) server: Option<KillOnDrop>,
    /// nbdkit's image, fsynced after each run.
    pub(crate) image: Option<PathBuf>,
}

impl Target {
    /// The server processes to watch, with a name for each.
    pub(crate) fn procs(&self) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = self
            .nodes
            .iter()
            .filter_map(|n| n.pid.map(|p| (p, n.name.clone())))
            .collect();
        if let Some(s) = &self.server {
            let name = match self.kind {
                Kind::FloorC | Kind::FloorStandAlone => "floor",
                _ => "nbdkit",
            };
            v.push((s.pid(), name.into()));
        }
        v
    }

    /// Is the target in the state it is measured in?
    pub(crate) fn check_state(&mut self) -> Result<(), String> {
        if let Some(s) = &mut self.server {
            if !s.alive() {
                return Err(format!("{} exited", s.what));
            }
        }
        let Some(p) = self.nodes.first() else {
            return Ok(());
        };
        let st = p.status()?;
        let ok = field(&st, "role") == "Primary"
            && match self.kind {
                Kind::StandAlone => {
                    field(&st, "connection") == "StandAlone" && field(&st, "disk") == "UpToDate"
                }
                _ => is_synced(&st),
            };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} is not in its measured state: role {} connection {} disk {}/{}{}",
                p.name,
                field(&st, "role"),
                field(&st, "connection"),
                field(&st, "disk"),
                field(&st, "peer_disk"),
                p.log_excerpt()
            ))
        }
    }

    /// After a run: let what is still in flight land, so it does not run
    /// into the next target's measurement.
    pub(crate) fn quiesce(&self) -> Result<(), String> {
        if let Some(img) = &self.image {
            std::fs::File::open(img)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("fsync {}: {e}", img.display()))?;
        }
        if let Some(p) = self.nodes.first() {
            p.wait_idle(Duration::from_secs(60))?;
        }
        Ok(())
    }
}

/// Writes `d/r0.toml`: resource r0 with `protocol`, alpha on `alpha_disk`
/// exporting NBD, beta on `beta_disk`, each on a free loopback port (rate
/// unlimited, AL covering the whole device). Returns the file and alpha's
/// NBD port.
fn write_config(
    d: &Path,
    protocol: &str,
    alpha_disk: PathBuf,
    beta_disk: PathBuf,
) -> Result<(PathBuf, u16), String> {
    let [nbd, a_port, b_port] = free_ports::<3>()?;
    let spec = ResourceSpec {
        name: "r0".into(),
        protocol: protocol.into(),
        rate: "0".into(),
        al_extents: 1237,
        nodes: vec![
            NodeSpec {
                name: "alpha".into(),
                address: format!("127.0.0.1:{a_port}"),
                disk: alpha_disk,
                nbd: Some(format!("127.0.0.1:{nbd}")),
            },
            NodeSpec {
                name: "beta".into(),
                address: format!("127.0.0.1:{b_port}"),
                disk: beta_disk,
                nbd: None,
            },
        ],
    };
    let cfg = d.join("r0.toml");
    std::fs::write(&cfg, spec.toml())
        .map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
    Ok((cfg, nbd))
}

/// A pre-shared key file in `d` (a random key from `openssl rand`, as the
/// README shows), and `text` with `[net] tls = "on"` using it.
fn with_psk(d: &Path, text: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let o = Command::new("openssl")
        .args(["rand", "-hex", "32"])
        .output()
        .map_err(|e| format!("cannot run openssl: {e} (apt-get install openssl)"))?;
    if !o.status.success() {
        return Err(format!(
            "openssl rand: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let file = d.join("link.psk");
    let line = format!("bench:{}\n", String::from_utf8_lossy(&o.stdout).trim());
    std::fs::write(&file, line)
        .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(text.replacen(
        "[net]\n",
        &format!(
            "[net]\ntls = \"on\"\ntls-psk-file = \"{}\"\n",
            file.display()
        ),
        1,
    ))
}

/// A CA and a certificate for alpha and beta in `d` (openssl, as the
/// README shows), and `text` with `[net] tls = "on"` using them.
fn with_tls(d: &Path, text: &str) -> Result<String, String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .map_err(|e| format!("cannot run openssl: {e} (apt-get install openssl)"))?;
        o.status
            .success()
            .then_some(())
            .ok_or_else(|| format!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr)))
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=bench-ca",
        "-days",
        "2",
    ];
    run(&[&["req", "-x509"], &ec[..], &ca[..]].concat())?;
    let mut t = text.replacen(
        "[net]\n",
        &format!(
            "[net]\ntls = \"on\"\ntls-ca = \"{}\"\n",
            d.join("ca.pem").display()
        ),
        1,
    );
    for n in ["alpha", "beta"] {
        std::fs::write(
            d.join(format!("{n}.ext")),
            format!("basicConstraints=CA:FALSE\nsubjectAltName=DNS:{n}\n"),
        )
        .map_err(|e| format!("cannot write {n}.ext: {e}"))?;
        let (key, csr, pem, ext) = (
            format!("{n}.key"),
            format!("{n}.csr"),
            format!("{n}.pem"),
            format!("{n}.ext"),
        );
        let subj = format!("/CN={n}");
        run(&[
            &["req", "-new"],
            &ec[..],
            &["-keyout", &key, "-out", &csr, "-subj", &subj],
        ]
        .concat())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ])?;
        t = t.replacen(
            &format!("name = \"{n}\"\n"),
            &format!(
                "name = \"{n}\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
                d.join(&pem).display(),
                d.join(&key).display()
            ),
            1,
        );
    }
    Ok(t)
}

/// Two nodes on loopback, alpha Primary, after the initial full sync;
/// beta's image in `peer_dir` if given, else next to alpha's. `protocol`
/// "C-tls": protocol C with the link over TLS; "C-psk": the same with a
/// pre-shared key.
pub(crate) fn setup_pair(
    dir: &Path,
    peer_dir: Option<&Path>,
    bins: &Binaries,
    protocol: &str,
    size: u64,
) -> Result<Target, String> {
    let name = format!(
        "proto-{}{}",
        protocol.to_ascii_lowercase(),
        if peer_dir.is_some() { "-peer-own" } else { "" }
    );
    let d = dir.join(&name);
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let alpha = d.join("alpha.img");
    let beta = peer_dir.unwrap_or(&d).join("beta.img");
    prefill(&alpha, size)?;
    // The initial sync writes all of beta's data region.
    std::fs::File::create(&beta)
        .and_then(|f| f.set_len(size))
        .map_err(|e| format!("cannot create {}: {e}", beta.display()))?;
    let (tls, psk) = (protocol == "C-tls", protocol == "C-psk");
    let protocol = if tls || psk { "C" } else { protocol };
    let (cfg, nbd) = write_config(&d, protocol, alpha, beta)?;
    if tls || psk {
        let text = std::fs::read_to_string(&cfg)
            .map_err(|e| format!("cannot read {}: {e}", cfg.display()))?;
        let text = if tls {
            with_tls(&d, &text)?
        } else {
            with_psk(&d, &text)?
        };
        std::fs::write(&cfg, text).map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
    }
    let run_dir = d.join("run");
    let mut nodes = vec![
        Node::new("r0", "alpha", &cfg, &run_dir, bins),
        Node::new("r0", "beta", &cfg, &run_dir, bins),
    ];
    for n in &mut nodes {
        n.create_md()?;
        n.up()?;
    }
    let p = nodes.first().ok_or("no node")?;
    p.repctl(&["primary", "--force"])?;
    // Generous: 100 s + 20 MB/s.
    let limit = Duration::from_secs(100 + size / 20_000_000);
    for n in &nodes {
        n.wait("Connected UpToDate/UpToDate", limit, is_synced)?;
    }
    p.wait_idle(Duration::from_secs(30))?;
    Ok(Target {
        kind: match (protocol, peer_dir) {
            _ if tls => Kind::RepCTls,
            _ if psk => Kind::RepCPsk,
            ("A", _) => Kind::RepA,
            (_, Some(_)) => Kind::RepCPeerOwn,
            _ => Kind::RepC,
        },
        uri: format!("nbd://127.0.0.1:{nbd}/r0"),
        nodes,
        server: None,
        image: None,
    })
}

/// One node, disconnected (StandAlone), Primary with --force.
pub(crate) fn setup_standalone(dir: &Path, bins: &Binaries, size: u64) -> Result<Target, String> {
    let d = dir.join("standalone");
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let alpha = d.join("alpha.img");
    prefill(&alpha, size)?;
    // beta is never started: nobody listens at its address.
    let (cfg, nbd) = write_config(&d, "C", alpha, d.join("beta.img"))?;
    let mut n = Node::new("r0", "alpha", &cfg, &d.join("run"), bins);
    n.create_md()?;
    n.up()?;
    n.repctl(&["disconnect"])?;
    n.repctl(&["primary", "--force"])?;
    n.wait(
        "StandAlone Primary UpToDate",
        Duration::from_secs(30),
        |s| {
            field(s, "connection") == "StandAlone"
                && field(s, "role") == "Primary"
                && field(s, "disk") == "UpToDate"
        },
    )?;
    Ok(Target {
        kind: Kind::StandAlone,
        uri: format!("nbd://127.0.0.1:{nbd}/r0"),
        nodes: vec![n],
        server: None,
        image: None,
    })
}

/// `nbdkit file` on the baseline image, default caching or cache=none.
pub(crate) fn setup_nbdkit(dir: &Path, image: &Path, cache_none: bool) -> Result<Target, String> {
    let port = free_port()?;
    let kind = if cache_none {
        Kind::NbdkitNoCache
    } else {
        Kind::Nbdkit
    };
    let mut c = Command::new("nbdkit");
    c.args([
        "-f",
        "--exit-with-parent",
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "16",
        "-e",
        "r0",
        "file",
    ])
    .arg(format!("file={}", image.display()));
    if cache_none {
        c.arg("cache=none");
    }
    let log = dir.join(format!("{}.log", kind.slug()));
    serve(kind, c, "nbdkit", &log, port, Some(image.to_path_buf()))
}

/// Starts `c`, a server of export r0 on 127.0.0.1:`port` logging to
/// `log`, and waits until it accepts connections.
fn serve(
    kind: Kind,
    mut c: Command,
    what: &str,
    log: &Path,
    port: u16,
    image: Option<PathBuf>,
) -> Result<Target, String> {
    let logf =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let errf = logf.try_clone().map_err(|e| e.to_string())?;
    let child = c
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(errf)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut server = KillOnDrop {
        child,
        what: format!("{what} ({})", kind.label()),
    };
    if let Err(e) = wait_tcp(port, Duration::from_secs(10)) {
        let why = if server.alive() {
            e
        } else {
            format!("{what} exited")
        };
        return Err(format!("{why}; log:\n{}", file_tail(log, 10)));
    }
    Ok(Target {
        kind,
        uri: format!("nbd://127.0.0.1:{port}/r0"),
        nodes: Vec::new(),
        server: Some(server),
        image,
    })
}

/// `floor-pair` serving a prefilled image; for [`Kind::FloorC`] its
/// Secondary's image is in `peer_dir` if given, else beside the Primary's.
pub(crate) fn setup_floor(
    dir: &Path,
    peer_dir: Option<&Path>,
    bin: &Path,
    kind: Kind,
    size: u64,
) -> Result<Target, String> {
    let d = dir.join(kind.slug());
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let alpha = d.join("alpha.img");
    prefill(&alpha, size)?;
    let port = free_port()?;
    let mut c = Command::new(bin);
    c.arg("--nbd")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--file")
        .arg(&alpha);
    if kind == Kind::FloorC {
        let beta = peer_dir.unwrap_or(&d).join("floor-beta.img");
        prefill(&beta, size)?;
        c.args(["--mode", "replicated", "--peer-file"]).arg(beta);
    } else {
        c.args(["--mode", "standalone"]);
    }
    serve(kind, c, "floor-pair", &d.join("floor-pair.log"), port, None)
}
