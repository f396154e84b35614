//! The numbers on the wire: message type codes and the codes of enum fields.

use super::super::message::{DisconnectReason, DiskState, Message, Protocol, Role};

// Type codes and names

pub(super) const T_HELLO: u8 = 1;
pub(super) const T_AUTH: u8 = 2;
pub(super) const T_DATA: u8 = 3;
pub(super) const T_RECV_ACK: u8 = 4;
pub(super) const T_WRITE_ACK: u8 = 5;
pub(super) const T_NEG_ACK: u8 = 6;
pub(super) const T_BARRIER: u8 = 7;
pub(super) const T_BARRIER_ACK: u8 = 8;
pub(super) const T_PING: u8 = 9;
pub(super) const T_PING_ACK: u8 = 10;
pub(super) const T_STATE: u8 = 11;
pub(super) const T_UUIDS: u8 = 12;
pub(super) const T_BITMAP: u8 = 13;
pub(super) const T_RESYNC_REQUEST: u8 = 14;
pub(super) const T_CHECKSUM_REQUEST: u8 = 15;
pub(super) const T_RESYNC_DATA: u8 = 16;
pub(super) const T_IN_SYNC: u8 = 17;
pub(super) const T_RESYNC_NEG: u8 = 18;
pub(super) const T_RESYNC_ACK: u8 = 19;
pub(super) const T_VERIFY_REQUEST: u8 = 20;
pub(super) const T_VERIFY_REPLY: u8 = 21;
pub(super) const T_OUT_OF_SYNC: u8 = 22;
pub(super) const T_SYNC_DONE: u8 = 23;
pub(super) const T_DISCONNECT: u8 = 24;
pub(super) const T_START_SYNC: u8 = 25;
pub(super) const T_SKIP_SYNC: u8 = 26;
pub(super) const T_READ_REQUEST: u8 = 27;
pub(super) const T_READ_REPLY: u8 = 28;
pub(super) const T_READ_NEG: u8 = 29;

/// Name of a message type code, `None` if this build does not know it.
pub(super) fn type_name(ty: u8) -> Option<&'static str> {
    Some(match ty {
        T_HELLO => "Hello",
        T_AUTH => "Auth",
        T_DATA => "Data",
        T_RECV_ACK => "RecvAck",
        T_WRITE_ACK => "WriteAck",
        T_NEG_ACK => "NegAck",
        T_BARRIER => "Barrier",
        T_BARRIER_ACK => "BarrierAck",
        T_PING => "Ping",
        T_PING_ACK => "PingAck",
        T_STATE => "State",
        T_UUIDS => "Uuids",
        T_BITMAP => "Bitmap",
        T_RESYNC_REQUEST => "ResyncRequest",
        T_CHECKSUM_REQUEST => "ChecksumRequest",
        T_RESYNC_DATA => "ResyncData",
        T_IN_SYNC => "InSync",
        T_RESYNC_NEG => "ResyncNeg",
        T_RESYNC_ACK => "ResyncAck",
        T_VERIFY_REQUEST => "VerifyRequest",
        T_VERIFY_REPLY => "VerifyReply",
        T_OUT_OF_SYNC => "OutOfSync",
        T_SYNC_DONE => "SyncDone",
        T_DISCONNECT => "Disconnect",
        T_START_SYNC => "StartSync",
        T_SKIP_SYNC => "SkipSync",
        T_READ_REQUEST => "ReadRequest",
        T_READ_REPLY => "ReadReply",
        T_READ_NEG => "ReadNeg",
        _ => return None,
    })
}

