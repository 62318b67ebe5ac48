//! The policy model: every kind of policy (Kubernetes NetworkPolicy, Tabby NetworkPolicy and
//! GlobalNetworkPolicy and their staged twins, ClusterNetworkPolicy) normalised to one [`Policy`], and
//! [`compile`]d against the cluster's endpoints into a [`Ruleset`]: per endpoint and direction the
//! ordered tiers and policies that apply to it, each policy's rules once (shared by every endpoint it
//! applies to), and the members of every set the rules name (selector memberships, named ports, node
//! addresses). Pure: the agent renders a `Ruleset` to nftables, and [`Ruleset::decide`] interprets it
//! for `kubectl tabby policy trace` and the tests, so both read the same compiled rules.
//!
//! Semantics (Calico's, which Kubernetes NetworkPolicy and ClusterNetworkPolicy map onto):
//! - tiers by order (unset last, ties by name); in a tier, policies by order (unset last), ties by id;
//! - a policy applies to an endpoint when its subject selects it and it has that direction;
//! - rules in order: Allow and Deny decide, Pass leaves the tier, Log notes and goes on;
//! - at the end of a tier whose enforced policies apply to the endpoint, the tier's default action
//!   (Deny, or Pass to the next tier); a tier where only staged policies apply passes ("would drop");
//! - an endpoint no tier decided is allowed (no policy, or every tier passed);
//! - Kubernetes NetworkPolicy sits in tier `default` at order 1000; ClusterNetworkPolicy Admin in
//!   `kube-admin` (order 1000) and Baseline in `kube-baseline` (order 10,000,000), both passing by
//!   default, so Admin → NetworkPolicy → Baseline → allow.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1 as k8s;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cnp::{self, ClusterNetworkPolicy, CnpAction, CnpTier};
use super::index::{Index, Postings};
use super::{
    ADMIN_TIER, ADMIN_TIER_ORDER, Action, BASELINE_TIER, BASELINE_TIER_ORDER, DEFAULT_TIER, DEFAULT_TIER_ORDER,
    EntityRule, K8S_POLICY_ORDER, PolicyFields, PolicyRule, PolicyType,
};
use crate::pod::LabelSet;
use crate::selector::{LabelSource, Selector};

pub type Labels = BTreeMap<String, String>;

/// The implicit label every endpoint carries: its namespace (Calico's key).
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// The implicit label: the orchestrator (`k8s`).
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// The implicit label: the pod's service account.
pub const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// The prefix under which an endpoint carries its ServiceAccount's labels (Calico's): a
/// `serviceAccounts.selector` `k == 'v'` reads `pcsa.k == 'v'`.
pub const SA_LABEL_PREFIX: &str = "pcsa.";
/// The implicit namespace label: its name (Calico's key).
pub const LABEL_NAMESPACE_NAME: &str = "projectcalico.org/name";

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// A protocol by Calico's or Kubernetes' name, or number.
pub fn protocol_number(p: &IntOrString) -> Option<u8> {
    match p {
        IntOrString::Int(n) => u8::try_from(*n).ok().filter(|n| *n > 0),
        IntOrString::String(s) => match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(TCP),
            "UDP" => Some(UDP),
            "SCTP" => Some(SCTP),
            "ICMP" => Some(ICMP),
            "ICMPV6" => Some(ICMPV6),
            "UDPLITE" => Some(136),
            n => n.parse().ok().filter(|n| *n > 0),
        },
    }
}

/// A container port with a name (what named ports resolve to).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: u8,
    pub port: u16,
}

impl NamedPort {
    /// Whether it is the port `name` (of `protocol`, or of any when `None`).
    pub fn is(&self, name: &str, protocol: Option<u8>) -> bool {
        self.name == name && protocol.is_none_or(|p| p == self.protocol)
    }
}

/// A pod as policy sees it. Host-network pods are never endpoints (the caller leaves them out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// Shared with the pod it came from.
    pub labels: LabelSet,
    pub service_account: Option<String>,
    /// The labels of its ServiceAccount (read as `pcsa.<key>`).
    pub sa_labels: Labels,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
}

impl Endpoint {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its labels with the implicit ones (namespace, orchestrator, service account and its labels).
    pub fn selector_labels(&self) -> Labels {
        let mut l: Labels = self
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with(SA_LABEL_PREFIX))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.extend(self.sa_labels.iter().map(|(k, v)| (format!("{SA_LABEL_PREFIX}{k}"), v.clone())));
        l.insert(LABEL_NAMESPACE.into(), self.namespace.clone());
        l.insert(LABEL_ORCHESTRATOR.into(), "k8s".into());
        if let Some(sa) = &self.service_account {
            l.insert(LABEL_SERVICE_ACCOUNT.into(), sa.clone());
        }
        l
    }
}

/// An endpoint's labels as selectors read them: its own, with the implicit ones (namespace,
/// orchestrator, service account) taking precedence, without copying the map.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLabels<'a>(pub &'a Endpoint);

impl LabelSource for EndpointLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        let e = self.0;
        match key {
            LABEL_NAMESPACE => Some(&e.namespace),
            LABEL_ORCHESTRATOR => Some("k8s"),
            LABEL_SERVICE_ACCOUNT if e.service_account.is_some() => e.service_account.as_deref(),
            _ => match key.strip_prefix(SA_LABEL_PREFIX) {
                Some(k) => e.sa_labels.get(k).map(String::as_str),
                None => e.labels.get(key),
            },
        }
    }
}

/// A namespace's labels as selectors read them: its own with the implicit name labels.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceLabels<'a> {
    pub name: &'a str,
    pub labels: Option<&'a Labels>,
}

impl LabelSource for NamespaceLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        let own = || self.labels.and_then(|l| l.get(key)).map(String::as_str);
        match key {
            LABEL_NAMESPACE_NAME => Some(self.name),
            "kubernetes.io/metadata.name" => own().or(Some(self.name)),
            _ => own(),
        }
    }
}

/// A NetworkSet (`namespace` set) or GlobalNetworkSet (`namespace` None).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSet {
    pub namespace: Option<String>,
    pub name: String,
    pub labels: Labels,
    pub nets: Vec<IpNet>,
}

/// A node as ClusterNetworkPolicy `nodes` peers see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
}

/// A tier's order and default action.
#[derive(Debug, Clone, PartialEq)]
pub struct TierInfo {
    pub order: Option<f64>,
    /// Deny or Pass.
    pub default_action: Action,
}

/// The tiers that exist without a Tier object.
pub fn builtin_tiers() -> BTreeMap<String, TierInfo> {
    [
        (ADMIN_TIER, ADMIN_TIER_ORDER, Action::Pass),
        (DEFAULT_TIER, DEFAULT_TIER_ORDER, Action::Deny),
        (BASELINE_TIER, BASELINE_TIER_ORDER, Action::Pass),
    ]
    .into_iter()
    .map(|(n, o, a)| (n.to_string(), TierInfo { order: Some(o), default_action: a }))
    .collect()
}

/// What kind of object a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// networking.k8s.io/v1 NetworkPolicy.
    Kubernetes,
    /// tabby.dev/v1 NetworkPolicy.
    Namespaced,
    Global,
    StagedNamespaced,
    StagedGlobal,
    /// policy.networking.k8s.io ClusterNetworkPolicy.
    Cluster,
}

