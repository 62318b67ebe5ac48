//! VXLAN (no BGP needed): the device `vxlan.tabby` (VNI 4096, UDP 4789, MTU = underlay − 50) with the
//! node's tunnel address from IPAM (handle `vxlan-tunnel-addr-<node>`), its MAC published on the Node,
//! and per remote node a route to each of its blocks via its tunnel address (onlink), a permanent
//! neighbour entry (tunnel address → VTEP MAC) and a permanent FDB entry (VTEP MAC → node address).
//! CrossSubnet pools route directly to nodes of the same subnet and tunnel to the others.
//!
//! IPv6 pools ride the same device over the IPv4 underlay: a remote node's IPv6 blocks are routed via
//! the link-local address its VTEP MAC implies (EUI-64), with a permanent neighbour entry for it, so
//! no IPv6 tunnel address or second device is needed. CrossSubnet routes them directly to a node of the
//! same subnet that publishes an IPv6 address.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::LinkVxlan;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use tabby_api::ipam::{EncapsulationMode, IPAMBlock, IPPool};

use tabby_wire::names as wire;

use crate::facts::{self, Snapshot};
use crate::ipam::{Allocator, Purpose, release_tunnel_address, tunnel_address};
use crate::kernel::{self, Kernel, KernelError};
use crate::reconcile::{Condition, Local, Outcome, Reconciler, Removed, TeardownError};
use crate::routes::{RouteTable, Source, Target};

pub const DEVICE: &str = "vxlan.tabby";
/// Node annotation: the node's VXLAN tunnel address.
pub const ANNOTATION_VXLAN_ADDR: &str = "tabby.dev/IPv4VXLANTunnelAddr";
/// Node annotation: the MAC address of the node's `vxlan.tabby`.
pub const ANNOTATION_VXLAN_MAC: &str = "tabby.dev/VXLANTunnelMACAddr";
/// NodeStatus RoutesReady reason while the device or its entries cannot be programmed.
pub const REASON_UNAVAILABLE: &str = "VXLANUnavailable";
pub const VNI: u32 = 4096;
pub const PORT: u16 = 4789;

/// A remote node's tunnel endpoint as published on its Node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vtep {
    pub node: String,
    pub node_ip: IpAddr,
    pub tunnel_ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// What VXLAN wants in the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub routes: HashMap<IpNet, Target>,
    /// Remote nodes reached through the tunnel (neighbour + FDB entries).
    pub vteps: BTreeSet<Vtep>,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|x| u8::from_str_radix(x, 16)).collect::<Result<_, _>>().ok()?;
    v.try_into().ok()
}

