//! The routes of this node's own pods and blocks: `<pod>/32 dev tby…` for every allocation of the node
//! (the veth named from the allocation's pod, as the plugin names it) and `blackhole <block>` for every
//! block it owns, fed to the route table as its local and blackhole sources; and whether the node
//! forwards what arrives for its pods (reported, never changed: see `crate::forwarding`).

use std::borrow::Borrow;
use std::collections::HashMap;

use futures::TryStreamExt;
use ipnet::IpNet;
use tabby_api::ipam::IPAMBlock;
use tabby_api::ipam::block::{ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, addr_at, attribute_at, handle_at};
use tabby_wire::names as wire;

use super::fib::Fib;
use super::{Diff, RouteTable, Source, Target};
use crate::facts::Snapshot;
use crate::forwarding;
use crate::kernel::{Kernel, link_name};
use crate::reconcile::{Condition, Local, Outcome, Problem, Reconciler, Removed, TeardownError};

/// Desired local routes: every allocation of this node whose pod veth is named from its attributes.
pub fn local_routes<B: Borrow<IPAMBlock>>(me: &str, blocks: &[B]) -> HashMap<IpNet, Target> {
    let mut out = HashMap::new();
    for b in blocks.iter().map(Borrow::borrow).filter(|b: &&IPAMBlock| !b.spec.deleted) {
        let Ok(cidr) = b.spec.cidr.parse::<IpNet>() else { continue };
        for ord in 0..b.spec.allocations.len() {
            let Some(a) = attribute_at(&b.spec, ord) else { continue };
            if a.secondary.get(ATTR_NODE).map(String::as_str) != Some(me) {
                continue;
            }
            let handle = handle_at(&b.spec, ord).unwrap_or("");
            if wire::is_tunnel_handle(handle) {
                continue;
            }
            let (ns, pod) = (a.secondary.get(ATTR_NAMESPACE), a.secondary.get(ATTR_POD));
            let veth = tabby_wire::attachment_veth(
                ns.map(String::as_str),
                pod.map(String::as_str),
                wire::container_of(handle),
            );
            out.insert(IpNet::from(addr_at(&cidr, ord)), Target::Dev(veth));
        }
    }
    out
}

/// Desired blackholes: the blocks this node owns.
pub fn blackholes<B: Borrow<IPAMBlock>>(me: &str, blocks: &[B]) -> HashMap<IpNet, Target> {
    let host = format!("host:{me}");
    blocks
        .iter()
        .map(Borrow::borrow)
        .filter(|b: &&IPAMBlock| !b.spec.deleted && b.spec.affinity.as_deref() == Some(host.as_str()))
        .filter_map(|b| b.spec.cidr.parse::<IpNet>().ok())
        .map(|c| (c, Target::Blackhole))
        .collect()
}

/// What this node's pods and blocks want in the route table, and the forwarding check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub local: HashMap<IpNet, Target>,
    pub blackholes: HashMap<IpNet, Target>,
    /// A node-wide forwarding switch that is off.
    pub forwarding: Option<String>,
}

/// The reconciler of this node's pod routes and blackholes.
pub struct PodRoutes {
    table: RouteTable,
    /// The forwarding problem last reported, to log only its changes.
    forwarding: Option<String>,
}

impl PodRoutes {
    pub fn new(table: RouteTable) -> PodRoutes {
        PodRoutes { table, forwarding: None }
    }
}

impl Reconciler for PodRoutes {
    const NAME: &'static str = "pod-routes";
    type Desired = Want;

    fn desired(&self, facts: &Snapshot, local: &Local) -> Want {
        let v6_pods = facts.pools.iter().any(|p| !p.spec.disabled && p.spec.cidr.contains(':'));
        let (v4, v6) = &local.forwarding;
        Want {
            local: local_routes(&facts.node, &facts.blocks),
            blackholes: blackholes(&facts.node, &facts.blocks),
            forwarding: forwarding::problem(v4.as_deref(), v6.as_deref(), v6_pods),
        }
    }

