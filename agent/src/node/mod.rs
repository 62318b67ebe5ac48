//! This node's identity: its name (NODENAME), its addresses by the Installation's autodetection method
//! (Calico's syntax, [`Method`]), the pod MTU, and the Node annotations other agents read.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use futures::TryStreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

use crate::routes::kernel::{Kernel, KernelError, link_name};

/// Node annotation: the node's IPv4 address with its prefix length (`192.168.100.2/24`).
pub const ANNOTATION_V4: &str = "tabby.dev/IPv4Address";
/// Node annotation: the node's IPv6 address with its prefix length.
pub const ANNOTATION_V6: &str = "tabby.dev/IPv6Address";
/// Node annotation: the node's VXLAN tunnel address.
pub const ANNOTATION_VXLAN_ADDR: &str = "tabby.dev/IPv4VXLANTunnelAddr";
/// Node annotation: the MAC address of the node's `vxlan.tabby`.
pub const ANNOTATION_VXLAN_MAC: &str = "tabby.dev/VXLANTunnelMACAddr";
/// Node label or annotation: this node is a route reflector with this cluster ID.
pub const RR_CLUSTER_ID: &str = "tabby.dev/route-reflector-cluster-id";

/// Interfaces never considered the node's uplink (first-found, MTU): loopback, container and overlay
/// devices, Tabby's own.
const SKIP_BY_DEFAULT: &str = r"^(lo|docker.*|cbr.*|dummy.*|virbr.*|lxcbr.*|veth.*|tby.*|vxlan\.tabby|vxlan\..*|kube-ipvs.*|cni.*|flannel.*|tunl.*|cali.*|br-.*)$";

