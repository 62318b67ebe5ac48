//! IPIP (IP protocol 4), the Calico way: the kernel's fallback device `tunl0` (MTU = underlay − 20) holds
//! the node's tunnel address from IPAM (handle `ipip-tunnel-addr-<node>`, published on the Node), and
//! routes learned over BGP to blocks of pools with `ipipMode: Always` become
//! `<block> via <node address> dev tunl0 onlink`; with `CrossSubnet` only next hops outside this node's
//! subnet are tunnelled, the others are routed directly.
//!
//! [`Encap::route`] is the pure mapping from a learned route to the kernel route; the BGP glue calls it
//! through a [`Shared`] copy that the network pass keeps current. A kernel without the `ipip` module
//! cannot create `tunl0`: [`ensure_device`] says so with [`IpipError::NoModule`] and the agent reports
//! it instead of routing those pools some other way.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::LinkIpIp;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use tabby_api::ipam::{EncapsulationMode, IPPool};

use tabby_wire::names as wire;

use super::same_subnet;
use crate::facts::Snapshot;
use crate::ipam::{Allocator, Purpose, release_tunnel_address, tunnel_address};
use crate::kernel::{self, Kernel, KernelError};
use crate::reconcile::{Condition, Local, Outcome, Reconciler, Removed, TeardownError};
use crate::routes::Target;

/// The kernel's fallback IPIP device (created with the `ipip` module; it cannot be deleted).
pub const DEVICE: &str = "tunl0";
/// Node annotation: the node's IPIP tunnel address (the VXLAN one is `tabby.dev/IPv4VXLANTunnelAddr`).
pub const ANNOTATION_ADDR: &str = "tabby.dev/IPv4IPIPTunnelAddr";
/// NodeStatus RoutesReady reason when IPIP pools cannot be served.
pub const REASON_UNAVAILABLE: &str = "IPIPUnavailable";

/// EOPNOTSUPP: what the kernel answers to a link of an unknown kind (no `ipip` module).
const EOPNOTSUPP: i32 = 95;

#[derive(Debug, thiserror::Error)]
pub enum IpipError {
    #[error(
        "the kernel has no ipip module (CONFIG_NET_IPIP): tunl0 cannot be created; load it with `modprobe ipip` or use VXLAN for the pool"
    )]
    NoModule,
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

impl From<rtnetlink::Error> for IpipError {
    fn from(e: rtnetlink::Error) -> Self {
        IpipError::Kernel(KernelError::Netlink(e))
    }
}

/// Whether any IPv4 pool uses IPIP (a disabled one too: its pods still need the tunnel, and [`Encap`]
/// still routes its blocks through tunl0).
pub fn enabled<P: Borrow<IPPool>>(pools: &[P]) -> bool {
    pools.iter().map(Borrow::borrow).any(|p: &IPPool| {
        p.spec.ipip_mode != EncapsulationMode::Never && p.spec.cidr.parse::<IpNet>().is_ok_and(|c| c.addr().is_ipv4())
    })
}

/// What decides the kernel route of a learned prefix: the IPIP pools and this node's address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encap {
    /// IPv4 pools, most specific first, with their ipipMode (disabled ones too: their pods still need
    /// routes); empty when none uses IPIP.
    pools: Vec<(IpNet, EncapsulationMode)>,
    /// This node's address with its prefix length.
    local: Option<IpNet>,
}

impl Encap {
    pub fn new<P: Borrow<IPPool>>(pools: &[P], local: Option<IpNet>) -> Encap {
        let mut v: Vec<(IpNet, EncapsulationMode)> = pools
            .iter()
            .map(Borrow::borrow)
            .filter_map(|p: &IPPool| p.spec.cidr.parse::<IpNet>().ok().map(|c| (c.trunc(), p.spec.ipip_mode)))
            .filter(|(c, _)| c.addr().is_ipv4())
            .collect();
        if v.iter().all(|(_, m)| *m == EncapsulationMode::Never) {
            // Nothing to decide: every route is direct, whatever this node's address.
            return Encap::default();
        }
        v.sort_by_key(|(c, _)| (std::cmp::Reverse(c.prefix_len()), *c));
        Encap { pools: v, local }
    }

    /// The IPIP mode of the most specific pool holding `dst`.
    pub fn mode(&self, dst: &IpNet) -> EncapsulationMode {
        self.pools.iter().find(|(c, _)| c.contains(dst)).map_or(EncapsulationMode::Never, |(_, m)| *m)
    }