impl Kind {
    /// Short names, as in counters and traces.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Kubernetes => "knp",
            Kind::Namespaced => "np",
            Kind::Global => "gnp",
            Kind::StagedNamespaced => "snp",
            Kind::StagedGlobal => "sgnp",
            Kind::Cluster => "cnp",
        }
    }

    pub fn staged(self) -> bool {
        matches!(self, Kind::StagedNamespaced | Kind::StagedGlobal)
    }
}

/// Which policy: kind, namespace (namespaced kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyId {
    /// `knp:ns/name`, `gnp:name`, …
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}:{ns}/{}", self.kind.short(), self.name),
            None => write!(f, "{}:{}", self.kind.short(), self.name),
        }
    }
}

/// Direction of traffic relative to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

/// Which namespaces a peer selector reaches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NsScope {
    /// The policy's own namespace.
    Same(String),
    /// Namespaces (and, with `global()`, global network sets) this selects.
    Select(Selector),
    /// Everything: endpoints of every namespace and every network set (global policy, no namespaceSelector).
    Any,
}

/// Pods (and network sets) by label, in a namespace scope, optionally by service account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerSel {
    pub selector: Selector,
    pub scope: NsScope,
    /// Service account names (empty: any).
    pub sa_names: Vec<String>,
}

/// One side of a packet to match (source or destination). Every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Match {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    pub sel: Option<PeerSel>,
    pub not_sel: Option<PeerSel>,
    /// Nodes by label (ClusterNetworkPolicy `nodes`): their addresses.
    pub nodes: Option<Selector>,
    /// Numeric port ranges (inclusive); empty: any.
    pub ports: Vec<(u16, u16)>,
    pub not_ports: Vec<(u16, u16)>,
    /// A named port (resolved per endpoint to address, protocol, port).
    pub named: Option<String>,
    pub not_named: Vec<String>,
    /// Matches nothing (a rule that fails closed as Accept).
    pub never: bool,
}

/// A rule in the model: one alternative (a user rule with several peers or port kinds becomes several).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MRule {
    pub action: Action,
    /// The index of the user's rule it came from (counters and traces name it).
    pub origin: usize,
    /// The user's rule name (ClusterNetworkPolicy).
    pub name: Option<String>,
    pub ip_version: Option<u8>,
    pub protocol: Option<u8>,
    pub not_protocol: Option<u8>,
    pub icmp: Option<(u8, Option<u8>)>,
    pub not_icmp: Option<(u8, Option<u8>)>,
    pub src: Match,
    pub dst: Match,
}

/// Which endpoints a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    /// Namespaced policies: only this namespace.
    pub namespace: Option<String>,
    pub selector: Selector,
    pub namespace_selector: Selector,
    /// Service account names (empty: any).
    pub sa_names: Vec<String>,
}

/// A policy of any kind, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub id: PolicyId,
    pub tier: String,
    pub order: Option<f64>,
    pub subject: Subject,
    /// `None`: does not apply to ingress.
    pub ingress: Option<Vec<MRule>>,
    pub egress: Option<Vec<MRule>>,
}

impl Policy {
    pub fn staged(&self) -> bool {
        self.id.kind.staged()
    }

    pub fn rules(&self, d: Dir) -> Option<&Vec<MRule>> {
        match d {
            Dir::Ingress => self.ingress.as_ref(),
            Dir::Egress => self.egress.as_ref(),
        }
    }
}

/// Why a policy (or a part of it) cannot be programmed as written: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl fmt::Display) -> Invalid {
    Invalid { field: field.into(), message: message.to_string() }
}

fn parse_sel(field: &str, s: &str) -> Result<Selector, Invalid> {
    Selector::parse(s).map_err(|e| invalid(field, e.reason))
}

fn parse_net(field: &str, s: &str) -> Result<IpNet, Invalid> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| invalid(field, format!("{s:?} is not a CIDR or an address")))
}

fn parse_nets(field: &str, v: &[String]) -> Result<Vec<IpNet>, Invalid> {
    v.iter().enumerate().map(|(i, s)| parse_net(&format!("{field}[{i}]"), s)).collect()
}

/// A protocol with port ranges or one named port: one alternative of a rule's ports.
type ProtoPorts = (Option<u8>, Vec<(u16, u16)>, Option<String>);
/// A Kubernetes rule's peers and ports.
type K8sRule = (Option<Vec<k8s::NetworkPolicyPeer>>, Option<Vec<k8s::NetworkPolicyPort>>);

/// A port entry: a number, `from:to`, or a name.
enum PortSpec {
    Range(u16, u16),
    Named(String),
}

fn parse_port(field: &str, p: &IntOrString) -> Result<PortSpec, Invalid> {
    let num = |s: &str| s.parse::<u16>().map_err(|_| invalid(field, format!("{s:?} is not a port")));
    match p {
        IntOrString::Int(n) => {
            let n = u16::try_from(*n).map_err(|_| invalid(field, format!("{n} is not a port")))?;
            Ok(PortSpec::Range(n, n))
        }
        IntOrString::String(s) if s.chars().next().is_some_and(|c| c.is_ascii_digit()) => match s.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(invalid(field, format!("range {s:?} ends before it starts")));
                }
                Ok(PortSpec::Range(a, b))
            }
            None => num(s).map(|n| PortSpec::Range(n, n)),
        },
        IntOrString::String(s) => Ok(PortSpec::Named(s.clone())),
    }
}

/// Splits a rule over its port list: numeric ports in one alternative, each named port in its own.
fn port_alternatives(field: &str, ports: &[IntOrString]) -> Result<Vec<PortAlt>, Invalid> {
    if ports.is_empty() {
        return Ok(vec![(vec![], None)]);
    }
    let mut ranges = Vec::new();
    let mut out = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        match parse_port(&format!("{field}[{i}]"), p)? {
            PortSpec::Range(a, b) => ranges.push((a, b)),
            PortSpec::Named(n) => out.push((vec![], Some(n))),
        }
    }
    if !ranges.is_empty() {
        out.insert(0, (ranges, None));
    }
    Ok(out)
}

/// The directions of a Tabby policy (Calico's defaulting when `types` is unset or empty).
fn tabby_types(f: &PolicyFields) -> (bool, bool) {
    match f.types.as_deref() {
        Some(t) if !t.is_empty() => (t.contains(&PolicyType::Ingress), t.contains(&PolicyType::Egress)),
        _ => {
            let (i, e) = (!f.ingress.is_empty(), !f.egress.is_empty());
            if e && !i { (false, true) } else { (true, e) }
        }
    }
}

/// One alternative of a side's ports: numeric ranges, or one named port.
type PortAlt = (Vec<(u16, u16)>, Option<String>);