pub fn format_mac(m: &[u8]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The IPv6 link-local address of a device with MAC `m` (modified EUI-64, RFC 4291 appendix A): the
/// next hop of IPv6 blocks through the tunnel.
pub fn link_local(m: &[u8; 6]) -> Ipv6Addr {
    let b = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
    Ipv6Addr::from(b)
}

fn vtep_of(n: &Node) -> Option<Vtep> {
    Some(Vtep {
        node: n.metadata.name.clone()?,
        node_ip: facts::node_address(n, false)?.addr(),
        tunnel_ip: facts::node_meta(n, ANNOTATION_VXLAN_ADDR)?.parse().ok()?,
        mac: parse_mac(facts::node_meta(n, ANNOTATION_VXLAN_MAC)?)?,
    })
}

/// The encapsulation of the pool holding `cidr`.
pub fn pool_mode<P: Borrow<IPPool>>(pools: &[P], cidr: &IpNet) -> EncapsulationMode {
    pools
        .iter()
        .map(Borrow::borrow)
        .find(|p: &&IPPool| p.spec.cidr.parse::<IpNet>().is_ok_and(|pc| pc.contains(cidr)))
        .map_or(EncapsulationMode::Never, |p| p.spec.vxlan_mode)
}

/// Whether any pool uses VXLAN.
pub fn enabled<P: Borrow<IPPool>>(pools: &[P]) -> bool {
    pools.iter().map(Borrow::borrow).any(|p: &IPPool| !p.spec.disabled && p.spec.vxlan_mode != EncapsulationMode::Never)
}

/// Routes, neighbours and FDB entries towards every other node's blocks in VXLAN pools. `my_addr` is this
/// node's address with its prefix (CrossSubnet compares subnets with it).
pub fn desired<N: Borrow<Node>, B: Borrow<IPAMBlock>, P: Borrow<IPPool>>(
    me: &str,
    my_addr: Option<IpNet>,
    nodes: &[N],
    blocks: &[B],
    pools: &[P],
) -> Desired {
    let mut d = Desired::default();
    let by_node: HashMap<String, &Node> =
        nodes.iter().map(Borrow::borrow).filter_map(|n: &Node| n.metadata.name.clone().map(|k| (k, n))).collect();
    for b in blocks.iter().map(Borrow::borrow).filter(|b: &&IPAMBlock| !b.spec.deleted) {
        let Some(owner) = b.spec.affinity.as_deref().and_then(|a| a.strip_prefix("host:")) else { continue };
        if owner == me {
            continue;
        }
        let Ok(cidr) = b.spec.cidr.parse::<IpNet>() else { continue };
        let mode = pool_mode(pools, &cidr);
        if mode == EncapsulationMode::Never {
            continue;
        }
        let v6 = cidr.addr().is_ipv6();
        let Some(n) = by_node.get(owner) else { continue };
        // Subnets are the IPv4 underlay's, where the tunnel runs.
        let node_v4 = facts::node_address(n, false).map(|a| a.addr());
        let same_subnet = node_v4.is_some_and(|ip| super::same_subnet(my_addr, ip));
        if mode == EncapsulationMode::CrossSubnet && same_subnet {
            let direct = if v6 { facts::node_address(n, true).map(|a| a.addr()) } else { node_v4 };
            if let Some(ip) = direct {
                d.routes.insert(cidr, Target::Via { gw: ip, dev: None, onlink: false });
                continue;
            }
            // Only an IPv6 block of a neighbour with no IPv6 address of its own gets here: it goes
            // through the tunnel.
        }
        if let Some(v) = vtep_of(n) {
            let gw = if v6 { IpAddr::V6(link_local(&v.mac)) } else { IpAddr::V4(v.tunnel_ip) };
            // A link-local next hop is on the device by definition; the IPv4 tunnel address is made so.
            d.routes.insert(cidr, Target::Via { gw, dev: Some(DEVICE.into()), onlink: !v6 });
            d.vteps.insert(v);
        }
    }
    d
}

/// Creates or fixes `vxlan.tabby` (tunnel address, MTU, up) over the uplink holding `local`. Returns
/// its MAC address.
pub async fn ensure_device(k: &Kernel, local: Ipv4Addr, tunnel: Ipv4Addr, mtu: u32) -> Result<[u8; 6], KernelError> {
    let find = || async {
        let links: Vec<_> = k.handle.link().get().match_name(DEVICE.to_string()).execute().try_collect().await.ok()?;
        links.into_iter().next()
    };
    let link = match find().await {
        Some(l) => l,
        None => {
            let msg = LinkVxlan::new(DEVICE, VNI).port(PORT).local(local).learning(false).mtu(mtu).up().build();
            k.handle.link().add(msg).execute().await?;
            match find().await {
                Some(l) => l,
                None => return Err(KernelError::Socket(std::io::Error::other("vxlan.tabby vanished after creation"))),
            }
        }
    };
    let idx = link.header.index;
    let cur_mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    if cur_mtu != Some(mtu) {
        let msg = rtnetlink::LinkUnspec::new_with_index(idx).mtu(mtu).build();
        k.handle.link().set(msg).execute().await?;
    }
    if !link.header.flags.contains(rtnetlink::packet_route::link::LinkFlags::Up) {
        k.handle.link().set(rtnetlink::LinkUnspec::new_with_index(idx).up().build()).execute().await?;
    }
    let addrs: Vec<_> = k.handle.address().get().set_link_index_filter(idx).execute().try_collect().await?;
    let has = addrs.iter().any(|a| {
        a.attributes.iter().any(|x| {
            matches!(x, rtnetlink::packet_route::address::AddressAttribute::Local(ip) | rtnetlink::packet_route::address::AddressAttribute::Address(ip) if *ip == IpAddr::V4(tunnel))
        })
    });
    if !has {
        for a in addrs {
            let _ = k.handle.address().del(a).execute().await;
        }
        k.handle.address().add(idx, IpAddr::V4(tunnel), 32).execute().await?;
    }
    let mac = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
        _ => None,
    });
    Ok(mac.unwrap_or_default())
}

