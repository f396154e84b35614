//! NBD wire format: constants, fixed-size headers, option payload parsing
//! and errno mapping. Everything here is pure (no I/O) so it can be tested
//! without sockets. Numbers are network byte order (big endian) on the wire.
//!
//! Reference: the NBD protocol, `doc/proto.md` in NetworkBlockDevice/nbd.

// --- handshake ------------------------------------------------------------

/// "NBDMAGIC", first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation magic, also prefixes every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags (server → client).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flags (client → server).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
pub const KNOWN_CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

/// Information types for `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// What this server advertises. No READ_ONLY (a Secondary refuses clients
/// instead), no DF/structured replies, no CACHE, no FAST_ZERO, no
/// BLOCK_STATUS. CAN_MULTI_CONN is correct because the backend's Flush
/// covers every write completed before it, whichever connection sent it.
pub const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS
    | TFLAG_SEND_FLUSH
    | TFLAG_SEND_FUA
    | TFLAG_SEND_TRIM
    | TFLAG_SEND_WRITE_ZEROES
    | TFLAG_CAN_MULTI_CONN;

// --- size constraints -------------------------------------------------------

/// Minimum block size: offsets and lengths must be multiples of this.
pub const MIN_BLOCK: u32 = 512;
/// Preferred block size.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Maximum payload (and maximum READ/WRITE length): what the backend takes
/// in one request.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// Writes above [`MAX_PAYLOAD`] but at most this long get their payload
/// read and discarded, then an EINVAL reply (the spec says payloads up to
/// 32 MiB should not be treated as an attack). Longer ones close the
/// connection: draining them would let a client stall us for nothing.
pub const MAX_DRAINED_WRITE: u32 = 32 << 20;
/// Longest option payload we read into memory. Export names are at most
/// 4096 bytes, so INFO/GO fit easily; longer options are drained and
/// answered with `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest string the spec allows (export names, messages).
pub const MAX_STRING: usize = 4096;

// --- transmission -----------------------------------------------------------

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const REQUEST_HEADER_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// NBD error values (the wire values; they match Linux errnos).
pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;
pub const NBD_ESHUTDOWN: u32 = 108;

/// Map a backend errno (positive, Linux numbering) to an NBD error value.
/// EROFS becomes EPERM (NBD has no EROFS and the spec asks for EPERM on
/// writes to a read-only export); EDQUOT/EFBIG become ENOSPC as the spec
/// asks; anything unknown becomes EIO.
pub fn nbd_error(errno: i32) -> u32 {
    use nix::libc;
    match errno {
        libc::EPERM | libc::EROFS => NBD_EPERM,
        libc::EIO => NBD_EIO,
        libc::ENOMEM => NBD_ENOMEM,
        libc::EINVAL => NBD_EINVAL,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => NBD_ENOSPC,
        libc::EOVERFLOW => NBD_EOVERFLOW,
        libc::ENOTSUP => NBD_ENOTSUP,
        libc::ESHUTDOWN => NBD_ESHUTDOWN,
        _ => NBD_EIO,
    }
}

/// Human-readable name of a command, for logs.
pub fn command_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_DISC => "DISC",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        5 => "CACHE",
        CMD_WRITE_ZEROES => "WRITE_ZEROES",
        7 => "BLOCK_STATUS",
        _ => "unknown",
    }
}

// --- encoding ---------------------------------------------------------------

/// The server's first message: magic, IHAVEOPT, handshake flags.
pub fn encode_greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    let (a, rest) = out.split_at_mut(8);
    a.copy_from_slice(&NBDMAGIC.to_be_bytes());
    let (b, c) = rest.split_at_mut(8);
    b.copy_from_slice(&IHAVEOPT.to_be_bytes());
    c.copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// One option reply: header followed by `data`.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    // Our replies are small (≤ a few KiB); saturate rather than truncate.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
