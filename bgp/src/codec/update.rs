//! UPDATE message body and path attributes (RFC 4271 §4.3, RFC 4760, RFC 6793, RFC 7606).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::{self, Reader};
use super::{Ctx, DecodeError, EncodeError, MAX_MESSAGE};
use crate::message::{
    AsPath, MpReach, MpUnreach, Origin, PathAttrs, RawAttr, Segment, SegmentKind, TreatAsWithdraw, Update,
};
use crate::types::{AS_TRANS, Family, Prefix};

const F_OPTIONAL: u8 = 0x80;
const F_TRANSITIVE: u8 = 0x40;
const F_PARTIAL: u8 = 0x20;
const F_EXTENDED: u8 = 0x10;

const A_ORIGIN: u8 = 1;
const A_AS_PATH: u8 = 2;
const A_NEXT_HOP: u8 = 3;
const A_MED: u8 = 4;
const A_LOCAL_PREF: u8 = 5;
const A_ATOMIC_AGGREGATE: u8 = 6;
const A_AGGREGATOR: u8 = 7;
const A_COMMUNITIES: u8 = 8;
const A_ORIGINATOR_ID: u8 = 9;
const A_CLUSTER_LIST: u8 = 10;
const A_MP_REACH: u8 = 14;
const A_MP_UNREACH: u8 = 15;
const A_AS4_PATH: u8 = 17;
const A_AS4_AGGREGATOR: u8 = 18;

/// Attribute codes this codec interprets.
pub(crate) const KNOWN_CODES: [u8; 14] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 17, 18];

pub(crate) fn decode(body: &[u8], ctx: &Ctx) -> Result<Update, DecodeError> {
    let mut r = Reader::new(body);
    let wlen = r.u16().ok_or(DecodeError::MalformedAttrList("withdrawn length"))?;
    let wbuf = r.take(usize::from(wlen)).ok_or(DecodeError::MalformedAttrList("withdrawn routes length"))?;
    let alen = r.u16().ok_or(DecodeError::MalformedAttrList("attribute length"))?;
    let abuf = r.take(usize::from(alen)).ok_or(DecodeError::MalformedAttrList("total path attribute length"))?;
    let nbuf = r.rest();
    let withdrawn =
        wire::read_prefixes(wbuf, Family::Ipv4Unicast).ok_or(DecodeError::MalformedAttrList("withdrawn routes"))?;
    let nlri = wire::read_prefixes(nbuf, Family::Ipv4Unicast).ok_or(DecodeError::InvalidNetworkField)?;
    let mut u = Update { withdrawn, nlri, ..Update::default() };
    decode_attrs(abuf, ctx, &mut u)?;
    if u.treat_as_withdraw.is_none() {
        let mut missing = None;
        if !u.nlri.is_empty() || u.mp_reach.is_some() {
            if u.attrs.origin.is_none() {
                missing = Some(A_ORIGIN);
            } else if u.attrs.as_path.is_none() {
                missing = Some(A_AS_PATH);
            }
        }
        if missing.is_none() && !u.nlri.is_empty() && u.attrs.next_hop.is_none() {
            missing = Some(A_NEXT_HOP);
        }
        u.treat_as_withdraw = missing.map(TreatAsWithdraw::Missing);
    }
    Ok(u)
}

fn taw(u: &mut Update, code: u8, reason: &'static str) {
    if u.treat_as_withdraw.is_none() {
        u.treat_as_withdraw = Some(TreatAsWithdraw::MalformedAttr { code, reason });
    }
}

