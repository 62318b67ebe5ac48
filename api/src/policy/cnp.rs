//! `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1beta1`, also served as `v1alpha2`), the
//! network-policy-api project's successor of AdminNetworkPolicy and BaselineAdminNetworkPolicy, with the
//! field names of its v0.3.0 CRD (experimental channel: `nodes` and `domainNames` peers included, so the
//! object round-trips).
//!
//! The operator installs this CRD only when the cluster has none (a cluster that installed the
//! project's own CRD keeps it). Evaluation: the Admin tier before Kubernetes NetworkPolicy, the
//! Baseline tier after it (see [`super::model`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// The API group of ClusterNetworkPolicy.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The version Tabby reads and the CRD stores (network-policy-api v0.3.0's).
pub const VERSION: &str = "v1beta1";
/// The earlier version the CRD serves too (same schema, no conversion), as the project's own CRD does.
pub const SERVED_ALSO: &str = "v1alpha2";

/// Cluster-wide policy of the Admin or the Baseline tier.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1beta1",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies",
    shortname = "cnp",
    status = "ClusterNetworkPolicyStatus",
    doc = "ClusterNetworkPolicy is a cluster-wide policy: the Admin tier is evaluated before NetworkPolicy, the Baseline tier after it.",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier", description = "Admin or Baseline"),
    printcolumn(name = "Priority", type_ = "string", json_path = ".spec.priority", description = "Lower first")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// Admin (before NetworkPolicy) or Baseline (after it).
    pub tier: CnpTier,
    /// 0-1000; lower is evaluated first.
    #[schemars(range(min = 0, max = 1000), extend("format" = "int32"))]
    pub priority: i32,
    /// The pods the policy applies to.
    pub subject: Subject,
    /// Ingress rules; the first that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 25))]
    pub ingress: Vec<IngressRule>,
    /// Egress rules; the first that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 25))]
    pub egress: Vec<EgressRule>,
}

/// ClusterNetworkPolicy's tier.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CnpTier {
    Admin,
    Baseline,
}

/// The conditions of a ClusterNetworkPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ClusterNetworkPolicyStatus {
    /// Conditions set by the implementations.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Exactly one of `namespaces` and `pods`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.namespaces), has(self.pods)].exists_one(x, x)").message("subject: set exactly one of namespaces and pods"))]
pub struct Subject {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods by namespace and pod labels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// The namespaces (empty or left out: every namespace).
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// The pods in them (empty: every pod).
    pub pod_selector: LabelSelector,
}

/// Accept, Deny or Pass.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CnpAction {
    /// Allow; NetworkPolicy and lower tiers are not consulted.
    Accept,
    /// Drop; nothing else is consulted.
    Deny,
    /// Skip the rest of the tier.
    Pass,
}

/// An ingress rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IngressRule {
    /// A name for the rule (in events and counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// Accept, Deny or Pass.
    pub action: CnpAction,
    /// Where the traffic comes from.
    #[schemars(length(min = 1, max = 25))]
    pub from: Vec<IngressPeer>,
    /// Protocols and destination ports; unset: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub protocols: Option<Vec<Protocol>>,
}

/// An egress rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.protocols) && self.protocols.exists(protocol, has(protocol.destinationNamedPort)))").message("protocols: a named port cannot be combined with networks, nodes or domainNames peers"))]
pub struct EgressRule {
    /// A name for the rule (in events and counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// Accept, Deny or Pass.
    pub action: CnpAction,
    /// Where the traffic goes.
    #[schemars(length(min = 1, max = 25))]
    pub to: Vec<EgressPeer>,
    /// Protocols and destination ports; unset: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub protocols: Option<Vec<Protocol>>,
}

/// Exactly one of `namespaces` and `pods`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.namespaces), has(self.pods)].exists_one(x, x)").message("from: set exactly one of namespaces and pods"))]
pub struct IngressPeer {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace and pod labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Exactly one kind of peer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.namespaces), has(self.pods), has(self.nodes), has(self.networks), has(self.domainNames)].exists_one(x, x)").message("to: set exactly one of namespaces, pods, nodes, networks and domainNames"))]
pub struct EgressPeer {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace and pod labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Nodes by label (experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (they match pod addresses too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c) && cidr(c) == cidr(c).masked())").message("networks: every entry must be a CIDR without host bits"))]
    pub networks: Option<Vec<String>>,
    /// Domain names (experimental; Tabby does not resolve them: such a rule fails closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25), inner(length(max = 253)))]
    pub domain_names: Option<Vec<String>>,
}

/// Exactly one of tcp, udp, sctp and destinationNamedPort.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.tcp), has(self.udp), has(self.sctp), has(self.destinationNamedPort)].exists_one(x, x)").message("protocols: set exactly one of tcp, udp, sctp and destinationNamedPort"))]
pub struct Protocol {
    /// TCP, optionally to a port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPort>,
    /// UDP, optionally to a port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPort>,
    /// SCTP, optionally to a port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPort>,
    /// A container port name, resolved per destination pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub destination_named_port: Option<String>,
}

/// A destination port or range; unset: every port of the protocol.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPort {
    /// The destination port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// Exactly one of `number` and `range`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.number), has(self.range)].exists_one(x, x)").message("destinationPort: set exactly one of number and range"))]
pub struct Port {
    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub number: Option<i32>,
    /// A range of ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// An inclusive port range, `start < end`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.start < self.end").message("range: start must be less than end"))]
pub struct PortRange {
    /// The first port.
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub start: i32,
    /// The last port (inclusive).
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub end: i32,
}
