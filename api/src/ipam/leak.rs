//! What counts as a leaked address: one rule for the agent's garbage collector (which releases leaks)
//! and `kubectl tabby ipam check` (which reports them), so the one reports exactly what the other frees.
//!
//! An allocation for a pod (its `namespace` and `pod` attributes are set) is leaked when
//! - the pod does not exist ([`Leak::PodGone`]), has finished (phase Succeeded or Failed: its sandbox
//!   and with it the address are gone, [`Leak::PodFinished`]), or is a pod of the host's network by that
//!   name, which holds no pool address ([`Leak::PodOnHostNetwork`]);
//! - the pod runs on another node than the allocation's ([`Leak::PodMoved`]: a StatefulSet pod that came
//!   back elsewhere under the same name);
//! - the pod reports an address of the same family inside a Tabby pool, and it is not this one
//!   ([`Leak::PodAddressChanged`]: the pod came back on the same node with a new address). A pod that
//!   reports no address yet, or only addresses outside every pool (Tabby as a secondary network), says
//!   nothing about this one.
//!
//! Any other allocation (a tunnel address, or one without pod attributes) belongs to its node — the
//! `node` attribute, else the block's affinity — and is leaked when that node does not exist
//! ([`Leak::NodeGone`]). With no node known at all, nothing is known to be leaked.
//!
//! The node of a pod allocation is likewise the `node` attribute, else the block's affinity. Both the
//! garbage collector and `ipam check` give every pod and node of the cluster to [`leak`]; the collector
//! additionally waits out a grace period and re-checks against the API before it releases.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use crate::pod::LeanPod;

use ipnet::IpNet;

use super::IPAMBlockSpec;
use super::block::{ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, Allocated, allocated};

/// A pod as the rule sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// `spec.nodeName` (unset while unscheduled).
    pub node: Option<String>,
    /// `status.podIPs` (else `status.podIP`); empty until the kubelet reports them.
    pub ips: Vec<IpAddr>,
    /// Phase Succeeded or Failed.
    pub finished: bool,
    /// On the host's network: it holds no pool address.
    pub host_network: bool,
}

impl PodFacts {
    /// What the rule reads of a pod object.
    pub fn of_pod(pod: &Pod) -> PodFacts {
        PodFacts::of(&LeanPod::from(pod))
    }

    /// What the rule reads of a pod.
    pub fn of(pod: &LeanPod) -> PodFacts {
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> =
            status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
        if ips.is_empty() {
            ips.extend(status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok()));
        }
        PodFacts {
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ips,
            finished: matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")),
            host_network: pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false),
        }
    }
}

/// One allocation, as its block records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    pub ip: IpAddr,
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
    /// The `node` attribute, else the block's owner (`host:<node>` affinity).
    pub node: Option<&'a str>,
}

impl<'a> Holder<'a> {
    /// The holder of an allocated ordinal of a block whose affinity is `affinity`.
    pub fn of(a: &Allocated<'a>, affinity: Option<&'a str>) -> Holder<'a> {
        let owner = affinity.and_then(|x| x.strip_prefix("host:")).filter(|n| !n.is_empty());
        Holder {
            ip: a.ip,
            namespace: a.secondary(ATTR_NAMESPACE),
            pod: a.secondary(ATTR_POD),
            node: a.secondary(ATTR_NODE).filter(|n| !n.is_empty()).or(owner),
        }
    }

    /// The pod the allocation names, if it names one.
    pub fn pod(&self) -> Option<(&'a str, &'a str)> {
        self.namespace.zip(self.pod)
    }
}

/// Why an allocation is leaked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leak {
    PodGone,
    PodFinished,
    PodOnHostNetwork,
    PodMoved { node: String },
    PodAddressChanged { ips: Vec<IpAddr> },
    NodeGone { node: String },
}

impl Leak {
    /// Whether the allocation belongs to a pod (rather than to a node).
    pub fn of_pod(&self) -> bool {
        !matches!(self, Leak::NodeGone { .. })
    }

