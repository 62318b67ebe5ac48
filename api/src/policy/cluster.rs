//! What policy reads of the API, as the model's [`Cluster`] (pure): endpoints from pods (addresses from
//! the IPAM blocks' allocations, which exist from the CNI ADD on, and from `status.podIPs`), namespaces,
//! network sets, nodes, tiers and every kind of policy, normalised. A policy the model refuses is
//! reported and fails closed: its subject keeps it, with one Deny rule per direction.
//!
//! The agent builds it from its caches, `kubectl tabby policy trace` from a list of each kind: the same
//! function, so the trace explains what the agent enforces.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use kube::ResourceExt;

use super::cnp::ClusterNetworkPolicy;
use super::model::{
    self, Cluster, Endpoint, Invalid, Kind, MRule, Match, NamedPort, NetSet, NodeInfo, Policy, TierInfo,
};
use super::{
    Action, GlobalNetworkPolicy, GlobalNetworkSet, NetworkPolicy, NetworkSet, PolicyFields, StagedAction,
    StagedGlobalNetworkPolicy, StagedNetworkPolicy, Tier,
};
use crate::ipam::IPAMBlock;
use crate::ipam::block::{self, ATTR_NAMESPACE, ATTR_NODE, ATTR_POD};
use crate::pod::LeanPod;

/// Node annotations with a node's addresses (`10.0.0.1/24`), published by its agent.
pub const NODE_ADDRESS_ANNOTATIONS: [&str; 2] = ["tabby.dev/IPv4Address", "tabby.dev/IPv6Address"];

/// Whether an IPAM handle holds a tunnel device's address (as `tabby-wire` names them).
fn is_tunnel_handle(h: &str) -> bool {
    h.starts_with("vxlan-tunnel-addr-") || h.starts_with("ipip-tunnel-addr-")
}

/// The container ID of a handle `<network>.<containerID>`.
fn container_of(h: &str) -> &str {
    h.split_once('.').map_or(h, |(_, c)| c)
}

/// Every object policy reads, of each kind.
#[derive(Debug, Clone, Default)]
pub struct Objects<'a> {
    pub pods: Vec<&'a LeanPod>,
    pub namespaces: Vec<&'a Namespace>,
    /// Their labels select pods (`serviceAccounts.selector`, `serviceAccountSelector`).
    pub service_accounts: Vec<&'a ServiceAccount>,
    pub nodes: Vec<&'a Node>,
    pub blocks: Vec<&'a IPAMBlock>,
    pub k8s: Vec<&'a K8sNetworkPolicy>,
    pub namespaced: Vec<&'a NetworkPolicy>,
    pub global: Vec<&'a GlobalNetworkPolicy>,
    pub staged: Vec<&'a StagedNetworkPolicy>,
    pub staged_global: Vec<&'a StagedGlobalNetworkPolicy>,
    pub sets: Vec<&'a NetworkSet>,
    pub global_sets: Vec<&'a GlobalNetworkSet>,
    pub tiers: Vec<&'a Tier>,
    pub cnps: Vec<&'a ClusterNetworkPolicy>,
}

/// A policy object, by kind, namespace and name (to report on it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// The id of the policy this object is.
    pub fn id(self) -> model::PolicyId {
        model::PolicyId { kind: self.kind, namespace: self.namespace, name: self.name }
    }
}

/// The model's view of the cluster, and what could not be read as written.
#[derive(Debug, Clone, Default)]
pub struct Built {
    pub cluster: Cluster,
    /// Policies programmed fail-closed instead of as written, and why.
    pub invalid: Vec<(ObjectRef, Invalid)>,
}

/// Every attachment's addresses and node from the blocks' allocations, by (namespace, pod); an
/// attachment without a pod (a runtime that names none) is ("", container ID), as its veth is named.
fn block_addresses(s: &Objects) -> BTreeMap<(String, String), (Vec<IpAddr>, String)> {
    block_addresses_where(s, |_, _| true)
}

