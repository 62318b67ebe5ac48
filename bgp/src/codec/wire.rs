//! Low-level wire helpers: a bounds-checked reader, the header, prefixes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{EncodeError, HEADER_LEN, MAX_MESSAGE};
use crate::types::{Family, Prefix};

/// Bounds-checked big-endian reader; every accessor returns `None` past the end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(*b)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Writes a header with a placeholder length.
pub(crate) fn header(out: &mut Vec<u8>, ty: u8) {
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0]);
    out.push(ty);
}

/// Fills in the length of the message starting at `start`, checking the maximum.
pub(crate) fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), EncodeError> {
    let len = out.len() - start;
    if len > MAX_MESSAGE {
        out.truncate(start);
        return Err(EncodeError::TooLarge(len));
    }
    debug_assert!(len >= HEADER_LEN);
    out[start + 16..start + 18].copy_from_slice(&(len as u16).to_be_bytes());
    Ok(())
}

/// Reads a list of prefixes of `family` filling all of `buf`.
pub(crate) fn read_prefixes(buf: &[u8], family: Family) -> Option<Vec<Prefix>> {
    let mut r = Reader::new(buf);
    let mut out = Vec::with_capacity(buf.len() / 3);
    while !r.is_empty() {
        out.push(read_prefix(&mut r, family)?);
    }
    Some(out)
}

fn read_prefix(r: &mut Reader<'_>, family: Family) -> Option<Prefix> {
    let len = r.u8()?;
    let bytes = r.take(usize::from(len).div_ceil(8))?;
    match family {
        Family::Ipv4Unicast => {
            if len > 32 {
                return None;
            }
            let mut a = [0u8; 4];
            a[..bytes.len()].copy_from_slice(bytes);
            Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), len)
        }
        Family::Ipv6Unicast => {
            if len > 128 {
                return None;
            }
            let mut a = [0u8; 16];
            a[..bytes.len()].copy_from_slice(bytes);
            Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), len)
        }
    }
}

/// Octets a prefix takes on the wire.
pub(crate) fn prefix_wire_len(p: &Prefix) -> usize {
    1 + usize::from(p.len()).div_ceil(8)
}

/// Appends one prefix.
pub(crate) fn write_prefix(out: &mut Vec<u8>, p: &Prefix) {
    let n = usize::from(p.len()).div_ceil(8);
    out.push(p.len());
    match p.addr() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..n]),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..n]),
    }
}