    async fn apply(&mut self, want: &Want, _: &mut Local) -> Outcome {
        self.table.set(Source::Local, want.local.clone());
        self.table.set(Source::Blackhole, want.blackholes.clone());
        if want.forwarding != self.forwarding {
            match &want.forwarding {
                Some(p) => tracing::error!(problem = %p, "this node does not forward pod traffic"),
                None if self.forwarding.is_some() => tracing::info!("forwarding is on again"),
                None => {}
            }
            self.forwarding = want.forwarding.clone();
        }
        // Reported, not counted as a failed reconcile: the switch is the administrator's.
        let problem = want.forwarding.clone().map(|message| Problem {
            condition: Condition::Routes,
            reason: forwarding::REASON,
            message,
        });
        Outcome { changes: want.local.len() + want.blackholes.len(), error: None, problem }
    }

    /// The pod host veths (`tby…`), then every route with protocol tabby that is left: the table's, which
    /// this reconciler's sources feed with VXLAN's and BGP's.
    async fn teardown(&mut self) -> Result<Removed, TeardownError> {
        let err = |e: &dyn std::fmt::Display| TeardownError::new(Self::NAME, e);
        let k = Kernel::open().map_err(|e| err(&e))?;
        let mut removed = Removed::default();
        let links: Vec<_> = k.handle.link().get().execute().try_collect().await.map_err(|e| err(&e))?;
        for l in &links {
            let Some(name) = link_name(l) else { continue };
            if name.starts_with(wire::VETH_PREFIX) {
                match k.handle.link().del(l.header.index).execute().await {
                    Ok(()) => removed.links.push(name),
                    Err(e) => tracing::warn!(link = %name, error = %e, "deleting link"),
                }
            }
        }
        let names = k.links().await.map_err(|e| err(&e))?;
        let mut fib = Fib::open().map_err(|e| err(&e))?;
        let all = fib.dump(&names).map_err(|e| err(&e))?;
        removed.routes = all.len();
        let failed = fib.apply(&Diff { put: vec![], del: all }, &names);
        if let Some((dst, why)) = failed.first() {
            tracing::warn!(%dst, %why, left = failed.len(), "some routes were not removed");
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use tabby_api::ipam::{AllocationAttribute, IPAMBlockSpec};

    #[test]
    fn local_routes_name_the_pod_veth_and_blackholes_cover_owned_blocks() {
        let mut b = IPAMBlock::new(
            "b",
            IPAMBlockSpec { cidr: "10.0.0.0/30".into(), affinity: Some("host:a".into()), ..Default::default() },
        );
        b.spec.allocations = vec![Some(0), Some(1), Some(2), None];
        let attr = |h: &str, node: &str, pod: Option<(&str, &str)>| {
            let mut s: BTreeMap<String, String> = [(ATTR_NODE.to_string(), node.to_string())].into();
            if let Some((ns, p)) = pod {
                s.insert(ATTR_NAMESPACE.into(), ns.into());
                s.insert(ATTR_POD.into(), p.into());
            }
            AllocationAttribute { handle_id: Some(h.into()), secondary: s }
        };
        b.spec.attributes = vec![
            attr("k8s-pod-network.c1", "a", Some(("default", "web"))),
            attr("k8s-pod-network.c2", "a", None),
            attr("vxlan-tunnel-addr-a", "a", None),
        ];
        b.spec.allocations[3] = Some(3);
        b.spec.attributes.push(attr("ipip-tunnel-addr-a", "a", None));
        let r = local_routes("a", std::slice::from_ref(&b));
        assert_eq!(r.len(), 2);
        assert_eq!(r[&"10.0.0.0/32".parse::<IpNet>().unwrap()], Target::Dev(tabby_wire::veth_name("default", "web")));
        assert_eq!(r[&"10.0.0.1/32".parse::<IpNet>().unwrap()], Target::Dev(tabby_wire::veth_name("", "c2")));
        assert!(local_routes("b", std::slice::from_ref(&b)).is_empty());
        assert_eq!(blackholes("a", std::slice::from_ref(&b)).len(), 1);
        assert!(blackholes("b", &[b]).is_empty());
    }
}
