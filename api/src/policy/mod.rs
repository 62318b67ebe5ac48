//! Network policy objects (`tabby.dev/v1`), with Calico v3's field names and meaning: [`NetworkPolicy`]
//! (namespaced), [`GlobalNetworkPolicy`], their staged twins [`StagedNetworkPolicy`] and
//! [`StagedGlobalNetworkPolicy`] (evaluated and counted, never enforced), [`NetworkSet`] and
//! [`GlobalNetworkSet`] (labelled CIDR lists that selectors match like endpoints), and [`Tier`]. The
//! network-policy-api's `ClusterNetworkPolicy` is in [`cnp`]; the model that turns all of them (and
//! Kubernetes NetworkPolicy) into per-endpoint verdicts is [`model`], shared by the agent and
//! `kubectl tabby`; [`cluster`] builds the model's input from the API objects, for both.
//!
//! What the API server checks (schema + CEL): enums, ranges, CIDRs, port forms, selector length and
//! characters, ports only with TCP/UDP/SCTP, ICMP fields only with ICMP. What CEL cannot check (a
//! selector's grammar) is reported by the agent as the policy's `Valid` condition, naming the field.

pub mod cluster;
pub mod cnp;
pub mod index;
pub mod model;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// The tier every policy without `tier` is in, and Kubernetes NetworkPolicy's.
pub const DEFAULT_TIER: &str = "default";
/// The tier order of `default` when no Tier object says otherwise (Calico's).
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// The order Kubernetes NetworkPolicies have in tier `default` (Calico's).
pub const K8S_POLICY_ORDER: f64 = 1000.0;
/// ClusterNetworkPolicy's Admin tier, before everything (Calico's `kube-admin`).
pub const ADMIN_TIER: &str = "kube-admin";
pub const ADMIN_TIER_ORDER: f64 = 1000.0;
/// ClusterNetworkPolicy's Baseline tier, after Kubernetes NetworkPolicy (Calico's `kube-baseline`).
pub const BASELINE_TIER: &str = "kube-baseline";
pub const BASELINE_TIER_ORDER: f64 = 10_000_000.0;

/// The condition the agent sets on a policy: whether it could be programmed as written.
pub const CONDITION_VALID: &str = "Valid";

/// Selector fields: at most 1024 characters of the selector alphabet (the grammar itself is checked by
/// the agent, which reports a selector that does not parse as the policy's `Valid` condition).
/// The selector alphabet (an OpenAPI pattern: checked by the API server at no CEL cost).
const SELECTOR_PATTERN: &str = r#"^[-a-zA-Z0-9_./ !=&|(){}'",]*$"#;

/// A rule's action.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Accept the packet; evaluation stops.
    Allow,
    /// Drop the packet; evaluation stops.
    Deny,
    /// Log the packet (a JSON line from the agent, and a counter) and go on to the next rule.
    Log,
    /// Skip the rest of this tier: evaluation goes on with the next tier.
    Pass,
}

/// A direction a policy applies to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// ICMP type and code to match.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[x_kube(validation = Rule::new("!has(self.code) || has(self.type)").message("code: needs type").field_path(".code"))]
pub struct IcmpFields {
    /// ICMP type (0-254).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    #[schemars(range(min = 0, max = 254), extend("format" = "int32"))]
    pub type_: Option<u8>,
    /// ICMP code (0-255); needs `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255), extend("format" = "int32"))]
    pub code: Option<u8>,
}

/// Service accounts to match, by name and/or by the labels of the ServiceAccount.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAccountMatch {
    /// Names of service accounts (in the namespace of the pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub names: Vec<String>,
    /// Selects pods by the labels of their ServiceAccount.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = SELECTOR_PATTERN))]
    pub selector: String,
}

const NETS_RULE: &str = "self.all(n, isCIDR(n) || isIP(n))";
/// A port number 0-65535, a range `from:to` or a port name (an OpenAPI pattern; a range that ends
/// before it starts, or digits past 65535, are reported by the agent on the policy).
const PORT_PATTERN: &str = r"^([0-9]{1,5}(:[0-9]{1,5})?|[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?)$";

/// `ports`, `notPorts`: numbers, ranges and names.
fn ports_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 64,
        "items": {"x-kubernetes-int-or-string": true, "pattern": PORT_PATTERN, "minimum": 0, "maximum": 65535, "maxLength": 15}
    })
}

