//! Decoding and encoding errors, and their NOTIFICATION codes (RFC 4271 §6, RFC 7313).

use crate::message::Notification;

/// NOTIFICATION error codes (RFC 4271 §4.5).
pub mod code {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
}

/// A message that must be answered with a NOTIFICATION and a session reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Marker not all ones (1/1).
    #[error("connection not synchronized")]
    NotSynchronized,
    /// Length field out of range for the message type (1/2).
    #[error("bad message length {0}")]
    BadLength(u16),
    /// Unknown message type (1/3).
    #[error("bad message type {0}")]
    BadType(u8),
    /// OPEN version other than 4 (2/1).
    #[error("unsupported BGP version {0}")]
    UnsupportedVersion(u8),
    /// Zero BGP identifier (2/3).
    #[error("bad BGP identifier")]
    BadBgpId,
    /// Hold time 1 or 2 (2/6).
    #[error("unacceptable hold time {0}")]
    UnacceptableHoldTime(u16),
    /// Optional parameter other than capabilities (2/4).
    #[error("unsupported optional parameter {0}")]
    UnsupportedOptParam(u8),
    /// Inconsistent OPEN lengths or malformed capability (2/0).
    #[error("malformed OPEN: {0}")]
    MalformedOpen(&'static str),
    /// Inconsistent UPDATE lengths or repeated MP attribute (3/1).
    #[error("malformed attribute list: {0}")]
    MalformedAttrList(&'static str),
    /// Unknown attribute without the optional bit (3/2); data is the attribute.
    #[error("unrecognized well-known attribute {0}")]
    UnrecognizedWellKnown(u8, Vec<u8>),
    /// Flags of an attribute whose errors reset the session (3/4); data is the attribute.
    #[error("attribute flags error on attribute {0}")]
    AttrFlags(u8, Vec<u8>),
    /// Syntactically wrong NLRI field (3/10).
    #[error("invalid network field")]
    InvalidNetworkField,
    /// Malformed MP_REACH_NLRI / MP_UNREACH_NLRI (3/9); data is the attribute.
    #[error("optional attribute error on attribute {0}")]
    OptionalAttr(u8, Vec<u8>),
    /// ROUTE-REFRESH of a length other than 23 (7/1); data is the message.
    #[error("bad ROUTE-REFRESH length {0}")]
    RouteRefreshLength(u16, Vec<u8>),
}

impl DecodeError {
    /// The NOTIFICATION to send for this error.
    pub fn notification(&self) -> Notification {
        let (c, s, data) = match self {
            DecodeError::NotSynchronized => (code::HEADER, 1, vec![]),
            DecodeError::BadLength(l) => (code::HEADER, 2, l.to_be_bytes().to_vec()),
            DecodeError::BadType(t) => (code::HEADER, 3, vec![*t]),
            DecodeError::UnsupportedVersion(_) => (code::OPEN, 1, 4u16.to_be_bytes().to_vec()),
            DecodeError::BadBgpId => (code::OPEN, 3, vec![]),
            DecodeError::UnacceptableHoldTime(_) => (code::OPEN, 6, vec![]),
            DecodeError::UnsupportedOptParam(_) => (code::OPEN, 4, vec![]),
            DecodeError::MalformedOpen(_) => (code::OPEN, 0, vec![]),
            DecodeError::MalformedAttrList(_) => (code::UPDATE, 1, vec![]),
            DecodeError::UnrecognizedWellKnown(_, d) => (code::UPDATE, 2, d.clone()),
            DecodeError::AttrFlags(_, d) => (code::UPDATE, 4, d.clone()),
            DecodeError::InvalidNetworkField => (code::UPDATE, 10, vec![]),
            DecodeError::OptionalAttr(_, d) => (code::UPDATE, 9, d.clone()),
            DecodeError::RouteRefreshLength(_, d) => (code::ROUTE_REFRESH, 1, d.clone()),
        };
        Notification { code: c, subcode: s, data }
    }
}

/// A message that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Larger than the 4096-octet maximum.
    #[error("message of {0} octets exceeds 4096")]
    TooLarge(usize),
    /// A field that does not fit its wire width.
    #[error("field out of range: {0}")]
    OutOfRange(&'static str),
}