fn entity(field: &str, e: &EntityRule, ns: Option<&str>) -> Result<(Match, Vec<PortAlt>), Invalid> {
    let scope = if e.namespace_selector.is_empty() {
        match ns {
            Some(ns) => NsScope::Same(ns.to_string()),
            None => NsScope::Any,
        }
    } else {
        NsScope::Select(parse_sel(&format!("{field}.namespaceSelector"), &e.namespace_selector)?)
    };
    let sa = e.service_accounts.as_ref();
    // The ServiceAccounts' labels, as their pods carry them.
    let sa_sel = match sa.filter(|s| !s.selector.is_empty()) {
        Some(s) => parse_sel(&format!("{field}.serviceAccounts.selector"), &s.selector)?.prefixed(SA_LABEL_PREFIX),
        None => Selector::All,
    };
    let sel = if !e.selector.is_empty() || !e.namespace_selector.is_empty() || sa.is_some() {
        Some(PeerSel {
            selector: Selector::and(parse_sel(&format!("{field}.selector"), &e.selector)?, sa_sel),
            scope: scope.clone(),
            sa_names: sa.map(|s| s.names.clone()).unwrap_or_default(),
        })
    } else {
        None
    };
    let not_sel = if e.not_selector.is_empty() {
        None
    } else {
        Some(PeerSel {
            selector: parse_sel(&format!("{field}.notSelector"), &e.not_selector)?,
            scope,
            sa_names: vec![],
        })
    };
    let mut not_ports = Vec::new();
    let mut not_named = Vec::new();
    for (i, p) in e.not_ports.iter().enumerate() {
        match parse_port(&format!("{field}.notPorts[{i}]"), p)? {
            PortSpec::Range(a, b) => not_ports.push((a, b)),
            PortSpec::Named(n) => not_named.push(n),
        }
    }
    let base = Match {
        nets: parse_nets(&format!("{field}.nets"), &e.nets)?,
        not_nets: parse_nets(&format!("{field}.notNets"), &e.not_nets)?,
        sel,
        not_sel,
        not_ports,
        not_named,
        ..Match::default()
    };
    Ok((base, port_alternatives(&format!("{field}.ports"), &e.ports)?))
}

fn apply_alt(m: &mut Match, (ranges, named): &PortAlt) {
    m.ports = ranges.clone();
    m.named = named.clone();
}

fn tabby_rule(field: &str, origin: usize, r: &PolicyRule, ns: Option<&str>) -> Result<Vec<MRule>, Invalid> {
    let proto = |f: &str, p: &Option<IntOrString>| {
        p.as_ref()
            .map(|p| {
                protocol_number(p).ok_or_else(|| invalid(format!("{field}.{f}"), format!("unknown protocol {p:?}")))
            })
            .transpose()
    };
    let protocol = proto("protocol", &r.protocol)?;
    let not_protocol = proto("notProtocol", &r.not_protocol)?;
    let (src, src_alts) = entity(&format!("{field}.source"), &r.source, ns)?;
    let (dst, dst_alts) = entity(&format!("{field}.destination"), &r.destination, ns)?;
    let has_ports = |e: &EntityRule| !e.ports.is_empty() || !e.not_ports.is_empty();
    if (has_ports(&r.source) || has_ports(&r.destination)) && !matches!(protocol, Some(TCP | UDP | SCTP)) {
        return Err(invalid(format!("{field}.protocol"), "ports need protocol TCP, UDP or SCTP"));
    }
    let icmp = |f: &Option<super::IcmpFields>| f.as_ref().and_then(|i| i.type_.map(|t| (t, i.code)));
    let mut out = Vec::new();
    for sa in &src_alts {
        for da in &dst_alts {
            let (mut s, mut d) = (src.clone(), dst.clone());
            apply_alt(&mut s, sa);
            apply_alt(&mut d, da);
            out.push(MRule {
                action: r.action,
                origin,
                name: None,
                ip_version: r.ip_version,
                protocol,
                not_protocol,
                icmp: icmp(&r.icmp),
                not_icmp: icmp(&r.not_icmp),
                src: s,
                dst: d,
            });
        }
    }
    Ok(out)
}

/// A Tabby policy (namespaced when `namespace` is set) of `kind`.
pub fn from_tabby(kind: Kind, namespace: Option<&str>, name: &str, f: &PolicyFields) -> Result<Policy, Invalid> {
    let (ing, eg) = tabby_types(f);
    let rules = |dir: &str, v: &[PolicyRule]| -> Result<Vec<MRule>, Invalid> {
        let mut out = Vec::new();
        for (i, r) in v.iter().enumerate() {
            out.extend(tabby_rule(&format!("spec.{dir}[{i}]"), i, r, namespace)?);
        }
        Ok(out)
    };
    let sa_sel = if f.service_account_selector.is_empty() {
        Selector::All
    } else {
        parse_sel("spec.serviceAccountSelector", &f.service_account_selector)?.prefixed(SA_LABEL_PREFIX)
    };
    Ok(Policy {
        id: PolicyId { kind, namespace: namespace.map(str::to_string), name: name.to_string() },
        tier: f.tier.clone().unwrap_or_else(|| DEFAULT_TIER.to_string()),
        order: f.order,
        subject: Subject {
            namespace: namespace.map(str::to_string),
            selector: Selector::and(parse_sel("spec.selector", &f.selector)?, sa_sel),
            namespace_selector: if namespace.is_some() {
                Selector::All
            } else {
                parse_sel("spec.namespaceSelector", &f.namespace_selector)?
            },
            sa_names: vec![],
        },
        ingress: if ing { Some(rules("ingress", &f.ingress)?) } else { None },
        egress: if eg { Some(rules("egress", &f.egress)?) } else { None },
    })
}

