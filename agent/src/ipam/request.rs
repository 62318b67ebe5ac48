//! What an allocation asks for, resolved before it is queued (pure): which pools of each family it may
//! draw from (the node's eligible pools, narrowed by the pod's or its namespace's
//! `tabby.dev/ipv4pools` / `ipv6pools` annotations), which fixed addresses it wants (`tabby.dev/ipAddrs`),
//! and the attributes its allocation records.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;
use tabby_api::ipam::block::{ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, ATTR_TYPE};
use tabby_api::ipam::{AllowedUse, EncapsulationMode, IPPool};
use tabby_api::names;
use tabby_api::selector::Selector;

use super::IpamError;

/// What ADD (or the node's tunnel set-up) asks for.
#[derive(Debug, Clone, Default)]
pub struct AllocRequest {
    pub handle: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub purpose: Purpose,
}

/// What an address is for: it decides the pools it may come from and the allocation's `type` attribute
/// (Calico's `ipipTunnelAddress` / `vxlanTunnelAddress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Purpose {
    /// A pod's address, from the pod's eligible workload pools (IPv4 and IPv6).
    #[default]
    Pod,
    /// The node's `vxlan.tabby` address: IPv4, from a pool with `vxlanMode` on and the Tunnel use.
    VxlanTunnel,
    /// The node's `tunl0` address: IPv4, from a pool with `ipipMode` on and the Tunnel use.
    IpipTunnel,
}

impl Purpose {
    fn type_attribute(self) -> &'static str {
        match self {
            Purpose::Pod => "pod",
            Purpose::VxlanTunnel => "vxlanTunnelAddress",
            Purpose::IpipTunnel => "ipipTunnelAddress",
        }
    }
}

/// The pools and fixed addresses an allocation draws from, and the attributes it records.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub v4: Vec<IPPool>,
    pub v6: Vec<IPPool>,
    pub fixed: Vec<IpAddr>,
    pub secondary: BTreeMap<String, String>,
}

/// Enabled pools of a family whose nodeSelector matches a node with `labels` and that `keep` accepts, by
/// name.
pub fn pools_where<P: Borrow<IPPool>>(
    pools: &[P],
    labels: &BTreeMap<String, String>,
    v6: bool,
    keep: impl Fn(&IPPool) -> bool,
) -> Vec<IPPool> {
    let mut out: Vec<IPPool> = pools
        .iter()
        .map(Borrow::borrow)
        .filter(|p: &&IPPool| !p.spec.disabled && keep(p))
        .filter(|p| p.spec.cidr.parse::<IpNet>().is_ok_and(|c| matches!(c, IpNet::V6(_)) == v6))
        .filter(|p| Selector::parse(&p.spec.node_selector).is_ok_and(|s| s.matches(labels)))
        .cloned()
        .collect();
    out.sort_by_key(|p| p.name_any());
    out
}

/// The pools a pod's address of a family may come from: workload use.
pub fn eligible_pools<P: Borrow<IPPool>>(pools: &[P], labels: &BTreeMap<String, String>, v6: bool) -> Vec<IPPool> {
    pools_where(pools, labels, v6, |p| p.spec.allowed_uses.contains(&AllowedUse::Workload))
}

/// The pools a tunnel address may come from: IPv4, tunnel use, the tunnel's encapsulation on.
pub fn tunnel_pools<P: Borrow<IPPool>>(
    pools: &[P],
    labels: &BTreeMap<String, String>,
    purpose: Purpose,
) -> Vec<IPPool> {
    pools_where(pools, labels, false, |p| {
        p.spec.allowed_uses.contains(&AllowedUse::Tunnel)
            && match purpose {
                Purpose::VxlanTunnel => p.spec.vxlan_mode != EncapsulationMode::Never,
                Purpose::IpipTunnel => p.spec.ipip_mode != EncapsulationMode::Never,
                Purpose::Pod => false,
            }
    })
}