/// An autodetection method.
#[derive(Debug, Clone)]
pub enum Method {
    FirstFound,
    KubernetesInternalIp,
    Interface(regex::Regex),
    SkipInterface(regex::Regex),
    CanReach(String),
    Cidrs(Vec<IpNet>),
    /// `none`: no address of this family.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("autodetection method {0:?}: {1}")]
    Method(String, String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

impl Method {
    /// Parses Calico's syntax (`first-found`, `kubernetes-internal-ip`, `interface=RE`, `skip-interface=RE`,
    /// `can-reach=DEST`, `cidr=CIDR[,CIDR…]`, `none`).
    pub fn parse(s: &str) -> Result<Method, NodeError> {
        let bad = |why: String| NodeError::Method(s.to_string(), why);
        let s = s.trim();
        let (k, v) = s.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((s, ""));
        let re = |v: &str| regex::Regex::new(&format!("^(?:{v})$")).map_err(|e| bad(e.to_string()));
        Ok(match k {
            "" | "first-found" | "firstFound" => Method::FirstFound,
            "kubernetes-internal-ip" | "kubernetes" => Method::KubernetesInternalIp,
            "interface" => Method::Interface(re(v)?),
            "skip-interface" => Method::SkipInterface(re(v)?),
            "can-reach" if !v.is_empty() => Method::CanReach(v.to_string()),
            "cidr" | "cidrs" => Method::Cidrs(
                v.split(',')
                    .filter(|c| !c.trim().is_empty())
                    .map(|c| c.trim().parse::<IpNet>().map_err(|e| bad(e.to_string())))
                    .collect::<Result<_, _>>()?,
            ),
            "none" => Method::None,
            _ => return Err(bad("unknown method".into())),
        })
    }
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

fn usable(a: &IpNet, v6: bool) -> bool {
    match a.addr() {
        IpAddr::V4(x) => !v6 && !x.is_loopback() && !x.is_link_local(),
        IpAddr::V6(x) => v6 && !x.is_loopback() && !x.is_unicast_link_local(),
    }
}

fn default_skip() -> regex::Regex {
    // A constant pattern that is known to compile.
    regex::Regex::new(SKIP_BY_DEFAULT).expect("static regex")
}

/// Picks the node address of one family among `ifaces` (sorted by index). `internal_ip` is the Node's
/// InternalIP, `reach_src` the source address the kernel picks towards a can-reach destination.
pub fn select(
    method: &Method,
    ifaces: &[Iface],
    v6: bool,
    internal_ip: Option<IpAddr>,
    reach_src: Option<IpAddr>,
) -> Option<IpNet> {
    let skip = default_skip();
    let with_addr = |pred: &dyn Fn(&Iface) -> bool| -> Option<IpNet> {
        ifaces.iter().filter(|i| i.up && pred(i)).find_map(|i| i.addrs.iter().find(|a| usable(a, v6)).copied())
    };
    let owning = |ip: IpAddr| ifaces.iter().flat_map(|i| i.addrs.iter()).find(|a| a.addr() == ip).copied();
    match method {
        Method::None => None,
        Method::FirstFound => with_addr(&|i| !skip.is_match(&i.name)),
        Method::Interface(re) => with_addr(&|i| re.is_match(&i.name)),
        Method::SkipInterface(re) => with_addr(&|i| !re.is_match(&i.name) && !skip.is_match(&i.name)),
        Method::Cidrs(cidrs) => ifaces
            .iter()
            .filter(|i| i.up)
            .flat_map(|i| i.addrs.iter())
            .find(|a| usable(a, v6) && cidrs.iter().any(|c| c.contains(&a.addr())))
            .copied(),
        Method::KubernetesInternalIp => {
            let ip = internal_ip.filter(|ip| ip.is_ipv6() == v6)?;
            Some(owning(ip).unwrap_or_else(|| IpNet::from(ip)))
        }
        Method::CanReach(_) => {
            let ip = reach_src.filter(|ip| ip.is_ipv6() == v6)?;
            Some(owning(ip).unwrap_or_else(|| IpNet::from(ip)))
        }
    }
}

/// The pod MTU: the smallest MTU of the up underlay interfaces (1500 if none) minus `overhead`.
pub fn pod_mtu(ifaces: &[Iface], overhead: u32) -> u32 {
    let skip = default_skip();
    let base = ifaces.iter().filter(|i| i.up && !skip.is_match(&i.name)).map(|i| i.mtu).min().unwrap_or(1500);
    base.saturating_sub(overhead)
}

/// The interfaces of this network namespace with their addresses.
pub async fn interfaces(k: &Kernel) -> Result<Vec<Iface>, NodeError> {
    let links: Vec<_> = k.handle.link().get().execute().try_collect().await.map_err(KernelError::from)?;
    let addrs: Vec<_> = k.handle.address().get().execute().try_collect().await.map_err(KernelError::from)?;
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

/// The source address the kernel would use towards `dest` (no packet is sent).
pub fn source_towards(dest: &str) -> Option<IpAddr> {
    let ip: IpAddr = dest.parse().ok()?;
    let bind: SocketAddr = if ip.is_ipv6() { "[::]:0".parse().ok()? } else { "0.0.0.0:0".parse().ok()? };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(SocketAddr::new(ip, 53)).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// The Node's InternalIP of the family.
pub fn internal_ip(node: &Node, v6: bool) -> Option<IpAddr> {
    node.status.as_ref()?.addresses.as_ref()?.iter().find_map(|a| {
        (a.type_ == "InternalIP").then(|| a.address.parse::<IpAddr>().ok()).flatten().filter(|ip| ip.is_ipv6() == v6)
    })
}

/// Detects the node's address of one family. Reported as subsystem `node`.
pub async fn detect(k: &Kernel, method: &Method, v6: bool, node: Option<&Node>) -> Result<Option<IpNet>, NodeError> {
    let started = std::time::Instant::now();
    let r = detect_now(k, method, v6, node).await;
    crate::metrics::reconcile_done("node", started.elapsed(), r.is_ok());
    r
}

async fn detect_now(k: &Kernel, method: &Method, v6: bool, node: Option<&Node>) -> Result<Option<IpNet>, NodeError> {
    let ifaces = interfaces(k).await?;
    let internal = node.and_then(|n| internal_ip(n, v6));
    let reach = match method {
        Method::CanReach(d) => source_towards(d),
        _ => None,
    };
    Ok(select(method, &ifaces, v6, internal, reach))
}

/// A node's address from its annotation (other nodes' addresses, for peers and routes).
pub fn node_address(node: &Node, v6: bool) -> Option<IpNet> {
    let key = if v6 { ANNOTATION_V6 } else { ANNOTATION_V4 };
    let v = node.metadata.annotations.as_ref()?.get(key)?;
    v.parse::<IpNet>().ok().or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A node's annotation or label.
pub fn node_meta<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    let m = &node.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .or_else(|| m.labels.as_ref().and_then(|l| l.get(key)))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(index: u32, name: &str, mtu: u32, addrs: &[&str]) -> Iface {
        Iface { index, name: name.into(), up: true, mtu, addrs: addrs.iter().map(|a| a.parse().unwrap()).collect() }
    }

    fn ifaces() -> Vec<Iface> {
        vec![
            iface(1, "lo", 65536, &["127.0.0.1/8", "::1/128"]),
            iface(2, "docker0", 1500, &["172.17.0.1/16"]),
            iface(3, "eth0", 9000, &["10.1.0.5/24", "fd00::5/64", "fe80::1/64"]),
            iface(4, "eth1", 1500, &["192.168.100.2/24"]),
            iface(5, "tby0123456789ab", 1450, &[]),
        ]
    }

    #[test]
    fn methods_parse_in_calico_syntax() {
        assert!(matches!(Method::parse("first-found").unwrap(), Method::FirstFound));
        assert!(matches!(Method::parse("").unwrap(), Method::FirstFound));
        assert!(matches!(Method::parse("kubernetes-internal-ip").unwrap(), Method::KubernetesInternalIp));
        assert!(matches!(Method::parse("interface=eth.*").unwrap(), Method::Interface(_)));
        assert!(matches!(Method::parse("can-reach=8.8.8.8").unwrap(), Method::CanReach(_)));
        match Method::parse("cidr=10.0.0.0/8, 192.168.0.0/16").unwrap() {
            Method::Cidrs(c) => assert_eq!(c.len(), 2),
            m => panic!("{m:?}"),
        }
        assert!(Method::parse("cidr=nonsense").is_err());
        assert!(Method::parse("interface=(").is_err());
        assert!(Method::parse("guess").is_err());
    }

    #[test]
    fn selection_by_each_method() {
        let i = ifaces();
        let sel = |m: &str, v6: bool| select(&Method::parse(m).unwrap(), &i, v6, None, None).map(|n| n.to_string());
        assert_eq!(sel("first-found", false).as_deref(), Some("10.1.0.5/24"));
        assert_eq!(sel("first-found", true).as_deref(), Some("fd00::5/64"));
        assert_eq!(sel("interface=eth1", false).as_deref(), Some("192.168.100.2/24"));
        assert_eq!(sel("skip-interface=eth0", false).as_deref(), Some("192.168.100.2/24"));
        assert_eq!(sel("cidr=192.168.0.0/16", false).as_deref(), Some("192.168.100.2/24"));
        assert_eq!(sel("cidr=172.16.0.0/12", false).as_deref(), Some("172.17.0.1/16"));
        assert_eq!(sel("none", false), None);
        let k = select(&Method::KubernetesInternalIp, &i, false, Some("192.168.100.2".parse().unwrap()), None);
        assert_eq!(k.unwrap().to_string(), "192.168.100.2/24");
        let r = select(&Method::CanReach("x".into()), &i, false, None, Some("10.1.0.5".parse().unwrap()));
        assert_eq!(r.unwrap().to_string(), "10.1.0.5/24");
        let mut down = ifaces();
        down[2].up = false;
        assert_eq!(select(&Method::FirstFound, &down, false, None, None).unwrap().to_string(), "192.168.100.2/24");
    }

    #[test]
    fn mtu_is_the_smallest_underlay_minus_overhead() {
        let i = ifaces();
        assert_eq!(pod_mtu(&i, 0), 1500);
        assert_eq!(pod_mtu(&i, crate::encap::VXLAN_OVERHEAD_V4), 1450);
        assert_eq!(pod_mtu(&i[..3], crate::encap::VXLAN_OVERHEAD_V4), 8950);
        assert_eq!(pod_mtu(&[], 0), 1500);
    }

    #[test]
    fn can_reach_uses_the_kernel_source_choice() {
        assert_eq!(source_towards("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_towards("not an ip"), None);
    }
}