fn label_sel(
    field: &str,
    ls: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<Selector, Invalid> {
    Selector::from_label_selector(ls).map_err(|e| invalid(field, e.reason))
}

/// A Kubernetes NetworkPolicy: tier `default`, order 1000, every rule Allow.
pub fn from_kubernetes(np: &k8s::NetworkPolicy) -> Result<Policy, Invalid> {
    let ns = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let spec = np.spec.clone().unwrap_or_default();
    let types = spec.policy_types.clone().unwrap_or_default();
    let egress_rules = spec.egress.clone().unwrap_or_default();
    // The API server's defaulting, for a list it did not fill (an empty one included).
    let (ing, eg) = if types.is_empty() {
        (true, !egress_rules.is_empty())
    } else {
        (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress"))
    };
    let own_ns = ns.clone();
    let peer = |field: &str, p: &k8s::NetworkPolicyPeer| -> Result<Match, Invalid> {
        if let Some(b) = &p.ip_block {
            return Ok(Match {
                nets: vec![parse_net(&format!("{field}.ipBlock.cidr"), &b.cidr)?],
                not_nets: parse_nets(&format!("{field}.ipBlock.except"), b.except.as_deref().unwrap_or_default())?,
                ..Match::default()
            });
        }
        let pods = match &p.pod_selector {
            Some(ls) => label_sel(&format!("{field}.podSelector"), ls)?,
            None => Selector::All,
        };
        let scope = match &p.namespace_selector {
            Some(ls) => NsScope::Select(label_sel(&format!("{field}.namespaceSelector"), ls)?),
            None => NsScope::Same(own_ns.clone()),
        };
        Ok(Match { sel: Some(PeerSel { selector: pods, scope, sa_names: vec![] }), ..Match::default() })
    };
    let rules = |dir: &str, list: Vec<K8sRule>| -> Result<Vec<MRule>, Invalid> {
        let mut out = Vec::new();
        for (i, (peers, ports)) in list.into_iter().enumerate() {
            let field = format!("spec.{dir}[{i}]");
            let peers: Vec<Match> = match peers.filter(|p| !p.is_empty()) {
                None => vec![Match::default()],
                Some(ps) => ps
                    .iter()
                    .enumerate()
                    .map(|(j, p)| peer(&format!("{field}.{}[{j}]", if dir == "ingress" { "from" } else { "to" }), p))
                    .collect::<Result<_, _>>()?,
            };
            // Each port entry: (protocol, ranges, name); none: every protocol and port.
            let mut alts: Vec<ProtoPorts> = Vec::new();
            for (j, p) in ports.unwrap_or_default().iter().enumerate() {
                let pf = format!("{field}.ports[{j}]");
                let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => TCP,
                    "UDP" => UDP,
                    "SCTP" => SCTP,
                    other => return Err(invalid(format!("{pf}.protocol"), format!("unknown protocol {other:?}"))),
                };
                match p.port.as_ref().map(|x| parse_port(&format!("{pf}.port"), x)).transpose()? {
                    None => alts.push((Some(proto), vec![], None)),
                    Some(PortSpec::Named(n)) => alts.push((Some(proto), vec![], Some(n))),
                    Some(PortSpec::Range(a, _)) => {
                        let end = match p.end_port {
                            Some(e) => u16::try_from(e)
                                .ok()
                                .filter(|e| *e >= a)
                                .ok_or_else(|| invalid(format!("{pf}.endPort"), "must be a port >= port"))?,
                            None => a,
                        };
                        alts.push((Some(proto), vec![(a, end)], None));
                    }
                }
            }
            if alts.is_empty() {
                alts.push((None, vec![], None));
            }
            for m in &peers {
                for (proto, ranges, named) in &alts {
                    let mut port_side = Match { ports: ranges.clone(), named: named.clone(), ..Match::default() };
                    let (src, dst) = if dir == "ingress" {
                        (m.clone(), port_side)
                    } else {
                        port_side.nets = m.nets.clone();
                        port_side.not_nets = m.not_nets.clone();
                        port_side.sel = m.sel.clone();
                        (Match::default(), port_side)
                    };
                    out.push(MRule {
                        action: Action::Allow,
                        origin: i,
                        name: None,
                        ip_version: None,
                        protocol: *proto,
                        not_protocol: None,
                        icmp: None,
                        not_icmp: None,
                        src,
                        dst,
                    });
                }
            }
        }
        Ok(out)
    };
    let ingress_list = spec.ingress.clone().unwrap_or_default().into_iter().map(|r| (r.from, r.ports)).collect();
    let egress_list = egress_rules.into_iter().map(|r| (r.to, r.ports)).collect();
    Ok(Policy {
        id: PolicyId { kind: Kind::Kubernetes, namespace: Some(ns.clone()), name },
        tier: DEFAULT_TIER.into(),
        order: Some(K8S_POLICY_ORDER),
        subject: Subject {
            namespace: Some(ns),
            selector: match &spec.pod_selector {
                Some(ls) => label_sel("spec.podSelector", ls)?,
                None => Selector::All,
            },
            namespace_selector: Selector::All,
            sa_names: vec![],
        },
        ingress: if ing { Some(rules("ingress", ingress_list)?) } else { None },
        egress: if eg { Some(rules("egress", egress_list)?) } else { None },
    })
}

fn namespaced_pod(field: &str, p: &cnp::NamespacedPod) -> Result<PeerSel, Invalid> {
    Ok(PeerSel {
        selector: label_sel(&format!("{field}.podSelector"), &p.pod_selector)?,
        scope: NsScope::Select(label_sel(&format!("{field}.namespaceSelector"), &p.namespace_selector)?),
        sa_names: vec![],
    })
}

/// A ClusterNetworkPolicy: tier `kube-admin` or `kube-baseline`, order = priority. A peer Tabby cannot
/// match (domainNames) fails closed: an Accept rule matches nothing there, a Deny or Pass rule matches
/// every destination.
pub fn from_cnp(c: &ClusterNetworkPolicy) -> Result<Policy, Invalid> {
    let name = c.metadata.name.clone().unwrap_or_default();
    let s = &c.spec;
    let (namespace_selector, selector) = match (&s.subject.namespaces, &s.subject.pods) {
        (Some(ns), None) => (label_sel("spec.subject.namespaces", ns)?, Selector::All),
        (None, Some(p)) => {
            let ps = namespaced_pod("spec.subject.pods", p)?;
            let NsScope::Select(ns) = ps.scope else { unreachable!("namespaced_pod selects namespaces") };
            (ns, ps.selector)
        }
        _ => return Err(invalid("spec.subject", "set exactly one of namespaces and pods")),
    };
    let action = |a: CnpAction| match a {
        CnpAction::Accept => Action::Allow,
        CnpAction::Deny => Action::Deny,
        CnpAction::Pass => Action::Pass,
    };
    let protocols = |field: &str, ps: &Option<Vec<cnp::Protocol>>| -> Vec<ProtoPorts> {
        let _ = field;
        let Some(ps) = ps.as_ref().filter(|p| !p.is_empty()) else { return vec![(None, vec![], None)] };
        ps.iter()
            .map(|p| {
                let port = |pp: &cnp::ProtocolPort| -> Vec<(u16, u16)> {
                    match &pp.destination_port {
                        Some(cnp::Port { number: Some(n), .. }) => vec![(*n as u16, *n as u16)],
                        Some(cnp::Port { range: Some(r), .. }) => vec![(r.start as u16, r.end as u16)],
                        _ => vec![],
                    }
                };
                if let Some(t) = &p.tcp {
                    (Some(TCP), port(t), None)
                } else if let Some(u) = &p.udp {
                    (Some(UDP), port(u), None)
                } else if let Some(x) = &p.sctp {
                    (Some(SCTP), port(x), None)
                } else {
                    (None, vec![], p.destination_named_port.clone())
                }
            })
            .collect()
    };
    let mut ingress = Vec::new();
    for (i, r) in s.ingress.iter().enumerate() {
        let field = format!("spec.ingress[{i}]");
        for (j, p) in r.from.iter().enumerate() {
            let sel = match (&p.namespaces, &p.pods) {
                (Some(ns), None) => PeerSel {
                    selector: Selector::All,
                    scope: NsScope::Select(label_sel(&format!("{field}.from[{j}].namespaces"), ns)?),
                    sa_names: vec![],
                },
                (None, Some(pods)) => namespaced_pod(&format!("{field}.from[{j}].pods"), pods)?,
                _ => return Err(invalid(format!("{field}.from[{j}]"), "set exactly one of namespaces and pods")),
            };
            for (proto, ports, named) in protocols(&field, &r.protocols) {
                ingress.push(MRule {
                    action: action(r.action),
                    origin: i,
                    name: r.name.clone(),
                    ip_version: None,
                    protocol: proto,
                    not_protocol: None,
                    icmp: None,
                    not_icmp: None,
                    src: Match { sel: Some(sel.clone()), ..Match::default() },
                    dst: Match { ports, named, ..Match::default() },
                });
            }
        }
    }
    let mut egress = Vec::new();
    for (i, r) in s.egress.iter().enumerate() {
        let field = format!("spec.egress[{i}]");
        for (j, p) in r.to.iter().enumerate() {
            let pf = format!("{field}.to[{j}]");
            let mut m = Match::default();
            if let Some(ns) = &p.namespaces {
                m.sel = Some(PeerSel {
                    selector: Selector::All,
                    scope: NsScope::Select(label_sel(&format!("{pf}.namespaces"), ns)?),
                    sa_names: vec![],
                });
            } else if let Some(pods) = &p.pods {
                m.sel = Some(namespaced_pod(&format!("{pf}.pods"), pods)?);
            } else if let Some(nodes) = &p.nodes {
                m.nodes = Some(label_sel(&format!("{pf}.nodes"), nodes)?);
            } else if let Some(nets) = &p.networks {
                m.nets = parse_nets(&format!("{pf}.networks"), nets)?;
            } else if action(r.action) == Action::Allow {
                // domainNames, or a peer of a kind this version does not know: fail closed.
                m.never = true;
            }
            for (proto, ports, named) in protocols(&field, &r.protocols) {
                let mut d = m.clone();
                d.ports = ports;
                d.named = named;
                egress.push(MRule {
                    action: action(r.action),
                    origin: i,
                    name: r.name.clone(),
                    ip_version: None,
                    protocol: proto,
                    not_protocol: None,
                    icmp: None,
                    not_icmp: None,
                    src: Match::default(),
                    dst: d,
                });
            }
        }
    }
    let (tier, _) = match s.tier {
        CnpTier::Admin => (ADMIN_TIER, ADMIN_TIER_ORDER),
        CnpTier::Baseline => (BASELINE_TIER, BASELINE_TIER_ORDER),
    };
    Ok(Policy {
        id: PolicyId { kind: Kind::Cluster, namespace: None, name },
        tier: tier.into(),
        order: Some(f64::from(s.priority)),
        subject: Subject { namespace: None, selector, namespace_selector, sa_names: vec![] },
        ingress: if s.ingress.is_empty() { None } else { Some(ingress) },
        egress: if s.egress.is_empty() { None } else { Some(egress) },
    })
}

/// Everything policy reads of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Every endpoint (pod with addresses, not host network) of every node.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Namespace labels, by name.
    pub namespaces: BTreeMap<String, Labels>,
    pub net_sets: Vec<NetSet>,
    pub nodes: Vec<NodeInfo>,
    pub tiers: BTreeMap<String, TierInfo>,
    pub policies: Vec<Policy>,
}