fn decode_attrs(buf: &[u8], ctx: &Ctx, u: &mut Update) -> Result<(), DecodeError> {
    let mut r = Reader::new(buf);
    let mut seen = [false; 256];
    let mut as4_path: Option<AsPath> = None;
    let mut as4_aggregator: Option<(u32, Ipv4Addr)> = None;
    while !r.is_empty() {
        let whole_start = buf.len() - r.remaining();
        let (Some(flags), Some(code)) = (r.u8(), r.u8()) else {
            u.treat_as_withdraw = Some(TreatAsWithdraw::Overrun);
            break;
        };
        let len = if flags & F_EXTENDED != 0 { r.u16().map(usize::from) } else { r.u8().map(usize::from) };
        let Some(val) = len.and_then(|l| r.take(l)) else {
            u.treat_as_withdraw = Some(TreatAsWithdraw::Overrun);
            break;
        };
        let whole = &buf[whole_start..buf.len() - r.remaining()];
        if seen[usize::from(code)] {
            if code == A_MP_REACH || code == A_MP_UNREACH {
                return Err(DecodeError::MalformedAttrList("repeated MP attribute"));
            }
            // RFC 7606 §3.g: discard all but the first occurrence.
            continue;
        }
        seen[usize::from(code)] = true;
        let ot = flags & (F_OPTIONAL | F_TRANSITIVE);
        let a = &mut u.attrs;
        match code {
            A_ORIGIN => {
                if ot != F_TRANSITIVE {
                    taw(u, code, "flags");
                } else if val.len() != 1 || val[0] > 2 {
                    taw(u, code, "value");
                } else {
                    a.origin = Some(match val[0] {
                        0 => Origin::Igp,
                        1 => Origin::Egp,
                        _ => Origin::Incomplete,
                    });
                }
            }
            A_AS_PATH => {
                if ot != F_TRANSITIVE {
                    taw(u, code, "flags");
                } else {
                    match decode_as_path(val, ctx.four_octet_as) {
                        Some(p) => a.as_path = Some(p),
                        None => taw(u, code, "malformed AS_PATH"),
                    }
                }
            }
            A_NEXT_HOP => {
                if ot != F_TRANSITIVE {
                    taw(u, code, "flags");
                } else if val.len() != 4 {
                    taw(u, code, "length");
                } else {
                    let nh = Ipv4Addr::new(val[0], val[1], val[2], val[3]);
                    if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                        // RFC 4271 §6.3: semantically wrong next hop: ignore the route.
                        taw(u, code, "invalid next hop");
                    } else {
                        a.next_hop = Some(nh);
                    }
                }
            }
            A_MED => {
                if ot != F_OPTIONAL {
                    taw(u, code, "flags");
                } else if val.len() != 4 {
                    taw(u, code, "length");
                } else {
                    a.med = Some(be32(val));
                }
            }
            A_LOCAL_PREF => {
                if ot != F_TRANSITIVE {
                    taw(u, code, "flags");
                } else if val.len() != 4 {
                    taw(u, code, "length");
                } else {
                    a.local_pref = Some(be32(val));
                }
            }
            A_ATOMIC_AGGREGATE => {
                // RFC 7606 §7.6: attribute discard on error.
                if ot == F_TRANSITIVE && val.is_empty() {
                    a.atomic_aggregate = true;
                }
            }
            A_AGGREGATOR => {
                // RFC 7606 §7.7: attribute discard on error.
                let want = if ctx.four_octet_as { 8 } else { 6 };
                if ot == F_OPTIONAL | F_TRANSITIVE && val.len() == want {
                    let (asn, ip) = if want == 8 {
                        (be32(val), be32(&val[4..]))
                    } else {
                        (u32::from(u16::from_be_bytes([val[0], val[1]])), be32(&val[2..]))
                    };
                    a.aggregator = Some((asn, Ipv4Addr::from(ip)));
                }
            }
            A_COMMUNITIES => {
                if ot != F_OPTIONAL | F_TRANSITIVE {
                    taw(u, code, "flags");
                } else if val.is_empty() || !val.len().is_multiple_of(4) {
                    taw(u, code, "length");
                } else {
                    a.communities = val.chunks_exact(4).map(be32).collect();
                }
            }
            A_ORIGINATOR_ID => {
                if ot != F_OPTIONAL {
                    taw(u, code, "flags");
                } else if val.len() != 4 {
                    taw(u, code, "length");
                } else {
                    a.originator_id = Some(Ipv4Addr::from(be32(val)));
                }
            }
            A_CLUSTER_LIST => {
                if ot != F_OPTIONAL {
                    taw(u, code, "flags");
                } else if val.is_empty() || !val.len().is_multiple_of(4) {
                    taw(u, code, "length");
                } else {
                    a.cluster_list = val.chunks_exact(4).map(|c| Ipv4Addr::from(be32(c))).collect();
                }
            }
            A_MP_REACH => {
                if ot != F_OPTIONAL {
                    return Err(DecodeError::AttrFlags(code, whole.to_vec()));
                }
                u.mp_reach = decode_mp_reach(val).ok_or_else(|| DecodeError::OptionalAttr(code, whole.to_vec()))?;
            }
            A_MP_UNREACH => {
                if ot != F_OPTIONAL {
                    return Err(DecodeError::AttrFlags(code, whole.to_vec()));
                }
                u.mp_unreach = decode_mp_unreach(val).ok_or_else(|| DecodeError::OptionalAttr(code, whole.to_vec()))?;
            }
            A_AS4_PATH => {
                // RFC 6793 §6: malformed AS4_PATH is discarded; ignored from NEW speakers.
                if !ctx.four_octet_as && ot == F_OPTIONAL | F_TRANSITIVE {
                    as4_path = decode_as_path(val, true)
                        .filter(|p| p.0.iter().all(|s| matches!(s.kind, SegmentKind::Set | SegmentKind::Sequence)));
                }
            }
            A_AS4_AGGREGATOR => {
                if !ctx.four_octet_as && ot == F_OPTIONAL | F_TRANSITIVE && val.len() == 8 {
                    as4_aggregator = Some((be32(val), Ipv4Addr::from(be32(&val[4..]))));
                }
            }
            _ => {
                if flags & F_OPTIONAL == 0 {
                    return Err(DecodeError::UnrecognizedWellKnown(code, whole.to_vec()));
                }
                if flags & F_TRANSITIVE != 0 {
                    a.unknown.push(RawAttr {
                        flags: flags & (F_OPTIONAL | F_TRANSITIVE | F_PARTIAL),
                        code,
                        value: val.to_vec(),
                    });
                }
            }
        }
    }
    if !ctx.four_octet_as {
        merge_as4(&mut u.attrs, as4_path, as4_aggregator);
    }
    Ok(())
}

