//! OPEN message body and capabilities (RFC 4271 §4.2, RFC 5492).

use std::net::Ipv4Addr;

use super::wire::Reader;
use super::{DecodeError, EncodeError};
use crate::message::{Capability, GracefulRestart, Open};

const PARAM_CAPABILITIES: u8 = 2;
const CAP_MP: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_GR: u8 = 64;
const CAP_AS4: u8 = 65;
const CAP_ADD_PATH: u8 = 69;

pub(crate) fn decode(body: &[u8]) -> Result<Open, DecodeError> {
    let mut r = Reader::new(body);
    let short = DecodeError::MalformedOpen("truncated");
    let version = r.u8().ok_or(short.clone())?;
    if version != 4 {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let my_as = r.u16().ok_or(short.clone())?;
    let hold_time = r.u16().ok_or(short.clone())?;
    let id = r.u32().ok_or(short.clone())?;
    let opt_len = r.u8().ok_or(short)?;
    if usize::from(opt_len) != r.remaining() {
        return Err(DecodeError::MalformedOpen("optional parameters length"));
    }
    if hold_time == 1 || hold_time == 2 {
        return Err(DecodeError::UnacceptableHoldTime(hold_time));
    }
    if id == 0 {
        return Err(DecodeError::BadBgpId);
    }
    let mut capabilities = Vec::new();
    while !r.is_empty() {
        let ptype = r.u8().ok_or(DecodeError::MalformedOpen("parameter"))?;
        let plen = r.u8().ok_or(DecodeError::MalformedOpen("parameter"))?;
        let pval = r.take(usize::from(plen)).ok_or(DecodeError::MalformedOpen("parameter length"))?;
        if ptype != PARAM_CAPABILITIES {
            return Err(DecodeError::UnsupportedOptParam(ptype));
        }
        let mut c = Reader::new(pval);
        while !c.is_empty() {
            let code = c.u8().ok_or(DecodeError::MalformedOpen("capability"))?;
            let clen = c.u8().ok_or(DecodeError::MalformedOpen("capability"))?;
            let val = c.take(usize::from(clen)).ok_or(DecodeError::MalformedOpen("capability length"))?;
            capabilities.push(decode_cap(code, val)?);
        }
    }
    Ok(Open { my_as, hold_time, router_id: Ipv4Addr::from(id), capabilities })
}

fn decode_cap(code: u8, val: &[u8]) -> Result<Capability, DecodeError> {
    let bad = DecodeError::MalformedOpen("capability value");
    let mut r = Reader::new(val);
    let cap = match code {
        CAP_MP => {
            if val.len() != 4 {
                return Err(bad);
            }
            let afi = r.u16().ok_or(bad.clone())?;
            let _reserved = r.u8();
            let safi = r.u8().ok_or(bad)?;
            Capability::Multiprotocol { afi, safi }
        }
        CAP_ROUTE_REFRESH => {
            if !val.is_empty() {
                return Err(bad);
            }
            Capability::RouteRefresh
        }
        CAP_AS4 => Capability::FourOctetAs(r.u32().filter(|_| val.len() == 4).ok_or(bad)?),
        CAP_GR => {
            if val.len() < 2 || !(val.len() - 2).is_multiple_of(4) {
                return Err(bad);
            }
            let hdr = r.u16().ok_or(bad.clone())?;
            let mut families = Vec::new();
            while !r.is_empty() {
                let afi = r.u16().ok_or(bad.clone())?;
                let safi = r.u8().ok_or(bad.clone())?;
                let flags = r.u8().ok_or(bad.clone())?;
                families.push((afi, safi, flags & 0x80 != 0));
            }
            Capability::GracefulRestart(GracefulRestart {
                restarting: hdr & 0x8000 != 0,
                notification: hdr & 0x4000 != 0,
                restart_time: hdr & 0x0fff,
                families,
            })
        }
        CAP_ADD_PATH => {
            if val.is_empty() || !val.len().is_multiple_of(4) {
                return Err(bad);
            }
            let mut v = Vec::new();
            while !r.is_empty() {
                let afi = r.u16().ok_or(bad.clone())?;
                let safi = r.u8().ok_or(bad.clone())?;
                let sr = r.u8().ok_or(bad.clone())?;
                v.push((afi, safi, sr));
            }
            Capability::AddPath(v)
        }
        _ => Capability::Unknown { code, value: val.to_vec() },
    };
    Ok(cap)
}

fn encode_cap(c: &Capability, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    let code = match c {
        Capability::Multiprotocol { afi, safi } => {
            out.extend_from_slice(&afi.to_be_bytes());
            out.push(0);
            out.push(*safi);
            CAP_MP
        }
        Capability::RouteRefresh => CAP_ROUTE_REFRESH,
        Capability::GracefulRestart(g) => {
            if g.restart_time > 0x0fff {
                return Err(EncodeError::OutOfRange("restart time"));
            }
            let mut hdr = g.restart_time;
            if g.restarting {
                hdr |= 0x8000;
            }
            if g.notification {
                hdr |= 0x4000;
            }
            out.extend_from_slice(&hdr.to_be_bytes());
            for (afi, safi, fwd) in &g.families {
                out.extend_from_slice(&afi.to_be_bytes());
                out.push(*safi);
                out.push(if *fwd { 0x80 } else { 0 });
            }
            CAP_GR
        }
        Capability::FourOctetAs(a) => {
            out.extend_from_slice(&a.to_be_bytes());
            CAP_AS4
        }
        Capability::AddPath(v) => {
            for (afi, safi, sr) in v {
                out.extend_from_slice(&afi.to_be_bytes());
                out.push(*safi);
                out.push(*sr);
            }
            CAP_ADD_PATH
        }
        Capability::Unknown { code, value } => {
            out.extend_from_slice(value);
            *code
        }
    };
    let len = out.len() - start - 2;
    out[start] = code;
    out[start + 1] = u8::try_from(len).map_err(|_| EncodeError::OutOfRange("capability length"))?;
    Ok(())
}

pub(crate) fn encode(o: &Open, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(4);
    out.extend_from_slice(&o.my_as.to_be_bytes());
    out.extend_from_slice(&o.hold_time.to_be_bytes());
    out.extend_from_slice(&o.router_id.octets());
    let opt_start = out.len();
    out.push(0);
    // One capabilities parameter per capability, as most speakers do; keeps each under 255 octets.
    for c in &o.capabilities {
        let p = out.len();
        out.extend_from_slice(&[PARAM_CAPABILITIES, 0]);
        encode_cap(c, out)?;
        out[p + 1] = u8::try_from(out.len() - p - 2).map_err(|_| EncodeError::OutOfRange("parameter length"))?;
    }
    out[opt_start] =
        u8::try_from(out.len() - opt_start - 1).map_err(|_| EncodeError::OutOfRange("optional parameters length"))?;
    Ok(())
}