impl Cluster {
    /// A namespace's labels for selectors, with the implicit name labels.
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(LABEL_NAMESPACE_NAME.into(), ns.to_string());
        l.entry("kubernetes.io/metadata.name".into()).or_insert_with(|| ns.to_string());
        l
    }

    /// A namespace's labels as a selector reads them (without copying).
    pub fn namespace_view<'a>(&'a self, ns: &'a str) -> NamespaceLabels<'a> {
        NamespaceLabels { name: ns, labels: self.namespaces.get(ns) }
    }

    /// Whether namespace `ns` (None: not namespaced) is in `scope`.
    pub fn in_scope(&self, scope: &NsScope, ns: Option<&str>) -> bool {
        match (scope, ns) {
            (NsScope::Any, _) => true,
            (NsScope::Same(n), Some(ns)) => n == ns,
            (NsScope::Same(_), None) => false,
            (NsScope::Select(s), Some(ns)) => s.matches_in(&self.namespace_view(ns), false),
            (NsScope::Select(s), None) => s.mentions_global() && s.matches_entity(&Labels::new(), true),
        }
    }

    /// Whether `p` selects endpoint `e`.
    pub fn peer_matches(&self, p: &PeerSel, e: &Endpoint) -> bool {
        self.in_scope(&p.scope, Some(&e.namespace))
            && (p.sa_names.is_empty() || e.service_account.as_ref().is_some_and(|s| p.sa_names.contains(s)))
            && p.selector.matches_in(&EndpointLabels(e), false)
    }

    fn set_matches(&self, p: &PeerSel, s: &NetSet) -> bool {
        let mut labels = s.labels.clone();
        if let Some(ns) = &s.namespace {
            labels.insert(LABEL_NAMESPACE.into(), ns.clone());
        }
        p.sa_names.is_empty()
            && self.in_scope(&p.scope, s.namespace.as_deref())
            && p.selector.matches_entity(&labels, s.namespace.is_none())
    }

    /// Whether `policy` applies to endpoint `e`.
    pub fn applies(&self, s: &Subject, e: &Endpoint) -> bool {
        s.namespace.as_ref().is_none_or(|n| *n == e.namespace)
            && (s.sa_names.is_empty() || e.service_account.as_ref().is_some_and(|x| s.sa_names.contains(x)))
            && s.selector.matches_in(&EndpointLabels(e), false)
            && s.namespace_selector.matches_in(&self.namespace_view(&e.namespace), false)
    }

    fn tier(&self, name: &str) -> TierInfo {
        self.tiers
            .get(name)
            .cloned()
            .or_else(|| builtin_tiers().remove(name))
            // A tier that does not exist (reported on the policy): last, and Deny (fail closed).
            .unwrap_or(TierInfo { order: None, default_action: Action::Deny })
    }
}

/// A set the rules name, by what it holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetDef {
    /// Addresses of the endpoints (and networks of the sets) a peer selector matches.
    Peers(PeerSel),
    /// `address . protocol . port` of a named port on the endpoints `sel` matches (None: every endpoint).
    NamedPort { name: String, protocol: Option<u8>, sel: Option<PeerSel> },
    /// Addresses of the nodes a selector matches.
    Nodes(Selector),
}

impl SetDef {
    /// A stable identifier: 12 hex digits of a hash of its canonical description.
    pub fn id(&self) -> String {
        let text = match self {
            SetDef::Peers(p) => format!("peers|{}", peer_text(p)),
            SetDef::NamedPort { name, protocol, sel } => {
                format!("port|{name}|{protocol:?}|{}", sel.as_ref().map(peer_text).unwrap_or_default())
            }
            SetDef::Nodes(s) => format!("nodes|{s}"),
        };
        format!("{:012x}", fnv(&text) >> 16)
    }

    pub fn is_named_port(&self) -> bool {
        matches!(self, SetDef::NamedPort { .. })
    }
}

fn peer_text(p: &PeerSel) -> String {
    let scope = match &p.scope {
        NsScope::Same(n) => format!("ns={n}"),
        NsScope::Select(s) => format!("nssel={s}"),
        NsScope::Any => "any".into(),
    };
    format!("{}|{scope}|{}", p.selector, p.sa_names.join(","))
}

/// FNV-1a, 64 bits: stable across builds (names in the kernel outlive the process).
pub fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The members of a set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Addresses and networks (Peers, Nodes).
    pub nets: BTreeSet<IpNet>,
    /// `(address, protocol, port)` (NamedPort).
    pub ports: BTreeSet<(IpAddr, u8, u16)>,
}