    /// The reason in words, completing "the address is allocated, but …".
    pub fn describe(&self, h: &Holder) -> String {
        let pod = h.pod().map(|(ns, p)| format!("{ns}/{p}")).unwrap_or_default();
        match self {
            Leak::PodGone => format!("pod {pod} does not exist"),
            Leak::PodFinished => format!("pod {pod} has finished"),
            Leak::PodOnHostNetwork => format!("pod {pod} is on the host's network"),
            Leak::PodMoved { node } => {
                format!("pod {pod} runs on node {node}, not on {}", h.node.unwrap_or("its node"))
            }
            Leak::PodAddressChanged { ips } => {
                let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                format!("pod {pod} has address {} instead", ips.join(","))
            }
            Leak::NodeGone { node } => format!("node {node} does not exist"),
        }
    }
}

/// Whether the allocation `h` is leaked. `pod` is the pod it names (when it names one and that pod
/// exists), `node_exists` tells the cluster's nodes, `pooled` whether an address lies in a Tabby pool.
pub fn leak(
    h: &Holder,
    pod: Option<&PodFacts>,
    node_exists: impl Fn(&str) -> bool,
    pooled: impl Fn(IpAddr) -> bool,
) -> Option<Leak> {
    if h.pod().is_some() {
        let Some(p) = pod else { return Some(Leak::PodGone) };
        if p.finished {
            return Some(Leak::PodFinished);
        }
        if p.host_network {
            return Some(Leak::PodOnHostNetwork);
        }
        if let (Some(theirs), Some(ours)) = (p.node.as_deref(), h.node)
            && theirs != ours
        {
            return Some(Leak::PodMoved { node: theirs.to_string() });
        }
        let same_family: Vec<IpAddr> =
            p.ips.iter().copied().filter(|ip| ip.is_ipv6() == h.ip.is_ipv6() && pooled(*ip)).collect();
        if !same_family.is_empty() && !p.ips.contains(&h.ip) {
            return Some(Leak::PodAddressChanged { ips: p.ips.clone() });
        }
        return None;
    }
    let node = h.node?;
    (!node_exists(node)).then(|| Leak::NodeGone { node: node.to_string() })
}

/// A leaked allocation of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct Found<'a> {
    pub allocation: Allocated<'a>,
    pub holder: Holder<'a>,
    pub leak: Leak,
}

