//! The resource types `get` knows and each one's columns, as calicoctl prints them.

use k8s_openapi::jiff::Timestamp;
use tabby_api::ipam::{EncapsulationMode, block};
use tabby_api::{BGPConfiguration, BGPPeer, BlockAffinity, IPAMBlock, IPPool, NodeStatus, condition};

use crate::error::Error;
use crate::table::{Table, count_with_percent};
use crate::timefmt;
use crate::wep::WorkloadEndpoint;

/// What shows in a cell with no value.
pub const NONE: &str = "<none>";

/// A resource type `get` can list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceType {
    IPPool,
    IPAMBlock,
    BlockAffinity,
    BGPConfiguration,
    BGPPeer,
    NodeStatus,
    WorkloadEndpoint,
    NetworkPolicy,
    GlobalNetworkPolicy,
    Tier,
    GlobalNetworkSet,
}

impl ResourceType {
    /// Every type, in the order help lists them.
    pub const ALL: [ResourceType; 11] = [
        ResourceType::IPPool,
        ResourceType::IPAMBlock,
        ResourceType::BlockAffinity,
        ResourceType::BGPConfiguration,
        ResourceType::BGPPeer,
        ResourceType::NodeStatus,
        ResourceType::WorkloadEndpoint,
        ResourceType::NetworkPolicy,
        ResourceType::GlobalNetworkPolicy,
        ResourceType::Tier,
        ResourceType::GlobalNetworkSet,
    ];

    /// The type a user typed: singular, plural, short name, or kind, in any case.
    pub fn parse(given: &str) -> Result<ResourceType, Error> {
        let lower = given.to_ascii_lowercase();
        let lower = lower.split('.').next().unwrap_or_default(); // `ippools.tabby.dev` works too
        ResourceType::ALL
            .into_iter()
            .find(|t| t.names().contains(&lower))
            .ok_or_else(|| Error::UnknownResource { given: given.to_string() })
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            ResourceType::IPPool => &["ippool", "ippools", "pool", "pools"],
            ResourceType::IPAMBlock => &["ipamblock", "ipamblocks", "block", "blocks"],
            ResourceType::BlockAffinity => &["blockaffinity", "blockaffinities", "affinity", "affinities"],
            ResourceType::BGPConfiguration => &["bgpconfig", "bgpconfigs", "bgpconfiguration", "bgpconfigurations"],
            ResourceType::BGPPeer => &["bgppeer", "bgppeers"],
            ResourceType::NodeStatus => &["nodestatus", "nodestatuses", "caliconodestatus"],
            ResourceType::WorkloadEndpoint => &["workloadendpoint", "workloadendpoints", "wep", "weps"],
            ResourceType::NetworkPolicy => &["networkpolicy", "networkpolicies", "tnp", "netpol", "np"],
            ResourceType::GlobalNetworkPolicy => &["globalnetworkpolicy", "globalnetworkpolicies", "gnp"],
            ResourceType::Tier => &["tier", "tiers"],
            ResourceType::GlobalNetworkSet => &["globalnetworkset", "globalnetworksets", "gns"],
        }
    }

    /// The name used in messages and `get` commands.
    pub fn cli_name(self) -> &'static str {
        self.names()[0]
    }

    /// The Kubernetes kind.
    pub fn kind(self) -> &'static str {
        match self {
            ResourceType::IPPool => "IPPool",
            ResourceType::IPAMBlock => "IPAMBlock",
            ResourceType::BlockAffinity => "BlockAffinity",
            ResourceType::BGPConfiguration => "BGPConfiguration",
            ResourceType::BGPPeer => "BGPPeer",
            ResourceType::NodeStatus => "NodeStatus",
            ResourceType::WorkloadEndpoint => "WorkloadEndpoint",
            ResourceType::NetworkPolicy => "NetworkPolicy",
            ResourceType::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            ResourceType::Tier => "Tier",
            ResourceType::GlobalNetworkSet => "GlobalNetworkSet",
        }
    }
}

fn name_of<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

fn or_none(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or(NONE).to_string()
}

fn mode(m: EncapsulationMode) -> &'static str {
    match m {
        EncapsulationMode::Never => "Never",
        EncapsulationMode::Always => "Always",
        EncapsulationMode::CrossSubnet => "CrossSubnet",
    }
}