/// One side of a compiled rule: the model's [`Match`] with its selectors replaced by set ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CMatch {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    pub set: Option<String>,
    pub not_set: Option<String>,
    pub ports: Vec<(u16, u16)>,
    pub not_ports: Vec<(u16, u16)>,
    /// Named-port sets (destination side): the packet's address, protocol and port must be in `named`
    /// and in none of `not_named`.
    pub named: Option<String>,
    pub not_named: Vec<String>,
    pub never: bool,
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CRule {
    pub action: Action,
    pub origin: usize,
    pub name: Option<String>,
    pub ip_version: Option<u8>,
    pub protocol: Option<u8>,
    pub not_protocol: Option<u8>,
    pub icmp: Option<(u8, Option<u8>)>,
    pub not_icmp: Option<(u8, Option<u8>)>,
    pub src: CMatch,
    pub dst: CMatch,
}

/// A policy's rules in one direction, compiled once for every endpoint it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct CPolicy {
    pub id: PolicyId,
    pub tier: String,
    pub dir: Dir,
    pub staged: bool,
    pub rules: Vec<CRule>,
}

/// A tier as one endpoint meets it in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TierStep {
    pub tier: String,
    /// The policies that apply, in order (staged ones included).
    pub policies: Vec<PolicyId>,
    /// Deny or Pass at the end; Pass when only staged policies apply.
    pub end: Action,
    /// Every applying policy is staged: the end is a "would" verdict.
    pub only_staged: bool,
}

/// What an endpoint runs in one direction: its tiers in order (empty: no policy, allowed).
pub type Program = Vec<TierStep>;

/// The compiled policy of a set of endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ruleset {
    /// By endpoint key (`namespace/name`): (ingress, egress) programs.
    pub endpoints: BTreeMap<String, (Program, Program)>,
    /// Every policy a program names, by (id, direction).
    pub policies: BTreeMap<(PolicyId, Dir), CPolicy>,
    /// Every set a rule names, by id.
    pub sets: BTreeMap<String, (SetDef, Members)>,
}

/// Removes networks contained in another of the list (interval sets reject overlaps).
pub fn disjoint(nets: impl IntoIterator<Item = IpNet>) -> BTreeSet<IpNet> {
    let mut v: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
    v.sort_by_key(|n| n.prefix_len());
    // A network is covered when its supernet at one of the kept prefix lengths was kept: O(n × the
    // number of distinct lengths), not O(n²) (a set of 10,000 pod addresses is one length).
    let mut out: BTreeSet<IpNet> = BTreeSet::new();
    let mut lengths: Vec<(bool, u8)> = Vec::new();
    for n in v {
        let v6 = n.addr().is_ipv6();
        let covered = lengths
            .iter()
            .filter(|(f, l)| *f == v6 && *l <= n.prefix_len())
            .any(|(_, l)| IpNet::new(n.addr(), *l).is_ok_and(|s| out.contains(&s.trunc())));
        if !covered && out.insert(n) && !lengths.contains(&(v6, n.prefix_len())) {
            lengths.push((v6, n.prefix_len()));
        }
    }
    out
}

struct Compiler<'a> {
    c: &'a Cluster,
    /// Candidates for set members (none: every endpoint is tried).
    idx: Option<&'a Index<'a>>,
    sets: BTreeMap<String, (SetDef, Members)>,
}

impl Compiler<'_> {
    fn set(&mut self, def: SetDef) -> String {
        let id = def.id();
        if !self.sets.contains_key(&id) {
            let members = self.members(&def);
            self.sets.insert(id.clone(), (def, members));
        }
        id
    }

    fn members(&self, def: &SetDef) -> Members {
        members_in(self.c, self.idx, def)
    }

    fn side(&mut self, m: &Match, protocol: Option<u8>, dst: bool) -> CMatch {
        let named = m.named.as_ref().map(|name| {
            // A destination's named port is resolved on the endpoints the same side selects.
            let sel = if dst { m.sel.clone() } else { None };
            self.set(SetDef::NamedPort { name: name.clone(), protocol, sel })
        });
        let not_named = m
            .not_named
            .iter()
            .map(|name| self.set(SetDef::NamedPort { name: name.clone(), protocol, sel: None }))
            .collect();
        let set = match (&m.nodes, &m.sel) {
            (Some(n), _) => Some(self.set(SetDef::Nodes(n.clone()))),
            (None, Some(p)) => Some(self.set(SetDef::Peers(p.clone()))),
            (None, None) => None,
        };
        CMatch {
            nets: m.nets.clone(),
            not_nets: m.not_nets.clone(),
            set,
            not_set: m.not_sel.clone().map(|p| self.set(SetDef::Peers(p))),
            ports: m.ports.clone(),
            not_ports: m.not_ports.clone(),
            named,
            not_named,
            never: m.never,
        }
    }

    fn rule(&mut self, r: &MRule) -> CRule {
        CRule {
            action: r.action,
            origin: r.origin,
            name: r.name.clone(),
            ip_version: r.ip_version,
            protocol: r.protocol,
            not_protocol: r.not_protocol,
            icmp: r.icmp,
            not_icmp: r.not_icmp,
            src: self.side(&r.src, r.protocol, false),
            dst: self.side(&r.dst, r.protocol, true),
        }
    }
}

/// The members of `def` in `c`: the candidates from `idx` (every endpoint without one), confirmed by the
/// full match.
fn members_in(c: &Cluster, idx: Option<&Index>, def: &SetDef) -> Members {
    let every = || -> Box<dyn Iterator<Item = &Endpoint>> { Box::new(c.endpoints.iter().map(|e| &**e)) };
    let mut m = Members::default();
    match def {
        SetDef::Peers(p) => {
            let cands = match idx {
                Some(x) => x.endpoints(x.peer(c, p)),
                None => every(),
            };
            let eps = cands.filter(|e| c.peer_matches(p, e)).flat_map(|e| e.ips.iter().copied());
            let sets = c.net_sets.iter().filter(|s| c.set_matches(p, s)).flat_map(|s| s.nets.iter().copied());
            m.nets = disjoint(eps.map(IpNet::from).chain(sets));
        }
        SetDef::NamedPort { name, protocol, sel } => {
            let cands = match idx {
                Some(x) => {
                    let with_port = Postings::Some(x.with_port(name));
                    x.endpoints(match sel {
                        Some(p) => with_port.and(x.peer(c, p)),
                        None => with_port,
                    })
                }
                None => every(),
            };
            for e in cands.filter(|e| sel.as_ref().is_none_or(|p| c.peer_matches(p, e))) {
                for np in e.ports.iter().filter(|np| np.is(name, *protocol)) {
                    m.ports.extend(e.ips.iter().map(|ip| (*ip, np.protocol, np.port)));
                }
            }
        }
        SetDef::Nodes(s) => {
            let ips = c.nodes.iter().filter(|n| s.matches(&n.labels)).flat_map(|n| n.ips.iter().copied());
            m.nets = disjoint(ips.map(IpNet::from));
        }
    }
    m
}

impl SetDef {
    /// Whether endpoint `e` is among what this set holds in `c` (nodes never are).
    pub fn touches(&self, c: &Cluster, e: &Endpoint) -> bool {
        match self {
            SetDef::Peers(p) => c.peer_matches(p, e),
            SetDef::NamedPort { name, protocol, sel } => {
                e.ports.iter().any(|np| np.is(name, *protocol)) && sel.as_ref().is_none_or(|p| c.peer_matches(p, e))
            }
            SetDef::Nodes(_) => false,
        }
    }
}