/// Every leaked allocation of the block `cidr` (its `spec`), by [`leak`]: what the garbage collector
/// releases and what `ipam check` reports. `pod(namespace, name)` finds a pod.
pub fn in_block<'a>(
    cidr: &IpNet,
    spec: &'a IPAMBlockSpec,
    pod: impl Fn(&str, &str) -> Option<PodFacts>,
    node_exists: impl Fn(&str) -> bool,
    pooled: impl Fn(IpAddr) -> bool,
) -> Vec<Found<'a>> {
    allocated(cidr, spec)
        .into_iter()
        .filter_map(|a| {
            let holder = Holder::of(&a, spec.affinity.as_deref());
            let facts = holder.pod().and_then(|(ns, name)| pod(ns, name));
            let leak = leak(&holder, facts.as_ref(), &node_exists, &pooled)?;
            Some(Found { allocation: a, holder, leak })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pod_facts_read_node_addresses_and_phase() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
        }))
        .unwrap();
        let f = PodFacts::of_pod(&p);
        assert_eq!((f.node.as_deref(), f.ips.len(), f.finished), (Some("n1"), 2, false));
        let done: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"}, "status": {"phase": "Succeeded", "podIP": "10.0.0.1"},
        }))
        .unwrap();
        let f = PodFacts::of_pod(&done);
        assert_eq!((f.node, f.ips, f.finished, f.host_network), (None, vec![ip("10.0.0.1")], true, false));
    }

    #[test]
    fn the_rule() {
        let pod = |ns, p, node| Holder { ip: ip("10.0.0.1"), namespace: Some(ns), pod: Some(p), node };
        let nodes = |n: &str| n == "n1";
        let pooled = |a: IpAddr| a.to_string().starts_with("10.") || a.to_string().starts_with("fd00");
        let facts = |node: Option<&str>, ips: &[&str], finished| PodFacts {
            node: node.map(str::to_string),
            ips: ips.iter().map(|s| ip(s)).collect(),
            finished,
            host_network: false,
        };
        let h = pod("default", "a", Some("n1"));
        assert_eq!(leak(&h, None, nodes, pooled), Some(Leak::PodGone));
        assert_eq!(leak(&h, Some(&facts(Some("n1"), &[], false)), nodes, pooled), None);
        assert_eq!(leak(&h, Some(&facts(None, &[], false)), nodes, pooled), None, "not scheduled yet");
        assert_eq!(leak(&h, Some(&facts(Some("n1"), &["10.0.0.1"], true)), nodes, pooled), Some(Leak::PodFinished));
        let host = PodFacts { host_network: true, ..facts(Some("n1"), &["192.168.1.1"], false) };
        assert_eq!(leak(&h, Some(&host), nodes, pooled), Some(Leak::PodOnHostNetwork));
        assert_eq!(
            leak(&h, Some(&facts(Some("n2"), &[], false)), nodes, pooled),
            Some(Leak::PodMoved { node: "n2".into() })
        );
        assert_eq!(
            leak(&h, Some(&facts(Some("n1"), &["10.0.0.9"], false)), nodes, pooled),
            Some(Leak::PodAddressChanged { ips: vec![ip("10.0.0.9")] })
        );
        // Dual stack, either order; an address of the other family only says nothing.
        assert_eq!(leak(&h, Some(&facts(Some("n1"), &["fd00::1", "10.0.0.1"], false)), nodes, pooled), None);
        assert_eq!(leak(&h, Some(&facts(Some("n1"), &["fd00::1"], false)), nodes, pooled), None);
        // Addresses outside every pool (Tabby as a secondary network) say nothing either.
        assert_eq!(leak(&h, Some(&facts(Some("n1"), &["192.0.2.7"], false)), nodes, pooled), None);
        // A pod allocation with no node known cannot have moved.
        assert_eq!(leak(&pod("default", "a", None), Some(&facts(Some("n2"), &[], false)), nodes, pooled), None);

        let tunnel = |node| Holder { ip: ip("10.0.0.2"), namespace: None, pod: None, node };
        assert_eq!(leak(&tunnel(Some("n1")), None, nodes, pooled), None);
        assert_eq!(leak(&tunnel(Some("n2")), None, nodes, pooled), Some(Leak::NodeGone { node: "n2".into() }));
        assert_eq!(leak(&tunnel(None), None, nodes, pooled), None, "no node known: not known to be leaked");
        // Only one of namespace and pod: not a pod's allocation.
        let half = Holder { namespace: Some("default"), ..tunnel(Some("n2")) };
        assert_eq!(leak(&half, None, nodes, pooled), Some(Leak::NodeGone { node: "n2".into() }));
    }

    #[test]
    fn the_node_falls_back_to_the_block_owner() {
        use crate::ipam::AllocationAttribute;
        let bare = AllocationAttribute { handle_id: Some("h".into()), secondary: Default::default() };
        let a = Allocated { ordinal: 0, ip: ip("10.0.0.0"), attribute: Some(&bare) };
        assert_eq!(Holder::of(&a, Some("host:n3")).node, Some("n3"));
        assert_eq!(Holder::of(&a, None).node, None);
        let named =
            AllocationAttribute { handle_id: None, secondary: [(ATTR_NODE.to_string(), "n4".to_string())].into() };
        let a = Allocated { attribute: Some(&named), ..a };
        assert_eq!(Holder::of(&a, Some("host:n3")).node, Some("n4"));
    }
}