    /// The kernel route for a route to `dst` learned with next hop `nh`.
    pub fn route(&self, dst: IpNet, nh: IpAddr) -> Target {
        let tunnel = nh.is_ipv4()
            && match self.mode(&dst) {
                EncapsulationMode::Always => true,
                EncapsulationMode::CrossSubnet => !same_subnet(self.local, nh),
                EncapsulationMode::Never => false,
            };
        if tunnel {
            Target::Via { gw: nh, dev: Some(DEVICE.into()), onlink: true }
        } else {
            Target::Via { gw: nh, dev: None, onlink: false }
        }
    }
}

/// The current [`Encap`], shared between the network pass (writer) and the BGP route feed (readers).
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<RwLock<Encap>>);

impl Shared {
    /// Holding the guard while applying routes keeps a concurrent [`Shared::replace`] from slipping
    /// between a mapping and its update.
    pub fn read(&self) -> RwLockReadGuard<'_, Encap> {
        // The data is a plain value; a panicking holder cannot leave it half-written.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `e`; true when it differs from what was there.
    pub fn replace(&self, e: Encap) -> bool {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *g == e {
            return false;
        }
        *g = e;
        true
    }
}

fn errno(e: &KernelError) -> Option<i32> {
    match e {
        KernelError::Netlink(rtnetlink::Error::NetlinkError(m)) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

async fn find(k: &Kernel) -> Result<Option<LinkMessage>, KernelError> {
    match k.handle.link().get().match_name(DEVICE.to_string()).execute().try_collect::<Vec<_>>().await {
        Ok(v) => Ok(v.into_iter().next()),
        Err(e) => {
            let e = KernelError::from(e);
            // ENODEV: no such link.
            if errno(&e) == Some(19) { Ok(None) } else { Err(e) }
        }
    }
}

fn addresses_of(msgs: &[rtnetlink::packet_route::address::AddressMessage]) -> Vec<IpAddr> {
    msgs.iter()
        .filter_map(|a| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })
        .collect()
}

/// Creates `tunl0` when missing (loading the `ipip` module brings it; otherwise it is added), and sets
/// its MTU, state up and `tunnel/32` as its only address.
pub async fn ensure_device(k: &Kernel, tunnel: Ipv4Addr, mtu: u32) -> Result<(), IpipError> {
    let link = match find(k).await? {
        Some(l) => l,
        None => {
            match k.handle.link().add(LinkIpIp::new(DEVICE).build()).execute().await {
                Ok(()) => {}
                Err(e) => {
                    let e = KernelError::from(e);
                    match errno(&e) {
                        Some(EOPNOTSUPP) => return Err(IpipError::NoModule),
                        // EEXIST: the module came up with its fallback device meanwhile.
                        Some(17) => {}
                        _ => return Err(e.into()),
                    }
                }
            }
            find(k).await?.ok_or_else(|| KernelError::Socket(std::io::Error::other("tunl0 vanished after creation")))?
        }
    };
    let idx = link.header.index;
    let cur_mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    if cur_mtu != Some(mtu) {
        k.handle.link().set(rtnetlink::LinkUnspec::new_with_index(idx).mtu(mtu).build()).execute().await?;
    }
    if !link.header.flags.contains(LinkFlags::Up) {
        k.handle.link().set(rtnetlink::LinkUnspec::new_with_index(idx).up().build()).execute().await?;
    }
    let msgs: Vec<_> = k.handle.address().get().set_link_index_filter(idx).execute().try_collect().await?;
    let want = IpAddr::V4(tunnel);
    let have_it = msgs.iter().any(|m| m.header.prefix_len == 32 && addresses_of(std::slice::from_ref(m)) == [want]);
    for m in msgs {
        let theirs = addresses_of(std::slice::from_ref(&m));
        if !(have_it && theirs == [want] && m.header.prefix_len == 32) {
            k.handle.address().del(m).execute().await?;
        }
    }
    if !have_it {
        k.handle.address().add(idx, want, 32).execute().await?;
    }
    Ok(())
}

/// Takes `tunl0` out of service (IPIP switched off, or cleanup) when it is in service (up or holding an
/// address): deletes it when the kernel allows (a device Tabby added), else — the module's fallback
/// device cannot be deleted — removes its addresses and sets it down. Returns whether anything changed.
pub async fn clear_device(k: &Kernel) -> Result<bool, KernelError> {
    let Some(link) = find(k).await? else { return Ok(false) };
    let idx = link.header.index;
    let up = link.header.flags.contains(LinkFlags::Up);
    let msgs: Vec<_> = k.handle.address().get().set_link_index_filter(idx).execute().try_collect().await?;
    if !up && msgs.is_empty() {
        return Ok(false);
    }
    // The kernel answers success to deleting the fallback device but keeps it: check.
    if k.handle.link().del(idx).execute().await.is_ok() && find(k).await?.is_none_or(|l| l.header.index != idx) {
        return Ok(true);
    }
    for m in msgs {
        k.handle.address().del(m).execute().await?;
    }
    if up {
        k.handle.link().set(rtnetlink::LinkUnspec::new_with_index(idx).down().build()).execute().await?;
    }
    Ok(true)
}

/// The IPIP reconciler: `tunl0` with the node's tunnel address (from IPAM) while an IPv4 pool uses IPIP,
/// out of service otherwise. The routes through it are BGP's ([`Encap`], applied by the BGP reconciler).
pub struct Ipip {
    node: String,
    kernel: Kernel,
    alloc: Option<Allocator>,
    /// BGP runs on this node (IPIP routes are learned over BGP).
    bgp: bool,
    /// The problem last reported, to log only its changes.
    problem: Option<String>,
}

/// What IPIP wants this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub on: bool,
    /// tunl0's MTU: the underlay's minus the IPIP overhead.
    pub device_mtu: u32,
}