/// NAME CIDR SELECTOR; wide: NAME CIDR NAT IPIPMODE VXLANMODE DISABLED DISABLEBGPEXPORT SELECTOR.
pub fn ippools(items: &[IPPool], wide: bool) -> Table {
    let mut t = if wide {
        Table::new(["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"])
    } else {
        Table::new(["NAME", "CIDR", "SELECTOR"])
    };
    for p in items {
        let s = &p.spec;
        if wide {
            t.push([
                name_of(p),
                s.cidr.clone(),
                s.nat_outgoing.to_string(),
                mode(s.ipip_mode).into(),
                mode(s.vxlan_mode).into(),
                s.disabled.to_string(),
                s.disable_bgp_export.to_string(),
                s.node_selector.clone(),
            ]);
        } else {
            t.push([name_of(p), s.cidr.clone(), s.node_selector.clone()]);
        }
    }
    t
}

/// NAME CIDR AFFINITY; wide adds IN-USE FREE DELETED.
pub fn ipamblocks(items: &[IPAMBlock], wide: bool) -> Table {
    let mut t = Table::new(["NAME", "CIDR", "AFFINITY"]);
    if wide {
        t.headers.extend(["IN-USE", "FREE", "DELETED"].map(String::from));
    }
    for b in items {
        let s = &b.spec;
        let mut row = vec![name_of(b), s.cidr.clone(), or_none(s.affinity.as_deref())];
        if wide {
            let used = block::in_use(s) as u128;
            let total = block::parse_cidr(&s.cidr).map_or(s.allocations.len() as u128, |c| block::addresses(&c));
            row.push(count_with_percent(used, total));
            row.push(count_with_percent(total.saturating_sub(used), total));
            row.push(s.deleted.to_string());
        }
        t.rows.push(row);
    }
    t
}

/// NAME NODE CIDR STATE; wide adds DELETED.
pub fn blockaffinities(items: &[BlockAffinity], wide: bool) -> Table {
    let mut t = Table::new(["NAME", "NODE", "CIDR", "STATE"]);
    if wide {
        t.headers.push("DELETED".into());
    }
    for a in items {
        let s = &a.spec;
        let state = serde_json::to_value(s.state).ok().and_then(|v| v.as_str().map(str::to_string));
        let mut row = vec![name_of(a), s.node.clone(), s.cidr.clone(), or_none(state.as_deref())];
        if wide {
            row.push(s.deleted.to_string());
        }
        t.rows.push(row);
    }
    t
}

/// NAME LOGSEVERITY MESHENABLED ASNUMBER; wide adds LISTENPORT.
pub fn bgpconfigs(items: &[BGPConfiguration], wide: bool) -> Table {
    let mut t = Table::new(["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"]);
    if wide {
        t.headers.push("LISTENPORT".into());
    }
    for c in items {
        let s = &c.spec;
        let severity = serde_json::to_value(s.log_severity_screen).ok().and_then(|v| v.as_str().map(str::to_string));
        let mut row = vec![
            name_of(c),
            or_none(severity.as_deref()),
            s.node_to_node_mesh_enabled.to_string(),
            s.as_number.to_string(),
        ];
        if wide {
            row.push(s.listen_port.to_string());
        }
        t.rows.push(row);
    }
    t
}

/// NAME PEERIP NODE ASN; NODE is `(global)` for peers of every node, ASN `(inherited)` for node peers;
/// wide adds NODESELECTOR PEERSELECTOR.
pub fn bgppeers(items: &[BGPPeer], wide: bool) -> Table {
    let mut t = Table::new(["NAME", "PEERIP", "NODE", "ASN"]);
    if wide {
        t.headers.extend(["NODESELECTOR", "PEERSELECTOR"].map(String::from));
    }
    for p in items {
        let s = &p.spec;
        let node = match (&s.node, &s.node_selector) {
            (Some(n), _) => n.clone(),
            (None, Some(sel)) if sel != "all()" => "(selected)".into(),
            _ => "(global)".into(),
        };
        let asn = s.as_number.map(|a| a.to_string()).unwrap_or_else(|| "(inherited)".into());
        let mut row = vec![name_of(p), or_none(s.peer_ip.as_deref()), node, asn];
        if wide {
            row.push(or_none(s.node_selector.as_deref()));
            row.push(or_none(s.peer_selector.as_deref()));
        }
        t.rows.push(row);
    }
    t
}