pub(super) fn type_code(msg: &Message) -> u8 {
    match msg {
        Message::Hello(_) => T_HELLO,
        Message::Auth { .. } => T_AUTH,
        Message::Data { .. } => T_DATA,
        Message::RecvAck { .. } => T_RECV_ACK,
        Message::WriteAck { .. } => T_WRITE_ACK,
        Message::NegAck { .. } => T_NEG_ACK,
        Message::Barrier { .. } => T_BARRIER,
        Message::BarrierAck { .. } => T_BARRIER_ACK,
        Message::Ping => T_PING,
        Message::PingAck => T_PING_ACK,
        Message::State { .. } => T_STATE,
        Message::Uuids { .. } => T_UUIDS,
        Message::Bitmap { .. } => T_BITMAP,
        Message::ResyncRequest { .. } => T_RESYNC_REQUEST,
        Message::ChecksumRequest { .. } => T_CHECKSUM_REQUEST,
        Message::ResyncData { .. } => T_RESYNC_DATA,
        Message::InSync { .. } => T_IN_SYNC,
        Message::ResyncNeg { .. } => T_RESYNC_NEG,
        Message::ResyncAck { .. } => T_RESYNC_ACK,
        Message::VerifyRequest { .. } => T_VERIFY_REQUEST,
        Message::VerifyReply { .. } => T_VERIFY_REPLY,
        Message::OutOfSync { .. } => T_OUT_OF_SYNC,
        Message::SyncDone => T_SYNC_DONE,
        Message::Disconnect { .. } => T_DISCONNECT,
        Message::StartSync { .. } => T_START_SYNC,
        Message::SkipSync { .. } => T_SKIP_SYNC,
        Message::ReadRequest { .. } => T_READ_REQUEST,
        Message::ReadReply { .. } => T_READ_REPLY,
        Message::ReadNeg { .. } => T_READ_NEG,
    }
}

/// The name of a message's variant, as used in error messages and logs.
#[must_use]
pub fn message_name(msg: &Message) -> &'static str {
    type_name(type_code(msg)).unwrap_or("?")
}

// ----------------------------------------------------------------------------
// Enum codes

pub(super) fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::A => 0,
        Protocol::B => 1,
        Protocol::C => 2,
    }
}

pub(super) fn protocol_from(v: u8) -> Option<Protocol> {
    Some(match v {
        0 => Protocol::A,
        1 => Protocol::B,
        2 => Protocol::C,
        _ => return None,
    })
}

pub(super) fn role_code(r: Role) -> u8 {
    match r {
        Role::Primary => 0,
        Role::Secondary => 1,
    }
}

pub(super) fn role_from(v: u8) -> Option<Role> {
    Some(match v {
        0 => Role::Primary,
        1 => Role::Secondary,
        _ => return None,
    })
}

pub(super) fn disk_code(d: DiskState) -> u8 {
    match d {
        DiskState::Diskless => 0,
        DiskState::Inconsistent => 1,
        DiskState::Outdated => 2,
        DiskState::DUnknown => 3,
        DiskState::Consistent => 4,
        DiskState::UpToDate => 5,
    }
}

pub(super) fn disk_from(v: u8) -> Option<DiskState> {
    Some(match v {
        0 => DiskState::Diskless,
        1 => DiskState::Inconsistent,
        2 => DiskState::Outdated,
        3 => DiskState::DUnknown,
        4 => DiskState::Consistent,
        5 => DiskState::UpToDate,
        _ => return None,
    })
}

pub(super) fn reason_code(r: DisconnectReason) -> u8 {
    match r {
        DisconnectReason::Shutdown => 0,
        DisconnectReason::Admin => 1,
        DisconnectReason::UnsupportedVersion => 2,
        DisconnectReason::AuthFailed => 3,
        DisconnectReason::WrongResource => 4,
        DisconnectReason::WrongSize => 5,
        DisconnectReason::ConfigMismatch => 6,
        DisconnectReason::SplitBrain => 7,
        DisconnectReason::UnrelatedData => 8,
        DisconnectReason::BothPrimary => 9,
        DisconnectReason::NoGoodData => 10,
        DisconnectReason::ProtocolError => 11,
        DisconnectReason::Timeout => 12,
        DisconnectReason::IoError => 13,
    }
}

pub(super) fn reason_from(v: u8) -> Option<DisconnectReason> {
    Some(match v {
        0 => DisconnectReason::Shutdown,
        1 => DisconnectReason::Admin,
        2 => DisconnectReason::UnsupportedVersion,
        3 => DisconnectReason::AuthFailed,
        4 => DisconnectReason::WrongResource,
        5 => DisconnectReason::WrongSize,
        6 => DisconnectReason::ConfigMismatch,
        7 => DisconnectReason::SplitBrain,
        8 => DisconnectReason::UnrelatedData,
        9 => DisconnectReason::BothPrimary,
        10 => DisconnectReason::NoGoodData,
        11 => DisconnectReason::ProtocolError,
        12 => DisconnectReason::Timeout,
        13 => DisconnectReason::IoError,
        _ => return None,
    })
}