/// Reconstructs the 4-octet path from AS_PATH and AS4_PATH (RFC 6793 §4.2.3).
fn merge_as4(a: &mut PathAttrs, as4_path: Option<AsPath>, as4_agg: Option<(u32, Ipv4Addr)>) {
    if let Some((asn, _)) = a.aggregator {
        if asn != u32::from(AS_TRANS) {
            // AGGREGATOR from a NEW speaker's point of view is authoritative: ignore AS4_*.
            return;
        }
        if let Some(agg) = as4_agg {
            a.aggregator = Some(agg);
        }
    }
    let (Some(path), Some(p4)) = (a.as_path.as_mut(), as4_path) else {
        return;
    };
    let n = path.path_len();
    let m = p4.path_len();
    if n < m {
        return;
    }
    // Keep the leading (n - m) ASes of AS_PATH (confed segments kept as is), then AS4_PATH.
    let mut keep = n - m;
    let mut out: Vec<Segment> = Vec::new();
    for s in &path.0 {
        match s.kind {
            SegmentKind::ConfedSequence | SegmentKind::ConfedSet => out.push(s.clone()),
            SegmentKind::Set if keep > 0 => {
                out.push(s.clone());
                keep -= 1;
            }
            SegmentKind::Sequence if keep > 0 => {
                let take = keep.min(s.asns.len());
                out.push(Segment { kind: SegmentKind::Sequence, asns: s.asns[..take].to_vec() });
                keep -= take;
            }
            _ => {}
        }
    }
    let mut segs = p4.0.into_iter();
    // Join the kept head and the AS4_PATH into one sequence where they meet.
    if let Some(first) = segs.next() {
        match out.last_mut() {
            Some(last)
                if last.kind == SegmentKind::Sequence
                    && first.kind == SegmentKind::Sequence
                    && last.asns.len() + first.asns.len() <= 255 =>
            {
                last.asns.extend(first.asns)
            }
            _ => out.push(first),
        }
    }
    out.extend(segs);
    *path = AsPath(out);
}