/// [`block_addresses`] of the attachments whose (namespace, pod) `want` picks.
fn block_addresses_where(
    s: &Objects,
    want: impl Fn(&str, &str) -> bool,
) -> BTreeMap<(String, String), (Vec<IpAddr>, String)> {
    let mut out: BTreeMap<(String, String), (Vec<IpAddr>, String)> = BTreeMap::new();
    for b in s.blocks.iter().filter(|b| !b.spec.deleted) {
        let Some(cidr) = block::parse_cidr(&b.spec.cidr) else { continue };
        for a in block::allocated(&cidr, &b.spec) {
            let Some(handle) = a.handle().filter(|h| !is_tunnel_handle(h)) else { continue };
            let (ns, pod) = match (a.secondary(ATTR_NAMESPACE), a.secondary(ATTR_POD)) {
                (Some(ns), Some(pod)) if !ns.is_empty() && !pod.is_empty() => (ns, pod),
                _ => ("", container_of(handle)),
            };
            if !want(ns, pod) {
                continue;
            }
            let e = out.entry((ns.to_string(), pod.to_string())).or_default();
            e.0.push(a.ip);
            e.1 = a.secondary(ATTR_NODE).unwrap_or_default().to_string();
        }
    }
    out
}

/// A pod as an endpoint, with `sa_labels` (its ServiceAccount's labels, when it has one); `None` for
/// host-network pods and finished ones (never endpoints).
pub fn endpoint(p: &LeanPod, from_blocks: Option<&Vec<IpAddr>>, sa_labels: Option<&model::Labels>) -> Option<Endpoint> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = p.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded" || ph == "Failed") {
        return None;
    }
    let mut ips: Vec<IpAddr> = from_blocks.cloned().unwrap_or_default();
    for ip in status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().filter_map(|i| i.ip.parse().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let ports = containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            let protocol = match cp.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => model::TCP,
                "UDP" => model::UDP,
                "SCTP" => model::SCTP,
                _ => return None,
            };
            Some(NamedPort { name: cp.name.clone()?, protocol, port: u16::try_from(cp.container_port).ok()? })
        })
        .collect();
    Some(Endpoint {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        node: spec.node_name.clone().unwrap_or_default(),
        labels: p.label_set(),
        service_account: Some(spec.service_account_name.clone().unwrap_or_else(|| "default".into())),
        sa_labels: sa_labels.cloned().unwrap_or_default(),
        ips,
        ports,
    })
}

/// A policy that fails closed: the same subject, one Deny rule for every direction it has.
fn fail_closed(p: Policy) -> Policy {
    let deny = || {
        vec![MRule {
            action: Action::Deny,
            origin: 0,
            name: Some("invalid".into()),
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            src: Match::default(),
            dst: Match::default(),
        }]
    };
    Policy { ingress: p.ingress.map(|_| deny()), egress: p.egress.map(|_| deny()), ..p }
}

/// A Tabby policy the model refused: its subject alone (rules and types dropped), if that parses.
fn subject_only(kind: Kind, ns: Option<&str>, name: &str, f: &PolicyFields) -> Option<Policy> {
    let bare = PolicyFields {
        tier: f.tier.clone(),
        order: f.order,
        selector: f.selector.clone(),
        namespace_selector: f.namespace_selector.clone(),
        types: Some(match f.types.as_deref() {
            Some(t) if !t.is_empty() => t.to_vec(),
            _ => {
                let mut t = vec![super::PolicyType::Ingress];
                if !f.egress.is_empty() {
                    t.push(super::PolicyType::Egress);
                }
                t
            }
        }),
        ..PolicyFields::default()
    };
    model::from_tabby(kind, ns, name, &bare).ok().map(fail_closed)
}

/// Endpoints kept from one build to the next, by the address of the Pod object they came from: a Pod
/// the caches did not replace, with the same addresses in the blocks and the same ServiceAccount labels,
/// keeps its endpoint instead of being converted again. The caller keeps the Pod objects of the last
/// build alive until the next one is done (the agent holds them to compare passes), so an address is never
/// another object's in between; the cache never reads through an address.
#[derive(Debug, Default)]
pub struct EndpointCache {
    last: HashMap<usize, Cached>,
}

#[derive(Debug)]
struct Cached {
    ips: Option<Vec<IpAddr>>,
    sa: Option<model::Labels>,
    endpoint: Option<Arc<Endpoint>>,
}

/// The labels of ServiceAccount `ns`/`name`, when it has any.
fn sa_labels_of<'a>(s: &Objects<'a>, ns: &str, name: &str) -> Option<&'a model::Labels> {
    s.service_accounts
        .iter()
        .find(|sa| sa.metadata.namespace.as_deref() == Some(ns) && sa.metadata.name.as_deref() == Some(name))
        .and_then(|sa| sa.metadata.labels.as_ref())
        .filter(|l| !l.is_empty())
}