/// Resolves `req` of node `node` (whose labels are `labels`) against every pool; `pod` and `namespace`
/// are the annotations of the pod and its namespace (empty when the request names no pod).
pub fn resolve<P: Borrow<IPPool>>(
    req: &AllocRequest,
    node: &str,
    pools: &[P],
    labels: &BTreeMap<String, String>,
    pod: &BTreeMap<String, String>,
    namespace: &BTreeMap<String, String>,
) -> Result<Resolved, IpamError> {
    let mut r = Resolved::default();
    r.secondary.insert(ATTR_NODE.into(), node.to_string());
    r.secondary.insert(ATTR_TYPE.into(), req.purpose.type_attribute().into());
    if req.purpose != Purpose::Pod {
        r.v4 = tunnel_pools(pools, labels, req.purpose);
        return Ok(r);
    }
    (r.v4, r.v6) = (eligible_pools(pools, labels, false), eligible_pools(pools, labels, true));
    let (Some(ns), Some(name)) = (&req.namespace, &req.pod) else { return Ok(r) };
    r.secondary.insert(ATTR_NAMESPACE.into(), ns.clone());
    r.secondary.insert(ATTR_POD.into(), name.clone());
    let list = |key: &str| -> Result<Option<Vec<String>>, IpamError> {
        let Some(v) = pod.get(key).or_else(|| namespace.get(key)) else { return Ok(None) };
        serde_json::from_str::<Vec<String>>(v)
            .map(Some)
            .map_err(|e| IpamError::BadAnnotation(key.into(), format!("{v:?}: {e}")))
    };
    for (key, v6) in [(names::IPV4_POOLS_ANNOTATION, false), (names::IPV6_POOLS_ANNOTATION, true)] {
        let Some(wanted) = list(key)? else { continue };
        let eligible = if v6 { &r.v6 } else { &r.v4 };
        let mut chosen = Vec::new();
        for w in &wanted {
            let pool = pools
                .iter()
                .map(Borrow::borrow)
                .find(|p: &&IPPool| p.name_any() == *w || p.spec.cidr == *w)
                .ok_or_else(|| IpamError::NoPool(format!("annotation {key} names {w:?}, which is not an IP pool")))?;
            if eligible.iter().any(|e| e.name_any() == pool.name_any()) {
                chosen.push(pool.clone());
            }
        }
        if chosen.is_empty() {
            return Err(IpamError::NoPool(format!("annotation {key} names {wanted:?}, none enabled for this node")));
        }
        if v6 {
            r.v6 = chosen;
        } else {
            r.v4 = chosen;
        }
    }
    if let Some(addrs) = list(names::IP_ADDRS_ANNOTATION)? {
        for a in addrs {
            let ip: IpAddr = a
                .parse()
                .map_err(|e| IpamError::BadAnnotation(names::IP_ADDRS_ANNOTATION.into(), format!("{a:?}: {e}")))?;
            r.fixed.push(ip);
        }
    }
    Ok(r)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn pool(name: &str, cidr: &str, extra: serde_json::Value) -> IPPool {
        let mut spec = serde_json::json!({"cidr": cidr});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tabby.dev/v1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec
        }))
        .expect("a valid IPPool")
    }

    fn names_of(v: &[IPPool]) -> Vec<String> {
        v.iter().map(|p| p.name_any()).collect()
    }

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn eligible_pools_follow_family_selector_use_and_state() {
        let pools = vec![
            pool("b", "10.1.0.0/16", serde_json::json!({})),
            pool("a", "10.0.0.0/16", serde_json::json!({"nodeSelector": "zone == 'x'"})),
            pool("off", "10.2.0.0/16", serde_json::json!({"disabled": true})),
            pool("tun", "10.3.0.0/16", serde_json::json!({"allowedUses": ["Tunnel"], "vxlanMode": "Always"})),
            pool("v6", "fd00::/48", serde_json::json!({})),
        ];
        let x = map(&[("zone", "x")]);
        assert_eq!(names_of(&eligible_pools(&pools, &x, false)), vec!["a", "b"]);
        assert_eq!(names_of(&eligible_pools(&pools, &BTreeMap::new(), false)), vec!["b"]);
        assert_eq!(names_of(&eligible_pools(&pools, &x, true)), vec!["v6"]);
        assert_eq!(names_of(&tunnel_pools(&pools, &x, Purpose::VxlanTunnel)), vec!["tun"]);
        assert!(tunnel_pools(&pools, &x, Purpose::IpipTunnel).is_empty());
    }

    #[test]
    fn a_pod_request_is_narrowed_by_annotations() {
        let pools = vec![
            pool("a", "10.0.0.0/16", serde_json::json!({})),
            pool("b", "10.1.0.0/16", serde_json::json!({})),
            pool("v6", "fd00::/48", serde_json::json!({})),
        ];
        let req = AllocRequest {
            handle: "k8s-pod-network.c".into(),
            namespace: Some("web".into()),
            pod: Some("p".into()),
            purpose: Purpose::Pod,
        };
        let none = BTreeMap::new();
        let r = resolve(&req, "n1", &pools, &none, &none, &none).unwrap();
        assert_eq!((names_of(&r.v4), names_of(&r.v6)), (vec!["a".into(), "b".into()], vec!["v6".to_string()]));
        assert_eq!(r.secondary, map(&[("namespace", "web"), ("node", "n1"), ("pod", "p"), ("type", "pod")]));
        // The pod's annotation wins over its namespace's; pools by name or CIDR.
        let ns = map(&[(names::IPV4_POOLS_ANNOTATION, r#"["a"]"#)]);
        let pod = map(&[
            (names::IPV4_POOLS_ANNOTATION, r#"["10.1.0.0/16"]"#),
            (names::IP_ADDRS_ANNOTATION, r#"["10.1.0.9"]"#),
        ]);
        let r = resolve(&req, "n1", &pools, &none, &pod, &ns).unwrap();
        assert_eq!(names_of(&r.v4), vec!["b"]);
        assert_eq!(r.fixed, vec!["10.1.0.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(names_of(&resolve(&req, "n1", &pools, &none, &none, &ns).unwrap().v4), vec!["a"]);
        // Refusals.
        let bad = |k: &str, v: &str| resolve(&req, "n1", &pools, &none, &map(&[(k, v)]), &none).unwrap_err();
        assert!(matches!(bad(names::IPV4_POOLS_ANNOTATION, r#"["nope"]"#), IpamError::NoPool(_)));
        assert!(matches!(bad(names::IPV4_POOLS_ANNOTATION, "a"), IpamError::BadAnnotation(..)));
        assert!(matches!(bad(names::IP_ADDRS_ANNOTATION, r#"["x"]"#), IpamError::BadAnnotation(..)));
        let off = vec![pool("a", "10.0.0.0/16", serde_json::json!({"nodeSelector": "zone == 'y'"}))];
        let r = resolve(&req, "n1", &off, &none, &map(&[(names::IPV4_POOLS_ANNOTATION, r#"["a"]"#)]), &none);
        assert!(matches!(r, Err(IpamError::NoPool(m)) if m.contains("none enabled for this node")));
        // A tunnel address: the tunnel pools, no pod attributes.
        let tunnel = AllocRequest { handle: "vxlan-tunnel-addr-n1".into(), purpose: Purpose::VxlanTunnel, ..req };
        let r = resolve(&tunnel, "n1", &pools, &none, &none, &none).unwrap();
        assert!(r.v4.is_empty() && r.v6.is_empty());
        assert_eq!(r.secondary, map(&[("node", "n1"), ("type", "vxlanTunnelAddress")]));
    }
}
