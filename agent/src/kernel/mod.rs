//! The agent's handle on the kernel: one rtnetlink connection (links, addresses, neighbours) shared by
//! every subsystem, the interfaces snapshot a pass reads once ([`Kernel::interfaces`]), and the nftables
//! writer ([`nft`]). Bulk route work has its own raw socket (`routes::fib`).

pub mod listing;
pub mod netlink;
pub mod nfnl;
pub mod nft;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

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

/// One interface as the detection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    pub addrs: Vec<IpNet>,
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

    /// The interfaces of this network namespace with their addresses (sorted by index): one link dump and
    /// one address dump.
    pub async fn interfaces(&self) -> Result<Vec<Iface>, KernelError> {
        let links: Vec<_> = self.handle.link().get().execute().try_collect().await.map_err(KernelError::from)?;
        let addrs: Vec<_> = self.handle.address().get().execute().try_collect().await.map_err(KernelError::from)?;
        let mut out: Vec<Iface> = links
            .iter()
            .map(|m| Iface {
                index: m.header.index,
                name: link_name(m).unwrap_or_default(),
                up: m.header.flags.contains(LinkFlags::Up),
                mtu: m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Mtu(v) => Some(*v),
                        _ => None,
                    })
                    .unwrap_or(1500),
                addrs: Vec::new(),
            })
            .collect();
        for a in &addrs {
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let (Some(ip), Some(i)) = (ip, out.iter_mut().find(|i| i.index == a.header.index))
                && let Ok(n) = IpNet::new(ip, a.header.prefix_len)
            {
                i.addrs.push(n);
            }
        }
        out.sort_by_key(|i| i.index);
        Ok(out)
    }
}

/// Interfaces never taken for the node's uplink (first-found, MTU): loopback, container and overlay
/// devices, Tabby's own.
pub fn not_uplink() -> &'static regex::Regex {
    static SKIP: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        let re = r"^(lo|docker.*|cbr.*|dummy.*|virbr.*|lxcbr.*|veth.*|tby.*|vxlan\.tabby|vxlan\..*|kube-ipvs.*|cni.*|flannel.*|tunl.*|cali.*|br-.*)$";
        regex::Regex::new(re).expect("a constant pattern that compiles")
    });
    &SKIP
}

/// The smallest MTU of the up underlay interfaces (1500 when there is none).
pub fn underlay_mtu(ifaces: &[Iface]) -> u32 {
    ifaces.iter().filter(|i| i.up && !not_uplink().is_match(&i.name)).map(|i| i.mtu).min().unwrap_or(1500)
}

/// The source address the kernel would use towards `dest` (no packet is sent).
pub fn source_towards(dest: &str) -> Option<IpAddr> {
    let ip: IpAddr = dest.parse().ok()?;
    let bind: SocketAddr = if ip.is_ipv6() { "[::]:0".parse().ok()? } else { "0.0.0.0:0".parse().ok()? };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(SocketAddr::new(ip, 53)).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// The name of a link message.
pub fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}