/// One permanent entry on `vxlan.tabby`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    /// Neighbour: a remote tunnel address (or, for IPv6, the link-local address of the remote VTEP
    /// MAC) → that MAC.
    Neigh(IpAddr, [u8; 6]),
    /// Forwarding database: a remote VTEP MAC → the remote node's address.
    Fdb([u8; 6], IpAddr),
}

/// The entries `vteps` need (IPv6 neighbours only where the device has IPv6).
pub fn entries(vteps: &BTreeSet<Vtep>, ipv6: bool) -> BTreeSet<Entry> {
    let mut out = BTreeSet::new();
    for v in vteps {
        out.insert(Entry::Neigh(IpAddr::V4(v.tunnel_ip), v.mac));
        if ipv6 {
            out.insert(Entry::Neigh(IpAddr::V6(link_local(&v.mac)), v.mac));
        }
        out.insert(Entry::Fdb(v.mac, v.node_ip));
    }
    out
}

fn mac_of(b: &[u8]) -> Option<[u8; 6]> {
    b.try_into().ok()
}

/// The permanent neighbour and FDB entries the kernel holds on the device `idx`.
async fn kernel_entries(k: &Kernel, idx: u32) -> Result<BTreeSet<Entry>, KernelError> {
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    let mut out = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6, AddressFamily::Bridge] {
        let mut req = k.handle.neighbours().get().set_address_family(family);
        if family != AddressFamily::Bridge {
            // The kernel filters IP neighbour dumps by device (a node's table holds one entry per pod).
            req.message_mut().attributes.push(NeighbourAttribute::IfIndex(idx));
        }
        let msgs: Vec<_> = req.execute().try_collect().await?;
        for m in msgs.iter().filter(|m| m.header.ifindex == idx && m.header.state == NeighbourState::Permanent) {
            let mut ip = None;
            let mut mac = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some(IpAddr::V6(*a)),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
                    _ => {}
                }
            }
            match (family, ip, mac) {
                (AddressFamily::Bridge, Some(ip), Some(mac)) => out.insert(Entry::Fdb(mac, ip)),
                (AddressFamily::Bridge, _, _) => false,
                (_, Some(ip), Some(mac)) => out.insert(Entry::Neigh(ip, mac)),
                _ => false,
            };
        }
    }
    Ok(out)
}

/// Whether `vxlan.tabby` has IPv6 (it does unless IPv6 is off on the node or the device).
fn device_has_ipv6() -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{DEVICE}/disable_ipv6")).is_ok_and(|v| v.trim() == "0")
}

