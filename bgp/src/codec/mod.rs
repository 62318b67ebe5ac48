//! Wire codec: pure functions from bytes to [`Message`] and back. Never panics on input.

mod error;
mod open;
mod update;
mod wire;

pub use error::{DecodeError, EncodeError, code};
pub use update::encode_routes;

use crate::message::{Message, Notification, RouteRefresh};

/// Maximum BGP message size (RFC 4271 §4.1).
pub const MAX_MESSAGE: usize = 4096;
/// Header size.
pub const HEADER_LEN: usize = 19;

const T_OPEN: u8 = 1;
const T_UPDATE: u8 = 2;
const T_NOTIFICATION: u8 = 3;
const T_KEEPALIVE: u8 = 4;
const T_ROUTE_REFRESH: u8 = 5;

/// Per-session encoding parameters negotiated in OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Both sides advertised the 4-octet AS capability.
    pub four_octet_as: bool,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx { four_octet_as: true }
    }
}

/// Decodes one message from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, otherwise the message and the bytes consumed.
pub fn decode(buf: &[u8], ctx: &Ctx) -> Result<Option<(Message, usize)>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|b| *b != 0xff) {
        return Err(DecodeError::NotSynchronized);
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]);
    let ty = buf[18];
    let ulen = usize::from(len);
    if !(HEADER_LEN..=MAX_MESSAGE).contains(&ulen) {
        return Err(DecodeError::BadLength(len));
    }
    let min_ok = match ty {
        T_OPEN => ulen >= 29,
        T_UPDATE => ulen >= 23,
        T_NOTIFICATION => ulen >= 21,
        T_KEEPALIVE => ulen == HEADER_LEN,
        T_ROUTE_REFRESH => true,
        _ => return Err(DecodeError::BadType(ty)),
    };
    if !min_ok {
        return Err(DecodeError::BadLength(len));
    }
    if buf.len() < ulen {
        return Ok(None);
    }
    let body = &buf[HEADER_LEN..ulen];
    let msg = match ty {
        T_OPEN => Message::Open(open::decode(body)?),
        T_UPDATE => Message::Update(update::decode(body, ctx)?),
        T_NOTIFICATION => {
            Message::Notification(Notification { code: body[0], subcode: body[1], data: body[2..].to_vec() })
        }
        T_KEEPALIVE => Message::Keepalive,
        _ => {
            if ulen != 23 {
                return Err(DecodeError::RouteRefreshLength(len, buf[..ulen].to_vec()));
            }
            Message::RouteRefresh(RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                subtype: body[2],
                safi: body[3],
            })
        }
    };
    Ok(Some((msg, ulen)))
}

/// Appends the wire form of `msg` to `out`.
pub fn encode(msg: &Message, ctx: &Ctx, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let ty = match msg {
        Message::Open(_) => T_OPEN,
        Message::Update(_) => T_UPDATE,
        Message::Notification(_) => T_NOTIFICATION,
        Message::Keepalive => T_KEEPALIVE,
        Message::RouteRefresh(_) => T_ROUTE_REFRESH,
    };
    wire::header(out, ty);
    let res = match msg {
        Message::Open(o) => open::encode(o, out),
        Message::Update(u) => update::encode(u, ctx, out),
        Message::Notification(n) => {
            out.push(n.code);
            out.push(n.subcode);
            out.extend_from_slice(&n.data);
            Ok(())
        }
        Message::Keepalive => Ok(()),
        Message::RouteRefresh(r) => {
            out.extend_from_slice(&r.afi.to_be_bytes());
            out.push(r.subtype);
            out.push(r.safi);
            Ok(())
        }
    };
    if let Err(e) = res {
        out.truncate(start);
        return Err(e);
    }
    wire::finish(out, start)
}

/// Convenience: the wire form of `msg` as a new buffer.
pub fn to_bytes(msg: &Message, ctx: &Ctx) -> Result<Vec<u8>, EncodeError> {
    let mut v = Vec::with_capacity(64);
    encode(msg, ctx, &mut v)?;
    Ok(v)
}
