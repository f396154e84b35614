//! Fixed newstyle negotiation: options until the client picks the export
//! (GO, EXPORT_NAME), aborts, or upgrades to TLS (STARTTLS: the caller
//! runs the TLS handshake and then haggling starts over inside TLS).
//!
//! TLS follows the protocol's modes: `nbd-tls = "off"` is NOTLS (STARTTLS
//! refused with `NBD_REP_ERR_POLICY`), `"on"` is SELECTIVETLS with no
//! TLS-only export (the client may upgrade), `"require"` is FORCEDTLS:
//! every option but STARTTLS and ABORT gets `NBD_REP_ERR_TLS_REQD` before
//! the upgrade, and NBD_OPT_EXPORT_NAME (which cannot be refused) closes.

use std::io::{self, Read, Write};

use tracing::debug;

use super::{Close, Export};
use crate::nbd::proto::{self, *};

pub(super) fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

pub(super) fn drain(r: &mut impl Read, len: u64) -> io::Result<()> {
    let n = io::copy(&mut r.take(len), &mut io::sink())?;
    if n < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn send_rep(w: &mut impl Write, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    w.write_all(&proto::encode_option_reply(option, reply, data))
}

/// Why an export request is refused, if it is.
fn check_export(export: &Export, name: &[u8]) -> Result<(), (u32, String)> {
    if !name.is_empty() && name != export.name.as_bytes() {
        return Err((
            REP_ERR_UNKNOWN,
            format!(
                "no export named '{}'; this server exports '{}'",
                String::from_utf8_lossy(name),
                export.name
            ),
        ));
    }
    if !export.backend.writable() {
        return Err((
            REP_ERR_POLICY,
            format!(
                "resource {} is Secondary on this node; only the Primary serves I/O",
                export.name
            ),
        ));
    }
    Ok(())
}

/// How the option haggling ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Enter transmission on an export of this size.
    Transmit(u64),
    /// The client sent NBD_OPT_ABORT.
    Aborted,
    /// STARTTLS was acknowledged: the TLS handshake comes next, then
    /// [`haggle`] again over TLS.
    StartTls,
}

/// The TLS side of one connection's negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TlsState {
    /// The server has a TLS configuration (`nbd-tls` "on" or "require").
    pub(crate) offered: bool,
    /// `nbd-tls = "require"`: nothing but STARTTLS/ABORT before TLS.
    pub(crate) required: bool,
    /// The handshake is done: this haggling runs inside TLS.
    pub(crate) active: bool,
}