impl Ipip {
    pub fn new(node: &str, kernel: Kernel, alloc: Option<Allocator>, bgp: bool) -> Ipip {
        Ipip { node: node.to_string(), kernel, alloc, bgp, problem: None }
    }

    /// Brings up tunl0 with this node's tunnel address; returns why IPIP cannot work, if it cannot.
    async fn device(&self, mtu: u32, ann: &mut BTreeMap<String, Option<String>>) -> Option<String> {
        ann.insert(ANNOTATION_ADDR.into(), None);
        if !self.bgp {
            return Some("IPIP routes are learned over BGP, which is disabled on this node (TABBY_BGP)".into());
        }
        let alloc = self.alloc.as_ref()?;
        let t = match tunnel_address(alloc, &wire::ipip_tunnel_handle(&self.node), Purpose::IpipTunnel).await {
            Ok(t) => t,
            Err(why) => return Some(why),
        };
        match ensure_device(&self.kernel, t, mtu).await {
            Ok(()) => {
                ann.insert(ANNOTATION_ADDR.into(), Some(t.to_string()));
                None
            }
            Err(e @ IpipError::NoModule) => Some(e.to_string()),
            Err(e) => Some(format!("setting up tunl0: {e}")),
        }
    }
}

impl Reconciler for Ipip {
    const NAME: &'static str = "ipip";
    type Desired = Want;

    fn desired(&self, facts: &Snapshot, local: &Local) -> Want {
        Want {
            on: enabled(&facts.pools),
            device_mtu: kernel::underlay_mtu(&local.ifaces).saturating_sub(super::IPIP_OVERHEAD),
        }
    }

    async fn apply(&mut self, want: &Want, local: &mut Local) -> Outcome {
        let problem = if want.on {
            self.device(want.device_mtu, &mut local.annotations).await
        } else {
            local.annotations.insert(ANNOTATION_ADDR.into(), None);
            match clear_device(&self.kernel).await {
                Ok(true) => tracing::info!("no IPIP pool: tunl0 taken out of service"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "clearing tunl0"),
            }
            release_tunnel_address(self.alloc.as_ref(), &wire::ipip_tunnel_handle(&self.node)).await;
            None
        };
        if problem != self.problem {
            match &problem {
                Some(p) => tracing::error!(problem = %p, "IPIP pools cannot be served on this node"),
                None if want.on => tracing::info!("IPIP ready: tunl0 is up"),
                None => {}
            }
            self.problem = problem.clone();
        }
        match problem {
            Some(m) => Outcome::failed(Condition::Routes, REASON_UNAVAILABLE, m),
            None => Outcome::default(),
        }
    }

    async fn teardown(&mut self) -> Result<Removed, TeardownError> {
        let cleared = clear_device(&self.kernel).await.map_err(|e| TeardownError::new(Self::NAME, e))?;
        Ok(Removed { tunl0_cleared: cleared, ..Removed::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, ipip: EncapsulationMode, disabled: bool) -> IPPool {
        let mut p: IPPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": "p"},
            "spec": {"cidr": cidr}
        }))
        .unwrap();
        p.spec.ipip_mode = ipip;
        p.spec.disabled = disabled;
        p
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn tunnel(gw: &str) -> Target {
        Target::Via { gw: gw.parse().unwrap(), dev: Some(DEVICE.into()), onlink: true }
    }