pub fn encode_info_export(size: u64, tflags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&tflags.to_be_bytes());
    out
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size() -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&MIN_BLOCK.to_be_bytes());
    out.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
    out.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    out
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_NAME`.
pub fn encode_info_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + name.len());
    out.extend_from_slice(&INFO_NAME.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Payload of `NBD_REP_SERVER` (answer to `NBD_OPT_LIST`).
pub fn encode_rep_server(name: &str) -> Vec<u8> {
    let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Answer to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes unless
/// the client negotiated `NO_ZEROES`.
pub fn encode_export_name_reply(size: u64, tflags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&tflags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// A simple reply header (the read payload, if any, follows it).
pub fn encode_simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    let (a, rest) = out.split_at_mut(4);
    a.copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    let (b, c) = rest.split_at_mut(4);
    b.copy_from_slice(&error.to_be_bytes());
    c.copy_from_slice(&handle.to_be_bytes());
    out
}

// --- decoding ---------------------------------------------------------------

/// Reads big-endian fields off the front of a byte slice; every getter
/// returns `None` instead of reading past the end.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.buf.split_at_checked(n)?;
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.buf.split_first_chunk::<N>()?;
        self.buf = tail;
        Some(*head)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

/// The fixed part of every client option: magic, option, data length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub magic: u64,
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    pub const LEN: usize = 16;

    pub fn parse(buf: &[u8; Self::LEN]) -> OptionHeader {
        let mut d = Decoder::new(buf);
        OptionHeader {
            magic: d.u64().unwrap_or_default(),
            option: d.u32().unwrap_or_default(),
            len: d.u32().unwrap_or_default(),
        }
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub requests: Vec<u16>,
}

/// Parse `NBD_OPT_INFO` / `NBD_OPT_GO` data: u32 name length, name, u16
/// count, count × u16. `None` if the lengths do not add up exactly.
pub fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    let mut d = Decoder::new(data);
    let name_len = usize::try_from(d.u32()?).ok()?;
    if name_len > MAX_STRING {
        return None;
    }
    let name = d.bytes(name_len)?.to_vec();
    let count = usize::from(d.u16()?);
    if d.remaining() != count * 2 {
        return None;
    }
    let requests = (0..count).filter_map(|_| d.u16()).collect();
    Some(InfoRequest { name, requests })
}

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub cmd: u16,
    pub handle: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    /// Parse a request header; `Err(magic)` if the magic is wrong (the
    /// stream is then out of sync and the connection must be closed).
    pub fn parse(buf: &[u8; REQUEST_HEADER_LEN]) -> Result<Request, u32> {
        let mut d = Decoder::new(buf);
        let magic = d.u32().unwrap_or_default();
        if magic != REQUEST_MAGIC {
            return Err(magic);
        }
        Ok(Request {
            flags: d.u16().unwrap_or_default(),
            cmd: d.u16().unwrap_or_default(),
            handle: d.u64().unwrap_or_default(),
            offset: d.u64().unwrap_or_default(),
            len: d.u32().unwrap_or_default(),
        })
    }
}

/// Check that `[offset, offset + len)` is 512-aligned and inside a device of
/// `size` bytes.
pub fn range_ok(offset: u64, len: u32, size: u64) -> bool {
    let align = u64::from(MIN_BLOCK);
    offset % align == 0
        && u64::from(len) % align == 0
        && offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= size)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn greeting_layout() {
        let g = encode_greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
    }

    #[test]
    fn request_roundtrip_and_bad_magic() {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&1u16.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&0xdead_beef_u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = Request::parse(&b).unwrap();
        assert_eq!(
            r,
            Request {
                flags: 1,
                cmd: CMD_WRITE,
                handle: 0xdead_beef,
                offset: 4096,
                len: 512
            }
        );
        b[0] = 0;
        assert!(Request::parse(&b).is_err());
    }

    #[test]
    fn info_request_parsing() {
        let mut d = Vec::new();
        d.extend_from_slice(&2u32.to_be_bytes());
        d.extend_from_slice(b"r0");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, b"r0");
        assert_eq!(r.requests, vec![INFO_BLOCK_SIZE, INFO_NAME]);
        // Truncated, trailing garbage, lying name length.
        assert!(parse_info_request(&d[..d.len() - 1]).is_none());
        let mut longer = d.clone();
        longer.push(0);
        assert!(parse_info_request(&longer).is_none());
        let mut lying = d.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_info_request(&lying).is_none());
        assert!(parse_info_request(&[]).is_none());
    }

    #[test]
    fn ranges() {
        assert!(range_ok(0, 512, 512));
        assert!(range_ok(0, 0, 0));
        assert!(!range_ok(512, 512, 512));
        assert!(!range_ok(1, 512, 4096));
        assert!(!range_ok(0, 511, 4096));
        assert!(!range_ok(u64::MAX - 511, 1024, u64::MAX));
    }

    #[test]
    fn errno_mapping() {
        use nix::libc;
        assert_eq!(nbd_error(libc::EIO), NBD_EIO);
        assert_eq!(nbd_error(libc::EROFS), NBD_EPERM);
        assert_eq!(nbd_error(libc::EPERM), NBD_EPERM);
        assert_eq!(nbd_error(libc::ENOMEM), NBD_ENOMEM);
        assert_eq!(nbd_error(libc::EINVAL), NBD_EINVAL);
        assert_eq!(nbd_error(libc::ENOSPC), NBD_ENOSPC);
        assert_eq!(nbd_error(libc::EDQUOT), NBD_ENOSPC);
        assert_eq!(nbd_error(libc::EAGAIN), NBD_EIO);
        assert_eq!(nbd_error(-3), NBD_EIO);
    }
}