/// Updates `c`, built by [`build_with`] (with `cache`) from objects that differ from `s` only in their
/// pods, for those: `gone` are the Pod objects of the last build that `s` no longer has, `new` the ones it
/// has instead (a relabelled pod is one of each). What a full build would give, at the cost of the
/// changed pods: their endpoints are made, replaced or removed, and the cache follows. Returns the
/// endpoints that changed (before, after), or `None`, having changed nothing, when one of them is an
/// endpoint `local` picks (its program may change: that takes a compile). Endpoints pending in the CNI
/// server are the caller's to keep out of `gone` and `new` (a build merges them into their pods').
pub fn patch_pods(
    c: &mut Cluster,
    s: &Objects,
    gone: &[&LeanPod],
    new: &[&LeanPod],
    cache: &mut EndpointCache,
    local: impl Fn(&Endpoint) -> bool,
) -> Option<Vec<model::EndpointChange>> {
    let key =
        |p: &LeanPod| (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
    let mut keys: Vec<(String, String)> = gone.iter().chain(new).map(|p| key(p)).collect();
    keys.sort();
    keys.dedup();
    let addrs = block_addresses_where(s, |ns, pod| keys.iter().any(|(n, p)| n == ns && p == pod));
    // Where each key's endpoint is now (one pass over the endpoints, comparing names first).
    let mut at: Vec<Option<usize>> = vec![None; keys.len()];
    for (i, e) in c.endpoints.iter().enumerate() {
        if let Some(k) = keys.iter().position(|(ns, name)| *name == e.name && *ns == e.namespace) {
            at[k] = Some(i);
        }
    }
    let mut plan = Vec::with_capacity(keys.len());
    let mut entries = Vec::with_capacity(new.len());
    for (k, (ns, name)) in keys.iter().enumerate() {
        let ips = addrs.get(&(ns.clone(), name.clone()));
        let named = |p: &&&LeanPod| {
            p.metadata.namespace.as_deref().unwrap_or_default() == ns
                && p.metadata.name.as_deref().unwrap_or_default() == name
        };
        let after = match new.iter().find(named) {
            Some(p) => {
                let sa_name = p.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
                let sa = sa_labels_of(s, ns, sa_name);
                let e = endpoint(p, ips.map(|(ips, _)| ips), sa).map(Arc::new);
                let at = std::ptr::from_ref(*p) as usize;
                entries
                    .push((at, Cached { ips: ips.map(|(ips, _)| ips.clone()), sa: sa.cloned(), endpoint: e.clone() }));
                e
            }
            // No Pod object any more: its attachment, while the blocks still hold one (as a build makes it).
            None => ips.map(|(ips, node)| {
                Arc::new(Endpoint {
                    namespace: ns.clone(),
                    name: name.clone(),
                    node: node.clone(),
                    ips: ips.clone(),
                    ..Endpoint::default()
                })
            }),
        };
        let before = at[k].map(|i| c.endpoints[i].clone());
        if before.iter().chain(&after).any(|e| local(e)) {
            return None;
        }
        plan.push((at[k], before, after));
    }
    for p in gone {
        cache.last.remove(&(std::ptr::from_ref(*p) as usize));
    }
    cache.last.extend(entries);
    let mut changes = Vec::new();
    let mut drop = Vec::new();
    for (at, before, after) in plan {
        match (at, &after) {
            (Some(i), Some(e)) => c.endpoints[i] = e.clone(),
            (Some(i), None) => drop.push(i),
            (None, Some(e)) => c.endpoints.push(e.clone()),
            (None, None) => {}
        }
        let same = match (&before, &after) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        };
        if !same {
            changes.push((before, after));
        }
    }
    // Positions do not matter to the model (it is keyed by names), so a removal swaps the last one in.
    drop.sort_unstable();
    for i in drop.into_iter().rev() {
        c.endpoints.swap_remove(i);
    }
    Some(changes)
}

/// Builds the model's cluster from a snapshot, with `pending` endpoints (pods the CNI server is adding
/// right now, before their allocations reach the cache).
pub fn build(s: &Objects, pending: &[Endpoint]) -> Built {
    build_with(s, pending, &mut EndpointCache::default())
}