fn be32(v: &[u8]) -> u32 {
    u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

fn decode_as_path(val: &[u8], four: bool) -> Option<AsPath> {
    let mut r = Reader::new(val);
    let mut segs = Vec::new();
    while !r.is_empty() {
        let kind = match r.u8()? {
            1 => SegmentKind::Set,
            2 => SegmentKind::Sequence,
            3 => SegmentKind::ConfedSequence,
            4 => SegmentKind::ConfedSet,
            _ => return None,
        };
        let n = usize::from(r.u8()?);
        if n == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(n);
        for _ in 0..n {
            asns.push(if four { r.u32()? } else { u32::from(r.u16()?) });
        }
        segs.push(Segment { kind, asns });
    }
    Some(AsPath(segs))
}

fn decode_mp_reach(val: &[u8]) -> Option<Option<MpReach>> {
    let mut r = Reader::new(val);
    let afi = r.u16()?;
    let safi = r.u8()?;
    let nhl = usize::from(r.u8()?);
    let nh = r.take(nhl)?;
    let _reserved = r.u8()?;
    let Some(family) = Family::from_afi_safi(afi, safi) else {
        // A family we did not negotiate: ignore it (RFC 4760 §7).
        return Some(None);
    };
    let (next_hop, link_local) = match (family, nhl) {
        (Family::Ipv4Unicast, 4) => (IpAddr::V4(Ipv4Addr::from(be32(nh))), None),
        (Family::Ipv6Unicast, 16) => (IpAddr::V6(v6(&nh[..16])), None),
        (Family::Ipv6Unicast, 32) => (IpAddr::V6(v6(&nh[..16])), Some(v6(&nh[16..32]))),
        _ => return None,
    };
    let nlri = wire::read_prefixes(r.rest(), family)?;
    Some(Some(MpReach { family, next_hop, link_local, nlri }))
}

fn v6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

fn decode_mp_unreach(val: &[u8]) -> Option<Option<MpUnreach>> {
    let mut r = Reader::new(val);
    let afi = r.u16()?;
    let safi = r.u8()?;
    let Some(family) = Family::from_afi_safi(afi, safi) else {
        return Some(None);
    };
    let withdrawn = wire::read_prefixes(r.rest(), family)?;
    Some(Some(MpUnreach { family, withdrawn }))
}

/// Appends one attribute with the given flags, setting the extended-length bit if needed.
fn attr(out: &mut Vec<u8>, flags: u8, code: u8, val: &[u8]) -> Result<(), EncodeError> {
    if val.len() > usize::from(u16::MAX) {
        return Err(EncodeError::OutOfRange("attribute length"));
    }
    if val.len() > 255 {
        out.push(flags | F_EXTENDED);
        out.push(code);
        out.extend_from_slice(&(val.len() as u16).to_be_bytes());
    } else {
        out.push(flags & !F_EXTENDED);
        out.push(code);
        out.push(val.len() as u8);
    }
    out.extend_from_slice(val);
    Ok(())
}

fn encode_as_path(p: &AsPath, four: bool, skip_confed: bool) -> Result<Vec<u8>, EncodeError> {
    let mut v = Vec::new();
    for s in &p.0 {
        if skip_confed && matches!(s.kind, SegmentKind::ConfedSequence | SegmentKind::ConfedSet) {
            continue;
        }
        if s.asns.is_empty() || s.asns.len() > 255 {
            return Err(EncodeError::OutOfRange("AS_PATH segment length"));
        }
        v.push(s.kind as u8);
        v.push(s.asns.len() as u8);
        for a in &s.asns {
            if four {
                v.extend_from_slice(&a.to_be_bytes());
            } else {
                let two = u16::try_from(*a).unwrap_or(AS_TRANS);
                v.extend_from_slice(&two.to_be_bytes());
            }
        }
    }
    Ok(v)
}

/// Appends the encoded path attributes (without MP attributes) to `out`.
fn encode_attrs(a: &PathAttrs, ctx: &Ctx, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if let Some(o) = a.origin {
        attr(out, F_TRANSITIVE, A_ORIGIN, &[o as u8])?;
    }
    let mut need_as4 = false;
    if let Some(p) = &a.as_path {
        attr(out, F_TRANSITIVE, A_AS_PATH, &encode_as_path(p, ctx.four_octet_as, false)?)?;
        need_as4 = !ctx.four_octet_as && p.0.iter().any(|s| s.asns.iter().any(|x| *x > 0xffff));
    }
    if let Some(nh) = a.next_hop {
        attr(out, F_TRANSITIVE, A_NEXT_HOP, &nh.octets())?;
    }
    if let Some(m) = a.med {
        attr(out, F_OPTIONAL, A_MED, &m.to_be_bytes())?;
    }
    if let Some(lp) = a.local_pref {
        attr(out, F_TRANSITIVE, A_LOCAL_PREF, &lp.to_be_bytes())?;
    }
    if a.atomic_aggregate {
        attr(out, F_TRANSITIVE, A_ATOMIC_AGGREGATE, &[])?;
    }
    let mut as4_agg = None;
    if let Some((asn, ip)) = a.aggregator {
        let mut v = Vec::with_capacity(8);
        if ctx.four_octet_as {
            v.extend_from_slice(&asn.to_be_bytes());
        } else {
            v.extend_from_slice(&u16::try_from(asn).unwrap_or(AS_TRANS).to_be_bytes());
            if asn > 0xffff {
                as4_agg = Some((asn, ip));
            }
        }
        v.extend_from_slice(&ip.octets());
        attr(out, F_OPTIONAL | F_TRANSITIVE, A_AGGREGATOR, &v)?;
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        attr(out, F_OPTIONAL | F_TRANSITIVE, A_COMMUNITIES, &v)?;
    }
    if let Some(id) = a.originator_id {
        attr(out, F_OPTIONAL, A_ORIGINATOR_ID, &id.octets())?;
    }
    if !a.cluster_list.is_empty() {
        let v: Vec<u8> = a.cluster_list.iter().flat_map(|c| c.octets()).collect();
        attr(out, F_OPTIONAL, A_CLUSTER_LIST, &v)?;
    }
    if need_as4 && let Some(p) = &a.as_path {
        attr(out, F_OPTIONAL | F_TRANSITIVE, A_AS4_PATH, &encode_as_path(p, true, true)?)?;
    }
    if let Some((asn, ip)) = as4_agg {
        let mut v = asn.to_be_bytes().to_vec();
        v.extend_from_slice(&ip.octets());
        attr(out, F_OPTIONAL | F_TRANSITIVE, A_AS4_AGGREGATOR, &v)?;
    }
    for u in &a.unknown {
        if KNOWN_CODES.contains(&u.code) {
            return Err(EncodeError::OutOfRange("raw attribute with a known code"));
        }
        attr(out, u.flags, u.code, &u.value)?;
    }
    Ok(())
}

fn mp_reach_value(m: &MpReach, v: &mut Vec<u8>) -> Result<(), EncodeError> {
    let (afi, safi) = m.family.afi_safi();
    v.extend_from_slice(&afi.to_be_bytes());
    v.push(safi);
    match (m.family, m.next_hop) {
        (Family::Ipv4Unicast, IpAddr::V4(a)) if m.link_local.is_none() => {
            v.push(4);
            v.extend_from_slice(&a.octets());
        }
        (Family::Ipv6Unicast, IpAddr::V6(a)) => {
            v.push(if m.link_local.is_some() { 32 } else { 16 });
            v.extend_from_slice(&a.octets());
            if let Some(ll) = m.link_local {
                v.extend_from_slice(&ll.octets());
            }
        }
        _ => return Err(EncodeError::OutOfRange("MP_REACH next hop family")),
    }
    v.push(0);
    for p in &m.nlri {
        if p.family() != m.family {
            return Err(EncodeError::OutOfRange("MP_REACH prefix family"));
        }
        wire::write_prefix(v, p);
    }
    Ok(())
}

fn write_v4_prefixes(out: &mut Vec<u8>, ps: &[Prefix]) -> Result<(), EncodeError> {
    for p in ps {
        if p.family() != Family::Ipv4Unicast {
            return Err(EncodeError::OutOfRange("IPv6 prefix in IPv4 field"));
        }
        wire::write_prefix(out, p);
    }
    Ok(())
}

pub(crate) fn encode(u: &Update, ctx: &Ctx, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let wstart = out.len();
    out.extend_from_slice(&[0, 0]);
    write_v4_prefixes(out, &u.withdrawn)?;
    let wlen = out.len() - wstart - 2;
    let wlen = u16::try_from(wlen).map_err(|_| EncodeError::TooLarge(wlen))?;
    out[wstart..wstart + 2].copy_from_slice(&wlen.to_be_bytes());
    let astart = out.len();
    out.extend_from_slice(&[0, 0]);
    encode_attrs(&u.attrs, ctx, out)?;
    if let Some(m) = &u.mp_reach {
        let mut v = Vec::new();
        mp_reach_value(m, &mut v)?;
        attr(out, F_OPTIONAL, A_MP_REACH, &v)?;
    }
    if let Some(m) = &u.mp_unreach {
        let (afi, safi) = m.family.afi_safi();
        let mut v = afi.to_be_bytes().to_vec();
        v.push(safi);
        for p in &m.withdrawn {
            if p.family() != m.family {
                return Err(EncodeError::OutOfRange("MP_UNREACH prefix family"));
            }
            wire::write_prefix(&mut v, p);
        }
        attr(out, F_OPTIONAL, A_MP_UNREACH, &v)?;
    }
    let alen = out.len() - astart - 2;
    let alen = u16::try_from(alen).map_err(|_| EncodeError::TooLarge(alen))?;
    out[astart..astart + 2].copy_from_slice(&alen.to_be_bytes());
    write_v4_prefixes(out, &u.nlri)
}

/// Encodes announcements (`attrs` set) or withdrawals (`attrs` `None`) of `prefixes`, all of one
/// family, as as many UPDATE messages as needed, appending them to `out`.
///
/// For IPv6 the next hop is `next_hop`; for IPv4 `attrs.next_hop` is used.
pub fn encode_routes(
    attrs: Option<(&PathAttrs, Option<IpAddr>)>,
    family: Family,
    prefixes: &[Prefix],
    ctx: &Ctx,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let mut rest = prefixes;
    while !rest.is_empty() {
        let mut u = Update::default();
        let mut mp_nh = None;
        if let Some((a, nh)) = attrs {
            u.attrs = a.clone();
            if family != Family::Ipv4Unicast {
                u.attrs.next_hop = None;
                mp_nh = Some(nh.ok_or(EncodeError::OutOfRange("missing next hop"))?);
            }
        }
        // Size without prefixes, then fill up to the maximum.
        let mut probe = Vec::new();
        let empty = build(&u, family, mp_nh, &[]);
        super::encode(&crate::message::Message::Update(empty), ctx, &mut probe)?;
        let mut room = MAX_MESSAGE - probe.len();
        let mut n = 0;
        for p in rest {
            let l = wire::prefix_wire_len(p);
            if l > room {
                break;
            }
            room -= l;
            n += 1;
        }
        if n == 0 {
            return Err(EncodeError::TooLarge(MAX_MESSAGE + 1));
        }
        let msg = build(&u, family, mp_nh, &rest[..n]);
        super::encode(&crate::message::Message::Update(msg), ctx, out)?;
        rest = &rest[n..];
    }
    Ok(())
}

fn build(base: &Update, family: Family, mp_nh: Option<IpAddr>, ps: &[Prefix]) -> Update {
    let mut u = base.clone();
    let announce = base.attrs != PathAttrs::default();
    match (family, announce) {
        (Family::Ipv4Unicast, true) => u.nlri = ps.to_vec(),
        (Family::Ipv4Unicast, false) => u.withdrawn = ps.to_vec(),
        (f, true) => {
            let (next_hop, link_local) = match mp_nh {
                Some(nh) => (nh, None),
                None => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), None),
            };
            u.mp_reach = Some(MpReach { family: f, next_hop, link_local, nlri: ps.to_vec() })
        }
        (f, false) => u.mp_unreach = Some(MpUnreach { family: f, withdrawn: ps.to_vec() }),
    }
    u
}