/// NAME READY ADDRESS PEERS HEARTBEAT (PEERS: established/total); wide adds ADDRESSV6 MTU BLOCKS VERSION.
pub fn nodestatuses(items: &[NodeStatus], wide: bool, now: Timestamp) -> Table {
    let mut t = Table::new(["NAME", "READY", "ADDRESS", "PEERS", "HEARTBEAT"]);
    if wide {
        t.headers.extend(["ADDRESSV6", "MTU", "BLOCKS", "VERSION"].map(String::from));
    }
    for n in items {
        let st = n.status.clone().unwrap_or_default();
        let ready = condition::find(&st.conditions, condition::READY).map(|c| c.status.clone());
        let peers = st.bgp.as_ref().map(|b| {
            let all: Vec<_> = b.peers_v4.iter().chain(&b.peers_v6).collect();
            let up = all.iter().filter(|p| p.state == "Established").count();
            format!("{up}/{}", all.len())
        });
        let heartbeat =
            st.last_heartbeat.as_deref().and_then(timefmt::parse).map(|t| format!("{} ago", timefmt::age(t, now)));
        let mut row = vec![
            name_of(n),
            or_none(ready.as_deref()),
            or_none(st.address_v4.as_deref()),
            peers.unwrap_or_else(|| "0/0".into()),
            heartbeat.unwrap_or_else(|| NONE.into()),
        ];
        if wide {
            row.push(or_none(st.address_v6.as_deref()));
            row.push(st.mtu.map(|m| m.to_string()).unwrap_or_else(|| NONE.into()));
            row.push(if st.blocks.is_empty() { NONE.into() } else { st.blocks.join(",") });
            row.push(or_none(st.agent_version.as_deref()));
        }
        t.rows.push(row);
    }
    t
}