/// `protocol`, `notProtocol`: a name or a number 1-255.
fn protocol_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a protocol number 1-255.",
        "nullable": true,
        "x-kubernetes-int-or-string": true,
        "pattern": "^(TCP|UDP|ICMP|ICMPv6|SCTP|UDPLite|[0-9]{1,3})$",
        "minimum": 1,
        "maximum": 255,
        "maxLength": 8
    })
}

/// Where a packet comes from (`source`) or goes to (`destination`). Every field set must match.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    /// CIDRs (or addresses) the entity's address is in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new(NETS_RULE).message("nets: every entry must be a CIDR or an IP address"))]
    pub nets: Vec<String>,
    /// CIDRs the entity's address is not in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new(NETS_RULE).message("notNets: every entry must be a CIDR or an IP address"))]
    pub not_nets: Vec<String>,
    /// Selects pods (and network sets) by label; in a namespaced policy, in its namespace unless
    /// `namespaceSelector` says otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = SELECTOR_PATTERN))]
    pub selector: String,
    /// Pods (and network sets) this selects do not match.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = SELECTOR_PATTERN))]
    pub not_selector: String,
    /// Selects namespaces by label (`global()`: global network sets only; `all()`: every namespace).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = SELECTOR_PATTERN))]
    pub namespace_selector: String,
    /// Ports: numbers, ranges `from:to`, or named ports (resolved per destination pod). Needs a protocol
    /// of TCP, UDP or SCTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ports_schema")]
    pub ports: Vec<IntOrString>,
    /// Ports that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ports_schema")]
    pub not_ports: Vec<IntOrString>,
    /// Pods running as these service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountMatch>,
}

const PORTS_NEED_L4: &str = "!(has(self.source.ports) || has(self.source.notPorts) || has(self.destination.ports) || has(self.destination.notPorts)) || (has(self.protocol) && string(self.protocol) in ['TCP', 'UDP', 'SCTP', '6', '17', '132'])";
const ICMP_NEEDS_ICMP: &str = "!(has(self.icmp) || has(self.notICMP)) || (has(self.protocol) && string(self.protocol) in ['ICMP', 'ICMPv6', '1', '58'])";

/// One rule: when the packet matches every field set, `action` applies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(PORTS_NEED_L4).message("protocol: ports need protocol TCP, UDP or SCTP").field_path(".protocol"))]
#[x_kube(validation = Rule::new(ICMP_NEEDS_ICMP).message("protocol: icmp and notICMP need protocol ICMP or ICMPv6").field_path(".protocol"))]
pub struct PolicyRule {
    /// Allow, Deny, Log (go on to the next rule) or Pass (go on with the next tier).
    pub action: Action,
    /// 4 or 6: the rule matches only that IP version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 4 || self == 6").message("ipVersion: 4 or 6"))]
    #[schemars(extend("format" = "int32"))]
    pub ip_version: Option<u8>,
    /// The IP protocol: TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1-255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "protocol_schema")]
    pub protocol: Option<IntOrString>,
    /// A protocol that does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "protocol_schema")]
    pub not_protocol: Option<IntOrString>,
    /// ICMP type and code (protocol ICMP or ICMPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    /// ICMP type and code that do not match.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "notICMP")]
    pub not_icmp: Option<IcmpFields>,
    /// Where the packet comes from.
    #[serde(default)]
    pub source: EntityRule,
    /// Where the packet goes.
    #[serde(default)]
    pub destination: EntityRule,
}

/// A policy's spec: which endpoints, in which tier and order, and the rules of each direction.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFields {
    /// The tier (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub tier: Option<String>,
    /// Order in the tier: lower first; unset: after every ordered policy. Ties go by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// The endpoints (pods) the policy applies to; empty: all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = SELECTOR_PATTERN))]
    pub selector: String,
    /// The directions it applies to; unset: Ingress, plus Egress when there are egress rules and Egress
    /// alone when there are only egress rules (Calico's defaulting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u == t))").message("types: each type at most once"))]
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub ingress: Vec<PolicyRule>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub egress: Vec<PolicyRule>,
    /// Narrows the endpoints to pods running as service accounts these labels select.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = SELECTOR_PATTERN))]
    pub service_account_selector: String,
    /// GlobalNetworkPolicy only: narrows the endpoints to namespaces these labels select.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = SELECTOR_PATTERN))]
    pub namespace_selector: String,
}

/// What a staged policy previews.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StagedAction {
    /// The policy as it would be if created or updated (default).
    Set,
    /// The enforced policy of the same name as if deleted (not evaluated yet; reported).
    Delete,
}

