//! Raw rtnetlink for the route reconciler's bulk work: route changes written in large batches (many
//! requests per `sendmsg`, no acknowledgement per route: the kernel reports only failures), a lean dump
//! of Tabby's routes, and the event stream for repairs. A generic netlink library builds a message
//! object and a future per route; at 100k learned prefixes that cost more time and memory than the
//! kernel's own work.
//!
//! The kernel processes a `sendmsg` to a netlink kernel socket synchronously, so when it returns every
//! request of the batch has been applied and each failure is already queued on the socket as an
//! `NLMSG_ERROR` carrying the request's sequence number.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::io::unix::AsyncFd;

use super::{Diff, KernelRoute, RTPROT_TABBY, Target};
use crate::kernel::netlink::{
    self, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDR, messages, push_attr, recv, send, u32_at,
};

const RTMSG: usize = 12;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RTN_UNICAST: u8 = 1;
const RTN_BLACKHOLE: u8 = 6;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTNH_F_ONLINK: u32 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// ESRCH: a route to delete is already gone.
const ESRCH: i32 = 3;

/// Bytes of requests per `sendmsg` (the default socket send buffer is about 208 KiB).
const BATCH: usize = 64 * 1024;

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Appends one RTM_NEWROUTE (replace) or RTM_DELROUTE request for a Tabby route of the main table.
/// `None` (nothing appended) when the route needs a device that has no index, or mixes families.
pub fn encode(out: &mut Vec<u8>, del: bool, seq: u32, dst: IpNet, t: &Target, oif: Option<u32>) -> Option<()> {
    let v6 = dst.addr().is_ipv6();
    let (kind, scope, gw, onlink) = match t {
        Target::Blackhole => (RTN_BLACKHOLE, RT_SCOPE_UNIVERSE, None, false),
        Target::Dev(_) => {
            oif?;
            (RTN_UNICAST, RT_SCOPE_LINK, None, false)
        }
        Target::Via { gw, dev, onlink } => {
            if gw.is_ipv6() != v6 || (dev.is_some() && oif.is_none()) {
                return None;
            }
            (RTN_UNICAST, RT_SCOPE_UNIVERSE, Some(*gw), *onlink)
        }
    };
    let start = out.len();
    out.extend_from_slice(&[0u8; NLMSG_HDR]);
    let flags = if del { NLM_F_REQUEST } else { NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE };
    out[start + 4..start + 6].copy_from_slice(&(if del { RTM_DELROUTE } else { RTM_NEWROUTE }).to_ne_bytes());
    out[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    out[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    // A deletion matches any scope (and, for IPv4, takes the type into account only when given).
    let (scope, kind) =
        if del { (RT_SCOPE_NOWHERE, if kind == RTN_BLACKHOLE { kind } else { 0 }) } else { (scope, kind) };
    out.extend_from_slice(&[family, dst.prefix_len(), 0, 0, RT_TABLE_MAIN, RTPROT_TABBY, scope, kind]);
    out.extend_from_slice(&(if onlink { RTNH_F_ONLINK } else { 0 }).to_ne_bytes());
    push_attr(out, RTA_DST, &octets(dst.addr()));
    if let Some(g) = gw {
        push_attr(out, RTA_GATEWAY, &octets(g));
    }
    if let Some(i) = oif {
        push_attr(out, RTA_OIF, &i.to_ne_bytes());
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    Some(())
}

/// A Tabby route of the main table from an RTM_NEWROUTE/RTM_DELROUTE payload; `None` for anything else.
pub fn decode(payload: &[u8], links: &BTreeMap<u32, String>) -> Option<KernelRoute> {
    let (dst, target, oif) = decode_parts(payload, links)?;
    Some(KernelRoute { dst, target: Arc::new(target), oif })
}

fn decode_parts(payload: &[u8], links: &BTreeMap<u32, String>) -> Option<(IpNet, Target, Option<u32>)> {
    if payload.len() < RTMSG || payload[5] != RTPROT_TABBY {
        return None;
    }
    let (dst_len, mut table, kind) = (payload[1], u32::from(payload[4]), payload[7]);
    let flags = u32_at(payload, 8);
    let (mut dst, mut gw, mut oif) = (None, None, None);
    for (t, v) in netlink::attrs(payload, RTMSG) {
        match t {
            RTA_DST => dst = ip_of(v),
            RTA_GATEWAY => gw = ip_of(v),
            RTA_OIF if v.len() == 4 => oif = Some(u32_at(v, 0)),
            RTA_TABLE if v.len() == 4 => table = u32_at(v, 0),
            _ => {}
        }
    }
    if table != u32::from(RT_TABLE_MAIN) {
        return None;
    }
    // A default route is never Tabby's.
    let dst = IpNet::new(dst?, dst_len).ok()?;
    let dev = || oif.and_then(|i| links.get(&i).cloned());
    let target = if kind == RTN_BLACKHOLE {
        Target::Blackhole
    } else if let Some(gw) = gw {
        Target::Via { gw, dev: dev(), onlink: flags & RTNH_F_ONLINK != 0 }
    } else {
        Target::Dev(dev().unwrap_or_default())
    };
    Some((dst, target, oif))
}

/// A netlink socket for batched route changes and dumps (blocking: run it off the async workers).
pub struct Fib {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Fib {
    pub fn open() -> io::Result<Fib> {
        Ok(Fib { fd: netlink::socket(libc::NETLINK_ROUTE, 0, false)?, seq: 1, buf: vec![0; 256 * 1024] })
    }

    /// Applies `plan` (deletions first); returns the prefixes whose change failed, with the reason.
    pub fn apply(&mut self, plan: &Diff, links: &BTreeMap<u32, String>) -> Vec<(IpNet, String)> {
        let by_name: HashMap<&str, u32> = links.iter().map(|(i, n)| (n.as_str(), *i)).collect();
        let oif_of = |t: &Target| match t {
            Target::Dev(d) | Target::Via { dev: Some(d), .. } => by_name.get(d.as_str()).copied(),
            _ => None,
        };
        let mut failed = Vec::new();
        let mut out = Vec::with_capacity(BATCH + 256);
        // Requests of the batch being built: (dst, is a deletion), indexed by seq - first.
        let mut sent: Vec<(IpNet, bool)> = Vec::new();
        let dels = plan.del.iter().map(|r| (true, r.dst, &*r.target, r.oif.or_else(|| oif_of(&r.target))));
        let puts = plan.put.iter().map(|(d, t)| (false, *d, &**t, oif_of(t)));
        for (del, dst, t, oif) in dels.chain(puts) {
            let seq = self.seq.wrapping_add(sent.len() as u32);
            if encode(&mut out, del, seq, dst, t, oif).is_none() {
                // A deletion that cannot be expressed has nothing to remove; a route that cannot is an error.
                if !del {
                    failed.push((dst, "device missing".to_string()));
                }
                continue;
            }
            sent.push((dst, del));
            if out.len() >= BATCH {
                self.flush(&mut out, &mut sent, &mut failed);
            }
        }
        self.flush(&mut out, &mut sent, &mut failed);
        failed
    }

    fn flush(&mut self, out: &mut Vec<u8>, sent: &mut Vec<(IpNet, bool)>, failed: &mut Vec<(IpNet, String)>) {
        if sent.is_empty() {
            return;
        }
        let first = self.seq;
        self.seq = self.seq.wrapping_add(sent.len() as u32);
        if let Err(e) = send(&self.fd, out) {
            failed.extend(sent.iter().map(|(d, _)| (*d, e.to_string())));
        } else {
            // Every request is processed now; collect the failures the kernel queued.
            loop {
                match recv(&self.fd, &mut self.buf, libc::MSG_DONTWAIT) {
                    Ok(0) => break,
                    Ok(n) => {
                        for (kind, _, _, p) in messages(&self.buf[..n]) {
                            if kind != NLMSG_ERROR || p.len() < 4 + NLMSG_HDR {
                                continue;
                            }
                            let errno = -(u32_at(p, 0) as i32);
                            let seq = u32_at(p, 4 + 8);
                            let Some((dst, del)) = sent.get(seq.wrapping_sub(first) as usize) else { continue };
                            if errno == 0 || (*del && errno == ESRCH) {
                                continue;
                            }
                            failed.push((*dst, io::Error::from_raw_os_error(errno).to_string()));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Failure reports were lost (receive buffer overrun): trust nothing of this batch.
                        failed.extend(sent.iter().map(|(d, _)| (*d, e.to_string())));
                        break;
                    }
                }
            }
        }
        out.clear();
        sent.clear();
    }

    /// Tabby's routes in the main table, IPv4 and IPv6.
    pub fn dump(&mut self, links: &BTreeMap<u32, String>) -> io::Result<Vec<KernelRoute>> {
        let mut routes = Vec::new();
        // A full table has a handful of distinct targets: share them (100k routes via one gateway
        // would otherwise each carry their own copy of the device name).
        let mut targets: HashMap<Target, Arc<Target>> = HashMap::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            let mut req = Vec::with_capacity(NLMSG_HDR + RTMSG);
            req.extend_from_slice(&((NLMSG_HDR + RTMSG) as u32).to_ne_bytes());
            req.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
            req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
            req.extend_from_slice(&seq.to_ne_bytes());
            req.extend_from_slice(&0u32.to_ne_bytes());
            req.extend_from_slice(&[family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            send(&self.fd, &req)?;
            netlink::dump(&self.fd, &mut self.buf, seq, |kind, p| {
                if kind == RTM_NEWROUTE
                    && let Some((dst, t, oif)) = decode_parts(p, links)
                {
                    let target = targets.entry(t).or_insert_with_key(|t| Arc::new(t.clone())).clone();
                    routes.push(KernelRoute { dst, target, oif });
                }
            })?;
        }
        Ok(routes)
    }
}

/// What the reconciler reacts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A Tabby route was deleted.
    RouteDeleted(IpNet),
    /// A link appeared, disappeared or changed state.
    Link,
    /// Events were lost (socket overrun): only a full pass can tell what changed.
    Lost,
}

/// The events in a buffer of multicast messages (route additions, the bulk of them, are skipped
/// without parsing).
pub fn events(buf: &[u8]) -> impl Iterator<Item = Event> + '_ {
    let none = BTreeMap::new();
    messages(buf).filter_map(move |(kind, _, _, p)| match kind {
        RTM_DELROUTE => decode(p, &none).map(|r| Event::RouteDeleted(r.dst)),
        RTM_NEWLINK | RTM_DELLINK => Some(Event::Link),
        _ => None,
    })
}

/// Calls `f` for every relevant netlink event until the socket fails.
pub async fn watch(f: impl Fn(Event) + Send + 'static) {
    let registered = netlink::socket(libc::NETLINK_ROUTE, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE, true)
        .and_then(|fd| {
            // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for its lifetime.
            unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
        });
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "netlink events unavailable; relying on the resync timer");
            return;
        }
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "netlink events");
                return;
            }
        };
        match guard.try_io(|s| recv(s, &mut buf, 0)) {
            Ok(Ok(n)) => events(&buf[..n]).for_each(&f),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => f(Event::Lost),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "netlink events");
                return;
            }
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn encoded_routes_decode_to_themselves() {
        let links: BTreeMap<u32, String> = [(7, "tbyabc".to_string()), (9, "vxlan.tabby".to_string())].into();
        let cases = [
            (net("10.0.0.0/26"), Target::Blackhole, None),
            (net("10.0.0.5/32"), Target::Dev("tbyabc".into()), Some(7)),
            (net("10.1.0.0/26"), Target::Via { gw: "192.168.1.2".parse().unwrap(), dev: None, onlink: false }, None),
            (
                net("10.2.0.0/26"),
                Target::Via { gw: "10.2.0.1".parse().unwrap(), dev: Some("vxlan.tabby".into()), onlink: true },
                Some(9),
            ),
            (net("fd00:1::/122"), Target::Via { gw: "fd00::2".parse().unwrap(), dev: None, onlink: false }, None),
        ];
        let mut buf = Vec::new();
        for (i, (dst, t, oif)) in cases.iter().enumerate() {
            encode(&mut buf, false, i as u32, *dst, t, *oif).unwrap();
        }
        let got: Vec<(u16, u32, KernelRoute)> =
            messages(&buf).map(|(k, _, s, p)| (k, s, decode(p, &links).unwrap())).collect();
        assert_eq!(got.len(), cases.len());
        for ((k, s, r), (i, (dst, t, oif))) in got.into_iter().zip(cases.iter().enumerate()) {
            assert_eq!((k, s), (RTM_NEWROUTE, i as u32));
            assert_eq!((r.dst, &*r.target, r.oif), (*dst, t, *oif));
        }
        // Not expressible: a device route without its device, an IPv4 prefix via an IPv6 gateway.
        assert!(encode(&mut buf, false, 9, net("10.0.0.6/32"), &Target::Dev("gone".into()), None).is_none());
        let v6gw = Target::Via { gw: "fd00::1".parse().unwrap(), dev: None, onlink: false };
        assert!(encode(&mut buf, false, 9, net("10.0.0.0/24"), &v6gw, None).is_none());
    }

    #[test]
    fn events_skip_additions_and_other_protocols() {
        let mut buf = Vec::new();
        let via = Target::Via { gw: "192.168.1.2".parse().unwrap(), dev: None, onlink: false };
        encode(&mut buf, false, 1, net("10.1.0.0/26"), &via, None).unwrap();
        encode(&mut buf, true, 2, net("10.1.0.0/26"), &via, None).unwrap();
        let mut other = Vec::new();
        encode(&mut other, true, 3, net("10.3.0.0/26"), &via, None).unwrap();
        other[NLMSG_HDR + 5] = 4; // protocol static
        buf.extend_from_slice(&other);
        let evs: Vec<Event> = events(&buf).collect();
        assert_eq!(evs, vec![Event::RouteDeleted(net("10.1.0.0/26"))]);
    }
}