/// Sends the greeting and reads the client's flags.
pub(crate) fn greet(r: &mut impl Read, w: &mut impl Write) -> Result<Client, Close> {
    w.write_all(&proto::encode_greeting())?;
    let client_flags = u32::from_be_bytes(read_array(r)?);
    if client_flags & !KNOWN_CLIENT_FLAGS != 0 {
        return Err(Close::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    Ok(Client {
        fixed: client_flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// Option haggling until the client picks the export, aborts or asks for
/// TLS. Called again after the TLS handshake with `tls.active`.
pub(crate) fn haggle(
    export: &Export,
    client: &Client,
    tls: TlsState,
    r: &mut impl Read,
    w: &mut impl Write,
) -> Result<Outcome, Close> {
    loop {
        let Some((opt, data)) = read_option(client, r, w)? else {
            continue;
        };
        if let Some(end) = answer_option(export, client, tls, opt, &data, w)? {
            return Ok(end);
        }
    }
}

/// What the client said of itself in its flags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client {
    /// Fixed newstyle: it takes error replies to options.
    fixed: bool,
    /// No 124 bytes of zeroes after NBD_OPT_EXPORT_NAME's reply.
    no_zeroes: bool,
}

/// The next option and its data; `None` when it was refused as too long
/// (answered already).
fn read_option(
    client: &Client,
    r: &mut impl Read,
    w: &mut impl Write,
) -> Result<Option<(u32, Vec<u8>)>, Close> {
    let hdr = OptionHeader::parse(&read_array(r)?);
    if hdr.magic != IHAVEOPT {
        return Err(Close::Protocol(format!(
            "bad option magic {:#x}",
            hdr.magic
        )));
    }
    let opt = hdr.option;
    if hdr.len > MAX_OPTION_LEN {
        if opt == OPT_EXPORT_NAME || !client.fixed {
            return Err(Close::Protocol(format!(
                "option {opt} with {} bytes of data",
                hdr.len
            )));
        }
        drain(r, u64::from(hdr.len))?;
        send_rep(w, opt, REP_ERR_TOO_BIG, b"option data too long")?;
        return Ok(None);
    }
    let mut data = vec![0u8; usize::try_from(hdr.len).unwrap_or(0)];
    r.read_exact(&mut data)?;
    Ok(Some((opt, data)))
}

/// Answers one option: `Some` ends the haggling, `None` goes on.
fn answer_option(
    export: &Export,
    client: &Client,
    tls: TlsState,
    opt: u32,
    data: &[u8],
    w: &mut impl Write,
) -> Result<Option<Outcome>, Close> {
    let size = export.backend.size_bytes();
    let tls_missing = tls.required && !tls.active;
    if opt == OPT_EXPORT_NAME {
        // No way to report an error: close.
        if tls_missing {
            return Err(Close::Protocol(
                "NBD_OPT_EXPORT_NAME without TLS: this export requires TLS (nbd-tls = \"require\")"
                    .to_owned(),
            ));
        }
        if let Err((_, msg)) = check_export(export, data) {
            return Err(Close::Protocol(format!(
                "NBD_OPT_EXPORT_NAME refused: {msg}"
            )));
        }
        w.write_all(&proto::encode_export_name_reply(
            size,
            TRANSMISSION_FLAGS,
            client.no_zeroes,
        ))?;
        return Ok(Some(Outcome::Transmit(size)));
    }
    if !client.fixed {
        // Without fixed newstyle we may not send error replies.
        return Err(Close::Protocol(format!(
            "option {opt} from a client without fixed newstyle"
        )));
    }
    if opt == OPT_STARTTLS {
        return starttls(tls, data, w);
    }
    if tls_missing && opt != OPT_ABORT {
        send_rep(
            w,
            opt,
            REP_ERR_TLS_REQD,
            b"TLS required: this export accepts clients only over TLS (send NBD_OPT_STARTTLS)",
        )?;
        return Ok(None);
    }
    match opt {
        OPT_ABORT => {
            // The client may already have closed; ignore errors.
            let _ = send_rep(w, opt, REP_ACK, &[]);
            return Ok(Some(Outcome::Aborted));
        }
        OPT_LIST => {
            if !data.is_empty() {
                send_rep(w, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                return Ok(None);
            }
            send_rep(w, opt, REP_SERVER, &proto::encode_rep_server(&export.name))?;
            send_rep(w, opt, REP_ACK, &[])?;
        }
        OPT_INFO | OPT_GO => {
            if info_or_go(export, opt, data, size, w)? && opt == OPT_GO {
                return Ok(Some(Outcome::Transmit(size)));
            }
        }
        OPT_STRUCTURED_REPLY => {
            send_rep(w, opt, REP_ERR_UNSUP, b"only simple replies are supported")?;
        }
        _ => {
            send_rep(
                w,
                opt,
                REP_ERR_UNSUP,
                format!("option {opt} is not supported").as_bytes(),
            )?;
        }
    }
    Ok(None)
}

/// NBD_OPT_STARTTLS: acknowledged when TLS is configured and not yet on.
fn starttls(tls: TlsState, data: &[u8], w: &mut impl Write) -> Result<Option<Outcome>, Close> {
    let opt = OPT_STARTTLS;
    let refusal: Option<(u32, &[u8])> = if !data.is_empty() {
        Some((REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data"))
    } else if tls.active {
        Some((REP_ERR_INVALID, b"TLS is already negotiated"))
    } else if !tls.offered {
        Some((
            REP_ERR_POLICY,
            b"TLS is off on this export (nbd-tls = \"off\")",
        ))
    } else {
        None
    };
    if let Some((rep, msg)) = refusal {
        send_rep(w, opt, rep, msg)?;
        return Ok(None);
    }
    send_rep(w, opt, REP_ACK, &[])?;
    w.flush()?;
    Ok(Some(Outcome::StartTls))
}

/// NBD_OPT_INFO or NBD_OPT_GO: the export's size, flags, block sizes (and
/// name when asked), or why not. True when the export was described.
fn info_or_go(
    export: &Export,
    opt: u32,
    data: &[u8],
    size: u64,
    w: &mut impl Write,
) -> Result<bool, Close> {
    let Some(req) = proto::parse_info_request(data) else {
        send_rep(w, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO data")?;
        return Ok(false);
    };
    if let Err((rep, msg)) = check_export(export, &req.name) {
        debug!(%msg, "export refused");
        send_rep(w, opt, rep, msg.as_bytes())?;
        return Ok(false);
    }
    send_rep(
        w,
        opt,
        REP_INFO,
        &proto::encode_info_export(size, TRANSMISSION_FLAGS),
    )?;
    // Always sent: we enforce non-default constraints.
    send_rep(w, opt, REP_INFO, &proto::encode_info_block_size())?;
    if req.requests.contains(&INFO_NAME) {
        send_rep(w, opt, REP_INFO, &proto::encode_info_name(&export.name))?;
    }
    send_rep(w, opt, REP_ACK, &[])?;
    Ok(true)
}