/// Whether a policy could be programmed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PolicyStatus {
    /// `Valid`: False with the field that cannot be programmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

macro_rules! policy_kind {
    ($spec:ident, $kind:literal, $plural:literal, $short:literal, $doc:literal, $ns:meta, $staged:meta) => {
        #[doc = $doc]
        #[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
        #[kube(
            group = "tabby.dev",
            version = "v1",
            kind = $kind,
            plural = $plural,
            shortname = $short,
            status = "PolicyStatus",
            doc = $doc,
            printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier", description = "The tier (unset: default)"),
            printcolumn(name = "Order", type_ = "number", json_path = ".spec.order", description = "Order in the tier"),
            printcolumn(name = "Selector", type_ = "string", json_path = ".spec.selector", description = "The endpoints it applies to"),
            printcolumn(name = "Valid", type_ = "string", json_path = ".status.conditions[?(@.type==\"Valid\")].status", description = "Programmed as written")
        )]
        #[cfg_attr($ns, kube(namespaced))]
        #[serde(rename_all = "camelCase")]
        #[x_kube(validation = Rule::new("!has(self.tier) || self.tier.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("tier: must be a tier's name").field_path(".tier"))]
        pub struct $spec {
            #[serde(flatten)]
            pub fields: PolicyFields,
            /// Staged policies only: what is previewed (Set, default; or Delete).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[cfg_attr(not($staged), schemars(skip))]
            pub staged_action: Option<StagedAction>,
        }
    };
}

policy_kind!(
    NetworkPolicySpec,
    "NetworkPolicy",
    "networkpolicies",
    "tnp",
    "NetworkPolicy selects pods of its namespace and allows, denies, logs or passes their traffic, in a tier and an order (Calico's NetworkPolicy).",
    all(),
    any()
);
policy_kind!(
    GlobalNetworkPolicySpec,
    "GlobalNetworkPolicy",
    "globalnetworkpolicies",
    "gnp",
    "GlobalNetworkPolicy selects pods of every namespace (Calico's GlobalNetworkPolicy).",
    any(),
    any()
);
policy_kind!(
    StagedNetworkPolicySpec,
    "StagedNetworkPolicy",
    "stagednetworkpolicies",
    "snp",
    "StagedNetworkPolicy is a NetworkPolicy that is evaluated and counted but never enforced: what it would allow or deny is attributed to it.",
    all(),
    all()
);
policy_kind!(
    StagedGlobalNetworkPolicySpec,
    "StagedGlobalNetworkPolicy",
    "stagedglobalnetworkpolicies",
    "sgnp",
    "StagedGlobalNetworkPolicy is a GlobalNetworkPolicy that is evaluated and counted but never enforced.",
    any(),
    all()
);

/// A tier: an ordered group of policies with a default for endpoints its policies select.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "Tier",
    plural = "tiers",
    doc = "Tier orders groups of policies: tiers are evaluated by order; a Pass goes on to the next tier.",
    printcolumn(name = "Order", type_ = "number", json_path = ".spec.order", description = "Lower first"),
    printcolumn(
        name = "DefaultAction",
        type_ = "string",
        json_path = ".spec.defaultAction",
        description = "For selected endpoints no rule decided"
    ),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63").message("metadata.name: a tier's name is a DNS label (at most 63 characters)")
)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// Lower first; unset: after every ordered tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// What happens to traffic of an endpoint that a policy of this tier selects when no rule decided:
    /// Deny (default) or Pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'Deny' || self == 'Pass'").message("defaultAction: Deny or Pass"))]
    pub default_action: Option<Action>,
}

/// A labelled list of networks that policy selectors match like endpoints.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "NetworkSet",
    plural = "networksets",
    namespaced,
    doc = "NetworkSet is a labelled list of CIDRs in a namespace; policy selectors match it like a pod."
)]
pub struct NetworkSetSpec {
    /// The networks (CIDRs or addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new(NETS_RULE).message("nets: every entry must be a CIDR or an IP address"))]
    pub nets: Vec<String>,
}

/// A cluster-wide labelled list of networks.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tabby.dev",
    version = "v1",
    kind = "GlobalNetworkSet",
    plural = "globalnetworksets",
    doc = "GlobalNetworkSet is a cluster-wide labelled list of CIDRs; global policy selectors (and global()) match it."
)]
pub struct GlobalNetworkSetSpec {
    /// The networks (CIDRs or addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new(NETS_RULE).message("nets: every entry must be a CIDR or an IP address"))]
    pub nets: Vec<String>,
}