    fn direct(gw: &str) -> Target {
        Target::Via { gw: gw.parse().unwrap(), dev: None, onlink: false }
    }

    #[test]
    fn always_tunnels_every_next_hop_of_its_pool() {
        let e = Encap::new(&[pool("10.0.0.0/16", EncapsulationMode::Always, false)], Some(net("192.168.1.1/24")));
        assert_eq!(e.route(net("10.0.1.0/26"), "192.168.1.2".parse().unwrap()), tunnel("192.168.1.2"));
        assert_eq!(e.route(net("10.0.1.7/32"), "192.168.2.3".parse().unwrap()), tunnel("192.168.2.3"));
        // Outside every IPIP pool (another pool, a service CIDR): routed directly.
        assert_eq!(e.route(net("10.96.0.0/12"), "192.168.1.2".parse().unwrap()), direct("192.168.1.2"));
    }

    #[test]
    fn cross_subnet_tunnels_only_outside_the_local_subnet() {
        let e = Encap::new(&[pool("10.0.0.0/16", EncapsulationMode::CrossSubnet, false)], Some(net("192.168.1.1/24")));
        assert_eq!(e.route(net("10.0.1.0/26"), "192.168.1.2".parse().unwrap()), direct("192.168.1.2"));
        assert_eq!(e.route(net("10.0.2.0/26"), "192.168.2.3".parse().unwrap()), tunnel("192.168.2.3"));
        // Without a known local address every next hop counts as remote.
        let e = Encap::new(&[pool("10.0.0.0/16", EncapsulationMode::CrossSubnet, false)], None);
        assert_eq!(e.route(net("10.0.1.0/26"), "192.168.1.2".parse().unwrap()), tunnel("192.168.1.2"));
    }

    #[test]
    fn never_and_ipv6_stay_direct_and_the_most_specific_pool_decides() {
        let e = Encap::new(
            &[
                pool("10.0.0.0/8", EncapsulationMode::Always, false),
                pool("10.1.0.0/16", EncapsulationMode::Never, false),
                pool("fd00::/48", EncapsulationMode::Always, false),
            ],
            Some(net("192.168.1.1/24")),
        );
        assert_eq!(e.route(net("10.1.0.0/26"), "192.168.1.2".parse().unwrap()), direct("192.168.1.2"));
        assert_eq!(e.route(net("10.2.0.0/26"), "192.168.1.2".parse().unwrap()), tunnel("192.168.1.2"));
        assert_eq!(e.route(net("fd00::/122"), "fd01::2".parse().unwrap()), direct("fd01::2"));
        assert_eq!(Encap::new::<IPPool>(&[], None), Encap::default());
        assert_eq!(Encap::default().route(net("10.0.0.0/26"), "1.1.1.1".parse().unwrap()), direct("1.1.1.1"));
    }

    #[test]
    fn enabled_needs_an_ipv4_ipip_pool_and_disabled_pools_still_count() {
        assert!(enabled(&[pool("10.0.0.0/16", EncapsulationMode::CrossSubnet, false)]));
        assert!(!enabled(&[pool("10.0.0.0/16", EncapsulationMode::Never, false)]));
        assert!(!enabled(&[pool("fd00::/48", EncapsulationMode::Always, false)]));
        assert!(enabled(&[pool("10.0.0.0/16", EncapsulationMode::Always, true)]));
        let e = Encap::new(&[pool("10.0.0.0/16", EncapsulationMode::Always, true)], None);
        assert_eq!(e.route(net("10.0.1.0/26"), "192.168.1.2".parse().unwrap()), tunnel("192.168.1.2"));
    }

    #[test]
    fn shared_reports_changes_only() {
        let s = Shared::default();
        let e = Encap::new(&[pool("10.0.0.0/16", EncapsulationMode::Always, false)], None);
        assert!(s.replace(e.clone()));
        assert!(!s.replace(e.clone()));
        assert_eq!(*s.read(), e);
    }

    #[test]
    fn handle_and_names_follow_calico() {
        assert_eq!(tabby_wire::names::ipip_tunnel_handle("node-1"), "ipip-tunnel-addr-node-1");
        assert_eq!(DEVICE, "tunl0");
        assert!(IpipError::NoModule.to_string().contains("no ipip module"));
    }
}