/// WORKLOAD NODE NETWORKS INTERFACE; NAMESPACE first with `-A`; wide adds HANDLE.
pub fn workloadendpoints(items: &[WorkloadEndpoint], all_namespaces: bool, wide: bool) -> Table {
    let mut t = Table::new(["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]);
    if all_namespaces {
        t.headers.insert(0, "NAMESPACE".into());
    }
    if wide {
        t.headers.push("HANDLE".into());
    }
    for w in items {
        let mut row = vec![w.pod.clone(), or_none(w.node.as_deref()), w.networks.join(","), w.interface.clone()];
        if all_namespaces {
            row.insert(0, w.namespace.clone());
        }
        if wide {
            row.push(if w.handles.is_empty() { NONE.into() } else { w.handles.join(",") });
        }
        t.rows.push(row);
    }
    t
}

fn order(o: Option<f64>) -> String {
    o.map_or_else(|| NONE.to_string(), |o| o.to_string())
}

fn types(f: &tabby_api::policy::PolicyFields) -> String {
    use tabby_api::policy::PolicyType;
    // Calico's defaulting when unset: Ingress, plus Egress with egress rules; Egress alone with only those.
    let (i, e) = match f.types.as_deref() {
        Some(t) if !t.is_empty() => (t.contains(&PolicyType::Ingress), t.contains(&PolicyType::Egress)),
        _ => {
            let (i, e) = (!f.ingress.is_empty(), !f.egress.is_empty());
            if e && !i { (false, true) } else { (true, e) }
        }
    };
    match (i, e) {
        (true, true) => "Ingress,Egress".into(),
        (true, false) => "Ingress".into(),
        (false, true) => "Egress".into(),
        _ => NONE.into(),
    }
}

fn valid(c: Option<&tabby_api::policy::PolicyStatus>) -> String {
    c.and_then(|s| condition::find(&s.conditions, tabby_api::policy::CONDITION_VALID))
        .map_or_else(|| NONE.to_string(), |c| c.status.clone())
}

/// A policy's row: [NAMESPACE] NAME TIER ORDER SELECTOR VALID; wide: + [NAMESPACESELECTOR] TYPES INGRESS EGRESS.
fn policy_row(
    ns: Option<&str>,
    name: String,
    f: &tabby_api::policy::PolicyFields,
    status: Option<&tabby_api::policy::PolicyStatus>,
    wide: bool,
    global: bool,
) -> Vec<String> {
    let mut row: Vec<String> = ns.map(str::to_string).into_iter().collect();
    row.extend([
        name,
        f.tier.clone().unwrap_or_else(|| tabby_api::policy::DEFAULT_TIER.into()),
        order(f.order),
        or_none(Some(&f.selector)),
        valid(status),
    ]);
    if wide {
        if global {
            row.push(or_none(Some(&f.namespace_selector)));
        }
        row.extend([types(f), f.ingress.len().to_string(), f.egress.len().to_string()]);
    }
    row
}

/// NAME TIER ORDER SELECTOR VALID (NAMESPACE first with -A); wide adds TYPES INGRESS EGRESS (rule counts).
pub fn networkpolicies(items: &[tabby_api::policy::NetworkPolicy], wide: bool, all_namespaces: bool) -> Table {
    let mut h: Vec<&str> = if all_namespaces { vec!["NAMESPACE"] } else { vec![] };
    h.extend(["NAME", "TIER", "ORDER", "SELECTOR", "VALID"]);
    if wide {
        h.extend(["TYPES", "INGRESS", "EGRESS"]);
    }
    let mut t = Table::new(h);
    for p in items {
        let ns = all_namespaces.then(|| p.metadata.namespace.as_deref().unwrap_or_default());
        t.rows.push(policy_row(ns, name_of(p), &p.spec.fields, p.status.as_ref(), wide, false));
    }
    t
}

/// NAME TIER ORDER SELECTOR VALID; wide adds NAMESPACESELECTOR TYPES INGRESS EGRESS.
pub fn globalnetworkpolicies(items: &[tabby_api::policy::GlobalNetworkPolicy], wide: bool) -> Table {
    let mut t = Table::new(["NAME", "TIER", "ORDER", "SELECTOR", "VALID"]);
    if wide {
        t.headers.extend(["NAMESPACESELECTOR", "TYPES", "INGRESS", "EGRESS"].map(String::from));
    }
    for p in items {
        t.rows.push(policy_row(None, name_of(p), &p.spec.fields, p.status.as_ref(), wide, true));
    }
    t
}

/// NAME ORDER DEFAULTACTION.
pub fn tiers(items: &[tabby_api::policy::Tier], _wide: bool) -> Table {
    let mut t = Table::new(["NAME", "ORDER", "DEFAULTACTION"]);
    for x in items {
        let action = x.spec.default_action.unwrap_or(tabby_api::policy::Action::Deny);
        t.push([name_of(x), order(x.spec.order), format!("{action:?}")]);
    }
    t
}

/// NAME NETS (how many); wide: NAME NETS (every one) LABELS.
pub fn globalnetworksets(items: &[tabby_api::policy::GlobalNetworkSet], wide: bool) -> Table {
    let mut t = if wide { Table::new(["NAME", "NETS", "LABELS"]) } else { Table::new(["NAME", "NETS"]) };
    for x in items {
        if wide {
            let labels: Vec<String> = x.metadata.labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
            t.push([name_of(x), or_none(Some(&x.spec.nets.join(","))), or_none(Some(&labels.join(",")))]);
        } else {
            t.push([name_of(x), x.spec.nets.len().to_string()]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        assert_eq!(ResourceType::parse("ippools").unwrap(), ResourceType::IPPool);
        assert_eq!(ResourceType::parse("IPPool").unwrap(), ResourceType::IPPool);
        assert_eq!(ResourceType::parse("ippools.tabby.dev").unwrap(), ResourceType::IPPool);
        assert_eq!(ResourceType::parse("wep").unwrap(), ResourceType::WorkloadEndpoint);
        assert_eq!(ResourceType::parse("bgpconfig").unwrap(), ResourceType::BGPConfiguration);
        assert!(matches!(ResourceType::parse("pods"), Err(Error::UnknownResource { .. })));
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::parse(t.kind()).ok(), Some(t), "{t:?}");
        }
    }
}