/// An endpoint before and after a change (`None`: it did not exist, or no longer does).
pub type EndpointChange = (Option<Arc<Endpoint>>, Option<Arc<Endpoint>>);

/// Brings `rs`, compiled from the cluster as it was, up to date with `changes` of endpoints that are not
/// among the compiled ones (another node's pods), `c` being the cluster after them. Such a change moves set
/// members only: programs and rules name sets, never endpoints. Each set the changed endpoints belonged to
/// or now belong to is read again from `c`; the ids of the sets whose members changed are returned. The
/// caller makes sure no change touches a compiled endpoint (those go through [`compile`]).
pub fn repatch(c: &Cluster, rs: &mut Ruleset, changes: &[EndpointChange]) -> Vec<String> {
    let mut changed = Vec::new();
    for (id, (def, members)) in rs.sets.iter_mut() {
        let touched = changes.iter().flat_map(|(a, b)| [a, b]).flatten().any(|e| def.touches(c, e));
        if !touched {
            continue;
        }
        let now = members_in(c, None, def);
        if now != *members {
            *members = now;
            changed.push(id.clone());
        }
    }
    changed
}

/// Sort key of an order: unset last.
fn order_key(o: Option<f64>) -> f64 {
    o.unwrap_or(f64::INFINITY)
}

/// The tiers in order, and each tier's policies in order.
struct Order<'p> {
    tiers: Vec<(&'p str, TierInfo)>,
    by_tier: BTreeMap<&'p str, Vec<&'p Policy>>,
}

fn order(c: &Cluster) -> Order<'_> {
    let mut by_tier: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
    for p in &c.policies {
        by_tier.entry(p.tier.as_str()).or_default().push(p);
    }
    let mut tiers: Vec<(&str, TierInfo)> = by_tier.keys().map(|t| (*t, c.tier(t))).collect();
    tiers.sort_by(|a, b| order_key(a.1.order).total_cmp(&order_key(b.1.order)).then(a.0.cmp(b.0)));
    for ps in by_tier.values_mut() {
        ps.sort_by(|a, b| order_key(a.order).total_cmp(&order_key(b.order)).then_with(|| a.id.cmp(&b.id)));
    }
    Order { tiers, by_tier }
}

/// The directions a policy has rules for (0: ingress, 1: egress).
fn dirs(p: &Policy) -> impl Iterator<Item = usize> + '_ {
    [Dir::Ingress, Dir::Egress].into_iter().enumerate().filter(|(_, d)| p.rules(*d).is_some()).map(|(i, _)| i)
}

/// Per direction, the tiers (by position in [`Order::tiers`]) whose policies apply to one endpoint, each
/// tier's in order.
type Applying<'p> = [BTreeMap<usize, Vec<&'p Policy>>; 2];

/// The policies that apply to `e`, read policy by policy (what [`compile`] finds through the index).
fn applying_to<'p>(c: &Cluster, ord: &Order<'p>, e: &Endpoint) -> Applying<'p> {
    let mut a: Applying = Default::default();
    for (ti, (tier, _)) in ord.tiers.iter().enumerate() {
        for p in &ord.by_tier[tier] {
            if dirs(p).next().is_some() && c.applies(&p.subject, e) {
                for d in dirs(p) {
                    a[d].entry(ti).or_default().push(p);
                }
            }
        }
    }
    a
}

/// An endpoint's programs from what applies to it; each policy they name is compiled into `policies`
/// unless it is there already.
fn programs(
    comp: &mut Compiler,
    policies: &mut BTreeMap<(PolicyId, Dir), CPolicy>,
    ord: &Order,
    a: Option<&Applying>,
) -> (Program, Program) {
    let mut progs: (Program, Program) = (Vec::new(), Vec::new());
    let Some(a) = a else { return progs };
    for (d, dir) in [Dir::Ingress, Dir::Egress].into_iter().enumerate() {
        let prog = if dir == Dir::Ingress { &mut progs.0 } else { &mut progs.1 };
        for (ti, ps) in &a[d] {
            let (tier, info) = &ord.tiers[*ti];
            let only_staged = ps.iter().all(|p| p.staged());
            for p in ps {
                let key = (p.id.clone(), dir);
                if let std::collections::btree_map::Entry::Vacant(v) = policies.entry(key) {
                    let rules = p.rules(dir).map(|rs| rs.iter().map(|r| comp.rule(r)).collect()).unwrap_or_default();
                    v.insert(CPolicy { id: p.id.clone(), tier: p.tier.clone(), dir, staged: p.staged(), rules });
                }
            }
            prog.push(TierStep {
                tier: tier.to_string(),
                policies: ps.iter().map(|p| p.id.clone()).collect(),
                end: if only_staged { Action::Pass } else { info.default_action },
                only_staged,
            });
        }
    }
    progs
}

/// Compiles the policies of the endpoints `local` picks (the agent: this node's; the trace: all).
///
/// Costs what the selected things are, not what the cluster holds: an [`Index`] of the endpoints'
/// labels gives each subject and peer selector its candidates (`app in {'a', 'b'}` reads two lists),
/// which the full match then confirms; the rest is linear in the policies and the local endpoints.
pub fn compile(c: &Cluster, local: impl Fn(&Endpoint) -> bool) -> Ruleset {
    let idx = Index::new(&c.endpoints);
    let mut comp = Compiler { c, idx: Some(&idx), sets: BTreeMap::new() };
    let mut out = Ruleset::default();
    let ord = order(c);
    let local: Vec<u32> = (0..c.endpoints.len() as u32).filter(|i| local(&c.endpoints[*i as usize])).collect();
    let mut is_local = vec![false; c.endpoints.len()];
    for i in &local {
        is_local[*i as usize] = true;
    }
    let mut applying: BTreeMap<u32, Applying> = BTreeMap::new();
    for (ti, (tier, _)) in ord.tiers.iter().enumerate() {
        for p in &ord.by_tier[tier] {
            if dirs(p).next().is_none() {
                continue;
            }
            let hits: Vec<u32> = match idx.subject(c, &p.subject) {
                Postings::Some(v) if v.len() < local.len() => v.into_iter().filter(|i| is_local[*i as usize]).collect(),
                _ => local.clone(),
            };
            for i in hits.into_iter().filter(|i| c.applies(&p.subject, &c.endpoints[*i as usize])) {
                let a = applying.entry(i).or_default();
                for d in dirs(p) {
                    a[d].entry(ti).or_default().push(p);
                }
            }
        }
    }
    for i in local {
        let progs = programs(&mut comp, &mut out.policies, &ord, applying.get(&i));
        out.endpoints.insert(c.endpoints[i as usize].key(), progs);
    }
    out.sets = comp.sets;
    out
}