/// Brings the device's neighbour and FDB entries to what `want` needs: diffed against the kernel on
/// every pass, so an entry someone deleted comes back and one left by an earlier run goes.
pub async fn program_vteps(k: &Kernel, want: &BTreeSet<Vtep>) -> Result<(), KernelError> {
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
    let links: Vec<_> = k.handle.link().get().match_name(DEVICE.to_string()).execute().try_collect().await?;
    let Some(idx) = links.first().map(|l| l.header.index) else { return Ok(()) };
    let want = entries(want, device_has_ipv6());
    let have = kernel_entries(k, idx).await?;
    for e in have.difference(&want) {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = idx;
        match e {
            Entry::Neigh(ip, _) => {
                let (family, dst) = match ip {
                    IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(*a)),
                    IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(*a)),
                };
                m.header.family = family;
                m.attributes.push(NeighbourAttribute::Destination(dst));
            }
            Entry::Fdb(mac, ip) => {
                m.header.family = AddressFamily::Bridge;
                m.header.flags = NeighbourFlags::Own;
                m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
                m.attributes.push(NeighbourAttribute::Destination(match ip {
                    IpAddr::V4(a) => NeighbourAddress::Inet(*a),
                    IpAddr::V6(a) => NeighbourAddress::Inet6(*a),
                }));
            }
        }
        // Best effort: one that vanished meanwhile (or will not go) must not keep the wanted ones out.
        if let Err(err) = k.handle.neighbours().del(m).execute().await {
            tracing::debug!(error = %err, entry = ?e, "removing a stale vxlan.tabby entry");
        }
    }
    for e in want.difference(&have) {
        match e {
            Entry::Neigh(ip, mac) => {
                k.handle
                    .neighbours()
                    .add(idx, *ip)
                    .link_layer_address(mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await?
            }
            Entry::Fdb(mac, ip) => {
                k.handle
                    .neighbours()
                    .add_bridge(idx, mac)
                    .destination(*ip)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await?
            }
        }
    }
    Ok(())
}

