//! Workload endpoints: Tabby has no such object; they are derived from pods whose address lies in a Tabby
//! pool, and from the IPAM allocations that name them.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use ipnet::IpNet;
use tabby_api::IPAMBlockSpec;
use tabby_api::ipam::block;
use tabby_api::ipam::leak::PodFacts;

/// One pod's attachment to the pod network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpoint {
    pub namespace: String,
    pub pod: String,
    pub node: Option<String>,
    /// `10.244.1.5/32`, `fd00::5/128`.
    pub networks: Vec<String>,
    /// The host-side veth.
    pub interface: String,
    /// IPAM handles of the addresses.
    pub handles: Vec<String>,
}

/// An allocation as the derivation needs it.
struct Held {
    ip: IpAddr,
    handle: Option<String>,
    namespace: Option<String>,
    pod: Option<String>,
    node: Option<String>,
}

/// The endpoints of `pods`: each pod with an address inside a pool (or, while its status has no address yet,
/// an allocation naming it). Host-network pods are not endpoints.
pub fn derive(pods: &[Pod], pools: &[IpNet], blocks: &[IPAMBlockSpec]) -> Vec<WorkloadEndpoint> {
    let held: Vec<Held> = blocks
        .iter()
        .filter_map(|b| block::parse_cidr(&b.cidr).map(|c| (c, b)))
        .flat_map(|(cidr, spec)| {
            block::allocated(&cidr, spec)
                .into_iter()
                .map(|a| Held {
                    ip: a.ip,
                    handle: a.handle().map(str::to_string),
                    namespace: a.secondary("namespace").map(str::to_string),
                    pod: a.secondary("pod").map(str::to_string),
                    node: a.secondary("node").map(str::to_string),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::new();
    for pod in pods {
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.host_network).unwrap_or(false) {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut ips: Vec<IpAddr> = pod_ips(pod).into_iter().filter(|ip| pools.iter().any(|p| p.contains(ip))).collect();
        if pod_ips(pod).is_empty() {
            ips = held
                .iter()
                .filter(|h| h.namespace.as_deref() == Some(&namespace) && h.pod.as_deref() == Some(&name))
                .map(|h| h.ip)
                .collect();
        }
        if ips.is_empty() {
            continue;
        }
        let mine: Vec<&Held> = held.iter().filter(|h| ips.contains(&h.ip)).collect();
        let node = spec.and_then(|s| s.node_name.clone()).or_else(|| mine.iter().find_map(|h| h.node.clone()));
        let mut handles: Vec<String> = mine.iter().filter_map(|h| h.handle.clone()).collect();
        handles.dedup();
        out.push(WorkloadEndpoint {
            interface: tabby_wire::veth_name(&namespace, &name),
            namespace,
            pod: name,
            node,
            networks: ips.into_iter().map(|ip| IpNet::from(ip).to_string()).collect(),
            handles,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    out
}

/// The addresses in a pod's status (`podIPs`, else `podIP`).
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    PodFacts::of_pod(pod).ips
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};
    use tabby_api::ipam::AllocationAttribute;

    use super::*;

    fn pod(ns: &str, name: &str, node: Option<&str>, ip: Option<&str>, host_network: bool) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                host_network: Some(host_network),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                pod_ips: ip.map(|ip| vec![PodIP { ip: ip.into() }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn endpoints_come_from_pods_in_pools_and_their_allocations() {
        let pools = [block::parse_cidr("10.244.0.0/16").unwrap()];
        let block = IPAMBlockSpec {
            cidr: "10.244.1.0/30".into(),
            allocations: vec![Some(0), Some(1), None, None],
            unallocated: vec![2, 3],
            attributes: vec![
                AllocationAttribute {
                    handle_id: Some("h-web".into()),
                    secondary: BTreeMap::from([("namespace".into(), "default".into()), ("pod".into(), "web".into())]),
                },
                AllocationAttribute {
                    handle_id: Some("h-starting".into()),
                    secondary: BTreeMap::from([
                        ("namespace".into(), "default".into()),
                        ("pod".into(), "starting".into()),
                        ("node".into(), "n2".into()),
                    ]),
                },
            ],
            ..Default::default()
        };
        let pods = [
            pod("default", "web", Some("n1"), Some("10.244.1.0"), false),
            pod("default", "starting", None, None, false),
            pod("default", "hostnet", Some("n1"), Some("10.244.1.3"), true),
            pod("default", "elsewhere", Some("n1"), Some("192.0.2.9"), false),
            pod("default", "pending", None, None, false),
        ];
        let weps = derive(&pods, &pools, &[block]);
        assert_eq!(weps.len(), 2, "{weps:?}");
        assert_eq!(weps[0].pod, "starting");
        assert_eq!(weps[0].node.as_deref(), Some("n2"));
        assert_eq!(weps[0].networks, vec!["10.244.1.1/32"]);
        assert_eq!(weps[1].pod, "web");
        assert_eq!(weps[1].node.as_deref(), Some("n1"));
        assert_eq!(weps[1].handles, vec!["h-web"]);
        assert_eq!(weps[1].interface, tabby_wire::veth_name("default", "web"));
    }
}