/// Brings `rs`, compiled by [`compile`] from the cluster as it was, up to date with the policies
/// `changed` (added, edited or removed; `c` is the cluster with them, and nothing else changed): the
/// local endpoints one of them applied to or applies to get their programs again, the changed policies
/// are compiled again, and the compiled policies and sets no program names any more go. What
/// [`compile`] gives, at the cost of the change: the policies beside them are neither compiled nor
/// rendered again, only their subjects are read for the endpoints the change touches.
pub fn recompile(c: &Cluster, rs: &mut Ruleset, changed: &BTreeSet<PolicyId>, local: impl Fn(&Endpoint) -> bool) {
    let ord = order(c);
    rs.policies.retain(|(id, _), _| !changed.contains(id));
    let mut comp = Compiler { c, idx: None, sets: std::mem::take(&mut rs.sets) };
    let now: Vec<&Policy> = c.policies.iter().filter(|p| changed.contains(&p.id)).collect();
    for e in c.endpoints.iter().filter(|e| local(e)) {
        let key = e.key();
        let named = |(i, eg): &(Program, Program)| {
            i.iter().chain(eg).any(|step| step.policies.iter().any(|id| changed.contains(id)))
        };
        if !rs.endpoints.get(&key).is_some_and(named) && !now.iter().any(|p| c.applies(&p.subject, e)) {
            continue;
        }
        let a = applying_to(c, &ord, e);
        let progs = programs(&mut comp, &mut rs.policies, &ord, Some(&a));
        rs.endpoints.insert(key, progs);
    }
    let Ruleset { endpoints, policies, .. } = rs;
    let mut named: HashSet<(&PolicyId, Dir)> = HashSet::new();
    for (ingress, egress) in endpoints.values() {
        for (prog, d) in [(ingress, Dir::Ingress), (egress, Dir::Egress)] {
            named.extend(prog.iter().flat_map(|s| &s.policies).map(|id| (id, d)));
        }
    }
    policies.retain(|(id, d), _| named.contains(&(id, *d)));
    let sets: HashSet<&str> = policies
        .values()
        .flat_map(|p| &p.rules)
        .flat_map(|r| [&r.src, &r.dst])
        .flat_map(|m| m.set.iter().chain(&m.not_set).chain(&m.named).chain(&m.not_named))
        .map(String::as_str)
        .collect();
    comp.sets.retain(|id, _| sets.contains(id.as_str()));
    rs.sets = comp.sets;
}

/// A packet, for [`Ruleset::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
}

/// What decided a direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    /// No policy applies in this direction.
    NoPolicy,
    /// A rule: tier, policy, the user's rule index and name, its action.
    Rule { tier: String, policy: PolicyId, rule: usize, name: Option<String>, action: Action },
    /// The end of a tier (its default action, Deny).
    TierEnd { tier: String },
    /// Every tier passed.
    AllPassed,
}

/// One direction's verdict, with what decided it and what else the packet met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub decider: Decider,
    /// Log rules the packet matched on the way (policy, rule index).
    pub logged: Vec<(PolicyId, usize)>,
    /// Staged policies' verdicts: (policy, rule index or None for a staged-only tier's end, would allow).
    pub staged: Vec<(PolicyId, Option<usize>, bool)>,
}

fn in_ranges(p: u16, r: &[(u16, u16)]) -> bool {
    r.iter().any(|(a, b)| *a <= p && p <= *b)
}

impl Ruleset {
    fn in_set(&self, id: &str, addr: IpAddr) -> bool {
        self.sets.get(id).is_some_and(|(_, m)| m.nets.iter().any(|n| n.contains(&addr)))
    }

    fn side(&self, m: &CMatch, addr: IpAddr, port: u16, pkt: &Packet, ports_apply: bool) -> bool {
        if m.never {
            return false;
        }
        (m.nets.is_empty() || m.nets.iter().any(|n| n.contains(&addr)))
            && !m.not_nets.iter().any(|n| n.contains(&addr))
            && m.set.as_ref().is_none_or(|s| self.in_set(s, addr))
            && m.not_set.as_ref().is_none_or(|s| !self.in_set(s, addr))
            && (m.ports.is_empty() || (ports_apply && in_ranges(port, &m.ports)))
            && (m.not_ports.is_empty() || (ports_apply && !in_ranges(port, &m.not_ports)))
            && m.named.as_ref().is_none_or(|s| {
                ports_apply && self.sets.get(s).is_some_and(|(_, mm)| mm.ports.contains(&(addr, pkt.protocol, port)))
            })
            && m.not_named.iter().all(|s| {
                ports_apply && !self.sets.get(s).is_some_and(|(_, mm)| mm.ports.contains(&(addr, pkt.protocol, port)))
            })
    }

    /// Whether a compiled rule matches the packet.
    pub fn matches(&self, r: &CRule, p: &Packet) -> bool {
        let l4 = matches!(p.protocol, TCP | UDP | SCTP | 136);
        let v = if p.src.is_ipv4() { 4 } else { 6 };
        let icmp_ok = |f: &Option<(u8, Option<u8>)>| {
            f.is_none_or(|(t, c)| p.icmp.is_some_and(|(pt, pc)| pt == t && c.is_none_or(|c| c == pc)))
        };
        r.ip_version.is_none_or(|x| x == v)
            && r.protocol.is_none_or(|x| x == p.protocol)
            && r.not_protocol.is_none_or(|x| x != p.protocol)
            && icmp_ok(&r.icmp)
            && (r.not_icmp.is_none() || !icmp_ok(&r.not_icmp))
            && self.side(&r.src, p.src, p.src_port, p, l4)
            && self.side(&r.dst, p.dst, p.dst_port, p, l4)
    }

    /// The verdict of `program` (one endpoint, one direction) for a packet.
    pub fn decide(&self, program: &Program, dir: Dir, p: &Packet) -> Verdict {
        let mut v = Verdict { allowed: true, decider: Decider::NoPolicy, logged: vec![], staged: vec![] };
        if program.is_empty() {
            return v;
        }
        'tiers: for step in program {
            for id in &step.policies {
                let Some(pol) = self.policies.get(&(id.clone(), dir)) else { continue };
                for r in &pol.rules {
                    if !self.matches(r, p) {
                        continue;
                    }
                    if pol.staged {
                        match r.action {
                            Action::Log => continue,
                            a => {
                                v.staged.push((id.clone(), Some(r.origin), a == Action::Allow));
                                // In a tier of staged policies only, the first staged verdict is the
                                // tier's; otherwise the next policy goes on.
                                if step.only_staged {
                                    continue 'tiers;
                                }
                                break;
                            }
                        }
                    }
                    let decided = |action| Decider::Rule {
                        tier: step.tier.clone(),
                        policy: id.clone(),
                        rule: r.origin,
                        name: r.name.clone(),
                        action,
                    };
                    match r.action {
                        Action::Log => v.logged.push((id.clone(), r.origin)),
                        Action::Allow => {
                            v.decider = decided(Action::Allow);
                            return v;
                        }
                        Action::Deny => {
                            v.allowed = false;
                            v.decider = decided(Action::Deny);
                            return v;
                        }
                        Action::Pass => continue 'tiers,
                    }
                }
            }
            if step.only_staged {
                // No staged rule decided: the tier's end would drop it.
                v.staged.extend(step.policies.first().map(|id| (id.clone(), None, false)));
                continue;
            }
            if step.end == Action::Deny {
                v.allowed = false;
                v.decider = Decider::TierEnd { tier: step.tier.clone() };
                return v;
            }
        }
        v.decider = Decider::AllPassed;
        v
    }
}

#[cfg(test)]
mod tests;