/// [`build`], reusing the endpoints of Pods that did not change since the last build with `cache`.
pub fn build_with(s: &Objects, pending: &[Endpoint], cache: &mut EndpointCache) -> Built {
    let mut out = Built::default();
    let c = &mut out.cluster;
    let addrs = block_addresses(s);
    // Endpoint position by (namespace, name); pods without an endpoint (host network, finished) as None.
    let mut seen: HashMap<(String, String), Option<usize>> = HashMap::with_capacity(s.pods.len() + pending.len());
    // ServiceAccounts with labels, by (namespace, name).
    let sa_labels: HashMap<(&str, &str), &model::Labels> = s
        .service_accounts
        .iter()
        .filter_map(|sa| {
            let labels = sa.metadata.labels.as_ref().filter(|l| !l.is_empty())?;
            Some(((sa.metadata.namespace.as_deref()?, sa.metadata.name.as_deref()?), labels))
        })
        .collect();
    let mut next: HashMap<usize, Cached> = HashMap::with_capacity(s.pods.len());
    for p in s.pods.iter().copied() {
        let (ns, name) = (p.metadata.namespace.as_deref().unwrap_or_default(), p.metadata.name.as_deref());
        let sa = p.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
        let key = (ns.to_string(), name.unwrap_or_default().to_string());
        let (ips, sa) = (addrs.get(&key).map(|(ips, _)| ips), sa_labels.get(&(ns, sa)).copied());
        let at = std::ptr::from_ref(p) as usize;
        // A hit moves its entry to the next generation as it is: nothing is converted or copied.
        let entry = match cache.last.remove(&at) {
            Some(c) if c.ips.as_ref() == ips && c.sa.as_ref() == sa => c,
            _ => Cached { ips: ips.cloned(), sa: sa.cloned(), endpoint: endpoint(p, ips, sa).map(Arc::new) },
        };
        let e = entry.endpoint.clone();
        next.insert(at, entry);
        let at = e.map(|e| {
            c.endpoints.push(e);
            c.endpoints.len() - 1
        });
        seen.insert(key, at);
    }
    cache.last = next;
    // Attachments with addresses and no Pod object (yet, or at all): endpoints without labels, so their
    // interfaces are known and policies selecting `all()` apply.
    for ((ns, name), (ips, node)) in addrs {
        if let std::collections::hash_map::Entry::Vacant(v) = seen.entry((ns, name)) {
            let (ns, name) = v.key().clone();
            c.endpoints.push(Arc::new(Endpoint { namespace: ns, name, node, ips, ..Endpoint::default() }));
            v.insert(Some(c.endpoints.len() - 1));
        }
    }
    for e in pending {
        match seen.get(&(e.namespace.clone(), e.name.clone())) {
            Some(Some(i)) => {
                let x = Arc::make_mut(&mut c.endpoints[*i]);
                let more: Vec<IpAddr> = e.ips.iter().filter(|ip| !x.ips.contains(ip)).copied().collect();
                x.ips.extend(more);
            }
            Some(None) => {}
            None => {
                let mut e = e.clone();
                let sa = e.service_account.as_deref().unwrap_or("default");
                if let Some(l) = sa_labels.get(&(e.namespace.as_str(), sa)) {
                    e.sa_labels = (*l).clone();
                }
                c.endpoints.push(Arc::new(e));
            }
        }
    }
    c.namespaces = s.namespaces.iter().map(|n| (n.name_any(), n.labels().clone())).collect();
    let nets = |v: &[String]| -> Vec<IpNet> {
        v.iter().filter_map(|n| n.parse::<IpNet>().ok().or_else(|| n.parse::<IpAddr>().ok().map(IpNet::from))).collect()
    };
    for ns in &s.sets {
        c.net_sets.push(NetSet {
            namespace: ns.namespace(),
            name: ns.name_any(),
            labels: ns.labels().clone(),
            nets: nets(&ns.spec.nets),
        });
    }
    for gs in &s.global_sets {
        c.net_sets.push(NetSet {
            namespace: None,
            name: gs.name_any(),
            labels: gs.labels().clone(),
            nets: nets(&gs.spec.nets),
        });
    }
    for n in &s.nodes {
        let mut ips: Vec<IpAddr> = NODE_ADDRESS_ANNOTATIONS
            .iter()
            .filter_map(|k| n.annotations().get(*k))
            .filter_map(|v| v.parse::<IpNet>().map(|n| n.addr()).or_else(|_| v.parse::<IpAddr>()).ok())
            .collect();
        for a in n.status.as_ref().and_then(|st| st.addresses.as_ref()).into_iter().flatten() {
            if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
                && let Ok(ip) = a.address.parse::<IpAddr>()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        c.nodes.push(NodeInfo { name: n.name_any(), labels: n.labels().clone(), ips });
    }
    c.tiers = model::builtin_tiers();
    for t in &s.tiers {
        let default_action = t.spec.default_action.unwrap_or(Action::Deny);
        c.tiers.insert(t.name_any(), TierInfo { order: t.spec.order, default_action });
    }
    for o in s.policy_objects() {
        let Some((r, policy, problem)) = o.convert(&c.tiers) else { continue };
        c.policies.extend(policy);
        out.invalid.extend(problem.map(|e| (r, e)));
    }
    // In one order whatever order the caches hold them in (a patch of the last build keeps it).
    out.invalid.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One policy object of any kind.
#[derive(Debug, Clone, Copy)]
pub enum PolicyObject<'a> {
    Kubernetes(&'a K8sNetworkPolicy),
    Namespaced(&'a NetworkPolicy),
    Global(&'a GlobalNetworkPolicy),
    StagedNamespaced(&'a StagedNetworkPolicy),
    StagedGlobal(&'a StagedGlobalNetworkPolicy),
    Cluster(&'a ClusterNetworkPolicy),
}

/// A policy object as the model reads it: its reference, what is programmed for it (as written, or its
/// subject with one Deny per direction when it cannot be read), and why not as written.
pub type Converted = (ObjectRef, Option<Policy>, Option<Invalid>);

impl PolicyObject<'_> {
    /// Which object it is.
    pub fn oref(&self) -> ObjectRef {
        let (kind, namespace, name) = match self {
            PolicyObject::Kubernetes(p) => (Kind::Kubernetes, p.namespace(), p.name_any()),
            PolicyObject::Namespaced(p) => (Kind::Namespaced, p.namespace(), p.name_any()),
            PolicyObject::Global(p) => (Kind::Global, None, p.name_any()),
            PolicyObject::StagedNamespaced(p) => (Kind::StagedNamespaced, p.namespace(), p.name_any()),
            PolicyObject::StagedGlobal(p) => (Kind::StagedGlobal, None, p.name_any()),
            PolicyObject::Cluster(p) => (Kind::Cluster, None, p.name_any()),
        };
        ObjectRef { kind, namespace, name }
    }

    /// The object in the model, given the tiers that exist; `None` for a staged policy whose
    /// `stagedAction` is Delete (it is not evaluated).
    pub fn convert(&self, tiers: &BTreeMap<String, TierInfo>) -> Option<Converted> {
        let r = self.oref();
        let (ns, name) = (r.namespace.as_deref(), r.name.as_str());
        // Staged policies are never enforced, so one that does not read is only reported.
        let (read, fallback) = match self {
            PolicyObject::Kubernetes(p) => (model::from_kubernetes(p), None),
            PolicyObject::Namespaced(p) => {
                let f = &p.spec.fields;
                (model::from_tabby(Kind::Namespaced, ns, name, f), Some((Kind::Namespaced, f)))
            }
            PolicyObject::Global(p) => {
                let f = &p.spec.fields;
                (model::from_tabby(Kind::Global, None, name, f), Some((Kind::Global, f)))
            }
            PolicyObject::StagedNamespaced(p) if p.spec.staged_action != Some(StagedAction::Delete) => {
                (model::from_tabby(Kind::StagedNamespaced, ns, name, &p.spec.fields), None)
            }
            PolicyObject::StagedGlobal(p) if p.spec.staged_action != Some(StagedAction::Delete) => {
                (model::from_tabby(Kind::StagedGlobal, None, name, &p.spec.fields), None)
            }
            PolicyObject::StagedNamespaced(_) | PolicyObject::StagedGlobal(_) => return None,
            PolicyObject::Cluster(p) => (model::from_cnp(p), None),
        };
        Some(match read {
            Ok(p) => {
                let problem = (!tiers.contains_key(&p.tier)).then(|| Invalid {
                    field: "spec.tier".into(),
                    message: format!("tier {:?} does not exist", p.tier),
                });
                (r, Some(p), problem)
            }
            Err(e) => {
                let policy = fallback.and_then(|(kind, f)| subject_only(kind, ns, name, f));
                (r, policy, Some(e))
            }
        })
    }
}

impl Objects<'_> {
    /// Every policy object, kind by kind.
    pub fn policy_objects(&self) -> impl Iterator<Item = PolicyObject<'_>> {
        let k8s = self.k8s.iter().map(|p| PolicyObject::Kubernetes(p));
        let namespaced = self.namespaced.iter().map(|p| PolicyObject::Namespaced(p));
        let global = self.global.iter().map(|p| PolicyObject::Global(p));
        let staged = self.staged.iter().map(|p| PolicyObject::StagedNamespaced(p));
        let staged_global = self.staged_global.iter().map(|p| PolicyObject::StagedGlobal(p));
        let cnps = self.cnps.iter().map(|p| PolicyObject::Cluster(p));
        k8s.chain(namespaced).chain(global).chain(staged).chain(staged_global).chain(cnps)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> LeanPod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_unchanged_pod_keeps_its_endpoint_between_builds() {
        let mk = |app: &str| {
            pod(json!({"metadata": {"name": "a", "namespace": "x", "labels": {"app": app}},
                "spec": {"nodeName": "n1", "containers": []}, "status": {"podIPs": [{"ip": "10.0.0.1"}]}}))
        };
        let (a, b) = (mk("web"), mk("web"));
        let mut cache = EndpointCache::default();
        let first = build_with(&Objects { pods: vec![&a], ..Objects::default() }, &[], &mut cache);
        let again = build_with(&Objects { pods: vec![&a], ..Objects::default() }, &[], &mut cache);
        assert!(Arc::ptr_eq(&first.cluster.endpoints[0], &again.cluster.endpoints[0]), "the same Pod object: reused");
        // Another object (the cache replaced it) is converted again, whatever its content.
        let other = build_with(&Objects { pods: vec![&b], ..Objects::default() }, &[], &mut cache);
        assert!(!Arc::ptr_eq(&again.cluster.endpoints[0], &other.cluster.endpoints[0]));
        assert_eq!(*again.cluster.endpoints[0], *other.cluster.endpoints[0]);
        // Its ServiceAccount's labels changed: converted again.
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default", "namespace": "x", "labels": {"t": "1"}}}))
                .unwrap();
        let with_sa =
            build_with(&Objects { pods: vec![&b], service_accounts: vec![&sa], ..Objects::default() }, &[], &mut cache);
        assert_eq!(with_sa.cluster.endpoints[0].sa_labels.get("t").map(String::as_str), Some("1"));
    }

    #[test]
    fn pods_become_endpoints_and_bad_policies_fail_closed() {
        let pods = [
            pod(json!({"metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "serviceAccountName": "web",
                         "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080},
                                                                 {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}})),
            pod(
                json!({"metadata": {"name": "h", "namespace": "x"}, "spec": {"nodeName": "n1", "hostNetwork": true, "containers": []},
                "status": {"podIPs": [{"ip": "192.168.1.1"}]}}),
            ),
            pod(json!({"metadata": {"name": "done", "namespace": "x"}, "spec": {"nodeName": "n1", "containers": []},
                "status": {"phase": "Succeeded"}})),
        ];
        let typo: NetworkPolicy = serde_json::from_value(json!({"apiVersion": "tabby.dev/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "typo", "namespace": "x"},
            "spec": {"selector": "app == 'web'", "ingress": [{"action": "Allow", "source": {"selector": "role = 'x'"}}]}}))
        .unwrap();
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "x", "labels": {"team": "front"}}}))
                .unwrap();
        let s = Objects {
            pods: pods.iter().collect(),
            namespaced: vec![&typo],
            service_accounts: vec![&sa],
            ..Objects::default()
        };
        let pending = Endpoint { namespace: "x".into(), name: "new".into(), node: "n1".into(), ..Endpoint::default() };
        let b = build(&s, &[pending]);
        let keys: Vec<String> = b.cluster.endpoints.iter().map(|e| e.key()).collect();
        assert_eq!(keys, vec!["x/a", "x/new"], "host-network and finished pods are no endpoints");
        let a = &b.cluster.endpoints[0];
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.service_account.as_deref(), Some("web"));
        assert_eq!(a.sa_labels.get("team").map(String::as_str), Some("front"), "its ServiceAccount's labels");
        assert!(b.cluster.endpoints[1].sa_labels.is_empty(), "x/new runs as x/default, which has none");
        assert_eq!(a.ports[1], NamedPort { name: "dns".into(), protocol: model::UDP, port: 53 });
        assert_eq!(b.invalid.len(), 1);
        assert_eq!(b.invalid[0].1.field, "spec.ingress[0].source.selector");
        let p = &b.cluster.policies[0];
        assert_eq!(p.ingress.as_ref().map(|r| r[0].action), Some(Action::Deny), "fails closed");
        assert!(p.egress.is_none());
    }
}