/// Removes `vxlan.tabby` (cleanup, or VXLAN switched off).
pub async fn delete_device(k: &Kernel) -> Result<bool, KernelError> {
    let links: Vec<_> =
        k.handle.link().get().match_name(DEVICE.to_string()).execute().try_collect().await.unwrap_or_default();
    match links.first() {
        Some(l) => {
            k.handle.link().del(l.header.index).execute().await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The VXLAN reconciler: the device and its tunnel address (from IPAM), the tunnel routes, and the
/// neighbour and FDB entries towards the other nodes.
pub struct Vxlan {
    node: String,
    kernel: Kernel,
    table: RouteTable,
    alloc: Option<Allocator>,
}

/// What VXLAN wants this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Some enabled pool uses VXLAN.
    pub on: bool,
    /// The node's IPv4 address, the device's local end.
    pub local: Option<Ipv4Addr>,
    /// The device's MTU: the underlay's minus the VXLAN overhead.
    pub device_mtu: u32,
    pub desired: Desired,
}

impl Vxlan {
    pub fn new(node: &str, kernel: Kernel, table: RouteTable, alloc: Option<Allocator>) -> Vxlan {
        Vxlan { node: node.to_string(), kernel, table, alloc }
    }

    /// The device and its tunnel address; the annotations to publish, or why the device failed.
    async fn device(
        &self,
        local: Ipv4Addr,
        mtu: u32,
        ann: &mut BTreeMap<String, Option<String>>,
    ) -> Result<(), String> {
        let Some(alloc) = &self.alloc else { return Ok(()) };
        // Without a tunnel address (no IPv4 VXLAN pool with the Tunnel use) there is no device to make;
        // allocating it says why in the log.
        let Ok(t) = tunnel_address(alloc, &wire::vxlan_tunnel_handle(&self.node), Purpose::VxlanTunnel).await else {
            return Ok(());
        };
        let mac = ensure_device(&self.kernel, local, t, mtu).await.map_err(|e| format!("creating {DEVICE}: {e}"))?;
        ann.insert(ANNOTATION_VXLAN_ADDR.into(), Some(t.to_string()));
        ann.insert(ANNOTATION_VXLAN_MAC.into(), Some(format_mac(&mac)));
        Ok(())
    }
}

impl Reconciler for Vxlan {
    const NAME: &'static str = "vxlan";
    type Desired = Want;

    fn desired(&self, facts: &Snapshot, local: &Local) -> Want {
        Want {
            on: enabled(&facts.pools),
            local: local.addr_v4.and_then(|a| match a.addr() {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            }),
            device_mtu: kernel::underlay_mtu(&local.ifaces).saturating_sub(super::VXLAN_OVERHEAD_V4),
            desired: desired(&facts.node, local.addr_v4, &facts.nodes, &facts.blocks, &facts.pools),
        }
    }

    async fn apply(&mut self, want: &Want, local: &mut Local) -> Outcome {
        let mut failed = None;
        if want.on {
            if let Some(addr) = want.local
                && let Err(e) = self.device(addr, want.device_mtu, &mut local.annotations).await
            {
                failed = Some(e);
            }
        } else {
            if let Err(e) = delete_device(&self.kernel).await {
                tracing::warn!(error = %e, "deleting {DEVICE}");
            }
            local.annotations.insert(ANNOTATION_VXLAN_ADDR.into(), None);
            local.annotations.insert(ANNOTATION_VXLAN_MAC.into(), None);
            release_tunnel_address(self.alloc.as_ref(), &wire::vxlan_tunnel_handle(&self.node)).await;
        }
        self.table.set(Source::Tunnel, want.desired.routes.clone());
        if want.on
            && let Err(e) = program_vteps(&self.kernel, &want.desired.vteps).await
        {
            failed.get_or_insert(format!("programming the neighbour and FDB entries of {DEVICE}: {e}"));
        }
        match failed {
            Some(m) => Outcome::failed(Condition::Routes, REASON_UNAVAILABLE, m),
            None => Outcome::changed(want.desired.routes.len()),
        }
    }

    async fn teardown(&mut self) -> Result<Removed, TeardownError> {
        let gone = delete_device(&self.kernel).await.map_err(|e| TeardownError::new(Self::NAME, e))?;
        Ok(Removed { links: if gone { vec![DEVICE.to_string()] } else { vec![] }, ..Removed::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tabby_api::ipam::{IPAMBlockSpec, IPPoolSpec};

    fn node(name: &str, addr: &str, tunnel: &str, mac: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.annotations = Some(BTreeMap::from([
            (facts::ANNOTATION_V4.to_string(), addr.to_string()),
            (ANNOTATION_VXLAN_ADDR.to_string(), tunnel.to_string()),
            (ANNOTATION_VXLAN_MAC.to_string(), mac.to_string()),
        ]));
        n
    }

    fn block(cidr: &str, owner: &str) -> IPAMBlock {
        IPAMBlock::new(
            "b",
            IPAMBlockSpec { cidr: cidr.into(), affinity: Some(format!("host:{owner}")), ..Default::default() },
        )
    }

    fn pool(cidr: &str, mode: EncapsulationMode) -> IPPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "p"},
            "spec": {"cidr": cidr, "vxlanMode": mode}
        }))
        .map(|mut p: IPPool| {
            p.spec = IPPoolSpec { cidr: cidr.into(), vxlan_mode: mode, ..p.spec };
            p
        })
        .unwrap()
    }

    #[test]
    fn always_tunnels_and_crosssubnet_routes_directly_in_the_subnet() {
        let nodes = vec![
            node("a", "192.168.1.1/24", "10.0.0.1", "66:00:00:00:00:01"),
            node("b", "192.168.1.2/24", "10.0.0.65", "66:00:00:00:00:02"),
            node("c", "192.168.2.3/24", "10.0.0.129", "66:00:00:00:00:03"),
        ];
        let blocks = vec![block("10.0.0.0/26", "a"), block("10.0.0.64/26", "b"), block("10.0.0.128/26", "c")];
        let my: Option<IpNet> = Some("192.168.1.1/24".parse().unwrap());
        let d = desired("a", my, &nodes, &blocks, &[pool("10.0.0.0/16", EncapsulationMode::Always)]);
        assert_eq!(d.routes.len(), 2);
        assert_eq!(
            d.routes[&"10.0.0.64/26".parse::<IpNet>().unwrap()],
            Target::Via { gw: "10.0.0.65".parse().unwrap(), dev: Some(DEVICE.into()), onlink: true }
        );
        assert_eq!(d.vteps.len(), 2);
        let d = desired("a", my, &nodes, &blocks, &[pool("10.0.0.0/16", EncapsulationMode::CrossSubnet)]);
        assert_eq!(
            d.routes[&"10.0.0.64/26".parse::<IpNet>().unwrap()],
            Target::Via { gw: "192.168.1.2".parse().unwrap(), dev: None, onlink: false }
        );
        assert_eq!(d.vteps.iter().map(|v| v.node.as_str()).collect::<Vec<_>>(), vec!["c"]);
        let d = desired("a", my, &nodes, &blocks, &[pool("10.0.0.0/16", EncapsulationMode::Never)]);
        assert!(d.routes.is_empty() && d.vteps.is_empty());
    }

    #[test]
    fn ipv6_blocks_go_via_the_vtep_link_local_address_or_directly_to_a_neighbour_with_ipv6() {
        let mut b = node("b", "192.168.1.2/24", "10.0.0.65", "66:00:00:00:00:02");
        b.metadata.annotations.as_mut().unwrap().insert(facts::ANNOTATION_V6.into(), "fd50::2/64".into());
        let nodes = vec![b, node("c", "192.168.2.3/24", "10.0.0.129", "66:00:00:00:00:03")];
        let blocks = vec![block("fd00:10::40/122", "b"), block("fd00:10::80/122", "c")];
        let my: Option<IpNet> = Some("192.168.1.1/24".parse().unwrap());
        let v6pool = |m| pool("fd00:10::/112", m);
        let d = desired("a", my, &nodes, &blocks, &[v6pool(EncapsulationMode::Always)]);
        assert_eq!(
            d.routes[&"fd00:10::40/122".parse::<IpNet>().unwrap()],
            Target::Via { gw: "fe80::6400:ff:fe00:2".parse().unwrap(), dev: Some(DEVICE.into()), onlink: false }
        );
        assert_eq!(d.vteps.len(), 2);
        let d = desired("a", my, &nodes, &blocks, &[v6pool(EncapsulationMode::CrossSubnet)]);
        assert_eq!(
            d.routes[&"fd00:10::40/122".parse::<IpNet>().unwrap()],
            Target::Via { gw: "fd50::2".parse().unwrap(), dev: None, onlink: false },
            "same subnet and an IPv6 address: direct"
        );
        assert_eq!(
            d.routes[&"fd00:10::80/122".parse::<IpNet>().unwrap()],
            Target::Via { gw: "fe80::6400:ff:fe00:3".parse().unwrap(), dev: Some(DEVICE.into()), onlink: false },
            "another subnet: through the tunnel"
        );
        // Same subnet without an IPv6 address of its own: through the tunnel too.
        let nodes = vec![node("b", "192.168.1.2/24", "10.0.0.65", "66:00:00:00:00:02")];
        let d = desired("a", my, &nodes, &blocks[..1], &[v6pool(EncapsulationMode::CrossSubnet)]);
        assert_eq!(
            d.routes[&"fd00:10::40/122".parse::<IpNet>().unwrap()],
            Target::Via { gw: "fe80::6400:ff:fe00:2".parse().unwrap(), dev: Some(DEVICE.into()), onlink: false }
        );
    }

    #[test]
    fn each_vtep_needs_a_neighbour_per_family_and_an_fdb_entry() {
        let v = Vtep {
            node: "b".into(),
            node_ip: "192.168.1.2".parse().unwrap(),
            tunnel_ip: "10.0.0.65".parse().unwrap(),
            mac: parse_mac("66:00:00:00:00:02").unwrap(),
        };
        let want: BTreeSet<Vtep> = [v.clone()].into();
        let e = entries(&want, true);
        assert_eq!(e.len(), 3);
        assert!(e.contains(&Entry::Neigh("10.0.0.65".parse().unwrap(), v.mac)));
        assert!(e.contains(&Entry::Neigh("fe80::6400:ff:fe00:2".parse().unwrap(), v.mac)));
        assert!(e.contains(&Entry::Fdb(v.mac, "192.168.1.2".parse().unwrap())));
        assert_eq!(entries(&want, false).len(), 2, "no IPv6 neighbour where the device has no IPv6");
    }

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("66:0a:00:ff:00:01").unwrap();
        assert_eq!(format_mac(&m), "66:0a:00:ff:00:01");
        assert!(parse_mac("66:0a").is_none());
    }
}
