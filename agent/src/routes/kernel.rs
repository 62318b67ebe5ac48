//! rtnetlink I/O through the `rtnetlink` crate: links, and dumps and pipelined changes of Tabby routes for
//! one-off work (`tabby-agent cleanup`). The reconciler's bulk path is [`super::fib`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{KernelRoute, RTPROT_TABBY, Target};

/// How many route requests are in flight at once (the kernel answers them in order; pipelining hides
/// the round trips).
const PIPELINE: usize = 512;
const RT_TABLE_MAIN: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// A netlink connection to the current network namespace.
#[derive(Clone)]
pub struct Kernel {
    pub handle: Handle,
}

impl Kernel {
    /// Opens a connection; its I/O runs as a task of the current runtime.
    pub fn open() -> Result<Kernel, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Kernel { handle })
    }

    /// index → name of every link.
    pub async fn links(&self) -> Result<BTreeMap<u32, String>, KernelError> {
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(msgs.iter().filter_map(|m| link_name(m).map(|n| (m.header.index, n))).collect())
    }

    /// Tabby's routes (protocol 80, main table), IPv4 and IPv6.
    pub async fn routes(&self, links: &BTreeMap<u32, String>) -> Result<Vec<KernelRoute>, KernelError> {
        let mut out = Vec::new();
        for req in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(req).execute();
            while let Some(m) = s.try_next().await? {
                if let Some(r) = parse(&m, links) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Deletes `routes` (cleanup); returns the prefixes whose deletion failed, with the reason.
    pub async fn delete(&self, routes: &[KernelRoute], links: &BTreeMap<u32, String>) -> Vec<(IpNet, String)> {
        let by_name: BTreeMap<&str, u32> = links.iter().map(|(i, n)| (n.as_str(), *i)).collect();
        let dels: Vec<(IpNet, Option<RouteMessage>)> = routes
            .iter()
            .map(|r| {
                let oif = r.oif.or_else(|| dev_of(&r.target).and_then(|d| by_name.get(d).copied()));
                (r.dst, message(r.dst, &r.target, oif))
            })
            .collect();
        let h = self.handle.clone();
        let res: Vec<Result<(), (IpNet, String)>> = futures::stream::iter(dels.into_iter().map(|(dst, msg)| {
            let h = h.clone();
            async move {
                let Some(m) = msg else { return Ok(()) };
                match h.route().del(m).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) if errno(&e) == Some(ESRCH) => Ok(()),
                    Err(e) => Err((dst, e.to_string())),
                }
            }
        }))
        .buffer_unordered(PIPELINE)
        .collect()
        .await;
        res.into_iter().filter_map(Result::err).collect()
    }
}

/// ESRCH: the route is already gone.
const ESRCH: i32 = 3;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn dev_of(t: &Target) -> Option<&str> {
    match t {
        Target::Dev(d) => Some(d),
        Target::Via { dev: Some(d), .. } => Some(d),
        _ => None,
    }
}

/// The name of a link message.
pub fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The netlink message for a route to `dst` doing `t` (`oif` resolved from the device name).
pub fn message(dst: IpNet, t: &Target, oif: Option<u32>) -> Option<RouteMessage> {
    let b = RouteMessageBuilder::<IpAddr>::new().destination_prefix(dst.addr(), dst.prefix_len()).ok()?;
    let b = b.protocol(RouteProtocol::Other(RTPROT_TABBY)).table_id(RT_TABLE_MAIN.into());
    let b = match t {
        Target::Blackhole => b.kind(RouteType::BlackHole).scope(RouteScope::Universe),
        Target::Dev(_) => b.output_interface(oif?).scope(RouteScope::Link),
        Target::Via { gw, onlink, dev } => {
            let mut b = b.gateway(*gw).ok()?.scope(RouteScope::Universe);
            if let Some(i) = oif {
                b = b.output_interface(i);
            } else if dev.is_some() {
                return None;
            }
            if *onlink {
                b = b.onlink();
            }
            b
        }
    };
    Some(b.build())
}

/// A Tabby route of the main table, or `None` for anything else.
pub fn parse(m: &RouteMessage, links: &BTreeMap<u32, String>) -> Option<KernelRoute> {
    let h = &m.header;
    if h.protocol != RouteProtocol::Other(RTPROT_TABBY) {
        return None;
    }
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(h.table.into());
    if table != u32::from(RT_TABLE_MAIN) {
        return None;
    }
    let mut dst: Option<IpAddr> = None;
    let mut gw: Option<IpAddr> = None;
    let mut oif: Option<u32> = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::Gateway(g) => gw = addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = match dst {
        Some(d) => IpNet::new(d, h.destination_prefix_length).ok()?,
        None => return None, // a default route is never Tabby's
    };
    let target = if h.kind == RouteType::BlackHole {
        Target::Blackhole
    } else if let Some(gw) = gw {
        Target::Via { gw, dev: oif.and_then(|i| links.get(&i).cloned()), onlink: h.flags.contains(RouteFlags::Onlink) }
    } else {
        Target::Dev(oif.and_then(|i| links.get(&i).cloned()).unwrap_or_default())
    };
    Some(KernelRoute { dst, target: std::sync::Arc::new(target), oif })
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}
